//! Decoding of opcode arguments that are not plain little-endian numbers: long integers and
//! the text forms of protocols 0 and 1.

use crate::pth::value::Object;

/// A little-endian two's complement integer, as `LONG1` and `LONG4` store it.
pub(super) fn int_from_le_bytes(bytes: &[u8]) -> Object {
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0x00 };
    let mut word = [fill; 8];
    for (i, &b) in bytes.iter().enumerate() {
        match word.get_mut(i) {
            Some(slot) => *slot = b,
            // Bytes past the eighth must only repeat the sign for the value to fit.
            None if b == fill => {}
            None => return Object::BigInt,
        }
    }
    let value = i64::from_le_bytes(word);
    if bytes.len() > 8 && (value < 0) != negative {
        return Object::BigInt;
    }
    Object::Int(value)
}

/// Python 2 `str` data: text when it is UTF-8, bytes otherwise.
pub(super) fn text_or_bytes(bytes: Vec<u8>) -> Object {
    match String::from_utf8(bytes) {
        Ok(text) => Object::Str(text),
        Err(err) => Object::Bytes(err.into_bytes()),
    }
}

/// Decodes `raw-unicode-escape`: bytes are Latin-1 characters, except `\uXXXX` and
/// `\UXXXXXXXX` escapes.
pub(super) fn decode_raw_unicode_escape(bytes: &[u8]) -> Option<String> {
    let mut text = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let digits = match (b, bytes.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if digits == 0 {
            text.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = std::str::from_utf8(bytes.get(i + 2..i + 2 + digits)?).ok()?;
        text.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
        i += 2 + digits;
    }
    Some(text)
}

/// Decodes the quoted, backslash-escaped argument of the protocol 0 `STRING` opcode.
pub(super) fn decode_quoted_string(line: &[u8]) -> Option<Vec<u8>> {
    let (&first, rest) = line.split_first()?;
    let (&last, inner) = rest.split_last()?;
    if first != last || !(first == b'\'' || first == b'"') {
        return None;
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let escaped = bytes.next()?;
        let decoded = match escaped {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'a' => 0x07,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'v' => 0x0b,
            b'\\' | b'\'' | b'"' => escaped,
            b'\n' => continue,
            b'x' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()?
            }
            b'0'..=b'7' => {
                let mut value = u32::from(escaped - b'0');
                for _ in 0..2 {
                    match bytes.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                u8::try_from(value & 0xff).ok()?
            }
            other => {
                out.push(b'\\');
                other
            }
        };
        out.push(decoded);
    }
    Some(out)
}
