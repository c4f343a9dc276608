//! The sync actor: a tokio task, one per limiter, that wakes every sync interval, asks each
//! shard for its reports ([`Collect`], one message per shard), writes them to Redis in batched
//! script calls (`lua/hybrid_sync.lua`, grouped by hash slot), and sends each shard Redis's
//! answers ([`Settle`], one message per shard).
//!
//! A report becomes a *part* with the sync's sequence number. A part stays with the actor until
//! a call that carried it is answered; a failed call's parts go out again with the next sync,
//! each with its own sequence number, and the script applies a part only if its number is
//! above the last one it applied for this instance and key: a part whose reply was lost is
//! never counted twice. Parts older than their window are dropped (their weight no longer
//! counts anywhere) and counted in [`HybridStatus::dropped_parts`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot};

use super::state::{
    Answer, Collect, HybridCtx, HybridRules, HybridSuppressedRules, Report, Settle,
};
use crate::redis::{Conn, RedisError};
use crate::router::ShardSet;
use crate::time::ClockSource;

/// The sync script, embedded at compile time.
pub(crate) const SYNC_LUA: &str = include_str!("../../lua/hybrid_sync.lua");

/// Keys one script call carries at most.
const KEYS_PER_CALL: usize = 256;

/// Script calls of one sync in flight at once on a cluster (one call per hash slot, spread over
/// the primaries) and on a single server (which runs them one after another anyway: a few in
/// flight hide the round trip, more would only queue there and run into the deadline).
const CALLS_IN_FLIGHT_CLUSTER: usize = 64;
const CALLS_IN_FLIGHT_SINGLE: usize = 4;

/// The shard sets of the hybrid's two strategies.
pub(crate) struct Sets {
    pub(crate) absolute: ShardSet<HybridRules>,
    pub(crate) suppressed: ShardSet<HybridSuppressedRules>,
}

/// A key as the sync actor tracks it: `(suppressed strategy, key)` (the strategies keep
/// separate state, in Redis too).
type PartKey = (bool, String);

/// Settings of one sync actor.
#[derive(Clone, Debug)]
pub(crate) struct SyncConfig {
    pub(crate) interval: Duration,
    /// Reserves not refreshed for this long are released by Redis; an instance stops using a
    /// reserve half of it after the collect that reported under it.
    pub(crate) lease_ttl_ms: u64,
    /// Deadline of one script call.
    pub(crate) deadline: Duration,
    pub(crate) instance: String,
    pub(crate) prefix: String,
    pub(crate) registry_key: Vec<u8>,
    pub(crate) bucket_ms: u64,
    /// The limiter's window `W` (how long a reset waits for Redis).
    pub(crate) window_ms: u64,
}

/// What the sync actor has done (see [`HybridStatus`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) syncs: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Local ms of the last sync whose calls all succeeded (0: none yet).
    pub(crate) last_ok_ms: AtomicU64,
    pub(crate) pending_parts: AtomicU64,
    pub(crate) dropped_parts: AtomicU64,
    pub(crate) round_trips: AtomicU64,
    pub(crate) last_sync_ms: AtomicU64,
}

/// A snapshot of the hybrid provider's health.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HybridStatus {
    /// Sync cycles run.
    pub syncs: u64,
    /// Sync cycles with at least one failed Redis call.
    pub failures: u64,
    /// When the last fully successful sync started, on the limiter's clock (`None`: never).
    pub last_ok_ms: Option<u64>,
    /// Key reports waiting for Redis (kept and sent again until answered), including those of
    /// a sync in progress.
    pub pending_parts: u64,
    /// Reports (whole, or their deltas by bucket) dropped unsent because they had left their
    /// window (no longer counted anywhere).
    pub dropped_parts: u64,
    /// Redis script calls made.
    pub round_trips: u64,
    /// Live instances at the last successful sync.
    pub instances: u64,
    /// How long the last sync took, collect to settle, in ms. A sync slower than 4 intervals
    /// outlives the reserves it should refresh: Redis then counts them as admitted for a
    /// window (never fewer than were spent, possibly more), and throughput drops. Many keys
    /// on a Redis Cluster (one script call per hash slot) are the usual cause; a longer
    /// [`sync_interval`](crate::RateLimiterBuilder::sync_interval) is the remedy.
    pub last_sync_ms: u64,
}

impl Counters {
    pub(crate) fn status(&self, ctx: &HybridCtx) -> HybridStatus {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        HybridStatus {
            syncs: self.syncs.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_ok_ms: (last > 0).then_some(last),
            pending_parts: self.pending_parts.load(Ordering::Relaxed),
            dropped_parts: self.dropped_parts.load(Ordering::Relaxed),
            round_trips: self.round_trips.load(Ordering::Relaxed),
            instances: ctx.instances(),
            last_sync_ms: self.last_sync_ms.load(Ordering::Relaxed),
        }
    }
}

/// Requests to the sync actor.
#[derive(Debug)]
enum Command {
    /// Sync now; reply when done.
    Flush(oneshot::Sender<Result<(), RedisError>>),
    /// Sync giving every reserve back, leave the registry, stop.
    Shutdown(oneshot::Sender<Result<(), RedisError>>),
}

/// The provider's handle to its sync actor.
#[derive(Debug)]
pub(crate) struct SyncHandle {
    tx: mpsc::Sender<Command>,
}

impl SyncHandle {
    /// Starts the actor on the current tokio runtime.
    pub(crate) fn spawn(
        sets: Arc<Sets>,
        ctx: Arc<HybridCtx>,
        counters: Arc<Counters>,
        conn: Conn,
        clock: ClockSource,
        config: SyncConfig,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let actor = SyncActor {
            sets,
            ctx,
            counters,
            conn,
            clock,
            sha: redis::Script::new(SYNC_LUA).get_hash().to_string(),
            config,
            seq: 0,
            unacked: HashMap::new(),
            rx,
            started: false,
            offset_known: false,
            suspect: false,
        };
        actor.ctx.set_reporting(true);
        tokio::spawn(actor.run());
        Self { tx }
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), RedisError>>) -> Command,
    ) -> Result<(), RedisError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| RedisError::Shutdown)?;
        rx.await.map_err(|_| RedisError::Shutdown)?
    }

    pub(crate) async fn flush(&self) -> Result<(), RedisError> {
        self.ask(Command::Flush).await
    }

    pub(crate) async fn shutdown(&self) -> Result<(), RedisError> {
        self.ask(Command::Shutdown).await
    }
}

/// One report waiting for Redis.
#[derive(Clone, Debug)]
struct Part {
    seq: u64,
    /// Local ms of the collect that made it (of the last one merged into it, for a part not
    /// sent yet).
    at: u64,
    report: Report,
    /// Whether a call carried it (from then on it is sent again as it is, never merged: its
    /// number may have been applied).
    sent: bool,
}

/// Merges `later` into a part no call carried yet (so nothing of it can have been applied):
/// deltas by bucket, spent and returned reserve summed, the latest demand. Deltas whose bucket
/// has left its window by server time `server_now` are dropped (they no longer count anywhere);
/// returns how many.
fn merge_unsent(into: &mut Report, later: Report, server_now: u64, bucket_ms: u64) -> u64 {
    fn add(list: &mut Vec<(u64, u64)>, more: Vec<(u64, u64)>) {
        for (k, w) in more {
            match list.iter_mut().find(|(b, _)| *b == k) {
                Some((_, x)) => *x = x.saturating_add(w),
                None => list.push((k, w)),
            }
        }
    }
    add(&mut into.deltas, later.deltas);
    add(&mut into.declined, later.declined);
    into.used = into.used.saturating_add(later.used);
    into.release = into.release.saturating_add(later.release);
    into.want = later.want;
    into.window_ms = later.window_ms;
    into.capacity = later.capacity;
    let window = into.window_ms;
    let live = |&(k, _): &(u64, u64)| {
        (k.saturating_add(1))
            .saturating_mul(bucket_ms)
            .saturating_add(window)
            > server_now
    };
    let before = into.deltas.len() + into.declined.len();
    into.deltas.retain(live);
    into.declined.retain(live);
    (before - into.deltas.len() - into.declined.len()) as u64
}

/// A key's parts, oldest first.
#[derive(Debug)]
struct KeyParts {
    hash: u64,
    parts: Vec<Part>,
}

struct SyncActor {
    sets: Arc<Sets>,
    ctx: Arc<HybridCtx>,
    counters: Arc<Counters>,
    conn: Conn,
    clock: ClockSource,
    sha: String,
    config: SyncConfig,
    seq: u64,
    unacked: HashMap<PartKey, KeyParts>,
    rx: mpsc::Receiver<Command>,
    /// Whether the first-use sync ran.
    started: bool,
    /// Whether a clock offset was taken.
    offset_known: bool,
    /// Whether a call failed since the last answer: the next sync sends a PING first.
    suspect: bool,
}

/// What one call answered for one key: the answer to its last part.
struct KeyAnswer {
    key: PartKey,
    answer: Answer,
}

impl SyncActor {
    async fn run(mut self) {
        // The first sync is the one `connect` runs; the timer's start one interval later.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.interval,
            self.config.interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.ctx.is_active() {
                        let _ = self.cycle(false, false).await;
                    }
                }
                _ = self.ctx.activated.notified(), if !self.started => {
                    // first use: sync at once (register, learn the other instances)
                    let _ = self.cycle(false, false).await;
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Flush(reply)) => {
                        let r = self.cycle(false, true).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.ctx.set_reporting(false);
                        let r = self.cycle(true, true).await;
                        let left = self.leave().await;
                        let _ = reply.send(r.and(left));
                        return;
                    }
                    None => {
                        self.ctx.set_reporting(false);
                        // The limiter was dropped without a shutdown: give the reserves back.
                        if self.ctx.is_active() {
                            let _ = self.cycle(true, true).await;
                            let _ = self.leave().await;
                        }
                        return;
                    }
                }
            }
        }
    }

    fn half_ttl(&self) -> u64 {
        self.config.lease_ttl_ms / 2
    }

    /// One sync: collect, send, settle.
    async fn cycle(&mut self, release_all: bool, everything: bool) -> Result<(), RedisError> {
        #[cfg(feature = "metrics")]
        let (started, dropped_before) = (
            std::time::Instant::now(),
            self.counters.dropped_parts.load(Ordering::Relaxed),
        );
        let r = traced!(
            self.cycle_untraced(release_all, everything),
            "eyelet.hybrid.sync",
            release_all,
            everything
        )
        .await;
        #[cfg(feature = "metrics")]
        {
            let c = &self.counters;
            let last_ok = c.last_ok_ms.load(Ordering::Relaxed);
            crate::metrics::hybrid_sync(crate::metrics::SyncReport {
                prefix: &self.config.prefix,
                ok: r.is_ok(),
                took: started.elapsed(),
                // (never synced: the lag is unknown, shown as 0 until a first success)
                lag_ms: if last_ok == 0 {
                    0
                } else {
                    self.clock.now_ms().saturating_sub(last_ok)
                },
                pending: c.pending_parts.load(Ordering::Relaxed),
                dropped_now: c
                    .dropped_parts
                    .load(Ordering::Relaxed)
                    .saturating_sub(dropped_before),
                instances: self.ctx.instances(),
            });
        }
        r
    }

    async fn cycle_untraced(
        &mut self,
        release_all: bool,
        everything: bool,
    ) -> Result<(), RedisError> {
        self.started = true;
        let t0 = self.clock.now_ms();
        let interval_ms = self.config.interval.as_millis() as u64;
        self.ctx.set_next_sync_at(t0.saturating_add(interval_ms));
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        // Resets and reports get a sequence number each: a key reset and used again within one
        // interval has a reset part and then a report, and the script applies a part only
        // above the last number applied.
        self.seq += 1;
        let reset_seq = self.seq;
        self.seq += 1;
        let seq = self.seq;
        // Resets first: a key reset and used again within one interval reports its new use
        // after the reset.
        let resets: Vec<(bool, Report)> = self
            .ctx
            .take_resets()
            .into_iter()
            .map(|(sup, key)| {
                let hash = if sup {
                    self.sets.suppressed.hash_of(&key)
                } else {
                    self.sets.absolute.hash_of(&key)
                };
                let report = Report {
                    hash,
                    key,
                    window_ms: self.config.window_ms,
                    capacity: 0,
                    used: 0,
                    release: 0,
                    want: 0,
                    deltas: Vec::new(),
                    declined: Vec::new(),
                    reset: true,
                };
                (sup, report)
            })
            .collect();
        let collect = || Collect {
            release_all,
            everything,
        };
        // only the shards of a strategy in use (the other's hold nothing to report)
        let absolute = if self.ctx.strategy_used(false) {
            self.sets.absolute.each_shard_async(|_| collect()).await
        } else {
            Vec::new()
        };
        let suppressed = if self.ctx.strategy_used(true) {
            self.sets.suppressed.each_shard_async(|_| collect()).await
        } else {
            Vec::new()
        };
        let parts = resets
            .into_iter()
            .map(|r| (reset_seq, r))
            .chain(absolute.into_iter().flatten().map(|r| (seq, (false, r))))
            .chain(suppressed.into_iter().flatten().map(|r| (seq, (true, r))));
        // While Redis does not answer, reports pile up: one unsent part per key takes them all
        // (bounded by the window's buckets), so a long outage costs neither memory nor, when
        // Redis is back, a call per missed interval.
        let server_now = t0.saturating_add_signed(self.ctx.offset());
        let mut dropped = 0u64;
        for (seq, (sup, report)) in parts {
            let entry = self
                .unacked
                .entry((sup, report.key.clone()))
                .or_insert_with(|| KeyParts {
                    hash: report.hash,
                    parts: Vec::new(),
                });
            match entry.parts.last_mut() {
                Some(last) if !last.sent && !last.report.reset && !report.reset => {
                    dropped +=
                        merge_unsent(&mut last.report, report, server_now, self.config.bucket_ms);
                    last.at = t0;
                }
                _ => entry.parts.push(Part {
                    seq,
                    at: t0,
                    report,
                    sent: false,
                }),
            }
        }
        // A part older than its window counts nowhere any more: never send it again.
        self.unacked.retain(|_, kp| {
            kp.parts.retain(|p| {
                let keep = t0.saturating_sub(p.at) < p.report.window_ms;
                dropped += u64::from(!keep);
                keep
            });
            !kp.parts.is_empty()
        });
        self.counters
            .dropped_parts
            .fetch_add(dropped, Ordering::Relaxed);

        // what waits for Redis while this sync's calls run
        self.counters.pending_parts.store(
            self.unacked.values().map(|k| k.parts.len() as u64).sum(),
            Ordering::Relaxed,
        );
        let mut answers: Vec<KeyAnswer> = Vec::new();
        let mut result = Ok(());
        // After a failed call, a PING first: while the server does not answer, nothing more is
        // queued on its connection (a stalled server would otherwise run a backlog of script
        // calls, one per missed interval, when it resumes).
        if self.suspect {
            match self.ping().await {
                Ok(()) => self.suspect = false,
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() {
            let keys: Vec<PartKey> = self.unacked.keys().cloned().collect();
            // Several calls in flight: a sync of many keys (on a cluster, one call per hash
            // slot) would otherwise take a round trip per call, and outlive the reserves it
            // refreshes.
            let prepared: Vec<Prepared> = self
                .plan(keys)
                .into_iter()
                .enumerate()
                .filter_map(|(i, keys)| self.prepare(keys, i == 0))
                .collect();
            for p in &prepared {
                for (k, _) in &p.last_part {
                    if let Some(kp) = self.unacked.get_mut(k) {
                        kp.parts.iter_mut().for_each(|part| part.sent = true);
                    }
                }
            }
            let in_flight = if self.conn.is_cluster() {
                CALLS_IN_FLIGHT_CLUSTER
            } else {
                CALLS_IN_FLIGHT_SINGLE
            };
            let replies: Vec<_> = {
                let this = &*self;
                // collected first: a lazy map here trips the Send check of the spawned actor
                let calls: Vec<_> = prepared.iter().map(|p| this.send(p)).collect();
                futures_util::stream::iter(calls)
                    .buffered(in_flight)
                    .collect()
                    .await
            };
            for (p, reply) in prepared.into_iter().zip(replies) {
                let done: Vec<PartKey> = p.last_part.iter().map(|(k, _)| k.clone()).collect();
                match reply.and_then(|(nums, sent, received)| self.finish(p, &nums, sent, received))
                {
                    Ok(a) => {
                        for k in &done {
                            self.unacked.remove(k);
                        }
                        answers.extend(a);
                    }
                    Err(e) => {
                        self.suspect = true;
                        result = Err(e);
                    }
                }
            }
        }
        // After a burst of keys, do not keep a map sized for it.
        if self.unacked.capacity() > 4 * self.unacked.len().max(64) {
            self.unacked.shrink_to_fit();
        }
        self.counters.pending_parts.store(
            self.unacked.values().map(|k| k.parts.len() as u64).sum(),
            Ordering::Relaxed,
        );
        if result.is_ok() {
            let grace =
                self.config.deadline.as_millis() as u64 + self.config.interval.as_millis() as u64;
            self.ctx
                .set_healthy(t0.saturating_add(self.half_ttl()), grace);
            self.counters.last_ok_ms.store(t0.max(1), Ordering::Relaxed);
        } else {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.settle(answers, t0).await;
        self.counters
            .last_sync_ms
            .store(self.clock.now_ms().saturating_sub(t0), Ordering::Relaxed);
        result
    }

    /// Splits keys into script calls: by hash slot on a cluster, at most [`KEYS_PER_CALL`]
    /// keys each. The first call of a single-server sync also refreshes the registry, so an
    /// empty sync is one call (a heartbeat).
    fn plan(&self, mut keys: Vec<PartKey>) -> Vec<Vec<PartKey>> {
        if self.conn.is_cluster() {
            let mut by_slot: HashMap<u16, Vec<PartKey>> = HashMap::new();
            for k in keys {
                let slot = crate::redis::hybrid_slot(&crate::redis::hybrid_key(
                    &self.config.prefix,
                    k.0,
                    &k.1,
                ));
                by_slot.entry(slot).or_default().push(k);
            }
            let mut calls = vec![Vec::new()];
            for (_, ks) in by_slot {
                for chunk in ks.chunks(KEYS_PER_CALL) {
                    calls.push(chunk.to_vec());
                }
            }
            return calls;
        }
        keys.sort_unstable();
        let mut calls: Vec<Vec<PartKey>> = keys
            .chunks(KEYS_PER_CALL)
            .map(<[PartKey]>::to_vec)
            .collect();
        if calls.is_empty() {
            calls.push(Vec::new());
        }
        calls
    }

    /// Packs one script call for `keys` (registry refresh with it when `registry`); `None` when
    /// there is nothing to send.
    fn prepare(&self, keys: Vec<PartKey>, registry: bool) -> Option<Prepared> {
        let mut ops: Vec<u8> = Vec::new();
        let mut redis_keys: Vec<Vec<u8>> = Vec::with_capacity(keys.len() + 1);
        redis_keys.push(self.config.registry_key.clone());
        let mut last_part: Vec<(PartKey, u64)> = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(kp) = self.unacked.get(&key) else {
                continue;
            };
            let sup = key.0;
            redis_keys.push(crate::redis::hybrid_key(&self.config.prefix, sup, &key.1));
            let index = redis_keys.len() as f64;
            for p in &kp.parts {
                pack_part(&mut ops, index, p, sup);
            }
            let parts = kp.parts.len() as u64;
            last_part.push((key, parts));
        }
        if redis_keys.len() == 1 && !registry {
            return None;
        }
        // On a cluster the registry lives in its own slot: a call with keys leaves it alone and
        // names its first key in its place (every key of a call must share a slot).
        let refresh = registry && (redis_keys.len() == 1 || !self.conn.is_cluster());
        if !refresh && redis_keys.len() > 1 {
            redis_keys[0] = redis_keys[1].clone();
        }
        Some(Prepared {
            redis_keys,
            ops,
            refresh,
            last_part,
        })
    }

    /// Sends one prepared call (EVALSHA, then EVAL if the server lost the script); the reply's
    /// doubles, with the local ms it was sent and received.
    async fn send(&self, p: &Prepared) -> Result<(Vec<f64>, u64, u64), RedisError> {
        let deadline = self.config.deadline;
        let build = |verb: &str, script: &str| {
            let mut cmd = Cmd::new();
            cmd.arg(verb).arg(script).arg(p.redis_keys.len());
            for k in &p.redis_keys {
                cmd.arg(k.as_slice());
            }
            cmd.arg(self.config.instance.as_str())
                .arg(self.config.bucket_ms)
                .arg(self.config.lease_ttl_ms)
                .arg(p.ops.as_slice())
                .arg(if p.refresh { "1" } else { "0" })
                .arg(self.config.lease_ttl_ms)
                .arg("");
            cmd
        };
        let sent = self.clock.now_ms();
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let work = async {
            match conn.query(&build("EVALSHA", &self.sha)).await {
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    conn.query(&build("EVAL", SYNC_LUA)).await
                }
                r => r,
            }
        };
        let work = traced!(work, "eyelet.hybrid.script_call", keys = p.redis_keys.len());
        let value = match tokio::time::timeout(deadline, work).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(RedisError::from_client(&e, deadline)),
            Err(_) => return Err(RedisError::Timeout { deadline }),
        };
        Ok((decode(&value)?, sent, self.clock.now_ms()))
    }

    /// Reads one call's reply: the clock offset, the registry's count, each key's answer.
    fn finish(
        &mut self,
        p: Prepared,
        nums: &[f64],
        sent: u64,
        received: u64,
    ) -> Result<Vec<KeyAnswer>, RedisError> {
        let (server_now, instances) = match nums.get(..2) {
            Some(&[t, n]) => (t, n),
            _ => return Err(RedisError::Protocol("short hybrid sync reply".into())),
        };
        // The offset maps bucket starts to server time; only a quick round trip bounds its
        // error (by half the round trip), so slower samples are not taken unless none was.
        let rtt = received.saturating_sub(sent);
        if rtt <= self.config.bucket_ms || !self.offset_known {
            let mid = sent / 2 + received / 2;
            self.ctx.set_offset(server_now as i64 - mid as i64);
            self.offset_known = true;
        }
        if instances >= 1.0 {
            self.ctx.set_instances(instances as u64, received);
        }
        let mut out = Vec::with_capacity(p.last_part.len());
        let mut at = 2;
        for (key, parts) in p.last_part {
            let Some(kp) = self.unacked.get(&key) else {
                continue;
            };
            // per part: applied, R, live, free_at; suppressed parts add accepted, declined,
            // oldest
            let stride = if key.0 { 7 } else { 4 };
            let end = at + stride * parts as usize;
            let Some(last) = nums.get(end - stride..end) else {
                return Err(RedisError::Protocol("hybrid sync reply too short".into()));
            };
            let wanted = kp.parts.last().is_some_and(|p| p.report.want > 0);
            let extra = |i: usize| last.get(i).map_or(0, |&x| x as u64);
            out.push(KeyAnswer {
                key,
                answer: Answer {
                    hash: kp.hash,
                    reserve: last[1] as u64,
                    live: last[2] as u64,
                    wanted,
                    accepted: extra(4),
                    declined: extra(5),
                    oldest: extra(6),
                },
            });
            at = end;
        }
        Ok(out)
    }

    /// Sends each shard the answers for its keys.
    async fn settle(&self, answers: Vec<KeyAnswer>, t0: u64) {
        if answers.is_empty() {
            return;
        }
        let shards = self.sets.absolute.shard_count();
        let mut absolute: Vec<Vec<(String, Answer)>> = vec![Vec::new(); shards];
        let mut suppressed: Vec<Vec<(String, Answer)>> =
            vec![Vec::new(); self.sets.suppressed.shard_count()];
        for a in answers {
            let ((sup, key), answer) = (a.key, a.answer);
            let (list, s) = if sup {
                (&mut suppressed, self.sets.suppressed.shard_of(answer.hash))
            } else {
                (&mut absolute, self.sets.absolute.shard_of(answer.hash))
            };
            if let Some(v) = list.get_mut(s) {
                v.push((key, answer));
            }
        }
        let reserve_until = t0.saturating_add(self.half_ttl());
        let settle = |answers: Vec<(String, Answer)>| Settle {
            answers,
            reserve_until,
            settled_at: t0.max(1),
        };
        if absolute.iter().any(|a| !a.is_empty()) {
            let mut per_shard = absolute.into_iter();
            self.sets
                .absolute
                .each_shard_async(|_| settle(per_shard.next().unwrap_or_default()))
                .await;
        }
        if suppressed.iter().any(|a| !a.is_empty()) {
            let mut per_shard = suppressed.into_iter();
            self.sets
                .suppressed
                .each_shard_async(|_| settle(per_shard.next().unwrap_or_default()))
                .await;
        }
    }

    /// A PING within the deadline.
    async fn ping(&mut self) -> Result<(), RedisError> {
        let deadline = self.config.deadline;
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(deadline, self.conn.query(&redis::cmd("PING"))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RedisError::from_client(&e, deadline)),
            Err(_) => Err(RedisError::Timeout { deadline }),
        }
    }

    /// Leaves the registry (shutdown).
    async fn leave(&mut self) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.config.registry_key.as_slice())
            .arg(self.config.instance.as_str());
        let deadline = self.config.deadline;
        match tokio::time::timeout(deadline, self.conn.query(&cmd)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RedisError::from_client(&e, deadline)),
            Err(_) => Err(RedisError::Timeout { deadline }),
        }
    }
}

/// Appends part `p` of the key at `index` (into KEYS) to a call's parts, as the script reads
/// them.
fn pack_part(ops: &mut Vec<u8>, index: f64, p: &Part, sup: bool) {
    let r = &p.report;
    // flags: 1 = reset, 2 = suppressed (deltas are (k, accepted, declined))
    let flags = u8::from(r.reset) | (u8::from(sup) << 1);
    let d = if sup {
        r.deltas.len() + r.declined.len()
    } else {
        r.deltas.len()
    };
    for x in [
        index,
        p.seq as f64,
        r.window_ms as f64,
        r.capacity as f64,
        r.used as f64,
        r.release as f64,
        r.want as f64,
        f64::from(flags),
        d as f64,
    ] {
        ops.extend_from_slice(&x.to_le_bytes());
    }
    if sup {
        let accepted = r.deltas.iter().map(|&(k, w)| (k, w, 0));
        let declined = r.declined.iter().map(|&(k, x)| (k, 0, x));
        for (k, w, x) in accepted.chain(declined) {
            for v in [k, w, x] {
                ops.extend_from_slice(&(v as f64).to_le_bytes());
            }
        }
    } else {
        for &(k, w) in &r.deltas {
            ops.extend_from_slice(&(k as f64).to_le_bytes());
            ops.extend_from_slice(&(w as f64).to_le_bytes());
        }
    }
}

/// One script call, packed.
struct Prepared {
    redis_keys: Vec<Vec<u8>>,
    ops: Vec<u8>,
    refresh: bool,
    /// Each key of the call with its number of parts (the reply has one answer per part).
    last_part: Vec<(PartKey, u64)>,
}

/// The reply's doubles.
fn decode(v: &Value) -> Result<Vec<f64>, RedisError> {
    let bytes = match v {
        Value::BulkString(b) => b.as_slice(),
        other => {
            return Err(RedisError::Protocol(format!(
                "hybrid sync reply is not a string: {other:?}"
            )))
        }
    };
    if bytes.len() % 8 != 0 {
        return Err(RedisError::Protocol("hybrid sync reply length".into()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            f64::from_le_bytes(b)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(deltas: Vec<(u64, u64)>, used: u64, want: u64) -> Report {
        Report {
            key: "k".into(),
            hash: 0,
            window_ms: 1000,
            capacity: 100,
            used,
            release: 0,
            want,
            deltas,
            declined: vec![(7, 1)],
            reset: false,
        }
    }

    #[test]
    fn an_unsent_part_takes_later_reports_and_drops_deltas_that_left_the_window() {
        let mut a = report(vec![(1, 2), (150, 1)], 2, 4);
        // server time 1,600 ms, G = 10 ms, W = 1 s: bucket 1 ended at 20 ms + 1 s: gone
        let dropped = merge_unsent(&mut a, report(vec![(150, 3), (151, 1)], 3, 8), 1600, 10);
        assert_eq!(a.deltas, vec![(150, 4), (151, 1)]);
        assert_eq!(
            a.declined,
            Vec::<(u64, u64)>::new(),
            "bucket 7 left the window too"
        );
        assert_eq!((a.used, a.want, dropped), (5, 8, 2));
    }
}
