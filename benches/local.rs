//! Local provider benchmarks: eyelet beside governor (keyed, ahash), Trypema 2.x (local absolute),
//! a sharded parking_lot mutex doing the same sliding-window work, and a raw channel round trip
//! to a dedicated thread, all in one process on the same workloads. See `benches/README.md`.
//!
//! `cargo bench --bench local` runs the criterion groups, then prints the ratio table (read from
//! criterion's estimates), the latency percentiles and the memory report.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};

// ---------------------------------------------------------------------------------------------
// Counting allocator (memory report)

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Contenders

const WINDOW: Duration = Duration::from_secs(1);
const BUCKET: Duration = Duration::from_millis(10);
/// High enough that every decision in the throughput groups is an admission for everyone.
const HIGH_RATE: f64 = 1e9;
const UNIFORM_KEYS: usize = 100_000;

type Governor = governor::RateLimiter<
    String,
    governor::state::keyed::DashMapStateStore<String, ahash::RandomState>,
    governor::clock::DefaultClock,
>;

struct Contenders {
    eyelet: Arc<eyelet::RateLimiter>,
    rate: eyelet::RateLimit,
    governor: Governor,
    trypema: Arc<trypema::local::LocalRateLimiterProvider>,
    trate: trypema::RateLimit,
    mutex: ShardedMutex,
}

fn contenders(rate: f64) -> Contenders {
    use trypema::RateLimiterBuilder as _;
    let per_sec = rate.min(u32::MAX as f64) as u32;
    let quota =
        governor::Quota::per_second(NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN));
    Contenders {
        eyelet: eyelet::RateLimiter::builder()
            .window(WINDOW)
            .bucket(BUCKET)
            .build()
            .expect("eyelet"),
        rate: eyelet::RateLimit::try_from(rate).expect("rate"),
        governor: governor::RateLimiter::dashmap_with_hasher(quota, ahash::RandomState::new()),
        trypema: trypema::local::LocalRateLimiterProvider::builder()
            .window_size(trypema::WindowSize::seconds_or_panic(1))
            .bucket_size(trypema::BucketSize::milliseconds_or_panic(10))
            .build()
            .expect("trypema"),
        trate: trypema::RateLimit::per_second_or_panic(rate),
        mutex: ShardedMutex::new(64, (WINDOW.as_millis() as f64 * rate / 1000.0) as u64),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Eyelet,
    Governor,
    Trypema,
    Mutex,
}

const ALL: [Who; 4] = [Who::Eyelet, Who::Governor, Who::Trypema, Who::Mutex];

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Eyelet => "eyelet",
            Who::Governor => "governor",
            Who::Trypema => "trypema",
            Who::Mutex => "mutex",
        }
    }
}

impl Contenders {
    #[inline]
    fn check(&self, who: Who, key: &String) -> bool {
        match who {
            Who::Eyelet => self
                .eyelet
                .local()
                .absolute()
                .inc(key, &self.rate, 1)
                .is_allowed(),
            Who::Governor => self.governor.check_key(key).is_ok(),
            Who::Trypema => matches!(
                self.trypema.absolute().inc(key, &self.trate, 1),
                trypema::RateLimitDecision::Allowed
            ),
            Who::Mutex => self.mutex.inc(key),
        }
    }
}

/// The "obvious" design the issue compares against: sharded parking_lot mutexes around a
/// HashMap of per-key bucket deques, doing the same sliding-window work.
type BucketMap = HashMap<String, VecDeque<(u64, u64)>, ahash::RandomState>;

struct ShardedMutex {
    shards: Vec<parking_lot::Mutex<BucketMap>>,
    hasher: ahash::RandomState,
    capacity: u64,
    origin: Instant,
}

impl ShardedMutex {
    fn new(n: usize, capacity: u64) -> Self {
        Self {
            shards: (0..n)
                .map(|_| parking_lot::Mutex::new(HashMap::with_hasher(ahash::RandomState::new())))
                .collect(),
            hasher: ahash::RandomState::new(),
            capacity,
            origin: Instant::now(),
        }
    }

    fn inc(&self, key: &String) -> bool {
        let now = self.origin.elapsed().as_millis() as u64;
        let h = self.hasher.hash_one(key) as usize;
        let mut map = self.shards[h % self.shards.len()].lock();
        let q = match map.get_mut(key.as_str()) {
            Some(q) => q,
            None => map.entry(key.clone()).or_default(),
        };
        while q.front().is_some_and(|b| b.0 + 1000 <= now) {
            q.pop_front();
        }
        let live: u64 = q.iter().map(|b| b.1).sum();
        if live + 1 > self.capacity {
            return false;
        }
        match q.back_mut() {
            Some(b) if now - b.0 < 10 => b.1 += 1,
            _ => q.push_back((now, 1)),
        }
        true
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user_{i}")).collect()
}

/// `threads` callers split `iters` decisions; returns the wall time of the whole run.
fn run_threads(threads: usize, iters: u64, f: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let per = iters / threads as u64 + 1;
    thread::scope(|s| {
        for t in 0..threads {
            let (f, barrier) = (&f, &barrier);
            s.spawn(move || {
                barrier.wait();
                f(t, per);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins all threads before returning.
        start
    })
    .elapsed()
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

// ---------------------------------------------------------------------------------------------
// Criterion groups

fn hot_key(c: &mut Criterion) {
    let k = contenders(HIGH_RATE);
    let key = "hot".to_string();
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("hot_key_{threads}_callers"));
        g.throughput(Throughput::Elements(1));
        for who in ALL {
            g.bench_function(BenchmarkId::from_parameter(who.name()), |b| {
                if threads == 1 {
                    b.iter(|| black_box(k.check(who, &key)));
                } else {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, |_, n| {
                            for _ in 0..n {
                                black_box(k.check(who, &key));
                            }
                        })
                    });
                }
            });
        }
        g.finish();
    }
}

fn uniform(c: &mut Criterion) {
    let k = contenders(HIGH_RATE);
    let keys = keys(UNIFORM_KEYS);
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("uniform_100k_{threads}_callers"));
        g.throughput(Throughput::Elements(1));
        for who in [Who::Eyelet, Who::Governor, Who::Trypema] {
            // Warm the key sets so that the run measures steady state, not insertion.
            for key in &keys {
                k.check(who, key);
            }
            g.bench_function(BenchmarkId::from_parameter(who.name()), |b| {
                b.iter_custom(|iters| {
                    run_threads(threads, iters, |t, n| {
                        let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                        for _ in 0..n {
                            let i = (xorshift(&mut s) % UNIFORM_KEYS as u64) as usize;
                            black_box(k.check(who, &keys[i]));
                        }
                    })
                });
            });
        }
        g.finish();
    }
}

fn batches(c: &mut Criterion) {
    let k = contenders(HIGH_RATE);
    let hot: Vec<String> = vec!["hot".to_string(); 256];
    let uniform = keys(UNIFORM_KEYS);
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("batch_256_hot_{threads}_callers"));
        g.throughput(Throughput::Elements(256));
        g.bench_function(BenchmarkId::from_parameter("eyelet"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, |_, n| {
                    let mut out = Vec::with_capacity(256);
                    for _ in 0..n {
                        k.eyelet
                            .local()
                            .absolute()
                            .inc_many_into(&hot, &k.rate, 1, &mut out);
                        black_box(&out);
                    }
                })
            });
        });
        g.bench_function(BenchmarkId::from_parameter("governor"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, |_, n| {
                    for _ in 0..n {
                        for key in &hot {
                            black_box(k.governor.check_key(key).is_ok());
                        }
                    }
                })
            });
        });
        g.finish();
    }
    let mut g = c.benchmark_group("batch_256_uniform_2_callers");
    g.throughput(Throughput::Elements(256));
    g.bench_function(BenchmarkId::from_parameter("eyelet"), |b| {
        b.iter_custom(|iters| {
            run_threads(2, iters, |t, n| {
                let mut s = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
                let mut batch: Vec<&str> = Vec::with_capacity(256);
                let mut out = Vec::with_capacity(256);
                for _ in 0..n {
                    batch.clear();
                    for _ in 0..256 {
                        batch.push(&uniform[(xorshift(&mut s) % UNIFORM_KEYS as u64) as usize]);
                    }
                    k.eyelet
                        .local()
                        .absolute()
                        .inc_many_into(&batch, &k.rate, 1, &mut out);
                    black_box(&out);
                }
            })
        });
    });
    g.bench_function(BenchmarkId::from_parameter("governor"), |b| {
        b.iter_custom(|iters| {
            run_threads(2, iters, |t, n| {
                let mut s = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
                for _ in 0..n {
                    for _ in 0..256 {
                        let key = &uniform[(xorshift(&mut s) % UNIFORM_KEYS as u64) as usize];
                        black_box(k.governor.check_key(key).is_ok());
                    }
                }
            })
        });
    });
    g.finish();
}

/// A dedicated actor thread answering one message per decision over crossbeam channels: the
/// design the caller-runs runtime replaces, so its overhead is visible.
fn channel_round_trip(c: &mut Criterion) {
    let (tx, rx) = crossbeam_channel::bounded::<(u64, crossbeam_channel::Sender<u64>)>(64);
    let server = thread::spawn(move || {
        let mut count = 0u64;
        for (v, reply) in rx {
            count = count.wrapping_add(v);
            let _ = reply.send(count);
        }
    });
    let mut g = c.benchmark_group("baseline");
    g.bench_function("channel_round_trip", |b| {
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        b.iter(|| {
            let _ = tx.send((1, rtx.clone()));
            black_box(rrx.recv().ok())
        });
    });
    g.finish();
    drop(tx);
    let _ = server.join();
}

// ---------------------------------------------------------------------------------------------
// Reports beyond criterion: ratios, latency percentiles, memory

fn estimate_ns(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{target}/criterion/{group}/{id}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    // {"mean":{"confidence_interval":{...},"point_estimate":X,...
    let mean = text.find("\"mean\"")?;
    let rest = &text[mean..];
    let pe = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let end = rest[pe..].find([',', '}'])?;
    rest[pe..pe + end].trim().parse().ok()
}

fn ratio_table() {
    println!("\n== ratios (from criterion means; >1 means eyelet is faster) ==");
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "group", "eyelet", "governor", "trypema", "mutex", "vs gov", "vs tryp"
    );
    let groups = [
        ("hot_key_1_callers", 1.0),
        ("hot_key_2_callers", 1.0),
        ("uniform_100k_1_callers", 1.0),
        ("uniform_100k_2_callers", 1.0),
        ("batch_256_hot_1_callers", 256.0),
        ("batch_256_hot_2_callers", 256.0),
        ("batch_256_uniform_2_callers", 256.0),
    ];
    for (g, per) in groups {
        let ns = |id: &str| estimate_ns(g, id).map(|v| v / per);
        let (e, gv, t, m) = (ns("eyelet"), ns("governor"), ns("trypema"), ns("mutex"));
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let ratio = |other: Option<f64>| match (e, other) {
            (Some(e), Some(o)) => format!("{:.2}x", o / e),
            _ => "-".into(),
        };
        println!(
            "{:<32} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
            g,
            fmt(e),
            fmt(gv),
            fmt(t),
            fmt(m),
            ratio(gv),
            ratio(t)
        );
    }
    if let Some(ch) = estimate_ns("baseline", "channel_round_trip") {
        println!(
            "{:<32} {:>10.1}  (dedicated-thread actor, one message per decision)",
            "channel_round_trip", ch
        );
    }
    println!(
        "(ns per decision; multi-caller rows are wall time / total decisions, i.e. aggregate)"
    );
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn idle_latency() {
    println!("\n== a decision after 200 µs idle (ns per decision) ==");
    let clock = quanta::Clock::new();
    for who in [Who::Eyelet, Who::Governor, Who::Trypema] {
        let k = contenders(HIGH_RATE);
        let keys = keys(1000);
        let mut lat = Vec::with_capacity(3000);
        for i in 0..3000 {
            let spin_until = Instant::now() + Duration::from_micros(200);
            thread::sleep(Duration::from_micros(150));
            while Instant::now() < spin_until {
                std::hint::spin_loop();
            }
            let key = &keys[i % keys.len()];
            let t0 = clock.raw();
            black_box(k.check(who, key));
            let t1 = clock.raw();
            lat.push(clock.delta_as_nanos(t0, t1));
        }
        lat.sort_unstable();
        println!(
            "{:<10} p50 {:>6}  p99 {:>6}  p99.9 {:>7}",
            who.name(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999)
        );
    }
}

fn tail_latency() {
    println!("\n== per-decision latency on one hot key under contention (ns) ==");
    let clock = quanta::Clock::new();
    const OPS: usize = 300_000;
    for threads in [2usize, 4] {
        for who in ALL {
            let k = contenders(HIGH_RATE);
            let key = "hot".to_string();
            let barrier = Barrier::new(threads);
            let mut all: Vec<u64> = thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let (k, key, barrier, clock) = (&k, &key, &barrier, &clock);
                        s.spawn(move || {
                            let mut lat = Vec::with_capacity(OPS);
                            barrier.wait();
                            for _ in 0..OPS {
                                let t0 = clock.raw();
                                black_box(k.check(who, key));
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
            println!(
                "{threads} callers {:<10} p50 {:>6}  p99 {:>6}  p99.9 {:>7}  p99.99 {:>8}",
                who.name(),
                percentile(&all, 0.5),
                percentile(&all, 0.99),
                percentile(&all, 0.999),
                percentile(&all, 0.9999)
            );
        }
    }
}

fn memory_report() {
    println!("\n== memory per idle key at 1,000,000 keys (counting allocator) ==");
    const N: usize = 1_000_000;
    let keys = keys(N);
    let mut results = Vec::new();
    for who in [Who::Eyelet, Who::Governor, Who::Trypema] {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let k = contenders(10.0);
        for key in &keys {
            k.check(who, key);
        }
        let after = LIVE_BYTES.load(Ordering::Relaxed);
        let per_key = (after - before) as f64 / N as f64;
        println!("{:<10} {:>8.1} bytes/key", who.name(), per_key);
        results.push((who, per_key));
        drop(k);
    }
    if let (Some(e), Some(t)) = (
        results.iter().find(|r| r.0 == Who::Eyelet),
        results.iter().find(|r| r.0 == Who::Trypema),
    ) {
        println!("eyelet / trypema = {:.2}", e.1 / t.1);
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    hot_key(&mut c);
    uniform(&mut c);
    batches(&mut c);
    channel_round_trip(&mut c);
    c.final_summary();
    let args: Vec<String> = std::env::args().collect();
    let listing_or_testing = args.iter().any(|a| a == "--list" || a == "--test");
    if !listing_or_testing && std::env::var_os("EYELET_BENCH_NO_REPORTS").is_none() {
        ratio_table();
        idle_latency();
        tail_latency();
        memory_report();
    }
}
