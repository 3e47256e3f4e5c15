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

#[cfg(feature = "client")]
pub use conto_client::{ClientError, ContoClient, ContoClientBuilder};
#[cfg(feature = "outbox")]
pub use conto_store::DurableEngine;

/// Conto's HTTP API (feature `client`): [`ContoClient`], policy sync, per-actor bindings and
/// the managed-actor lifecycle.
#[cfg(feature = "client")]
pub mod client {
    pub use conto_client::*;
}

/// Per-actor bindings with SDK keys sealed at rest (feature `credentials`).
#[cfg(feature = "credentials")]
pub mod credentials {
    pub use conto_client::credentials::*;
}

/// SQLite storage (feature `outbox`): the durable record outbox and the ledger journal.
#[cfg(feature = "outbox")]
pub mod outbox {
    pub use conto_store::*;
}

/// Why [`from_env`] could not set up an authority.
#[cfg(feature = "client")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FromEnvError {
    /// `CONTO_API_URL` is set but the client cannot be configured.
    #[error(transparent)]
    Client(#[from] conto_client::ClientError),
    /// The embedded engine's policy file is invalid.
    #[error(transparent)]
    Policy(#[from] conto_core::PolicyError),
    /// The embedded engine's ledger journal (`CONTO_LEDGER_PATH`) cannot be opened or replayed.
    #[error(transparent)]
    Journal(#[from] conto_core::journal::JournalError),
}

/// The one-line switch between the embedded engine and Conto's API: when `CONTO_API_URL` is
/// set, a [`ContoClient`] configured from the environment (`CONTO_SDK_KEY` or `CONTO_API_KEY`);
/// otherwise the embedded [`Engine`] with the policies in `CONTO_POLICIES`, or in
/// `default_policies` when that is unset. The embedded engine's ledger is durable when
/// `CONTO_LEDGER_PATH` names a file (with the `outbox` feature), and in memory otherwise.
///
/// ```no_run
/// let conto = conto::from_env("policies/example.json")?;
/// # Ok::<(), conto::FromEnvError>(())
/// ```
#[cfg(feature = "client")]
pub fn from_env(default_policies: impl AsRef<std::path::Path>) -> Result<Conto, FromEnvError> {
    if std::env::var_os("CONTO_API_URL").is_some() {
        return Ok(Conto::new(ContoClient::from_env()?));
    }
    let file = std::env::var_os("CONTO_POLICIES").map(std::path::PathBuf::from);
    let file = file.as_deref().unwrap_or(default_policies.as_ref());
    let builder = Engine::builder().policies(PolicySet::from_file(file)?);
    #[cfg(feature = "outbox")]
    if let Some(ledger) = std::env::var_os("CONTO_LEDGER_PATH") {
        return Ok(Conto::new(DurableEngine::open(builder, ledger)?));
    }
    Ok(Conto::new(builder.build()))
}

/// The README's recipes, compiled (and run, where they need no network or secrets) as doc
/// tests, so the README cannot drift from the API.
#[cfg(all(doctest, feature = "macros", feature = "tower", feature = "credentials", feature = "outbox"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The tower layer for paid HTTP routes.
#[cfg(feature = "tower")]
pub mod tower {
    pub use conto_tower::*;
}
