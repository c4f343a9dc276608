//! Who holds a shard's run token, and for how long, on real threads and runtimes:
//! - sync and async calls mixed on one thread, under contention (issue 7.4): a task's thread
//!   that makes a sync call on a shard never waits for a token that only the task itself could
//!   release, and no sync caller waits on a task's scheduling;
//! - one large batch takes a bounded turn (issue 7.6): other callers get in between its parts.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use eyelet::{Clock, RateLimiter};
use support::rate;

/// A clock that, once armed, holds the next reader (an executor inside a shard's turn) until
/// the test opens it: a deterministic way to keep a shard's run token held while callers queue.
#[derive(Clone, Default)]
struct GateClock {
    inner: Arc<(Mutex<GateState>, Condvar)>,
}

#[derive(Default)]
struct GateState {
    armed: bool,
    holding: bool,
    open: bool,
    /// The name of the thread of every read (each message served reads the clock once).
    readers: Vec<String>,
}

impl GateClock {
    fn arm(&self) {
        let mut g = self.inner.0.lock().unwrap();
        *g = GateState {
            armed: true,
            ..GateState::default()
        };
    }

    fn wait_until_holding(&self) {
        let (m, cv) = &*self.inner;
        let mut g = m.lock().unwrap();
        while !g.holding {
            g = cv.wait(g).unwrap();
        }
    }

    fn open(&self) {
        let (m, cv) = &*self.inner;
        m.lock().unwrap().open = true;
        cv.notify_all();
    }

    fn readers(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().readers.clone()
    }
}

impl Clock for GateClock {
    fn now_ms(&self) -> u64 {
        let (m, cv) = &*self.inner;
        let mut g = m.lock().unwrap();
        let me = std::thread::current().name().unwrap_or("?").to_string();
        g.readers.push(me);
        if g.armed {
            g.armed = false;
            g.holding = true;
            cv.notify_all();
            while !g.open {
                g = cv.wait(g).unwrap();
            }
        }
        0
    }
}

/// A one-shard limiter on a [`GateClock`], and a thread that holds the shard's token (inside
/// its own decision) until the gate opens.
fn held_shard() -> (Arc<RateLimiter>, GateClock, std::thread::JoinHandle<()>) {
    let clock = GateClock::default();
    let rl = RateLimiter::builder()
        .shards(1)
        .clock(clock.clone())
        .sweeper(false)
        .build()
        .expect("config");
    clock.arm();
    let holder = {
        let rl = rl.clone();
        std::thread::spawn(move || {
            rl.local().absolute().inc("holder", &rate(1e9), 1);
        })
    };
    clock.wait_until_holding();
    (rl, clock, holder)
}

/// Spawns `n` tasks on the current runtime, each making one `inc_async` on its own key.
fn spawn_async_calls(
    rl: &Arc<RateLimiter>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<eyelet::RateLimitDecision>> {
    (0..n)
        .map(|t| {
            let rl = rl.clone();
            tokio::spawn(async move {
                rl.local()
                    .absolute()
                    .inc_async(&format!("a{t}"), &rate(1e9), 1)
                    .await
            })
        })
        .collect()
}

/// 300 tasks of a `current_thread` runtime queue async calls behind a held token, then a task
/// on the same thread makes a sync call. When the holder's turn runs out (past its bound) the
/// token must not go to one of those tasks: their thread is blocked in the sync call, so only
/// it could ever release the token (deadlock on the code before issue 7.4).
#[test]
fn a_sync_call_behind_queued_tasks_of_its_own_thread_completes() {
    within(Duration::from_secs(60), "sync behind own tasks", || {
        let (rl, clock, holder) = held_shard();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let r = rate(1e9);
            let tasks = spawn_async_calls(&rl, 300);
            // every task polls once: 300 async nodes queue behind the holder
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let opener = {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    clock.open();
                })
            };
            // this thread now blocks in a sync call on the same shard
            assert!(rl.local().absolute().inc("b", &r, 1).is_allowed());
            opener.join().expect("opener");
            for t in tasks {
                assert!(t.await.expect("task").is_allowed());
            }
        });
        holder.join().expect("holder");
    });
}

/// Async calls queue behind a held token, then their runtime's only thread stays busy without
/// polling them. Sync callers on other threads must keep being served meanwhile: no sync caller
/// ever waits on a task's scheduling (before issue 7.4 the token went to an unpolled task).
#[test]
fn sync_callers_are_served_while_queued_tasks_are_not_polled() {
    within(Duration::from_secs(60), "unpolled tasks", || {
        let (rl, clock, holder) = held_shard();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let r = rate(1e9);
            let tasks = spawn_async_calls(&rl, 300);
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            // the holder finishes its turn while this thread polls nothing
            clock.open();
            holder.join().expect("holder");
            let (tx, rx) = mpsc::channel();
            let sync = {
                let rl = rl.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        rl.local().absolute().inc(&format!("s{i}"), &r, 1);
                    }
                    let _ = tx.send(());
                })
            };
            // block this (the runtime's) thread until the sync caller is done: it must not
            // need any of the tasks to be polled
            assert!(
                rx.recv_timeout(Duration::from_secs(20)).is_ok(),
                "a sync caller waited for an unpolled task"
            );
            sync.join().expect("sync caller");
            for t in tasks {
                assert!(t.await.expect("task").is_allowed());
            }
        });
    });
}

/// Runs `f` on a fresh thread; fails the whole test binary if it has not returned within
/// `limit` (a deadlock cannot be unwound, only reported).
fn within(limit: Duration, what: &'static str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => worker.join().expect("worker"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // the worker panicked: surface its panic
            worker.join().expect("worker panicked");
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            eprintln!("{what}: no progress within {limit:?}: the shard protocol deadlocked");
            std::process::exit(101);
        }
    }
}

/// One shard, two OS threads hammering it with sync calls, and a `current_thread` runtime
/// whose tasks each `join!` an `inc_async` with a sync `inc` on the same shard (the shape an
/// actix arbiter mixing both forms has).
#[test]
fn join_of_async_and_sync_calls_on_one_thread_never_deadlocks() {
    within(Duration::from_secs(60), "mixed forms", || {
        let rl = RateLimiter::builder()
            .shards(1)
            .sweeper(false)
            .build()
            .expect("config");
        let stop = Arc::new(AtomicBool::new(false));
        let hammer_calls = Arc::new(AtomicU64::new(0));
        let hammers: Vec<_> = (0..2)
            .map(|t| {
                let (rl, stop, calls) = (rl.clone(), stop.clone(), hammer_calls.clone());
                std::thread::spawn(move || {
                    let r = rate(1e9);
                    let key = format!("hammer{t}");
                    while !stop.load(Ordering::Relaxed) {
                        rl.local().absolute().inc(&key, &r, 1);
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let served = runtime.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..200u64 {
                let rl = rl.clone();
                tasks.push(tokio::spawn(async move {
                    let r = rate(1e9);
                    let (a, b) = (format!("a{t}"), format!("b{t}"));
                    let mut served = 0u64;
                    for i in 0..100 {
                        let abs = rl.local().absolute();
                        let (x, y) =
                            tokio::join!(abs.inc_async(&a, &r, 1), async { abs.inc(&b, &r, 1) });
                        served += u64::from(x.is_allowed()) + u64::from(y.is_allowed());
                        if i % 10 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    served
                }));
            }
            let mut served = 0;
            for t in tasks {
                served += t.await.expect("task");
            }
            served
        });
        stop.store(true, Ordering::Relaxed);
        for h in hammers {
            h.join().expect("hammer");
        }
        assert_eq!(served, 200 * 100 * 2, "every call admitted (rate 1e9/s)");
        assert!(hammer_calls.load(Ordering::Relaxed) > 0);
    });
}

/// A task that was woken but is not polled for a long time (a busy runtime) must not stall
/// the sync callers of the same shard: with one worker thread kept busy by a blocking loop,
/// sync callers on other threads keep being served.
#[test]
fn an_unpolled_task_never_stalls_sync_callers() {
    within(Duration::from_secs(60), "unpolled task", || {
        let rl = RateLimiter::builder()
            .shards(1)
            .sweeper(false)
            .build()
            .expect("config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let sync_calls = Arc::new(AtomicU64::new(0));
        let syncs: Vec<_> = (0..2)
            .map(|t| {
                let (rl, stop, calls) = (rl.clone(), stop.clone(), sync_calls.clone());
                std::thread::spawn(move || {
                    let r = rate(1e9);
                    let key = format!("sync{t}");
                    while !stop.load(Ordering::Relaxed) {
                        rl.local().absolute().inc(&key, &r, 1);
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        runtime.block_on(async {
            // many async callers queue on the shard, then the only runtime thread blocks for a
            // while without polling them
            let mut tasks = Vec::new();
            for t in 0..300u64 {
                let rl = rl.clone();
                tasks.push(tokio::spawn(async move {
                    let r = rate(1e9);
                    for _ in 0..20 {
                        rl.local()
                            .absolute()
                            .inc_async(&format!("t{t}"), &r, 1)
                            .await;
                    }
                }));
            }
            tokio::task::yield_now().await;
            for _ in 0..20 {
                let before = sync_calls.load(Ordering::Relaxed);
                // block the runtime thread (no task is polled meanwhile)
                let deadline = std::time::Instant::now() + Duration::from_millis(50);
                while std::time::Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                let after = sync_calls.load(Ordering::Relaxed);
                assert!(
                    after > before,
                    "sync callers made no progress while the runtime thread was busy"
                );
                tokio::task::yield_now().await;
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
        stop.store(true, Ordering::Relaxed);
        for h in syncs {
            h.join().expect("sync caller");
        }
    });
}

/// A 10,000-key `inc_many` on one shard is served in parts of a bounded size: a caller that
/// queued while the batch's first part was being served is answered long before the batch's
/// last part (before issue 7.6 the whole batch was one message, one turn, and the caller waited
/// for all of it). The clock, read once per message served, tells the order.
#[test]
fn a_large_batch_lets_other_callers_in_between_its_parts() {
    within(Duration::from_secs(60), "large batch", || {
        let clock = GateClock::default();
        let rl = RateLimiter::builder()
            .shards(1)
            .clock(clock.clone())
            .sweeper(false)
            .build()
            .expect("config");
        clock.arm();
        let batch = {
            let rl = rl.clone();
            std::thread::Builder::new()
                .name("batch".into())
                .spawn(move || {
                    let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
                    let d = rl.local().absolute().inc_many(&keys, &rate(1e9), 1);
                    assert!(d.iter().all(|d| d.is_allowed()));
                })
                .expect("spawn")
        };
        // the batch's first part holds the token inside its clock read
        clock.wait_until_holding();
        let single = {
            let rl = rl.clone();
            std::thread::Builder::new()
                .name("single".into())
                .spawn(move || assert!(rl.local().absolute().inc("x", &rate(1e9), 1).is_allowed()))
                .expect("spawn")
        };
        // let the single caller queue behind the held token
        std::thread::sleep(Duration::from_millis(100));
        clock.open();
        single.join().expect("single");
        batch.join().expect("batch");
        let readers = clock.readers();
        let batch_parts = readers.iter().filter(|r| *r == "batch").count();
        let single_at = readers.iter().position(|r| r == "single");
        let last_part = readers.iter().rposition(|r| r == "batch");
        assert!(
            batch_parts >= 10_000 / 64,
            "the batch went as {batch_parts} message(s)"
        );
        // the single caller queued behind the batch's first part: at the end of that turn the
        // token goes to it (the first sync caller of the chain), so it reads the clock itself
        let (Some(single_at), Some(last_part)) = (single_at, last_part) else {
            panic!("no read by the single caller: {readers:?}");
        };
        assert!(
            single_at < last_part,
            "the single call waited for the whole batch: read {single_at} of {}",
            readers.len()
        );
    });
}
