//! The operator view an app can mount: runtime status and recent decisions and records, as JSON
//! and as a small HTML page. It lists actor names, amounts and denial reasons for every actor,
//! so it cannot be mounted without saying who may read it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{Route, get};
use conto_core::{Activity, Conto, Monitor, SecretString, Status};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tower_layer::Layer;
use tower_service::Service;

type Check = Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>;

/// The operator view over a [`Monitor`] of a [`Conto`]: `GET /` (HTML), `GET /status` and
/// `GET /events` (JSON). Finish it with the access rule it needs; there is no unguarded default.
///
/// ```
/// use conto::tower::OperatorView;
/// use conto::{Conto, Engine, Monitor, SecretString};
/// use axum::Router;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let monitor = Monitor::new(500);
/// let conto = Conto::builder(Engine::from_json("[]")?).observe(monitor.observer()).build();
/// let token = SecretString::from(std::env::var("CONTO_OPERATOR_TOKEN")?);
/// let app: Router = Router::new().nest("/conto", OperatorView::new(monitor, conto).bearer_token(token));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OperatorView {
    monitor: Monitor,
    conto: Conto,
}

impl OperatorView {
    /// A view of `conto` through `monitor` (the monitor must observe that same handle).
    pub fn new(monitor: Monitor, conto: Conto) -> Self {
        Self { monitor, conto }
    }

    /// Readable only with `Authorization: Bearer <token>` (compared in constant time); any
    /// other request gets `401`.
    pub fn bearer_token<S: Clone + Send + Sync + 'static>(self, token: SecretString) -> Router<S> {
        let check: Check = Arc::new(move |headers: &HeaderMap| {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            let expected = token.expose_secret().as_bytes();
            !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected))
        });
        self.routes(Some(check))
    }

    /// Behind the app's own access layer (its authentication and authorization middleware),
    /// which must refuse everyone who is not an operator.
    pub fn guarded<S, L>(self, guard: L) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.routes(None).layer(guard)
    }

    /// With no access control at all. Do not expose this to the internet: it reveals every
    /// actor's name, amounts, denial reasons and the authority's health. Use it only on a
    /// listener that is itself private (a loopback admin port).
    pub fn public<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        self.routes(None)
    }

    fn routes<S: Clone + Send + Sync + 'static>(self, check: Option<Check>) -> Router<S> {
        let Self { monitor, conto } = self;
        let allowed = move |headers: &HeaderMap| check.as_ref().is_none_or(|c| c(headers));
        let (a1, a2, a3) = (allowed.clone(), allowed.clone(), allowed);
        let (m1, m2, m3, c1, c2) = (monitor.clone(), monitor.clone(), monitor, conto.clone(), conto);
        Router::new()
            .route(
                "/status",
                get(move |h: HeaderMap| async move { guard(a1(&h), || Json(m1.status(&c1)).into_response()) }),
            )
            .route(
                "/events",
                get(move |h: HeaderMap| async move { guard(a2(&h), || Json(m2.recent()).into_response()) }),
            )
            .route(
                "/",
                get(move |h: HeaderMap| async move {
                    guard(a3(&h), || Html(page(&m3.status(&c2), &m3.recent())).into_response())
                }),
            )
    }
}

/// Every answer, the data included (it names every actor), is never cached nor sniffed.
fn guard(allowed: bool, respond: impl FnOnce() -> Response) -> Response {
    let mut response = if allowed {
        respond()
    } else {
        let mut refused = (StatusCode::UNAUTHORIZED, "operator credentials required").into_response();
        refused.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        refused
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn page(status: &Status, recent: &[Activity]) -> String {
    let opt = |v: Option<String>| v.map(|s| escape(&s)).unwrap_or_else(|| "–".into());
    let reachable = match status.authority_reachable {
        Some(true) => "reachable",
        Some(false) => "UNREACHABLE",
        None => "no decision yet",
    };
    let mut rows = String::new();
    for a in recent.iter().rev() {
        rows.push_str(&format!(
            "<tr class=\"{kind}\"><td>{at}</td><td>{kind}</td><td>{actor}</td><td>{amount}</td><td>{rail}</td>\
             <td>{outcome}</td><td>{violations}</td><td>{source}</td><td>{latency}</td><td>{id}</td><td>{flags}</td><td>{error}</td></tr>\n",
            at = escape(&a.at),
            kind = a.kind,
            actor = opt(a.actor.clone()),
            amount = opt(a.amount.clone()),
            rail = opt(a.rail.map(str::to_owned)),
            outcome = opt(a.outcome.clone()),
            source = opt(a.source.map(|s| s.to_string())),
            latency = opt(a.latency_us.map(|l| format!("{l} µs"))),
            id = opt(a.authorization_id.clone()),
            error = opt(a.error.clone().or_else(|| (!a.reasons.is_empty()).then(|| a.reasons.join("; ")))),
            flags = escape(&a.flags.join(" ")),
            violations = escape(&a.violations.join(" ")),
        ));
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>conto-rs operator view</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .6em;border-bottom:1px solid #ddd;font-size:.9em}}\
         .denied,.record_failed{{color:#a00}}</style></head><body>\n\
         <h1>conto-rs</h1>\n<ul id=\"status\">\
         <li>authority: <b>{reachable}</b></li><li>last decision latency: {latency}</li>\
         <li>stand-in active: {stand_in}</li><li>outbox depth: {depth} (dead: {dead})</li>\
         <li>decisions: {decisions}, records: {records}, failed records: {failures}</li></ul>\n\
         <table id=\"events\"><tr><th>at</th><th>kind</th><th>actor</th><th>amount</th><th>rail</th><th>outcome</th>\
         <th>violations</th><th>source</th><th>latency</th><th>authorization</th><th>flags</th><th>error / reasons</th></tr>\n{rows}</table></body></html>\n",
        latency = opt(status.last_latency_us.map(|l| format!("{l} µs"))),
        stand_in = status.stand_in_active,
        depth = opt(status.outbox_depth.map(|d| d.to_string())),
        dead = opt(status.dead_records.map(|d| d.to_string())),
        decisions = status.decisions,
        records = status.records,
        failures = status.record_failures,
    )
}
