//! Parses `#[paid_action(...)]`'s arguments into typed parts. Every error points at the token
//! that caused it.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitBool, LitStr, Path, Token, parenthesized};

/// The argument names, in the order the docs list them.
pub(crate) const ARGUMENTS: &[&str] = &[
    "amount",
    "recipient",
    "rail",
    "actor",
    "conto",
    "category",
    "purpose",
    "recipient_name",
    "context",
    "idempotency_key",
    "settled_amount",
    "reference",
    "on_approval",
    "approval",
    "check_send",
    "crate",
];

/// The rails and their fields: (name, required fields, optional fields).
pub(crate) const RAILS: &[(&str, &[&str], &[&str])] = &[
    ("transfer", &["chain_id", "sender"], &[]),
    ("x402", &["resource_url"], &["service_domain", "facilitator", "scheme"]),
    ("mpp", &["resource_url"], &["service_domain", "session_id", "intent", "deposit", "method"]),
    ("card", &["merchant"], &["mcc", "card_id"]),
    ("request", &[], &["wallet_id"]),
];

/// `rail = x402(resource_url = url, ...)`.
pub(crate) struct RailArg {
    pub kind: Ident,
    pub fields: Vec<(Ident, Expr)>,
}

/// `on_approval = reject` or `on_approval = wait(bound)`.
pub(crate) enum ApprovalArg {
    Reject,
    Wait(Expr),
}

/// All arguments, each at most once.
#[derive(Default)]
pub(crate) struct Args {
    pub amount: Option<Expr>,
    pub recipient: Option<Expr>,
    pub rail: Option<RailArg>,
    pub actor: Option<Expr>,
    pub conto: Option<Expr>,
    /// Set when the handle was given under its deprecated name, `authorizer`.
    pub deprecated_authorizer: Option<Ident>,
    pub category: Option<Expr>,
    pub purpose: Option<Expr>,
    pub recipient_name: Option<Expr>,
    pub context: Option<Expr>,
    pub idempotency_key: Option<Expr>,
    pub settled_amount: Option<Expr>,
    pub reference: Option<Expr>,
    pub on_approval: Option<ApprovalArg>,
    /// `approval = ident`: the body sees the authorization under this name.
    pub approval: Option<Ident>,
    /// `check_send = true`: the body's future must be `Send`, checked at compile time.
    pub check_send: Option<LitBool>,
    pub krate: Option<Path>,
}

/// The closest known name to `name`, if one is close enough to be a typo.
pub(crate) fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn unknown(kind: &str, ident: &Ident, known: &[&str]) -> syn::Error {
    let name = ident.unraw().to_string();
    let mut msg = match kind.split_once(' ') {
        Some((what, rest)) => format!("unknown {what} `{name}` {rest}"),
        None => format!("unknown {kind} `{name}`"),
    };
    match suggest(&name, known.iter().copied()) {
        Some(s) => msg.push_str(&format!("; did you mean `{s}`?")),
        None => msg.push_str(&format!("; expected one of: {}", known.join(", "))),
    }
    syn::Error::new(ident.span(), msg)
}

impl Parse for RailArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let kind: Ident = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a rail: `transfer(..)`, `x402(..)`, `mpp(..)`, `card(..)` or `request(..)`",
            )
        })?;
        let Some((_, required, optional)) = RAILS.iter().find(|(n, _, _)| kind == *n) else {
            let names: Vec<&str> = RAILS.iter().map(|(n, _, _)| *n).collect();
            return Err(unknown("rail", &kind, &names));
        };
        let content;
        parenthesized!(content in input);
        let fields: Punctuated<FieldArg, Token![,]> = content.parse_terminated(FieldArg::parse, Token![,])?;
        let mut out: Vec<(Ident, Expr)> = Vec::new();
        let mut errors: Option<syn::Error> = None;
        let mut push = |e: syn::Error| match &mut errors {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        };
        let known: Vec<&str> = required.iter().chain(optional.iter()).copied().collect();
        for FieldArg { name, value } in fields {
            if !known.iter().any(|k| name == k) {
                push(unknown(&format!("field for the `{kind}` rail"), &name, &known));
            } else if out.iter().any(|(n, _)| *n == name) {
                push(syn::Error::new(name.span(), format!("duplicate field `{name}`")));
            } else {
                out.push((name, value));
            }
        }
        for r in *required {
            if !out.iter().any(|(n, _)| n == r) {
                push(syn::Error::new(kind.span(), format!("the `{kind}` rail needs `{r} = ...`")));
            }
        }
        match errors {
            Some(e) => Err(e),
            None => Ok(RailArg { kind, fields: out }),
        }
    }
}

struct FieldArg {
    name: Ident,
    value: Expr,
}

impl Parse for FieldArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name = Ident::parse_any(input)?;
        input.parse::<Token![=]>()?;
        Ok(FieldArg { name, value: input.parse()? })
    }
}

impl Parse for ApprovalArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mode = Ident::parse_any(input)
            .map_err(|e| syn::Error::new(e.span(), "expected `reject` or `wait(<seconds or Duration>)`"))?;
        if mode == "reject" {
            return Ok(ApprovalArg::Reject);
        }
        if mode == "wait" {
            if !input.peek(syn::token::Paren) {
                return Err(syn::Error::new(
                    mode.span(),
                    "`wait` needs a bound: `wait(30)` (seconds) or `wait(Duration::from_secs(30))`",
                ));
            }
            let content;
            parenthesized!(content in input);
            return Ok(ApprovalArg::Wait(content.parse()?));
        }
        let mut msg = format!("unknown approval mode `{mode}`; expected `reject` or `wait(<seconds or Duration>)`");
        if let Some(s) = suggest(&mode.to_string(), ["reject", "wait"]) {
            msg = format!("unknown approval mode `{mode}`; did you mean `{s}`?");
        }
        Err(syn::Error::new(mode.span(), msg))
    }
}

fn parse_crate_path(input: ParseStream<'_>) -> syn::Result<Path> {
    let bad = |span: Span| {
        syn::Error::new(
            span,
            "expected a path to the conto crate, like `crate = ::conto` or `crate = \"my_facade::conto\"`",
        )
    };
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return lit.parse_with(Path::parse_mod_style).map_err(|_| bad(lit.span()));
    }
    let fork = input.fork();
    match fork.call(Path::parse_mod_style) {
        Ok(_) => input.call(Path::parse_mod_style),
        Err(_) => {
            let span = input.span();
            // Consume the bad value so parsing can report every other error too.
            let _: Expr = input.parse().map_err(|_| bad(span))?;
            Err(bad(span))
        }
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors: Option<syn::Error> = None;
        let mut seen: Vec<String> = Vec::new();
        let push = |errors: &mut Option<syn::Error>, e: syn::Error| match errors {
            Some(all) => all.combine(e),
            None => *errors = Some(e),
        };
        while !input.is_empty() {
            let key = Ident::parse_any(input)?;
            let mut name = key.unraw().to_string();
            if name == "authorizer" {
                // The old name of `conto`, kept as a deprecated alias.
                args.deprecated_authorizer = Some(key.clone());
                name = "conto".to_owned();
            }
            if !input.peek(Token![=]) {
                let hint = if ARGUMENTS.contains(&name.as_str()) {
                    format!("`{name}` needs a value: `{name} = ...`")
                } else {
                    unknown("argument", &key, ARGUMENTS).to_string()
                };
                return Err(syn::Error::new(key.span(), hint));
            }
            input.parse::<Token![=]>()?;
            let result: syn::Result<()> = (|| {
                match name.as_str() {
                    "rail" => args.rail = Some(input.parse()?),
                    "on_approval" => args.on_approval = Some(input.parse()?),
                    "crate" => args.krate = Some(parse_crate_path(input)?),
                    "approval" => {
                        args.approval = Some(input.parse().map_err(|e: syn::Error| {
                            syn::Error::new(
                                e.span(),
                                "`approval` names a variable for the body: `approval = auth`, then `auth.id`, \
                                 `auth.amount`, `auth.limits` in the body",
                            )
                        })?)
                    }
                    "check_send" => {
                        args.check_send = Some(input.parse().map_err(|e: syn::Error| {
                            syn::Error::new(e.span(), "`check_send` takes `true` or `false`")
                        })?)
                    }
                    _ => {
                        let value: Expr = input.parse()?;
                        let slot = match name.as_str() {
                            "amount" => &mut args.amount,
                            "recipient" => &mut args.recipient,
                            "actor" => &mut args.actor,
                            "conto" => &mut args.conto,
                            "category" => &mut args.category,
                            "purpose" => &mut args.purpose,
                            "recipient_name" => &mut args.recipient_name,
                            "context" => &mut args.context,
                            "idempotency_key" => &mut args.idempotency_key,
                            "settled_amount" => &mut args.settled_amount,
                            "reference" => &mut args.reference,
                            _ => return Err(unknown("argument", &key, ARGUMENTS)),
                        };
                        *slot = Some(value);
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                push(&mut errors, e);
                // Skip to the next argument so that later mistakes are reported too.
                while !input.is_empty() && !input.peek(Token![,]) {
                    input.parse::<proc_macro2::TokenTree>()?;
                }
            } else if seen.contains(&name) {
                push(&mut errors, syn::Error::new(key.span(), format!("duplicate argument `{name}`")));
            }
            seen.push(name);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        match errors {
            Some(e) => Err(e),
            None => Ok(args),
        }
    }
}

/// A span for errors about a value that is missing altogether.
pub(crate) fn missing(name: &str, span: Span, example: &str) -> syn::Error {
    syn::Error::new(span, format!("#[paid_action] needs `{name} = ...`, e.g. `{example}`"))
}

/// The span of an expression, for `quote_spanned!`.
pub(crate) fn span_of(e: &Expr) -> Span {
    e.span()
}
