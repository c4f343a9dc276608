//! A real HTTP client (ureq, blocking) for the middleware tests: one request, or a burst from
//! many client threads at once.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// One response: status and headers (names lower case; repeated fields joined by ", ", as
/// a list-valued field reads).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// `r` of the `RateLimit` field.
    pub fn remaining(&self) -> Option<u64> {
        param(self.header("ratelimit")?, "r")
    }

    /// `t` of the `RateLimit` field.
    pub fn reset(&self) -> Option<u64> {
        param(self.header("ratelimit")?, "t")
    }
}

/// The integer parameter `name` of a one-item structured-field list (`"p";r=3;t=1`).
pub fn param(field: &str, name: &str) -> Option<u64> {
    field.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .build()
}

/// GET `url` with `headers`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    get_with(&agent(), url, headers)
}

fn get_with(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| {
            let all = resp.all(&n);
            (!all.is_empty()).then(|| (n.to_ascii_lowercase(), all.join(", ")))
        })
        .collect();
    let _ = resp.into_string();
    Reply { status, headers }
}

/// `clients` threads (each its own connection pool) send `each` requests at once.
pub fn burst(url: &str, clients: usize, each: usize, headers: &[(&str, &str)]) -> Vec<Reply> {
    let start = Arc::new(Barrier::new(clients));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, start, headers) = (url.to_owned(), start.clone(), headers.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                start.wait();
                (0..each)
                    .map(|_| get_with(&agent, &url, &h))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect()
}

/// How many replies have each status.
pub fn statuses(replies: &[Reply]) -> HashMap<u16, usize> {
    let mut m = HashMap::new();
    for r in replies {
        *m.entry(r.status).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// The scenarios both middlewares must pass: each test file serves the routes below, limited by
// `Limits`, on its framework, and runs each scenario against its base URL.

use eyelet::http::{HttpLimit, IpRange, KeyBy, MissingKey, Strategy};
use eyelet::{ManualClock, RateLimit, RateLimiter};

/// The limit of each route the scenarios call (all on one limiter with a manual clock).
pub struct Limits {
    /// `GET /exact`: 20 per second per client.
    pub exact: HttpLimit,
    /// `GET /count`: 5 per second per client.
    pub count: HttpLimit,
    /// `GET /trusted`: 2 per second per client, 127.0.0.0/8 trusted as proxies.
    pub trusted: HttpLimit,
    /// `GET /untrusted`: 2 per second per client, no trusted proxies.
    pub untrusted: HttpLimit,
    /// `GET /route/{id}`: 3 per second per route.
    pub route: HttpLimit,
    /// `GET /key`: 2 per second per `x-api-key`; 401 without one.
    pub key: HttpLimit,
    /// `GET /shed`: suppressed, soft limit 10, hard 15; shed requests get 503.
    pub shed: HttpLimit,
    /// `GET /custom`: 2 per second per `x-user`, through the framework's key closure.
    pub custom: HttpLimit,
}

/// The limits, on a limiter whose clock the test moves (W = 1 s, G = 10 ms, h = 1.5).
pub fn limits() -> (Limits, ManualClock) {
    let clock = ManualClock::new();
    let rl = RateLimiter::builder()
        .clock(clock.clone())
        .seed(7)
        .sweeper(false)
        .build()
        .expect("limiter");
    let rate = |r: f64| RateLimit::try_from(r).expect("rate");
    let limit = |name: &str, r: f64| HttpLimit::new(rl.clone(), rate(r)).name(name);
    let loopback: IpRange = "127.0.0.0/8".parse().expect("range");
    let limits = Limits {
        exact: limit("exact", 20.0),
        count: limit("count", 5.0),
        trusted: limit("trusted", 2.0).trusted_proxies([loopback]),
        untrusted: limit("untrusted", 2.0),
        route: limit("route", 3.0).key(KeyBy::Route),
        key: limit("key", 2.0)
            .key(KeyBy::Header("x-api-key".into()))
            .on_missing_key(MissingKey::Reject(401)),
        shed: limit("shed", 10.0)
            .strategy(Strategy::Suppressed)
            .suppressed_status(503),
        custom: limit("custom", 2.0),
    };
    (limits, clock)
}

/// The `x-user` header, for the key closures.
pub const USER_HEADER: &str = "x-user";

fn passed(replies: &[Reply]) -> usize {
    replies.iter().filter(|r| r.status == 200).count()
}

/// 16 clients × 5 requests at once, three windows: exactly C = 20 pass in each; every
/// rejection is a 429 with the fields its decision implies.
pub fn exactly_c_pass_per_window(base: &str, clock: &ManualClock) {
    for window in 0..3 {
        let replies = burst(&format!("{base}/exact"), 16, 5, &[]);
        assert_eq!(
            statuses(&replies).get(&200),
            Some(&20),
            "window {window}: {:?}",
            statuses(&replies)
        );
        assert_eq!(statuses(&replies).get(&429), Some(&60), "window {window}");
        let mut left: Vec<u64> = Vec::new();
        for r in &replies {
            assert_eq!(
                r.header("ratelimit-policy"),
                Some("\"exact\";q=20;w=1"),
                "{r:?}"
            );
            if r.status == 429 {
                // Everything was admitted at this instant: free again in exactly W.
                assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
                assert_eq!(r.header("ratelimit"), Some("\"exact\";r=0;t=1"), "{r:?}");
            } else {
                assert_eq!(r.reset(), Some(1), "{r:?}");
                left.push(r.remaining().expect("r on an admitted response"));
            }
        }
        // `r` is read after each decision: the k-th admission leaves 19 - k, and a read after
        // it sees at most that, so the j-th largest `r` is at most 19 - j.
        left.sort_unstable_by(|a, b| b.cmp(a));
        for (j, r) in left.iter().enumerate() {
            assert!(*r <= 19 - j as u64, "{left:?}");
        }
        clock.advance(Duration::from_secs(1));
    }
}

/// Sequential requests count `r` down exactly; `Retry-After` rounds the hint up to seconds.
pub fn fields_count_down_and_retry_after_rounds_up(base: &str, clock: &ManualClock) {
    let url = format!("{base}/count");
    for left in (0..5).rev() {
        let r = get(&url, &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"count\";r={left};t=1").as_str())
        );
        assert_eq!(r.header("ratelimit-policy"), Some("\"count\";q=5;w=1"));
    }
    clock.advance(Duration::from_millis(999));
    let r = get(&url, &[]);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "1 ms rounds up to 1 s");
    assert_eq!(r.header("ratelimit"), Some("\"count\";r=0;t=1"));
    clock.advance(Duration::from_millis(1));
    let r = get(&url, &[]);
    assert_eq!((r.status, r.remaining()), (200, Some(4)), "{r:?}");
}

/// Behind a trusted proxy each forwarded client has its own budget; a header from an
/// untrusted peer is ignored (all those requests are the peer's).
pub fn client_ip_believes_only_trusted_proxies(base: &str) {
    for client in ["203.0.113.1", "203.0.113.2"] {
        let chain = format!("198.51.100.9, {client}, 127.0.0.2");
        let replies: Vec<_> = (0..3)
            .map(|_| get(&format!("{base}/trusted"), &[("x-forwarded-for", &chain)]))
            .collect();
        assert_eq!(passed(&replies), 2, "{client}: {replies:?}");
    }
    let replies: Vec<_> = ["203.0.113.3", "203.0.113.4", "203.0.113.5"]
        .iter()
        .map(|c| get(&format!("{base}/untrusted"), &[("x-forwarded-for", c)]))
        .collect();
    assert_eq!(
        passed(&replies),
        2,
        "forged headers share the peer's budget: {replies:?}"
    );
}

/// A route key is one budget for every path of the route; a header key is per value, and
/// a request without it gets the configured status; a key closure replaces `KeyBy`.
pub fn route_header_and_closure_keys(base: &str) {
    let replies: Vec<_> = (0..6)
        .map(|i| get(&format!("{base}/route/{i}"), &[]))
        .collect();
    assert_eq!(passed(&replies), 3, "{replies:?}");
    for k in ["k1", "k2"] {
        let replies: Vec<_> = (0..3)
            .map(|_| get(&format!("{base}/key"), &[("x-api-key", k)]))
            .collect();
        assert_eq!(passed(&replies), 2, "{k}: {replies:?}");
    }
    assert_eq!(get(&format!("{base}/key"), &[]).status, 401);
    for user in ["alice", "bob"] {
        let replies: Vec<_> = (0..3)
            .map(|_| get(&format!("{base}/custom"), &[(USER_HEADER, user)]))
            .collect();
        assert_eq!(passed(&replies), 2, "{user}: {replies:?}");
    }
}

/// The suppressed strategy admits everything up to the soft limit, never more than the hard
/// limit, and sheds with the configured status.
pub fn suppressed_sheds_with_its_status(base: &str) {
    let replies: Vec<_> = (0..60).map(|_| get(&format!("{base}/shed"), &[])).collect();
    assert!(replies[..10].iter().all(|r| r.status == 200), "{replies:?}");
    let ok = passed(&replies);
    assert!((10..=15).contains(&ok), "{ok}");
    for r in replies.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.remaining(), Some(0));
    }
}

/// A limiter connected to `server` (a minute-long window, so a slow machine cannot spread a
/// burst over two windows), and the runtime its Redis tasks run on.
#[cfg(feature = "redis")]
pub fn connect(
    server: &super::redis_server::RedisServer,
) -> (std::sync::Arc<RateLimiter>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rl = rt
        .block_on(
            RateLimiter::builder()
                .window(Duration::from_secs(60))
                .redis_url(server.url())
                .prefix("http-test")
                .redis_deadline(Duration::from_millis(300))
                .connect(),
        )
        .expect("connect");
    (rl, rt)
}

/// `GET /closed` (Redis provider, 10 per minute, fail closed with `closed_status`) admits
/// exactly 10 of 32 concurrent requests; `GET /open` (the same, fail open) shows what is left;
/// with the server killed, `/open` lets requests through without fields and `/closed` refuses
/// them with `closed_status` and `Retry-After: 1`.
#[cfg(feature = "redis")]
pub fn redis_exact_then_dead(
    base: &str,
    server: &mut super::redis_server::RedisServer,
    closed_status: u16,
) {
    let replies = burst(&format!("{base}/closed"), 8, 4, &[]);
    assert_eq!(
        statuses(&replies).get(&200),
        Some(&10),
        "{:?}",
        statuses(&replies)
    );
    let r = get(&format!("{base}/open"), &[]);
    assert_eq!(r.header("ratelimit"), Some("\"open\";r=9;t=60"), "{r:?}");
    server.kill();
    let r = get(&format!("{base}/open"), &[]);
    assert_eq!(r.status, 200, "fail open: {r:?}");
    assert_eq!(r.header("ratelimit"), None, "no fields without a decision");
    let r = get(&format!("{base}/closed"), &[]);
    assert_eq!(
        (r.status, r.header("retry-after")),
        (closed_status, Some("1")),
        "{r:?}"
    );
}

/// `GET /` on a sole hybrid instance (10 per minute): exactly 10 of 32 concurrent requests.
pub fn sole_instance_is_exact(base: &str) {
    let replies = burst(&format!("{base}/"), 8, 4, &[]);
    assert_eq!(
        statuses(&replies).get(&200),
        Some(&10),
        "{:?}",
        statuses(&replies)
    );
    assert_eq!(statuses(&replies).get(&429), Some(&22));
}
