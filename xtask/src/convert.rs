//! `.pth` to safetensors: `cargo xtask convert` is an alias of `idlevit convert`, and both
//! call the library's conversion.

pub use idlevit_train::convert::{ConvertOptions, ConvertReport, Family, convert};
