//! The shard router: ahash of the key picks the shard; one set of shards per strategy.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_utils::CachePadded;

use crate::decision::{RateLimitDecision, Stamped};
use crate::random::RandomSource;
use crate::rate::RateLimit;
use crate::shard::leases::LeaseTable;
use crate::shard::mailbox::{ActorCell, Call, Detach};
use crate::shard::stamps::StampTable;
use crate::shard::{
    BatchItem, Clear, Get, Inc, IncMany, IncManyAsync, KeyRef, Len, Reset, Shard, ShardActor,
    Shared, Strategy, Sweep, BATCH_MESSAGE_KEYS, SWEEP_BUDGET,
};
use crate::time::ClockSource;

/// All shards of one strategy.
pub(crate) struct ShardSet<S: Strategy> {
    shards: Box<[Shard<S>]>,
    /// `shards.len() - 1` (a power of two minus one).
    mask: usize,
    hasher: ahash::RandomState,
    /// Each shard's published rejections (absolute; empty otherwise), read without its token.
    stamps: Box<[Arc<StampTable>]>,
    /// Each shard's lease pools (absolute; empty otherwise), taken from without its token.
    leases: Box<[Arc<LeaseTable>]>,
    clock: ClockSource,
    /// How `acquire` waits.
    pacing: crate::acquire::Pacing,
}

impl<S: Strategy> ShardSet<S> {
    /// `count` must be a power of two.
    pub(crate) fn new(
        count: usize,
        shared: &Arc<Shared>,
        hasher: ahash::RandomState,
        rng: impl FnMut(usize) -> Box<dyn RandomSource>,
    ) -> Self
    where
        S: Strategy<Ctx = ()>,
    {
        Self::build(
            count,
            shared,
            hasher,
            rng,
            S::STAMPED || S::LEASED,
            Arc::new(()),
        )
    }

    /// [`new`](Self::new) for a strategy whose shards share `ctx`.
    #[cfg(feature = "redis")]
    pub(crate) fn with_ctx(
        count: usize,
        shared: &Arc<Shared>,
        hasher: ahash::RandomState,
        rng: impl FnMut(usize) -> Box<dyn RandomSource>,
        ctx: Arc<S::Ctx>,
    ) -> Self {
        Self::build(count, shared, hasher, rng, S::STAMPED || S::LEASED, ctx)
    }

    /// How `acquire` waits on this set's decisions.
    pub(crate) fn pacing(&self) -> crate::acquire::Pacing {
        self.pacing
    }

    /// The hash a key is routed and stored by.
    #[cfg(feature = "redis")]
    pub(crate) fn hash_of(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Number of shards.
    #[cfg(feature = "redis")]
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends `message(i)` to every shard `i` in turn from a task, collecting the replies.
    #[cfg(feature = "redis")]
    pub(crate) async fn each_shard_async<M>(
        &self,
        mut message: impl FnMut(usize) -> M,
    ) -> Vec<M::Reply>
    where
        M: Detach<ShardActor<S>> + Send,
        M::Reply: Send,
    {
        let mut out = Vec::with_capacity(self.shards.len());
        for (i, shard) in self.shards.iter().enumerate() {
            out.push(call_async(shard, message(i)).await);
        }
        out
    }

    /// [`new`](Self::new); `shortcuts` says whether absolute shards publish rejection stamps and
    /// lease pools (off only in tests that compare against the shards alone).
    fn build(
        count: usize,
        shared: &Arc<Shared>,
        hasher: ahash::RandomState,
        mut rng: impl FnMut(usize) -> Box<dyn RandomSource>,
        shortcuts: bool,
        ctx: Arc<S::Ctx>,
    ) -> Self {
        // Fingerprint seeds for long keys: random, like the key hasher.
        let seeds = (ahash::RandomState::new(), ahash::RandomState::new());
        let stamps: Box<[Arc<StampTable>]> = if shortcuts {
            (0..count)
                .map(|_| Arc::new(StampTable::new(seeds.clone())))
                .collect()
        } else {
            Box::new([])
        };
        let leases: Box<[Arc<LeaseTable>]> = if shortcuts {
            (0..count).map(|_| Arc::new(LeaseTable::new())).collect()
        } else {
            Box::new([])
        };
        let shards = (0..count)
            .map(|i| {
                CachePadded::new(ActorCell::new(ShardActor::new(
                    shared.clone(),
                    rng(i),
                    hasher.clone(),
                    stamps.get(i).cloned(),
                    leases.get(i).cloned(),
                    ctx.clone(),
                )))
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            mask: count - 1,
            shards,
            hasher,
            stamps,
            leases,
            clock: shared.clock.clone(),
            pacing: crate::acquire::Pacing::of(shared),
        }
    }

    #[inline]
    fn key<'a>(&self, key: &'a str) -> KeyRef<'a> {
        KeyRef {
            key: Cow::Borrowed(key),
            hash: self.hasher.hash_one(key),
        }
    }

    /// Shard of a hash. Uses bits 32.. so that the table inside the shard (low bits for the
    /// position, top 7 bits for the tag) still sees well-spread hashes.
    #[inline]
    pub(crate) fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.mask
    }

    #[inline]
    fn shard(&self, hash: u64) -> &ActorCell<ShardActor<S>> {
        &self.shards[self.shard_of(hash)]
    }

    /// The answer to this call without the shard's token, if a lease admits it or a published
    /// rejection gives it (see [`leases`](crate::shard::leases) and [`stamps`]).
    #[inline(always)]
    fn stamped(&self, key: &KeyRef<'_>, rate: &RateLimit, n: u64, record: bool) -> Option<Stamped> {
        let s = self.shard_of(key.hash);
        let table = self.stamps.get(s)?;
        if record && n > 0 {
            if let Some((at_ms, source)) = self.leases.get(s).and_then(|l| {
                l.take(
                    table,
                    key.key.as_bytes(),
                    key.hash,
                    rate.as_per_second().to_bits(),
                    n,
                    crate::shard::leases::my_lane(),
                    || self.clock.now_ms(),
                )
            }) {
                crate::metrics::decision(S::SERIES, &RateLimitDecision::Allowed);
                return Some(Stamped::new(
                    RateLimitDecision::Allowed,
                    at_ms,
                    crate::decision::Source::from_code(source),
                ));
            }
        }
        if !S::STAMPED {
            // (a leasing strategy that publishes no rejections: the hybrid's)
            return None;
        }
        let s = table.answer(
            key.key.as_bytes(),
            key.hash,
            rate.as_per_second().to_bits(),
            n,
            record,
            || self.clock.now_ms(),
        )?;
        if record {
            crate::metrics::decision(S::SERIES, &s.decision);
        }
        Some(s)
    }

    #[inline]
    pub(crate) fn inc(&self, key: &str, rate: &RateLimit, n: u64, record: bool) -> Stamped {
        let key = self.key(key);
        if let Some(s) = self.stamped(&key, rate, n, record) {
            return s;
        }
        self.shard(key.hash).call(Inc {
            key,
            rate: *rate,
            n,
            record,
        })
    }

    /// The async form of [`inc`](Self::inc). The shortcuts run at the first poll, not here: a
    /// future dropped unpolled records nothing (a lease's units are taken only when it runs).
    #[inline]
    pub(crate) fn inc_async<'a>(
        &'a self,
        key: &'a str,
        rate: &RateLimit,
        n: u64,
        record: bool,
    ) -> IncAsync<'a, S> {
        IncAsync {
            set: self,
            state: IncState::Start(Inc {
                key: self.key(key),
                rate: *rate,
                n,
                record,
            }),
        }
    }

    pub(crate) fn get(&self, key: &str) -> S::Snapshot {
        let key = self.key(key);
        self.shard(key.hash).call(Get { key })
    }

    pub(crate) fn get_async<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = S::Snapshot> + Send + 'a {
        let key = self.key(key);
        call_async(self.shard(key.hash), Get { key })
    }

    pub(crate) fn reset(&self, key: &str) -> bool {
        let key = self.key(key);
        self.shard(key.hash).call(Reset { key })
    }

    pub(crate) fn reset_async<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = bool> + Send + 'a {
        let key = self.key(key);
        call_async(self.shard(key.hash), Reset { key })
    }

    /// Groups requests `(key, weight)` by shard (counting sort, stable) into batch items, and
    /// returns the item range of each shard that has any. A batch on one shard (a hot key)
    /// skips the sort.
    fn group<'a>(
        &self,
        requests: impl Iterator<Item = (&'a str, u64)>,
    ) -> (Vec<BatchItem<'a>>, Vec<(usize, usize, usize)>) {
        let mut items: Vec<BatchItem<'a>> = requests
            .enumerate()
            .map(|(pos, (key, n))| BatchItem {
                key,
                hash: self.hasher.hash_one(key),
                pos,
                n,
            })
            .collect();
        let first = items.first().map_or(0, |it| self.shard_of(it.hash));
        if items.iter().all(|it| self.shard_of(it.hash) == first) {
            let len = items.len();
            return (items, vec![(first, 0, len)]);
        }
        let mut starts = vec![0usize; self.shards.len() + 1];
        for it in &items {
            starts[self.shard_of(it.hash) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let ranges: Vec<(usize, usize, usize)> = (0..self.shards.len())
            .filter(|&s| starts[s] < starts[s + 1])
            .map(|s| (s, starts[s], starts[s + 1]))
            .collect();
        let mut sorted = items.clone();
        for it in items.drain(..) {
            let s = self.shard_of(it.hash);
            sorted[starts[s]] = it;
            starts[s] += 1;
        }
        (sorted, ranges)
    }

    /// Decides `len` requests `(key, weight)` into `out` (cleared first), in input order per
    /// key.
    pub(crate) fn inc_many_into<'a>(
        &self,
        requests: impl Iterator<Item = (&'a str, u64)>,
        len: usize,
        rate: &RateLimit,
        record: bool,
        out: &mut Vec<RateLimitDecision>,
    ) {
        out.clear();
        if len == 0 {
            return;
        }
        // Every slot is written by its shard; the filler never admits.
        out.resize(len, RateLimitDecision::KeyCapacityExceeded);
        let (items, ranges) = self.group(requests);
        // Shards are visited one at a time in ascending order; no two tokens are ever held.
        // A shard's keys go in messages of at most `BATCH_MESSAGE_KEYS` (one turn each).
        for (shard, lo, hi) in ranges {
            for part in items[lo..hi].chunks(BATCH_MESSAGE_KEYS) {
                self.shards[shard].call(IncMany {
                    items: part,
                    out: out.as_mut_slice(),
                    rate: *rate,
                    record,
                });
            }
        }
    }

    /// Async [`inc_many_into`](Self::inc_many_into) into a new vector.
    pub(crate) async fn inc_many_async<'a>(
        &self,
        requests: impl Iterator<Item = (&'a str, u64)>,
        len: usize,
        rate: &RateLimit,
        record: bool,
    ) -> Vec<RateLimitDecision> {
        // Every slot is written by its shard; the filler never admits.
        let mut out = vec![RateLimitDecision::KeyCapacityExceeded; len];
        if len == 0 {
            return out;
        }
        let (items, ranges) = self.group(requests);
        for (shard, lo, hi) in ranges {
            for part in items[lo..hi].chunks(BATCH_MESSAGE_KEYS) {
                let msg = IncManyAsync {
                    items: part,
                    rate: *rate,
                    record,
                };
                for (pos, d) in call_async(&self.shards[shard], msg)
                    .await
                    .unwrap_or_default()
                {
                    if let Some(slot) = out.get_mut(pos) {
                        *slot = d;
                    }
                }
            }
        }
        out
    }

    /// One full cleanup pass over every shard, a bounded message at a time. Returns the number
    /// of keys evicted.
    pub(crate) fn sweep(&self) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut visited = 0;
            loop {
                let report = shard.call(Sweep {
                    budget: SWEEP_BUDGET,
                });
                removed += report.removed;
                visited += SWEEP_BUDGET;
                if visited >= report.len_before {
                    break;
                }
            }
        }
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.call(Len)).sum()
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            s.call(Clear);
        }
    }
}

/// Sends a message from an async caller; the message is detached (owned) only if it has to wait
/// in the mailbox.
fn call_async<'a, S, M>(
    cell: &'a ActorCell<ShardActor<S>>,
    msg: M,
) -> impl Future<Output = M::Reply> + Send + 'a
where
    S: Strategy,
    M: Detach<ShardActor<S>> + Send + 'a,
    M::Reply: Send,
{
    cell.call_async(msg)
}

/// The future of [`ShardSet::inc_async`]: written out rather than an `async` block so that it
/// holds the request once (the request, then the shard call that took it, in one place). A
/// hot key's decision is answered by a shortcut at the first poll, and a caller moves this
/// future a few times before that (into its own future, into a task): its size is most of
/// what an async decision costs there.
pub(crate) struct IncAsync<'a, S: Strategy> {
    set: &'a ShardSet<S>,
    state: IncState<'a, S>,
}

enum IncState<'a, S: Strategy> {
    Start(Inc<'a>),
    Calling(Call<'a, ShardActor<S>, Inc<'a>>),
    Done,
}

impl<S: Strategy> Unpin for IncAsync<'_, S> {}

impl<S: Strategy> Future for IncAsync<'_, S> {
    type Output = Stamped;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stamped> {
        let this = &mut *self;
        if let IncState::Start(_) = this.state {
            let IncState::Start(inc) = std::mem::replace(&mut this.state, IncState::Done) else {
                return Poll::Pending;
            };
            if let Some(s) = this.set.stamped(&inc.key, &inc.rate, inc.n, inc.record) {
                return Poll::Ready(s);
            }
            this.state = IncState::Calling(this.set.shard(inc.key.hash).call_async(inc));
        }
        match &mut this.state {
            IncState::Calling(call) => {
                let r = Pin::new(call).poll(cx);
                if r.is_ready() {
                    this.state = IncState::Done;
                }
                r
            }
            // polled after completion: never ready again (as an `async` block would panic)
            _ => Poll::Pending,
        }
    }
}

/// A future's output mapped to its decision alone (the handles' `inc_async`).
pub(crate) struct DecisionOf<F>(pub(crate) F);

impl<F: Future<Output = Stamped> + Unpin> Future for DecisionOf<F> {
    type Output = RateLimitDecision;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RateLimitDecision> {
        Pin::new(&mut self.0).poll(cx).map(|s| s.decision)
    }
}

#[cfg(all(test, not(eyelet_loom)))]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::random::SplitMix64;
    use crate::shard::Absolute;
    use crate::time::ManualClock;

    fn set(clock: &ManualClock, shortcuts: bool) -> ShardSet<Absolute> {
        set_of(clock, shortcuts, 4)
    }

    fn set_of(clock: &ManualClock, shortcuts: bool, shards: usize) -> ShardSet<Absolute> {
        set_with(clock, shortcuts, shards, Arc::new(()))
    }

    /// A set of `shards` shards at W = 1 s, G = 10 ms on `clock`, with or without `shortcuts`
    /// (stamps and leases).
    fn set_with<S: Strategy>(
        clock: &ManualClock,
        shortcuts: bool,
        shards: usize,
        ctx: Arc<S::Ctx>,
    ) -> ShardSet<S> {
        let shared = Arc::new(Shared {
            window_ms: 1000,
            bucket_ms: 10,
            hard_limit_factor: 1.0,
            stale_after_ms: 10_000,
            max_keys: usize::MAX,
            acquire_jitter: 0.0,
            live_keys: AtomicUsize::new(0),
            clock: ClockSource::Custom(Arc::new(clock.clone())),
        });
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        ShardSet::build(
            shards,
            &shared,
            hasher,
            |i| Box::new(SplitMix64::new(i as u64)),
            shortcuts,
            ctx,
        )
    }

    /// A xorshift stream for the random histories: `next(m)` in `0..m`.
    fn stream(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        }
    }

    /// One call through `with` (its shortcuts first, called directly so that what they
    /// answered is known) and through `without` (the shards alone): the answers must be equal.
    /// Returns the answer and whether a shortcut gave it.
    fn both_answer<S: Strategy>(
        with: &ShardSet<S>,
        without: &ShardSet<S>,
        key: &str,
        rate: &RateLimit,
        n: u64,
        record: bool,
        at: &str,
    ) -> (Stamped, bool) {
        let kr = with.key(key);
        let (a, shortcut) = match with.stamped(&kr, rate, n, record) {
            Some(s) => (s, true),
            None => (with.inc(key, rate, n, record), false),
        };
        let b = without.inc(key, rate, n, record);
        assert_eq!(a, b, "{at}: {key} {rate:?} n={n} record={record}");
        (a, shortcut)
    }

    #[test]
    fn stamps_and_leases_answer_exactly_like_the_shards_alone() {
        // Random calls on a few keys (short and long) at rates whose windows and capacities
        // differ, so spans grow, are confirmed and shrink while stamps and pools are out, hot
        // keys get pools and run them dry, buckets close on unspent units; weights, probes,
        // reads, resets and sweeps. Every answer and every read must be the shards' own.
        let keys = ["a", "b", "a key longer than sixteen bytes", "c", "d", "e"];
        let rates: Vec<RateLimit> = [2.0, 5.0, 0.5, 300.0, 5000.0, 40.0]
            .iter()
            .map(|&r| RateLimit::try_from(r).unwrap_or(RateLimit::ONE))
            .collect();
        for seed in 1..=16u64 {
            let clock = ManualClock::new();
            let (with, without) = (set(&clock, true), set(&clock, false));
            let mut next = stream(seed);
            let (mut from_stamps, mut from_leases) = (0, 0);
            for step in 0..40_000 {
                clock.advance(std::time::Duration::from_millis(
                    [0, 0, 0, 1, 3, 7, 60, 400][next(8) as usize],
                ));
                let k = next(keys.len() as u64) as usize;
                let key = keys[k];
                // Mostly each key's own rate and weight 1 (so rejections repeat and hot keys
                // get pools), sometimes any.
                let rate = if next(10) == 0 {
                    rates[next(rates.len() as u64) as usize]
                } else {
                    rates[k]
                };
                let n = if next(4) == 0 { next(4) } else { 1 };
                match next(400) {
                    0 => {
                        assert_eq!(with.reset(key), without.reset(key));
                        continue;
                    }
                    1 => {
                        assert_eq!(with.get(key), without.get(key), "seed {seed} step {step}");
                        continue;
                    }
                    2 => {
                        with.sweep();
                        without.sweep();
                        continue;
                    }
                    _ => {}
                }
                let record = next(6) != 0;
                let at = format!("seed {seed} step {step}");
                if let (a, true) = both_answer(&with, &without, key, &rate, n, record, &at) {
                    if a.decision.is_allowed() {
                        from_leases += 1;
                    } else {
                        from_stamps += 1;
                    }
                }
            }
            for key in keys {
                assert_eq!(with.get(key), without.get(key), "seed {seed} at the end");
            }
            assert!(from_stamps > 500, "stamps answered {from_stamps}");
            assert!(from_leases > 200, "leases answered {from_leases}");
        }
    }

    /// The hybrid absolute strategy's shards (every mode: sole instance, reserves, room,
    /// shares, outage) answer and report exactly as without leases, through collects and
    /// settles of a model Redis: a lease only moves admissions the shard would make anyway
    /// off its token, and its unspent units are back before any report or answer.
    #[cfg(feature = "redis")]
    #[test]
    fn hybrid_leases_answer_and_report_exactly_like_the_shards_alone() {
        use crate::hybrid::{Answer, Collect, HybridCtx, HybridRules, OutagePolicy, Settle};
        use std::collections::HashMap;

        let keys = ["a", "b", "a key longer than sixteen bytes", "c"];
        let rates: Vec<RateLimit> = [300.0, 2000.0, 40.0, 5000.0]
            .iter()
            .map(|&r| RateLimit::try_from(r).unwrap_or(RateLimit::ONE))
            .collect();
        let policies = [
            OutagePolicy::LocalShare,
            OutagePolicy::FailOpen,
            OutagePolicy::FailClosed,
        ];
        let mut from_leases: HashMap<crate::decision::Source, usize> = HashMap::new();
        for seed in 1..=12u64 {
            let clock = ManualClock::new();
            clock.set_ms(1);
            let policy = policies[seed as usize % policies.len()];
            let make = |shortcuts: bool| {
                let ctx = Arc::new(HybridCtx::new(policy, 1000));
                ctx.set_reporting(true);
                let set: ShardSet<HybridRules> = set_with(&clock, shortcuts, 2, ctx.clone());
                (set, ctx)
            };
            let ((with, ctx_a), (without, ctx_b)) = (make(true), make(false));
            let both = |f: &dyn Fn(&HybridCtx)| {
                f(&ctx_a);
                f(&ctx_b);
            };
            let mut next = stream(seed);
            // the model Redis: what each key has live
            let mut live: HashMap<String, u64> = HashMap::new();
            let mut next_sync = 10;
            let mut instances = 1;
            for step in 0..30_000 {
                clock.advance(std::time::Duration::from_millis(
                    [0, 0, 0, 0, 1, 2, 5, 30][next(8) as usize],
                ));
                let now = clock.ms();
                // the last part of each history runs as after a shutdown: no sync actor, no
                // books kept for reports (leases still granted, on the window alone)
                if step == 24_000 {
                    both(&|c| c.set_reporting(false));
                }
                if now >= next_sync && step < 24_000 {
                    next_sync = now + 10;
                    // a sync: collect from both, the same reports; the same answers back
                    let collect = |set: &ShardSet<HybridRules>| {
                        let mut all: Vec<_> = set
                            .shards
                            .iter()
                            .flat_map(|s| {
                                s.call(Collect {
                                    release_all: false,
                                    everything: false,
                                })
                            })
                            .collect();
                        all.sort_by(|a, b| a.key.cmp(&b.key));
                        all
                    };
                    let (ra, rb) = (collect(&with), collect(&without));
                    assert_eq!(ra, rb, "seed {seed} step {step}: reports");
                    // Redis is sometimes slow or away (the answers come late or not at all:
                    // the shards drift into the outage policy), and instances come and go.
                    if next(60) == 0 {
                        instances = [1, 1, 2, 3][next(4) as usize];
                    }
                    if next(8) != 0 {
                        both(&|c| {
                            c.set_instances(instances, now);
                            c.set_healthy_until(now + 20);
                        });
                        let answers: Vec<(String, Answer)> = ra
                            .iter()
                            .map(|r| {
                                let l = live.entry(r.key.clone()).or_default();
                                *l = (*l + r.deltas.iter().map(|d| d.1).sum::<u64>())
                                    % (r.capacity + 1);
                                // generous at times (hot keys then get leases out of it)
                                let reserve = (r.want * [1, 1, 20][next(3) as usize])
                                    .min(r.capacity.saturating_sub(*l));
                                (
                                    r.key.clone(),
                                    Answer {
                                        hash: r.hash,
                                        reserve,
                                        live: *l,
                                        wanted: r.want > 0,
                                        ..Default::default()
                                    },
                                )
                            })
                            .collect();
                        for set in [&with, &without] {
                            for shard in set.shards.iter() {
                                shard.call(Settle {
                                    answers: answers.clone(),
                                    reserve_until: now + 40,
                                    settled_at: now,
                                });
                            }
                        }
                    }
                }
                let k = next(keys.len() as u64) as usize;
                let key = keys[k];
                let rate = if next(10) == 0 {
                    rates[next(rates.len() as u64) as usize]
                } else {
                    rates[k]
                };
                let n = if next(4) == 0 { next(4) } else { 1 };
                match next(300) {
                    0 => {
                        assert_eq!(with.get(key), without.get(key), "seed {seed} step {step}");
                        continue;
                    }
                    1 => {
                        with.sweep();
                        without.sweep();
                        continue;
                    }
                    _ => {}
                }
                let record = next(8) != 0;
                let at = format!("seed {seed} step {step}");
                if let (a, true) = both_answer(&with, &without, key, &rate, n, record, &at) {
                    assert!(
                        a.decision.is_allowed(),
                        "the hybrid publishes no rejections"
                    );
                    *from_leases.entry(a.source).or_default() += 1;
                }
            }
            for key in keys {
                assert_eq!(with.get(key), without.get(key), "seed {seed} at the end");
            }
        }
        eprintln!("leases answered {from_leases:?}");
        // every mode served some
        use crate::decision::Source::*;
        for source in [HybridSolo, HybridReserve, HybridProvisional, HybridOutage] {
            let n = from_leases.get(&source).copied().unwrap_or(0);
            assert!(n > 100, "leases answered {from_leases:?}");
        }
    }

    /// A key that went quiet while holding a reserve reports only to keep the reserve alive
    /// (once it is half used up) and to give it back (after `KEEP_IDLE` idle collects): before,
    /// each idle collect sent Redis a report with nothing in it.
    #[cfg(feature = "redis")]
    #[test]
    fn a_quiet_key_holding_a_reserve_reports_only_to_give_it_back() {
        use crate::hybrid::{Answer, Collect, HybridCtx, HybridRules, OutagePolicy, Settle};

        let clock = ManualClock::new();
        clock.set_ms(1);
        let ctx = Arc::new(HybridCtx::new(OutagePolicy::LocalShare, 1000));
        ctx.set_reporting(true);
        ctx.set_instances(2, 1);
        ctx.set_healthy_until(u64::MAX);
        let set: ShardSet<HybridRules> = set_with(&clock, true, 1, ctx);
        let rate = RateLimit::try_from(100.0).unwrap_or(RateLimit::ONE);
        let collect = |everything: bool| {
            clock.advance(std::time::Duration::from_millis(10));
            set.shards[0].call(Collect {
                release_all: false,
                everything,
            })
        };
        // Redis's answer to a report: a reserve of 2 for the next 40 ms
        let settle = |hash: u64, live: u64, wanted: bool| {
            let now = clock.ms();
            set.shards[0].call(Settle {
                answers: vec![(
                    "k".to_string(),
                    Answer {
                        hash,
                        reserve: 2,
                        live,
                        wanted,
                        ..Default::default()
                    },
                )],
                reserve_until: now + 40,
                settled_at: now,
            });
        };
        // used in one interval: reported, asking for no reserve
        assert!(set.inc("k", &rate, 1, true).decision.is_allowed());
        let once = collect(false);
        assert_eq!(once.len(), 1);
        assert_eq!(once[0].want, 0, "a key used once asks for nothing");
        // used again the next interval: asks for twice the interval's demand
        assert!(set.inc("k", &rate, 1, true).decision.is_allowed());
        let first = collect(false);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].want, 2, "twice the interval's demand");
        settle(first[0].hash, 1, true);
        // idle: the first collect finds nothing to say; the second, in the second half of the
        // reserve's use (40 ms from the settle), keeps it alive (its answer extends the use)
        assert!(collect(false).is_empty(), "the first idle collect reported");
        let refresh = collect(false);
        assert_eq!(refresh.len(), 1);
        assert_eq!(
            (refresh[0].release, refresh[0].want, refresh[0].used),
            (0, 0, 0)
        );
        settle(refresh[0].hash, 1, false);
        // the third idle collect has nothing to say, the fourth gives the reserve back
        assert!(collect(false).is_empty(), "the third idle collect reported");
        let back = collect(false);
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].release, back[0].want, back[0].used), (2, 0, 0));
        assert!(back[0].deltas.is_empty());
        assert!(collect(false).is_empty(), "nothing left to report");
        // a flush still reports a quiet key holding a reserve
        assert!(set.inc("k", &rate, 1, true).decision.is_allowed());
        let _ = collect(false);
        assert!(set.inc("k", &rate, 1, true).decision.is_allowed());
        let used = collect(false);
        assert_eq!(used[0].want, 2);
        settle(used[0].hash, 2, true);
        let flushed = collect(true);
        assert_eq!(flushed.len(), 1, "a flush reports every key with a reserve");
    }

    #[test]
    fn unspent_units_go_back_to_their_key_when_other_keys_are_removed() {
        // One shard: "b" and "c" are inserted before the hot key "a", whose pool is out when
        // "b" is reset and "c" swept (removals move the last entry, "a"). Its unspent units must
        // still go back to "a" (and only to it).
        let clock = ManualClock::new();
        let (with, without) = (set_of(&clock, true, 1), set_of(&clock, false, 1));
        let (rate, slow) = (
            RateLimit::try_from(1000.0).unwrap_or(RateLimit::ONE),
            RateLimit::try_from(2.0).unwrap_or(RateLimit::ONE),
        );
        let both = |key: &str, r: &RateLimit| {
            let (a, b) = (with.inc(key, r, 1, true), without.inc(key, r, 1, true));
            assert_eq!(a, b, "{key}");
            a
        };
        both("b", &slow);
        both("c", &slow);
        clock.set_ms(10_005);
        both("b", &slow);
        for _ in 0..3 {
            both("a", &rate);
        }
        assert!(with.reset("b") && without.reset("b"));
        clock.set_ms(10_020);
        with.sweep();
        without.sweep();
        assert_eq!(with.get("c"), 0, "c was idle and swept");
        // the pool's bucket closed: its unspent units went back to "a" before the removals
        assert_eq!(with.get("a"), without.get("a"));
        assert_eq!(with.get("a"), 3);
        for _ in 0..1200 {
            both("a", &rate);
        }
        assert_eq!(with.get("a"), without.get("a"));
    }

    #[test]
    fn a_batch_at_a_larger_capacity_retires_the_pool_of_a_smaller_one() {
        // A pool granted at 100/s (C = 100) must not admit once a batch at 1000/s (C = 1000)
        // filled the window past 100.
        let clock = ManualClock::new();
        let (with, without) = (set(&clock, true), set(&clock, false));
        let (small, big) = (
            RateLimit::try_from(100.0).unwrap_or(RateLimit::ONE),
            RateLimit::try_from(1000.0).unwrap_or(RateLimit::ONE),
        );
        let both = |n: u64, r: &RateLimit| {
            let (a, b) = (with.inc("k", r, n, true), without.inc("k", r, n, true));
            assert_eq!(a, b, "inc n={n}");
        };
        both(1, &small);
        clock.set_ms(1);
        both(1, &small); // hot: a pool of 100/s units is out
        clock.set_ms(2);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        with.inc_many_into([("k", 900)].into_iter(), 1, &big, true, &mut a);
        without.inc_many_into([("k", 900)].into_iter(), 1, &big, true, &mut b);
        assert_eq!(a, b);
        clock.set_ms(3);
        for _ in 0..30 {
            both(1, &small);
        }
        assert_eq!(with.get("k"), without.get("k"));
    }
}
