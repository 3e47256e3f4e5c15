//! The one-line switch: `CONTO_API_URL` set → Conto's API; unset → the embedded engine.
//! (One test in its own binary: it changes the process environment.)

#[tokio::test]
async fn from_env_picks_the_authority() {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/example.json");
    // SAFETY: this binary runs this single test; nothing else reads the environment meanwhile.
    unsafe {
        std::env::remove_var("CONTO_API_URL");
        std::env::remove_var("CONTO_POLICIES");
    }
    // Embedded: decides offline with the example policies (per-action limit 5).
    let embedded = conto::from_env(policies).unwrap();
    let rail = conto::Rail::x402("https://api.example.com/q").unwrap();
    let intent = conto::PaymentIntent::builder("agent-1", "7.5", rail)
        .recipient("0xa11ce00000000000000000000000000000000001")
        .build()
        .unwrap();
    let rejection = embedded.authorize(intent).await.unwrap_err();
    assert_eq!(rejection.source(), conto::DecisionSource::Policy);
    assert_eq!(rejection.violations()[0].kind, conto::ViolationType::PerTxLimit);
    assert!(matches!(conto::from_env("/nonexistent.json"), Err(conto::FromEnvError::Policy { .. })));

    // A missing policy file says where it looked and how to point elsewhere.
    let err = conto::from_env("policies/nope.json").unwrap_err().to_string();
    assert!(err.contains("policies/nope.json"), "{err}");
    assert!(err.contains("relative to the working directory"), "{err}");
    assert!(err.contains("set CONTO_POLICIES"), "{err}");
    unsafe { std::env::set_var("CONTO_POLICIES", "/also/missing.json") };
    let err = conto::from_env(policies).unwrap_err().to_string();
    assert!(err.contains("/also/missing.json") && err.contains("came from CONTO_POLICIES"), "{err}");
    unsafe { std::env::remove_var("CONTO_POLICIES") };

    // The builder chains: one handle with its observer, built once.
    let monitor = conto::Monitor::new(8);
    let observed = conto::builder_from_env(policies).unwrap().observe(monitor.observer()).build();
    let intent = conto::PaymentIntent::builder("agent-1", "1", conto::Rail::x402("https://api.example.com/q").unwrap())
        .recipient("0xa11ce00000000000000000000000000000000001")
        .build()
        .unwrap();
    // Approved, or denied in the example policy's nightly blackout: a decision either way.
    if let Ok(approval) = observed.authorize(intent).await {
        approval.release();
    }
    assert_eq!(monitor.status(&observed).decisions, 1, "the observer sees the handle's decisions");

    // With CONTO_LEDGER_PATH the embedded ledger survives a restart of the process's Conto.
    #[cfg(feature = "outbox")]
    {
        let dir = std::env::temp_dir().join(format!("conto-from-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        unsafe { std::env::set_var("CONTO_LEDGER_PATH", dir.join("ledger.db")) };
        let budget = dir.join("budget.json");
        std::fs::write(
            &budget,
            r#"{"agents": ["agent-1"], "policies": [{"name": "budget", "rules": [{"ruleType": "BUDGET_CAP",
                "operator": "LTE", "value": "{\"amount\": 12, \"period\": \"TOTAL\"}", "action": "ALLOW"}]}]}"#,
        )
        .unwrap();
        let pay = || {
            conto::PaymentIntent::builder("agent-1", "4", conto::Rail::x402("https://api.example.com/q").unwrap())
                .recipient("0xa11ce00000000000000000000000000000000001")
                .build()
                .unwrap()
        };
        for _ in 0..3 {
            // Each run is a fresh Conto over the same ledger file: 12 in all.
            let conto = conto::from_env(&budget).unwrap();
            let _ = conto.run(pay(), |_| async { Ok::<_, ()>(()) }, |_| conto::Settlement::default()).await;
        }
        let conto = conto::from_env(&budget).unwrap();
        let refused = conto.authorize(pay()).await.unwrap_err();
        assert_eq!(refused.violations()[0].kind, conto::ViolationType::BudgetExceeded, "the budget was remembered");
        unsafe { std::env::remove_var("CONTO_LEDGER_PATH") };

        // With CONTO_LEDGER_URL two handles (two replicas) share one budget in PostgreSQL.
        #[cfg(feature = "postgres")]
        shared_ledger(&budget, &pay).await;

        // Both ledgers at once is a mistake, said so.
        unsafe {
            std::env::set_var("CONTO_LEDGER_PATH", dir.join("ledger.db"));
            std::env::set_var("CONTO_LEDGER_URL", "postgres://postgres@127.0.0.1:5432/test");
        }
        assert!(matches!(conto::from_env(&budget), Err(conto::FromEnvError::TwoLedgers)));
        unsafe {
            std::env::remove_var("CONTO_LEDGER_PATH");
            std::env::remove_var("CONTO_LEDGER_URL");
        }
    }

    // A variable set but empty (`CONTO_LEDGER_PATH=` from a compose file) is a mistake, said so:
    // not a throwaway ledger that forgets every budget at restart, nor the default policies.
    for name in ["CONTO_LEDGER_PATH", "CONTO_LEDGER_URL", "CONTO_LEDGER_SCHEMA", "CONTO_POLICIES", "CONTO_API_URL"] {
        for empty in ["", "  "] {
            unsafe { std::env::set_var(name, empty) };
            let err = conto::from_env(policies).unwrap_err();
            assert!(matches!(err, conto::FromEnvError::Empty(n) if n == name), "{name}={empty:?}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        unsafe { std::env::remove_var(name) };
    }

    let key = format!("conto_agent_{}", "cd".repeat(32));
    unsafe {
        std::env::set_var("CONTO_API_URL", "http://conto.example.com");
        std::env::set_var("CONTO_SDK_KEY", &key);
    }
    // The key pays for one actor, which must be named.
    assert!(matches!(conto::from_env(policies), Err(conto::FromEnvError::Client(conto::ClientError::MissingActor))));
    unsafe {
        std::env::set_var("CONTO_ACTOR", "agent-1");
    }
    let err = conto::from_env(policies).unwrap_err();
    assert!(err.to_string().contains("use https://"), "{err}");
    assert!(!err.to_string().contains(&key));
    unsafe {
        std::env::set_var("CONTO_API_URL", "http://127.0.0.1:3006");
        std::env::remove_var("CONTO_SDK_KEY");
        std::env::set_var("CONTO_API_KEY", &key);
    }
    assert!(conto::from_env(policies).is_ok(), "CONTO_API_KEY is accepted for the agent key");
    unsafe {
        std::env::remove_var("CONTO_API_KEY");
    }
    assert!(matches!(conto::from_env(policies), Err(conto::FromEnvError::Client(conto::ClientError::MissingKey))));
    unsafe {
        std::env::remove_var("CONTO_ACTOR");
    }
}

/// `CONTO_LEDGER_URL`: every handle built from the environment shares the ledger (skipped
/// without a PostgreSQL server, except under CI).
#[cfg(all(feature = "outbox", feature = "postgres"))]
async fn shared_ledger(budget: &std::path::Path, pay: &dyn Fn() -> conto::PaymentIntent) {
    let url =
        std::env::var("CONTO_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = match sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await {
        Ok(pool) => pool,
        Err(e) if std::env::var_os("CI").is_none() => return eprintln!("skipping the shared ledger: {e}"),
        Err(e) => panic!("CI needs PostgreSQL at {url}: {e}"),
    };
    let schema = format!("conto_env_{}", std::process::id());
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await.unwrap();
    unsafe {
        std::env::set_var("CONTO_LEDGER_URL", &url);
        std::env::set_var("CONTO_LEDGER_SCHEMA", &schema);
    }
    let (a, b) = (conto::from_env(budget).unwrap(), conto::from_env(budget).unwrap());
    for conto in [&a, &b, &a] {
        let out = conto.run(pay(), |_| async { Ok::<_, ()>(()) }, |_| conto::Settlement::default()).await;
        assert!(matches!(out, Ok(Ok(()))), "4 + 4 + 4 fit the budget of 12");
    }
    let refused = b.authorize(pay()).await.unwrap_err();
    assert_eq!(refused.violations()[0].kind, conto::ViolationType::BudgetExceeded, "one budget for both handles");
    unsafe {
        std::env::set_var("CONTO_LEDGER_SCHEMA", "Not A Schema");
    }
    assert!(matches!(conto::from_env(budget), Err(conto::FromEnvError::SharedLedger(_))));
    unsafe {
        std::env::remove_var("CONTO_LEDGER_URL");
        std::env::remove_var("CONTO_LEDGER_SCHEMA");
    }
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await.unwrap();
}
