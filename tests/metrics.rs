//! The `metrics` feature: every series named in `eyelet::metrics` reaches an installed recorder
//! (metrics-util's `DebuggingRecorder`) with the values the decisions imply. One test function:
//! the recorder is process-global and counters are process-wide sums.
#![cfg(feature = "metrics")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

use std::collections::HashMap;
use std::time::Duration;

use eyelet::{RateLimit, RateLimiter};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Publishes and reads every series as `name{label=value,...}` (labels sorted). Reading drains
/// the recorder: counters come back at the next publication (they are absolute), gauges and
/// histograms only when set again.
fn read(snap: &Snapshotter) -> HashMap<String, DebugValue> {
    eyelet::metrics::publish();
    snap.snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| {
            let key = ck.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), v)
        })
        .collect()
}

fn counter(m: &HashMap<String, DebugValue>, key: &str) -> u64 {
    match m.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        Some(other) => panic!("{key}: {other:?}"),
    }
}

fn decisions(
    m: &HashMap<String, DebugValue>,
    provider: &str,
    strategy: &str,
    outcome: &str,
) -> u64 {
    counter(
        m,
        &format!(
            "eyelet_decisions_total{{outcome={outcome},provider={provider},strategy={strategy}}}"
        ),
    )
}

fn limiter() -> std::sync::Arc<RateLimiter> {
    RateLimiter::builder()
        .seed(3)
        .sweeper(false)
        .build()
        .unwrap()
}

#[test]
fn every_series_reaches_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Local absolute: sync, async and batch forms count; probes do not.
    let rl = limiter();
    let abs = rl.local().absolute();
    let five = RateLimit::try_from(5.0).unwrap();
    for _ in 0..8 {
        abs.inc("k", &five, 1);
    }
    for _ in 0..4 {
        abs.is_allowed("k", &five, 1);
    }
    rt.block_on(async {
        abs.inc_async("k", &five, 1).await;
        abs.inc_async("k", &five, 1).await;
    });
    abs.inc_many(&["a", "b", "a"], &RateLimit::ONE, 1);
    // A thread that has exited still counts.
    let rl2 = rl.clone();
    std::thread::spawn(move || {
        for i in 0..10 {
            rl2.local()
                .absolute()
                .inc(&format!("t{i}"), &RateLimit::ONE, 1);
        }
    })
    .join()
    .unwrap();
    let m = read(&snap);
    assert_eq!(decisions(&m, "local", "absolute", "allowed"), 5 + 2 + 10);
    assert_eq!(decisions(&m, "local", "absolute", "rejected"), 3 + 2 + 1);

    // Local suppressed at S = 5, H = 7: everything is counted once, as allowed or shed.
    let sup = rl.local().suppressed();
    let admitted = (0..20)
        .filter(|_| sup.inc("s", &five, 1).is_allowed())
        .count() as u64;
    let m = read(&snap);
    assert_eq!(decisions(&m, "local", "suppressed", "allowed"), admitted);
    assert_eq!(decisions(&m, "local", "suppressed", "shed"), 20 - admitted);
    assert!((5..=7).contains(&admitted), "{admitted}");

    // A key cap: the refused key is its own outcome.
    let capped = RateLimiter::builder()
        .max_keys(1)
        .sweeper(false)
        .build()
        .unwrap();
    capped.local().absolute().inc("one", &five, 1);
    capped.local().absolute().inc("two", &five, 1);
    let m = read(&snap);
    assert_eq!(
        decisions(&m, "local", "absolute", "key_capacity_exceeded"),
        1
    );

    // Live keys: the sweeper moves the gauge to this limiter's count.
    let swept = RateLimiter::builder()
        .sweep_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    for k in ["x", "y", "z"] {
        swept.local().absolute().inc(k, &five, 1);
    }
    std::thread::sleep(Duration::from_millis(500));
    let m = read(&snap);
    assert_eq!(
        m.get("eyelet_live_keys{provider=local,strategy=absolute}"),
        Some(&DebugValue::Gauge(3.0.into()))
    );

    redis_series(&snap, &rt);
}

mod support;
#[cfg(feature = "redis")]
use support::redis_server;

#[cfg(feature = "redis")]
fn redis_series(snap: &Snapshotter, rt: &tokio::runtime::Runtime) {
    let mut server = redis_server::RedisServer::start();
    let rl = rt
        .block_on(
            RateLimiter::builder()
                .window(Duration::from_secs(60))
                .sweeper(false)
                .redis_url(server.url())
                .prefix("metrics-test")
                .redis_deadline(Duration::from_millis(300))
                .connect(),
        )
        .unwrap();
    let per_min = RateLimit::per_minute(2.0).unwrap();
    rt.block_on(async {
        for _ in 0..3 {
            rl.redis().absolute().inc("r", &per_min, 1).await.unwrap();
            rl.hybrid().absolute().inc_async("h", &per_min, 1).await;
        }
        rl.redis()
            .suppressed()
            .inc_many(&["s", "s"], &per_min, 1)
            .await
            .unwrap();
        rl.hybrid().flush().await.unwrap();
    });
    let m = read(snap);
    assert_eq!(decisions(&m, "redis", "absolute", "allowed"), 2);
    assert_eq!(decisions(&m, "redis", "absolute", "rejected"), 1);
    assert_eq!(decisions(&m, "redis", "suppressed", "allowed"), 2);
    assert_eq!(decisions(&m, "hybrid", "absolute", "allowed"), 2);
    assert_eq!(decisions(&m, "hybrid", "absolute", "rejected"), 1);
    let calls = counter(&m, "eyelet_redis_script_calls_total{result=ok}");
    assert!((1..=5).contains(&calls), "{calls}");
    let Some(DebugValue::Histogram(sizes)) = m.get("eyelet_redis_batch_size{}") else {
        panic!("{m:?}")
    };
    assert_eq!(
        sizes.iter().map(|s| s.0).sum::<f64>(),
        5.0,
        "one op per decision"
    );
    assert!(m.contains_key("eyelet_redis_script_call_duration_seconds{}"));
    assert!(
        counter(
            &m,
            "eyelet_hybrid_syncs_total{prefix=metrics-test,result=ok}"
        ) >= 1
    );
    assert!(m.contains_key("eyelet_hybrid_sync_duration_seconds{prefix=metrics-test}"));
    assert_eq!(
        m.get("eyelet_hybrid_instances{prefix=metrics-test}"),
        Some(&DebugValue::Gauge(1.0.into()))
    );
    assert!(m.contains_key("eyelet_hybrid_pending_reports{prefix=metrics-test}"));
    assert!(m.contains_key("eyelet_hybrid_sync_lag_seconds{prefix=metrics-test}"));

    // Redis gone: the error is counted by kind, and failed syncs too.
    server.kill();
    rt.block_on(async {
        assert!(rl.redis().absolute().inc("r2", &per_min, 1).await.is_err());
        rl.hybrid().absolute().inc_async("h2", &per_min, 1).await;
        assert!(rl.hybrid().flush().await.is_err());
    });
    let m = read(snap);
    let errors: u64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("eyelet_redis_errors_total{kind="))
        .map(|(k, _)| counter(&m, k))
        .sum();
    assert_eq!(errors, 1, "{m:?}");
    assert!(
        counter(
            &m,
            "eyelet_hybrid_syncs_total{prefix=metrics-test,result=failed}"
        ) >= 1
    );
}

#[cfg(not(feature = "redis"))]
fn redis_series(_: &Snapshotter, _: &tokio::runtime::Runtime) {}
