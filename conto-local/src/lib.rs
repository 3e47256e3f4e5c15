//! conto-local: a local control plane that speaks Conto's `/api/sdk` and org endpoints, backed by
//! the conto-rs embedded engine and SQLite. It is what the client's integration tests run
//! against, and what you run for local development (`cargo run -p conto-local`).
//!
//! # Choices where Conto's docs are silent (conto-api.md §13)
//!
//! - Error body: `{"error": text, "code": CODE, "message": text}` with Conto's codes and statuses
//!   (§8). Where Conto names none, conto-local's own: idempotency conflicts are
//!   `409 IDEMPOTENCY_CONFLICT`; a confirm with another approval's token `400 INVALID_TOKEN`; an
//!   agent id taken or retired `409 CONFLICT`; a paused agent's admin key changing policies
//!   `403 AGENT_PAUSED`; a body over the size limit `413 PAYLOAD_TOO_LARGE`; a route without
//!   the method `405 METHOD_NOT_ALLOWED`; a request past the request timeout `408 TIMEOUT`. A repeat of a key that arrives
//!   while the first request is still running waits for it and gets its answer. An answer is
//!   remembered for 24 hours (Stripe's floor; Conto's docs name no window), across restarts,
//!   with about 32 bytes of memory each for its index; a repeat after that is a new request.
//!   An approval's row is kept a week after it lapses (a late confirm is told `EXPIRED`), then
//!   forgotten; recorded spends are kept.
//! - One process owns the database file (SQLite `EXCLUSIVE` locking, kept for the server's
//!   life): the engine's ledger lives in that process, so a second server on the same file is
//!   refused with [`LocalError::InUse`] rather than splitting every budget in two.
//! - Decisions are answers, never errors: approved `200`; denied `200` with `approved: false`
//!   (or `authorized: false`), `reasons`, `violations` and `message`; requires approval `202`
//!   with `approvalRequestId` (and, on transfers, the same id as `approvalId`, which Conto's
//!   skill reports to the user). `401` is kept for authentication and `403` for a missing scope,
//!   as Conto's agent skill reads them; every error, unknown routes and wrong methods included,
//!   has a JSON body `{"error", "code", "message"}`.
//! - Rate limits: a sliding minute per agent, payments and reads counted apart (reads get twice
//!   the payment limit), and one for the org key (1 000 a minute, `--org-rate-limit`: Conto
//!   documents no org-key limit, only 100 a minute per dashboard user, and its shopping
//!   starter makes 8 org calls per checkout on one org key shared by every shopper). Every answer carries `X-RateLimit-Remaining` and `X-RateLimit-Reset`,
//!   as Conto documents: the caller's window once its key is known (an expired key's, a missing
//!   scope's and a `429` included; a refused key is not counted); an answer to no key, an
//!   unknown one or an unknown route names an untouched window (the whole payment limit, reset
//!   now), never an agent's. A `429` adds `Retry-After`, in whole seconds rounded up.
//! - Times are written as Conto writes them (JavaScript's `toISOString`): UTC to the
//!   millisecond, `2025-03-19T12:10:00.000Z`.
//! - x402/MPP pre-authorizations return an `authorizationId`; records that carry it settle that
//!   reservation (each endpoint settles only its own flow's approvals; a `resourceUrl` or
//!   `recipientAddress` sent with it must be the authorization's endpoint and recipient,
//!   `400 VALIDATION_ERROR` otherwise). An MPP pre-authorization
//!   with a `depositAmount` larger than its `amount` is decided, held and approved for the
//!   deposit (§6.6: the app pre-authorizes the deposit); its record settles it at what the
//!   session spent, also above the deposit (a top-up: all it settled is counted). A session
//!   that settled nothing (it never opened) is recorded with `amount: 0`: its deposit's hold
//!   and its open-session slot are freed at once (`status: "RELEASED"`), nothing is counted
//!   (an `MPP_MAX_SESSION_DURATION` session would otherwise hold them its whole length). The
//!   service an x402/MPP payment is checked as is `resourceUrl`'s host in
//!   canonical form (as a browser reaches it); a `serviceDomain` sent along must be that host
//!   or a domain above it (`400 VALIDATION_ERROR` otherwise). An approved one names
//!   its `wallet` (`id`, `address`, `chainId`, `custodyType`, `availableBalance`): the agent's
//!   delegated wallet on the rail's chain (MPP `"4217"`, x402 `"8453"`), else its first
//!   delegation, with what the delegation states (`chainId` always a string); an agent with none
//!   pays from its app's own wallet, `{"id": "external", "custodyType": "EXTERNAL"}` (x402's
//!   chain and `external` are conto-local's choices: Conto's docs name no x402 chain, and Conto
//!   would refuse an agent without a wallet with `NO_WALLET`). conto-local holds no wallet, so
//!   `availableBalance` is `null` unless the delegation states one. An MPP record's `walletId`
//!   (the client sends back the one named) is taken as sent, not checked.
//! - Rule types Conto documents that need data conto-local does not have
//!   (`GEOGRAPHIC_RESTRICTION`, `TRUST_SCORE`, `COUNTERPARTY_STATUS`,
//!   `FAIRSCALE_MIN_SCORE`) are
//!   stored as sent and fail closed ([`conto_core::UnevaluatedRules::Deny`]): every payment on
//!   their rails (MPP for `MPP_*`) is denied, the violation named for the rule, while their
//!   policy is active. Unknown rule types are refused (`400 VALIDATION_ERROR`).
//! - An amount with more than six decimal places is rounded up to six before it is decided.
//! - Confirm takes an optional `amount` (the settled amount, at most the approved one).
//! - A transfer approve without `chainId` is on Conto's default chain, Tempo testnet (42431):
//!   Conto's skill lists only `amount`, `recipientAddress` and `senderAddress` as required.
//! - Approvals live as long as Conto keeps them: 10 minutes for transfers, x402 and MPP, 5
//!   minutes for payment requests and card approvals (`--approval-ttl-secs` sets one lifetime
//!   for all).
//! - A confirm after the approval expired is `400 EXPIRED`, as Conto documents; the spend is not
//!   counted.
//! - Pending human approvals are listed by `GET /api/sdk/approval-requests` (newest first;
//!   `limit` keeps that many, 1 to 100, 100 by default; `type=payment` is every one, any other
//!   type none; `status` keeps those in that status, any case, among the newest 1 000); an approved entry
//!   carries `approvalId`, `expiresAt` and, for a transfer or a card, `approvalToken`, and is listed `EXPIRED` once that
//!   has passed (as a pending one is). Every approval token and SDK key is stored hashed (the
//!   org key is never stored); the token of a human-approved request (and of an approval a
//!   repeated request may be answered again) is held in memory until its approval lapses. One
//!   a restart lost is issued again when next asked for, its hash added to the approval's (the
//!   first still confirms, if it reached the agent). Humans decide with
//!   `POST /api/approval-requests/{id}/approve|reject` (org key), or as Conto's shopping
//!   starter does, `POST /api/demos/anthropic-shopping/approval-requests/{id}/decision`
//!   `{"decision": "APPROVED"|"REJECTED", "paymentRequestId"}`, answered with the request's
//!   `finalStatus` (`REJECTED` when the re-check after an approval denies). The same decision
//!   sent again (a retry after a lost answer) gets the first answer; the other decision is
//!   `400 INVALID_STATUS`. A transfer asked again unchanged (an idempotency key the client
//!   sent is part of it; one conto-local drew is not) that the policies hold for a human again
//!   is answered with the request that stands for it: waiting, that request (not a second one
//!   for the admin); approved, that approval and its token, until it is confirmed or lapses,
//!   while the agent is active (Conto's skill tells the agent to ask again once an admin
//!   approved). When what the approval holds leaves no room for the same payment twice,
//!   asking again is a new request or a denial.
//!   Sent again under its idempotency key, a transfer approve is answered as it stands now:
//!   approved by a human since, the approval and its token; rejected or lapsed unanswered, a
//!   denial; an approval that lapsed unused (or one a paused agent asks for), `400 EXPIRED`.
//!   `GET /api/sdk/approval-requests` shows no token to a paused agent, nor once it was used.
//! - `GET /api/sdk/wallets` (`wallets:read`) lists the key's agent's wallet delegations as the
//!   org's `GET /api/agents/{id}/wallets` does; `GET /api/sdk/transactions?limit=50`
//!   (`transactions:read`) its recorded payments, newest first: `id`, `authorizationId`,
//!   `amount`, `status` (`COMPLETED`), `type` (the rail), `recipientAddress`, `txHash` (the
//!   settlement's reference), `createdAt`.
//! - `GET /api/sdk/setup` (`agents:read`): the key's agent, its key type and scopes, its wallet
//!   delegations and policies (each only with the scope its own read needs), and `ready`
//!   (active, with a wallet) with the `issues` if not. Conto documents the endpoint ("check
//!   agent config"), not its answer: this shape and the scope are conto-local's.
//! - Budget requests: `POST /api/sdk/budget-request` (`payments:request`) `{amount, purpose,
//!   category?, metadata?}` → `201 PENDING`; one active request per agent, a second is `409
//!   BUDGET_REQUEST_EXISTS`. Read back by `GET /api/sdk/budget-request?id=&status=` or
//!   `/api/sdk/budget-request/{id}`; answered by `POST /api/budget-requests/{id}/approve`
//!   `{approvedAmount?, windowHours?}` or `/reject` `{reason?}` (org key; listed by `GET
//!   /api/budget-requests?agentId=&status=`). Unanswered, it lapses after 24 hours
//!   (`EXPIRED`); approved, it gates the agent's payments for its window (24 hours by
//!   default): one that would take what was spent under it, with what live approvals hold,
//!   past the approved amount is denied `BUDGET_EXCEEDED`, whatever the policies allow.
//!   `EXHAUSTED` once spent in full (it still gates until its window ends; the agent may ask
//!   again). A payment the policies would hold for a human is gated when it is asked for.
//!   Conto documents the POST, its body, the statuses, the 24-hour lapse and window, `409
//!   BUDGET_REQUEST_EXISTS`, a lookup by `id` or `status`, and that an approved budget and the
//!   policies must both pass; the read's path, the org's answer endpoints (`approvedAmount`,
//!   `windowHours`, `reason`), the scope and the answer's field names are conto-local's.
//! - `GET /api/sdk/service-spend/summary` (`analytics:read`) sums the key's agent's x402 and MPP
//!   payments over `period` (`24h` by default, `7d`, `30d`, `all`) and `protocol` (`all`,
//!   `x402`, `mpp`), with its services (most spent first, `limit` of them, 10 by default, at
//!   most 100); every such payment counts as a micropayment, the organization is `org_local`,
//!   and conto-local raises no alerts (`alerts: []`). Other values are `400 VALIDATION_ERROR`.
//! - `GET /api/sdk/x402/budget` and `/mpp/budget` ("remaining budget and burn rate", as Conto's
//!   skill reads them; Conto's docs give no shape) return the agent's counters that count the
//!   rail's payments, each with its `limit` and `remaining` (the least limit its policies set,
//!   less spent and reserved), the rail's `remaining` (the least of those), `spentLast24h` and
//!   `burnRatePerHour` (that spend per hour), and `totalSpent` on every rail (amounts as
//!   JSON numbers, as every amount conto-local answers);
//!   `GET /api/sdk/x402/services` and `/mpp/services` the services it paid on that rail, by
//!   service domain (total spent, payment count, last payment).
//! - `POST /api/sdk/payments/request` answers 2xx with a `requestId` whatever the decision
//!   (`APPROVED`, `DENIED`, `REQUIRES_APPROVAL` with `approvalRequestId`), decided on the
//!   `request` rail (every rail-independent rule applies). Its `walletId` must be delegated
//!   to the agent (`400 NO_WALLET`: never another agent's); an agent with no delegation may
//!   name a wallet no agent holds, its app's own. `GET
//!   /api/sdk/payments/{requestId}` (with a denial's `reasons` and `violations`) follows a
//!   human's answer, then its approval's: `EXECUTED`
//!   once confirmed, `EXPIRED` once it lapsed unconfirmed (Conto's enum names no lapsed state;
//!   a lapsed approval is never shown `APPROVED`, which a client would go on to pay). `POST .../execute` refuses by the
//!   request's state in Conto's codes (`404 NOT_FOUND`; `400 INVALID_STATUS` when not approved
//!   or already paid; `400 EXPIRED` when its approval lapsed). A live approved request paid
//!   from a wallet delegated to the agent with a managed custody (`custodyType` `PRIVY` or
//!   `SPONGE`: the skill's Mode A; the wallet the request names, else the agent's delegation
//!   on chain 42431, else its first) is executed, and so is one asked with `autoExecute:
//!   true` (its answer's `execution`): **simulated**, as conto-local holds no custody
//!   provider's keys: a fresh transaction hash, `status: "CONFIRMING"`, `simulated: true`,
//!   the spend counted and the request `EXECUTED` as a confirm would make it, and a warning
//!   logged; no money moves. A request paid from the app's own wallet (custody `EXTERNAL`, or
//!   no delegation) is answered `400 EXTERNAL_WALLET` (Conto's answer for a wallet it does
//!   not hold), and with `autoExecute: true`, `APPROVED` with `autoExecuteError` (Conto's
//!   answer when it did not execute) and no `execution`: the approval stands, and the app
//!   settles it: it pays from its own wallet and confirms with
//!   `POST /api/sdk/payments/{requestId}/confirm {"txHash"}`, without an `approvalToken` (a
//!   payment request's approval, given at once or by a human, carries none; a transfer
//!   approval's confirm requires its token). The request's own id confirms it, also once a
//!   human approved it (its approval's id, listed by `GET /api/sdk/approval-requests`, does
//!   too); a request denied or still waiting is `400 INVALID_STATUS`.
//! - A transfer or card approval held for a human is confirmed by the id it was answered with
//!   (`approvalId`, a card's `requestId`) once a human approved it, a transfer's with the token
//!   `GET /api/sdk/approval-requests` lists; before the decision, `400 INVALID_STATUS`; lapsed
//!   unanswered, `400 EXPIRED`. A lapsed approval is `400 EXPIRED` whatever token is sent.
//! - A human's approval that the re-check then denies (the budget went meanwhile, the agent
//!   was paused) is `REJECTED` with its `reasons`, which the payment request's status then
//!   shows. A payment request asked again under its idempotency key after a human decided is
//!   answered as it stands now (`APPROVED`, `DENIED`), not with its first `REQUIRES_APPROVAL`.
//! - A policy change counts the stored history again under the new policies: a limit added
//!   after spending counts the spend (and the approvals still held) before it, as after a
//!   restart, and as Conto's counters, read from its transactions, would.
//! - x402/MPP resource URLs are held in canonical form (`conto_core::canonical_resource`),
//!   so a per-endpoint limit, and a record matched to its pre-authorization, see one endpoint
//!   however it is spelled (per-endpoint limits also ignore the path's case, `;` parameters,
//!   empty segments and a trailing `/`: `conto_core::policy`). A settlement is named once: `transactionHash` is read as `txHash`
//!   (both sent must agree), trimmed (white space inside one is `400 VALIDATION_ERROR`), and
//!   an EVM hash is lower-cased, so a repeat is recognised however
//!   it names its transaction. A pre-authorization held for a human is recorded under its
//!   `approvalRequestId` once approved; a card confirm sent again with the same
//!   `transactionReference` gets its first answer.
//! - A transfer confirm sent again with the same `txHash` (and token) gets the first answer
//!   again and counts nothing (Conto documents no confirm idempotency; a client retrying after
//!   a lost answer must not see a paid transfer as failed); another `txHash` is
//!   `400 INVALID_STATUS`, the same with another `amount` `409 CONFLICT` (a card confirm's
//!   `transactionReference` alike). A `txHash` must fit the payment's network: for a payment to
//!   a Solana address a signature (base58 of 64 bytes), else an EVM hash (0x + 64 hex); one of
//!   the other shape is `400 VALIDATION_ERROR` and the approval stays live.
//! - A confirm's `currency` is `pathUSD` on Tempo (testnet 42431, mainnet 4217, and a payment
//!   request's chain, Conto's default 42431), `USDC` on other chains.
//! - A confirm's `explorerUrl` links the transaction on the chains conto-local knows (Tempo
//!   testnet 42431, Ethereum, Base, Base Sepolia, Optimism, Polygon, Arbitrum); it is left out
//!   on others. A transfer to a Solana address was made on Solana, whatever `chainId` came with
//!   it (Conto detects Solana from the address): `USDC`, Solana's explorer.
//! - An x402/MPP record without `authorizationId` settles the oldest live pre-authorization of
//!   the same agent, rail, endpoint (as per-endpoint limits count one: `conto_core::endpoint_key`)
//!   and recipient whose amount covers it; a deposit pre-authorized for a named MPP session
//!   (`sessionId`) only by that session's record, one pre-authorized before its session was
//!   named (Conto's flow) by any, after those of the record's own session. A payment is known by
//!   its `paymentId`, else its tx hash: sent again unchanged (a retry, with or without an
//!   idempotency key), it gets its first answer again and is counted once; the same key with any
//!   field changed is `409 CONFLICT` and changes no counter.
//! - Agents have a `status` (`ACTIVE`/`PAUSED`, `PATCH /api/agents/{id}`, which also takes
//!   `name` and `description`; a patch with any invalid field changes nothing); a paused agent's
//!   decisions are denials. `DELETE /api/agents/{id}` revokes its keys and retires its id: a
//!   new agent asking for it is `409 CONFLICT`, so none inherits the history kept under it.
//!   Keys are listed with `GET /api/agents/{id}/sdk-keys` and revoked with
//!   `DELETE .../sdk-keys/{keyId}` (Conto documents no revocation endpoint; this is
//!   conto-local's).
//! - Policies: creating and assigning are separate steps, as Conto's skill describes. A policy
//!   the org key creates without `agentIds` is stored `scope: "assigned"` and binds no agent
//!   until `PATCH /api/policies/{id}` gives it `agentIds`; `scope: "all"` binds every agent. An
//!   agent's **admin** SDK key (`keyType: "admin"`) may create, change and delete its own
//!   agent's policies (one it creates without `agentIds` is assigned to its agent) and never
//!   another agent's (`403`), nor any while its agent is `PAUSED` (`403 AGENT_PAUSED`: pausing
//!   is the org's kill switch); any agent key reads only the policies that apply to its agent.
//!   Conto gives admin keys an "expanded preset" it does not list: here an admin key gets the
//!   standard preset, the payment scopes (`payments:approve`, `payments:confirm`,
//!   `payments:execute`: Conto's skill uses one key for its payment and policy commands) and
//!   the scopes asked for; its `keyType` alone grants the policy writes. Scopes are checked against the ones Conto names: an unknown one
//!   is `400 VALIDATION_ERROR`.
//!   A preloaded policy file keeps the file format's meaning: no `agentIds` = every agent (an
//!   empty `agentIds` or `agentPolicies` = no agent; one stored by an earlier version, when
//!   an empty list meant every agent, keeps binding every agent).
//!   A policy is shown with Conto's defaults where it was sent without them (`isActive: true`,
//!   `priority: 50`) and its assignments also as `agentPolicies: [{agentId, policyId}]`; new
//!   `agentIds` replace the assignment whole. An assignment to an agent that does not exist is
//!   `400 VALIDATION_ERROR` naming the entry (`agentIds[1]`).
//! - A wallet delegation (`POST /api/agents/{id}/wallets`) binds its agent to its spend limits
//!   and to its `allowedHoursStart`/`allowedHoursEnd` (whole hours, UTC: Conto's docs name no
//!   zone) and `allowedDays`; `0` to `24` and all seven days restrict nothing.
//! - Bodies are Conto's wire types (`conto-wire`): unknown fields are ignored, a field of the
//!   wrong type is a `400` that names its JSON path (`payments[1].amount`).
//! - Every successful answer carries `Server-Timing: app;dur=<milliseconds>`: the handler's
//!   time (the request body read included), so a client can tell the server's share of a round
//!   trip from the network's. Refusals and errors carry none.

mod budget;
pub mod env_file;
mod org;
mod rate;
mod sdk;
mod serve;
mod store;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use conto_core::jiff::{SignedDuration, Timestamp};
use conto_core::{Amount, Engine, PaymentIntent, PendingApproval, PolicySet, UnevaluatedRules};
use conto_wire::ErrorBody;
use conto_wire::org::{
    Agent, AgentLink, AgentPatch, Agents, Deleted, Policies, Policy, Revoked, Rule, Rules, SdkKey, SdkKeys,
};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use subtle::ConstantTimeEq;

use store::Store;
pub use store::StoreError;

/// How conto-local runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port on 127.0.0.1 (0 picks a free one). Default 3006, Conto's development port.
    pub port: u16,
    /// The SQLite file; `None` keeps everything in memory.
    pub db: Option<PathBuf>,
    /// The org API key; generated when `None`.
    pub org_key: Option<String>,
    /// Requests per minute per agent on payment endpoints (reads get twice as many). Default 60.
    pub rate_limit: u32,
    /// Requests per minute on the org key's endpoints. Default 1 000 (Conto documents no org-key
    /// limit; its shopping starter makes 8 org calls per checkout on one shared org key).
    pub org_rate_limit: u32,
    /// How long an approval waits for its confirm, on every rail. Default (`None`): Conto's
    /// lifetimes, 10 minutes for transfers, x402 and MPP, 5 minutes for payment requests and
    /// cards.
    pub approval_ttl: Option<SignedDuration>,
    /// How long a request may take once its headers are read, its body's arrival included,
    /// before it is answered `408 TIMEOUT` and its connection closed (a client that never
    /// finishes sending its body does not hold it open); also how long a connection waits for
    /// a request's headers before it is closed (a client sending half a request line, or
    /// keeping an idle connection, does not hold it for ever). Default 30 s.
    pub request_timeout: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 3006,
            db: None,
            org_key: None,
            rate_limit: 60,
            org_rate_limit: 1000,
            approval_ttl: None,
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Why conto-local could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored or preloaded policies are invalid.
    #[error("invalid policies: {0}")]
    Policy(#[from] conto_core::PolicyError),
    /// The port could not be bound.
    #[error("cannot listen on 127.0.0.1:{port}: {message}")]
    Bind {
        /// The port.
        port: u16,
        /// The OS error.
        message: String,
    },
    /// An agent id breaks the actor-id rule (`conto_core::ActorId`).
    #[error("invalid agent id: {0}")]
    InvalidAgent(#[from] conto_core::IntentError),
    /// The agent id belonged to an agent that was deleted: ids are never reused, so a new agent
    /// never inherits an old one's history, approvals or policies.
    #[error("agent id `{0}` belonged to a deleted agent, whose history keeps it: choose another")]
    RetiredAgent(String),
    /// Stored data could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The org key given cannot be one: empty, or an agent's SDK key (which every org
    /// endpoint refuses, locking the operator out).
    #[error("invalid org key: {0}")]
    InvalidOrgKey(&'static str),
    /// An approval lifetime under a second: every approval would lapse as it is given.
    #[error("invalid approval lifetime {0}: at least one second")]
    InvalidApprovalTtl(conto_core::jiff::SignedDuration),
    /// The database file's permissions could not be narrowed to its owner.
    #[error("cannot make {path} readable by its owner only: {message}")]
    Permissions {
        /// The database file.
        path: String,
        /// Why.
        message: String,
    },
    /// Another connection holds the database (a running server, in this process or another):
    /// one server owns its file, since its ledger lives in its memory and a second server on
    /// the same file would split every budget.
    #[error("database {path} is in use by a running conto-local: one server owns its database file")]
    InUse {
        /// The database file.
        path: String,
    },
    /// The credentials file (`conto-local --env-file`) could not be written.
    #[error("cannot write the credentials file {path}: {message}")]
    EnvFile {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
}

/// The shared state of a running server.
pub(crate) struct App {
    store: Mutex<Store>,
    engine: Engine,
    org_key: SecretString,
    rate_limit: u32,
    org_rate_limit: u32,
    rate: Mutex<HashMap<(String, rate::Class), VecDeque<Instant>>>,
    /// Approval tokens in clear, for the answers that must carry them again (a human-approved
    /// request, by request id; a replayed authorize, by its idempotency slot): kept in memory
    /// only (the store keeps their hash); one a restart lost is issued again (`token_again`).
    approval_tokens: Mutex<Tokens>,
}

/// Approval tokens kept in memory, each until its approval lapses: past that no confirm
/// accepts it (`EXPIRED`), so it is forgotten, and what is kept is bounded by the approvals
/// live at once, not by every approval ever given.
#[derive(Default)]
pub(crate) struct Tokens {
    kept: HashMap<String, (SecretString, Timestamp)>,
    /// How many may be kept before the lapsed ones are swept out (twice what was left by the
    /// last sweep, so sweeping costs O(1) per token kept).
    sweep_at: usize,
}

impl Tokens {
    /// Keeps `token` under `slot` until `lapses` (it is `now`).
    pub(crate) fn keep(&mut self, slot: String, token: SecretString, lapses: Timestamp, now: Timestamp) {
        if self.kept.len() >= self.sweep_at {
            self.kept.retain(|_, (_, lapses)| *lapses > now);
            self.sweep_at = (self.kept.len() * 2).max(1024);
            // A burst's room is given back too, not kept for the life of the server.
            if self.kept.capacity() > 2 * self.sweep_at {
                self.kept.shrink_to(self.sweep_at);
            }
        }
        self.kept.insert(slot, (token, lapses));
    }

    /// The token under `slot`, unless its approval has lapsed (it is `now`).
    pub(crate) fn get(&self, slot: &str, now: Timestamp) -> Option<&SecretString> {
        self.kept.get(slot).filter(|(_, lapses)| *lapses > now).map(|(token, _)| token)
    }

    /// How many are kept (lapsed ones not yet swept out included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }
}

impl App {
    /// The server's state over `store` and `engine`, with no request seen yet.
    fn new(store: Store, engine: Engine, org_key: SecretString, (rate_limit, org_rate_limit): (u32, u32)) -> Self {
        App {
            store: Mutex::new(store),
            engine,
            org_key,
            rate_limit: rate_limit.max(1),
            org_rate_limit: org_rate_limit.max(1),
            rate: Mutex::new(HashMap::new()),
            approval_tokens: Mutex::new(Tokens::default()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running conto-local.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    org_key: SecretString,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    app: Arc<App>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Running {
    /// Loads a policy file into the store this server serves (names already present are
    /// skipped) and applies it at once; returns how many policies were added.
    pub fn preload(&self, file: &std::path::Path) -> Result<usize, LocalError> {
        let docs = policy_docs(file)?;
        let store = lock(&self.app.store);
        let added = preload_into(&store, docs)?;
        reapply(&store, &self.app.engine, policy_set(&effective_policies(&store)?)?, &Affected::All)?;
        Ok(added)
    }

    /// Creates an agent with a standard SDK key holding every payment scope in the store this
    /// server serves, if it does not exist yet; returns the key (shown once).
    pub fn bootstrap_agent(&self, agent_id: &str) -> Result<Option<String>, LocalError> {
        let key = bootstrap_into(&lock(&self.app.store), agent_id)?;
        self.app.engine.provision(agent_id)?;
        Ok(key)
    }

    /// Whether `key` is a live (unrevoked, unexpired) SDK key of `agent` in this server's
    /// store: which of the keys a credentials file kept belongs to this database.
    pub fn holds_key(&self, agent: &str, key: &str) -> bool {
        lock(&self.app.store).key(key).ok().flatten().is_some_and(|r| r.agent_id == agent && !r.expired())
    }

    /// The base URL, e.g. `http://127.0.0.1:3006`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The org API key.
    pub fn org_key(&self) -> &SecretString {
        &self.org_key
    }

    /// How many spends have been recorded for `agent` (each one once).
    pub fn spend_count(&self, agent: &str) -> Result<u64, StoreError> {
        lock(&self.app.store).spend_count(agent)
    }

    /// How many idempotency keys are stored for `agent`.
    pub fn idempotency_count(&self, agent: &str) -> Result<u64, StoreError> {
        lock(&self.app.store).idempotency_count(agent)
    }

    /// The engine behind the server (for inspection in tests).
    pub fn engine(&self) -> &Engine {
        &self.app.engine
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// The id of conto-local's one organization.
pub(crate) const ORGANIZATION_ID: &str = "org_local";

pub(crate) fn now_text() -> String {
    iso(Timestamp::now())
}

/// A time as Conto writes it (JavaScript's `toISOString`): UTC to the millisecond, with `Z`
/// (`2025-03-19T12:10:00.000Z`): one fixed width, which strict ISO-8601 readers take and which
/// sorts as text in time order. conto-local writes every new time so; rows an earlier version
/// stored keep the finer precision they were written with.
pub(crate) fn iso(t: Timestamp) -> String {
    static PRINTER: conto_core::jiff::fmt::temporal::DateTimePrinter =
        conto_core::jiff::fmt::temporal::DateTimePrinter::new().precision(Some(3));
    PRINTER.timestamp_to_string(&t)
}

/// `n` random bytes as lower-case hex.
pub(crate) fn random_hex(n: usize) -> String {
    store::lower_hex(&(0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>())
}

/// Starts conto-local: opens (or creates) the store, restores the engine's state from it, and
/// serves on 127.0.0.1.
pub async fn start(config: Config) -> Result<Running, LocalError> {
    match config.org_key.as_deref().map(str::trim) {
        Some("") => return Err(LocalError::InvalidOrgKey("it is empty")),
        Some(k) if k.starts_with("conto_agent_") => {
            return Err(LocalError::InvalidOrgKey(
                "it is an agent SDK key (`conto_agent_...`), which org endpoints refuse",
            ));
        }
        _ => {}
    }
    if let Some(ttl) = config.approval_ttl.filter(|t| *t < conto_core::jiff::SignedDuration::from_secs(1)) {
        return Err(LocalError::InvalidApprovalTtl(ttl));
    }
    let store = open_store(config.db.as_deref())?;
    let engine = Engine::builder().approval_ttl(config.approval_ttl).build();
    restore(&store, &engine)?;
    let org_key = SecretString::from(config.org_key.clone().unwrap_or_else(|| format!("conto_org_{}", random_hex(32))));
    let app = Arc::new(App::new(store, engine, org_key.clone(), (config.rate_limit, config.org_rate_limit)));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .map_err(|e| LocalError::Bind { port: config.port, message: e.to_string() })?;
    let addr = listener.local_addr().map_err(|e| LocalError::Bind { port: config.port, message: e.to_string() })?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = router(app.clone(), config.request_timeout);
    let task = tokio::spawn(serve::serve(listener, router, config.request_timeout, async {
        let _ = rx.await;
    }));
    Ok(Running { addr, org_key, shutdown: Some(tx), task, app })
}

/// Opens the store, or says the file belongs to a running server.
fn open_store(db: Option<&std::path::Path>) -> Result<Store, LocalError> {
    if let Some(path) = db {
        owner_only(path)
            .map_err(|e| LocalError::Permissions { path: path.display().to_string(), message: e.to_string() })?;
    }
    Store::open(db).map_err(|e| match (e.is_busy(), db) {
        (true, Some(path)) => LocalError::InUse { path: path.display().to_string() },
        _ => e.into(),
    })
}

/// Makes the database file readable and writable by its owner only (`0600`), creating it so if
/// it does not exist, and tightening it (and SQLite's `-wal` and `-shm` files beside it, which
/// SQLite creates with the database's mode) if it was opened wider: it holds key and token
/// hashes, policies and the spend history.
#[cfg(unix)]
fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // Let SQLite say why it cannot open the file.
        Err(_) => return Ok(()),
    }
    let me = rustix::process::geteuid();
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        // Another user's file (unless this process is root): its owner could read the key
        // hashes and spend history written to it, whatever its mode.
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.is_file()
            && !me.is_root()
            && meta.uid() != me.as_raw()
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("it belongs to another user (uid {}): remove it, or run as its owner", meta.uid()),
            ));
        }
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.is_file()
            && meta.permissions().mode() & 0o077 != 0
        {
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                // Another user's file, or a file system without Unix modes: said, not fatal.
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported) =>
                {
                    tracing::warn!(path = %std::path::Path::new(&file).display(), error = %e,
                        "conto_local.database_mode: cannot make the database readable by its owner only");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn owner_only(_: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

/// A policy with no `scope` whose `agentIds` or `agentPolicies` is given but names no one: it
/// binds no agent now, every agent as an earlier version stored it.
fn assigned_by_an_empty_list(doc: &Policy) -> bool {
    doc.scope.is_none() && doc.assigned().next().is_none() && (doc.agent_ids.is_some() || doc.agent_policies.is_some())
}

/// Policies an earlier version stored in a form this one refuses keep the meaning they were
/// enforced with, rather than keeping the server from starting: an unknown `scope` was read as
/// none (its agents, or every agent without any), a blackout's `NOT_BETWEEN` as `BETWEEN`.
fn migrate_policies(store: &Store) -> Result<(), LocalError> {
    for mut doc in store.policies()? {
        let mut changed = false;
        if let Some(scope) = &doc.scope
            && !scope.eq_ignore_ascii_case("all")
            && !scope.eq_ignore_ascii_case("assigned")
        {
            doc.scope = Some(if doc.assigned().next().is_some() { "assigned" } else { "all" }.to_owned());
            changed = true;
        }
        // A preloaded policy with an empty assignment list and no scope bound every agent
        // before an empty list came to mean no one: it keeps binding every agent.
        if assigned_by_an_empty_list(&doc) {
            doc.scope = Some("all".to_owned());
            changed = true;
        }
        for rule in doc.rules.iter_mut().flatten() {
            // Read as the engine reads them: trimmed, in any case.
            let read = |t: &Option<String>| t.as_deref().map(|t| t.trim().to_ascii_uppercase()).unwrap_or_default();
            if read(&rule.rule_type) == "BLACKOUT_PERIOD"
                && matches!(read(&rule.operator).as_str(), "NOT_BETWEEN" | "NOT BETWEEN")
            {
                rule.operator = Some("BETWEEN".to_owned());
                changed = true;
            }
        }
        if changed && let Some(id) = doc.id.clone() {
            tracing::warn!(policy = %id, "conto_local.policy_migrated: kept with the meaning it was enforced with");
            store.put_policy(&id, &doc)?;
        }
    }
    Ok(())
}

fn restore_policies(store: &Store, engine: &Engine) -> Result<(), LocalError> {
    engine.set_policies(policy_set(&effective_policies(store)?)?);
    Ok(())
}

fn restore(store: &Store, engine: &Engine) -> Result<(), LocalError> {
    migrate_policies(store)?;
    restore_policies(store, engine)?;
    // The engine's actor registry is the store's agents: any other actor is refused.
    for agent in store.agents()? {
        engine.provision(&agent.id).map_err(|e| LocalError::Corrupt(format!("agent `{}`: {e}", agent.id)))?;
        if agent.status == "PAUSED" {
            let _ = engine.pause(&agent.id);
        }
    }
    recount(store, engine, None)?;
    let corrupt = |e: &dyn std::fmt::Display| LocalError::Corrupt(e.to_string());
    for r in store.requests(None)? {
        if r.status == "PENDING" {
            let intent: PaymentIntent = serde_json::from_str(&r.intent).map_err(|e| corrupt(&e))?;
            let pending = PendingApproval {
                approval_request_id: r.id.clone(),
                expires_at: r.expires_at.parse().map_err(|e| corrupt(&e))?,
                reasons: vec![],
            };
            engine.restore_pending(&pending, &intent);
        }
    }
    Ok(())
}

/// Counts the store's history into the engine's ledgers (`agent`'s only, when given): every
/// recorded spend, oldest first, then every live approval's reservation. At start, and after a
/// policy change (on ledgers the engine forgot), so the counters are always the history as the
/// policies count it.
fn recount(store: &Store, engine: &Engine, agent: Option<&str>) -> Result<(), LocalError> {
    let corrupt = |e: &dyn std::fmt::Display| LocalError::Corrupt(e.to_string());
    for (intent, amount, at) in store.spends(agent)? {
        let intent: PaymentIntent = serde_json::from_str(&intent).map_err(|e| corrupt(&e))?;
        let amount: Amount = amount.parse().map_err(|e| corrupt(&e))?;
        let at: Timestamp = at.parse().map_err(|e| corrupt(&e))?;
        engine.restore_spend(&intent, amount, at);
    }
    for (id, a) in store.live_approvals(agent)? {
        engine.restore_authorization(&a.authorization(&id).map_err(LocalError::Corrupt)?);
    }
    Ok(())
}

/// An error answer: `{"error", "code", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), retry_after: None }
    }

    /// An error answered before, replayed for a repeated idempotency key.
    pub fn replayed(status: StatusCode, body: ErrorBody) -> Self {
        let message = body.text().unwrap_or_default().to_owned();
        Self { status, code: body.code.unwrap_or_default().into(), message, retry_after: None }
    }

    /// The same error, its message prefixed with where in the request it arose
    /// (`payments[1]: ...`).
    pub fn at(mut self, place: &str) -> Self {
        self.message = format!("{place}: {}", self.message);
        self
    }

    /// Its body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code.clone(), self.message.clone())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert("retry-after", secs.into());
        }
        resp
    }
}

fn router(app: Arc<App>, request_timeout: std::time::Duration) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/agents", post(create_agent).get(list_agents))
        .route("/api/agents/{agent_id}", get(get_agent).patch(patch_agent).delete(delete_agent))
        .route("/api/agents/{agent_id}/sdk-keys", post(create_key).get(list_keys))
        .route("/api/agents/{agent_id}/sdk-keys/{key_id}", axum::routing::delete(revoke_key))
        .route("/api/policies", post(create_policy).get(list_policies))
        .route("/api/policies/{id}", get(get_policy).patch(patch_policy).delete(delete_policy))
        .route("/api/policies/{id}/rules", get(get_rules).put(put_rules).post(add_rule))
        .route("/api/policies/{id}/rules/{rule_id}", axum::routing::delete(delete_rule))
        .route("/api/approval-requests/{id}/{verdict}", post(decide_request))
        .route("/api/budget-requests", get(budget::org_list))
        .route("/api/budget-requests/{id}/{verdict}", post(budget::decide))
        .route("/api/demos/anthropic-shopping/approval-requests/{id}/decision", post(demo_decision))
        .merge(sdk::routes())
        .merge(org::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "conto-local does not serve this route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "this route does not take this method")
        })
        .layer(axum::middleware::from_fn(server_timing))
        // A request whose body never finishes arriving (or any answer taking this long) is
        // answered 408 and its connection's task freed, not held open by a slow client.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, request_timeout))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(app.clone(), rate::headers))
        .with_state(app)
}

/// Every error answer is JSON, as Conto's are: what axum refuses before a handler runs (a body
/// over its size limit, a path segment that is not UTF-8) comes as plain text, and is rewritten
/// here as `{"error", "code", "message"}` with the text as its message, its headers kept.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() { status.canonical_reason().unwrap_or("error") } else { text.trim() };
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::REQUEST_TIMEOUT => "TIMEOUT",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        s if s.is_server_error() => "INTERNAL_ERROR",
        _ => "VALIDATION_ERROR",
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

/// Adds `Server-Timing: app;dur=<milliseconds>` to every successful answer: the handler's time,
/// from routing (the request body read included) to a serialized answer. A client (or the
/// remote benchmark) can then tell the server's share of a round trip from the network's and
/// its own. Refusals (401, 403, 429 and the other errors) carry none: a caller that is not
/// let in learns nothing finer than its own clock tells it.
async fn server_timing(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let start = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let micros = start.elapsed().as_micros();
    if resp.status().is_success()
        && let Ok(v) = HeaderValue::from_str(&format!("app;dur={}.{:03}", micros / 1000, micros % 1000))
    {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

/// The `Authorization: Bearer <key>` of a request (the scheme is case-insensitive, RFC 9110).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    // Exactly one: with two, a proxy in front and this server could each read another key.
    let mut values = headers.get_all("authorization").iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim_start())
}

/// Checks the org key.
pub(crate) fn org(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer(headers).unwrap_or_default();
    if given.starts_with("conto_agent_") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            "org endpoints need the org API key, not an agent SDK key",
        ));
    }
    if bool::from(given.as_bytes().ct_eq(app.org_key.expose_secret().as_bytes())) && !given.is_empty() {
        rate::take(app, rate::ORG, rate::Class::Org, true)
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "AUTH_FAILED", "missing or invalid org API key"))
    }
}

/// Who may use `/api/policies`: the org key for everything; an agent's **admin** SDK key
/// (`keyType: "admin"`) to create, change and delete policies, and any of its SDK keys with
/// `policies:read` to read them, as Conto's agent skill documents. (Conto's docs also say its
/// admin client rejects agent keys; conto-local follows the skill, the client that uses it.)
fn policy_access(app: &App, headers: &HeaderMap, write: bool) -> Result<PolicyCaller, ApiError> {
    let given = bearer(headers).unwrap_or_default();
    if !given.starts_with("conto_agent_") {
        return org(app, headers).map(|()| PolicyCaller::Org);
    }
    let record = lock(&app.store)
        .key(given)?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "AUTH_FAILED", "invalid SDK key"))?;
    // An admin key may do what a reading key may. Reads and writes alike are counted in the
    // agent's reads window; a refused key is shown that window, and not counted in it.
    let allowed = record.key_type == "admin" || (!write && record.scopes.iter().any(|s| s == "policies:read"));
    // Pausing an agent is the org's kill switch: its runtime must not lift the org's limits
    // meanwhile (through an admin key it holds) to spend past them once resumed.
    // (Checked again under the store's lock when the change is made: `may_change`.)
    let paused = if write && allowed { still_active(&lock(&app.store), &record.agent_id).err() } else { None };
    let refused = if record.expired() {
        Some(ApiError::new(StatusCode::UNAUTHORIZED, "EXPIRED_KEY", "the SDK key has expired"))
    } else if paused.is_some() {
        paused
    } else if !allowed {
        Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            if write {
                "changing policies needs the org key or an admin SDK key (keyType \"admin\")"
            } else {
                "reading policies needs the `policies:read` scope"
            },
        ))
    } else {
        None
    };
    rate::take(app, &record.agent_id, rate::Class::Reads, refused.is_none())?;
    match refused {
        Some(refused) => Err(refused),
        None => Ok(PolicyCaller::Agent(record.agent_id)),
    }
}

/// Refuses a policy change through the keys of `agent` while it is paused (`403 AGENT_PAUSED`).
fn still_active(store: &Store, agent: &str) -> Result<(), ApiError> {
    if store.agent(agent)?.is_some_and(|a| a.status == "PAUSED") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AGENT_PAUSED",
            "the agent is paused: its keys cannot change policies until the org resumes it",
        ));
    }
    Ok(())
}

/// A policy's assignment as it is kept and shown: its scope in lower case (matched whatever
/// its case, so a client comparing it with `"all"` reads it right) and each agent id once (in
/// `agentIds` and in `agentPolicies`).
fn tidy_assignment(doc: &mut Policy) {
    if let Some(scope) = &mut doc.scope {
        scope.make_ascii_lowercase();
    }
    if let Some(ids) = &mut doc.agent_ids {
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
    }
    if let Some(links) = &mut doc.agent_policies {
        let mut seen = std::collections::HashSet::new();
        links.retain(|link| link.agent_id.as_ref().is_none_or(|id| seen.insert(id.clone())));
    }
}

/// Who is changing policies: the org, or one agent through its admin SDK key.
enum PolicyCaller {
    Org,
    Agent(String),
}

impl PolicyCaller {
    /// An agent's admin key governs its own agent's policies only: a policy it creates without
    /// `agentIds` is assigned to that agent, and it may not assign, change or delete policies
    /// of other agents (or of every agent). The org key may do anything; a policy it creates
    /// without `agentIds` waits, `scope: "assigned"`, until it is assigned.
    fn scope(&self, store: &Store, doc: &mut Policy) -> Result<(), ApiError> {
        if let PolicyCaller::Agent(agent) = self
            && doc.assigned().next().is_none()
            && doc.scope.is_none()
        {
            doc.agent_ids = Some(vec![agent.clone()]);
        }
        // A policy made through the API binds the agents assigned to it, and no one once they
        // are all taken off (a file's policy without agents binds every agent; this one waits).
        if doc.scope.is_none() {
            doc.scope = Some("assigned".to_owned());
        }
        tidy_assignment(doc);
        self.may_change(store, doc)
    }

    /// Whether this caller may read `doc`.
    fn sees(&self, doc: &Policy) -> bool {
        match self {
            PolicyCaller::Org => true,
            PolicyCaller::Agent(agent) => doc.applies_to(agent),
        }
    }

    /// Whether this caller may change or delete `doc`, asked with the store locked for the
    /// change (so a pause that lands after [`policy_access`] still stops it).
    fn may_change(&self, store: &Store, doc: &Policy) -> Result<(), ApiError> {
        let PolicyCaller::Agent(agent) = self else { return Ok(()) };
        still_active(store, agent)?;
        let own = doc.scope.as_deref().is_none_or(|s| s.eq_ignore_ascii_case("assigned"))
            && doc.assigned().next().is_some()
            && doc.assigned().all(|a| a == agent);
        if own {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "INSUFFICIENT_SCOPE",
                "an agent's admin SDK key manages its own agent's policies only; use the org key for others",
            ))
        }
    }
}

/// Reads a typed JSON body; a field of the wrong type is a 400 that names it.
pub(crate) fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let message = match e.path().to_string().as_str() {
            "." => format!("invalid body: {}", e.inner()),
            path => format!("`{path}`: {}", e.inner()),
        };
        ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    })
}

async fn create_agent(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let body: Agent = json_body(&body)?;
    let name = body
        .name
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`name` is required"))?;
    let (name, description) = agent_text(Some(name), body.description.as_deref())?;
    let name = name.unwrap_or_default();
    let id = match body.id.as_deref() {
        Some(id) => conto_core::ActorId::new(id)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", format!("`id`: {e}")))?
            .to_string(),
        None => format!("agt_{}", random_hex(10)),
    };
    let store = lock(&app.store);
    if store.agent_exists(&id)? {
        return Err(ApiError::new(StatusCode::CONFLICT, "CONFLICT", format!("agent `{id}` exists")));
    }
    if store.agent_retired(&id)? {
        let message = format!("agent id `{id}` belonged to a deleted agent, whose history keeps it: choose another");
        return Err(ApiError::new(StatusCode::CONFLICT, "CONFLICT", message));
    }
    let now = now_text();
    store.all_or_nothing(|| {
        store.add_agent(&id, name, &now)?;
        store.describe_agent(&id, None, description).map(drop)
    })?;
    app.engine.provision(&id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", e.to_string()))?;
    let row = store::AgentRow {
        id,
        name: name.to_owned(),
        status: "ACTIVE".into(),
        created_at: now,
        description: description.map(str::to_owned),
    };
    Ok((StatusCode::CREATED, axum::Json(agent_json(&row))).into_response())
}

fn agent_json(a: &store::AgentRow) -> Agent {
    Agent {
        id: Some(a.id.clone()),
        name: Some(a.name.clone()),
        description: a.description.clone(),
        status: Some(a.status.clone()),
        created_at: Some(a.created_at.clone()),
        ..Agent::default()
    }
}

/// An agent's name (1 to 200 characters, not blank) and description (up to 2 000), checked.
fn agent_text<'a>(
    name: Option<&'a str>,
    description: Option<&'a str>,
) -> Result<(Option<&'a str>, Option<&'a str>), ApiError> {
    let invalid = |message: &str| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message);
    if let Some(name) = name {
        if name.trim().is_empty() {
            return Err(invalid("`name` must not be blank"));
        }
        if name.chars().count() > 200 {
            return Err(invalid("`name` must be at most 200 characters"));
        }
    }
    if description.is_some_and(|d| d.chars().count() > 2_000) {
        return Err(invalid("`description` must be at most 2000 characters"));
    }
    Ok((name, description))
}

fn no_agent(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no agent `{id}`"))
}

/// The store, locked, once `agent_id` is known to exist (`404` otherwise).
fn agent_store<'a>(app: &'a App, agent_id: &str) -> Result<std::sync::MutexGuard<'a, Store>, ApiError> {
    let store = lock(&app.store);
    if !store.agent_exists(agent_id)? {
        return Err(no_agent(agent_id));
    }
    Ok(store)
}

async fn list_agents(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let agents = lock(&app.store).agents()?.iter().map(agent_json).collect();
    Ok(axum::Json(Agents::Wrapped { agents, data: None }).into_response())
}

async fn get_agent(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let row = lock(&app.store).agent(&agent_id)?.ok_or_else(|| no_agent(&agent_id))?;
    Ok(axum::Json(agent_json(&row)).into_response())
}

/// `PATCH /api/agents/{id}` `{"status": "ACTIVE" | "PAUSED", "name", "description"}` (each
/// optional): `status` is the kill switch. A paused agent's next decision is a denial; confirms
/// and records of earlier approvals are still accepted.
async fn patch_agent(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let body: AgentPatch = json_body(&body)?;
    let (name, description) = agent_text(body.name.as_deref(), body.description.as_deref())?;
    // Checked before anything changes, so a refused patch changes nothing.
    let paused = match body.status.as_ref().map(|s| s.as_str()) {
        None => None,
        Some(Some("ACTIVE")) => Some(false),
        Some(Some("PAUSED")) => Some(true),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "`status` must be \"ACTIVE\" or \"PAUSED\"",
            ));
        }
    };
    let store = lock(&app.store);
    let mut row = store.agent(&agent_id)?.ok_or_else(|| no_agent(&agent_id))?;
    if name.is_some() || description.is_some() {
        store.describe_agent(&agent_id, name, description)?;
        row.name = name.map_or(row.name, str::to_owned);
        row.description = description.map(str::to_owned).or(row.description);
    }
    if let Some(paused) = paused {
        let status = if paused { "PAUSED" } else { "ACTIVE" };
        store.set_agent_status(&agent_id, status)?;
        let applied = if paused { app.engine.pause(&agent_id) } else { app.engine.resume(&agent_id) };
        applied.map_err(|e| ApiError::new(StatusCode::CONFLICT, "CONFLICT", e.to_string()))?;
        row.status = status.to_owned();
    }
    Ok(axum::Json(agent_json(&row)).into_response())
}

/// `DELETE /api/agents/{id}`: revokes the agent's keys and retires it; its spend history stays.
async fn delete_agent(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    if !lock(&app.store).delete_agent(&agent_id, &now_text())? {
        return Err(no_agent(&agent_id));
    }
    // This engine keeps no journal (the store is the record): retiring cannot fail here.
    app.engine
        .retire(&agent_id)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string()))?;
    Ok(axum::Json(Deleted { deleted: true, id: agent_id }).into_response())
}

/// `GET /api/agents/{id}/sdk-keys`: the agent's keys, without the secrets.
async fn list_keys(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let store = agent_store(&app, &agent_id)?;
    let keys = store.keys_of(Some(&agent_id))?.into_iter().map(store::KeyRow::listed).collect();
    Ok(axum::Json(SdkKeys::Wrapped { keys }).into_response())
}

/// `DELETE /api/agents/{id}/sdk-keys/{keyId}`: revokes a key (idempotent).
async fn revoke_key(
    State(app): State<Arc<App>>,
    Path((agent_id, key_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    if !lock(&app.store).revoke_key(&agent_id, &key_id, &now_text())? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no key `{key_id}` for agent `{agent_id}`"),
        ));
    }
    Ok(axum::Json(Revoked { revoked: true, id: key_id }).into_response())
}

/// The agent-key scopes Conto names beyond the standard preset (conto-api.md §1): the payment
/// scopes that must be added, and those its older docs name.
const ADDED_SCOPES: &[&str] = &[
    "payments:execute",
    "payments:approve",
    "payments:confirm",
    "payments:status",
    "transactions:write",
    "policies:exceptions",
    "counterparties:write",
    "alerts:write",
    "audit:read",
];

/// What an admin key's "expanded preset" (conto-api.md §1) adds to the standard one: the payment
/// scopes, so that one admin key serves both the payment and the policy commands of Conto's
/// skill (`conto-check.sh` uses one `CONTO_SDK_KEY` for both).
const ADMIN_ADDED_SCOPES: &[&str] = &["payments:approve", "payments:confirm", "payments:execute"];

/// The standard preset (conto-api.md §1).
const STANDARD_SCOPES: &[&str] = &[
    "payments:request",
    "wallets:read",
    "policies:read",
    "transactions:read",
    "counterparties:read",
    "alerts:read",
    "agents:read",
    "analytics:read",
    "network:read",
];

async fn create_key(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let body: SdkKey = json_body(&body)?;
    let store = agent_store(&app, &agent_id)?;
    let name = body.name.clone().unwrap_or_else(|| "sdk key".to_owned());
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`name` must be 1-200 characters"));
    }
    let days = body.expires_in_days.unwrap_or(365);
    if !(1..=730).contains(&days) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`expiresInDays` must be 1-730"));
    }
    let key_type = body.key_type.as_deref().unwrap_or("standard");
    if key_type != "standard" && key_type != "admin" {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`keyType` must be standard or admin"));
    }
    // Scopes asked for are added to the standard preset (conto-api.md §1: approve, confirm and
    // execute "must be added"); a key never has less than the preset. A scope Conto does not
    // name is refused, not stored: a typo would give a key that is refused later, far from it.
    let known = |s: &str| STANDARD_SCOPES.contains(&s) || ADDED_SCOPES.contains(&s);
    if let Some(unknown) = body.scopes.iter().flatten().find(|s| !known(s)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!(
                "`scopes`: unknown scope `{unknown}`; known: {}, {}",
                STANDARD_SCOPES.join(", "),
                ADDED_SCOPES.join(", ")
            ),
        ));
    }
    let mut scopes: Vec<String> = STANDARD_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    if key_type == "admin" {
        scopes.extend(ADMIN_ADDED_SCOPES.iter().map(|s| (*s).to_owned()));
    }
    for scope in body.scopes.iter().flatten() {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    let (id, key, expires_at) = issue_key(&store, &agent_id, &name, key_type, &scopes, days)?;
    let created = SdkKey {
        id: Some(id),
        agent_id: Some(agent_id.clone()),
        key_prefix: Some(key[..20].to_owned()),
        key: Some(key),
        name: Some(name),
        key_type: Some(key_type.to_owned()),
        scopes: Some(scopes),
        expires_at: Some(expires_at),
        message: Some("Store this key now: it is shown only once.".to_owned()),
        ..SdkKey::default()
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// The stored policies plus the limits of every wallet delegation.
fn effective_policies(store: &Store) -> Result<Vec<Policy>, StoreError> {
    let mut all = store.policies()?;
    all.extend(org::wallet_policies(&store.wallets(None)?));
    Ok(all)
}

/// The engine's policy set of these documents, rules conto-local cannot evaluate denying.
fn policy_set(policies: &[Policy]) -> Result<PolicySet, conto_core::PolicyError> {
    PolicySet::from_value_with(Value::Array(policies.iter().map(Policy::to_value).collect()), UnevaluatedRules::Deny)
}

/// [`policy_set`], a bad document refused with `400 VALIDATION_ERROR`.
pub(crate) fn compile(policies: &[Policy]) -> Result<PolicySet, ApiError> {
    policy_set(policies).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", body_message(e)))
}

/// A policy error about one policy sent in a request body, said of that body: its JSON path
/// starts at the policy (`rules[3].ruleType`), not in a policy file's list.
fn body_message(e: conto_core::PolicyError) -> String {
    match e {
        conto_core::PolicyError::Shape { path, message } => {
            let path = path.strip_prefix("[0]").map_or(path.as_str(), |p| p.trim_start_matches('.'));
            if path.is_empty() {
                format!("the policy has the wrong shape: {message}")
            } else {
                format!("the policy has the wrong shape at `{path}`: {message}")
            }
        }
        other => other.to_string(),
    }
}

/// Loads the store's policies into the engine and counts the history again under them (a
/// limit added after spending counts the spend before it, as Conto's counters, read from its
/// transactions, do; and as a restart did). Called holding the store, which every decision
/// also holds: nothing is decided on ledgers being recounted.
fn reload_policies(app: &App, store: &Store) -> Result<(), ApiError> {
    reload_policies_of(app, store, &Affected::All)
}

/// The agents a policy change can move the counts of.
pub(crate) enum Affected {
    /// Every agent (a policy bound to all, a wallet's).
    All,
    /// These agents only.
    Agents(std::collections::BTreeSet<String>),
}

impl Affected {
    /// The agents `doc` binds: all when it applies to every agent.
    fn of(doc: &Policy) -> Self {
        if doc.binds_every_agent() {
            Affected::All
        } else {
            Affected::Agents(doc.assigned().map(str::to_owned).collect())
        }
    }

    fn and(self, other: Affected) -> Self {
        match (self, other) {
            (Affected::Agents(mut a), Affected::Agents(b)) => {
                a.extend(b);
                Affected::Agents(a)
            }
            _ => Affected::All,
        }
    }
}

/// [`reload_policies`], counting again only the ledgers of the agents the change binds:
/// another agent's rules, and so its counters, are the same (counters are named by what they
/// count, not by where their rule sits). One agent's policy edit never recounts the org.
fn reload_policies_of(app: &App, store: &Store, affected: &Affected) -> Result<(), ApiError> {
    reapply(store, &app.engine, compile(&effective_policies(store)?)?, affected)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string()))
}

/// Gives the engine `policies` and counts the store's history again under them, on the
/// ledgers of the `affected` agents, which it forgets first (see [`reload_policies_of`]).
fn reapply(store: &Store, engine: &Engine, policies: PolicySet, affected: &Affected) -> Result<(), LocalError> {
    engine.set_policies(policies);
    match affected {
        Affected::All => {
            engine.forget_ledgers();
            recount(store, engine, None)
        }
        Affected::Agents(agents) => agents.iter().try_for_each(|agent| {
            engine.forget_ledger(agent);
            recount(store, engine, Some(agent))
        }),
    }
}

/// Validates `doc` together with the stored policies, then stores it (rules get ids). Who
/// it applies to is the caller's to decide ([`PolicyCaller::scope`]).
fn save_policy(app: &App, store: &Store, id: &str, mut doc: Policy) -> Result<Policy, ApiError> {
    doc.id = Some(id.to_owned());
    for rule in doc.rules.iter_mut().flatten() {
        rule.id.get_or_insert_with(|| format!("rule_{}", random_hex(6)));
    }
    let mut all: Vec<Policy> = effective_policies(store)?.into_iter().filter(|p| p.id.as_deref() != Some(id)).collect();
    all.push(doc.clone());
    // Refused, what is wrong is said of the document alone (its own paths), when it is the
    // document's; the set is compiled once when nothing is.
    compile(&all).map_err(|e| compile(std::slice::from_ref(&doc)).err().unwrap_or(e))?;
    // Whom it bound before and binds now: only their counts can move.
    let before = store.policies()?.into_iter().find(|p| p.id.as_deref() == Some(id));
    let affected = before.as_ref().map_or(Affected::Agents(Default::default()), Affected::of).and(Affected::of(&doc));
    store.put_policy(id, &doc)?;
    reload_policies_of(app, store, &affected)?;
    Ok(doc)
}

/// Refuses an assignment to an agent that does not exist (it would bind nobody now and,
/// silently, a later agent given that id), naming the entry. Only the assignment a request
/// sends is checked: a policy still naming a deleted agent can be edited otherwise.
fn check_assigned(store: &Store, ids: Option<&[String]>, links: Option<&[AgentLink]>) -> Result<(), ApiError> {
    let ids = ids.into_iter().flatten().enumerate().map(|(i, a)| (format!("agentIds[{i}]"), a));
    let links = links.into_iter().flatten().enumerate();
    let links = links.filter_map(|(i, l)| l.agent_id.as_ref().map(|a| (format!("agentPolicies[{i}].agentId"), a)));
    for (path, agent) in ids.chain(links) {
        if !store.agent_exists(agent)? {
            let message = format!("`{path}`: no agent `{agent}`");
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message));
        }
    }
    Ok(())
}

/// The policy documents of a Conto policy file (validated), in every shape the engine loads:
/// an array, `{"policies": [...]}`, an API answer's `{"data": ...}` (a list, `{"policies"}` or
/// one policy), or one policy object.
fn policy_docs(file: &std::path::Path) -> Result<Vec<Policy>, LocalError> {
    let set_text = std::fs::read_to_string(file)
        .map_err(|e| conto_core::PolicyError::Io { path: file.display().to_string(), message: e.to_string() })?;
    PolicySet::from_json_with(&set_text, UnevaluatedRules::Deny)?;
    let corrupt = |e: serde_json::Error| LocalError::Corrupt(e.to_string());
    let value: serde_json::Value = serde_json::from_str(&set_text).map_err(corrupt)?;
    fn items(value: serde_json::Value) -> Vec<serde_json::Value> {
        match value {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Object(mut map) => match (map.remove("policies"), map.remove("data")) {
                (Some(policies), _) => items(policies),
                (None, Some(data)) => items(data),
                (None, None) => vec![serde_json::Value::Object(map)],
            },
            other => vec![other],
        }
    }
    items(value)
        .into_iter()
        .map(|mut doc| {
            // A rule may name its type under both of Conto's names (the engine checked that
            // they agree): kept under one.
            for rule in doc.get_mut("rules").and_then(|r| r.as_array_mut()).into_iter().flatten() {
                if let Some(rule) = rule.as_object_mut()
                    && rule.contains_key("ruleType")
                {
                    rule.remove("type");
                }
            }
            serde_json::from_value(doc).map_err(corrupt)
        })
        .collect()
}

/// Loads policies from a Conto policy file into the store, skipping names already present.
/// Only while no server runs on `db` ([`LocalError::InUse`] otherwise; use [`Running::preload`]).
pub fn preload(db: Option<&std::path::Path>, file: &std::path::Path) -> Result<usize, LocalError> {
    let docs = policy_docs(file)?;
    preload_into(&open_store(db)?, docs)
}

fn preload_into(store: &Store, docs: Vec<Policy>) -> Result<usize, LocalError> {
    let existing: HashSet<String> = store.policies()?.into_iter().filter_map(|p| p.name).collect();
    let mut added = 0;
    for mut doc in docs {
        if doc.name.as_ref().is_some_and(|n| existing.contains(n)) {
            continue;
        }
        // An empty assignment list binds no one: stored so (`scope: "assigned"`), as a
        // policy stored before it did (every agent, kept by `migrate_policies`) is not.
        if assigned_by_an_empty_list(&doc) {
            doc.scope = Some("assigned".to_owned());
        }
        let id = format!("pol_{}", random_hex(8));
        doc.id = Some(id.clone());
        store.put_policy(&id, &doc)?;
        added += 1;
    }
    Ok(added)
}

/// Creates an agent with a standard SDK key holding every payment scope, if the agent does not
/// exist yet; returns the key.
/// Only while no server runs on `db` ([`LocalError::InUse`] otherwise; use
/// [`Running::bootstrap_agent`]).
pub fn bootstrap_agent(db: Option<&std::path::Path>, agent_id: &str) -> Result<Option<String>, LocalError> {
    bootstrap_into(&open_store(db)?, agent_id)
}

fn bootstrap_into(store: &Store, agent_id: &str) -> Result<Option<String>, LocalError> {
    conto_core::ActorId::new(agent_id)?;
    if store.agent_exists(agent_id)? {
        return Ok(None);
    }
    if store.agent_retired(agent_id)? {
        return Err(LocalError::RetiredAgent(agent_id.to_owned()));
    }
    store.add_agent(agent_id, agent_id, &now_text())?;
    let mut scopes: Vec<String> = STANDARD_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    scopes.extend(["payments:approve", "payments:confirm", "payments:execute"].map(str::to_owned));
    // A standard key with every payment scope: never an admin key, which could change the
    // agent's own policies (the runtime that pays must not be able to lift its own limits).
    let (_, key, _) = issue_key(store, agent_id, "bootstrap", "standard", &scopes, 365)?;
    Ok(Some(key))
}

/// Creates and stores an SDK key (`conto_agent_` + 64 hex); returns its id, the key (shown
/// once) and its expiry.
fn issue_key(
    store: &Store,
    agent_id: &str,
    name: &str,
    key_type: &str,
    scopes: &[String],
    days: i64,
) -> Result<(String, String, String), StoreError> {
    let key = format!("conto_agent_{}", random_hex(32));
    let id = format!("key_{}", random_hex(8));
    let expires_at =
        iso(Timestamp::now().saturating_add(SignedDuration::from_hours(24 * days)).unwrap_or(Timestamp::MAX));
    store.add_key(&id, agent_id, &key, name, key_type, scopes, &expires_at, &now_text())?;
    Ok((id, key, expires_at))
}

/// A policy as the org API shows it: Conto's defaults filled in where the stored document
/// leaves them out (`isActive: true`, `priority: 50`), and its assignments also in the list
/// view's long form, `agentPolicies: [{agentId, policyId}]` (conto-api.md §7.1; left out for a
/// policy assigned by `scope` alone, which an empty list would misstate). The stored document
/// is left as sent.
pub(crate) fn shown(mut doc: Policy) -> Policy {
    doc.is_active.get_or_insert(Value::Bool(true));
    doc.priority.get_or_insert(Value::from(50));
    if doc.agent_policies.is_none() && doc.agent_ids.as_ref().is_some_and(|ids| !ids.is_empty()) {
        let links = doc.agent_ids.iter().flatten().map(|agent| AgentLink {
            agent_id: Some(agent.clone()),
            extra: doc.id.iter().map(|id| ("policyId".to_owned(), Value::String(id.clone()))).collect(),
        });
        doc.agent_policies = Some(links.collect());
    }
    doc
}

async fn create_policy(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, true)?;
    let mut doc: Policy = json_body(&body)?;
    let store = lock(&app.store);
    caller.scope(&store, &mut doc)?;
    let id = format!("pol_{}", random_hex(8));
    check_assigned(&store, doc.agent_ids.as_deref(), doc.agent_policies.as_deref())?;
    let doc = save_policy(&app, &store, &id, doc)?;
    Ok((StatusCode::CREATED, axum::Json(shown(doc))).into_response())
}

async fn list_policies(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, false)?;
    let all = lock(&app.store).policies()?;
    // An agent's key sees the policies that apply to its agent, never other agents'.
    let visible = all.into_iter().filter(|p| caller.sees(p)).map(shown).collect();
    Ok(axum::Json(Policies::new(visible)).into_response())
}

fn find_policy(store: &Store, id: &str) -> Result<Policy, ApiError> {
    store
        .policies()?
        .into_iter()
        .find(|p| p.id.as_deref() == Some(id))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no policy `{id}`")))
}

async fn get_policy(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, false)?;
    let doc = find_policy(&lock(&app.store), &id)?;
    if !caller.sees(&doc) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no policy `{id}`")));
    }
    Ok(axum::Json(shown(doc)).into_response())
}

/// `PATCH /api/policies/{id}`: the fields given replace the stored ones (`agentIds` assigns).
async fn patch_policy(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, true)?;
    let patch: Policy = json_body(&body)?;
    let store = lock(&app.store);
    let doc = find_policy(&store, &id)?;
    caller.may_change(&store, &doc)?;
    let mut merged = doc.clone();
    let Policy {
        id: _,
        name,
        policy_type,
        priority,
        is_active,
        agent_ids,
        agent_policies,
        scope,
        timezone,
        rules,
        extra,
    } = patch;
    check_assigned(&store, agent_ids.as_deref(), agent_policies.as_deref())?;
    let assigns = agent_ids.is_some() || agent_policies.is_some();
    merged.name = name.or(doc.name);
    merged.policy_type = policy_type.or(doc.policy_type);
    merged.priority = priority.or(doc.priority);
    merged.is_active = is_active.or(doc.is_active);
    // New `agentIds` replace the assignment whole: long-form links (`agentPolicies`, as a read
    // shows them and a client may send back with its edit) are dropped with them.
    if agent_ids.is_some() {
        merged.agent_policies = None;
    } else {
        merged.agent_policies = agent_policies.or(doc.agent_policies);
    }
    merged.agent_ids = agent_ids.or(doc.agent_ids);
    merged.scope = scope.or(doc.scope);
    // Assigned through the API, it binds its agents only: all taken off, it binds no one (a
    // policy without scope and agents, as a file writes it, would bind every agent).
    if assigns && merged.scope.is_none() {
        merged.scope = Some("assigned".to_owned());
    }
    tidy_assignment(&mut merged);
    merged.timezone = timezone.or(doc.timezone);
    merged.rules = rules.or(doc.rules);
    merged.extra.extend(extra);
    caller.may_change(&store, &merged)?;
    Ok(axum::Json(shown(save_policy(&app, &store, &id, merged)?)).into_response())
}

async fn delete_policy(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, true)?;
    let store = lock(&app.store);
    let doc = find_policy(&store, &id)?;
    caller.may_change(&store, &doc)?;
    if !store.delete_policy(&id)? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no policy `{id}`")));
    }
    reload_policies_of(&app, &store, &Affected::of(&doc))?;
    // A body, as every other delete here answers: Conto's skill prints what it gets back.
    Ok(axum::Json(Deleted { deleted: true, id }).into_response())
}

async fn get_rules(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, false)?;
    let doc = find_policy(&lock(&app.store), &id)?;
    if !caller.sees(&doc) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no policy `{id}`")));
    }
    Ok(axum::Json(Rules { rules: doc.rules.unwrap_or_default() }).into_response())
}

/// `PUT /api/policies/{id}/rules` `{rules}`: replaces every rule.
async fn put_rules(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, true)?;
    #[derive(serde::Deserialize)]
    struct Replace {
        rules: Option<Vec<Rule>>,
    }
    let body: Replace = json_body(&body)?;
    let rules =
        body.rules.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`rules` is required"))?;
    let store = lock(&app.store);
    let mut doc = find_policy(&store, &id)?;
    caller.may_change(&store, &doc)?;
    doc.rules = Some(rules);
    let doc = save_policy(&app, &store, &id, doc)?;
    Ok(axum::Json(Rules { rules: doc.rules.unwrap_or_default() }).into_response())
}

async fn add_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, true)?;
    let rule: Rule = json_body(&body)?;
    let store = lock(&app.store);
    let mut doc = find_policy(&store, &id)?;
    caller.may_change(&store, &doc)?;
    doc.rules.get_or_insert_with(Vec::new).push(rule);
    let doc = save_policy(&app, &store, &id, doc)?;
    let added = doc.rules.and_then(|r| r.last().cloned()).unwrap_or_default();
    Ok((StatusCode::CREATED, axum::Json(added)).into_response())
}

async fn delete_rule(
    State(app): State<Arc<App>>,
    Path((id, rule_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = policy_access(&app, &headers, true)?;
    let store = lock(&app.store);
    let mut doc = find_policy(&store, &id)?;
    caller.may_change(&store, &doc)?;
    let no_rule = || ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no rule `{rule_id}`"));
    let rules = doc.rules.as_mut().ok_or_else(no_rule)?;
    let before = rules.len();
    rules.retain(|r| r.id.as_deref() != Some(rule_id.as_str()));
    if rules.len() == before {
        return Err(no_rule());
    }
    save_policy(&app, &store, &id, doc)?;
    Ok(axum::Json(Deleted { deleted: true, id: rule_id }).into_response())
}

async fn decide_request(
    State(app): State<Arc<App>>,
    Path((id, verdict)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let approve = match verdict.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "use /approve or /reject")),
    };
    sdk::decide_request(&app, &id, approve).map(|v| axum::Json(v).into_response())
}

/// The owner's decision as Conto's shopping starter sends it (org key): `{"decision":
/// "APPROVED" | "REJECTED", "paymentRequestId"?, "checkoutId"?, "cartFingerprint"?}`. The answer
/// names the request's `finalStatus`: `REJECTED` when the owner approved but the re-check that
/// follows denied it (the starter then must not take the payment). A `paymentRequestId` that
/// is not the one this approval request holds is refused, before anything is decided.
async fn demo_decision(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct DemoDecision {
        decision: String,
        #[serde(default)]
        payment_request_id: Option<String>,
    }
    org(&app, &headers)?;
    let body: DemoDecision = json_body(&body)?;
    let approve = match body.decision.as_str() {
        "APPROVED" => true,
        "REJECTED" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                format!("`decision` must be APPROVED or REJECTED, not `{other}`"),
            ));
        }
    };
    if let Some(payment_request) = body.payment_request_id.filter(|p| !p.is_empty()) {
        let store = lock(&app.store);
        let request = store.request(&id)?;
        let held = match &request {
            Some(r) => store.payment_request(&payment_request, &r.agent_id)?.and_then(|(_, apr, ..)| apr),
            None => None,
        };
        if request.is_some() && held.as_deref() != Some(id.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                format!("payment request `{payment_request}` is not held by approval request `{id}`"),
            ));
        }
    }
    let answer = sdk::decide_request(&app, &id, approve)?;
    Ok(axum::Json(serde_json::json!({
        "approvalRequestId": answer.approval_request_id,
        "status": answer.status,
        "finalStatus": answer.status,
        "reasons": answer.reasons,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use conto_core::jiff::{SignedDuration, Timestamp};
    use secrecy::{ExposeSecret, SecretString};

    use super::Tokens;

    /// Every approval conto-local gives keeps its token in memory for replays; lapsed ones are
    /// swept (and their room given back), so a server that gave a million approvals keeps only
    /// the live ones' tokens.
    #[test]
    fn approval_tokens_are_kept_until_their_approval_lapses_and_no_longer() {
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(24 * 365 * 50);
        let at = |mins: i64| t0 + SignedDuration::from_mins(mins);
        let mut tokens = Tokens::default();
        tokens.keep("live".into(), SecretString::from("tok_live"), at(60), t0);
        tokens.keep("lapsing".into(), SecretString::from("tok_lapsing"), at(5), t0);
        assert_eq!(tokens.get("live", t0).map(|t| t.expose_secret().to_owned()).as_deref(), Some("tok_live"));
        assert!(tokens.get("lapsing", at(4)).is_some());
        assert!(tokens.get("lapsing", at(5)).is_none(), "a lapsed approval's token is never given again");
        // A burst of approvals, all live at once: every token is kept.
        for i in 0..100_000 {
            tokens.keep(format!("burst-{i}"), SecretString::from("tok"), at(10), at(1));
        }
        assert_eq!(tokens.len(), 100_002);
        // Once they lapse, the next approvals sweep them out (when the map has doubled since
        // the last sweep) and give their room back.
        for i in 0..40_000 {
            tokens.keep(format!("later-{i}"), SecretString::from("tok"), at(30), at(20));
        }
        assert_eq!(tokens.len(), 40_001, "the lapsed are swept, the live kept");
        assert!(tokens.kept.capacity() <= 4 * 40_001, "and their room given back: {}", tokens.kept.capacity());
        assert!(tokens.get("live", at(20)).is_some(), "a live one survives every sweep");
    }
}
