//! Large batches on the Redis provider: any number of operations on any number of keys, in
//! input order per key, without holding one script call for long (issue 7.3 and 7.6).
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use eyelet::{RateLimitDecision, RateLimiter};
use support::rate;
use support::redis_server::RedisServer;

async fn limiter(server: &RedisServer, prefix: &str) -> Arc<RateLimiter> {
    RateLimiter::builder()
        .window(Duration::from_secs(60))
        .redis_url(server.url())
        .prefix(prefix)
        .redis_deadline(Duration::from_secs(20))
        .sweeper(false)
        .connect()
        .await
        .expect("connect")
}

/// 9,000 operations on one key (the Lua reply once overflowed `unpack` at about 2,000): the
/// first `C` are admitted in input order, the rest rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_thousand_operations_on_one_key() {
    let server = RedisServer::start();
    let rl = limiter(&server, "b9k").await;
    let keys = vec!["hot"; 9_000];
    let r = rate(5_000.0 / 60.0); // C = 5,000 per 60 s
    for strat in ["absolute", "suppressed"] {
        let d = if strat == "absolute" {
            rl.redis().absolute().inc_many(&keys, &r, 1).await
        } else {
            rl.redis().suppressed().inc_many(&keys, &r, 1).await
        }
        .unwrap_or_else(|e| panic!("{strat}: {e}"));
        assert_eq!(d.len(), 9_000);
        assert!(
            d[..5_000].iter().all(|d| *d == RateLimitDecision::Allowed),
            "{strat}: the first C in input order are admitted below the soft limit"
        );
        if strat == "absolute" {
            assert!(d[5_000..].iter().all(|d| !d.is_allowed()), "{strat}");
            assert_eq!(rl.redis().absolute().get("hot").await.unwrap(), 5_000);
        } else {
            // H = 7,500: never more accepted than that, whatever the draws
            let accepted = d.iter().filter(|d| d.is_allowed()).count();
            assert!((5_000..=7_500).contains(&accepted), "{accepted}");
            let snap = rl.redis().suppressed().get("hot").await.unwrap();
            assert_eq!(snap.total, 9_000);
            assert_eq!(snap.accepted, accepted as u64);
            assert_eq!(snap.total - snap.declined, snap.accepted);
        }
    }
}

/// 30,000 operations over three keys interleaved, then 50,000 over 5,000 keys: every answer
/// in input order, exact per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tens_of_thousands_of_operations_on_few_and_many_keys() {
    let server = RedisServer::start();
    let rl = limiter(&server, "bmany").await;
    let abs = rl.redis().absolute();
    let r = rate(4_000.0 / 60.0); // C = 4,000
    let keys: Vec<String> = (0..30_000).map(|i| format!("k{}", i % 3)).collect();
    let d = abs.inc_many(&keys, &r, 1).await.expect("30k ops on 3 keys");
    for k in 0..3 {
        let mine: Vec<bool> = d
            .iter()
            .skip(k)
            .step_by(3)
            .map(|d| d.is_allowed())
            .collect();
        assert_eq!(mine.len(), 10_000);
        assert!(
            mine[..4_000].iter().all(|&a| a),
            "key {k}: first C admitted"
        );
        assert!(
            mine[4_000..].iter().all(|&a| !a),
            "key {k}: the rest rejected"
        );
        assert_eq!(abs.get(&format!("k{k}")).await.unwrap(), 4_000);
    }
    let keys: Vec<String> = (0..50_000).map(|i| format!("m{}", i % 5_000)).collect();
    let r = rate(3.0 / 60.0); // C = 3
    let d = abs
        .inc_many(&keys, &r, 1)
        .await
        .expect("50k ops on 5k keys");
    let allowed = d.iter().filter(|d| d.is_allowed()).count();
    assert_eq!(allowed, 5_000 * 3);
    assert!(d[..15_000].iter().all(|d| d.is_allowed()));
}

/// A reset that shares a batch with a huge `inc_many` is answered and applied together with it:
/// never reported as failed while applied (issue 7.9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_beside_a_huge_batch_is_answered() {
    let server = RedisServer::start();
    let rl = limiter(&server, "breset").await;
    let abs = rl.redis().absolute().clone();
    let r = rate(1.0 / 60.0);
    assert!(abs.inc("victim", &r, 1).await.unwrap().is_allowed());
    let keys = vec!["hot"; 2_500];
    let big = {
        let abs = abs.clone();
        tokio::spawn(async move { abs.inc_many(&keys, &rate(100.0), 1).await })
    };
    let reset = {
        let abs = abs.clone();
        tokio::spawn(async move { abs.reset("victim").await })
    };
    let big = big.await.expect("join");
    let reset = reset.await.expect("join");
    assert!(big.is_ok(), "{big:?}");
    assert_eq!(reset, Ok(true));
    assert_eq!(abs.get("victim").await.unwrap(), 0);
}

/// Weighted batches: each request's own weight, decided in input order per key, on both
/// strategies; the async local form agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_batches_decide_each_request_at_its_own_weight() {
    let server = RedisServer::start();
    let rl = limiter(&server, "bw").await;
    let r = rate(10.0 / 60.0); // C = 10 per 60 s
    let reqs = [("a", 6), ("b", 3), ("a", 6), ("a", 4), ("b", 8), ("a", 0)];
    let d = rl
        .redis()
        .absolute()
        .inc_many_weighted(&reqs, &r)
        .await
        .expect("decided");
    let allowed: Vec<bool> = d.iter().map(RateLimitDecision::is_allowed).collect();
    assert_eq!(allowed, [true, true, false, true, false, false]);
    assert_eq!(rl.redis().absolute().get("a").await.unwrap(), 10);
    assert_eq!(rl.redis().absolute().get("b").await.unwrap(), 3);
    let local = rl
        .local()
        .absolute()
        .inc_many_weighted_async(&reqs, &r)
        .await;
    assert_eq!(
        local, d,
        "the local provider decides the same batch the same way"
    );
    let s = rl
        .redis()
        .suppressed()
        .inc_many_weighted(&[("s", 2), ("s", 3)], &r)
        .await
        .expect("decided");
    assert!(s.iter().all(RateLimitDecision::is_allowed));
    assert_eq!(rl.redis().suppressed().get("s").await.unwrap().total, 5);
}
