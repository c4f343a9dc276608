//! The tower layer over real HTTP: an axum server on a loopback port, real clients (ureq)
//! from many threads; the Redis and hybrid providers against real `redis-server` processes.
#![cfg(feature = "tower")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::net::SocketAddr;

use axum::routing::get as route_get;
use axum::Router;
use eyelet::http::HttpLimit;
use eyelet::tower::RateLimitLayer;
use support::http_client::{self, get, Limits, USER_HEADER};

async fn ok() -> &'static str {
    "ok"
}

/// Serves `app` on a free loopback port, on a runtime of its own; returns the base URL.
fn serve(app: Router) -> String {
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("address"))
                .expect("report the address");
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .expect("serve");
        });
    });
    format!("http://{}", rx.recv().expect("server started"))
}

fn one(limit: HttpLimit) -> axum::routing::MethodRouter {
    route_get(ok).layer(RateLimitLayer::new(limit))
}

/// The scenario routes of `support::http_client`, each wrapped by its limit.
fn scenario_server() -> (String, eyelet::ManualClock) {
    let (limits, clock) = http_client::limits();
    let Limits {
        exact,
        count,
        trusted,
        untrusted,
        route,
        key,
        shed,
        custom,
    } = limits;
    let by_user = RateLimitLayer::new(custom).key_fn(|parts| {
        let v = parts.headers.get(USER_HEADER)?;
        v.to_str().ok().map(str::to_owned)
    });
    let app = Router::new()
        .route("/exact", one(exact))
        .route("/count", one(count))
        .route("/trusted", one(trusted))
        .route("/untrusted", one(untrusted))
        .route("/route/{id}", one(route))
        .route("/key", one(key))
        .route("/shed", one(shed))
        .route("/custom", route_get(ok).layer(by_user));
    (serve(app), clock)
}

#[test]
fn exactly_c_requests_pass_per_window_from_concurrent_clients() {
    let (base, clock) = scenario_server();
    http_client::exactly_c_pass_per_window(&base, &clock);
}

#[test]
fn fields_count_down_and_retry_after_rounds_up() {
    let (base, clock) = scenario_server();
    http_client::fields_count_down_and_retry_after_rounds_up(&base, &clock);
}

#[test]
fn the_client_address_comes_from_trusted_proxies_only() {
    let (base, _clock) = scenario_server();
    http_client::client_ip_believes_only_trusted_proxies(&base);
}

#[test]
fn route_header_and_closure_keys() {
    let (base, _clock) = scenario_server();
    http_client::route_header_and_closure_keys(&base);
}

#[test]
fn suppressed_sheds_with_its_configured_status() {
    let (base, _clock) = scenario_server();
    http_client::suppressed_sheds_with_its_status(&base);
}

/// A router-wide layer and a route's stack: both policies are listed.
#[test]
fn router_and_route_layers_stack() {
    let (limits, _clock) = http_client::limits();
    let app = Router::new()
        .route("/a", one(limits.count))
        .route("/b", route_get(ok))
        .layer(RateLimitLayer::new(limits.untrusted));
    let base = serve(app);
    let replies: Vec<_> = ["/a", "/b", "/a"]
        .iter()
        .map(|p| get(&format!("{base}{p}"), &[]))
        .collect();
    assert_eq!(
        replies.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 429]
    );
    assert_eq!(
        replies[0].header("ratelimit-policy"),
        Some("\"count\";q=5;w=1, \"untrusted\";q=2;w=1")
    );
    assert_eq!(
        replies[1].header("ratelimit"),
        Some("\"untrusted\";r=0;t=1")
    );
}

#[cfg(feature = "redis")]
mod redis_backed {
    use super::*;
    use eyelet::http::{Provider, StoreFailure, Strategy};
    use eyelet::RateLimit;
    use support::redis_server::RedisServer;

    #[test]
    fn redis_provider_is_exact_and_a_dead_redis_follows_the_policy() {
        let mut server = RedisServer::start();
        let (rl, _rt) = http_client::connect(&server);
        let per_min = RateLimit::per_minute(10.0).unwrap();
        let open = HttpLimit::new(rl.clone(), per_min)
            .name("open")
            .provider(Provider::Redis);
        let closed = HttpLimit::new(rl.clone(), per_min)
            .name("closed")
            .provider(Provider::Redis)
            .on_store_failure(StoreFailure::FailClosed)
            .failure_status(502);
        let shed = HttpLimit::new(rl, per_min)
            .name("shed")
            .provider(Provider::Redis)
            .strategy(Strategy::Suppressed);
        let base = serve(
            Router::new()
                .route("/open", one(open))
                .route("/closed", one(closed))
                .route("/shed", one(shed)),
        );
        let replies = http_client::burst(&format!("{base}/shed"), 8, 4, &[]);
        let ok = http_client::statuses(&replies)
            .get(&200)
            .copied()
            .unwrap_or(0);
        assert!((10..=15).contains(&ok), "suppressed on Redis: {ok}");
        http_client::redis_exact_then_dead(&base, &mut server, 502);
    }

    #[test]
    fn hybrid_provider_sole_instance_is_exact() {
        let server = RedisServer::start();
        let (rl, rt) = http_client::connect(&server);
        let limit = HttpLimit::new(rl.clone(), RateLimit::per_minute(10.0).unwrap())
            .name("hybrid")
            .provider(Provider::Hybrid);
        let base = serve(Router::new().route("/", one(limit)));
        http_client::sole_instance_is_exact(&base);
        rt.block_on(rl.hybrid().shutdown()).expect("shutdown");
    }
}
