//! Bad inputs are typed errors, never panics; public types are `Send`/`Sync` as documented.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

use std::time::Duration;

use eyelet::{
    ConfigError, LocalAbsolute, LocalProvider, LocalSuppressed, ManualClock, RateError, RateLimit,
    RateLimitDecision, RateLimiter, RateLimiterBuilder, SplitMix64, Stamped, SuppressedSnapshot,
    SystemClock,
};

#[test]
fn bad_rates_table() {
    let table: &[(f64, RateError)] = &[
        (f64::NAN, RateError::NotANumber),
        (f64::INFINITY, RateError::Infinite),
        (f64::NEG_INFINITY, RateError::Infinite),
        (0.0, RateError::NotPositive),
        (-0.0, RateError::NotPositive),
        (-1.0, RateError::NotPositive),
        (f64::MIN_POSITIVE / 2.0, RateError::Subnormal),
        (1e-10, RateError::OutOfRange),
        (1e-9, RateError::OutOfRange),
        (2.3e-7, RateError::OutOfRange),
        (1e13, RateError::OutOfRange),
        (f64::MAX, RateError::OutOfRange),
    ];
    for &(r, want) in table {
        assert_eq!(RateLimit::try_from(r), Err(want), "rate {r}");
        assert!(!want.to_string().is_empty());
    }
    for ok in [eyelet::MIN_RATE_PER_SECOND, 2.4e-7, 0.5, 1.0, 5.5, 1e12] {
        assert!(RateLimit::try_from(ok).is_ok(), "rate {ok}");
    }
    assert_eq!(RateLimit::per_minute(f64::NAN), Err(RateError::NotANumber));
    assert_eq!(RateLimit::per_hour(-3.0), Err(RateError::NotPositive));
    assert!(RateLimit::per_day(86_400.0).is_ok());
}

#[test]
fn bad_configs_table() {
    let b = RateLimiter::builder;
    let table: Vec<(RateLimiterBuilder, ConfigError)> = vec![
        (b().window(Duration::ZERO), ConfigError::ZeroWindow),
        (
            b().window(Duration::from_micros(999)),
            ConfigError::ZeroWindow,
        ),
        (
            b().window(Duration::from_secs(60 * 24 * 3600)),
            ConfigError::WindowTooLong,
        ),
        (b().bucket(Duration::ZERO), ConfigError::ZeroBucket),
        (
            b().window(Duration::from_millis(10))
                .bucket(Duration::from_millis(11)),
            ConfigError::BucketLargerThanWindow,
        ),
        (
            b().hard_limit_factor(0.99),
            ConfigError::InvalidHardLimitFactor(0.99),
        ),
        (
            b().hard_limit_factor(-1.0),
            ConfigError::InvalidHardLimitFactor(-1.0),
        ),
        (
            b().hard_limit_factor(f64::INFINITY),
            ConfigError::InvalidHardLimitFactor(f64::INFINITY),
        ),
        (
            b().hard_limit_factor(eyelet::MAX_HARD_LIMIT_FACTOR + 1.0),
            ConfigError::InvalidHardLimitFactor(eyelet::MAX_HARD_LIMIT_FACTOR + 1.0),
        ),
        (b().shards(0), ConfigError::InvalidShardCount(0)),
        (b().shards(1 << 20), ConfigError::InvalidShardCount(1 << 20)),
        (b().max_keys(0), ConfigError::ZeroMaxKeys),
        (
            b().sweep_interval(Duration::from_micros(10)),
            ConfigError::ZeroSweepInterval,
        ),
    ];
    for (builder, want) in table {
        let got = builder.build().map(|_| ()).expect_err("must be refused");
        assert_eq!(got, want);
        let msg = got.to_string();
        assert!(
            !msg.ends_with('.') && msg.chars().next().is_some_and(|c| c.is_lowercase()),
            "{msg}"
        );
    }
    match b().hard_limit_factor(f64::NAN).build() {
        Err(ConfigError::InvalidHardLimitFactor(h)) => assert!(h.is_nan()),
        other => panic!("{other:?}"),
    }
    // Equal bucket and window is valid; sub-millisecond parts are dropped.
    assert!(b()
        .window(Duration::from_millis(10))
        .bucket(Duration::from_millis(10))
        .build()
        .is_ok());
    let rl = b()
        .window(Duration::from_micros(1500))
        .bucket(Duration::from_millis(1))
        .build();
    assert_eq!(
        rl.map(|rl| rl.window()).ok(),
        Some(Duration::from_millis(1))
    );
}

#[test]
fn extreme_weights_and_keys_never_panic() {
    let rl = RateLimiter::builder()
        .sweeper(false)
        .build()
        .expect("config");
    let r = RateLimit::try_from(1e12).expect("rate");
    let abs = rl.local().absolute();
    assert!(abs.inc("big", &r, u64::MAX).is_never_admissible());
    assert!(abs.inc("big", &r, 1_000_000_000_000).is_allowed());
    assert!(abs.inc("", &r, 1).is_allowed(), "the empty key is a key");
    let long = "ключ-{*}?: ".repeat(1000);
    assert!(abs.inc(&long, &r, 1).is_allowed());
    assert_eq!(abs.get(&long), 1);
    let sup = rl.local().suppressed();
    // Above the hard limit: shed with factor 1 and counted as an attempt (semantics.md).
    assert_eq!(
        sup.inc("huge", &r, u64::MAX),
        RateLimitDecision::Suppressed {
            is_allowed: false,
            suppression_factor: 1.0
        }
    );
    assert!(sup.inc("big", &r, u64::from(u32::MAX) * 3).is_allowed());
    assert_eq!(sup.get("big").total, u64::from(u32::MAX) * 3);
}

#[test]
fn one_huge_weight_on_a_long_window_takes_one_bucket() {
    // W = 1 h at 1e12/s: C = 3.6e15. Weights far above 32 bits must not be split into millions
    // of buckets (this used to allocate gigabytes and walk them on every rejection).
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(3600))
        .sweeper(false)
        .build()
        .expect("config");
    let r = RateLimit::try_from(1e12).expect("rate");
    let abs = rl.local().absolute();
    let c = 3_600_000_000_000_000u64;
    assert!(abs.inc("k", &r, c - 1).is_allowed());
    match abs.inc("k", &r, 2) {
        RateLimitDecision::Rejected {
            remaining_after_waiting,
            ..
        } => assert_eq!(remaining_after_waiting, c),
        other => panic!("{other:?}"),
    }
    assert!(abs.inc("k", &r, 1).is_allowed());
    assert_eq!(abs.get("k"), c);
}

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn send_sync_table() {
    send_sync::<RateLimiter>();
    send_sync::<std::sync::Arc<RateLimiter>>();
    send_sync::<LocalProvider>();
    send_sync::<LocalAbsolute>();
    send_sync::<LocalSuppressed>();
    send_sync::<RateLimit>();
    send_sync::<RateLimitDecision>();
    send_sync::<Stamped>();
    send_sync::<SuppressedSnapshot>();
    send_sync::<RateError>();
    send_sync::<ConfigError>();
    send_sync::<ManualClock>();
    send_sync::<SystemClock>();
    send_sync::<RateLimiterBuilder>();
    send::<SplitMix64>();
    // The async forms are Send futures (spawnable on a multi-threaded runtime).
    let rl = RateLimiter::builder()
        .sweeper(false)
        .build()
        .expect("config");
    let r = RateLimit::try_from(1.0).expect("rate");
    fn is_send<F: Send>(_: &F) {}
    let f = rl.local().absolute().inc_async("k", &r, 1);
    is_send(&f);
    let keys = ["a", "b"];
    let g = rl.local().suppressed().inc_many_async(&keys, &r, 1);
    is_send(&g);
    fn copy<T: Copy>() {}
    copy::<RateLimit>();
}

#[cfg(feature = "redis")]
#[test]
fn send_sync_table_redis() {
    use eyelet::{RedisAbsolute, RedisError, RedisProvider, RedisSuppressed};
    send_sync::<RedisProvider>();
    send_sync::<RedisAbsolute>();
    send_sync::<RedisSuppressed>();
    send_sync::<RedisError>();
    fn is_send<F: Send>(_: &F) {}
    let rl = RateLimiter::builder()
        .sweeper(false)
        .build()
        .expect("config");
    let r = RateLimit::try_from(1.0).expect("rate");
    // The Redis futures are Send too (a limiter without Redis answers NotConfigured).
    let f = rl.redis().absolute().inc("k", &r, 1);
    is_send(&f);
    let keys = ["a", "b"];
    let g = rl.redis().suppressed().inc_many(&keys, &r, 1);
    is_send(&g);
    let h = rl.redis().suppressed().get("k");
    is_send(&h);
    let e = RedisError::Timeout {
        deadline: Duration::from_millis(5),
    };
    assert!(e.is_transient());
    assert_eq!(e.to_string(), "no reply from redis within the 5ms deadline");
    assert!(!RedisError::NotConfigured.is_transient());
}
