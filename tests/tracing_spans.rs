//! Feature `tracing`: debug spans around Redis script calls and hybrid syncs, none per local
//! decision. A minimal subscriber (installed globally: spans open on runtime threads) counts
//! the spans by name.
#![cfg(all(feature = "tracing", feature = "redis"))]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eyelet::RateLimiter;
use support::rate;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Counts new spans by name, and events.
#[derive(Default)]
struct Counting {
    spans: Mutex<HashMap<&'static str, u64>>,
    next: AtomicU64,
}

impl Subscriber for Counting {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        *self
            .spans
            .lock()
            .unwrap()
            .entry(span.metadata().name())
            .or_default() += 1;
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Forwards to a shared `Counting` (the global default takes ownership).
struct Shared(Arc<Counting>);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, s: &Attributes<'_>) -> Id {
        self.0.new_span(s)
    }
    fn record(&self, i: &Id, r: &Record<'_>) {
        self.0.record(i, r)
    }
    fn record_follows_from(&self, a: &Id, b: &Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, i: &Id) {
        self.0.enter(i)
    }
    fn exit(&self, i: &Id) {
        self.0.exit(i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_calls_and_syncs_have_spans_and_local_decisions_none() {
    let counting = Arc::new(Counting::default());
    tracing::subscriber::set_global_default(Shared(counting.clone())).expect("first subscriber");
    let count = |name: &str| {
        counting
            .spans
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    };

    let server = support::redis_server::RedisServer::start();
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(1))
        .redis_url(server.url())
        .prefix("traced")
        .sync_interval(Duration::from_secs(3600))
        .connect()
        .await
        .expect("connect");
    let r = rate(100.0);
    let before: u64 = counting.spans.lock().unwrap().values().sum();
    for i in 0..1_000 {
        let _ = rl.local().absolute().inc(&format!("k{}", i % 10), &r, 1);
        let _ = rl.local().suppressed().inc_async("s", &r, 1).await;
    }
    let after: u64 = counting.spans.lock().unwrap().values().sum();
    assert_eq!(after, before, "no span per local decision");

    rl.redis()
        .absolute()
        .inc("k", &r, 1)
        .await
        .expect("decided");
    assert!(count("eyelet.redis.script_call") >= 1);
    assert!(rl.hybrid().absolute().inc("h", &r, 1).is_allowed());
    rl.hybrid().flush().await.expect("sync");
    assert!(count("eyelet.hybrid.sync") >= 1);
    assert!(count("eyelet.hybrid.script_call") >= 1);
    rl.hybrid().shutdown().await.expect("shutdown");
}
