//! The shard router: ahash of the key picks the shard; one set of shards per strategy.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::decision::{RateLimitDecision, Stamped};
use crate::random::RandomSource;
use crate::rate::RateLimit;
use crate::shard::mailbox::{ActorCell, Detach};
use crate::shard::{
    BatchItem, Clear, Get, Inc, IncMany, IncManyAsync, KeyRef, Len, Reset, Shard, ShardActor,
    Shared, Strategy, Sweep, BATCH_MESSAGE_KEYS, SWEEP_BUDGET,
};

/// All shards of one strategy.
pub(crate) struct ShardSet<S: Strategy> {
    shards: Box<[Shard<S>]>,
    /// `shards.len() - 1` (a power of two minus one).
    mask: usize,
    hasher: ahash::RandomState,
}

impl<S: Strategy> ShardSet<S> {
    /// `count` must be a power of two.
    pub(crate) fn new(
        count: usize,
        shared: &Arc<Shared>,
        hasher: ahash::RandomState,
        mut rng: impl FnMut(usize) -> Box<dyn RandomSource>,
    ) -> Self {
        let shards = (0..count)
            .map(|i| {
                CachePadded::new(ActorCell::new(ShardActor::new(
                    shared.clone(),
                    rng(i),
                    hasher.clone(),
                )))
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            mask: count - 1,
            shards,
            hasher,
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
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.mask
    }

    #[inline]
    fn shard(&self, hash: u64) -> &ActorCell<ShardActor<S>> {
        &self.shards[self.shard_of(hash)]
    }

    #[inline]
    pub(crate) fn inc(&self, key: &str, rate: &RateLimit, n: u64, record: bool) -> Stamped {
        let key = self.key(key);
        self.shard(key.hash).call(Inc {
            key,
            rate: *rate,
            n,
            record,
        })
    }

    pub(crate) fn inc_async<'a>(
        &'a self,
        key: &'a str,
        rate: &RateLimit,
        n: u64,
        record: bool,
    ) -> impl Future<Output = Stamped> + Send + 'a {
        let key = self.key(key);
        let shard = self.shard(key.hash);
        call_async(
            shard,
            Inc {
                key,
                rate: *rate,
                n,
                record,
            },
        )
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

    /// Groups `keys` by shard (counting sort, stable) into batch items, and returns the item
    /// range of each shard that has any. A batch on one shard (a hot key) skips the sort.
    fn group<'a, K: AsRef<str>>(
        &self,
        keys: &'a [K],
    ) -> (Vec<BatchItem<'a>>, Vec<(usize, usize, usize)>) {
        let mut items: Vec<BatchItem<'a>> = keys
            .iter()
            .enumerate()
            .map(|(pos, k)| {
                let key = k.as_ref();
                BatchItem {
                    key,
                    hash: self.hasher.hash_one(key),
                    pos,
                }
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

    pub(crate) fn inc_many_into<K: AsRef<str>>(
        &self,
        keys: &[K],
        rate: &RateLimit,
        n: u64,
        record: bool,
        out: &mut Vec<RateLimitDecision>,
    ) {
        out.clear();
        if keys.is_empty() {
            return;
        }
        // Every slot is written by its shard; the filler never admits.
        out.resize(keys.len(), RateLimitDecision::KeyCapacityExceeded);
        let (items, ranges) = self.group(keys);
        // Shards are visited one at a time in ascending order; no two tokens are ever held.
        // A shard's keys go in messages of at most `BATCH_MESSAGE_KEYS` (one turn each).
        for (shard, lo, hi) in ranges {
            for part in items[lo..hi].chunks(BATCH_MESSAGE_KEYS) {
                self.shards[shard].call(IncMany {
                    items: part,
                    out: out.as_mut_slice(),
                    rate: *rate,
                    n,
                    record,
                });
            }
        }
    }

    pub(crate) async fn inc_many_async<K: AsRef<str> + Sync>(
        &self,
        keys: &[K],
        rate: &RateLimit,
        n: u64,
        record: bool,
    ) -> Vec<RateLimitDecision> {
        // Every slot is written by its shard; the filler never admits.
        let mut out = vec![RateLimitDecision::KeyCapacityExceeded; keys.len()];
        if keys.is_empty() {
            return out;
        }
        let (items, ranges) = self.group(keys);
        for (shard, lo, hi) in ranges {
            for part in items[lo..hi].chunks(BATCH_MESSAGE_KEYS) {
                let msg = IncManyAsync {
                    items: part,
                    rate: *rate,
                    n,
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
