//! Support for the code `#[paid_action]` expands to. Not a public API: names and signatures may
//! change in any release.

use std::cell::RefCell;
use std::sync::Arc;
use std::thread::LocalKey;
use std::time::Duration;

pub use serde_json;
pub use std::sync::OnceLock;
pub use std::thread_local;

use crate::DecisionSource;
use crate::decision::Settlement;
use crate::intent::{IntentError, PaymentIntent, Rail};
use crate::money::{Amount, AmountError};
use crate::pipeline::{ApprovalMode, Conto};
use crate::rejection::{Rejection, RejectionKind};

fn invalid(e: IntentError) -> Rejection {
    Rejection::new(RejectionKind::Invalid(e), DecisionSource::Input)
}

/// The default handle, or a rejection saying how to install one.
pub fn default_conto() -> Result<Conto, Rejection> {
    crate::pipeline::installed_default()
        .cloned()
        .ok_or_else(|| Rejection::new(RejectionKind::NotConfigured, DecisionSource::NotConfigured))
}

/// Values usable as an amount.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a payment amount",
    label = "expected an amount: `conto::Amount`, `rust_decimal::Decimal`, a decimal string or an integer",
    note = "floating-point amounts are not accepted: money is exact; use `Decimal` or a string like \"1.25\""
)]
pub trait AmountSource {
    /// Converts to an amount.
    fn conto_amount(&self) -> Result<Amount, AmountError>;
}

impl AmountSource for Amount {
    fn conto_amount(&self) -> Result<Amount, AmountError> {
        Ok(*self)
    }
}
impl AmountSource for rust_decimal::Decimal {
    fn conto_amount(&self) -> Result<Amount, AmountError> {
        Amount::new(*self)
    }
}
impl AmountSource for str {
    fn conto_amount(&self) -> Result<Amount, AmountError> {
        self.parse()
    }
}
impl AmountSource for String {
    fn conto_amount(&self) -> Result<Amount, AmountError> {
        self.parse()
    }
}
/// An amount argument as read (a literal one, once per call site, on its first call).
pub type AmountRead = Result<Amount, AmountError>;

/// Reads an amount argument.
pub fn amount(value: &impl AmountSource) -> AmountRead {
    value.conto_amount()
}
macro_rules! amount_from_int {
    ($($t:ty),*) => {$(
        impl AmountSource for $t {
            fn conto_amount(&self) -> Result<Amount, AmountError> {
                Amount::new(rust_decimal::Decimal::from(*self))
            }
        }
    )*};
}
amount_from_int!(u8, u16, u32, u64, i8, i16, i32, i64, usize);
impl<T: AmountSource + ?Sized> AmountSource for &T {
    fn conto_amount(&self) -> Result<Amount, AmountError> {
        (**self).conto_amount()
    }
}
impl<T: AmountSource> AmountSource for Option<T> {
    fn conto_amount(&self) -> Result<Amount, AmountError> {
        match self {
            Some(v) => v.conto_amount(),
            None => Err(AmountError::NotANumber("None".into())),
        }
    }
}

/// Values usable as text: recipients, categories, references, actors, keys.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as text here",
    label = "expected `&str`, `String`, or an `Option` of one",
    note = "#[paid_action] text arguments (recipient, category, purpose, actor, reference, ...) take strings"
)]
pub trait TextSource {
    /// The text, if any, borrowed.
    fn conto_str(&self) -> Option<&str>;

    /// The text, if any, owned: a `String` is moved, not copied.
    fn conto_string(self) -> Option<String>
    where
        Self: Sized,
    {
        self.conto_str().map(str::to_owned)
    }
}

impl TextSource for str {
    fn conto_str(&self) -> Option<&str> {
        Some(self)
    }
}
impl TextSource for String {
    fn conto_str(&self) -> Option<&str> {
        Some(self)
    }

    fn conto_string(self) -> Option<String> {
        Some(self)
    }
}
impl TextSource for crate::Address {
    fn conto_str(&self) -> Option<&str> {
        Some(self.as_str())
    }
}
impl TextSource for crate::ActorId {
    fn conto_str(&self) -> Option<&str> {
        Some(self.as_str())
    }
}
impl<T: TextSource + ?Sized> TextSource for &T {
    fn conto_str(&self) -> Option<&str> {
        (**self).conto_str()
    }
}
impl<T: TextSource> TextSource for Option<T> {
    fn conto_str(&self) -> Option<&str> {
        self.as_ref().and_then(TextSource::conto_str)
    }

    fn conto_string(self) -> Option<String> {
        self.and_then(TextSource::conto_string)
    }
}

/// Values usable as `conto = ...`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a conto handle",
    label = "expected a `conto::Conto` (or a reference or `Arc` to one)",
    note = "build one with `Conto::new(engine)` or `conto::from_env(..)`; store it in your struct and pass `conto = self.conto`"
)]
pub trait ContoSource {
    /// A clone of the handle.
    fn conto_handle(&self) -> Conto;
}

impl ContoSource for Conto {
    fn conto_handle(&self) -> Conto {
        self.clone()
    }
}
impl<T: ContoSource + ?Sized> ContoSource for &T {
    fn conto_handle(&self) -> Conto {
        (**self).conto_handle()
    }
}
impl<T: ContoSource + ?Sized> ContoSource for Arc<T> {
    fn conto_handle(&self) -> Conto {
        (**self).conto_handle()
    }
}

/// Values usable as `context`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as payment context",
    label = "expected a JSON object (`serde_json::Value` or `serde_json::Map`)"
)]
pub trait ContextSource {
    /// The context object.
    fn conto_context(&self) -> Result<serde_json::Map<String, serde_json::Value>, String>;
}

impl ContextSource for serde_json::Value {
    fn conto_context(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        match self {
            serde_json::Value::Object(m) => Ok(m.clone()),
            other => Err(format!("context must be a JSON object, got {other}")),
        }
    }
}
impl ContextSource for serde_json::Map<String, serde_json::Value> {
    fn conto_context(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        Ok(self.clone())
    }
}
impl<T: ContextSource + ?Sized> ContextSource for &T {
    fn conto_context(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        (**self).conto_context()
    }
}

/// Values usable as the bound of `on_approval = wait(...)`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a wait bound",
    label = "expected a `std::time::Duration` or a number of seconds"
)]
pub trait WaitBound {
    /// The bound.
    fn conto_wait(&self) -> Duration;
}

impl WaitBound for Duration {
    fn conto_wait(&self) -> Duration {
        *self
    }
}
macro_rules! wait_secs {
    ($($t:ty),*) => {$(
        impl WaitBound for $t {
            fn conto_wait(&self) -> Duration {
                Duration::from_secs(u64::try_from(*self).unwrap_or(0))
            }
        }
    )*};
}
wait_secs!(u8, u16, u32, u64, i32, i64, usize);

/// Checks that a function's error type can hold a rejection.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` cannot hold a conto `Rejection`",
    label = "#[paid_action] returns denials through this error type",
    note = "if `{Self}` is your own type, add `impl From<conto::Rejection> for {Self}` (or a `#[from] conto::Rejection` variant with thiserror)",
    note = "a type from another crate (`String`, `std::io::Error`) cannot get that impl in your crate: return `Result<T, conto::Rejection>`, `Box<dyn std::error::Error + Send + Sync>`, `anyhow::Error`, or your own error enum"
)]
pub trait ErrorFromRejection {
    /// Wraps the rejection.
    fn from_rejection(rejection: Rejection) -> Self;
}
impl<E: From<Rejection>> ErrorFromRejection for E {
    fn from_rejection(rejection: Rejection) -> Self {
        E::from(rejection)
    }
}

/// Checks, with `check_send = true`, that a `#[paid_action]` body's future is `Send`.
#[diagnostic::on_unimplemented(
    message = "the body of this #[paid_action] function is not `Send`",
    label = "its future cannot be sent between threads, so it cannot run on a multi-threaded runtime or in `tokio::spawn`",
    note = "a value that is not `Send` (an `Rc`, a `RefCell` borrow, a non-`Send` guard) is held across an `.await`: drop it before awaiting, or use a `Send` alternative (`Arc`, `tokio::sync::Mutex`)"
)]
pub trait SendBody {}
impl<F: Future + Send> SendBody for F {}

/// Returns `body` unchanged, after checking at compile time that it is `Send`.
pub fn send_body<F: SendBody>(body: F) -> F {
    body
}

/// Converts a rejection into the function's error type.
pub fn rejection_into<E: ErrorFromRejection>(rejection: Rejection) -> E {
    E::from_rejection(rejection)
}

/// The settled amount an extractor reports from the `Ok` value; an invalid one is logged and
/// the approved amount is recorded instead.
pub fn settled_amount<T: ?Sized, R: AmountSource>(value: &T, extract: impl FnOnce(&T) -> R) -> Option<Amount> {
    match extract(value).conto_amount() {
        Ok(a) => Some(a),
        Err(error) => {
            tracing::error!(%error, "conto.invalid_settled_amount: recording the approved amount instead");
            None
        }
    }
}

/// Checks, where the user wrote it, that an extractor's value is an amount.
pub fn amount_of<R: AmountSource>(value: R) -> R {
    value
}

/// Checks, where the user wrote it, that an extractor's value is text.
pub fn text_of<R: TextSource>(value: R) -> R {
    value
}

/// The settlement reference an extractor reports from the `Ok` value.
pub fn reference<T: ?Sized, R: TextSource>(value: &T, extract: impl FnOnce(&T) -> R) -> Option<String> {
    extract(value).conto_string()
}

/// Builds a [`Settlement`].
pub fn settlement(amount: Option<Amount>, reference: Option<String>) -> Settlement {
    Settlement { amount, reference }
}

/// The approval mode for `wait(...)`.
pub fn wait(bound: &impl WaitBound) -> ApprovalMode {
    ApprovalMode::Wait(bound.conto_wait())
}

/// The approval mode for `reject`.
pub fn reject() -> ApprovalMode {
    ApprovalMode::Reject
}

/// A rail as a call site wrote it: borrowed, validated only when the call site's memory
/// ([`Memo`]) does not already hold the intent these arguments make.
#[derive(Debug)]
pub struct RailParts<'a> {
    kind: RailKind,
    chain_id: u64,
    /// The rail's required text (`sender`, `resource_url` or `merchant`; none for `request`).
    main: Option<&'a str>,
    fields: &'a [RailField<'a>],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RailKind {
    Transfer,
    X402,
    Mpp,
    Request,
    Card,
}

/// One optional rail argument, in the order written.
#[derive(Debug)]
pub enum RailField<'a> {
    /// A text field, by its `#[paid_action]` name.
    Text(&'static str, Option<&'a str>),
    /// The MPP deposit.
    Deposit(AmountRead),
}

impl<'a> RailField<'a> {
    /// `name = value` for a text field.
    pub fn text(name: &'static str, value: Option<&'a str>) -> Self {
        RailField::Text(name, value)
    }

    /// `deposit = value`.
    pub fn deposit(value: &impl AmountSource) -> Self {
        RailField::Deposit(value.conto_amount())
    }
}

impl<'a> RailParts<'a> {
    fn new(kind: RailKind, chain_id: u64, main: Option<&'a str>) -> Self {
        Self { kind, chain_id, main, fields: &[] }
    }

    /// `rail = transfer(chain_id = .., sender = ..)`.
    pub fn transfer(chain_id: u64, sender: Option<&'a str>) -> Self {
        Self::new(RailKind::Transfer, chain_id, sender)
    }

    /// `rail = x402(resource_url = ..)`.
    pub fn x402(resource_url: Option<&'a str>) -> Self {
        Self::new(RailKind::X402, 0, resource_url)
    }

    /// `rail = mpp(resource_url = ..)`.
    pub fn mpp(resource_url: Option<&'a str>) -> Self {
        Self::new(RailKind::Mpp, 0, resource_url)
    }

    /// `rail = request(..)`: a payment request settled elsewhere.
    pub fn request() -> Self {
        Self::new(RailKind::Request, 0, None)
    }

    /// `rail = card(merchant = ..)`.
    pub fn card(merchant: Option<&'a str>) -> Self {
        Self::new(RailKind::Card, 0, merchant)
    }

    /// The rail's optional arguments.
    pub fn with(self, fields: &'a [RailField<'a>]) -> Self {
        Self { fields, ..self }
    }

    /// Validates the arguments into a rail.
    fn rail(&self) -> Result<Rail, IntentError> {
        let main = |field: &'static str| self.main.ok_or(IntentError::Field { field, reason: "is required".into() });
        let mut rail = match self.kind {
            RailKind::Transfer => Rail::transfer(self.chain_id, main("senderAddress")?)?,
            RailKind::X402 => Rail::x402(main("resourceUrl")?)?,
            RailKind::Mpp => Rail::mpp(main("resourceUrl")?)?,
            RailKind::Request => Rail::request(None),
            RailKind::Card => Rail::card(main("merchantName")?)?,
        };
        for field in self.fields {
            match field {
                RailField::Text(name, value) => set_text(&mut rail, name, value.map(str::to_owned))?,
                RailField::Deposit(value) => match &mut rail {
                    Rail::Mpp { deposit, .. } => *deposit = Some(value.clone().map_err(IntentError::Amount)?),
                    _ => {
                        return Err(IntentError::Field {
                            field: "deposit",
                            reason: "does not belong to this rail".into(),
                        });
                    }
                },
            }
        }
        Ok(rail)
    }

    /// Writes the arguments into a call's fingerprint; `false` when one cannot be (a bad amount).
    fn fingerprint(&self, out: &mut Fingerprint) -> bool {
        out.bytes.push(self.kind as u8);
        out.bytes.extend_from_slice(&self.chain_id.to_le_bytes());
        out.text(self.main);
        self.fields.iter().all(|field| match field {
            RailField::Text(_, value) => {
                out.text(*value);
                true
            }
            RailField::Deposit(value) => out.amount(value),
        })
    }
}

/// Sets a text field of `rail`, by its `#[paid_action]` name.
fn set_text(rail: &mut Rail, field: &'static str, value: Option<String>) -> Result<(), IntentError> {
    match (rail, field) {
        // The service stays the host the URL reaches (what lists and counters check, as on
        // Conto's wire); a `service_domain` given must name that host or a domain above it.
        (Rail::X402 { service_domain, .. } | Rail::Mpp { service_domain, .. }, "service_domain") => {
            if let Some(v) = value
                && !crate::intent::service_domain_covers(&v, service_domain)
            {
                return Err(IntentError::Field {
                    field: "service_domain",
                    reason: format!("`{v}` is not the resource URL's host ({service_domain}) or a domain above it"),
                });
            }
        }
        (Rail::X402 { facilitator, .. }, "facilitator") => *facilitator = value,
        (Rail::X402 { scheme, .. }, "scheme") => *scheme = value,
        (Rail::Mpp { session_id, .. }, "session_id") => *session_id = value,
        (Rail::Mpp { intent, .. }, "intent") => *intent = value,
        (Rail::Mpp { method, .. }, "method") => *method = value,
        (Rail::Card { mcc, .. }, "mcc") => *mcc = value,
        (Rail::Card { card_id, .. }, "card_id") => *card_id = value,
        (Rail::Request { wallet_id }, "wallet_id") => *wallet_id = value,
        (_, field) => {
            return Err(IntentError::Field { field, reason: "does not belong to this rail".into() });
        }
    }
    Ok(())
}

/// An intent as a call site wrote it: what `#[paid_action]` collected from its arguments,
/// borrowed.
#[derive(Debug)]
pub struct IntentParts<'a> {
    /// The amount.
    pub amount: AmountRead,
    /// The rail.
    pub rail: RailParts<'a>,
    /// The actor, when given.
    pub actor: Option<&'a str>,
    /// Whether the call site names an actor: one it names that turns out `None` is missing,
    /// never the handle's default actor.
    pub actor_named: bool,
    /// The recipient, when given.
    pub recipient: Option<&'a str>,
    /// The recipient's name.
    pub recipient_name: Option<&'a str>,
    /// The purpose.
    pub purpose: Option<&'a str>,
    /// The category.
    pub category: Option<&'a str>,
    /// The context.
    pub context: Option<Result<serde_json::Map<String, serde_json::Value>, String>>,
    /// The idempotency key.
    pub idempotency_key: Option<&'a str>,
}

impl<'a> IntentParts<'a> {
    /// Starts from the required parts.
    pub fn new(amount: AmountRead, rail: RailParts<'a>) -> Self {
        Self {
            amount,
            rail,
            actor: None,
            actor_named: false,
            recipient: None,
            recipient_name: None,
            purpose: None,
            category: None,
            context: None,
            idempotency_key: None,
        }
    }

    /// Validates the parts into an intent; the actor falls back to the handle's default actor.
    ///
    /// A call site's memory (`memo`) keeps its last intent and the arguments that made it: the
    /// same arguments again make the same intent with a fresh idempotency key, without
    /// validating anything anew (what was valid for these exact texts still is). When the last
    /// call has let go of its intent (the usual case), that intent is handed out again with
    /// its key renewed in place; while another call still holds it, a copy is made.
    pub fn build(self, conto: &Conto, memo: &'static LocalKey<Memo>) -> Result<Arc<PaymentIntent>, Rejection> {
        // A caller's own key or a context: built each time (rare at a hot call site).
        if self.idempotency_key.is_some() || self.context.is_some() {
            return self.build_fresh(conto);
        }
        let reused = memo.try_with(|memo| {
            let mut memo = memo.0.try_borrow_mut().ok()?;
            let Memory { scratch, fingerprint, intent } = &mut *memo;
            scratch.bytes.clear();
            if !self.fingerprint(conto, scratch) {
                return None;
            }
            if let Some(kept) = intent.as_mut().filter(|_| scratch.bytes == fingerprint.bytes) {
                PaymentIntent::next_attempt(kept);
                return Some(Ok(Arc::clone(kept)));
            }
            let built = self.build_fresh(conto);
            match &built {
                Ok(fresh) => {
                    std::mem::swap(scratch, fingerprint);
                    *intent = Some(Arc::clone(fresh));
                }
                Err(_) => *intent = None,
            }
            Some(built)
        });
        match reused {
            Ok(Some(built)) => built,
            // No memory on this thread (it is being torn down), or a bad amount: built as is.
            _ => self.build_fresh(conto),
        }
    }

    /// The actor: the one the call site names, or the handle's default when it names none.
    fn actor<'s>(&'s self, conto: &'s Conto) -> Option<&'s str> {
        if self.actor_named { self.actor } else { self.actor.or_else(|| conto.default_actor()) }
    }

    /// Writes everything the intent is made of into `out`; `false` when it cannot be.
    fn fingerprint(&self, conto: &Conto, out: &mut Fingerprint) -> bool {
        if !out.amount(&self.amount) || !self.rail.fingerprint(out) {
            return false;
        }
        out.text(self.actor(conto));
        for text in [self.recipient, self.recipient_name, self.purpose, self.category] {
            out.text(text);
        }
        true
    }

    fn build_fresh(&self, conto: &Conto) -> Result<Arc<PaymentIntent>, Rejection> {
        let rail = self.rail.rail().map_err(invalid)?;
        let amount = self.amount.clone().map_err(|e| invalid(IntentError::Amount(e)))?;
        let actor = self.actor(conto).ok_or_else(|| invalid(IntentError::MissingActor))?;
        let mut b = PaymentIntent::builder(actor, amount, rail);
        if let Some(v) = self.recipient {
            b = b.recipient(v);
        }
        if let Some(v) = self.recipient_name {
            b = b.recipient_name(v);
        }
        if let Some(v) = self.purpose {
            b = b.purpose(v);
        }
        if let Some(v) = self.category {
            b = b.category(v);
        }
        if let Some(context) = &self.context {
            for (k, v) in context.clone().map_err(|reason| invalid(IntentError::Field { field: "context", reason }))? {
                b = b.context(k, v);
            }
        }
        if let Some(v) = self.idempotency_key {
            b = b.idempotency_key(v);
        }
        b.build().map(Arc::new).map_err(invalid)
    }
}

/// A call site's memory, one per thread: its last intent and the arguments that made it.
#[derive(Debug)]
pub struct Memo(RefCell<Memory>);

#[derive(Debug)]
struct Memory {
    /// Where a call's arguments are written (kept to save its allocation).
    scratch: Fingerprint,
    /// The arguments `intent` was made from.
    fingerprint: Fingerprint,
    intent: Option<Arc<PaymentIntent>>,
}

impl Memo {
    /// An empty memory.
    pub const fn new() -> Self {
        Memo(RefCell::new(Memory {
            scratch: Fingerprint { bytes: Vec::new() },
            fingerprint: Fingerprint { bytes: Vec::new() },
            intent: None,
        }))
    }
}

impl Default for Memo {
    fn default() -> Self {
        Self::new()
    }
}

/// A call's arguments as bytes: each text length-prefixed (or marked absent), so two calls
/// have the same fingerprint exactly when every argument is the same.
#[derive(Debug)]
struct Fingerprint {
    bytes: Vec<u8>,
}

impl Fingerprint {
    fn text(&mut self, text: Option<&str>) {
        match text {
            Some(t) => {
                self.bytes.push(1);
                self.bytes.extend_from_slice(&t.len().to_le_bytes());
                self.bytes.extend_from_slice(t.as_bytes());
            }
            None => self.bytes.push(0),
        }
    }

    /// The amount's exact value (its scale included); `false` for a bad amount.
    fn amount(&mut self, amount: &AmountRead) -> bool {
        match amount {
            Ok(a) => {
                self.bytes.extend_from_slice(&a.get().serialize());
                true
            }
            Err(_) => false,
        }
    }
}

/// Reads a text argument, borrowed.
pub fn text(value: &impl TextSource) -> Option<&str> {
    value.conto_str()
}

/// Reads a context argument.
pub fn context(value: &impl ContextSource) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    value.conto_context()
}

#[cfg(test)]
mod tests {
    use super::set_text;
    use crate::intent::Rail;

    /// A call site's `service_domain` names the URL's host or a domain above it; the service a
    /// payment is checked as stays the host (another service's name would step around its
    /// list).
    #[test]
    fn a_service_domain_argument_must_name_the_urls_host() {
        for named in ["api.openai.com", "openai.com", "API.OpenAI.com."] {
            let mut rail = Rail::x402("https://api.openai.com/v1").unwrap();
            set_text(&mut rail, "service_domain", Some(named.to_owned())).unwrap();
            assert!(
                matches!(&rail, Rail::X402 { service_domain, .. } if service_domain == "api.openai.com"),
                "{named}"
            );
        }
        for named in ["ok.com", "penai.com", "i.openai.com", "", "com"] {
            let mut rail = Rail::mpp("https://api.openai.com/v1").unwrap();
            assert!(set_text(&mut rail, "service_domain", Some(named.to_owned())).is_err(), "{named}");
        }
    }
}
