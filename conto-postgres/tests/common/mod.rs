//! Shared by the PostgreSQL tests: the server's address, a schema per test, and a loopback
//! proxy that can cut the database off (an outage, as a client sees a restart).
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use conto_postgres::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub fn url() -> String {
    std::env::var("CONTO_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Where `url` points: its `host:port` (PostgreSQL's 5432 when it names no port), and the URL
/// with that address replaced by `to`.
fn split_address(url: &str, to: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, address) = match authority.rsplit_once('@') {
        Some((user, address)) => (format!("{user}@"), address),
        None => (String::new(), authority),
    };
    // `[::1]:5433`, `host:5433` or `host`.
    let has_port = address.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let address = if has_port { address.to_owned() } else { format!("{address}:5432") };
    (address, format!("{scheme}://{user}{to}{tail}"))
}

/// A pool on `url`, or `None` (skip) when there is no server outside CI.
pub async fn pool_on(url: &str, max: u32) -> Option<PgPool> {
    match sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
    {
        Ok(pool) => Some(pool),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: no PostgreSQL at {url} ({e})");
            None
        }
        Err(e) => panic!("CI needs PostgreSQL at {url}: {e}"),
    }
}

/// A fresh schema on the test server, or `None` (skip) when there is no server outside CI.
pub async fn schema(tag: &str) -> Option<(PgPool, String)> {
    let pool = pool_on(&url(), 16).await?;
    let name = format!("conto_t_{tag}_{}_{}", std::process::id(), jiff::Timestamp::now().as_microsecond() % 1_000_000);
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).execute(&pool).await.unwrap();
    Some((pool, name))
}

pub async fn drop_schema(pool: &PgPool, name: &str) {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).execute(pool).await.unwrap();
}

/// A TCP proxy on 127.0.0.1 in front of the test server. `cut()` drops every connection
/// through it and refuses new ones (as a client sees a server restart); `restore()` lets them
/// through again.
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    generation: Arc<watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(watch::channel(0u64).0);
        let open = Arc::new(AtomicUsize::new(0));
        let (flag, gen_tx, count) = (up.clone(), generation.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound); // refused while cut
                    continue;
                }
                let mut cut = gen_tx.subscribe();
                let count = count.clone();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(split_address(&url(), "").0).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    }
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy { port, up, open, generation }
    }

    /// The test server's URL, through this proxy (which forwards to the address
    /// `CONTO_TEST_DATABASE_URL` names).
    pub fn url(&self) -> String {
        split_address(&url(), &format!("127.0.0.1:{}", self.port)).1
    }

    /// Cuts the database off; returns once every connection through the proxy is closed.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
        while self.open.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn the_proxy_follows_the_configured_address() {
    assert_eq!(
        split_address("postgres://postgres@127.0.0.1:5432/test", "127.0.0.1:9"),
        ("127.0.0.1:5432".into(), "postgres://postgres@127.0.0.1:9/test".into())
    );
    assert_eq!(
        split_address("postgres://u:p@db.internal:5433/x?sslmode=disable", "127.0.0.1:9"),
        ("db.internal:5433".into(), "postgres://u:p@127.0.0.1:9/x?sslmode=disable".into())
    );
    assert_eq!(split_address("postgresql://db/x", "h:1"), ("db:5432".into(), "postgresql://h:1/x".into()));
}
