//! The agent-facing `/api/sdk/*` bodies: a payment as the authorize and record calls describe
//! it, the decision, the record's answer, and the reads (approval requests, services, budget).

use conto_core::{
    Amount, Authorization, Decimal, FUNCTION_SELECTOR, IntentError, Limits, PaymentIntent, Rail, Settlement,
    TARGET_CONTRACT, Violation,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::Kind;

/// The chain a transfer is on when its body names none: Tempo Testnet, Conto's default
/// (conto-api.md §4.1).
pub const DEFAULT_CHAIN_ID: u64 = 42431;

/// A payment as Conto's SDK bodies describe it: the authorize calls (`payments/approve`,
/// `payments/request`, `x402|mpp/pre-authorize`, `cards/approve`) and the record calls
/// (`payments/{id}/confirm`, `x402|mpp/record`, `cards/{id}/confirm`) share these field names;
/// each call sends the ones its rail uses.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentBody {
    /// The amount (authorize: asked; record: settled). Read with more than six decimal places,
    /// it is rounded up to six ([`Amount::rounded_up`]).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "Amount::deserialize_rounded_up")]
    pub amount: Option<Amount>,
    /// The recipient's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_address: Option<String>,
    /// The recipient's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_name: Option<String>,
    /// Why the payment is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The spend category (`API_PROVIDER`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Free metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
    /// One key per payment attempt: a repeat gets the first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Transfer: the app's paying wallet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_address: Option<String>,
    /// Transfer: the chain (a number); MPP record: the paying wallet's chain (a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<ChainId>,
    /// x402/MPP: the paid resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_url: Option<String>,
    /// x402/MPP: the service's domain (derived from `resourceUrl` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_domain: Option<String>,
    /// x402: the facilitator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facilitator: Option<String>,
    /// x402: the scheme (`exact`); MPP records: `mpp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// MPP: the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// MPP: the intent (`session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// MPP: the session deposit (rounded up as `amount` is).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "Amount::deserialize_rounded_up")]
    pub deposit_amount: Option<Amount>,
    /// MPP: the payment method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Card: the merchant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_name: Option<String>,
    /// Card: the merchant category code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_category: Option<String>,
    /// Card: the card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_id: Option<String>,
    /// Payment request: the wallet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    /// The contract the payment calls (`CONTRACT_ALLOWLIST`); kept in the intent's `context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_contract_address: Option<String>,
    /// The contract function called, a 4-byte selector (`0xa9059cbb`); kept in the intent's
    /// `context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_selector: Option<String>,
    /// Payment request: how urgent, `LOW`, `NORMAL`, `HIGH` or `CRITICAL` (checked; not used
    /// in the decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
    /// Payment request: execute at once when approved (`false` for a pure policy check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_execute: Option<bool>,
    /// Record: the settlement's transaction hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
    /// Record: the same hash under its older name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_hash: Option<String>,
    /// Card confirm: the processor's reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_reference: Option<String>,
    /// x402 record: the payment's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// x402 record: the paid resource's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u16>,
    /// x402/MPP record: the pre-authorization it settles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
    /// Transfer/card confirm: the approval's token (a secret; sent only to confirm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<String>,
    /// Card confirm: `COMPLETED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// x402 record: a batch of payments (how Conto's skill records), instead of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payments: Option<Vec<PaymentBody>>,
}

/// A `chainId` as it travels: a number (a transfer's approve), or the string of its digits
/// (an MPP record's `"4217"`, as Conto writes chains). Either form reads; any other is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainId {
    /// Sent as a JSON number.
    Number(u64),
    /// Sent as a JSON string of its digits.
    Text(u64),
}

impl ChainId {
    /// The chain's number, however it was sent.
    pub fn get(self) -> u64 {
        match self {
            ChainId::Number(n) | ChainId::Text(n) => n,
        }
    }
}

impl Serialize for ChainId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            ChainId::Number(n) => s.serialize_u64(n),
            ChainId::Text(n) => s.collect_str(&n),
        }
    }
}

impl<'de> Deserialize<'de> for ChainId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sent = Value::deserialize(d)?;
        let chain = match &sent {
            Value::Number(n) => n.as_u64().map(ChainId::Number),
            Value::String(s) => s.parse().ok().map(ChainId::Text),
            _ => None,
        };
        chain.filter(|c| c.get() > 0).ok_or_else(|| {
            serde::de::Error::custom(format!("{sent} is not a chain id (a whole number from 1, such as 8453)"))
        })
    }
}

/// A field that reads as `None` when it does not have the expected shape.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.and_then(|v| T::deserialize(v).ok()))
}

/// A list that may be sent as `null`.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Why a body does not describe a valid payment; `code` is Conto's error code for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// `VALIDATION_ERROR`, `INVALID_AMOUNT` or `INVALID_ADDRESS`.
    pub code: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    fn required(field: &str) -> Self {
        Self { code: "VALIDATION_ERROR", message: format!("`{field}` is required") }
    }
}

impl From<IntentError> for BodyError {
    fn from(e: IntentError) -> Self {
        let code = match e {
            IntentError::Amount(_) => "INVALID_AMOUNT",
            IntentError::Address(_) => "INVALID_ADDRESS",
            _ => "VALIDATION_ERROR",
        };
        Self { code, message: e.to_string() }
    }
}

/// Reads a request body as `T`: a JSON object whose fields have their types. An error names
/// the field, with Conto's code for it: `INVALID_AMOUNT` for an amount field (`amount`,
/// `depositAmount`, …) that is not a positive number of at most six decimals once rounded up,
/// `VALIDATION_ERROR` for anything else.
pub fn read_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    // A well-formed object is read straight from its bytes (an array would read as a struct's
    // fields in order: not a body); any other is read again through a `Value`, for the error
    // that names the field (and for a repeated key, where the last one stands).
    if bytes.trim_ascii_start().first() == Some(&b'{')
        && let Ok(body) = serde_json::from_slice::<T>(bytes)
    {
        return Ok(body);
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| BodyError { code: "VALIDATION_ERROR", message: format!("the body is not JSON: {e}") })?;
    if !value.is_object() {
        return Err(BodyError { code: "VALIDATION_ERROR", message: "the body must be a JSON object".into() });
    }
    read_value(value)
}

/// [`read_body`] for an already parsed value.
pub fn read_value<T: DeserializeOwned>(value: Value) -> Result<T, BodyError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        // Name the field: `amount: ...`, `payments[1].amount: ...`.
        let path = e.path().to_string();
        let code =
            if path.ends_with("amount") || path.ends_with("Amount") { "INVALID_AMOUNT" } else { "VALIDATION_ERROR" };
        BodyError { code, message: format!("`{path}`: {}", e.inner()) }
    })
}

/// `Some(text)` unless empty: Conto's helpers send `""` or `null` for "not given".
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned)
}

impl PaymentBody {
    /// Reads a request body: a JSON object whose fields have their types (`INVALID_AMOUNT` for
    /// an amount that is not a positive number of at most six decimals, `VALIDATION_ERROR` for
    /// anything else).
    pub fn from_json(bytes: &[u8]) -> Result<Self, BodyError> {
        read_body(bytes).and_then(Self::consistent)
    }

    /// [`PaymentBody::from_json`] for an already parsed value (one payment of a batch).
    pub fn from_value(value: Value) -> Result<Self, BodyError> {
        read_value(value).and_then(Self::consistent)
    }

    /// The body with its settlement named once, in one spelling: `txHash` (Conto's current
    /// name) and `transactionHash` (its older one) must agree when both are sent, and become
    /// `txHash`; an EVM hash is lower-cased (hex: its case does not make it another
    /// transaction). So a repeat is recognised however it names its transaction. In the body
    /// and in each payment of a batch.
    fn consistent(mut self) -> Result<Self, BodyError> {
        fn one(p: &mut PaymentBody) -> Result<(), BodyError> {
            // Surrounding white space is no part of a name (kept, `"0xab…\n"` would be another
            // transaction than `"0xab…"`). A name is printable ASCII, at most 256 characters:
            // anything else inside (white space, an invisible or full-width character) would
            // name the same transaction another way, and count it twice.
            let canonical = |t: &str, field: &str| {
                if t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(BodyError {
                        code: "VALIDATION_ERROR",
                        message: format!(
                            "`{field}` is not a transaction: at most 256 printable ASCII characters, without spaces"
                        ),
                    });
                }
                // Printable ASCII: every byte is a character, so slicing by bytes is safe.
                let (prefix, digits) = t.as_bytes().split_at(t.len().min(2));
                let evm = !digits.is_empty()
                    && prefix.eq_ignore_ascii_case(b"0x")
                    && digits.iter().all(u8::is_ascii_hexdigit);
                Ok(if evm { t.to_ascii_lowercase() } else { t.to_owned() })
            };
            let named = |v: &Option<String>, field| {
                v.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(|t| canonical(t, field)).transpose()
            };
            let (tx, old) = (named(&p.tx_hash, "txHash")?, named(&p.transaction_hash, "transactionHash")?);
            if let (Some(a), Some(b)) = (&tx, &old)
                && a != b
            {
                return Err(BodyError {
                    code: "VALIDATION_ERROR",
                    message: format!("`txHash` ({a}) and `transactionHash` ({b}) name different transactions"),
                });
            }
            p.tx_hash = tx.or(old);
            p.transaction_hash = None;
            Ok(())
        }
        one(&mut self)?;
        for (i, payment) in self.payments.iter_mut().flatten().enumerate() {
            one(payment).map_err(|e| BodyError { message: format!("payments[{i}]: {}", e.message), ..e })?;
        }
        Ok(self)
    }

    /// The authorize call for `intent`: its flow (which names the endpoint) and its body.
    pub fn from_intent(intent: &PaymentIntent) -> (Kind, Self) {
        let mut body = PaymentBody {
            amount: Some(intent.amount),
            recipient_address: intent.recipient.as_ref().map(|r| r.as_str().to_owned()),
            recipient_name: intent.recipient_name.clone(),
            purpose: intent.purpose.clone(),
            category: intent.category.clone(),
            context: (!intent.context.is_empty()).then(|| intent.context.clone()),
            idempotency_key: Some(intent.idempotency_key.as_str().to_owned()),
            ..Default::default()
        };
        // Conto reads the contract call from its own fields, not from `context`.
        if let Some(context) = &mut body.context {
            let mut lift = |key: &str| match context.remove(key) {
                Some(Value::String(s)) => Some(s),
                Some(other) => {
                    context.insert(key.to_owned(), other);
                    None
                }
                None => None,
            };
            body.target_contract_address = lift(TARGET_CONTRACT);
            body.function_selector = lift(FUNCTION_SELECTOR);
            if context.is_empty() {
                body.context = None;
            }
        }
        match &intent.rail {
            Rail::Transfer { chain_id, sender } => {
                body.sender_address = Some(sender.as_str().to_owned());
                body.chain_id = Some(ChainId::Number(*chain_id));
            }
            Rail::X402 { resource_url, service_domain, facilitator, scheme } => {
                body.resource_url = Some(resource_url.clone());
                body.service_domain = Some(service_domain.clone());
                body.facilitator = facilitator.clone();
                body.scheme = scheme.clone();
            }
            Rail::Mpp { resource_url, service_domain, session_id, intent: mpp_intent, deposit, method } => {
                body.resource_url = Some(resource_url.clone());
                body.service_domain = Some(service_domain.clone());
                body.intent = Some(mpp_intent.clone().unwrap_or_else(|| "session".to_owned()));
                body.session_id = session_id.clone();
                body.deposit_amount = *deposit;
                body.method = method.clone();
            }
            Rail::Card { card_id, merchant, mcc } => {
                body.merchant_name = Some(merchant.clone());
                body.merchant_category = mcc.clone();
                body.card_id = card_id.clone();
            }
            Rail::Request { wallet_id } => {
                // A policy check only: the app settles elsewhere, so Conto must never execute it.
                body.auto_execute = Some(false);
                body.wallet_id = wallet_id.clone();
            }
        }
        (Kind::of(&intent.rail), body)
    }

    /// The record call for a settled authorization: its endpoint (relative to `/api/sdk/`) and
    /// body; `Ok(None)` for a payment request, which Conto has no record step for. `token` is
    /// the approval token, which transfer and card confirms present.
    pub fn record(
        authorization: &Authorization,
        settlement: &Settlement,
        token: Option<&str>,
    ) -> Result<Option<(String, Self)>, RecordError> {
        let intent = &authorization.intent;
        let kind = Kind::of(&intent.rail);
        let Some(path) = kind.record_path(&authorization.id) else { return Ok(None) };
        let mut body = PaymentBody {
            amount: Some(settlement.amount.unwrap_or(authorization.amount)),
            idempotency_key: Some(format!("rec_{}", authorization.id)),
            ..Default::default()
        };
        let recipient = intent.recipient.as_ref().map(|r| r.as_str().to_owned());
        match &intent.rail {
            Rail::Request { .. } => return Ok(None),
            Rail::Transfer { .. } => {
                body.tx_hash = Some(settlement.reference.clone().ok_or(RecordError::MissingReference)?);
                body.approval_token = Some(token.ok_or(RecordError::MissingToken)?.to_owned());
            }
            Rail::X402 { resource_url, facilitator, .. } => {
                body.recipient_address = recipient;
                body.resource_url = Some(resource_url.clone());
                body.tx_hash = settlement.reference.clone();
                body.transaction_hash = settlement.reference.clone();
                body.payment_id = Some(intent.idempotency_key.as_str().to_owned());
                body.facilitator = facilitator.clone();
                body.response_code = Some(200);
                body.authorization_id = Some(authorization.id.clone());
            }
            Rail::Mpp { resource_url, session_id, .. } => {
                body.recipient_address = recipient;
                body.resource_url = Some(resource_url.clone());
                body.tx_hash = settlement.reference.clone();
                body.transaction_hash = settlement.reference.clone();
                body.session_id = session_id.clone();
                body.scheme = Some("mpp".to_owned());
                // The wallet the pre-authorization named, and its chain as Conto writes it (a
                // string of digits; a chain named otherwise, which Conto's MPP chains never are,
                // is left out rather than sent in a form Conto does not document).
                if let Some(wallet) = &authorization.wallet {
                    body.wallet_id = Some(wallet.id.clone());
                    body.chain_id = wallet.chain_id.as_deref().and_then(|c| c.parse().ok()).map(ChainId::Text);
                }
                body.authorization_id = Some(authorization.id.clone());
            }
            Rail::Card { .. } => {
                body.transaction_reference = settlement.reference.clone();
                body.status = Some("COMPLETED".to_owned());
                body.approval_token = token.map(str::to_owned);
            }
        }
        Ok(Some((path, body)))
    }

    /// The payment this body describes, paid by `agent` on `kind`'s rail (what a server reads
    /// from an authorize call, or from a record that names no authorization).
    pub fn to_intent(&self, agent: &str, kind: Kind) -> Result<PaymentIntent, BodyError> {
        let amount = self.amount.ok_or_else(|| BodyError::required("amount"))?;
        let need = |v: &Option<String>, field: &str| given(v).ok_or_else(|| BodyError::required(field));
        let rail = match kind {
            Kind::Transfer => {
                // Conto's default chain when none is sent (conto-api.md §4.1; its skill lists
                // `chainId` as optional, "Send 42431 for Tempo Testnet (default)").
                let chain = self.chain_id.map_or(DEFAULT_CHAIN_ID, ChainId::get);
                Rail::transfer(chain, &need(&self.sender_address, "senderAddress")?).map_err(|e| {
                    let mut e = BodyError::from(e);
                    e.message = format!("`senderAddress`: {}", e.message);
                    e
                })?
            }
            Kind::X402 | Kind::Mpp => {
                // Canonical, so one endpoint is one however it is spelled (its limits, and a
                // record matched to its pre-authorization).
                // The service is the host the payment reaches, whatever `serviceDomain` says:
                // a domain sent along must be that host or a domain above it (Conto derives
                // it from `resourceUrl`), never another service's name.
                let (url, domain) = conto_core::canonical_resource(&need(&self.resource_url, "resourceUrl")?)?;
                if let Some(named) = given(&self.service_domain)
                    && !conto_core::service_domain_covers(&named, &domain)
                {
                    return Err(BodyError {
                        code: "VALIDATION_ERROR",
                        message: format!(
                            "`serviceDomain`: `{named}` is not `resourceUrl`'s host ({domain}) or a domain above it"
                        ),
                    });
                }
                if kind == Kind::X402 {
                    Rail::X402 {
                        resource_url: url,
                        service_domain: domain,
                        facilitator: given(&self.facilitator),
                        scheme: given(&self.scheme),
                    }
                } else {
                    Rail::Mpp {
                        resource_url: url,
                        service_domain: domain,
                        session_id: given(&self.session_id),
                        intent: given(&self.intent),
                        deposit: self.deposit_amount,
                        method: given(&self.method),
                    }
                }
            }
            Kind::Card => Rail::Card {
                card_id: given(&self.card_id),
                merchant: need(&self.merchant_name, "merchantName")?,
                mcc: given(&self.merchant_category),
            },
            Kind::Request => Rail::Request { wallet_id: given(&self.wallet_id) },
        };
        let recipient = given(&self.recipient_address);
        if recipient.is_none() && rail.needs_recipient() {
            // Missing, as a missing amount is: the field named, `VALIDATION_ERROR` (a
            // malformed address is `INVALID_ADDRESS`).
            return Err(BodyError::required("recipientAddress"));
        }
        let mut b = PaymentIntent::builder(agent, amount, rail);
        if let Some(r) = recipient {
            b = b.recipient(r);
        }
        if let Some(v) = given(&self.recipient_name) {
            b = b.recipient_name(v);
        }
        if let Some(v) = given(&self.purpose) {
            b = b.purpose(v);
        }
        if let Some(v) = given(&self.category) {
            b = b.category(v);
        }
        for (k, v) in self.context.iter().flatten() {
            b = b.context(k.clone(), v.clone());
        }
        if let Some(contract) = given(&self.target_contract_address) {
            let contract = conto_core::Address::parse(&contract)
                .map_err(|e| BodyError { code: "INVALID_ADDRESS", message: format!("`targetContractAddress`: {e}") })?;
            b = b.context(TARGET_CONTRACT, contract.as_str());
        }
        if let Some(urgency) = given(&self.urgency)
            && !["LOW", "NORMAL", "HIGH", "CRITICAL"].iter().any(|u| u.eq_ignore_ascii_case(&urgency))
        {
            return Err(BodyError {
                code: "VALIDATION_ERROR",
                message: format!("`urgency` must be LOW, NORMAL, HIGH or CRITICAL, got `{urgency}`"),
            });
        }
        if let Some(selector) = given(&self.function_selector) {
            let valid = selector.len() == 10
                && selector.starts_with("0x")
                && selector[2..].bytes().all(|c| c.is_ascii_hexdigit());
            if !valid {
                return Err(BodyError {
                    code: "VALIDATION_ERROR",
                    message: format!(
                        "`functionSelector` must be a 4-byte selector, 0x + 8 hex digits, got `{selector}`"
                    ),
                });
            }
            b = b.context(FUNCTION_SELECTOR, selector.to_ascii_lowercase());
        }
        if let Some(k) = given(&self.idempotency_key) {
            b = b.idempotency_key(k);
        }
        b.build().map_err(|e| {
            // The sender was read above: an address refused here is the recipient's.
            let named = matches!(e, IntentError::Address(_));
            let mut e = BodyError::from(e);
            if named {
                e.message = format!("`recipientAddress`: {}", e.message);
            }
            e
        })
    }

    /// The settlement's reference: `txHash`, or its older name `transactionHash`.
    pub fn reference(&self) -> Option<String> {
        given(&self.tx_hash).or_else(|| given(&self.transaction_hash))
    }
}

/// Why a settlement cannot be recorded as Conto's wire needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A transfer's confirm needs the settlement reference (the tx hash).
    MissingReference,
    /// A transfer's confirm needs the approval token.
    MissingToken,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordError::MissingReference => "confirming a transfer needs the settlement reference (the tx hash)",
            RecordError::MissingToken => "the approval carries no approval token",
        })
    }
}

impl std::error::Error for RecordError {}

/// A decision, for every flow: `approved` (transfer), `authorized` (x402/MPP) or `status`
/// (card, payment request) says which way it went; the other fields are what that flow sends.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionBody {
    /// Transfer: approved or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<bool>,
    /// x402/MPP: authorized or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized: Option<bool>,
    /// Card, payment request: `APPROVED`, `DENIED`, `REQUIRES_APPROVAL` (and, for payment
    /// requests, the spellings Conto's clients normalise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Transfer: the approval's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Transfer, card: the approval token (a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<String>,
    /// x402/MPP: the pre-authorization's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
    /// Card, payment request: the request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When the approval lapses (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Transfer: where to confirm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_url: Option<String>,
    /// The approved amount, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// The recipient, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_address: Option<String>,
    /// The recipient, echoed under its short name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Why (always present on denials; `null` reads as none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub reasons: Vec<String>,
    /// The broken rules of a denial (`null` reads as none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub violations: Vec<Violation>,
    /// Spend counters after an approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// x402/MPP approved: the wallet the payment is made from. Read leniently: a wallet of
    /// another shape reads as none and never costs the decision it came with.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub wallet: Option<PayingWallet>,
    /// A human must approve first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_human_approval: Option<bool>,
    /// The pending human approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_request_id: Option<String>,
    /// Payment request with `autoExecute: true`: why the approved payment was not executed
    /// (the caller then settles it, or calls `execute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_execute_error: Option<String>,
    /// Payment request with `autoExecute: true`, executed from a Conto-managed wallet: the
    /// transfer made. Read leniently: another shape reads as none.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub execution: Option<Execution>,
    /// The decision in words (the first reason of a denial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl DecisionBody {
    /// Whether the body is a decision at all (and not, say, an error body).
    pub fn is_decision(&self) -> bool {
        self.approved.is_some() || self.authorized.is_some() || self.status.is_some() || self.request_id.is_some()
    }

    /// A human must approve first: `requiresHumanApproval: true` or `status: REQUIRES_APPROVAL`.
    pub fn wants_human(&self) -> bool {
        self.requires_human_approval == Some(true) || self.status.as_deref() == Some("REQUIRES_APPROVAL")
    }
}

/// A payment executed from a Conto-managed wallet (a payment request's `execution`, with
/// `autoExecute: true`; the answer of `POST /api/sdk/payments/{requestId}/execute`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// The transaction's id.
    #[serde(default)]
    pub transaction_id: String,
    /// The on-chain transaction hash.
    #[serde(default)]
    pub tx_hash: String,
    /// The block explorer's page for it, when the chain is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explorer_url: Option<String>,
    /// Its status (`CONFIRMING` once sent).
    #[serde(default)]
    pub status: String,
    /// `true` when no money moved: conto-local's managed wallets are simulated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<bool>,
}

/// The wallet an x402/MPP pre-authorization names (`wallet` on an approved answer; an MPP
/// record sends its `id` back as `walletId`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayingWallet {
    /// The wallet's id.
    #[serde(default)]
    pub id: String,
    /// Its address, when known.
    pub address: Option<String>,
    /// Its chain (Conto sends it as a string, `"4217"` for MPP; a number reads too).
    pub chain_id: Option<Value>,
    /// Who holds its keys (`EXTERNAL`: the app's own wallet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custody_type: Option<String>,
    /// What it holds, when the control plane knows.
    pub available_balance: Option<Value>,
}

impl PayingWallet {
    /// The wallet as an authorization keeps it: its id, and its chain as text (a number's
    /// digits when it was sent as a number).
    pub fn named(&self) -> conto_core::Wallet {
        let chain = self.chain_id.as_ref().and_then(|c| match c {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        conto_core::Wallet::new(self.id.clone(), chain)
    }
}

/// The answer to a record call (`confirm`, `x402|mpp/record`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedBody {
    /// Transfer, card confirm: confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    /// x402/MPP record: how many payments were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<u64>,
    /// A generic success flag some deployments send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// Conto's transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// `CONFIRMING`, `COMPLETED`, `RECORDED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The recorded amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// The currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The transaction hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
    /// The block explorer's page for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explorer_url: Option<String>,
    /// The recorded payment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The pre-authorization it settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
    /// Recorded after the approval had expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<bool>,
    /// Each payment of a batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payments: Vec<RecordedBody>,
    /// An error the answer reports (a record it did not take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl RecordedBody {
    /// Whether a successful (2xx) answer confirms the record: it does unless it says otherwise
    /// (`confirmed: false`, `success: false`, `recorded: 0`, a failed `status`, an `error`).
    /// Conto does not document every record answer's shape, and the status already says the
    /// record was taken; reading an unfamiliar 2xx body as a failure would report a settled
    /// payment as unrecorded.
    pub fn confirms(&self) -> bool {
        let failed = |s: &String| {
            ["FAILED", "FAILURE", "ERROR", "REJECTED", "DENIED", "DECLINED"].iter().any(|f| s.eq_ignore_ascii_case(f))
        };
        self.confirmed != Some(false)
            && self.success != Some(false)
            && self.recorded != Some(0)
            && !self.status.as_ref().is_some_and(failed)
            && self.error.as_ref().is_none_or(Value::is_null)
    }
}

/// One entry of `GET /api/sdk/approval-requests`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    /// The request's id (empty when the entry names none: such an entry is still listed).
    #[serde(default)]
    pub approval_request_id: String,
    /// `payment`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `PENDING`, `APPROVED`, `REJECTED`, `EXPIRED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When it lapses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The amount asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// The recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_address: Option<String>,
    /// Once approved: the approval to settle under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The same id, as x402/MPP name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
    /// The same id, as cards name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Once approved: the approval token (a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<String>,
    /// The payment request that waits on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_request_id: Option<String>,
    /// Once approved: the approval's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_expires_at: Option<String>,
    /// Once rejected: why (a human's rejection, or the re-check after a human's approval).
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_empty")]
    pub reasons: Vec<String>,
}

/// `GET /api/sdk/approval-requests`: `{requests}` (some deployments wrap it in `data`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequests {
    /// The requests.
    #[serde(default)]
    pub requests: Vec<ApprovalRequest>,
    /// The wrapped form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<ApprovalRequests>>,
}

impl ApprovalRequests {
    /// Every request, wrapped or not.
    pub fn all(&self) -> impl Iterator<Item = &ApprovalRequest> {
        self.requests.iter().chain(self.data.iter().flat_map(|d| d.requests.iter()))
    }
}

/// A human's answer to an approval request (org `approve`/`reject`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalAnswer {
    /// The request.
    pub approval_request_id: String,
    /// `APPROVED` or `REJECTED`.
    pub status: String,
    /// Why it was rejected: by the human, or by the re-check after the human approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// A decimal read from a JSON number (or a string holding one).
fn decimal_read<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    crate::opt_number::deserialize(d)?.ok_or_else(|| serde::de::Error::custom("expected a number, got null"))
}

fn decimal_number<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    // As a JSON number, exactly (serde_json's arbitrary precision is not needed for six places).
    let n: serde_json::Number = d.normalize().to_string().parse().map_err(serde::ser::Error::custom)?;
    n.serialize(s)
}

/// One service of `GET /api/sdk/x402/services`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpend {
    /// The service.
    pub service_domain: String,
    /// Spent on it.
    #[serde(serialize_with = "decimal_number")]
    pub total_spent: Decimal,
    /// Payments made.
    pub payment_count: u64,
    /// The last payment's time.
    pub last_payment_at: String,
}

/// `GET /api/sdk/x402/services`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Services {
    /// The services paid.
    pub services: Vec<ServiceSpend>,
}

/// `GET /api/sdk/transactions`: the agent's recorded payments, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Transactions {
    /// The payments.
    pub transactions: Vec<Transaction>,
}

/// One recorded payment of [`Transactions`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    /// The transaction's id.
    pub id: String,
    /// The approval (or pre-authorization) it settled.
    pub authorization_id: String,
    /// What was spent.
    #[serde(serialize_with = "decimal_number")]
    pub amount: Decimal,
    /// `COMPLETED`: recorded.
    pub status: String,
    /// How it was paid: `transfer`, `x402`, `mpp`, `card` or `request`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The recipient.
    pub recipient_address: Option<String>,
    /// The settlement's reference (a transaction hash, a card transaction id).
    pub tx_hash: Option<String>,
    /// When it was recorded.
    pub created_at: String,
}

/// `GET /api/sdk/service-spend/summary`: machine spend (x402 and MPP) over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendSummary {
    /// The filters the summary was computed under.
    pub filters: SummaryFilters,
    /// The totals.
    pub summary: SummaryTotals,
    /// The services paid, most spent first, at most `limit`.
    pub services: Vec<SummaryService>,
    /// Spend alerts raised (price spikes, bursts, new services, ...).
    pub alerts: Vec<serde_json::Value>,
}

/// The filters of a [`SpendSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryFilters {
    /// `24h`, `7d`, `30d` or `all`.
    pub period: String,
    /// `all`, `x402` or `mpp`.
    pub protocol: String,
    /// The organization.
    pub organization_id: String,
    /// The agent the key belongs to.
    pub agent_id: String,
    /// Where the period starts (RFC 3339); `null` for `all`.
    pub start_date: Option<String>,
}

/// The totals of a [`SpendSummary`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryTotals {
    /// Spent on both protocols (as filtered).
    #[serde(serialize_with = "decimal_number")]
    pub total_spend: Decimal,
    /// Payments made.
    pub total_calls: u64,
    /// Distinct services paid.
    pub active_services: u64,
    /// Agents that paid (the key's agent: 1, or 0 with no payment).
    pub active_agents: u64,
    /// Alerts raised.
    pub active_alerts: u64,
    /// Machine payments (every x402 and MPP payment).
    pub micropayment_transactions: u64,
    /// Spent over x402.
    #[serde(serialize_with = "decimal_number")]
    pub x402_spend: Decimal,
    /// Payments over x402.
    pub x402_calls: u64,
    /// Spent over MPP.
    #[serde(serialize_with = "decimal_number")]
    pub mpp_spend: Decimal,
    /// Payments over MPP.
    pub mpp_calls: u64,
}

/// One service of a [`SpendSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryService {
    /// The service.
    pub service_domain: String,
    /// `x402` or `mpp`.
    pub protocol: String,
    /// Spent on it.
    #[serde(serialize_with = "decimal_number")]
    pub total_spend: Decimal,
    /// Payments made.
    pub calls: u64,
    /// The last payment's time.
    pub last_payment_at: String,
}

/// One spend counter of `GET /api/sdk/{x402,mpp}/budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counter {
    /// The period.
    pub period: String,
    /// The scope it counts.
    pub scope: String,
    /// The time zone of its boundaries.
    pub time_zone: String,
    /// The period's start.
    pub since: String,
    /// Spent in it (a JSON number, as every amount Conto answers).
    #[serde(serialize_with = "decimal_number", deserialize_with = "decimal_read")]
    pub spent: Decimal,
    /// Reserved by live approvals.
    #[serde(serialize_with = "decimal_number", deserialize_with = "decimal_read")]
    pub reserved: Decimal,
    /// The least limit the policies now set on it (absent: none counts it now).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub limit: Option<Decimal>,
    /// What is left of it: the limit less spent and reserved, never below 0 (absent with
    /// `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub remaining: Option<Decimal>,
}

/// `GET /api/sdk/{x402,mpp}/budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// The agent.
    pub agent_id: String,
    /// Its counters.
    pub counters: Vec<Counter>,
    /// Spent in all.
    #[serde(serialize_with = "decimal_number", deserialize_with = "decimal_read")]
    pub total_spent: Decimal,
    /// What is left on this rail: the least `remaining` of its counters (absent when no limit
    /// counts its payments).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub remaining: Option<Decimal>,
    /// Spent on this rail in the last 24 hours.
    #[serde(default, with = "crate::opt_number")]
    pub spent_last_24h: Option<Decimal>,
    /// The burn rate: that spend per hour.
    #[serde(default, with = "crate::opt_number")]
    pub burn_rate_per_hour: Option<Decimal>,
}

/// The body of `POST /api/sdk/budget-request`: `amount` and `purpose` (required, checked by
/// the server), `category` and `metadata`. Read with [`read_body`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetRequestBody {
    /// The amount asked for (rounded up to six decimal places, as a payment's).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "Amount::deserialize_rounded_up")]
    pub amount: Option<Amount>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The spend category it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The agent's own metadata, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// A budget request (`POST /api/sdk/budget-request`): an agent asks a human for an allowance.
/// Once approved it is a further gate on the agent's payments for its window: a payment must
/// fit both the agent's policies and what is left of the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetRequest {
    /// The request's id.
    pub id: String,
    /// The agent that asked.
    pub agent_id: String,
    /// The amount asked for.
    pub amount: Amount,
    /// Why.
    pub purpose: String,
    /// The spend category it is for, if one was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The agent's own metadata, kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// `PENDING` (a human has not answered; lapses after 24 hours), `APPROVED` (within its
    /// window), `REJECTED`, `EXPIRED` (unanswered, or past its window) or `EXHAUSTED` (spent in
    /// full: `currentSpend >= approvedAmount`).
    pub status: String,
    /// The amount a human approved (the asked amount unless they chose another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_amount: Option<Amount>,
    /// Spent under the budget since it was approved (recorded payments; `null` until approved).
    #[serde(default, with = "crate::opt_number")]
    pub current_spend: Option<Decimal>,
    /// What is left of the approved amount (`null` until approved).
    #[serde(default, with = "crate::opt_number")]
    pub remaining: Option<Decimal>,
    /// When the agent asked.
    pub created_at: String,
    /// When it lapses: unanswered, 24 hours after it was made; approved, at its window's end.
    pub expires_at: String,
    /// When a human approved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
    /// When a human answered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<String>,
    /// Why it was rejected, when the human said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
}

/// The budget requests a read lists, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetRequests {
    /// The requests.
    pub budget_requests: Vec<BudgetRequest>,
}

/// `GET /api/sdk/setup`: what the calling agent is set up with, to check before it pays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Setup {
    /// The agent (id, name, status).
    pub agent: crate::org::Agent,
    /// The calling key's type: `standard` or `admin`.
    pub key_type: String,
    /// The calling key's scopes.
    pub scopes: Vec<String>,
    /// The wallets delegated to the agent.
    pub wallets: Vec<crate::org::AgentWallet>,
    /// The policies that apply to the agent.
    pub policies: Vec<crate::org::Policy>,
    /// Whether the agent can pay: active, with at least one wallet.
    pub ready: bool,
    /// What stands in the way when it cannot, one sentence each.
    pub issues: Vec<String>,
}

impl std::fmt::Debug for PaymentBody {
    /// As its JSON, with the approval token redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::redacted_debug(f, "PaymentBody", self, "approvalToken")
    }
}

impl std::fmt::Debug for DecisionBody {
    /// As its JSON, with the approval token redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::redacted_debug(f, "DecisionBody", self, "approvalToken")
    }
}

impl std::fmt::Debug for ApprovalRequest {
    /// As its JSON, with the approval token redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::redacted_debug(f, "ApprovalRequest", self, "approvalToken")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A contract call travels in Conto's own fields (`targetContractAddress`,
    /// `functionSelector`), not in `context`, and reads back as the same intent.
    #[test]
    fn a_contract_call_is_sent_in_contos_own_fields() {
        let contract = "0x0000000000000000000000000000000000000abc";
        let intent = PaymentIntent::builder("agent-1", "1", Rail::request(None))
            .recipient("0x1111111111111111111111111111111111111111")
            .context(TARGET_CONTRACT, contract)
            .context(FUNCTION_SELECTOR, "0xa9059cbb")
            .context("project", "demo")
            .build()
            .unwrap();
        let (kind, body) = PaymentBody::from_intent(&intent);
        assert_eq!(body.target_contract_address.as_deref(), Some(contract));
        assert_eq!(body.function_selector.as_deref(), Some("0xa9059cbb"));
        assert_eq!(body.context.as_ref().map(|c| c.keys().cloned().collect::<Vec<_>>()), Some(vec!["project".into()]));
        let again = body.to_intent("agent-1", kind).unwrap();
        assert_eq!(again.context, intent.context);
    }

    #[test]
    fn a_body_read_from_its_bytes_reads_as_through_a_value() {
        let bodies: [&[u8]; 8] = [
            br#"{"amount": 0.01, "recipientAddress": "0xAbC", "chainId": "8453", "senderAddress": "0x1"}"#,
            br#"{"amount": "12.500000", "purpose": "p", "category": "API_PROVIDER", "idempotencyKey": "k"}"#,
            br#"{"amount": 5, "resourceUrl": "https://api.example.com/x", "context": {"a": [1, {"b": null}]}}"#,
            br#"{"amount": 1, "amount": 2}"#,
            br#"{"amount": 1, "newField": {"deep": true}}"#,
            br#"{"amount": 1e2}"#,
            br#"{"payments": [{"amount": 1}]}"#,
            br#"{}"#,
        ];
        for bytes in bodies {
            let slow = PaymentBody::from_value(serde_json::from_slice(bytes).unwrap());
            let fast = PaymentBody::from_json(bytes);
            assert_eq!(fast.ok(), slow.ok(), "{}", String::from_utf8_lossy(bytes));
        }
        // A repeated key: the last one stands, as it always did.
        assert_eq!(
            PaymentBody::from_json(br#"{"amount": 1, "amount": 2}"#).unwrap().amount,
            Some("2".parse().unwrap())
        );
        // Errors still name the field and keep their code.
        let e = PaymentBody::from_json(br#"{"amount": -1}"#).unwrap_err();
        assert_eq!(e.code, "INVALID_AMOUNT", "{e}");
        let e = PaymentBody::from_json(br#" [1]"#).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), ("VALIDATION_ERROR", "the body must be a JSON object"));
    }

    #[test]
    fn unknown_fields_are_tolerated_and_wrong_types_are_errors() {
        let e = PaymentBody::from_json(br#"{"payments": [{"amount": 1}, {"amount": "abc"}]}"#).unwrap_err();
        assert_eq!((e.code, e.message.starts_with("`payments[1].amount`: ")), ("INVALID_AMOUNT", true), "{e}");
        let d: DecisionBody = serde_json::from_str(r#"{"approved": false, "reasons": ["x"], "newField": 1}"#).unwrap();
        assert_eq!(d.approved, Some(false));
        assert!(serde_json::from_str::<DecisionBody>(r#"{"approved": "yes"}"#).is_err());
        let d: DecisionBody =
            serde_json::from_str(r#"{"approved": false, "reasons": null, "violations": null}"#).unwrap();
        assert!(d.reasons.is_empty() && d.violations.is_empty());
        assert!(serde_json::from_str::<DecisionBody>(r#"{"authorized": true, "amount": -1}"#).is_err());
    }

    /// An MPP record sends back the wallet its pre-authorization named (Conto's `walletId`)
    /// and that wallet's chain as Conto writes it (`"chainId": "4217"`, a string), and neither
    /// when none was named; an x402 record carries neither.
    #[test]
    fn an_mpp_record_names_the_wallet_its_pre_authorization_named() {
        let mpp = PaymentIntent::builder("agent-1", "3", Rail::mpp("https://mpp.example.com/v1").unwrap())
            .recipient("0x2222222222222222222222222222222222222222")
            .build()
            .unwrap();
        let x402 = PaymentIntent::builder("agent-1", "3", Rail::x402("https://api.example.com/v1").unwrap())
            .recipient("0x2222222222222222222222222222222222222222")
            .build()
            .unwrap();
        let answer = r#"{"authorized": true, "authorizationId": "auth_1", "expiresAt": "2099-01-01T00:00:00Z",
            "wallet": {"id": "wal_tempo", "address": null, "chainId": "4217", "availableBalance": null}}"#;
        let body: DecisionBody = serde_json::from_str(answer).unwrap();
        assert_eq!(body.wallet.as_ref().map(|w| w.id.as_str()), Some("wal_tempo"));
        let named = body.wallet.as_ref().unwrap().named();
        assert_eq!(named, conto_core::Wallet::new("wal_tempo", Some("4217".into())));
        let numeric: PayingWallet = serde_json::from_str(r#"{"id": "wal_base", "chainId": 8453}"#).unwrap();
        assert_eq!(numeric.named().chain_id.as_deref(), Some("8453"), "a chain sent as a number is kept as its digits");
        // A wallet of another shape never costs the decision.
        for odd in [r#""wal_1""#, r#"{"id": 7}"#, r#"{"address": {"evm": "0x1"}}"#, "[]"] {
            let odd = answer
                .replace(r#"{"id": "wal_tempo", "address": null, "chainId": "4217", "availableBalance": null}"#, odd);
            let body: DecisionBody = serde_json::from_str(&odd).unwrap();
            assert_eq!(
                (body.authorized, body.wallet.map(|w| w.id).unwrap_or_default()),
                (Some(true), String::new()),
                "{odd}"
            );
        }
        let authorization = |intent: PaymentIntent, wallet: Option<conto_core::Wallet>| Authorization {
            id: "auth_1".into(),
            token: None,
            amount: "3".parse().unwrap(),
            expires_at: conto_core::jiff::Timestamp::now(),
            limits: Limits::default(),
            intent: std::sync::Arc::new(intent),
            wallet: wallet.map(Box::new),
        };
        let sent = |a: &Authorization| {
            let (_, body) = PaymentBody::record(a, &Settlement::default().reference("0xtx"), None).unwrap().unwrap();
            serde_json::to_value(body).unwrap()
        };
        let record = sent(&authorization(mpp.clone(), Some(named)));
        assert_eq!(
            (&record["walletId"], &record["chainId"]),
            (&serde_json::json!("wal_tempo"), &serde_json::json!("4217")),
            "{record}"
        );
        let unnamed_chain = sent(&authorization(mpp.clone(), Some(conto_core::Wallet::new("wal_tempo", None))));
        assert_eq!(unnamed_chain["walletId"], "wal_tempo");
        assert!(unnamed_chain.get("chainId").is_none(), "no chain is made up: {unnamed_chain}");
        let none = sent(&authorization(mpp, None));
        assert!(none.get("walletId").is_none() && none.get("chainId").is_none(), "{none}");
        let x402 = sent(&authorization(x402, Some(conto_core::Wallet::new("wal_base", Some("8453".into())))));
        assert!(x402.get("walletId").is_none() && x402.get("chainId").is_none(), "{x402}");
    }

    #[test]
    fn chain_id_reads_numbers_and_numeric_strings() {
        let b: PaymentBody = serde_json::from_str(r#"{"chainId": "4217"}"#).unwrap();
        assert_eq!(b.chain_id, Some(ChainId::Text(4217)));
        assert_eq!(serde_json::to_value(&b).unwrap(), serde_json::json!({"chainId": "4217"}), "written as it was read");
        let b: PaymentBody = serde_json::from_str(r#"{"chainId": 8453}"#).unwrap();
        assert_eq!(b.chain_id, Some(ChainId::Number(8453)));
        assert_eq!(serde_json::to_value(&b).unwrap(), serde_json::json!({"chainId": 8453}));
        assert!(serde_json::from_str::<PaymentBody>(r#"{"chainId": "base"}"#).is_err());
        // A settlement named twice must be named alike.
        let twice = r#"{"txHash": "0xaa", "transactionHash": "0xbb"}"#;
        let err = PaymentBody::from_json(twice.as_bytes()).unwrap_err();
        assert!(err.message.contains("name different transactions"), "{err}");
        let batch = r#"{"payments": [{"txHash": "0xaa"}, {"txHash": "0xaa", "transactionHash": "0xbb"}]}"#;
        assert!(PaymentBody::from_json(batch.as_bytes()).unwrap_err().message.starts_with("payments[1]: "));
        assert!(PaymentBody::from_json(br#"{"txHash": "0xaa", "transactionHash": "0xaa"}"#).is_ok());
        assert!(PaymentBody::from_json(br#"{"txHash": "0xAa", "transactionHash": "0xaA"}"#).is_ok());
        // What is wrong is said, for every shape a chain id is not.
        for sent in ["8453.0", "-1", "1e20", "0", r#""0""#, "true", "[8453]"] {
            let err = serde_json::from_str::<PaymentBody>(&format!(r#"{{"chainId": {sent}}}"#)).unwrap_err();
            assert!(err.to_string().contains("is not a chain id"), "{sent}: {err}");
        }
    }

    #[test]
    fn a_body_round_trips_through_an_intent() {
        let intent = PaymentIntent::builder(
            "agent-1",
            "2.5",
            Rail::transfer(8453, "0x1111111111111111111111111111111111111111").unwrap(),
        )
        .recipient("0x2222222222222222222222222222222222222222")
        .purpose("invoice 7")
        .build()
        .unwrap();
        let (kind, body) = PaymentBody::from_intent(&intent);
        let back = body.to_intent("agent-1", kind).unwrap();
        assert_eq!(back.amount, intent.amount);
        assert_eq!(back.rail, intent.rail);
        assert_eq!(back.recipient, intent.recipient);
        assert_eq!(back.purpose, intent.purpose);
        assert_eq!(back.idempotency_key, intent.idempotency_key);
        let missing = PaymentBody { amount: intent.amount.into(), ..Default::default() }.to_intent("a", Kind::Transfer);
        assert_eq!(missing.unwrap_err().message, "`senderAddress` is required");
        let no_chain = PaymentBody { chain_id: None, ..body }.to_intent("agent-1", Kind::Transfer).unwrap();
        assert!(matches!(no_chain.rail, Rail::Transfer { chain_id: DEFAULT_CHAIN_ID, .. }), "{:?}", no_chain.rail);
    }
}
