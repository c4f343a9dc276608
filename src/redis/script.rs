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

/// `sf = clamp(1 − S·span / (W_eff·T), 0, 1)` from the inputs the script reports: the same
/// operations in the same order as the script (and `src/math/suppressed.rs`), so bit-identical.
fn factor(soft: u64, window_ms: u64, span: f64, attempted: f64) -> f64 {
    if attempted <= 0.0 || span <= 0.0 {
        return 0.0;
    }
    let ratio = (soft as f64 * span) / (window_ms as f64 * attempted);
    (1.0 - ratio).clamp(0.0, 1.0)
}

fn count(x: f64) -> Result<u64, RedisError> {
    if x >= 0.0 && x <= MAX_EXACT as f64 && x.fract() == 0.0 {
        Ok(x as u64)
    } else {
        Err(RedisError::Protocol(format!("expected a count, got {x}")))
    }
}

/// Decodes a script reply for `ops`: the server time and one reply per operation.
pub(crate) fn decode<'a>(
    value: &Value,
    ops: impl ExactSizeIterator<Item = &'a OpArgs>,
) -> Result<(u64, Vec<OpReply>), RedisError> {
    let Value::BulkString(bytes) = value else {
        return Err(RedisError::Protocol(format!(
            "expected a string, got {value:?}"
        )));
    };
    let n_ops = ops.len();
    if bytes.len() != 8 * (1 + 4 * n_ops) {
        return Err(RedisError::Protocol(format!(
            "expected {} numbers, got {} bytes",
            1 + 4 * n_ops,
            bytes.len()
        )));
    }
    let mut nums = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
    let mut next = || nums.next().unwrap_or(f64::NAN);
    let now = count(next())?;
    let mut out = Vec::with_capacity(n_ops);
    for op in ops {
        let (kind, a, b, c) = (next(), next(), next(), next());
        let reply = match kind as i64 {
            0 => OpReply::Decision(RateLimitDecision::Allowed),
            1 => OpReply::Decision(RateLimitDecision::Rejected {
                retry_after_ms: if a < 0.0 { RETRY_NEVER } else { count(a)? },
                remaining_after_waiting: count(b)?,
                window: Duration::from_millis(count(c)?),
            }),
            2 => OpReply::Decision(RateLimitDecision::Suppressed {
                is_allowed: a != 0.0,
                suppression_factor: if b < 0.0 {
                    1.0
                } else {
                    factor(op.capacity, op.window_ms, b, c)
                },
            }),
            3 => OpReply::Total(count(a)?),
            4 => OpReply::Snapshot(SuppressedSnapshot {
                total: count(a)?,
                declined: count(b)?,
                suppression_factor: c,
            }),
            5 => OpReply::Reset(a != 0.0),
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
        assert_eq!(
            vals,
            vec![4.0, 2.0, 1000.0, MAX_EXACT as f64, 15.0, 3.0, 0.25]
        );
        assert_eq!(MAX_EXACT as f64 as u64, MAX_EXACT);
    }

    fn encode(nums: &[f64]) -> Value {
        Value::BulkString(nums.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    #[test]
    fn decodes_replies() {
        let op = OpArgs {
            code: OpCode::SuppressedInc,
            window_ms: 1000,
            capacity: 10,
            hard: 15,
            n: 1,
            draw: 0.5,
        };
        let v = encode(&[
            1_700_000_000_000.0,
            1.0,
            -1.0,
            3.0,
            1000.0,
            2.0,
            1.0,
            500.0,
            40.0,
        ]);
        let (now, r) = decode(&v, [op, op].iter()).unwrap_or_default();
        assert_eq!(now, 1_700_000_000_000);
        assert_eq!(
            r,
            vec![
                OpReply::Decision(RateLimitDecision::Rejected {
                    retry_after_ms: RETRY_NEVER,
                    remaining_after_waiting: 3,
                    window: Duration::from_secs(1),
                }),
                // 1 − 10·500 / (1000·40) = 0.875
                OpReply::Decision(RateLimitDecision::Suppressed {
                    is_allowed: true,
                    suppression_factor: 0.875
                }),
            ]
        );
        assert!(decode(&Value::Int(1), [op].iter()).is_err());
        assert!(decode(&encode(&[1.0]), [op].iter()).is_err());
        assert!(decode(&encode(&[1.0, 0.0, 0.5, 0.0, 0.0]), [op].iter()).is_ok());
        assert!(decode(&encode(&[1.0, 3.0, -2.0, 0.0, 0.0]), [op].iter()).is_err());
    }
}
