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

use support::conformance::{dense_steps, random_steps, run_step, Subject, SCENARIOS};
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
        for (i, step) in random_steps(seed as u64 + 7, 4000).iter().enumerate() {
            let a = run_step(&local, step).await;
            let b = run_step(&redis, step).await;
            assert_eq!(
                a,
                b,
                "seed {seed}, step {i}: {step:?} at t = {}",
                local.clock.ms()
            );
            compared += 1;
            if let support::conformance::Answer::Decision(d) = a {
                kinds[match d {
                    eyelet::RateLimitDecision::Allowed => 0,
                    eyelet::RateLimitDecision::Rejected { .. } => 1,
                    eyelet::RateLimitDecision::Suppressed {
                        is_allowed: true, ..
                    } => 2,
                    _ => 3,
                }] += 1;
            }
        }
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
