//! [`ContoClient`]: an [`Authorizer`] over Conto's HTTP API (reqwest, rustls).
//!
//! - Authorize: one call to the rail's endpoint under a per-call deadline (default
//!   [`DEFAULT_AUTHORIZE_TIMEOUT`], 2 s). Retried only where safe — 429 (honouring
//!   `Retry-After`), 5xx and connect errors — with the same idempotency key, and never past the
//!   deadline. A decision is never retried.
//! - Record: confirm / record with an idempotency key derived from the authorization, so a retry
//!   never counts twice.
//! - Release: Conto has no void endpoint; an unconfirmed approval lapses at its expiry.
//! - Strict parsing: a response that is not a well-formed decision is an error, never an
//!   approval; an approval that echoes a different amount or recipient, or an expiry in the past,
//!   is rejected.
//!
//! The SDK key is a [`SecretString`]: it never appears in `Debug` output, logs or errors.
//!
//! Also here: policy sync ([`sync`]), per-actor bindings with sealed keys ([`credentials`],
//! [`BoundClients`]) and the managed-actor lifecycle over Conto's org API ([`ManagedActors`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "credentials")]
mod bound;
#[cfg(feature = "credentials")]
pub mod credentials;
#[cfg(feature = "credentials")]
mod managed;
pub mod sync;
mod wire;

#[cfg(feature = "credentials")]
pub use bound::BoundClients;
#[cfg(feature = "credentials")]
pub use managed::{ManagedActors, RAIL_SCOPES};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use conto_core::{Amount, PaymentIntent};
use conto_core::{AuthorityError, Authorizer, BoxFuture, LedgerError, Outage};
use conto_core::{Authorization, Decision, Denial, PendingApproval, Recorded, Settlement, Verdict};
use conto_core::{PolicyError, PolicySet};
use conto_wire::sdk::{ApprovalRequests, DecisionBody, PaymentBody};
use conto_wire::{ErrorBody, Kind};

/// Conto's production API.
pub const DEFAULT_API_URL: &str = "https://conto.finance";
/// The default deadline of one authorize call, retries included.
pub const DEFAULT_AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(2);
/// The default deadline of one record call, retries included.
pub const DEFAULT_RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No SDK key in `CONTO_SDK_KEY` or `CONTO_API_KEY`.
    #[error("no Conto SDK key: set CONTO_SDK_KEY (or CONTO_API_KEY) to the agent's conto_agent_... key")]
    MissingKey,
    /// The base URL is not a URL, or is plain http to a host other than localhost.
    #[error("invalid Conto API URL `{0}`: use https:// (http:// only for localhost or 127.0.0.1)")]
    InsecureUrl(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    /// No actor for the key: a client must know which actor its key pays for (`CONTO_ACTOR`,
    /// [`ContoClientBuilder::actor`]), or be told it pays for every actor from that key's one
    /// agent ([`ContoClientBuilder::any_actor`]).
    #[error(
        "no actor for the SDK key: set CONTO_ACTOR (or call .actor(..)) to the actor (agent) its key pays for, or \
         .any_actor() to pay for every actor from that one agent; several actors each need their own key \
         (BoundClients)"
    )]
    MissingActor,
    /// The actor is not a valid actor id.
    #[error("invalid actor: {0}")]
    InvalidActor(String),
    /// The key holds characters an HTTP header cannot carry (white space or a newline
    /// around it, read from a file, is the usual cause).
    #[error("invalid Conto key: it holds characters an HTTP header cannot carry (a trailing newline?)")]
    InvalidKey,
}

/// Builds a [`ContoClient`].
pub struct ContoClientBuilder {
    base_url: String,
    key: Option<SecretString>,
    actor: Option<String>,
    any_actor: bool,
    authorize_timeout: Duration,
    record_timeout: Duration,
    max_retries: u32,
}

impl fmt::Debug for ContoClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContoClientBuilder")
            .field("base_url", &self.base_url)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl ContoClientBuilder {
    /// The API's base URL (default `https://conto.finance`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The agent's SDK key (`conto_agent_...`).
    pub fn sdk_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(SecretString::from(key.into()));
        self
    }

    /// The one actor this client pays for: its key's agent. Conto knows a payer only by the
    /// key, so a client paid for any actor named would spend that agent's budget for all of
    /// them; with this set, an intent of any other actor is refused as unknown
    /// ([`Refused::UnknownActor`](conto_core::Refused::UnknownActor)) before anything is sent.
    /// Several actors each need their own key: [`BoundClients`]. [`ContoClient::from_env`]
    /// reads it from `CONTO_ACTOR`. [`build`](Self::build) refuses a client with neither this
    /// nor [`any_actor`](Self::any_actor).
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Pays for whichever actor an intent names, every one from this key's one agent: for an
    /// app whose actors are not payers of their own (one agent pays for all of them). Opt-in:
    /// such a client lets any actor spend the one budget, so [`build`](Self::build) refuses a
    /// client with neither this nor [`actor`](Self::actor).
    pub fn any_actor(mut self) -> Self {
        self.any_actor = true;
        self
    }

    /// The deadline of one authorize call, retries included (default 2 s; at most
    /// [`MAX_WAIT`](conto_core::MAX_WAIT)).
    pub fn authorize_timeout(mut self, timeout: Duration) -> Self {
        self.authorize_timeout = timeout.min(conto_core::MAX_WAIT);
        self
    }

    /// The deadline of one record call, retries included (default 10 s).
    pub fn record_timeout(mut self, timeout: Duration) -> Self {
        self.record_timeout = timeout.min(conto_core::MAX_WAIT);
        self
    }

    /// How many times a retryable failure is retried (default 3).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Checks the configuration and builds the client.
    pub fn build(self) -> Result<ContoClient, ClientError> {
        let key = self.key.ok_or(ClientError::MissingKey)?;
        let actor = match self.actor {
            Some(a) => Some(conto_core::ActorId::new(a).map_err(|e| ClientError::InvalidActor(e.to_string()))?),
            None if self.any_actor => None,
            None => return Err(ClientError::MissingActor),
        };
        let base = self.base_url.trim_end_matches('/').to_owned();
        check_url(&base)?;
        check_key(key.expose_secret())?;
        let http = http_client(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1).min(self.authorize_timeout))
                .pool_idle_timeout(Duration::from_secs(90)),
        )?;
        Ok(ContoClient {
            inner: Arc::new(Inner {
                http,
                base,
                key,
                actor,
                authorize_timeout: self.authorize_timeout,
                record_timeout: self.record_timeout,
                max_retries: self.max_retries,
            }),
        })
    }
}

/// Refuses a key that cannot be sent as a header (a trailing newline from a file): a bad key,
/// said now, where sent it would fail as if the network had.
fn check_key(key: &str) -> Result<(), ClientError> {
    match reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")) {
        Ok(_) => Ok(()),
        Err(_) => Err(ClientError::InvalidKey),
    }
}

/// An HTTP client to Conto from `builder` (its timeouts): redirects never followed (one would
/// carry a body, an approval token, to another host, and an answer from there is not Conto's).
fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, ClientError> {
    builder
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("conto-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))
}

/// `https://`, or `http://` to this machine only (Conto's own rule): parsed as the HTTP client
/// will parse it, so `http://localhost@elsewhere` (user info) is not taken for localhost. A
/// URL carrying user info is refused outright (the key goes in a header, never in the URL).
fn check_url(url: &str) -> Result<(), ClientError> {
    let bad = || ClientError::InsecureUrl(url.to_owned());
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad());
    }
    let host = parsed.host_str().ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if local => Ok(()),
        _ => Err(bad()),
    }
}

struct Inner {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    /// The one actor this client pays for, when bound.
    actor: Option<conto_core::ActorId>,
    authorize_timeout: Duration,
    record_timeout: Duration,
    max_retries: u32,
}

/// An [`Authorizer`] over Conto's API. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct ContoClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for ContoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContoClient")
            .field("base_url", &self.inner.base)
            .field("key", &"[redacted]")
            .field("actor", &self.inner.actor)
            .field("authorize_timeout", &self.inner.authorize_timeout)
            .finish()
    }
}

/// An HTTP answer: status, headers that matter, and the parsed JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl ContoClient {
    /// A builder with Conto's defaults.
    pub fn builder() -> ContoClientBuilder {
        ContoClientBuilder {
            base_url: DEFAULT_API_URL.to_owned(),
            key: None,
            actor: None,
            any_actor: false,
            authorize_timeout: DEFAULT_AUTHORIZE_TIMEOUT,
            record_timeout: DEFAULT_RECORD_TIMEOUT,
            max_retries: 3,
        }
    }

    /// Whether this client uses `key` (compared without exposing either in logs).
    #[cfg(feature = "credentials")]
    pub(crate) fn has_key(&self, key: &SecretString) -> bool {
        self.inner.key.expose_secret() == key.expose_secret()
    }

    /// A client from the environment: `CONTO_SDK_KEY` (or `CONTO_API_KEY`), `CONTO_ACTOR` (the
    /// actor its key pays for: any other is refused, see [`ContoClientBuilder::actor`]) and
    /// `CONTO_API_URL` (default `https://conto.finance`).
    pub fn from_env() -> Result<Self, ClientError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let key = var("CONTO_SDK_KEY").or_else(|| var("CONTO_API_KEY")).ok_or(ClientError::MissingKey)?;
        let actor = var("CONTO_ACTOR").ok_or(ClientError::MissingActor)?;
        let url = std::env::var("CONTO_API_URL").unwrap_or_else(|_| DEFAULT_API_URL.to_owned());
        Self::builder().base_url(url).sdk_key(key).actor(actor).build()
    }

    /// The actor this client pays for, when it is bound to one.
    pub fn actor(&self) -> Option<&conto_core::ActorId> {
        self.inner.actor.as_ref()
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// A payment's POST (authorize or record), under the body's idempotency key.
    async fn post_payment(&self, path: &str, body: &PaymentBody, deadline: Duration) -> Result<Answer, AuthorityError> {
        let key = body.idempotency_key.as_deref();
        self.call(reqwest::Method::POST, path, Some(body), key, deadline, self.inner.max_retries).await
    }

    /// A read's GET.
    async fn get(&self, path: &str, deadline: Duration) -> Result<Answer, AuthorityError> {
        self.call(reqwest::Method::GET, path, None::<&Value>, None, deadline, self.inner.max_retries).await
    }

    /// One logical call: tries until a final answer, a non-retryable failure, `max_retries`
    /// retries, or the deadline.
    async fn call<B: serde::Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
        deadline: Duration,
        max_retries: u32,
    ) -> Result<Answer, AuthorityError> {
        let url = format!("{}/api/sdk/{path}", self.inner.base);
        let give_up = conto_core::deadline_after(deadline);
        let mut attempt = 0u32;
        loop {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Outage::Timeout { what: path.to_owned(), after: deadline }.into());
            }
            let mut req =
                self.inner.http.request(method.clone(), &url).bearer_auth(self.inner.key.expose_secret()).timeout(left);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry_after(resp.headers());
                    match resp.bytes().await {
                        Ok(bytes) => {
                            // An outage's page (a proxy's HTML 502, a plain-text 429) is still
                            // an outage, retried: only a final answer must be JSON.
                            let body: Value = match serde_json::from_slice(&bytes) {
                                Ok(body) => body,
                                Err(_) if bytes.is_empty() || status == 429 || status >= 500 => Value::Null,
                                Err(_) => {
                                    return Err(AuthorityError::invalid_response(format!(
                                        "HTTP {status} from {path}: the body is not JSON"
                                    )));
                                }
                            };
                            Ok((status, retry_after, body))
                        }
                        Err(e) => Err(AuthorityError::unreachable(format!("{path}: {}", redact(e)))),
                    }
                }
                Err(e) => Err(AuthorityError::unreachable(format!("{path}: {}", redact(e)))),
            };
            let retry_in = match &outcome {
                Ok((status, retry_after, _)) if *status == 429 || *status >= 500 => {
                    Some(retry_after.unwrap_or_else(|| backoff(attempt)))
                }
                Ok(_) => None,
                Err(AuthorityError::Outage(Outage::Connect(_) | Outage::Timeout { .. })) => Some(backoff(attempt)),
                Err(_) => None,
            };
            match (retry_in, outcome) {
                (Some(wait), outcome) if attempt < max_retries && conto_core::deadline_after(wait) < give_up => {
                    tracing::debug!(path, attempt, ?wait, "conto.client.retry");
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    let _ = outcome;
                }
                (_, Ok((status, _, body))) => return Ok(Answer { status, body }),
                (_, Err(e)) => return Err(e),
            }
        }
    }

    /// Turns an error status into a typed error.
    fn api_error(answer: &Answer) -> AuthorityError {
        let body: ErrorBody = <ErrorBody as serde::Deserialize>::deserialize(&answer.body).unwrap_or_default();
        let code = body.code.as_deref().unwrap_or(match answer.status {
            401 => "AUTH_FAILED",
            403 => "INSUFFICIENT_SCOPE",
            404 => "NOT_FOUND",
            409 => "CONFLICT",
            429 => "RATE_LIMITED",
            s if s >= 500 => "INTERNAL_ERROR",
            _ => "VALIDATION_ERROR",
        });
        let message = body.text().unwrap_or("no message");
        AuthorityError::from_status(answer.status, code, message)
    }

    /// Authorizes an intent (see [`Authorizer::authorize`]).
    pub async fn authorize_intent(&self, intent: &PaymentIntent) -> Result<Decision, AuthorityError> {
        self.authorize_shared(&Arc::new(intent.clone())).await
    }

    /// [`ContoClient::authorize_intent`] on a shared intent (an approval keeps the `Arc`).
    pub async fn authorize_shared(&self, intent: &Arc<PaymentIntent>) -> Result<Decision, AuthorityError> {
        // The key pays for its own agent only: another actor never spends its budget.
        if let Some(actor) = &self.inner.actor
            && intent.actor != *actor
        {
            return Err(conto_core::Refused::UnknownActor(intent.actor.as_str().to_owned()).into());
        }
        let (kind, body) = PaymentBody::from_intent(intent);
        let path = kind.authorize_path();
        let answer = self.post_payment(path, &body, self.inner.authorize_timeout).await?;
        read_decision(kind, &answer, intent)
    }

    /// Records a settlement (see [`Authorizer::record`]).
    pub async fn record_settlement(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Result<Recorded, AuthorityError> {
        let token = authorization.token.as_ref().map(|t| t.expose_secret().to_owned());
        let Some((path, body)) = wire::record_request(authorization, settlement, token.as_deref())? else {
            // Conto's payment-request flow has no record step: the decision was the whole call.
            return Ok(Recorded {
                authorization_id: authorization.id.clone(),
                amount: settlement.amount.unwrap_or(authorization.amount),
                transaction_id: None,
                late: false,
                queued: false,
                actor_inactive: false,
            });
        };
        let answer = self.post_payment(&path, &body, self.inner.record_timeout).await?;
        if !(200..300).contains(&answer.status) {
            return Err(Self::api_error(&answer));
        }
        wire::parse_recorded(&answer.body, authorization, settlement)
    }

    /// Looks up a pending approval request in `GET approval-requests`.
    pub async fn approval_request(
        &self,
        intent: &PaymentIntent,
        pending: &PendingApproval,
    ) -> Result<Option<Decision>, AuthorityError> {
        if pending.approval_request_id.is_empty() {
            // Conto held the payment for a human but named no request to follow: it cannot be
            // seen approved from here, so it is declined (fail closed), saying why.
            return Ok(Some(Decision::from_policy(Verdict::Denied(Denial {
                reasons: vec![
                    "the payment needs a human's approval and Conto named no approval request to follow".into(),
                ],
                violations: vec![],
            }))));
        }
        let answer = self.get("approval-requests?type=payment&limit=100", self.inner.authorize_timeout).await?;
        if answer.status != 200 {
            return Err(Self::api_error(&answer));
        }
        let list: ApprovalRequests = serde_json::from_value(answer.body)
            .map_err(|e| AuthorityError::invalid_response(format!("malformed approval requests: {e}")))?;
        // A pending approval may be known by the payment request's id, or by its approval id.
        let id = pending.approval_request_id.as_str();
        let Some(entry) = list.all().find(|r| {
            [r.payment_request_id.as_deref(), r.approval_id.as_deref()].contains(&Some(id))
                || r.approval_request_id == id
        }) else {
            return Err(LedgerError::UnknownApprovalRequest(pending.approval_request_id.clone()).into());
        };
        let intent = Arc::new(intent.clone());
        match entry.status.as_deref() {
            Some("PENDING" | "PENDING_APPROVAL" | "REVIEW_REQUIRED") => Ok(None),
            Some("APPROVED") => {
                // The approved request carries the approval, in each rail's own field.
                let decision = DecisionBody {
                    approved: Some(true),
                    authorized: Some(true),
                    status: entry.status.clone(),
                    approval_id: entry.approval_id.clone(),
                    approval_token: entry.approval_token.clone(),
                    authorization_id: entry.authorization_id.clone(),
                    // The payment request approved is the one the entry names.
                    request_id: entry.request_id.clone().or_else(|| entry.payment_request_id.clone()),
                    expires_at: entry.approval_expires_at.clone().or_else(|| entry.expires_at.clone()),
                    amount: entry.amount,
                    recipient_address: entry.recipient_address.clone(),
                    ..Default::default()
                };
                wire::parse_decision(200, &decision, &intent, Timestamp::now()).map(Some)
            }
            Some(closed @ ("REJECTED" | "DECLINED" | "DENIED" | "EXPIRED")) => {
                Ok(Some(Decision::from_policy(Verdict::Denied(Denial {
                    reasons: vec![format!("the approval request was {}", closed.to_lowercase())],
                    violations: vec![],
                }))))
            }
            other => Err(AuthorityError::invalid_response(format!("unknown approval request status {other:?}"))),
        }
    }

    /// The agent's policies (`GET policies`), compiled; a policy the engine cannot evaluate is
    /// an error naming it.
    pub async fn policies(&self) -> Result<PolicySet, AuthorityError> {
        let answer = self.get("policies", self.inner.record_timeout).await?;
        if answer.status != 200 {
            return Err(Self::api_error(&answer));
        }
        PolicySet::from_value(answer.body).map_err(|e: PolicyError| AuthorityError::invalid_response(e.to_string()))
    }

    /// The x402 budget read (`GET x402/budget`), as Conto returns it.
    pub async fn x402_budget(&self) -> Result<Value, AuthorityError> {
        self.read("x402/budget").await
    }

    /// The MPP budget read (`GET mpp/budget`), as Conto returns it.
    pub async fn mpp_budget(&self) -> Result<Value, AuthorityError> {
        self.read("mpp/budget").await
    }

    /// The machine-spend summary (`GET service-spend/summary`, scope `analytics:read`), as
    /// Conto returns it: x402 and MPP spend over `period`, on `protocol`, with at most `limit`
    /// services.
    pub async fn spend_summary(
        &self,
        period: SummaryPeriod,
        protocol: SummaryProtocol,
        limit: u32,
    ) -> Result<Value, AuthorityError> {
        let period = match period {
            SummaryPeriod::Day => "24h",
            SummaryPeriod::Week => "7d",
            SummaryPeriod::Month => "30d",
            SummaryPeriod::All => "all",
        };
        let protocol = match protocol {
            SummaryProtocol::All => "all",
            SummaryProtocol::X402 => "x402",
            SummaryProtocol::Mpp => "mpp",
        };
        self.read(&format!("service-spend/summary?period={period}&protocol={protocol}&limit={limit}")).await
    }

    /// Asks a human for a budget (`POST budget-request`, scope `payments:request`): `amount`
    /// for `purpose`, in `category` when one is named. The answer is the request as Conto
    /// returns it (`PENDING`, with its `id`); an agent has one active request at a time, and a
    /// second is refused (`BUDGET_REQUEST_EXISTS`, 409). Approved, the budget is a further gate
    /// on the agent's payments until its window ends. Sent once, never retried: Conto names no
    /// idempotency key for it, and a retry of a request that was made would be refused as the
    /// second; after an outage, read the agent's requests back before asking again.
    pub async fn request_budget(
        &self,
        amount: Amount,
        purpose: &str,
        category: Option<&str>,
    ) -> Result<Value, AuthorityError> {
        let mut body = serde_json::json!({"amount": amount, "purpose": purpose});
        if let Some(category) = category {
            body["category"] = category.into();
        }
        let answer =
            self.call(reqwest::Method::POST, "budget-request", Some(&body), None, self.inner.record_timeout, 0).await?;
        if !(200..300).contains(&answer.status) || !answer.body.is_object() {
            return Err(Self::api_error(&answer));
        }
        Ok(answer.body)
    }

    /// A budget request as it stands (`GET budget-request?id=`): `PENDING`, `APPROVED`,
    /// `REJECTED`, `EXPIRED` or `EXHAUSTED`, as Conto returns it.
    pub async fn budget_request(&self, id: &str) -> Result<Value, AuthorityError> {
        let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        self.read(&format!("budget-request?id={id}")).await
    }

    /// The agent's setup (`GET setup`): its wallets and policies, as Conto returns them; a
    /// check to run before paying.
    pub async fn setup(&self) -> Result<Value, AuthorityError> {
        self.read("setup").await
    }

    async fn read(&self, path: &str) -> Result<Value, AuthorityError> {
        let answer = self.get(path, self.inner.record_timeout).await?;
        if answer.status != 200 || !answer.body.is_object() {
            return Err(Self::api_error(&answer));
        }
        Ok(answer.body)
    }
}

/// The period of [`ContoClient::spend_summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SummaryPeriod {
    /// The last 24 hours (`24h`).
    Day,
    /// The last 7 days (`7d`).
    Week,
    /// The last 30 days (`30d`).
    Month,
    /// Everything (`all`).
    All,
}

/// The protocols [`ContoClient::spend_summary`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SummaryProtocol {
    /// x402 and MPP (`all`).
    All,
    /// x402 only.
    X402,
    /// MPP only.
    Mpp,
}

/// Parses a decision body exactly as [`ContoClient`] does: for custom transports, and for
/// fuzzing. A body that is not a well-formed decision for `intent`'s rail is an error.
pub fn parse_decision(status: u16, body: &[u8], intent: &PaymentIntent) -> Result<Decision, AuthorityError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|_| AuthorityError::invalid_response(format!("HTTP {status}: the body is not JSON")))?;
    let (kind, _) = PaymentBody::from_intent(intent);
    read_decision(kind, &Answer { status, body }, &Arc::new(intent.clone()))
}

/// Reads an authorize answer as a decision: `200` to `202` with a decision body, or a denial
/// as `400`/`403`; any other status is an error, and an error status never approves, whatever
/// its body says.
fn read_decision(kind: Kind, answer: &Answer, intent: &Arc<PaymentIntent>) -> Result<Decision, AuthorityError> {
    // Conto's docs allow a denial as 403 (or 400) with a decision body; conto-local answers
    // 200. Both are read as decisions; any other error status is an error.
    // Read once, from the parsed answer in place (no copy of it).
    let decision = wire::decision_body(answer.status, &answer.body);
    let is_decision = decision.as_ref().is_ok_and(|d| d.approved.is_some() || d.authorized.is_some())
        || (kind == Kind::Card && decision.as_ref().is_ok_and(|d| d.request_id.is_some()))
        || (kind == Kind::Request && decision.as_ref().is_ok_and(refused_or_held));
    // An error status never approves, whatever its body says.
    let approves = decision.as_ref().is_ok_and(|d| {
        d.approved == Some(true)
            || d.authorized == Some(true)
            || d.status.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("APPROVED"))
    });
    match answer.status {
        200..=202 => {}
        403 | 400 if is_decision && !approves => {}
        // Conto's documented denial errors (`403 PAYMENT_DENIED`, `400 POLICY_DENIED`,
        // `DAILY_LIMIT_EXCEEDED`, …) are the policy's answer, not a failed call: a denial.
        403 | 400 => match wire::denial_error(&answer.body, decision.as_ref().ok()) {
            Some(denial) => return Ok(Decision::from_policy(Verdict::Denied(denial))),
            None => return Err(ContoClient::api_error(answer)),
        },
        _ => return Err(ContoClient::api_error(answer)),
    }
    wire::parse_decision(answer.status, &decision?, intent, Timestamp::now())
}

/// The wait an answer's `Retry-After` asks for, in whole seconds (its HTTP-date form is not
/// read: the caller backs off instead).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with jitter: 100 ms · 2ⁿ, at most 2 s.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
    let jitter: u64 = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// A transport error's text without the URL's query (which never holds secrets here, but
/// errors should stay short) and never the request headers.
fn redact(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the response body could not be read"
    } else {
        "request failed"
    };
    format!("{kind} ({})", e.without_url())
}

impl Authorizer for ContoClient {
    fn authorize<'a>(&'a self, intent: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(self.authorize_shared(intent))
    }

    fn record<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(self.record_settlement(authorization, settlement))
    }

    fn release(&self, authorization: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        // Conto has no void endpoint: never confirming is the release; the approval lapses.
        tracing::debug!(authorization = %authorization.id, "conto.client.release: left to expire");
        Box::pin(std::future::ready(Ok(())))
    }

    fn approval_status<'a>(
        &'a self,
        intent: &'a PaymentIntent,
        pending: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        Box::pin(self.approval_request(intent, pending))
    }

    fn reconcile<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(async move {
            // Conto records x402 and MPP spend without a prior authorization; a transfer or card
            // spend can only be confirmed against an approval Conto issued.
            let Some((path, mut body)) = wire::record_request(authorization, settlement, None)? else {
                return Err(AuthorityError::Unsupported("Conto has no record step for payment requests".into()));
            };
            if !(path == "x402/record" || path == "mpp/record") {
                return Err(AuthorityError::Unsupported(format!(
                    "Conto cannot record a {} spend it did not approve (stand-in approval `{}`)",
                    authorization.intent.rail.name(),
                    authorization.id
                )));
            }
            body.authorization_id = None;
            body.payment_id = Some(format!("standin_{}", authorization.id));
            let answer = self.post_payment(&path, &body, self.inner.record_timeout).await?;
            if !(200..300).contains(&answer.status) {
                return Err(Self::api_error(&answer));
            }
            wire::parse_recorded(&answer.body, authorization, settlement)
        })
    }
}

/// Whether a payment request's 400/403 body is a decision: it names its request and a denial or
/// a hold for a human. Anything else with an error status (an approval included) is the error
/// its status says, never a decision and never an unreadable one (an outage).
fn refused_or_held(d: &DecisionBody) -> bool {
    d.request_id.is_some()
        && d.status
            .as_deref()
            .and_then(wire::RequestStatus::of)
            .is_some_and(|s| matches!(s, wire::RequestStatus::Denied | wire::RequestStatus::Held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_except_localhost() {
        assert!(check_url("https://conto.finance").is_ok());
        assert!(check_url("http://localhost:3006").is_ok());
        assert!(check_url("http://127.0.0.1:3006").is_ok());
        assert!(check_url("http://[::1]:3006").is_ok());
        assert!(check_url("http://conto.finance").is_err());
        assert!(check_url("http://localhost.evil.com").is_err());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://").is_err());
        // User info is not the host: each of these would send the key, in clear, to evil.com.
        for url in [
            "http://localhost:1@evil.com",
            "http://127.0.0.1:x@evil.com",
            "http://[::1]@evil.com",
            "http://localhost@evil.com/api",
            "https://user:pass@conto.finance",
        ] {
            assert!(matches!(check_url(url), Err(ClientError::InsecureUrl(_))), "{url}");
        }
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let key = format!("conto_agent_{}", "ab".repeat(32));
        let client = ContoClient::builder().sdk_key(key.clone()).any_actor().build().unwrap();
        assert!(!format!("{client:?}").contains(&key));
        let unbound = ContoClient::builder().sdk_key(key.clone()).build();
        assert!(
            matches!(unbound, Err(ClientError::MissingActor)),
            "a client pays for a named actor, or is told to pay for any"
        );
        let builder = ContoClient::builder().sdk_key(key.clone());
        assert!(!format!("{builder:?}").contains(&key));
    }
}
