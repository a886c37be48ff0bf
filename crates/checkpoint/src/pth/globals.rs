//! The globals this reader understands, and what "calling" each one means.
//!
//! Nothing here runs code named by a pickle: each understood global is a data constructor
//! (a dict, a tensor view, a dtype) re-implemented from its documented behaviour. Any other
//! global becomes an [`Unknown`](super::value::Unknown) object in the interpreter.
//!
//! One file on purpose: it is the whole allow-list, so that what a checkpoint may construct
//! can be audited in one place.

use super::budget::{table_bytes, vec_bytes};
use super::error::PthError;
use super::value::{Dict, Global, Heap, ObjId, Object, TensorView};

macro_rules! dtypes {
    ($($variant:ident = $name:literal, $size:literal;)*) => {
        /// Element type of a storage or tensor, as `torch` names it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum DType { $($variant,)* }

        impl DType {
            /// Every element type, for lookups by name.
            const ALL: &[DType] = &[$(DType::$variant,)*];

            /// Name as `torch` spells it (`torch.<name>`).
            pub fn name(self) -> &'static str {
                match self { $(DType::$variant => $name,)* }
            }

            /// Bytes per element.
            pub fn size(self) -> usize {
                match self { $(DType::$variant => $size,)* }
            }
        }
    };
}

dtypes! {
    F64 = "float64", 8;
    F32 = "float32", 4;
    F16 = "float16", 2;
    BF16 = "bfloat16", 2;
    I64 = "int64", 8;
    I32 = "int32", 4;
    I16 = "int16", 2;
    I8 = "int8", 1;
    U64 = "uint64", 8;
    U32 = "uint32", 4;
    U16 = "uint16", 2;
    U8 = "uint8", 1;
    Bool = "bool", 1;
    Complex32 = "complex32", 4;
    Complex64 = "complex64", 8;
    Complex128 = "complex128", 16;
    F8E4M3Fn = "float8_e4m3fn", 1;
    F8E4M3Fnuz = "float8_e4m3fnuz", 1;
    F8E5M2 = "float8_e5m2", 1;
    F8E5M2Fnuz = "float8_e5m2fnuz", 1;
    F8E8M0Fnu = "float8_e8m0fnu", 1;
    F4E2M1FnX2 = "float4_e2m1fn_x2", 1;
    QInt8 = "qint8", 1;
    QUInt8 = "quint8", 1;
    QInt32 = "qint32", 4;
    QUInt4x2 = "quint4x2", 1;
    QUInt2x4 = "quint2x4", 1;
}

impl DType {
    /// Whether tensors of this type are weights (converted to `f32`); others are skipped.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// The dtype `torch.<name>`, by its canonical name (the only one pickles use).
    fn from_name(name: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.name() == name)
    }
}

/// Storage classes named in persistent ids, with the element type they hold. `UntypedStorage`
/// holds bytes: its element count is a byte count.
const STORAGE_TYPES: &[(&str, DType)] = &[
    ("DoubleStorage", DType::F64),
    ("FloatStorage", DType::F32),
    ("HalfStorage", DType::F16),
    ("BFloat16Storage", DType::BF16),
    ("LongStorage", DType::I64),
    ("IntStorage", DType::I32),
    ("ShortStorage", DType::I16),
    ("CharStorage", DType::I8),
    ("ByteStorage", DType::U8),
    ("BoolStorage", DType::Bool),
    ("ComplexFloatStorage", DType::Complex64),
    ("ComplexDoubleStorage", DType::Complex128),
    ("QInt8Storage", DType::QInt8),
    ("QUInt8Storage", DType::QUInt8),
    ("QInt32Storage", DType::QInt32),
    ("QUInt4x2Storage", DType::QUInt4x2),
    ("QUInt2x4Storage", DType::QUInt2x4),
    ("UntypedStorage", DType::U8),
];

/// Most arguments any understood global takes; longer argument tuples are cut to this many
/// before they are copied, so that a huge memoized tuple passed to many calls costs nothing.
pub(crate) const MAX_CALL_ARGS: usize = 8;

/// A global this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    OrderedDict,
    Set,
    FrozenSet,
    CodecsEncode,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`, as the type argument of
    /// `_rebuild_from_type_v2`.
    TensorType,
    StorageType(DType),
    DType(DType),
    Device,
    Size,
}

/// What `module.name` means, if this reader understands it.
pub(crate) fn lookup(module: &str, name: &str) -> Option<Known> {
    let known = match (module, name) {
        ("collections", "OrderedDict") => Known::OrderedDict,
        // Protocol 2 pickles spell `builtins` the Python 2 way.
        ("builtins" | "__builtin__", "set") => Known::Set,
        ("builtins" | "__builtin__", "frozenset") => Known::FrozenSet,
        ("_codecs", "encode") => Known::CodecsEncode,
        ("torch._utils", "_rebuild_tensor") => Known::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Known::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Known::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Known::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Known::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Known::RebuildFromTypeV2,
        ("torch" | "torch._tensor", "Tensor") => Known::TensorType,
        ("torch.nn.parameter" | "torch.nn", "Parameter") => Known::TensorType,
        ("torch", "device") => Known::Device,
        ("torch", "Size") => Known::Size,
        ("torch.storage", "UntypedStorage") => Known::StorageType(DType::U8),
        ("torch" | "torch.cuda", _) if name.ends_with("Storage") => {
            let (_, dtype) = STORAGE_TYPES.iter().find(|(n, _)| *n == name)?;
            Known::StorageType(*dtype)
        }
        ("torch", _) => Known::DType(DType::from_name(name)?),
        _ => return None,
    };
    Some(known)
}

/// The result of calling `global` (understood as `known`) with `args`, built without running
/// anything. `offset` locates the calling opcode for error messages.
pub(crate) fn call(
    heap: &mut Heap,
    global: &Global,
    known: Known,
    args: &[ObjId],
    offset: usize,
) -> Result<ObjId, PthError> {
    let call = Call {
        global,
        args,
        offset,
    };
    let object = match known {
        Known::OrderedDict => Object::Dict(Box::new(call.dict_from_pairs(heap)?)),
        Known::Set | Known::FrozenSet => Object::Set(call.items(heap)?),
        Known::CodecsEncode => Object::Bytes(call.encode(heap)?),
        Known::Size => Object::Tuple(call.int_items(heap)?),
        Known::Device => Object::Device(call.device(heap)?),
        Known::RebuildTensor => Object::Tensor(Box::new(call.tensor_view(heap, 4, None)?)),
        Known::RebuildTensorV2 => Object::Tensor(Box::new(call.tensor_view(heap, 6, None)?)),
        Known::RebuildTensorV3 => Object::Tensor(Box::new(call.tensor_view(heap, 7, Some(6))?)),
        Known::RebuildParameter | Known::RebuildParameterWithState => {
            return call.tensor_arg(heap, 0, "data");
        }
        Known::RebuildFromTypeV2 => return call.rebuild_from_type(heap),
        Known::TensorType | Known::StorageType(_) | Known::DType(_) => {
            return Err(call.malformed("a callable global", format!("global `{global}`")));
        }
    };
    heap.alloc(object, offset)
}

/// One call of an understood global, for argument checking.
struct Call<'a> {
    global: &'a Global,
    args: &'a [ObjId],
    offset: usize,
}

impl Call<'_> {
    fn malformed(&self, expected: impl Into<String>, found: impl Into<String>) -> PthError {
        PthError::Malformed {
            offset: self.offset,
            context: format!("calling `{}`", self.global),
            expected: expected.into(),
            found: found.into(),
        }
    }

    fn arg(&self, index: usize) -> Result<ObjId, PthError> {
        self.args.get(index).copied().ok_or_else(|| {
            self.malformed(
                format!("at least {} arguments", index + 1),
                format!("{} arguments", self.args.len()),
            )
        })
    }

    fn arg_malformed(&self, heap: &Heap, index: usize, what: &str, id: ObjId) -> PthError {
        PthError::Malformed {
            offset: self.offset,
            context: format!("argument {index} of `{}`", self.global),
            expected: what.to_owned(),
            found: heap.describe(id),
        }
    }

    fn refuse_unknown(&self, index: usize, what: &str, global: &Global) -> PthError {
        PthError::TensorFromUnknown {
            offset: self.offset,
            context: format!("the {what} (argument {index}) of `{}`", self.global),
            global: global.to_string(),
        }
    }

    /// The items of the single iterable argument, or none when called without arguments.
    fn items(&self, heap: &Heap) -> Result<Vec<ObjId>, PthError> {
        let Some(&arg) = self.args.first() else {
            return Ok(Vec::new());
        };
        match heap.get(arg) {
            Object::Tuple(items) | Object::List(items) | Object::Set(items) => {
                heap.budget()
                    .check(vec_bytes::<ObjId>(items.len()), Some(self.offset))?;
                Ok(items.clone())
            }
            _ => Err(self.arg_malformed(heap, 0, "a tuple, list or set", arg)),
        }
    }

    fn dict_from_pairs(&self, heap: &Heap) -> Result<Dict, PthError> {
        let mut dict = Dict::default();
        if let Some(&arg) = self.args.first()
            && let Object::Dict(source) = heap.get(arg)
        {
            let n = source.entries().len();
            let copy = vec_bytes::<(ObjId, ObjId)>(n)
                .saturating_add(table_bytes(n, 2 * size_of::<(ObjId, usize)>()));
            heap.budget().check(copy, Some(self.offset))?;
            for &(k, v) in source.entries() {
                dict.insert(heap, k, v);
            }
            return Ok(dict);
        }
        for pair in self.items(heap)? {
            let (Object::Tuple(kv) | Object::List(kv)) = heap.get(pair) else {
                return Err(self.arg_malformed(heap, 0, "(key, value) pairs", pair));
            };
            let &[k, v] = kv.as_slice() else {
                return Err(self.arg_malformed(heap, 0, "(key, value) pairs", pair));
            };
            dict.insert(heap, k, v);
        }
        Ok(dict)
    }

    fn int_items(&self, heap: &Heap) -> Result<Vec<ObjId>, PthError> {
        let items = self.items(heap)?;
        for &item in &items {
            if !matches!(heap.get(item), Object::Int(_)) {
                return Err(self.arg_malformed(heap, 0, "a tuple of ints", item));
            }
        }
        Ok(items)
    }

    fn encode(&self, heap: &Heap) -> Result<Vec<u8>, PthError> {
        let text_id = self.arg(0)?;
        let Some(text) = heap.as_str(text_id) else {
            return Err(self.arg_malformed(heap, 0, "a str", text_id));
        };
        let encoding = match self.args.get(1) {
            None => "utf-8",
            Some(&id) => heap
                .as_str(id)
                .ok_or_else(|| self.arg_malformed(heap, 1, "an encoding name", id))?,
        };
        match encoding.to_ascii_lowercase().replace('_', "-").as_str() {
            "latin1" | "latin-1" | "iso-8859-1" => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| self.malformed("latin-1 text", "characters above U+00FF")),
            "utf-8" | "utf8" => Ok(text.as_bytes().to_vec()),
            other => Err(self.malformed("encoding latin1 or utf-8", format!("{other:?}"))),
        }
    }

    fn device(&self, heap: &Heap) -> Result<String, PthError> {
        let kind = self.arg(0)?;
        let Some(kind_name) = heap.as_str(kind) else {
            return Err(self.arg_malformed(heap, 0, "a device type string", kind));
        };
        match self.args.get(1).map(|&id| (id, heap.get(id))) {
            None | Some((_, Object::None)) => Ok(kind_name.to_owned()),
            Some((_, Object::Int(index))) => Ok(format!("{kind_name}:{index}")),
            Some((id, _)) => Err(self.arg_malformed(heap, 1, "a device index", id)),
        }
    }

    fn usize_arg(&self, heap: &Heap, index: usize, what: &str) -> Result<usize, PthError> {
        let id = self.arg(index)?;
        as_usize(heap, id).ok_or_else(|| self.arg_malformed(heap, index, what, id))
    }

    fn usize_list(&self, heap: &Heap, index: usize, what: &str) -> Result<Vec<usize>, PthError> {
        let id = self.arg(index)?;
        let (Object::Tuple(items) | Object::List(items)) = heap.get(id) else {
            return Err(self.arg_malformed(heap, index, what, id));
        };
        items
            .iter()
            .map(|&item| {
                as_usize(heap, item).ok_or_else(|| self.arg_malformed(heap, index, what, item))
            })
            .collect()
    }

    /// `_rebuild_tensor(storage, storage_offset, size, stride, ...)` and its v2 and v3 forms,
    /// which take at least `min_args` arguments and, for v3, the dtype at `dtype_index`.
    fn tensor_view(
        &self,
        heap: &Heap,
        min_args: usize,
        dtype_index: Option<usize>,
    ) -> Result<TensorView, PthError> {
        self.arg(min_args - 1)?; // refuses fewer than `min_args` arguments
        let storage_id = self.arg(0)?;
        let storage = match heap.get(storage_id) {
            Object::Storage(storage) => (**storage).clone(),
            Object::Unknown(u) => return Err(self.refuse_unknown(0, "storage", &u.global)),
            _ => return Err(self.arg_malformed(heap, 0, "a storage", storage_id)),
        };
        let offset = self.usize_arg(heap, 1, "a non-negative storage offset")?;
        let shape = self.usize_list(heap, 2, "a tuple of non-negative sizes")?;
        let stride = self.usize_list(heap, 3, "a tuple of non-negative strides")?;
        if shape.len() != stride.len() {
            return Err(self.malformed(
                format!("as many strides as sizes ({})", shape.len()),
                format!("{} strides", stride.len()),
            ));
        }
        let dtype = match dtype_index {
            None => storage.dtype,
            Some(index) => {
                let id = self.arg(index)?;
                match heap.get(id) {
                    Object::DType(dtype) => *dtype,
                    Object::Global(global, None) => {
                        return Err(self.refuse_unknown(index, "dtype", global));
                    }
                    _ => return Err(self.arg_malformed(heap, index, "a torch dtype", id)),
                }
            }
        };
        Ok(TensorView {
            storage,
            dtype,
            offset,
            shape,
            stride,
        })
    }

    /// `_rebuild_parameter(data, ...)`: the parameter is its data tensor.
    fn tensor_arg(&self, heap: &Heap, index: usize, what: &str) -> Result<ObjId, PthError> {
        let id = self.arg(index)?;
        match heap.get(id) {
            Object::Tensor(_) => Ok(id),
            Object::Unknown(unknown) => Err(self.refuse_unknown(index, what, &unknown.global)),
            _ => Err(self.arg_malformed(heap, index, "a tensor", id)),
        }
    }

    /// `_rebuild_from_type_v2(func, new_type, args, state)`: `func(*args)` when both `func`
    /// and `new_type` are understood; an inert object naming the culprit otherwise.
    fn rebuild_from_type(&self, heap: &mut Heap) -> Result<ObjId, PthError> {
        let func = self.arg(0)?;
        let new_type = self.arg(1)?;
        let args_id = self.arg(2)?;
        let inner_args = match heap.get(args_id) {
            Object::Tuple(items) if items.len() <= MAX_CALL_ARGS => items.clone(),
            _ => return Err(self.arg_malformed(heap, 2, "a short tuple of arguments", args_id)),
        };
        let inert =
            |heap: &mut Heap, global| heap.alloc(Object::inert(global, args_id), self.offset);
        match heap.get(new_type) {
            Object::Global(_, Some(Known::TensorType)) => {}
            Object::Global(global, None) => {
                let global = (**global).clone();
                return inert(heap, global);
            }
            _ => return Err(self.arg_malformed(heap, 1, "torch.Tensor or a subclass", new_type)),
        }
        let (global, known) = match heap.get(func) {
            Object::Global(global, known) => ((**global).clone(), *known),
            _ => return Err(self.arg_malformed(heap, 0, "a rebuild function", func)),
        };
        match known {
            // Refusing itself as `func` keeps the rebuild from recursing.
            Some(Known::RebuildFromTypeV2) => {
                Err(self.arg_malformed(heap, 0, "a rebuild function", func))
            }
            Some(known) => call(heap, &global, known, &inner_args, self.offset),
            None => inert(heap, global),
        }
    }
}

fn as_usize(heap: &Heap, id: ObjId) -> Option<usize> {
    match heap.get(id) {
        Object::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn understands_storage_classes_and_dtypes() {
        assert_eq!(
            lookup("torch", "HalfStorage"),
            Some(Known::StorageType(DType::F16))
        );
        assert_eq!(
            lookup("torch", "BFloat16Storage"),
            Some(Known::StorageType(DType::BF16))
        );
        assert_eq!(
            lookup("torch.storage", "UntypedStorage"),
            Some(Known::StorageType(DType::U8))
        );
        assert_eq!(lookup("torch", "float16"), Some(Known::DType(DType::F16)));
        assert_eq!(lookup("torch", "int64"), Some(Known::DType(DType::I64)));
        assert_eq!(lookup("__builtin__", "set"), Some(Known::Set));
    }

    #[test]
    fn everything_else_is_unknown() {
        for (module, name) in [
            ("posix", "system"),
            ("os", "system"),
            ("__builtin__", "eval"),
            ("builtins", "exec"),
            ("torch", "load"),
            ("torch", "NotAStorage"),
            ("torch.storage", "TypedStorage"),
            ("torch.storage", "_load_from_bytes"),
            ("argparse", "Namespace"),
            ("numpy.core.multiarray", "_reconstruct"),
        ] {
            assert_eq!(lookup(module, name), None, "{module}.{name}");
        }
    }

    #[test]
    fn codecs_encode_makes_bytes() {
        let mut heap = Heap::default();
        let global = Global::new("_codecs", "encode");
        let text = heap.alloc(Object::Str("a\u{ff}".into()), 0).unwrap();
        let enc = heap.alloc(Object::Str("latin1".into()), 0).unwrap();
        let id = call(&mut heap, &global, Known::CodecsEncode, &[text, enc], 0);
        assert_eq!(
            id.map(|id| heap.get(id).clone()).ok(),
            Some(Object::Bytes(vec![b'a', 0xff]))
        );
        let wide = heap.alloc(Object::Str("\u{100}".into()), 0).unwrap();
        assert!(call(&mut heap, &global, Known::CodecsEncode, &[wide, enc], 0).is_err());
    }
}
