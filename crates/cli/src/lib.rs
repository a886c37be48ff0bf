//! The `idlevit` command line: its arguments and the checks of their values, and one module
//! per command ([`cmd`]) that calls the library crates and reports what they did. The work
//! itself (preprocessing, data sets, finetuning, evaluation, benchmarks) is done by
//! `idlevit-data` and `idlevit-train`.

#![deny(missing_docs)]

pub mod args;
pub mod checks;
pub mod cmd;
pub mod memory;
pub mod policy;
pub mod precision;
