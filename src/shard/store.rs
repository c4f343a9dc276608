//! A shard's key table: a dense slab of entries indexed by a `HashTable<u32>`.
//!
//! Layout chosen for the 100k-key and 1M-idle-key targets: the table holds 4-byte indices (plus
//! hashbrown's control byte); the slab holds entries back to back, each a 16-byte key (up to 15
//! bytes inline; a longer key's offset and length in one shared byte arena, so comparing it costs
//! one more cache line, not two) and the value. An absolute entry is exactly one
//! 64-byte cache line, aligned, so a lookup touches the control group, one index and one line,
//! and an idle key with one bucket costs about 78 bytes at 1M keys (up to ~130 right after the
//! slab and the table double).

use hashbrown::HashTable;

/// Bytes a key may have to be stored inline.
const INLINE_KEY: usize = 15;
/// Marker in the last key byte for a key kept in the side table.
const LONG_KEY: u8 = 0xFF;

/// Key equality without a `memcmp` call for short keys (the common case): overlapping loads
/// cover 1..=16 bytes in two comparisons.
#[inline(always)]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
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
    fn get(&self) -> Result<&[u8], std::ops::Range<usize>> {
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

/// What a stored value asks of its entry's layout.
pub(crate) trait Slot {
    /// A zero-sized array of this type sets the entry's alignment.
    type Align: Copy + Default + Send + Sync + std::fmt::Debug;
}

/// Alignment marker for entries that fill exactly one cache line.
#[repr(align(64))]
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct CacheLine;

/// One key: no stored hash (hashbrown's 7-bit tags filter probes; the hash is recomputed from
/// the key on the rare resize or move).
#[derive(Debug)]
struct Entry<V: Slot> {
    key: KeyBuf,
    value: V,
    _align: [V::Align; 0],
}

/// Keys of one shard and their values.
#[derive(Debug)]
pub(crate) struct Store<V: Slot> {
    table: HashTable<u32>,
    entries: Vec<Entry<V>>,
    /// Keys longer than [`INLINE_KEY`] bytes, back to back, referenced from their entries.
    long_keys: Vec<u8>,
    /// Bytes of `long_keys` that belong to removed keys (reclaimed by compaction).
    long_dead: usize,
    /// Where the next incremental sweep resumes.
    cursor: usize,
    /// The router's hasher: callers pass `hasher.hash_one(key)` as the hash.
    hasher: ahash::RandomState,
}

impl<V: Slot> Store<V> {
    /// An empty store whose callers hash keys with `hasher.hash_one(&str)`.
    pub(crate) fn new(hasher: ahash::RandomState) -> Self {
        Self {
            table: HashTable::new(),
            entries: Vec::new(),
            long_keys: Vec::new(),
            long_dead: 0,
            cursor: 0,
            hasher,
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn key_bytes<'a>(entry: &'a Entry<V>, long_keys: &'a [u8]) -> &'a [u8] {
        match entry.key.get() {
            Ok(b) => b,
            Err(range) => long_keys.get(range).unwrap_or(&[]),
        }
    }

    /// The hash the router computed for an entry's key (`hash_one(&str)`).
    fn hash_of(entry: &Entry<V>, long_keys: &[u8], hasher: &ahash::RandomState) -> u64 {
        let bytes = Self::key_bytes(entry, long_keys);
        match std::str::from_utf8(bytes) {
            Ok(s) => hasher.hash_one(s),
            // Keys are stored from `&str`, so this arm is never taken.
            Err(_) => hasher.hash_one(bytes),
        }
    }

    /// Index of `key`, if present.
    #[inline]
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let (entries, long_keys) = (&self.entries, &self.long_keys);
        self.table
            .find(hash, |&i| {
                entries.get(i as usize).is_some_and(|e| match e.key.get() {
                    Ok(inline) => bytes_eq(inline, key),
                    Err(range) => long_keys.get(range).is_some_and(|k| k == key),
                })
            })
            .map(|&i| i as usize)
    }

    /// The value at `idx`.
    #[inline]
    pub(crate) fn value_mut(&mut self, idx: usize) -> &mut V {
        &mut self.entries[idx].value
    }

    /// The value of `key`, if present.
    #[inline]
    pub(crate) fn get(&self, hash: u64, key: &[u8]) -> Option<&V> {
        self.find(hash, key).map(|i| &self.entries[i].value)
    }

    /// Inserts a key known to be absent; returns its index.
    pub(crate) fn insert(&mut self, hash: u64, key: &[u8], value: V) -> usize {
        let key = match KeyBuf::inline(key) {
            Some(k) => k,
            None => {
                let offset = self.long_keys.len();
                self.long_keys.extend_from_slice(key);
                KeyBuf::long(offset, key.len())
            }
        };
        let idx = self.entries.len();
        self.entries.push(Entry {
            key,
            value,
            _align: [],
        });
        let (entries, long_keys, hasher) = (&self.entries, &self.long_keys, &self.hasher);
        self.table.insert_unique(hash, idx as u32, |&i| {
            Self::hash_of(&entries[i as usize], long_keys, hasher)
        });
        idx
    }

    /// Removes the entry at `idx` (the last entry moves into its place).
    pub(crate) fn remove_at(&mut self, idx: usize) -> Option<V> {
        if idx >= self.entries.len() {
            return None;
        }
        let hash = Self::hash_of(&self.entries[idx], &self.long_keys, &self.hasher);
        if let Ok(slot) = self.table.find_entry(hash, |&i| i as usize == idx) {
            slot.remove();
        }
        let last = self.entries.len() - 1;
        if idx != last {
            let moved = Self::hash_of(&self.entries[last], &self.long_keys, &self.hasher);
            if let Some(slot) = self.table.find_mut(moved, |&i| i as usize == last) {
                *slot = idx as u32;
            }
        }
        let removed = self.entries.swap_remove(idx);
        if let Err(range) = removed.key.get() {
            self.long_dead += range.len();
            if self.long_dead > 4096 && self.long_dead * 2 > self.long_keys.len() {
                self.compact_long_keys();
            }
        }
        if self.entries.len() * 4 < self.entries.capacity() && self.entries.capacity() > 64 {
            self.entries.shrink_to(self.entries.len() * 2);
            let (entries, long_keys, hasher) = (&self.entries, &self.long_keys, &self.hasher);
            self.table.shrink_to(entries.len(), |&i| {
                Self::hash_of(&entries[i as usize], long_keys, hasher)
            });
        }
        Some(removed.value)
    }

    /// Rewrites the long-key arena with only the keys still referenced (the removed ones are
    /// at least half of it, so the copying is paid for by the removals).
    #[cold]
    fn compact_long_keys(&mut self) {
        let mut arena = Vec::with_capacity(self.long_keys.len() - self.long_dead);
        for e in &mut self.entries {
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
            if self.entries.is_empty() {
                self.cursor = 0;
                break;
            }
            if self.cursor >= self.entries.len() {
                self.cursor = 0;
            }
            let i = self.cursor;
            if evict(&self.entries[i].value) {
                // The last entry moved into `i`: visit `i` again next round.
                self.remove_at(i);
                removed += 1;
            } else {
                self.cursor += 1;
            }
        }
        removed
    }

    /// Removes every key.
    pub(crate) fn clear(&mut self) {
        self.table.clear();
        self.entries.clear();
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
    fn absolute_entries_are_one_aligned_cache_line() {
        use crate::math::Window;
        assert_eq!(std::mem::size_of::<Entry<Window<crate::math::Count>>>(), 64);
        assert_eq!(
            std::mem::align_of::<Entry<Window<crate::math::Count>>>(),
            64
        );
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
        let keys: Vec<String> = (0..2000).map(|i| format!("{i:0>40}")).collect();
        for (i, k) in keys.iter().enumerate() {
            s.insert(h(k), k.as_bytes(), i);
        }
        assert_eq!(s.long_keys.len(), 2000 * 40);
        for k in keys.iter().skip(1).step_by(2).chain(keys.iter().step_by(4)) {
            assert!(s.remove(h(k), k.as_bytes()));
        }
        // 1500 removed: compaction ran, at most the 4 KiB slack plus half the arena is dead
        assert!(
            s.long_keys.len() <= 500 * 40 * 2 + 4096,
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
