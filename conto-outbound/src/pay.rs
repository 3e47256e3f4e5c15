//! [`PaidRequests`]: the reqwest-middleware that asks the spend policy before paying a 402.

use std::sync::Arc;
use std::time::Duration;

use conto_core::{
    ActorId, Amount, Authorization, BoxFuture, Conto, Decimal, IdempotencyKey, IntentError, PaymentIntent, Rail,
    Rejection, SecretString, Settlement, service_domain_of,
};
use http::{Extensions, HeaderName, HeaderValue};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use serde_json::Value;

use crate::challenge::{self, Challenge, ChallengeError, Requirement};

/// The actor a request pays as (a request extension:
/// `client.get(url).with_extension(PayAs::new("agent-1")?)`); without it the middleware's
/// default actor pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayAs(pub ActorId);

impl PayAs {
    /// Pays as `actor` (a provisioned actor id).
    pub fn new(actor: impl Into<String>) -> Result<Self, IntentError> {
        Ok(Self(ActorId::new(actor)?))
    }
}

/// The decimals of the assets the app pays in, by network and asset (case-insensitive). The
/// amount a challenge asks, in atomic units, becomes Conto's decimal amount exactly with them;
/// an asset not listed is never paid ([`PaymentError::UnknownAsset`]).
#[derive(Debug, Clone, Default)]
pub struct Assets(Vec<(Option<String>, String, u32)>);

impl Assets {
    /// No asset: list each one with [`Assets::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// USDC (6 decimals) on Base and Base Sepolia, by CAIP-2 id (x402 v2) and by name (v1).
    pub fn usdc() -> Self {
        const BASE: &str = "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913";
        const BASE_SEPOLIA: &str = "0x036cbd53842c5426634e7929541ec2318f3dcf7e";
        Self::new().with("eip155:8453", BASE, 6).with("base", BASE, 6).with("eip155:84532", BASE_SEPOLIA, 6).with(
            "base-sepolia",
            BASE_SEPOLIA,
            6,
        )
    }

    /// Adds `asset` on `network` with `decimals` (at most 28).
    pub fn with(mut self, network: impl Into<String>, asset: impl Into<String>, decimals: u32) -> Self {
        self.0.push((Some(network.into().to_ascii_lowercase()), asset.into().to_ascii_lowercase(), decimals.min(28)));
        self
    }

    /// Adds `asset` on any network (an MPP currency such as `usd`, 2 decimals: cents).
    pub fn with_any_network(mut self, asset: impl Into<String>, decimals: u32) -> Self {
        self.0.push((None, asset.into().to_ascii_lowercase(), decimals.min(28)));
        self
    }

    fn decimals(&self, network: Option<&str>, asset: &str) -> Option<u32> {
        // Entries are stored lower-case; the challenge's spelling is compared without a copy.
        self.0
            .iter()
            .find(|(n, a, _)| {
                a.eq_ignore_ascii_case(asset)
                    && n.as_deref().is_none_or(|n| network.is_some_and(|w| n.eq_ignore_ascii_case(w)))
            })
            .map(|(_, _, d)| *d)
    }
}

/// `atomic` units of an asset with `decimals` as an exact decimal amount.
pub fn to_amount(atomic: &str, decimals: u32) -> Result<Decimal, String> {
    if atomic.is_empty() || !atomic.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{atomic}` is not a whole number of atomic units"));
    }
    let units: i128 = atomic.parse().map_err(|_| format!("`{atomic}` atomic units is too large"))?;
    Decimal::try_from_i128_with_scale(units, decimals)
        .map(|d| d.normalize())
        .map_err(|_| format!("`{atomic}` atomic units with {decimals} decimals is out of range"))
}

/// What the signer is asked to pay: the challenge, the requirement chosen (x402), and the
/// approval it pays under.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Offer {
    /// The challenge, as read.
    pub challenge: Challenge,
    /// The x402 requirement chosen (`None` for MPP).
    pub requirement: Option<Requirement>,
    /// The amount approved, in Conto's decimal unit.
    pub amount: Amount,
    /// The URL paid for, without its query, fragment or credentials.
    pub url: String,
    /// The approval (its id ties the payment to the record).
    pub authorization: Authorization,
}

/// A payment credential: the header the paid retry carries (`PAYMENT-SIGNATURE` for x402 v2,
/// `X-PAYMENT` for v1, `Authorization: Payment …` for MPP). A bearer secret: never logged.
pub struct Credential {
    header: HeaderName,
    value: SecretString,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("header", &self.header).field("value", &"[redacted]").finish()
    }
}

impl Credential {
    /// A credential sent as `header: value`.
    pub fn new(header: &str, value: impl Into<String>) -> Result<Self, SignError> {
        let header = HeaderName::try_from(header).map_err(|e| SignError(format!("bad header name: {e}")))?;
        Ok(Self { header, value: SecretString::from(value.into()) })
    }
}

/// Why the app's signer could not create a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the payment signer failed: {0}")]
pub struct SignError(pub String);

/// The app's payer: creates the payment credential for an approved offer (the wallet, x402 or
/// MPP client the app already has). Called only after the spend policy approved the payment.
pub trait Signer: Send + Sync + 'static {
    /// The credential for `offer`.
    fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>>;
}

/// Why a paid request was not paid, or its outcome is unknown. Returned as
/// `reqwest_middleware::Error::Middleware`; get it back with
/// [`PaymentError::from_middleware`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// The spend policy refused: denied, waiting for a human, or the authority unavailable
    /// (fail-closed). The signer was not called.
    #[error("payment refused: {0}")]
    Refused(Box<Rejection>),
    /// The 402 could not be read.
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    /// The challenge asks for an asset whose decimals this client does not know.
    #[error("unknown asset `{asset}` on `{network}`: list its decimals with Assets::with")]
    UnknownAsset {
        /// The network.
        network: String,
        /// The asset.
        asset: String,
    },
    /// No requirement of the challenge is acceptable.
    #[error("no acceptable payment requirement: {0}")]
    NotAcceptable(String),
    /// The price is above the per-request cap.
    #[error("the paywall asks {amount}, above this client's cap of {max} per request")]
    OverCap {
        /// What was asked.
        amount: Decimal,
        /// The cap.
        max: Decimal,
    },
    /// No actor: set [`PayAs`] on the request or a default actor.
    #[error("no actor to pay as: add a PayAs extension to the request or set a default actor")]
    NoActor,
    /// The payment cannot be expressed as an intent.
    #[error("the payment cannot be authorized: {0}")]
    Intent(#[from] IntentError),
    /// The app's signer failed (the approval was released).
    #[error(transparent)]
    Signer(#[from] SignError),
    /// The paid retry was answered with another challenge (the price changed): not paid again.
    #[error("the paywall changed its challenge between the 402 and the paid retry: refused")]
    ChallengeChanged,
    /// The paid retry failed (`status`): the paywall says nothing settled. The approved amount
    /// is counted as spent all the same, unless [`PaidRequestsBuilder::trust_refusals`] (then
    /// the approval was released).
    #[error("the paid request failed with HTTP {status}; the paywall says nothing settled")]
    Failed {
        /// The status.
        status: u16,
    },
    /// The paid retry failed with a server error (`status`, 5xx) and no settlement report: the
    /// payment may have settled before the failure. The approved amount is counted as spent
    /// (held until it expires under [`PaidRequestsBuilder::trust_refusals`]).
    #[error("the paid request failed with HTTP {status} and no settlement report: the payment may have settled")]
    ServerFailed {
        /// The status.
        status: u16,
    },
    /// No answer to the paid retry in time: the payment may have settled. The approved amount is
    /// counted as spent (held until it expires under [`PaidRequestsBuilder::trust_refusals`]).
    #[error("no answer to the paid request within {0:?}: the payment may have settled")]
    OutcomeUnknown(Duration),
    /// The paid retry failed in transport after its credential was attached (`source`): the
    /// payment may have settled. The approved amount is counted as spent (held until it expires
    /// under [`PaidRequestsBuilder::trust_refusals`]).
    #[error("the paid request failed after its payment credential was attached; the payment may have settled")]
    PaidRequestFailed(#[source] Box<reqwest_middleware::Error>),
    /// The request's body cannot be sent twice (a stream), so a 402 cannot be paid.
    #[error("the request body is a stream and cannot be retried with a payment")]
    NotRetryable,
    /// A credential was already sent for this payment attempt, and it may have paid (the whole
    /// request was sent again, by an outer retry or a caller reusing its extensions, after a
    /// success or a lost answer): it is never paid twice. The first attempt's outcome was
    /// recorded (or, under [`PaidRequestsBuilder::trust_refusals`], held) already.
    #[error("a payment credential was already sent for this payment attempt: not paid twice")]
    AlreadySent,
    /// The 402's body is larger than a challenge can be (64 KiB): not read further.
    #[error("the 402 body is over {0} bytes: not a challenge this client reads")]
    ChallengeTooLarge(usize),
}

impl PaymentError {
    /// The payment error inside a `reqwest_middleware::Error`, if that is what it is.
    pub fn from_middleware(error: &reqwest_middleware::Error) -> Option<&PaymentError> {
        match error {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

fn fail(e: PaymentError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::Middleware(e.into())
}

/// The middleware: add it to a `reqwest_middleware::ClientBuilder`. A 402 with an x402 or MPP
/// challenge is turned into a [`PaymentIntent`], authorized through [`Conto`], paid by the
/// app's [`Signer`] only when approved, retried with the credential, and the settlement the
/// paywall reports is recorded. Everything else passes through untouched.
#[derive(Clone)]
pub struct PaidRequests {
    inner: Arc<Inner>,
}

struct Inner {
    conto: Conto,
    signer: Arc<dyn Signer>,
    assets: Assets,
    actor: Option<ActorId>,
    networks: Option<Vec<String>>,
    max: Option<Decimal>,
    timeout: Duration,
    trust_refusals: bool,
}

/// Builds [`PaidRequests`].
pub struct PaidRequestsBuilder {
    inner: Inner,
}

impl PaidRequests {
    /// A middleware paying through `conto`'s policy with `signer`, in USDC on Base by default.
    pub fn builder(conto: Conto, signer: impl Signer) -> PaidRequestsBuilder {
        PaidRequestsBuilder {
            inner: Inner {
                conto,
                signer: Arc::new(signer),
                assets: Assets::usdc(),
                actor: None,
                networks: None,
                max: None,
                timeout: Duration::from_secs(30),
                trust_refusals: false,
            },
        }
    }
}

impl PaidRequestsBuilder {
    /// The actor that pays when a request carries no [`PayAs`].
    pub fn actor(mut self, actor: impl Into<String>) -> Result<Self, IntentError> {
        self.inner.actor = Some(ActorId::new(actor)?);
        Ok(self)
    }

    /// The assets this client pays in, with their decimals (default: [`Assets::usdc`]).
    pub fn assets(mut self, assets: Assets) -> Self {
        self.inner.assets = assets;
        self
    }

    /// Pays only on these networks, case-insensitive: an x402 requirement's `network` (CAIP-2,
    /// `eip155:8453`) or an MPP challenge's `method` (`tempo`, `stripe`). With a list set, an
    /// MPP challenge whose method is not in it is not paid, as an x402 one on another network.
    pub fn networks<I: IntoIterator<Item = S>, S: Into<String>>(mut self, networks: I) -> Self {
        self.inner.networks = Some(networks.into_iter().map(|n| n.into().to_ascii_lowercase()).collect());
        self
    }

    /// Never pays more than `max` for one request, whatever the policy allows.
    pub fn max_per_request(mut self, max: Amount) -> Self {
        self.inner.max = Some(max.get());
        self
    }

    /// How long the paid retry may take (default 30 s). Past it the outcome is unknown
    /// ([`PaymentError::OutcomeUnknown`]): the approved amount is counted as spent.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner.timeout = timeout;
        self
    }

    /// Believes a paywall that refuses a credential it was sent (a 402 again, a failed
    /// settlement report, another 4xx): its approval is released and a repeat of the request may
    /// pay afresh; a server error, no answer or a dropped request holds the reservation until it
    /// expires (so an MPP challenge must expire with its approval), and an `upto` payment is
    /// recorded at the amount its settlement report names. Off by
    /// default, since a credential is a bearer instrument a paywall can settle whatever it
    /// answers: every outcome but a success after the credential left is then counted as spent
    /// (the approved amount, recorded without a reference), so a paywall that takes the
    /// money and answers a refusal cannot draw on a budget without bound. Turn it on only for
    /// paywalls trusted to tell the truth.
    pub fn trust_refusals(mut self) -> Self {
        self.inner.trust_refusals = true;
        self
    }

    /// The middleware.
    pub fn build(self) -> PaidRequests {
        PaidRequests { inner: Arc::new(self.inner) }
    }
}

/// One payment attempt's key, kept in the request's extensions so that a retry of the whole
/// request (an outer retry middleware) pays under the same idempotency key.
#[derive(Clone)]
struct AttemptKey(IdempotencyKey);

/// Set in the request's extensions once this attempt's credential was sent and while its
/// outcome may be a payment: a retry of the whole request then never signs (and pays) again.
/// Taken off only when a trusted paywall refused the credential (the approval released).
#[derive(Clone)]
struct CredentialSent;

/// The most of a 402's body read for its challenge.
const CHALLENGE_LIMIT: usize = 64 * 1024;

/// What became of a credential that was to be sent.
#[derive(Clone, Copy)]
enum Unsettled {
    /// The paywall says it refused it (a 402 again, a failed report, another 4xx).
    Refused,
    /// A server error, no answer, or an answer from another origin: it may have settled.
    Unknown,
}

/// A credential was sent and no success came back. Unless the paywall's word is trusted
/// ([`PaidRequestsBuilder::trust_refusals`]), the approved amount is counted as spent (the
/// credential may have been settled whatever the answer), and the attempt stays marked so a
/// repeat never pays again. Trusted, a refusal releases the approval (a repeat may pay afresh)
/// and an unknown outcome holds it until it expires.
async fn unsettled(this: &Inner, approval: conto_core::Approval, ext: &mut Extensions, url: &str, how: Unsettled) {
    match (this.trust_refusals, how) {
        (true, Unsettled::Refused) => {
            approval.release();
            ext.remove::<CredentialSent>();
        }
        (true, Unsettled::Unknown) => {
            let held = approval.hold();
            tracing::warn!(url = %url, authorization = %held.id,
                "conto.outbound.outcome_unknown: the credential was sent and no success came back; its reservation is held");
        }
        (false, _) => {
            tracing::warn!(url = %url, "conto.outbound.counted_unconfirmed: the credential was sent and no success came back; the approved amount is counted as spent");
            // No reference: there is no transaction to name (and one shared by every such
            // record would make a server take the second for a repeat of the first).
            if let Err(error) = approval.record(Settlement::default()).await {
                tracing::error!(url = %url, %error, "conto.outbound.record_failed");
            }
        }
    }
}

/// A response's body, up to `limit` bytes (a 402 from an untrusted server is not read without
/// bound).
async fn read_capped(mut resp: Response, limit: usize) -> Result<Vec<u8>, reqwest_middleware::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(fail(PaymentError::ChallengeTooLarge(limit)));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(reqwest_middleware::Error::Reqwest)? {
        if body.len() + chunk.len() > limit {
            return Err(fail(PaymentError::ChallengeTooLarge(limit)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Inner {
    /// Whether `network` (an x402 network, an MPP method) is one this client pays on.
    fn pays_on(&self, network: &str) -> bool {
        self.networks.as_ref().is_none_or(|allowed| allowed.contains(&network.to_ascii_lowercase()))
    }

    /// The requirement to pay and its amount, or why none is acceptable.
    fn choose(&self, accepts: &[Requirement]) -> Result<(Requirement, Decimal), PaymentError> {
        let mut why = Vec::new();
        let mut unknown = None;
        for r in accepts {
            if r.scheme != "exact" && r.scheme != "upto" {
                why.push(format!("scheme `{}` is not supported", r.scheme));
                continue;
            }
            // x402 requires it: without it, how long the signed payment stays valid is the
            // signer's guess, which the approval cannot be held to.
            if r.max_timeout_seconds.is_none() {
                why.push(format!("the `{}` requirement names no `maxTimeoutSeconds`", r.scheme));
                continue;
            }
            if !self.pays_on(&r.network) {
                why.push(format!("network `{}` is not allowed", r.network));
                continue;
            }
            let Some(decimals) = self.assets.decimals(Some(&r.network), &r.asset) else {
                unknown.get_or_insert((r.network.clone(), r.asset.clone()));
                continue;
            };
            let amount = to_amount(&r.amount, decimals).map_err(PaymentError::NotAcceptable)?;
            return Ok((r.clone(), amount));
        }
        match unknown {
            Some((network, asset)) => Err(PaymentError::UnknownAsset { network, asset }),
            None => Err(PaymentError::NotAcceptable(why.join("; "))),
        }
    }

    fn intent(
        &self,
        challenge: &Challenge,
        url: &str,
        ext: &mut Extensions,
    ) -> Result<(PaymentIntent, Option<Requirement>, Decimal, Option<Amount>), PaymentError> {
        let actor =
            ext.get::<PayAs>().map(|p| p.0.clone()).or_else(|| self.actor.clone()).ok_or(PaymentError::NoActor)?;
        let key = ext.get::<AttemptKey>().cloned().unwrap_or_else(|| AttemptKey(IdempotencyKey::random()));
        ext.insert(key.clone());
        let (intent, requirement, amount, spends) = match challenge {
            Challenge::X402 { resource, accepts, .. } => {
                let (r, amount) = self.choose(accepts)?;
                // The policy judges the service actually called: a challenge that names a
                // resource on another host (to pass a service allowlist) is refused.
                if let Some(named) = resource.as_deref().or(r.resource.as_deref())
                    && service_domain_of(named).ok() != service_domain_of(url).ok()
                {
                    return Err(PaymentError::NotAcceptable(format!(
                        "the challenge names `{named}`, not the host called ({url})"
                    )));
                }
                let mut rail = Rail::x402(url)?;
                if let Rail::X402 { scheme, .. } = &mut rail {
                    *scheme = Some(r.scheme.clone());
                }
                let intent = PaymentIntent::builder(actor.as_str(), amount_of(amount)?, rail)
                    .recipient(r.pay_to.clone())
                    .context("network", r.network.clone())
                    .context("asset", r.asset.clone())
                    .idempotency_key(key.0.as_str())
                    .build()?;
                (intent, Some(r), amount, None)
            }
            Challenge::Mpp(m) => {
                // An expired challenge is never paid (nor one whose expiry cannot be read).
                if let Some(expires) = m.param("expires") {
                    let at: conto_core::jiff::Timestamp = expires.parse().map_err(|_| {
                        PaymentError::NotAcceptable(format!(
                            "the MPP challenge's `expires` ({expires}) is not RFC 3339"
                        ))
                    })?;
                    if at <= conto_core::jiff::Timestamp::now() {
                        return Err(PaymentError::NotAcceptable(format!("the MPP challenge expired at {expires}")));
                    }
                }
                // Splits pay other recipients than the one the policy is asked about (Tempo's
                // `methodDetails.splits`): never paid.
                if m.request.get("methodDetails").and_then(|d| d.get("splits")).is_some()
                    || m.request.get("splits").is_some()
                {
                    return Err(PaymentError::NotAcceptable(
                        "the MPP challenge splits its payment among other recipients, which the policy is not asked about"
                            .into(),
                    ));
                }
                let currency = m.request.get("currency").and_then(Value::as_str).unwrap_or_default();
                let network = m.param("method").unwrap_or_default().to_owned();
                if !self.pays_on(&network) {
                    return Err(PaymentError::NotAcceptable(format!("MPP method `{network}` is not allowed")));
                }
                let decimals = self.assets.decimals(Some(&network), currency).ok_or_else(|| {
                    PaymentError::UnknownAsset { network: network.clone(), asset: currency.to_owned() }
                })?;
                let atomic_of = |field: &'static str| match m.request.get(field) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(Value::Number(n)) => Ok(n.to_string()),
                    _ => Err(ChallengeError::Malformed { what: "MPP request", why: format!("no `{field}`") }),
                };
                // A session may lock its deposit in escrow when it opens a channel, then pays
                // one unit (`amount`) a request: the deposit is the most that can move, so it is
                // what is approved; one unit is what is spent, so it is what is recorded (unless
                // the receipt says otherwise).
                let session = m.param("intent").is_some_and(|i| i.eq_ignore_ascii_case("session"));
                let unit = to_amount(&atomic_of("amount")?, decimals).map_err(PaymentError::NotAcceptable)?;
                let amount = if session {
                    to_amount(&atomic_of("suggestedDeposit")?, decimals).map_err(PaymentError::NotAcceptable)?.max(unit)
                } else {
                    unit
                };
                let mut rail = Rail::mpp(url)?;
                if let Rail::Mpp { intent, method, deposit, .. } = &mut rail {
                    *intent = m.param("intent").map(str::to_owned);
                    *method = m.param("method").map(str::to_owned);
                    if session {
                        *deposit = Some(amount_of(amount)?);
                    }
                }
                // The intent's amount is the per-request price (what MPP's price rules read);
                // its deposit makes the whole of it what is approved (`exposure`).
                let mut builder = PaymentIntent::builder(actor.as_str(), amount_of(unit)?, rail)
                    .context("currency", currency.to_owned())
                    .idempotency_key(key.0.as_str());
                if let Some(to) = m.request.get("recipient").and_then(Value::as_str) {
                    builder = builder.recipient(to.to_owned());
                }
                let spends = if session { Some(amount_of(unit)?) } else { None };
                (builder.build()?, None, amount, spends)
            }
        };
        if let Some(max) = self.max
            && amount > max
        {
            return Err(PaymentError::OverCap { amount, max });
        }
        Ok((intent, requirement, amount, spends))
    }
}

fn amount_of(amount: Decimal) -> Result<Amount, PaymentError> {
    Amount::new(amount).map_err(|e| PaymentError::NotAcceptable(e.to_string()))
}

#[async_trait::async_trait]
impl Middleware for PaidRequests {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> reqwest_middleware::Result<Response> {
        let this = &self.inner;
        let retry = req.try_clone();
        // The endpoint paid for, as the policy, the authority and the logs see it: without its
        // query, fragment or credentials (an API key in a query string stays in this process).
        let url = {
            let mut url = req.url().clone();
            url.set_query(None);
            url.set_fragment(None);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        };
        let origin = req.url().origin();
        let first = next.clone().run(req, ext).await?;
        if first.status() != http::StatusCode::PAYMENT_REQUIRED {
            return Ok(first);
        }
        // Only the origin called is paid: a 402 reached through a redirect to another origin
        // would be paid under an approval for the first (and its credential sent there).
        if first.url().origin() != origin {
            return Err(fail(PaymentError::NotAcceptable(format!(
                "the 402 came from {} after a redirect, not from the origin called ({url})",
                first.url()
            ))));
        }
        // One credential per payment attempt: a repeat of the whole request never pays again.
        if ext.get::<CredentialSent>().is_some() {
            return Err(fail(PaymentError::AlreadySent));
        }
        let headers = first.headers().clone();
        // An x402 v2 challenge is its header: the body is then not read at all.
        let body = if headers.contains_key("payment-required") {
            Vec::new()
        } else {
            read_capped(first, CHALLENGE_LIMIT).await?
        };
        let challenge = challenge::read(&headers, &body).map_err(|e| fail(e.into()))?;
        let Some(mut retry) = retry else { return Err(fail(PaymentError::NotRetryable)) };
        let (intent, requirement, _, spends) = this.intent(&challenge, &url, ext).map_err(fail)?;
        let mut approval = this.conto.authorize(intent).await.map_err(|r| fail(PaymentError::Refused(Box::new(r))))?;
        // An x402 payment stays valid `maxTimeoutSeconds` after it is signed: the approval
        // (whose reservation a lost answer holds) must last at least as long.
        if let Some(window) = requirement.as_ref().and_then(|r| r.max_timeout_seconds) {
            let valid_until = conto_core::jiff::Timestamp::now()
                .checked_add(conto_core::jiff::SignedDuration::from_secs(window.min(i64::MAX as u64) as i64))
                .ok();
            if valid_until.is_none_or(|t| t > approval.authorization().expires_at) {
                let expires = approval.authorization().expires_at;
                approval.release();
                return Err(fail(PaymentError::NotAcceptable(format!(
                    "the payment would stay valid {window} s, past its approval's expiry ({expires})"
                ))));
            }
        }
        // Held, not counted, when a trusted paywall's answer is lost: an MPP credential must
        // then expire with its approval, or it could be settled after the hold lapsed.
        if this.trust_refusals
            && let Challenge::Mpp(m) = &challenge
        {
            let approved_until = approval.authorization().expires_at;
            let expires = m.param("expires").and_then(|e| e.parse::<conto_core::jiff::Timestamp>().ok());
            if expires.is_none_or(|t| t > approved_until) {
                approval.release();
                return Err(fail(PaymentError::NotAcceptable(format!(
                    "the MPP challenge stays payable past its approval's expiry ({approved_until}): a lost answer could \
                     not be held for as long"
                ))));
            }
        }
        let offer = Offer {
            challenge: challenge.clone(),
            requirement,
            amount: approval.authorization().amount,
            url: url.clone(),
            authorization: approval.authorization().clone(),
        };
        // A signer may move money itself (an MPP provider that pays before it hands back a
        // credential): dropped from here on (a timeout around the call), the approval is
        // counted at its approved amount, since a held reservation would lapse uncounted while
        // the paywall may still settle the credential; held only for a paywall trusted to say.
        if this.trust_refusals {
            approval.hold_if_dropped();
        } else {
            approval.record_if_dropped();
        }
        let credential = match this.signer.sign(&offer).await {
            Ok(c) => c,
            Err(e) => {
                approval.release();
                return Err(fail(e.into()));
            }
        };
        use conto_core::ExposeSecret;
        let Ok(mut value) = HeaderValue::from_str(credential.value.expose_secret()) else {
            approval.release();
            return Err(fail(SignError("the credential is not a valid header value".into()).into()));
        };
        value.set_sensitive(true); // a bearer secret: redacted wherever headers are printed
        retry.headers_mut().insert(credential.header.clone(), value);
        ext.insert(CredentialSent);
        let paid = match tokio::time::timeout(this.timeout, next.run(retry, ext)).await {
            Ok(Ok(paid)) => paid,
            Ok(Err(e)) => {
                // Even a refused connection may follow a try that delivered the credential: a
                // retry middleware below this one may have sent it before the connection was
                // reset. Whether it settled is unknown.
                unsettled(this, approval, ext, &url, Unsettled::Unknown).await;
                return Err(fail(PaymentError::PaidRequestFailed(Box::new(e))));
            }
            Err(_) => {
                unsettled(this, approval, ext, &url, Unsettled::Unknown).await;
                return Err(fail(PaymentError::OutcomeUnknown(this.timeout)));
            }
        };
        // The paid retry was redirected elsewhere (the credential went with it): what that
        // origin answers is not believed.
        if paid.url().origin() != origin {
            unsettled(this, approval, ext, &url, Unsettled::Unknown).await;
            return Err(fail(PaymentError::NotAcceptable(format!(
                "the paid request was redirected to {}, away from the origin called ({url})",
                paid.url()
            ))));
        }
        if paid.status() == http::StatusCode::PAYMENT_REQUIRED {
            // Refused again. A different challenge (a raised price) is never paid a second
            // time.
            let again = paid.headers().clone();
            unsettled(this, approval, ext, &url, Unsettled::Refused).await;
            let body = read_capped(paid, CHALLENGE_LIMIT).await.unwrap_or_default();
            let changed = challenge::read(&again, &body).map(|c| !same_offer(&c, &challenge)).unwrap_or(false);
            return Err(fail(if changed {
                PaymentError::ChallengeChanged
            } else {
                PaymentError::Failed { status: 402 }
            }));
        }
        // What the answer says of the money: a settlement report is believed whatever the
        // status (a service may charge and then fail to serve: the spend is recorded and its
        // answer returned as it is); without one, a success settled, and anything else is
        // `unsettled`.
        let report = challenge::settlement(paid.headers());
        let status = paid.status();
        match &report {
            Ok(Some(r)) if r.success => {}
            Ok(Some(_)) => {
                unsettled(this, approval, ext, &url, Unsettled::Refused).await;
                return Err(fail(PaymentError::Failed { status: status.as_u16() }));
            }
            _ if status.is_success() => {}
            _ if status.is_server_error() => {
                unsettled(this, approval, ext, &url, Unsettled::Unknown).await;
                return Err(fail(PaymentError::ServerFailed { status: status.as_u16() }));
            }
            _ => {
                unsettled(this, approval, ext, &url, Unsettled::Refused).await;
                return Err(fail(PaymentError::Failed { status: status.as_u16() }));
            }
        }
        let mut settlement = Settlement::default();
        match report {
            Ok(Some(r)) => {
                if let Some(reference) = r.reference {
                    settlement = settlement.reference(reference);
                }
                // Only an `upto` payment settles less than it signed for: an `exact` one moved
                // the approved amount whatever the report says. And only a paywall trusted to
                // tell the truth is believed: one that settles the whole and reports a little
                // would otherwise take the budget many times over.
                let upto = offer.requirement.as_ref().filter(|q| q.scheme == "upto" && this.trust_refusals);
                let decimals = upto.and_then(|q| this.assets.decimals(Some(&q.network), &q.asset));
                if let (Some(atomic), Some(d)) = (r.amount, decimals)
                    && let Ok(amount) = to_amount(&atomic, d)
                    && let Ok(amount) = Amount::new(amount)
                {
                    settlement = settlement.amount(amount);
                }
            }
            // Paid and served, but no readable report: the money moved; count the approval.
            Ok(None) | Err(_) => {
                tracing::warn!(url = %url, "conto.outbound.no_settlement_report: recording the approved amount")
            }
        }
        // An MPP session request spends one unit, not the deposit its approval covered.
        if settlement.amount.is_none()
            && let Some(unit) = spends
        {
            settlement = settlement.amount(unit);
        }
        if let Err(error) = approval.record(settlement).await {
            tracing::error!(url = %url, %error, "conto.outbound.record_failed");
        }
        Ok(paid)
    }
}

/// Whether two challenges ask for the same payment (ignoring fields that may vary per answer).
fn same_offer(a: &Challenge, b: &Challenge) -> bool {
    match (a, b) {
        (Challenge::X402 { accepts: x, .. }, Challenge::X402 { accepts: y, .. }) => {
            let key = |r: &Requirement| {
                (r.scheme.clone(), r.network.clone(), r.amount.clone(), r.asset.clone(), r.pay_to.clone())
            };
            x.iter().map(key).collect::<Vec<_>>() == y.iter().map(key).collect::<Vec<_>>()
        }
        (Challenge::Mpp(x), Challenge::Mpp(y)) => {
            x.request.get("amount") == y.request.get("amount")
                && x.request.get("suggestedDeposit") == y.request.get("suggestedDeposit")
                && x.request.get("currency") == y.request.get("currency")
                && x.request.get("recipient") == y.request.get("recipient")
        }
        _ => false,
    }
}
