//! [`HeldInMemory`]: the token seal a sink uses when none is configured.

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};

use crate::sink::{SinkError, TokenSeal};

/// The seal a sink uses when none is configured: approval tokens are never written at all, only
/// held in this process's memory (by authorization) for its own deliveries. After a restart,
/// or on another replica, a record whose token was held so cannot be delivered: reading it is
/// an error that says to seal tokens (`seal_tokens`) to keep them. Tokens older than two days
/// (past any approval's life) are let go.
#[derive(Default)]
pub struct HeldInMemory {
    tokens: std::sync::Mutex<Held>,
}

/// The tokens held, and when they were last let go of.
#[derive(Default)]
struct Held {
    by_authorization: std::collections::HashMap<String, (SecretString, Timestamp)>,
    pruned: Option<Timestamp>,
}

impl std::fmt::Debug for HeldInMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldInMemory([redacted])")
    }
}

/// What a token held in memory is written as.
pub(crate) const HELD: &str = "held-in-memory";

impl TokenSeal for HeldInMemory {
    fn seal(&self, token: &str, aad: &str) -> Result<String, SinkError> {
        let now = Timestamp::now();
        let keep_from = now.checked_sub(jiff::SignedDuration::from_hours(48)).unwrap_or(now);
        let mut held = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        // Old tokens are let go of at most once a minute, not on every record.
        if held.pruned.is_none_or(|at| now.duration_since(at) >= jiff::SignedDuration::from_mins(1)) {
            held.by_authorization.retain(|_, (_, at)| *at >= keep_from);
            held.pruned = Some(now);
        }
        held.by_authorization.insert(aad.to_owned(), (SecretString::from(token.to_owned()), now));
        Ok(HELD.to_owned())
    }

    fn open(&self, sealed: &str, aad: &str) -> Result<String, SinkError> {
        if sealed != HELD {
            return Err(SinkError(format!(
                "the approval token of `{aad}` is sealed: configure the seal it was sealed with (seal_tokens)"
            )));
        }
        let held = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match held.by_authorization.get(aad) {
            Some((token, _)) => Ok(token.expose_secret().to_owned()),
            None => Err(SinkError(format!(
                "the approval token of `{aad}` was held only in the memory of the process that queued it (no seal is \
                 configured, and tokens are never stored in clear): seal tokens (seal_tokens) to keep them across \
                 restarts and replicas"
            ))),
        }
    }
}
