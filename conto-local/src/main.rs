//! `cargo run -p conto-local`: a local Conto control plane on 127.0.0.1.

use std::path::PathBuf;

use clap::Parser;
use conto_core::jiff::SignedDuration;
use secrecy::SecretString;

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
    /// The org API key; generated when not given (written to `--env-file`, never printed).
    #[arg(long, env = "CONTO_ORG_API_KEY", hide_env_values = true)]
    org_key: Option<String>,
    /// A Conto policy file to preload (policies whose name is already stored are skipped).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Create this agent with an SDK key (written once to `--env-file`) if it does not exist: a
    /// standard key with every payment scope (policies are changed with the org key).
    #[arg(long)]
    agent: Option<String>,
    /// Requests per minute per agent on payment endpoints.
    #[arg(long, default_value_t = 60)]
    rate_limit: u32,
    /// Requests per minute on the org key's endpoints (Conto documents none for org keys; its
    /// shopping starter makes 8 org calls per checkout on one shared key).
    #[arg(long, default_value_t = 1000)]
    org_rate_limit: u32,
    /// Where the URL, org key, agent and its new SDK key are written as `export` lines (mode
    /// 0600) for `source`; keys are never printed.
    #[arg(long, default_value = "conto-local.env")]
    env_file: PathBuf,
    /// Seconds an approval waits for its confirm, on every rail (default: Conto's, 600 for
    /// transfers, x402 and MPP, 300 for payment requests and cards).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    approval_ttl_secs: Option<i64>,
}

#[tokio::main]
async fn main() {
    // Warnings (a wallet schedule not enforced, a database file that cannot be made
    // owner-only) reach the operator; `RUST_LOG` sets the level. Keys are never logged.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.trim().parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("conto-local: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), conto_local::LocalError> {
    let db = (!cli.in_memory).then_some(cli.db.clone());
    let running = conto_local::start(conto_local::Config {
        port: cli.port,
        db,
        org_key: cli.org_key,
        rate_limit: cli.rate_limit,
        org_rate_limit: cli.org_rate_limit,
        approval_ttl: cli.approval_ttl_secs.map(SignedDuration::from_secs),
        ..conto_local::Config::default()
    })
    .await?;
    // Preload and bootstrap into the store being served (in memory too).
    if let Some(file) = &cli.policies {
        let added = running.preload(file)?;
        println!("preloaded {added} policies from {}", file.display());
    }
    let mut created = None;
    if let Some(agent) = &cli.agent {
        created = running.bootstrap_agent(agent)?.map(SecretString::from);
        match created {
            Some(_) => println!("created agent `{agent}` and its SDK key"),
            None => println!(
                "agent `{agent}` exists (its SDK key was written to the env file when it was created; a new one: POST \
                 /api/agents/{agent}/sdk-keys with the org key)"
            ),
        }
    }
    let url = running.url();
    let credentials = conto_local::env_file::Credentials {
        url: &url,
        org_key: running.org_key(),
        agent: cli.agent.as_deref().map(|agent| (agent, created.as_ref())),
    };
    conto_local::env_file::write(&cli.env_file, &credentials, &|agent, key| running.holds_key(agent, key)).map_err(
        |e| conto_local::LocalError::EnvFile { path: cli.env_file.display().to_string(), message: e.to_string() },
    )?;
    println!("conto-local listening on {url}");
    println!("keys written to {} (owner-only); in your shell:", cli.env_file.display());
    println!("  source {}", cli.env_file.display());
    let _ = tokio::signal::ctrl_c().await;
    running.stop().await;
    Ok(())
}
