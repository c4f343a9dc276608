//! Redis provider benchmark: eyelet against Trypema's Redis provider (1.0.x and 2.2.x) and two
//! bare baselines (a no-op `EVALSHA`, a `SET`), all on one `redis-server` this benchmark starts,
//! in one process, in one run.
//!
//! Reports, per workload and strategy: decisions per second with 64 concurrent callers, Redis
//! CPU per decision (`INFO commandstats`: total usec of the commands the contender sent ÷
//! decisions) and, with 1 caller, the per-decision p50 against a bare no-op `EVALSHA` round
//! trip. `EYELET_BENCH_SECS` sets the seconds per run (default 3); `EYELET_BENCH_ONLY` keeps the
//! rows whose "workload strategy contender" contains it (e.g. `hot key absolute eyelet`).
//!
//! Besides `commandstats` (wall time inside each command, so it includes time the server was
//! preempted by the benchmark's own client threads on a small machine), the table shows the
//! server process's CPU time (`/proc/<pid>/stat`, user + system) per decision, which also counts
//! reading and parsing requests.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, missing_docs)]

#[path = "../tests/support/redis_server.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_server;

// `redis_server` can start clusters behind proxies; the bench does not, but the module needs it.
#[path = "../tests/support/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eyelet::{RandomSource, RateLimiter, SplitMix64};
use redis_server::RedisServer;

const CALLERS: usize = 64;

static SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn server_pid() -> u32 {
    SERVER_PID.get().copied().unwrap_or(0)
}

fn selected(row: &str) -> bool {
    std::env::var("EYELET_BENCH_ONLY").map_or(true, |f| row.contains(&f))
}
const KEYS: usize = 100_000;
const WINDOW_S: u64 = 60;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    /// One key, rate 1000/s: fills within the first second, then mostly rejects.
    Hot,
    /// 100,000 keys, uniform, rate 1000/s: every decision allowed.
    DistinctAllowed,
    /// 100,000 keys at C = 1 each, filled before the run: every decision rejected.
    DistinctRejected,
}

impl Workload {
    fn rate(self) -> f64 {
        match self {
            Workload::Hot | Workload::DistinctAllowed => 1000.0,
            Workload::DistinctRejected => 1.0 / WINDOW_S as f64,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot key",
            Workload::DistinctAllowed => "100k keys, allowed",
            Workload::DistinctRejected => "100k keys, rejected",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    Absolute,
    Suppressed,
}

struct Outcome {
    per_sec: f64,
    cpu_us: f64,
    proc_us: f64,
    per_call: f64,
    errors: u64,
}

fn secs() -> Duration {
    let s = std::env::var("EYELET_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

/// Runs `callers` tasks, each calling `f(caller, i)` until `dur` passes; returns (decisions,
/// errors, elapsed).
async fn drive<F, Fut>(callers: usize, dur: Duration, f: F) -> (u64, u64, Duration)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (f, done, errors) = (f.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(c as u64 + 1);
            let (mut ok, mut err) = (0, 0);
            while start.elapsed() < dur {
                if f(c, rng.next_u64()).await {
                    ok += 1;
                } else {
                    err += 1;
                }
            }
            done.fetch_add(ok, Ordering::Relaxed);
            errors.fetch_add(err, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

/// The server's CPU time (user + system) so far, in µs.
fn proc_cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // clock ticks are 1/100 s on Linux (USER_HZ)
    (ticks(11) + ticks(12)) * 10_000.0
}

/// Total usec and calls over all commands since the last reset (admin commands excluded),
/// and calls of `EVALSHA`/`EVAL`.
fn commandstats(conn: &mut redis::Connection) -> (f64, u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let (mut usec, mut calls, mut scripts) = (0.0, 0, 0);
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        if [
            "info", "config", "flushall", "ping", "hello", "client", "select", "scan", "script",
        ]
        .contains(&name)
        {
            continue;
        }
        let field = |k: &str| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        usec += field("usec=");
        calls += field("calls=") as u64;
        if name == "evalsha" || name == "eval" {
            scripts += field("calls=") as u64;
        }
    }
    (usec, calls, scripts)
}

fn reset(conn: &mut redis::Connection) {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(conn).unwrap();
}

fn flush(conn: &mut redis::Connection) {
    let _: () = redis::cmd("FLUSHALL").query(conn).unwrap();
}

async fn eyelet_limiter(url: &str) -> Arc<RateLimiter> {
    RateLimiter::builder()
        .window(Duration::from_secs(WINDOW_S))
        .bucket(Duration::from_millis(10))
        .hard_limit_factor(1.5)
        .redis_url(url)
        .prefix("eyelet-bench")
        .redis_deadline(Duration::from_secs(10))
        .sweeper(false)
        .connect()
        .await
        .expect("connect")
}

async fn bench_eyelet(
    admin: &mut redis::Connection,
    rl: &Arc<RateLimiter>,
    keys: &Arc<Vec<String>>,
    w: Workload,
    s: Strategy,
) -> Outcome {
    let rate = eyelet::RateLimit::try_from(w.rate()).unwrap();
    if w == Workload::DistinctRejected {
        for chunk in keys.chunks(4096) {
            match s {
                Strategy::Absolute => rl.redis().absolute().inc_many(chunk, &rate, 1).await,
                Strategy::Suppressed => {
                    // fill to H: two attempts each (C = 1, H = 1 at h = 1.5)
                    let _ = rl.redis().suppressed().inc_many(chunk, &rate, 1).await;
                    rl.redis().suppressed().inc_many(chunk, &rate, 1).await
                }
            }
            .expect("prefill");
        }
    }
    let (rl, keys) = (rl.clone(), keys.clone());
    run_keyed(admin, w, keys.len(), move |i| {
        let (rl, keys) = (rl.clone(), keys.clone());
        async move {
            let key = i.map_or("hot", |i| keys[i].as_str());
            match s {
                Strategy::Absolute => rl.redis().absolute().inc(key, &rate, 1).await.is_ok(),
                Strategy::Suppressed => rl.redis().suppressed().inc(key, &rate, 1).await.is_ok(),
            }
        }
    })
    .await
}

/// Runs `inc(i)` from 64 callers, `i` being the key index for the workload (`None`: the hot
/// key): what every contender's call closure shares.
async fn run_keyed<F, Fut>(
    admin: &mut redis::Connection,
    w: Workload,
    keys: usize,
    inc: F,
) -> Outcome
where
    F: Fn(Option<usize>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    run(admin, move |_c: usize, r: u64| {
        inc(match w {
            Workload::Hot => None,
            _ => Some((r % keys as u64) as usize),
        })
    })
    .await
}

async fn run<F, Fut>(admin: &mut redis::Connection, call: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    // warm-up (connections, script cache), not measured
    let _ = drive(CALLERS, Duration::from_millis(300), call.clone()).await;
    reset(admin);
    let cpu0 = proc_cpu_us(server_pid());
    let (n, errors, took) = drive(CALLERS, secs(), call).await;
    let cpu1 = proc_cpu_us(server_pid());
    let (usec, calls, scripts) = commandstats(admin);
    Outcome {
        per_sec: n as f64 / took.as_secs_f64(),
        cpu_us: usec / n.max(1) as f64,
        proc_us: (cpu1 - cpu0) / n.max(1) as f64,
        per_call: n as f64 / scripts.max(calls.min(1)).max(1) as f64,
        errors,
    }
}

mod tr2 {
    use super::*;
    use ::trypema::redis::{RedisKey, RedisRateLimiterProvider};
    use ::trypema::{BucketSize, HardLimitFactor, RateLimit, RateLimiterBuilder, WindowSize};

    pub(crate) async fn limiter(url: &str) -> Arc<RedisRateLimiterProvider> {
        let cm = ::redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        RedisRateLimiterProvider::builder(cm)
            .prefix(RedisKey::try_from("tr2".to_string()).unwrap())
            .window_size(WindowSize::seconds_or_panic(WINDOW_S))
            .bucket_size(BucketSize::milliseconds_or_panic(10))
            .hard_limit_factor(HardLimitFactor::new_or_panic(1.5))
            .cleanup_enabled(false)
            .build()
            .unwrap()
    }

    pub(crate) async fn bench(
        admin: &mut redis::Connection,
        rl: &Arc<RedisRateLimiterProvider>,
        keys: &Arc<Vec<String>>,
        w: Workload,
        s: Strategy,
    ) -> Outcome {
        let rate = RateLimit::per_second_or_panic(w.rate());
        let rkeys: Arc<Vec<RedisKey>> = Arc::new(
            keys.iter()
                .enumerate()
                .map(|(i, _)| RedisKey::try_from(format!("k{i}")).unwrap())
                .collect(),
        );
        let hot = RedisKey::try_from("hot".to_string()).unwrap();
        if w == Workload::DistinctRejected {
            for k in rkeys.iter() {
                let _ = match s {
                    Strategy::Absolute => rl.absolute().inc(k, &rate, 1).await.map(|_| ()),
                    Strategy::Suppressed => {
                        let _ = rl.suppressed().inc(k, &rate, 1).await;
                        rl.suppressed().inc(k, &rate, 1).await.map(|_| ())
                    }
                };
            }
        }
        let n = rkeys.len();
        let rl = rl.clone();
        run_keyed(admin, w, n, move |i| {
            let (rl, rkeys, hot) = (rl.clone(), rkeys.clone(), hot.clone());
            async move {
                let key = i.map_or(&hot, |i| &rkeys[i]);
                match s {
                    Strategy::Absolute => rl.absolute().inc(key, &rate, 1).await.is_ok(),
                    Strategy::Suppressed => rl.suppressed().inc(key, &rate, 1).await.is_ok(),
                }
            }
        })
        .await
    }
}

mod tr1 {
    use super::*;
    use ::trypema1::hybrid::SyncIntervalMs;
    use ::trypema1::local::LocalRateLimiterOptions;
    use ::trypema1::redis::{RedisKey, RedisRateLimiterOptions};
    use ::trypema1::{
        HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimiter, RateLimiterOptions,
        SuppressionFactorCacheMs, WindowSizeSeconds,
    };

    pub(crate) async fn limiter(url: &str) -> Arc<RateLimiter> {
        let cm = ::redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let window = WindowSizeSeconds::try_from(WINDOW_S).unwrap();
        let group = RateGroupSizeMs::try_from(10).unwrap();
        let h = HardLimitFactor::try_from(1.5).unwrap();
        let cache = SuppressionFactorCacheMs::try_from(100).unwrap();
        Arc::new(RateLimiter::new(RateLimiterOptions {
            local: LocalRateLimiterOptions {
                window_size_seconds: window,
                rate_group_size_ms: group,
                hard_limit_factor: h,
                suppression_factor_cache_ms: cache,
            },
            redis: RedisRateLimiterOptions {
                connection_manager: cm,
                prefix: Some(RedisKey::try_from("tr1".to_string()).unwrap()),
                window_size_seconds: window,
                rate_group_size_ms: group,
                hard_limit_factor: h,
                suppression_factor_cache_ms: cache,
                sync_interval_ms: SyncIntervalMs::default(),
            },
        }))
    }

    pub(crate) async fn bench(
        admin: &mut redis::Connection,
        rl: &Arc<RateLimiter>,
        keys: &Arc<Vec<String>>,
        w: Workload,
        s: Strategy,
    ) -> Outcome {
        let rate = RateLimit::try_from(w.rate()).unwrap();
        let rkeys: Arc<Vec<RedisKey>> = Arc::new(
            (0..keys.len())
                .map(|i| RedisKey::try_from(format!("k{i}")).unwrap())
                .collect(),
        );
        let hot = RedisKey::try_from("hot".to_string()).unwrap();
        let n = rkeys.len();
        let rl = rl.clone();
        run_keyed(admin, w, n, move |i| {
            let (rl, rkeys, hot) = (rl.clone(), rkeys.clone(), hot.clone());
            async move {
                let key = i.map_or(&hot, |i| &rkeys[i]);
                let provider = rl.redis();
                match s {
                    Strategy::Absolute => provider.absolute().inc(key, &rate, 1).await.is_ok(),
                    Strategy::Suppressed => provider.suppressed().inc(key, &rate, 1).await.is_ok(),
                }
            }
        })
        .await
    }
}

/// Bare baselines on one multiplexed connection: a no-op script and a `SET`.
async fn baseline(admin: &mut redis::Connection, url: &str, eval: bool) -> Outcome {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new("return 1");
    let mut c2 = conn.clone();
    let _: i64 = script.invoke_async(&mut c2).await.unwrap();
    let sha = script.get_hash().to_string();
    let call = move |c: usize, r: u64| {
        let (mut conn, sha) = (conn.clone(), sha.clone());
        async move {
            if eval {
                redis::cmd("EVALSHA")
                    .arg(&sha)
                    .arg(0)
                    .query_async::<i64>(&mut conn)
                    .await
                    .is_ok()
            } else {
                redis::cmd("SET")
                    .arg(format!("set{c}:{}", r % 1000))
                    .arg(1)
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok()
            }
        }
    };
    run(admin, call).await
}

/// p50 of one caller's round trips over `secs()`.
async fn p50<F, Fut>(f: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < secs().min(Duration::from_secs(2)) {
        i += 1;
        let t = Instant::now();
        assert!(f(i).await);
        lat.push(t.elapsed());
    }
    lat.sort();
    lat[lat.len() / 2]
}

fn main() {
    // EYELET_BENCH_RUNTIME=current: the callers on one thread (Redis keeps the other core);
    // default: a multi-threaded runtime with 2 workers.
    let current = std::env::var("EYELET_BENCH_RUNTIME").is_ok_and(|v| v == "current");
    let rt = if current {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    println!(
        "client runtime: {}",
        if current {
            "current_thread"
        } else {
            "multi_thread, 2 workers"
        }
    );
    rt.block_on(async_main());
}

async fn async_main() {
    let server = RedisServer::start();
    let _ = SERVER_PID.set(server.pid());
    let url = server.url();
    let mut admin = server.conn();
    let version: String = redis::cmd("INFO").arg("server").query(&mut admin).unwrap();
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "redis {version} on port {}, {CALLERS} callers, W = {WINDOW_S} s, G = 10 ms, {:?} per run",
        server.port,
        secs()
    );
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user-{i}")).collect());
    let ey = eyelet_limiter(&url).await;
    let t2 = tr2::limiter(&url).await;
    let t1 = tr1::limiter(&url).await;

    println!(
        "\n{:<22} {:<10} {:<12} {:>12} {:>14} {:>12} {:>10} {:>8}",
        "workload",
        "strategy",
        "contender",
        "decisions/s",
        "cmdstats µs",
        "process µs",
        "dec/call",
        "errors"
    );
    let mut ratios = Vec::new();
    for w in [
        Workload::Hot,
        Workload::DistinctAllowed,
        Workload::DistinctRejected,
    ] {
        for s in [Strategy::Absolute, Strategy::Suppressed] {
            let mut row = Vec::new();
            for who in ["eyelet", "trypema 2.2", "trypema 1.0"] {
                if w == Workload::DistinctRejected && who == "trypema 1.0" {
                    continue; // the CPU targets are against eyelet itself; keep the run short
                }
                let label = format!("{} {} {who}", w.name(), format!("{s:?}").to_lowercase());
                if !selected(&label) {
                    continue;
                }
                flush(&mut admin);
                let o = match who {
                    "eyelet" => bench_eyelet(&mut admin, &ey, &keys, w, s).await,
                    "trypema 2.2" => tr2::bench(&mut admin, &t2, &keys, w, s).await,
                    _ => tr1::bench(&mut admin, &t1, &keys, w, s).await,
                };
                println!(
                    "{:<22} {:<10} {:<12} {:>12.0} {:>14.2} {:>12.2} {:>10.1} {:>8}",
                    w.name(),
                    format!("{s:?}").to_lowercase(),
                    who,
                    o.per_sec,
                    o.cpu_us,
                    o.proc_us,
                    o.per_call,
                    o.errors
                );
                row.push((who, o));
            }
            let Some((first, ours)) = row.first() else {
                continue;
            };
            if *first != "eyelet" {
                continue;
            }
            let ours_cpu = ours.cpu_us;
            let ours = ours.per_sec;
            for (who, o) in &row[1..] {
                ratios.push(format!(
                    "{} {}: {:.2}× {who} decisions/s (eyelet {:.2} µs vs {:.2} µs Redis CPU per decision)",
                    w.name(),
                    format!("{s:?}").to_lowercase(),
                    ours / o.per_sec,
                    ours_cpu,
                    o.cpu_us
                ));
            }
        }
    }
    if !selected("baseline") {
        return;
    }
    flush(&mut admin);
    let noop = baseline(&mut admin, &url, true).await;
    let set = baseline(&mut admin, &url, false).await;
    for (name, o) in [("EVALSHA noop", noop), ("SET", set)] {
        println!(
            "{:<22} {:<10} {:<12} {:>12.0} {:>14.2} {:>12.2} {:>10.1} {:>8}",
            "baseline", "-", name, o.per_sec, o.cpu_us, o.proc_us, 1.0, o.errors
        );
    }

    // One caller: per-decision p50 against a bare no-op EVALSHA round trip.
    flush(&mut admin);
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let sha = redis::Script::new("return 1").get_hash().to_string();
    let noop_p50 = p50(|_| {
        let (mut conn, sha) = (conn.clone(), sha.clone());
        async move {
            redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(0)
                .query_async::<i64>(&mut conn)
                .await
                .is_ok()
        }
    })
    .await;
    let rate = eyelet::RateLimit::try_from(1000.0).unwrap();
    let abs_p50 = p50(|i| {
        let (rl, k) = (ey.clone(), format!("one-{}", i % 1000));
        async move { rl.redis().absolute().inc(&k, &rate, 1).await.is_ok() }
    })
    .await;
    let sup_p50 = p50(|i| {
        let (rl, k) = (ey.clone(), format!("one-{}", i % 1000));
        async move { rl.redis().suppressed().inc(&k, &rate, 1).await.is_ok() }
    })
    .await;
    println!("\n1 caller p50: no-op EVALSHA {noop_p50:?}, eyelet absolute {abs_p50:?} (+{:?}), suppressed {sup_p50:?} (+{:?})",
        abs_p50.saturating_sub(noop_p50), sup_p50.saturating_sub(noop_p50));
    println!("\nratios:");
    for r in ratios {
        println!("  {r}");
    }
}
