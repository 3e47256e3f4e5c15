//! [`PaidLayer`], its builder, and the [`PaidService`] it wraps handlers in.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::response::Response;
use bytes::Bytes;
use conto_core::{Authorization, Conto, IntentError, PaymentIntent, Rail, Ran, Recorded};
use http::request::Parts;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Either, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::extract::{Paid, Settled};
use crate::price::{Actor, Price, PriceError, PriceRequest};
use crate::respond::{Refusal, Responder, no_store};

/// The response body of a [`PaidService`]: the handler's body, or the layer's own.
pub type PaidBody<B> = Either<B, Body>;

type RailFn = dyn Fn(&PriceRequest<'_>) -> Result<Rail, PriceError> + Send + Sync;
type TextFn = dyn Fn(&PriceRequest<'_>) -> Option<String> + Send + Sync;
type StatusFn = dyn Fn(StatusCode) -> bool + Send + Sync;

/// The rail: fixed, or computed from the request.
#[derive(Clone)]
enum RailSource {
    Fixed(Rail),
    From(Arc<RailFn>),
}

/// The recipient: fixed (validated), or computed from the request.
#[derive(Clone)]
enum RecipientSource {
    Fixed(String),
    From(Arc<TextFn>),
}

/// What every paid route of an app shares.
struct Shared {
    conto: Conto,
    actor: Actor,
    rail: RailSource,
    recipient: Option<RecipientSource>,
    category: Option<String>,
    purpose: Option<String>,
    record_when: Arc<StatusFn>,
    responder: Responder,
    receipt_headers: bool,
    cancel_on_disconnect: bool,
}

impl Clone for Shared {
    fn clone(&self) -> Self {
        Self {
            conto: self.conto.clone(),
            actor: self.actor.clone(),
            rail: self.rail.clone(),
            recipient: self.recipient.clone(),
            category: self.category.clone(),
            purpose: self.purpose.clone(),
            record_when: self.record_when.clone(),
            responder: self.responder.clone(),
            receipt_headers: self.receipt_headers,
            cancel_on_disconnect: self.cancel_on_disconnect,
        }
    }
}

/// One paid route: the app's [`Paywall`] and this route's price.
struct Route {
    shared: Arc<Shared>,
    price: Price,
    /// This route's number, unique in the process: what a thread's last intent is kept under.
    id: u64,
    /// With a fixed rail and recipient, what every request's intent shares but for its actor,
    /// amount and key: built and checked once, here ([`Shared::template`]).
    template: Option<PaymentIntent>,
}

impl Route {
    fn new(shared: Arc<Shared>, price: Price) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let template = shared.template();
        Self { shared, price, id: NEXT.fetch_add(1, Ordering::Relaxed), template }
    }
}

impl Shared {
    /// The intent a route with a fixed rail and recipient pays by, under a stand-in actor and
    /// amount. `None` when the rail or the recipient is read from each request, or when it
    /// does not build: each request then builds its own, and is refused with the reason.
    fn template(&self) -> Option<PaymentIntent> {
        let RailSource::Fixed(rail) = &self.rail else { return None };
        let recipient = match &self.recipient {
            Some(RecipientSource::Fixed(address)) => Some(address.clone()),
            Some(RecipientSource::From(_)) => return None,
            None => None,
        };
        self.intent("route".to_owned(), conto_core::Amount::from_micros(1).ok()?, rail.clone(), recipient).ok()
    }

    /// The intent by `actor` for `amount` on `rail` to `recipient`, with the paywall's
    /// category and purpose, built and checked.
    fn intent(
        &self,
        actor: String,
        amount: conto_core::Amount,
        rail: Rail,
        recipient: Option<String>,
    ) -> Result<PaymentIntent, IntentError> {
        let mut b = PaymentIntent::builder(actor, amount, rail);
        if let Some(recipient) = recipient {
            b = b.recipient(recipient);
        }
        if let Some(c) = &self.category {
            b = b.category(c.clone());
        }
        if let Some(p) = &self.purpose {
            b = b.purpose(p.clone());
        }
        b.build()
    }
}

/// The app-wide paywall: who pays (the actor, from the app's authentication), on which rail,
/// to whom, and how refusals look. It is not itself a layer: each paid route gets its
/// [`PaidLayer`] from [`Paywall::with_price`], so a paid route without a price cannot be
/// written. Build it once per app and clone it freely.
#[derive(Clone)]
pub struct Paywall {
    shared: Arc<Shared>,
}

impl fmt::Debug for Paywall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paywall").field("actor", &self.shared.actor).finish_non_exhaustive()
    }
}

/// A layer that pre-authorizes each paid request with the conto pipeline, short-circuits
/// refusals before the handler runs, and records the spend after the handler succeeds.
///
/// Minted by [`Paywall::with_price`]; it drops into `Router::layer`, `Router::route_layer`,
/// `MethodRouter::layer` and `ServiceBuilder`.
#[derive(Clone)]
pub struct PaidLayer {
    route: Arc<Route>,
}

impl fmt::Debug for PaidLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaidLayer").field("price", &self.route.price).finish_non_exhaustive()
    }
}

/// Why a [`PaywallBuilder`] could not build a paywall.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerError {
    /// No actor source: call `.actor(...)`.
    MissingActor,
    /// No rail: call `.rail(...)` or `.rail_from(...)`.
    MissingRail,
    /// A fixed value given to the builder is invalid, or one is missing (a fixed rail that
    /// pays an address, with no recipient).
    Invalid(IntentError),
}

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerError::MissingActor => f.write_str(
                "the paywall needs an actor source: call .actor(Actor::extension(|user: &User| user.id.clone())) \
                 with the type your authentication middleware inserts",
            ),
            LayerError::MissingRail => {
                f.write_str("the paywall needs a rail: call .rail(Rail::x402(..)?) or .rail_from(..)")
            }
            LayerError::Invalid(e) => write!(f, "the paywall's configuration is invalid: {e}"),
        }
    }
}

impl std::error::Error for LayerError {}

/// Builds a [`Paywall`]; [`PaywallBuilder::build`] checks the configuration.
pub struct PaywallBuilder {
    conto: Conto,
    actor: Option<Actor>,
    rail: Option<RailSource>,
    recipient: Option<RecipientSource>,
    category: Option<String>,
    purpose: Option<String>,
    record_when: Arc<StatusFn>,
    responder: Responder,
    invalid: Option<IntentError>,
    receipt_headers: bool,
    cancel_on_disconnect: bool,
}

impl PaywallBuilder {
    /// Who pays for a request.
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// The rail every request pays on.
    pub fn rail(mut self, rail: Rail) -> Self {
        self.rail = Some(RailSource::Fixed(rail));
        self
    }

    /// The rail, computed from the request (e.g. the x402 resource URL of the request).
    pub fn rail_from(
        mut self,
        f: impl Fn(&PriceRequest<'_>) -> Result<Rail, PriceError> + Send + Sync + 'static,
    ) -> Self {
        self.rail = Some(RailSource::From(Arc::new(f)));
        self
    }

    /// The recipient address every request pays.
    pub fn recipient(mut self, address: &str) -> Self {
        match conto_core::Address::parse(address) {
            Ok(a) => self.recipient = Some(RecipientSource::Fixed(a.as_str().to_owned())),
            Err(e) => self.invalid = Some(e),
        }
        self
    }

    /// The recipient, computed from the request.
    pub fn recipient_from(mut self, f: impl Fn(&PriceRequest<'_>) -> Option<String> + Send + Sync + 'static) -> Self {
        self.recipient = Some(RecipientSource::From(Arc::new(f)));
        self
    }

    /// The spend category.
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// The purpose.
    pub fn purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = Some(purpose.into());
        self
    }

    /// Which handler statuses record the spend (default: 2xx, and `101 Switching Protocols`: an
    /// upgraded connection, a WebSocket, is served); any other status releases it.
    pub fn record_when(mut self, f: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        self.record_when = Arc::new(f);
        self
    }

    /// Adds the receipt headers ([`headers`]) to recorded successes. Off by default: they tell
    /// the client the authorization id and what is left of the actor's daily limit, which only
    /// an authenticated actor should learn about itself.
    pub fn receipt_headers(mut self) -> Self {
        self.receipt_headers = true;
        self
    }

    /// Lets a client that goes away cancel its request: the handler's future is dropped with
    /// the connection, and the approval released unrecorded. Off by default, and dangerous: a
    /// handler that had already paid (its provider called, its x402 payment sent) would have
    /// spent without the spend being counted, so a client could spend past its budget by
    /// hanging up at the right moment. By default a paid request runs to its end in a task of
    /// its own once its client is gone, and what it settled is recorded. For a route whose
    /// handler waits on the client itself (a long poll) and pays nothing while it waits.
    pub fn cancel_on_disconnect(mut self) -> Self {
        self.cancel_on_disconnect = true;
        self
    }

    /// Replaces the default problem+json responses. `Cache-Control: no-store` is added to
    /// whatever it returns.
    pub fn respond_with(mut self, f: impl Fn(&Refusal) -> Response + Send + Sync + 'static) -> Self {
        self.responder = Responder(Arc::new(f));
        self
    }

    /// Checks the configuration and builds the paywall.
    pub fn build(self) -> Result<Paywall, LayerError> {
        if let Some(e) = self.invalid {
            return Err(LayerError::Invalid(e));
        }
        let actor = self.actor.ok_or(LayerError::MissingActor)?;
        let rail = self.rail.ok_or(LayerError::MissingRail)?;
        // A fixed rail that pays an address with none given would refuse every request: say so
        // now, not as a 400 on each one.
        if let RailSource::Fixed(fixed) = &rail
            && fixed.needs_recipient()
            && self.recipient.is_none()
        {
            return Err(LayerError::Invalid(IntentError::MissingRecipient(fixed.name())));
        }
        Ok(Paywall {
            shared: Arc::new(Shared {
                conto: self.conto,
                actor,
                rail,
                recipient: self.recipient,
                category: self.category,
                purpose: self.purpose,
                record_when: self.record_when,
                responder: self.responder,
                receipt_headers: self.receipt_headers,
                cancel_on_disconnect: self.cancel_on_disconnect,
            }),
        })
    }
}

impl Paywall {
    /// Starts a paywall over `conto`, the app's one handle.
    pub fn builder(conto: Conto) -> PaywallBuilder {
        PaywallBuilder {
            conto,
            actor: None,
            rail: None,
            recipient: None,
            category: None,
            purpose: None,
            record_when: Arc::new(|s| s.is_success() || s == StatusCode::SWITCHING_PROTOCOLS),
            responder: Responder::default(),
            invalid: None,
            receipt_headers: false,
            cancel_on_disconnect: false,
        }
    }

    /// The layer for one paid route, at `price`: fixed ([`Price::fixed`]) or computed from the
    /// request ([`Price::from_request`], [`Price::json_body`]). A free route needs no layer.
    pub fn with_price(&self, price: Price) -> PaidLayer {
        PaidLayer { route: Arc::new(Route::new(self.shared.clone(), price)) }
    }

    /// The same paywall with another category.
    pub fn with_category(&self, category: impl Into<String>) -> Self {
        let mut shared = (*self.shared).clone();
        shared.category = Some(category.into());
        Self { shared: Arc::new(shared) }
    }

    /// The same paywall with another rail. A rail that pays an address needs the paywall's
    /// recipient: without one, each of its requests is refused (`400`, the intent's
    /// `MissingRecipient`), as [`PaywallBuilder::build`] refuses such a paywall outright.
    pub fn with_rail(&self, rail: Rail) -> Self {
        let mut shared = (*self.shared).clone();
        shared.rail = RailSource::Fixed(rail);
        Self { shared: Arc::new(shared) }
    }
}

impl PaidLayer {
    /// The same route's paywall at another price.
    pub fn with_price(&self, price: Price) -> Self {
        PaidLayer { route: Arc::new(Route::new(self.route.shared.clone(), price)) }
    }
}

impl<S> Layer<S> for PaidLayer {
    type Service = PaidService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaidService { inner, route: self.route.clone() }
    }
}

/// The service a [`PaidLayer`] wraps around a handler.
#[derive(Clone)]
pub struct PaidService<S> {
    inner: S,
    route: Arc<Route>,
}

impl<S: fmt::Debug> fmt::Debug for PaidService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaidService").field("inner", &self.inner).finish_non_exhaustive()
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The future of a [`PaidService`] call. Dropped while its handler runs under an approval (its
/// client gone), it finishes in a task of its own on the current tokio runtime, so a
/// settlement under way is recorded rather than cancelled
/// ([`PaywallBuilder::cancel_on_disconnect`] turns this off). Dropped before that (while the
/// request is read or decided), or serving a free request, it is dropped as any future.
pub struct ResponseFuture<B: 'static, E: 'static> {
    /// `None` once done (or once a poll panicked).
    inner: Option<Boxed<Result<Response<PaidBody<B>>, E>>>,
    /// Set once the handler runs under an approval; `None` when a hang-up may cancel it.
    settling: Option<Arc<AtomicBool>>,
}

impl<B: 'static, E: 'static> Drop for ResponseFuture<B, E> {
    fn drop(&mut self) {
        let settling = self.settling.as_ref().is_some_and(|s| s.load(Ordering::Acquire));
        let Some(unfinished) = self.inner.take().filter(|_| settling) else { return };
        // Outside a tokio runtime (or while it shuts down) it is dropped: the approval's drop
        // guard releases it, as for any cancelled settlement.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            tracing::debug!("conto.layer.finishing_after_disconnect");
            runtime.spawn(async move {
                let _ = unfinished.await;
            });
        }
    }
}

impl<B: 'static, E: 'static> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture(..)")
    }
}

impl<B: 'static, E: 'static> Future for ResponseFuture<B, E> {
    type Output = Result<Response<PaidBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Taken out while polled: a poll that panics drops it here (its approval released by
        // its guard), never to be polled again in a task of its own.
        let Some(mut inner) = self.inner.take() else {
            panic!("a paid route's response future polled after it completed");
        };
        match inner.as_mut().poll(cx) {
            Poll::Pending => {
                self.inner = Some(inner);
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PaidService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqBody: http_body::Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Send + 'static,
{
    type Response = Response<PaidBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Call the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // The request is boxed at once: the futures below move a pointer, not its parts.
        let settling = (!self.route.shared.cancel_on_disconnect).then(Arc::default);
        let future = handle(self.route.clone(), inner, Box::new(req.into_parts()), settling.clone());
        ResponseFuture { inner: Some(Box::pin(future)), settling }
    }
}

fn refuse<B>(config: &Shared, refusal: &Refusal) -> Response<PaidBody<B>> {
    tracing::debug!(%refusal, "conto.layer.refused");
    no_store((config.responder.0)(refusal)).map(Either::Right)
}

async fn handle<S, ReqBody, ResBody>(
    route: Arc<Route>,
    mut inner: S,
    req: Box<(Parts, ReqBody)>,
    settling: Option<Arc<AtomicBool>>,
) -> Result<Response<PaidBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body + From<Bytes>,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = &*route.shared;
    // What the request is read for (its path parameters, its body, the price) is borrowed only
    // in `prepare`, and the pipeline's future is awaited where it is made (not from a local):
    // this future then keeps no second copy of either beside the pipeline's own.
    let ran = match prepare(&route, req).await {
        Prepared::Refused(refusal) => return Ok(refuse(config, &refusal)),
        Prepared::Free(req) => {
            // A free request: straight through.
            let (parts, body) = *req;
            let response = inner.call(Request::from_parts(parts, body)).await?;
            return Ok(response.map(Either::Left));
        }
        Prepared::Paid(req, intent) => {
            // Borrowed from the route this future owns: a clone would touch a reference count
            // every request on every core shares.
            let record_when = &*config.record_when;
            config.conto.run_recorded(
                intent,
                move |approval| {
                    // From here a hang-up no longer cancels the request (`ResponseFuture`).
                    if let Some(settling) = settling {
                        settling.store(true, Ordering::Release);
                    }
                    let (mut parts, body) = *req;
                    parts.extensions.insert(Paid {
                        authorization: approval.authorization().clone(),
                        source: approval.source(),
                        latency: approval.latency(),
                    });
                    // Boxed: the route's future is a third of a kilobyte, and the pipeline's
                    // future would otherwise carry it (and the layer's, once more).
                    let call = Box::pin(inner.call(Request::from_parts(parts, body)));
                    async move {
                        match call.await {
                            Ok(response) if record_when(response.status()) => Ok(response),
                            Ok(response) => Err(Ok(response)),
                            Err(error) => Err(Err(error)),
                        }
                    }
                },
                |response: &Response<ResBody>| {
                    response.extensions().get::<Settled>().map(|s| s.0.clone()).unwrap_or_default()
                },
            )
        }
    }
    .await;
    match ran {
        Err(rejection) => Ok(refuse(config, &Refusal::Rejected(rejection))),
        Ok(Ran { outcome: Ok(mut response), authorization, receipt, .. }) => {
            if let Some(Ok(recorded)) = receipt.filter(|_| config.receipt_headers) {
                add_receipt_headers(response.headers_mut(), &authorization, &recorded);
            }
            Ok(response.map(Either::Left))
        }
        Ok(Ran { outcome: Err(Ok(response)), .. }) => Ok(response.map(Either::Left)),
        Ok(Ran { outcome: Err(Err(error)), .. }) => Err(error),
    }
}

/// A request read for its price. The request stays boxed (it is moved from future to future
/// as a pointer, not as a quarter of a kilobyte).
enum Prepared<B> {
    /// Refused before any decision (no price, no actor, a bad body).
    Refused(Refusal),
    /// Free: no payment.
    Free(Box<(Parts, B)>),
    /// Paid, by this intent.
    Paid(Box<(Parts, B)>, Arc<PaymentIntent>),
}

/// Reads what the price needs (path parameters; the body, buffered only when the price reads
/// it) and builds the intent.
async fn prepare<ReqBody>(route: &Route, mut req: Box<(Parts, ReqBody)>) -> Prepared<ReqBody>
where
    ReqBody: http_body::Body + From<Bytes>,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let params: Vec<(String, String)> = match RawPathParams::from_request_parts(&mut req.0, &()).await {
        Ok(p) => p.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        Err(_) => Vec::new(),
    };

    // Buffer the body only when the price reads it.
    let json = match route.price.json_limit {
        None => None,
        Some(limit) => match Limited::new(std::mem::replace(&mut req.1, ReqBody::from(Bytes::new())), limit)
            .collect()
            .await
        {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let json = if bytes.is_empty() {
                    None
                } else {
                    match serde_json::from_slice::<serde_json::Value>(&bytes) {
                        Ok(v) => Some(v),
                        Err(e) => return Prepared::Refused(Refusal::BadPrice(format!("the body is not JSON: {e}"))),
                    }
                };
                req.1 = ReqBody::from(bytes);
                json
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Prepared::Refused(Refusal::BodyTooLarge(limit));
            }
            Err(e) => return Prepared::Refused(Refusal::BadPrice(format!("the body could not be read: {e}"))),
        },
    };

    let view = PriceRequest { parts: &req.0, params: &params, json: json.as_ref(), repeated: Default::default() };
    let built = build_intent(route, &view);
    if let Some(name) = view.repeated.get() {
        return Prepared::Refused(Refusal::BadPrice(format!("the query parameter `{name}` is given more than once")));
    }
    match built {
        Ok(Some(intent)) => Prepared::Paid(req, intent),
        Ok(None) => Prepared::Free(req),
        Err(refusal) => Prepared::Refused(refusal),
    }
}

thread_local! {
    /// The intent this thread last built for a route with a fixed rail and recipient, and the
    /// route's id: the next request to that route by the same actor at the same price is the
    /// same intent under a fresh idempotency key, so it is not built (nor validated, nor its
    /// texts copied) again.
    static LAST_INTENT: RefCell<Option<(u64, Arc<PaymentIntent>)>> = const { RefCell::new(None) };
}

fn build_intent(route: &Route, req: &PriceRequest<'_>) -> Result<Option<Arc<PaymentIntent>>, Refusal> {
    let config = &*route.shared;
    let Some(amount) = (route.price.compute)(req).map_err(|e| Refusal::BadPrice(e.0))? else {
        return Ok(None);
    };
    let actor = (config.actor.find)(req).ok_or_else(|| Refusal::MissingActor(config.actor.expects.to_string()))?;
    // A route with a template (a fixed rail and recipient) remembers its last intent; one
    // without either reads them from each request, or refuses every request as invalid.
    let fixed = route.template.is_some();
    if fixed && let Some(intent) = last_intent(route.id, amount, &actor) {
        return Ok(Some(intent));
    }
    // Every request is its own payment attempt, under a key made here: a caller's
    // `Idempotency-Key` is never taken, or repeating it would be answered with the approval its
    // first request got (an authority replays a key's answer) and run the route again unpaid.
    let intent = match &route.template {
        // A fixed route's rail and recipient were checked when it was made: only the actor is.
        Some(template) => template.again(conto_core::ActorId::new(actor).map_err(invalid)?, amount),
        None => built(config, req, actor, amount)?,
    };
    let intent = Arc::new(intent);
    if fixed {
        let _ = LAST_INTENT.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some((route.id, Arc::clone(&intent)));
            }
        });
    }
    Ok(Some(intent))
}

/// The refusal of a request whose intent is not valid.
fn invalid(e: IntentError) -> Refusal {
    Refusal::Rejected(conto_core::Rejection::new(
        conto_core::RejectionKind::Invalid(e),
        conto_core::DecisionSource::Input,
    ))
}

/// A request's intent, built from the paywall's sources.
fn built(
    config: &Shared,
    req: &PriceRequest<'_>,
    actor: String,
    amount: conto_core::Amount,
) -> Result<PaymentIntent, Refusal> {
    let rail = match &config.rail {
        RailSource::Fixed(rail) => rail.clone(),
        RailSource::From(f) => f(req).map_err(|e| Refusal::BadPrice(e.0))?,
    };
    let recipient = match &config.recipient {
        Some(RecipientSource::Fixed(address)) => Some(address.clone()),
        Some(RecipientSource::From(f)) => f(req),
        None => None,
    };
    config.intent(actor, amount, rail, recipient).map_err(invalid)
}

/// The intent this thread last built for route `id`, under a fresh idempotency key, when the
/// actor and the amount (to its scale) are the same.
fn last_intent(id: u64, amount: conto_core::Amount, actor: &str) -> Option<Arc<PaymentIntent>> {
    LAST_INTENT
        .try_with(|last| {
            let mut last = last.try_borrow_mut().ok()?;
            let (route, kept) = last.as_mut()?;
            let same = *route == id
                && kept.actor.as_str() == actor
                && kept.amount.get().serialize() == amount.get().serialize();
            if !same {
                return None;
            }
            PaymentIntent::next_attempt(kept);
            Some(Arc::clone(kept))
        })
        .ok()
        .flatten()
}

/// Response headers on a recorded success.
pub mod headers {
    /// The authorization the spend was recorded against.
    pub const AUTHORIZATION_ID: &str = "conto-authorization-id";
    /// The amount recorded.
    pub const RECORDED_AMOUNT: &str = "conto-recorded-amount";
    /// What is left of the tightest daily limit after this spend, when a daily limit applies.
    pub const DAILY_REMAINING: &str = "conto-daily-remaining";
}

fn add_receipt_headers(h: &mut http::HeaderMap, authorization: &Authorization, recorded: &Recorded) {
    let text = |s: &str| HeaderValue::from_str(s).ok();
    if let Some(v) = text(&recorded.authorization_id) {
        h.insert(headers::AUTHORIZATION_ID, v);
    }
    if let Some(v) = text(&recorded.amount.to_string()) {
        h.insert(headers::RECORDED_AMOUNT, v);
    }
    if let Some(v) = authorization.daily_remaining_after(recorded.amount).and_then(|r| text(&r.to_string())) {
        h.insert(headers::DAILY_REMAINING, v);
    }
}
