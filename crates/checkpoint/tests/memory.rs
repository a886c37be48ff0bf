//! Peak memory while reading hostile files, measured by counting every allocation: however a
//! file is crafted, what the reader holds at once stays within a small multiple of the limits
//! `docs/limits.md` states. One test only, since the count is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use idlevit_checkpoint::pth::{
    HEAP_BYTES_PER_PICKLE_BYTE, MIN_HEAP_BYTES, PthError, PthOptions, read_pth_bytes,
};
use idlevit_checkpoint::{Checkpoint, MAX_HEADER_BYTES};

/// The system allocator, counting the bytes live and the most ever live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Both blocks may exist at once while the contents move.
        grew(new_size);
        // SAFETY: the caller's contract is passed on unchanged.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes live at once during it, beyond those
/// live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = f();
    (result, PEAK.load(Ordering::SeqCst) - before)
}

/// The memory budget of a pickle of `len` bytes.
fn budget(len: usize) -> usize {
    (len * HEAP_BYTES_PER_PICKLE_BYTE).max(MIN_HEAP_BYTES)
}

fn short(len: usize, text: &str) -> Vec<u8> {
    let mut p = vec![0x8c, u8::try_from(len).unwrap()];
    p.extend_from_slice(text.as_bytes());
    p
}

fn memo_put(p: &mut Vec<u8>, i: u32) {
    p.push(b'r');
    p.extend_from_slice(&i.to_le_bytes());
}

fn memo_get(p: &mut Vec<u8>, i: u32) {
    p.push(b'j');
    p.extend_from_slice(&i.to_le_bytes());
}

/// A float tensor of `numel` elements over storage `0`, memoized as entry `memo`.
fn tensor(p: &mut Vec<u8>, numel: u32, memo: u32) {
    p.extend_from_slice(b"\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93((");
    p.extend(short(7, "storage"));
    p.extend_from_slice(b"\x8c\x05torch\x8c\x0cFloatStorage\x93");
    p.extend(short(1, "0"));
    p.extend(short(3, "cpu"));
    p.push(b'J');
    p.extend_from_slice(&numel.to_le_bytes());
    p.extend_from_slice(b"tQK\x00(J");
    p.extend_from_slice(&numel.to_le_bytes());
    p.extend_from_slice(b"t(K\x01t\x89\x8c\x0bcollections\x8c\x0bOrderedDict\x93)RtR");
    memo_put(p, memo);
}

/// A zip archive of stored entries holding `pickle` and the storage `0`.
fn archive(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    // The reader accepts any stored zip; this writer is the simplest that makes one.
    let mut out = Vec::new();
    let mut central = Vec::new();
    let entries: [(&str, &[u8]); 3] = [
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little"),
        ("archive/data/0", storage),
    ];
    for (name, data) in entries {
        let offset = u32::try_from(out.len()).unwrap();
        let crc = crc32(data);
        let size = u32::try_from(data.len()).unwrap();
        let name_len = u16::try_from(name.len()).unwrap();
        out.extend_from_slice(b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0");
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02\x14\0\x14\0\0\0\0\0\0\0\0\0");
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32::try_from(out.len()).unwrap();
    let cd_size = u32::try_from(central.len()).unwrap();
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0\x03\0\x03\0");
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// 2000 nested dicts, so that every name is about 4 KB, then `keys` names of one memoized
/// tensor: a few bytes of pickle per name of 4 KB.
fn name_bomb(keys: u32) -> Vec<u8> {
    let mut p = b"\x80\x04}".to_vec();
    for level in 0..2000 {
        p.extend(short(1, "d"));
        p.push(b'}');
        memo_put(&mut p, level);
        p.push(b's');
        memo_get(&mut p, level);
    }
    p.extend(short(1, "t"));
    tensor(&mut p, 4, 2000);
    p.push(b's');
    for start in (0..keys).step_by(1000) {
        p.push(b'(');
        for k in start..keys.min(start + 1000) {
            let key = k.to_string();
            p.extend(short(key.len(), &key));
            memo_get(&mut p, 2000);
        }
        p.push(b'u');
    }
    p.extend(std::iter::repeat_n(b'0', 2000));
    p.push(b'.');
    archive(&p, &[0; 16])
}

/// A dict of `n` int keys, each with the value None: the most objects per pickle byte.
fn dict_bomb(n: u32) -> Vec<u8> {
    let mut p = b"\x80\x04}(".to_vec();
    for i in 0..n {
        p.push(b'J');
        p.extend_from_slice(&i.to_le_bytes());
        p.push(b'N');
        if i % 1000 == 999 {
            p.extend_from_slice(b"u(");
        }
    }
    p.extend_from_slice(b"u.");
    archive(&p, &[0; 16])
}

/// A safetensors file whose header of about `len` bytes declares empty tensors only.
fn empty_tensors(len: usize) -> Vec<u8> {
    let mut header = b"{".to_vec();
    let mut i = 0;
    while header.len() + 64 < len {
        if i > 0 {
            header.push(b',');
        }
        write!(
            header,
            r#""{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#
        )
        .unwrap();
        i += 1;
    }
    header.push(b'}');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file
}

#[test]
fn hostile_files_stay_within_their_memory_bounds() {
    // The stated bound: what the reader holds at once is at most this multiple of its budget.
    const SLACK: f64 = 1.25;

    // (5) 40 000 names of 4 KB of one tensor: 160 MB of names from 600 KB of pickle.
    let bytes = name_bomb(40_000);
    let (result, peak) = peak_during(|| read_pth_bytes(&bytes, &PthOptions::default()));
    let err = result.expect_err("the name bomb is refused");
    assert!(matches!(err, PthError::Limit { .. }), "{err}");
    let limit = budget(bytes.len());
    eprintln!("name bomb: peak {peak} bytes, budget {limit}");
    assert!(
        peak as f64 <= limit as f64 * SLACK,
        "name bomb: {peak} bytes, budget {limit}"
    );

    // (7) 500 000 dict entries from 3 MB of pickle.
    let bytes = dict_bomb(500_000);
    let (result, peak) = peak_during(|| read_pth_bytes(&bytes, &PthOptions::default()));
    let err = result.expect_err("the dict bomb holds no weights");
    assert!(
        err.to_string().len() < 2000,
        "an error of {} bytes",
        err.to_string().len()
    );
    let limit = budget(bytes.len());
    eprintln!("dict bomb: peak {peak} bytes, budget {limit}");
    assert!(
        peak as f64 <= limit as f64 * SLACK,
        "dict bomb: {peak} bytes, budget {limit}"
    );

    // (7) The largest header accepted, of empty tensors only: the most tensors per byte.
    let bytes = empty_tensors(MAX_HEADER_BYTES);
    let (result, peak) = peak_during(|| Checkpoint::from_safetensors_bytes(&bytes));
    let ckpt = result.expect("a valid file");
    assert!(ckpt.len() > 250_000, "{}", ckpt.len());
    drop(ckpt);
    eprintln!("safetensors: peak {peak} bytes, file {}", bytes.len());
    assert!(
        peak <= 10 * bytes.len(),
        "safetensors header: {peak} bytes for a file of {}",
        bytes.len()
    );
}
