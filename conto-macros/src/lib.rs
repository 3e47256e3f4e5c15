//! The `#[paid_action]` attribute of conto-rs. Use it through the `conto` crate.
#![deny(missing_docs)]

mod args;
mod expand;

use proc_macro::TokenStream;
use quote::ToTokens;

/// Guards an existing async settlement function with Conto's spend controls.
///
/// Before the body runs, the payment is authorized; a denial or a pending human approval
/// returns `Err(E::from(rejection))` and **the body never runs**. When the body returns `Ok`,
/// the settled spend is recorded; when it returns `Err`, or its future is dropped mid-way, the
/// approval is released. A call whose future a client can drop (from an HTTP handler, which
/// its client's hang-up cancels) should not be dropped once money may have moved: put the
/// route behind the tower layer (which finishes a request its client left), or
/// `tokio::spawn` the call.
///
/// ```ignore
/// use conto::{paid_action, Rejection};
///
/// #[paid_action(
///     amount = price,                                   // any expression over the arguments
///     recipient = provider,
///     rail = x402(resource_url = url),
///     actor = "agent-1",
///     conto = self.conto,                               // or omit: conto::install_default
///     approval = auth,                                  // the body sees `auth: conto::Authorization`
///     category = "API_PROVIDER",
///     settled_amount = |r| r.charged,                   // from the Ok value; default: the approved amount
///     reference = |r| r.tx_hash.clone(),
///     on_approval = wait(30),                           // or `reject` (the default)
/// )]
/// async fn buy(&self, url: &str, provider: &str, price: Decimal) -> Result<Receipt, PayError> {
///     self.wallet.pay(url, provider, price).await
/// }
/// ```
///
/// # Arguments
///
/// | argument | value | required |
/// |---|---|---|
/// | `amount` | `Amount`, `Decimal`, a decimal string or an integer | yes |
/// | `rail` | `transfer(chain_id, sender)`, `x402(resource_url, service_domain?, facilitator?, scheme?)`, `mpp(resource_url, service_domain?, session_id?, intent?, deposit?, method?)`, `card(merchant, mcc?, card_id?)` | yes |
/// | `recipient` | the recipient address (`&str`, `String`) | for transfer, x402, mpp |
/// | `actor` | the Conto agent that pays (text, or an `Option` of text: one given that is `None` at run time is refused as missing, never paid by the default actor) | unless the handle has a default actor |
/// | `conto` | the `Conto` handle (or `&Conto`, `Arc<Conto>`): `self.conto`, an argument… (`authorizer` is its deprecated old name) | unless `conto::install_default` was called |
/// | `category`, `purpose`, `recipient_name` | text | no |
/// | `idempotency_key` | text: names one payment. A second call under it while the first is under way, or (within a day) after it settled, is refused (`IntentError::IdempotencyKeyUsed`) and its body does not run; after a denial or a failed settlement it may be tried again | no |
/// | `context` | a JSON object (`serde_json::Value`) | no |
/// | `settled_amount` | a closure `\|ok: &T\| amount` | no |
/// | `reference` | a closure `\|ok: &T\| text` (the tx hash) | for transfer (Conto confirms a transfer by its hash: a warning without it) |
/// | `on_approval` | `reject`, or `wait(seconds or Duration)` | no |
/// | `approval` | a name: the body sees the approval's `conto::Authorization` (id, token, amount, limits, expiry) under it | no |
/// | `check_send` | `true`: a compile error, at the function's name, when the body's future is not `Send` (as axum's `debug_handler`) | no |
/// | `crate` | the path to the `conto` crate, if renamed | no |
///
/// An x402/MPP `service_domain` must name `resource_url`'s host or a domain above it (checked
/// on each call); the service policies check is always the host. An MPP `deposit` larger than
/// `amount` is what is approved and held (`conto::PaymentIntent::exposure`).
///
/// Argument expressions are evaluated by reference before the body runs, in the function's
/// scope, on every call; the settlement extractors see only the `Ok` value. Each call site
/// keeps, per thread, the intent its last arguments made: a call whose arguments are all the
/// same (compared as text, amount and rail, with the handle's default actor) gets a copy with
/// a fresh idempotency key instead of a new validation; any difference is validated anew.
///
/// # What it expands to
///
/// The signature is kept verbatim. The body becomes, in outline:
///
/// ```ignore
/// async fn buy(&self, url: &str, provider: &str, price: Decimal) -> Result<Receipt, PayError> {
///     let conto = (self.conto).clone();                                   // the `conto` argument
///     let intent = /* amount, rail, recipient, actor, ... */;            // invalid → Err(E::from(rejection))
///     match conto.run(
///         intent,
///         move |_authorization| async move { /* the original body */ },
///         |ok| Settlement { amount: /* settled_amount(ok) */, reference: /* reference(ok) */ },
///     ).await {
///         Ok(outcome) => outcome,                                         // the body ran
///         Err(rejection) => Err(PayError::from(rejection)),               // it did not
///     }
/// }
/// ```
///
/// `run` is `conto::Conto::run`, the same pipeline the tower layer uses. The returned future
/// is `Send` whenever the body's future is. Inner attributes (`#![allow(..)]`) stay at the top
/// of the function; without a `conto = ...` and without an installed default, every call is
/// refused with `RejectionKind::NotConfigured` (source `not_configured`), which says what to do.
#[proc_macro_attribute]
pub fn paid_action(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.clone().into();
    let parsed_args = syn::parse::<args::Args>(args);
    let parsed_item = parse_item(item);
    let result = match (parsed_args, parsed_item) {
        (Ok(args), Ok(item)) => expand::expand(args, item),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            Err(a)
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match result {
        Ok(tokens) => tokens.into(),
        // Keep the original item so that IDEs and other errors keep working.
        // (Its arguments are used by the attribute, so silence "unused variable" noise.)
        Err(e) => {
            let mut out = quote::quote!(#[allow(unused_variables)]);
            out.extend(item2);
            out.extend(e.to_compile_error());
            out.into()
        }
    }
}

fn parse_item(item: TokenStream) -> syn::Result<syn::ItemFn> {
    if let Ok(f) = syn::parse::<syn::ItemFn>(item.clone()) {
        return Ok(f);
    }
    if let Ok(f) = syn::parse::<syn::TraitItemFn>(item.clone())
        && f.default.is_none()
    {
        return Err(syn::Error::new_spanned(
            f.semi_token.map_or_else(|| f.sig.to_token_stream(), |s| s.to_token_stream()),
            "#[paid_action] needs a function body: put it on the method in the `impl` block, \
             not on the trait's declaration",
        ));
    }
    let item = syn::parse::<syn::Item>(item)?;
    let (what, span) = match &item {
        syn::Item::Struct(s) => ("a struct", s.struct_token.span),
        syn::Item::Enum(e) => ("an enum", e.enum_token.span),
        syn::Item::Const(c) => ("a const", c.const_token.span),
        syn::Item::Static(s) => ("a static", s.static_token.span),
        syn::Item::Impl(i) => ("an impl block", i.impl_token.span),
        syn::Item::Trait(t) => ("a trait", t.trait_token.span),
        _ => ("this item", proc_macro2::Span::call_site()),
    };
    Err(syn::Error::new(span, format!("#[paid_action] applies to async functions and methods, not to {what}")))
}
