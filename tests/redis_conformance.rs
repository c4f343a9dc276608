//! The conformance suite on the Redis provider: every scenario the local provider passes, on a
//! real `redis-server`, and a differential run comparing every answer with the local provider.
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use support::conformance::{dense_steps, differential, random_steps, run_step, Subject, SCENARIOS};
use support::redis_server::RedisServer;

/// The scenarios to run: all, or those whose name contains `EYELET_SCENARIO`.
fn scenarios() -> impl Iterator<Item = &'static (&'static str, support::conformance::Scenario)> {
    let only = std::env::var("EYELET_SCENARIO").unwrap_or_default();
    SCENARIOS
        .iter()
        .filter(move |(name, _)| name.contains(&only))
}

#[tokio::test(flavor = "current_thread")]
async fn every_scenario_passes_on_local() {
    for (name, scenario) in scenarios() {
        let s = Subject::local(1000, 10, 1.5, 0.5);
        eprintln!("local: {name}");
        scenario(&s).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_scenario_passes_on_redis() {
    let server = RedisServer::start();
    for (name, scenario) in scenarios() {
        let s = Subject::redis(&server, 1000, 10, 1.5, 0.5).await;
        eprintln!("redis: {name}");
        scenario(&s).await;
    }
}

/// Same random call sequence, same clock: every answer equal, step by step.
#[tokio::test(flavor = "current_thread")]
async fn redis_answers_exactly_like_local() {
    let server = RedisServer::start();
    let mut compared = 0;
    let mut kinds = [0usize; 4];
    for (seed, (w, g, h, draw)) in [
        (1000, 10, 1.5, 0.5),
        (1000, 10, 1.0, 0.3),
        (2000, 100, 2.0, 0.8),
        (60, 1, 1.5, 0.1),
        (1000, 1, 1.5, 0.6),
    ]
    .into_iter()
    .enumerate()
    {
        let local = Subject::local(w, g, h, draw);
        let redis = Subject::redis(&server, w, g, h, draw).await;
        let steps = random_steps(seed as u64 + 7, 4000);
        differential(&local, &redis, &steps, &format!("seed {seed}"), &mut kinds).await;
        compared += steps.len();
    }
    eprintln!(
        "{compared} steps compared; allowed / rejected / suppressed-in / suppressed-out: {kinds:?}"
    );
    // the run must reach every kind of decision, or it proves little
    assert!(kinds.iter().all(|&k| k > 50), "{kinds:?}");
}

/// Hundreds of live buckets on one key: the ring's middle lives in hash fields on Redis.
#[tokio::test(flavor = "current_thread")]
async fn redis_answers_like_local_on_a_long_ring() {
    let server = RedisServer::start();
    let local = Subject::local(1000, 2, 1.5, 0.4);
    let redis = Subject::redis(&server, 1000, 2, 1.5, 0.4).await;
    for (i, step) in dense_steps(99, 6000).iter().enumerate() {
        let a = run_step(&local, step).await;
        let b = run_step(&redis, step).await;
        assert_eq!(a, b, "step {i}: {step:?} at t = {}", local.clock.ms());
    }
    let fields: usize = redis::cmd("HLEN")
        .arg(format!("{}:a:{{hot}}", redis_prefix(&redis)))
        .query(&mut server.conn())
        .expect("HLEN");
    assert!(
        fields > 20,
        "the ring should have spilled into fields: {fields}"
    );
}

fn redis_prefix(s: &Subject) -> String {
    format!("{:?}", s.rl.redis())
        .split("prefix: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("prefix in Debug")
        .to_string()
}

/// A key served at one window never changes its header on a rejection: a rejected call reads
/// and writes nothing back (the span is confirmed at most every half span).
#[tokio::test(flavor = "current_thread")]
async fn rejected_calls_write_nothing() {
    let server = RedisServer::start();
    let s = Subject::redis(&server, 1000, 10, 1.5, 0.5).await;
    let r = support::rate(2.0);
    assert!(s
        .inc(support::conformance::Strat::Abs, "k", &r, 2)
        .await
        .is_allowed());
    let mut admin = server.conn();
    let writes = |admin: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(admin).unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_hset:") || l.starts_with("cmdstat_pexpire:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let before = writes(&mut admin);
    for _ in 0..40 {
        s.advance(10);
        assert!(!s
            .inc(support::conformance::Strat::Abs, "k", &r, 1)
            .await
            .is_allowed());
    }
    assert_eq!(
        writes(&mut admin),
        before,
        "40 rejections within half a span"
    );
    s.advance(200); // t = 600: half a span since the confirmation at 0
    assert!(!s
        .inc(support::conformance::Strat::Abs, "k", &r, 1)
        .await
        .is_allowed());
    assert_eq!(writes(&mut admin), before + 1, "the span is confirmed once");
}

/// A key whose total passes 2^53 (where the script's counts clip) still gets the exact retry
/// hint: the rejection walk never starts from the clipped total (review of issue 7). Fast calls
/// of weight 10^14 each 100 s fill a span that a 10^-6 req/s call keeps for 10^9 ms.
#[tokio::test(flavor = "current_thread")]
async fn a_clipped_total_keeps_the_exact_retry_hint() {
    use support::conformance::Strat::Abs;
    let server = RedisServer::start();
    let local = Subject::local(100_000, 10, 1.5, 0.5);
    let redis = Subject::redis(&server, 100_000, 10, 1.5, 0.5).await;
    let (fast, slow) = (support::rate(1e12), support::rate(1e-6)); // C = 1e14; W_eff = 1e9 ms
    for s in [&local, &redis] {
        assert!(s.inc(Abs, "k", &slow, 1).await.is_allowed());
    }
    for step in 1..=95u64 {
        for s in [&local, &redis] {
            s.set_ms(step * 100_000);
            assert!(s
                .inc(Abs, "k", &fast, 100_000_000_000_000)
                .await
                .is_allowed());
        }
    }
    // 9.5e15 admitted in the span: past 2^53 − 1 on Redis
    assert!(local.get_abs("k").await > eyelet::redis::MAX_EXACT);
    for s in [&local, &redis] {
        s.set_ms(95 * 100_000 + 1);
    }
    let a = local.inc(Abs, "k", &slow, 1).await;
    let b = redis.inc(Abs, "k", &slow, 1).await;
    assert_eq!(a, b);
    // every bucket must leave the slow call's window: the newest (at 9.5e6 ms) leaves at 1.0095e9
    assert_eq!(
        a,
        support::conformance::rejected(1_000_000_000 - 1, 1, 1_000_000_000)
    );
}

/// On server time, a key dropped by its TTL answers as a kept one would: the local provider on a
/// manual clock replays the same calls at the same offsets and gets the same answer (issue 7.2:
/// Redis said Allowed after the TTL while local, raising the span before trimming, said
/// Rejected).
#[tokio::test(flavor = "current_thread")]
async fn a_key_dropped_by_its_ttl_answers_like_a_kept_one() {
    use std::time::{Duration, Instant};
    use support::conformance::Strat::Abs;
    let server = RedisServer::start();
    let rl = eyelet::RateLimiter::builder()
        .window(Duration::from_millis(100))
        .bucket(Duration::from_millis(10))
        .redis_url(server.url())
        .prefix("ttl")
        .sweeper(false)
        .connect()
        .await
        .expect("connect");
    let (fast, slow) = (support::rate(100.0), support::rate(0.5)); // slow: W_eff = 2000 ms
    let abs = rl.redis().absolute();
    let start = Instant::now();
    assert!(abs.inc("k", &fast, 1).await.expect("inc").is_allowed());
    let mut admin = server.conn();
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg("ttl:a:{k}")
            .query(&mut admin)
            .expect("EXISTS");
        if !exists {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = start.elapsed().as_millis() as u64;
    let on_redis = abs.inc("k", &slow, 1).await.expect("inc");
    let local = Subject::local(100, 10, 1.5, 0.5);
    assert!(local.inc(Abs, "k", &fast, 1).await.is_allowed());
    local.set_ms(waited);
    let kept = local.inc(Abs, "k", &slow, 1).await;
    assert_eq!(on_redis, kept, "after {waited} ms");
    assert_eq!(kept, eyelet::RateLimitDecision::Allowed);
}
