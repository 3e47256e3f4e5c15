//! Expands `#[paid_action]` into a call of the conto-core pipeline. The user's signature is kept
//! verbatim; the body runs as an inner `async move` block, so `?` and `return` inside it cannot
//! skip the record or release that follows.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{AttrStyle, Expr, GenericArgument, ItemFn, PathArguments, ReturnType, Token, Type};

use crate::args::{ApprovalArg, Args, missing, span_of};

/// The `T` and `E` of a `Result<T, E>` return type (`E` absent for one-parameter aliases).
struct ResultType<'a> {
    full: &'a Type,
    error: Option<&'a Type>,
}

fn result_type(sig: &syn::Signature) -> syn::Result<ResultType<'_>> {
    let not_result = |span: Span| {
        syn::Error::new(
            span,
            "#[paid_action] functions must return `Result<T, E>` with `E: From<conto::Rejection>`, \
             so that a denial can be returned without running the body",
        )
    };
    let ty = match &sig.output {
        ReturnType::Default => return Err(not_result(sig.paren_token.span.close())),
        ReturnType::Type(_, ty) => ty.as_ref(),
    };
    let Type::Path(path) = ty else { return Err(not_result(ty.span())) };
    let Some(last) = path.path.segments.last() else { return Err(not_result(ty.span())) };
    if last.ident != "Result" {
        return Err(not_result(ty.span()));
    }
    let error = match &last.arguments {
        PathArguments::AngleBracketed(a) => {
            a.args.iter().filter_map(|g| if let GenericArgument::Type(t) = g { Some(t) } else { None }).nth(1)
        }
        _ => None,
    };
    Ok(ResultType { full: ty, error })
}

/// Replaces every `impl Trait` in a type with `_`, so the type can annotate a `let` (the
/// fake return edge): `Result<impl Display, E>` becomes `Result<_, E>`.
struct EraseImplTrait;

impl VisitMut for EraseImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(it) = ty {
            *ty = Type::Infer(syn::TypeInfer { underscore_token: Token![_](it.impl_token.span) });
            return;
        }
        visit_mut::visit_type_mut(self, ty);
    }
}

pub(crate) fn expand(args: Args, item: ItemFn) -> syn::Result<TokenStream> {
    let mut errors: Vec<syn::Error> = Vec::new();
    if item.sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            item.sig.fn_token.span,
            "#[paid_action] needs an `async fn`: the settlement runs as a future between authorize and record",
        ));
    }
    let result = match result_type(&item.sig) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let call_site = Span::call_site();
    if args.amount.is_none() {
        errors.push(missing("amount", call_site, "amount = price"));
    }
    if args.rail.is_none() {
        errors.push(missing("rail", call_site, "rail = x402(resource_url = url)"));
    }
    if let Some(e) = errors.into_iter().reduce(|mut a, b| {
        a.combine(b);
        a
    }) {
        return Err(e);
    }
    let (Some(result), Some(amount), Some(rail)) = (result, &args.amount, &args.rail) else {
        unreachable!("errors returned above");
    };

    let k = match &args.krate {
        Some(path) => quote!(#path),
        None => quote!(::conto),
    };
    let p = quote!(#k::__private);

    // Rejections become the user's error type; with `E` known, every conversion is spanned at
    // it, so a missing `From<Rejection>` is reported once, at the user's error type.
    let into_error = match result.error {
        Some(e) => quote_spanned! {e.span()=> #p::rejection_into::<#e> },
        None => quote!(::core::convert::From::from),
    };

    let handle = match &args.conto {
        Some(expr) => {
            let span = span_of(expr);
            quote_spanned! {span=>
                ::core::result::Result::<_, #k::Rejection>::Ok(#p::ContoSource::conto_handle(&(#expr)))
            }
        }
        None => quote!(#p::default_conto()),
    };
    // `authorizer = ...` still works, with a deprecation warning at the old name.
    let deprecated = args.deprecated_authorizer.as_ref().map(|old| {
        let name = syn::Ident::new("authorizer", old.span());
        quote_spanned! {old.span()=>
            {
                #[deprecated(note = "#[paid_action]'s `authorizer = ...` is now `conto = ...` (it takes a `conto::Conto`)")]
                #[allow(non_upper_case_globals)]
                const #name: () = ();
                let () = #name;
            }
        }
    });

    // Conto confirms a transfer by its transaction hash: without one, the spend of a transfer
    // that settled cannot be recorded there (its record goes to the dead records). A warning
    // where the rail is written, not an error: the embedded engine needs none.
    let unreferenced = (rail.kind == "transfer" && args.reference.is_none()).then(|| {
        let name = syn::Ident::new("transfer_without_reference", rail.kind.span());
        quote_spanned! {rail.kind.span()=>
            {
                #[deprecated(note = "a transfer is confirmed by its transaction hash: add `reference = |ok: &T| tx_hash` \
                    (without it, Conto and conto-local cannot record the settled spend)")]
                #[allow(non_upper_case_globals)]
                const #name: () = ();
                let () = #name;
            }
        }
    });

    let amount_span = span_of(amount);
    let amount_tokens = match amount {
        // A literal amount is read once per call site, on the first call, by the same rules
        // as any other (a bad one is still a typed rejection); later calls copy it.
        Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. }) => quote_spanned! {amount_span=>
            {
                static __CONTO_AMOUNT: #p::OnceLock<#p::AmountRead> = #p::OnceLock::new();
                ::core::clone::Clone::clone(__CONTO_AMOUNT.get_or_init(|| #p::amount(&#lit)))
            }
        },
        _ => quote_spanned! {amount_span=> #p::amount(&(#amount)) },
    };

    // Every text argument is bound first, borrowed (a temporary lives to the end of the block
    // that builds the intent), then read as `Option<&str>` where the user wrote it.
    let mut bindings = Vec::new();
    let mut text_ref = |e: &Expr| {
        let span = span_of(e);
        let name = syn::Ident::new(&format!("__conto_arg{}", bindings.len()), Span::mixed_site().located_at(span));
        bindings.push(quote_spanned! {span=> let #name = &(#e); });
        quote_spanned! {span=> #p::text(#name) }
    };
    let rail_kind = rail.kind.to_string();
    let field = |name: &str| rail.fields.iter().find(|(n, _)| n == name).map(|(_, e)| e);
    let rail_new = match rail_kind.as_str() {
        "transfer" => {
            let chain = field("chain_id").expect("required by the parser");
            let sender = text_ref(field("sender").expect("required by the parser"));
            quote!(#p::RailParts::transfer(#chain, #sender))
        }
        "x402" | "mpp" => {
            let url = text_ref(field("resource_url").expect("required by the parser"));
            let ctor = syn::Ident::new(&rail_kind, rail.kind.span());
            quote!(#p::RailParts::#ctor(#url))
        }
        "request" => quote!(#p::RailParts::request()),
        _ => {
            let merchant = text_ref(field("merchant").expect("required by the parser"));
            quote!(#p::RailParts::card(#merchant))
        }
    };
    let mut rail_fields = Vec::new();
    for (name, expr) in &rail.fields {
        let n = name.to_string();
        if matches!(n.as_str(), "chain_id" | "sender" | "resource_url" | "merchant") {
            continue;
        }
        rail_fields.push(if n == "deposit" {
            let span = span_of(expr);
            quote_spanned! {span=> #p::RailField::deposit(&(#expr)) }
        } else {
            let value = text_ref(expr);
            quote!(#p::RailField::text(#n, #value))
        });
    }

    let mut text_field = |name: &str, e: &Option<Expr>| {
        e.as_ref().map(|expr| {
            let ident = syn::Ident::new(name, Span::call_site());
            let value = text_ref(expr);
            quote! { __conto_parts.#ident = #value; }
        })
    };
    let sets = [
        text_field("actor", &args.actor).map(|set| quote! { #set __conto_parts.actor_named = true; }),
        text_field("recipient", &args.recipient),
        text_field("recipient_name", &args.recipient_name),
        text_field("purpose", &args.purpose),
        text_field("category", &args.category),
        text_field("idempotency_key", &args.idempotency_key),
        args.context.as_ref().map(|expr| {
            let span = span_of(expr);
            quote_spanned! {span=> __conto_parts.context = ::core::option::Option::Some(#p::context(&(#expr))); }
        }),
    ];

    let approval = args.on_approval.as_ref().map(|mode| match mode {
        ApprovalArg::Reject => quote!(let __conto_handle = __conto_handle.with_approval(#p::reject());),
        ApprovalArg::Wait(bound) => {
            let span = span_of(bound);
            quote_spanned! {span=> let __conto_handle = __conto_handle.with_approval(#p::wait(&(#bound))); }
        }
    });

    // For a closure, check its body's type where the user wrote it, so a wrong type is reported
    // on the closure's body rather than on the whole attribute.
    let checked = |f: &Expr, check: &str| -> Expr {
        let mut f = f.clone();
        if let Expr::Closure(closure) = &mut f {
            let body = &closure.body;
            let check = syn::Ident::new(check, Span::call_site());
            let span = body.span();
            let wrapped: Expr = syn::parse_quote_spanned! {span=> #p::#check(#body) };
            *closure.body = wrapped;
        }
        f
    };
    let settled_amount = match args.settled_amount.as_ref().map(|f| checked(f, "amount_of")) {
        Some(f) => {
            let span = span_of(&f);
            quote_spanned! {span=> #p::settled_amount(__conto_ok, #f) }
        }
        None => quote!(::core::option::Option::None),
    };
    let reference = match args.reference.as_ref().map(|f| checked(f, "text_of")) {
        Some(f) => {
            let span = span_of(&f);
            quote_spanned! {span=> #p::reference(__conto_ok, #f) }
        }
        None => quote!(::core::option::Option::None),
    };

    let ItemFn { attrs, vis, sig, block } = &item;
    let stmts = &block.stmts;
    // Inner attributes (`#![allow(..)]` at the top of the body) stay inside the function.
    let (inner, outer): (Vec<_>, Vec<_>) = attrs.iter().partition(|a| matches!(a.style, AttrStyle::Inner(_)));

    // A "fake return edge": makes the inner block's type the declared return type, so type
    // errors in the body point at the user's return type (as tracing-attributes does).
    let mut ret = result.full.clone();
    EraseImplTrait.visit_type_mut(&mut ret);
    let fake_return = {
        quote_spanned! {ret.span()=>
            #[allow(
                unknown_lints,
                unreachable_code,
                clippy::diverging_sub_expression,
                clippy::let_unit_value,
                clippy::unreachable,
                clippy::empty_loop,
                clippy::needless_return
            )]
            if false {
                let __conto_fake_return: #ret = loop {};
                return __conto_fake_return;
            }
        }
    };

    // The body as a future; with `check_send = true`, checked to be `Send` where it is written.
    let body_future = quote! {
        async move {
            #fake_return
            #(#stmts)*
        }
    };
    let body_future = match &args.check_send {
        Some(flag) if flag.value => {
            let span = item.sig.ident.span();
            quote_spanned! {span=> #p::send_body(#body_future) }
        }
        _ => body_future,
    };
    // With `approval = name`, the body sees a clone of the authorization under that name.
    let settle = match &args.approval {
        Some(name) => quote! {
            move |__conto_approval: &#k::Approval| {
                let #name: #k::Authorization = __conto_approval.authorization().clone();
                #body_future
            }
        },
        None => quote! { move |_: &#k::Approval| #body_future },
    };

    Ok(quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #deprecated
            #unreferenced
            let __conto_handle: #k::Conto = match #handle {
                ::core::result::Result::Ok(handle) => handle,
                ::core::result::Result::Err(rejection) => {
                    return ::core::result::Result::Err(#into_error(rejection));
                }
            };
            #approval
            // The intent is built in a block that ends before the `.await`, so the future
            // does not keep room for it (or its parts) beside the pipeline's own.
            let __conto_outcome = {
                let __conto_amount: #p::AmountRead = #amount_tokens;
                #(#bindings)*
                let __conto_rail_fields = [#(#rail_fields),*];
                #[allow(unused_mut)]
                let mut __conto_parts = #p::IntentParts::new(__conto_amount, #rail_new.with(&__conto_rail_fields));
                #(#sets)*
                // This call site's memory of its last intent, one per thread.
                #p::thread_local! {
                    static __CONTO_MEMO: #p::Memo = const { #p::Memo::new() };
                }
                let __conto_intent = match __conto_parts.build(&__conto_handle, &__CONTO_MEMO) {
                    ::core::result::Result::Ok(intent) => intent,
                    ::core::result::Result::Err(rejection) => {
                        return ::core::result::Result::Err(#into_error(rejection));
                    }
                };
                __conto_handle.run(
                    __conto_intent,
                    #settle,
                    |__conto_ok| #p::settlement(#settled_amount, #reference),
                )
            }
            .await;
            match __conto_outcome {
                ::core::result::Result::Ok(outcome) => outcome,
                ::core::result::Result::Err(rejection) => ::core::result::Result::Err(#into_error(rejection)),
            }
        }
    })
}
