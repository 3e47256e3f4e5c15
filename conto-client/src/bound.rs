//! [`BoundClients`]: one Conto client per actor binding.

use std::fmt;
use std::sync::Arc;

use secrecy::ExposeSecret;

use super::{ClientError, ContoClient, check_url};
use conto_core::PaymentIntent;
use conto_core::{AuthorityError, Authorizer, BoxFuture};
use conto_core::{Authorization, Decision, PendingApproval, Recorded, Settlement};

/// An [`Authorizer`] that routes each intent to its actor's own Conto binding: the actor's
/// agent and SDK key come from a [`CredentialStore`](crate::credentials::CredentialStore). An
/// actor without a binding is refused (fail-closed); there is never a shared fallback key.
pub struct BoundClients {
    store: Arc<crate::credentials::CredentialStore>,
    base_url: String,
    clients: std::sync::Mutex<std::collections::HashMap<String, (String, ContoClient)>>,
}

impl fmt::Debug for BoundClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundClients").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl BoundClients {
    /// Routes to Conto at `base_url` with the keys in `store`.
    pub fn new(
        store: Arc<crate::credentials::CredentialStore>,
        base_url: impl Into<String>,
    ) -> Result<Self, ClientError> {
        let base_url = base_url.into();
        check_url(base_url.trim_end_matches('/'))?;
        Ok(Self { store, base_url, clients: Default::default() })
    }

    /// The client for `actor` (built once, then reused).
    pub fn client_for(&self, actor: &str) -> Result<ContoClient, AuthorityError> {
        let binding = self.store.get(actor).map_err(|e| match e {
            crate::credentials::CredentialError::UnknownActor(a) => AuthorityError::unknown_actor(a),
            other => AuthorityError::Unsupported(other.to_string()),
        })?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // Keyed by actor and agent: a rotated or re-bound key gets a fresh client.
        if let Some((agent, c)) = clients.get(actor)
            && *agent == binding.agent_id
            && c.has_key(&binding.sdk_key)
        {
            return Ok(c.clone());
        }
        let client = ContoClient::builder()
            .base_url(&self.base_url)
            .sdk_key(binding.sdk_key.expose_secret())
            .actor(actor)
            .build()
            // A configuration this process cannot serve (a sealed key that cannot be sent
            // included): not retried, never covered by a stand-in.
            .map_err(|e| AuthorityError::Unsupported(format!("actor `{actor}`'s client: {e}")))?;
        clients.insert(actor.to_owned(), (binding.agent_id.clone(), client.clone()));
        Ok(client)
    }
}

impl Authorizer for BoundClients {
    fn authorize<'a>(&'a self, intent: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(async move { self.client_for(intent.actor.as_str())?.authorize_shared(intent).await })
    }

    fn record<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(async move {
            self.client_for(authorization.intent.actor.as_str())?.record_settlement(authorization, settlement).await
        })
    }

    fn release(&self, authorization: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        let _ = authorization;
        Box::pin(std::future::ready(Ok(())))
    }

    fn approval_status<'a>(
        &'a self,
        intent: &'a PaymentIntent,
        pending: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        Box::pin(async move { self.client_for(intent.actor.as_str())?.approval_request(intent, pending).await })
    }

    fn reconcile<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(async move {
            self.client_for(authorization.intent.actor.as_str())?.reconcile(authorization, settlement).await
        })
    }
}
