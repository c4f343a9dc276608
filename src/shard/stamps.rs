//! Rejection stamps: a shard's recent absolute rejections, answered again without its run token.
//!
//! Under overload a hot key rejects almost every call, and each rejection would take the shard's
//! token (two locked instructions on a line every caller writes). Yet a rejection stays the same
//! answer until something changes: for the same key, rate and weight, with the key's state
//! unchanged, the slow path at any time `now` before the retry time gives `Rejected` with the same
//! retry time, the same remaining capacity and the same window (the buckets that expire before
//! the retry time never made room, see `math::absolute`). So the token holder that decides such a
//! rejection publishes it here, and callers read it with a sequence lock: a read-only hit on a
//! line all callers share.
//!
//! Rules that keep every answer the one the shard would give:
//! - The token holder *invalidates* a key's stamp before it changes that key's state in any way
//!   (every decision on the key through the shard, `reset`, `clear`), so a reader that saw a valid
//!   stamp read it before the change: it is ordered before it.
//! - A stamp holds until the retry time (`until`). A *recording* call also changes the key's
//!   retained span or its confirmation when one is due (see `math::window`), which a stamp cannot
//!   do: such calls use the stamp only until `record_until`, the first time a recording call at
//!   that window would change the span's state.
//! - A caller whose clock reads earlier than the stamp's decision time goes to the shard.
//! - Keys are matched exactly up to 16 bytes (the bytes themselves); a longer key by its length
//!   and a 192-bit keyed fingerprint (the router's 64-bit hash and two 64-bit hashes under
//!   independent random seeds), so two live keys would have to collide in all three.

use std::time::Duration;

use crate::decision::{RateLimitDecision, Stamped};
use crate::sync::{fence, AtomicU64, Ordering};

/// Slots per shard (direct-mapped by hash bits).
const SLOTS: usize = 16;

/// A key as a stamp matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    hash: u64,
    a: u64,
    b: u64,
    /// Key length; bit 63 set for a hashed (long) key.
    len: u64,
}

const HASHED: u64 = 1 << 63;

impl Fingerprint {
    /// `(hash, a, b, len)`.
    #[inline(always)]
    pub(crate) fn parts_with_hash(&self) -> (u64, u64, u64, u64) {
        (self.hash, self.a, self.b, self.len)
    }
}

#[cfg(eyelet_loom)]
impl Fingerprint {
    /// A fingerprint from its parts (the loom models).
    pub(crate) fn from_parts(hash: u64, a: u64, b: u64, len: u64) -> Self {
        Self { hash, a, b, len }
    }

    /// `(a, b, len)`.
    pub(crate) fn parts(&self) -> (u64, u64, u64) {
        (self.a, self.b, self.len)
    }
}

/// One published rejection. Fields are written only by the shard's token holder, between two
/// increments of `seq` (odd while writing).
#[derive(Debug)]
#[repr(align(128))]
struct Slot {
    seq: AtomicU64,
    hash: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
    len: AtomicU64,
    rate_bits: AtomicU64,
    need: AtomicU64,
    /// The decision's time: callers reading an earlier time go to the shard.
    at: AtomicU64,
    /// Retry time: the stamp answers calls before it.
    until: AtomicU64,
    /// Recording calls use the stamp only before this (≤ `until`).
    record_until: AtomicU64,
    remaining: AtomicU64,
    window_ms: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            seq: z(),
            hash: z(),
            a: z(),
            b: z(),
            len: z(),
            rate_bits: z(),
            need: z(),
            at: z(),
            until: z(),
            record_until: z(),
            remaining: z(),
            window_ms: z(),
        }
    }
}

/// What a stamp says (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) rate_bits: u64,
    pub(crate) need: u64,
    pub(crate) at: u64,
    pub(crate) until: u64,
    pub(crate) record_until: u64,
    pub(crate) remaining: u64,
    pub(crate) window_ms: u64,
}

/// Eight bytes as a word.
#[inline(always)]
fn le_u64(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    if let Some(b) = bytes.get(..8) {
        w.copy_from_slice(b);
    }
    u64::from_le_bytes(w)
}

/// Up to eight bytes as a word, by loads of fixed size: for lengths 4 to 8 the first four and
/// the last four (overlapping below 8), for 1 to 3 the first, middle and last byte. Together
/// they cover every byte, so for a given length (which the fingerprint holds too) two different
/// inputs never give the same word.
#[inline(always)]
fn pack8(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let u32_at = |i: usize| {
        let mut w = [0u8; 4];
        if let Some(b) = bytes.get(i..i + 4) {
            w.copy_from_slice(b);
        }
        u64::from(u32::from_le_bytes(w))
    };
    let byte = |i: usize| u64::from(bytes.get(i).copied().unwrap_or(0));
    match len {
        8.. => le_u64(bytes),
        4..=7 => u32_at(0) | u32_at(len - 4) << 32,
        1..=3 => byte(0) | byte(len / 2) << 8 | byte(len - 1) << 16,
        0 => 0,
    }
}

/// One shard's stamps, shared by its actor (the only writer) and its callers.
#[derive(Debug)]
pub(crate) struct StampTable {
    slots: Box<[Slot]>,
    seeds: (ahash::RandomState, ahash::RandomState),
}

impl StampTable {
    /// An empty table; `seeds` make the fingerprints of long keys (random in production).
    pub(crate) fn new(seeds: (ahash::RandomState, ahash::RandomState)) -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            seeds,
        }
    }

    #[inline(always)]
    fn slot(&self, hash: u64) -> &Slot {
        // SLOTS is a power of two.
        &self.slots[(hash >> 16) as usize & (SLOTS - 1)]
    }

    /// The fingerprint of `key`, whose router hash is `hash`.
    #[inline]
    pub(crate) fn fingerprint(&self, key: &[u8], hash: u64) -> Fingerprint {
        let len = key.len() as u64;
        if key.len() <= 16 {
            // The key's bytes themselves, read with fixed-size loads (a copy of a variable
            // length is a call to `memcpy`, on every lease take and stamp read)
            let (a, b) = match key.split_at_checked(8) {
                Some((head, tail)) => (le_u64(head), pack8(tail)),
                None => (pack8(key), 0),
            };
            return Fingerprint { hash, a, b, len };
        }
        Fingerprint {
            hash,
            a: self.seeds.0.hash_one(key),
            b: self.seeds.1.hash_one(key),
            len: len | HASHED,
        }
    }

    /// Publishes a rejection (token holder only).
    pub(crate) fn publish(&self, s: &Stamp) {
        let slot = self.slot(s.fingerprint.hash);
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        slot.hash.store(s.fingerprint.hash, Ordering::Relaxed);
        slot.a.store(s.fingerprint.a, Ordering::Relaxed);
        slot.b.store(s.fingerprint.b, Ordering::Relaxed);
        slot.len.store(s.fingerprint.len, Ordering::Relaxed);
        slot.rate_bits.store(s.rate_bits, Ordering::Relaxed);
        slot.need.store(s.need, Ordering::Relaxed);
        slot.at.store(s.at, Ordering::Relaxed);
        slot.until.store(s.until, Ordering::Relaxed);
        slot.record_until.store(s.record_until, Ordering::Relaxed);
        slot.remaining.store(s.remaining, Ordering::Relaxed);
        slot.window_ms.store(s.window_ms, Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Withdraws any stamp of the key with router hash `hash` (token holder only), before the
    /// key's state changes. A slot holding another key is left alone.
    #[inline(always)]
    pub(crate) fn invalidate(&self, hash: u64) {
        let slot = self.slot(hash);
        // Only the token holder writes, so it reads its own last write here.
        if slot.hash.load(Ordering::Relaxed) != hash || slot.until.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.clear_slot(slot);
    }

    fn clear_slot(&self, slot: &Slot) {
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        slot.until.store(0, Ordering::Relaxed);
        slot.record_until.store(0, Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Withdraws every stamp (token holder only).
    pub(crate) fn invalidate_all(&self) {
        for slot in self.slots.iter() {
            if slot.until.load(Ordering::Relaxed) != 0 {
                self.clear_slot(slot);
            }
        }
    }

    /// The stamp in `hash`'s slot, read consistently, or `None` if the slot is empty, holds
    /// another hash or was being written (the loom models' view).
    #[cfg(eyelet_loom)]
    pub(crate) fn read(&self, hash: u64) -> Option<Stamp> {
        self.read_at(hash, || 0).map(|(s, _)| s)
    }

    /// [`read`](Self::read), with `now()` read before the sequence is checked again: a stamp
    /// withdrawn before that time is not returned with it.
    #[inline(always)]
    fn read_at(&self, hash: u64, now: impl FnOnce() -> u64) -> Option<(Stamp, u64)> {
        let slot = self.slot(hash);
        // A cheap look first: most calls find no stamp of theirs.
        if slot.hash.load(Ordering::Relaxed) != hash {
            return None;
        }
        let seq = slot.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let s = Stamp {
            fingerprint: Fingerprint {
                hash: slot.hash.load(Ordering::Relaxed),
                a: slot.a.load(Ordering::Relaxed),
                b: slot.b.load(Ordering::Relaxed),
                len: slot.len.load(Ordering::Relaxed),
            },
            rate_bits: slot.rate_bits.load(Ordering::Relaxed),
            need: slot.need.load(Ordering::Relaxed),
            at: slot.at.load(Ordering::Relaxed),
            until: slot.until.load(Ordering::Relaxed),
            record_until: slot.record_until.load(Ordering::Relaxed),
            remaining: slot.remaining.load(Ordering::Relaxed),
            window_ms: slot.window_ms.load(Ordering::Relaxed),
        };
        let now = now();
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != seq || s.until == 0 {
            return None;
        }
        Some((s, now))
    }

    /// The shard's answer to `inc`/`is_allowed` of `key` (router hash `hash`) at `rate_bits`
    /// with weight `n`, if a stamp gives it at `now`.
    #[inline(always)]
    pub(crate) fn answer(
        &self,
        key: &[u8],
        hash: u64,
        rate_bits: u64,
        n: u64,
        record: bool,
        now: impl FnOnce() -> u64,
    ) -> Option<Stamped> {
        let (s, now) = self.read_at(hash, now)?;
        let until = if record && n > 0 {
            s.record_until
        } else {
            s.until
        };
        if s.rate_bits != rate_bits || s.need != n.max(1) || now < s.at || now >= until {
            return None;
        }
        if s.fingerprint != self.fingerprint(key, hash) {
            return None;
        }
        Some(Stamped::new(
            RateLimitDecision::Rejected {
                retry_after_ms: s.until - now,
                remaining_after_waiting: s.remaining,
                window: Duration::from_millis(s.window_ms),
            },
            now,
            crate::decision::Source::Local,
        ))
    }
}

#[cfg(all(test, not(eyelet_loom)))]
mod tests {
    use super::*;

    #[test]
    fn short_keys_have_distinct_fingerprints() {
        // Every key of up to 16 bytes is its own fingerprint: all keys over a 3-letter alphabet
        // up to length 5, and keys of every length to 16 that differ in one byte anywhere.
        let t = table();
        let mut seen = std::collections::HashMap::new();
        let mut check = |key: Vec<u8>| {
            let f = t.fingerprint(&key, 7).parts_with_hash();
            if let Some(other) = seen.insert(f, key.clone()) {
                assert_eq!(other, key, "two keys, one fingerprint");
            }
        };
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..5 {
            keys = keys
                .iter()
                .flat_map(|k| {
                    b"ab\0".iter().map(move |&c| {
                        let mut k = k.clone();
                        k.push(c);
                        k
                    })
                })
                .collect();
            keys.iter().cloned().for_each(&mut check);
        }
        for len in 0..=16usize {
            let base: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
            check(base.clone());
            for i in 0..len {
                for x in [1u8, 0x80, 0xff] {
                    let mut k = base.clone();
                    k[i] ^= x;
                    check(k);
                }
            }
        }
    }

    fn table() -> StampTable {
        StampTable::new((
            ahash::RandomState::with_seeds(1, 2, 3, 4),
            ahash::RandomState::with_seeds(5, 6, 7, 8),
        ))
    }

    fn stamp(t: &StampTable, key: &str, hash: u64) -> Stamp {
        Stamp {
            fingerprint: t.fingerprint(key.as_bytes(), hash),
            rate_bits: 1.0f64.to_bits(),
            need: 1,
            at: 100,
            until: 1000,
            record_until: 600,
            remaining: 1,
            window_ms: 1000,
        }
    }

    #[test]
    fn a_stamp_answers_only_its_key_rate_weight_and_time() {
        let t = table();
        let r = 1.0f64.to_bits();
        for key in [
            "k",
            "a key of exactly 16",
            "a key longer than sixteen bytes",
        ] {
            let h = 0xABCD_0000 ^ key.len() as u64;
            t.publish(&stamp(&t, key, h));
            let hit = t
                .answer(key.as_bytes(), h, r, 1, true, || 500)
                .map(|s| s.decision);
            assert_eq!(
                hit,
                Some(RateLimitDecision::Rejected {
                    retry_after_ms: 500,
                    remaining_after_waiting: 1,
                    window: Duration::from_millis(1000)
                })
            );
            // a probe (n = 0) is a unit request that records nothing
            assert!(t.answer(key.as_bytes(), h, r, 0, true, || 800).is_some());
            // recording calls only before record_until, reads until the retry time
            assert!(t.answer(key.as_bytes(), h, r, 1, true, || 600).is_none());
            assert!(t.answer(key.as_bytes(), h, r, 1, false, || 999).is_some());
            assert!(t.answer(key.as_bytes(), h, r, 1, false, || 1000).is_none());
            // before the decision's time, another rate or weight, another key: no answer
            assert!(t.answer(key.as_bytes(), h, r, 1, false, || 99).is_none());
            assert!(t
                .answer(key.as_bytes(), h, 2.0f64.to_bits(), 1, false, || 500)
                .is_none());
            assert!(t.answer(key.as_bytes(), h, r, 2, false, || 500).is_none());
            let mut other = key.as_bytes().to_vec();
            other[0] ^= 1;
            assert!(t.answer(&other, h, r, 1, false, || 500).is_none());
            // invalidated: no answer
            t.invalidate(h);
            assert!(t.answer(key.as_bytes(), h, r, 1, false, || 500).is_none());
        }
    }

    #[test]
    fn invalidating_another_hash_keeps_the_stamp() {
        let t = table();
        let r = 1.0f64.to_bits();
        t.publish(&stamp(&t, "k", 7 << 16));
        // same slot, other hash
        t.invalidate((7 << 16) | 1);
        assert!(t.answer(b"k", 7 << 16, r, 1, false, || 500).is_some());
        t.invalidate_all();
        assert!(t.answer(b"k", 7 << 16, r, 1, false, || 500).is_none());
    }
}
