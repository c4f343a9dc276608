//! The conformance suite on the hybrid provider as a sole instance (it decides exactly as the
//! local provider does): every scenario, and a differential run comparing every answer with the
//! local provider's. Each call runs after a sync, on a real `redis-server`.
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use support::conformance::{differential, random_steps, Subject, SCENARIOS};
use support::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_on_a_sole_hybrid_instance() {
    let server = RedisServer::start();
    let only = std::env::var("EYELET_SCENARIO").unwrap_or_default();
    for (name, scenario) in SCENARIOS.iter().filter(|(name, _)| name.contains(&only)) {
        let s = Subject::hybrid(&server, 1000, 10, 1.5, 0.5).await;
        eprintln!("hybrid: {name}");
        scenario(&s).await;
        s.rl.hybrid().shutdown().await.expect("shutdown");
    }
}

/// Same random call sequence, same clock: every answer equal, step by step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_hybrid_instance_answers_exactly_like_local() {
    let server = RedisServer::start();
    let mut compared = 0;
    let mut kinds = [0usize; 4];
    for (seed, (w, g, h, draw)) in [
        (1000, 10, 1.5, 0.5),
        (2000, 100, 2.0, 0.8),
        (60, 1, 1.5, 0.1),
    ]
    .into_iter()
    .enumerate()
    {
        let local = Subject::local(w, g, h, draw);
        let hybrid = Subject::hybrid(&server, w, g, h, draw).await;
        let steps = random_steps(seed as u64 + 7, 2500);
        differential(&local, &hybrid, &steps, &format!("seed {seed}"), &mut kinds).await;
        compared += steps.len();
        hybrid.rl.hybrid().shutdown().await.expect("shutdown");
    }
    eprintln!(
        "{compared} steps compared; allowed / rejected / suppressed-in / suppressed-out: {kinds:?}"
    );
    assert!(kinds.iter().all(|&k| k > 20), "{kinds:?}");
}
