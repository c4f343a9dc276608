//! A shard's key table: a dense slab of entries indexed by a `HashTable<u32>`.
//!
//! Layout chosen for the 100k-key and 1M-idle-key targets: the table holds 4-byte indices (plus
//! hashbrown's control byte), the slab holds entries back to back with keys of up to 22 bytes
//! stored inline, so a lookup touches the control group, one index and one entry, and an idle key
//! with one bucket costs well under 100 bytes.

use hashbrown::HashTable;

/// Bytes a key may have to be stored inline.
const INLINE_KEY: usize = 22;

/// A key's bytes, inline when short.
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

#[derive(Debug)]
enum KeyBuf {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl KeyBuf {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            KeyBuf::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            KeyBuf::Heap(key.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            KeyBuf::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBuf::Heap(b) => b,
        }
    }
}

/// One key: no stored hash (hashbrown's 7-bit tags filter probes; the hash is recomputed from
/// the key on the rare resize or move), so an absolute entry is 80 bytes.
#[derive(Debug)]
struct Entry<V> {
    key: KeyBuf,
    value: V,
}

impl<V> Entry<V> {
    /// The hash the router computed for this key (`hash_one(&str)`).
    fn hash(&self, hasher: &ahash::RandomState) -> u64 {
        let bytes = self.key.as_bytes();
        match std::str::from_utf8(bytes) {
            Ok(s) => hasher.hash_one(s),
            // Keys are stored from `&str`, so this arm is never taken.
            Err(_) => hasher.hash_one(bytes),
        }
    }
}

/// Keys of one shard and their values.
#[derive(Debug)]
pub(crate) struct Store<V> {
    table: HashTable<u32>,
    entries: Vec<Entry<V>>,
    /// Where the next incremental sweep resumes.
    cursor: usize,
    /// The router's hasher: callers pass `hasher.hash_one(key)` as the hash.
    hasher: ahash::RandomState,
}

impl<V> Store<V> {
    /// An empty store whose callers hash keys with `hasher.hash_one(&str)`.
    pub(crate) fn new(hasher: ahash::RandomState) -> Self {
        Self {
            table: HashTable::new(),
            entries: Vec::new(),
            cursor: 0,
            hasher,
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Index of `key`, if present.
    #[inline]
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let entries = &self.entries;
        self.table
            .find(hash, |&i| {
                entries
                    .get(i as usize)
                    .is_some_and(|e| bytes_eq(e.key.as_bytes(), key))
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
        let idx = self.entries.len();
        self.entries.push(Entry {
            key: KeyBuf::new(key),
            value,
        });
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.table
            .insert_unique(hash, idx as u32, |&i| entries[i as usize].hash(hasher));
        idx
    }

    /// Removes the entry at `idx` (the last entry moves into its place).
    pub(crate) fn remove_at(&mut self, idx: usize) -> Option<V> {
        if idx >= self.entries.len() {
            return None;
        }
        let hash = self.entries[idx].hash(&self.hasher);
        if let Ok(slot) = self.table.find_entry(hash, |&i| i as usize == idx) {
            slot.remove();
        }
        let last = self.entries.len() - 1;
        if idx != last {
            let moved_hash = self.entries[last].hash(&self.hasher);
            if let Some(slot) = self.table.find_mut(moved_hash, |&i| i as usize == last) {
                *slot = idx as u32;
            }
        }
        let removed = self.entries.swap_remove(idx);
        if self.entries.len() * 4 < self.entries.capacity() && self.entries.capacity() > 64 {
            self.entries.shrink_to(self.entries.len() * 2);
            let (entries, hasher) = (&self.entries, &self.hasher);
            self.table
                .shrink_to(entries.len(), |&i| entries[i as usize].hash(hasher));
        }
        Some(removed.value)
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
        self.cursor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> ahash::RandomState {
        ahash::RandomState::with_seeds(1, 2, 3, 4)
    }

    fn h(k: &str) -> u64 {
        hasher().hash_one(k)
    }

    #[test]
    fn short_key_equality() {
        for (a, b) in [
            ("", ""),
            ("abc", "abc"),
            ("abcdefgh", "abcdefgh"),
            ("user_1234567", "user_1234567"),
        ] {
            assert!(bytes_eq(a.as_bytes(), b.as_bytes()));
        }
        for (a, b) in [
            ("abc", "abd"),
            ("abcdefgh", "abcdefgi"),
            ("user_1234567", "user_1234568"),
            ("user_1234567", "xser_1234567"),
            ("a", "ab"),
        ] {
            assert!(!bytes_eq(a.as_bytes(), b.as_bytes()), "{a} {b}");
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
