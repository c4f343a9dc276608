//! The async forms on tokio: inline when idle, queued and woken under contention, cancel-safe.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use support::rate;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use eyelet::{RateLimitDecision, RateLimiter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_on_one_key_are_exact() {
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .sweeper(false)
        .build()
        .expect("config");
    let r = rate(500.0 / 60.0); // C = 500 per 60 s window
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (rl, admitted) = (rl.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..2000u32 {
                if rl
                    .local()
                    .absolute()
                    .inc_async("hot", &r, 1)
                    .await
                    .is_allowed()
                {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // Sync callers on other threads contend for the same shard meanwhile.
    let sync_admitted = {
        let rl = rl.clone();
        tokio::task::spawn_blocking(move || {
            (0..20_000)
                .filter(|_| rl.local().absolute().inc("hot", &r, 1).is_allowed())
                .count()
        })
    };
    for t in tasks {
        t.await.expect("task");
    }
    let total = admitted.load(Ordering::Relaxed) + sync_admitted.await.expect("blocking") as u64;
    assert_eq!(total, 500);
    assert_eq!(rl.local().absolute().get_async("hot").await, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_reset_async() {
    let rl = RateLimiter::builder()
        .sweeper(false)
        .seed(3)
        .build()
        .expect("config");
    let r = rate(2.0);
    let keys = ["a", "b", "a", "c", "a"];
    let d = rl.local().absolute().inc_many_async(&keys, &r, 1).await;
    assert_eq!(
        d.iter()
            .map(RateLimitDecision::is_allowed)
            .collect::<Vec<_>>(),
        vec![true, true, true, true, false]
    );
    assert!(rl.local().absolute().reset_async("a").await);
    assert_eq!(rl.local().absolute().get_async("a").await, 0);
    assert!(rl
        .local()
        .suppressed()
        .is_allowed_async("a", &r, 1)
        .await
        .is_allowed());
    assert_eq!(rl.local().suppressed().get_async("a").await.total, 0);
}

struct CountingWaker(AtomicU64);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn future_dropped_before_poll_records_nothing() {
    let rl = RateLimiter::builder()
        .sweeper(false)
        .build()
        .expect("config");
    let r = rate(1.0);
    drop(rl.local().absolute().inc_async("k", &r, 1));
    assert_eq!(rl.local().absolute().get("k"), 0);
}

#[test]
fn future_dropped_before_poll_takes_nothing_from_a_lease() {
    // Two calls within one bucket make the key hot: its shard publishes a lease pool. A future
    // created and dropped unpolled must not take a unit from it.
    let clock = eyelet::ManualClock::new();
    let rl = RateLimiter::builder()
        .clock(clock.clone())
        .sweeper(false)
        .build()
        .expect("config");
    let r = rate(1_000.0);
    let abs = rl.local().absolute();
    assert!(abs.inc("hot", &r, 1).is_allowed());
    assert!(abs.inc("hot", &r, 1).is_allowed());
    for _ in 0..10 {
        drop(abs.inc_async("hot", &r, 1));
    }
    assert_eq!(abs.get("hot"), 2, "a dropped, unpolled future was admitted");
    // polled ones are admitted (from the pool) and counted
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut f = Box::pin(abs.inc_async("hot", &r, 1));
    assert!(matches!(f.as_mut().poll(&mut cx), Poll::Ready(d) if d.is_allowed()));
    assert_eq!(abs.get("hot"), 3);
}

#[test]
fn idle_shard_serves_async_call_inline_on_first_poll() {
    let rl = RateLimiter::builder()
        .sweeper(false)
        .build()
        .expect("config");
    let r = rate(1.0);
    let waker = Arc::new(CountingWaker(AtomicU64::new(0))).into();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(rl.local().absolute().inc_async("k", &r, 1));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(d) => assert_eq!(d, RateLimitDecision::Allowed),
        Poll::Pending => panic!("an idle shard answers at once"),
    }
}

#[test]
fn cancelled_futures_under_contention_never_double_count() {
    // Threads keep the shard busy while futures are polled once and dropped at random points.
    // Every recorded unit must come from a call that was either completed or claimed: the live
    // total equals completed admissions plus at most the dropped ones, and never exceeds C.
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .sweeper(false)
        .build()
        .expect("config");
    let r = rate(100_000.0 / 60.0); // C = 100,000: nothing is rejected here
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (rl, stop) = (rl.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rl.local().absolute().is_allowed("hot", &r, 1);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let waker = Arc::new(CountingWaker(AtomicU64::new(0))).into();
    let mut cx = Context::from_waker(&waker);
    let (mut completed, mut dropped) = (0u64, 0u64);
    for i in 0..20_000u32 {
        let mut fut: Pin<Box<dyn Future<Output = RateLimitDecision>>> =
            Box::pin(rl.local().absolute().inc_async("hot", &r, 1));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(d) => {
                assert!(d.is_allowed());
                completed += 1;
            }
            Poll::Pending if i % 2 == 0 => dropped += 1, // cancel while queued or being served
            Poll::Pending => {
                // finish it: spin-poll until the executor replies
                loop {
                    if let Poll::Ready(d) = fut.as_mut().poll(&mut cx) {
                        assert!(d.is_allowed());
                        completed += 1;
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().expect("busy thread");
    }
    let live = rl.local().absolute().get("hot");
    assert!(
        live >= completed,
        "a completed call was lost: {live} < {completed}"
    );
    assert!(
        live <= completed + dropped,
        "a call was counted twice: {live} > {completed} + {dropped}"
    );
}
