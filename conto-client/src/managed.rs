//! [`ManagedActors`]: the managed-actor lifecycle against Conto's org API (or conto-local),
//! with each actor's SDK key sealed in a [`CredentialStore`].

use std::sync::Arc;

use conto_wire::org::{Agent, AgentPatch, Agents, SdkKey, SdkKeys};

use super::sync::{OrgClient, sync_policies};
use crate::credentials::CredentialStore;
use conto_core::BoxFuture;
use conto_core::ProductControls;
use conto_core::lifecycle::managed_name;
use conto_core::{ActorId, AuthorityError};
use conto_core::{ActorLifecycle, Ensured, LifecycleError};

type Turns = std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// One actor's turn at the lifecycle.
struct Turn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    turns: Arc<Turns>,
    actor: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        self.guard = None;
        // Only the map's own handle left: no call holds or awaits this turn.
        if turns.get(&self.actor).is_some_and(|t| Arc::strong_count(t) == 1) {
            turns.remove(&self.actor);
        }
    }
}

/// The scopes the four rails need, asked for with each key: approve and confirm (transfers,
/// cards), request (x402, MPP, the payment-request flow, approval polling). Conto adds what a
/// key asks for to its standard preset (read scopes and `payments:request`).
pub const RAIL_SCOPES: &[&str] = &["payments:approve", "payments:confirm", "payments:request"];

/// The managed-actor lifecycle over Conto's org API: one Conto agent per actor (named
/// `conto-rs:{actor}`), one SDK key per agent sealed in the credential store, and the actor's
/// [`ProductControls`] synced to policies assigned to that agent.
///
/// Crash safety: the agent is found by its stable name before one is created, and an SDK key
/// is looked for by name before one is issued; a key issued by a run that crashed before
/// sealing it is revoked, then a fresh one is issued and sealed. So an interrupted run leaves no
/// duplicate agent and no live unsealed key, and the next run finishes the job.
///
/// Calls for one actor run one at a time (clones share the turn): two rotations at once would
/// each revoke the other's key, two first `ensure_actor`s would each create an agent. Across
/// processes nothing is shared: manage actors from one process, which owns the store's file.
#[derive(Debug, Clone)]
pub struct ManagedActors {
    org: OrgClient,
    store: Arc<CredentialStore>,
    turns: Arc<Turns>,
}

impl ManagedActors {
    /// Manages actors through `org` (the org API key's client), sealing keys in `store`.
    pub fn new(org: OrgClient, store: Arc<CredentialStore>) -> Self {
        Self { org, store, turns: Arc::default() }
    }

    /// Waits for `actor`'s turn (a valid actor id): the lifecycle calls for one actor run one
    /// at a time. The turn is forgotten when no call holds or awaits it.
    async fn turn(&self, actor: &str) -> Result<Turn, LifecycleError> {
        ActorId::new(actor)?;
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(turns.entry(actor.to_owned()).or_default())
        };
        let guard = turn.lock_owned().await;
        Ok(Turn { guard: Some(guard), turns: Arc::clone(&self.turns), actor: actor.to_owned() })
    }

    /// The org client (its write counter shows that a second `ensure_actor` writes nothing).
    pub fn org(&self) -> &OrgClient {
        &self.org
    }

    async fn find_agent(&self, name: &str) -> Result<Option<Agent>, LifecycleError> {
        let listed: Agents = self.org.get("/api/agents").await?;
        Ok(listed.all().into_iter().find(|a| a.name.as_deref() == Some(name)).cloned())
    }

    async fn agent_id(&self, actor: &str) -> Result<(ActorId, String), LifecycleError> {
        let id = ActorId::new(actor)?;
        if let Ok(binding) = self.store.get(actor) {
            return Ok((id, binding.agent_id));
        }
        let agent = self.find_agent(&managed_name(&id)).await?;
        let agent_id = agent.as_ref().and_then(Agent::id).map(str::to_owned);
        agent_id.map(|a| (id, a)).ok_or_else(|| LifecycleError::UnknownActor(actor.to_owned()))
    }

    /// Revokes every key of `agent_id` named `name` except `keep`.
    async fn revoke_keys(&self, agent_id: &str, name: &str, keep: Option<&str>) -> Result<(), LifecycleError> {
        let listed: SdkKeys = self.org.get(&format!("/api/agents/{agent_id}/sdk-keys")).await?;
        for key in listed.all().iter().filter(|k| k.name.as_deref() == Some(name) && k.revoked_at.is_none()) {
            let Some(key_id) = key.id.as_deref().filter(|id| Some(*id) != keep) else { continue };
            self.revoke_key(agent_id, key_id).await?;
        }
        Ok(())
    }

    /// Revokes one key of `agent_id`.
    async fn revoke_key(&self, agent_id: &str, key_id: &str) -> Result<(), AuthorityError> {
        let path = format!("/api/agents/{agent_id}/sdk-keys/{key_id}");
        self.org.call::<()>(reqwest::Method::DELETE, &path, None).await.map(|_| ())
    }

    /// Issues a key named `name` for `agent_id` and seals it; returns its id.
    async fn issue_and_seal(&self, actor: &ActorId, agent_id: &str, name: &str) -> Result<String, LifecycleError> {
        let body = SdkKey {
            name: Some(name.to_owned()),
            key_type: Some("standard".to_owned()),
            scopes: Some(RAIL_SCOPES.iter().map(|s| (*s).to_owned()).collect()),
            ..SdkKey::default()
        };
        let path = format!("/api/agents/{agent_id}/sdk-keys");
        let call = "POST /api/agents/{id}/sdk-keys";
        let issued: SdkKey = serde_json::from_value(self.org.call(reqwest::Method::POST, &path, Some(&body)).await?)
            .map_err(|e| AuthorityError::invalid_response(format!("{call}: {e}")))?;
        let key = issued.key.as_deref().ok_or(LifecycleError::MissingField { call, field: "key" })?;
        let key_id = issued.id.clone().ok_or(LifecycleError::MissingField { call, field: "id" })?;
        if let Err(e) = self.store.bind(actor.as_str(), agent_id, key) {
            // Not sealed, so no one holds it: revoked rather than left live.
            if let Err(revoke) = self.revoke_key(agent_id, &key_id).await {
                tracing::error!(actor = %actor, key_id, error = %revoke,
                    "conto.lifecycle.unsealed_key_live: a key whose seal failed could not be revoked");
            }
            return Err(LifecycleError::Credentials(Box::new(e)));
        }
        Ok(key_id)
    }

    async fn set_status(&self, actor: &str, status: &str) -> Result<(), LifecycleError> {
        let (_, agent_id) = self.agent_id(actor).await?;
        let path = format!("/api/agents/{agent_id}");
        let agent: Agent = self.org.get(&path).await?;
        if agent.status() != Some(status) {
            let patch = AgentPatch { status: Some(status.into()), ..AgentPatch::default() };
            self.org.call(reqwest::Method::PATCH, &path, Some(&patch)).await?;
        }
        Ok(())
    }
}

impl ActorLifecycle for ManagedActors {
    fn ensure_actor<'a>(
        &'a self,
        actor: &'a str,
        controls: &'a ProductControls,
    ) -> BoxFuture<'a, Result<Ensured, LifecycleError>> {
        Box::pin(async move {
            let id = ActorId::new(actor)?;
            let _turn = self.turn(actor).await?;
            let name = managed_name(&id);
            // 1. The agent, found by its stable name before one is created.
            let (agent_id, created) = match self.find_agent(&name).await? {
                Some(agent) => {
                    let call = "GET /api/agents";
                    (agent.id().ok_or(LifecycleError::MissingField { call, field: "id" })?.to_owned(), false)
                }
                None => {
                    let body = Agent {
                        name: Some(name.clone()),
                        description: Some(format!("conto-rs managed actor {id}")),
                        ..Agent::default()
                    };
                    let call = "POST /api/agents";
                    let made: Agent =
                        serde_json::from_value(self.org.call(reqwest::Method::POST, "/api/agents", Some(&body)).await?)
                            .map_err(|e| AuthorityError::invalid_response(format!("{call}: {e}")))?;
                    (made.id().ok_or(LifecycleError::MissingField { call, field: "id" })?.to_owned(), true)
                }
            };
            // 2. The key: sealed already, or revoke any unsealed one and issue a fresh one.
            let sealed = self.store.get(actor).is_ok_and(|b| b.agent_id == agent_id);
            let issued_key = !sealed;
            if issued_key {
                // An agent made just now has no key to revoke (and the listing is not an endpoint
                // Conto documents: only an agent found again needs it).
                if !created {
                    self.revoke_keys(&agent_id, &name, None).await?;
                }
                self.issue_and_seal(&id, &agent_id, &name).await?;
            }
            // 3. The controls, as policies assigned to the agent.
            let policies = sync_policies(&self.org, controls, &name, &agent_id).await?;
            Ok(Ensured { actor: id, agent_id, created, issued_key, policies })
        })
    }

    fn pause_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(async move {
            let _turn = self.turn(actor).await?;
            self.set_status(actor, "PAUSED").await
        })
    }

    fn resume_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(async move {
            let _turn = self.turn(actor).await?;
            self.set_status(actor, "ACTIVE").await
        })
    }

    fn rotate_key<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<bool, LifecycleError>> {
        Box::pin(async move {
            let _turn = self.turn(actor).await?;
            let (id, agent_id) = self.agent_id(actor).await?;
            let name = managed_name(&id);
            // Seal the new key first, then revoke every other key of ours: no moment without one.
            let new_id = self.issue_and_seal(&id, &agent_id, &name).await?;
            self.revoke_keys(&agent_id, &name, Some(&new_id)).await?;
            Ok(true)
        })
    }

    fn retire_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(async move {
            let _turn = self.turn(actor).await?;
            let (id, agent_id) = match self.agent_id(actor).await {
                Ok(found) => found,
                Err(LifecycleError::UnknownActor(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let name = managed_name(&id);
            self.revoke_keys(&agent_id, &name, None).await?;
            sync_policies(&self.org, &ProductControls::default(), &name, &agent_id).await?;
            self.org.call::<()>(reqwest::Method::DELETE, &format!("/api/agents/{agent_id}"), None).await?;
            self.store.unbind(actor).map_err(|e| LifecycleError::Credentials(Box::new(e)))?;
            Ok(())
        })
    }
}
