//! The tokio form of `examples/pipeline.rs`: producer tasks feed an mpsc channel; worker tasks
//! wait for each message's turn with `acquire_until` (its tenant's limit, its size as the
//! weight, a deadline per message) instead of routing rejections to a delay queue; a message
//! that can never fit, or whose deadline passes, is a dead letter. Workers hold an owned handle
//! (`RateLimiter::owned`), whose futures are `'static`: each decision could itself be
//! `tokio::spawn`ed.
//!
//! `cargo run --release --features tokio --example pipeline_tokio [seconds]` (default 3; the
//! last messages may wait up to their 2 s deadline after the producer stops).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eyelet::{AcquireError, RateLimit, RateLimiter};
use tokio::sync::{mpsc, Mutex};

const TENANTS: u64 = 4;
/// Per tenant: 1,000 weight units per second (W = 1 s).
const RATE: f64 = 1_000.0;
const WORKERS: usize = 32;

struct Msg {
    tenant: String,
    size: u64,
    deadline: Instant,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3);
    let limiter = RateLimiter::builder()
        .window(Duration::from_secs(1))
        .acquire_jitter(0.1)
        .build()?;
    let rate = RateLimit::try_from(RATE)?;
    let (tx, rx) = mpsc::channel::<Msg>(1_024);
    let rx = Arc::new(Mutex::new(rx));
    let admitted: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let dead = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);

    let producer = tokio::spawn(async move {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        while Instant::now() < end {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let size = if s % 300 == 0 {
                5_000
            } else {
                1 + (s >> 16) % 20
            };
            let msg = Msg {
                tenant: format!("tenant-{}", s % TENANTS),
                size,
                deadline: Instant::now() + Duration::from_secs(2),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let tenants = limiter.owned(|rl| rl.local().absolute());
            let (rx, admitted, dead) = (rx.clone(), admitted.clone(), dead.clone());
            tokio::spawn(async move {
                loop {
                    let Some(m) = rx.lock().await.recv().await else {
                        break;
                    };
                    let turn = tenants.acquire(m.tenant.clone(), rate, m.size, Some(m.deadline));
                    match turn.await {
                        Ok(_) => *admitted.lock().await.entry(m.tenant).or_default() += m.size,
                        Err(AcquireError::NeverAdmissible { .. })
                        | Err(AcquireError::DeadlineExceeded { .. }) => *dead.lock().await += 1,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
        })
        .collect();

    let mut last = BTreeMap::new();
    for second in 1..=seconds {
        tokio::time::sleep_until((start + Duration::from_secs(second)).into()).await;
        let now = admitted.lock().await.clone();
        let line: Vec<String> = now
            .iter()
            .map(|(t, &w)| format!("{t}: {:>5}", w - last.get(t).copied().unwrap_or(0)))
            .collect();
        println!("t={second}s  admitted units  {}", line.join("  "));
        last = now;
    }
    producer.await?;
    for w in workers {
        w.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let bound = RATE as u64 * (secs.floor() as u64 + 1);
    for (t, w) in admitted.lock().await.iter() {
        println!("{t}: {w} units (at most {bound}: {RATE} per window begun)");
    }
    println!("{secs:.1} s; {} dead letters", dead.lock().await);
    Ok(())
}
