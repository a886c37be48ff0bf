//! Loads one checkpoint (`.pth` by its extension, safetensors otherwise) and prints the outcome
//! and the process's peak resident memory, to check the memory bounds of `docs/limits.md`
//! against crafted files: `cargo run --release -p idlevit-benches --example peak_memory -- FILE`. Linux only (it
//! reads `VmHWM` from `/proc/self/status`).

use std::path::Path;
use std::process::ExitCode;

use idlevit_checkpoint::{Checkpoint, pth};

/// Peak resident memory so far, in KiB, as the kernel reports it.
fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> ExitCode {
    let Some(arg) = std::env::args().nth(1) else {
        eprintln!("usage: peak_memory FILE");
        return ExitCode::FAILURE;
    };
    let path = Path::new(&arg);
    let outcome = if path.extension().is_some_and(|e| e == "pth") {
        pth::read_pth(path, &pth::PthOptions::default())
            .map(|w| w.tensors.len())
            .map_err(|e| e.to_string())
    } else {
        Checkpoint::load_safetensors(path)
            .map(|c| c.len())
            .map_err(|e| e.to_string())
    };
    match outcome {
        Ok(n) => println!("loaded {n} tensors"),
        Err(message) => println!("refused ({} bytes of message): {message}", message.len()),
    }
    match peak_kib() {
        Some(kib) => println!("peak resident memory: {} MiB", kib / 1024),
        None => println!("peak resident memory: unknown"),
    }
    ExitCode::SUCCESS
}
