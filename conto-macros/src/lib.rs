//! The `#[paid_action]` attribute of conto-rs.
#![deny(missing_docs)]

use proc_macro::TokenStream;

/// Guards an async settlement function with the conto pipeline.
#[proc_macro_attribute]
pub fn paid_action(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
