//! `eyelet::actix::LimiterActor` inside an actix `System`: many concurrent senders through
//! `Addr` and `Recipient`, exact admitted counts on every provider, Redis errors typed.
#![cfg(feature = "actix")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::time::{Duration, Instant};

use actix::prelude::*;
use eyelet::actix::{Acquire, Get, Inc, IncMany, IsAllowed, LimiterActor, Reading, Reset, Target};
use eyelet::{AcquireError, RateLimitDecision, RateLimiter};
use support::rate;

/// `senders` actors' worth of concurrent `Inc`s (1,000 in all, over two keys) through
/// `Recipient`s of four `LimiterActor`s on their own arbiters: returns the admitted count.
async fn admitted_through_actors(rl: std::sync::Arc<RateLimiter>, target: Target) -> usize {
    let r = rate(100.0 / 60.0); // C = 100 per 60 s window
    let addrs: Vec<Addr<LimiterActor>> = (0..4)
        .map(|_| {
            let rl = rl.clone();
            LimiterActor::start_in_arbiter(&Arbiter::new().handle(), move |_| LimiterActor::new(rl))
        })
        .collect();
    let recipients: Vec<Recipient<Inc>> = addrs.iter().map(|a| a.clone().recipient()).collect();
    let mut pending = Vec::new();
    for i in 0..1000 {
        let key = if i % 2 == 0 { "alice" } else { "bob" };
        pending.push(recipients[i % 4].send(Inc::new(target, key, r, 1)));
    }
    let mut admitted = 0;
    for p in pending {
        if p.await.expect("mailbox").expect("decided").is_allowed() {
            admitted += 1;
        }
    }
    admitted
}

fn local() -> std::sync::Arc<RateLimiter> {
    RateLimiter::builder()
        .window(Duration::from_secs(60))
        .sweeper(false)
        .build()
        .expect("config")
}

#[actix_rt::test]
async fn local_decisions_through_actors_are_exact() {
    let rl = local();
    assert_eq!(
        admitted_through_actors(rl.clone(), Target::LocalAbsolute).await,
        200
    );
    assert_eq!(rl.local().absolute().get("alice"), 100);
}

/// Every message type on the local provider, checked against the handles.
#[actix_rt::test]
async fn every_message_answers_as_the_handles_do() {
    let rl = local();
    let addr = LimiterActor::new(rl.clone()).start();
    let r = rate(10.0 / 60.0); // C = 10
    let probe = addr
        .send(IsAllowed(Inc::new(Target::LocalAbsolute, "k", r, 4)))
        .await
        .unwrap()
        .unwrap();
    assert!(probe.is_allowed());
    assert_eq!(rl.local().absolute().get("k"), 0, "a probe records nothing");
    let many = addr
        .send(IncMany {
            target: Target::LocalAbsolute,
            keys: vec!["k".into(), "k".into(), "k".into(), "j".into()],
            rate: r,
            n: 4,
        })
        .await
        .unwrap()
        .unwrap();
    let allowed: Vec<bool> = many.iter().map(RateLimitDecision::is_allowed).collect();
    assert_eq!(allowed, [true, true, false, true]);
    let read = addr
        .send(Get {
            target: Target::LocalAbsolute,
            key: "k".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, Reading::Total(8));
    let sup = addr
        .send(Inc::new(Target::LocalSuppressed, "s", r, 1))
        .await
        .unwrap()
        .unwrap();
    assert!(sup.is_allowed());
    let read = addr
        .send(Get {
            target: Target::LocalSuppressed,
            key: "s".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(read, Reading::Suppressed(s) if s.total == 1 && s.accepted == 1));
    let had = addr
        .send(Reset {
            target: Target::LocalAbsolute,
            key: "k".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert!(had);
    assert_eq!(rl.local().absolute().get("k"), 0);
    // acquire: a full key waits past its deadline while the actor keeps answering others
    assert!(rl.local().absolute().inc("full", &r, 10).is_allowed());
    let deadline = Instant::now() + Duration::from_millis(50);
    let waiting = addr.send(Acquire {
        inc: Inc::new(Target::LocalAbsolute, "full", r, 1),
        deadline: Some(deadline),
    });
    let other = addr
        .send(Inc::new(Target::LocalAbsolute, "other", r, 1))
        .await
        .unwrap()
        .unwrap();
    assert!(other.is_allowed(), "answered while the waiter waits");
    let got = waiting.await.unwrap();
    assert!(
        matches!(got, Err(AcquireError::DeadlineExceeded { .. })),
        "{got:?}"
    );
    assert!(Instant::now() >= deadline);
}

#[cfg(feature = "redis")]
mod redis_and_hybrid {
    use super::*;
    use eyelet::actix::ActorError;
    use support::redis_server::RedisServer;

    #[actix_rt::test]
    async fn redis_and_hybrid_decisions_through_actors_are_exact_and_redis_errors_typed() {
        let server = RedisServer::start();
        let rl = RateLimiter::builder()
            .window(Duration::from_secs(60))
            .sweeper(false)
            .redis_url(server.url())
            .prefix("actor")
            .connect()
            .await
            .expect("connect");
        assert_eq!(
            admitted_through_actors(rl.clone(), Target::RedisAbsolute).await,
            200
        );
        assert_eq!(rl.redis().absolute().get("alice").await.unwrap(), 100);
        rl.hybrid().flush().await.expect("first sync");
        assert_eq!(
            admitted_through_actors(rl.clone(), Target::HybridAbsolute).await,
            200
        );
        let addr = LimiterActor::new(rl.clone()).start();
        let read = addr
            .send(Get {
                target: Target::HybridAbsolute,
                key: "alice".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(read, Reading::HybridTotal { own: 100, .. }),
            "{read:?}"
        );
        rl.hybrid().shutdown().await.expect("shutdown");
        drop(server);
        let got = addr
            .send(Inc::new(Target::RedisAbsolute, "alice", rate(1.0), 1))
            .await
            .unwrap();
        assert!(matches!(got, Err(ActorError::Redis(_))), "{got:?}");
    }
}
