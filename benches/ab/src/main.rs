//! One A/B measurement of the local provider, for `benches/ab/run.sh`: a workload with N
//! callers, eyelet (the checkout this binary was built against) and governor in the same
//! process, one after the other, every decision an admission (rate 10^9/s). Prints one line:
//! `<workload> <callers> eyelet <ns> governor <ns>` (ns per decision; with several callers,
//! wall time over all decisions).
//!
//! Usage: `ab <hot|uniform> <callers>`.

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use eyelet::{RateLimit, RateLimiter};

type Governor = governor::RateLimiter<
    String,
    governor::state::keyed::DashMapStateStore<String, ahash::RandomState>,
    governor::clock::DefaultClock,
>;

const KEYS: usize = 100_000;

/// Runs `f(thread, decisions)` on `threads` threads at once; ns per decision over all of them.
fn timed<F: Fn(usize, u64) + Send + Sync + 'static>(threads: usize, per: u64, f: Arc<F>) -> f64 {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (barrier, f) = (barrier.clone(), f.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(t, per);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        if h.join().is_err() {
            return f64::NAN;
        }
    }
    start.elapsed().as_nanos() as f64 / (threads as u64 * per) as f64
}

/// The key of decision `i` of a thread whose xorshift state is `x`.
fn pick<'a>(hot: bool, keys: &'a [String], x: &mut u64) -> &'a String {
    if hot {
        return &keys[0];
    }
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    &keys[(*x % KEYS as u64) as usize]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(workload), Some(Ok(threads))) = (args.get(1), args.get(2).map(|s| s.parse()))
    else {
        eprintln!("usage: ab <hot|uniform> <callers>");
        return ExitCode::FAILURE;
    };
    let hot = workload == "hot";
    let per: u64 = if hot { 2_000_000 } else { 1_000_000 };
    let (Ok(rate), Some(quota)) = (RateLimit::try_from(1e9), NonZeroU32::new(u32::MAX)) else {
        return ExitCode::FAILURE;
    };
    let Ok(rl) = RateLimiter::builder().build() else {
        return ExitCode::FAILURE;
    };
    let gov: Arc<Governor> = Arc::new(governor::RateLimiter::dashmap_with_hasher(
        governor::Quota::per_second(quota),
        ahash::RandomState::new(),
    ));
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user:{i:07}")).collect());
    // keys inserted beforehand: steady state
    for k in keys.iter() {
        rl.local().absolute().inc(k, &rate, 1);
        let _ = gov.check_key(k);
    }
    let (rl2, k2) = (rl.clone(), keys.clone());
    let eyelet_ns = timed(
        threads,
        per,
        Arc::new(move |t: usize, per: u64| {
            let abs = rl2.local().absolute();
            let mut x = 0x9E37_79B9u64.wrapping_mul(t as u64 + 1);
            for _ in 0..per {
                std::hint::black_box(abs.inc(pick(hot, &k2, &mut x).as_str(), &rate, 1));
            }
        }),
    );
    let (g2, k2) = (gov.clone(), keys.clone());
    let governor_ns = timed(
        threads,
        per,
        Arc::new(move |t: usize, per: u64| {
            let mut x = 0x9E37_79B9u64.wrapping_mul(t as u64 + 1);
            for _ in 0..per {
                std::hint::black_box(g2.check_key(pick(hot, &k2, &mut x)).is_ok());
            }
        }),
    );
    println!("{workload} {threads} eyelet {eyelet_ns:.1} governor {governor_ns:.1}");
    ExitCode::SUCCESS
}
