//! The one switch between real and loom-checked concurrency primitives.
//!
//! Everything the shard runtime shares between threads (atomics, `UnsafeCell`, `Arc`, `Mutex`,
//! parking, spinning) comes from here, so `RUSTFLAGS="--cfg eyelet_loom"` swaps the whole runtime
//! onto loom's model checker without touching the protocol code (tokio's `src/loom/` pattern).

#[cfg(not(eyelet_loom))]
mod imp {
    pub(crate) use std::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use std::thread::{current as current_thread, park, Thread};

    /// `UnsafeCell` with loom's closure API, so both builds share one call shape.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// One step of a spin-wait.
    #[inline(always)]
    pub(crate) fn spin() {
        std::hint::spin_loop();
    }

    /// Gives the processor away for a moment.
    #[inline]
    pub(crate) fn yield_now() {
        std::thread::yield_now();
    }
}

#[cfg(eyelet_loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use loom::thread::{current as current_thread, park, Thread};

    /// Under loom a spin is a yield, so the model explores the other threads instead of looping.
    pub(crate) fn spin() {
        loom::thread::yield_now();
    }

    pub(crate) fn yield_now() {
        loom::thread::yield_now();
    }
}

pub(crate) use imp::*;

/// Locks a mutex, ignoring poisoning: the data behind our mutexes (a waker slot) stays valid even
/// if a thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(not(eyelet_loom))]
    {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    #[cfg(eyelet_loom)]
    {
        match m.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        }
    }
}
