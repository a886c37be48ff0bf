//! Project tasks behind `cargo xtask`: checkpoint conversion.
//!
//! ```no_run
//! use xtask::convert::{convert, ConvertOptions};
//!
//! let report = convert("deit_small.pth".as_ref(), "deit_small.safetensors".as_ref(), &ConvertOptions::default())?;
//! println!("{} tensors", report.tensors);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod convert;
