//! conto-rs: spend-policy control for Rust services that settle payments themselves.
//!
//! Before a paid action runs, conto-rs asks a policy authority (Conto's API, or the embedded
//! [`Engine`] with Conto's semantics) to approve it. A denied action never reaches the
//! settlement code; an approved one has its settled spend recorded back.
//!
//! - [`Conto::run`]: the one pipeline, `authorize -> settle -> record | release`.
//! - `#[paid_action]` (feature `macros`): the pipeline as an attribute on an async settlement fn.
//! - [`tower`] (feature `tower`): the pipeline as a tower layer around paid HTTP routes.
//! - [`from_env`] / [`builder_from_env`]: one handle per app, from the environment.
//!
//! ```
//! use conto::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": [
//!     {"name": "cap", "rules": [{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "5", "action": "ALLOW"}]}
//! ]}"#)?);
//! let intent = PaymentIntent::builder("agent-1", "2.50", Rail::card("Acme")?).build()?;
//! let charged = conto
//!     .run(intent, |_approval| async { Ok::<_, String>("ch_1") }, |id| Settlement::default().reference(*id))
//!     .await?;
//! assert_eq!(charged, Ok("ch_1"));
//! # Ok(()) }
//! ```
//!
//! The README (the recipes, compiled as this crate's doc tests) is the guide; each feature's
//! crate docs are inlined below: [`tower`], [`client`], [`outbox`].
#![deny(missing_docs)]

#[doc(hidden)]
pub use conto_core::__private;
/// jiff, the time library of conto-rs's timestamps and time zones (re-exported so that
/// versions match).
#[doc(no_inline)]
pub use conto_core::jiff;
pub use conto_core::{
    Activity, ActorId, ActorLifecycle, ActorStatus, Address, Amount, AmountError, Approval, ApprovalMode,
    Authorization, BudgetPeriod, Clock, Conto, ContoBuilder, DEFAULT_DEADLINE, Decimal, Decision, DecisionSource,
    Denial, Engine, Ensured, Event, ExposeSecret, FUNCTION_SELECTOR, IdempotencyKey, IntentBuilder, IntentError,
    LifecycleError, Limits, MAX_WAIT, ManualClock, Monitor, PaymentIntent, PendingApproval, PolicyError, PolicySet,
    ProductControls, Rail, Ran, Recorded, Rejection, RejectionKind, RuleProblem, SecretString, Settlement,
    SharedEngine, Status, SyncReport, SystemClock, TARGET_CONTRACT, UnevaluatedRules, Verdict, Violation,
    ViolationType, Wallet, canonical_resource, canonical_service_domain, deadline_after, install_default,
    installed_default, service_domain_covers, service_domain_of,
};
pub use conto_core::{
    AuthorityError, Authorizer, BoxFuture, LedgerError, Outage, Refused, controls, engine, journal, lifecycle, policy,
    sink,
};

#[cfg(feature = "macros")]
pub use conto_macros::paid_action;

#[cfg(feature = "client")]
pub use conto_client::{ClientError, ContoClient, ContoClientBuilder, SummaryPeriod, SummaryProtocol};
#[cfg(feature = "outbox")]
pub use conto_store::DurableEngine;

/// The names most apps use, in one import: `use conto::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "macros")]
    pub use crate::paid_action;
    #[cfg(feature = "tower")]
    pub use crate::tower::{Actor, Paid, Paywall, Price, PriceError, Settled};
    pub use crate::{
        Amount, Authorization, Conto, Decimal, Engine, PaymentIntent, PolicySet, Rail, Rejection, RejectionKind,
        Settlement, builder_from_env, from_env,
    };
}

/// The tower layer for paid HTTP routes (feature `tower`).
#[cfg(feature = "tower")]
#[doc(inline)]
pub use conto_tower as tower;

/// Conto's HTTP API (feature `client`): [`ContoClient`], policy sync, per-actor bindings and
/// the managed-actor lifecycle.
#[cfg(feature = "client")]
#[doc(inline)]
pub use conto_client as client;

/// Per-actor bindings with SDK keys sealed at rest (feature `credentials`).
#[cfg(feature = "credentials")]
pub mod credentials {
    #[doc(inline)]
    pub use conto_client::credentials::*;
}

/// SQLite storage (feature `outbox`): the durable record outbox and the ledger journal.
#[cfg(feature = "outbox")]
#[doc(inline)]
pub use conto_store as outbox;

/// PostgreSQL storage (feature `postgres`): the transactional outbox and the embedded engine's
/// ledger, shared by replicas.
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use conto_postgres as postgres;

/// Outbound paid requests (feature `outbound`): a reqwest-middleware that asks the spend policy
/// before an x402 or MPP payment is signed.
#[cfg(feature = "outbound")]
#[doc(inline)]
pub use conto_outbound as outbound;

/// Why [`from_env`] / [`builder_from_env`] could not set up an authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FromEnvError {
    /// `CONTO_API_URL` is set but the client cannot be configured.
    #[cfg(feature = "client")]
    #[error(transparent)]
    Client(#[from] conto_client::ClientError),
    /// `CONTO_API_URL` is set, but this build has no HTTP client.
    #[error(
        "CONTO_API_URL is set, but conto was built without its `client` feature: enable it \
             (`conto = {{ .., features = [\"client\"] }}`) or unset CONTO_API_URL to use the embedded engine"
    )]
    ClientDisabled,
    /// The embedded engine's policy file cannot be read or is invalid.
    #[error("{source}; {hint}")]
    Policy {
        /// What is wrong with the file.
        source: Box<conto_core::PolicyError>,
        /// Where the path came from and how to point at another file.
        hint: String,
    },
    /// `CONTO_LEDGER_PATH` is set, but this build has no SQLite storage.
    #[error(
        "CONTO_LEDGER_PATH is set, but conto was built without its `outbox` feature: enable it or unset \
             CONTO_LEDGER_PATH (the ledger then lives in memory)"
    )]
    LedgerDisabled,
    /// The embedded engine's ledger journal (`CONTO_LEDGER_PATH`) cannot be opened or replayed.
    #[error(transparent)]
    Journal(#[from] conto_core::journal::JournalError),
    /// `CONTO_LEDGER_URL` is set, but this build has no PostgreSQL storage.
    #[error(
        "CONTO_LEDGER_URL is set, but conto was built without its `postgres` feature: enable it or unset \
             CONTO_LEDGER_URL (each process then keeps its own ledger)"
    )]
    SharedLedgerDisabled,
    /// `CONTO_LEDGER_URL` is not a usable PostgreSQL URL.
    #[cfg(feature = "postgres")]
    #[error("CONTO_LEDGER_URL: {0}")]
    SharedLedger(#[from] conto_postgres::PgLedgerError),
    /// A variable is set but empty (or only white space): an unset variable in a compose file or
    /// a shell, which would otherwise pick another authority or a throwaway ledger.
    #[error("{0} is set but empty: give it a value, or unset it")]
    Empty(&'static str),
    /// Both `CONTO_LEDGER_PATH` and `CONTO_LEDGER_URL` are set.
    #[error(
        "both CONTO_LEDGER_PATH (one process's ledger in a file) and CONTO_LEDGER_URL (a ledger shared by \
             replicas in PostgreSQL) are set: keep one"
    )]
    TwoLedgers,
}

/// The one-line switch between the embedded engine and Conto's API, as a finished handle:
/// [`builder_from_env`]`(default_policies)?.build()`.
///
/// ```no_run
/// let conto = conto::from_env("policies/example.json")?;
/// # Ok::<(), conto::FromEnvError>(())
/// ```
pub fn from_env(default_policies: impl AsRef<std::path::Path>) -> Result<Conto, FromEnvError> {
    Ok(builder_from_env(default_policies)?.build())
}

/// The app's one [`ContoBuilder`], from the environment, so the outbox, the observer, the
/// deadline and the stand-in chain onto it:
///
/// - `CONTO_API_URL` set: a [`ContoClient`] configured from the environment (`CONTO_SDK_KEY`
///   or `CONTO_API_KEY`, and `CONTO_ACTOR`, the one actor that key pays for: any other actor is
///   refused as unknown; feature `client`). `CONTO_POLICIES` and `CONTO_LEDGER_*` are then not
///   read;
/// - otherwise the embedded [`Engine`] with the policies in the file `CONTO_POLICIES` names,
///   or `default_policies` when it is unset (a relative path is read against the working
///   directory); its ledger is shared by every replica when `CONTO_LEDGER_URL` names a
///   PostgreSQL database (feature `postgres`; schema `CONTO_LEDGER_SCHEMA`, default `conto`,
///   created on first use), durable
///   in one process when `CONTO_LEDGER_PATH` names a file (feature `outbox`), and in this
///   process's memory otherwise (N replicas then each enforce every limit alone).
///
/// ```no_run
/// use std::time::Duration;
///
/// let monitor = conto::Monitor::new(500);
/// let conto = conto::builder_from_env("policies/example.json")?
///     .observe(monitor.observer())
///     .deadline(Duration::from_secs(2))
///     .build();
/// # Ok::<(), conto::FromEnvError>(())
/// ```
pub fn builder_from_env(default_policies: impl AsRef<std::path::Path>) -> Result<ContoBuilder, FromEnvError> {
    // Each variable read, set but empty, is refused (with CONTO_API_URL set, the others are not
    // read).
    let empty = |name: &'static str| std::env::var_os(name).is_some_and(|v| v.to_string_lossy().trim().is_empty());
    let read = if std::env::var_os("CONTO_API_URL").is_some() {
        &["CONTO_API_URL"][..]
    } else {
        &["CONTO_POLICIES", "CONTO_LEDGER_URL", "CONTO_LEDGER_PATH", "CONTO_LEDGER_SCHEMA"][..]
    };
    if let Some(name) = read.iter().copied().find(|name| empty(name)) {
        return Err(FromEnvError::Empty(name));
    }
    if std::env::var_os("CONTO_API_URL").is_some() {
        tracing::info!("conto.from_env: Conto's API at CONTO_API_URL");
        #[cfg(feature = "client")]
        return Ok(Conto::builder(ContoClient::from_env()?));
        #[cfg(not(feature = "client"))]
        return Err(FromEnvError::ClientDisabled);
    }
    let (file, hint) = match std::env::var_os("CONTO_POLICIES") {
        Some(file) => (
            std::path::PathBuf::from(file),
            "the path came from CONTO_POLICIES; point it at a policy file, or unset it".to_owned(),
        ),
        None => (
            default_policies.as_ref().to_path_buf(),
            "set CONTO_POLICIES to a policy file, run from the directory that holds this one, or set \
             CONTO_API_URL to use Conto's API"
                .to_owned(),
        ),
    };
    let policies = PolicySet::from_file(&file).map_err(|e| FromEnvError::Policy { source: Box::new(e), hint })?;
    let builder = Engine::builder().policies(policies);
    if let Ok(url) = std::env::var("CONTO_LEDGER_URL") {
        if std::env::var_os("CONTO_LEDGER_PATH").is_some() {
            return Err(FromEnvError::TwoLedgers);
        }
        #[cfg(feature = "postgres")]
        {
            let schema = std::env::var("CONTO_LEDGER_SCHEMA").unwrap_or_else(|_| "conto".to_owned());
            tracing::info!(policies = %file.display(), schema, "conto.from_env: the embedded engine, its ledger shared in PostgreSQL");
            return Ok(Conto::builder(builder.build_shared(conto_postgres::PgLedger::connect_lazy(&url, &schema)?)));
        }
        #[cfg(not(feature = "postgres"))]
        {
            let _ = url;
            return Err(FromEnvError::SharedLedgerDisabled);
        }
    }
    if let Some(ledger) = std::env::var_os("CONTO_LEDGER_PATH") {
        tracing::info!(policies = %file.display(), ledger = %ledger.to_string_lossy(), "conto.from_env: the embedded engine, its ledger in a file");
        #[cfg(feature = "outbox")]
        return Ok(Conto::builder(DurableEngine::open(builder, ledger)?));
        #[cfg(not(feature = "outbox"))]
        {
            let _ = ledger;
            return Err(FromEnvError::LedgerDisabled);
        }
    }
    tracing::info!(policies = %file.display(), "conto.from_env: the embedded engine, its ledger in memory");
    Ok(Conto::builder(builder.build()))
}

/// The README's recipes, compiled (and run, where they need no network or secrets) as doc
/// tests, so the README cannot drift from the API.
#[cfg(all(
    doctest,
    feature = "macros",
    feature = "tower",
    feature = "credentials",
    feature = "outbox",
    feature = "postgres",
    feature = "outbound"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
