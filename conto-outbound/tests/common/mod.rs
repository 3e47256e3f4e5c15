//! What the paywall tests share.

use std::sync::{Arc, Mutex};

use conto::{Conto, Decimal, Engine, Event};

/// What the observer saw recorded: amount and settlement reference.
pub type Records = Arc<Mutex<Vec<(Decimal, Option<String>)>>>;

/// A pipeline over `engine` that keeps every record it reports.
pub fn observed(engine: &Engine) -> (Conto, Records) {
    let recorded = Records::default();
    let seen = recorded.clone();
    let conto = Conto::builder(engine.clone())
        .observe(move |e| {
            if let Event::Recorded { recorded, reference, .. } = e {
                seen.lock().unwrap().push((recorded.amount.get(), reference.clone()));
            }
        })
        .build();
    (conto, recorded)
}

/// Serves `app` on an ephemeral loopback port; its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}
