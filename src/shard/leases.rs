//! Leases: units of a hot key's current bucket that callers take without the run token.
//!
//! On a hot key every admission took the shard's token: two locked instructions on a line all
//! callers write, plus the shard's state lines, moved between cores on every call. A lease is
//! admitted weight the shard has already recorded in the key's newest bucket (checked against
//! the capacity like any admission) and published here as a pool of units; a caller with a
//! request of the same rate takes units from the pool with one compare-and-swap on the pool's
//! word, which is all that moves between cores.
//!
//! Why decisions stay exactly the shard's (the units a caller takes are requests joining the
//! bucket that holds them, as a request arriving within `G` of a bucket's start does):
//! - A pool is valid only while its bucket is younger than `G` (then no newer bucket can open:
//!   any request joins it) and the key's span state is steady for its rate (see
//!   `Window::span_steady_until`): a unit taken before `until` is exactly the join the shard
//!   would have recorded.
//! - Units are counted before they are handed out: the window's total includes them, so nothing
//!   admitted through the shard or a pool can exceed the capacity (the shard admits only if its
//!   total, unspent units included, leaves room).
//! - Unspent units are returned (*reclaimed*) to the bucket before anything that could reject or
//!   read the key: a decision that might reject (its total, unspent units included, leaves no
//!   room), `get`, `reset`, and before any entry is removed or the shard is cleared. After a
//!   reclaim the window holds exactly the weight admitted, so a rejection, its retry hint and a
//!   read are what they would be without leases.
//! - The pool's units are split over [`LANES`] words, each on its own cache line, and a caller
//!   takes from the lane of its thread, so two callers on two cores do not write one line. A
//!   word is `generation << 32 | units`. A caller reads the descriptor (key, rate, `until`,
//!   generation) under a sequence lock, then takes units with a compare-and-swap that expects
//!   that generation: a reclaim (swap to zero units) or a new grant (next generation) makes it
//!   fail, so a unit is never taken from a pool that was reclaimed or given to another key. A
//!   caller whose lane is empty goes to the shard, which reclaims every lane and grants anew.

use crate::shard::stamps::{Fingerprint, StampTable};
use crate::sync::{fence, AtomicU64, Ordering};

/// Pools per shard (direct-mapped by hash bits).
pub(crate) const SLOTS: usize = 8;
/// Words a pool's units are split over (callers' threads are spread over them).
pub(crate) const LANES: usize = 4;
/// The most units one grant hands out.
pub(crate) const MAX_UNITS: u64 = 1 << 16;

const UNITS: u64 = 0xFFFF_FFFF;

/// A pool's descriptor: written by the token holder between two increments of `seq`.
#[derive(Debug)]
#[repr(align(128))]
struct Descriptor {
    seq: AtomicU64,
    hash: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
    len: AtomicU64,
    rate_bits: AtomicU64,
    /// The grant's time: callers reading an earlier time go to the shard.
    at: AtomicU64,
    /// Units may be taken before this time (0: no pool).
    until: AtomicU64,
    generation: AtomicU64,
    /// What the grant's admission was based on ([`Source::code`](crate::Source)).
    source: AtomicU64,
}

/// A lane of the pool's units, on a line of its own: callers write it, the descriptor stays
/// shared.
#[derive(Debug)]
#[repr(align(64))]
struct Word(AtomicU64);

#[derive(Debug)]
struct Slot {
    d: Descriptor,
    lanes: [Word; LANES],
}

/// What the token holder publishes with a grant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grant {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) rate_bits: u64,
    pub(crate) at: u64,
    pub(crate) until: u64,
    pub(crate) units: u64,
    /// What the admissions are based on (the hybrid's mode), as [`Source::code`](crate::Source).
    pub(crate) source: u64,
}

/// One shard's pools, shared by its actor (the only writer of descriptors) and its callers.
#[derive(Debug)]
pub(crate) struct LeaseTable {
    slots: Box<[Slot]>,
}

impl Default for LeaseTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseTable {
    /// An empty table.
    pub(crate) fn new() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    d: Descriptor {
                        seq: z(),
                        hash: z(),
                        a: z(),
                        b: z(),
                        len: z(),
                        rate_bits: z(),
                        at: z(),
                        until: z(),
                        generation: z(),
                        source: z(),
                    },
                    lanes: [Word(z()), Word(z()), Word(z()), Word(z())],
                })
                .collect(),
        }
    }

    /// The slot of a key hash.
    #[inline(always)]
    pub(crate) fn slot_of(hash: u64) -> usize {
        (hash >> 20) as usize & (SLOTS - 1)
    }

    /// Takes back the unspent units of slot `i`'s pool, all lanes (token holder only);
    /// returns them.
    pub(crate) fn reclaim(&self, i: usize) -> u64 {
        let Some(slot) = self.slots.get(i) else {
            return 0;
        };
        let mut back = 0;
        for lane in &slot.lanes {
            let w = lane.0.load(Ordering::Relaxed);
            if w & UNITS != 0 {
                back += lane.0.swap(w & !UNITS, Ordering::AcqRel) & UNITS;
            }
        }
        back
    }

    /// Publishes a new pool in slot `i` (token holder only; the slot's previous pool must have
    /// been reclaimed). Returns the pool's generation.
    pub(crate) fn grant(&self, i: usize, g: &Grant) -> u64 {
        let Some(slot) = self.slots.get(i) else {
            return 0;
        };
        let d = &slot.d;
        let generation = (d.generation.load(Ordering::Relaxed) + 1) & UNITS;
        let seq = d.seq.load(Ordering::Relaxed);
        d.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let (hash, a, b, len) = g.fingerprint.parts_with_hash();
        d.hash.store(hash, Ordering::Relaxed);
        d.a.store(a, Ordering::Relaxed);
        d.b.store(b, Ordering::Relaxed);
        d.len.store(len, Ordering::Relaxed);
        d.rate_bits.store(g.rate_bits, Ordering::Relaxed);
        d.at.store(g.at, Ordering::Relaxed);
        d.until.store(g.until, Ordering::Relaxed);
        d.generation.store(generation, Ordering::Relaxed);
        d.source.store(g.source, Ordering::Relaxed);
        d.seq.store(seq.wrapping_add(2), Ordering::Release);
        // Units last: a caller that read the new descriptor expects this generation.
        let units = g.units.min(UNITS);
        let per = units / LANES as u64;
        for (l, lane) in slot.lanes.iter().enumerate() {
            let mine = if l == 0 {
                units - per * (LANES as u64 - 1)
            } else {
                per
            };
            lane.0.store(generation << 32 | mine, Ordering::Release);
        }
        generation
    }

    /// Takes `n` units from lane `lane` for a call of `key` (hash `hash`) at `rate_bits` if a
    /// valid pool of its has them there; returns the decision's time and the grant's source.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take(
        &self,
        stamps: &StampTable,
        key: &[u8],
        hash: u64,
        rate_bits: u64,
        n: u64,
        lane: usize,
        now: impl FnOnce() -> u64,
    ) -> Option<(u64, u64)> {
        let slot = self.slots.get(Self::slot_of(hash))?;
        let word = &slot.lanes.get(lane & (LANES - 1))?.0;
        let d = &slot.d;
        if d.hash.load(Ordering::Relaxed) != hash {
            return None;
        }
        let seq = d.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let fp = (
            d.hash.load(Ordering::Relaxed),
            d.a.load(Ordering::Relaxed),
            d.b.load(Ordering::Relaxed),
            d.len.load(Ordering::Relaxed),
        );
        let (rate, at, until, generation, source) = (
            d.rate_bits.load(Ordering::Relaxed),
            d.at.load(Ordering::Relaxed),
            d.until.load(Ordering::Relaxed),
            d.generation.load(Ordering::Relaxed),
            d.source.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        if d.seq.load(Ordering::Relaxed) != seq || rate != rate_bits || until == 0 {
            return None;
        }
        if n == 0 || n > UNITS {
            return None;
        }
        let mut w = word.load(Ordering::Relaxed);
        if w >> 32 != generation || w & UNITS < n {
            return None;
        }
        if stamps.fingerprint(key, hash).parts_with_hash() != fp {
            return None;
        }
        let now = now();
        if now < at || now >= until {
            return None;
        }
        loop {
            if w >> 32 != generation || w & UNITS < n {
                return None;
            }
            match word.compare_exchange_weak(w, w - n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some((now, source)),
                Err(v) => w = v,
            }
        }
    }
}

/// The lane of the calling thread: threads get lanes round-robin at their first call.
#[cfg(not(eyelet_loom))]
#[inline(always)]
pub(crate) fn my_lane() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    LANE.with(|l| {
        let mut lane = l.get();
        if lane == usize::MAX {
            lane = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % LANES;
            l.set(lane);
        }
        lane
    })
}

/// Under loom every caller uses lane 0 (the models pass lanes explicitly).
#[cfg(eyelet_loom)]
pub(crate) fn my_lane() -> usize {
    0
}
