//! The hybrid provider against real redis-server processes: one instance decides exactly as the
//! local provider does; several instances in one process (each with its own connection and
//! sync actor, as app servers would) share one limit within the published bound; Redis ends
//! up holding exactly what was admitted.
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eyelet::{Clock, RateLimitDecision, RateLimiter, Source, SystemClock};
use support::hybrid_value::HybridValue;
use support::rate;
use support::redis_server::RedisServer;

/// The tests run one at a time: the accuracy ones time real traffic on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The tests' limiter on `url` under `prefix`: W = 1 s, G = 10 ms, sync every 10 ms, the
/// suppressed strategy's H = 1.5 S (absolute ignores it), no sweeper; a test sets what differs.
fn builder(url: &str, prefix: &str) -> eyelet::RateLimiterBuilder {
    RateLimiter::builder()
        .window(Duration::from_secs(1))
        .bucket(Duration::from_millis(10))
        .sync_interval(Duration::from_millis(10))
        .hard_limit_factor(1.5)
        .redis_url(url)
        .prefix(prefix)
        .sweeper(false)
}

async fn instance(server: &RedisServer, prefix: &str) -> Arc<RateLimiter> {
    builder(&server.url(), prefix)
        .connect()
        .await
        .expect("connect")
}

/// A limiter at W = 10 s that syncs only when flushed (so a test knows which call carries
/// what), `deadline` per Redis call, after its first sync.
async fn flush_only(url: &str, prefix: &str, deadline: Duration) -> Arc<RateLimiter> {
    let rl = builder(url, prefix)
        .window(Duration::from_secs(10))
        .sync_interval(Duration::from_secs(3600))
        .redis_deadline(deadline)
        .connect()
        .await
        .expect("connect");
    rl.hybrid().flush().await.expect("first sync");
    rl
}

/// Weight Redis holds in live buckets of a hybrid key (all instances), and the reserves.
fn redis_totals(server: &RedisServer, prefix: &str, key: &str) -> (u64, u64) {
    let mut c = server.conn();
    HybridValue::read(&mut c, &format!("{prefix}:h:{{{key}}}"))
        .map_or((0, 0), |v| (v.admitted(), v.reserved()))
}

/// A decision with its retry hint made absolute: the instant (ms) the request would be free.
fn free_at(d: &RateLimitDecision, at_ms: u64) -> RateLimitDecision {
    match d.clone() {
        RateLimitDecision::Rejected {
            retry_after_ms,
            remaining_after_waiting,
            window,
        } if retry_after_ms != eyelet::RETRY_NEVER => RateLimitDecision::Rejected {
            retry_after_ms: at_ms + retry_after_ms,
            remaining_after_waiting,
            window,
        },
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_decides_like_the_local_provider_and_redis_holds_every_admission() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = instance(&server, "solo").await;
    rl.hybrid().flush().await.expect("first sync");
    let r = rate(20.0);
    let mut admitted = 0;
    for i in 0..50 {
        let s = rl.hybrid().absolute().inc_stamped("k", &r, 1);
        let local = rl.local().absolute().inc_stamped("k", &r, 1);
        // The clock may tick between the two calls: a retry hint is the same instant.
        assert_eq!(
            free_at(&s.decision, s.at_ms),
            free_at(&local.decision, local.at_ms),
            "call {i}: hybrid {s:?} and local {local:?} disagree"
        );
        assert_eq!(s.source, Source::HybridSolo);
        admitted += u64::from(s.decision.is_allowed());
    }
    assert_eq!(admitted, 20);
    rl.hybrid().flush().await.expect("sync");
    assert_eq!(redis_totals(&server, "solo", "k"), (20, 0));
    assert_eq!(rl.hybrid().absolute().get("k"), (20, 20));
    // weights and the n > C rule as local
    let d = rl.hybrid().absolute().inc("w", &r, 21);
    assert_eq!(d, rl.local().absolute().inc("w", &r, 21));
    assert!(matches!(
        d,
        RateLimitDecision::Rejected {
            retry_after_ms: eyelet::RETRY_NEVER,
            ..
        }
    ));
    rl.hybrid().shutdown().await.expect("shutdown");
}

/// Admission stamps of every instance (ms on the instances' shared clock), for the
/// sliding-window oracle.
type Tally = Arc<Mutex<Vec<(u64, Source, usize)>>>;

/// The window the decision contract bounds, as these tests can measure it: `W − G` (990 ms).
/// A request joins a bucket up to `G` old and expires with it, so it may count up to `G` less
/// than `W` (`semantics.md`: the one imprecision allowed). Over a full 1 s window a run once
/// read 204 at C = 200, the first window's last bucket (4 admissions, made on provisional
/// shares by the local rule) and the next window's first burst.
const CONTRACT_WINDOW_MS: u64 = 990;

/// The most admissions in any window `[t, t + w)` of sorted stamps (ms).
fn most_in_any_window(t: &[u64], w: u64) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Runs `instances` limiters, each offered `per_instance_rps` on one key for `secs`, and
/// returns the sorted admission instants after the first window.
async fn shared_load(
    server: &RedisServer,
    prefix: &str,
    instances: usize,
    capacity: f64,
    offered: &[f64],
    secs: f64,
) -> Load {
    shared_load_of(server, prefix, instances, capacity, offered, secs, false).await
}

/// [`shared_load`] on the absolute or (`suppressed`) the suppressed strategy.
async fn shared_load_of(
    server: &RedisServer,
    prefix: &str,
    instances: usize,
    capacity: f64,
    offered: &[f64],
    secs: f64,
    suppressed: bool,
) -> Load {
    // One clock for all instances, so that the decisions' own stamps (the time each decision
    // used, which the contract is about) compare across instances. Stamping admissions with
    // `Instant::now()` after each call returned let a thread descheduled between its decision
    // and its stamp move an admission into a later window (a CI run read 203 at C = 200).
    let clock = SystemClock::new();
    let mut rls = Vec::new();
    for _ in 0..instances {
        rls.push(
            builder(&server.url(), prefix)
                .clock(clock.clone())
                .connect()
                .await
                .expect("connect"),
        );
    }
    // every instance registered before the load starts
    for rl in &rls {
        rl.hybrid().flush().await.expect("sync");
    }
    for rl in &rls {
        rl.hybrid().flush().await.expect("sync");
    }
    let tally: Tally = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let r = rate(capacity);
    let start = clock.now_ms();
    let threads: Vec<_> = rls
        .iter()
        .zip(offered)
        .enumerate()
        .map(|(idx, (rl, &rps))| {
            let (rl, tally, stop) = (rl.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let gap = Duration::from_secs_f64(1.0 / rps);
                let mut next = Instant::now();
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(1)));
                        continue;
                    }
                    // catch up in bursts if the thread fell behind (as a loaded server would)
                    while next <= now {
                        let s = if suppressed {
                            rl.hybrid().suppressed().inc_stamped("hot", &r, 1)
                        } else {
                            rl.hybrid().absolute().inc_stamped("hot", &r, 1)
                        };
                        if s.decision.is_allowed() {
                            mine.push((s.at_ms, s.source, idx));
                        }
                        next += gap;
                    }
                }
                tally.lock().unwrap().extend(mine);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let end = clock.now_ms();
    let mut all = tally.lock().unwrap().clone();
    all.sort_by_key(|a| a.0);
    Load {
        admitted: all.iter().map(|a| a.0).collect(),
        detail: all,
        start,
        end,
        instances: rls,
    }
}

/// What [`shared_load`] saw (times in ms on the instances' shared clock).
struct Load {
    /// Admission stamps, sorted.
    admitted: Vec<u64>,
    /// The same admissions with what each was based on and the instance that made it.
    detail: Vec<(u64, Source, usize)>,
    start: u64,
    end: u64,
    instances: Vec<Arc<RateLimiter>>,
}

impl Load {
    /// The most admitted in any window, and the mean admitted per second after the first
    /// second (whole run). Windows are measured [`CONTRACT_WINDOW`] long.
    fn figures(&self) -> (usize, f64) {
        let most = most_in_any_window(&self.admitted, CONTRACT_WINDOW_MS);
        let from = self.start + 1000;
        let steady = self.admitted.iter().filter(|&&t| t >= from).count();
        let secs = self.end.saturating_sub(from) as f64 / 1000.0;
        (most, steady as f64 / secs)
    }

    /// Admissions in each whole second from the start.
    fn per_second(&self) -> Vec<usize> {
        let secs = (self.end.saturating_sub(self.start) / 1000) as usize;
        let mut v = vec![0; secs];
        for t in &self.admitted {
            if let Some(c) = v.get_mut((t.saturating_sub(self.start) / 1000) as usize) {
                *c += 1;
            }
        }
        v
    }

    /// The fullest [`CONTRACT_WINDOW_MS`] window: its start (ms from the load's start) and
    /// its admissions counted by source and instance (for failure messages).
    fn worst_window(&self) -> String {
        let (mut best, mut at, mut lo) = (0, 0, 0);
        for hi in 0..self.admitted.len() {
            while self.admitted[hi] - self.admitted[lo] >= CONTRACT_WINDOW_MS {
                lo += 1;
            }
            if hi - lo + 1 > best {
                (best, at) = (hi - lo + 1, lo);
            }
        }
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for (_, source, idx) in self.detail.iter().skip(at).take(best) {
            *by.entry(format!("{source:?}@{idx}")).or_default() += 1;
        }
        let t0 = self.admitted.get(at).map_or(0, |t| t - self.start);
        format!("{best} from {t0} ms: {by:?}")
    }

    /// Admissions per 100 ms slot from the start (for failure messages).
    fn profile(&self) -> Vec<usize> {
        let slots = (self.end.saturating_sub(self.start) / 100) as usize + 1;
        let mut v = vec![0; slots];
        for t in &self.admitted {
            if let Some(c) = v.get_mut((t.saturating_sub(self.start) / 100) as usize) {
                *c += 1;
            }
        }
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_at_five_times_the_rate_share_one_limit() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let c = 200.0;
    let load = shared_load(&server, "four", 4, c, &[c * 5.0 / 4.0; 4], 6.0).await;
    let (most, mean) = load.figures();
    eprintln!(
        "4 instances, C = {c}, 5x load: most in any W - G window {most} ({:.3} C), mean {mean:.1}/s ({:.3} C); per 100 ms: {:?}",
        most as f64 / c,
        mean / c,
        load.profile()
    );
    for rl in &load.instances {
        rl.hybrid().flush().await.expect("sync");
        eprintln!("{:?}", rl.hybrid().status());
    }
    assert!(
        most as f64 <= c * 1.01 + 1.0,
        "most in a window {most}: {}",
        load.worst_window()
    );
    assert!(mean >= 0.97 * c, "mean admitted per window {mean}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_one_limit_at_every_load_and_skew() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    // (name, C per second, offered per instance)
    let runs: [(&str, f64, [f64; 4]); 4] = [
        ("1.1x", 200.0, [55.0; 4]),
        ("2x", 200.0, [100.0; 4]),
        (
            "skewed 80 % on one instance, 2x",
            200.0,
            [320.0, 26.7, 26.7, 26.6],
        ),
        ("small C = 10, 5x", 10.0, [12.5; 4]),
    ];
    let mut failures = Vec::new();
    for (i, (name, c, offered)) in runs.iter().enumerate() {
        let load = shared_load(&server, &format!("mix{i}"), 4, *c, offered, 4.0).await;
        let (most, mean) = load.figures();
        let total_offered: f64 = offered.iter().sum();
        // an exact limiter admits min(offered, C) per window
        let expected = total_offered.min(*c);
        eprintln!(
            "{name}: most in any W - G window {most} ({:.3} C), mean {mean:.1}/s ({:.3} of min(offered, C))",
            most as f64 / c,
            mean / expected
        );
        if most as f64 > (c * 1.01).max(c + 1.0) {
            failures.push(format!(
                "{name}: {most} in one window ({}); {:?}",
                load.worst_window(),
                load.profile()
            ));
        }
        // (small limits: only the bound is published)
        if *c >= 100.0 && mean < 0.97 * expected {
            failures.push(format!("{name}: mean {mean:.1}/s; {:?}", load.profile()));
        }
        for rl in &load.instances {
            rl.hybrid().shutdown().await.expect("shutdown");
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A sole instance's suppressed strategy decides call for call as the local provider's (same
/// random stream), and Redis holds what it accepted and what it declined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_suppressed_decides_like_the_local_provider() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = builder(&server.url(), "solo-sup")
        .shards(1)
        // every shard the same stream: the local and the hybrid shard of a key draw alike
        .random_source(|_| eyelet::SplitMix64::new(7))
        .connect()
        .await
        .expect("connect");
    rl.hybrid().flush().await.expect("first sync");
    let r = rate(20.0);
    let (mut accepted, mut banded) = (0u64, 0u64);
    for i in 0..120 {
        let s = rl.hybrid().suppressed().inc_stamped("k", &r, 1);
        let local = rl.local().suppressed().inc("k", &r, 1);
        assert_eq!(s.decision, local, "call {i}: hybrid and local disagree");
        assert_eq!(s.source, Source::HybridSolo);
        accepted += u64::from(s.decision.is_allowed());
        if let RateLimitDecision::Suppressed {
            is_allowed: true, ..
        } = s.decision
        {
            banded += 1;
        }
    }
    assert!((20..=30).contains(&accepted), "between S and H: {accepted}");
    assert!(banded > 0, "some were admitted in the band");
    let (own, global) = rl.hybrid().suppressed().get("k");
    let local = rl.local().suppressed().get("k");
    assert_eq!((own.total, own.accepted), (local.total, local.accepted));
    rl.hybrid().flush().await.expect("sync");
    let mut c = server.conn();
    let v = HybridValue::read(&mut c, "solo-sup:p:{k}").expect("the key is in Redis");
    assert_eq!(
        (v.admitted(), v.declined_weight()),
        (accepted, 120 - accepted)
    );
    let (_, global_after) = rl.hybrid().suppressed().get("k");
    assert_eq!(
        (global_after.accepted, global_after.declined),
        (accepted, 120 - accepted),
        "the last sync reported every instance's attempts (before: {global:?})"
    );
    // the absolute strategy's state of the same key is apart
    assert_eq!(rl.hybrid().absolute().get("k"), (0, 0));
    rl.hybrid().shutdown().await.expect("shutdown");
}

/// Four instances share one suppressed limit: each window from the third on accepts within
/// ±10 % of S, and no sliding window more than H.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_suppressed_settle_at_the_target_and_never_pass_the_hard_limit() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let s = 1000.0;
    let h = 1.5 * s;
    let mut failures = Vec::new();
    for (i, load_factor) in [2.0, 4.0].into_iter().enumerate() {
        let offered = [s * load_factor / 4.0; 4];
        let load = shared_load_of(&server, &format!("sup{i}"), 4, s, &offered, 6.0, true).await;
        let most = most_in_any_window(&load.admitted, CONTRACT_WINDOW_MS);
        let per_second = load.per_second();
        eprintln!(
            "suppressed, 4 instances, S = {s}, H = {h}, {load_factor}x: most in any W - G window {most} ({:.3} H); accepted per second {per_second:?}",
            most as f64 / h
        );
        if most as f64 > h * 1.01 {
            failures.push(format!("{load_factor}x: {most} in one window"));
        }
        for (sec, &n) in per_second.iter().enumerate().skip(2) {
            if (n as f64 - s).abs() > 0.1 * s {
                failures.push(format!("{load_factor}x: second {sec} accepted {n}"));
            }
        }
        for rl in &load.instances {
            rl.hybrid().shutdown().await.expect("shutdown");
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Keys of any length work: one over 512 bytes is stored in Redis under a SHA-256 digest, two
/// long keys differing only in their last byte stay apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_are_stored_under_a_digest() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = instance(&server, "long").await;
    rl.hybrid().flush().await.expect("first sync");
    let r = rate(5.0);
    let base = "u".repeat(10_000);
    let keys = [format!("{base}a"), format!("{base}b"), "x".repeat(600)];
    for (i, k) in keys.iter().enumerate() {
        for _ in 0..=i {
            assert!(rl.hybrid().absolute().inc(k, &r, 1).is_allowed());
        }
    }
    rl.hybrid().flush().await.expect("sync");
    assert_eq!(rl.hybrid().status().pending_parts, 0);
    let mut c = server.conn();
    let found = support::redis_server::scan_all(&mut c, "long:h:*");
    let mut counts = Vec::new();
    for k in &found {
        let name = String::from_utf8_lossy(k);
        assert!(
            name.starts_with("long:h:{\\#") && name.len() == "long:h:{\\#}".len() + 64,
            "{name}"
        );
        let v = HybridValue::read(&mut c, &name).expect("the key is in Redis");
        counts.push(v.admitted());
    }
    counts.sort_unstable();
    assert_eq!(counts, vec![1, 2, 3], "three keys, apart");
    rl.hybrid().shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_reply_was_lost_is_counted_once() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let proxy = support::proxy::Proxy::start(server.port);
    // Only flushes sync, so the test knows which call carries the key.
    let rl = flush_only(&proxy.url(), "lost", Duration::from_millis(500)).await;
    let r = rate(100.0);
    let abs = rl.hybrid().absolute();
    for _ in 0..5 {
        assert!(abs.inc("k", &r, 1).is_allowed());
    }
    // registry + one key with one part: 6 doubles
    proxy.lose_next_reply(b"$48\r\n");
    let lost = rl.hybrid().flush().await;
    assert_eq!(
        proxy.lost(),
        1,
        "the reply was lost after the server ran the sync"
    );
    assert!(lost.is_err(), "a lost reply is a failed sync: {lost:?}");
    for _ in 0..3 {
        assert!(abs.inc("k", &r, 1).is_allowed());
    }
    let mut synced = false;
    for _ in 0..50 {
        if rl.hybrid().flush().await.is_ok() {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(synced, "sync resumes: {:?}", rl.hybrid().status());
    assert_eq!(rl.hybrid().status().pending_parts, 0);
    assert_eq!(
        redis_totals(&server, "lost", "k").0,
        8,
        "the part whose reply was lost went out again and was applied once"
    );
}

/// A sync call that outlives its deadline (the server holds it under `CLIENT PAUSE WRITE`,
/// then runs it) and one whose connection is killed while the server holds it: the reports are
/// sent again, and Redis ends up with exactly what was admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_lost_to_a_deadline_or_a_killed_connection_are_counted_once() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    // only flushes sync
    let rl = flush_only(&server.url(), "paused", Duration::from_millis(100)).await;
    let r = rate(100.0);
    let abs = rl.hybrid().absolute();
    let admitted = std::cell::Cell::new(0u64);
    let admit = |n: usize| {
        for _ in 0..n {
            assert!(abs.inc("k", &r, 1).is_allowed());
            admitted.set(admitted.get() + 1);
        }
    };
    let flush_until_ok = || async {
        for _ in 0..100 {
            if rl.hybrid().flush().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sync does not resume: {:?}", rl.hybrid().status());
    };
    let mut admin = server.conn();
    let pause = |c: &mut redis::Connection| {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(400)
            .arg("WRITE")
            .query(c)
            .expect("CLIENT PAUSE");
    };

    // 1. the deadline passes while the server holds the call; it runs after the pause
    admit(5);
    pause(&mut admin);
    let timed_out = rl.hybrid().flush().await;
    assert!(timed_out.is_err(), "{timed_out:?}");
    admit(3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        redis_totals(&server, "paused", "k").0,
        5,
        "the call whose reply was lost ran after the pause"
    );
    flush_until_ok().await;
    assert_eq!(redis_totals(&server, "paused", "k").0, admitted.get());

    // 2. the connection is killed while the server holds the call
    admit(4);
    pause(&mut admin);
    let rl2 = rl.clone();
    let pending = tokio::spawn(async move { rl2.hybrid().flush().await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut admin)
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the limiter's connection was killed");
    let killed_call = pending.await.expect("flush task");
    admit(2);
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut admin)
        .expect("CLIENT UNPAUSE");
    flush_until_ok().await;
    eprintln!(
        "killed call: {killed_call:?}; admitted {}; {:?}",
        admitted.get(),
        rl.hybrid().status()
    );
    assert_eq!(redis_totals(&server, "paused", "k").0, admitted.get());
    rl.hybrid().shutdown().await.expect("shutdown");
}

/// A flood of 1,000,000 distinct keys through one instance: what waits for Redis stays
/// bounded (parts older than the window are dropped, one part per key at most), every key is
/// reported or dropped, and the sweeper evicts the idle keys afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_a_million_keys_stays_bounded_and_is_swept() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = builder(&server.url(), "flood")
        .stale_after(Duration::from_secs(2))
        .sweep_interval(Duration::from_millis(200))
        .sweeper(true)
        .connect()
        .await
        .expect("connect");
    rl.hybrid().flush().await.expect("first sync");
    let keys = 1_000_000usize;
    let flooding = {
        let rl = rl.clone();
        tokio::task::spawn_blocking(move || {
            let r = rate(10.0);
            let mut chunk = Vec::with_capacity(1000);
            let mut admitted = 0usize;
            let t = Instant::now();
            for i in 0..keys {
                chunk.push(format!("ip-{i}"));
                if chunk.len() == 1000 {
                    admitted += rl
                        .hybrid()
                        .absolute()
                        .inc_many(&chunk, &r, 1)
                        .iter()
                        .filter(|d| d.is_allowed())
                        .count();
                    chunk.clear();
                    // about 250,000 new keys per second
                    if let Some(ahead) =
                        Duration::from_micros(4 * i as u64).checked_sub(t.elapsed())
                    {
                        std::thread::sleep(ahead);
                    }
                }
            }
            admitted
        })
    };
    let (mut peak_pending, mut peak_keys) = (0u64, 0usize);
    while !flooding.is_finished() {
        peak_pending = peak_pending.max(rl.hybrid().status().pending_parts);
        peak_keys = peak_keys.max(rl.hybrid().absolute().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admitted = flooding.await.expect("flood");
    assert_eq!(admitted, keys, "every new key has room");
    // a flush now sends whatever is pending in one sync (hundreds of thousands of keys): its
    // calls must not queue on the server past their deadline
    let t = Instant::now();
    rl.hybrid().flush().await.expect("a flush after the flood");
    eprintln!("flush after the flood: {:?}", t.elapsed());
    let flooded = Instant::now();
    let mut drained = None;
    while flooded.elapsed() < Duration::from_secs(90) {
        let st = rl.hybrid().status();
        peak_pending = peak_pending.max(st.pending_parts);
        if st.pending_parts == 0 && rl.hybrid().absolute().is_empty() {
            drained = Some(flooded.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = rl.hybrid().status();
    eprintln!(
        "{keys} keys: peak {peak_keys} held, peak {peak_pending} parts waiting; all reported or dropped and swept {drained:?} after the flood; {st:?}"
    );
    assert!(
        peak_pending <= keys as u64,
        "at most one part per key waits"
    );
    assert!(drained.is_some(), "keys left after the flood: {st:?}");
    rl.hybrid().shutdown().await.expect("shutdown");
}

/// One sync of many keys on a single server: its calls go out a few at a time, so none waits
/// behind the others on the server past its deadline (64 in flight made a 50,000-key flush
/// fail at a 100 ms deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_of_many_keys_stays_within_each_calls_deadline() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = flush_only(&server.url(), "wide", Duration::from_millis(100)).await;
    let r = rate(10.0);
    let keys: Vec<String> = (0..50_000).map(|i| format!("user-{i}")).collect();
    let d = rl.hybrid().absolute().inc_many(&keys, &r, 1);
    assert!(d.iter().all(|d| d.is_allowed()));
    let t = Instant::now();
    let flushed = rl.hybrid().flush().await;
    eprintln!(
        "flush of {} keys: {flushed:?} in {:?}; {:?}",
        keys.len(),
        t.elapsed(),
        rl.hybrid().status()
    );
    flushed.expect("every call within its deadline");
    rl.hybrid().shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_never_blocks_a_decision_and_nothing_is_lost_or_doubled() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    // W = 10 s: nothing leaves the window while the test runs, so Redis must end up holding
    // exactly what the instances admitted.
    let mut rls = Vec::new();
    for _ in 0..2 {
        let rl = builder(&server.url(), "stall")
            .window(Duration::from_secs(10))
            .redis_deadline(Duration::from_millis(100))
            .connect()
            .await
            .expect("connect");
        rls.push(rl);
    }
    for _ in 0..2 {
        for rl in &rls {
            rl.hybrid().flush().await.expect("sync");
        }
    }
    let r = rate(20.0); // C = 200 over 10 s; a share is 100
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = rls
        .iter()
        .map(|rl| {
            let (rl, stop) = (rl.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut admitted, mut slowest, mut outage) = (0u64, Duration::ZERO, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let s = rl.hybrid().absolute().inc_stamped("k", &r, 1);
                    slowest = slowest.max(t.elapsed());
                    admitted += u64::from(s.decision.is_allowed());
                    outage += u64::from(s.source == Source::HybridOutage);
                    std::thread::sleep(Duration::from_millis(8));
                }
                (admitted, slowest, outage)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.pause();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(u64, Duration, u64)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    for rl in &rls {
        let mut ok = false;
        for _ in 0..100 {
            if rl.hybrid().shutdown().await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            ok,
            "sync resumes after the stall: {:?}",
            rl.hybrid().status()
        );
    }
    let admitted: u64 = results.iter().map(|r| r.0).sum();
    let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
    let outage: u64 = results.iter().map(|r| r.2).sum();
    eprintln!("admitted {admitted}, slowest decision {slowest:?}, outage decisions {outage}");
    assert!(outage > 0, "the stall was seen as an outage");
    assert!(
        slowest < Duration::from_millis(250),
        "a decision waited on the stalled server: {slowest:?}"
    );
    let (buckets, reserves) = redis_totals(&server, "stall", "k");
    assert_eq!(reserves, 0, "shutdown gave every reserve back");
    assert_eq!(buckets, admitted, "Redis holds every admission once");
    assert!(
        admitted <= 210,
        "local shares kept the outage within 5 %: {admitted}"
    );
}

/// The p-th percentile of `v` (sorted in place).
fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Four instances under load through a 10 s SIGSTOP of Redis: decisions never wait on it (p99
/// as in the healthy phase), the local shares keep the outage within 5 % of the limit, and once
/// the server runs again Redis holds exactly what the instances admitted (reserves counted as
/// admitted while their instances were cut off come back out) within 2 sync intervals + 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_through_a_ten_second_stall() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let interval = Duration::from_millis(10);
    let mut rls = Vec::new();
    for _ in 0..4 {
        // W = 60 s: nothing leaves the window while the test runs
        let rl = builder(&server.url(), "stall4")
            .window(Duration::from_secs(60))
            .sync_interval(interval)
            .redis_deadline(Duration::from_millis(100))
            .connect()
            .await
            .expect("connect");
        rls.push(rl);
    }
    for _ in 0..2 {
        for rl in &rls {
            rl.hybrid().flush().await.expect("sync");
        }
    }
    let c = 1200u64;
    let r = rate(c as f64 / 60.0);
    // 0: healthy, 1: server stopped, 2: after
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = rls
        .iter()
        .map(|rl| {
            let (rl, phase, stop) = (rl.clone(), phase.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat: [Vec<Duration>; 3] = Default::default();
                let mut admitted = [0u64; 3];
                while !stop.load(Ordering::Relaxed) {
                    let p = phase.load(Ordering::Relaxed) as usize;
                    let t = Instant::now();
                    let d = rl.hybrid().absolute().inc("k", &r, 1);
                    lat[p].push(t.elapsed());
                    admitted[p] += u64::from(d.is_allowed());
                    // 25 requests per second per instance: 100/s against C = 1,200 per minute
                    std::thread::sleep(Duration::from_millis(40));
                }
                (lat, admitted)
            })
        })
        .collect();
    // as long as the stall: the two p99s are read from as many decisions each
    tokio::time::sleep(Duration::from_secs(10)).await;
    phase.store(1, Ordering::Relaxed);
    server.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // dozens of syncs failed meanwhile (each waits out its deadline): one part waits per key,
    // not one per sync
    for rl in &rls {
        let st = rl.hybrid().status();
        assert!(st.failures > 20, "{st:?}");
        assert!(st.pending_parts <= 2, "pending parts pile up: {st:?}");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // the load stops as the server resumes: from here the tally is final
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    server.resume();
    let resumed = Instant::now();
    let tally: u64 = results.iter().map(|(_, a)| a.iter().sum::<u64>()).sum();
    let mut converged = None;
    let mut last = (0, 0);
    while resumed.elapsed() < Duration::from_secs(3) {
        last = redis_totals(&server, "stall4", "k");
        if last.0 == tally {
            converged = Some(resumed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut healthy: Vec<Duration> = results.iter().flat_map(|(l, _)| l[0].clone()).collect();
    let mut stalled: Vec<Duration> = results.iter().flat_map(|(l, _)| l[1].clone()).collect();
    let (h50, h99) = (
        percentile(&mut healthy, 0.5),
        percentile(&mut healthy, 0.99),
    );
    let (s50, s99) = (
        percentile(&mut stalled, 0.5),
        percentile(&mut stalled, 0.99),
    );
    let during: u64 = results.iter().map(|(_, a)| a[1]).sum();
    // healthy, the key stays below C (100/s for 10 s against 1,200 a minute): nearly all of it
    // is admitted (a key used every few intervals keeps its reserve between uses)
    let healthy_admitted: u64 = results.iter().map(|(_, a)| a[0]).sum();
    let healthy_offered = healthy.len() as u64;
    eprintln!(
        "4 instances, C = {c}/60 s, 10 s stall: admitted {tally} ({during} during the stall); decision p50/p99 healthy {h50:?}/{h99:?}, stalled {s50:?}/{s99:?}; Redis equal to the tally after {converged:?} (last read {last:?})"
    );
    assert!(during > 0, "the local shares admitted during the stall");
    assert!(
        healthy_admitted as f64 >= 0.9 * healthy_offered as f64,
        "healthy: {healthy_admitted} of {healthy_offered} admitted"
    );
    assert!(
        tally as f64 <= c as f64 * 1.05,
        "local shares kept the stall within 5 %: {tally}"
    );
    // timing on a shared 2-core machine: 1 ms of scheduling slack besides the ratio
    assert!(
        s99 <= h99.mul_f64(1.2) + Duration::from_millis(1),
        "stalled p99 {s99:?} vs healthy {h99:?}"
    );
    let converged = converged.expect("Redis converges on the tally");
    assert!(
        converged <= 2 * interval + Duration::from_millis(100),
        "converged after {converged:?}"
    );
    for rl in &rls {
        rl.hybrid().shutdown().await.expect("shutdown");
    }
    assert_eq!(redis_totals(&server, "stall4", "k"), (tally, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_changed_key_reaches_redis_even_when_evictions_move_entries() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = RateLimiter::builder()
        .window(Duration::from_millis(100))
        .bucket(Duration::from_millis(10))
        .stale_after(Duration::from_millis(1))
        .sync_interval(Duration::from_secs(3600))
        .shards(1)
        .redis_url(server.url())
        .prefix("moves")
        .sweeper(false)
        .connect()
        .await
        .expect("connect");
    let r = rate(1000.0);
    let abs = rl.hybrid().absolute();
    for i in 0..300 {
        assert!(abs.inc(&format!("old{i}"), &r, 1).is_allowed());
    }
    rl.hybrid().flush().await.expect("sync");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // new keys land after the old ones in the slab; evicting the old ones moves them
    for i in 0..300 {
        assert!(abs.inc(&format!("new{i}"), &r, 2).is_allowed());
    }
    let evicted = rl.sweep();
    assert!(
        evicted >= 100,
        "old keys expired and were evicted: {evicted}"
    );
    rl.hybrid().flush().await.expect("sync");
    let mut c = server.conn();
    for i in 0..300 {
        let v = HybridValue::read(&mut c, &format!("moves:h:{{new{i}}}"));
        let total = v.as_ref().map_or(0, HybridValue::admitted);
        assert_eq!(total, 2, "key new{i} reached Redis once: {v:?}");
    }
}

/// Waits until `rl`'s last fully successful sync started after `after` (limiter clock).
async fn synced_after(rl: &Arc<RateLimiter>, after: u64, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if rl.hybrid().status().last_ok_ms.is_some_and(|t| t > after) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_resumes_after_a_restart_and_a_flushed_script_cache() {
    let _serial = SERIAL.lock().await;
    let mut server = RedisServer::start();
    let rl = builder(&server.url(), "restart")
        .redis_deadline(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    let r = rate(1000.0);
    rl.hybrid().flush().await.expect("sync");
    // SCRIPT FLUSH: the next sync gets NOSCRIPT and sends the body (counted once)
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.conn())
        .expect("SCRIPT FLUSH");
    for _ in 0..5 {
        assert!(rl.hybrid().absolute().inc("k", &r, 1).is_allowed());
    }
    rl.hybrid()
        .flush()
        .await
        .expect("a sync after SCRIPT FLUSH");
    assert_eq!(redis_totals(&server, "restart", "k").0, 5);
    // kill and restart: Redis state is lost (documented); decisions never fail meanwhile, and
    // the sync resumes within a second of the server being back
    server.kill();
    for _ in 0..20 {
        let s = rl.hybrid().absolute().inc_stamped("k", &r, 1);
        assert!(s.decision.is_allowed() || s.source == Source::HybridOutage);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.restart();
    let back = rl.now_ms();
    assert!(
        synced_after(&rl, back, Duration::from_secs(1)).await,
        "sync resumed within 1 s: {:?}",
        rl.hybrid().status()
    );
    for _ in 0..3 {
        assert!(rl.hybrid().absolute().inc("k", &r, 1).is_allowed());
    }
    rl.hybrid().flush().await.expect("sync");
    let (buckets, _) = redis_totals(&server, "restart", "k");
    assert!(
        buckets >= 3,
        "admissions after the restart reach the new server: {buckets}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_dropped_without_shutdown_stops_counting_against_the_others() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let a = instance(&server, "dropped").await;
    // b runs on a runtime of its own, which is then torn down: its sync actor dies without a
    // last sync and without leaving the registry, as in a crashed process
    let url = server.url();
    let (b_rt, b) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let b = rt.block_on(async {
            let b = RateLimiter::builder()
                .sync_interval(Duration::from_millis(10))
                .redis_url(url)
                .prefix("dropped")
                .sweeper(false)
                .connect()
                .await
                .expect("connect");
            b.hybrid().flush().await.expect("sync");
            b
        });
        (rt, b)
    })
    .join()
    .expect("instance b");
    a.hybrid().flush().await.expect("sync");
    assert_eq!(a.hybrid().status().instances, 2);
    std::thread::spawn(move || b_rt.shutdown_background())
        .join()
        .expect("tear down");
    std::mem::forget(b);
    let start = Instant::now();
    let mut alone = false;
    while start.elapsed() < Duration::from_secs(2) {
        a.hybrid().flush().await.expect("sync");
        if a.hybrid().status().instances == 1 {
            alone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        alone,
        "the registry dropped the dead instance: {:?}",
        a.hybrid().status()
    );
    eprintln!("dead instance gone after {:?}", start.elapsed());
    // a's share is the whole limit again (it decides through Redis's count for a window
    // before it decides alone: b's admissions may still count)
    let r = rate(10.0);
    let admitted = (0..20)
        .filter(|_| a.hybrid().absolute().inc("k", &r, 1).is_allowed())
        .count();
    assert_eq!(admitted, 10, "the whole limit, C / 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inc_many_decides_like_local_and_reset_forgets_the_key_in_redis_too() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = instance(&server, "many").await;
    rl.hybrid().flush().await.expect("sync");
    let r = rate(3.0);
    let keys = ["a", "b", "a", "a", "c", "a", "b"];
    let hybrid = rl.hybrid().absolute().inc_many(&keys, &r, 1);
    let local = rl.local().absolute().inc_many(&keys, &r, 1);
    assert_eq!(
        hybrid, local,
        "a sole instance decides as the local provider"
    );
    rl.hybrid().flush().await.expect("sync");
    assert_eq!(redis_totals(&server, "many", "a").0, 3);
    assert!(rl.hybrid().absolute().reset("a"));
    assert!(!rl.hybrid().absolute().reset("never-seen"));
    rl.hybrid().flush().await.expect("sync");
    assert_eq!(
        redis_totals(&server, "many", "a"),
        (0, 0),
        "forgotten in Redis"
    );
    assert_eq!(redis_totals(&server, "many", "b").0, 2, "other keys kept");
    assert!(rl.hybrid().absolute().inc("a", &r, 1).is_allowed());
    rl.hybrid().flush().await.expect("sync");
    assert_eq!(redis_totals(&server, "many", "a").0, 1);
    // reset and used again before the next sync: the reset goes first, the new use counts
    assert!(rl.hybrid().absolute().reset("b"));
    assert!(rl.hybrid().absolute().inc("b", &r, 1).is_allowed());
    rl.hybrid().flush().await.expect("sync");
    assert_eq!(
        redis_totals(&server, "many", "b").0,
        1,
        "use after a reset in the same interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_far_below_its_limit_on_a_sole_instance_reports_within_ten_intervals() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let rl = instance(&server, "defer").await;
    rl.hybrid().flush().await.expect("sync");
    let r = rate(1000.0);
    assert!(rl.hybrid().absolute().inc("far", &r, 1).is_allowed());
    // no flush: only the timer's syncs (every 10 ms); the report may wait up to 10 of them
    let start = Instant::now();
    let mut reported = None;
    while start.elapsed() < Duration::from_secs(2) {
        if redis_totals(&server, "defer", "far").0 == 1 {
            reported = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = reported.expect("the timer's syncs report the key");
    eprintln!("reported after {after:?}");
    assert!(after < Duration::from_secs(1), "{after:?}");
}
