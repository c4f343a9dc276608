//! A shard's key table: dense slabs of entries indexed by a `HashTable<u32>`.
//!
//! Layout chosen for the 100k-key and 1M-idle-key targets: the table holds 4-byte indices (plus
//! hashbrown's control byte), and entries live back to back in two slabs by key length:
//! - **narrow**: a 16-byte key (up to 15 bytes inline) and the value. An absolute entry is exactly
//!   one aligned 64-byte cache line, so a lookup touches the control group, one index and one
//!   line, and an idle key with one bucket costs about 78 bytes at 1M keys (up to ~130 right after
//!   the slab and the table double).
//! - **wide**: keys of 16 to [`WIDE_KEY`] bytes inline in 80 bytes (UUIDs, IPv6 addresses, API
//!   keys), then the value: an absolute entry is two aligned lines whose loads are issued
//!   together, where a key stored elsewhere would be a second miss that waits for the first.
//!
//! Longer keys are kept in one byte arena, referenced (offset, length) from a narrow entry.
//! An index's top bit says which slab it points into.

use std::ops::Range;

use hashbrown::HashTable;

/// Bytes a key may have to be stored in a narrow entry.
const INLINE_KEY: usize = 15;
/// Bytes a key may have to be stored in a wide entry.
const WIDE_KEY: usize = 79;
/// Marker in the last key byte for a key kept in the arena.
const LONG_KEY: u8 = 0xFF;
/// Index bit of the wide slab.
const WIDE: u32 = 1 << 31;

/// Key equality without a `memcmp` call for keys of up to 64 bytes (the common cases):
/// overlapping loads cover 1..=16 bytes in two comparisons, longer keys 16 bytes at a time.
#[inline(always)]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w16 = |s: &[u8], at: usize| -> u128 {
        let mut w = [0u8; 16];
        w.copy_from_slice(&s[at..at + 16]);
        u128::from_ne_bytes(w)
    };
    let w8 = |s: &[u8], at: usize| -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let w4 = |s: &[u8], at: usize| -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_ne_bytes(w)
    };
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        17..=64 => {
            let mut i = 0;
            while i + 16 < n {
                if w16(a, i) != w16(b, i) {
                    return false;
                }
                i += 16;
            }
            w16(a, n - 16) == w16(b, n - 16)
        }
        _ => a == b,
    }
}

/// A key in 16 bytes: up to 15 bytes inline with the length in the last byte, or the offset
/// (8 bytes) and length (7 bytes) of a long key in the store's arena.
#[derive(Clone, Copy, Debug)]
struct KeyBuf([u8; 16]);

impl KeyBuf {
    fn inline(key: &[u8]) -> Option<Self> {
        if key.len() > INLINE_KEY {
            return None;
        }
        let mut b = [0u8; 16];
        b[..key.len()].copy_from_slice(key);
        b[15] = key.len() as u8;
        Some(Self(b))
    }

    fn long(offset: usize, len: usize) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(offset as u64).to_le_bytes());
        // 7 bytes of length: 2^56 bytes is beyond any address space this runs in.
        b[8..15].copy_from_slice(&(len as u64).to_le_bytes()[..7]);
        b[15] = LONG_KEY;
        Self(b)
    }

    /// The inline bytes, or the arena range of a long key.
    #[inline(always)]
    fn get(&self) -> Result<&[u8], Range<usize>> {
        let len = self.0[15];
        if len == LONG_KEY {
            let mut o = [0u8; 8];
            o.copy_from_slice(&self.0[..8]);
            let mut l = [0u8; 8];
            l[..7].copy_from_slice(&self.0[8..15]);
            let (offset, len) = (
                u64::from_le_bytes(o) as usize,
                u64::from_le_bytes(l) as usize,
            );
            Err(offset..offset.saturating_add(len))
        } else {
            Ok(&self.0[..usize::from(len).min(INLINE_KEY)])
        }
    }
}

/// A key of up to [`WIDE_KEY`] bytes inline, its length in the last byte.
#[derive(Clone, Copy, Debug)]
struct WideKey([u8; WIDE_KEY + 1]);

impl WideKey {
    fn inline(key: &[u8]) -> Option<Self> {
        if key.len() > WIDE_KEY {
            return None;
        }
        let mut b = [0u8; WIDE_KEY + 1];
        b[..key.len()].copy_from_slice(key);
        b[WIDE_KEY] = key.len() as u8;
        Some(Self(b))
    }

    #[inline(always)]
    fn get(&self) -> &[u8] {
        &self.0[..usize::from(self.0[WIDE_KEY]).min(WIDE_KEY)]
    }
}

/// What a stored value asks of its entry's layout.
pub(crate) trait Slot {
    /// A zero-sized array of this type sets the entry's alignment.
    type Align: Copy + Default + Send + Sync + std::fmt::Debug;
}

/// Alignment marker for entries that fill whole cache lines.
#[repr(align(64))]
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct CacheLine;

/// One key: no stored hash (hashbrown's 7-bit tags filter probes; the hash is recomputed from
/// the key on the rare resize or move).
#[derive(Debug)]
struct Entry<K, V: Slot> {
    key: K,
    value: V,
    _align: [V::Align; 0],
}

/// Where an index points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Narrow(usize),
    Wide(usize),
}

impl At {
    #[inline(always)]
    fn of(idx: usize) -> Self {
        let i = idx as u32;
        if i & WIDE != 0 {
            At::Wide((i & !WIDE) as usize)
        } else {
            At::Narrow(i as usize)
        }
    }

    fn index(self) -> usize {
        match self {
            At::Narrow(i) => i,
            At::Wide(i) => (i as u32 | WIDE) as usize,
        }
    }
}

/// Keys of one shard and their values.
#[derive(Debug)]
pub(crate) struct Store<V: Slot> {
    table: HashTable<u32>,
    narrow: Vec<Entry<KeyBuf, V>>,
    wide: Vec<Entry<WideKey, V>>,
    /// Keys longer than [`WIDE_KEY`] bytes, back to back, referenced from narrow entries.
    long_keys: Vec<u8>,
    /// Bytes of `long_keys` that belong to removed keys (reclaimed by compaction).
    long_dead: usize,
    /// Where the next incremental sweep resumes (narrow entries first, then wide ones).
    cursor: usize,
    /// Indices an entry moved into since the last [`take_moves`](Self::take_moves) (a removal
    /// moves its slab's last entry into the freed index), when tracking is on; `None` off.
    moved_into: Option<Vec<u32>>,
    /// Whether moves were dropped (the list outgrew the store, or the store was cleared): the
    /// next `take_moves` answers `None`.
    moves_lost: bool,
    /// Whether an entry was removed since the last `take_moves` (with or without a move).
    removed: bool,
    /// The router's hasher: callers pass `hasher.hash_one(key)` as the hash.
    hasher: ahash::RandomState,
}

/// Shrinks a slab that is at most a quarter full.
fn shrink<T>(v: &mut Vec<T>) -> bool {
    if v.len() * 4 < v.capacity() && v.capacity() > 64 {
        v.shrink_to(v.len() * 2);
        return true;
    }
    false
}

impl<V: Slot> Store<V> {
    /// An empty store whose callers hash keys with `hasher.hash_one(&str)`.
    pub(crate) fn new(hasher: ahash::RandomState) -> Self {
        Self {
            table: HashTable::new(),
            narrow: Vec::new(),
            wide: Vec::new(),
            long_keys: Vec::new(),
            long_dead: 0,
            cursor: 0,
            moved_into: None,
            moves_lost: false,
            removed: false,
            hasher,
        }
    }

    /// Records the indices entries move into from now on (for callers that keep indices
    /// across removals; see [`take_moves`](Self::take_moves)).
    #[cfg(feature = "redis")]
    pub(crate) fn track_moves(&mut self) {
        self.moved_into.get_or_insert_with(Vec::new);
    }

    /// Since the last call: the indices entries moved into (unsorted, possibly repeated) and
    /// whether any entry was removed; `None` if some moves were not recorded. An index held
    /// from before a removal may now name another entry (or a later insertion), and the entry
    /// it named may be at one of these indices (or, for `None`, anywhere).
    #[cfg(feature = "redis")]
    pub(crate) fn take_moves(&mut self) -> Option<(Vec<u32>, bool)> {
        let moved = std::mem::take(self.moved_into.as_mut()?);
        let removed = std::mem::take(&mut self.removed);
        if std::mem::take(&mut self.moves_lost) {
            return None;
        }
        Some((moved, removed))
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.narrow.len() + self.wide.len()
    }

    /// The key stored at `at`.
    fn key_at<'a>(
        narrow: &'a [Entry<KeyBuf, V>],
        wide: &'a [Entry<WideKey, V>],
        long_keys: &'a [u8],
        at: At,
    ) -> &'a [u8] {
        match at {
            At::Narrow(i) => match narrow.get(i).map(|e| e.key.get()) {
                Some(Ok(b)) => b,
                Some(Err(range)) => long_keys.get(range).unwrap_or(&[]),
                None => &[],
            },
            At::Wide(i) => wide.get(i).map_or(&[], |e| e.key.get()),
        }
    }

    /// The hash the router computed for the key at `at` (`hash_one(&str)`).
    fn hash_at(
        narrow: &[Entry<KeyBuf, V>],
        wide: &[Entry<WideKey, V>],
        long_keys: &[u8],
        hasher: &ahash::RandomState,
        at: At,
    ) -> u64 {
        let bytes = Self::key_at(narrow, wide, long_keys, at);
        match std::str::from_utf8(bytes) {
            Ok(s) => hasher.hash_one(s),
            // Keys are stored from `&str`, so this arm is never taken.
            Err(_) => hasher.hash_one(bytes),
        }
    }

    fn rehash_index(&self, i: u32) -> u64 {
        Self::hash_at(
            &self.narrow,
            &self.wide,
            &self.long_keys,
            &self.hasher,
            At::of(i as usize),
        )
    }

    /// Index of `key`, if present.
    #[inline]
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let (narrow, wide, long_keys) = (&self.narrow, &self.wide, &self.long_keys);
        self.table
            .find(hash, |&i| match At::of(i as usize) {
                At::Narrow(i) => narrow.get(i).is_some_and(|e| match e.key.get() {
                    Ok(inline) => bytes_eq(inline, key),
                    Err(range) => long_keys.get(range).is_some_and(|k| k == key),
                }),
                At::Wide(i) => wide.get(i).is_some_and(|e| bytes_eq(e.key.get(), key)),
            })
            .map(|&i| i as usize)
    }

    /// The value at `idx` (an index [`find`](Self::find) or [`insert`](Self::insert) returned).
    #[inline]
    pub(crate) fn value_mut(&mut self, idx: usize) -> &mut V {
        match At::of(idx) {
            At::Narrow(i) => &mut self.narrow[i].value,
            At::Wide(i) => &mut self.wide[i].value,
        }
    }

    fn value_at(&self, at: At) -> Option<&V> {
        match at {
            At::Narrow(i) => self.narrow.get(i).map(|e| &e.value),
            At::Wide(i) => self.wide.get(i).map(|e| &e.value),
        }
    }

    /// The value of `key`, if present.
    #[inline]
    pub(crate) fn get(&self, hash: u64, key: &[u8]) -> Option<&V> {
        self.find(hash, key).and_then(|i| self.value_at(At::of(i)))
    }

    /// Inserts a key known to be absent; returns its index.
    pub(crate) fn insert(&mut self, hash: u64, key: &[u8], value: V) -> usize {
        let at = if let Some(k) = KeyBuf::inline(key) {
            self.narrow.push(Entry {
                key: k,
                value,
                _align: [],
            });
            At::Narrow(self.narrow.len() - 1)
        } else if let Some(k) = WideKey::inline(key) {
            self.wide.push(Entry {
                key: k,
                value,
                _align: [],
            });
            At::Wide(self.wide.len() - 1)
        } else {
            let offset = self.long_keys.len();
            self.long_keys.extend_from_slice(key);
            self.narrow.push(Entry {
                key: KeyBuf::long(offset, key.len()),
                value,
                _align: [],
            });
            At::Narrow(self.narrow.len() - 1)
        };
        let idx = at.index();
        let (narrow, wide, long_keys, hasher) =
            (&self.narrow, &self.wide, &self.long_keys, &self.hasher);
        self.table.insert_unique(hash, idx as u32, |&i| {
            Self::hash_at(narrow, wide, long_keys, hasher, At::of(i as usize))
        });
        idx
    }

    /// Removes the entry at `idx` (the last entry of its slab moves into its place).
    pub(crate) fn remove_at(&mut self, idx: usize) -> Option<V> {
        let at = At::of(idx);
        let (len, i) = match at {
            At::Narrow(i) => (self.narrow.len(), i),
            At::Wide(i) => (self.wide.len(), i),
        };
        if i >= len {
            return None;
        }
        let last = match at {
            At::Narrow(_) => At::Narrow(len - 1),
            At::Wide(_) => At::Wide(len - 1),
        };
        let hash = self.rehash_index(idx as u32);
        if let Ok(slot) = self.table.find_entry(hash, |&i| i as usize == idx) {
            slot.remove();
        }
        self.removed = true;
        if last != at {
            let size = self.len();
            if let Some(m) = self.moved_into.as_mut() {
                if m.len() >= size.max(64) {
                    // more moves than entries: a full visit is as cheap; bounded memory
                    m.clear();
                    self.moves_lost = true;
                }
                if !self.moves_lost {
                    m.push(idx as u32);
                }
            }
            let moved = self.rehash_index(last.index() as u32);
            if let Some(slot) = self.table.find_mut(moved, |&i| i as usize == last.index()) {
                *slot = idx as u32;
            }
        }
        let (value, shrunk) = match at {
            At::Narrow(i) => {
                let removed = self.narrow.swap_remove(i);
                if let Err(range) = removed.key.get() {
                    self.long_dead += range.len();
                    if self.long_dead > 4096 && self.long_dead * 2 > self.long_keys.len() {
                        self.compact_long_keys();
                    }
                }
                (removed.value, shrink(&mut self.narrow))
            }
            At::Wide(i) => {
                let removed = self.wide.swap_remove(i);
                (removed.value, shrink(&mut self.wide))
            }
        };
        if shrunk {
            let len = self.len();
            let (narrow, wide, long_keys, hasher) =
                (&self.narrow, &self.wide, &self.long_keys, &self.hasher);
            self.table.shrink_to(len, |&i| {
                Self::hash_at(narrow, wide, long_keys, hasher, At::of(i as usize))
            });
        }
        Some(value)
    }

    /// Rewrites the long-key arena with only the keys still referenced (the removed ones are
    /// at least half of it, so the copying is paid for by the removals).
    #[cold]
    fn compact_long_keys(&mut self) {
        let mut arena = Vec::with_capacity(self.long_keys.len() - self.long_dead);
        for e in &mut self.narrow {
            if let Err(range) = e.key.get() {
                let bytes = self.long_keys.get(range).unwrap_or(&[]);
                let offset = arena.len();
                arena.extend_from_slice(bytes);
                e.key = KeyBuf::long(offset, bytes.len());
            }
        }
        self.long_keys = arena;
        self.long_dead = 0;
    }

    /// Removes `key`; returns whether it was present.
    pub(crate) fn remove(&mut self, hash: u64, key: &[u8]) -> bool {
        match self.find(hash, key) {
            Some(idx) => self.remove_at(idx).is_some(),
            None => false,
        }
    }

    /// Visits up to `budget` entries from the sweep cursor, removing those for which `evict`
    /// says so. Returns the number removed.
    pub(crate) fn sweep(&mut self, budget: usize, mut evict: impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        for _ in 0..budget {
            if self.len() == 0 {
                self.cursor = 0;
                break;
            }
            if self.cursor >= self.len() {
                self.cursor = 0;
            }
            let c = self.cursor;
            let at = if c < self.narrow.len() {
                At::Narrow(c)
            } else {
                At::Wide(c - self.narrow.len())
            };
            if self.value_at(at).is_some_and(&mut evict) {
                // The last entry of the slab moved into `at`: visit it again next round.
                self.remove_at(at.index());
                removed += 1;
            } else {
                self.cursor += 1;
            }
        }
        removed
    }

    /// Calls `f(index, key, hash, value)` for every key, in slab order.
    #[cfg(feature = "redis")]
    pub(crate) fn for_each_mut(&mut self, mut f: impl FnMut(usize, &[u8], u64, &mut V)) {
        let hasher = &self.hasher;
        let hash = |k: &[u8]| match std::str::from_utf8(k) {
            Ok(s) => hasher.hash_one(s),
            Err(_) => hasher.hash_one(k),
        };
        for (i, e) in self.narrow.iter_mut().enumerate() {
            let key = match e.key.get() {
                Ok(b) => b,
                Err(range) => self.long_keys.get(range).unwrap_or(&[]),
            };
            f(At::Narrow(i).index(), key, hash(key), &mut e.value);
        }
        for (i, e) in self.wide.iter_mut().enumerate() {
            let key = e.key.get();
            f(At::Wide(i).index(), key, hash(key), &mut e.value);
        }
    }

    /// The key, its hash and the value at `idx`, if there is an entry there.
    #[cfg(feature = "redis")]
    pub(crate) fn entry_mut(&mut self, idx: usize) -> Option<(&[u8], u64, &mut V)> {
        let hasher = &self.hasher;
        let (key, value) = match At::of(idx) {
            At::Narrow(i) => {
                let e = self.narrow.get_mut(i)?;
                let key = match e.key.get() {
                    Ok(b) => b,
                    Err(range) => self.long_keys.get(range).unwrap_or(&[]),
                };
                (key, &mut e.value)
            }
            At::Wide(i) => {
                let e = self.wide.get_mut(i)?;
                (e.key.get(), &mut e.value)
            }
        };
        let hash = match std::str::from_utf8(key) {
            Ok(s) => hasher.hash_one(s),
            Err(_) => hasher.hash_one(key),
        };
        Some((key, hash, value))
    }

    /// Removes every key.
    pub(crate) fn clear(&mut self) {
        if let Some(m) = self.moved_into.as_mut() {
            m.clear();
            self.moves_lost = true;
        }
        self.table.clear();
        self.narrow.clear();
        self.wide.clear();
        self.long_keys = Vec::new();
        self.long_dead = 0;
        self.cursor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Slot for usize {
        type Align = u8;
    }
    impl Slot for u64 {
        type Align = u8;
    }

    fn hasher() -> ahash::RandomState {
        ahash::RandomState::with_seeds(1, 2, 3, 4)
    }

    fn h(k: &str) -> u64 {
        hasher().hash_one(k)
    }

    #[test]
    fn short_key_equality() {
        let equal = [
            "",
            "a",
            "ab",
            "abc",
            "abcde",
            "abcdefgh",
            "user_1234567",
            "0123456789abcdef",
        ];
        for a in equal {
            assert!(bytes_eq(a.as_bytes(), a.as_bytes()));
        }
        let differ = [
            ("abc", "abd"),
            ("abc", "xbc"),
            ("abc", "axc"),
            ("ab", "ax"),
            ("abcde", "abcdx"),
            ("abcde", "xbcde"),
            ("abcdef", "abxdef"),
            ("abcdefgh", "abcdefgi"),
            ("user_1234567", "user_1234568"),
            ("user_1234567", "xser_1234567"),
            ("user_1234567", "user_x234567"),
            ("a", "ab"),
        ];
        for (a, b) in differ {
            assert!(!bytes_eq(a.as_bytes(), b.as_bytes()), "{a} {b}");
        }
    }

    #[test]
    fn absolute_entries_are_aligned_cache_lines() {
        use crate::math::{Count, Window};
        assert_eq!(std::mem::size_of::<Entry<KeyBuf, Window<Count>>>(), 64);
        assert_eq!(std::mem::align_of::<Entry<KeyBuf, Window<Count>>>(), 64);
        assert_eq!(std::mem::size_of::<Entry<WideKey, Window<Count>>>(), 128);
    }

    #[test]
    fn keys_of_every_length_land_in_their_slab_and_are_found() {
        let mut s = Store::new(hasher());
        let keys: Vec<String> = (0..300)
            .map(|i| "k".repeat(i % 100) + &i.to_string())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            let idx = s.insert(h(k), k.as_bytes(), i);
            let wide = (idx as u32) & WIDE != 0;
            assert_eq!(wide, (16..=WIDE_KEY).contains(&k.len()), "{}", k.len());
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.get(h(k), k.as_bytes()), Some(&i));
            // same length, one byte changed at each end
            for pos in [0, k.len() - 1] {
                let mut other = k.clone().into_bytes();
                other[pos] ^= 1;
                assert_eq!(s.get(h(k), &other), None);
            }
        }
        // remove from both slabs, in the middle and at the end; the moved entries stay found
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            assert!(s.remove(h(k), k.as_bytes()), "{i}");
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                s.get(h(k), k.as_bytes()).copied(),
                (i % 3 != 0).then_some(i)
            );
        }
        assert_eq!(
            s.sweep(1000, |v| v % 2 == 0),
            (0..300).filter(|i| i % 3 != 0 && i % 2 == 0).count()
        );
        for (i, k) in keys.iter().enumerate() {
            let kept = i % 3 != 0 && i % 2 != 0;
            assert_eq!(s.get(h(k), k.as_bytes()).copied(), kept.then_some(i));
        }
    }

    #[test]
    fn key_equality_up_to_64_bytes_compares_every_byte() {
        for n in 16..=70usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(bytes_eq(&a, &a.clone()));
            for pos in 0..n {
                let mut b = a.clone();
                b[pos] ^= 0x80;
                assert!(!bytes_eq(&a, &b), "{n} {pos}");
            }
        }
    }

    #[test]
    fn insert_find_remove_keeps_indices_consistent() {
        let mut s = Store::new(hasher());
        let keys: Vec<String> = (0..200)
            .map(|i| format!("key-{i}-{}", "x".repeat(i % 30)))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            s.insert(h(k), k.as_bytes(), i);
        }
        for (i, k) in keys.iter().enumerate().step_by(3) {
            assert!(s.remove(h(k), k.as_bytes()), "{i}");
        }
        for (i, k) in keys.iter().enumerate() {
            let got = s.get(h(k), k.as_bytes()).copied();
            assert_eq!(got, if i % 3 == 0 { None } else { Some(i) });
        }
        assert_eq!(s.len(), 200 - 67);
        let long = "y".repeat(40);
        s.insert(h(&long), long.as_bytes(), 999);
        assert_eq!(s.get(h(&long), long.as_bytes()), Some(&999));
    }

    #[test]
    fn removed_long_keys_are_reclaimed_and_the_rest_still_found() {
        let mut s = Store::new(hasher());
        let keys: Vec<String> = (0..2000).map(|i| format!("{i:0>80}")).collect();
        for (i, k) in keys.iter().enumerate() {
            s.insert(h(k), k.as_bytes(), i);
        }
        assert_eq!(s.long_keys.len(), 2000 * 80);
        for k in keys.iter().skip(1).step_by(2).chain(keys.iter().step_by(4)) {
            assert!(s.remove(h(k), k.as_bytes()));
        }
        // 1500 removed: compaction ran, at most the 4 KiB slack plus half the arena is dead
        assert!(
            s.long_keys.len() <= 500 * 80 * 2 + 4096,
            "{}",
            s.long_keys.len()
        );
        for (i, k) in keys.iter().enumerate() {
            let kept = i % 2 == 0 && i % 4 != 0;
            assert_eq!(s.get(h(k), k.as_bytes()).copied(), kept.then_some(i), "{i}");
        }
        // a key longer than any inline one, and one of exactly 15 and 16 bytes
        for k in ["x".repeat(15), "x".repeat(16), "é".repeat(300)] {
            s.insert(h(&k), k.as_bytes(), 7);
            assert_eq!(s.get(h(&k), k.as_bytes()), Some(&7));
        }
    }

    #[test]
    #[cfg(feature = "redis")]
    fn removals_record_where_entries_moved_until_there_are_too_many() {
        let mut s: Store<u64> = Store::new(hasher());
        s.track_moves();
        let idx: Vec<usize> = (0..4u64)
            .map(|i| {
                let k = format!("k{i}");
                s.insert(h(&k), k.as_bytes(), i)
            })
            .collect();
        assert_eq!(s.take_moves(), Some((vec![], false)));
        // k3, the slab's last entry, moves into k1's index
        assert!(s.remove(h("k1"), b"k1"));
        assert_eq!(s.find(h("k3"), b"k3"), Some(idx[1]));
        assert_eq!(s.take_moves(), Some((vec![idx[1] as u32], true)));
        // removing the last entry moves nothing, but is a removal
        assert!(s.remove(h("k2"), b"k2"));
        assert_eq!(s.take_moves(), Some((vec![], true)));
        // more moves than entries: dropped, the caller visits everything
        let mut big: Store<u64> = Store::new(hasher());
        big.track_moves();
        for i in 0..200u64 {
            let k = format!("b{i}");
            big.insert(h(&k), k.as_bytes(), i);
        }
        // each removal at index 0 moves the slab's last entry there: b0, then b199, b198, ...
        for i in std::iter::once(0u64).chain((80..200u64).rev()) {
            let k = format!("b{i}");
            assert!(big.remove(h(&k), k.as_bytes()));
        }
        assert_eq!(big.take_moves(), None);
        assert_eq!(big.take_moves(), Some((vec![], false)), "a fresh start");
        big.clear();
        assert_eq!(
            big.take_moves(),
            None,
            "a cleared store invalidates every index"
        );
    }

    #[test]
    fn sweep_visits_everything_in_rounds() {
        let mut s = Store::new(hasher());
        for i in 0..100u64 {
            let k = i.to_string();
            s.insert(h(&k), k.as_bytes(), i);
        }
        let mut removed = 0;
        for _ in 0..10 {
            removed += s.sweep(16, |v| v % 2 == 0);
        }
        assert_eq!(removed, 50);
        assert_eq!(s.len(), 50);
        for i in 0..100u64 {
            let k = i.to_string();
            assert_eq!(s.get(h(&k), k.as_bytes()).is_some(), i % 2 == 1);
        }
    }
}
