//! actix-web middleware (feature `actix-web`): [`RateLimiting`] limits an `App`, a scope or a
//! resource by an [`HttpLimit`]; see [`crate::http`] for the keys,
//! the statuses and the `RateLimit` fields.
//!
//! ```no_run
//! use actix_web::{web, App, HttpServer};
//! use eyelet::actix_web::RateLimiting;
//! use eyelet::http::{HttpLimit, KeyBy};
//! use eyelet::{RateLimit, RateLimiter};
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     let limiter = RateLimiter::builder().build().unwrap();
//!     let per_client = HttpLimit::new(limiter.clone(), RateLimit::try_from(10.0).unwrap());
//!     let per_api_key = HttpLimit::new(limiter, RateLimit::per_minute(600.0).unwrap())
//!         .name("api")
//!         .key(KeyBy::Header("x-api-key".into()));
//!     HttpServer::new(move || {
//!         App::new()
//!             .wrap(RateLimiting::new(per_client.clone())) // every route: 10/s per client
//!             .service(
//!                 web::scope("/api")
//!                     .wrap(RateLimiting::new(per_api_key.clone())) // and 600/min per key
//!                     .route("/items", web::get().to(|| async { "items" })),
//!             )
//!             .route("/", web::get().to(|| async { "hello" }))
//!     })
//!     .bind(("127.0.0.1", 8080))?
//!     .run()
//!     .await
//! }
//! ```

use std::future::{ready, Future, Ready};
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use ::actix_web::body::EitherBody;
use ::actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use ::actix_web::http::header::{HeaderName, HeaderValue};
use ::actix_web::http::StatusCode;
use ::actix_web::{Error, HttpResponse};

use crate::http::{HttpLimit, RequestView, Verdict};

type KeyFn = Arc<dyn Fn(&ServiceRequest) -> Option<String> + Send + Sync>;

/// The middleware factory: `.wrap(RateLimiting::new(limit))` on an `App`, a `Scope` or a
/// `Resource` (see the [module docs](self)).
#[derive(Clone)]
pub struct RateLimiting {
    inner: Rc<Inner>,
}

struct Inner {
    limit: HttpLimit,
    key_fn: Option<KeyFn>,
}

impl std::fmt::Debug for RateLimiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiting")
            .field("limit", &self.inner.limit)
            .field("key_fn", &self.inner.key_fn.is_some())
            .finish()
    }
}

impl RateLimiting {
    /// Limits what it wraps by `limit`.
    pub fn new(limit: HttpLimit) -> Self {
        Self {
            inner: Rc::new(Inner {
                limit,
                key_fn: None,
            }),
        }
    }

    /// Keys requests by `f` instead of the limit's [`KeyBy`](crate::http::KeyBy) (a user id
    /// from a session, a tenant from the host name); `None` means no key, handled as the
    /// limit's [`MissingKey`](crate::http::MissingKey) says.
    ///
    /// ```
    /// use eyelet::actix_web::RateLimiting;
    /// use eyelet::http::HttpLimit;
    /// use eyelet::{RateLimit, RateLimiter};
    ///
    /// let limit = HttpLimit::new(RateLimiter::builder().build().unwrap(), RateLimit::ONE);
    /// let by_host = RateLimiting::new(limit).key_fn(|req| {
    ///     req.connection_info().host().split(':').next().map(str::to_owned)
    /// });
    /// # drop(by_host);
    /// ```
    pub fn key_fn<F>(self, f: F) -> Self
    where
        F: Fn(&ServiceRequest) -> Option<String> + Send + Sync + 'static,
    {
        let limit = self.inner.limit.clone();
        Self {
            inner: Rc::new(Inner {
                limit,
                key_fn: Some(Arc::new(f)),
            }),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RateLimiting
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = RateLimitingMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RateLimitingMiddleware {
            service: Rc::new(service),
            inner: Rc::clone(&self.inner),
        }))
    }
}

/// The middleware [`RateLimiting`] puts in front of a service.
pub struct RateLimitingMiddleware<S> {
    service: Rc<S>,
    inner: Rc<Inner>,
}

impl<S> std::fmt::Debug for RateLimitingMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitingMiddleware")
            .field("limit", &self.inner.limit)
            .finish_non_exhaustive()
    }
}

struct View<'a>(&'a ServiceRequest);

impl RequestView for View<'_> {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.0.peer_addr().map(|a| a.ip())
    }

    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.0
            .headers()
            .get_all(name)
            .map(HeaderValue::as_bytes)
            .collect()
    }

    fn path(&self) -> &str {
        self.0.path()
    }

    fn route(&self) -> Option<String> {
        self.0.match_pattern()
    }
}

/// Appends: stacked limits (an app's and a scope's) each list their policy, as the fields'
/// list syntax allows.
fn add_headers(
    map: &mut ::actix_web::http::header::HeaderMap,
    headers: Vec<(&'static str, String)>,
) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::try_from(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for RateLimitingMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let inner = Rc::clone(&self.inner);
        Box::pin(async move {
            let custom = inner.key_fn.as_ref().map(|f| f(&req));
            let outcome = inner.limit.key_of(&View(&req), custom);
            match inner.limit.decide_outcome(outcome).await {
                Verdict::Pass(headers) => {
                    let mut res = service.call(req).await?;
                    add_headers(res.headers_mut(), headers);
                    Ok(res.map_into_left_body())
                }
                Verdict::Deny { status, headers } => {
                    let status =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
                    let mut res = HttpResponse::new(status);
                    add_headers(res.headers_mut(), headers);
                    Ok(req.into_response(res).map_into_right_body())
                }
            }
        })
    }
}
