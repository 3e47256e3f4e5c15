//! Product controls → Conto policies, applied idempotently.
//!
//! The hybrid guide maps product controls to Conto's policy types; [`ProductControls`] is that
//! mapping, typed. [`sync_policies`] applies it to Conto's Policies API (or conto-local) with the
//! org key, diffing by policy name so a second run writes nothing; [`ProductControls::policy_set`]
//! applies the same policies to the embedded engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conto_wire::ErrorBody;
use conto_wire::org::{Policies, Policy};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

use super::{ClientError, check_url};
use conto_core::AuthorityError;

/// How many times an org call answered `429` is asked again.
const ORG_RETRIES_ON_429: u32 = 3;
pub use conto_core::{BudgetPeriod, ProductControls, SyncReport};

/// A minimal client of Conto's org Policies API (org key). Counts the writes it sends.
#[derive(Clone)]
pub struct OrgClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for OrgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgClient").field("base", &self.base).field("key", &"[redacted]").finish()
    }
}

impl OrgClient {
    /// A client for `base_url` (https except localhost) with the org key; it follows no
    /// redirect and gives a call 30 s.
    pub fn new(base_url: &str, org_key: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        check_url(&base)?;
        crate::check_key(org_key)?;
        // Bounded as Conto's own helper bounds its calls: 10 s to connect, 30 s in all.
        let http = crate::http_client(
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).timeout(Duration::from_secs(30)),
        )?;
        Ok(Self { http, base, key: SecretString::from(org_key.to_owned()), writes: Arc::default() })
    }

    /// How many writes (POST, PATCH, DELETE) this client has sent.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// One org API call: the JSON answer of a 2xx, or the error. Writes are counted.
    pub(crate) async fn call<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Value, AuthorityError> {
        if method != reqwest::Method::GET {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        let mut attempt = 0;
        let resp = loop {
            let mut req =
                self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(self.key.expose_secret());
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| AuthorityError::unreachable(e.without_url().to_string()))?;
            // A 429 was not acted on: asked again after `Retry-After` (at most a minute, the
            // limit's window), a few times, so a sync of many policies finishes rather than
            // stopping half-applied at the org's rate limit.
            if resp.status().as_u16() != 429 || attempt == ORG_RETRIES_ON_429 {
                break resp;
            }
            let wait = crate::retry_after(resp.headers())
                .map_or_else(|| crate::backoff(attempt), |asked| asked.min(Duration::from_secs(60)));
            tracing::debug!(path, attempt, ?wait, "conto.org.rate_limited");
            attempt += 1;
            tokio::time::sleep(wait).await;
        };
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let error: ErrorBody = serde_json::from_value(body).unwrap_or_default();
            let message = error.text().unwrap_or_default().to_owned();
            return Err(AuthorityError::from_status(status, error.code.unwrap_or_default(), message));
        }
        Ok(body)
    }

    /// A GET whose answer is read as `T`; a malformed answer names the call.
    pub(crate) async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, AuthorityError> {
        let body = self.call::<()>(reqwest::Method::GET, path, None).await?;
        serde_json::from_value(body).map_err(|e| AuthorityError::invalid_response(format!("GET {path}: {e}")))
    }
}

/// Applies `controls` as the policies named `"{prefix} · …"`: creates the missing, updates the
/// changed, deletes the ones no longer wanted, and leaves everything else alone. A second run
/// with the same controls writes nothing.
pub async fn sync_policies(
    org: &OrgClient,
    controls: &ProductControls,
    prefix: &str,
    agent_id: &str,
) -> Result<SyncReport, AuthorityError> {
    let wanted: Vec<Policy> = controls
        .policies(prefix, agent_id)
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| AuthorityError::invalid_response(format!("a generated policy is malformed: {e}")))?;
    let listed: Policies = org.get("/api/policies").await?;
    let existing = listed.all();
    let owned = |p: &&&Policy| p.name.as_deref().is_some_and(|n| n.starts_with(&format!("{prefix} · ")));
    let mut report = SyncReport::default();
    for want in &wanted {
        match existing.iter().filter(owned).find(|p| p.name == want.name) {
            None => {
                org.call(reqwest::Method::POST, "/api/policies", Some(want)).await?;
                report.created += 1;
            }
            Some(have) => {
                // Conto's policy API: PATCH changes the policy's own fields, PUT `…/rules`
                // replaces its rules; each is sent only when it differs.
                let (mut theirs, mut ours) = (have.essence(), want.essence());
                let rules_differ = theirs.rules.take() != ours.rules.take();
                let fields_differ = theirs != ours;
                if !(rules_differ || fields_differ) {
                    report.unchanged += 1;
                    continue;
                }
                let id = have.id.as_deref().unwrap_or_default();
                if fields_differ {
                    let fields = Policy { rules: None, ..want.clone() };
                    org.call(reqwest::Method::PATCH, &format!("/api/policies/{id}"), Some(&fields)).await?;
                }
                if rules_differ {
                    let rules = serde_json::json!({ "rules": want.rules.clone().unwrap_or_default() });
                    org.call(reqwest::Method::PUT, &format!("/api/policies/{id}/rules"), Some(&rules)).await?;
                }
                report.updated += 1;
            }
        }
    }
    for have in existing.iter().filter(owned) {
        if !wanted.iter().any(|w| w.name == have.name) {
            let id = have.id.as_deref().unwrap_or_default();
            org.call::<()>(reqwest::Method::DELETE, &format!("/api/policies/{id}"), None).await?;
            report.deleted += 1;
        }
    }
    Ok(report)
}
