//! The decision script (`lua/decide.lua`): operation encoding and reply decoding.

use std::time::Duration;

use redis::Value;

use crate::decision::{RateLimitDecision, SuppressedSnapshot, RETRY_NEVER};
use crate::redis::RedisError;

/// The script source, embedded at compile time.
pub(crate) const DECIDE_LUA: &str = include_str!("../../lua/decide.lua");

/// Largest count the scripts handle exactly (Lua numbers are IEEE doubles).
pub const MAX_EXACT: u64 = (1 << 53) - 1;

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpCode {
    AbsoluteInc = 1,
    AbsoluteCheck = 2,
    AbsoluteGet = 3,
    SuppressedInc = 4,
    SuppressedCheck = 5,
    SuppressedGet = 6,
    Reset = 7,
}

/// One operation's arguments (besides its key).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpArgs {
    pub(crate) code: OpCode,
    pub(crate) window_ms: u64,
    pub(crate) capacity: u64,
    pub(crate) hard: u64,
    pub(crate) n: u64,
    pub(crate) draw: f64,
}

impl OpArgs {
    /// The packed ARGV entry: 7 little-endian doubles (all values are below 2^53, so exact).
    pub(crate) fn pack(&self, key_index: usize) -> [u8; 56] {
        let vals = [
            self.code as u8 as f64,
            key_index as f64,
            self.window_ms as f64,
            self.capacity as f64,
            self.hard as f64,
            self.n as f64,
            self.draw,
        ];
        let mut out = [0u8; 56];
        for (chunk, v) in out.chunks_exact_mut(8).zip(vals) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// One operation's answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum OpReply {
    Decision(RateLimitDecision),
    Total(u64),
    Snapshot(SuppressedSnapshot),
    Reset(bool),
}

fn int(v: &Value) -> Result<i64, RedisError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RedisError::Protocol(format!("expected an integer, got {v:?}"))),
        _ => Err(RedisError::Protocol(format!(
            "expected an integer, got {v:?}"
        ))),
    }
}

fn uint(v: &Value) -> Result<u64, RedisError> {
    u64::try_from(int(v)?).map_err(|_| RedisError::Protocol(format!("negative count {v:?}")))
}

fn float(v: &Value) -> Result<f64, RedisError> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RedisError::Protocol(format!("expected a number, got {v:?}"))),
        _ => Err(RedisError::Protocol(format!("expected a number, got {v:?}"))),
    }
}

/// Decodes a script reply for `ops` operations: the server time and one reply per operation.
pub(crate) fn decode(value: &Value, ops: usize) -> Result<(u64, Vec<OpReply>), RedisError> {
    let Value::Array(items) = value else {
        return Err(RedisError::Protocol(format!("expected an array, got {value:?}")));
    };
    if items.len() != 1 + 4 * ops {
        return Err(RedisError::Protocol(format!(
            "expected {} values, got {}",
            1 + 4 * ops,
            items.len()
        )));
    }
    let now = uint(&items[0])?;
    let mut out = Vec::with_capacity(ops);
    for r in items[1..].chunks_exact(4) {
        let reply = match int(&r[0])? {
            0 => OpReply::Decision(RateLimitDecision::Allowed),
            1 => {
                let retry = int(&r[1])?;
                OpReply::Decision(RateLimitDecision::Rejected {
                    retry_after_ms: u64::try_from(retry).unwrap_or(RETRY_NEVER),
                    remaining_after_waiting: uint(&r[2])?,
                    window: Duration::from_millis(uint(&r[3])?),
                })
            }
            2 => OpReply::Decision(RateLimitDecision::Suppressed {
                is_allowed: int(&r[1])? != 0,
                suppression_factor: float(&r[2])?,
            }),
            3 => OpReply::Total(uint(&r[1])?),
            4 => OpReply::Snapshot(SuppressedSnapshot {
                total: uint(&r[1])?,
                declined: uint(&r[2])?,
                suppression_factor: float(&r[3])?,
            }),
            5 => OpReply::Reset(int(&r[1])? != 0),
            k => return Err(RedisError::Protocol(format!("unknown reply kind {k}"))),
        };
        out.push(reply);
    }
    Ok((now, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_exact_doubles() {
        let a = OpArgs {
            code: OpCode::SuppressedInc,
            window_ms: 1000,
            capacity: MAX_EXACT,
            hard: 15,
            n: 3,
            draw: 0.25,
        };
        let p = a.pack(2);
        let vals: Vec<f64> = p
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        assert_eq!(vals, vec![4.0, 2.0, 1000.0, MAX_EXACT as f64, 15.0, 3.0, 0.25]);
        assert_eq!(MAX_EXACT as f64 as u64, MAX_EXACT);
    }

    #[test]
    fn decodes_replies() {
        let v = Value::Array(vec![
            Value::Int(1_700_000_000_000),
            Value::Int(1),
            Value::Int(-1),
            Value::Int(3),
            Value::Int(1000),
            Value::Int(2),
            Value::Int(1),
            Value::BulkString(b"0.25".to_vec()),
            Value::Int(0),
        ]);
        let (now, r) = decode(&v, 2).unwrap_or_default();
        assert_eq!(now, 1_700_000_000_000);
        assert_eq!(
            r,
            vec![
                OpReply::Decision(RateLimitDecision::Rejected {
                    retry_after_ms: RETRY_NEVER,
                    remaining_after_waiting: 3,
                    window: Duration::from_secs(1),
                }),
                OpReply::Decision(RateLimitDecision::Suppressed {
                    is_allowed: true,
                    suppression_factor: 0.25
                }),
            ]
        );
        assert!(decode(&Value::Int(1), 1).is_err());
        assert!(decode(&Value::Array(vec![Value::Int(1)]), 1).is_err());
    }
}
