//! A hybrid key's state in its shard, the rule that decides from it, and the two messages the
//! sync actor exchanges with each shard ([`Collect`] and [`Settle`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::decision::{RateLimitDecision, Source, SuppressedSnapshot};
use crate::math::{
    decide_absolute_deferred, decide_suppressed, record_attempt, suppressed_snapshot,
    suppression_factor_from, Attempts, Count, Request, SuppressedKey, Window,
};
use crate::random::RandomSource;
use crate::rate::Limits;
use crate::shard::mailbox::{Detach, Message};
use crate::shard::{ShardActor, Shared, Slot, Strategy};

/// What the hybrid decides by when no sync has succeeded recently (Redis unreachable or
/// stalled). Pending admissions are kept and reconciled when Redis answers again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutagePolicy {
    /// Each instance admits up to its share of the limit, `C / instances` (instances live at
    /// the last successful sync), counted on its own admissions: the instances together stay
    /// within `C` as long as none of them joined or left meanwhile.
    #[default]
    LocalShare,
    /// Each instance admits up to the whole limit on its own admissions (up to `N × C` across
    /// `N` instances).
    FailOpen,
    /// Nothing is admitted until a sync succeeds.
    FailClosed,
}

/// What the shards of a hybrid set share with the sync actor.
#[derive(Debug)]
pub(crate) struct HybridCtx {
    /// Instances live at the last registry read (at least 1).
    instances: AtomicU64,
    /// Local ms until which the last successful sync vouches for reserves (0: never synced).
    healthy_until: AtomicU64,
    /// Local ms from which the [`OutagePolicy`] decides: a sync late past `healthy_until`
    /// may still answer until its deadline, and meanwhile calls wait for it (admitting on a
    /// local share while other instances spend reserves Redis granted them would pass the
    /// limit: a loaded machine's slow sync is not an outage).
    outage_from: AtomicU64,
    /// Local ms of the next sync (retry hints of calls waiting for a reserve).
    next_sync_at: AtomicU64,
    /// Server ms minus local ms, as of the last sync.
    offset: AtomicI64,
    pub(crate) policy: OutagePolicy,
    /// Whether the hybrid provider was used: the sync actor stays dormant until then (a
    /// limiter used only for its local or Redis provider writes nothing for the hybrid).
    active: std::sync::atomic::AtomicBool,
    /// Wakes the dormant sync actor.
    pub(crate) activated: tokio::sync::Notify,
    /// Whether the absolute (`[0]`) and the suppressed (`[1]`) strategy were used: a sync
    /// collects only from the shards of a strategy in use.
    used: [std::sync::atomic::AtomicBool; 2],
    /// Keys reset on this instance since the last sync, to forget in Redis too (`true`:
    /// the suppressed strategy's).
    resets: std::sync::Mutex<Vec<(bool, String)>>,
    /// Local ms at which several live instances were last seen (0: never).
    multi_seen_at: AtomicU64,
    /// The limiter's window `W`: a sole instance decides alone only a window after it last saw
    /// another (whose admissions may still count).
    window_ms: u64,
    /// Whether a sync actor runs (without one nothing is recorded for a sync).
    reporting: std::sync::atomic::AtomicBool,
}

impl HybridCtx {
    pub(crate) fn new(policy: OutagePolicy, window_ms: u64) -> Self {
        Self {
            instances: AtomicU64::new(1),
            healthy_until: AtomicU64::new(0),
            outage_from: AtomicU64::new(0),
            next_sync_at: AtomicU64::new(0),
            offset: AtomicI64::new(0),
            policy,
            active: std::sync::atomic::AtomicBool::new(false),
            activated: tokio::sync::Notify::new(),
            used: Default::default(),
            resets: std::sync::Mutex::new(Vec::new()),
            multi_seen_at: AtomicU64::new(0),
            window_ms,
            reporting: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the provider used (first use wakes the sync actor).
    #[inline]
    pub(crate) fn activate(&self) {
        if !self.active.load(Ordering::Relaxed) && !self.active.swap(true, Ordering::Relaxed) {
            self.activated.notify_one();
        }
    }

    /// Marks the absolute or (`suppressed`) the suppressed strategy used, and the provider.
    #[inline]
    pub(crate) fn activate_strategy(&self, suppressed: bool) {
        let used = &self.used[usize::from(suppressed)];
        if !used.load(Ordering::Relaxed) {
            used.store(true, Ordering::Relaxed);
            self.activate();
        }
    }

    /// Whether the absolute or (`suppressed`) the suppressed strategy was used.
    pub(crate) fn strategy_used(&self, suppressed: bool) -> bool {
        self.used[usize::from(suppressed)].load(Ordering::Relaxed)
    }

    /// Asks the next sync to forget `key` of the absolute (`suppressed == false`) or the
    /// suppressed strategy in Redis.
    pub(crate) fn queue_reset(&self, suppressed: bool, key: &str) {
        if !self.reporting() {
            return;
        }
        let mut r = self.resets.lock().unwrap_or_else(|e| e.into_inner());
        r.push((suppressed, key.to_string()));
    }

    /// The keys reset since the last call.
    pub(crate) fn take_resets(&self) -> Vec<(bool, String)> {
        std::mem::take(&mut *self.resets.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed).max(1)
    }

    /// Records the registry's count at local time `now`.
    pub(crate) fn set_instances(&self, n: u64, now: u64) {
        if n >= 2 {
            self.multi_seen_at.fetch_max(now.max(1), Ordering::Relaxed);
        }
        self.instances.store(n.max(1), Ordering::Relaxed);
    }

    /// Whether this instance decides alone at `now`: the only live one, and for a window
    /// (another instance's admissions, counted in Redis, have all expired; until then
    /// decisions go through Redis's count).
    fn solo(&self, now: u64) -> bool {
        now >= self.solo_from()
    }

    /// From when this instance decides alone as things stand (`u64::MAX`: not while others are
    /// live).
    fn solo_from(&self) -> u64 {
        if self.instances() > 1 {
            return u64::MAX;
        }
        let seen = self.multi_seen_at.load(Ordering::Relaxed);
        if seen == 0 {
            0
        } else {
            seen.saturating_add(self.window_ms)
        }
    }

    pub(crate) fn set_reporting(&self, on: bool) {
        self.reporting.store(on, Ordering::Relaxed);
    }

    /// Whether a sync actor will collect what decisions record.
    fn reporting(&self) -> bool {
        self.reporting.load(Ordering::Relaxed)
    }

    pub(crate) fn healthy_until(&self) -> u64 {
        self.healthy_until.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy_until(&self, t: u64) {
        self.healthy_until.fetch_max(t, Ordering::Relaxed);
    }

    /// After a successful sync: reserves and rooms are good until `t`, and the outage policy
    /// takes over only `grace` ms later (the next sync's deadline and interval: until then a
    /// late sync may still answer).
    pub(crate) fn set_healthy(&self, t: u64, grace: u64) {
        self.set_healthy_until(t);
        self.outage_from
            .fetch_max(t.saturating_add(grace), Ordering::Relaxed);
    }

    fn outage_from(&self) -> u64 {
        self.outage_from.load(Ordering::Relaxed)
    }

    pub(crate) fn set_next_sync_at(&self, t: u64) {
        self.next_sync_at.store(t, Ordering::Relaxed);
    }

    pub(crate) fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    pub(crate) fn set_offset(&self, o: i64) {
        self.offset.store(o, Ordering::Relaxed);
    }

    /// Server time of local time `now`.
    fn server_ms(&self, now: u64) -> u64 {
        now.saturating_add_signed(self.offset())
    }

    /// Wait until the next sync from `now`, at least 1 ms.
    fn until_next_sync(&self, now: u64) -> u64 {
        self.next_sync_at
            .load(Ordering::Relaxed)
            .saturating_sub(now)
            .max(1)
    }
}

/// One key of the hybrid: this instance's own admissions, exactly as the local provider keeps
/// them, plus its reserve and what the next sync has to report; `E` is what a strategy adds
/// (nothing for absolute, attempts and the global picture for suppressed).
#[derive(Debug, Default)]
pub(crate) struct HybridKey<E = ()> {
    /// This instance's admissions (local clock): the solo and outage rules decide from it.
    window: Window<Count>,
    /// What a key in use carries between syncs; `None` for an idle key (most keys of a large
    /// key space), which keeps it within twice the local provider's bytes per key.
    flight: Option<Box<Flight>>,
    /// `C` of the last recording call (the sync reports under it).
    capacity: u64,
    /// Everything live in Redis at the last settle (buckets and all reserves).
    global_live: u64,
    /// Local ms of the last settle (0: never).
    settled_at: u64,
    /// `W_eff` of the last recording call (below 2^32 ms, as every effective window).
    window_ms: u32,
    /// Whether the shard lists this key for the next collect.
    listed: bool,
    source: SourceCode,
    ext: E,
}

/// The state of a key between syncs.
#[derive(Debug, Default)]
struct Flight {
    /// Admitted since the last collect, by server bucket index `k` (`[k·G, (k+1)·G)` in server
    /// time), merged per bucket.
    pending: Vec<(u64, u64)>,
    /// Declined since the last collect, likewise (suppressed strategy: attempts count too).
    declined: Vec<(u64, u64)>,
    /// Reserve units this instance may still admit without asking.
    reserve: u64,
    /// Local ms from which the reserve may no longer be used (Redis releases it later).
    reserve_until: u64,
    /// Reserve units spent since the last collect.
    used: u64,
    /// Weight asked by recording calls since the last collect (admitted or not).
    demand: u64,
    /// Weight admitted outside a reserve since the last settle.
    unreserved: u64,
    /// `unreserved` at the last collect: what the next settle's answer includes.
    collected_unreserved: u64,
    /// Collects in a row that found no demand (a reserve is given back after [`KEEP_IDLE`]).
    idle_collects: u8,
    /// Collects in a row that left this key's report for later (see [`DEFER_COLLECTS`]).
    deferred: u8,
    /// Collects in a row that found demand (a key asks for a reserve from the second on).
    busy_collects: u8,
    /// The lease outstanding (see [`HybridKey::lease`]): what its units were counted in.
    lease: Option<LeaseRecord>,
}

/// Where a lease's units were counted: the server bucket of their deltas, and whether they
/// came out of the reserve (else they count as unreserved admissions).
#[derive(Clone, Copy, Debug)]
struct LeaseRecord {
    k: u64,
    from_reserve: bool,
}

impl Flight {
    /// Whether the next sync has something to say about this key.
    fn has_news(&self) -> bool {
        !self.pending.is_empty()
            || !self.declined.is_empty()
            || self.used > 0
            || self.reserve > 0
            || self.demand > 0
    }

    /// Whether nothing is left that a later sync or decision needs.
    fn is_spent(&self) -> bool {
        !self.has_news() && self.unreserved == 0 && self.reserve_until == 0
    }
}

/// Collects without demand after which a key gives its reserve back: a key used every few
/// intervals keeps a small reserve (it would otherwise wait for a sync at each use when near its
/// limit), and one that went quiet stops holding capacity others could use.
const KEEP_IDLE: u8 = 4;

/// Collects a key far below its limit may let pass before it reports, on a sole instance (its
/// admissions reach Redis at most this many sync intervals late; it decides by the local rule,
/// which does not depend on what Redis has heard).
const DEFER_COLLECTS: u8 = 9;

/// [`Source`] in one byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
enum SourceCode {
    #[default]
    Solo,
    Reserve,
    Provisional,
    Outage,
}

impl<E> Slot for HybridKey<E> {
    type Align = u64;
}

/// Adds weight `n` to bucket `k` of a per-bucket list (merged with the last entry when it is the
/// same bucket).
fn add_to_bucket(list: &mut Vec<(u64, u64)>, k: u64, n: u64) {
    match list.last_mut() {
        Some((last, w)) if *last == k => *w = w.saturating_add(n),
        _ => list.push((k, n)),
    }
}

/// The mode a decision runs in.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Exact local rule at `C` (sole instance, or fail-open outage).
    Local(SourceCode),
    /// Exact local rule at a share of `C`.
    Share(u64, SourceCode),
    /// A share of what Redis had left at the last settle, for admissions since then.
    Room(u64),
    /// Out of the reserve.
    Reserve,
    /// Nothing admitted until the next sync.
    Closed,
    /// The last sync's reserves and rooms have run out and the next sync is late but may
    /// still answer: nothing admitted until it does (or the outage policy takes over).
    Late,
}

impl Mode {
    /// What a decision in this mode is based on.
    fn source(self) -> SourceCode {
        match self {
            Mode::Local(code) | Mode::Share(_, code) => code,
            Mode::Room(_) => SourceCode::Provisional,
            Mode::Reserve => SourceCode::Reserve,
            Mode::Closed => SourceCode::Outage,
            Mode::Late => SourceCode::Reserve,
        }
    }
}

impl<E> HybridKey<E> {
    fn mode(&self, now: u64, cap: u64, ctx: &HybridCtx) -> Mode {
        let n = ctx.instances();
        if now >= ctx.healthy_until() {
            if now < ctx.outage_from() {
                // (a sole instance needs no reserve: it keeps deciding alone)
                return if ctx.solo(now) {
                    Mode::Local(SourceCode::Solo)
                } else {
                    Mode::Late
                };
            }
            return match ctx.policy {
                OutagePolicy::LocalShare => Mode::Share(n, SourceCode::Outage),
                OutagePolicy::FailOpen => Mode::Local(SourceCode::Outage),
                OutagePolicy::FailClosed => Mode::Closed,
            };
        }
        if ctx.solo(now) {
            Mode::Local(SourceCode::Solo)
        } else if self.flight.as_ref().is_some_and(|f| now < f.reserve_until) {
            Mode::Reserve
        } else if self.settled_at > 0
            && now.saturating_sub(self.settled_at) < u64::from(self.window_ms)
        {
            // Known to Redis within a window: a share of the room it had then, if the key was
            // at most half full. Nearer its limit a key waits for a reserve: Redis may hand
            // the same room to another instance before it hears of these admissions.
            let room = if self.global_live.saturating_mul(2) <= cap {
                (cap - self.global_live) / n
            } else {
                0
            };
            Mode::Room(room)
        } else {
            Mode::Share(n, SourceCode::Provisional)
        }
    }

    /// The local rule on this instance's own window, at capacity `cap`.
    fn local(&mut self, now: u64, g: u64, req: Request, cap: u64) -> RateLimitDecision {
        let mut later = None;
        let limits = Limits {
            capacity: cap,
            ..req.limits
        };
        let d = decide_absolute_deferred(
            &mut self.window,
            now,
            g,
            Request { limits, ..req },
            &mut later,
        );
        if let Some(w) = later {
            self.window.apply(w);
        }
        d
    }

    fn wait_for_sync(&self, now: u64, req: &Request, ctx: &HybridCtx) -> RateLimitDecision {
        RateLimitDecision::Rejected {
            retry_after_ms: ctx.until_next_sync(now),
            remaining_after_waiting: req.n.max(1),
            window: Duration::from_millis(req.limits.window_ms),
        }
    }

    pub(crate) fn decide(
        &mut self,
        now: u64,
        g: u64,
        req: Request,
        ctx: &HybridCtx,
    ) -> RateLimitDecision {
        if req.n > req.limits.capacity {
            // never admissible: not demand (it would ask Redis for the whole limit). The local
            // rule answers it, so the key's span moves as the local provider's does.
            return self.local(now, g, req, req.limits.capacity);
        }
        let mode = self.mode(now, req.limits.capacity, ctx);
        self.decide_in(mode, now, g, req, ctx)
    }

    /// [`decide`](Self::decide) of a weight within the capacity, in `mode` (computed at this
    /// capacity, at `now`).
    fn decide_in(
        &mut self,
        mode: Mode,
        now: u64,
        g: u64,
        req: Request,
        ctx: &HybridCtx,
    ) -> RateLimitDecision {
        let Request { limits, n, record } = req;
        // Without a sync actor (a limiter without Redis, or after shutdown) nothing is kept
        // for reports: decisions still record in the key's own window.
        let reports = record && n > 0 && ctx.reporting();
        if record && n > 0 {
            self.window_ms = u32::try_from(limits.window_ms).unwrap_or(u32::MAX);
            self.capacity = limits.capacity;
        }
        if reports {
            let f = self.flight.get_or_insert_with(Box::default);
            f.demand = f.demand.saturating_add(n);
        }
        let recording = record && n > 0;
        let need = n.max(1);
        self.source = mode.source();
        let d = match mode {
            Mode::Local(_) => self.local(now, g, req, limits.capacity),
            Mode::Share(instances, _) => {
                let share = limits.capacity / instances;
                if need > share {
                    // Admissible once a sync brings a reserve (or the outage ends).
                    self.wait_for_sync(now, &req, ctx)
                } else {
                    self.local(now, g, req, share)
                }
            }
            Mode::Room(room) => {
                let unreserved = self.flight.as_ref().map_or(0, |f| f.unreserved);
                if unreserved.saturating_add(need) > room {
                    self.wait_for_sync(now, &req, ctx)
                } else {
                    self.local(now, g, req, limits.capacity)
                }
            }
            Mode::Reserve => {
                if self.flight.as_ref().map_or(0, |f| f.reserve) < need {
                    self.wait_for_sync(now, &req, ctx)
                } else {
                    let d = self.local(now, g, req, limits.capacity);
                    if d.is_allowed() && recording {
                        let f = self.flight.get_or_insert_with(Box::default);
                        f.reserve -= n;
                        f.used = f.used.saturating_add(n);
                    }
                    d
                }
            }
            Mode::Closed | Mode::Late => self.wait_for_sync(now, &req, ctx),
        };
        if reports && d.is_allowed() {
            let f = self.flight.get_or_insert_with(Box::default);
            if !matches!(mode, Mode::Reserve) {
                f.unreserved = f.unreserved.saturating_add(n);
            }
            add_to_bucket(&mut f.pending, ctx.server_ms(now) / g.max(1), n);
        }
        d
    }

    /// Whether the next sync has something to say about this key.
    fn has_news(&self) -> bool {
        self.flight.as_ref().is_some_and(|f| f.has_news())
    }

    /// A lease right after an admission at `cap` (see [`Strategy::lease`]): units admitted now,
    /// in the mode that admitted the call, counted as that mode counts admissions (reserve
    /// spent, or unreserved; deltas in the server bucket of now; demand), and valid while the
    /// mode is: until the reserve's end, the end of the room a settle gave, and a healthy
    /// mode's end. The shard takes unspent units back ([`return_units`](Self::return_units))
    /// before every collect and settle, so reports and answers never see them.
    #[allow(clippy::too_many_arguments)]
    fn lease(
        &mut self,
        now: u64,
        g: u64,
        w_eff: u64,
        cap: u64,
        (min, max): (u64, u64),
        bucket_until: u64,
        ctx: &HybridCtx,
    ) -> Option<(u64, u64)> {
        let mode = self.mode(now, cap, ctx);
        let held = self.window.total_held();
        let flight = self.flight.as_deref();
        let (room, mode_until) = match mode {
            Mode::Local(_) => (cap.saturating_sub(held), u64::MAX),
            Mode::Share(instances, _) => ((cap / instances.max(1)).saturating_sub(held), u64::MAX),
            Mode::Room(room) => (
                room.saturating_sub(flight.map_or(0, |f| f.unreserved))
                    .min(cap.saturating_sub(held)),
                self.settled_at.saturating_add(u64::from(self.window_ms)),
            ),
            Mode::Reserve => (
                flight
                    .map_or(0, |f| f.reserve)
                    .min(cap.saturating_sub(held)),
                flight.map_or(0, |f| f.reserve_until),
            ),
            Mode::Closed | Mode::Late => (0, 0),
        };
        let healthy = ctx.healthy_until();
        // The units' deltas go to the server bucket of now: they may be taken until it ends.
        let g = g.max(1);
        let k = ctx.server_ms(now) / g;
        let server_bucket_end = k
            .saturating_add(1)
            .saturating_mul(g)
            .saturating_add_signed(ctx.offset().saturating_neg());
        let mut until = mode_until.min(bucket_until).min(server_bucket_end);
        // A healthy mode ends with health, and one other than solo when this instance starts
        // deciding alone. (An outage lasts until a sync succeeds, whose settle takes the units
        // back.)
        if now < healthy {
            until = until.min(healthy);
            let solo_from = ctx.solo_from();
            if solo_from > now {
                until = until.min(solo_from);
            }
        }
        let units = (room / 4).min(max);
        if units < min || until <= now {
            return None;
        }
        if let Some(w) = self.window.record_deferred(now, g, w_eff, units) {
            self.window.apply(w);
        }
        self.source = mode.source();
        if ctx.reporting() {
            let f = self.flight.get_or_insert_with(Box::default);
            f.demand = f.demand.saturating_add(units);
            let from_reserve = matches!(mode, Mode::Reserve);
            if from_reserve {
                f.reserve -= units;
                f.used = f.used.saturating_add(units);
            } else {
                f.unreserved = f.unreserved.saturating_add(units);
            }
            add_to_bucket(&mut f.pending, k, units);
            f.lease = Some(LeaseRecord { k, from_reserve });
        } else if let Some(f) = self.flight.as_deref_mut() {
            // nothing counted beyond the window: the units' return must not touch the books
            // (a record left by an earlier, fully spent lease would)
            f.lease = None;
        }
        Some((units, until))
    }

    /// Takes a lease's unspent `units` back out of everything [`lease`](Self::lease) counted
    /// them in: the window's bucket starting at `start`, and the flight's books.
    fn return_units(&mut self, start: u64, units: u64) {
        self.window.return_units(start, units);
        let Some(f) = self.flight.as_deref_mut() else {
            return;
        };
        let Some(l) = f.lease.take() else {
            return;
        };
        f.demand = f.demand.saturating_sub(units);
        if l.from_reserve {
            f.reserve = f.reserve.saturating_add(units);
            f.used = f.used.saturating_sub(units);
        } else {
            f.unreserved = f.unreserved.saturating_sub(units);
        }
        if let Some(i) = f.pending.iter().position(|p| p.0 == l.k) {
            let w = &mut f.pending[i].1;
            *w = w.saturating_sub(units);
            if *w == 0 {
                f.pending.remove(i);
            }
        }
    }

    /// This instance's admissions held (nothing trimmed) and the weight not yet reported.
    #[cfg(eyelet_loom)]
    pub(crate) fn own_and_pending(&self) -> (u64, u64) {
        let pending = self
            .flight
            .as_ref()
            .map_or(0, |f| f.pending.iter().map(|p| p.1).sum());
        (self.window.total_held(), pending)
    }

    /// Reserve units left to spend.
    #[cfg(eyelet_loom)]
    pub(crate) fn reserve_left(&self) -> u64 {
        self.flight.as_ref().map_or(0, |f| f.reserve)
    }

    /// This instance's live admissions (local clock).
    pub(crate) fn own_live(&self, now: u64) -> u64 {
        self.window.live_untrimmed(now, self.window.span_ms())
    }
}

/// What the hybrid's two strategies do differently; the rest (modes, reserves, reports) is
/// [`HybridKey`]'s.
pub(crate) trait Flavor: std::fmt::Debug + Send + Sync + 'static {
    /// The `eyelet_decisions_total` series of this strategy's decisions.
    const SERIES: crate::metrics::Series;

    /// Whether hot keys get leases (absolute: its decisions are the local rule behind a gate).
    const LEASED: bool = false;

    /// What a key of this strategy keeps besides [`HybridKey`]'s fields.
    type Ext: Default + std::fmt::Debug + Send + 'static;
    /// What `get` reports.
    type Snapshot: Send + 'static;

    fn decide(
        key: &mut HybridKey<Self::Ext>,
        now: u64,
        g: u64,
        req: Request,
        rng: &mut dyn RandomSource,
        ctx: &HybridCtx,
    ) -> RateLimitDecision;

    fn snapshot(key: Option<&HybridKey<Self::Ext>>, now: u64, g: u64) -> Self::Snapshot;

    /// Takes the strategy's part of Redis's answer; `offset` is server ms minus local ms.
    fn settle(key: &mut HybridKey<Self::Ext>, answer: &Answer, offset: i64);

    /// Whether the strategy's own state holds nothing, and its newest bucket and liveness
    /// (for the sweeper).
    fn ext_activity(ext: &Self::Ext, now: u64) -> (bool, Option<u64>, bool);
}

/// The hybrid absolute strategy.
#[derive(Debug)]
pub(crate) struct AbsoluteFlavor;

impl Flavor for AbsoluteFlavor {
    const LEASED: bool = true;
    const SERIES: crate::metrics::Series = crate::metrics::Series::HybridAbsolute;

    type Ext = ();
    type Snapshot = (u64, u64);

    #[inline]
    fn decide(
        key: &mut HybridKey,
        now: u64,
        g: u64,
        req: Request,
        _rng: &mut dyn RandomSource,
        ctx: &HybridCtx,
    ) -> RateLimitDecision {
        key.decide(now, g, req, ctx)
    }

    fn snapshot(key: Option<&HybridKey>, now: u64, _g: u64) -> (u64, u64) {
        key.map_or((0, 0), |v| (v.own_live(now), v.global_live))
    }

    fn settle(_: &mut HybridKey, _: &Answer, _: i64) {}

    fn ext_activity(_: &(), _: u64) -> (bool, Option<u64>, bool) {
        (true, None, false)
    }
}

/// What a suppressed hybrid key adds: every attempt on this instance (the local rule's window,
/// accepted and declined), and what Redis reported of all instances' attempts.
#[derive(Debug, Default)]
pub(crate) struct SuppressedExt {
    /// This instance's attempts (local clock), as the local provider keeps them.
    local: SuppressedKey,
    /// Accepted weight in Redis's buckets at the last settle (reserves not included).
    accepted: u64,
    /// Declined weight in Redis's buckets at the last settle.
    declined: u64,
    /// Local ms at which the oldest live bucket in Redis started (0: none).
    oldest: u64,
}

/// The hybrid suppressed strategy.
#[derive(Debug)]
pub(crate) struct SuppressedFlavor;

/// `Suppressed { is_allowed: false, suppression_factor: 1.0 }`: the hard limit.
const HARD_DENIAL: RateLimitDecision = RateLimitDecision::Suppressed {
    is_allowed: false,
    suppression_factor: 1.0,
};

impl HybridKey<SuppressedExt> {
    /// Declined weight this instance holds (its own attempts, nothing trimmed) and the
    /// declined weight not yet reported.
    #[cfg(eyelet_loom)]
    pub(crate) fn own_and_pending_declined(&self) -> (u64, u64) {
        let pending = self
            .flight
            .as_ref()
            .map_or(0, |f| f.declined.iter().map(|p| p.1).sum());
        let held: Attempts = self.ext.local.window.total_held();
        (held.declined, pending)
    }

    /// The suppressed rule across instances. Accepted weight goes through the absolute
    /// machinery at capacity `H` (reserves, shares, outage policy), which bounds it by `H` in
    /// every window as it bounds absolute admissions by `C`; the soft limit and the suppression
    /// factor come from what every instance attempted (Redis's buckets at the last settle plus
    /// this instance's attempts since), so the instances shed one common fraction.
    ///
    /// A sole instance (and an outage or a provisional share) decides by the local rule on its
    /// own attempts (at a share of `S` and `H` where the mode gives a share), exactly as the
    /// local provider does.
    fn decide_suppressed(
        &mut self,
        now: u64,
        g: u64,
        req: Request,
        rng: &mut dyn RandomSource,
        ctx: &HybridCtx,
    ) -> RateLimitDecision {
        let Request { limits, n, record } = req;
        let recording = record && n > 0;
        let (soft, hard, w_eff) = (limits.capacity, limits.hard, limits.window_ms);
        // A panicking custom random source is contained, as in the local strategy.
        let mut draw = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rng.next_f64())).unwrap_or(0.5)
        };
        let mode = self.mode(now, hard, ctx);
        self.source = mode.source();
        // the span moves as the local rule's recording call moves it; the local probe below
        // then decides exactly as that call, and the attempt is recorded after it
        self.ext.local.window.advance(now, w_eff, recording);
        let candidate = match mode {
            Mode::Local(_) | Mode::Share(..) => {
                let (s, h) = match mode {
                    Mode::Share(instances, _) => (soft / instances, hard / instances),
                    _ => (soft, hard),
                };
                let probe = Request {
                    limits: Limits {
                        capacity: s,
                        hard: h,
                        ..limits
                    },
                    n,
                    record: false,
                };
                decide_suppressed(&mut self.ext.local, now, g, probe, draw)
            }
            Mode::Closed | Mode::Late => HARD_DENIAL,
            Mode::Room(_) | Mode::Reserve => {
                let need = n.max(1);
                let f = self.flight.as_deref();
                // this instance's acceptances and declines Redis had not counted at the settle
                let own = f.map_or(0, |f| f.unreserved.saturating_add(f.used));
                let own_declined: u64 = f.map_or(0, |f| f.declined.iter().map(|p| p.1).sum());
                let accepted = self.ext.accepted.saturating_add(own);
                if accepted.saturating_add(need) <= soft {
                    RateLimitDecision::Allowed
                } else if accepted.saturating_add(need) > hard {
                    HARD_DENIAL
                } else {
                    let attempted = accepted
                        .saturating_add(self.ext.declined)
                        .saturating_add(own_declined);
                    let oldest = (self.ext.oldest > 0).then_some(self.ext.oldest);
                    let sf = suppression_factor_from(attempted, oldest, now, g, w_eff, soft);
                    RateLimitDecision::Suppressed {
                        is_allowed: sf <= 0.0 || (sf < 1.0 && draw() >= sf),
                        suppression_factor: sf,
                    }
                }
            }
        };
        // An accepted candidate must pass the absolute rule at `H`, in the same mode (which
        // also records it for the sync); past it, the hard limit answers. (A candidate is
        // accepted only within `H`, so the weight is within the gate's capacity.)
        let d = if candidate.is_allowed() {
            let gate = Request {
                limits: Limits {
                    capacity: hard,
                    ..limits
                },
                n,
                record,
            };
            if self.decide_in(mode, now, g, gate, ctx).is_allowed() {
                candidate
            } else {
                HARD_DENIAL
            }
        } else {
            candidate
        };
        if recording {
            let accepted = d.is_allowed();
            let counts = if accepted {
                Attempts {
                    accepted: n,
                    declined: 0,
                }
            } else {
                Attempts {
                    accepted: 0,
                    declined: n,
                }
            };
            record_attempt(&mut self.ext.local, now, g, soft, w_eff, counts);
            if !accepted {
                self.window_ms = u32::try_from(w_eff).unwrap_or(u32::MAX);
                self.capacity = hard;
                if ctx.reporting() {
                    let f = self.flight.get_or_insert_with(Box::default);
                    add_to_bucket(&mut f.declined, ctx.server_ms(now) / g.max(1), n);
                }
            }
        }
        d
    }
}

impl Flavor for SuppressedFlavor {
    const SERIES: crate::metrics::Series = crate::metrics::Series::HybridSuppressed;
    type Ext = SuppressedExt;
    /// `(this instance's attempts, every instance's at the last sync)`.
    type Snapshot = (SuppressedSnapshot, SuppressedSnapshot);

    #[inline]
    fn decide(
        key: &mut HybridKey<SuppressedExt>,
        now: u64,
        g: u64,
        req: Request,
        rng: &mut dyn RandomSource,
        ctx: &HybridCtx,
    ) -> RateLimitDecision {
        key.decide_suppressed(now, g, req, rng, ctx)
    }

    fn snapshot(
        key: Option<&HybridKey<SuppressedExt>>,
        now: u64,
        g: u64,
    ) -> (SuppressedSnapshot, SuppressedSnapshot) {
        let Some(k) = key else {
            return Default::default();
        };
        let local = &k.ext.local;
        let own = suppressed_snapshot(local, now, g);
        let total = k.ext.accepted.saturating_add(k.ext.declined);
        let global = SuppressedSnapshot {
            total,
            accepted: k.ext.accepted,
            declined: k.ext.declined,
            suppression_factor: suppression_factor_from(
                total,
                (k.ext.oldest > 0).then_some(k.ext.oldest),
                now,
                g,
                local.last_window_ms.max(1),
                local.last_soft,
            ),
        };
        (own, global)
    }

    fn settle(key: &mut HybridKey<SuppressedExt>, a: &Answer, offset: i64) {
        key.ext.accepted = a.accepted;
        key.ext.declined = a.declined;
        key.ext.oldest = if a.oldest > 0 {
            a.oldest
                .saturating_add_signed(offset.saturating_neg())
                .max(1)
        } else {
            0
        };
    }

    fn ext_activity(ext: &SuppressedExt, now: u64) -> (bool, Option<u64>, bool) {
        let w = &ext.local.window;
        (w.is_empty(), w.newest_start(), w.may_be_live(now))
    }
}

/// The hybrid strategies as the shard runtime's rules for [`HybridKey`].
#[derive(Debug)]
pub(crate) struct Hybrid<F>(std::marker::PhantomData<F>);

/// The hybrid absolute strategy's rules.
pub(crate) type HybridRules = Hybrid<AbsoluteFlavor>;
/// The hybrid suppressed strategy's rules.
pub(crate) type HybridSuppressedRules = Hybrid<SuppressedFlavor>;

impl<F: Flavor> Strategy for Hybrid<F> {
    const SERIES: crate::metrics::Series = F::SERIES;
    type Value = HybridKey<F::Ext>;
    type Ctx = HybridCtx;
    type Snapshot = F::Snapshot;
    type Later = std::convert::Infallible;

    #[inline]
    fn decide(
        value: &mut HybridKey<F::Ext>,
        now: u64,
        bucket_ms: u64,
        req: Request,
        rng: &mut dyn RandomSource,
        _later: &mut Option<std::convert::Infallible>,
        ctx: &HybridCtx,
    ) -> RateLimitDecision {
        F::decide(value, now, bucket_ms, req, rng, ctx)
    }

    const LEASED: bool = F::LEASED;

    fn span_steady_until(value: &HybridKey<F::Ext>, now: u64, w_eff: u64) -> u64 {
        value.window.span_steady_until(now, w_eff)
    }

    fn lease(
        value: &mut HybridKey<F::Ext>,
        now: u64,
        g: u64,
        w_eff: u64,
        cap: u64,
        units: (u64, u64),
        bucket_until: u64,
        ctx: &HybridCtx,
    ) -> Option<(u64, u64, Option<std::convert::Infallible>)> {
        let (units, until) = value.lease(now, g, w_eff, cap, units, bucket_until, ctx)?;
        Some((units, until, None))
    }

    fn return_units(value: &mut HybridKey<F::Ext>, start: u64, units: u64, _ctx: &HybridCtx) {
        value.return_units(start, units);
    }

    const SOURCED: bool = true;

    fn source(value: &HybridKey<F::Ext>) -> Source {
        match value.source {
            SourceCode::Solo => Source::HybridSolo,
            SourceCode::Reserve => Source::HybridReserve,
            SourceCode::Provisional => Source::HybridProvisional,
            SourceCode::Outage => Source::HybridOutage,
        }
    }

    const MARKS: bool = true;

    #[inline]
    fn mark(value: &mut HybridKey<F::Ext>) -> bool {
        if value.listed || !value.has_news() {
            return false;
        }
        value.listed = true;
        true
    }

    fn apply(_: &mut HybridKey<F::Ext>, later: std::convert::Infallible) {
        match later {}
    }

    fn snapshot(value: Option<&HybridKey<F::Ext>>, now: u64, shared: &Shared) -> F::Snapshot {
        F::snapshot(value, now, shared.bucket_ms)
    }

    fn window_is_empty(value: &HybridKey<F::Ext>) -> bool {
        // A key with something to report or a reserve to give back is not empty.
        value.window.is_empty() && !value.has_news() && F::ext_activity(&value.ext, 0).0
    }

    fn activity(value: &HybridKey<F::Ext>, now: u64) -> (Option<u64>, bool) {
        let busy = value.has_news();
        let (_, ext_newest, ext_live) = F::ext_activity(&value.ext, now);
        (
            value.window.newest_start().max(ext_newest),
            busy || value.window.may_be_live(now) || ext_live,
        )
    }
}

/// One key's report to a sync: what it admitted since the last one and what it wants.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Report {
    pub(crate) key: String,
    pub(crate) hash: u64,
    pub(crate) window_ms: u64,
    pub(crate) capacity: u64,
    /// Reserve units spent since the last report.
    pub(crate) used: u64,
    /// Reserve units given back unspent.
    pub(crate) release: u64,
    /// Reserve the instance asks for.
    pub(crate) want: u64,
    /// `(server bucket index, weight)` admitted since the last report.
    pub(crate) deltas: Vec<(u64, u64)>,
    /// `(server bucket index, weight)` declined since the last report (suppressed).
    pub(crate) declined: Vec<(u64, u64)>,
    /// Forget the key in Redis first (every bucket, every instance's reserve).
    pub(crate) reset: bool,
}

/// The sync actor's request to a shard: every key with something to report.
#[derive(Debug)]
pub(crate) struct Collect {
    /// Give every reserve back (shutdown).
    pub(crate) release_all: bool,
    /// Report every key with news now, none deferred (flush, shutdown).
    pub(crate) everything: bool,
}

impl<F: Flavor> Message<ShardActor<Hybrid<F>>> for Collect {
    type Reply = Vec<Report>;

    fn cost(&self) -> usize {
        crate::shard::mailbox::MAX_TURN
    }

    fn handle(self, shard: &mut ShardActor<Hybrid<F>>) -> Vec<Report> {
        // Unspent lease units go back first: a report carries only what was taken.
        shard.reclaim_all();
        let now = shard.now();
        let solo = shard.ctx().solo(now);
        let mut out = Vec::new();
        // Only keys that changed since the last collect, or hold a reserve, are listed.
        shard.drain_marked(|key, hash, v| {
            if !v.listed {
                return false;
            }
            if !v.has_news() {
                v.listed = false;
                return false;
            }
            let own = v.window.total_held();
            let Some(f) = v.flight.as_mut() else {
                v.listed = false;
                return false;
            };
            // On a sole instance (which decides by the local rule, whatever Redis knows), a key
            // far below its limit, all of whose demand was admitted and which holds no reserve,
            // reports every few intervals only: most keys of a large key space are such keys,
            // and their reports are most of a sync's work (and Redis's). With other instances
            // live every report goes out at once: their provisional shares are computed from
            // what Redis knows, and a late report would let them overshoot.
            let admitted: u64 = f.pending.iter().map(|p| p.1).sum();
            let far = !self.everything
                && solo
                && f.reserve == 0
                && f.used == 0
                && f.demand == admitted
                && f.declined.is_empty()
                && v.global_live.saturating_add(own).saturating_mul(4) <= v.capacity;
            if far && f.deferred < DEFER_COLLECTS {
                f.deferred += 1;
                return true;
            }
            f.deferred = 0;
            if f.demand == 0 {
                f.idle_collects = f.idle_collects.saturating_add(1);
                f.busy_collects = 0;
            } else {
                f.idle_collects = 0;
                f.busy_collects = f.busy_collects.saturating_add(1);
            }
            // A key gone quiet that keeps its reserve for a while (`KEEP_IDLE` idle collects)
            // has nothing to say but to keep the reserve alive: no admission, no attempt,
            // nothing spent. It reports once the reserve is in the second half of what it may
            // be used for (Redis holds it twice that long from the last report, then counts it
            // as admitted), and to give it back. Most keys of a large key space are such keys
            // most of the time; a report at every collect was most of a sync's work and of
            // Redis's.
            let quiet =
                f.demand == 0 && f.used == 0 && f.pending.is_empty() && f.declined.is_empty();
            let expiring = f.reserve_until.saturating_sub(now)
                <= f.reserve_until.saturating_sub(v.settled_at) / 2;
            let give_back = self.release_all || solo || f.idle_collects >= KEEP_IDLE;
            if quiet && !give_back && !expiring && !self.everything {
                return true;
            }
            f.collected_unreserved = f.unreserved;
            // Twice the demand of the last interval; a key idle for a moment keeps what it has
            // (asking for no more). A key used in one interval only, far below its limit (a
            // quarter), all of whose demand was admitted, asks for nothing: most keys of a
            // large key space are such keys, and a reserve they would give back unused two
            // collects later cost two more reports each. A key used again the next interval,
            // refused, or nearer its limit asks.
            let sparse = f.busy_collects < 2
                && f.demand == admitted
                && v.global_live.saturating_add(own).saturating_mul(4) <= v.capacity;
            let want = if give_back || sparse {
                0
            } else {
                f.demand.saturating_mul(2).min(v.capacity)
            };
            let release = if give_back { f.reserve } else { 0 };
            f.reserve -= release;
            if release > 0 && f.reserve == 0 {
                f.reserve_until = 0;
            }
            let key = String::from_utf8_lossy(key).into_owned();
            out.push(Report {
                key,
                hash,
                window_ms: u64::from(v.window_ms.max(1)),
                capacity: v.capacity,
                used: std::mem::take(&mut f.used),
                release,
                want,
                deltas: std::mem::take(&mut f.pending),
                declined: std::mem::take(&mut f.declined),
                reset: false,
            });
            f.demand = 0;
            // A key that holds or asked for a reserve is visited again next time (to refresh,
            // spend or give it back).
            v.listed = f.reserve > 0 || want > 0;
            if !v.listed && f.is_spent() {
                v.flight = None;
            }
            v.listed
        });
        out
    }
}

impl<F: Flavor> Detach<ShardActor<Hybrid<F>>> for Collect {
    type Owned = Collect;
    fn detach(self) -> Collect {
        self
    }
}

/// What Redis answered for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Answer {
    pub(crate) hash: u64,
    /// The instance's reserve after the sync.
    pub(crate) reserve: u64,
    /// Everything live in Redis for the key.
    pub(crate) live: u64,
    /// Whether the key asked for a reserve: a key that did and got none waits for the next
    /// sync (Redis is full); one that did not falls back to a provisional share when used.
    pub(crate) wanted: bool,
    /// Suppressed keys: accepted weight in Redis's buckets (reserves not included).
    pub(crate) accepted: u64,
    /// Suppressed keys: declined weight in Redis's buckets.
    pub(crate) declined: u64,
    /// Suppressed keys: server ms at which the oldest live bucket started (0: none).
    pub(crate) oldest: u64,
}

/// The sync actor's answers for the keys of one shard.
#[derive(Debug)]
pub(crate) struct Settle {
    /// `(key, answer)`.
    pub(crate) answers: Vec<(String, Answer)>,
    /// Local ms until which the reserves may be used.
    pub(crate) reserve_until: u64,
    /// Local ms of the collect these answers follow.
    pub(crate) settled_at: u64,
}

impl<F: Flavor> Message<ShardActor<Hybrid<F>>> for Settle {
    type Reply = ();

    fn cost(&self) -> usize {
        self.answers.len().max(1)
    }

    fn handle(self, shard: &mut ShardActor<Hybrid<F>>) {
        // Leases were granted in the mode of the last answers: take their unspent units back
        // before the new answers change it.
        shard.reclaim_all();
        let offset = shard.ctx().offset();
        for (key, a) in self.answers {
            if let Some(v) = shard.value_of(&key, a.hash) {
                v.global_live = a.live;
                v.settled_at = self.settled_at;
                F::settle(v, &a, offset);
                if a.reserve == 0 && !a.wanted && v.flight.is_none() {
                    continue;
                }
                let f = v.flight.get_or_insert_with(Box::default);
                // Units spent since the collect were taken out of this reserve.
                f.reserve = a.reserve.saturating_sub(f.used);
                f.reserve_until = if a.reserve > 0 || a.wanted {
                    self.reserve_until
                } else {
                    0
                };
                // What Redis counted: up to the collect; later admissions still count here.
                f.unreserved = f.unreserved.saturating_sub(f.collected_unreserved);
                f.collected_unreserved = 0;
                if f.is_spent() {
                    v.flight = None;
                }
                // an answer may hand a reserve to a key the last collect let go: list it, so
                // the next sync refreshes or returns it
                shard.mark_key(&key, a.hash);
            }
        }
    }
}

impl<F: Flavor> Detach<ShardActor<Hybrid<F>>> for Settle {
    type Owned = Settle;
    fn detach(self) -> Settle {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateLimit;

    const G: u64 = 10;

    fn req(cap_per_s: f64, n: u64) -> Request {
        let rate = RateLimit::try_from(cap_per_s).expect("rate");
        Request {
            limits: Limits::new(1000, &rate, 1.0),
            n,
            record: true,
        }
    }

    /// A context as after a successful sync at `t` that saw `instances`.
    fn healthy(instances: u64, t: u64) -> HybridCtx {
        let ctx = HybridCtx::new(OutagePolicy::LocalShare, 1000);
        ctx.set_instances(instances, t);
        ctx.set_reporting(true);
        ctx.set_healthy_until(t + 40);
        ctx.set_next_sync_at(t + 10);
        ctx
    }

    /// A key holding `reserve` units until `until`.
    fn reserved(reserve: u64, until: u64) -> HybridKey {
        HybridKey {
            flight: Some(Box::new(Flight {
                reserve,
                reserve_until: until,
                ..Flight::default()
            })),
            ..HybridKey::default()
        }
    }

    fn fl<E>(k: &HybridKey<E>) -> &Flight {
        k.flight.as_deref().expect("a key in use has a flight")
    }

    fn admitted(k: &mut HybridKey, now: u64, r: Request, ctx: &HybridCtx, tries: u64) -> u64 {
        (0..tries)
            .map(|_| u64::from(k.decide(now, G, r, ctx).is_allowed()))
            .sum()
    }

    #[test]
    fn a_sole_instance_decides_as_the_local_rule() {
        let ctx = healthy(1, 0);
        let mut k = HybridKey::default();
        assert_eq!(admitted(&mut k, 5, req(10.0, 1), &ctx, 30), 10);
        assert_eq!(k.source, SourceCode::Solo);
        assert_eq!(fl(&k).pending, vec![(0, 10)], "reported by server bucket");
    }

    #[test]
    fn a_reserve_admits_exactly_its_units_then_waits_for_the_next_sync() {
        let ctx = healthy(4, 100);
        ctx.set_offset(5_000);
        let mut k = reserved(7, 120);
        assert_eq!(admitted(&mut k, 105, req(100.0, 1), &ctx, 20), 7);
        let f = fl(&k);
        assert_eq!((f.reserve, f.used, f.unreserved), (0, 7, 0));
        assert_eq!(
            f.pending,
            vec![(510, 7)],
            "server time 5105 ms is bucket 510"
        );
        match k.decide(105, G, req(100.0, 1), &ctx) {
            RateLimitDecision::Rejected { retry_after_ms, .. } => {
                assert_eq!(retry_after_ms, 5, "until the next sync, not RETRY_NEVER")
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(fl(&k).demand, 21, "rejected weight is demand too");
    }

    #[test]
    fn a_new_key_gets_a_provisional_share_and_a_key_near_its_limit_waits() {
        let ctx = healthy(4, 0);
        let mut fresh = HybridKey::default();
        assert_eq!(admitted(&mut fresh, 1, req(100.0, 1), &ctx, 40), 25);
        assert_eq!(fresh.source, SourceCode::Provisional);
        // synced 5 ms ago at 60 of 100 live: over half full, no share without a reserve
        let mut near = HybridKey {
            settled_at: 1,
            global_live: 60,
            window_ms: 1000,
            ..HybridKey::default()
        };
        assert_eq!(admitted(&mut near, 6, req(100.0, 1), &ctx, 5), 0);
        // at 20 of 100: a quarter of the 80 left, across calls until the next settle
        let mut room = HybridKey {
            settled_at: 1,
            global_live: 20,
            window_ms: 1000,
            ..HybridKey::default()
        };
        assert_eq!(admitted(&mut room, 6, req(100.0, 1), &ctx, 40), 20);
        // a weight above C is never admissible, in every mode
        let d = fresh.decide(2, G, req(100.0, 101), &ctx);
        assert!(matches!(
            d,
            RateLimitDecision::Rejected {
                retry_after_ms: crate::RETRY_NEVER,
                ..
            }
        ));
    }

    #[test]
    fn a_never_admissible_weight_is_not_demand_and_nothing_is_kept_without_a_sync_actor() {
        let ctx = healthy(4, 0);
        let mut k: HybridKey = HybridKey::default();
        assert!(!k.decide(1, G, req(100.0, 101), &ctx).is_allowed());
        assert!(k.flight.is_none(), "n > C asks Redis for nothing");
        let quiet = HybridCtx::new(OutagePolicy::LocalShare, 1000);
        let mut k: HybridKey = HybridKey::default();
        assert_eq!(admitted(&mut k, 1, req(100.0, 1), &quiet, 200), 100);
        assert!(k.flight.is_none(), "no sync actor: no pending reports");
    }

    #[test]
    fn a_sole_instance_decides_alone_only_a_window_after_it_last_saw_another() {
        let ctx = healthy(2, 100);
        ctx.set_instances(1, 150);
        let mut k: HybridKey = HybridKey::default();
        k.decide(200, G, req(100.0, 1), &ctx);
        assert_ne!(
            k.source,
            SourceCode::Solo,
            "another instance's admissions may still count"
        );
        ctx.set_healthy_until(2000);
        k.decide(1101, G, req(100.0, 1), &ctx);
        assert_eq!(k.source, SourceCode::Solo);
    }

    #[test]
    fn outage_policies() {
        let cases = [
            (OutagePolicy::LocalShare, 25),
            (OutagePolicy::FailOpen, 100),
            (OutagePolicy::FailClosed, 0),
        ];
        for (policy, want) in cases {
            let ctx = HybridCtx::new(policy, 1000);
            ctx.set_instances(4, 0);
            ctx.set_reporting(true);
            // healthy until 40; deciding at 50 with a reserve that is still "valid" locally
            ctx.set_healthy_until(40);
            let mut k = reserved(1000, 60);
            assert_eq!(
                admitted(&mut k, 50, req(100.0, 1), &ctx, 200),
                want,
                "{policy:?}"
            );
            assert_eq!(k.source, SourceCode::Outage);
            assert_eq!(fl(&k).reserve, 1000, "an outage never spends a reserve");
        }
    }

    /// A sync late past the reserves' end is not an outage until its deadline could have
    /// passed: meanwhile calls wait for it, whatever the policy (a CI run on a loaded machine
    /// admitted on local shares during slow syncs while the other instances spent their
    /// reserves: 204 in one window at C = 200).
    #[test]
    fn a_late_sync_is_waited_for_before_the_outage_policy_decides() {
        for policy in [OutagePolicy::LocalShare, OutagePolicy::FailOpen] {
            let ctx = HybridCtx::new(policy, 1000);
            ctx.set_instances(4, 0);
            ctx.set_reporting(true);
            // reserves good until 40; the outage policy from 40 + 110
            ctx.set_healthy(40, 110);
            let mut k = reserved(1000, 60);
            assert_eq!(
                admitted(&mut k, 50, req(100.0, 1), &ctx, 200),
                0,
                "{policy:?}"
            );
            assert_eq!(k.source, SourceCode::Reserve);
            assert_eq!(
                admitted(&mut k, 149, req(100.0, 1), &ctx, 200),
                0,
                "{policy:?}"
            );
            let mut k = reserved(1000, 60);
            assert!(
                admitted(&mut k, 150, req(100.0, 1), &ctx, 200) > 0,
                "{policy:?}"
            );
            assert_eq!(k.source, SourceCode::Outage);
        }
        // A sole instance keeps deciding alone while it waits.
        let ctx = HybridCtx::new(OutagePolicy::LocalShare, 1000);
        ctx.set_reporting(true);
        ctx.set_healthy(40, 110);
        let mut k = HybridKey::default();
        assert_eq!(admitted(&mut k, 50, req(100.0, 1), &ctx, 200), 100);
        assert_eq!(k.source, SourceCode::Solo);
    }

    fn sreq(cap_per_s: f64, n: u64) -> Request {
        let rate = RateLimit::try_from(cap_per_s).expect("rate");
        Request {
            limits: Limits::new(1000, &rate, 1.5),
            n,
            record: true,
        }
    }

    /// A suppressed key holding `reserve` units until `until`, after a settle that reported
    /// `accepted` and `declined` weight in Redis, the oldest bucket started at local `oldest`.
    fn sup_key(
        reserve: u64,
        until: u64,
        accepted: u64,
        declined: u64,
        oldest: u64,
    ) -> HybridKey<SuppressedExt> {
        HybridKey {
            flight: Some(Box::new(Flight {
                reserve,
                reserve_until: until,
                ..Flight::default()
            })),
            settled_at: 1,
            window_ms: 1000,
            ext: SuppressedExt {
                accepted,
                declined,
                oldest,
                ..SuppressedExt::default()
            },
            ..HybridKey::default()
        }
    }

    #[test]
    fn suppressed_instances_shed_the_fraction_every_instances_attempts_imply() {
        let ctx = healthy(4, 1990);
        let mut rng = crate::random::SplitMix64::new(3);
        // S = 100, H = 150; Redis saw 100 accepted and 100 declined over the last second:
        // P = 2 R, so sf = 0.5
        let mut k = sup_key(1000, 5000, 100, 100, 1000);
        let first = k.decide_suppressed(2000, G, sreq(100.0, 1), &mut rng, &ctx);
        match first {
            RateLimitDecision::Suppressed {
                suppression_factor, ..
            } => assert!((suppression_factor - 0.5).abs() < 1e-9, "{first:?}"),
            d => panic!("{d:?}"),
        }
        let mut accepted = u64::from(first.is_allowed());
        for _ in 1..40 {
            accepted += u64::from(
                k.decide_suppressed(2000, G, sreq(100.0, 1), &mut rng, &ctx)
                    .is_allowed(),
            );
        }
        assert!((10..=30).contains(&accepted), "about half: {accepted}");
        let f = fl(&k);
        assert_eq!(f.used, accepted, "accepted weight came out of the reserve");
        assert_eq!(f.pending.iter().map(|p| p.1).sum::<u64>(), accepted);
        assert_eq!(
            f.declined.iter().map(|p| p.1).sum::<u64>(),
            40 - accepted,
            "declined weight is reported too"
        );
        assert_eq!(k.source, SourceCode::Reserve);
        let own: Attempts = k.ext.local.window.live(2000, 1000);
        assert_eq!((own.accepted, own.declined), (accepted, 40 - accepted));
    }

    #[test]
    fn suppressed_below_the_soft_limit_admits_and_past_the_reserve_hits_the_hard_limit() {
        let ctx = healthy(4, 1990);
        let mut rng = crate::random::SplitMix64::new(3);
        let mut k = sup_key(2, 5000, 10, 0, 1500);
        for _ in 0..2 {
            assert_eq!(
                k.decide_suppressed(2000, G, sreq(100.0, 1), &mut rng, &ctx),
                RateLimitDecision::Allowed
            );
        }
        // far below S, but the reserve is spent: the absolute rule at H waits for a sync
        assert_eq!(
            k.decide_suppressed(2000, G, sreq(100.0, 1), &mut rng, &ctx),
            HARD_DENIAL
        );
        assert_eq!(fl(&k).demand, 3, "the refused call asks for a reserve");
        // past H on Redis's count: hard limit, without asking the reserve
        let mut full = sup_key(100, 5000, 150, 40, 1500);
        assert_eq!(
            full.decide_suppressed(2000, G, sreq(100.0, 1), &mut rng, &ctx),
            HARD_DENIAL
        );
        assert_eq!(fl(&full).reserve, 100);
    }
}
