//! An operator view an app can mount: runtime status and recent decisions and records, as JSON
//! and as a small HTML page (`Router::nest("/conto", operator_router(monitor, conto))`).

use axum::Json;
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use conto_core::{Activity, Conto, Monitor, Status};

/// `GET /` (HTML), `GET /status` and `GET /events` (JSON) over `monitor`'s view of `conto`.
pub fn operator_router<S: Clone + Send + Sync + 'static>(monitor: Monitor, conto: Conto) -> Router<S> {
    let (m1, m2, m3, c1, c2) = (monitor.clone(), monitor.clone(), monitor, conto.clone(), conto);
    Router::new()
        .route("/status", get(move || async move { Json(m1.status(&c1)) }))
        .route("/events", get(move || async move { Json(m2.recent()) }))
        .route("/", get(move || async move { Html(page(&m3.status(&c2), &m3.recent())) }))
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
             <td>{outcome}</td><td>{source}</td><td>{latency}</td><td>{id}</td><td>{error}</td></tr>\n",
            at = escape(&a.at),
            kind = a.kind,
            actor = opt(a.actor.clone()),
            amount = opt(a.amount.clone()),
            rail = opt(a.rail.map(str::to_owned)),
            outcome = opt(a.outcome.clone()),
            source = opt(a.source.map(|s| s.to_string())),
            latency = opt(a.latency_ms.map(|l| format!("{l:.2} ms"))),
            id = opt(a.authorization_id.clone()),
            error = opt(a.error.clone()),
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
         <th>source</th><th>latency</th><th>authorization</th><th>error</th></tr>\n{rows}</table></body></html>\n",
        latency = opt(status.last_latency_ms.map(|l| format!("{l:.2} ms"))),
        stand_in = status.stand_in_active,
        depth = opt(status.outbox_depth.map(|d| d.to_string())),
        dead = opt(status.dead_records.map(|d| d.to_string())),
        decisions = status.decisions,
        records = status.records,
        failures = status.record_failures,
    )
}
