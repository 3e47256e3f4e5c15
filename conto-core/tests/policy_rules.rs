//! One test per supported rule type, with the value examples of Conto's docs (§7.4) as vectors,
//! and the boundaries: exactly at a limit, midnight in a non-UTC zone, a DST change.

mod common;

use common::*;
use conto_core::LedgerError;
use conto_core::ViolationType as V;
use conto_core::jiff::SignedDuration;
use conto_core::jiff::Timestamp;
use conto_core::{Decimal, Engine, ManualClock, PaymentIntent, PolicySet, Rail, Settlement};

const NOON_WED: &str = "2026-06-10T12:00:00Z"; // a Wednesday

#[test]
fn max_amount_allows_exactly_the_limit() {
    let (e, _) = engine_at(&policy(&[&rule("MAX_AMOUNT", "LTE", "200", "ALLOW")]), NOON_WED);
    approved(&e.decide(&transfer("200")));
    let d = e.decide(&transfer("200.000001"));
    assert_denied(&d, V::PerTxLimit);
    let v = violation(&d);
    assert_eq!(v.limit, Some(Decimal::from(200)));
    assert_eq!(v.current.unwrap().to_string(), "200.000001");
}

#[test]
fn max_amount_with_deny_action_describes_what_is_refused() {
    let (e, _) = engine_at(&policy(&[&rule("MAX_AMOUNT", "GT", "200", "DENY")]), NOON_WED);
    approved(&e.decide(&transfer("200")));
    assert_denied(&e.decide(&transfer("201")), V::PerTxLimit);
}

#[test]
fn daily_limit_counts_reservations_and_spend_and_lands_exactly_on_the_limit() {
    let (e, _) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "1000", "ALLOW")]), NOON_WED);
    spend(&e, &transfer("600"));
    let held = e.decide(&transfer("350")); // reserved, not yet recorded
    let a = approved(&held);
    assert_eq!(a.limits.daily_used, Some(Decimal::from(950)));
    assert_eq!(a.limits.daily_remaining, Some(Decimal::from(50)));
    let d = e.decide(&transfer("51"));
    assert_denied(&d, V::DailyLimit);
    assert_eq!(violation(&d).current, Some(Decimal::from(950)));
    approved(&e.decide(&transfer("50"))); // exactly 1000
}

#[test]
fn daily_limit_rolls_over_at_local_midnight_in_the_policy_zone() {
    let text = r#"[{"name": "tokyo", "timezone": "Asia/Tokyo", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "100", "action": "ALLOW"}]}]"#;
    // 14:59:59Z is 23:59:59 in Tokyo.
    let (e, clock) = engine_at(text, "2026-06-10T14:59:59Z");
    spend(&e, &transfer("100"));
    assert_denied(&e.decide(&transfer("1")), V::DailyLimit);
    clock.advance(SignedDuration::from_secs(1)); // 00:00:00 in Tokyo: a new day
    approved(&e.decide(&transfer("100")));
}

#[test]
fn daily_period_spans_23_hours_on_a_dst_spring_forward_day() {
    let text = r#"[{"name": "ny", "timezone": "America/New_York", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}]"#;
    // 2026-03-08 is the spring-forward day in New York: midnight is 05:00Z, next midnight is 04:00Z next day.
    let (e, clock) = engine_at(text, "2026-03-08T05:00:00Z");
    spend(&e, &transfer("10"));
    clock.set("2026-03-09T03:59:59Z".parse().unwrap()); // still 23:59:59 on the 8th, local
    assert_denied(&e.decide(&transfer("1")), V::DailyLimit);
    clock.set("2026-03-09T04:00:00Z".parse().unwrap()); // local midnight of the 9th (EDT)
    approved(&e.decide(&transfer("10")));
}

#[test]
fn weekly_limit_resets_on_iso_monday() {
    let (e, clock) = engine_at(&policy(&[&rule("WEEKLY_LIMIT", "LTE", "50", "ALLOW")]), "2026-06-14T23:00:00Z"); // Sunday
    spend(&e, &transfer("50"));
    assert_denied(&e.decide(&transfer("1")), V::WeeklyLimit);
    clock.set("2026-06-15T00:00:00Z".parse().unwrap()); // Monday
    approved(&e.decide(&transfer("50")));
}

#[test]
fn monthly_limit_resets_on_the_first() {
    let (e, clock) = engine_at(&policy(&[&rule("MONTHLY_LIMIT", "LTE", "5000", "ALLOW")]), "2026-06-30T23:59:00Z");
    spend(&e, &transfer("5000"));
    assert_denied(&e.decide(&transfer("1")), V::MonthlyLimit);
    clock.set("2026-07-01T00:00:00Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));
}

#[test]
fn budget_cap_with_period() {
    let (e, _) =
        engine_at(&policy(&[&rule("BUDGET_CAP", "LTE", r#"{"amount":10000,"period":"MONTHLY"}"#, "ALLOW")]), NOON_WED);
    spend(&e, &transfer("9999.5"));
    assert_denied(&e.decide(&transfer("1")), V::BudgetExceeded);
    approved(&e.decide(&transfer("0.5")));
}

#[test]
fn a_budget_turns_over_in_its_own_zone() {
    // The policy has no zone (UTC); the budget's value names New York's.
    let value = r#"{"amount":100,"period":"DAILY","timezone":"America/New_York"}"#;
    let (e, clock) = engine_at(&policy(&[&rule("BUDGET_CAP", "LTE", value, "ALLOW")]), "2026-03-04T23:00:00Z");
    spend(&e, &transfer("100")); // 18:00 on the 4th in New York
    clock.set("2026-03-05T01:00:00Z".parse().unwrap()); // a new day in UTC, still the 4th in New York
    assert_denied(&e.decide(&transfer("1")), V::BudgetExceeded);
    clock.set("2026-03-05T05:00:00Z".parse().unwrap()); // midnight of the 5th in New York
    approved(&e.decide(&transfer("100")));
}

#[test]
fn categories_allowed_and_blocked_compare_case_insensitively() {
    let (e, _) = engine_at(
        &policy(&[
            &rule("ALLOWED_CATEGORIES", "IN_LIST", r#"["API_PROVIDER","CLOUD"]"#, "ALLOW"),
            &rule("BLOCKED_CATEGORIES", "IN_LIST", r#"["cloud"]"#, "DENY"),
        ]),
        NOON_WED,
    );
    let with = |c: &str| {
        let mut i = transfer("1");
        i.category = Some(c.into());
        i
    };
    approved(&e.decide(&with("api_provider")));
    assert_denied(&e.decide(&with("TRAVEL")), V::CategoryRestriction);
    assert_denied(&e.decide(&with("CLOUD")), V::CategoryRestriction);
    // An allowlist fails for an intent without a category.
    assert_denied(&e.decide(&transfer("1")), V::CategoryRestriction);
}

#[test]
fn counterparty_allowlist_and_blocklist() {
    let allowed = format!(r#"["{}"]"#, RECIPIENT.to_uppercase().replace("0X", "0x"));
    let blocked = format!(r#"["{OTHER}"]"#);
    let (e, _) = engine_at(
        &policy(&[
            &rule("BLOCKED_COUNTERPARTIES", "IN_LIST", &blocked, "DENY"),
            &rule("ALLOWED_COUNTERPARTIES", "IN_LIST", &allowed, "ALLOW"),
        ]),
        NOON_WED,
    );
    approved(&e.decide(&transfer("1")));
    assert_denied(&e.decide(&transfer_to("agent-1", "1", OTHER)), V::BlockedCounterparty);
    assert_denied(
        &e.decide(&transfer_to("agent-1", "1", "0x4444444444444444444444444444444444444444")),
        V::WhitelistViolation,
    );
    // Cards have no address: counterparty rules do not apply to them.
    approved(&e.decide(&card("1", "Stripe", "5411")));
    // Any other payment without a recipient (an intent built by hand, or read without
    // `recipientAddress`) is not on the allowlist.
    let mut unaddressed = transfer("1");
    unaddressed.recipient = None;
    assert_denied(&e.decide(&unaddressed), V::WhitelistViolation);
    let mut paid_request = x402("1", "https://api.example.com/data");
    paid_request.recipient = None;
    assert_denied(&e.decide(&paid_request), V::WhitelistViolation);
}

#[test]
fn whitelist_rule_type_is_an_allowlist() {
    let (e, _) =
        engine_at(&policy(&[&rule("WHITELIST", "IN_LIST", &format!(r#"["{RECIPIENT}"]"#), "ALLOW")]), NOON_WED);
    approved(&e.decide(&transfer("1")));
    assert_denied(&e.decide(&transfer_to("agent-1", "1", OTHER)), V::WhitelistViolation);
}

#[test]
fn time_window_is_start_inclusive_end_exclusive() {
    let (e, clock) = engine_at(
        &policy(&[&rule("TIME_WINDOW", "BETWEEN", r#"{"start":"09:00","end":"18:00"}"#, "ALLOW")]),
        "2026-06-10T09:00:00Z",
    );
    approved(&e.decide(&transfer("1")));
    clock.set("2026-06-10T17:59:59Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));
    clock.set("2026-06-10T18:00:00Z".parse().unwrap());
    assert_denied(&e.decide(&transfer("1")), V::TimeWindow);
    clock.set("2026-06-10T08:59:59Z".parse().unwrap());
    assert_denied(&e.decide(&transfer("1")), V::TimeWindow);
}

#[test]
fn time_window_wraps_midnight_and_honours_its_zone() {
    let value = r#"{"start":"22:00","end":"06:00","timezone":"Europe/Paris"}"#;
    // 21:30Z in June is 23:30 in Paris: inside.
    let (e, clock) = engine_at(&policy(&[&rule("TIME_WINDOW", "BETWEEN", value, "ALLOW")]), "2026-06-10T21:30:00Z");
    approved(&e.decide(&transfer("1")));
    clock.set("2026-06-10T10:00:00Z".parse().unwrap()); // noon in Paris: outside
    assert_denied(&e.decide(&transfer("1")), V::TimeWindow);
}

/// One decision reads each zone's local time once and remembers the last: rules that take
/// turns between zones must each still be judged in their own zone.
#[test]
fn time_rules_in_several_zones_are_each_judged_in_their_own() {
    let window = |start: &str, end: &str, tz: &str| {
        rule("TIME_WINDOW", "BETWEEN", &format!(r#"{{"start":"{start}","end":"{end}","timezone":"{tz}"}}"#), "ALLOW")
    };
    let windows = [
        window("19:00", "20:00", "America/New_York"),
        window("08:00", "09:00", "Asia/Tokyo"),
        window("19:00", "20:00", "America/New_York"),
        window("23:00", "23:59", "UTC"),
    ]
    .join(",");
    let set = |days_zone: &str| {
        let days = rule("DAY_OF_WEEK", "IN_LIST", r#"["Wed"]"#, "ALLOW");
        format!(
            r#"[{{"name": "windows", "rules": [{windows}]}},
                {{"name": "days", "timezone": "{days_zone}", "rules": [{days}]}}]"#
        )
    };
    // 2026-06-10T23:30Z is Wednesday 19:30 in New York, Thursday 08:30 in Tokyo, 23:30 UTC:
    // inside every window, and Wednesday in New York.
    let (e, _) = engine_at(&set("America/New_York"), "2026-06-10T23:30:00Z");
    approved(&e.decide(&transfer("1")));
    // The weekday asked in Tokyo, right after the UTC window: Thursday there, so refused.
    let (e, _) = engine_at(&set("Asia/Tokyo"), "2026-06-10T23:30:00Z");
    assert_denied(&e.decide(&transfer("1")), V::TimeWindow);
}

#[test]
fn time_window_not_between() {
    let (e, _) = engine_at(
        &policy(&[&rule("TIME_WINDOW", "NOT_BETWEEN", r#"{"start":"09:00","end":"18:00"}"#, "ALLOW")]),
        NOON_WED,
    );
    assert_denied(&e.decide(&transfer("1")), V::TimeWindow);
}

#[test]
fn day_of_week() {
    let (e, clock) =
        engine_at(&policy(&[&rule("DAY_OF_WEEK", "IN_LIST", r#"["Mon","Tue","Wed","Thu","Fri"]"#, "ALLOW")]), NOON_WED);
    approved(&e.decide(&transfer("1")));
    clock.set("2026-06-13T12:00:00Z".parse().unwrap()); // Saturday
    assert_denied(&e.decide(&transfer("1")), V::TimeWindow);
}

#[test]
fn date_range_includes_its_whole_end_day() {
    let (e, clock) = engine_at(
        &policy(&[&rule("DATE_RANGE", "BETWEEN", r#"{"start":"2026-01-01","end":"2026-12-31"}"#, "ALLOW")]),
        "2026-12-31T23:59:59Z",
    );
    approved(&e.decide(&transfer("1")));
    clock.set("2027-01-01T00:00:00Z".parse().unwrap());
    assert_denied(&e.decide(&transfer("1")), V::ExpiredPermission);
    clock.set("2025-12-31T23:59:59Z".parse().unwrap());
    assert_denied(&e.decide(&transfer("1")), V::ExpiredPermission);
}

#[test]
fn blackout_recurring_windows_format() {
    let value = r#"{"windows":[{"start":"02:00","end":"06:00","reason":"Maintenance","recurring":true}]}"#;
    let (e, clock) = engine_at(&policy(&[&rule("BLACKOUT_PERIOD", "BETWEEN", value, "DENY")]), "2026-06-10T02:00:00Z");
    let d = e.decide(&transfer("1"));
    assert_denied(&d, V::BlackoutPeriod);
    assert!(violation(&d).message.as_deref().unwrap().contains("Maintenance"));
    clock.set("2026-06-10T06:00:00Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));
}

#[test]
fn blackout_date_range_format() {
    let value = r#"{"start":"2026-04-01","end":"2026-04-02"}"#;
    let (e, clock) = engine_at(&policy(&[&rule("BLACKOUT_PERIOD", "BETWEEN", value, "ALLOW")]), "2026-04-02T23:00:00Z");
    assert_denied(&e.decide(&transfer("1")), V::BlackoutPeriod);
    clock.set("2026-04-03T00:00:00Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));
}

#[test]
fn velocity_limit_is_a_sliding_window_and_released_approvals_do_not_count() {
    let (e, clock) =
        engine_at(&policy(&[&rule("VELOCITY_LIMIT", "LTE", r#"{"maxCount":2,"period":"HOUR"}"#, "ALLOW")]), NOON_WED);
    spend(&e, &transfer("1"));
    clock.advance(SignedDuration::from_mins(30));
    let second = e.decide(&transfer("1"));
    let a = approved(&second).clone();
    assert_denied(&e.decide(&transfer("1")), V::VelocityLimit);
    e.free(&a).unwrap();
    approved(&e.decide(&transfer("1")));
    clock.advance(SignedDuration::from_mins(31)); // the first one left the window
    approved(&e.decide(&transfer("1")));
}

/// An upper bound (`LTE n`, `LT n`) states the cap whatever the action; the action says what
/// happens past it. Read literally ("refuse or gate what is within the cap") it gated the
/// payments under the cap and let everything above it through with no human.
#[test]
fn a_cap_with_deny_or_require_approval_acts_past_the_cap() {
    let (e, _) = engine_at(&policy(&[&rule("MAX_AMOUNT", "LTE", "5", "REQUIRE_APPROVAL")]), NOON_WED);
    approved(&e.decide(&transfer("3")));
    assert!(is_pending(&e.decide(&transfer("500"))), "above the cap waits for a human");

    let (e, _) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "10", "DENY")]), NOON_WED);
    spend(&e, &transfer("4"));
    spend(&e, &transfer("6"));
    assert_denied(&e.decide(&transfer("1")), V::DailyLimit);

    let three = r#"{"maxCount":3,"period":"MINUTE"}"#;
    let (e, _) = engine_at(&policy(&[&rule("VELOCITY_LIMIT", "LTE", three, "REQUIRE_APPROVAL")]), NOON_WED);
    for _ in 0..3 {
        spend(&e, &transfer("1"));
    }
    assert!(is_pending(&e.decide(&transfer("1"))), "the fourth waits for a human");

    let (e, _) = engine_at(&policy(&[&rule("MAX_AMOUNT", "LT", "5", "DENY")]), NOON_WED);
    approved(&e.decide(&transfer("4.99")));
    assert_denied(&e.decide(&transfer("5")), V::PerTxLimit);
}

/// A velocity rule's operator is the comparison of the window's approvals (this one included)
/// with `maxCount`: `LT 3` allows two; `GT 2` with `DENY` refuses the third and on;
/// `GT 2` with `REQUIRE_APPROVAL` sends the third and on to a human (it was read as `LTE`
/// whatever it said: the gate let the third through and the deny refused the first).
#[test]
fn a_velocity_rules_operator_is_honoured() {
    let hourly = r#"{"maxCount":3,"period":"HOUR"}"#;
    let (e, _) = engine_at(&policy(&[&rule("VELOCITY_LIMIT", "LT", hourly, "ALLOW")]), NOON_WED);
    spend(&e, &transfer("1"));
    spend(&e, &transfer("1"));
    assert_denied(&e.decide(&transfer("1")), V::VelocityLimit);

    let two = r#"{"maxCount":2,"period":"HOUR"}"#;
    let (e, _) = engine_at(&policy(&[&rule("VELOCITY_LIMIT", "GT", two, "DENY")]), NOON_WED);
    spend(&e, &transfer("1"));
    spend(&e, &transfer("1"));
    assert_denied(&e.decide(&transfer("1")), V::VelocityLimit);

    let (e, _) = engine_at(&policy(&[&rule("VELOCITY_LIMIT", "GT", two, "REQUIRE_APPROVAL")]), NOON_WED);
    spend(&e, &transfer("1"));
    spend(&e, &transfer("1"));
    assert!(is_pending(&e.decide(&transfer("1"))), "the third waits for a human");

    let (e, _) = engine_at(&policy(&[&rule("X402_VELOCITY_PER_ENDPOINT", "GT", two, "DENY")]), NOON_WED);
    let url = "https://api.example.com/v1/chat";
    spend(&e, &x402("0.01", url));
    spend(&e, &x402("0.01", url));
    assert_denied(&e.decide(&x402("0.01", url)), V::X402Velocity);
}

#[test]
fn require_approval_above_asks_a_human_and_a_deny_elsewhere_wins() {
    let (e, _) = engine_at(&policy(&[&rule("REQUIRE_APPROVAL_ABOVE", "GT", "500", "REQUIRE_APPROVAL")]), NOON_WED);
    approved(&e.decide(&transfer("500")));
    assert!(is_pending(&e.decide(&transfer("500.01"))));

    let text = ranked(&[
        ("gate", 90, rule("REQUIRE_APPROVAL_ABOVE", "GT", "500", "REQUIRE_APPROVAL")),
        ("cap", 10, rule("MAX_AMOUNT", "LTE", "1000", "ALLOW")),
    ]);
    let (e, _) = engine_at(&text, NOON_WED);
    assert_denied(&e.decide(&transfer("1500")), V::PerTxLimit);

    // Under `DENY` the threshold is a per-payment limit, reported with a type Conto lists.
    let (e, _) = engine_at(&policy(&[&rule("REQUIRE_APPROVAL_ABOVE", "GT", "10", "DENY")]), NOON_WED);
    let d = e.decide(&transfer("20"));
    assert_denied(&d, V::PerTxLimit);
    assert_eq!(violation(&d).limit, Some(Decimal::from(10)));
}

#[test]
fn human_approval_reserves_after_a_second_evaluation() {
    let text = policy(&[
        &rule("REQUIRE_APPROVAL_ABOVE", "GT", "100", "REQUIRE_APPROVAL"),
        &rule("DAILY_LIMIT", "LTE", "400", "ALLOW"),
    ]);
    let (e, _) = engine_at(&text, NOON_WED);
    let d = e.decide(&transfer("200"));
    let conto_core::Verdict::RequiresApproval(p) = &d.verdict else { panic!("{d:?}") };
    assert!(e.approval(&p.approval_request_id).unwrap().is_none(), "waiting for a human");
    e.resolve_approval(&p.approval_request_id, true).unwrap();
    let now = e.approval(&p.approval_request_id).unwrap().expect("decided");
    let a = approved(&now);
    assert_eq!(a.amount.to_string(), "200");
    assert_eq!(e.usage("agent-1").counters[0].reserved, Decimal::from(200));
    // Rejecting another one ends as a denial.
    let d = e.decide(&transfer("150"));
    let conto_core::Verdict::RequiresApproval(p) = &d.verdict else { panic!("{d:?}") };
    e.resolve_approval(&p.approval_request_id, false).unwrap();
    assert!(matches!(e.approval(&p.approval_request_id).unwrap().unwrap().verdict, conto_core::Verdict::Denied(_)));
}

/// Requests for human approval are forgotten once they ended (answered and their approval
/// lapsed, or lapsed unanswered) more than the retention window ago: a long-running engine
/// does not keep every request it ever opened. One still in its time is kept.
#[test]
fn requests_for_approval_are_forgotten_a_retention_window_after_they_end() {
    let (e, clock) = engine_at(&policy(&[&rule("REQUIRE_APPROVAL_ABOVE", "GT", "100", "REQUIRE_APPROVAL")]), NOON_WED);
    let ask = || match e.decide(&transfer("200")).verdict {
        conto_core::Verdict::RequiresApproval(p) => p.approval_request_id,
        other => panic!("{other:?}"),
    };
    let (answered, unanswered) = (ask(), ask());
    e.resolve_approval(&answered, true).unwrap();
    clock.advance(SignedDuration::from_hours(24 * 3));
    let fresh = ask();
    e.sweep_expired();
    assert!(e.approval(&answered).is_err(), "answered, its approval lapsed days ago: forgotten");
    assert!(e.approval(&unanswered).is_err(), "lapsed unanswered days ago: forgotten");
    assert!(e.approval(&fresh).unwrap().is_none(), "a request in its time is kept");
}

#[test]
fn action_require_approval_on_any_rule_gates_instead_of_denying() {
    let (e, _) = engine_at(&policy(&[&rule("MAX_AMOUNT", "GT", "50", "REQUIRE_APPROVAL")]), NOON_WED);
    approved(&e.decide(&transfer("50")));
    assert!(is_pending(&e.decide(&transfer("51"))));
}

#[test]
fn x402_price_ceiling_and_max_per_request_apply_to_x402_only() {
    let (e, _) = engine_at(
        &policy(&[
            &rule("X402_PRICE_CEILING", "LTE", "1", "ALLOW"),
            &rule("X402_MAX_PER_REQUEST", "LTE", "0.50", "ALLOW"),
        ]),
        NOON_WED,
    );
    approved(&e.decide(&x402("0.5", "https://api.example.com/a")));
    let d = e.decide(&x402("0.51", "https://api.example.com/a"));
    assert_denied(&d, V::X402PriceCeiling);
    approved(&e.decide(&transfer("5"))); // other rails are not x402
}

#[test]
fn x402_max_per_service_plain_is_daily_and_object_names_the_period() {
    let (e, clock) = engine_at(&policy(&[&rule("X402_MAX_PER_SERVICE", "LTE", "50", "ALLOW")]), NOON_WED);
    spend(&e, &x402("30", "https://api.openai.com/v1/chat"));
    spend(&e, &x402("20", "https://api.openai.com/v1/embed"));
    assert_denied(&e.decide(&x402("1", "https://api.openai.com/v1/chat")), V::X402EndpointLimit);
    approved(&e.decide(&x402("1", "https://other.example.com/v1"))); // another service
    clock.advance(SignedDuration::from_hours(24));
    approved(&e.decide(&x402("50", "https://api.openai.com/v1/chat")));

    let (e, clock) = engine_at(
        &policy(&[&rule("X402_MAX_PER_SERVICE", "LTE", r#"{"amount":50,"period":"WEEKLY"}"#, "ALLOW")]),
        NOON_WED,
    );
    spend(&e, &x402("50", "https://api.openai.com/v1/chat"));
    clock.advance(SignedDuration::from_hours(24));
    assert_denied(&e.decide(&x402("1", "https://api.openai.com/v1/chat")), V::X402EndpointLimit);
}

#[test]
fn x402_max_per_endpoint_ignores_the_query() {
    let (e, _) = engine_at(&policy(&[&rule("X402_MAX_PER_ENDPOINT", "LTE", "10", "ALLOW")]), NOON_WED);
    spend(&e, &x402("10", "https://api.example.com/search?q=a"));
    assert_denied(&e.decide(&x402("1", "https://api.example.com/search?q=b")), V::X402EndpointLimit);
    approved(&e.decide(&x402("1", "https://api.example.com/other")));
}

#[test]
fn x402_allowed_and_blocked_services_match_subdomains() {
    let (e, _) = engine_at(
        &policy(&[&rule("X402_ALLOWED_SERVICES", "IN_LIST", r#"["api.openai.com", "example.com"]"#, "ALLOW")]),
        NOON_WED,
    );
    approved(&e.decide(&x402("1", "https://api.openai.com/v1")));
    approved(&e.decide(&x402("1", "https://data.example.com/v1")));
    assert_denied(&e.decide(&x402("1", "https://evil-example.com/v1")), V::X402ServiceNotAllowed);
    let (e, _) =
        engine_at(&policy(&[&rule("X402_BLOCKED_SERVICES", "IN_LIST", r#"["api.openai.com"]"#, "DENY")]), NOON_WED);
    assert_denied(&e.decide(&x402("1", "https://API.openai.com/v1")), V::X402ServiceBlocked);
}

#[test]
fn x402_velocity_per_endpoint_and_session_budget() {
    let (e, _) = engine_at(
        &policy(&[&rule("X402_VELOCITY_PER_ENDPOINT", "LTE", r#"{"maxCount":1,"period":"MINUTE"}"#, "ALLOW")]),
        NOON_WED,
    );
    spend(&e, &x402("1", "https://api.example.com/a"));
    assert_denied(&e.decide(&x402("1", "https://api.example.com/a")), V::X402Velocity);
    approved(&e.decide(&x402("1", "https://api.example.com/b")));

    let (e, _) = engine_at(&policy(&[&rule("X402_SESSION_BUDGET", "LTE", "100", "ALLOW")]), NOON_WED);
    spend(&e, &x402("100", "https://api.example.com/a"));
    assert_denied(&e.decide(&x402("1", "https://api.example.com/a")), V::X402SessionBudget);
    let mut other_session = x402("1", "https://api.example.com/a");
    other_session.context.insert("sessionId".into(), "s2".into());
    approved(&e.decide(&other_session));
}

/// `CONTRACT_ALLOWLIST` checks the contract a payment calls (`targetContractAddress`, in the
/// intent's context): listed passes (EVM compared without case), unlisted is denied, and a
/// payment that calls no contract is not under the rule. Both documented value formats load.
#[test]
fn contract_allowlist_checks_the_contract_a_payment_calls() {
    const ROUTER: &str = "0x00000000000000000000000000000000000000aB";
    let calling = |contract: &str| {
        PaymentIntent::builder("agent-1", "1", Rail::transfer(8453, SENDER).unwrap())
            .recipient(RECIPIENT)
            .context(conto_core::TARGET_CONTRACT, contract)
            .build()
            .unwrap()
    };
    for value in [format!(r#"["{ROUTER}"]"#), format!(r#"{{"contracts": ["{ROUTER}"], "protocols": ["uniswap"]}}"#)] {
        let (e, _) = engine_at(&policy(&[&rule("CONTRACT_ALLOWLIST", "IN_LIST", &value, "ALLOW")]), NOON_WED);
        approved(&e.decide(&calling(&ROUTER.to_uppercase().replace("0X", "0x"))));
        let other = e.decide(&calling("0x00000000000000000000000000000000000000cd"));
        assert_denied(&other, V::ContractNotAllowed);
        assert!(violation(&other).message.as_deref().is_some_and(|m| m.contains("target contract")), "{other:?}");
        approved(&e.decide(&transfer("1"))); // calls no contract
    }
    for bad in [r#"["not an address"]"#, r#"{"contract": []}"#, "12"] {
        let text = policy(&[&rule("CONTRACT_ALLOWLIST", "IN_LIST", bad, "ALLOW")]);
        assert!(PolicySet::from_json(&text).is_err(), "{bad}");
    }
}

/// Conto's recommended MPP policy (conto-api.md §6.6): at most three sessions open at once.
/// A session is an MPP pre-authorization still live; its record, its release or its lapse
/// closes it. Other rails open none.
#[test]
fn mpp_max_concurrent_sessions_counts_the_sessions_still_open() {
    let (e, clock) = engine_at(
        &policy(&[
            &rule("MPP_SESSION_BUDGET", "LTE", "25", "ALLOW"),
            &rule("MPP_MAX_PER_REQUEST", "LTE", "1.00", "ALLOW"),
            &rule("MPP_MAX_CONCURRENT_SESSIONS", "LTE", "3", "ALLOW"),
        ]),
        NOON_WED,
    );
    let url = "https://api.example.com/stream";
    let open = |s: &str| approved(&e.decide(&mpp("0.5", url, Some(s), Some("5")))).clone();
    let (first, second, _third) = (open("s1"), open("s2"), open("s3"));
    let fourth = e.decide(&mpp("0.5", url, Some("s4"), Some("5")));
    assert_denied(&fourth, V::MppMaxConcurrentSessions);
    assert!(
        violation(&fourth).message.as_deref().is_some_and(|m| m.contains("open sessions would be 4, limit 3")),
        "{fourth:?}"
    );
    approved(&e.decide(&transfer("1"))); // a transfer is no session
    // Recorded: that session is closed.
    e.settle(&first, &conto_core::Settlement::default()).unwrap();
    open("s4");
    assert_denied(&e.decide(&mpp("0.5", url, Some("s5"), None)), V::MppMaxConcurrentSessions);
    // Released, or lapsed: closed too.
    e.free(&second).unwrap();
    open("s5");
    clock.advance(SignedDuration::from_hours(1));
    e.sweep_expired();
    let (_a, _b, _c) = (open("s6"), open("s7"), open("s8"));
    assert_denied(&e.decide(&mpp("0.5", url, Some("s9"), None)), V::MppMaxConcurrentSessions);
}

#[test]
fn mpp_max_concurrent_sessions_takes_a_whole_number() {
    for (op, value) in [("LTE", "0"), ("LTE", "2.5"), ("GT", "3"), ("LTE", "three")] {
        let text = policy(&[&rule("MPP_MAX_CONCURRENT_SESSIONS", op, value, "ALLOW")]);
        assert!(PolicySet::from_json(&text).is_err(), "{op} {value}");
    }
    let text = policy(&[&rule("MPP_MAX_CONCURRENT_SESSIONS", "LT", "2", "ALLOW")]);
    let (e, _) = engine_at(&text, NOON_WED);
    approved(&e.decide(&mpp("0.5", "https://api.example.com/x", None, None)));
    assert_denied(&e.decide(&mpp("0.5", "https://api.example.com/x", None, None)), V::MppMaxConcurrentSessions);
}

/// An MPP session is pre-authorized for its deposit (Conto's MPP guide: the app pre-authorizes
/// the deposit, and the session pays its requests out of it without asking again): the
/// deposit, when larger than the per-request amount, is what per-payment and period limits
/// see and what is reserved. Only the MPP price rules read the per-request amount.
#[test]
fn an_mpp_sessions_deposit_is_what_its_limits_see_and_what_is_reserved() {
    let url = "https://api.example.com/stream";
    let (e, _) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "1", "ALLOW")]), NOON_WED);
    assert_denied(&e.decide(&mpp("0.1", url, Some("s1"), Some("50"))), V::DailyLimit);
    let (e, _) = engine_at(&policy(&[&rule("MAX_AMOUNT", "LTE", "1", "ALLOW")]), NOON_WED);
    let d = e.decide(&mpp("0.5", url, Some("s1"), Some("100")));
    assert_denied(&d, V::PerTxLimit);
    assert_eq!(violation(&d).current, Some(Decimal::from(100)));
    assert!(violation(&d).message.as_deref().is_some_and(|m| m.contains("deposit")), "{d:?}");

    // Conto's recommended MPP policy beside a daily limit: a price of 0.5 passes the
    // per-request cap, and the deposit of 5 is held against the day.
    let (e, _) = engine_at(
        &policy(&[
            &rule("MPP_MAX_PER_REQUEST", "LTE", "1.00", "ALLOW"),
            &rule("MPP_SESSION_BUDGET", "LTE", "25", "ALLOW"),
            &rule("DAILY_LIMIT", "LTE", "10", "ALLOW"),
        ]),
        NOON_WED,
    );
    let session = approved(&e.decide(&mpp("0.5", url, Some("s1"), Some("5")))).clone();
    assert_eq!(session.amount.to_string(), "5");
    assert_eq!(session.limits.daily_used, Some(Decimal::from(5)));
    assert_denied(&e.decide(&mpp("0.5", url, Some("s2"), Some("5.5"))), V::DailyLimit);
    assert_denied(&e.decide(&mpp("1.5", url, Some("s2"), Some("2"))), V::MppPriceCeiling);
    // Recorded at what it spent: the rest of the deposit is free again.
    let recorded = e.settle(&session, &Settlement { amount: Some("4".parse().unwrap()), ..Settlement::default() });
    assert_eq!(recorded.unwrap().amount.to_string(), "4");
    approved(&e.decide(&mpp("0.5", url, Some("s2"), Some("6"))));
    // Without a deposit, the amount is what is at stake, as on every other rail.
    assert_denied(&e.decide(&mpp("0.5", url, Some("s3"), None)), V::DailyLimit);
}

/// Conto's `MPP_MAX_SESSION_DURATION` (`LTE` seconds): a session lives from its deposit's
/// pre-authorization to its record, so the pre-authorization lives that long, shorter or longer
/// than an approval's lifetime, and with it the reservation and the open-session slot. Nothing
/// else is denied by it.
#[test]
fn mpp_max_session_duration_is_the_preauthorizations_lifetime() {
    let (e, clock) = engine_at(
        &policy(&[
            &rule("MPP_MAX_SESSION_DURATION", "LTE", "60", "ALLOW"),
            &rule("MPP_MAX_CONCURRENT_SESSIONS", "LTE", "1", "ALLOW"),
            &rule("MPP_SESSION_BUDGET", "LTE", "25", "ALLOW"),
        ]),
        NOON_WED,
    );
    let url = "https://api.example.com/stream";
    let now = conto_core::Clock::now(&clock);
    let session = approved(&e.decide(&mpp("5", url, Some("s1"), Some("5")))).clone();
    assert_eq!(session.expires_at, now.checked_add(SignedDuration::from_secs(60)).unwrap());
    // Not MPP: Conto's 10 minutes.
    let transfer = approved(&e.decide(&transfer("1"))).clone();
    assert_eq!(transfer.expires_at, now.checked_add(SignedDuration::from_mins(10)).unwrap());
    assert_denied(&e.decide(&mpp("1", url, Some("s2"), None)), V::MppMaxConcurrentSessions);
    // Past its length the session lapsed: its slot and reservation are free.
    clock.advance(SignedDuration::from_secs(61));
    e.sweep_expired();
    approved(&e.decide(&mpp("1", url, Some("s2"), None)));

    // A one-off MPP `charge` is no session: neither a slot nor the session's length.
    let mut charge = mpp("1", url, None, None);
    if let conto_core::Rail::Mpp { intent, .. } = &mut charge.rail {
        *intent = Some("charge".into());
    }
    let charged = approved(&e.decide(&charge)).clone();
    assert_eq!(charged.expires_at, conto_core::Clock::now(&clock).checked_add(SignedDuration::from_mins(10)).unwrap());
    approved(&e.decide(&charge));
    // A "charge" that names a session or carries a deposit is a session all the same.
    for (session, deposit) in [(Some("s9"), None), (None, Some("5"))] {
        let mut disguised = mpp("1", url, session, deposit);
        if let conto_core::Rail::Mpp { intent, .. } = &mut disguised.rail {
            *intent = Some("CHARGE".into());
        }
        assert_denied(&e.decide(&disguised), V::MppMaxConcurrentSessions);
    }

    // A session the policy lets stay open longer than an approval's 10 minutes keeps its
    // deposit held and its slot taken until then (it lapsed at 10 minutes, freeing both while
    // the session still ran); `LT` n is n - 1 seconds.
    // A month-long session holds its slot for the month (it left the count after a week).
    for (op, value, secs) in [("LTE", "3600", 3600), ("LT", "61", 60), ("LTE", "2592000", 2_592_000)] {
        let (e, clock) = engine_at(
            &policy(&[
                &rule("MPP_MAX_SESSION_DURATION", op, value, "ALLOW"),
                &rule("MPP_MAX_CONCURRENT_SESSIONS", "LTE", "1", "ALLOW"),
            ]),
            NOON_WED,
        );
        let a = approved(&e.decide(&mpp("1", url, Some("s1"), Some("10")))).clone();
        assert_eq!(
            a.expires_at,
            conto_core::Clock::now(&clock).checked_add(SignedDuration::from_secs(secs)).unwrap(),
            "{op} {value}"
        );
        clock.advance(SignedDuration::from_secs(secs - 1));
        e.sweep_expired();
        assert_denied(&e.decide(&mpp("1", url, Some("s2"), None)), V::MppMaxConcurrentSessions);
        clock.advance(SignedDuration::from_secs(2));
        e.sweep_expired();
        approved(&e.decide(&mpp("1", url, Some("s2"), None)));
    }
}

#[test]
fn mpp_max_session_duration_takes_a_whole_number_of_seconds() {
    for (op, value) in
        [("LTE", "0"), ("LTE", "2.5"), ("GT", "3600"), ("LTE", "an hour"), ("LTE", "-5"), ("LTE", "3_600")]
    {
        let text = policy(&[&rule("MPP_MAX_SESSION_DURATION", op, value, "ALLOW")]);
        let err = PolicySet::from_json(&text).expect_err(value);
        assert!(err.to_string().contains("MPP_MAX_SESSION_DURATION"), "{op} {value}: {err}");
    }
    // A limit with digit separators is no number (rust_decimal alone would read 1000).
    let err = PolicySet::from_json(&policy(&[&rule("DAILY_LIMIT", "LTE", "1_000", "ALLOW")])).unwrap_err();
    assert!(err.to_string().contains("1_000"), "{err}");
    // Only LTE or LT is offered for an operator it refuses; only ALLOW is taken.
    let err =
        PolicySet::from_json(&policy(&[&rule("MPP_MAX_SESSION_DURATION", "IN_LIST", "60", "ALLOW")])).unwrap_err();
    assert!(err.to_string().contains("use one of LTE or LT"), "{err}");
    let err = PolicySet::from_json(&policy(&[&rule("MPP_MAX_SESSION_DURATION", "LTE", "60", "DENY")])).unwrap_err();
    assert!(err.to_string().contains("action `DENY` does not apply here"), "{err}");
}

#[test]
fn mpp_rules() {
    let (e, _) = engine_at(
        &policy(&[
            &rule("MPP_MAX_PER_REQUEST", "LTE", "1.00", "ALLOW"),
            &rule("MPP_MAX_SESSION_DEPOSIT", "LTE", "50", "ALLOW"),
            &rule("MPP_SESSION_BUDGET", "LTE", "2", "ALLOW"),
            &rule("MPP_ALLOWED_SERVICES", "IN_LIST", r#"["api.example.com"]"#, "ALLOW"),
            &rule("MPP_ALLOWED_METHODS", "IN_LIST", r#"["GET","POST"]"#, "ALLOW"),
        ]),
        NOON_WED,
    );
    let url = "https://api.example.com/stream";
    assert_denied(&e.decide(&mpp("1.01", url, Some("s1"), None)), V::MppPriceCeiling);
    assert_denied(&e.decide(&mpp("1", url, Some("s1"), Some("50.01"))), V::MppMaxSessionDeposit);
    assert_denied(&e.decide(&mpp("1", "https://other.io/x", Some("s1"), None)), V::MppServiceNotAllowed);
    // A deposit the session's budget could not cover is refused: the session pays out of it.
    assert_denied(&e.decide(&mpp("1", url, Some("s1"), Some("50"))), V::MppSessionBudget);
    spend(&e, &mpp("0.5", url, Some("s1"), Some("1")));
    spend(&e, &mpp("1", url, Some("s1"), None));
    assert_denied(&e.decide(&mpp("0.5", url, Some("s1"), None)), V::MppSessionBudget);
    approved(&e.decide(&mpp("0.5", url, Some("s2"), None)));

    let (e, _) = engine_at(
        &policy(&[
            &rule("MPP_BLOCKED_SERVICES", "IN_LIST", r#"["api.example.com"]"#, "DENY"),
            &rule("MPP_PRICE_CEILING", "LTE", "10", "ALLOW"),
        ]),
        NOON_WED,
    );
    assert_denied(&e.decide(&mpp("1", "https://api.example.com/x", None, None)), V::MppServiceBlocked);
    let (e, _) =
        engine_at(&policy(&[&rule("MPP_BLOCK_SESSION_INTENT", "IN_LIST", r#"["session"]"#, "DENY")]), NOON_WED);
    assert_denied(&e.decide(&mpp("1", "https://api.example.com/x", None, None)), V::MppSessionIntentBlocked);
    // A session is blocked as one whatever its intent says: a "charge" naming a session or
    // carrying a deposit, or no intent; a one-off charge is not.
    let with_intent = |said: Option<&str>, session: Option<&str>, deposit: Option<&str>| {
        let mut intent = mpp("1", "https://api.example.com/x", session, deposit);
        if let conto_core::Rail::Mpp { intent: i, .. } = &mut intent.rail {
            *i = said.map(str::to_owned);
        }
        intent
    };
    for (said, session, deposit) in
        [(Some("charge"), Some("s1"), None), (Some("Charge"), None, Some("5")), (None, None, None)]
    {
        assert_denied(&e.decide(&with_intent(said, session, deposit)), V::MppSessionIntentBlocked);
    }
    approved(&e.decide(&with_intent(Some("charge"), None, None)));
    let (e, _) = engine_at(
        &policy(&[
            &rule("MPP_MAX_PER_SERVICE", "LTE", "10", "ALLOW"),
            &rule("MPP_MAX_PER_ENDPOINT", "LTE", "5", "ALLOW"),
        ]),
        NOON_WED,
    );
    spend(&e, &mpp("5", "https://api.example.com/x", None, None));
    assert_denied(&e.decide(&mpp("1", "https://api.example.com/x", None, None)), V::MppEndpointLimit);
    spend(&e, &mpp("5", "https://api.example.com/y", None, None));
    assert_denied(&e.decide(&mpp("1", "https://api.example.com/z", None, None)), V::MppEndpointLimit);
    let (e, _) = engine_at(
        &policy(&[&rule("MPP_VELOCITY_PER_ENDPOINT", "LTE", r#"{"maxCount":1,"period":"MINUTE"}"#, "ALLOW")]),
        NOON_WED,
    );
    spend(&e, &mpp("1", "https://api.example.com/x", None, None));
    assert_denied(&e.decide(&mpp("1", "https://api.example.com/x", None, None)), V::MppVelocity);
}

#[test]
fn card_rules() {
    let (e, _) = engine_at(
        &policy(&[
            &rule("CARD_ALLOWED_MCCS", "IN_LIST", r#"["5411","5812"]"#, "ALLOW"),
            &rule("CARD_BLOCKED_MERCHANTS", "IN_LIST", r#"["Casino Royale"]"#, "DENY"),
            &rule("CARD_MAX_AMOUNT", "LTE", "500", "ALLOW"),
        ]),
        NOON_WED,
    );
    approved(&e.decide(&card("500", "Grocer", "5411")));
    assert_denied(&e.decide(&card("1", "Grocer", "7995")), V::CardMccRestriction);
    assert_denied(&e.decide(&card("1", "casino royale", "5812")), V::CardMerchantRestriction);
    assert_denied(&e.decide(&card("500.01", "Grocer", "5411")), V::CardAmountLimit);
    let (e, _) = engine_at(
        &policy(&[
            &rule("CARD_BLOCKED_MCCS", "IN_LIST", r#"["7995"]"#, "DENY"),
            &rule("CARD_ALLOWED_MERCHANTS", "IN_LIST", r#"["Amazon","Stripe"]"#, "ALLOW"),
        ]),
        NOON_WED,
    );
    assert_denied(&e.decide(&card("1", "Amazon", "7995")), V::CardMccRestriction);
    assert_denied(&e.decide(&card("1", "Walmart", "5411")), V::CardMerchantRestriction);
    approved(&e.decide(&card("1", "stripe", "5411")));
    // Card rules do not apply to other rails.
    approved(&e.decide(&transfer("1")));
}

/// A policy file of one-rule policies: (name, priority, rule JSON).
fn ranked(policies: &[(&str, i64, String)]) -> String {
    let docs: Vec<String> = policies
        .iter()
        .map(|(name, priority, rule)| format!(r#"{{"name":"{name}","priority":{priority},"rules":[{rule}]}}"#))
        .collect();
    format!("[{}]", docs.join(","))
}

/// Decides a transfer of 10 under two one-rule policies, `low` (priority 10) and `high` (90):
/// the violation and the reasons it was denied with.
fn ranked_denial(low: String, high: String) -> (V, Vec<String>) {
    let (e, _) = engine_at(&ranked(&[("low", 10, low), ("high", 90, high)]), NOON_WED);
    let d = e.decide(&transfer("10"));
    let conto_core::Verdict::Denied(denial) = d.verdict else { panic!("denied expected: {d:?}") };
    assert_eq!(denial.violations.len(), 1, "only the first violation is returned");
    (denial.violations[0].kind.clone(), denial.reasons)
}

#[test]
fn priority_order_decides_which_violation_is_returned() {
    let (kind, reasons) =
        ranked_denial(rule("DAILY_LIMIT", "LTE", "5", "ALLOW"), rule("MAX_AMOUNT", "LTE", "5", "ALLOW"));
    assert_eq!(kind, V::PerTxLimit);
    assert!(reasons[0].starts_with("high:"));
}

#[test]
fn a_spend_limit_ahead_of_a_per_action_cap_is_the_one_reported_and_reasons_keep_priority_order() {
    // The engine judges stateless rules before taking the ledger lock; the answer must be the
    // one a single pass in priority order gives.
    let (kind, reasons) =
        ranked_denial(rule("MAX_AMOUNT", "LTE", "5", "ALLOW"), rule("DAILY_LIMIT", "LTE", "5", "ALLOW"));
    assert_eq!(kind, V::DailyLimit);
    assert!(reasons[0].starts_with("high:"), "{reasons:?}");

    // Approval reasons, stateless and stateful interleaved, come back in priority order.
    let text = ranked(&[
        ("a", 40, rule("REQUIRE_APPROVAL_ABOVE", "GT", "1", "REQUIRE_APPROVAL")),
        ("b", 30, rule("DAILY_LIMIT", "GT", "5", "REQUIRE_APPROVAL")),
        ("c", 20, rule("REQUIRE_APPROVAL_ABOVE", "GT", "2", "REQUIRE_APPROVAL")),
    ]);
    let (e, _) = engine_at(&text, NOON_WED);
    let d = e.decide(&transfer("10"));
    let conto_core::Verdict::RequiresApproval(pending) = &d.verdict else { panic!("{d:?}") };
    let from: Vec<&str> = pending.reasons.iter().map(|r| &r[..2]).collect();
    assert_eq!(from, ["a:", "b:", "c:"], "{:?}", pending.reasons);
    // A stateless denial after a stateful one that passes still denies, and holds nothing.
    let text = ranked(&[
        ("a", 40, rule("DAILY_LIMIT", "LTE", "100", "ALLOW")),
        ("b", 30, rule("MAX_AMOUNT", "LTE", "5", "ALLOW")),
    ]);
    let (e, _) = engine_at(&text, NOON_WED);
    assert_denied(&e.decide(&transfer("10")), V::PerTxLimit);
    assert_eq!(e.usage("agent-1").live_reservations, 0);
    // A per-action cap ahead of a spend limit that would also deny, in the same policy: the cap
    // is reported. A spend rule for another rail ahead of it changes nothing.
    let (e, _) = engine_at(
        &policy(&[
            &rule("X402_SESSION_BUDGET", "LTE", "1", "ALLOW"),
            &rule("MAX_AMOUNT", "LTE", "5", "ALLOW"),
            &rule("DAILY_LIMIT", "LTE", "5", "ALLOW"),
        ]),
        NOON_WED,
    );
    assert_denied(&e.decide(&transfer("10")), V::PerTxLimit);
    approved(&e.decide(&transfer("4")));
    assert_denied(&e.decide(&transfer("2")), V::DailyLimit);
}

#[test]
fn assignment_inactive_and_scope_all() {
    let text = format!(
        r#"[{{"name":"only-b","agentIds":["agent-b"],"rules":[{r}]}},
            {{"name":"off","isActive":false,"rules":[{r}]}},
            {{"name":"via-agentPolicies","agentPolicies":[{{"agentId":"agent-c"}}],"rules":[{r}]}}]"#,
        r = rule("MAX_AMOUNT", "LTE", "5", "ALLOW")
    );
    let (e, _) = engine_at(&text, NOON_WED);
    approved(&e.decide(&transfer_to("agent-a", "10", RECIPIENT)));
    assert_denied(&e.decide(&transfer_to("agent-b", "10", RECIPIENT)), V::PerTxLimit);
    assert_denied(&e.decide(&transfer_to("agent-c", "10", RECIPIENT)), V::PerTxLimit);
}

/// An export from Conto's list view shows `agentPolicies` on every policy: an unassigned one
/// has `[]` and binds no one (read as "no agents named" it bound every agent, denying payments
/// Conto approves). Only a policy naming no agents at all (a hand-written file) binds everyone.
#[test]
fn an_empty_assignment_binds_no_one_and_a_missing_one_everyone() {
    let r = rule("MAX_AMOUNT", "LTE", "5", "ALLOW");
    for empty in [r#""agentPolicies":[]"#, r#""agentIds":[]"#, r#""agentIds":[],"agentPolicies":[]"#] {
        let text = format!(r#"[{{"name":"unassigned",{empty},"rules":[{r}]}}]"#);
        let (e, _) = engine_at(&text, NOON_WED);
        approved(&e.decide(&transfer_to("agent-a", "10", RECIPIENT)));
    }
    let (e, _) = engine_at(&format!(r#"[{{"name":"everyone","agentIds":null,"rules":[{r}]}}]"#), NOON_WED);
    assert_denied(&e.decide(&transfer_to("agent-a", "10", RECIPIENT)), V::PerTxLimit);
    // One field empty, the other naming agents: those agents.
    let text = format!(r#"[{{"name":"b","agentIds":[],"agentPolicies":[{{"agentId":"agent-b"}}],"rules":[{r}]}}]"#);
    let (e, _) = engine_at(&text, NOON_WED);
    approved(&e.decide(&transfer_to("agent-a", "10", RECIPIENT)));
    assert_denied(&e.decide(&transfer_to("agent-b", "10", RECIPIENT)), V::PerTxLimit);
}

/// A field Conto spells two ways (`ruleType`/`type`, `timezone`/`timeZone`, `id`/`policyId`)
/// may come under both names, as a view showing both sends it; two that disagree are an
/// error naming where.
#[test]
fn a_field_under_both_of_its_names_loads_when_they_agree() {
    let text = r#"[{"id":"pol_1","policyId":"pol_1","name":"p","timezone":"Asia/Tokyo","timeZone":"Asia/Tokyo",
        "rules":[{"id":"r1","type":"MAX_AMOUNT","ruleType":"MAX_AMOUNT","operator":"LTE","value":"5","action":"ALLOW"}]}]"#;
    let (e, _) = engine_at(text, NOON_WED);
    assert_denied(&e.decide(&transfer("6")), V::PerTxLimit);
    assert_eq!(PolicySet::from_json(text).unwrap().policies()[0].id(), Some("pol_1"));

    let clash =
        r#"[{"name":"p","rules":[{"type":"MAX_AMOUNT","ruleType":"DAILY_LIMIT","operator":"LTE","value":"5"}]}]"#;
    let err = PolicySet::from_json(clash).unwrap_err().to_string();
    assert!(
        err.contains("[0].rules[0]") && err.contains("`ruleType` is `DAILY_LIMIT` but `type` is `MAX_AMOUNT`"),
        "{err}"
    );
    let clash = r#"[{"name":"p","timezone":"UTC","timeZone":"Asia/Tokyo","rules":[]}]"#;
    let err = PolicySet::from_json(clash).unwrap_err().to_string();
    assert!(err.contains("`timezone` is `UTC` but `timeZone` is `Asia/Tokyo`"), "{err}");
    let missing = r#"[{"name":"p","rules":[{"operator":"LTE","value":"5"}]}]"#;
    let err = PolicySet::from_json(missing).unwrap_err().to_string();
    assert!(err.contains("[0].rules[0]") && err.contains("missing field `ruleType`"), "{err}");
}

/// One policy as `GET /api/policies/{id}` answers it, bare or under `data`, and a list under
/// `data`, load as a set of one (or of the list).
#[test]
fn one_policy_object_and_api_answers_load() {
    let one = r#"{"id":"pol_1","name":"cap","rules":[{"ruleType":"MAX_AMOUNT","operator":"LTE","value":"5","action":"ALLOW"}]}"#;
    for text in [one.to_owned(), format!(r#"{{"data":{one}}}"#), format!(r#"{{"data":[{one}]}}"#)] {
        let (e, _) = engine_at(&text, NOON_WED);
        assert_denied(&e.decide(&transfer("6")), V::PerTxLimit);
        approved(&e.decide(&transfer("5")));
    }
    // A bad field inside still says where.
    let err = PolicySet::from_json(r#"{"data":{"name":"cap","rules":[{"ruleType":"MAX_AMOUNT"}]}}"#).unwrap_err();
    assert!(err.to_string().contains("data.rules[0]"), "{err}");
    let err = PolicySet::from_json(r#"{"something":"else"}"#).unwrap_err();
    assert!(err.to_string().contains("one policy"), "{err}");
    // A misspelled wrapper is not one policy with no rules (which would approve everything).
    let err = PolicySet::from_json(r#"{"name":"prod","polices":[]}"#).unwrap_err();
    assert!(err.to_string().contains("one policy"), "{err}");
}

/// A one-off blackout or a date range bounded by local date-times keeps their times: read as
/// dates (a date parser takes the date of `2026-04-01T02:00` and drops its time), a four-hour
/// blackout became the whole day.
#[test]
fn local_date_times_bound_a_window_to_the_minute_in_the_policy_zone() {
    let value = r#"{"start":"2026-04-01T02:00:00","end":"2026-04-01T06:00"}"#;
    let (e, clock) = engine_at(&policy(&[&rule("BLACKOUT_PERIOD", "BETWEEN", value, "DENY")]), "2026-04-01T01:59:59Z");
    approved(&e.decide(&transfer("1")));
    clock.set("2026-04-01T02:00:00Z".parse().unwrap());
    assert_denied(&e.decide(&transfer("1")), V::BlackoutPeriod);
    clock.set("2026-04-01T06:00:00Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));
    clock.set("2026-04-01T20:00:00Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));

    // In the policy's zone: 09:30 in Tokyo is 00:30Z.
    let text = r#"[{"name":"p","timezone":"Asia/Tokyo","rules":[{"ruleType":"DATE_RANGE","operator":"BETWEEN",
        "value":"{\"start\":\"2026-04-01 09:30\",\"end\":\"2026-04-30\"}","action":"ALLOW"}]}]"#;
    let (e, clock) = engine_at(text, "2026-04-01T00:29:59Z");
    assert_denied(&e.decide(&transfer("1")), V::ExpiredPermission);
    clock.set("2026-04-01T00:30:00Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));
}

#[test]
fn a_time_of_day_may_have_a_one_digit_hour() {
    let (e, clock) = engine_at(
        &policy(&[&rule("TIME_WINDOW", "BETWEEN", r#"{"start":"9:00","end":"18:00"}"#, "ALLOW")]),
        "2026-06-10T08:59:59Z",
    );
    assert_denied(&e.decide(&transfer("1")), V::TimeWindow);
    clock.set("2026-06-10T09:00:00Z".parse().unwrap());
    approved(&e.decide(&transfer("1")));
    for bad in ["900", "9:0", "123:00", ":00", "9:00:0"] {
        let value = format!(r#"{{"start":"{bad}","end":"18:00"}}"#);
        assert!(PolicySet::from_json(&policy(&[&rule("TIME_WINDOW", "BETWEEN", &value, "ALLOW")])).is_err(), "{bad}");
    }
}

#[test]
fn record_turns_reservation_into_actual_spend_and_never_more_than_approved() {
    let (e, _) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "100", "ALLOW")]), NOON_WED);
    let d = e.decide(&transfer("40"));
    let a = approved(&d).clone();
    let r = e.settle(&a, &Settlement::default().amount("25".parse().unwrap()).reference("0xabc")).unwrap();
    assert_eq!(r.amount.to_string(), "25");
    let u = e.usage("agent-1");
    assert_eq!((u.counters[0].spent, u.counters[0].reserved), (Decimal::from(25), Decimal::ZERO));
    // Same record again: a no-op with the same receipt.
    assert_eq!(e.settle(&a, &Settlement::default().amount("25".parse().unwrap()).reference("0xabc")).unwrap(), r);
    // A different settlement for the same authorization: a conflict.
    assert!(matches!(
        e.settle(&a, &Settlement::default().amount("26".parse().unwrap())),
        Err(conto_core::AuthorityError::Ledger(LedgerError::RecordConflict(_)))
    ));
    // Over the approval: clamped to the approved amount, never an error after counting it, and
    // a replay gives the same answer.
    let d = e.decide(&transfer("10"));
    let b = approved(&d).clone();
    let over = Settlement::default().amount("11".parse().unwrap());
    let first = e.settle(&b, &over).unwrap();
    assert_eq!(first.amount.to_string(), "10");
    assert_eq!(e.settle(&b, &over).unwrap(), first, "replayed: the same receipt");
    assert_eq!(e.usage("agent-1").counters[0].spent, Decimal::from(35));
    assert_eq!(e.usage("agent-1").stats.total_spent, Decimal::from(35));
}

#[test]
fn expiry_frees_the_reservation_and_a_late_record_is_counted_and_flagged() {
    let (e, clock) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "100", "ALLOW")]), "2026-06-10T08:00:00Z");
    let d = e.decide(&transfer("100"));
    let a = approved(&d).clone();
    assert_denied(&e.decide(&transfer("1")), V::DailyLimit);
    clock.advance(SignedDuration::from_mins(10));
    assert_eq!(e.sweep_expired(), 1);
    assert_eq!(e.usage("agent-1").counters[0].reserved, Decimal::ZERO);
    let r = e.settle(&a, &Settlement::default()).unwrap();
    assert!(r.late);
    let u = e.usage("agent-1");
    assert_eq!(u.counters[0].spent, Decimal::from(100));
    assert_eq!((u.stats.expired, u.stats.late_records), (1, 1));
}

/// A late record is kept for the whole retention window from when it was recorded, not from
/// when its reservation expired: a repeat a day after the expiry still gets the same receipt.
#[test]
fn a_late_record_is_answered_for_its_own_retention_window() {
    let (e, clock) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "100", "ALLOW")]), "2026-06-10T08:00:00Z");
    let a = approved(&e.decide(&transfer("100"))).clone();
    clock.advance(SignedDuration::from_mins(10));
    assert_eq!(e.sweep_expired(), 1);
    clock.advance(SignedDuration::from_hours(20));
    let first = e.settle(&a, &Settlement::default()).unwrap();
    assert!(first.late);
    // The expiry is now past the retention window; the record is not.
    clock.advance(SignedDuration::from_hours(5));
    e.sweep_expired();
    assert_eq!(e.settle(&a, &Settlement::default()).unwrap(), first, "a repeat: the same receipt, counted once");
    assert_eq!(e.usage("agent-1").stats.late_records, 1);
    // Past the record's own window it is forgotten, like any other.
    clock.advance(SignedDuration::from_hours(20));
    e.sweep_expired();
    assert!(matches!(
        e.settle(&a, &Settlement::default()),
        Err(conto_core::AuthorityError::Ledger(LedgerError::UnknownAuthorization(_)))
    ));
}

/// A shorter retention window: a late record within it is counted, and a repeat of a record is
/// answered the same; past it, an ended approval is forgotten and its record refused as unknown.
#[test]
fn a_shorter_retention_window_forgets_ended_approvals_sooner() {
    let clock = ManualClock::new("2026-06-10T08:00:00Z".parse::<Timestamp>().unwrap());
    let set = PolicySet::from_json(&policy(&[&rule("DAILY_LIMIT", "LTE", "100", "ALLOW")])).unwrap();
    let e = Engine::builder()
        .policies(set)
        .clock(clock.clone())
        .actors(["agent-1"])
        .unwrap()
        .retention(SignedDuration::from_hours(1))
        .build();
    let (late, lost) = (approved(&e.decide(&transfer("10"))).clone(), approved(&e.decide(&transfer("20"))).clone());
    clock.advance(SignedDuration::from_mins(10));
    assert_eq!(e.sweep_expired(), 2);
    // Within the hour: counted late, and a repeat answered the same.
    clock.advance(SignedDuration::from_mins(30));
    let first = e.settle(&late, &Settlement::default()).unwrap();
    assert!(first.late);
    assert_eq!(e.settle(&late, &Settlement::default()).unwrap(), first);
    // Past the hour (and its last generation's span) since the other one expired: forgotten.
    clock.advance(SignedDuration::from_mins(40));
    e.sweep_expired();
    assert!(matches!(
        e.settle(&lost, &Settlement::default()),
        Err(conto_core::AuthorityError::Ledger(LedgerError::UnknownAuthorization(_)))
    ));
    let u = e.usage("agent-1");
    assert_eq!((u.stats.late_records, u.counters[0].spent), (1, Decimal::from(10)));
}

/// A release frees the reservation; a record after it says the money moved after all (a
/// caller that gave the approval back and settled anyway, a commit that was not seen), so it is
/// counted, flagged late, never lost: the budget then errs on the side of spent.
#[test]
fn release_frees_and_a_record_after_release_is_counted_late() {
    let (e, _) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "100", "ALLOW")]), NOON_WED);
    let d = e.decide(&transfer("100"));
    let a = approved(&d).clone();
    e.free(&a).unwrap();
    e.free(&a).unwrap(); // idempotent
    approved(&e.decide(&transfer("100")));
    let late = e.settle(&a, &Settlement::default().reference("0xlate")).unwrap();
    assert!(late.late, "{late:?}");
    let again = e.settle(&a, &Settlement::default().reference("0xlate")).unwrap();
    assert_eq!(again.transaction_id, late.transaction_id, "a repeat gets the first answer");
    let u = e.usage("agent-1");
    assert_eq!(
        (u.stats.late_records, u.counters[0].spent, u.counters[0].reserved),
        (1, Decimal::from(100), Decimal::from(100))
    );
    assert!(matches!(e.decide(&transfer("1")).verdict, conto_core::Verdict::Denied(_)), "the day is spent");
}

#[test]
fn an_empty_allowlist_allows_nothing_and_an_empty_blocklist_blocks_nothing() {
    let (e, _) = engine_at(&policy(&[&rule("ALLOWED_COUNTERPARTIES", "IN_LIST", "[]", "ALLOW")]), NOON_WED);
    assert_denied(&e.decide(&transfer("1")), V::WhitelistViolation);
    let (e, _) = engine_at(&policy(&[&rule("BLOCKED_COUNTERPARTIES", "IN_LIST", "[]", "DENY")]), NOON_WED);
    approved(&e.decide(&transfer("1")));
}

#[test]
fn a_decision_that_read_the_clock_before_midnight_never_spends_from_the_ended_day() {
    // Two decisions race across midnight: the later one rolled the daily counter first; the
    // earlier one (its clock read before midnight, the lock taken after) must count against the
    // new day's counter, never see the old day as empty and hold nothing.
    let (e, clock) = engine_at(&policy(&[&rule("DAILY_LIMIT", "LTE", "5", "ALLOW")]), "2026-06-11T00:00:01Z");
    approved(&e.decide(&transfer("4")));
    clock.set("2026-06-10T23:59:59Z".parse().unwrap());
    assert_denied(&e.decide(&transfer("2")), V::DailyLimit);
    let a = approved(&e.decide(&transfer("1"))).clone();
    e.settle(&a, &Settlement::default()).unwrap();
    let day = &e.usage("agent-1").counters[0];
    assert_eq!(day.reserved + day.spent, Decimal::from(5), "every approval is held on the day it counts in");
}

/// Approvals live as long as Conto keeps them on their rail (10 minutes for transfers, x402 and
/// MPP; 5 for payment requests and cards), unless the engine is given one lifetime for all.
#[test]
fn approvals_expire_after_contos_lifetime_for_their_rail_or_the_one_given() {
    let at = "2026-06-10T12:00:00Z";
    let now: Timestamp = at.parse().unwrap();
    let request = PaymentIntent::builder("agent-1", "1", Rail::request(None))
        .recipient("0x1111111111111111111111111111111111111111")
        .build()
        .unwrap();
    let intents = [
        (transfer("1"), 10),
        (x402("1", "https://api.example.com/search"), 10),
        (mpp("1", "https://api.example.com/stream", Some("s1"), None), 10),
        (card("1", "Acme", "5411"), 5),
        (request, 5),
    ];
    let (engine, _) = engine_at("[]", at);
    for (intent, minutes) in &intents {
        let lifetime = approved(&engine.decide(intent)).expires_at.duration_since(now);
        assert_eq!(lifetime.as_mins(), *minutes, "{}", intent.rail.name());
    }
    let set = PolicySet::from_json("[]").unwrap();
    let one = Engine::builder()
        .policies(set)
        .clock(ManualClock::new(now))
        .actors(ACTORS.iter().copied())
        .unwrap()
        .approval_ttl(SignedDuration::from_mins(2))
        .build();
    for (intent, _) in &intents {
        assert_eq!(approved(&one.decide(intent)).expires_at.duration_since(now).as_mins(), 2);
    }
}
