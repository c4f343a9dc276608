//! Background cleanup: a thread that holds only a `Weak` reference to the limiter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::limiter::RateLimiter;

/// Handle to the sweeper thread.
#[derive(Debug)]
pub(crate) struct Sweeper {
    thread: Thread,
    stopped: Arc<AtomicBool>,
}

impl Sweeper {
    /// Starts a thread that runs [`RateLimiter::sweep`] every `every` for as long as the limiter
    /// lives; it never keeps the limiter alive between passes.
    pub(crate) fn spawn(limiter: Weak<RateLimiter>, every: Duration) -> std::io::Result<Self> {
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let handle = thread::Builder::new()
            .name("eyelet-sweeper".into())
            .spawn(move || run(limiter, every, &flag))?;
        Ok(Self {
            thread: handle.thread().clone(),
            stopped,
        })
    }

    /// Asks the thread to exit now (it would also exit at its next tick, finding the limiter
    /// gone).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

fn run(limiter: Weak<RateLimiter>, every: Duration, stopped: &AtomicBool) {
    loop {
        // An interval too long for `Instant` means "never": wait for the stop signal only.
        let deadline = Instant::now().checked_add(every);
        loop {
            if stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(deadline) = deadline else {
                thread::park();
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            thread::park_timeout(deadline - now);
        }
        let Some(rl) = limiter.upgrade() else { return };
        rl.sweep();
        #[cfg(feature = "metrics")]
        rl.publish_live_keys();
        // `rl` is dropped here: if it was the last reference, the limiter is dropped on this
        // thread and `stopped` is set before the next check.
    }
}
