//! The actix-web middleware over real HTTP: a running actix-web server on a loopback port,
//! real clients (ureq) from many threads; the Redis and hybrid providers against real
//! `redis-server` processes.
#![cfg(feature = "actix-web")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::net::SocketAddr;

use actix_web::{web, App, HttpResponse, HttpServer};
use eyelet::actix_web::RateLimiting;
use support::http_client::{self, get, Limits, USER_HEADER};

async fn ok() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// Serves `factory`'s app on a free loopback port, on a thread of its own; returns the base URL.
fn serve<F, T, B>(factory: F) -> String
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    B: actix_web::body::MessageBody + 'static,
    T: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(factory)
                .workers(2)
                .bind(("127.0.0.1", 0))
                .expect("bind");
            tx.send(server.addrs()[0]).expect("report the address");
            server.run().await
        })
    });
    format!("http://{}", rx.recv().expect("server started"))
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
    let base = serve(move || {
        let one = |path: &str, limit: &eyelet::http::HttpLimit| {
            web::resource(path)
                .wrap(RateLimiting::new(limit.clone()))
                .route(web::get().to(ok))
        };
        App::new()
            .service(one("/exact", &exact))
            .service(one("/count", &count))
            .service(one("/trusted", &trusted))
            .service(one("/untrusted", &untrusted))
            .service(one("/route/{id}", &route))
            .service(one("/key", &key))
            .service(one("/shed", &shed))
            .service(
                web::resource("/custom")
                    .wrap(RateLimiting::new(custom.clone()).key_fn(|req| {
                        let v = req.headers().get(USER_HEADER)?;
                        v.to_str().ok().map(str::to_owned)
                    }))
                    .route(web::get().to(ok)),
            )
    });
    (base, clock)
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

/// A scope's limit applies to every route in it, on top of the app's.
#[test]
fn scope_and_app_limits_stack() {
    let (limits, _clock) = http_client::limits();
    let (outer, inner) = (limits.untrusted, limits.count);
    let base = serve(move || {
        App::new().wrap(RateLimiting::new(outer.clone())).service(
            web::scope("/s")
                .wrap(RateLimiting::new(inner.clone()))
                .route("/a", web::get().to(ok))
                .route("/b", web::get().to(ok)),
        )
    });
    // The app allows 2 per client in all, whatever the scope allows.
    let replies: Vec<_> = ["/s/a", "/s/b", "/s/a", "/s/b"]
        .iter()
        .map(|p| get(&format!("{base}{p}"), &[]))
        .collect();
    assert_eq!(
        replies.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 429, 429]
    );
    // Both policies are listed, the inner (scope) one first.
    assert_eq!(
        replies[0].header("ratelimit-policy"),
        Some("\"count\";q=5;w=1, \"untrusted\";q=2;w=1")
    );
    assert_eq!(
        replies[1].header("ratelimit"),
        Some("\"count\";r=3;t=1, \"untrusted\";r=0;t=1")
    );
    // A rejection by the app's limit carries its own fields only.
    assert_eq!(
        replies[2].header("ratelimit"),
        Some("\"untrusted\";r=0;t=1")
    );
}

#[cfg(feature = "redis")]
mod redis_backed {
    use super::*;
    use eyelet::http::{HttpLimit, Provider, StoreFailure};
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
        let closed = HttpLimit::new(rl, per_min)
            .name("closed")
            .provider(Provider::Redis)
            .on_store_failure(StoreFailure::FailClosed);
        let base = serve(move || {
            App::new()
                .service(
                    web::resource("/open")
                        .wrap(RateLimiting::new(open.clone()))
                        .route(web::get().to(ok)),
                )
                .service(
                    web::resource("/closed")
                        .wrap(RateLimiting::new(closed.clone()))
                        .route(web::get().to(ok)),
                )
        });
        http_client::redis_exact_then_dead(&base, &mut server, 503);
    }

    #[test]
    fn hybrid_provider_sole_instance_is_exact() {
        let server = RedisServer::start();
        let (rl, rt) = http_client::connect(&server);
        let limit = HttpLimit::new(rl.clone(), RateLimit::per_minute(10.0).unwrap())
            .name("hybrid")
            .provider(Provider::Hybrid);
        let base = serve(move || {
            App::new()
                .wrap(RateLimiting::new(limit.clone()))
                .route("/", web::get().to(ok))
        });
        http_client::sole_instance_is_exact(&base);
        rt.block_on(rl.hybrid().shutdown()).expect("shutdown");
    }
}
