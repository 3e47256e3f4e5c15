//! conto-rs: spend-policy control for Rust services that settle payments themselves.
#![deny(missing_docs)]

pub use conto_core::*;
