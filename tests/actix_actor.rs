//! eyelet from actix actors: an actor guards its handler with the async form, which never
//! blocks the actor's arbiter thread.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use eyelet::{RateLimit, RateLimitDecision, RateLimiter};

/// A request for `user` to do one unit of work.
struct Work {
    user: String,
}

impl Message for Work {
    type Result = RateLimitDecision;
}

/// An actor that admits work per user through a shared limiter.
struct Gate {
    limiter: Arc<RateLimiter>,
    rate: RateLimit,
}

impl Actor for Gate {
    type Context = Context<Self>;
}

impl Handler<Work> for Gate {
    type Result = ResponseFuture<RateLimitDecision>;

    fn handle(&mut self, msg: Work, _: &mut Context<Self>) -> Self::Result {
        let (limiter, rate) = (self.limiter.clone(), self.rate);
        Box::pin(async move {
            limiter
                .local()
                .absolute()
                .inc_async(&msg.user, &rate, 1)
                .await
        })
    }
}

#[actix_rt::test]
async fn actors_share_one_limiter_exactly() {
    let limiter = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .sweeper(false)
        .build()
        .expect("config");
    let rate = RateLimit::per_minute(100.0).expect("rate"); // C = 100 per 60 s
    let gates: Vec<Addr<Gate>> = (0..4)
        .map(|_| {
            Gate {
                limiter: limiter.clone(),
                rate,
            }
            .start()
        })
        .collect();
    let mut pending = Vec::new();
    for i in 0..1000 {
        let gate = &gates[i % gates.len()];
        pending.push(gate.send(Work {
            user: if i % 2 == 0 { "alice" } else { "bob" }.to_string(),
        }));
    }
    let mut admitted = 0;
    for p in pending {
        if p.await.expect("mailbox").is_allowed() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 200, "100 for each user");
    assert_eq!(limiter.local().absolute().get("alice"), 100);
    // Meanwhile sync callers on other threads see the same state.
    let l2 = limiter.clone();
    let from_thread = std::thread::spawn(move || l2.local().absolute().inc("alice", &rate, 1))
        .join()
        .expect("thread");
    assert!(!from_thread.is_allowed());
}
