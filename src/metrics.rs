//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): install
//! any recorder (a Prometheus exporter, StatsD, ...) and these series appear.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `eyelet_decisions_total` | counter | `provider` (`local`, `redis`, `hybrid`), `strategy` (`absolute`, `suppressed`), `outcome` (`allowed`, `rejected`, `shed`, `key_capacity_exceeded`) | recorded decisions (`inc` and its batch and async forms; `is_allowed` probes are not counted) |
//! | `eyelet_live_keys` | gauge | `provider`, `strategy` | keys held in this process, summed over limiters; updated after each background sweep |
//! | `eyelet_redis_script_calls_total` | counter | `result` (`ok` or an error kind) | Redis provider script calls |
//! | `eyelet_redis_script_call_duration_seconds` | histogram | | a script call, sent to answered |
//! | `eyelet_redis_batch_size` | histogram | | decisions per script call |
//! | `eyelet_redis_errors_total` | counter | `kind` (`timeout`, `connection`, `connection_lost`, `read_only`, `out_of_memory`, `busy`, `no_script`, `cluster`, `protocol`, `server`, ...) | failed script calls (each fails every decision it carried) |
//! | `eyelet_hybrid_syncs_total` | counter | `prefix`, `result` (`ok`, `failed`) | hybrid sync cycles |
//! | `eyelet_hybrid_sync_duration_seconds` | histogram | `prefix` | a sync, collect to settle |
//! | `eyelet_hybrid_sync_lag_seconds` | gauge | `prefix` | since the last fully successful sync started (grows during an outage) |
//! | `eyelet_hybrid_pending_reports` | gauge | `prefix` | key reports waiting for Redis |
//! | `eyelet_hybrid_dropped_reports_total` | counter | `prefix` | reports dropped unsent because they left their window |
//! | `eyelet_hybrid_instances` | gauge | `prefix` | live instances at the last successful sync |
//!
//! **Cost.** A decision adds one increment of a counter owned by the calling thread (a plain
//! thread-local cell: no atomic read-modify-write, no lock, no call into the recorder). Every
//! 64 decisions, at its first and when it exits, a thread moves its counts where the
//! publisher reads them; a background thread (`eyelet-metrics`, started with the first counted
//! decision) publishes the sums every second as absolute counter values. So a thread's last
//! few decisions (fewer than 64) show once it decides again or exits. [`publish`] publishes at
//! once, the calling thread's counts included (before a scrape in a test, or at shutdown).
//! Counters reach a recorder installed at any time, at the next publication. Without the
//! feature nothing is compiled in.
//!
//! Shard mailbox depth is not exported: a shard's mailbox holds only callers that found the
//! shard busy, for the length of one turn, so its depth is not a load signal (contention shows
//! as decision latency instead).

use crate::RateLimitDecision;

/// The six provider × strategy series of `eyelet_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // (the Redis and hybrid series exist with `redis`)
pub(crate) enum Series {
    LocalAbsolute = 0,
    LocalSuppressed = 1,
    RedisAbsolute = 2,
    RedisSuppressed = 3,
    HybridAbsolute = 4,
    HybridSuppressed = 5,
}

/// Counts one recorded decision (nothing without the feature).
#[inline(always)]
pub(crate) fn decision(series: Series, d: &RateLimitDecision) {
    #[cfg(feature = "metrics")]
    imp::decision(series, d);
    #[cfg(not(feature = "metrics"))]
    let _ = (series, d);
}

#[cfg(feature = "metrics")]
pub use imp::publish;
#[cfg(all(feature = "metrics", feature = "redis"))]
pub(crate) use imp::{hybrid_sync, redis_call, SyncReport};
#[cfg(feature = "metrics")]
pub(crate) use imp::{live_keys, LiveKeys};

#[cfg(feature = "metrics")]
mod imp {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};
    use std::time::Duration;

    use super::Series;
    use crate::RateLimitDecision;

    const OUTCOMES: usize = 4;
    const CELLS: usize = 6 * OUTCOMES;
    const PROVIDERS: [&str; 3] = ["local", "redis", "hybrid"];
    const STRATEGIES: [&str; 2] = ["absolute", "suppressed"];
    const OUTCOME_NAMES: [&str; OUTCOMES] =
        ["allowed", "rejected", "shed", "key_capacity_exceeded"];

    /// One thread's decision counts. Only the owning thread writes (a load and a store, no
    /// read-modify-write); the publisher reads.
    struct Cells([AtomicU64; CELLS]);

    #[derive(Default)]
    struct Registry {
        live: Vec<Arc<Cells>>,
        /// Counts of threads that have exited.
        retired: [u64; CELLS],
    }

    fn registry() -> &'static Mutex<Registry> {
        static R: OnceLock<Mutex<Registry>> = OnceLock::new();
        R.get_or_init(Mutex::default)
    }

    /// The calling thread's cells, registered on first use and folded into `retired` when
    /// the thread exits.
    struct Local(Arc<Cells>);

    impl Local {
        fn register() -> Self {
            static PUBLISHER: Once = Once::new();
            PUBLISHER.call_once(|| {
                // If the thread cannot start, counts are still published by `publish()`.
                let _ = std::thread::Builder::new()
                    .name("eyelet-metrics".into())
                    .spawn(|| loop {
                        std::thread::sleep(Duration::from_secs(1));
                        publish();
                    });
            });
            let cells = Arc::new(Cells(std::array::from_fn(|_| AtomicU64::new(0))));
            let mut r = registry().lock().unwrap_or_else(PoisonError::into_inner);
            r.live.push(cells.clone());
            Local(cells)
        }
    }

    impl Drop for Local {
        fn drop(&mut self) {
            let _ = PENDING.try_with(|p| drain(p, &self.0));
            let mut r = registry().lock().unwrap_or_else(PoisonError::into_inner);
            for (sum, c) in r.retired.iter_mut().zip(&self.0 .0) {
                *sum += c.load(Ordering::Relaxed);
            }
            r.live.retain(|c| !Arc::ptr_eq(c, &self.0));
        }
    }

    /// Decisions this thread has counted but not yet moved to its [`Cells`]: plain cells in
    /// a const-initialised thread-local (no lazy-init check, no destructor), so a decision
    /// costs one increment.
    struct Pending {
        cells: [Cell<u32>; CELLS],
        ticks: Cell<u32>,
    }

    /// Pending counts move to the shared cells on a thread's first decision, then every
    /// `FLUSH_EVERY` decisions, when it exits, and on [`publish`] from it.
    const FLUSH_EVERY: u32 = 64;

    thread_local! {
        static PENDING: Pending = const {
            Pending {
                cells: [const { Cell::new(0) }; CELLS],
                ticks: Cell::new(0),
            }
        };
        static LOCAL: Local = Local::register();
    }

    #[inline(always)]
    pub(crate) fn decision(series: Series, d: &RateLimitDecision) {
        let outcome = match d {
            RateLimitDecision::Allowed
            | RateLimitDecision::Suppressed {
                is_allowed: true, ..
            } => 0,
            RateLimitDecision::Rejected { .. } => 1,
            RateLimitDecision::Suppressed { .. } => 2,
            RateLimitDecision::KeyCapacityExceeded => 3,
        };
        let i = series as usize * OUTCOMES + outcome;
        PENDING.with(|p| {
            let c = &p.cells[i];
            c.set(c.get().wrapping_add(1));
            let t = p.ticks.get().wrapping_add(1);
            p.ticks.set(t);
            if t % FLUSH_EVERY == 1 {
                flush_thread();
            }
        });
    }

    /// Moves this thread's pending counts to its shared cells (registering them first).
    #[cold]
    #[inline(never)]
    fn flush_thread() {
        // `try_with`: while this thread's cells are being torn down, `Local::drop` takes the
        // pending counts itself.
        let _ = LOCAL.try_with(|l| PENDING.with(|p| drain(p, &l.0)));
    }

    fn drain(p: &Pending, into: &Cells) {
        for (c, shared) in p.cells.iter().zip(&into.0) {
            let n = c.replace(0);
            if n > 0 {
                // only this thread writes `shared`: a load and a store suffice
                shared.store(
                    shared.load(Ordering::Relaxed).wrapping_add(u64::from(n)),
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Publishes the decision counters to the installed recorder now (a background thread
    /// does it every second).
    ///
    /// ```
    /// # #[cfg(feature = "metrics")] {
    /// let rl = eyelet::RateLimiter::builder().build().unwrap();
    /// rl.local().absolute().inc("k", &eyelet::RateLimit::ONE, 1);
    /// eyelet::metrics::publish(); // eyelet_decisions_total{provider="local",...} = 1
    /// # }
    /// ```
    pub fn publish() {
        flush_thread();
        let sums = {
            let r = registry().lock().unwrap_or_else(PoisonError::into_inner);
            let mut sums = r.retired;
            for cells in &r.live {
                for (sum, c) in sums.iter_mut().zip(&cells.0) {
                    *sum += c.load(Ordering::Relaxed);
                }
            }
            sums
        };
        for (i, &sum) in sums.iter().enumerate() {
            if sum == 0 {
                continue;
            }
            let series = i / OUTCOMES;
            metrics::counter!(
                "eyelet_decisions_total",
                "provider" => PROVIDERS[series / 2],
                "strategy" => STRATEGIES[series % 2],
                "outcome" => OUTCOME_NAMES[i % OUTCOMES],
            )
            .absolute(sum);
        }
    }

    /// One Redis provider script call: its size, duration and result.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_call(ops: usize, took: Duration, error: Option<&crate::RedisError>) {
        let result = error.map_or("ok", |e| e.kind());
        metrics::counter!("eyelet_redis_script_calls_total", "result" => result).increment(1);
        metrics::histogram!("eyelet_redis_script_call_duration_seconds").record(took);
        metrics::histogram!("eyelet_redis_batch_size").record(ops as f64);
        if let Some(e) = error {
            metrics::counter!("eyelet_redis_errors_total", "kind" => e.kind()).increment(1);
        }
    }

    /// What one hybrid sync left behind.
    #[cfg(feature = "redis")]
    pub(crate) struct SyncReport<'a> {
        pub(crate) prefix: &'a str,
        pub(crate) ok: bool,
        pub(crate) took: Duration,
        pub(crate) lag_ms: u64,
        pub(crate) pending: u64,
        pub(crate) dropped_now: u64,
        pub(crate) instances: u64,
    }

    #[cfg(feature = "redis")]
    pub(crate) fn hybrid_sync(r: SyncReport<'_>) {
        let prefix = r.prefix.to_owned();
        let result = if r.ok { "ok" } else { "failed" };
        metrics::counter!("eyelet_hybrid_syncs_total", "prefix" => prefix.clone(), "result" => result)
            .increment(1);
        metrics::histogram!("eyelet_hybrid_sync_duration_seconds", "prefix" => prefix.clone())
            .record(r.took);
        metrics::gauge!("eyelet_hybrid_sync_lag_seconds", "prefix" => prefix.clone())
            .set(r.lag_ms as f64 / 1000.0);
        metrics::gauge!("eyelet_hybrid_pending_reports", "prefix" => prefix.clone())
            .set(r.pending as f64);
        metrics::gauge!("eyelet_hybrid_instances", "prefix" => prefix.clone())
            .set(r.instances as f64);
        if r.dropped_now > 0 {
            metrics::counter!("eyelet_hybrid_dropped_reports_total", "prefix" => prefix)
                .increment(r.dropped_now);
        }
    }

    /// A limiter's last published live-key counts, so that limiters add up in the gauge.
    #[derive(Debug, Default)]
    pub(crate) struct LiveKeys([AtomicU64; 6]);

    /// Moves the `eyelet_live_keys` gauges by the change since this limiter's last report.
    pub(crate) fn live_keys(last: &LiveKeys, now: [u64; 6]) {
        for (i, (&n, prev)) in now.iter().zip(&last.0).enumerate() {
            let before = prev.swap(n, Ordering::Relaxed);
            if n == before {
                continue;
            }
            let g = metrics::gauge!(
                "eyelet_live_keys",
                "provider" => PROVIDERS[i / 2],
                "strategy" => STRATEGIES[i % 2],
            );
            if n > before {
                g.increment((n - before) as f64);
            } else {
                g.decrement((before - n) as f64);
            }
        }
    }
}
