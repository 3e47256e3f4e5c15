//! The decision parser never panics and never approves what is not a well-formed approval.

mod common;

use common::*;
use conto_client::parse_decision;
use conto_core::{PaymentIntent, Verdict};
use proptest::prelude::*;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        Just(json!("a".repeat(64))),
        Just(json!("2099-01-01T00:00:00Z")),
        Just(json!(RECIPIENT)),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "approved",
                        "authorized",
                        "approvalId",
                        "approvalToken",
                        "expiresAt",
                        "amount",
                        "recipientAddress",
                        "violations",
                        "reasons",
                        "status",
                        "requestId",
                        "authorizationId",
                        "requiresHumanApproval",
                        "approvalRequestId",
                        "limits",
                    ]),
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

fn intents() -> Vec<PaymentIntent> {
    vec![transfer("agent-1", "5"), x402("agent-1", "5"), mpp("agent-1", "5"), card("agent-1", "5")]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("CONTO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    ))]

    #[test]
    fn arbitrary_bytes_never_panic_or_approve(bytes in prop::collection::vec(any::<u8>(), 0..200), status in 100u16..600) {
        for intent in intents() {
            if let Ok(d) = parse_decision(status, &bytes, &intent) {
                prop_assert!(!matches!(d.verdict, Verdict::Approved(_)), "random bytes approved: {:?}", bytes);
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_approvals_match_the_request(body in json_value(), status in prop::sample::select(vec![200u16, 202, 400, 403, 500])) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for intent in intents() {
            if let Ok(d) = parse_decision(status, &bytes, &intent)
                && let Verdict::Approved(a) = d.verdict
            {
                // As the client reads it: an error status never approves.
                prop_assert!((200..=202).contains(&status), "HTTP {} approved: {}", status, body);
                prop_assert_eq!(a.amount, intent.amount);
                prop_assert!(a.expires_at > conto_core::jiff::Timestamp::now());
                prop_assert!(!a.id.is_empty());
            }
        }
    }
}
