//! What a paid request costs, and who pays for it.

use std::fmt;
use std::sync::Arc;

use conto_core::Amount;
use http::request::Parts;

/// Why a request's price could not be computed; answered with 400 (or 413 for a large body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceError(pub String);

impl PriceError {
    /// A price error with a message for the client.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for PriceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PriceError {}

/// The parts of a request a price (or actor, or rail) function can read.
pub struct PriceRequest<'a> {
    pub(crate) parts: &'a Parts,
    pub(crate) params: &'a [(String, String)],
    pub(crate) json: Option<&'a serde_json::Value>,
    /// The first query parameter read that the request gives more than once.
    pub(crate) repeated: std::cell::OnceCell<String>,
}

impl<'a> PriceRequest<'a> {
    /// The request's method.
    pub fn method(&self) -> &'a http::Method {
        &self.parts.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &'a http::Uri {
        &self.parts.uri
    }

    /// The request's headers.
    pub fn headers(&self) -> &'a http::HeaderMap {
        &self.parts.headers
    }

    /// The request's extensions (set by earlier layers, such as the app's auth layer).
    pub fn extensions(&self) -> &'a http::Extensions {
        &self.parts.extensions
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A path parameter of the matched axum route (`/items/{id}` → `path_param("id")`).
    pub fn path_param(&self, name: &str) -> Option<&'a str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded. One the request gives more than once (`?n=1&n=100`,
    /// where the price would read one value and the handler, by its extractor, perhaps the
    /// other) reads as `None`, and the request is refused (`400`) whatever the price returns.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.parts.uri.query()?;
        let mut found = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name);
        let (_, value) = found.next()?;
        if found.next().is_some() {
            let _ = self.repeated.set(name.to_owned());
            return None;
        }
        Some(value.into_owned())
    }

    /// The buffered JSON body, when the layer was built with [`Price::json_body`].
    pub fn json(&self) -> Option<&'a serde_json::Value> {
        self.json
    }
}

type PriceFn = dyn Fn(&PriceRequest<'_>) -> Result<Option<Amount>, PriceError> + Send + Sync;

/// A route's price: fixed, or computed from the request.
///
/// **Free** is spelled two ways: a route that is always free simply gets no [`PaidLayer`](crate::PaidLayer); a computed price returns `Ok(None)` for a request that is free, which then
/// passes through without authorization. An amount of `0` is not "free": Conto has no zero
/// payments, so it is refused as an invalid payment (400).
#[derive(Clone)]
pub struct Price {
    pub(crate) compute: Arc<PriceFn>,
    pub(crate) json_limit: Option<usize>,
}

impl fmt::Debug for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Price").field("json_limit", &self.json_limit).finish_non_exhaustive()
    }
}

impl Price {
    /// The same price for every request.
    pub fn fixed(amount: Amount) -> Self {
        Self::from_request(move |_| Ok(Some(amount)))
    }

    /// No charge: every request passes through (for a layer shared by routes some of which are
    /// free; a route that is always free needs no layer at all).
    pub fn free() -> Self {
        Self::from_request(|_| Ok(None))
    }

    /// Computed from the method, path parameters, query and headers.
    ///
    /// ```
    /// use conto::tower::{Price, PriceError};
    /// let per_item = Price::from_request(|req| {
    ///     let n: u32 = req.query("items").unwrap_or_else(|| "1".into()).parse()
    ///         .map_err(|_| PriceError::new("`items` must be a number"))?;
    ///     conto::Amount::try_from(n).map(Some).map_err(|e| PriceError::new(e.to_string()))
    /// });
    /// ```
    pub fn from_request(
        f: impl Fn(&PriceRequest<'_>) -> Result<Option<Amount>, PriceError> + Send + Sync + 'static,
    ) -> Self {
        Self { compute: Arc::new(f), json_limit: None }
    }

    /// Computed from the JSON body, buffered up to `limit` bytes (413 past it, 400 if it is not
    /// JSON). The handler still receives the whole body.
    pub fn json_body(
        limit: usize,
        f: impl Fn(&PriceRequest<'_>) -> Result<Option<Amount>, PriceError> + Send + Sync + 'static,
    ) -> Self {
        Self { compute: Arc::new(f), json_limit: Some(limit) }
    }
}

type ActorFn = dyn Fn(&PriceRequest<'_>) -> Option<String> + Send + Sync;

/// Who pays for a request: an **identity established by the app's authentication**, never a
/// claim the client makes.
///
/// Use [`Actor::extension`] with the type your authentication middleware inserts into the
/// request's extensions. A request with no actor is refused with `401` (the problem body names
/// what was expected) and is never charged to a default. The actor must also be provisioned
/// with the authority, or the request is refused with `403` (`actor-unknown`).
#[derive(Clone)]
pub struct Actor {
    pub(crate) find: Arc<ActorFn>,
    pub(crate) expects: Arc<str>,
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Actor").field("expects", &self.expects).finish_non_exhaustive()
    }
}

impl Actor {
    /// The actor taken from a request extension of type `T`, which the app's authentication
    /// layer inserts after verifying the caller (a session, a JWT, an API key). This is the
    /// way to name the payer.
    ///
    /// ```
    /// use conto::tower::Actor;
    ///
    /// #[derive(Clone)]
    /// struct User { id: String } // inserted by your auth middleware
    ///
    /// let actor = Actor::extension(|user: &User| user.id.clone());
    /// ```
    pub fn extension<T: Send + Sync + 'static>(f: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        Self {
            find: Arc::new(move |req| req.extensions().get::<T>().map(&f)),
            expects: format!(
                "the request extension `{}` (set by your authentication middleware)",
                std::any::type_name::<T>()
            )
            .into(),
        }
    }

    /// The actor named by a request header that **a trusted proxy sets**.
    ///
    /// # Warning
    ///
    /// Any client can send any header. Use this only behind a proxy or gateway that
    /// authenticates the caller, sets this header itself, and strips it from every incoming
    /// request; otherwise a client chooses whose budget it spends. Prefer [`Actor::extension`].
    /// A request with the header twice has no actor (`401`).
    pub fn trusted_header(name: &'static str) -> Self {
        // Parsed once here, not on every request (a name that is not a header name finds nothing).
        let parsed = http::HeaderName::from_bytes(name.as_bytes()).ok();
        Self {
            find: Arc::new(move |req| {
                // Exactly one value: a proxy that appends its own to the client's would
                // otherwise let the client's, first, be read.
                let mut values = req.headers().get_all(parsed.as_ref()?).iter();
                let value = values.next()?.to_str().ok()?;
                (values.next().is_none() && !value.is_empty()).then(|| value.to_owned())
            }),
            expects: format!("the `{name}` header (set by your trusted proxy)").into(),
        }
    }

    /// The actor computed by a function of the request; `expects` says what it reads, for the
    /// `401` answer when it finds nothing. The function must return an authenticated identity.
    pub fn from_request(
        expects: impl Into<String>,
        f: impl Fn(&PriceRequest<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self { find: Arc::new(f), expects: expects.into().into() }
    }

    /// What this actor source reads, as the `401` answer names it.
    pub fn expects(&self) -> &str {
        &self.expects
    }
}
