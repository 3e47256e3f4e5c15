//! A tower layer that puts conto-rs spend policies in front of paid HTTP routes.
#![deny(missing_docs)]
