//! Bad inputs and configurations of the Redis provider are typed errors, checked before
//! anything is sent.
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::time::Duration;

use eyelet::redis::{MAX_EXACT, MAX_KEY_LEN};
use eyelet::{ConfigError, RateError, RateLimit, RateLimiter, RedisError};
use support::rate;
use support::redis_server::RedisServer;

#[tokio::test(flavor = "current_thread")]
async fn bad_inputs_are_typed_errors() {
    let server = RedisServer::start();
    let rl = RateLimiter::builder()
        .redis_url(server.url())
        .connect()
        .await
        .expect("connect");
    let abs = rl.redis().absolute();
    let long = "k".repeat(MAX_KEY_LEN + 1);
    assert_eq!(
        abs.inc(&long, &rate(1.0), 1).await,
        Err(RedisError::KeyTooLong {
            len: MAX_KEY_LEN + 1,
            max: MAX_KEY_LEN
        })
    );
    assert!(abs
        .inc(&"k".repeat(MAX_KEY_LEN), &rate(1.0), 1)
        .await
        .is_ok());
    assert_eq!(
        abs.inc("k", &rate(1.0), MAX_EXACT + 1).await,
        Err(RedisError::WeightTooLarge {
            n: MAX_EXACT + 1,
            max: MAX_EXACT
        })
    );
    // 1e12/s over 10,000 s is 1e16 per window: beyond 2^53.
    let long = RateLimiter::builder()
        .window(Duration::from_secs(10_000))
        .redis_url(server.url())
        .connect()
        .await
        .expect("connect");
    assert_eq!(
        long.redis().suppressed().inc("k", &rate(1e12), 1).await,
        Err(RedisError::RateTooHigh {
            limit: 15_000_000_000_000_000,
            max: MAX_EXACT
        })
    );
    assert!(long
        .redis()
        .suppressed()
        .inc("k", &rate(1e11), 1)
        .await
        .is_ok());
    // Absolute counts up to C only: H = 10·C beyond 2^53 does not refuse it.
    let wide = RateLimiter::builder()
        .window(Duration::from_secs(1000))
        .hard_limit_factor(10.0)
        .redis_url(server.url())
        .prefix("wide")
        .connect()
        .await
        .expect("connect");
    let r = rate(1e12); // C = 1e15, H = 1e16
    assert!(wide
        .redis()
        .absolute()
        .inc("k", &r, 1)
        .await
        .expect("absolute")
        .is_allowed());
    assert_eq!(
        wide.redis().suppressed().inc("k", &r, 1).await,
        Err(RedisError::RateTooHigh {
            limit: 10_000_000_000_000_000,
            max: MAX_EXACT
        })
    );
    // Attempts beyond 2^53 in one window saturate (a suppressed key counts declined attempts
    // too); reads keep working.
    for _ in 0..3 {
        let d = wide
            .redis()
            .suppressed()
            .inc("big", &rate(1e11), MAX_EXACT)
            .await
            .expect("counted");
        assert!(!d.is_allowed());
    }
    let snap = wide.redis().suppressed().get("big").await.expect("get");
    assert_eq!((snap.total, snap.declined), (MAX_EXACT, MAX_EXACT));
    // A rate that cannot be built cannot reach Redis.
    assert_eq!(
        RateLimit::try_from(f64::NAN).map(|_| ()),
        Err(RateError::NotANumber)
    );
    // The largest exact weight is accepted (and, above capacity, never admissible).
    assert!(abs
        .is_allowed("k2", &rate(1e12), MAX_EXACT)
        .await
        .expect("valid")
        .is_never_admissible());
    // Nothing invalid reached the server: only the four valid keys exist.
    let keys: Vec<Vec<u8>> = support::redis_server::scan_all(&mut server.conn(), "*");
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn bad_configurations_are_typed_errors() {
    let server = RedisServer::start();
    let err = RateLimiter::builder()
        .redis_url(server.url())
        .prefix("a{b}")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RedisError::Config(ConfigError::InvalidPrefix("a{b}".into()))
    );
    let err = RateLimiter::builder()
        .redis_url(server.url())
        .redis_deadline(Duration::ZERO)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err, RedisError::Config(ConfigError::ZeroRedisDeadline));
    let err = RateLimiter::builder().connect().await.unwrap_err();
    assert_eq!(err, RedisError::NotConfigured);
    // A Redis target with build() is refused, not a limiter whose Redis calls all fail later
    // (issue 7.10).
    assert_eq!(
        RateLimiter::builder()
            .redis_url(server.url())
            .build()
            .map(|_| ()),
        Err(ConfigError::RedisNeedsConnect)
    );
    // The test switch for client time needs an injected clock.
    let err = RateLimiter::builder()
        .redis_url(server.url())
        .redis_time_from_clock(true)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RedisError::Config(ConfigError::ClientClockWithoutCustomClock)
    );
    // The hard-limit factor has one bound for every provider.
    let err = RateLimiter::builder()
        .redis_url(server.url())
        .hard_limit_factor(eyelet::MAX_HARD_LIMIT_FACTOR * 2.0)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RedisError::Config(ConfigError::InvalidHardLimitFactor(
            eyelet::MAX_HARD_LIMIT_FACTOR * 2.0
        ))
    );
    let err = RateLimiter::builder()
        .window(Duration::ZERO)
        .redis_url(server.url())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err, RedisError::Config(ConfigError::ZeroWindow));
    // A server that is not there: a typed connection error, quickly.
    let port = support::redis_server::free_port(false);
    let err = RateLimiter::builder()
        .redis_url(format!("redis://127.0.0.1:{port}/"))
        .redis_deadline(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, RedisError::Connection(_)), "{err:?}");
    // A local-only limiter answers Redis calls with NotConfigured, and local keeps working.
    let rl = RateLimiter::builder().build().unwrap();
    assert_eq!(
        rl.redis().absolute().inc("k", &rate(1.0), 1).await,
        Err(RedisError::NotConfigured)
    );
    assert!(rl.local().absolute().inc("k", &rate(1.0), 1).is_allowed());
}
