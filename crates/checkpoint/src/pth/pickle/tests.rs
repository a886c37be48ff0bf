use super::*;
use crate::pth::testutil::{Pickle, repr};

fn eval(bytes: &[u8]) -> String {
    match unpickle(bytes, false) {
        Ok(u) => repr(&u.heap, u.root),
        Err(err) => panic!("unpickling failed: {err}"),
    }
}

fn error(bytes: &[u8]) -> String {
    match unpickle(bytes, false) {
        Ok(u) => panic!("expected an error, got {}", repr(&u.heap, u.root)),
        Err(err) => err.to_string(),
    }
}

fn p2() -> Pickle {
    Pickle::proto(2)
}

#[test]
fn integers() {
    assert_eq!(eval(&p2().int(7).stop()), "7");
    assert_eq!(eval(&p2().int(300).stop()), "300");
    assert_eq!(eval(&p2().raw(b"J\xfe\xff\xff\xff").stop()), "-2");
    assert_eq!(eval(&p2().raw(b"\x8a\x00").stop()), "0");
    assert_eq!(eval(&p2().raw(b"\x8a\x02\xff\x7f").stop()), "32767");
    assert_eq!(eval(&p2().raw(b"\x8a\x01\xff").stop()), "-1");
    assert_eq!(
        eval(
            &p2()
                .raw(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01")
                .stop()
        ),
        "<bigint>"
    );
    assert_eq!(
        eval(
            &p2()
                .raw(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff")
                .stop()
        ),
        "-1"
    );
    assert_eq!(
        eval(
            &p2()
                .raw(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00")
                .stop()
        ),
        "<bigint>"
    );
    assert_eq!(eval(&p2().raw(b"\x8b\x01\x00\x00\x00\x05").stop()), "5");
    assert!(error(&p2().raw(b"\x8b\xff\xff\xff\xff").stop()).contains("non-negative length"));
    assert_eq!(eval(b"I42\n."), "42");
    assert_eq!(eval(b"I01\n."), "True");
    assert_eq!(eval(b"I00\n."), "False");
    assert_eq!(eval(b"L-12L\n."), "-12");
    assert_eq!(eval(b"L123456789012345678901234567890L\n."), "<bigint>");
    assert!(error(b"Ix\n.").contains("expected a decimal integer"));
    assert_eq!(eval(&p2().raw(&[0x88]).stop()), "True");
    assert_eq!(eval(&p2().raw(&[0x89]).stop()), "False");
    assert_eq!(eval(&p2().raw(b"N").stop()), "None");
}

#[test]
fn floats() {
    assert_eq!(
        eval(&p2().raw(b"G\x3f\xb9\x99\x99\x99\x99\x99\x9a").stop()),
        "0.1"
    );
    assert_eq!(eval(b"F2.5\n."), "2.5");
    assert_eq!(eval(b"Finf\n."), "inf");
    assert!(error(b"Fabc\n.").contains("expected a decimal float"));
}

#[test]
fn strings_and_bytes() {
    assert_eq!(eval(&p2().str("héllo").stop()), "\"héllo\"");
    assert_eq!(eval(&Pickle::proto(4).raw(b"\x8c\x02hi").stop()), "\"hi\"");
    assert_eq!(
        eval(&Pickle::proto(4).raw(b"\x8d\x02\0\0\0\0\0\0\0hi").stop()),
        "\"hi\""
    );
    assert_eq!(eval(b"Vcaf\xe9 \\u20ac\n."), "\"café €\"");
    assert_eq!(eval(b"S'a\\'b\\n\\x41\\101'\n."), "\"a'b\\nAA\"");
    assert_eq!(eval(b"S\"q\"\n."), "\"q\"");
    assert!(error(b"S'unterminated\n.").contains("expected a quoted string"));
    assert_eq!(eval(&p2().raw(b"T\x03\0\0\0abc").stop()), "\"abc\"");
    assert_eq!(
        eval(&p2().raw(b"U\x02\xff\xfe").stop()),
        "b\"\u{fffd}\u{fffd}\""
    );
    assert_eq!(
        eval(&Pickle::proto(3).raw(b"B\x02\0\0\0ab").stop()),
        "b\"ab\""
    );
    assert_eq!(eval(&Pickle::proto(3).raw(b"C\x01z").stop()), "b\"z\"");
    assert_eq!(
        eval(&Pickle::proto(4).raw(b"\x8e\x01\0\0\0\0\0\0\0z").stop()),
        "b\"z\""
    );
    assert_eq!(
        eval(&Pickle::proto(5).raw(b"\x96\x01\0\0\0\0\0\0\0z").stop()),
        "b\"z\""
    );
    assert!(error(&p2().raw(b"X\x02\0\0\0\xff\xfe").stop()).contains("expected UTF-8 text"));
}

#[test]
fn containers() {
    let p = p2()
        .raw(b"(K\x01K\x02t")
        .int(3)
        .raw(&[0x85])
        .raw(b"K\x04K\x05\x86");
    let p = p.raw(b"K\x06K\x07K\x08\x87\x86\x87");
    assert_eq!(eval(&p.stop()), "((1, 2), (3,), ((4, 5), (6, 7, 8)))");
    assert_eq!(eval(&p2().raw(b")").stop()), "()");
    let p = p2()
        .raw(b"]K\x01a(K\x02K\x03e")
        .raw(b"(K\x04l")
        .raw(b"\x86");
    assert_eq!(eval(&p.stop()), "([1, 2, 3], [4])");
    let p = p2()
        .raw(b"}")
        .str("a")
        .int(1)
        .raw(b"s(")
        .str("b")
        .int(2)
        .str("a")
        .int(3)
        .raw(b"u");
    assert_eq!(eval(&p.stop()), "{\"a\": 3, \"b\": 2}");
    assert_eq!(eval(&p2().raw(b"(K\x01K\x02d").stop()), "{1: 2}");
    let p = Pickle::proto(4)
        .raw(b"\x8f(K\x01K\x02\x90")
        .raw(b"(K\x03\x91")
        .raw(b"\x86");
    assert_eq!(eval(&p.stop()), "(set(1, 2), set(3))");
    assert!(error(&p2().raw(b"(K\x01d").stop()).contains("keys and values in pairs"));
    assert!(error(&p2().int(1).int(2).raw(b"a").stop()).contains("expected a list, found int 1"));
    assert!(error(&p2().int(1).int(2).int(3).raw(b"s").stop()).contains("expected a dict"));
    assert!(error(&p2().int(1).raw(b"(u").stop()).contains("expected a dict"));
}

#[test]
fn stack_manipulation() {
    assert_eq!(eval(&p2().int(1).int(2).raw(b"0").stop()), "1");
    assert_eq!(eval(&p2().int(1).raw(b"(K\x02K\x031").stop()), "1");
    // POP with nothing above the MARK discards the MARK.
    assert_eq!(eval(&p2().int(1).raw(b"(0").stop()), "1");
    assert_eq!(eval(&p2().int(1).raw(b"2\x86").stop()), "(1, 1)");
    let framed = Pickle::proto(4)
        .raw(b"\x95\x02\0\0\0\0\0\0\0")
        .int(9)
        .stop();
    assert_eq!(eval(&framed), "9");
}

#[test]
fn memo_shares_objects_and_sees_later_mutation() {
    // The dict is memoized while empty and filled afterwards; a later GET sees it filled.
    let p = p2()
        .raw(b"}q\x00")
        .str("k")
        .int(1)
        .raw(b"s")
        .raw(b"h\x00\x86");
    assert_eq!(eval(&p.stop()), "({\"k\": 1}, {\"k\": 1})");
    let p = p2()
        .int(5)
        .raw(b"r\x00\x01\x00\x00")
        .raw(b"j\x00\x01\x00\x00\x86");
    assert_eq!(eval(&p.stop()), "(5, 5)");
    assert_eq!(eval(b"I3\np7\n0g7\n."), "3");
    let p = Pickle::proto(4)
        .int(1)
        .raw(&[0x94])
        .int(2)
        .raw(&[0x94])
        .raw(b"h\x00h\x01\x86");
    assert_eq!(eval(&p.stop()), "(1, 2)");
    let err = error(&p2().raw(b"h\x05").stop());
    assert!(
        err.contains("BINGET reads memo entry 5, which was never stored"),
        "{err}"
    );
    assert!(error(&p2().raw(b"q\x00").stop()).contains("stack underflow"));
}

#[test]
fn globals_calls_and_objects() {
    let p = p2().global("collections", "OrderedDict").raw(b")R");
    assert_eq!(eval(&p.stop()), "{}");
    let pairs = p2()
        .global("collections", "OrderedDict")
        .raw(b"]")
        .str("a")
        .int(1)
        .raw(b"\x86a\x85R");
    assert_eq!(eval(&pairs.stop()), "{\"a\": 1}");
    let p = p2()
        .global("torch", "Size")
        .int_tuple(&[2, 3])
        .raw(&[0x85])
        .raw(b"R");
    assert_eq!(eval(&p.stop()), "(2, 3)");
    let p = p2()
        .global("torch", "device")
        .str("cuda")
        .int(1)
        .raw(b"\x86R");
    assert_eq!(eval(&p.stop()), "device(\"cuda:1\")");
    assert_eq!(
        eval(&p2().global("torch", "bfloat16").stop()),
        "torch.bfloat16"
    );
    let p = p2().global("__builtin__", "set").raw(b"]K\x01a\x85R");
    assert_eq!(eval(&p.stop()), "set(1)");
    let p = p2()
        .global("_codecs", "encode")
        .str("\u{e9}")
        .str("latin1")
        .raw(b"\x86R");
    assert_eq!(eval(&p.stop()), "b\"\u{fffd}\"");
    let stack = Pickle::proto(4)
        .str("collections")
        .str("OrderedDict")
        .raw(&[0x93])
        .raw(b")R");
    assert_eq!(eval(&stack.stop()), "{}");
    assert!(
        error(&p2().global("torch", "float32").raw(b")R").stop()).contains("expected a callable")
    );
    assert!(error(&p2().int(1).raw(b")R").stop()).contains("expected a callable global"));
    assert!(
        error(
            &p2()
                .global("collections", "OrderedDict")
                .int(1)
                .raw(b"R")
                .stop()
        )
        .contains("expected an argument tuple")
    );
}

#[test]
fn unknown_globals_are_inert_and_recorded() {
    let p = p2()
        .raw(b"(")
        .global("posix", "system")
        .str("touch /tmp/x")
        .raw(&[0x85])
        .raw(b"R")
        .global("argparse", "Namespace")
        .raw(b")\x81}")
        .str("lr")
        .int(1)
        .raw(b"sb")
        .global("posix", "system")
        .raw(b"l");
    let u = unpickle(&p.clone().stop(), false).unwrap();
    assert_eq!(
        repr(&u.heap, u.root),
        "[<posix.system args=(\"touch /tmp/x\",) state=- items=[]>, \
         <argparse.Namespace args=() state={\"lr\": 1} items=[]>, <unknown posix.system>]"
    );
    assert_eq!(u.unknown_globals, ["posix.system", "argparse.Namespace"]);
    // Calling the result of an unknown call, and filling it like a container, stays inert.
    let p = p2()
        .global("m", "f")
        .raw(b")R)R")
        .raw(b"(K\x01e(K\x02K\x03u");
    assert_eq!(eval(&p.stop()), "<m.f args=() state=- items=[1, 2, 3]>");
    let p = Pickle::proto(4)
        .global("m", "C")
        .raw(b")}")
        .str("k")
        .int(1)
        .raw(b"s\x92");
    assert_eq!(eval(&p.stop()), "<m.C args=() state=- items=[]>");
    assert_eq!(
        eval(b"(S'x'\nimod\nCls\n."),
        "<mod.Cls args=(\"x\",) state=- items=[]>"
    );
    assert_eq!(
        eval(&p2().raw(b"(").global("mod", "Cls").int(1).raw(b"o").stop()),
        "<mod.Cls args=(1,) state=- items=[]>"
    );
}

#[test]
fn strict_mode_refuses_the_first_unknown_global() {
    let p = p2()
        .raw(b"(")
        .global("collections", "OrderedDict")
        .global("posix", "system")
        .raw(b"l")
        .stop();
    let err = unpickle(&p, true).unwrap_err().to_string();
    assert_eq!(
        err,
        "refusing unknown pickle global `posix.system` (pickle offset 28)"
    );
    let stack = Pickle::proto(4)
        .str("builtins")
        .str("eval")
        .raw(&[0x93])
        .stop();
    let err = unpickle(&stack, true).unwrap_err().to_string();
    assert!(err.contains("`builtins.eval`"), "{err}");
    let inst = b"(imod\nCls\n.";
    assert!(
        unpickle(inst, true)
            .unwrap_err()
            .to_string()
            .contains("`mod.Cls`")
    );
    assert!(unpickle(&p2().global("torch", "HalfStorage").stop(), true).is_ok());
}

#[test]
fn tensors_are_rebuilt_from_storages() {
    let t = p2()
        .tensor("FloatStorage", "0", 12, 2, &[2, 3], &[1, 2])
        .stop();
    assert_eq!(
        eval(&t),
        "tensor(\"0\", float32, offset=2, shape=[2, 3], stride=[1, 2])"
    );
    let param = p2()
        .global("torch._utils", "_rebuild_parameter")
        .tensor("HalfStorage", "k", 4, 0, &[4], &[1])
        .raw(&[0x88])
        .global("collections", "OrderedDict")
        .raw(b")R\x87R");
    assert_eq!(
        eval(&param.stop()),
        "tensor(\"k\", float16, offset=0, shape=[4], stride=[1])"
    );
    let with_state = p2()
        .global("torch._utils", "_rebuild_parameter_with_state")
        .raw(b"(")
        .tensor("BFloat16Storage", "k", 1, 0, &[], &[])
        .raw(&[0x88])
        .global("collections", "OrderedDict")
        .raw(b")R}t")
        .raw(b"R");
    assert_eq!(
        eval(&with_state.stop()),
        "tensor(\"k\", bfloat16, offset=0, shape=[], stride=[])"
    );
    let v3 = p2()
        .global("torch._utils", "_rebuild_tensor_v3")
        .raw(b"(")
        .raw(b"(")
        .str("storage")
        .global("torch.storage", "UntypedStorage")
        .str("0")
        .str("cpu")
        .int(8)
        .raw(b"tQ")
        .int(0)
        .int_tuple(&[4])
        .int_tuple(&[1])
        .raw(&[0x89])
        .global("collections", "OrderedDict")
        .raw(b")R")
        .global("torch", "uint16")
        .raw(b"tR");
    assert_eq!(
        eval(&v3.stop()),
        "tensor(\"0\", uint16, offset=0, shape=[4], stride=[1])"
    );
    let typed = p2()
        .global("torch._tensor", "_rebuild_from_type_v2")
        .raw(b"(")
        .global("torch._utils", "_rebuild_tensor_v2")
        .global("torch", "Tensor")
        .raw(b"(")
        .storage("DoubleStorage", "3", 2)
        .int(0)
        .int_tuple(&[2])
        .int_tuple(&[1])
        .raw(&[0x89])
        .raw(b"Nt}tR");
    assert_eq!(
        eval(&typed.stop()),
        "tensor(\"3\", float64, offset=0, shape=[2], stride=[1])"
    );
}

#[test]
fn tensors_from_unknown_globals_are_refused() {
    let fake_storage = p2()
        .global("torch._utils", "_rebuild_tensor_v2")
        .raw(b"(")
        .global("posix", "system")
        .str("id")
        .raw(b"\x85R")
        .int(0)
        .int_tuple(&[1])
        .int_tuple(&[1])
        .raw(b"\x89NtR")
        .stop();
    let err = error(&fake_storage);
    assert!(
        err.contains("storage (argument 0) of `torch._utils._rebuild_tensor_v2`"),
        "{err}"
    );
    assert!(
        err.contains("unknown pickle global `posix.system`"),
        "{err}"
    );
    let fake_class = p2()
        .global("torch._utils", "_rebuild_tensor_v2")
        .raw(b"(")
        .raw(b"(")
        .str("storage")
        .global("evil", "Storage")
        .str("0")
        .str("cpu")
        .int(1)
        .raw(b"tQ")
        .int(0)
        .int_tuple(&[1])
        .int_tuple(&[1])
        .raw(b"\x89NtR")
        .stop();
    assert!(error(&fake_class).contains("unknown pickle global `evil.Storage`"));
    let fake_data = p2()
        .global("torch._utils", "_rebuild_parameter")
        .raw(b"(")
        .global("builtins", "eval")
        .str("1")
        .raw(b"\x85R\x88NtR")
        .stop();
    let err = error(&fake_data);
    assert!(
        err.contains("data (argument 0) of `torch._utils._rebuild_parameter`"),
        "{err}"
    );
    assert!(err.contains("`builtins.eval`"), "{err}");
    let subclass = p2()
        .global("torch._tensor", "_rebuild_from_type_v2")
        .raw(b"(")
        .global("torch._utils", "_rebuild_tensor_v2")
        .global("evil", "Tensor")
        .raw(b")NtR")
        .stop();
    assert_eq!(eval(&subclass), "<evil.Tensor args=() state=- items=[]>");
}

#[test]
fn malformed_tensor_arguments_are_refused() {
    let negative = p2()
        .global("torch._utils", "_rebuild_tensor_v2")
        .raw(b"(")
        .storage("FloatStorage", "0", 4)
        .int(0)
        .raw(b"(J\xff\xff\xff\xfft")
        .int_tuple(&[1])
        .raw(b"\x89NtR")
        .stop();
    let err = error(&negative);
    assert!(
        err.contains("expected a tuple of non-negative sizes, found int -1"),
        "{err}"
    );
    let ranks = p2()
        .global("torch._utils", "_rebuild_tensor_v2")
        .raw(b"(")
        .storage("FloatStorage", "0", 4)
        .int(0)
        .int_tuple(&[2, 2])
        .int_tuple(&[1])
        .raw(b"\x89NtR")
        .stop();
    assert!(error(&ranks).contains("expected as many strides as sizes (2), found 1 strides"));
    let short = p2()
        .global("torch._utils", "_rebuild_tensor_v2")
        .raw(b")R")
        .stop();
    assert!(error(&short).contains("expected at least 6 arguments, found 0 arguments"));
    let bad_pid = p2().raw(b"(").str("module").raw(b"tQ").stop();
    assert!(
        error(&bad_pid)
            .contains("expected a ('storage', storage type, key, location, numel) tuple")
    );
    let text_pid = b"P0\n.";
    assert!(error(text_pid).contains("found str \"0\""));
}

#[test]
fn structural_errors_name_the_opcode_and_offset() {
    assert_eq!(
        error(&p2().raw(&[0xff]).stop()),
        "unknown pickle opcode 0xff at offset 2"
    );
    assert_eq!(
        error(&p2().raw(b"t").stop()),
        "pickle offset 2: TUPLE expected a MARK on the stack, found none"
    );
    assert_eq!(
        error(&p2().raw(b"\x85").stop()),
        "pickle stack underflow: TUPLE1 at offset 2 expected a value, found none"
    );
    assert!(error(&p2().raw(b"(").stop()).contains("STOP at offset 3"));
    assert_eq!(
        error(&p2().int(1).bytes),
        "pickle ends at offset 4 without a STOP opcode"
    );
    assert!(
        error(&[0x80, 6, b'N', b'.']).contains("expected a protocol up to 5, found protocol 6")
    );
    assert!(error(&p2().raw(&[0x82, 1]).stop()).contains("unsupported pickle opcode EXT1"));
    assert!(error(&Pickle::proto(5).raw(&[0x97]).stop()).contains("NEXT_BUFFER"));
    assert_eq!(eval(&Pickle::proto(5).int(1).raw(&[0x98]).stop()), "1");
    let err = error(&p2().raw(b"X\x10\0\0\0abc").stop());
    assert_eq!(
        err,
        "pickle truncated: BINUNICODE at offset 2 needs 16 more bytes, 4 left"
    );
    // A MARK fences off the values below it.
    assert!(error(&p2().int(1).raw(b"(\x85").stop()).contains("stack underflow"));
}

#[test]
fn nesting_is_bounded() {
    let deep = p2().raw(&vec![b'('; MAX_MARK_DEPTH + 1]).stop();
    assert!(error(&deep).contains("nesting of MARKs exceeds the limit of 10000"));
    let ok = p2()
        .raw(&vec![b'('; MAX_MARK_DEPTH])
        .raw(&vec![b'l'; MAX_MARK_DEPTH - 1])
        .raw(b"l")
        .stop();
    let u = unpickle(&ok, false).unwrap();
    assert!(repr(&u.heap, u.root).starts_with("[[[[[[[["));
}

#[test]
fn amplification_is_bounded() {
    // A list of 1000 items, passed to set() a million times, would copy a billion items.
    let mut p = p2().raw(b"(");
    for _ in 0..1000 {
        p = p.raw(b"N");
    }
    p = p.raw(b"lq\x00").global("builtins", "set").raw(b"q\x01");
    let call = b"h\x01h\x00\x85R0";
    let mut bytes = p.bytes;
    for _ in 0..10_000 {
        bytes.extend_from_slice(call);
    }
    bytes.extend_from_slice(b"N.");
    let err = error(&bytes);
    assert!(
        err.contains("memory for what the checkpoint's pickle builds"),
        "{err}"
    );
    // A long key, memoized once, inserted into many dicts would be copied into each index.
    let mut bytes = p2().str(&"k".repeat(1 << 20)).raw(b"q\x00").bytes;
    for _ in 0..1000 {
        bytes.extend_from_slice(b"}h\x00Ns0");
    }
    bytes.extend_from_slice(b"N.");
    let err = error(&bytes);
    assert!(
        err.contains("memory for what the checkpoint's pickle builds"),
        "{err}"
    );
}

#[test]
fn every_truncation_of_a_valid_pickle_is_an_error() {
    let full = p2()
        .raw(b"}q\x00(")
        .str("model")
        .raw(b"}(")
        .str("w")
        .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1])
        .str("b")
        .tensor("HalfStorage", "1", 300, 1, &[2], &[100])
        .raw(b"u")
        .str("args")
        .global("argparse", "Namespace")
        .raw(b")\x81}")
        .str("lr")
        .raw(b"G\x3f\xb9\x99\x99\x99\x99\x99\x9a")
        .raw(b"sbu")
        .stop();
    assert!(unpickle(&full, false).is_ok());
    for len in 0..full.len() {
        assert!(
            unpickle(&full[..len], false).is_err(),
            "prefix of length {len}"
        );
    }
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = unpickle(&bytes, false);
            let _ = unpickle(&bytes, true);
        }

        #[test]
        fn arbitrary_opcode_soup_never_panics(
            ops in proptest::collection::vec(
                prop::sample::select(b"()tlds}]KNa\x85\x86\x87\x88eubRQq\x00h\x01\x81\x8f\x90\x91\x94\x930121".to_vec()),
                0..64,
            )
        ) {
            let mut bytes = Pickle::proto(4).global("collections", "OrderedDict").str("storage").bytes;
            bytes.extend(ops);
            bytes.push(b'.');
            let _ = unpickle(&bytes, false);
        }
    }
}
