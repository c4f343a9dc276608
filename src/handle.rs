//! The methods every shard-backed handle shares (the local provider's and the hybrid's): one
//! definition, so the two providers cannot drift apart in what they offer or document.

/// Emits `acquire` and `acquire_until` for a handle that has
/// `async fn acquire_by(&self, key, rate, n, deadline: Option<Instant>)`; `$try_doc` ends the
/// cancel-safety sentence about a try in flight, `$errors_doc` tells the errors besides the
/// deadline.
#[cfg(feature = "tokio")]
macro_rules! async_acquire_methods {
    ($try_doc:literal, $errors_doc:literal) => {
        /// Waits until a request of weight `n` for `key` at `rate` is admitted, and records it
        /// (as [`inc`](Self::inc) does when it admits). Between tries it sleeps on tokio's
        /// timer for what the last decision implies: a rejection's retry hint, or one bucket
        /// width `G` after a suppressed denial or a full key table (which carry none),
        /// stretched by the limiter's
        /// [`acquire_jitter`](crate::RateLimiterBuilder::acquire_jitter). It never busy-loops.
        /// Returns the admitting decision.
        ///
        /// Waits follow the system clock: with an injected clock, retry hints are in its time,
        /// not tokio's.
        ///
        /// # Errors
        /// [`AcquireError::NeverAdmissible`](crate::AcquireError::NeverAdmissible) at once for
        /// a weight the key can never take at this rate.
        #[doc = $errors_doc]
        ///
        /// # Cancel safety
        /// Dropped while sleeping, nothing is recorded for the current try; dropped while a
        #[doc = $try_doc]
        #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
        pub async fn acquire(
            &self,
            key: &str,
            rate: &RateLimit,
            n: u64,
        ) -> Result<RateLimitDecision, crate::AcquireError> {
            self.acquire_by(key, rate, n, None).await
        }

        /// [`acquire`](Self::acquire) that gives up at `deadline`: it returns
        /// [`AcquireError::DeadlineExceeded`](crate::AcquireError::DeadlineExceeded) with the
        /// last decision when the deadline passes first (a wait that would end after the
        /// deadline is slept up to the deadline only, so the call returns at it).
        ///
        /// # Errors
        /// As [`acquire`](Self::acquire), and the deadline.
        ///
        /// # Cancel safety
        /// As [`acquire`](Self::acquire).
        #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
        pub async fn acquire_until(
            &self,
            key: &str,
            rate: &RateLimit,
            n: u64,
            deadline: std::time::Instant,
        ) -> Result<RateLimitDecision, crate::AcquireError> {
            self.acquire_by(key, rate, n, Some(deadline)).await
        }
    };
}

/// Emits the decision, read and size methods of a handle type that has
/// `fn set(&self) -> &ShardSet<S>`; `$inc_doc` is the first paragraph of `inc`'s docs,
/// `$snapshot` what `get` returns and `$get_doc` its docs.
macro_rules! shard_handle_methods {
    ($inc_doc:literal, $snapshot:ty, $get_doc:literal) => {
        #[doc = $inc_doc]
        #[inline]
        pub fn inc(&self, key: &str, rate: &RateLimit, n: u64) -> RateLimitDecision {
            self.set().inc(key, rate, n, true).decision
        }

        /// [`inc`](Self::inc), also returning the time (limiter clock, ms) the decision was
        /// made at and what it was based on ([`Source`](crate::Source)).
        pub fn inc_stamped(&self, key: &str, rate: &RateLimit, n: u64) -> Stamped {
            self.set().inc(key, rate, n, true)
        }

        /// The decision [`inc`](Self::inc) would return now, without recording anything.
        /// A separate `is_allowed` followed by `inc` is not atomic; `inc` alone is.
        pub fn is_allowed(&self, key: &str, rate: &RateLimit, n: u64) -> RateLimitDecision {
            self.set().inc(key, rate, n, false).decision
        }

        #[doc = $get_doc]
        /// An unknown key reads as zero and creates no state.
        pub fn get(&self, key: &str) -> $snapshot {
            self.set().get(key)
        }

        /// Decides many keys in one call, each as [`inc`](Self::inc) would, in input order
        /// per key. Keys are grouped per shard, and a shard's keys are sent in parts of at
        /// most 64, so one large batch holds a shard for at most one bounded turn at a time
        /// (other callers get in between its parts).
        pub fn inc_many<K: AsRef<str>>(
            &self,
            keys: &[K],
            rate: &RateLimit,
            n: u64,
        ) -> Vec<RateLimitDecision> {
            let mut out = Vec::with_capacity(keys.len());
            self.inc_many_into(keys, rate, n, &mut out);
            out
        }

        /// [`inc_many`](Self::inc_many) with a weight per request: `(key, n)` pairs, decided
        /// in input order per key (a tenant's messages of different sizes in one batch).
        ///
        /// ```
        /// use eyelet::{RateLimit, RateLimiter};
        ///
        /// let rl = RateLimiter::builder().build().unwrap();
        /// let rate = RateLimit::try_from(10.0).unwrap(); // 10 per second
        /// let d = rl.local().absolute().inc_many_weighted(
        ///     &[("tenant-a", 6), ("tenant-b", 3), ("tenant-a", 6), ("tenant-a", 4)],
        ///     &rate,
        /// );
        /// let admitted: Vec<bool> = d.iter().map(|d| d.is_allowed()).collect();
        /// assert_eq!(admitted, [true, true, false, true]); // a: 6, then 6 > 4 left, then 4
        /// ```
        pub fn inc_many_weighted<K: AsRef<str>>(
            &self,
            requests: &[(K, u64)],
            rate: &RateLimit,
        ) -> Vec<RateLimitDecision> {
            let mut out = Vec::with_capacity(requests.len());
            self.set().inc_many_into(
                requests.iter().map(|(k, n)| (k.as_ref(), *n)),
                requests.len(),
                rate,
                true,
                &mut out,
            );
            out
        }

        /// [`inc_many`](Self::inc_many) into a reused buffer (cleared first).
        pub fn inc_many_into<K: AsRef<str>>(
            &self,
            keys: &[K],
            rate: &RateLimit,
            n: u64,
            out: &mut Vec<RateLimitDecision>,
        ) {
            self.set().inc_many_into(
                keys.iter().map(|k| (k.as_ref(), n)),
                keys.len(),
                rate,
                true,
                out,
            )
        }

        /// Async [`inc`](Self::inc) for tokio tasks and actix actors: served inline when the
        /// shard is idle, otherwise queued after a short bounded spin and woken when done;
        /// it never parks the runtime thread.
        ///
        /// # Cancel safety
        /// Dropping the future before it completes either withdraws the request (nothing
        /// recorded, if no shard executor had claimed it yet) or leaves it decided exactly
        /// once (if one had); never half, never twice, and nothing is written into memory
        /// the future owned. A request that was claimed and then dropped still counts: if
        /// it was admitted, its weight takes capacity in the window although its caller
        /// never saw the decision.
        pub fn inc_async<'a>(
            &'a self,
            key: &'a str,
            rate: &RateLimit,
            n: u64,
        ) -> impl Future<Output = RateLimitDecision> + Send + 'a {
            crate::router::DecisionOf(self.set().inc_async(key, rate, n, true))
        }

        /// Async [`is_allowed`](Self::is_allowed).
        ///
        /// # Cancel safety
        /// Records nothing, so dropping it at any point has no effect.
        pub fn is_allowed_async<'a>(
            &'a self,
            key: &'a str,
            rate: &RateLimit,
            n: u64,
        ) -> impl Future<Output = RateLimitDecision> + Send + 'a {
            crate::router::DecisionOf(self.set().inc_async(key, rate, n, false))
        }

        /// Async [`inc_many`](Self::inc_many).
        ///
        /// # Cancel safety
        /// Shards are visited one after another, a shard's keys in parts of at most 64
        /// (one bounded turn each); dropping the future leaves the parts already decided
        /// recorded (their admitted weight takes capacity) and the others untouched, the
        /// current one as [`inc_async`](Self::inc_async) describes.
        pub fn inc_many_async<'a, K: AsRef<str> + Sync>(
            &'a self,
            keys: &'a [K],
            rate: &'a RateLimit,
            n: u64,
        ) -> impl Future<Output = Vec<RateLimitDecision>> + Send + 'a {
            self.set().inc_many_async(
                keys.iter().map(move |k| (k.as_ref(), n)),
                keys.len(),
                rate,
                true,
            )
        }

        /// Async [`inc_many_weighted`](Self::inc_many_weighted).
        ///
        /// # Cancel safety
        /// As [`inc_many_async`](Self::inc_many_async).
        pub fn inc_many_weighted_async<'a, K: AsRef<str> + Sync>(
            &'a self,
            requests: &'a [(K, u64)],
            rate: &'a RateLimit,
        ) -> impl Future<Output = Vec<RateLimitDecision>> + Send + 'a {
            self.set().inc_many_async(
                requests.iter().map(|(k, n)| (k.as_ref(), *n)),
                requests.len(),
                rate,
                true,
            )
        }

        /// Async [`get`](Self::get).
        ///
        /// # Cancel safety
        /// Reads only; safe to drop at any point.
        pub fn get_async<'a>(
            &'a self,
            key: &'a str,
        ) -> impl Future<Output = $snapshot> + Send + 'a {
            self.set().get_async(key)
        }

        #[cfg(feature = "tokio")]
        async_acquire_methods!(
            "try is being decided, that try is as [`inc_async`](Self::inc_async) describes.",
            "Only the outcomes of [`AcquireError`](crate::AcquireError): a decision never fails."
        );

        #[cfg(feature = "tokio")]
        pub(crate) async fn acquire_by(
            &self,
            key: &str,
            rate: &RateLimit,
            n: u64,
            deadline: Option<std::time::Instant>,
        ) -> Result<RateLimitDecision, crate::AcquireError> {
            crate::acquire::waiting(
                self.set().pacing(),
                deadline,
                || async { Ok::<_, std::convert::Infallible>(self.inc_async(key, rate, n).await) },
                |e| match e {},
            )
            .await
        }

        /// Blocking [`acquire_until`](Self::acquire_until) (no deadline with `None`): sleeps
        /// the calling thread between tries. For threads that may block, never from async
        /// code (use [`acquire`](Self::acquire) there). Shown on the local absolute handle; every
        /// shard-backed handle has it.
        ///
        /// ```
        /// use std::time::{Duration, Instant};
        /// use eyelet::{AcquireError, RateLimit, RateLimiter};
        ///
        /// let rl = RateLimiter::builder()
        ///     .window(Duration::from_millis(100))
        ///     .build()
        ///     .unwrap();
        /// let rate = RateLimit::per_second(20.0).unwrap(); // 2 per 100 ms window
        /// let abs = rl.local().absolute();
        /// let start = Instant::now();
        /// for _ in 0..3 {
        ///     // the third waits for the first to leave the window
        ///     abs.acquire_blocking("job", &rate, 1, None).unwrap();
        /// }
        /// assert!(start.elapsed() >= Duration::from_millis(90));
        /// // more than the key can ever hold fails at once
        /// assert!(matches!(
        ///     abs.acquire_blocking("job", &rate, 3, None),
        ///     Err(AcquireError::NeverAdmissible { .. })
        /// ));
        /// ```
        pub fn acquire_blocking(
            &self,
            key: &str,
            rate: &RateLimit,
            n: u64,
            deadline: Option<std::time::Instant>,
        ) -> Result<RateLimitDecision, crate::AcquireError> {
            crate::acquire::blocking(
                self.set().pacing(),
                deadline,
                || Ok::<_, std::convert::Infallible>(self.inc(key, rate, n)),
                |e| match e {},
            )
        }

        /// Number of keys holding state under this strategy.
        pub fn len(&self) -> usize {
            self.set().len()
        }

        /// Whether no key holds state under this strategy.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
    };
}
