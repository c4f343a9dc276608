//! The conformance suite: the decision contract as scenarios that run unchanged against every
//! provider (local, Redis, and the hybrid as a sole instance), plus a differential run that
//! feeds the same random call sequence to two providers and compares every answer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eyelet::{
    ManualClock, RandomSource, RateLimit, RateLimitDecision, RateLimiter, SplitMix64,
    SuppressedSnapshot, RETRY_NEVER,
};

use super::rate;
use super::redis_server::RedisServer;

/// A random source that always draws `value` (so providers with different draw streams
/// decide identically).
#[derive(Clone, Copy, Debug)]
pub struct Fixed(pub f64);

impl RandomSource for Fixed {
    fn next_u64(&mut self) -> u64 {
        ((self.0 * (1u64 << 53) as f64) as u64) << 11
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strat {
    Abs,
    Sup,
}

/// A provider under test, on a manual clock.
pub struct Subject {
    pub rl: Arc<RateLimiter>,
    pub clock: ManualClock,
    redis: bool,
    /// The hybrid provider, one instance: every call runs after a sync (`flush`), so the
    /// instance decides as the sole live one.
    hybrid: bool,
}

fn builder(w: u64, g: u64, h: f64, draw: f64, clock: &ManualClock) -> eyelet::RateLimiterBuilder {
    RateLimiter::builder()
        .window(Duration::from_millis(w))
        .bucket(Duration::from_millis(g))
        .hard_limit_factor(h)
        .clock(clock.clone())
        .random_source(move |_| Fixed(draw))
        .sweeper(false)
}

impl Subject {
    pub fn local(w: u64, g: u64, h: f64, draw: f64) -> Self {
        let clock = ManualClock::new();
        let rl = builder(w, g, h, draw, &clock)
            .build()
            .expect("valid config");
        Subject {
            rl,
            clock,
            redis: false,
            hybrid: false,
        }
    }

    /// The hybrid provider as a sole instance on `server`.
    pub async fn hybrid(server: &RedisServer, w: u64, g: u64, h: f64, draw: f64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let clock = ManualClock::new();
        let rl = builder(w, g, h, draw, &clock)
            .redis_url(server.url())
            .prefix(format!("hyb{}", N.fetch_add(1, Ordering::Relaxed)))
            .redis_deadline(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect");
        Subject {
            rl,
            clock,
            redis: false,
            hybrid: true,
        }
    }

    /// Before a hybrid call: a sync at the clock's time, so the instance is known to be alone
    /// and healthy (the manual clock jumps past any reserve lifetime between steps).
    async fn synced(&self) {
        if self.hybrid {
            self.rl.hybrid().flush().await.expect("hybrid sync");
        }
    }

    pub async fn redis(server: &RedisServer, w: u64, g: u64, h: f64, draw: f64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let clock = ManualClock::new();
        let rl = builder(w, g, h, draw, &clock)
            .redis_url(server.url())
            .prefix(format!("conf{}", N.fetch_add(1, Ordering::Relaxed)))
            .redis_time_from_clock(true)
            .redis_deadline(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect");
        Subject {
            rl,
            clock,
            redis: true,
            hybrid: false,
        }
    }

    pub fn set_ms(&self, t: u64) {
        self.clock.set_ms(t);
    }

    /// The largest weight this provider takes as input: any `u64` locally, 2^53 − 1 on Redis
    /// (the most a Lua number counts exactly; larger weights are a typed error there).
    pub fn max_weight(&self) -> u64 {
        if self.redis {
            eyelet::redis::MAX_EXACT
        } else {
            u64::MAX
        }
    }

    /// A local sweep pass (the Redis provider drops idle keys by TTL on its own).
    pub fn sweep(&self) -> usize {
        self.rl.sweep()
    }

    pub fn advance(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    pub async fn inc(&self, s: Strat, key: &str, r: &RateLimit, n: u64) -> RateLimitDecision {
        self.synced().await;
        if self.hybrid {
            let h = self.rl.hybrid();
            let d = match s {
                Strat::Abs => h.absolute().inc_stamped(key, r, n),
                Strat::Sup => h.suppressed().inc_stamped(key, r, n),
            };
            assert_eq!(d.source, eyelet::Source::HybridSolo, "{d:?}");
            return d.decision;
        }
        match (self.redis, s) {
            (false, Strat::Abs) => self.rl.local().absolute().inc(key, r, n),
            (false, Strat::Sup) => self.rl.local().suppressed().inc(key, r, n),
            (true, Strat::Abs) => self
                .rl
                .redis()
                .absolute()
                .inc(key, r, n)
                .await
                .expect("inc"),
            (true, Strat::Sup) => self
                .rl
                .redis()
                .suppressed()
                .inc(key, r, n)
                .await
                .expect("inc"),
        }
    }

    pub async fn check(&self, s: Strat, key: &str, r: &RateLimit, n: u64) -> RateLimitDecision {
        self.synced().await;
        if self.hybrid {
            return match s {
                Strat::Abs => self.rl.hybrid().absolute().is_allowed(key, r, n),
                Strat::Sup => self.rl.hybrid().suppressed().is_allowed(key, r, n),
            };
        }
        match (self.redis, s) {
            (false, Strat::Abs) => self.rl.local().absolute().is_allowed(key, r, n),
            (false, Strat::Sup) => self.rl.local().suppressed().is_allowed(key, r, n),
            (true, Strat::Abs) => self
                .rl
                .redis()
                .absolute()
                .is_allowed(key, r, n)
                .await
                .expect("is_allowed"),
            (true, Strat::Sup) => self
                .rl
                .redis()
                .suppressed()
                .is_allowed(key, r, n)
                .await
                .expect("is_allowed"),
        }
    }

    pub async fn inc_many(
        &self,
        s: Strat,
        keys: &[String],
        r: &RateLimit,
        n: u64,
    ) -> Vec<RateLimitDecision> {
        self.synced().await;
        if self.hybrid {
            return match s {
                Strat::Abs => self.rl.hybrid().absolute().inc_many(keys, r, n),
                Strat::Sup => self.rl.hybrid().suppressed().inc_many(keys, r, n),
            };
        }
        match (self.redis, s) {
            (false, Strat::Abs) => self.rl.local().absolute().inc_many(keys, r, n),
            (false, Strat::Sup) => self.rl.local().suppressed().inc_many(keys, r, n),
            (true, Strat::Abs) => self
                .rl
                .redis()
                .absolute()
                .inc_many(keys, r, n)
                .await
                .expect("inc_many"),
            (true, Strat::Sup) => self
                .rl
                .redis()
                .suppressed()
                .inc_many(keys, r, n)
                .await
                .expect("inc_many"),
        }
    }

    pub async fn get_abs(&self, key: &str) -> u64 {
        if self.hybrid {
            return self.rl.hybrid().absolute().get_async(key).await.0;
        }
        if self.redis {
            self.rl.redis().absolute().get(key).await.expect("get")
        } else {
            self.rl.local().absolute().get(key)
        }
    }

    pub async fn get_sup(&self, key: &str) -> SuppressedSnapshot {
        if self.hybrid {
            return self.rl.hybrid().suppressed().get_async(key).await.0;
        }
        if self.redis {
            self.rl.redis().suppressed().get(key).await.expect("get")
        } else {
            self.rl.local().suppressed().get(key)
        }
    }

    pub async fn reset(&self, s: Strat, key: &str) -> bool {
        if self.hybrid {
            return match s {
                Strat::Abs => self.rl.hybrid().absolute().reset_async(key).await,
                Strat::Sup => self.rl.hybrid().suppressed().reset_async(key).await,
            };
        }
        match (self.redis, s) {
            (false, Strat::Abs) => self.rl.local().absolute().reset(key),
            (false, Strat::Sup) => self.rl.local().suppressed().reset(key),
            (true, Strat::Abs) => self.rl.redis().absolute().reset(key).await.expect("reset"),
            (true, Strat::Sup) => self
                .rl
                .redis()
                .suppressed()
                .reset(key)
                .await
                .expect("reset"),
        }
    }
}

pub fn rejected(retry_after_ms: u64, remaining: u64, window_ms: u64) -> RateLimitDecision {
    RateLimitDecision::Rejected {
        retry_after_ms,
        remaining_after_waiting: remaining,
        window: Duration::from_millis(window_ms),
    }
}

use Strat::{Abs, Sup};

/// Every scenario takes a subject with W = 1000 ms, G = 10 ms, h = 1.5, draw 0.5 unless its
/// name says otherwise (the runner builds it from [`SCENARIOS`]).
pub async fn capacity_and_fractional_rates(s: &Subject) {
    let mut admitted = 0;
    for _ in 0..20 {
        if s.inc(Abs, "ten", &rate(10.0), 1).await.is_allowed() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
    // 5.5 req/s over 1 s = 5
    let mut admitted = 0;
    for _ in 0..20 {
        if s.inc(Abs, "frac", &rate(5.5), 1).await.is_allowed() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

pub async fn slow_rates_stretch_the_window(s: &Subject) {
    // 0.4 req/s on a 1 s limiter: one request every 2500 ms
    assert!(s.inc(Abs, "b", &rate(0.4), 1).await.is_allowed());
    assert_eq!(
        s.inc(Abs, "b", &rate(0.4), 1).await,
        rejected(2500, 1, 2500)
    );
    s.advance(2499);
    assert_eq!(s.inc(Abs, "b", &rate(0.4), 1).await, rejected(1, 1, 2500));
    s.advance(1);
    assert!(s.inc(Abs, "b", &rate(0.4), 1).await.is_allowed());
    // the slowest rate holds its whole (32-bit) window
    let slowest = rate(eyelet::MIN_RATE_PER_SECOND);
    let w = u64::from(u32::MAX);
    assert!(s.inc(Abs, "slow", &slowest, 1).await.is_allowed());
    assert_eq!(s.inc(Abs, "slow", &slowest, 1).await, rejected(w, 1, w));
}

pub async fn zero_weight_is_a_free_probe(s: &Subject) {
    let r = rate(1.0);
    assert_eq!(s.inc(Abs, "k", &r, 0).await, RateLimitDecision::Allowed);
    assert_eq!(s.get_abs("k").await, 0);
    assert!(s.inc(Abs, "k", &r, 1).await.is_allowed());
    assert!(!s.inc(Abs, "k", &r, 0).await.is_allowed());
    assert_eq!(s.get_abs("k").await, 1);
    assert_eq!(s.inc(Sup, "k", &r, 0).await, RateLimitDecision::Allowed);
    assert_eq!(
        s.get_sup("k").await.total,
        0,
        "a suppressed probe is not an attempt"
    );
}

pub async fn oversized_weight_is_never_admissible(s: &Subject) {
    let d = s.inc(Abs, "k", &rate(10.0), 11).await;
    assert_eq!(d, rejected(RETRY_NEVER, 10, 1000));
    assert!(d.is_never_admissible());
    assert_eq!(s.get_abs("k").await, 0);
}

pub async fn weighted_admission_is_all_or_nothing(s: &Subject) {
    let r = rate(10.0);
    assert!(s.inc(Abs, "k", &r, 7).await.is_allowed());
    assert!(!s.inc(Abs, "k", &r, 4).await.is_allowed());
    assert_eq!(s.get_abs("k").await, 7);
    assert!(s.inc(Abs, "k", &r, 3).await.is_allowed());
}

pub async fn retry_after_is_tight_across_buckets(s: &Subject) {
    let r = rate(4.0);
    for _ in 0..4 {
        assert!(s.inc(Abs, "k", &r, 1).await.is_allowed());
        s.advance(100);
    }
    assert_eq!(s.inc(Abs, "k", &r, 3).await, rejected(800, 3, 1000));
    s.advance(790);
    assert!(!s.inc(Abs, "k", &r, 3).await.is_allowed());
    s.advance(10);
    assert!(s.inc(Abs, "k", &r, 3).await.is_allowed());
}

pub async fn rate_is_taken_from_each_call(s: &Subject) {
    for _ in 0..5 {
        assert!(s.inc(Abs, "k", &rate(10.0), 1).await.is_allowed());
    }
    assert!(!s.inc(Abs, "k", &rate(4.0), 1).await.is_allowed());
    assert!(s.inc(Abs, "k", &rate(20.0), 1).await.is_allowed());
    s.advance(1000);
    assert_eq!(s.get_abs("k").await, 0);
}

pub async fn get_counts_only_live_buckets(s: &Subject) {
    let r = rate(10.0);
    s.inc(Abs, "k", &r, 1).await;
    s.inc(Sup, "k", &r, 1).await;
    s.set_ms(500);
    s.inc(Abs, "k", &r, 1).await;
    s.inc(Sup, "k", &r, 1).await;
    s.set_ms(1200);
    assert_eq!(s.get_abs("k").await, 1);
    assert_eq!(s.get_sup("k").await.total, 1);
    s.set_ms(1500);
    assert_eq!(s.get_abs("k").await, 0);
}

pub async fn strategies_keep_separate_state(s: &Subject) {
    let r = rate(1.0);
    assert!(s.inc(Abs, "k", &r, 1).await.is_allowed());
    assert_eq!(s.inc(Sup, "k", &r, 1).await, RateLimitDecision::Allowed);
    assert_eq!(s.get_abs("k").await, 1);
    assert_eq!(s.get_sup("k").await.total, 1);
}

pub async fn is_allowed_answers_like_inc_without_recording(s: &Subject) {
    let r = rate(2.0);
    assert!(s.check(Abs, "k", &r, 1).await.is_allowed());
    assert_eq!(s.get_abs("k").await, 0);
    s.inc(Abs, "k", &r, 2).await;
    assert_eq!(s.check(Abs, "k", &r, 1).await, s.inc(Abs, "k", &r, 1).await);
    assert_eq!(s.get_abs("k").await, 2);
}

pub async fn reset_and_unknown_keys(s: &Subject) {
    assert_eq!(s.get_abs("nobody").await, 0);
    assert_eq!(s.get_sup("nobody").await.total, 0);
    s.inc(Abs, "k", &rate(1.0), 1).await;
    assert!(s.reset(Abs, "k").await);
    assert!(!s.reset(Abs, "k").await);
    assert!(s.inc(Abs, "k", &rate(1.0), 1).await.is_allowed());
}

pub async fn suppressed_sheds_between_soft_and_hard(s: &Subject) {
    let r = rate(10.0);
    for _ in 0..40 {
        s.inc(Sup, "k", &r, 1).await;
    }
    let snap = s.get_sup("k").await;
    assert_eq!(snap.total, 40);
    assert!(snap.declined >= 25, "{snap:?}"); // at most H = 15 accepted
    assert!(snap.suppression_factor > 0.5, "{snap:?}");
    s.set_ms(900);
    s.inc(Sup, "k", &r, 1).await;
    assert!(s.get_sup("k").await.suppression_factor > 0.5);
    s.set_ms(1500);
    let snap = s.get_sup("k").await;
    assert_eq!(snap.total, 1);
    assert_eq!(snap.suppression_factor, 0.0, "{snap:?}");
}

pub async fn suppressed_hard_cutoff(s: &Subject) {
    let r = rate(10.0);
    // draw 0.5 admits in the band while sf < 0.5; the hard cutoff H = 15 holds regardless
    let mut accepted = 0;
    for i in 0..100 {
        let d = s.inc(Sup, "k", &r, 1).await;
        if d.is_allowed() {
            accepted += 1;
        }
        if i >= 60 {
            assert!(!d.is_allowed(), "{d:?}");
        }
    }
    assert!(accepted <= 15, "{accepted}");
    assert_eq!(
        s.inc(Sup, "k", &r, 20).await,
        RateLimitDecision::Suppressed {
            is_allowed: false,
            suppression_factor: 1.0
        }
    );
}

pub async fn inc_many_equals_one_by_one(s: &Subject) {
    let suffixes: Vec<String> = (0..300).map(|i| format!("{}", i % 37)).collect();
    let batch_keys: Vec<String> = suffixes.iter().map(|k| format!("a{k}")).collect();
    let r = rate(5.0);
    for round in 0..10 {
        for strat in [Abs, Sup] {
            let batch = s.inc_many(strat, &batch_keys, &r, 1).await;
            let mut single = Vec::new();
            for k in &suffixes {
                single.push(s.inc(strat, &format!("b{k}"), &r, 1).await);
            }
            assert_eq!(batch, single, "round {round} {strat:?}");
        }
        s.advance(70);
    }
}

pub async fn a_recent_long_window_call_keeps_its_buckets(s: &Subject) {
    // 0.5 req/s stretches the window to 2000 ms (C = 1); 10 req/s uses 1000 ms
    let (slow, fast) = (rate(0.5), rate(10.0));
    assert!(s.inc(Abs, "k", &slow, 1).await.is_allowed());
    s.set_ms(999);
    assert!(s.inc(Abs, "k", &fast, 1).await.is_allowed());
    assert!(!s.check(Abs, "k", &slow, 1).await.is_allowed());
    s.set_ms(2000);
    assert!(s.check(Abs, "k", &fast, 1).await.is_allowed());
    s.set_ms(2001);
    // the 999 ms bucket is inside (1, 2001]: a 2000 ms call must still count it
    assert_eq!(s.inc(Abs, "k", &slow, 1).await, rejected(998, 1, 2000));
}

/// One declined request of any weight never opens a suppressed key: accepted weight stays
/// within `H` whatever was attempted (issue 7.1: attempts and declines saturated separately,
/// so `accepted = attempts − declines` read 0 and every later call was admitted).
pub async fn a_huge_declined_weight_keeps_the_key_shut(s: &Subject) {
    let r = rate(10.0); // S = 10, H = 15
    for (key, first) in [("max", s.max_weight()), ("wrapped", s.max_weight() - 7)] {
        let d = s.inc(Sup, key, &r, first).await;
        assert!(!d.is_allowed(), "{key}: {d:?}");
        let mut accepted = 0u64;
        for _ in 0..1000 {
            if s.inc(Sup, key, &r, 1).await.is_allowed() {
                accepted += 1;
            }
        }
        // the attempted rate is enormous, so the band sheds everything: exactly S get in
        assert_eq!(
            accepted, 10,
            "{key}: accepted after a declined weight of {first}"
        );
        let snap = s.get_sup(key).await;
        assert_eq!(
            snap.total,
            s.max_weight(),
            "{key}: attempts saturate: {snap:?}"
        );
        assert_eq!(
            snap.accepted, 10,
            "{key}: accepted weight stays exact: {snap:?}"
        );
        assert_eq!(snap.declined, s.max_weight(), "{key}: {snap:?}");
        assert!(snap.suppression_factor > 0.99, "{key}: {snap:?}");
    }
}

/// Reads (`is_allowed`, `get`) and `n = 0` probes never change a later answer, at any rate
/// (issue 7.2: a read at a short window trimmed buckets that a later long-window call would
/// otherwise have counted, and a long-window call resurrected buckets that had left the span).
pub async fn reads_and_probes_never_change_a_later_answer(s: &Subject) {
    let (fast, slow) = (rate(10.0), rate(0.2)); // slow: W_eff = 5000 ms, C = 1
    let keys = [
        "untouched",
        "read-fast",
        "probe-fast",
        "read-slow",
        "probe-slow",
        "got",
    ];
    for strat in [Abs, Sup] {
        for k in keys {
            assert!(s.inc(strat, k, &fast, 1).await.is_allowed());
        }
    }
    s.set_ms(1300);
    for strat in [Abs, Sup] {
        s.check(strat, "read-fast", &fast, 1).await;
        s.inc(strat, "probe-fast", &fast, 0).await;
        s.check(strat, "read-slow", &slow, 1).await;
        s.inc(strat, "probe-slow", &slow, 0).await;
    }
    s.get_abs("got").await;
    s.get_sup("got").await;
    s.set_ms(2500);
    // The bucket at 0 left the key's 1000 ms span at 1000: it is gone for every key, read or
    // not, so a request at 0.2/s (C = 1 over 5 s) is admitted.
    for strat in [Abs, Sup] {
        for k in keys {
            assert_eq!(
                s.inc(strat, k, &slow, 1).await,
                RateLimitDecision::Allowed,
                "{strat:?} {k}"
            );
        }
    }
}

/// A key dropped while idle (the sweeper, a Redis TTL) answers every later call as a key that
/// was kept: a window whose buckets all left its span forgets the span too. The local run
/// sweeps both keys; the Redis run (clock mode, TTLs of at least a minute) keeps both; both
/// must give the contract's answer.
pub async fn an_evicted_key_answers_like_a_kept_one(s: &Subject) {
    let (fast, slow) = (rate(10.0), rate(0.2)); // slow: W_eff = 5000 ms, C = 1
    for k in ["kept", "swept"] {
        assert!(s.inc(Abs, k, &slow, 1).await.is_allowed());
    }
    // a call asking for the 5 s window after its bucket expired, then idle past stale_after
    s.set_ms(9000);
    for k in ["kept", "swept"] {
        assert!(s.inc(Abs, k, &slow, 2).await.is_never_admissible());
    }
    s.set_ms(10_000);
    s.sweep();
    for k in ["kept", "swept"] {
        assert!(s.inc(Abs, k, &fast, 1).await.is_allowed());
    }
    s.set_ms(11_100);
    let kept = s.inc(Abs, "kept", &slow, 1).await;
    let swept = s.inc(Abs, "swept", &slow, 1).await;
    assert_eq!(kept, swept);
    // the 10 000 ms bucket was recorded at a 1000 ms window on an empty key: gone at 11 000
    assert_eq!(kept, RateLimitDecision::Allowed);
}

/// A read at a window longer than the key's span: the bucket leaves the count when it leaves the
/// span (a read does not extend it), so the retry hint is that, and tight.
pub async fn a_read_at_a_longer_window_gets_a_tight_retry_hint(s: &Subject) {
    let (fast, slow) = (rate(10.0), rate(0.5)); // slow: W_eff = 2000 ms, C = 1
    assert!(s.inc(Abs, "k", &fast, 1).await.is_allowed());
    s.set_ms(500);
    assert_eq!(s.check(Abs, "k", &slow, 1).await, rejected(500, 1, 2000));
    s.set_ms(999);
    assert!(!s.check(Abs, "k", &slow, 1).await.is_allowed());
    s.set_ms(1000);
    assert_eq!(s.inc(Abs, "k", &slow, 1).await, RateLimitDecision::Allowed);
    // an inc at the longer window keeps its bucket for that window: its hint is the full one
    assert_eq!(s.inc(Abs, "k", &slow, 1).await, rejected(2000, 1, 2000));
}

/// `(name, W, G, h, draw, scenario)` for the runner.
pub type Scenario =
    for<'a> fn(&'a Subject) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        /// All scenarios, by name.
        pub const SCENARIOS: &[(&str, Scenario)] = &[
            $((stringify!($name), |s| Box::pin($name(s)))),*
        ];
    };
}

scenarios!(
    capacity_and_fractional_rates,
    slow_rates_stretch_the_window,
    zero_weight_is_a_free_probe,
    oversized_weight_is_never_admissible,
    weighted_admission_is_all_or_nothing,
    retry_after_is_tight_across_buckets,
    rate_is_taken_from_each_call,
    get_counts_only_live_buckets,
    strategies_keep_separate_state,
    is_allowed_answers_like_inc_without_recording,
    reset_and_unknown_keys,
    suppressed_sheds_between_soft_and_hard,
    suppressed_hard_cutoff,
    inc_many_equals_one_by_one,
    a_recent_long_window_call_keeps_its_buckets,
    a_huge_declined_weight_keeps_the_key_shut,
    reads_and_probes_never_change_a_later_answer,
    an_evicted_key_answers_like_a_kept_one,
    a_read_at_a_longer_window_gets_a_tight_retry_hint,
);

/// One step of a differential run.
#[derive(Clone, Debug)]
pub enum Step {
    Advance(u64),
    Inc(Strat, String, f64, u64),
    Check(Strat, String, f64, u64),
    GetAbs(String),
    GetSup(String),
    Reset(Strat, String),
}

/// A reproducible random call sequence over a few keys, rates, weights and time steps chosen
/// to cross bucket, window and stretching boundaries often.
pub fn random_steps(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = SplitMix64::new(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let keys = ["k0", "k1", "k2", "k{3}", "ключ"];
    let rates = [0.4, 1.0, 3.5, 10.0, 50.0, 200.0];
    let weights = [0, 1, 1, 1, 1, 2, 3, 7, 60];
    let advances = [0, 0, 1, 3, 9, 10, 11, 50, 120, 400, 999, 1000, 2500];
    (0..len)
        .map(|_| {
            let key = keys[pick(keys.len())].to_string();
            let strat = if pick(2) == 0 { Abs } else { Sup };
            let r = rates[pick(rates.len())];
            let n = weights[pick(weights.len())];
            match pick(20) {
                0..=5 => Step::Advance(advances[pick(advances.len())]),
                6..=14 => Step::Inc(strat, key, r, n),
                15 | 16 => Step::Check(strat, key, r, n),
                17 => Step::GetAbs(key),
                18 => Step::GetSup(key),
                _ => Step::Reset(strat, key),
            }
        })
        .collect()
}

/// A dense sequence on one hot key: short time steps and high rates keep hundreds of buckets
/// live, so trimming, joins and rejection walks run through the whole ring.
pub fn dense_steps(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = SplitMix64::new(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let rates = [100.0, 300.0, 1000.0];
    let advances = [1, 2, 3, 5, 7, 13];
    (0..len)
        .map(|_| {
            let strat = if pick(2) == 0 { Abs } else { Sup };
            let r = rates[pick(rates.len())];
            match pick(10) {
                0..=2 => Step::Advance(advances[pick(advances.len())]),
                3..=7 => Step::Inc(strat, "hot".into(), r, 1 + pick(3) as u64),
                8 => Step::Check(strat, "hot".into(), r, 1 + pick(40) as u64),
                _ => {
                    if pick(2) == 0 {
                        Step::GetAbs("hot".into())
                    } else {
                        Step::GetSup("hot".into())
                    }
                }
            }
        })
        .collect()
}

/// What one step answered, comparable across providers.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    None,
    Decision(RateLimitDecision),
    Total(u64),
    Snapshot(SuppressedSnapshot),
    Reset(bool),
}

pub async fn run_step(s: &Subject, step: &Step) -> Answer {
    match step {
        Step::Advance(ms) => {
            s.advance(*ms);
            Answer::None
        }
        Step::Inc(st, k, r, n) => Answer::Decision(s.inc(*st, k, &rate(*r), *n).await),
        Step::Check(st, k, r, n) => Answer::Decision(s.check(*st, k, &rate(*r), *n).await),
        Step::GetAbs(k) => Answer::Total(s.get_abs(k).await),
        Step::GetSup(k) => Answer::Snapshot(s.get_sup(k).await),
        Step::Reset(st, k) => Answer::Reset(s.reset(*st, k).await),
    }
}

/// Runs `steps` on `a` and `b` (the same clock moves for both), asserting every answer equal;
/// adds each decision's kind to `kinds` (allowed, rejected, suppressed-in, suppressed-out).
pub async fn differential(
    a: &Subject,
    b: &Subject,
    steps: &[Step],
    label: &str,
    kinds: &mut [usize; 4],
) {
    for (i, step) in steps.iter().enumerate() {
        let x = run_step(a, step).await;
        let y = run_step(b, step).await;
        assert_eq!(x, y, "{label}, step {i}: {step:?} at t = {}", a.clock.ms());
        if let Answer::Decision(d) = x {
            kinds[match d {
                RateLimitDecision::Allowed => 0,
                RateLimitDecision::Rejected { .. } => 1,
                RateLimitDecision::Suppressed {
                    is_allowed: true, ..
                } => 2,
                _ => 3,
            }] += 1;
        }
    }
}
