//! Four "app servers" sharing one limit through the hybrid provider: four limiter instances,
//! each with its own Redis connection and sync actor, offer 5× the rate to one key. Decisions
//! are local (no call waits on Redis); every 10 ms the sync actors exchange deltas and
//! reserves with Redis. Each second prints what each instance admitted, the total against the
//! capacity, and where the decisions came from.
//!
//! Needs a Redis 6.2+ server, e.g. `redis-server --port 6390 --save "" --daemonize yes`, then
//! `cargo run --release --features redis --example hybrid [redis-url] [seconds] [load]`
//! (defaults: `redis://127.0.0.1:6379/`, 5, 5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eyelet::{RateLimit, RateLimiter, Source};

const RATE: f64 = 1000.0; // per second; W = 1 s, so C = 1000 per window across all instances
const INSTANCES: usize = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let load: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    if !(load.is_finite() && load > 0.0) {
        return Err("load must be a positive number".into());
    }
    let rate = RateLimit::try_from(RATE)?;
    // A fresh prefix per run: nothing left over from an earlier one.
    let prefix = format!("eyelet-hybrid-example-{}", std::process::id());
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        let rl = RateLimiter::builder()
            .window(Duration::from_secs(1))
            .bucket(Duration::from_millis(10))
            .sync_interval(Duration::from_millis(10))
            .redis_url(url.as_str())
            .prefix(prefix.as_str())
            .connect()
            .await?;
        instances.push(rl);
    }
    // Two syncs each: every instance sees the other three in the registry.
    for _ in 0..2 {
        for rl in &instances {
            rl.hybrid().flush().await?;
        }
    }
    println!(
        "{INSTANCES} instances, one key, C = {RATE} per 1 s window, offered {load}× ({} req/s in all)",
        RATE * load
    );
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // (instance, second) -> admitted; sources seen
    let admitted: Arc<Mutex<HashMap<(usize, u64), u64>>> = Arc::default();
    let sources: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let per_instance = RATE * load / INSTANCES as f64;
    let threads: Vec<_> = instances
        .iter()
        .enumerate()
        .map(|(i, rl)| {
            let (rl, stop, admitted, sources) =
                (rl.clone(), stop.clone(), admitted.clone(), sources.clone());
            std::thread::spawn(move || {
                let gap = Duration::from_secs_f64(1.0 / per_instance);
                let mut next = Instant::now();
                let (mut mine, mut seen) = (HashMap::new(), HashMap::new());
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(1)));
                        continue;
                    }
                    while next <= now {
                        let s = rl.hybrid().absolute().inc_stamped("shared-key", &rate, 1);
                        if s.decision.is_allowed() {
                            *mine.entry(start.elapsed().as_secs()).or_insert(0u64) += 1;
                        }
                        *seen.entry(source_name(s.source)).or_insert(0u64) += 1;
                        next += gap;
                    }
                }
                let mut a = admitted.lock().unwrap_or_else(|e| e.into_inner());
                for (sec, n) in mine {
                    *a.entry((i, sec)).or_insert(0) += n;
                }
                let mut s = sources.lock().unwrap_or_else(|e| e.into_inner());
                for (k, n) in seen {
                    *s.entry(k.to_string()).or_insert(0) += n;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let a = std::mem::take(&mut *admitted.lock().unwrap_or_else(|e| e.into_inner()));
    println!("second | per instance            | total | of capacity");
    for sec in 0..secs {
        let per: Vec<u64> = (0..INSTANCES)
            .map(|i| a.get(&(i, sec)).copied().unwrap_or(0))
            .collect();
        let total: u64 = per.iter().sum();
        println!(
            "{sec:>6} | {:<23} | {total:>5} | {:>5.1} %",
            per.iter()
                .map(|n| format!("{n:>5}"))
                .collect::<Vec<_>>()
                .join(""),
            100.0 * total as f64 / RATE
        );
    }
    let s = std::mem::take(&mut *sources.lock().unwrap_or_else(|e| e.into_inner()));
    let mut s: Vec<_> = s.into_iter().collect();
    s.sort();
    println!("decisions by source: {s:?}");
    for rl in &instances {
        rl.hybrid().shutdown().await?;
    }
    println!(
        "status of the last instance: {:?}",
        instances[INSTANCES - 1].hybrid().status()
    );
    Ok(())
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::HybridSolo => "solo",
        Source::HybridReserve => "reserve",
        Source::HybridProvisional => "provisional",
        Source::HybridOutage => "outage",
        _ => "other",
    }
}
