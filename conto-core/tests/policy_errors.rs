//! Malformed policy input: each mistake has its own specific error, naming where it is.

use conto_core::{PolicyError, PolicySet, RuleProblem};
use proptest::prelude::*;

fn load_rule(rule: serde_json::Value) -> PolicyError {
    let text = serde_json::json!([{"name": "Team cap", "rules": [
        {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1", "action": "ALLOW"},
        rule
    ]}])
    .to_string();
    PolicySet::from_json(&text).expect_err("the rule is malformed")
}

fn problem(e: &PolicyError) -> (&str, usize, &'static str, &RuleProblem) {
    match e {
        PolicyError::Rule { policy, rule, field, problem, .. } => (policy, *rule, field, problem),
        other => panic!("expected a rule error, got {other:?}"),
    }
}

#[test]
fn bad_json_reports_line_and_column() {
    let err = PolicySet::from_json("[\n  {\"name\": \"x\",\n   \"rules\": [}\n]").unwrap_err();
    match err {
        PolicyError::Json { line, column, .. } => assert_eq!((line, column), (3, 14)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_shape_names_the_path() {
    let err =
        PolicySet::from_json(r#"{"policies": [{"name": "x", "rules": [{"ruleType": "MAX_AMOUNT", "value": "1"}]}]}"#)
            .unwrap_err();
    match &err {
        PolicyError::Shape { path, message } => {
            assert_eq!(path, "policies[0].rules[0]");
            assert!(message.contains("operator"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(PolicySet::from_json("42"), Err(PolicyError::Shape { .. })));
}

#[test]
fn value_in_the_wrong_encoding() {
    let err =
        load_rule(serde_json::json!({"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": 1000, "action": "ALLOW"}));
    let (policy, rule, field, p) = problem(&err);
    assert_eq!((policy, rule, field), ("Team cap", 1, "value"));
    assert_eq!(p, &RuleProblem::ValueNotString("a number".into()));
    assert_eq!(
        err.to_string(),
        "policy `Team cap`, rule #1 (DAILY_LIMIT), field `value`: value must be a JSON string (e.g. \"1000\" or \"[\\\"a\\\"]\"), got a number"
    );
    // A list rule whose string is not a JSON array.
    let err = load_rule(
        serde_json::json!({"ruleType": "ALLOWED_CATEGORIES", "operator": "IN_LIST", "value": "API_PROVIDER"}),
    );
    assert!(matches!(problem(&err).3, RuleProblem::BadValue { .. }));
    // A budget without its period.
    let err = load_rule(serde_json::json!({"ruleType": "BUDGET_CAP", "operator": "LTE", "value": "{\"amount\":5}"}));
    assert!(matches!(problem(&err).3, RuleProblem::BadValue { .. }));
}

#[test]
fn unknown_rule_type_operator_and_action() {
    let err = load_rule(serde_json::json!({"ruleType": "DAILY_LIMITS", "operator": "LTE", "value": "1"}));
    assert_eq!(problem(&err).2, "ruleType");
    assert_eq!(problem(&err).3, &RuleProblem::UnknownRuleType("DAILY_LIMITS".into()));
    let err = load_rule(serde_json::json!({"ruleType": "DAILY_LIMIT", "operator": "ATMOST", "value": "1"}));
    assert_eq!(problem(&err).3, &RuleProblem::UnknownOperator("ATMOST".into()));
    let err = load_rule(serde_json::json!({"ruleType": "DAILY_LIMIT", "operator": "IN_LIST", "value": "1"}));
    assert!(matches!(problem(&err).3, RuleProblem::OperatorNotAllowed { .. }));
    let err =
        load_rule(serde_json::json!({"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "1", "action": "MAYBE"}));
    assert_eq!(problem(&err).3, &RuleProblem::UnknownAction("MAYBE".into()));
    // A blackout is the time inside its windows: NOT_BETWEEN would invert it (it was read as
    // BETWEEN, so "deny outside 09:00-17:00" approved at 03:00).
    let err = load_rule(serde_json::json!({"ruleType": "BLACKOUT_PERIOD", "operator": "NOT_BETWEEN",
        "value": "{\"start\": \"09:00\", \"end\": \"17:00\"}", "action": "DENY"}));
    assert_eq!(
        (problem(&err).2, problem(&err).3),
        ("operator", &RuleProblem::OperatorNotAllowed { operator: "NOT_BETWEEN".into(), allowed: "BETWEEN" })
    );
    // "Above" is GT or GTE: with LTE it gated small payments and let large ones through.
    let err = load_rule(serde_json::json!({"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "LTE",
        "value": "500", "action": "REQUIRE_APPROVAL"}));
    assert!(matches!(problem(&err).3, RuleProblem::OperatorNotAllowed { allowed: "GT or GTE", .. }), "{err}");
    // A velocity rule is a cap: EQ, NE, or GT with ALLOW would allow only some counts.
    for (operator, action) in [("EQ", "ALLOW"), ("NEQ", "DENY"), ("GT", "ALLOW"), ("GTE", "ALLOW")] {
        let err = load_rule(serde_json::json!({"ruleType": "VELOCITY_LIMIT", "operator": operator,
            "value": "{\"maxCount\": 3, \"period\": \"HOUR\"}", "action": action}));
        assert!(matches!(problem(&err).3, RuleProblem::OperatorNotAllowed { .. }), "{operator} {action}: {err}");
    }
}

#[test]
fn known_but_unsupported_rule_types_are_refused_not_ignored() {
    for t in ["GEOGRAPHIC_RESTRICTION", "TRUST_SCORE", "COUNTERPARTY_STATUS"] {
        let err = load_rule(serde_json::json!({"ruleType": t, "operator": "LTE", "value": "3"}));
        assert_eq!(problem(&err).3, &RuleProblem::Unsupported(t.into()));
    }
}

#[test]
fn negative_limits() {
    for (t, v) in
        [("MAX_AMOUNT", "-1"), ("DAILY_LIMIT", "-0.5"), ("BUDGET_CAP", "{\"amount\":-3,\"period\":\"DAILY\"}")]
    {
        let err = load_rule(serde_json::json!({"ruleType": t, "operator": "LTE", "value": v}));
        assert!(matches!(problem(&err).3, RuleProblem::NegativeLimit(_)), "{t}: {err}");
    }
}

#[test]
fn empty_windows_and_lists() {
    let cases = [
        ("TIME_WINDOW", "BETWEEN", r#"{"start":"09:00","end":"09:00"}"#),
        ("DATE_RANGE", "BETWEEN", r#"{"start":"2026-05-01","end":"2026-04-01"}"#),
        ("BLACKOUT_PERIOD", "BETWEEN", r#"{"windows":[]}"#),
        ("DAY_OF_WEEK", "IN_LIST", "[]"),
        ("VELOCITY_LIMIT", "LTE", r#"{"maxCount":0,"period":"HOUR"}"#),
    ];
    for (t, op, v) in cases {
        let err = load_rule(serde_json::json!({"ruleType": t, "operator": op, "value": v}));
        assert!(matches!(problem(&err).3, RuleProblem::Empty(_)), "{t}: {err}");
    }
}

#[test]
fn bad_members_and_time_zones() {
    let err = load_rule(
        serde_json::json!({"ruleType": "ALLOWED_COUNTERPARTIES", "operator": "IN_LIST", "value": "[\"0xabc...\"]"}),
    );
    assert!(matches!(problem(&err).3, RuleProblem::BadValue { .. }));
    let err = load_rule(serde_json::json!({"ruleType": "TIME_WINDOW", "operator": "BETWEEN",
        "value": "{\"start\":\"09:00\",\"end\":\"17:00\",\"timezone\":\"Mars/Olympus\"}"}));
    assert_eq!(problem(&err).3, &RuleProblem::TimeZone("Mars/Olympus".into()));
    let err = load_rule(
        serde_json::json!({"ruleType": "TIME_WINDOW", "operator": "BETWEEN", "value": "{\"start\":\"9am\",\"end\":\"17:00\"}"}),
    );
    assert!(matches!(problem(&err).3, RuleProblem::BadValue { .. }));
    // A blackout's `recurring` must agree with its bounds: never quietly ignored.
    let err = load_rule(serde_json::json!({"ruleType": "BLACKOUT_PERIOD", "operator": "BETWEEN",
        "value": "{\"windows\":[{\"start\":\"02:00\",\"end\":\"06:00\",\"recurring\":false}]}"}));
    assert!(matches!(problem(&err).3, RuleProblem::BadValue { .. }), "{err}");
    assert!(err.to_string().contains("one-off blackout takes dates"), "{err}");
    let err = load_rule(serde_json::json!({"ruleType": "BLACKOUT_PERIOD", "operator": "BETWEEN",
        "value": "{\"windows\":[{\"start\":\"2026-04-01\",\"end\":\"2026-04-02\",\"recurring\":true}]}"}));
    assert!(matches!(problem(&err).3, RuleProblem::BadValue { .. }), "{err}");
    PolicySet::from_json(r#"[{"name": "p", "rules": [{"ruleType": "BLACKOUT_PERIOD", "operator": "BETWEEN",
        "value": "{\"windows\":[{\"start\":\"02:00\",\"end\":\"06:00\",\"reason\":\"Maintenance\",\"recurring\":true}]}",
        "action": "DENY"}]}]"#)
    .expect("Conto's own example loads");
    // A budget's own zone is checked too.
    let err = load_rule(serde_json::json!({"ruleType": "BUDGET_CAP", "operator": "LTE",
        "value": "{\"amount\":100,\"period\":\"DAILY\",\"timezone\":\"Mars/Olympus\"}"}));
    assert_eq!(problem(&err).3, &RuleProblem::TimeZone("Mars/Olympus".into()));
    // A blackout window's own zone is checked too: never replaced by the rule's zone.
    let err = load_rule(serde_json::json!({"ruleType": "BLACKOUT_PERIOD", "operator": "BETWEEN",
        "value": "{\"windows\":[{\"start\":\"02:00\",\"end\":\"04:00\",\"timezone\":\"Mars/Olympus\"}]}"}));
    assert_eq!(problem(&err).3, &RuleProblem::TimeZone("Mars/Olympus".into()));
    let err = PolicySet::from_json(r#"[{"name": "p", "timezone": "Nowhere/Land", "rules": []}]"#).unwrap_err();
    assert!(matches!(err, PolicyError::Policy { field: "timezone", .. }), "{err}");
    let err = PolicySet::from_json(r#"[{"name": "p", "priority": 101, "rules": []}]"#).unwrap_err();
    assert!(matches!(err, PolicyError::Policy { field: "priority", .. }), "{err}");
}

#[test]
fn accepts_conto_wrapped_list_and_type_alias() {
    let text = r#"{"data": {"policies": [{"id": "pol_1", "name": "x", "policyType": "SPEND_LIMIT",
        "rules": [{"type": "MAX_AMOUNT", "operator": "LESS_THAN_OR_EQUAL", "value": "5", "action": "ALLOW"}]}]}}"#;
    let set = PolicySet::from_json(text).unwrap();
    assert_eq!(set.policies()[0].id(), Some("pol_1"));
    assert_eq!(set.policies()[0].policy_type(), Some("SPEND_LIMIT"));
}

#[test]
fn a_missing_file_is_an_io_error_naming_the_path() {
    let err = PolicySet::from_file("/nonexistent/policies.json").unwrap_err();
    assert!(matches!(&err, PolicyError::Io { path, .. } if path == "/nonexistent/policies.json"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary text never panics the loader.
    #[test]
    fn loader_never_panics_on_text(text in ".{0,200}") {
        let _ = PolicySet::from_json(&text);
    }

    /// Arbitrary rule fields never panic the compiler.
    #[test]
    fn loader_never_panics_on_rules(
        rule_type in prop::sample::select(vec![
            "MAX_AMOUNT", "DAILY_LIMIT", "BUDGET_CAP", "TIME_WINDOW", "DAY_OF_WEEK", "DATE_RANGE",
            "BLACKOUT_PERIOD", "VELOCITY_LIMIT", "ALLOWED_COUNTERPARTIES", "X402_MAX_PER_SERVICE",
            "CARD_ALLOWED_MCCS", "REQUIRE_APPROVAL_ABOVE", "NOPE",
        ]),
        operator in prop::sample::select(vec!["LTE", "GT", "IN_LIST", "BETWEEN", "NOT_BETWEEN", "??"]),
        value in prop_oneof![
            ".{0,40}",
            Just("{\"start\":\"25:00\",\"end\":\"01:00\"}".to_owned()),
            Just("{\"amount\":1e400,\"period\":\"DAILY\"}".to_owned()),
            Just("{\"maxCount\":99999999999,\"period\":\"HOUR\"}".to_owned()),
            Just("{\"start\":\"9999-12-31\",\"end\":\"9999-12-31\"}".to_owned()),
            Just("[\"\"]".to_owned()),
            "-?[0-9]{0,30}(\\.[0-9]{0,30})?",
        ],
    ) {
        let text = serde_json::json!([{"name": "p", "rules": [
            {"ruleType": rule_type, "operator": operator, "value": value}
        ]}]).to_string();
        let _ = PolicySet::from_json(&text);
    }
}

#[test]
fn the_shipped_policy_files_load() {
    for file in ["example.json", "degraded.json"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies").join(file);
        let set = conto_core::PolicySet::from_file(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!set.agents().is_empty(), "{file} provisions its actors");
    }
}

/// Every row of the rule-type table in `conto_core::policy`'s docs loads with each operator
/// and the value it shows: the table is what the engine takes.
#[test]
fn the_documented_rule_table_loads() {
    let rows: &[(&[&str], &[&str], &str)] = &[
        (
            &[
                "MAX_AMOUNT",
                "SINGLE_AMOUNT",
                "X402_PRICE_CEILING",
                "X402_MAX_PER_REQUEST",
                "MPP_PRICE_CEILING",
                "MPP_MAX_PER_REQUEST",
                "MPP_MAX_SESSION_DEPOSIT",
                "CARD_MAX_AMOUNT",
            ],
            &["LTE", "LT", "GT", "GTE"],
            "50",
        ),
        (&["REQUIRE_APPROVAL_ABOVE"], &["GT", "GTE"], "50"),
        (&["DAILY_LIMIT", "WEEKLY_LIMIT", "MONTHLY_LIMIT"], &["LTE", "LT"], "1000"),
        (&["BUDGET_CAP"], &["LTE", "LT"], r#"{"amount": 10000, "period": "MONTHLY"}"#),
        (
            &["X402_MAX_PER_SERVICE", "X402_MAX_PER_ENDPOINT", "MPP_MAX_PER_SERVICE", "MPP_MAX_PER_ENDPOINT"],
            &["LTE", "LT"],
            "50",
        ),
        (&["X402_MAX_PER_SERVICE"], &["LTE"], r#"{"amount": 50, "period": "WEEKLY"}"#),
        (&["X402_SESSION_BUDGET", "MPP_SESSION_BUDGET"], &["LTE", "LT"], "100"),
        (
            &[
                "ALLOWED_CATEGORIES",
                "BLOCKED_CATEGORIES",
                "X402_ALLOWED_SERVICES",
                "X402_BLOCKED_SERVICES",
                "MPP_ALLOWED_SERVICES",
                "MPP_BLOCKED_SERVICES",
                "MPP_BLOCK_SESSION_INTENT",
                "MPP_ALLOWED_METHODS",
                "CARD_ALLOWED_MERCHANTS",
                "CARD_BLOCKED_MERCHANTS",
            ],
            &["IN_LIST", "NOT_IN_LIST"],
            r#"["api.openai.com"]"#,
        ),
        (
            &["ALLOWED_COUNTERPARTIES", "WHITELIST", "BLOCKED_COUNTERPARTIES", "CONTRACT_ALLOWLIST"],
            &["IN_LIST", "NOT_IN_LIST"],
            r#"["0x1111111111111111111111111111111111111111"]"#,
        ),
        (&["CARD_ALLOWED_MCCS", "CARD_BLOCKED_MCCS"], &["IN_LIST", "NOT_IN_LIST"], r#"["5734"]"#),
        (&["TIME_WINDOW"], &["BETWEEN"], r#"{"start": "09:00", "end": "17:00"}"#),
        (&["DAY_OF_WEEK"], &["IN_LIST"], r#"["MON", "TUE"]"#),
        (&["DATE_RANGE"], &["BETWEEN"], r#"{"start": "2026-01-01", "end": "2026-03-31"}"#),
        (&["BLACKOUT_PERIOD"], &["BETWEEN"], r#"{"windows": [{"start": "02:00", "end": "03:00"}]}"#),
        (
            &["VELOCITY_LIMIT", "X402_VELOCITY_PER_ENDPOINT", "MPP_VELOCITY_PER_ENDPOINT"],
            &["LTE", "LT"],
            r#"{"maxCount": 10, "period": "HOUR"}"#,
        ),
        (&["MPP_MAX_CONCURRENT_SESSIONS"], &["LTE", "LT"], "3"),
        (&["MPP_MAX_SESSION_DURATION"], &["LTE"], "3600"),
    ];
    let mut failed = Vec::new();
    for (types, operators, value) in rows {
        for rule_type in *types {
            for operator in *operators {
                let action = if *rule_type == "REQUIRE_APPROVAL_ABOVE" { "REQUIRE_APPROVAL" } else { "ALLOW" };
                let doc = serde_json::json!([{"name": "p", "rules": [
                    {"ruleType": rule_type, "operator": operator, "value": value, "action": action}]}]);
                if let Err(e) = PolicySet::from_value(doc) {
                    failed.push(format!("{rule_type} {operator} {value}: {e}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
