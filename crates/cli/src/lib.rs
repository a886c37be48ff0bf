//! The library behind the `idlevit` command: weight loading by file type, image
//! preprocessing as timm evaluates DeiT, and the commands themselves.
//!
//! ```
//! use idlevit_cli::preprocess::{preprocess, EvalTransform};
//!
//! let image = image::DynamicImage::new_rgb8(300, 260);
//! let tensor = preprocess(&image, &EvalTransform::for_size(224))?;
//! assert_eq!(tensor.shape(), &[3, 224, 224]);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod augment;
pub mod checks;
pub mod commands;
pub mod data;
pub mod default_model;
pub mod digits;
pub mod distributed;
pub mod evaluate;
pub mod finetune;
pub mod memory;
pub mod output;
pub mod policy;
pub mod precision;
pub mod preprocess;
pub mod weights;
