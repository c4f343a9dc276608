//! The HTTP middleware as a `tower::Layer` (feature `tower`), for axum, tonic and hyper
//! services: [`RateLimitLayer`] limits by an [`HttpLimit`], with the
//! same keys, statuses and `RateLimit` fields as the actix-web middleware (see
//! [`crate::http`]).
//!
//! The client address comes from axum's `ConnectInfo<SocketAddr>` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`) or a plain `SocketAddr` request
//! extension; [`KeyBy::Route`](crate::http::KeyBy::Route) reads axum's `MatchedPath` (add the
//! layer with `Router::route_layer`). Rejections carry an empty body (`ResBody::default()`).
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//! use eyelet::http::HttpLimit;
//! use eyelet::tower::RateLimitLayer;
//! use eyelet::{RateLimit, RateLimiter};
//!
//! #[tokio::main]
//! async fn main() {
//!     let limiter = RateLimiter::builder().build().unwrap();
//!     let limit = HttpLimit::new(limiter, RateLimit::try_from(10.0).unwrap());
//!     let app = Router::new()
//!         .route("/", get(|| async { "hello" }))
//!         .layer(RateLimitLayer::new(limit));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//!         .await
//!         .unwrap();
//! }
//! ```

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::http::header::{HeaderName, HeaderValue};
use ::http::request::Parts;
use ::http::{Request, Response, StatusCode};
use axum::extract::{ConnectInfo, MatchedPath};
use tower_layer::Layer;
use tower_service::Service;

use crate::http::{HttpLimit, RequestView, Verdict};

type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// A `tower::Layer` limiting the services it wraps by an [`HttpLimit`] (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct RateLimitLayer {
    inner: Arc<Inner>,
}

struct Inner {
    limit: HttpLimit,
    key_fn: Option<KeyFn>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limit", &self.inner.limit)
            .field("key_fn", &self.inner.key_fn.is_some())
            .finish()
    }
}

impl RateLimitLayer {
    /// Limits what it wraps by `limit`.
    pub fn new(limit: HttpLimit) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit,
                key_fn: None,
            }),
        }
    }

    /// Keys requests by `f` instead of the limit's [`KeyBy`](crate::http::KeyBy) (an
    /// authenticated user from an extension, a tenant from the host); `None` means no key,
    /// handled as the limit's [`MissingKey`](crate::http::MissingKey) says.
    ///
    /// ```
    /// use eyelet::http::HttpLimit;
    /// use eyelet::tower::RateLimitLayer;
    /// use eyelet::{RateLimit, RateLimiter};
    ///
    /// let limit = HttpLimit::new(RateLimiter::builder().build().unwrap(), RateLimit::ONE);
    /// let by_host = RateLimitLayer::new(limit).key_fn(|parts| {
    ///     parts.headers.get("host")?.to_str().ok().map(str::to_owned)
    /// });
    /// # drop(by_host);
    /// ```
    pub fn key_fn<F>(self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                limit: self.inner.limit.clone(),
                key_fn: Some(Arc::new(f)),
            }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, service: S) -> Self::Service {
        RateLimitService {
            service,
            inner: Arc::clone(&self.inner),
        }
    }
}

/// The service [`RateLimitLayer`] puts in front of another.
#[derive(Clone)]
pub struct RateLimitService<S> {
    service: S,
    inner: Arc<Inner>,
}

impl<S> std::fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService")
            .field("limit", &self.inner.limit)
            .finish_non_exhaustive()
    }
}

struct View<'a>(&'a Parts);

impl RequestView for View<'_> {
    fn peer_ip(&self) -> Option<IpAddr> {
        let ext = &self.0.extensions;
        ext.get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
    }

    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.0
            .headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    }

    fn path(&self) -> &str {
        self.0.uri.path()
    }

    fn route(&self) -> Option<String> {
        self.0
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
    }
}

/// Appends: stacked layers each list their policy, as the fields' list syntax allows.
fn add_headers(map: &mut ::http::HeaderMap, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::try_from(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; a fresh clone stays here
        // for the next poll_ready (tower's usual dance).
        let clone = self.service.clone();
        let mut service = std::mem::replace(&mut self.service, clone);
        let inner = Arc::clone(&self.inner);
        let (parts, body) = req.into_parts();
        let custom = inner.key_fn.as_ref().map(|f| f(&parts));
        let outcome = inner.limit.key_of(&View(&parts), custom);
        let req = Request::from_parts(parts, body);
        Box::pin(async move {
            match inner.limit.decide_outcome(outcome).await {
                Verdict::Pass(headers) => {
                    let mut res = service.call(req).await?;
                    add_headers(res.headers_mut(), headers);
                    Ok(res)
                }
                Verdict::Deny { status, headers } => {
                    let mut res = Response::new(ResBody::default());
                    *res.status_mut() =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
                    add_headers(res.headers_mut(), headers);
                    Ok(res)
                }
            }
        })
    }
}
