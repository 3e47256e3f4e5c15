//! Rate limits: a sliding minute per caller and class, and the `X-RateLimit-*` headers Conto
//! sends on every response.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use conto_core::jiff::{SignedDuration, Timestamp};

use crate::{ApiError, App, iso, lock};

/// What a request is counted against: an agent's payments or reads, or the org key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    /// An agent's payment endpoints (Conto: 60 a minute).
    Payments,
    /// An agent's reads (Conto: 120 a minute).
    Reads,
    /// The org key's endpoints (Conto's dashboard limit: 100 a minute).
    Org,
}

/// The org key's window is kept under this name (no agent id is empty).
pub(crate) const ORG: &str = "";

tokio::task_local! {
    /// The caller's window as last counted for this request: `(remaining, reset)`.
    static RATE: std::cell::Cell<Option<(u32, Timestamp)>>;
}

/// Requests a minute in `class`.
pub(crate) fn limit(app: &App, class: Class) -> u32 {
    match class {
        Class::Payments => app.rate_limit,
        Class::Reads => app.rate_limit.saturating_mul(2),
        Class::Org => app.org_rate_limit,
    }
}

/// Counts a request of `who` in `class`, or refuses it with `429 RATE_LIMITED` and
/// `Retry-After` (whole seconds, rounded up) when its last minute is full. `count: false`
/// only names the window in the answer's headers: a refused key (expired, lacking the scope)
/// never uses up its agent's limit.
pub(crate) fn take(app: &App, who: &str, class: Class, count: bool) -> Result<(), ApiError> {
    let limit = limit(app, class);
    let now = Instant::now();
    let mut rate = lock(&app.rate);
    let window = rate.entry((who.to_owned(), class)).or_default();
    while window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
        window.pop_front();
    }
    let full = window.len() as u32 >= limit;
    if count && !full {
        window.push_back(now);
    }
    let left = oldest_left(window, now);
    let remaining = limit.saturating_sub(window.len() as u32);
    let _ = RATE.try_with(|r| r.set(Some((remaining, reset_at(left)))));
    if count && full {
        let wait = (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            // The wait is in the message too: Conto's skill shows the message, not the headers.
            format!("rate limit of {limit} requests per minute exceeded; retry in {wait} s"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    Ok(())
}

/// How long until the oldest request of the window leaves it.
fn oldest_left(window: &VecDeque<Instant>, now: Instant) -> Duration {
    window.front().map_or(Duration::ZERO, |t| Duration::from_secs(60).saturating_sub(now.duration_since(*t)))
}

fn reset_at(left: Duration) -> Timestamp {
    let now = Timestamp::now();
    now.checked_add(SignedDuration::try_from(left).unwrap_or_default()).unwrap_or(now)
}

/// `X-RateLimit-Remaining` and `X-RateLimit-Reset` (ISO-8601) on every answer, as Conto sends
/// them: the caller's window once its key is known (errors and `429` included). An answer to a
/// request no key was counted for (no key, an unknown one, an unknown route) names an agent's
/// payment window untouched: the whole limit, reset now.
pub(crate) async fn headers(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    RATE.scope(std::cell::Cell::new(None), async move {
        let mut resp = next.run(req).await;
        let (remaining, reset) =
            RATE.with(std::cell::Cell::get).unwrap_or_else(|| (limit(&app, Class::Payments), Timestamp::now()));
        let h = resp.headers_mut();
        h.insert("x-ratelimit-remaining", remaining.into());
        if let Ok(v) = HeaderValue::from_str(&iso(reset)) {
            h.insert("x-ratelimit-reset", v);
        }
        resp
    })
    .await
}
