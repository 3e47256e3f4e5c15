//! conto-core: the domain model, the [`Authorizer`] trait, the embedded policy [`Engine`] and
//! the one pipeline ([`Conto::run`]) of conto-rs.
//!
//! The pipeline: authorize the [`PaymentIntent`]; on a denial or a pending approval return a
//! [`Rejection`] (the settlement never runs); on approval run the settlement; on `Ok` record the
//! settled amount; on `Err`, or if the caller's future is dropped, release the approval.
//!
//! No HTTP client, no SQL, no crypto here: infrastructure plugs in through traits this crate
//! owns ([`Authorizer`], [`sink::RecordSink`], [`journal::Journal`],
//! [`engine::SharedLedger`], [`ActorLifecycle`]); conto-client, conto-store and conto-postgres
//! implement them.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod authorizer;
mod clock;
pub mod controls;
mod decision;
pub mod engine;
mod held;
mod ids;
mod intent;
pub mod journal;
pub mod lifecycle;
mod micros;
mod money;
mod monitor;
mod pipeline;
pub mod policy;
mod rejection;
pub mod sink;

pub use authorizer::{AuthorityError, Authorizer, BoxFuture, LedgerError, Outage, Refused};
pub use clock::{Clock, MAX_WAIT, ManualClock, SystemClock, deadline_after};
pub use controls::{BudgetPeriod, ProductControls, SyncReport};
pub use decision::{
    Authorization, Decision, DecisionSource, Denial, Limits, PendingApproval, Recorded, Settlement, Verdict, Violation,
    ViolationType, Wallet,
};
pub use engine::{ActorStatus, Engine, SharedEngine};
pub use intent::{
    ActorId, Address, FUNCTION_SELECTOR, IdempotencyKey, IntentBuilder, IntentError, PaymentIntent, Rail,
    TARGET_CONTRACT, canonical_resource, canonical_service_domain, endpoint_key, service_domain_covers,
    service_domain_of,
};
pub use lifecycle::{ActorLifecycle, Ensured, LifecycleError};
pub use money::{Amount, AmountError};
pub use monitor::{Activity, Monitor, Status};
pub use pipeline::{
    Approval, ApprovalMode, Conto, ContoBuilder, DEFAULT_DEADLINE, Event, Ran, install_default, installed_default,
};
pub use policy::{PolicyError, PolicySet, RuleProblem, UnevaluatedRules};
pub use rejection::{Rejection, RejectionKind};

#[doc(no_inline)]
pub use jiff;
pub use rust_decimal::Decimal;
pub use secrecy::{ExposeSecret, SecretString};
