//! Shard actors: each owns the windows of its keys and processes typed messages, executed by its
//! callers through the [`mailbox`] protocol (no thread of its own, no lock around the windows).

pub(crate) mod leases;
pub(crate) mod mailbox;
pub(crate) mod stamps;
mod store;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::decision::{RateLimitDecision, Source, Stamped, SuppressedSnapshot, RETRY_NEVER};
use crate::math::{
    decide_absolute_deferred, decide_suppressed, suppressed_snapshot, Count, Request, RingWrite,
    SuppressedKey, Window,
};
use crate::random::RandomSource;
use crate::rate::{Limits, RateLimit};
use crate::time::ClockSource;
use leases::LeaseTable;
use mailbox::{ActorCell, Detach, Message};
use stamps::{Stamp, StampTable};
pub(crate) use store::Slot;
use store::{CacheLine, Store};

/// Entries a sweep message visits before the executor lets others in.
pub(crate) const SWEEP_BUDGET: usize = 256;
/// Keys one batch message carries at most: a larger `inc_many` on one shard is sent as several
/// messages, so that one batch takes at most one executor turn ([`mailbox::MAX_TURN`] items)
/// and other callers get in between.
pub(crate) const BATCH_MESSAGE_KEYS: usize = mailbox::MAX_TURN;
/// Entries scanned for an expired key to replace when the key cap is reached.
pub(crate) const EVICT_SCAN: usize = 64;

/// Limiter-wide settings every shard reads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) window_ms: u64,
    pub(crate) bucket_ms: u64,
    pub(crate) hard_limit_factor: f64,
    pub(crate) stale_after_ms: u64,
    /// `usize::MAX` when unlimited.
    pub(crate) max_keys: usize,
    /// `acquire` waits are stretched by up to this fraction at random.
    pub(crate) acquire_jitter: f64,
    /// Keys alive across all shards of both strategies (maintained only when capped).
    pub(crate) live_keys: AtomicUsize,
    pub(crate) clock: ClockSource,
}

/// What a strategy stores per key and how it decides.
pub(crate) trait Strategy: Send + 'static {
    type Value: Default + Send + Slot + 'static;
    /// What every shard of a set shares besides [`Shared`] (the hybrid's sync state).
    type Ctx: Send + Sync + 'static;
    type Snapshot: Send + 'static;
    /// A write a decision may leave for the shard's next message (see
    /// [`RingWrite`](crate::math::RingWrite)).
    type Later: Copy + Send + 'static;

    fn decide(
        value: &mut Self::Value,
        now: u64,
        bucket_ms: u64,
        req: Request,
        rng: &mut dyn RandomSource,
        later: &mut Option<Self::Later>,
        ctx: &Self::Ctx,
    ) -> RateLimitDecision;

    /// The `eyelet_decisions_total` series its decisions count in (feature `metrics`).
    const SERIES: crate::metrics::Series;

    /// Whether decisions have other sources than [`Source::Local`] (then [`source`] is asked
    /// after each; the local strategies skip that write on their hot path).
    ///
    /// [`source`]: Strategy::source
    const SOURCED: bool = false;

    /// What the last decision on `value` was based on.
    #[inline(always)]
    fn source(_value: &Self::Value) -> Source {
        Source::Local
    }

    /// Whether values ask to be listed for a later visit ([`ShardActor::drain_marked`]).
    const MARKS: bool = false;

    /// After a decision: whether `value` now asks to be listed (and was not yet).
    #[inline(always)]
    fn mark(_value: &mut Self::Value) -> bool {
        false
    }

    /// Makes a write `decide` left for later.
    fn apply(value: &mut Self::Value, later: Self::Later);

    fn snapshot(value: Option<&Self::Value>, now: u64, shared: &Shared) -> Self::Snapshot;

    fn window_is_empty(value: &Self::Value) -> bool;

    /// Start of the newest bucket and whether any bucket may still be live at `now`.
    fn activity(value: &Self::Value, now: u64) -> (Option<u64>, bool);

    /// Whether the shard publishes rejections as [`stamps`] (absolute only).
    const STAMPED: bool = false;

    /// Whether the shard serves [`leases`] (absolute, local and hybrid; the hooks below matter
    /// only then, and their defaults suit every other strategy).
    const LEASED: bool = false;

    /// Until when a recording call at `w_eff` leaves the key's span state alone (see
    /// [`Window::span_steady_until`]); reads only the window's header.
    #[inline(always)]
    fn span_steady_until(_value: &Self::Value, now: u64, _w_eff: u64) -> u64 {
        now
    }

    /// Whether a decision of `req` could reject with everything held counted (unspent lease
    /// units included): only then do the units have to be reclaimed first.
    #[inline(always)]
    fn may_reject(_value: &Self::Value, _req: &Request) -> bool {
        true
    }

    /// Records a lease right after an admission at capacity `cap`: a quarter of the room left
    /// (at most `max` units), joining the newest bucket, if that is at least `min` units.
    /// Returns the units, until when they may be taken (at most `bucket_until`, the end of
    /// what the bucket and the key's span allow) and the write left for later.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn lease(
        _value: &mut Self::Value,
        _now: u64,
        _g: u64,
        _w_eff: u64,
        _cap: u64,
        _units: (u64, u64),
        _bucket_until: u64,
        _ctx: &Self::Ctx,
    ) -> Option<(u64, u64, Option<Self::Later>)> {
        None
    }

    /// Returns unspent lease units to the bucket starting at `start`.
    #[inline(always)]
    fn return_units(_value: &mut Self::Value, _start: u64, _units: u64, _ctx: &Self::Ctx) {}
}
impl Slot for Window<Count> {
    /// Key (16) + window (48) = one cache line.
    type Align = CacheLine;
}

impl Slot for SuppressedKey {
    type Align = u64;
}

/// The absolute strategy's per-key state and rules.
#[derive(Debug)]
pub(crate) struct Absolute;

impl Strategy for Absolute {
    const SERIES: crate::metrics::Series = crate::metrics::Series::LocalAbsolute;
    type Value = Window<Count>;
    type Ctx = ();
    type Snapshot = u64;
    type Later = RingWrite<Count>;

    #[inline(always)]
    fn decide(
        value: &mut Window<Count>,
        now: u64,
        bucket_ms: u64,
        req: Request,
        _rng: &mut dyn RandomSource,
        later: &mut Option<RingWrite<Count>>,
        _ctx: &(),
    ) -> RateLimitDecision {
        decide_absolute_deferred(value, now, bucket_ms, req, later)
    }

    #[inline(always)]
    fn apply(value: &mut Window<Count>, later: RingWrite<Count>) {
        value.apply(later);
    }

    fn snapshot(value: Option<&Window<Count>>, now: u64, _shared: &Shared) -> u64 {
        value.map_or(0, |w| w.live_untrimmed(now, w.span_ms()))
    }

    fn window_is_empty(value: &Window<Count>) -> bool {
        value.is_empty()
    }

    fn activity(value: &Window<Count>, now: u64) -> (Option<u64>, bool) {
        (value.newest_start(), value.may_be_live(now))
    }

    const STAMPED: bool = true;
    const LEASED: bool = true;

    fn span_steady_until(value: &Window<Count>, now: u64, w_eff: u64) -> u64 {
        value.span_steady_until(now, w_eff)
    }

    #[inline(always)]
    fn may_reject(value: &Window<Count>, req: &Request) -> bool {
        value.total_held().saturating_add(req.n.max(1)) > req.limits.capacity
    }

    fn lease(
        value: &mut Window<Count>,
        now: u64,
        g: u64,
        w_eff: u64,
        cap: u64,
        (min, max): (u64, u64),
        bucket_until: u64,
        _ctx: &(),
    ) -> Option<(u64, u64, Option<RingWrite<Count>>)> {
        let units = (cap.saturating_sub(value.total_held()) / 4).min(max);
        if units < min {
            return None;
        }
        Some((
            units,
            bucket_until,
            value.record_deferred(now, g, w_eff, units),
        ))
    }

    fn return_units(value: &mut Window<Count>, start: u64, units: u64, _ctx: &()) {
        value.return_units(start, units);
    }
}

/// The suppressed strategy's per-key state and rules.
#[derive(Debug)]
pub(crate) struct Suppressed;

impl Strategy for Suppressed {
    const SERIES: crate::metrics::Series = crate::metrics::Series::LocalSuppressed;
    type Value = SuppressedKey;
    type Ctx = ();
    type Snapshot = SuppressedSnapshot;
    /// Suppressed decisions write at once.
    type Later = std::convert::Infallible;

    fn apply(_: &mut SuppressedKey, later: std::convert::Infallible) {
        match later {}
    }

    #[inline]
    fn decide(
        value: &mut SuppressedKey,
        now: u64,
        bucket_ms: u64,
        req: Request,
        rng: &mut dyn RandomSource,
        _later: &mut Option<std::convert::Infallible>,
        _ctx: &(),
    ) -> RateLimitDecision {
        // A panicking custom random source is contained (it runs inside an executor serving
        // other callers): the draw falls back to 0.5.
        let draw = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rng.next_f64())).unwrap_or(0.5)
        };
        decide_suppressed(value, now, bucket_ms, req, draw)
    }

    fn snapshot(value: Option<&SuppressedKey>, now: u64, shared: &Shared) -> SuppressedSnapshot {
        value.map_or_else(SuppressedSnapshot::default, |k| {
            suppressed_snapshot(k, now, shared.bucket_ms)
        })
    }

    fn window_is_empty(value: &SuppressedKey) -> bool {
        value.window.is_empty()
    }

    fn activity(value: &SuppressedKey, now: u64) -> (Option<u64>, bool) {
        (value.window.newest_start(), value.window.may_be_live(now))
    }
}

/// The state one shard actor owns.
///
/// `repr(C)`, written fields first: the fields every decision writes (`later`, `last_now`) sit
/// on the cache line of the cell's run token (which every decision writes anyway), so a shard
/// used from two cores alternately moves one written line between them, not two or three; the
/// rest is read-mostly and stays shared.
#[repr(C)]
pub(crate) struct ShardActor<S: Strategy> {
    /// The write the last decision left for later, with its entry's index: made at the start
    /// of the next access to the store, before anything can read it or move the entry.
    later: Option<(u32, S::Later)>,
    last_now: u64,
    bucket_ms: u64,
    /// The limits of the last rate seen (most calls repeat it): `(rate bits, limits)`.
    last_limits: (u64, Limits),
    /// Read and changed only through [`store`](Self::store), which first makes the pending
    /// write.
    store: Store<S::Value>,
    rng: Box<dyn RandomSource>,
    /// Copies of the hot settings, so a decision does not chase the `Shared` pointer.
    clock: ClockSource,
    shared: Arc<Shared>,
    /// Where this shard publishes its rejections (absolute shards).
    stamps: Option<Arc<StampTable>>,
    /// Where this shard publishes its leases (absolute shards), and what it granted in each
    /// slot: the entry, its hash and the start of the bucket that holds the units.
    leases: Option<Arc<LeaseTable>>,
    granted: [Option<Granted>; leases::SLOTS],
    ctx: Arc<S::Ctx>,
    /// What the last decision was based on.
    last_source: Source,
    /// Entries whose values asked to be visited (`S::MARKS`); a removal may move an entry, so
    /// the store records where entries moved to ([`Store::take_moves`]).
    marked: Vec<u32>,
}

/// A lease the shard granted (its actor-side record).
#[derive(Clone, Copy, Debug)]
struct Granted {
    idx: usize,
    hash: u64,
    start: u64,
    /// The rate the pool admits at: its capacity bounds the total with unspent units.
    rate_bits: u64,
}

impl<S: Strategy> ShardActor<S> {
    /// `hasher` must be the one callers hash keys with (`hash_one(&str)`); `stamps` is the
    /// table the shard's callers read rejections from (used when `S::STAMPED`).
    pub(crate) fn new(
        shared: Arc<Shared>,
        rng: Box<dyn RandomSource>,
        hasher: ahash::RandomState,
        stamps: Option<Arc<StampTable>>,
        leases: Option<Arc<LeaseTable>>,
        ctx: Arc<S::Ctx>,
    ) -> Self {
        Self {
            ctx,
            last_source: Source::Local,
            marked: Vec::new(),
            // a leasing shard needs the stamp table's fingerprints even if it publishes no
            // rejections
            stamps: stamps.filter(|_| S::STAMPED || S::LEASED),
            leases: leases.filter(|_| S::LEASED),
            granted: [None; leases::SLOTS],
            store: {
                #[allow(unused_mut)]
                let mut store = Store::new(hasher);
                #[cfg(feature = "redis")]
                if S::MARKS {
                    store.track_moves();
                }
                store
            },
            later: None,
            last_now: 0,
            last_limits: (
                RateLimit::ONE.as_per_second().to_bits(),
                Limits::new(shared.window_ms, &RateLimit::ONE, shared.hard_limit_factor),
            ),
            rng,
            clock: shared.clock.clone(),
            bucket_ms: shared.bucket_ms,
            shared,
        }
    }

    /// What the shards of this set share.
    #[cfg(feature = "redis")]
    pub(crate) fn ctx(&self) -> &S::Ctx {
        &self.ctx
    }

    /// Visits the values that asked for it since the last drain: `f(key, hash, value)`
    /// returns whether the value stays listed for the next drain. Removals move entries, so
    /// the visit also covers every index an entry moved into (each index once), and `f` may
    /// see values that did not ask (it must tell them apart); every value if the moves were
    /// not all recorded.
    #[cfg(feature = "redis")]
    pub(crate) fn drain_marked(&mut self, mut f: impl FnMut(&[u8], u64, &mut S::Value) -> bool) {
        self.make_later_write();
        let mut listed = std::mem::take(&mut self.marked);
        let mut keep = Vec::new();
        match self.store.take_moves() {
            None => self.store.for_each_mut(|idx, key, hash, v| {
                if f(key, hash, v) {
                    keep.push(idx as u32);
                }
            }),
            Some((moved, removed)) => {
                // after a removal a listed index may repeat (its entry gone, a later one listed
                // at the same index) or be joined by the indices entries moved into: each once
                if removed {
                    listed.extend(moved);
                    listed.sort_unstable();
                    listed.dedup();
                }
                for idx in listed {
                    if let Some((key, hash, v)) = self.store.entry_mut(idx as usize) {
                        if f(key, hash, v) {
                            keep.push(idx);
                        }
                    }
                }
            }
        }
        self.marked = keep;
    }

    /// Lists `key` for the next drain if its value asks for it ([`Strategy::mark`]).
    #[cfg(feature = "redis")]
    pub(crate) fn mark_key(&mut self, key: &str, hash: u64) {
        if let Some(idx) = self.store().find(hash, key.as_bytes()) {
            if S::mark(self.store.value_mut(idx)) {
                self.marked.push(idx as u32);
            }
        }
    }

    /// The value of `key` (hash `hash`), if the shard holds it.
    #[cfg(feature = "redis")]
    pub(crate) fn value_of(&mut self, key: &str, hash: u64) -> Option<&mut S::Value> {
        let idx = self.store().find(hash, key.as_bytes())?;
        Some(self.store.value_mut(idx))
    }

    /// The key table, after making the write the last decision left for later.
    #[inline(always)]
    fn store(&mut self) -> &mut Store<S::Value> {
        self.make_later_write();
        &mut self.store
    }

    /// Makes the write the last decision left for later.
    #[inline(always)]
    fn make_later_write(&mut self) {
        if let Some((idx, later)) = self.later.take() {
            S::apply(self.store.value_mut(idx as usize), later);
        }
    }

    /// Withdraws the published rejection of the key with hash `hash`, before its state changes.
    #[inline(always)]
    fn invalidate(&self, hash: u64) {
        if let Some(t) = &self.stamps {
            t.invalidate(hash);
        }
    }

    /// Takes back the unspent units of lease slot `i` into the bucket that holds them.
    fn reclaim_slot(&mut self, i: usize) {
        let Some(g) = self.granted.get_mut(i).and_then(Option::take) else {
            return;
        };
        let units = self.leases.as_ref().map_or(0, |t| t.reclaim(i));
        if units > 0 {
            self.make_later_write();
            S::return_units(self.store.value_mut(g.idx), g.start, units, &self.ctx);
        }
    }

    /// Takes back every outstanding lease: before any entry is removed (removals move entries,
    /// and the records hold entry indices) or the shard is cleared.
    pub(crate) fn reclaim_all(&mut self) {
        if self.leases.is_some() {
            for i in 0..leases::SLOTS {
                self.reclaim_slot(i);
            }
        }
    }

    /// Takes back the lease of the key with hash `hash`, if it has one.
    #[inline(always)]
    fn reclaim_key(&mut self, hash: u64) {
        let i = LeaseTable::slot_of(hash);
        if self.granted[i].is_some_and(|g| g.hash == hash) {
            self.reclaim_slot(i);
        }
    }

    /// After an admission of the entry at `idx` on a hot key: records more units in the same
    /// bucket and publishes them as a pool its callers take from without the token (see
    /// [`leases`]).
    #[inline(never)]
    fn grant(&mut self, key: &[u8], hash: u64, idx: usize, now: u64, req: Request) {
        let Some(table) = self.leases.clone() else {
            return;
        };
        let i = LeaseTable::slot_of(hash);
        // The slot's previous pool (this key's or another's) goes back first.
        self.reclaim_slot(i);
        self.make_later_write();
        let (g, w_eff, cap) = (self.bucket_ms, req.limits.window_ms, req.limits.capacity);
        let value = self.store.value_mut(idx);
        let (Some(start), _) = S::activity(value, now) else {
            return;
        };
        let bucket_until = start
            .saturating_add(g)
            .min(S::span_steady_until(value, now, w_eff));
        if bucket_until <= now {
            return;
        }
        let fingerprint = match &self.stamps {
            Some(t) => t.fingerprint(key, hash),
            None => return,
        };
        let value = self.store.value_mut(idx);
        let units = (2 * leases::LANES as u64, leases::MAX_UNITS);
        let Some((units, until, later)) =
            S::lease(value, now, g, w_eff, cap, units, bucket_until, &self.ctx)
        else {
            return;
        };
        let source = if S::SOURCED {
            S::source(value)
        } else {
            Source::Local
        };
        self.later = later.map(|l| (idx as u32, l));
        table.grant(
            i,
            &leases::Grant {
                fingerprint,
                rate_bits: self.last_limits.0,
                at: now,
                until,
                units,
                source: source.code(),
            },
        );
        self.granted[i] = Some(Granted {
            idx,
            hash,
            start,
            rate_bits: self.last_limits.0,
        });
    }

    /// Publishes a rejection the entry at `idx` just got, for its callers to read without the
    /// token (see [`stamps`]).
    #[inline(never)]
    fn publish(
        &mut self,
        key: &[u8],
        hash: u64,
        idx: usize,
        now: u64,
        req: Request,
        d: &RateLimitDecision,
    ) {
        let (
            Some(t),
            RateLimitDecision::Rejected {
                retry_after_ms,
                remaining_after_waiting,
                window,
            },
        ) = (&self.stamps, d)
        else {
            return;
        };
        if *retry_after_ms == RETRY_NEVER || *retry_after_ms == 0 {
            return;
        }
        let until = now.saturating_add(*retry_after_ms);
        // Only the window's header is read: no need to make the pending write first.
        let steady = S::span_steady_until(self.store.value_mut(idx), now, req.limits.window_ms);
        t.publish(&Stamp {
            fingerprint: t.fingerprint(key, hash),
            rate_bits: self.last_limits.0,
            need: req.n.max(1),
            at: now,
            until,
            record_until: steady.min(until),
            remaining: *remaining_after_waiting,
            window_ms: window.as_millis() as u64,
        });
    }

    /// Decides for the entry at `idx` (key hash `hash`); the write it leaves for later waits in
    /// `self.later`.
    #[inline(always)]
    fn decide_at(&mut self, idx: usize, hash: u64, now: u64, req: Request) -> RateLimitDecision {
        self.invalidate(hash);
        if self.leases.is_some() {
            let i = LeaseTable::slot_of(hash);
            if let Some(g) = self.granted[i].filter(|g| g.idx == idx) {
                // Unspent units could turn this into a false rejection; and a call at another
                // rate may record past the pool's own capacity, after which the pool must not
                // admit: take them back first in both cases.
                if g.rate_bits != self.last_limits.0
                    || S::may_reject(self.store.value_mut(idx), &req)
                {
                    self.reclaim_slot(i);
                }
            }
        }
        let g = self.bucket_ms;
        let mut later = None;
        self.make_later_write();
        let value = self.store.value_mut(idx);
        let d = S::decide(value, now, g, req, &mut *self.rng, &mut later, &self.ctx);
        if S::SOURCED {
            self.last_source = S::source(value);
        }
        if S::MARKS && S::mark(value) {
            self.marked.push(idx as u32);
        }
        self.later = later.map(|l| (idx as u32, l));
        d
    }

    /// The shard's time: the clock, never going backwards.
    #[inline(always)]
    pub(crate) fn now(&mut self) -> u64 {
        let t = self.clock.now_ms();
        if t > self.last_now {
            self.last_now = t;
        }
        self.last_now
    }

    /// The limits of `rate` on this limiter, cached for the last rate seen (most calls repeat
    /// it), so the float work runs once per rate change, not per decision.
    #[inline(always)]
    fn limits(&mut self, rate: &RateLimit) -> Limits {
        let bits = rate.as_per_second().to_bits();
        if self.last_limits.0 != bits {
            let shared = &*self.shared;
            self.last_limits = (
                bits,
                Limits::new(shared.window_ms, rate, shared.hard_limit_factor),
            );
        }
        self.last_limits.1
    }

    #[inline(always)]
    fn decide(
        &mut self,
        key: &[u8],
        hash: u64,
        limits: Limits,
        n: u64,
        record: bool,
        now: u64,
    ) -> RateLimitDecision {
        let req = Request { limits, n, record };
        if let Some(idx) = self.store().find(hash, key) {
            // A key with a request in its newest bucket already is hot: worth a lease.
            let hot = S::LEASED
                && record
                && n > 0
                && S::activity(self.store.value_mut(idx), now)
                    .0
                    .is_some_and(|t| now.saturating_sub(t) < self.bucket_ms);
            let d = self.decide_at(idx, hash, now, req);
            if S::STAMPED || S::LEASED {
                if !d.is_allowed() {
                    if S::STAMPED {
                        self.publish(key, hash, idx, now, req, &d);
                    }
                } else if hot {
                    self.grant(key, hash, idx, now, req);
                }
            }
            return d;
        }
        self.decide_new_key(key, hash, req, now).0
    }

    /// A decision for a key without state: on a fresh window, kept only if it recorded.
    #[inline(never)]
    fn decide_new_key(
        &mut self,
        key: &[u8],
        hash: u64,
        req: Request,
        now: u64,
    ) -> (RateLimitDecision, Option<usize>) {
        self.invalidate(hash);
        let mut value = S::Value::default();
        let mut later = None;
        let decision = S::decide(
            &mut value,
            now,
            self.bucket_ms,
            req,
            &mut *self.rng,
            &mut later,
            &self.ctx,
        );
        if S::SOURCED {
            self.last_source = S::source(&value);
        }
        if let Some(l) = later {
            S::apply(&mut value, l);
        }
        if S::window_is_empty(&value) {
            // Nothing to remember (probe, rejection or is_allowed): no state created.
            return (decision, None);
        }
        if !self.admit_new_key(now) {
            return (RateLimitDecision::KeyCapacityExceeded, None);
        }
        let marked = S::MARKS && S::mark(&mut value);
        // Eviction above may have moved entries; the index returned here is final.
        let idx = self.store().insert(hash, key, value);
        if marked {
            self.marked.push(idx as u32);
        }
        (decision, Some(idx))
    }

    /// Reserves room for one more key under the cap, replacing an expired key of this shard if
    /// the cap is reached.
    fn admit_new_key(&mut self, now: u64) -> bool {
        self.make_later_write();
        if self.shared.max_keys != usize::MAX {
            // Eviction below removes entries.
            self.reclaim_all();
        }
        let shared = &*self.shared;
        if shared.max_keys == usize::MAX {
            return true;
        }
        loop {
            let live = shared.live_keys.load(Ordering::Relaxed);
            if live < shared.max_keys {
                if shared
                    .live_keys
                    .compare_exchange_weak(live, live + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            // At the cap: a key whose buckets all expired behaves exactly like a new one, so
            // replacing it changes no decision.
            let removed = self.store.sweep(EVICT_SCAN, |v| !S::activity(v, now).1);
            if removed == 0 {
                return false;
            }
            shared.live_keys.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    fn forget(&mut self, removed: usize) {
        if self.shared.max_keys != usize::MAX && removed > 0 {
            self.shared.live_keys.fetch_sub(removed, Ordering::Relaxed);
        }
    }
}

/// A key with its precomputed hash, as carried by messages.
#[derive(Clone, Debug)]
pub(crate) struct KeyRef<'a> {
    pub(crate) key: Cow<'a, str>,
    pub(crate) hash: u64,
}

impl KeyRef<'_> {
    fn detach(self) -> KeyRef<'static> {
        KeyRef {
            key: Cow::Owned(self.key.into_owned()),
            hash: self.hash,
        }
    }
}

/// Decide (and record, if `record`) one request.
#[derive(Debug)]
pub(crate) struct Inc<'a> {
    pub(crate) key: KeyRef<'a>,
    pub(crate) rate: RateLimit,
    pub(crate) n: u64,
    pub(crate) record: bool,
}

impl<S: Strategy> Message<ShardActor<S>> for Inc<'_> {
    type Reply = Stamped;

    #[inline(always)]
    fn handle(self, shard: &mut ShardActor<S>) -> Stamped {
        let now = shard.now();
        let limits = shard.limits(&self.rate);
        let decision = shard.decide(
            self.key.key.as_bytes(),
            self.key.hash,
            limits,
            self.n,
            self.record,
            now,
        );
        if self.record {
            crate::metrics::decision(S::SERIES, &decision);
        }
        let source = if S::SOURCED {
            shard.last_source
        } else {
            Source::Local
        };
        Stamped::new(decision, now, source)
    }
}

impl<S: Strategy> Detach<ShardActor<S>> for Inc<'_> {
    type Owned = Inc<'static>;
    fn detach(self) -> Inc<'static> {
        Inc {
            key: self.key.detach(),
            rate: self.rate,
            n: self.n,
            record: self.record,
        }
    }
}

/// One request of a batch: its key, hash, position in the caller's input and weight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchItem<'a> {
    pub(crate) key: &'a str,
    pub(crate) hash: u64,
    pub(crate) pos: usize,
    pub(crate) n: u64,
}

/// Decide a batch of keys that all live on one shard, in order, writing each decision to
/// `out[pos]` (a sync caller's buffer: it is blocked until the reply, so the borrow holds).
#[derive(Debug)]
pub(crate) struct IncMany<'a> {
    pub(crate) items: &'a [BatchItem<'a>],
    pub(crate) out: &'a mut [RateLimitDecision],
    pub(crate) rate: RateLimit,
    pub(crate) record: bool,
}

impl<S: Strategy> ShardActor<S> {
    /// Serves batch items in order; consecutive items with the same key skip the table probe.
    #[inline]
    fn serve_batch<'k>(
        &mut self,
        items: impl Iterator<Item = (&'k str, u64, usize, u64)>,
        rate: &RateLimit,
        record: bool,
        mut emit: impl FnMut(usize, RateLimitDecision),
    ) {
        let now = self.now();
        let limits = self.limits(rate);
        // (key, hash, entry index) of the last key found
        let mut last: Option<(&str, u64, usize)> = None;
        for (key, hash, pos, n) in items {
            let req = Request { limits, n, record };
            // Consecutive items with the same key reuse the index (no probe).
            let cached = last.filter(|&(k, h, _)| h == hash && k == key).map(|l| l.2);
            let idx = cached.or_else(|| self.store().find(hash, key.as_bytes()));
            let d = match idx {
                Some(idx) => {
                    last = Some((key, hash, idx));
                    self.decide_at(idx, hash, now, req)
                }
                None => {
                    let (d, idx) = self.decide_new_key(key.as_bytes(), hash, req, now);
                    last = idx.map(|idx| (key, hash, idx));
                    d
                }
            };
            if record {
                crate::metrics::decision(S::SERIES, &d);
            }
            emit(pos, d);
        }
    }

    /// [`serve_batch`](Self::serve_batch) into a new vector of `(position, decision)`.
    fn batch_to_vec<'k>(
        &mut self,
        items: impl ExactSizeIterator<Item = (&'k str, u64, usize, u64)>,
        rate: &RateLimit,
        record: bool,
    ) -> Vec<(usize, RateLimitDecision)> {
        let mut out = Vec::with_capacity(items.len());
        self.serve_batch(items, rate, record, |pos, d| out.push((pos, d)));
        out
    }
}

impl<S: Strategy> Message<ShardActor<S>> for IncMany<'_> {
    /// `None`: the decisions were written into the caller's buffer.
    type Reply = Option<Vec<(usize, RateLimitDecision)>>;

    fn cost(&self) -> usize {
        self.items.len()
    }

    fn handle(self, shard: &mut ShardActor<S>) -> Self::Reply {
        let out = self.out;
        shard.serve_batch(
            self.items.iter().map(|it| (it.key, it.hash, it.pos, it.n)),
            &self.rate,
            self.record,
            |pos, d| {
                if let Some(slot) = out.get_mut(pos) {
                    *slot = d;
                }
            },
        );
        None
    }
}

/// The owned form of [`IncMany`], queued by async callers; replies with the decisions.
#[derive(Debug)]
pub(crate) struct IncManyOwned {
    items: Vec<(Box<str>, u64, usize, u64)>,
    rate: RateLimit,
    record: bool,
}

impl<S: Strategy> Message<ShardActor<S>> for IncManyOwned {
    type Reply = Option<Vec<(usize, RateLimitDecision)>>;

    fn cost(&self) -> usize {
        self.items.len()
    }

    fn handle(self, shard: &mut ShardActor<S>) -> Self::Reply {
        let items = self.items.iter().map(|(k, h, p, n)| (&**k, *h, *p, *n));
        Some(shard.batch_to_vec(items, &self.rate, self.record))
    }
}

/// An async caller's batch: borrowed until it has to queue, then copied into [`IncManyOwned`].
#[derive(Debug)]
pub(crate) struct IncManyAsync<'a> {
    pub(crate) items: &'a [BatchItem<'a>],
    pub(crate) rate: RateLimit,
    pub(crate) record: bool,
}

impl<S: Strategy> Message<ShardActor<S>> for IncManyAsync<'_> {
    type Reply = Option<Vec<(usize, RateLimitDecision)>>;

    fn cost(&self) -> usize {
        self.items.len()
    }

    fn handle(self, shard: &mut ShardActor<S>) -> Self::Reply {
        let items = self.items.iter().map(|it| (it.key, it.hash, it.pos, it.n));
        Some(shard.batch_to_vec(items, &self.rate, self.record))
    }
}

impl<S: Strategy> Detach<ShardActor<S>> for IncManyAsync<'_> {
    type Owned = IncManyOwned;
    fn detach(self) -> IncManyOwned {
        IncManyOwned {
            items: self
                .items
                .iter()
                .map(|it| (Box::<str>::from(it.key), it.hash, it.pos, it.n))
                .collect(),
            rate: self.rate,
            record: self.record,
        }
    }
}

/// Read a key's live state.
#[derive(Debug)]
pub(crate) struct Get<'a> {
    pub(crate) key: KeyRef<'a>,
}

impl<S: Strategy> Message<ShardActor<S>> for Get<'_> {
    type Reply = S::Snapshot;

    fn handle(self, shard: &mut ShardActor<S>) -> S::Snapshot {
        let now = shard.now();
        shard.reclaim_key(self.key.hash);
        shard.make_later_write();
        let value = shard.store.get(self.key.hash, self.key.key.as_bytes());
        S::snapshot(value, now, &shard.shared)
    }
}

impl<S: Strategy> Detach<ShardActor<S>> for Get<'_> {
    type Owned = Get<'static>;
    fn detach(self) -> Get<'static> {
        Get {
            key: self.key.detach(),
        }
    }
}

/// Forget a key.
#[derive(Debug)]
pub(crate) struct Reset<'a> {
    pub(crate) key: KeyRef<'a>,
}

impl<S: Strategy> Message<ShardActor<S>> for Reset<'_> {
    /// Whether the key existed.
    type Reply = bool;

    fn handle(self, shard: &mut ShardActor<S>) -> bool {
        shard.invalidate(self.key.hash);
        shard.reclaim_all();
        let removed = shard.store().remove(self.key.hash, self.key.key.as_bytes());
        shard.forget(usize::from(removed));
        removed
    }
}

impl<S: Strategy> Detach<ShardActor<S>> for Reset<'_> {
    type Owned = Reset<'static>;
    fn detach(self) -> Reset<'static> {
        Reset {
            key: self.key.detach(),
        }
    }
}

/// Evict idle keys among the next `budget` entries of the sweep cursor.
#[derive(Debug)]
pub(crate) struct Sweep {
    pub(crate) budget: usize,
}

/// What one sweep message did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SweepReport {
    /// Keys the shard held before the message.
    pub(crate) len_before: usize,
    pub(crate) removed: usize,
}

impl<S: Strategy> Message<ShardActor<S>> for Sweep {
    type Reply = SweepReport;

    fn handle(self, shard: &mut ShardActor<S>) -> SweepReport {
        let now = shard.now();
        let stale = shard.shared.stale_after_ms;
        shard.reclaim_all();
        let len_before = shard.store().len();
        let removed = shard.store().sweep(self.budget, |v| {
            let (newest, live) = S::activity(v, now);
            // Never evict state that still counts: an evicted key must behave like a new one.
            !live && newest.is_none_or(|t| now.saturating_sub(t) >= stale)
        });
        shard.forget(removed);
        SweepReport {
            len_before,
            removed,
        }
    }
}

/// Number of keys a shard holds.
#[derive(Debug)]
pub(crate) struct Len;

impl<S: Strategy> Message<ShardActor<S>> for Len {
    type Reply = usize;
    fn handle(self, shard: &mut ShardActor<S>) -> usize {
        shard.store().len()
    }
}

/// Forget every key of a shard.
#[derive(Debug)]
pub(crate) struct Clear;

impl<S: Strategy> Message<ShardActor<S>> for Clear {
    type Reply = ();
    fn handle(self, shard: &mut ShardActor<S>) {
        if let Some(t) = &shard.stamps {
            t.invalidate_all();
        }
        shard.reclaim_all();
        let n = shard.store().len();
        shard.store().clear();
        shard.forget(n);
    }
}

/// One shard: the actor cell around its state.
pub(crate) type Shard<S> = crossbeam_utils::CachePadded<ActorCell<ShardActor<S>>>;
