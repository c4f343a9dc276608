//! Typed failures of the Redis provider. A denial is a decision, never an error.

use std::fmt;
use std::time::Duration;

use crate::config::ConfigError;

/// Why a Redis-provider call failed. Nothing here is a rate-limit denial: those are
/// [`RateLimitDecision`](crate::RateLimitDecision) values.
///
/// Whether a failed `inc` was counted: a call that failed before reaching Redis (bad input,
/// [`Connection`](Self::Connection) while the server is unreachable) was not; a call that timed
/// out after it was sent may have been ([`Timeout`](Self::Timeout) says so); a server error
/// ([`ReadOnly`](Self::ReadOnly), [`OutOfMemory`](Self::OutOfMemory), ...) aborts the script before
/// it writes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RedisError {
    /// The limiter was built without Redis (`build()` instead of `connect()`).
    NotConfigured,
    /// The limiter's configuration is invalid.
    Config(ConfigError),
    /// The user key is longer than [`MAX_KEY_LEN`](crate::redis::MAX_KEY_LEN) bytes.
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// The weight is beyond what the scripts count exactly (Lua numbers are doubles).
    WeightTooLarge {
        /// The weight asked for.
        n: u64,
        /// The largest accepted weight, 2^53 − 1.
        max: u64,
    },
    /// The rate's capacity over the window is beyond what the scripts count exactly.
    RateTooHigh {
        /// Hard limit `H` (≥ capacity `C`) this rate gives over the window.
        limit: u64,
        /// The largest accepted limit, 2^53 − 1.
        max: u64,
    },
    /// No reply within the call's deadline. The request may or may not have been applied.
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The server could not be reached or the connection broke; the limiter reconnects on the
    /// next call.
    Connection(String),
    /// The server is a read-only replica (`READONLY`), e.g. after a failover or `REPLICAOF`.
    ReadOnly,
    /// The server is out of memory (`OOM`, `maxmemory` reached with a no-eviction policy).
    OutOfMemory,
    /// The server is busy running another script (`BUSY`) or loading its dataset (`LOADING`).
    Busy,
    /// The script was missing twice in a row (`NOSCRIPT` after a reload).
    NoScript,
    /// A Redis Cluster error the client could not resolve (`CLUSTERDOWN`, `MOVED`/`ASK` loops,
    /// `TRYAGAIN`, `MASTERDOWN`, `CROSSSLOT`).
    Cluster(String),
    /// The server sent a reply the provider does not understand.
    Protocol(String),
    /// Any other server error, with its code and message.
    Server {
        /// The error code (`ERR`, `WRONGTYPE`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The batcher is gone: its runtime shut down or the limiter is being dropped.
    Shutdown,
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::NotConfigured => {
                f.write_str("the limiter has no redis connection (build it with connect())")
            }
            RedisError::Config(e) => write!(f, "invalid configuration: {e}"),
            RedisError::KeyTooLong { len, max } => {
                write!(f, "key of {len} bytes is longer than the {max} allowed")
            }
            RedisError::WeightTooLarge { n, max } => {
                write!(f, "weight {n} is above {max}, the most redis counts exactly")
            }
            RedisError::RateTooHigh { limit, max } => write!(
                f,
                "rate gives a limit of {limit} per window, above {max}, the most redis counts exactly"
            ),
            RedisError::Timeout { deadline } => {
                write!(f, "no reply from redis within the {deadline:?} deadline")
            }
            RedisError::Connection(e) => write!(f, "redis connection failed: {e}"),
            RedisError::ReadOnly => f.write_str("redis is a read-only replica"),
            RedisError::OutOfMemory => f.write_str("redis is out of memory"),
            RedisError::Busy => f.write_str("redis is busy"),
            RedisError::NoScript => f.write_str("redis lost the script twice in a row"),
            RedisError::Cluster(e) => write!(f, "redis cluster error: {e}"),
            RedisError::Protocol(e) => write!(f, "unexpected reply from redis: {e}"),
            RedisError::Server { code, message } => write!(f, "redis error {code}: {message}"),
            RedisError::Shutdown => f.write_str("the redis batcher has shut down"),
        }
    }
}

impl std::error::Error for RedisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RedisError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for RedisError {
    fn from(e: ConfigError) -> Self {
        RedisError::Config(e)
    }
}

impl RedisError {
    /// Whether the call may succeed if retried later (connection, timeout, busy, read-only,
    /// memory and cluster errors) as opposed to a bad input or configuration.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RedisError::Timeout { .. }
                | RedisError::Connection(_)
                | RedisError::ReadOnly
                | RedisError::OutOfMemory
                | RedisError::Busy
                | RedisError::NoScript
                | RedisError::Cluster(_)
        )
    }

    /// Maps a client error to the typed error.
    pub(crate) fn from_client(e: &redis::RedisError, deadline: Duration) -> Self {
        if e.is_timeout() {
            return RedisError::Timeout { deadline };
        }
        match e.code() {
            Some("READONLY") => return RedisError::ReadOnly,
            Some("OOM") => return RedisError::OutOfMemory,
            Some("BUSY") | Some("LOADING") => return RedisError::Busy,
            Some("NOSCRIPT") => return RedisError::NoScript,
            Some(
                c @ ("CLUSTERDOWN" | "MOVED" | "ASK" | "TRYAGAIN" | "MASTERDOWN" | "CROSSSLOT"),
            ) => {
                return RedisError::Cluster(format!("{c}: {}", e.detail().unwrap_or_default()));
            }
            _ => {}
        }
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            return RedisError::Connection(e.to_string());
        }
        if e.is_cluster_error() {
            return RedisError::Cluster(e.to_string());
        }
        match e.code() {
            Some(code) => RedisError::Server {
                code: code.to_string(),
                message: e.detail().unwrap_or_default().to_string(),
            },
            None => RedisError::Connection(e.to_string()),
        }
    }
}
