//! Two "processes" sharing one limit through Redis: two limiter instances with their own
//! connections (as two app servers would have) hammer one key; every admitted decision carries
//! the Redis server time it was made at, and the report shows that together they never admit
//! more than the shared capacity in any window (to bucket precision: a request joins its key's
//! newest bucket if that is younger than G and expires with it).
//!
//! Needs a Redis 6.2+ server, e.g. `redis-server --port 6390 --save "" &`, then
//! `cargo run --release --features redis --example redis_shared [redis-url] [seconds]`
//! (defaults: `redis://127.0.0.1:6379/`, 3).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eyelet::{RateLimit, RateLimiter, RedisError};

const RATE: f64 = 200.0; // per second; W = 1 s, so C = 200 per window, shared
const W_MS: u64 = 1000;
const G_MS: u64 = 10;
const CALLERS: usize = 16; // per instance

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let rate = RateLimit::try_from(RATE)?;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let rl = RateLimiter::builder()
            .window(Duration::from_millis(W_MS))
            .bucket(Duration::from_millis(G_MS))
            .redis_url(url.as_str())
            .prefix("eyelet-example")
            .connect()
            .await?;
        // Start from a clean key (another run may have left its window behind).
        rl.redis().absolute().reset("shared-key").await?;
        instances.push(rl);
    }
    println!("two instances, {CALLERS} callers each, one key at {RATE} req/s (C = 200 per 1 s)");
    let start = Instant::now();
    let run_for = Duration::from_secs(secs);
    // server times (ms) of admitted decisions, per instance
    let admitted: Arc<[Mutex<Vec<u64>>; 2]> = Arc::new([Mutex::default(), Mutex::default()]);
    let mut tasks = Vec::new();
    for (i, rl) in instances.iter().enumerate() {
        for _ in 0..CALLERS {
            let (rl, admitted) = (rl.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                let mut decisions = 0u64;
                while start.elapsed() < run_for {
                    let s = rl
                        .redis()
                        .absolute()
                        .inc_stamped("shared-key", &rate, 1)
                        .await?;
                    decisions += 1;
                    if s.decision.is_allowed() {
                        if let Ok(mut v) = admitted[i].lock() {
                            v.push(s.at_ms);
                        }
                    }
                }
                Ok::<_, RedisError>(decisions)
            }));
        }
    }
    let mut decisions = 0;
    for t in tasks {
        decisions += t.await??;
    }
    let per: Vec<Vec<u64>> = admitted
        .iter()
        .map(|m| m.lock().map(|v| v.clone()).unwrap_or_default())
        .collect();
    let mut all: Vec<u64> = per.concat();
    all.sort_unstable();
    // the most admitted in any span of W − G ms (bucket precision), by server time
    let mut worst = 0;
    let mut lo = 0;
    for hi in 0..all.len() {
        while all[hi] - all[lo] > W_MS - G_MS {
            lo += 1;
        }
        worst = worst.max(hi - lo + 1);
    }
    println!(
        "{decisions} decisions; admitted: instance A {}, instance B {}, together {}",
        per[0].len(),
        per[1].len(),
        all.len()
    );
    println!(
        "most admitted in any {} ms (W − G) by Redis time: {worst} (C = 200)",
        W_MS - G_MS
    );
    Ok(())
}
