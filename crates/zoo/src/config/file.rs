//! Config text and files, for every family: JSON parsed with bounded quotes of its input,
//! files read as regular files under a size cap, and unknown model names.

use std::path::Path;

use crate::{Result, ZooError};

/// Largest config file `from_file` reads: 1 MiB, far more than any config needs.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Most characters of a user-supplied string (a key, a value, a name) an error quotes; the
/// rest is cut to an ellipsis.
const MAX_QUOTED_CHARS: usize = idlevit_checkpoint::MAX_ECHOED_CHARS;

/// Most characters of a parser's message an error repeats, whatever it quotes.
const MAX_MESSAGE_CHARS: usize = 400;

/// A config of any family from JSON text, checked by `validate`.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    validate: impl Fn(&T) -> Result<()>,
) -> Result<T> {
    let config: T = serde_json::from_str(text).map_err(json_error)?;
    validate(&config)?;
    Ok(config)
}

/// A JSON parser's error as a config error, its quotes of the input bounded ([`bounded`]).
pub(crate) fn json_error(e: serde_json::Error) -> ZooError {
    ZooError::Config(bounded(&e.to_string()))
}

/// `message` with every quoted span (between backticks, or double quotes with backslash
/// escapes) cut to [`MAX_QUOTED_CHARS`] characters and the whole cut to [`MAX_MESSAGE_CHARS`],
/// each cut marked with an ellipsis: parser messages quote the input's keys and values, and
/// a config may hold a key of megabytes.
pub(crate) fn bounded(message: &str) -> String {
    let mut out = String::new();
    // The closing delimiter of the span being copied, and how many characters it has.
    let mut span: Option<(char, usize)> = None;
    let mut escaped = false;
    for (total, ch) in message.chars().enumerate() {
        if total == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        match span {
            None => {
                if ch == '`' || ch == '"' {
                    span = Some((ch, 0));
                }
                out.push(ch);
            }
            Some((close, len)) => {
                let closes = ch == close && !escaped;
                escaped = close == '"' && ch == '\\' && !escaped;
                if closes {
                    span = None;
                    out.push(ch);
                } else {
                    if len < MAX_QUOTED_CHARS {
                        out.push(ch);
                    } else if len == MAX_QUOTED_CHARS {
                        out.push('…');
                    }
                    span = Some((close, len + 1));
                }
            }
        }
    }
    out
}

/// A user-supplied string for an error message, cut as every echoed name is.
pub(crate) fn quoted(text: &str) -> String {
    idlevit_checkpoint::clip(text).into_owned()
}

/// Reads the config file `path` (a regular file of at most [`MAX_CONFIG_BYTES`]) and parses
/// its text with `parse`; every error names the file once.
pub(crate) fn read_config_file<T>(path: &Path, parse: impl Fn(&str) -> Result<T>) -> Result<T> {
    let located = |message: String| ZooError::ConfigFile {
        path: path.display().to_string(),
        message,
    };
    // The reader's error names the path; keep only its reason, as ConfigFile names it.
    let bytes = idlevit_checkpoint::read_file_capped(path, MAX_CONFIG_BYTES, "config").map_err(
        |e| match e {
            idlevit_checkpoint::CheckpointError::Read { error, .. } => located(error.to_string()),
            other => located(other.to_string()),
        },
    )?;
    let text = String::from_utf8(bytes).map_err(|e| {
        located(format!(
            "not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&text).map_err(|e| located(e.to_string()))
}

/// The error for a model name outside `known`.
pub(crate) fn unknown_model(name: &str, known: &[&str]) -> ZooError {
    ZooError::UnknownModel {
        name: quoted(name),
        known: known.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeiTConfig;

    const VALID: &str = r#"{"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2,
        "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 10, "qkv_bias": true}"#;

    /// A scratch directory of its own for each test that writes files.
    fn scratch_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("idlevit-zoo-{name}-"))
            .tempdir()
            .unwrap()
    }

    /// Files that are too large or not regular files are refused before they are read,
    /// each error naming the file once.
    #[test]
    fn config_files_are_bounded_and_regular() {
        let tmp = scratch_dir("config-files");
        let dir = tmp.path();
        let valid = dir.join("valid.json");
        std::fs::write(&valid, VALID).unwrap();
        assert_eq!(DeiTConfig::from_file(&valid).unwrap().depth, 2);

        let large = dir.join("large.json");
        let padding = " ".repeat(MAX_CONFIG_BYTES as usize);
        std::fs::write(&large, format!("{VALID}{padding}")).unwrap();
        let not_utf8 = dir.join("latin1.json");
        std::fs::write(&not_utf8, b"{\"img_size\": 32, \xe9}").unwrap();
        let mut cases = vec![
            (large, "more than the limit of 1048576 bytes"),
            (dir.to_path_buf(), "it is a directory, not a regular file"),
            (not_utf8, "not UTF-8 text"),
            (dir.join("missing.json"), "(os error 2)"),
        ];
        if cfg!(unix) {
            cases.push(("/dev/zero".into(), "a character device, not a regular file"));
            let fifo = dir.join("fifo.json");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success());
            if made {
                cases.push((fifo, "a named pipe (FIFO), not a regular file"));
            }
        }
        for (path, reason) in cases {
            let err = crate::ZooConfig::from_file(&path).unwrap_err().to_string();
            assert!(err.contains(reason), "{}: {err}", path.display());
            let name = path.display().to_string();
            assert_eq!(err.matches(&name).count(), 1, "{err}");
        }
    }

    /// A key or value of megabytes is quoted in part, not echoed whole.
    #[test]
    fn errors_quote_user_strings_in_part() {
        let key = "k".repeat(1 << 20);
        let cases = [
            VALID.replace(
                "\"qkv_bias\": true",
                &format!("\"qkv_bias\": true, \"{key}\": 1"),
            ),
            VALID.replace("\"img_size\": 32", &format!("\"img_size\": \"{key}\"")),
            VALID.replace("\"img_size\": 32", &format!("\"img_size\": \"a\\\"{key}\"")),
        ];
        for json in cases {
            let err = DeiTConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..200]);
            assert!(err.contains(&format!("{}…", "k".repeat(50))), "{err}");
        }
        let err = crate::ZooConfig::from_json(&format!("{{\"family\": \"{key}\"}}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.len() < 300 && err.contains("unknown family `kkk"),
            "{err}"
        );
        let err = crate::ZooConfig::from_json(&format!("[\"{key}\"]"))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 300 && err.contains("a JSON object"), "{err}");
        let err = crate::ZooConfig::named(&key).unwrap_err().to_string();
        assert!(err.len() < 1000, "{err}");
        assert_eq!(bounded("a `short` key"), "a `short` key");
        assert_eq!(quoted("abc"), "abc");
        let long = "x".repeat(MAX_QUOTED_CHARS + 1);
        assert_eq!(quoted(&long), format!("{}…", &long[..MAX_QUOTED_CHARS]));
    }
}
