//! Owned handles: a limiter and one of its strategy handles in a value that owns both, whose
//! async methods return `'static` futures (they own their key), as `tokio::spawn` and pipeline
//! stages need.

use std::future::Future;
use std::sync::Arc;

use crate::{RateLimit, RateLimitDecision, RateLimiter};

/// A strategy handle that owns its limiter (an `Arc` clone): cheap to clone, `Send + Sync`,
/// and its async methods return `'static` futures, ready for `tokio::spawn`. Make one with
/// [`RateLimiter::owned`]; [`handle`](Self::handle) gives the borrowed handle for everything
/// else.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use eyelet::{RateLimit, RateLimiter};
///
/// let rl = RateLimiter::builder().build().unwrap();
/// let users = rl.owned(|rl| rl.local().absolute());
/// let rate = RateLimit::try_from(2.0).unwrap();
/// let tasks: Vec<_> = (0..3)
///     .map(|_| tokio::spawn(users.inc_async("user_1", rate, 1)))
///     .collect();
/// let mut admitted = 0;
/// for t in tasks {
///     admitted += usize::from(t.await.unwrap().is_allowed());
/// }
/// assert_eq!(admitted, 2);
/// # }
/// ```
pub struct Owned<H: 'static> {
    limiter: Arc<RateLimiter>,
    pick: fn(&RateLimiter) -> &H,
}

impl<H> Clone for Owned<H> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            pick: self.pick,
        }
    }
}

impl<H> std::fmt::Debug for Owned<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owned")
            .field("handle", &std::any::type_name::<H>())
            .finish_non_exhaustive()
    }
}

impl<H> Owned<H> {
    /// The borrowed handle (every method of the strategy).
    pub fn handle(&self) -> &H {
        (self.pick)(&self.limiter)
    }

    /// The limiter.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }
}

impl RateLimiter {
    /// An owned form of one strategy handle, picked by `pick` (for example
    /// `|rl| rl.local().absolute()`): see [`Owned`].
    pub fn owned<H>(self: &Arc<Self>, pick: fn(&RateLimiter) -> &H) -> Owned<H> {
        Owned {
            limiter: self.clone(),
            pick,
        }
    }
}

/// The `'static` async methods of an owned shard-backed handle (local and hybrid).
macro_rules! owned_shard_methods {
    ($handle:ty, $path:literal, $snapshot:ty) => {
        impl Owned<$handle> {
            #[doc = concat!("[`inc_async`](", $path, "::inc_async), owning its key.")]
            pub fn inc_async(
                &self,
                key: impl Into<String>,
                rate: RateLimit,
                n: u64,
            ) -> impl Future<Output = RateLimitDecision> + Send + 'static {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().inc_async(&key, &rate, n).await }
            }

            #[doc = concat!("[`is_allowed_async`](", $path, "::is_allowed_async), owning its key.")]
            pub fn is_allowed_async(
                &self,
                key: impl Into<String>,
                rate: RateLimit,
                n: u64,
            ) -> impl Future<Output = RateLimitDecision> + Send + 'static {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().is_allowed_async(&key, &rate, n).await }
            }

            #[doc = concat!("[`inc_many_weighted_async`](", $path, "::inc_many_weighted_async), owning its requests.")]
            pub fn inc_many_weighted_async(
                &self,
                requests: Vec<(String, u64)>,
                rate: RateLimit,
            ) -> impl Future<Output = Vec<RateLimitDecision>> + Send + 'static {
                let this = self.clone();
                async move { this.handle().inc_many_weighted_async(&requests, &rate).await }
            }

            #[doc = concat!("[`get_async`](", $path, "::get_async), owning its key.")]
            pub fn get_async(
                &self,
                key: impl Into<String>,
            ) -> impl Future<Output = $snapshot> + Send + 'static {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().get_async(&key).await }
            }

            #[doc = concat!("[`acquire_until`](", $path, "::acquire_until) (no deadline with `None`), owning its key.")]
            #[cfg(feature = "tokio")]
            #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
            pub fn acquire(
                &self,
                key: impl Into<String>,
                rate: RateLimit,
                n: u64,
                deadline: Option<std::time::Instant>,
            ) -> impl Future<Output = Result<RateLimitDecision, crate::AcquireError>> + Send + 'static
            {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().acquire_by(&key, &rate, n, deadline).await }
            }
        }
    };
}

owned_shard_methods!(crate::LocalAbsolute, "crate::LocalAbsolute", u64);
owned_shard_methods!(
    crate::LocalSuppressed,
    "crate::LocalSuppressed",
    crate::SuppressedSnapshot
);
#[cfg(feature = "redis")]
owned_shard_methods!(crate::HybridAbsolute, "crate::HybridAbsolute", (u64, u64));
#[cfg(feature = "redis")]
owned_shard_methods!(
    crate::HybridSuppressed,
    "crate::HybridSuppressed",
    (crate::SuppressedSnapshot, crate::SuppressedSnapshot)
);

/// The `'static` async methods of an owned Redis handle.
#[cfg(feature = "redis")]
macro_rules! owned_redis_methods {
    ($handle:ty, $path:literal, $snapshot:ty) => {
        impl Owned<$handle> {
            #[doc = concat!("[`inc`](", $path, "::inc), owning its key.")]
            pub fn inc(
                &self,
                key: impl Into<String>,
                rate: RateLimit,
                n: u64,
            ) -> impl Future<Output = Result<RateLimitDecision, crate::RedisError>> + Send + 'static
            {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().inc(&key, &rate, n).await }
            }

            #[doc = concat!("[`is_allowed`](", $path, "::is_allowed), owning its key.")]
            pub fn is_allowed(
                &self,
                key: impl Into<String>,
                rate: RateLimit,
                n: u64,
            ) -> impl Future<Output = Result<RateLimitDecision, crate::RedisError>> + Send + 'static
            {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().is_allowed(&key, &rate, n).await }
            }

            #[doc = concat!("[`inc_many_weighted`](", $path, "::inc_many_weighted), owning its requests.")]
            pub fn inc_many_weighted(
                &self,
                requests: Vec<(String, u64)>,
                rate: RateLimit,
            ) -> impl Future<Output = Result<Vec<RateLimitDecision>, crate::RedisError>>
                   + Send
                   + 'static {
                let this = self.clone();
                async move { this.handle().inc_many_weighted(&requests, &rate).await }
            }

            #[doc = concat!("[`get`](", $path, "::get), owning its key.")]
            pub fn get(
                &self,
                key: impl Into<String>,
            ) -> impl Future<Output = Result<$snapshot, crate::RedisError>> + Send + 'static {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().get(&key).await }
            }

            #[doc = concat!("[`acquire_until`](", $path, "::acquire_until) (no deadline with `None`), owning its key.")]
            pub fn acquire(
                &self,
                key: impl Into<String>,
                rate: RateLimit,
                n: u64,
                deadline: Option<std::time::Instant>,
            ) -> impl Future<Output = Result<RateLimitDecision, crate::AcquireError>> + Send + 'static
            {
                let (this, key) = (self.clone(), key.into());
                async move { this.handle().acquire_by(&key, &rate, n, deadline).await }
            }
        }
    };
}

#[cfg(feature = "redis")]
owned_redis_methods!(crate::RedisAbsolute, "crate::RedisAbsolute", u64);
#[cfg(feature = "redis")]
owned_redis_methods!(
    crate::RedisSuppressed,
    "crate::RedisSuppressed",
    crate::SuppressedSnapshot
);
