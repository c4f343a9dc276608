//! The cost of an optional feature (see `run.sh`): the local provider's hot paths with eyelet
//! built without it (`eyelet`) and with it (`eyelet_featured`), in one process, in
//! interleaved rounds, with governor measured between them as the yardstick.
//!
//! Usage: `eyelet-feature-cost <feature name, for the report> [rounds]`.

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Instant;

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

/// The key of a thread's next decision (xorshift state `x`), or the hot key.
fn pick<'a>(hot: bool, keys: &'a [String], x: &mut u64) -> &'a String {
    if hot {
        return &keys[0];
    }
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    &keys[(*x % KEYS as u64) as usize]
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    hot: bool,
    /// Every decision a rejection (a hot key far over its rate).
    overload: bool,
    threads: usize,
    per: u64,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "hot-admit",
        hot: true,
        overload: false,
        threads: 1,
        per: 2_000_000,
    },
    Workload {
        name: "hot-admit",
        hot: true,
        overload: false,
        threads: 2,
        per: 2_000_000,
    },
    Workload {
        name: "hot-reject",
        hot: true,
        overload: true,
        threads: 1,
        per: 2_000_000,
    },
    Workload {
        name: "hot-reject",
        hot: true,
        overload: true,
        threads: 2,
        per: 2_000_000,
    },
    Workload {
        name: "uniform-100k",
        hot: false,
        overload: false,
        threads: 1,
        per: 1_000_000,
    },
];

/// ns per decision of one copy of eyelet on `w` (keys inserted first).
macro_rules! measure {
    ($krate:ident, $w:expr, $keys:expr) => {{
        let w: Workload = $w;
        let keys: Arc<Vec<String>> = $keys;
        let rate = $krate::RateLimit::try_from(if w.overload { 1.0 } else { 1e9 }).expect("rate");
        let rl = $krate::RateLimiter::builder().build().expect("limiter");
        for k in keys.iter().take(if w.hot { 1 } else { KEYS }) {
            rl.local().absolute().inc(k, &rate, 1);
        }
        timed(
            w.threads,
            w.per,
            Arc::new(move |t: usize, per: u64| {
                let abs = rl.local().absolute();
                let mut x = 0x9E37_79B9u64.wrapping_mul(t as u64 + 1);
                for _ in 0..per {
                    std::hint::black_box(abs.inc(pick(w.hot, &keys, &mut x).as_str(), &rate, 1));
                }
            }),
        )
    }};
}

fn governor_ns(w: Workload, keys: Arc<Vec<String>>) -> f64 {
    let quota = if w.overload { 1 } else { u32::MAX };
    let Some(quota) = NonZeroU32::new(quota) else {
        return f64::NAN;
    };
    let gov: Arc<Governor> = Arc::new(governor::RateLimiter::dashmap_with_hasher(
        governor::Quota::per_second(quota),
        ahash::RandomState::new(),
    ));
    for k in keys.iter().take(if w.hot { 1 } else { KEYS }) {
        let _ = gov.check_key(k);
    }
    timed(
        w.threads,
        w.per,
        Arc::new(move |t: usize, per: u64| {
            let mut x = 0x9E37_79B9u64.wrapping_mul(t as u64 + 1);
            for _ in 0..per {
                std::hint::black_box(gov.check_key(pick(w.hot, &keys, &mut x)).is_ok());
            }
        }),
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let feature = args.get(1).cloned().unwrap_or_else(|| "?".into());
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(12);
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user:{i:07}")).collect());
    // per workload: (plain ns, featured ns, governor ns) per round
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); WORKLOADS.len()];
    for round in 0..rounds {
        for (i, w) in WORKLOADS.iter().enumerate() {
            let (plain, featured, gov);
            if round % 2 == 0 {
                plain = measure!(eyelet, *w, keys.clone());
                gov = governor_ns(*w, keys.clone());
                featured = measure!(eyelet_featured, *w, keys.clone());
            } else {
                featured = measure!(eyelet_featured, *w, keys.clone());
                gov = governor_ns(*w, keys.clone());
                plain = measure!(eyelet, *w, keys.clone());
            }
            println!(
                "{round} {} {} plain {plain:.1} {feature} {featured:.1} governor {gov:.1}",
                w.name, w.threads
            );
            results[i].push((plain, featured, gov));
        }
    }
    println!();
    println!("workload        callers  plain ns  {feature} ns  {feature}/plain median (range)");
    for (w, r) in WORKLOADS.iter().zip(&results) {
        let mut p: Vec<f64> = r.iter().map(|x| x.0).collect();
        let mut f: Vec<f64> = r.iter().map(|x| x.1).collect();
        let mut q: Vec<f64> = r.iter().map(|x| x.1 / x.0).collect();
        let (lo, hi) = q
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "{:<15} {:>7}  {:>8.1}  {:>8.1}  {:.3} ({:.3}-{:.3})",
            w.name,
            w.threads,
            median(&mut p),
            median(&mut f),
            median(&mut q),
            lo,
            hi
        );
    }
    ExitCode::SUCCESS
}
