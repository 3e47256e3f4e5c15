//! [`Monitor`]: what an operator needs to see — whether the authority is reachable, the last
//! decision's latency, whether the stand-in is deciding, the outbox depth, and the recent
//! decisions and records (a ring buffer), also as a live stream.
//!
//! ```
//! use conto::{Conto, Engine, Monitor};
//! let monitor = Monitor::new(256);
//! let conto = Conto::builder(Engine::from_json("[]")?).observe(monitor.observer()).build();
//! let status = monitor.status(&conto);
//! assert_eq!(status.decisions, 0);
//! # Ok::<(), conto::PolicyError>(())
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::Serialize;

use crate::decision::DecisionSource;
use crate::pipeline::{Conto, Event};

/// One line of the operator's log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// When it happened.
    pub at: String,
    /// `decision`, `recorded`, `record_failed` or `released`.
    pub kind: &'static str,
    /// The actor, for decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The amount decided on (what the payment puts at stake: an MPP session's deposit when
    /// larger than its price) or recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// The rail, for decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rail: Option<&'static str>,
    /// `approved`, `denied`, `requires_approval`, `unknown_actor`, `unavailable`, `invalid`;
    /// `recorded` or `queued`; or the release reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Who decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<DecisionSource>,
    /// How long the decision took, in whole microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The authorization concerned: on an approved decision and on its record, so the two join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
    /// The broken rules' types (Conto's spelling), for a denial.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Why the action was not approved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// What an operator should notice: `open_actor` (admitted by an open engine),
    /// `actor_inactive` (recorded for a paused or retired actor), `late` (recorded after the
    /// approval expired).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
    /// The error, for a failed record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The runtime status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Whether the last decision came from the authority (`None` before any decision).
    pub authority_reachable: Option<bool>,
    /// The last decision's latency, in whole microseconds.
    pub last_latency_us: Option<u64>,
    /// Whether the last decision came from the stand-in.
    pub stand_in_active: bool,
    /// Records waiting in the outbox (`None` without an outbox).
    pub outbox_depth: Option<u64>,
    /// Records the outbox gave up on (`None` without an outbox).
    pub dead_records: Option<u64>,
    /// Decisions seen.
    pub decisions: u64,
    /// Records delivered.
    pub records: u64,
    /// Records that failed.
    pub record_failures: u64,
}

#[derive(Default)]
struct State {
    recent: VecDeque<Activity>,
    last_source: Option<DecisionSource>,
    last_latency_us: Option<u64>,
    decisions: u64,
    records: u64,
    record_failures: u64,
}

struct Inner {
    capacity: usize,
    state: Mutex<State>,
    stream: tokio::sync::broadcast::Sender<Activity>,
}

/// Keeps the recent activity of a [`Conto`] for operators. Cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("capacity", &self.inner.capacity).finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor keeping the last `capacity` activities.
    pub fn new(capacity: usize) -> Self {
        let (stream, _) = tokio::sync::broadcast::channel(capacity.max(1));
        Self { inner: Arc::new(Inner { capacity: capacity.max(1), state: Mutex::default(), stream }) }
    }

    /// The observer to pass to [`ContoBuilder::observe`](crate::ContoBuilder::observe).
    pub fn observer(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let monitor = self.clone();
        move |event| monitor.note(event)
    }

    fn note(&self, event: &Event) {
        let blank = Activity {
            at: Timestamp::now().to_string(),
            kind: "",
            actor: None,
            amount: None,
            rail: None,
            outcome: None,
            source: None,
            latency_us: None,
            authorization_id: None,
            violations: Vec::new(),
            reasons: Vec::new(),
            flags: Vec::new(),
            error: None,
        };
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let activity = match event {
            Event::Decided {
                intent,
                outcome,
                source,
                latency,
                authorization_id,
                violations,
                reasons,
                open_actor,
                cause,
                ..
            } => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                state.decisions += 1;
                state.last_source = Some(*source);
                state.last_latency_us = Some(us);
                Activity {
                    kind: "decision",
                    actor: Some(intent.actor.to_string()),
                    amount: Some(intent.exposure().to_string()),
                    rail: Some(intent.rail.name()),
                    outcome: Some((*outcome).to_owned()),
                    source: Some(*source),
                    latency_us: Some(us),
                    authorization_id: authorization_id.clone(),
                    violations: violations.iter().map(|v| v.as_str().to_owned()).collect(),
                    reasons: reasons.clone(),
                    flags: if *open_actor { vec!["open_actor"] } else { Vec::new() },
                    error: cause.as_ref().map(ToString::to_string),
                    ..blank
                }
            }
            Event::Recorded { actor, recorded, .. } => {
                state.records += 1;
                let mut flags = Vec::new();
                if recorded.actor_inactive {
                    flags.push("actor_inactive");
                }
                if recorded.late {
                    flags.push("late");
                }
                Activity {
                    kind: "recorded",
                    actor: Some(actor.to_string()),
                    amount: Some(recorded.amount.to_string()),
                    authorization_id: Some(recorded.authorization_id.clone()),
                    outcome: Some(if recorded.queued { "queued" } else { "recorded" }.to_owned()),
                    flags,
                    ..blank
                }
            }
            Event::RecordFailed { authorization_id, error } => {
                state.record_failures += 1;
                Activity {
                    kind: "record_failed",
                    authorization_id: Some(authorization_id.clone()),
                    error: Some(error.to_string()),
                    ..blank
                }
            }
            Event::RecordClamped { actor, authorization_id, approved, settled } => Activity {
                kind: "record_clamped",
                actor: Some(actor.to_string()),
                amount: Some(approved.to_string()),
                authorization_id: Some(authorization_id.clone()),
                error: Some(format!("settled {settled}, more than the approved {approved}; recorded {approved}")),
                flags: vec!["clamped"],
                ..blank
            },
            Event::Released { authorization_id, reason } => Activity {
                kind: "released",
                authorization_id: Some(authorization_id.clone()),
                outcome: Some((*reason).to_owned()),
                ..blank
            },
        };
        if state.recent.len() == self.inner.capacity {
            state.recent.pop_front();
        }
        state.recent.push_back(activity.clone());
        drop(state);
        let _ = self.inner.stream.send(activity);
    }

    /// The recent activities, oldest first.
    pub fn recent(&self) -> Vec<Activity> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner()).recent.iter().cloned().collect()
    }

    /// The runtime status of `conto` as seen by this monitor.
    pub fn status(&self, conto: &Conto) -> Status {
        // Read before the lock: every decision's observer takes it, and the outbox's counts are
        // queries.
        let outbox: Option<(u64, u64)> = conto.outbox_stats().map(|o| (o.pending, o.dead));
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        Status {
            authority_reachable: state.last_source.map(|s| matches!(s, DecisionSource::Policy)),
            last_latency_us: state.last_latency_us,
            stand_in_active: state.last_source == Some(DecisionSource::StandIn),
            outbox_depth: outbox.map(|o| o.0),
            dead_records: outbox.map(|o| o.1),
            decisions: state.decisions,
            records: state.records,
            record_failures: state.record_failures,
        }
    }

    /// A live stream of activities (lagging receivers skip what they missed).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Activity> {
        self.inner.stream.subscribe()
    }
}
