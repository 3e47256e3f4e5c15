//! The managed-actor lifecycle: provision an actor with its controls, pause and resume it (the
//! kill switch), rotate its credential, retire it. One trait, [`ActorLifecycle`], implemented
//! by the embedded [`Engine`](crate::Engine) (where it registers the actor and installs its
//! policies) and by the Conto client's `ManagedActors` (Conto's org API and the credential
//! store), so the same calls behave the same against either.

use crate::authorizer::{AuthorityError, BoxFuture};
use crate::controls::{ProductControls, SyncReport};
use crate::intent::{ActorId, IntentError};
use crate::policy::PolicyError;

/// The stable name of the Conto agent (and of its policies and SDK key) that stands for a
/// managed actor: `conto-rs:{actor}`. [`ActorLifecycle::ensure_actor`] finds what an earlier,
/// interrupted run created by this name, so a crash never leaves a duplicate.
pub fn managed_name(actor: &ActorId) -> String {
    format!("conto-rs:{actor}")
}

/// What [`ActorLifecycle::ensure_actor`] did. A second run with the same controls reports no
/// creation, no key and no policy change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The actor.
    pub actor: ActorId,
    /// The authority's id for it (the Conto agent id; the actor id in the embedded engine).
    pub agent_id: String,
    /// Whether this run created the agent.
    pub created: bool,
    /// Whether this run issued (and sealed) a new SDK key.
    pub issued_key: bool,
    /// What the policy sync did.
    pub policies: SyncReport,
}

/// Why a lifecycle call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The actor id breaks the rule in [`ActorId`]'s docs.
    #[error(transparent)]
    Actor(#[from] IntentError),
    /// The actor is not provisioned (pause, resume, rotate or retire of an unknown actor).
    #[error("actor `{0}` is not provisioned")]
    UnknownActor(String),
    /// The controls do not compile to valid policies.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The authority refused or could not be reached.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The authority answered without a field the lifecycle needs.
    #[error("the authority's answer to {call} has no `{field}`")]
    MissingField {
        /// The call, e.g. `POST /api/agents`.
        call: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The credential store failed (reading, sealing or saving a key): the store's own error
    /// (`conto_client::credentials::CredentialError`), its message and source as they are.
    #[error(transparent)]
    Credentials(Box<dyn std::error::Error + Send + Sync>),
}

/// The lifecycle of managed actors. Every call is idempotent.
pub trait ActorLifecycle: Send + Sync {
    /// Makes `actor` able to spend under `controls`: creates its agent if it does not exist,
    /// issues an SDK key with the least scopes the rails need and seals it (remote only), and
    /// syncs `controls` to policies assigned to it. A second run changes nothing.
    fn ensure_actor<'a>(
        &'a self,
        actor: &'a str,
        controls: &'a ProductControls,
    ) -> BoxFuture<'a, Result<Ensured, LifecycleError>>;

    /// The kill switch: the actor's next authorization is denied. Records of settlements
    /// approved before are still accepted (the embedded engine flags them `actor_inactive`).
    fn pause_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>>;

    /// Lifts a pause.
    fn resume_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>>;

    /// Issues a new credential, seals it, then revokes the old one. Returns whether a key was
    /// rotated (the embedded engine has none: `false`).
    fn rotate_key<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<bool, LifecycleError>>;

    /// Retires the actor: revokes its key, disables its agent and removes its binding and
    /// policies. Its next authorization is refused as an unknown actor.
    fn retire_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>>;
}
