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

/// 0 or 1, as the script encodes a flag.
fn flag(x: f64) -> Result<bool, RedisError> {
    match x {
        0.0 => Ok(false),
        1.0 => Ok(true),
        _ => Err(RedisError::Protocol(format!("expected 0 or 1, got {x}"))),
    }
}

/// `x` must be exactly `want` (an unused slot, or a number the request fixes).
fn exactly(x: f64, want: f64) -> Result<(), RedisError> {
    if x == want {
        Ok(())
    } else {
        Err(RedisError::Protocol(format!("expected {want}, got {x}")))
    }
}

/// Decodes one operation's four numbers, checking that they are a reply this operation can
/// get: anything else (a truncated or garbled reply, a reply kind of another operation) is a
/// [`RedisError::Protocol`], never a decision.
fn decode_one(op: &OpArgs, kind: f64, a: f64, b: f64, c: f64) -> Result<OpReply, RedisError> {
    let bad = || {
        RedisError::Protocol(format!(
            "reply ({kind}, {a}, {b}, {c}) does not fit operation {:?}",
            op.code
        ))
    };
    let decision_op = matches!(
        op.code,
        OpCode::AbsoluteInc
            | OpCode::AbsoluteCheck
            | OpCode::SuppressedInc
            | OpCode::SuppressedCheck
    );
    let suppressed_op = matches!(op.code, OpCode::SuppressedInc | OpCode::SuppressedCheck);
    let reply = match kind {
        0.0 if decision_op => {
            exactly(a, 0.0)?;
            exactly(b, 0.0)?;
            exactly(c, 0.0)?;
            OpReply::Decision(RateLimitDecision::Allowed)
        }
        1.0 if decision_op && !suppressed_op => {
            let retry_after_ms = if a == -1.0 { RETRY_NEVER } else { count(a)? };
            let remaining_after_waiting = count(b)?;
            if remaining_after_waiting > op.capacity {
                return Err(bad());
            }
            exactly(c, op.window_ms as f64)?;
            OpReply::Decision(RateLimitDecision::Rejected {
                retry_after_ms,
                remaining_after_waiting,
                window: Duration::from_millis(op.window_ms),
            })
        }
        2.0 if suppressed_op => {
            let is_allowed = flag(a)?;
            let suppression_factor = if b == -1.0 {
                // the hard cutoff: never admitted, factor 1
                if is_allowed {
                    return Err(bad());
                }
                exactly(c, 0.0)?;
                1.0
            } else {
                let span = count(b)?;
                if span > op.window_ms {
                    return Err(bad());
                }
                count(c)?;
                factor(op.capacity, op.window_ms, b, c)
            };
            OpReply::Decision(RateLimitDecision::Suppressed {
                is_allowed,
                suppression_factor,
            })
        }
        3.0 if op.code == OpCode::AbsoluteGet => {
            exactly(b, 0.0)?;
            exactly(c, 0.0)?;
            OpReply::Total(count(a)?)
        }
        4.0 if op.code == OpCode::SuppressedGet => {
            let accepted = count(a)?;
            let declined = count(b)?;
            if !(0.0..=1.0).contains(&c) {
                return Err(bad());
            }
            OpReply::Snapshot(SuppressedSnapshot {
                total: accepted.saturating_add(declined).min(MAX_EXACT),
                accepted,
                declined,
                suppression_factor: c,
            })
        }
        5.0 if op.code == OpCode::Reset => {
            exactly(b, 0.0)?;
            exactly(c, 0.0)?;
            OpReply::Reset(flag(a)?)
        }
        _ => return Err(bad()),
    };
    Ok(reply)
}

/// Decodes a script reply for `ops`: the server time and one reply per operation.
///
/// # Errors
/// [`RedisError::Protocol`] for a reply that is not exactly what these operations get: its
/// length, every number's range and every reply's kind are checked, so a garbled reply is never
/// read as a decision. The call was executed, so its effects may have been applied.
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
        out.push(decode_one(op, kind, a, b, c)?);
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
        let abs = OpArgs {
            code: OpCode::AbsoluteInc,
            ..op
        };
        let (now, r) = decode(&v, [abs, op].iter()).unwrap_or_default();
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
        assert!(decode(&encode(&[1.0, 0.0, 0.0, 0.0, 0.0]), [op].iter()).is_ok());
        assert!(decode(&encode(&[1.0, 3.0, -2.0, 0.0, 0.0]), [op].iter()).is_err());
    }

    /// Malformed replies are protocol errors, never decisions (issue 7.9: a NaN or fractional
    /// kind read as 0, `Allowed`).
    #[test]
    fn malformed_replies_are_protocol_errors_never_allowed() {
        let abs = OpArgs {
            code: OpCode::AbsoluteInc,
            window_ms: 1000,
            capacity: 10,
            hard: 10,
            n: 1,
            draw: 0.0,
        };
        let sup = OpArgs {
            code: OpCode::SuppressedInc,
            hard: 15,
            ..abs
        };
        let get = OpArgs {
            code: OpCode::SuppressedGet,
            ..abs
        };
        let bad: &[(&OpArgs, [f64; 4])] = &[
            (&abs, [f64::NAN, 0.0, 0.0, 0.0]),
            (&abs, [0.5, 0.0, 0.0, 0.0]),
            (&abs, [-0.0 - 1.0, 0.0, 0.0, 0.0]),
            (&abs, [0.0, f64::NAN, 0.0, 0.0]),
            (&abs, [0.0, 1.0, 0.0, 0.0]),
            (&abs, [2.0, 1.0, 10.0, 5.0]), // a suppressed answer to an absolute op
            (&abs, [3.0, 1.0, 0.0, 0.0]),  // a read's answer to an inc
            (&abs, [1.0, 5.0, 11.0, 1000.0]), // more remaining than the capacity
            (&abs, [1.0, 5.0, 1.0, 999.0]), // another window
            (&abs, [1.0, -2.0, 1.0, 1000.0]),
            (&abs, [1.0, 0.5, 1.0, 1000.0]),
            (&sup, [1.0, 5.0, 1.0, 1000.0]), // suppressed never rejects
            (&sup, [2.0, 0.5, 10.0, 5.0]),
            (&sup, [2.0, 2.0, 10.0, 5.0]),
            (&sup, [2.0, 1.0, -1.0, 0.0]), // admitted at the hard cutoff
            (&sup, [2.0, 1.0, 1001.0, 5.0]),
            (&sup, [2.0, 1.0, 10.0, f64::INFINITY]),
            (&get, [4.0, 1.0, 2.0, 1.5]),
            (&get, [4.0, 1.0, 2.0, f64::NAN]),
            (&get, [5.0, 1.0, 0.0, 0.0]),
        ];
        for (op, [k, a, b, c]) in bad {
            let r = decode(&encode(&[1.0, *k, *a, *b, *c]), [**op].iter());
            assert!(
                matches!(r, Err(RedisError::Protocol(_))),
                "{op:?} ({k}, {a}, {b}, {c}) -> {r:?}"
            );
        }
        // a reply of another length, or a garbled time, fails the whole call
        assert!(decode(&encode(&[1.0, 0.0, 0.0, 0.0]), [abs].iter()).is_err());
        assert!(decode(&encode(&[-5.0, 0.0, 0.0, 0.0, 0.0]), [abs].iter()).is_err());
        assert!(decode(&encode(&[f64::NAN, 0.0, 0.0, 0.0, 0.0]), [abs].iter()).is_err());
        // the well-formed replies decode
        let ok: &[(&OpArgs, [f64; 4])] = &[
            (&abs, [0.0, 0.0, 0.0, 0.0]),
            (&abs, [1.0, -1.0, 10.0, 1000.0]),
            (&abs, [1.0, 250.0, 3.0, 1000.0]),
            (&sup, [2.0, 0.0, -1.0, 0.0]),
            (&sup, [2.0, 1.0, 10.0, 40.0]),
            (&get, [4.0, 9.0, 2.0, 0.25]),
        ];
        for (op, [k, a, b, c]) in ok {
            let r = decode(&encode(&[1.0, *k, *a, *b, *c]), [**op].iter());
            assert!(r.is_ok(), "{op:?} ({k}, {a}, {b}, {c}) -> {r:?}");
        }
    }
}
