//! The per-key sliding window: buckets of coalesced requests, stored compactly.
//!
//! A key with one live bucket (the common idle case) keeps it inline; a key with more spills into
//! one boxed ring that also keeps the running total, so a decision on a hot key costs O(1) plus
//! the buckets that expired since the last call.

use std::collections::VecDeque;

/// Counters one bucket carries: a weight for absolute, attempts and declines for suppressed.
pub(crate) trait Counts: Copy + Default + std::fmt::Debug + Send + 'static {
    /// `self += other`.
    fn add(&mut self, other: Self);
    /// `self -= other`; never underflows because only recorded counts are removed.
    fn sub(&mut self, other: Self);
}

impl Counts for u64 {
    #[inline]
    fn add(&mut self, other: Self) {
        *self = self.saturating_add(other);
    }
    #[inline]
    fn sub(&mut self, other: Self) {
        *self = self.saturating_sub(other);
    }
}

/// Attempted and declined weight (suppressed strategy).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Every attempt, admitted or not.
    pub(crate) total: u64,
    /// Attempts that were declined.
    pub(crate) declined: u64,
}

impl Counts for Attempts {
    #[inline]
    fn add(&mut self, other: Self) {
        self.total = self.total.saturating_add(other.total);
        self.declined = self.declined.saturating_add(other.declined);
    }
    #[inline]
    fn sub(&mut self, other: Self) {
        self.total = self.total.saturating_sub(other.total);
        self.declined = self.declined.saturating_sub(other.declined);
    }
}

/// Requests coalesced into one bucket: they all carry the bucket's start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket<C> {
    /// Milliseconds on the limiter's clock when the bucket's first request arrived.
    pub(crate) start: u64,
    pub(crate) counts: C,
}

#[derive(Debug)]
struct Ring<C> {
    buckets: VecDeque<Bucket<C>>,
    total: C,
}

#[derive(Debug)]
enum Buckets<C> {
    Empty,
    One(Bucket<C>),
    Many(Box<Ring<C>>),
}

/// One key's window. Buckets are kept for `span` milliseconds: the longest effective window
/// the key was asked about recently (a call with a shorter one counts only its own part).
#[derive(Debug)]
pub(crate) struct Window<C> {
    buckets: Buckets<C>,
    span: u32,
    /// When `span` was last confirmed by a call asking for it.
    span_seen: u64,
}

impl<C: Counts> Default for Window<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Counts> Window<C> {
    /// An empty window.
    pub(crate) const fn new() -> Self {
        Self {
            buckets: Buckets::Empty,
            span: 0,
            span_seen: 0,
        }
    }

    /// Whether the window holds no bucket.
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self.buckets, Buckets::Empty)
    }

    /// The retained span in milliseconds (the longest effective window recently asked for).
    pub(crate) fn span_ms(&self) -> u64 {
        u64::from(self.span)
    }

    /// Whether some bucket may still count for a call at `now` (for the longest window asked).
    pub(crate) fn may_be_live(&self, now: u64) -> bool {
        self.newest_start()
            .is_some_and(|t| t.saturating_add(u64::from(self.span)) > now)
    }

    /// Start of the newest bucket: the key's last recorded activity.
    pub(crate) fn newest_start(&self) -> Option<u64> {
        match &self.buckets {
            Buckets::Empty => None,
            Buckets::One(b) => Some(b.start),
            Buckets::Many(r) => r.buckets.back().map(|b| b.start),
        }
    }

    /// Updates the retained span for a call with effective window `w_eff` at `now` and drops
    /// buckets that fell out of it.
    #[inline]
    pub(crate) fn advance(&mut self, now: u64, w_eff: u64) {
        let w = w_eff.min(u64::from(u32::MAX)) as u32;
        if w >= self.span || now.saturating_sub(self.span_seen) >= u64::from(self.span) {
            // A longer window, or nobody asked for the longer one during a whole span.
            self.span = w;
            self.span_seen = now;
        }
        self.trim(now);
    }

    /// Drops buckets older than the retained span.
    fn trim(&mut self, now: u64) {
        let span = u64::from(self.span);
        let expired = |b: &Bucket<C>| b.start.saturating_add(span) <= now;
        match &mut self.buckets {
            Buckets::Empty => {}
            Buckets::One(b) => {
                if expired(b) {
                    self.buckets = Buckets::Empty;
                }
            }
            Buckets::Many(ring) => {
                while let Some(front) = ring.buckets.front() {
                    if !expired(front) {
                        break;
                    }
                    let counts = front.counts;
                    ring.total.sub(counts);
                    ring.buckets.pop_front();
                }
                match ring.buckets.len() {
                    0 => self.buckets = Buckets::Empty,
                    1 => {
                        if let Some(b) = ring.buckets.pop_front() {
                            self.buckets = Buckets::One(b);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sum of the buckets live at `now` for effective window `w_eff` (start > now − w_eff).
    #[inline]
    pub(crate) fn live(&self, now: u64, w_eff: u64) -> C {
        let live = |b: &Bucket<C>| b.start.saturating_add(w_eff) > now;
        match &self.buckets {
            Buckets::Empty => C::default(),
            Buckets::One(b) => {
                if live(b) {
                    b.counts
                } else {
                    C::default()
                }
            }
            Buckets::Many(ring) => {
                if w_eff >= u64::from(self.span) {
                    // Everything retained is inside the window (trimmed on `advance`).
                    return ring.total;
                }
                let mut sum = C::default();
                for b in ring.buckets.iter().rev() {
                    if !live(b) {
                        break;
                    }
                    sum.add(b.counts);
                }
                sum
            }
        }
    }

    /// Live buckets at `now` for `w_eff`, oldest first.
    pub(crate) fn live_buckets(
        &self,
        now: u64,
        w_eff: u64,
    ) -> impl Iterator<Item = Bucket<C>> + '_ {
        let (one, many) = match &self.buckets {
            Buckets::Empty => (None, None),
            Buckets::One(b) => (Some(*b), None),
            Buckets::Many(r) => (None, Some(r.buckets.iter().copied())),
        };
        one.into_iter()
            .chain(many.into_iter().flatten())
            .filter(move |b| b.start.saturating_add(w_eff) > now)
    }

    /// Start of the oldest bucket live at `now` for `w_eff`.
    pub(crate) fn oldest_live_start(&self, now: u64, w_eff: u64) -> Option<u64> {
        self.live_buckets(now, w_eff).next().map(|b| b.start)
    }

    /// Records `counts` at `now`: joins the newest bucket if it is younger than `bucket_ms`,
    /// else opens a new bucket starting at `now`.
    #[inline]
    pub(crate) fn record(&mut self, now: u64, bucket_ms: u64, counts: C) {
        let joins = |b: &Bucket<C>| now.saturating_sub(b.start) < bucket_ms;
        match &mut self.buckets {
            Buckets::Empty => {
                self.buckets = Buckets::One(Bucket { start: now, counts });
            }
            Buckets::One(b) => {
                if joins(b) {
                    b.counts.add(counts);
                } else {
                    let first = *b;
                    let mut total = first.counts;
                    total.add(counts);
                    let mut buckets = VecDeque::with_capacity(4);
                    buckets.push_back(first);
                    buckets.push_back(Bucket { start: now, counts });
                    self.buckets = Buckets::Many(Box::new(Ring { buckets, total }));
                }
            }
            Buckets::Many(ring) => {
                ring.total.add(counts);
                match ring.buckets.back_mut() {
                    Some(b) if joins(b) => b.counts.add(counts),
                    _ => ring.buckets.push_back(Bucket { start: now, counts }),
                }
            }
        }
    }

    /// Heap bytes this window owns beyond its inline size (for memory accounting in tests).
    #[cfg(test)]
    pub(crate) fn bucket_count(&self) -> usize {
        match &self.buckets {
            Buckets::Empty => 0,
            Buckets::One(_) => 1,
            Buckets::Many(r) => r.buckets.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_young_bucket_and_opens_new_one() {
        let mut w = Window::<u64>::new();
        w.advance(0, 1000);
        w.record(0, 10, 1);
        w.record(9, 10, 1);
        assert_eq!(w.bucket_count(), 1);
        w.record(10, 10, 1);
        assert_eq!(w.bucket_count(), 2);
        assert_eq!(w.live(10, 1000), 3);
    }

    #[test]
    fn expires_at_start_plus_window() {
        let mut w = Window::<u64>::new();
        w.advance(5, 1000);
        w.record(5, 10, 2);
        assert_eq!(w.live(1004, 1000), 2);
        assert_eq!(w.live(1005, 1000), 0);
        w.advance(1005, 1000);
        assert!(w.is_empty());
    }

    #[test]
    fn shorter_call_window_counts_only_its_part() {
        let mut w = Window::<u64>::new();
        w.advance(0, 2000);
        w.record(0, 10, 1);
        w.advance(1500, 1000);
        w.record(1500, 10, 1);
        // the 2000 ms span is still retained: a 1000 ms call sees only the newer bucket
        assert_eq!(w.live(1500, 1000), 1);
        assert_eq!(w.live(1500, 2000), 2);
    }

    #[test]
    fn ring_shrinks_back_to_inline() {
        let mut w = Window::<u64>::new();
        w.advance(0, 100);
        for t in 0..10 {
            w.record(t * 10, 10, 1);
        }
        assert_eq!(w.bucket_count(), 10);
        w.advance(189, 100);
        assert_eq!(w.bucket_count(), 1);
        assert_eq!(w.live(189, 100), 1);
        w.advance(190, 100);
        assert!(w.is_empty());
    }
}
