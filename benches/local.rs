//! Local provider benchmark: eyelet beside governor (keyed, ahash) and Trypema 2.x (local
//! absolute) in one process, on the same workloads, in interleaved rounds. See
//! `benches/README.md`.
//!
//! ```sh
//! cargo bench --bench local                                   # everything, ~6 minutes
//! EYELET_BENCH_ONLY=uniform12 cargo bench --bench local       # workloads whose name contains it
//! EYELET_BENCH_ROUNDS=9 EYELET_BENCH_SECS=2 cargo bench --bench local
//! EYELET_BENCH_OUT=benches/results/local-X.txt cargo bench --bench local   # also save output
//! ```
//!
//! Each workload builds every contender once, inserts its keys, runs it at the workload for a
//! warm-up longer than the window (so the timed rounds are in steady state, with buckets
//! expiring while timed), then runs rounds: in each round every contender runs the workload for
//! `EYELET_BENCH_SECS` (default 1 s), in an order rotated per round. Reported per contender: the
//! median ns per decision over rounds and its range; per peer: the median of (peer ns ÷ eyelet
//! ns) within each round and its range (above 1: eyelet faster).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Counting allocator (memory report)
#[path = "support/counting.rs"]
mod counting;

// ---------------------------------------------------------------------------------------------
// Output: stdout, and the file named by EYELET_BENCH_OUT

static OUT: Mutex<Option<std::fs::File>> = Mutex::new(None);

macro_rules! say {
    ($($t:tt)*) => {{
        let line = format!($($t)*);
        println!("{line}");
        if let Ok(mut f) = OUT.lock() {
            if let Some(f) = f.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    }};
}

// ---------------------------------------------------------------------------------------------
// Contenders

const WINDOW: Duration = Duration::from_secs(1);
const BUCKET: Duration = Duration::from_millis(10);
/// High enough that every decision is an admission for everyone.
const HIGH_RATE: f64 = 1e9;

type Governor = governor::RateLimiter<
    String,
    governor::state::keyed::DashMapStateStore<String, ahash::RandomState>,
    governor::clock::DefaultClock,
>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Eyelet,
    Governor,
    Trypema,
}

const ALL: [Who; 3] = [Who::Eyelet, Who::Governor, Who::Trypema];

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Eyelet => "eyelet",
            Who::Governor => "governor",
            Who::Trypema => "trypema",
        }
    }
}

/// One contender's limiter at one rate.
enum Limiter {
    Eyelet(Arc<eyelet::RateLimiter>, eyelet::RateLimit),
    Governor(Governor),
    Trypema(
        Arc<trypema::local::LocalRateLimiterProvider>,
        trypema::RateLimit,
    ),
}

impl Limiter {
    fn new(who: Who, rate: f64) -> Self {
        use trypema::RateLimiterBuilder as _;
        match who {
            Who::Eyelet => Limiter::Eyelet(
                eyelet::RateLimiter::builder()
                    .window(WINDOW)
                    .bucket(BUCKET)
                    .build()
                    .expect("eyelet"),
                eyelet::RateLimit::try_from(rate).expect("rate"),
            ),
            Who::Governor => {
                let per_sec = rate.min(f64::from(u32::MAX)) as u32;
                let quota = governor::Quota::per_second(
                    NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN),
                );
                Limiter::Governor(governor::RateLimiter::dashmap_with_hasher(
                    quota,
                    ahash::RandomState::new(),
                ))
            }
            Who::Trypema => Limiter::Trypema(
                trypema::local::LocalRateLimiterProvider::builder()
                    .window_size(trypema::WindowSize::seconds_or_panic(1))
                    .bucket_size(trypema::BucketSize::milliseconds_or_panic(10))
                    .build()
                    .expect("trypema"),
                trypema::RateLimit::per_second_or_panic(rate),
            ),
        }
    }

    /// Decisions of weight 1 for `keys`, as one batch where the contender has one (eyelet's
    /// `inc_many_into`), else one call each; how many were admitted.
    #[inline]
    fn check_batch(&self, keys: &[&String], out: &mut Vec<eyelet::RateLimitDecision>) -> u64 {
        match self {
            Limiter::Eyelet(rl, rate) => {
                rl.local().absolute().inc_many_into(keys, rate, 1, out);
                out.iter().filter(|d| d.is_allowed()).count() as u64
            }
            _ => keys.iter().map(|k| u64::from(self.check(k))).sum(),
        }
    }

    /// One decision of weight 1; whether it was admitted.
    #[inline]
    fn check(&self, key: &String) -> bool {
        match self {
            Limiter::Eyelet(rl, rate) => rl.local().absolute().inc(key, rate, 1).is_allowed(),
            Limiter::Governor(g) => g.check_key(key).is_ok(),
            Limiter::Trypema(t, rate) => matches!(
                t.absolute().inc(key, rate, 1),
                trypema::RateLimitDecision::Allowed
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and key sequences

/// Key `i` of `len` bytes: `user_0000042` (12 bytes) or a UUID-shaped 36-byte string.
fn key(i: usize, len: usize) -> String {
    match len {
        12 => format!("user_{i:07}"),
        _ => {
            let x = splitmix(i as u64);
            let y = splitmix(x);
            let s = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                x >> 32,
                (x >> 16) & 0xffff,
                x & 0xffff,
                y >> 48,
                y & 0xffff_ffff_ffff
            );
            debug_assert_eq!(s.len(), 36);
            s
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which keys the calls of one thread go to, in order (cycled).
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// One key.
    Hot,
    /// Uniformly random over `n` keys.
    Uniform(usize),
    /// Zipf with exponent `s` over `n` keys (rank 0 the most frequent).
    Zipf(usize, f64),
}

const SEQUENCE: usize = 1 << 21;

/// A pre-drawn sequence of key indices for thread `t` (drawn before timing, read in order
/// while timed, so drawing costs nothing measured).
fn sequence(p: Pattern, t: usize) -> Vec<u32> {
    let mut s = splitmix(0xE1E7 + t as u64);
    let mut next = move || {
        s = splitmix(s);
        s
    };
    match p {
        Pattern::Hot => vec![0],
        Pattern::Uniform(n) => (0..SEQUENCE).map(|_| (next() % n as u64) as u32).collect(),
        Pattern::Zipf(n, exp) => {
            let mut cdf = Vec::with_capacity(n);
            let mut acc = 0.0f64;
            for r in 1..=n {
                acc += 1.0 / (r as f64).powf(exp);
                cdf.push(acc);
            }
            (0..SEQUENCE)
                .map(|_| {
                    let u = (next() >> 11) as f64 / (1u64 << 53) as f64 * acc;
                    cdf.partition_point(|&c| c < u).min(n - 1) as u32
                })
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

struct Workload {
    name: &'static str,
    pattern: Pattern,
    key_len: usize,
    callers: usize,
    /// Rate per key: high (every decision admitted) or 1/s (a pre-filled key: every decision
    /// rejected).
    overload: bool,
    /// Decisions in batches of 256 (`inc_many_into` for eyelet, a loop for the others).
    batch: bool,
}

fn workloads() -> Vec<Workload> {
    let w = |name, pattern, key_len, callers, overload| Workload {
        name,
        pattern,
        key_len,
        callers,
        overload,
        batch: false,
    };
    let b = |name, pattern, callers| Workload {
        name,
        pattern,
        key_len: 12,
        callers,
        overload: false,
        batch: true,
    };
    vec![
        w("uniform12_1", Pattern::Uniform(100_000), 12, 1, false),
        w("uniform12_2", Pattern::Uniform(100_000), 12, 2, false),
        w("uniform36_1", Pattern::Uniform(100_000), 36, 1, false),
        w("uniform36_2", Pattern::Uniform(100_000), 36, 2, false),
        w("zipf36_1", Pattern::Zipf(1_000_000, 1.1), 36, 1, false),
        w("zipf36_2", Pattern::Zipf(1_000_000, 1.1), 36, 2, false),
        w("overload_1", Pattern::Hot, 12, 1, true),
        w("overload_2", Pattern::Hot, 12, 2, true),
        w("hot_1", Pattern::Hot, 12, 1, false),
        w("hot_2", Pattern::Hot, 12, 2, false),
        w("hot_4", Pattern::Hot, 12, 4, false),
        b("batch256_hot_1", Pattern::Hot, 1),
        b("batch256_hot_2", Pattern::Hot, 2),
        b("batch256_uniform12_2", Pattern::Uniform(100_000), 2),
    ]
}

fn key_count(p: Pattern) -> usize {
    match p {
        Pattern::Hot => 1,
        Pattern::Uniform(n) | Pattern::Zipf(n, _) => n,
    }
}

/// Runs `limiter` on the workload for `secs` with `seqs.len()` threads; ns per decision over
/// all threads (wall time ÷ decisions) and the share admitted.
fn run(
    limiter: &Limiter,
    keys: &[String],
    seqs: &[Vec<u32>],
    secs: f64,
    batch: bool,
) -> (f64, f64) {
    let threads = seqs.len();
    let barrier = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let (done, admitted) = (AtomicU64::new(0), AtomicU64::new(0));
    let elapsed = thread::scope(|s| {
        for seq in seqs {
            let (barrier, stop, done, admitted) = (&barrier, &stop, &done, &admitted);
            s.spawn(move || {
                let (mut n, mut ok, mut i) = (0u64, 0u64, 0usize);
                let mut picked: Vec<&String> = Vec::with_capacity(256);
                let mut out = Vec::with_capacity(256);
                barrier.wait();
                while !stop.load(Ordering::Relaxed) && batch {
                    picked.clear();
                    for _ in 0..256 {
                        picked.push(&keys[seq[i] as usize]);
                        i += 1;
                        if i == seq.len() {
                            i = 0;
                        }
                    }
                    ok += black_box(limiter.check_batch(&picked, &mut out));
                    n += 256;
                }
                while !stop.load(Ordering::Relaxed) && !batch {
                    for _ in 0..256 {
                        let k = &keys[seq[i] as usize];
                        i += 1;
                        if i == seq.len() {
                            i = 0;
                        }
                        ok += u64::from(black_box(limiter.check(k)));
                    }
                    n += 256;
                }
                done.fetch_add(n, Ordering::Relaxed);
                admitted.fetch_add(ok, Ordering::Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        start
    })
    .elapsed();
    let n = done.load(Ordering::Relaxed).max(1);
    (
        elapsed.as_nanos() as f64 / n as f64,
        admitted.load(Ordering::Relaxed) as f64 / n as f64,
    )
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

struct Row {
    name: &'static str,
    /// ns per decision, per contender, per round.
    ns: Vec<Vec<f64>>,
}

fn throughput(w: &Workload, rounds: usize, secs: f64) -> Row {
    let n = key_count(w.pattern);
    let keys: Vec<String> = (0..n).map(|i| key(i, w.key_len)).collect();
    let seqs: Vec<Vec<u32>> = (0..w.callers).map(|t| sequence(w.pattern, t)).collect();
    let rate = if w.overload { 1.0 } else { HIGH_RATE };
    let limiters: Vec<Limiter> = ALL.iter().map(|&who| Limiter::new(who, rate)).collect();
    // Keys inserted beforehand, then a warm-up at the workload longer than the window, so the
    // timed rounds see buckets open and expire as in a long-running service.
    for l in &limiters {
        for k in &keys {
            l.check(k);
        }
        run(l, &keys, &seqs, 1.2, w.batch);
    }
    let mut ns = vec![Vec::new(); ALL.len()];
    for round in 0..rounds {
        let mut line = format!("{:<12} round {round}", w.name);
        for j in 0..ALL.len() {
            let c = (round + j) % ALL.len();
            let (t, admitted) = run(&limiters[c], &keys, &seqs, secs, w.batch);
            ns[c].push(t);
            let _ = write!(
                line,
                "  {} {t:.1} ns ({:.0}% adm)",
                ALL[c].name(),
                admitted * 100.0
            );
        }
        say!("{line}");
    }
    Row { name: w.name, ns }
}

fn ratios(row: &Row, peer: usize) -> Vec<f64> {
    row.ns[peer]
        .iter()
        .zip(&row.ns[0])
        .map(|(p, e)| p / e)
        .collect()
}

fn summary(rows: &[Row]) {
    say!("\n== throughput: median ns per decision [range] over rounds; ratio = peer ns ÷ eyelet ns within a round, median [range] (above 1: eyelet faster) ==");
    say!(
        "{:<12} {:>18} {:>18} {:>18} {:>20} {:>20}",
        "workload",
        "eyelet",
        "governor",
        "trypema",
        "gov/eyelet",
        "tryp/eyelet"
    );
    for row in rows {
        let cell = |v: &[f64]| {
            let (lo, hi) = range(v);
            format!("{:.1} [{lo:.0}-{hi:.0}]", median(v))
        };
        let rcell = |v: &[f64]| {
            let (lo, hi) = range(v);
            format!("{:.2} [{lo:.2}-{hi:.2}]", median(v))
        };
        say!(
            "{:<12} {:>18} {:>18} {:>18} {:>20} {:>20}",
            row.name,
            cell(&row.ns[0]),
            cell(&row.ns[1]),
            cell(&row.ns[2]),
            rcell(&ratios(row, 1)),
            rcell(&ratios(row, 2))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Latency after idle

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn idle_latency(rounds: usize) {
    say!("\n== one decision after 200 µs idle (ns; 1,000 samples per contender per round, rounds interleaved) ==");
    let clock = quanta::Clock::new();
    let keys: Vec<String> = (0..1000).map(|i| key(i, 12)).collect();
    let limiters: Vec<Limiter> = ALL.iter().map(|&w| Limiter::new(w, HIGH_RATE)).collect();
    for l in &limiters {
        for k in &keys {
            l.check(k);
        }
    }
    let mut p50 = vec![Vec::new(); ALL.len()];
    let mut p99 = vec![Vec::new(); ALL.len()];
    for round in 0..rounds {
        let mut line = format!("idle         round {round}");
        for j in 0..ALL.len() {
            let c = (round + j) % ALL.len();
            let mut lat = Vec::with_capacity(1000);
            for i in 0..1000 {
                let spin_until = Instant::now() + Duration::from_micros(200);
                thread::sleep(Duration::from_micros(150));
                while Instant::now() < spin_until {
                    std::hint::spin_loop();
                }
                let key = &keys[(i * 7919) % keys.len()];
                let t0 = clock.raw();
                black_box(limiters[c].check(key));
                let t1 = clock.raw();
                lat.push(clock.delta_as_nanos(t0, t1));
            }
            lat.sort_unstable();
            let (a, b) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            p50[c].push(a as f64);
            p99[c].push(b as f64);
            let _ = write!(line, "  {} p50 {a} p99 {b}", ALL[c].name());
        }
        say!("{line}");
    }
    for (label, v) in [("p50", &p50), ("p99", &p99)] {
        let row = Row {
            name: if label == "p50" {
                "idle_p50"
            } else {
                "idle_p99"
            },
            ns: v.clone(),
        };
        summary_line(&row);
    }
}

fn summary_line(row: &Row) {
    let cell = |v: &[f64]| {
        let (lo, hi) = range(v);
        format!("{:.0} [{lo:.0}-{hi:.0}]", median(v))
    };
    let rcell = |v: &[f64]| {
        let (lo, hi) = range(v);
        format!("{:.2} [{lo:.2}-{hi:.2}]", median(v))
    };
    say!(
        "{:<12} eyelet {}  governor {}  trypema {}  gov/eyelet {}  tryp/eyelet {}",
        row.name,
        cell(&row.ns[0]),
        cell(&row.ns[1]),
        cell(&row.ns[2]),
        rcell(&ratios(row, 1)),
        rcell(&ratios(row, 2))
    );
}

// ---------------------------------------------------------------------------------------------
// Tail latency on a hot key

fn tail_latency(rounds: usize) {
    say!("\n== per-decision latency on one hot key, 2 and 4 callers (ns; 200,000 decisions per caller per round) ==");
    let clock = quanta::Clock::new();
    let key = key(0, 12);
    for threads in [2usize, 4] {
        let limiters: Vec<Limiter> = ALL.iter().map(|&w| Limiter::new(w, HIGH_RATE)).collect();
        let mut p999 = vec![Vec::new(); ALL.len()];
        for round in 0..rounds {
            let mut line = format!("tail_{threads}     round {round}");
            for j in 0..ALL.len() {
                let c = (round + j) % ALL.len();
                let barrier = Barrier::new(threads);
                let mut all: Vec<u64> = thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|_| {
                            let (l, key, barrier, clock) = (&limiters[c], &key, &barrier, &clock);
                            s.spawn(move || {
                                let mut lat = Vec::with_capacity(200_000);
                                barrier.wait();
                                for _ in 0..200_000 {
                                    let t0 = clock.raw();
                                    black_box(l.check(key));
                                    let t1 = clock.raw();
                                    lat.push(clock.delta_as_nanos(t0, t1));
                                }
                                lat
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().unwrap_or_default())
                        .collect()
                });
                all.sort_unstable();
                let (p99, p) = (percentile(&all, 0.99), percentile(&all, 0.999));
                p999[c].push(p as f64);
                let _ = write!(line, "  {} p99 {p99} p99.9 {p}", ALL[c].name());
            }
            say!("{line}");
        }
        summary_line(&Row {
            name: if threads == 2 {
                "tail2_p99.9"
            } else {
                "tail4_p99.9"
            },
            ns: p999,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Memory

fn memory_report() {
    say!("\n== memory (counting allocator, live heap bytes per key) ==");
    const IDLE: usize = 1_000_000;
    let keys: Vec<String> = (0..IDLE).map(|i| key(i, 12)).collect();
    for who in ALL {
        let before = counting::live_bytes();
        let l = Limiter::new(who, 10.0);
        for k in &keys {
            l.check(k);
        }
        let after = counting::live_bytes();
        say!(
            "idle key (1 request, 1,000,000 keys)  {:<9} {:>7.1} B/key",
            who.name(),
            (after - before) as f64 / IDLE as f64
        );
        drop(l);
    }
    // An active key: 30 requests per second, spread over the window, for 1.2 windows.
    const ACTIVE: usize = 10_000;
    let keys: Vec<String> = (0..ACTIVE).map(|i| key(i, 12)).collect();
    for who in ALL {
        let before = counting::live_bytes();
        let l = Limiter::new(who, 1000.0);
        let start = Instant::now();
        for tick in 0..36u32 {
            let at = start + Duration::from_secs_f64(f64::from(tick) / 30.0);
            while Instant::now() < at {
                thread::sleep(Duration::from_micros(200));
            }
            for k in &keys {
                l.check(k);
            }
        }
        let after = counting::live_bytes();
        say!(
            "active key (30 req/s, 10,000 keys)    {:<9} {:>7.1} B/key",
            who.name(),
            (after - before) as f64 / ACTIVE as f64
        );
        drop(l);
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` / `cargo bench -- --list`: nothing to run.
        return;
    }
    let env = |k: &str| std::env::var(k).ok();
    let rounds: usize = env("EYELET_BENCH_ROUNDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let secs: f64 = env("EYELET_BENCH_SECS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let only = env("EYELET_BENCH_ONLY");
    if let Some(path) = env("EYELET_BENCH_OUT") {
        let f = std::fs::File::create(&path).expect("EYELET_BENCH_OUT");
        if let Ok(mut g) = OUT.lock() {
            *g = Some(f);
        }
    }
    let rev = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    say!(
        "eyelet local benchmark: build {rev}, {rounds} rounds of {secs} s per contender, W = 1 s, G = 10 ms, {} cores",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let mut rows = Vec::new();
    for w in workloads() {
        if wants(w.name) {
            rows.push(throughput(&w, rounds, secs));
        }
    }
    if !rows.is_empty() {
        summary(&rows);
    }
    if wants("idle") {
        idle_latency(rounds);
    }
    if wants("tail") {
        tail_latency(rounds);
    }
    if wants("memory") {
        memory_report();
    }
}
