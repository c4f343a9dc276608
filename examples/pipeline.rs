//! A worker pipeline on crossbeam channels: producers feed messages for many tenants, workers
//! take them in batches and decide each batch per tenant with one weighted `inc_many`
//! (a message weighs its size), admitted messages are processed, rejected ones wait in a delay
//! queue until their retry hint and come back, and a message that can never fit (heavier than
//! its tenant's whole limit) or was retried too often goes to a dead-letter channel. Every
//! second it prints throughput and admitted weight per tenant. (A sliding window admits at most
//! the limit in any window; a once-a-second tally can catch the end of one window's burst and
//! the start of the next, as in its first line.)
//!
//! `cargo run --release --example pipeline [seconds]` (default 3).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use eyelet::{RateLimit, RateLimitDecision, RateLimiter, RETRY_NEVER};

const TENANTS: u64 = 5;
const PRODUCERS: u64 = 2;
const WORKERS: usize = 2;
const BATCH: usize = 64;
/// Per tenant: 2,000 weight units per second (W = 1 s).
const RATE: f64 = 2_000.0;
const MAX_TRIES: u32 = 5;

#[derive(Debug, Clone)]
struct Msg {
    tenant: String,
    /// Weight units (bytes, rows, tokens...).
    size: u64,
    tries: u32,
}

/// Admitted weight and messages per tenant, and the dead letters.
#[derive(Default)]
struct Tally {
    admitted: BTreeMap<String, (u64, u64)>,
    dead: u64,
    delayed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3);
    let limiter = RateLimiter::builder()
        .window(Duration::from_secs(1))
        .build()?;
    let rate = RateLimit::try_from(RATE)?;
    let (tx, rx) = bounded::<Msg>(4_096);
    let (dead_tx, dead_rx) = bounded::<Msg>(4_096);
    // the delay queue: messages by the instant they may be tried again
    let delayed: Arc<Mutex<DelayQueue>> = Arc::default();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (tx, stop) = (tx.clone(), stop.clone());
            thread::spawn(move || {
                let mut s = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(p + 1);
                while !stop.load(Ordering::Relaxed) {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    // tenant-0 is the busiest; one message in 500 is larger than any limit
                    let tenant = (s % (TENANTS * 2)).saturating_sub(TENANTS);
                    let size = if s % 500 == 0 {
                        5_000
                    } else {
                        1 + (s >> 20) % 40
                    };
                    let msg = Msg {
                        tenant: format!("tenant-{tenant}"),
                        size,
                        tries: 0,
                    };
                    if tx.send_timeout(msg, Duration::from_millis(50)).is_err() {
                        continue;
                    }
                    thread::sleep(Duration::from_micros(20));
                }
            })
        })
        .collect();

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (rx, dead_tx) = (rx.clone(), dead_tx.clone());
            let (limiter, delayed, tally, stop) = (
                limiter.clone(),
                delayed.clone(),
                tally.clone(),
                stop.clone(),
            );
            thread::spawn(move || worker(&rx, &dead_tx, &limiter, &rate, &delayed, &tally, &stop))
        })
        .collect();
    drop((tx, rx, dead_tx));

    let start = Instant::now();
    let mut last = BTreeMap::new();
    for second in 1..=seconds {
        thread::sleep(Duration::from_secs(1));
        let t = tally.lock().map_err(|_| "tally poisoned")?;
        let mut line = format!("t={second}s ");
        let mut total = 0;
        for (tenant, &(w, m)) in &t.admitted {
            let (w0, m0) = last.get(tenant).copied().unwrap_or((0, 0));
            line += &format!(" {tenant}: {:>5} units/{:>4} msgs", w - w0, m - m0);
            total += m - m0;
        }
        println!(
            "{line}   | {total} msgs/s, {} delayed, {} dead letters so far",
            t.delayed, t.dead
        );
        last = t.admitted.clone();
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().map_err(|_| "producer panicked")?;
    }
    for w in workers {
        w.join().map_err(|_| "worker panicked")?;
    }
    let dead: Vec<Msg> = dead_rx.try_iter().collect();
    let secs = start.elapsed().as_secs_f64();
    let t = tally.lock().map_err(|_| "tally poisoned")?;
    // a window of W = 1 s begins at every second of the run: at most RATE per window begun
    let bound = RATE as u64 * (secs.floor() as u64 + 1);
    for (tenant, &(w, m)) in &t.admitted {
        println!("{tenant}: {w} units in {m} messages (at most {bound}: {RATE} per window begun)");
    }
    println!(
        "{secs:.1} s; {} dead letters (too large for any window, or {MAX_TRIES} tries), e.g. {:?}",
        dead.len(),
        dead.first()
    );
    Ok(())
}

/// Delayed messages, earliest retry first (then by sequence number).
type DelayQueue = BinaryHeap<Reverse<(Instant, u64, MsgOrd)>>;

/// A message in the delay queue (ordered by its sequence number only).
#[derive(Debug)]
struct MsgOrd(Msg);

impl PartialEq for MsgOrd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for MsgOrd {}
impl PartialOrd for MsgOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MsgOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

#[allow(clippy::too_many_arguments)]
fn worker(
    rx: &Receiver<Msg>,
    dead: &Sender<Msg>,
    limiter: &RateLimiter,
    rate: &RateLimit,
    delayed: &Mutex<DelayQueue>,
    tally: &Mutex<Tally>,
    stop: &AtomicBool,
) {
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        // messages whose retry time came go first
        if let Ok(mut q) = delayed.lock() {
            while batch.len() < BATCH {
                match q.peek() {
                    Some(Reverse((at, _, _))) if *at <= Instant::now() => {
                        if let Some(Reverse((_, _, MsgOrd(m)))) = q.pop() {
                            batch.push(m);
                        }
                    }
                    _ => break,
                }
            }
        }
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(m) => batch.push(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        batch.extend(rx.try_iter().take(BATCH.saturating_sub(batch.len())));
        if batch.is_empty() {
            continue;
        }
        let requests: Vec<(&str, u64)> =
            batch.iter().map(|m| (m.tenant.as_str(), m.size)).collect();
        let decisions = limiter
            .local()
            .absolute()
            .inc_many_weighted(&requests, rate);
        let mut t = match tally.lock() {
            Ok(t) => t,
            Err(_) => return,
        };
        for (mut m, d) in batch.drain(..).zip(decisions) {
            match d {
                RateLimitDecision::Allowed => {
                    let e = t.admitted.entry(m.tenant.clone()).or_default();
                    e.0 += m.size;
                    e.1 += 1;
                }
                RateLimitDecision::Rejected { retry_after_ms, .. }
                    if retry_after_ms != RETRY_NEVER && m.tries < MAX_TRIES =>
                {
                    m.tries += 1;
                    seq += 1;
                    t.delayed += 1;
                    let at = Instant::now() + Duration::from_millis(retry_after_ms);
                    if let Ok(mut q) = delayed.lock() {
                        q.push(Reverse((at, seq, MsgOrd(m))));
                    }
                }
                _ => {
                    t.dead += 1;
                    let _ = dead.try_send(m);
                }
            }
        }
    }
}
