//! Exactness across processes: two limiter instances with their own connections hammer one hot
//! key; every decision carries the Redis server time it was made at, and an oracle over those
//! times finds no window that admitted more than its capacity.
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eyelet::{RateLimiter, RedisError};
use support::redis_server::RedisServer;
use support::{oracle, rate, Event};

async fn instance(server: &RedisServer) -> Arc<RateLimiter> {
    RateLimiter::builder()
        .window(Duration::from_millis(1000))
        .bucket(Duration::from_millis(10))
        .redis_url(server.url())
        .prefix("exact")
        .redis_deadline(Duration::from_secs(5))
        .sweeper(false)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_hot_key_never_over_admit() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let cap = 500u64; // 500 req/s over 1 s
    let r = rate(cap as f64);
    let run_for = Duration::from_millis(3500);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let rl = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut events = Vec::new();
            let mut n = 0u64;
            while start.elapsed() < run_for {
                n += 1;
                let w = 1 + n % 3; // weighted: all-or-nothing must hold too
                let s = rl.redis().absolute().inc_stamped("hot", &r, w).await?;
                events.push(Event {
                    at_ms: s.at_ms,
                    n: w,
                    admitted: s.decision.is_allowed(),
                });
            }
            Ok::<_, RedisError>(events)
        }));
    }
    let mut events = Vec::new();
    for t in tasks {
        events.extend(t.await.expect("task").expect("no redis error"));
    }
    // Times are epoch milliseconds: rebase for the oracle.
    let t0 = events.iter().map(|e| e.at_ms).min().expect("events");
    for e in &mut events {
        e.at_ms -= t0;
    }
    let admitted: u64 = events.iter().filter(|e| e.admitted).map(|e| e.n).sum();
    let (over, false_rejections) = oracle(&events, cap, 1000, 10);
    eprintln!(
        "{} decisions from 2 instances, {admitted} weight admitted; over-admissions {over}, \
         false rejections {false_rejections}",
        events.len()
    );
    assert!(events.len() > 5000, "too few decisions to prove anything");
    assert!(
        admitted >= 3 * cap,
        "the limit was never reached: {admitted}"
    );
    assert_eq!(over, 0);
    assert_eq!(false_rejections, 0);
}
