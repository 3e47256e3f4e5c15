//! `cargo run -p conto-local`: a local Conto control plane on 127.0.0.1.

use std::path::PathBuf;

use clap::Parser;
use conto_core::jiff::SignedDuration;
use secrecy::ExposeSecret;

/// A local control plane that speaks Conto's API, backed by the conto-rs embedded engine.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Port on 127.0.0.1 (Conto's development port by default).
    #[arg(long, default_value_t = 3006)]
    port: u16,
    /// SQLite file for agents, keys, policies, approvals, spend and idempotency keys.
    #[arg(long, default_value = "conto-local.db")]
    db: PathBuf,
    /// Keep everything in memory instead (lost on exit).
    #[arg(long, conflicts_with = "db")]
    in_memory: bool,
    /// The org API key; generated and printed when not given.
    #[arg(long, env = "CONTO_ORG_API_KEY", hide_env_values = true)]
    org_key: Option<String>,
    /// A Conto policy file to preload (policies whose name is already stored are skipped).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Create this agent with an SDK key (printed once) if it does not exist: a standard key
    /// with every payment scope (policies are changed with the org key).
    #[arg(long)]
    agent: Option<String>,
    /// Requests per minute per agent on payment endpoints.
    #[arg(long, default_value_t = 60)]
    rate_limit: u32,
    /// Seconds an approval waits for its confirm, on every rail (default: Conto's, 600 for
    /// transfers, x402 and MPP, 300 for payment requests and cards).
    #[arg(long)]
    approval_ttl_secs: Option<i64>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("conto-local: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), conto_local::LocalError> {
    let db = (!cli.in_memory).then_some(cli.db.clone());
    let generated = cli.org_key.is_none();
    let running = conto_local::start(conto_local::Config {
        port: cli.port,
        db,
        org_key: cli.org_key,
        rate_limit: cli.rate_limit,
        approval_ttl: cli.approval_ttl_secs.map(|secs| SignedDuration::from_secs(secs.max(1))),
    })
    .await?;
    // Preload and bootstrap into the store being served (in memory too).
    if let Some(file) = &cli.policies {
        let added = running.preload(file)?;
        println!("preloaded {added} policies from {}", file.display());
    }
    if let Some(agent) = &cli.agent
        && let Some(key) = running.bootstrap_agent(agent)?
    {
        println!("created agent `{agent}` with SDK key (shown once): {key}");
        println!("  export CONTO_SDK_KEY={key} CONTO_ACTOR={agent}");
    }
    println!("conto-local listening on {}", running.url());
    if generated {
        println!("org API key (generated): {}", running.org_key().expose_secret());
    }
    println!("  export CONTO_API_URL={}", running.url());
    let _ = tokio::signal::ctrl_c().await;
    running.stop().await;
    Ok(())
}
