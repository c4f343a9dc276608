//! Owned handles: `'static` futures spawned as tasks, on every provider, decide exactly as the
//! borrowed handles do.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::time::Duration;

use eyelet::RateLimiter;
use support::rate;

fn assert_static_send<T: Send + 'static>(t: T) -> T {
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_local_decisions_are_exact() {
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .build()
        .expect("config");
    let abs = rl.owned(|rl| rl.local().absolute());
    let r = rate(50.0 / 60.0); // C = 50
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(assert_static_send(abs.inc_async(
                format!("k{}", i % 2),
                r,
                1,
            )))
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap().is_allowed());
    }
    assert_eq!(admitted, 100, "50 per key");
    assert_eq!(tokio::spawn(abs.get_async("k0")).await.unwrap(), 50);
    assert!(!tokio::spawn(abs.is_allowed_async("k0", r, 1))
        .await
        .unwrap()
        .is_allowed());
    let d = tokio::spawn(abs.inc_many_weighted_async(vec![("w".into(), 30), ("w".into(), 30)], r))
        .await
        .unwrap();
    assert_eq!(d.iter().filter(|d| d.is_allowed()).count(), 1);
    let sup = rl.owned(|rl| rl.local().suppressed());
    assert!(tokio::spawn(sup.inc_async("s", r, 1))
        .await
        .unwrap()
        .is_allowed());
    assert_eq!(sup.handle().get("s").total, 1);
    #[cfg(feature = "tokio")]
    {
        let d = tokio::spawn(abs.acquire("fresh", r, 5, None))
            .await
            .unwrap();
        assert!(d.expect("admitted").is_allowed());
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_redis_and_hybrid_decisions_are_exact() {
    let server = support::redis_server::RedisServer::start();
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .redis_url(server.url())
        .prefix("owned")
        .connect()
        .await
        .expect("connect");
    let r = rate(50.0 / 60.0);
    let redis = rl.owned(|rl| rl.redis().absolute());
    let tasks: Vec<_> = (0..120)
        .map(|_| tokio::spawn(redis.inc("k", r, 1)))
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap().expect("decided").is_allowed());
    }
    assert_eq!(admitted, 50);
    assert_eq!(tokio::spawn(redis.get("k")).await.unwrap().unwrap(), 50);
    rl.hybrid().flush().await.expect("first sync");
    let hybrid = rl.owned(|rl| rl.hybrid().absolute());
    let tasks: Vec<_> = (0..120)
        .map(|_| tokio::spawn(hybrid.inc_async("k", r, 1)))
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap().is_allowed());
    }
    assert_eq!(admitted, 50, "a sole instance decides as the local rule");
    rl.hybrid().shutdown().await.expect("shutdown");
}
