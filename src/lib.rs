//! conto-rs: spend-policy control for Rust services that settle payments themselves.
//!
//! Before a paid action runs, conto-rs asks a policy authority (Conto's API, or the embedded
//! [`Engine`] with Conto's semantics) to approve it. A denied action never reaches the
//! settlement code; an approved one has its settled spend recorded back.
//!
//! - [`Conto::run`] / [`Conto::guard`]: the one pipeline, `authorize -> settle -> record | release`.
//! - `#[paid_action]` (feature `macros`): the pipeline as an attribute on an async settlement fn.
//! - [`tower`] (feature `tower`): the pipeline as a tower layer around paid HTTP routes.
#![deny(missing_docs)]

pub use conto_core::*;

#[cfg(feature = "macros")]
pub use conto_macros::paid_action;

/// The tower layer for paid HTTP routes.
#[cfg(feature = "tower")]
pub mod tower {
    pub use conto_tower::*;
}
