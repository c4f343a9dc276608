//! Fan-in on one key: several producer threads offer 3× the rate to one key; every 100 ms the
//! accepted rate under absolute and under suppressed is printed side by side, so the cliff of a
//! hard limit and the smooth shedding of the suppressed strategy are visible.
//!
//! `cargo run --release --example fan_in [load-factor] [seconds]` (defaults: 3, 4).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use eyelet::{RateLimit, RateLimiter};

const PRODUCERS: usize = 4;
const RATE: f64 = 1000.0; // per second; W = 1 s, so C = 1000
const TICK: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 30;

#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    absolute: AtomicU64,
    suppressed: AtomicU64,
}

fn bar(value: u64, full_scale: u64) -> String {
    let cells = (value as usize * BAR_WIDTH)
        .div_ceil(full_scale.max(1) as usize)
        .min(BAR_WIDTH);
    format!("{:<width$}", "█".repeat(cells), width = BAR_WIDTH)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let load: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3.0);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4);
    if !(load.is_finite() && load > 0.0) {
        return Err("load factor must be a positive number".into());
    }

    let rl = RateLimiter::builder()
        .window(Duration::from_secs(1))
        .bucket(Duration::from_millis(10))
        .hard_limit_factor(1.5)
        .seed(7)
        .build()?;
    let rate = RateLimit::try_from(RATE)?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Each producer paces itself to load × RATE / PRODUCERS requests per second.
    let interval = Duration::from_secs_f64(PRODUCERS as f64 / (load * RATE));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (rl, counters, stop) = (rl.clone(), counters.clone(), stop.clone());
            thread::spawn(move || {
                let start = Instant::now() + interval.mul_f64(p as f64 / PRODUCERS as f64);
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + interval * sent;
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                    sent += 1;
                    counters.offered.fetch_add(1, Ordering::Relaxed);
                    if rl.local().absolute().inc("checkout", &rate, 1).is_allowed() {
                        counters.absolute.fetch_add(1, Ordering::Relaxed);
                    }
                    if rl
                        .local()
                        .suppressed()
                        .inc("checkout", &rate, 1)
                        .is_allowed()
                    {
                        counters.suppressed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let per_tick_target = (RATE * TICK.as_secs_f64()) as u64;
    let full_scale = (per_tick_target as f64 * load).ceil() as u64;
    println!(
        "eyelet fan-in: {PRODUCERS} producers offer {load}× the rate ({} req/s) to one key; \
         limit {RATE} req/s, W = 1 s, G = 10 ms, h = 1.5",
        load * RATE
    );
    println!(
        "accepted per {} ms (target {per_tick_target}); bars scaled to the offered load\n",
        TICK.as_millis()
    );
    println!(
        "{:>6} {:>7}  {:<w$} {:>5}   {:<w$} {:>5}",
        "t(ms)",
        "offered",
        "absolute (hard limit)",
        "",
        "suppressed (shedding)",
        "",
        w = BAR_WIDTH
    );
    let (mut last_o, mut last_a, mut last_s) = (0, 0, 0);
    let (mut sum_a, mut sum_s, mut ticks) = (0u64, 0u64, 0u64);
    let begin = Instant::now();
    for tick in 1..=(seconds * 1000 / TICK.as_millis() as u64) {
        let due = begin + TICK * tick as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let (o, a, s) = (
            counters.offered.load(Ordering::Relaxed),
            counters.absolute.load(Ordering::Relaxed),
            counters.suppressed.load(Ordering::Relaxed),
        );
        let (d_o, d_a, d_s) = (o - last_o, a - last_a, s - last_s);
        (last_o, last_a, last_s) = (o, a, s);
        if tick > 10 {
            sum_a += d_a;
            sum_s += d_s;
            ticks += 1;
        }
        println!(
            "{:>6} {:>7}  {} {:>5}   {} {:>5}",
            tick * TICK.as_millis() as u64,
            d_o,
            bar(d_a, full_scale),
            d_a,
            bar(d_s, full_scale),
            d_s
        );
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = p.join();
    }
    if ticks > 0 {
        println!(
            "\nafter the first second: mean accepted per tick absolute {:.0}, suppressed {:.0} \
             (target {per_tick_target}); absolute arrives in bursts at each window start, \
             suppressed spreads the same budget evenly",
            sum_a as f64 / ticks as f64,
            sum_s as f64 / ticks as f64
        );
    }
    Ok(())
}
