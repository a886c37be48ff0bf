//! Project tasks behind `cargo xtask`: the reproduction report and checkpoint conversion.
//!
//! ```no_run
//! use xtask::convert::{convert, ConvertOptions};
//! use xtask::repro::{run, ReproOptions};
//!
//! let report = convert("deit_small.pth".as_ref(), "deit_small.safetensors".as_ref(), &ConvertOptions::default())?;
//! println!("{} tensors", report.tensors);
//!
//! let outcome = run(&ReproOptions::default_run("repro".into())?, &mut |line| println!("{line}"))?;
//! println!("{} written in {:.0} s", outcome.report.display(), outcome.seconds);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod bench;
pub mod convert;
pub mod repro;
