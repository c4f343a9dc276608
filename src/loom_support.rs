//! The shard protocol, exposed for the loom models in `loom-tests/` (built only with
//! `--cfg eyelet_loom`). Not part of the public API.

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc as StdArc;

use crate::decision::RateLimitDecision;
use crate::random::SplitMix64;
use crate::rate::RateLimit;
use crate::shard::mailbox::{ActorCell, Detach, Message};
use crate::shard::{Absolute, Inc, KeyRef, ShardActor, Shared, Sweep};
use crate::time::{ClockSource, ManualClock};

pub use crate::shard::mailbox::reached::{counts as reached, Branch};

/// How often `branch` was reached on this thread so far (a loom model runs on the test's
/// thread, so a model compares this before and after it ran).
pub fn reached_count(branch: Branch) -> usize {
    reached()[branch as usize]
}

/// The combining budget the protocol runs with under loom.
pub const COMBINE_BUDGET: usize = crate::shard::mailbox::COMBINE_BUDGET;
/// The turn bound (in items) under loom.
pub const MAX_TURN: usize = crate::shard::mailbox::MAX_TURN;

/// An actor whose messages are closures over its state.
pub struct Cell<S: Send + 'static>(ActorCell<S>);

struct FnMsg<F>(F);

impl<S, R, F: FnOnce(&mut S) -> R> Message<S> for FnMsg<F> {
    type Reply = R;
    fn handle(self, state: &mut S) -> R {
        (self.0)(state)
    }
}

impl<S, R, F> Detach<S> for FnMsg<F>
where
    F: FnOnce(&mut S) -> R + Send + 'static,
    R: Send,
{
    type Owned = Self;
    fn detach(self) -> Self {
        self
    }
}

impl<S: Send + 'static> Cell<S> {
    /// An idle actor owning `state`.
    pub fn new(state: S) -> Self {
        Self(ActorCell::new(state))
    }

    /// Sync call: runs `f` on the state, by this thread or by the current executor.
    pub fn call<R: Send>(&self, f: impl FnOnce(&mut S) -> R + Send) -> R {
        self.0.call(FnMsg(f))
    }

    /// Async call.
    pub fn call_async<R, F>(&self, f: F) -> impl Future<Output = R> + '_
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send,
    {
        self.0.call_async(FnMsg(f))
    }

    /// An async call polled once and then leaked (never polled again, never dropped): returns
    /// what the future would keep, to be dropped after the cell.
    pub fn call_leaked<R, F>(&self, f: F) -> LeakedCall
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
        S: 'static,
    {
        let leaked = self.0.call_leaked(FnMsg(f));
        LeakedCall {
            state: Box::new(move || (leaked.is_done(), leaked.is_cancelled())),
        }
    }
}

/// What a leaked async call keeps alive (its node); see [`Cell::call_leaked`].
pub struct LeakedCall {
    state: Box<dyn Fn() -> (bool, bool)>,
}

impl LeakedCall {
    /// Whether the call was served.
    pub fn is_done(&self) -> bool {
        (self.state)().0
    }

    /// Whether the call was withdrawn without being served.
    pub fn is_cancelled(&self) -> bool {
        (self.state)().1
    }
}

/// A real absolute shard on a manual clock.
pub struct AbsoluteShard {
    cell: ActorCell<ShardActor<Absolute>>,
    clock: ManualClock,
    hasher: ahash::RandomState,
}

impl AbsoluteShard {
    /// A shard with window `window_ms`, 1 ms buckets, keys stale after one window.
    pub fn new(window_ms: u64) -> Self {
        let clock = ManualClock::new();
        let shared = StdArc::new(Shared {
            window_ms,
            bucket_ms: 1,
            hard_limit_factor: 1.0,
            stale_after_ms: window_ms,
            max_keys: usize::MAX,
            acquire_jitter: 0.0,
            live_keys: AtomicUsize::new(0),
            clock: ClockSource::Custom(StdArc::new(clock.clone())),
        });
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        Self {
            cell: ActorCell::new(ShardActor::new(
                shared,
                Box::new(SplitMix64::new(1)),
                hasher.clone(),
                None,
                None,
                StdArc::new(()),
            )),
            clock,
            hasher,
        }
    }

    /// The shard's clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// `inc(key, rate, 1)`; whether it was admitted.
    pub fn inc(&self, key: &str, per_second: f64) -> bool {
        let Ok(rate) = RateLimit::per_second(per_second) else {
            return false;
        };
        let key = KeyRef {
            key: key.into(),
            hash: self.hasher.hash_one(key),
        };
        let d = self.cell.call(Inc {
            key,
            rate,
            n: 1,
            record: true,
        });
        d.decision == RateLimitDecision::Allowed
    }

    /// One sweep message over the whole (small) shard; keys evicted.
    pub fn sweep(&self) -> usize {
        self.cell.call(Sweep { budget: 64 }).removed
    }
}

/// One shard's rejection stamps (`src/shard/stamps.rs`), for the sequence-lock models.
pub struct Stamps(crate::shard::stamps::StampTable);

/// The hash every stamp of the models is published under.
const STAMP_HASH: u64 = 0x5EED_0000;

impl Default for Stamps {
    fn default() -> Self {
        Self::new()
    }
}

impl Stamps {
    /// An empty table.
    pub fn new() -> Self {
        let seeds = (
            ahash::RandomState::with_seeds(1, 2, 3, 4),
            ahash::RandomState::with_seeds(5, 6, 7, 8),
        );
        Self(crate::shard::stamps::StampTable::new(seeds))
    }

    /// Publishes a stamp whose every field (but the hash) is `v` (`v > 0`).
    pub fn publish(&self, v: u64) {
        use crate::shard::stamps::{Fingerprint, Stamp};
        self.0.publish(&Stamp {
            fingerprint: Fingerprint::from_parts(STAMP_HASH, v, v, v),
            rate_bits: v,
            need: v,
            at: v,
            until: v,
            record_until: v,
            remaining: v,
            window_ms: v,
        });
    }

    /// Withdraws the stamp (as the shard does before changing the key).
    pub fn invalidate(&self) {
        self.0.invalidate(STAMP_HASH);
    }

    /// The stamp's fields but the hash, if a consistent, valid stamp was read.
    pub fn read(&self) -> Option<[u64; 10]> {
        self.0.read(STAMP_HASH).map(|s| {
            let (a, b, len) = s.fingerprint.parts();
            [
                a,
                b,
                len,
                s.rate_bits,
                s.need,
                s.at,
                s.until,
                s.record_until,
                s.remaining,
                s.window_ms,
            ]
        })
    }
}

/// One shard's lease pools (`src/shard/leases.rs`), for the models of taking units while the
/// shard reclaims and grants. Every pool is in one slot; keys are told apart by fingerprint.
pub struct Leases {
    table: crate::shard::leases::LeaseTable,
    stamps: crate::shard::stamps::StampTable,
}

impl Default for Leases {
    fn default() -> Self {
        Self::new()
    }
}

impl Leases {
    /// No pools.
    pub fn new() -> Self {
        let seeds = (
            ahash::RandomState::with_seeds(1, 2, 3, 4),
            ahash::RandomState::with_seeds(5, 6, 7, 8),
        );
        Self {
            table: crate::shard::leases::LeaseTable::new(),
            stamps: crate::shard::stamps::StampTable::new(seeds),
        }
    }

    /// Publishes a pool of `units` for `key` (token holder): valid from time 0 to 100.
    pub fn grant(&self, key: &str, units: u64) {
        let fingerprint = self.stamps.fingerprint(key.as_bytes(), STAMP_HASH);
        let slot = crate::shard::leases::LeaseTable::slot_of(STAMP_HASH);
        self.table.grant(
            slot,
            &crate::shard::leases::Grant {
                fingerprint,
                rate_bits: 1,
                at: 0,
                until: 100,
                units,
                source: 0,
            },
        );
    }

    /// Takes back the pool's unspent units (token holder); returns them.
    pub fn reclaim(&self) -> u64 {
        self.table
            .reclaim(crate::shard::leases::LeaseTable::slot_of(STAMP_HASH))
    }

    /// A caller of `key` takes `n` units from lane `lane` at time 50; whether it got them.
    pub fn take(&self, key: &str, n: u64, lane: usize) -> bool {
        self.table
            .take(&self.stamps, key.as_bytes(), STAMP_HASH, 1, n, lane, || 50)
            .is_some()
    }
}

/// A real hybrid shard on a manual clock (feature `redis`): decisions, and the sync actor's two
/// messages (`Collect`, `Settle`), through the shard's mailbox.
#[cfg(feature = "redis")]
pub struct HybridShard {
    c: HybridCell<crate::hybrid::HybridRules>,
}

/// What one collect reported for the model's key.
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    /// Weight admitted since the previous collect (the deltas).
    pub admitted: u64,
    /// Of it, reserve units spent.
    pub used: u64,
    /// Reserve units given back.
    pub released: u64,
    /// Reserve asked for.
    pub want: u64,
}

/// A hybrid shard of strategy `S` and the hasher of its keys.
#[cfg(feature = "redis")]
struct HybridCell<S: crate::shard::Strategy> {
    cell: ActorCell<ShardActor<S>>,
    hasher: ahash::RandomState,
    /// The shard's stamp table (fingerprints) and lease pools, for callers taking units.
    stamps: StdArc<crate::shard::stamps::StampTable>,
    leases: StdArc<crate::shard::leases::LeaseTable>,
}

#[cfg(feature = "redis")]
impl<S: crate::shard::Strategy<Ctx = crate::hybrid::HybridCtx>> HybridCell<S> {
    /// A shard whose last sync saw `instances` live instances and stays valid (no outage), at
    /// W = 1 s, G = 1 ms and hard-limit factor `h`.
    fn new(instances: u64, h: f64) -> Self {
        let seeds = (
            ahash::RandomState::with_seeds(1, 2, 3, 4),
            ahash::RandomState::with_seeds(5, 6, 7, 8),
        );
        let stamps = StdArc::new(crate::shard::stamps::StampTable::new(seeds));
        let leases = StdArc::new(crate::shard::leases::LeaseTable::new());
        let (cell, hasher) = hybrid_cell(instances, h, stamps.clone(), leases.clone());
        Self {
            cell,
            hasher,
            stamps,
            leases,
        }
    }

    /// A caller of `key` takes `n` units of its lease pool without the shard's token (lane 0,
    /// at the model's time); whether it got them.
    fn take(&self, key: &str, per_second: f64, n: u64) -> bool {
        let Ok(rate) = RateLimit::per_second(per_second) else {
            return false;
        };
        let k = self.key(key);
        self.leases
            .take(
                &self.stamps,
                key.as_bytes(),
                k.hash,
                rate.as_per_second().to_bits(),
                n,
                0,
                || 1,
            )
            .is_some()
    }

    fn key(&self, key: &str) -> KeyRef<'static> {
        KeyRef {
            key: key.to_string().into(),
            hash: self.hasher.hash_one(key),
        }
    }

    /// `inc(key, rate, n)`; whether it was admitted.
    fn inc(&self, key: &str, per_second: f64, n: u64) -> bool {
        let Ok(rate) = RateLimit::per_second(per_second) else {
            return false;
        };
        self.cell
            .call(Inc {
                key: self.key(key),
                rate,
                n,
                record: true,
            })
            .decision
            .is_allowed()
    }
}

#[cfg(feature = "redis")]
fn hybrid_cell<S>(
    instances: u64,
    h: f64,
    stamps: StdArc<crate::shard::stamps::StampTable>,
    leases: StdArc<crate::shard::leases::LeaseTable>,
) -> (ActorCell<ShardActor<S>>, ahash::RandomState)
where
    S: crate::shard::Strategy<Ctx = crate::hybrid::HybridCtx>,
{
    let clock = ManualClock::new();
    clock.set_ms(1);
    let shared = StdArc::new(Shared {
        window_ms: 1000,
        bucket_ms: 1,
        hard_limit_factor: h,
        stale_after_ms: 1000,
        max_keys: usize::MAX,
        acquire_jitter: 0.0,
        live_keys: AtomicUsize::new(0),
        clock: ClockSource::Custom(StdArc::new(clock)),
    });
    let ctx = crate::hybrid::HybridCtx::new(crate::hybrid::OutagePolicy::FailClosed, 1000);
    ctx.set_instances(instances, 1);
    ctx.set_reporting(true);
    ctx.set_healthy_until(u64::MAX);
    let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
    let cell = ActorCell::new(ShardActor::new(
        shared,
        Box::new(SplitMix64::new(1)),
        hasher.clone(),
        Some(stamps),
        Some(leases),
        StdArc::new(ctx),
    ));
    (cell, hasher)
}

#[cfg(feature = "redis")]
impl HybridShard {
    /// A shard whose last sync saw `instances` live instances and stays valid (no outage), at
    /// W = 1 s, G = 1 ms.
    pub fn new(instances: u64) -> Self {
        Self {
            c: HybridCell::new(instances, 1.0),
        }
    }

    /// `inc(key, rate, n)`; whether it was admitted. A second admission of a key at the same
    /// (model) time finds it hot and grants a lease.
    pub fn inc(&self, key: &str, per_second: f64, n: u64) -> bool {
        self.c.inc(key, per_second, n)
    }

    /// A caller takes `n` units of `key`'s lease pool without the shard's token, as `inc` does
    /// before it goes to the shard; whether it got them (then it was admitted).
    pub fn take(&self, key: &str, per_second: f64, n: u64) -> bool {
        self.c.take(key, per_second, n)
    }

    /// One `Collect`: what it reported for `key` (zeros if nothing), and the shard's own
    /// admissions and still-unreported weight for it, read in the same turn. `everything`: as
    /// a flush (no report deferred), else as a timer's sync (a key far below its limit may
    /// report later).
    pub fn collect(&self, key: &str, everything: bool) -> (Reported, u64, u64) {
        let reports = self.c.cell.call(crate::hybrid::Collect {
            release_all: false,
            everything,
        });
        let mut r = Reported::default();
        for rep in reports.iter().filter(|rep| rep.key == key) {
            r.admitted += rep.deltas.iter().map(|d| d.1).sum::<u64>();
            r.used += rep.used;
            r.released += rep.release;
            r.want += rep.want;
        }
        let (own, pending) = self.own_and_pending(key);
        (r, own, pending)
    }

    /// The shard's own admissions for `key` and the weight not yet reported.
    pub fn own_and_pending(&self, key: &str) -> (u64, u64) {
        let k = self.c.key(key);
        self.c.cell.call(FnMsg(
            move |s: &mut ShardActor<crate::hybrid::HybridRules>| {
                s.value_of(&k.key, k.hash)
                    .map_or((0, 0), |v| v.own_and_pending())
            },
        ))
    }

    /// Units of `key`'s reserve left to spend.
    pub fn reserve(&self, key: &str) -> u64 {
        let k = self.c.key(key);
        self.c.cell.call(FnMsg(
            move |s: &mut ShardActor<crate::hybrid::HybridRules>| {
                s.value_of(&k.key, k.hash).map_or(0, |v| v.reserve_left())
            },
        ))
    }

    /// One `Settle`: Redis answered that this instance now holds `reserve` units of `key`.
    pub fn settle(&self, key: &str, reserve: u64) {
        let k = self.c.key(key);
        self.c.cell.call(crate::hybrid::Settle {
            answers: vec![(
                key.to_string(),
                crate::hybrid::Answer {
                    hash: k.hash,
                    reserve,
                    live: 0,
                    wanted: true,
                    ..Default::default()
                },
            )],
            reserve_until: u64::MAX,
            settled_at: 1,
        });
    }
}

/// A real hybrid shard of the suppressed strategy on a manual clock (feature `redis`), a sole
/// instance at W = 1 s, G = 1 ms and h = 2: decisions and the sync actor's `Collect`.
#[cfg(feature = "redis")]
pub struct HybridSuppressedShard {
    c: HybridCell<crate::hybrid::HybridSuppressedRules>,
}

/// What one collect reported for the model's key, and the shard's own counts read in the same
/// turn.
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempted {
    /// Accepted weight reported.
    pub accepted: u64,
    /// Declined weight reported.
    pub declined: u64,
    /// The shard's own accepted weight (its window) and what of it is still unreported.
    pub own_accepted: u64,
    pub pending_accepted: u64,
    /// The shard's own declined weight and what of it is still unreported.
    pub own_declined: u64,
    pub pending_declined: u64,
}

#[cfg(feature = "redis")]
impl HybridSuppressedShard {
    /// A sole instance's shard.
    pub fn new() -> Self {
        Self {
            c: HybridCell::new(1, 2.0),
        }
    }

    /// `inc(key, rate, n)`; whether it was accepted.
    pub fn inc(&self, key: &str, per_second: f64, n: u64) -> bool {
        self.c.inc(key, per_second, n)
    }

    /// One `Collect` (as a flush when `everything`): what it reported for `key`, and the
    /// shard's own and unreported weight after it.
    pub fn collect(&self, key: &str, everything: bool) -> Attempted {
        let reports = self.c.cell.call(crate::hybrid::Collect {
            release_all: false,
            everything,
        });
        let mut a = Attempted::default();
        for rep in reports.iter().filter(|rep| rep.key == key) {
            a.accepted += rep.deltas.iter().map(|d| d.1).sum::<u64>();
            a.declined += rep.declined.iter().map(|d| d.1).sum::<u64>();
        }
        let k = self.c.key(key);
        let ((own_a, pend_a), (own_d, pend_d)) = self.c.cell.call(FnMsg(
            move |s: &mut ShardActor<crate::hybrid::HybridSuppressedRules>| {
                s.value_of(&k.key, k.hash).map_or(((0, 0), (0, 0)), |v| {
                    (v.own_and_pending(), v.own_and_pending_declined())
                })
            },
        ));
        a.own_accepted = own_a;
        a.pending_accepted = pend_a;
        a.own_declined = own_d;
        a.pending_declined = pend_d;
        a
    }
}

#[cfg(feature = "redis")]
impl Default for HybridSuppressedShard {
    fn default() -> Self {
        Self::new()
    }
}
