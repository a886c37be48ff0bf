//! A pickle interpreter that executes nothing.
//!
//! It implements every opcode of protocols 0 to 5 except the extension registry and
//! out-of-band buffers, which `torch.save` never writes. `GLOBAL` and `STACK_GLOBAL` only ever
//! produce a reference: the globals of [`globals`] are understood as data
//! constructors, and calling, instantiating or `BUILD`ing any other global yields an inert
//! [`Unknown`](super::value::Unknown) that records its arguments.
//!
//! One file on purpose: the interpreter is one dispatch over the opcode table, and every
//! opcode's stack effect and memory charge reads best next to the others.

use std::collections::{HashMap, HashSet};

mod opcodes;
mod text;

use opcodes::Op;
use text::{decode_quoted_string, decode_raw_unicode_escape, int_from_le_bytes, text_or_bytes};

use super::budget::block_bytes;
use super::error::PthError;
use super::globals::{self, Known, MAX_CALL_ARGS};
use super::value::{Global, Heap, ObjId, Object, Storage, quoted};

/// Deepest nesting of `MARK`s (tuples, lists and dicts under construction) a pickle may open.
pub const MAX_MARK_DEPTH: usize = 10_000;

/// Most values the pickle stack may hold at once.
pub const MAX_STACK_LEN: usize = 1 << 22;

/// Most entries a pickle may store in its memo.
pub const MAX_MEMO_ENTRIES: usize = 1 << 22;

/// Memory everything built from a checkpoint's pickle may take (the pickle itself, its objects,
/// the interpreter's stack and memo, the flattened weight names, the lists of skipped entries
/// and unknown globals, and the bookkeeping of the returned tensors, but not their values), in
/// bytes per byte of pickle, or [`MIN_HEAP_BYTES`], whichever is larger. Charged at what the
/// allocations really take: `torch.save` pickles of state dicts and optimizer states need 17
/// to 28.
pub const HEAP_BYTES_PER_PICKLE_BYTE: usize = 48;

/// Memory everything built from any pickle may take, in bytes, however short the pickle.
pub const MIN_HEAP_BYTES: usize = 64 << 20;

/// Highest pickle protocol this interpreter knows.
const HIGHEST_PROTOCOL: u8 = 5;

/// What a pickle decodes to.
#[derive(Debug)]
pub(crate) struct Unpickled {
    /// Every object the pickle built.
    pub heap: Heap,
    /// The object the pickle stands for.
    pub root: ObjId,
    /// Globals that were not understood, as `module.name`, in order of first use.
    pub unknown_globals: Vec<String>,
}

/// Interprets `data`. With `strict`, the first global that is not understood is an error.
pub(crate) fn unpickle(data: &[u8], strict: bool) -> Result<Unpickled, PthError> {
    let budget = data
        .len()
        .saturating_mul(HEAP_BYTES_PER_PICKLE_BYTE)
        .max(MIN_HEAP_BYTES);
    let heap = Heap::with_budget(budget);
    heap.budget().charge(block_bytes(data.len()), Some(0))?;
    let mut machine = Machine {
        data,
        pos: 0,
        offset: 0,
        op: Op::STOP,
        heap,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        unknown_globals: Vec::new(),
        unknown_seen: HashSet::new(),
        strict,
    };
    let root = machine.run()?;
    Ok(Unpickled {
        heap: machine.heap,
        root,
        unknown_globals: machine.unknown_globals,
    })
}

/// The interpreter's state: the input, the stack with its marks, the memo and the heap.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode starts.
    offset: usize,
    op: Op,
    heap: Heap,
    stack: Vec<ObjId>,
    /// Stack lengths at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, ObjId>,
    unknown_globals: Vec<String>,
    unknown_seen: HashSet<String>,
    strict: bool,
}

impl<'a> Machine<'a> {
    fn run(&mut self) -> Result<ObjId, PthError> {
        loop {
            self.offset = self.pos;
            let Some(&byte) = self.data.get(self.pos) else {
                return Err(PthError::MissingStop {
                    offset: self.data.len(),
                });
            };
            self.pos += 1;
            let op = Op::from_byte(byte).ok_or(PthError::UnknownOpcode {
                opcode: byte,
                offset: self.offset,
            })?;
            self.op = op;
            if op == Op::STOP {
                return self.pop();
            }
            self.step(op)?;
        }
    }

    fn step(&mut self, op: Op) -> Result<(), PthError> {
        match op {
            Op::STOP => {}
            Op::PROTO => {
                let [protocol] = self.read_array()?;
                if protocol > HIGHEST_PROTOCOL {
                    return Err(self.malformed(
                        format!("a protocol up to {HIGHEST_PROTOCOL}"),
                        format!("protocol {protocol}"),
                    ));
                }
            }
            // Frames only group opcodes for buffered reading; the opcodes follow inline.
            Op::FRAME => {
                self.read_array::<8>()?;
            }
            Op::MARK => {
                if self.marks.len() >= MAX_MARK_DEPTH {
                    return Err(self.limit("nesting of MARKs", MAX_MARK_DEPTH));
                }
                self.heap
                    .budget()
                    .reserve(&mut self.marks, 1, Some(self.offset))?;
                self.marks.push(self.stack.len());
            }
            Op::POP => {
                // As in CPython: with nothing above the last MARK, POP discards the MARK.
                if self.stack.len() > self.fence() {
                    self.pop()?;
                } else {
                    self.pop_mark()?;
                }
            }
            Op::POP_MARK => {
                self.pop_mark()?;
            }
            Op::DUP => {
                let top = self.top()?;
                self.push(top)?;
            }

            Op::NONE => self.push_new(Object::None)?,
            Op::NEWTRUE => self.push_new(Object::Bool(true))?,
            Op::NEWFALSE => self.push_new(Object::Bool(false))?,
            Op::BININT | Op::BININT1 | Op::BININT2 => {
                let value = match op {
                    Op::BININT => i32::from_le_bytes(self.read_array()?).into(),
                    Op::BININT1 => self.read_array::<1>()?[0].into(),
                    _ => u16::from_le_bytes(self.read_array()?).into(),
                };
                self.push_new(Object::Int(value))?;
            }
            Op::LONG1 | Op::LONG4 => {
                let len = self.read_len(op)?;
                let bytes = self.read(len)?;
                self.push_new(int_from_le_bytes(bytes))?;
            }
            Op::INT => {
                let line = self.read_text_line()?;
                let object = match line.trim() {
                    "00" => Object::Bool(false),
                    "01" => Object::Bool(true),
                    text => self.parse_int(text)?,
                };
                self.push_new(object)?;
            }
            Op::LONG => {
                let line = self.read_text_line()?;
                let text = line.trim();
                let object = self.parse_int(text.strip_suffix('L').unwrap_or(text))?;
                self.push_new(object)?;
            }
            Op::BINFLOAT => {
                let value = f64::from_be_bytes(self.read_array()?);
                self.push_new(Object::Float(value))?;
            }
            Op::FLOAT => {
                let line = self.read_text_line()?;
                let value = line
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| self.malformed("a decimal float", quoted(&line)))?;
                self.push_new(Object::Float(value))?;
            }

            Op::BINUNICODE | Op::SHORT_BINUNICODE | Op::BINUNICODE8 => {
                let len = self.read_len(op)?;
                self.push_utf8(len)?;
            }
            Op::UNICODE => {
                let line = self.read_line()?;
                let text = decode_raw_unicode_escape(line)
                    .ok_or_else(|| self.malformed("raw-unicode-escape text", "a bad escape"))?;
                self.push_new(Object::Str(text))?;
            }
            Op::BINSTRING | Op::SHORT_BINSTRING => {
                let len = self.read_len(op)?;
                let bytes = self.read(len)?.to_vec();
                self.push_new(text_or_bytes(bytes))?;
            }
            Op::STRING => {
                let line = self.read_line()?;
                let bytes = decode_quoted_string(line).ok_or_else(|| {
                    self.malformed("a quoted string", quoted(&String::from_utf8_lossy(line)))
                })?;
                self.push_new(text_or_bytes(bytes))?;
            }
            Op::BINBYTES | Op::SHORT_BINBYTES | Op::BINBYTES8 | Op::BYTEARRAY8 => {
                let len = self.read_len(op)?;
                self.push_bytes(len)?;
            }

            Op::EMPTY_TUPLE => self.push_new(Object::Tuple(Vec::new()))?,
            Op::TUPLE1 | Op::TUPLE2 | Op::TUPLE3 => {
                let n = match op {
                    Op::TUPLE1 => 1,
                    Op::TUPLE2 => 2,
                    _ => 3,
                };
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_new(Object::Tuple(items))?;
            }
            Op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_new(Object::Tuple(items))?;
            }
            Op::EMPTY_LIST => self.push_new(Object::List(Vec::new()))?,
            Op::LIST => {
                let items = self.pop_mark()?;
                self.push_new(Object::List(items))?;
            }
            Op::APPEND => {
                let item = self.pop()?;
                self.extend_top(&[item], false)?;
            }
            Op::APPENDS => {
                let items = self.pop_mark()?;
                self.extend_top(&items, false)?;
            }
            Op::EMPTY_DICT => self.push_new(Object::Dict(Box::default()))?,
            Op::DICT => {
                let items = self.pop_mark()?;
                let dict = self.alloc(Object::Dict(Box::default()))?;
                self.set_items(dict, &items)?;
                self.push(dict)?;
            }
            Op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                let dict = self.top()?;
                self.set_items(dict, &[key, value])?;
            }
            Op::SETITEMS => {
                let items = self.pop_mark()?;
                let dict = self.top()?;
                self.set_items(dict, &items)?;
            }
            Op::EMPTY_SET => self.push_new(Object::Set(Vec::new()))?,
            Op::FROZENSET => {
                let items = self.pop_mark()?;
                self.push_new(Object::Set(items))?;
            }
            Op::ADDITEMS => {
                let items = self.pop_mark()?;
                self.extend_top(&items, true)?;
            }

            Op::GET | Op::BINGET | Op::LONG_BINGET => {
                let index = self.read_memo_index(op)?;
                self.memo_get(index)?;
            }
            Op::PUT | Op::BINPUT | Op::LONG_BINPUT => {
                let index = self.read_memo_index(op)?;
                self.memo_put(index)?;
            }
            Op::MEMOIZE => {
                let index = u64::try_from(self.memo.len()).unwrap_or(u64::MAX);
                self.memo_put(index)?;
            }

            Op::GLOBAL => {
                let module = self.read_text_line()?;
                let name = self.read_text_line()?;
                let global = self.global(module, name)?;
                self.push(global)?;
            }
            Op::STACK_GLOBAL => {
                let name_id = self.pop()?;
                let module_id = self.pop()?;
                let (Some(module), Some(name)) =
                    (self.heap.as_str(module_id), self.heap.as_str(name_id))
                else {
                    let found = format!(
                        "{} and {}",
                        self.heap.describe(module_id),
                        self.heap.describe(name_id)
                    );
                    return Err(self.malformed("a module and a name (two strs)", found));
                };
                let (module, name) = (module.to_owned(), name.to_owned());
                let global = self.global(module, name)?;
                self.push(global)?;
            }
            Op::REDUCE | Op::NEWOBJ => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.call(callable, args)?;
                self.push(result)?;
            }
            Op::NEWOBJ_EX => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let class = self.pop()?;
                self.check_no_kwargs(class, kwargs)?;
                let result = self.call(class, args)?;
                self.push(result)?;
            }
            Op::INST => {
                let module = self.read_text_line()?;
                let name = self.read_text_line()?;
                let items = self.pop_mark()?;
                let class = self.global(module, name)?;
                let args = self.alloc(Object::Tuple(items))?;
                let result = self.call(class, args)?;
                self.push(result)?;
            }
            Op::OBJ => {
                let mut items = self.pop_mark()?.into_iter();
                let class = items.next().ok_or_else(|| {
                    self.malformed("a class followed by its arguments", "an empty MARK")
                })?;
                let args = self.alloc(Object::Tuple(items.collect()))?;
                let result = self.call(class, args)?;
                self.push(result)?;
            }
            Op::BUILD => {
                let state = self.pop()?;
                let object = self.top()?;
                match self.heap.get_mut(object) {
                    Some(Object::Unknown(unknown)) => unknown.state = Some(state),
                    // Attributes set on a dict, list, set or tensor (such as the `_metadata` of
                    // a state dict) leave its contents, all this reader needs, unchanged.
                    Some(
                        Object::Dict(_)
                        | Object::List(_)
                        | Object::Set(_)
                        | Object::Tensor(_)
                        | Object::Storage(_),
                    ) => {}
                    _ => return Err(self.malformed_value("an object that takes state", object)),
                }
            }
            Op::BINPERSID => {
                let pid = self.pop()?;
                let storage = self.persistent_load(pid)?;
                self.push(storage)?;
            }
            Op::PERSID => {
                let line = self.read_text_line()?;
                let pid = self.alloc(Object::Str(line))?;
                let storage = self.persistent_load(pid)?;
                self.push(storage)?;
            }

            Op::EXT1 | Op::EXT2 | Op::EXT4 => {
                return Err(self.unsupported("the copyreg extension registry is not used by torch"));
            }
            Op::NEXT_BUFFER => {
                return Err(self.unsupported("out-of-band buffers are not part of a checkpoint"));
            }
            Op::READONLY_BUFFER => {
                self.top()?;
            }
        }
        Ok(())
    }

    // --- errors -------------------------------------------------------------------------

    fn malformed(&self, expected: impl Into<String>, found: impl Into<String>) -> PthError {
        PthError::Malformed {
            offset: self.offset,
            context: self.op.name().to_owned(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    fn malformed_value(&self, expected: &str, id: ObjId) -> PthError {
        self.malformed(expected, self.heap.describe(id))
    }

    fn limit(&self, what: &str, limit: usize) -> PthError {
        PthError::Limit {
            what: what.to_owned(),
            limit,
            offset: Some(self.offset),
        }
    }

    fn unsupported(&self, reason: &'static str) -> PthError {
        PthError::UnsupportedOpcode {
            opcode: self.op.name(),
            offset: self.offset,
            reason,
        }
    }

    // --- input --------------------------------------------------------------------------

    fn read(&mut self, len: usize) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        let rest = data.get(self.pos..).unwrap_or_default();
        let bytes = rest.get(..len).ok_or(PthError::Truncated {
            opcode: self.op.name(),
            offset: self.offset,
            needed: len,
            available: rest.len(),
        })?;
        self.pos += len;
        Ok(bytes)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], PthError> {
        let bytes = self.read(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// The length argument of `op`: one byte for `LONG1` and the `SHORT_` forms, eight for the
    /// `8` forms, four otherwise (signed for `LONG4` and `BINSTRING`, refused when negative).
    fn read_len(&mut self, op: Op) -> Result<usize, PthError> {
        let len: i128 = match op {
            Op::LONG1 | Op::SHORT_BINSTRING | Op::SHORT_BINUNICODE | Op::SHORT_BINBYTES => {
                self.read_array::<1>()?[0].into()
            }
            Op::BINUNICODE8 | Op::BINBYTES8 | Op::BYTEARRAY8 => {
                u64::from_le_bytes(self.read_array()?).into()
            }
            Op::LONG4 | Op::BINSTRING => i32::from_le_bytes(self.read_array()?).into(),
            _ => u32::from_le_bytes(self.read_array()?).into(),
        };
        if len < 0 {
            return Err(self.malformed("a non-negative length", format!("length {len}")));
        }
        usize::try_from(len).map_err(|_| self.limit("length", usize::MAX))
    }

    /// The memo index of `op`: decimal text for `GET` and `PUT`, one byte for their `BIN`
    /// forms, four for their `LONG_BIN` forms.
    fn read_memo_index(&mut self, op: Op) -> Result<u64, PthError> {
        match op {
            Op::GET | Op::PUT => self.read_decimal_line(),
            Op::BINGET | Op::BINPUT => Ok(self.read_array::<1>()?[0].into()),
            _ => Ok(u32::from_le_bytes(self.read_array()?).into()),
        }
    }

    /// The bytes up to the next newline, which is consumed.
    fn read_line(&mut self) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        let rest = data.get(self.pos..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PthError::Truncated {
                opcode: self.op.name(),
                offset: self.offset,
                needed: rest.len() + 1,
                available: rest.len(),
            });
        };
        let line = rest.get(..len).unwrap_or_default();
        self.pos += len + 1;
        Ok(line)
    }

    fn read_text_line(&mut self) -> Result<String, PthError> {
        let line = self.read_line()?;
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| self.malformed("a UTF-8 text line", "invalid UTF-8"))
    }

    fn read_decimal_line(&mut self) -> Result<u64, PthError> {
        let line = self.read_text_line()?;
        line.trim()
            .parse()
            .map_err(|_| self.malformed("a memo index", quoted(&line)))
    }

    fn parse_int(&self, text: &str) -> Result<Object, PthError> {
        if let Ok(value) = text.parse::<i64>() {
            return Ok(Object::Int(value));
        }
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Object::BigInt)
        } else {
            Err(self.malformed("a decimal integer", quoted(text)))
        }
    }

    fn push_utf8(&mut self, len: usize) -> Result<(), PthError> {
        let bytes = self.read(len)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| self.malformed("UTF-8 text", "invalid UTF-8"))?
            .to_owned();
        self.push_new(Object::Str(text))
    }

    fn push_bytes(&mut self, len: usize) -> Result<(), PthError> {
        let bytes = self.read(len)?.to_vec();
        self.push_new(Object::Bytes(bytes))
    }

    // --- stack and memo -----------------------------------------------------------------

    /// Stack length at the last MARK: values below it belong to an enclosing container.
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn alloc(&mut self, object: Object) -> Result<ObjId, PthError> {
        self.heap.alloc(object, self.offset)
    }

    fn push(&mut self, id: ObjId) -> Result<(), PthError> {
        if self.stack.len() >= MAX_STACK_LEN {
            return Err(self.limit("pickle stack length", MAX_STACK_LEN));
        }
        self.heap
            .budget()
            .reserve(&mut self.stack, 1, Some(self.offset))?;
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, object: Object) -> Result<(), PthError> {
        let id = self.alloc(object)?;
        self.push(id)
    }

    fn underflow(&self) -> PthError {
        PthError::StackUnderflow {
            opcode: self.op.name(),
            offset: self.offset,
        }
    }

    fn pop(&mut self) -> Result<ObjId, PthError> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    fn top(&self) -> Result<ObjId, PthError> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.last().copied().ok_or_else(|| self.underflow())
    }

    /// Removes the last MARK and returns the values pushed since.
    fn pop_mark(&mut self) -> Result<Vec<ObjId>, PthError> {
        let mark = self.marks.pop().ok_or(PthError::MissingMark {
            opcode: self.op.name(),
            offset: self.offset,
        })?;
        if mark > self.stack.len() {
            return Err(self.underflow());
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PthError> {
        let id = *self.memo.get(&index).ok_or(PthError::MemoMiss {
            opcode: self.op.name(),
            offset: self.offset,
            index,
        })?;
        self.push(id)
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PthError> {
        let top = self.top()?;
        if !self.memo.contains_key(&index) {
            if self.memo.len() >= MAX_MEMO_ENTRIES {
                return Err(self.limit("pickle memo size", MAX_MEMO_ENTRIES));
            }
            self.heap
                .budget()
                .reserve_entry(&mut self.memo, Some(self.offset))?;
        }
        self.memo.insert(index, top);
        Ok(())
    }

    // --- containers ---------------------------------------------------------------------

    /// Adds `items` to the list (`APPEND`, `APPENDS`) or the set (`ADDITEMS`) on top of the
    /// stack.
    fn extend_top(&mut self, items: &[ObjId], set: bool) -> Result<(), PthError> {
        let target = self.top()?;
        if !self.heap.extend(target, items, set, self.offset)? {
            let expected = if set { "a set" } else { "a list" };
            return Err(self.malformed_value(expected, target));
        }
        Ok(())
    }

    /// `dict[k] = v` for each `k, v` pair of `items`.
    fn set_items(&mut self, dict: ObjId, items: &[ObjId]) -> Result<(), PthError> {
        if !items.len().is_multiple_of(2) {
            return Err(
                self.malformed("keys and values in pairs", format!("{} items", items.len()))
            );
        }
        if let Object::Unknown(_) = self.heap.get(dict) {
            return self.extend_top(items, false);
        }
        for pair in items.chunks_exact(2) {
            if let &[key, value] = pair
                && !self.heap.dict_set(dict, key, value, self.offset)?
            {
                return Err(self.malformed_value("a dict", dict));
            }
        }
        if items.is_empty() && !matches!(self.heap.get(dict), Object::Dict(_)) {
            return Err(self.malformed_value("a dict", dict));
        }
        Ok(())
    }

    // --- globals, calls and storages ----------------------------------------------------

    /// A reference to `module.name`: understood, or recorded as unknown (refused in strict
    /// mode).
    fn global(&mut self, module: String, name: String) -> Result<ObjId, PthError> {
        let global = Global::new(module, name);
        let known = globals::lookup(&global.module, &global.name);
        if known.is_none() {
            let full = global.to_string();
            if self.strict {
                return Err(PthError::UnknownGlobal {
                    global: full,
                    offset: self.offset,
                });
            }
            if !self.unknown_seen.contains(&full) {
                // Listed twice (in order, and for lookups), so charged twice.
                let budget = self.heap.budget();
                let offset = Some(self.offset);
                budget.reserve_member(&mut self.unknown_seen, offset)?;
                budget.reserve(&mut self.unknown_globals, 1, offset)?;
                budget.charge(block_bytes(full.len()).saturating_mul(2), offset)?;
                self.unknown_seen.insert(full.clone());
                self.unknown_globals.push(full);
            }
        }
        match known {
            // Dtypes are values, not constructors: `torch.float16` is the dtype itself.
            Some(Known::DType(dtype)) => self.alloc(Object::DType(dtype)),
            _ => self.alloc(Object::Global(Box::new(global), known)),
        }
    }

    /// `callable(*args)`: built by [`globals::call`] when understood, inert otherwise.
    fn call(&mut self, callable: ObjId, args: ObjId) -> Result<ObjId, PthError> {
        let Object::Tuple(items) = self.heap.get(args) else {
            return Err(self.malformed_value("an argument tuple", args));
        };
        let (global, known) = match self.heap.get(callable) {
            Object::Global(global, known) => ((**global).clone(), *known),
            Object::Unknown(unknown) => (unknown.global.clone(), None),
            _ => return Err(self.malformed_value("a callable global", callable)),
        };
        let Some(known) = known else {
            return self.alloc(Object::inert(global, args));
        };
        if items.len() > MAX_CALL_ARGS {
            return Err(PthError::Malformed {
                offset: self.offset,
                context: format!("calling `{global}`"),
                expected: format!("at most {MAX_CALL_ARGS} arguments"),
                found: format!("{} arguments", items.len()),
            });
        }
        let items = items.clone();
        globals::call(&mut self.heap, &global, known, &items, self.offset)
    }

    /// Understood classes take no keyword arguments; unknown ones may (they are inert).
    fn check_no_kwargs(&self, class: ObjId, kwargs: ObjId) -> Result<(), PthError> {
        match (self.heap.get(class), self.heap.get(kwargs)) {
            (Object::Global(_, Some(_)), Object::Dict(dict)) if !dict.entries().is_empty() => {
                Err(self.malformed_value("no keyword arguments", kwargs))
            }
            (Object::Global(_, Some(_)), Object::Dict(_)) | (_, _) => Ok(()),
        }
    }

    /// The storage a persistent id `('storage', storage_type, key, location, numel)` names.
    fn persistent_load(&mut self, pid: ObjId) -> Result<ObjId, PthError> {
        const EXPECTED: &str = "a ('storage', storage type, key, location, numel) tuple";
        let Object::Tuple(items) = self.heap.get(pid) else {
            return Err(self.malformed_value(EXPECTED, pid));
        };
        let &[tag, storage_type, key, _location, numel] = items.as_slice() else {
            return Err(self.malformed(EXPECTED, format!("a tuple of {} items", items.len())));
        };
        let tag_ok = match self.heap.get(tag) {
            Object::Str(s) => s == "storage",
            Object::Bytes(b) => b == b"storage",
            _ => false,
        };
        if !tag_ok {
            return Err(self.malformed_value("the tag 'storage'", tag));
        }
        let dtype = match self.heap.get(storage_type) {
            Object::Global(_, Some(Known::StorageType(dtype))) => *dtype,
            // An unknown storage class stays inert; a tensor built on it is refused later.
            Object::Global(global, None) => {
                return self.alloc(Object::inert((**global).clone(), pid));
            }
            _ => return Err(self.malformed_value("a storage class", storage_type)),
        };
        let key = match self.heap.get(key) {
            Object::Str(s) => s.clone(),
            _ => return Err(self.malformed_value("a storage key (a str)", key)),
        };
        let numel = match self.heap.get(numel) {
            Object::Int(n) => usize::try_from(*n).ok(),
            _ => None,
        }
        .ok_or_else(|| self.malformed_value("a non-negative element count", numel))?;
        self.alloc(Object::Storage(Box::new(Storage { key, dtype, numel })))
    }
}

#[cfg(test)]
mod tests;
