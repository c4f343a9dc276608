//! What the HTTP middlewares share (features `actix-web` and `tower`): an [`HttpLimit`] says
//! which limiter, rate, strategy and provider a route uses, how a request's key is found and
//! how a decision shows in the response.
//!
//! The same `HttpLimit` drives `eyelet::actix_web::RateLimiting` (feature `actix-web`) and
//! `eyelet::tower::RateLimitLayer` (feature `tower`).
//!
//! # The response
//! - **Admitted:** the request goes on; the response carries the `RateLimit-Policy` and
//!   `RateLimit` fields of
//!   [draft-ietf-httpapi-ratelimit-headers](https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/)
//!   (unless [`RateLimitHeaders::OnRejection`] or [`RateLimitHeaders::Never`]).
//! - **Rejected** (absolute strategy, over the limit): `429 Too Many Requests` with
//!   `Retry-After` (whole seconds, rounded up from the decision's retry hint) and the same
//!   fields, `r=0`.
//! - **Shed** (suppressed strategy): the status set by
//!   [`suppressed_status`](HttpLimit::suppressed_status) (429 unless changed), `Retry-After: 1`.
//! - **Redis failed** (Redis provider only; the hybrid provider never fails a call): the
//!   [`StoreFailure`] policy: let the request through without fields, or answer
//!   [`failure_status`](HttpLimit::failure_status) (503 unless changed) with `Retry-After: 1`.
//!   Never a 500 by surprise.
//! - **The limiter is full** ([`RateLimitDecision::KeyCapacityExceeded`], see
//!   `RateLimiterBuilder::max_keys`): `503 Service Unavailable`, `Retry-After: 1`.
//!
//! The fields, for a limit named `api` of 10 per second (`W = 1 s`) with 3 left:
//!
//! ```text
//! RateLimit-Policy: "api";q=10;w=1
//! RateLimit: "api";r=3;t=1
//! ```
//!
//! `q` is the capacity `C` per window (the soft limit `S` for the suppressed strategy), `w` the
//! window in whole seconds (rounded up; a rate below one request per window stretches it, as
//! the decision contract says). On a rejection `r` is 0 and `t` the retry hint in whole
//! seconds. On an admitted response `r` is what the key has left, read right after the decision
//! (so it already counts requests that raced this one: it never overstates), and `t` is the
//! window, the longest until everything counted now has expired (a sliding window frees units
//! continuously, one bucket at a time). With the Redis provider that read is one more round
//! trip: use [`RateLimitHeaders::OnRejection`] to save it. With the hybrid provider it is this
//! instance's view (the larger of its own live admissions and Redis's total at the last sync),
//! so it can lag other instances' traffic by a sync interval.
//!
//! # Keys
//! [`KeyBy`] picks the request's key: the client address ([`KeyBy::ClientIp`], the default), the
//! TCP peer, a header, the path or the matched route; the framework types also take a closure.
//! Keys are namespaced by the limit's [`name`](HttpLimit::name): two limits with the same name
//! (and strategy and provider) share their keys' windows, so one budget can span several
//! scopes; give them different names for separate budgets.
//!
//! Limits can be stacked (an app-wide one and a scope's): a request must pass each, and an
//! admitted response lists every policy in both fields (`"app";q=100;w=1, "api";q=10;w=1`).
//!
//! **Behind proxies:** [`KeyBy::ClientIp`] is the TCP peer unless that peer is one of the
//! [`trusted_proxies`](HttpLimit::trusted_proxies); then the forwarding header
//! ([`ForwardedHeader`]) is read from the right, skipping trusted hops, and the first address
//! not trusted is the client. A header sent by a client that is not a trusted proxy is never
//! read, so a client cannot choose its own key by sending `X-Forwarded-For`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use crate::rate::Limits;
use crate::{RateLimit, RateLimitDecision, RateLimiter};

/// Where a request's key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyBy {
    /// The client's address: the TCP peer, or behind [trusted proxies](HttpLimit::trusted_proxies)
    /// the first untrusted hop of the forwarding header. The default.
    ClientIp,
    /// The TCP peer's address, ignoring forwarding headers.
    PeerIp,
    /// The value of this request header (an API key, a tenant id). Requests without it follow
    /// [`MissingKey`].
    Header(String),
    /// The request path (without the query): one budget per URL, shared by all clients.
    Path,
    /// The matched route pattern (`/users/{id}`): one budget per route, shared by all clients.
    /// actix-web: the resource pattern; axum: `MatchedPath` (add the layer with
    /// `Router::route_layer`, where the route is known).
    Route,
}

/// The strategy a limit decides with (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// A sliding-window hard limit with retry hints: `429` once `C` requests are in the window.
    #[default]
    Absolute,
    /// Probabilistic shedding above the soft limit, hard cutoff at `H`.
    Suppressed,
}

/// The provider a limit decides with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Provider {
    /// In this process ([`RateLimiter::local`]).
    #[default]
    Local,
    /// Through Redis on every request ([`RateLimiter::redis`]; feature `redis`): one limit
    /// across processes, one round trip per request.
    #[cfg(feature = "redis")]
    Redis,
    /// Local decisions on a limit shared through Redis ([`RateLimiter::hybrid`]; feature
    /// `redis`): no round trip on the request path.
    #[cfg(feature = "redis")]
    Hybrid,
}

/// Which responses carry the `RateLimit-Policy` and `RateLimit` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RateLimitHeaders {
    /// Admitted and rejected responses (the default).
    #[default]
    Always,
    /// Rejected responses only (saves the read of what is left; on the Redis provider, a round
    /// trip).
    OnRejection,
    /// None (`Retry-After` is still sent on rejections).
    Never,
}

/// What happens when the Redis provider cannot decide (Redis down, slow or refusing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StoreFailure {
    /// Let the request through, without rate-limit fields (the default: an outage of the
    /// limiter's store does not become an outage of the service).
    #[default]
    FailOpen,
    /// Answer [`HttpLimit::failure_status`] (503 unless changed) with `Retry-After: 1`.
    FailClosed,
}

/// What happens to a request whose key cannot be found (no such header, no peer address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// All such requests share one key (the default): they are limited together.
    #[default]
    Shared,
    /// Such requests are not limited.
    Allow,
    /// Such requests are answered with this status (for example 400 or 401).
    Reject(u16),
}

/// The forwarding header that trusted proxies set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// An address range (CIDR): `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
///
/// ```
/// use eyelet::http::IpRange;
///
/// let r: IpRange = "10.0.0.0/8".parse().unwrap();
/// assert!(r.contains("10.1.2.3".parse().unwrap()));
/// assert!(!r.contains("11.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<IpRange>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpRange`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidIpRange {
    input: String,
}

impl fmt::Display for InvalidIpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an address or an address/prefix range",
            self.input
        )
    }
}

impl std::error::Error for InvalidIpRange {}

impl IpRange {
    /// The range of `addr` with its first `prefix` bits fixed; `None` if `prefix` is longer
    /// than the address (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

impl FromStr for IpRange {
    type Err = InvalidIpRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidIpRange {
            input: s.to_owned(),
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let addr = addr.to_canonical();
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| err())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How one route or scope is limited; hand it to a framework's middleware.
///
/// ```
/// use eyelet::http::{HttpLimit, KeyBy, RateLimitHeaders, Strategy};
/// use eyelet::{RateLimit, RateLimiter};
///
/// let limiter = RateLimiter::builder().build().unwrap();
/// let limit = HttpLimit::new(limiter, RateLimit::try_from(10.0).unwrap())
///     .name("api")
///     .key(KeyBy::ClientIp)
///     .trusted_proxies(["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()])
///     .strategy(Strategy::Absolute)
///     .headers(RateLimitHeaders::Always);
/// assert_eq!(limit.policy_field(), "\"api\";q=10;w=1");
/// ```
#[derive(Clone)]
pub struct HttpLimit {
    limiter: Arc<RateLimiter>,
    rate: RateLimit,
    /// `W_eff`, `C` and `H` of `rate` on `limiter` (both fixed at construction).
    limits: Limits,
    name: Arc<str>,
    key: KeyBy,
    trusted: Arc<[IpRange]>,
    forwarded: ForwardedHeader,
    strategy: Strategy,
    provider: Provider,
    headers: RateLimitHeaders,
    suppressed_status: u16,
    store_failure: StoreFailure,
    failure_status: u16,
    missing_key: MissingKey,
}

impl fmt::Debug for HttpLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpLimit")
            .field("rate", &self.rate)
            .field("name", &self.name)
            .field("key", &self.key)
            .field("trusted", &self.trusted)
            .field("strategy", &self.strategy)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl HttpLimit {
    /// A limit of `rate` on `limiter`: named `default`, keyed by [`KeyBy::ClientIp`] (no trusted
    /// proxies), absolute strategy, local provider, fields on every response, fail open.
    pub fn new(limiter: Arc<RateLimiter>, rate: RateLimit) -> Self {
        let limits = Limits::new(
            limiter.window().as_millis() as u64,
            &rate,
            limiter.hard_limit_factor(),
        );
        Self {
            limiter,
            rate,
            limits,
            name: Arc::from("default"),
            key: KeyBy::ClientIp,
            trusted: Arc::from([]),
            forwarded: ForwardedHeader::XForwardedFor,
            strategy: Strategy::Absolute,
            provider: Provider::Local,
            headers: RateLimitHeaders::Always,
            suppressed_status: 429,
            store_failure: StoreFailure::FailOpen,
            failure_status: 503,
            missing_key: MissingKey::Shared,
        }
    }

    /// The policy's name: shown in the fields and used as the keys' namespace. Characters a
    /// structured-field string cannot hold (outside printable ASCII, `"` and `\`) become `_`.
    pub fn name(mut self, name: &str) -> Self {
        let clean: String = name
            .chars()
            .map(|c| match c {
                ' '..='~' if c != '"' && c != '\\' => c,
                _ => '_',
            })
            .collect();
        self.name = Arc::from(clean);
        self
    }

    /// Where the key comes from (default [`KeyBy::ClientIp`]).
    pub fn key(mut self, key: KeyBy) -> Self {
        self.key = key;
        self
    }

    /// The proxies whose forwarding header is believed (default: none). See the
    /// [module docs](self).
    pub fn trusted_proxies(mut self, ranges: impl IntoIterator<Item = IpRange>) -> Self {
        self.trusted = ranges.into_iter().collect();
        self
    }

    /// The header trusted proxies set (default [`ForwardedHeader::XForwardedFor`]).
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.forwarded = header;
        self
    }

    /// The strategy (default [`Strategy::Absolute`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The provider (default [`Provider::Local`]). The Redis and hybrid providers need a
    /// limiter built with `connect()`; on one built with `build()` every Redis decision fails
    /// and follows [`on_store_failure`](Self::on_store_failure).
    pub fn provider(mut self, provider: Provider) -> Self {
        self.provider = provider;
        self
    }

    /// Which responses carry the rate-limit fields (default [`RateLimitHeaders::Always`]).
    pub fn headers(mut self, headers: RateLimitHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// The status of a request the suppressed strategy sheds (default 429). Values outside
    /// 100..=999 are ignored.
    pub fn suppressed_status(mut self, status: u16) -> Self {
        if (100..=999).contains(&status) {
            self.suppressed_status = status;
        }
        self
    }

    /// What to do when the Redis provider fails (default [`StoreFailure::FailOpen`]).
    pub fn on_store_failure(mut self, policy: StoreFailure) -> Self {
        self.store_failure = policy;
        self
    }

    /// The status of a request refused by [`StoreFailure::FailClosed`] (default 503). Values
    /// outside 100..=999 are ignored.
    pub fn failure_status(mut self, status: u16) -> Self {
        if (100..=999).contains(&status) {
            self.failure_status = status;
        }
        self
    }

    /// What to do when a request has no key (default [`MissingKey::Shared`]).
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        self.missing_key = policy;
        self
    }

    /// The limiter it decides on.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// The `RateLimit-Policy` field value this limit sends.
    pub fn policy_field(&self) -> String {
        let l = self.limits;
        format!(
            "\"{}\";q={};w={}",
            self.name,
            l.capacity,
            l.window_ms.div_ceil(1000)
        )
    }

    /// The key of a request, or what to do without one. `custom` is the framework closure's
    /// answer, if one is set (it replaces [`KeyBy`]).
    pub(crate) fn key_of(
        &self,
        req: &impl RequestView,
        custom: Option<Option<String>>,
    ) -> KeyOutcome {
        let found = match custom {
            Some(k) => k,
            None => match &self.key {
                KeyBy::ClientIp => self.client_ip(req).map(|ip| ip.to_string()),
                KeyBy::PeerIp => req.peer_ip().map(|ip| ip.to_canonical().to_string()),
                KeyBy::Header(name) => req
                    .header_values(name)
                    .into_iter()
                    .next()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                KeyBy::Path => Some(req.path().to_owned()),
                KeyBy::Route => req.route(),
            },
        };
        match (found, self.missing_key) {
            (Some(k), _) => KeyOutcome::Key(self.namespaced(&k)),
            (None, MissingKey::Shared) => KeyOutcome::Key(self.namespaced("")),
            (None, MissingKey::Allow) => KeyOutcome::Unlimited,
            (None, MissingKey::Reject(status)) => KeyOutcome::Reject(status),
        }
    }

    fn namespaced(&self, key: &str) -> String {
        // U+001F (unit separator) cannot be sent in a header value or a URL path, so a client
        // cannot forge a key of another namespace.
        let mut s = String::with_capacity(self.name.len() + 1 + key.len());
        s.push_str(&self.name);
        s.push('\u{1f}');
        #[cfg(feature = "redis")]
        if self.name.len() + 1 + key.len() > crate::redis::MAX_KEY_LEN {
            // The Redis provider refuses longer keys (the request would follow the store
            // failure policy: a client could pass unlimited by sending a long key). A second
            // separator marks the digest, which no header-derived key can spell.
            use sha2::Digest;
            use std::fmt::Write;
            s.push('\u{1f}');
            for b in sha2::Sha256::digest(key.as_bytes()) {
                let _ = write!(s, "{b:02x}");
            }
            return s;
        }
        s.push_str(key);
        s
    }

    /// The client address: the peer, or behind trusted proxies the first untrusted hop of the
    /// forwarding header, read from the right.
    pub(crate) fn client_ip(&self, req: &impl RequestView) -> Option<IpAddr> {
        let peer = req.peer_ip()?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let name = match self.forwarded {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut hops: Vec<Option<IpAddr>> = Vec::new();
        for value in req.header_values(name) {
            let Ok(value) = std::str::from_utf8(value) else {
                hops.push(None);
                continue;
            };
            for element in value.split(',') {
                hops.push(match self.forwarded {
                    ForwardedHeader::XForwardedFor => parse_hop(element),
                    ForwardedHeader::Forwarded => forwarded_for(element),
                });
            }
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                // A hop that is not an address ("unknown", an obfuscated name, garbage): what
                // lies left of it cannot be checked, so the last checked address is the key.
                None => return Some(client),
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.is_trusted(client) {
                        return Some(client);
                    }
                }
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|r| r.contains(ip))
    }

    /// Decides one request of `key`.
    pub(crate) async fn decide(&self, key: &str) -> Verdict {
        let rl = &*self.limiter;
        let rate = &self.rate;
        let decision: Result<RateLimitDecision, ()> = match (self.provider, self.strategy) {
            (Provider::Local, Strategy::Absolute) => {
                Ok(rl.local().absolute().inc_async(key, rate, 1).await)
            }
            (Provider::Local, Strategy::Suppressed) => {
                Ok(rl.local().suppressed().inc_async(key, rate, 1).await)
            }
            #[cfg(feature = "redis")]
            (Provider::Redis, Strategy::Absolute) => {
                rl.redis().absolute().inc(key, rate, 1).await.map_err(drop)
            }
            #[cfg(feature = "redis")]
            (Provider::Redis, Strategy::Suppressed) => rl
                .redis()
                .suppressed()
                .inc(key, rate, 1)
                .await
                .map_err(drop),
            #[cfg(feature = "redis")]
            (Provider::Hybrid, Strategy::Absolute) => {
                Ok(rl.hybrid().absolute().inc_async(key, rate, 1).await)
            }
            #[cfg(feature = "redis")]
            (Provider::Hybrid, Strategy::Suppressed) => {
                Ok(rl.hybrid().suppressed().inc_async(key, rate, 1).await)
            }
        };
        let Ok(decision) = decision else {
            return match self.store_failure {
                StoreFailure::FailOpen => Verdict::Pass(Vec::new()),
                StoreFailure::FailClosed => Verdict::Deny {
                    status: self.failure_status,
                    headers: vec![(RETRY_AFTER, "1".to_owned())],
                },
            };
        };
        let limits = self.limits;
        let window_s = limits.window_ms.div_ceil(1000);
        match decision {
            RateLimitDecision::Allowed
            | RateLimitDecision::Suppressed {
                is_allowed: true, ..
            } => {
                if self.headers != RateLimitHeaders::Always {
                    return Verdict::Pass(Vec::new());
                }
                let Some(used) = self.used(key).await else {
                    return Verdict::Pass(Vec::new());
                };
                let left = limits.capacity.saturating_sub(used);
                Verdict::Pass(self.fields(left, window_s))
            }
            RateLimitDecision::Rejected { retry_after_ms, .. } => {
                // A weight of 1 is always admissible (C ≥ 1), so RETRY_NEVER cannot come here;
                // if it did, one window is the honest hint.
                let secs = if retry_after_ms == crate::RETRY_NEVER {
                    window_s
                } else {
                    retry_after_ms.div_ceil(1000).max(1)
                };
                self.denial(429, secs)
            }
            RateLimitDecision::Suppressed { .. } => self.denial(self.suppressed_status, 1),
            RateLimitDecision::KeyCapacityExceeded => Verdict::Deny {
                status: 503,
                headers: vec![(RETRY_AFTER, "1".to_owned())],
            },
        }
    }

    fn denial(&self, status: u16, retry_s: u64) -> Verdict {
        let mut headers = vec![(RETRY_AFTER, retry_s.to_string())];
        if self.headers != RateLimitHeaders::Never {
            headers.extend(self.fields(0, retry_s));
        }
        Verdict::Deny { status, headers }
    }

    fn fields(&self, left: u64, reset_s: u64) -> Vec<(&'static str, String)> {
        vec![
            (RATE_LIMIT_POLICY, self.policy_field()),
            (
                RATE_LIMIT,
                format!("\"{}\";r={};t={}", self.name, left, reset_s),
            ),
        ]
    }

    /// What the key holds now: the absolute total, or the suppressed strategy's accepted
    /// weight. `None` if Redis failed (the request was admitted; it goes on without fields).
    async fn used(&self, key: &str) -> Option<u64> {
        let rl = &*self.limiter;
        match (self.provider, self.strategy) {
            (Provider::Local, Strategy::Absolute) => Some(rl.local().absolute().get(key)),
            (Provider::Local, Strategy::Suppressed) => {
                Some(rl.local().suppressed().get(key).accepted)
            }
            #[cfg(feature = "redis")]
            (Provider::Redis, Strategy::Absolute) => rl.redis().absolute().get(key).await.ok(),
            #[cfg(feature = "redis")]
            (Provider::Redis, Strategy::Suppressed) => rl
                .redis()
                .suppressed()
                .get(key)
                .await
                .ok()
                .map(|s| s.accepted),
            #[cfg(feature = "redis")]
            (Provider::Hybrid, Strategy::Absolute) => {
                let (mine, global) = rl.hybrid().absolute().get(key);
                Some(mine.max(global))
            }
            #[cfg(feature = "redis")]
            (Provider::Hybrid, Strategy::Suppressed) => {
                let (mine, global) = rl.hybrid().suppressed().get(key);
                Some(mine.accepted.max(global.accepted))
            }
        }
    }

    /// Decides a request keyed by [`key_of`](Self::key_of).
    pub(crate) async fn decide_outcome(&self, outcome: KeyOutcome) -> Verdict {
        match outcome {
            KeyOutcome::Key(key) => self.decide(&key).await,
            KeyOutcome::Unlimited => Verdict::Pass(Vec::new()),
            KeyOutcome::Reject(status) => Verdict::Deny {
                status,
                headers: Vec::new(),
            },
        }
    }
}

pub(crate) const RETRY_AFTER: &str = "retry-after";
pub(crate) const RATE_LIMIT: &str = "ratelimit";
pub(crate) const RATE_LIMIT_POLICY: &str = "ratelimit-policy";

/// A request's key, or what to do without one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyOutcome {
    Key(String),
    Unlimited,
    Reject(u16),
}

/// What the middleware does with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Pass it on; add these headers to the response.
    Pass(Vec<(&'static str, String)>),
    /// Answer it with this status and headers (and an empty body).
    Deny {
        status: u16,
        headers: Vec<(&'static str, String)>,
    },
}

/// What the key extraction reads of a request, for either framework.
pub(crate) trait RequestView {
    /// The TCP peer's address, if known.
    fn peer_ip(&self) -> Option<IpAddr>;
    /// Every value of header `name` (lower case), in order.
    fn header_values(&self, name: &str) -> Vec<&[u8]>;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The matched route pattern, if known.
    fn route(&self) -> Option<String>;
}

/// One `X-Forwarded-For` element: an address, maybe with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` address of one RFC 7239 `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_hop(v))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        peer: Option<IpAddr>,
        headers: Vec<(&'static str, &'static str)>,
    }

    impl RequestView for Req {
        fn peer_ip(&self) -> Option<IpAddr> {
            self.peer
        }
        fn header_values(&self, name: &str) -> Vec<&[u8]> {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
                .collect()
        }
        fn path(&self) -> &str {
            "/p"
        }
        fn route(&self) -> Option<String> {
            None
        }
    }

    fn limit() -> HttpLimit {
        let rl = RateLimiter::builder().build().unwrap();
        HttpLimit::new(rl, RateLimit::try_from(10.0).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn req(peer: &str, headers: Vec<(&'static str, &'static str)>) -> Req {
        Req {
            peer: Some(ip(peer)),
            headers,
        }
    }

    #[test]
    fn forwarding_headers_are_read_only_from_trusted_proxies() {
        let xff = vec![("x-forwarded-for", "1.1.1.1, 2.2.2.2")];
        // No trusted proxies: the header is ignored.
        assert_eq!(
            limit().client_ip(&req("9.9.9.9", xff.clone())),
            Some(ip("9.9.9.9"))
        );
        let l = limit().trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            l.client_ip(&req("9.9.9.9", xff.clone())),
            Some(ip("9.9.9.9"))
        );
        // A trusted peer: the rightmost untrusted hop (1.1.1.1 may be forged by 2.2.2.2).
        assert_eq!(l.client_ip(&req("10.0.0.1", xff)), Some(ip("2.2.2.2")));
        // Trusted hops are skipped, across repeated headers.
        let chain = vec![
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "3.3.3.3, 10.0.0.2:8080"),
        ];
        assert_eq!(l.client_ip(&req("10.0.0.1", chain)), Some(ip("3.3.3.3")));
        // A garbage hop stops the walk at the last checked address.
        let junk = vec![("x-forwarded-for", "1.1.1.1, unknown, 10.0.0.3")];
        assert_eq!(l.client_ip(&req("10.0.0.1", junk)), Some(ip("10.0.0.3")));
        // No header: the proxy itself.
        assert_eq!(l.client_ip(&req("10.0.0.1", vec![])), Some(ip("10.0.0.1")));
    }

    #[test]
    fn rfc7239_forwarded_and_ipv6_hops() {
        let l = limit()
            .trusted_proxies(["::1".parse().unwrap()])
            .forwarded_header(ForwardedHeader::Forwarded);
        let h = vec![(
            "forwarded",
            "for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\";by=x",
        )];
        assert_eq!(l.client_ip(&req("::1", h)), Some(ip("2001:db8:cafe::17")));
        // IPv4-mapped peers count as IPv4.
        let l = limit().trusted_proxies(["127.0.0.1".parse().unwrap()]);
        let h = vec![("x-forwarded-for", "[2001:db8::1]:80")];
        assert_eq!(
            l.client_ip(&req("::ffff:127.0.0.1", h)),
            Some(ip("2001:db8::1"))
        );
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: IpRange = "2001:db8::/32".parse().unwrap();
        assert!(r.contains(ip("2001:db8:1::1")));
        assert!(!r.contains(ip("2001:db9::1")));
        assert!(!r.contains(ip("10.0.0.1")));
        assert!("0.0.0.0/0"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/", "10.0.0.0/x", "::/129", "host/8"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.1.0.0/16".parse::<IpRange>().unwrap().to_string(),
            "10.1.0.0/16"
        );
    }

    #[test]
    fn keys_are_namespaced_and_missing_keys_follow_the_policy() {
        let l = limit().name("a\"b").key(KeyBy::Header("x-api-key".into()));
        let r = req("1.2.3.4", vec![("x-api-key", "k1")]);
        assert_eq!(l.key_of(&r, None), KeyOutcome::Key("a_b\u{1f}k1".into()));
        let none = req("1.2.3.4", vec![]);
        assert_eq!(l.key_of(&none, None), KeyOutcome::Key("a_b\u{1f}".into()));
        let l = l.on_missing_key(MissingKey::Reject(401));
        assert_eq!(l.key_of(&none, None), KeyOutcome::Reject(401));
        let l = l.on_missing_key(MissingKey::Allow);
        assert_eq!(l.key_of(&none, None), KeyOutcome::Unlimited);
        assert_eq!(
            l.key_of(&none, Some(Some("c".into()))),
            KeyOutcome::Key("a_b\u{1f}c".into())
        );
        assert_eq!(l.key_of(&r, Some(None)), KeyOutcome::Unlimited);
    }

    #[test]
    fn fields_follow_the_decision() {
        let l = limit().name("api");
        let key = "api\u{1f}k";
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut last = None;
        for i in 0..10u64 {
            let v = rt.block_on(l.decide(key));
            let Verdict::Pass(h) = v else { panic!("{v:?}") };
            assert_eq!(h[0], (RATE_LIMIT_POLICY, "\"api\";q=10;w=1".to_owned()));
            assert_eq!(h[1], (RATE_LIMIT, format!("\"api\";r={};t=1", 9 - i)));
            last = Some(h);
        }
        assert!(last.is_some());
        let v = rt.block_on(l.decide(key));
        let Verdict::Deny { status, headers } = v else {
            panic!("{v:?}")
        };
        assert_eq!(status, 429);
        assert_eq!(headers[0], (RETRY_AFTER, "1".to_owned()));
        assert_eq!(headers[2], (RATE_LIMIT, "\"api\";r=0;t=1".to_owned()));
        // Never: only Retry-After.
        let l = l.headers(RateLimitHeaders::Never);
        let Verdict::Deny { headers, .. } = rt.block_on(l.decide(key)) else {
            panic!()
        };
        assert_eq!(headers.len(), 1);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn keys_too_long_for_redis_go_by_digest() {
        let l = limit().key(KeyBy::Header("x-api-key".into()));
        let long: &'static str = Box::leak("k".repeat(4000).into_boxed_str());
        let other: &'static str = Box::leak(format!("{}j", "k".repeat(3999)).into_boxed_str());
        let key = |v| match l.key_of(&req("1.2.3.4", vec![("x-api-key", v)]), None) {
            KeyOutcome::Key(k) => k,
            o => panic!("{o:?}"),
        };
        let (a, b) = (key(long), key(other));
        assert!(a.len() <= crate::redis::MAX_KEY_LEN && a.starts_with("default\u{1f}\u{1f}"));
        assert_ne!(a, b);
        assert_eq!(key(long), a);
    }

    #[test]
    fn a_slow_rate_stretches_the_advertised_window() {
        let rl = RateLimiter::builder().build().unwrap();
        let l = HttpLimit::new(rl, RateLimit::try_from(0.25).unwrap());
        assert_eq!(l.policy_field(), "\"default\";q=1;w=4");
    }
}
