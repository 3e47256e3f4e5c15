//! Support for the code `#[paid_action]` expands to. Not a public API: names and signatures may
//! change in any release.

use std::sync::Arc;
use std::time::Duration;

pub use serde_json;
pub use std::sync::OnceLock;

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
/// A literal amount, as read on a call site's first call.
pub type AmountRead = Result<Amount, AmountError>;

/// Reads a literal amount (`#[paid_action(amount = "0.01")]`), once per call site.
pub fn read_amount(literal: &str) -> AmountRead {
    literal.parse()
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
    /// The text, if any.
    fn conto_text(&self) -> Option<String>;
}

impl TextSource for str {
    fn conto_text(&self) -> Option<String> {
        Some(self.to_owned())
    }
}
impl TextSource for String {
    fn conto_text(&self) -> Option<String> {
        Some(self.clone())
    }
}
impl TextSource for crate::Address {
    fn conto_text(&self) -> Option<String> {
        Some(self.as_str().to_owned())
    }
}
impl TextSource for crate::ActorId {
    fn conto_text(&self) -> Option<String> {
        Some(self.as_str().to_owned())
    }
}
impl<T: TextSource + ?Sized> TextSource for &T {
    fn conto_text(&self) -> Option<String> {
        (**self).conto_text()
    }
}
impl<T: TextSource> TextSource for Option<T> {
    fn conto_text(&self) -> Option<String> {
        self.as_ref().and_then(TextSource::conto_text)
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
    extract(value).conto_text()
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

/// A rail under construction.
#[derive(Debug)]
pub struct RailParts(Result<Rail, IntentError>);

fn required(field: &'static str, value: &impl TextSource) -> Result<String, IntentError> {
    value.conto_text().ok_or(IntentError::Field { field, reason: "is required".into() })
}

impl RailParts {
    /// `rail = transfer(chain_id = .., sender = ..)`.
    pub fn transfer(chain_id: u64, sender: &impl TextSource) -> Self {
        Self(required("senderAddress", sender).and_then(|s| Rail::transfer_owned(chain_id, s)))
    }

    /// `rail = x402(resource_url = ..)`.
    pub fn x402(resource_url: &impl TextSource) -> Self {
        Self(required("resourceUrl", resource_url).and_then(|u| Rail::x402(&u)))
    }

    /// `rail = mpp(resource_url = ..)`.
    pub fn mpp(resource_url: &impl TextSource) -> Self {
        Self(required("resourceUrl", resource_url).and_then(|u| Rail::mpp(&u)))
    }

    /// `rail = request(..)`: a payment request settled elsewhere.
    pub fn request() -> Self {
        Self(Ok(Rail::request(None)))
    }

    /// `rail = card(merchant = ..)`.
    pub fn card(merchant: &impl TextSource) -> Self {
        Self(required("merchantName", merchant).and_then(|m| Rail::card(&m)))
    }

    fn set(self, f: impl FnOnce(&mut Rail) -> Result<(), IntentError>) -> Self {
        Self(self.0.and_then(|mut rail| f(&mut rail).map(|()| rail)))
    }

    /// Sets a text field of the rail, by its `#[paid_action]` name.
    pub fn text(self, field: &'static str, value: &impl TextSource) -> Self {
        let value = value.conto_text();
        self.set(|rail| {
            match (rail, field) {
                (Rail::X402 { service_domain, .. } | Rail::Mpp { service_domain, .. }, "service_domain") => {
                    if let Some(v) = value {
                        *service_domain = v.to_ascii_lowercase();
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
        })
    }

    /// Sets the MPP deposit.
    pub fn deposit(self, value: &impl AmountSource) -> Self {
        let value = value.conto_amount();
        self.set(|rail| match rail {
            Rail::Mpp { deposit, .. } => {
                *deposit = Some(value?);
                Ok(())
            }
            _ => Err(IntentError::Field { field: "deposit", reason: "does not belong to this rail".into() }),
        })
    }
}

/// An intent under construction: what `#[paid_action]` collected from its arguments.
#[derive(Debug)]
pub struct IntentParts {
    /// The amount.
    pub amount: Result<Amount, AmountError>,
    /// The rail.
    pub rail: RailParts,
    /// The actor, when given.
    pub actor: Option<String>,
    /// The recipient, when given.
    pub recipient: Option<String>,
    /// The recipient's name.
    pub recipient_name: Option<String>,
    /// The purpose.
    pub purpose: Option<String>,
    /// The category.
    pub category: Option<String>,
    /// The context.
    pub context: Option<Result<serde_json::Map<String, serde_json::Value>, String>>,
    /// The idempotency key.
    pub idempotency_key: Option<String>,
}

impl IntentParts {
    /// Starts from the required parts.
    pub fn new(amount: &impl AmountSource, rail: RailParts) -> Self {
        Self::with_amount(amount.conto_amount(), rail)
    }

    /// Starts from a literal amount as read once for the call site ([`read_amount`]).
    pub fn with_read(amount: &AmountRead, rail: RailParts) -> Self {
        Self::with_amount(amount.clone(), rail)
    }

    fn with_amount(amount: AmountRead, rail: RailParts) -> Self {
        Self {
            amount,
            rail,
            actor: None,
            recipient: None,
            recipient_name: None,
            purpose: None,
            category: None,
            context: None,
            idempotency_key: None,
        }
    }

    /// Validates the parts into an intent; the actor falls back to the handle's default actor.
    pub fn build(self, conto: &Conto) -> Result<PaymentIntent, Rejection> {
        let rail = self.rail.0.map_err(invalid)?;
        let amount = self.amount.map_err(|e| invalid(IntentError::Amount(e)))?;
        let actor = self
            .actor
            .or_else(|| conto.default_actor().map(str::to_owned))
            .ok_or_else(|| invalid(IntentError::MissingActor))?;
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
        if let Some(context) = self.context {
            for (k, v) in context.map_err(|reason| invalid(IntentError::Field { field: "context", reason }))? {
                b = b.context(k, v);
            }
        }
        if let Some(v) = self.idempotency_key {
            b = b.idempotency_key(v);
        }
        b.build().map_err(invalid)
    }
}

/// Reads an optional text argument.
pub fn text(value: &impl TextSource) -> Option<String> {
    value.conto_text()
}

/// Reads a context argument.
pub fn context(value: &impl ContextSource) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    value.conto_context()
}
