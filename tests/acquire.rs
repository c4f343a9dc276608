//! `acquire`: waiting until admitted, on every provider. Real time, real sleeps: windows are
//! short (200 ms) and the assertions leave room for a noisy machine, never a tight
//! wall-clock bound on speed.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg_attr(not(feature = "tokio"), allow(unused_imports))]
use eyelet::AcquireError;
use eyelet::{RateLimitDecision, RateLimiter};
use support::rate;

const W: Duration = Duration::from_millis(200);
/// 50/s over W = 200 ms: C = 10.
const R: f64 = 50.0;

fn limiter(jitter: f64) -> Arc<RateLimiter> {
    RateLimiter::builder()
        .window(W)
        .bucket(Duration::from_millis(10))
        .acquire_jitter(jitter)
        .build()
        .expect("valid")
}

/// Checks admissions `(time, weight)` against C in every window, measured as the test saw them.
/// The contract's one imprecision (a request joins a bucket up to G = 10 ms old and expires with
/// it, up to G early) and the lag of measuring after each call returned make the checked
/// window W - G - 5 ms.
fn assert_no_window_over(admissions: &[(Instant, u64)], c: u64) {
    let mut a = admissions.to_vec();
    a.sort_by_key(|x| x.0);
    for (i, &(t, _)) in a.iter().enumerate() {
        let inside: u64 = a[..=i]
            .iter()
            .filter(|x| t.duration_since(x.0) < W - Duration::from_millis(15))
            .map(|x| x.1)
            .sum();
        assert!(inside <= c, "{inside} admitted within one window (C = {c})");
    }
}

/// `count` waiters of weight 3, each a task running the future `acquire` makes once:
/// all admitted, within three windows of the start, and no window over C = 10.
#[cfg(feature = "tokio")]
async fn waiters_admitted_within_three_windows<F, Fut>(count: usize, acquire: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<RateLimitDecision, AcquireError>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let waiter = acquire();
            tokio::spawn(async move {
                let d = waiter.await.expect("admitted");
                assert!(d.is_allowed(), "{d:?}");
                (Instant::now(), 3)
            })
        })
        .collect();
    let mut log = Vec::new();
    for t in tasks {
        log.push(t.await.unwrap());
    }
    let last = log.iter().map(|x| x.0).max().unwrap();
    assert!(
        last.duration_since(start) < 3 * W,
        "all admitted within three windows: {:?}",
        last.duration_since(start)
    );
    assert_no_window_over(&log, 10);
}

/// Eight waiters of weight 3 on a key with C = 10: all admitted, within three windows, and no
/// window over C.
#[test]
fn blocking_waiters_are_all_admitted_within_three_windows_and_no_window_exceeds_c() {
    let rl = limiter(0.2);
    let r = rate(R);
    let log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (rl, log) = (rl.clone(), log.clone());
            std::thread::spawn(move || {
                let d = rl
                    .local()
                    .absolute()
                    .acquire_blocking("k", &r, 3, Some(start + 10 * W))
                    .expect("admitted before the deadline");
                assert_eq!(d, RateLimitDecision::Allowed);
                log.lock().unwrap().push((Instant::now(), 3));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 8);
    let last = log.iter().map(|x| x.0).max().unwrap();
    // 3 + 3 + 2 waiters fit in windows starting at 0, W and 2W
    assert!(
        last.duration_since(start) < 3 * W,
        "all admitted within three windows: {:?}",
        last.duration_since(start)
    );
    assert_no_window_over(&log, 10);
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_waiters_are_all_admitted_within_three_windows_and_no_window_exceeds_c() {
    let rl = limiter(0.2);
    let r = rate(R);
    waiters_admitted_within_three_windows(8, || {
        let rl = rl.clone();
        async move { rl.local().absolute().acquire("k", &r, 3).await }
    })
    .await;
}

/// A waiter on a full key gives up at its deadline, with the last decision, a few ms after it
/// at most; one that can never be admitted fails at once.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_give_up_at_their_deadline_and_never_admissible_requests_fail_at_once() {
    let rl = limiter(0.0);
    let r = rate(R);
    let abs = rl.local().absolute();
    assert!(abs.inc("full", &r, 10).is_allowed());
    let deadline = Instant::now() + Duration::from_millis(50);
    let got = abs.acquire_until("full", &r, 1, deadline).await;
    let late = Instant::now().saturating_duration_since(deadline);
    assert!(
        matches!(
            &got,
            Err(AcquireError::DeadlineExceeded {
                last: RateLimitDecision::Rejected { .. }
            })
        ),
        "{got:?}"
    );
    assert!(Instant::now() >= deadline);
    assert!(
        late < Duration::from_millis(40),
        "returned {late:?} after the deadline"
    );

    let deadline = Instant::now() + Duration::from_millis(50);
    let abs2 = rl.clone();
    let got = tokio::task::spawn_blocking(move || {
        abs2.local()
            .absolute()
            .acquire_blocking("full", &r, 1, Some(deadline))
    })
    .await
    .unwrap();
    let late = Instant::now().saturating_duration_since(deadline);
    assert!(
        matches!(got, Err(AcquireError::DeadlineExceeded { .. })),
        "{got:?}"
    );
    assert!(
        late < Duration::from_millis(40),
        "returned {late:?} after the deadline"
    );

    let t = Instant::now();
    let got = abs.acquire("full", &r, 11).await;
    assert!(
        matches!(got, Err(AcquireError::NeverAdmissible { .. })),
        "{got:?}"
    );
    assert!(t.elapsed() < Duration::from_millis(50), "at once");
    assert_eq!(abs.get("full"), 10, "nothing recorded by the waiters");
}

/// Dropping an `acquire` while it sleeps records nothing.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_while_it_waits_records_nothing() {
    let rl = limiter(0.0);
    let r = rate(R);
    let abs = rl.local().absolute();
    assert!(abs.inc("k", &r, 10).is_allowed());
    let timed_out = tokio::time::timeout(Duration::from_millis(30), abs.acquire("k", &r, 4)).await;
    assert!(timed_out.is_err(), "still waiting when dropped");
    assert_eq!(abs.get("k"), 10);
    // once the window has moved on, a new waiter is admitted and counts once
    tokio::time::sleep(W).await;
    abs.acquire("k", &r, 4).await.expect("admitted");
    assert_eq!(abs.get("k"), 4);
}

/// A suppressed handle over its hard limit waits until a try is admitted.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppressed_waiter_waits_until_admitted() {
    let rl = limiter(0.5);
    let r = rate(R);
    let sup = rl.local().suppressed();
    // far past the hard limit H = 15: every try is denied until the window moves on
    for _ in 0..200 {
        let _ = sup.inc("k", &r, 1);
    }
    assert!(!sup.inc("k", &r, 1).is_allowed());
    let t = Instant::now();
    let d = sup
        .acquire_until("k", &r, 1, Instant::now() + 10 * W)
        .await
        .expect("admitted before the deadline");
    assert!(d.is_allowed());
    assert!(t.elapsed() >= Duration::from_millis(20), "it had to wait");
}

#[test]
fn a_jitter_outside_zero_to_one_is_refused() {
    for j in [-0.1, 1.5, f64::NAN] {
        let e = RateLimiter::builder().acquire_jitter(j).build();
        assert!(
            matches!(e, Err(eyelet::ConfigError::InvalidAcquireJitter(_))),
            "{j}"
        );
    }
}

#[cfg(feature = "redis")]
mod redis_and_hybrid {
    use super::*;
    use support::redis_server::RedisServer;

    /// The Redis provider: async waiters all admitted, no window over C; the blocking form
    /// from a plain thread; refused (typed) on a runtime thread; Redis failures typed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_waiters_are_admitted_and_failures_are_typed() {
        let server = RedisServer::start();
        let rl = RateLimiter::builder()
            .window(W)
            .bucket(Duration::from_millis(10))
            .redis_url(server.url())
            .prefix("acq")
            .connect()
            .await
            .expect("connect");
        let r = rate(R);
        waiters_admitted_within_three_windows(6, || {
            let rl = rl.clone();
            async move { rl.redis().absolute().acquire("k", &r, 3).await }
        })
        .await;

        let rl2 = rl.clone();
        let d = std::thread::spawn(move || {
            rl2.redis()
                .absolute()
                .acquire_blocking("b", &r, 10, Some(Instant::now() + 10 * W))
        })
        .join()
        .unwrap();
        assert_eq!(d, Ok(RateLimitDecision::Allowed));
        assert_eq!(
            rl.redis().absolute().acquire_blocking("b", &r, 1, None),
            Err(AcquireError::InsideRuntime)
        );
        // from the blocking pool it works, and waits its turn
        let rl3 = rl.clone();
        let t = Instant::now();
        let d = tokio::task::spawn_blocking(move || {
            rl3.redis()
                .absolute()
                .acquire_blocking("b", &r, 1, Some(Instant::now() + 10 * W))
        })
        .await
        .unwrap();
        assert_eq!(d, Ok(RateLimitDecision::Allowed));
        assert!(
            t.elapsed() >= W / 2,
            "it waited for the window: {:?}",
            t.elapsed()
        );
        assert!(matches!(
            rl.redis().absolute().acquire("b", &r, 11).await,
            Err(AcquireError::NeverAdmissible { .. })
        ));
        drop(server);
        assert!(matches!(
            rl.redis().absolute().acquire("c", &r, 1).await,
            Err(AcquireError::Redis(_))
        ));
    }

    /// The hybrid provider's handles wait the same way (single instance: the local rule).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hybrid_waiters_are_admitted_and_no_window_exceeds_c() {
        let server = RedisServer::start();
        let rl = RateLimiter::builder()
            .window(W)
            .bucket(Duration::from_millis(10))
            .redis_url(server.url())
            .prefix("acqh")
            .connect()
            .await
            .expect("connect");
        rl.hybrid().flush().await.expect("first sync");
        let r = rate(R);
        waiters_admitted_within_three_windows(8, || {
            let rl = rl.clone();
            async move { rl.hybrid().absolute().acquire("k", &r, 3).await }
        })
        .await;
        let rl2 = rl.clone();
        let d = tokio::task::spawn_blocking(move || {
            rl2.hybrid()
                .suppressed()
                .acquire_blocking("s", &r, 1, Some(Instant::now() + W))
        })
        .await
        .unwrap();
        assert!(d.expect("admitted").is_allowed());
        rl.hybrid().shutdown().await.expect("shutdown");
    }
}
