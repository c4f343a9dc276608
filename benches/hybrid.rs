//! Hybrid provider benchmark, in one process on one `redis-server` this benchmark starts:
//!
//! 1. **Hybrid vs local**, sync callers, ns per decision (W = 1 s, G = 10 ms, every decision
//!    admitted): a hot key and 100,000 uniform keys, 1 and 2 callers. The hybrid runs as one of
//!    two registered instances (the other idle), so decisions take the shared path (reserves),
//!    not the single-instance one. Every round builds fresh limiters, so first use of keys is
//!    timed too. Rounds interleave the contenders; reported: median [range] and the ratio
//!    hybrid ÷ local within each round.
//! 2. **Tail**: per-decision latency on a hot key, 1 caller, p99 and p99.9, hybrid vs local.
//! 3. **Hybrid vs Trypema 2.2's hybrid**, async callers (64 tokio tasks on 2 workers),
//!    decisions per second on a hot key and on 100,000 keys.
//! 4. **Accuracy**: 4 instances in this process, one key at C = 1000 per 1 s, offered 5×, for
//!    eyelet's and Trypema's hybrid: the most admitted in any 1 s window and the mean per second.
//!    The suppressed strategy at 4× its soft limit S = 1000 (H = 1500): accepted per second.
//! 5. **Memory** per idle key (1 request, 1,000,000 keys), hybrid vs local.
//! 6. **Redis cost**: 2 instances, one deciding (1 caller) on a hot key at full speed and at
//!    1,000/s, and on 100,000 keys: script calls per instance per second (the sync's, all of
//!    them) and Redis CPU (`INFO cpu`) per decision.
//!
//! `cargo bench --features redis --bench hybrid`; `EYELET_BENCH_ROUNDS` (default 5),
//! `EYELET_BENCH_SECS` (seconds per contender per round, default 1), `EYELET_BENCH_ONLY` (run
//! the parts whose name contains it: `vs-local`, `tail`, `vs-trypema`, `accuracy`, `memory`,
//! `redis-cost`).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

#[path = "../tests/support/redis_server.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_server;

#[path = "../tests/support/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use eyelet::{RateLimit, RateLimiter};
use redis_server::RedisServer;

#[path = "support/counting.rs"]
mod counting;

const KEYS: usize = 100_000;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn selected(part: &str) -> bool {
    std::env::var("EYELET_BENCH_ONLY").map_or(true, |f| part.contains(&f))
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

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn hybrid_instance(url: &str, prefix: &str) -> Arc<RateLimiter> {
    RateLimiter::builder()
        .window(Duration::from_secs(1))
        .bucket(Duration::from_millis(10))
        .sync_interval(Duration::from_millis(10))
        .redis_url(url)
        .prefix(prefix)
        .connect()
        .await
        .expect("connect")
}

fn local_instance() -> Arc<RateLimiter> {
    RateLimiter::builder()
        .window(Duration::from_secs(1))
        .bucket(Duration::from_millis(10))
        .build()
        .expect("local")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Local,
    Hybrid,
}

/// ns per decision of `callers` threads deciding on `keys` (indices drawn per thread).
fn run_sync(
    rl: &Arc<RateLimiter>,
    who: Who,
    keys: &Arc<Vec<String>>,
    callers: usize,
    secs: f64,
) -> f64 {
    let rate = RateLimit::try_from(1e9).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(callers + 1));
    let threads: Vec<_> = (0..callers)
        .map(|t| {
            let (rl, keys, stop, done, barrier) = (
                rl.clone(),
                keys.clone(),
                stop.clone(),
                done.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let mut s = splitmix(t as u64 + 7);
                let mut n = 0u64;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        s = splitmix(s);
                        let k = &keys[(s % keys.len() as u64) as usize];
                        let ok = match who {
                            Who::Local => rl.local().absolute().inc(k, &rate, 1).is_allowed(),
                            Who::Hybrid => rl.hybrid().absolute().inc(k, &rate, 1).is_allowed(),
                        };
                        black_box(ok);
                    }
                    n += 256;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    start.elapsed().as_nanos() as f64 / done.load(Ordering::Relaxed).max(1) as f64
}

async fn vs_local(url: &str, rounds: usize, secs: f64) {
    println!("\n== hybrid vs local: ns per decision, sync callers, fresh limiters each round (first use timed) ==");
    println!("workload               local                 hybrid                hybrid/local");
    let hot: Arc<Vec<String>> = Arc::new(vec!["hot".to_string()]);
    let many: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user_{i:07}")).collect());
    for (name, keys, callers) in [
        ("hot key, 1 caller", &hot, 1),
        ("hot key, 2 callers", &hot, 2),
        ("100k keys, 1 caller", &many, 1),
        ("100k keys, 2 callers", &many, 2),
    ] {
        let (mut l, mut h, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // the other (idle) instance: decisions take the shared path
            let prefix = format!("bench-vs-local-{round}-{callers}-{}", keys.len());
            let idle = hybrid_instance(url, &prefix).await;
            idle.hybrid().flush().await.expect("sync");
            let hybrid = hybrid_instance(url, &prefix).await;
            hybrid.hybrid().flush().await.expect("sync");
            let local = local_instance();
            let order = if round % 2 == 0 {
                [Who::Local, Who::Hybrid]
            } else {
                [Who::Hybrid, Who::Local]
            };
            let mut got = [0.0; 2];
            for who in order {
                let rl = if who == Who::Local { &local } else { &hybrid };
                let (rl2, keys2) = (rl.clone(), keys.clone());
                let ns =
                    tokio::task::spawn_blocking(move || run_sync(&rl2, who, &keys2, callers, secs))
                        .await
                        .unwrap();
                got[usize::from(who == Who::Hybrid)] = ns;
            }
            l.push(got[0]);
            h.push(got[1]);
            ratio.push(got[1] / got[0]);
            let _ = hybrid.hybrid().shutdown().await;
            let _ = idle.hybrid().shutdown().await;
        }
        let (rl, rh, rr) = (range(&l), range(&h), range(&ratio));
        println!(
            "{name:<22} {:>6.1} [{:.0}-{:.0}]   {:>6.1} [{:.0}-{:.0}]   {:.2} [{:.2}-{:.2}]",
            median(&l),
            rl.0,
            rl.1,
            median(&h),
            rh.0,
            rh.1,
            median(&ratio),
            rr.0,
            rr.1
        );
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

async fn tail(url: &str, rounds: usize) {
    println!("\n== per-decision latency, hot key, 1 caller (ns; 200,000 decisions per contender per round) ==");
    let rate = RateLimit::try_from(1e9).unwrap();
    let (mut l99, mut l999, mut h99, mut h999) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let prefix = format!("bench-tail-{round}");
        let idle = hybrid_instance(url, &prefix).await;
        idle.hybrid().flush().await.expect("sync");
        let hybrid = hybrid_instance(url, &prefix).await;
        hybrid.hybrid().flush().await.expect("sync");
        let local = local_instance();
        for who in [Who::Local, Who::Hybrid] {
            let rl = if who == Who::Local {
                local.clone()
            } else {
                hybrid.clone()
            };
            let lat = tokio::task::spawn_blocking(move || {
                let mut lat = Vec::with_capacity(200_000);
                for _ in 0..200_000 {
                    let t = Instant::now();
                    let ok = match who {
                        Who::Local => rl.local().absolute().inc("hot", &rate, 1).is_allowed(),
                        Who::Hybrid => rl.hybrid().absolute().inc("hot", &rate, 1).is_allowed(),
                    };
                    black_box(ok);
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat.sort_unstable();
                lat
            })
            .await
            .unwrap();
            let (p99, p999) = (
                percentile(&lat, 0.99) as f64,
                percentile(&lat, 0.999) as f64,
            );
            if who == Who::Local {
                l99.push(p99);
                l999.push(p999);
            } else {
                h99.push(p99);
                h999.push(p999);
            }
        }
        let _ = hybrid.hybrid().shutdown().await;
        let _ = idle.hybrid().shutdown().await;
    }
    println!(
        "local  p99 {:.0} p99.9 {:.0}\nhybrid p99 {:.0} p99.9 {:.0}   (hybrid/local: p99 {:.2}, p99.9 {:.2}; medians over rounds)",
        median(&l99),
        median(&l999),
        median(&h99),
        median(&h999),
        median(&h99) / median(&l99),
        median(&h999) / median(&l999)
    );
}

mod tr {
    use super::*;
    use ::trypema::hybrid::{HybridRateLimiterProvider, SyncInterval};
    use ::trypema::redis::RedisKey;
    use ::trypema::{BucketSize, RateLimit, RateLimitDecision, RateLimiterBuilder, WindowSize};

    pub async fn limiter(url: &str, prefix: &str) -> Arc<HybridRateLimiterProvider> {
        let cm = ::redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        HybridRateLimiterProvider::builder(cm)
            .prefix(RedisKey::try_from(prefix.to_string()).unwrap())
            .sync_interval(SyncInterval::milliseconds_or_panic(10))
            .window_size(WindowSize::seconds_or_panic(1))
            .bucket_size(BucketSize::milliseconds_or_panic(10))
            .cleanup_enabled(false)
            .build()
            .unwrap()
    }

    pub fn keys(n: usize) -> Arc<Vec<RedisKey>> {
        Arc::new(
            (0..n)
                .map(|i| RedisKey::try_from(format!("user_{i:07}")).unwrap())
                .collect(),
        )
    }

    pub fn rate(r: f64) -> RateLimit {
        RateLimit::per_second_or_panic(r)
    }

    pub async fn inc(rl: &HybridRateLimiterProvider, key: &RedisKey, rate: &RateLimit) -> bool {
        matches!(
            rl.absolute().inc(key, rate, 1).await,
            Ok(RateLimitDecision::Allowed)
        )
    }
}

/// One contender of the async benchmark: a limiter and its keys, cloned once per task (as a
/// service holds its limiter in shared state), so each call costs only the decision, not the
/// harness's reference counting.
trait Contender: Clone + Send + Sync + 'static {
    /// One decision on key `i`.
    fn inc(&self, i: usize) -> impl std::future::Future<Output = bool> + Send + '_;
}

#[derive(Clone)]
struct Ours {
    rl: Arc<RateLimiter>,
    names: Arc<Vec<String>>,
    rate: RateLimit,
}

impl Contender for Ours {
    fn inc(&self, i: usize) -> impl std::future::Future<Output = bool> + Send + '_ {
        let hybrid = self.rl.hybrid().absolute();
        async move {
            hybrid
                .inc_async(&self.names[i], &self.rate, 1)
                .await
                .is_allowed()
        }
    }
}

#[derive(Clone)]
struct Theirs {
    rl: Arc<::trypema::hybrid::HybridRateLimiterProvider>,
    keys: Arc<Vec<::trypema::redis::RedisKey>>,
    rate: ::trypema::RateLimit,
}

impl Contender for Theirs {
    fn inc(&self, i: usize) -> impl std::future::Future<Output = bool> + Send + '_ {
        tr::inc(&self.rl, &self.keys[i], &self.rate)
    }
}

/// Decisions per second of 64 tasks over `n` keys (1: a hot key).
async fn async_rate<C: Contender>(n: usize, secs: f64, contender: C) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..64u64 {
        let (contender, done) = (contender.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = splitmix(c + 1);
            let mut k = 0u64;
            while start.elapsed() < dur {
                for _ in 0..64 {
                    s = splitmix(s);
                    black_box(contender.inc((s % n as u64) as usize).await);
                }
                k += 64;
            }
            done.fetch_add(k, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn vs_trypema(url: &str, rounds: usize, secs: f64) {
    println!("\n== hybrid vs Trypema 2.2 hybrid: decisions per second, 64 async callers, same redis-server ==");
    println!("workload            eyelet /s              trypema /s             eyelet/trypema");
    let names: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user_{i:07}")).collect());
    let tkeys = tr::keys(KEYS);
    for (name, n) in [("hot key", 1usize), ("100k keys", KEYS)] {
        let (mut e, mut t, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let prefix = format!("bench-vs-tr-{round}-{n}");
            let idle = hybrid_instance(url, &prefix).await;
            idle.hybrid().flush().await.expect("sync");
            let ours = hybrid_instance(url, &prefix).await;
            ours.hybrid().flush().await.expect("sync");
            let theirs = tr::limiter(url, &format!("tr-{prefix}")).await;
            let rate = RateLimit::try_from(1e9).unwrap();
            let trate = tr::rate(1e9);
            let mut got = [0.0; 2];
            for j in 0..2 {
                let who = (round + j) % 2;
                if who == 0 {
                    let ours = Ours {
                        rl: ours.clone(),
                        names: names.clone(),
                        rate,
                    };
                    got[0] = async_rate(n, secs, ours).await;
                } else {
                    let theirs = Theirs {
                        rl: theirs.clone(),
                        keys: tkeys.clone(),
                        rate: trate,
                    };
                    got[1] = async_rate(n, secs, theirs).await;
                }
            }
            e.push(got[0]);
            t.push(got[1]);
            ratio.push(got[0] / got[1]);
            let _ = ours.hybrid().shutdown().await;
            let _ = idle.hybrid().shutdown().await;
        }
        let (re, rt, rr) = (range(&e), range(&t), range(&ratio));
        println!(
            "{name:<18} {:>9.0} [{:.0}-{:.0}]  {:>9.0} [{:.0}-{:.0}]  {:.2} [{:.2}-{:.2}]",
            median(&e),
            re.0,
            re.1,
            median(&t),
            rt.0,
            rt.1,
            median(&ratio),
            rr.0,
            rr.1
        );
    }
}

/// The most admissions in any window of `w` over sorted instants.
fn most_in_any_window(t: &[Instant], w: Duration) -> usize {
    let (mut best, mut lo) = (0, 0);
    for hi in 0..t.len() {
        while t[hi].duration_since(t[lo]) >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// 4 instances, each offered `c · 5 / 4` per second on one key for `secs`; admission instants.
async fn offered_load<F, Fut>(
    instances: Vec<F>,
    c: f64,
    secs: f64,
) -> (Vec<Instant>, Instant, Instant)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let tally = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let per = c * 5.0 / instances.len() as f64;
    let mut tasks = Vec::new();
    for f in instances {
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let gap = Duration::from_secs_f64(1.0 / per);
            let mut next = Instant::now();
            let mut mine = Vec::new();
            while start.elapsed() < dur {
                let now = Instant::now();
                if now < next {
                    tokio::time::sleep(next - now).await;
                    continue;
                }
                while next <= now {
                    if f().await {
                        mine.push(Instant::now());
                    }
                    next += gap;
                }
            }
            tally.lock().unwrap().extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = Instant::now();
    let mut all = tally.lock().unwrap().clone();
    all.sort();
    (all, start, end)
}

fn accuracy_line(name: &str, c: f64, (all, start, end): (Vec<Instant>, Instant, Instant)) {
    let most = most_in_any_window(&all, Duration::from_secs(1));
    let from = start + Duration::from_secs(1);
    let steady = all.iter().filter(|&&t| t >= from).count();
    let mean = steady as f64 / end.duration_since(from).as_secs_f64();
    println!(
        "{name:<16} most in any 1 s window {most:>5} ({:.3} C)   mean admitted {mean:>7.1}/s ({:.3} C)",
        most as f64 / c,
        mean / c
    );
}

async fn accuracy(url: &str, secs: f64) {
    println!("\n== accuracy: 4 instances, one key, C = 1000 per 1 s, offered 5x, {secs} s ==");
    let c = 1000.0;
    let mut ours = Vec::new();
    for _ in 0..4 {
        ours.push(hybrid_instance(url, "bench-acc").await);
    }
    for _ in 0..2 {
        for rl in &ours {
            rl.hybrid().flush().await.expect("sync");
        }
    }
    let rate = RateLimit::try_from(c).unwrap();
    let fs: Vec<_> = ours
        .iter()
        .map(|rl| {
            let rl = rl.clone();
            move || {
                let ok = rl.hybrid().absolute().inc("acc", &rate, 1).is_allowed();
                async move { ok }
            }
        })
        .collect();
    accuracy_line("eyelet hybrid", c, offered_load(fs, c, secs).await);
    for rl in &ours {
        let _ = rl.hybrid().shutdown().await;
    }
    let mut theirs = Vec::new();
    for _ in 0..4 {
        theirs.push(tr::limiter(url, "tr-bench-acc").await);
    }
    let key = Arc::new(::trypema::redis::RedisKey::try_from("acc".to_string()).unwrap());
    let trate = tr::rate(c);
    let fs: Vec<_> = theirs
        .iter()
        .map(|rl| {
            let (rl, key) = (rl.clone(), key.clone());
            move || {
                let (rl, key) = (rl.clone(), key.clone());
                async move { tr::inc(&rl, &key, &trate).await }
            }
        })
        .collect();
    accuracy_line("trypema hybrid", c, offered_load(fs, c, secs).await);

    // the suppressed strategy: 4x its soft limit, H = 1.5 S
    let mut sup = Vec::new();
    for _ in 0..4 {
        let rl = RateLimiter::builder()
            .window(Duration::from_secs(1))
            .bucket(Duration::from_millis(10))
            .sync_interval(Duration::from_millis(10))
            .hard_limit_factor(1.5)
            .redis_url(url)
            .prefix("bench-acc-sup")
            .connect()
            .await
            .expect("connect");
        sup.push(rl);
    }
    for _ in 0..2 {
        for rl in &sup {
            rl.hybrid().flush().await.expect("sync");
        }
    }
    let fs: Vec<_> = sup
        .iter()
        .map(|rl| {
            let rl = rl.clone();
            move || {
                let ok = rl.hybrid().suppressed().inc("acc", &rate, 1).is_allowed();
                async move { ok }
            }
        })
        .collect();
    // offered_load offers 5x its argument: 5 x 0.8 S = 4 S
    let (all, start, end) = offered_load(fs, 0.8 * c, secs).await;
    let mut per_second = vec![0usize; end.duration_since(start).as_secs() as usize];
    for t in &all {
        if let Some(n) = per_second.get_mut(t.duration_since(start).as_secs() as usize) {
            *n += 1;
        }
    }
    let most = most_in_any_window(&all, Duration::from_secs(1));
    println!(
        "eyelet hybrid suppressed, 4 instances, offered 4x S = 1000 (H = 1500): accepted per second {per_second:?}; most in any 1 s window {most} ({:.3} H)",
        most as f64 / 1500.0
    );
    for rl in &sup {
        let _ = rl.hybrid().shutdown().await;
    }
}

/// Redis's CPU time so far, in µs.
fn redis_cpu_us(server: &RedisServer) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut server.conn())
        .expect("INFO cpu");
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            matches!(k, "used_cpu_sys" | "used_cpu_user").then(|| v.parse::<f64>().ok())?
        })
        .sum::<f64>()
        * 1e6
}

/// Decisions one caller makes on `keys` for `secs`, at most `per_second` (full speed if None).
fn drive(rl: &Arc<RateLimiter>, keys: &[String], secs: f64, per_second: Option<f64>) -> u64 {
    let rate = RateLimit::try_from(1e9).unwrap();
    let start = Instant::now();
    let mut s = 7u64;
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            s = splitmix(s);
            let k = &keys[(s % keys.len() as u64) as usize];
            black_box(rl.hybrid().absolute().inc(k, &rate, 1));
            n += 1;
        }
        if let Some(p) = per_second {
            let due = Duration::from_secs_f64(n as f64 / p);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    n
}

async fn redis_cost(server: &RedisServer, secs: f64) {
    println!(
        "
== Redis cost: 2 instances (one deciding, 1 caller), sync 10 ms, {secs} s each =="
    );
    println!("workload                 decisions/s   script calls/s per instance   Redis CPU us/decision");
    let url = server.url();
    let hot: Arc<Vec<String>> = Arc::new(vec!["hot".to_string()]);
    let many: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user_{i:07}")).collect());
    let sparse: Arc<Vec<String>> = Arc::new(many[..KEYS / 10].to_vec());
    for (i, (name, keys, pace)) in [
        ("hot key, full speed", &hot, None),
        ("hot key, 1,000/s", &hot, Some(1000.0)),
        ("100k keys, full speed", &many, None),
        // each key about once a second: most keys are idle between their uses
        ("10k keys, 10,000/s", &sparse, Some(10_000.0)),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("bench-cost-{i}");
        let a = hybrid_instance(&url, &prefix).await;
        let b = hybrid_instance(&url, &prefix).await;
        for rl in [&a, &b, &a, &b] {
            rl.hybrid().flush().await.expect("sync");
        }
        let calls = || a.hybrid().status().round_trips + b.hybrid().status().round_trips;
        let (calls0, cpu0, t0) = (calls(), redis_cpu_us(server), Instant::now());
        let (rl, keys2) = (a.clone(), keys.clone());
        let n = tokio::task::spawn_blocking(move || drive(&rl, &keys2, secs, pace))
            .await
            .unwrap();
        let el = t0.elapsed().as_secs_f64();
        let (calls1, cpu1) = (calls(), redis_cpu_us(server));
        println!(
            "{name:<24} {:>11.0}   {:>27.1}   {:>21.3}",
            n as f64 / el,
            (calls1 - calls0) as f64 / 2.0 / el,
            (cpu1 - cpu0) / n as f64
        );
        let _ = a.hybrid().shutdown().await;
        let _ = b.hybrid().shutdown().await;
    }
}

async fn memory(url: &str) {
    println!("\n== memory: live heap bytes per idle key (1 request each, 1,000,000 keys) ==");
    let n = 1_000_000;
    let keys: Vec<String> = (0..n).map(|i| format!("user_{i:07}")).collect();
    let rate = RateLimit::try_from(1e9).unwrap();
    let before = counting::live_bytes();
    let local = RateLimiter::builder().sweeper(false).build().unwrap();
    for k in &keys {
        local.local().absolute().inc(k, &rate, 1);
    }
    let l = (counting::live_bytes() - before) as f64 / n as f64;
    drop(local);
    let hybrid = RateLimiter::builder()
        .sweeper(false)
        .redis_url(url)
        .prefix("bench-mem")
        .connect()
        .await
        .unwrap();
    hybrid.hybrid().flush().await.unwrap();
    let before = counting::live_bytes();
    for k in &keys {
        hybrid.hybrid().absolute().inc(k, &rate, 1);
    }
    // the sync reports every key once, then they are idle
    for _ in 0..3 {
        hybrid.hybrid().flush().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let h = (counting::live_bytes() - before) as f64 / n as f64;
    println!(
        "local  {l:.1} B/key\nhybrid {h:.1} B/key   (hybrid/local {:.2})",
        h / l
    );
    let _ = hybrid.hybrid().shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = RedisServer::start();
        let url = server.url();
        let rounds = env_f64("EYELET_BENCH_ROUNDS", 5.0) as usize;
        let secs = env_f64("EYELET_BENCH_SECS", 1.0);
        println!(
            "eyelet hybrid benchmark: {rounds} rounds, {secs} s per contender per round, W = 1 s, G = 10 ms, sync 10 ms, 2 cores"
        );
        if selected("vs-local") {
            vs_local(&url, rounds, secs).await;
        }
        if selected("tail") {
            tail(&url, rounds).await;
        }
        if selected("vs-trypema") {
            vs_trypema(&url, rounds, secs).await;
        }
        if selected("accuracy") {
            accuracy(&url, 5.0).await;
        }
        if selected("memory") {
            memory(&url).await;
        }
        if selected("redis-cost") {
            redis_cost(&server, 3.0).await;
        }
    });
}
