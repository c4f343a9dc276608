//! Typed failures of the Redis provider. A denial is a decision, never an error.

use std::fmt;
use std::time::Duration;

use crate::config::ConfigError;

/// Why a Redis-provider call failed. Nothing here is a rate-limit denial: those are
/// [`RateLimitDecision`](crate::RateLimitDecision) values.
///
/// # Was a failed `inc` counted?
/// [`may_have_been_applied`](Self::may_have_been_applied) answers it, for single servers and
/// clusters alike:
/// - **No** for a bad input (never sent), a call whose caller gave up before the batcher sent
///   it, a connection that could not be made ([`Connection`](Self::Connection)), and every
///   server error ([`ReadOnly`](Self::ReadOnly), [`OutOfMemory`](Self::OutOfMemory),
///   [`Busy`](Self::Busy), [`Cluster`](Self::Cluster), ...): the script decides every
///   operation before its first write, and that first write is the one refused, so a failed
///   call leaves nothing behind.
/// - **Maybe** for [`Timeout`](Self::Timeout), [`ConnectionLost`](Self::ConnectionLost),
///   [`Protocol`](Self::Protocol) and [`Shutdown`](Self::Shutdown): the script may have run
///   and only its answer was lost. The limiter never re-sends such a call by itself (the
///   client's own retries are off, on clusters too); only calls proven not to have run
///   (`NOSCRIPT`, `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, and `READONLY` on a
///   cluster after a failover) are re-sent, within the call's deadline.
///
/// Retrying an `inc` after a *maybe* can count the request twice; whether that is acceptable
/// (an over-count errs on the safe side of a limit) is the caller's choice.
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
    /// The rate's limit over the window is beyond what the scripts count exactly.
    RateTooHigh {
        /// The limit this rate gives over the window: the capacity `C` (absolute) or the hard
        /// limit `H` (suppressed).
        limit: u64,
        /// The largest accepted limit, 2^53 − 1.
        max: u64,
    },
    /// No reply within the call's deadline. The request may or may not have been applied.
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The server could not be reached (refused, unreachable, failed handshake): nothing was
    /// sent. The limiter reconnects on the next call.
    Connection(String),
    /// The connection broke while the call was in flight: the server may have applied it and
    /// the answer was lost. The limiter reconnects on the next call; it never re-sends this one.
    ConnectionLost(String),
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
            RedisError::ConnectionLost(e) => {
                write!(f, "redis connection lost during the call (outcome unknown): {e}")
            }
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
    /// Whether a later call may succeed (connection, timeout, busy, read-only, memory and
    /// cluster errors) as opposed to a bad input or configuration.
    ///
    /// It says nothing about *this* call: see
    /// [`may_have_been_applied`](Self::may_have_been_applied) before retrying an `inc`.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RedisError::Timeout { .. }
                | RedisError::Connection(_)
                | RedisError::ConnectionLost(_)
                | RedisError::ReadOnly
                | RedisError::OutOfMemory
                | RedisError::Busy
                | RedisError::NoScript
                | RedisError::Cluster(_)
        )
    }

    /// Whether the failed call may nevertheless have been applied by the server (its answer was
    /// lost): true for [`Timeout`](Self::Timeout), [`ConnectionLost`](Self::ConnectionLost),
    /// [`Protocol`](Self::Protocol) and [`Shutdown`](Self::Shutdown); false for every error that
    /// proves the call was not applied (see the type's docs).
    ///
    /// ```
    /// use eyelet::RedisError;
    ///
    /// assert!(RedisError::ConnectionLost("reset by peer".into()).may_have_been_applied());
    /// assert!(!RedisError::Connection("refused".into()).may_have_been_applied());
    /// assert!(!RedisError::ReadOnly.may_have_been_applied());
    /// ```
    pub fn may_have_been_applied(&self) -> bool {
        matches!(
            self,
            RedisError::Timeout { .. }
                | RedisError::ConnectionLost(_)
                | RedisError::Protocol(_)
                | RedisError::Shutdown
        )
    }

    /// Maps a client error to the typed error.
    /// A short snake-case name of the variant (the metrics' `kind` label).
    #[cfg(feature = "metrics")]
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            RedisError::NotConfigured => "not_configured",
            RedisError::Config(_) => "config",
            RedisError::KeyTooLong { .. } => "key_too_long",
            RedisError::WeightTooLarge { .. } => "weight_too_large",
            RedisError::RateTooHigh { .. } => "rate_too_high",
            RedisError::Timeout { .. } => "timeout",
            RedisError::Connection(_) => "connection",
            RedisError::ConnectionLost(_) => "connection_lost",
            RedisError::ReadOnly => "read_only",
            RedisError::OutOfMemory => "out_of_memory",
            RedisError::Busy => "busy",
            RedisError::NoScript => "no_script",
            RedisError::Cluster(_) => "cluster",
            RedisError::Protocol(_) => "protocol",
            RedisError::Server { .. } => "server",
            RedisError::Shutdown => "shutdown",
        }
    }

    pub(crate) fn from_client(e: &redis::RedisError, deadline: Duration) -> Self {
        if e.is_timeout() {
            return RedisError::Timeout { deadline };
        }
        let detail = e.detail().unwrap_or_default();
        // Redis before 7.0 reports an error raised by `redis.call` inside a script as
        // `ERR Error running script (...): ... -OOM ...`; 7.0 keeps the original code.
        let code = match e.code() {
            Some("ERR") => embedded_code(detail).or(Some("ERR")),
            c => c,
        };
        match code {
            Some("READONLY") => return RedisError::ReadOnly,
            Some("OOM") => return RedisError::OutOfMemory,
            Some("BUSY") | Some("LOADING") => return RedisError::Busy,
            Some("NOSCRIPT") => return RedisError::NoScript,
            Some(
                c @ ("CLUSTERDOWN" | "MOVED" | "ASK" | "TRYAGAIN" | "MASTERDOWN" | "CROSSSLOT"),
            ) => {
                return RedisError::Cluster(format!("{c}: {detail}"));
            }
            _ => {}
        }
        let kind = e.kind();
        if kind == redis::ErrorKind::AuthenticationFailed
            || matches!(code, Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        {
            // Not transient: retrying with the same credentials fails the same way.
            return RedisError::Server {
                code: code.unwrap_or("AUTH").to_string(),
                message: e.to_string(),
            };
        }
        if e.is_connection_refusal() {
            return RedisError::Connection(e.to_string());
        }
        if e.is_io_error() || e.is_connection_dropped() {
            return RedisError::ConnectionLost(e.to_string());
        }
        if e.is_cluster_error() {
            return RedisError::Cluster(e.to_string());
        }
        if let Some(code) = code {
            return RedisError::Server {
                code: code.to_string(),
                message: detail.to_string(),
            };
        }
        if e.is_unrecoverable_error() {
            // The connection is unusable; whether the request got out is unknown.
            return RedisError::ConnectionLost(e.to_string());
        }
        // Parse, type and client-side errors: the reply or the request did not fit.
        RedisError::Protocol(e.to_string())
    }
}

/// The code of an error that a script's `redis.call` raised, inside an `ERR Error running
/// script` message (Redis before 7.0): the first ` -CODE` among the ones mapped to variants.
fn embedded_code(detail: &str) -> Option<&'static str> {
    const CODES: [&str; 11] = [
        "READONLY",
        "OOM",
        "BUSY",
        "LOADING",
        "NOSCRIPT",
        "CLUSTERDOWN",
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "MASTERDOWN",
        "CROSSSLOT",
    ];
    detail.match_indices('-').find_map(|(i, _)| {
        let rest = &detail[i + 1..];
        let word = rest.split(|c: char| !c.is_ascii_uppercase()).next()?;
        let preceded = i == 0 || detail[..i].ends_with(' ');
        CODES.iter().find(|c| preceded && **c == word).copied()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_inside_script_errors() {
        let six_two = "Error running script (call to f_0123): @user_script:208: \
                       @user_script: 208: -OOM command not allowed when used memory > 'maxmemory'.";
        assert_eq!(embedded_code(six_two), Some("OOM"));
        assert_eq!(
            embedded_code("Error running script: -READONLY You can't write against a replica."),
            Some("READONLY")
        );
        assert_eq!(
            embedded_code("wrong number of arguments for 'hset' command"),
            None
        );
        assert_eq!(embedded_code("value is out of range, must be -OOMPH"), None);
        assert_eq!(embedded_code("x-OOM"), None);
    }
}
