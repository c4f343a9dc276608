//! Redis key encoding: injective, glob-safe, one hash slot per user key.
//!
//! A limiter key is `<prefix>:<strategy>:{<escaped user key>}`. The escape maps `\ { } * ? [ ]`
//! to two-byte sequences starting with `\` and leaves every other byte alone, so it is injective
//! (it can be decoded), the user part never contains a brace (the braces around it are always
//! the hash tag, so a user key owns exactly one slot), and no glob character of the user key
//! reaches a `SCAN MATCH` pattern. The prefix is validated to contain no brace.

/// Longest user key the Redis provider accepts, in bytes (before escaping).
pub const MAX_KEY_LEN: usize = 512;

/// Longest limiter prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 128;

/// Number of Redis Cluster hash slots.
const SLOTS: u16 = 16384;

/// Which strategy a key belongs to (the strategies keep separate state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Absolute,
    Suppressed,
    /// The hybrid provider's global windows (absolute).
    Hybrid,
    /// The hybrid provider's global windows (suppressed).
    HybridSuppressed,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Absolute => b'a',
            Kind::Suppressed => b's',
            Kind::Hybrid => b'h',
            Kind::HybridSuppressed => b'p',
        }
    }
}

/// Appends the escaped form of `key` to `out`.
fn escape_into(key: &str, out: &mut Vec<u8>) {
    for &b in key.as_bytes() {
        let esc = match b {
            b'\\' => b'\\',
            b'{' => b'(',
            b'}' => b')',
            b'*' => b'a',
            b'?' => b'q',
            b'[' => b'<',
            b']' => b'>',
            _ => {
                out.push(b);
                continue;
            }
        };
        out.push(b'\\');
        out.push(esc);
    }
}

/// The Redis key of `key` under `prefix` for strategy `kind`.
pub(crate) fn encode(prefix: &str, kind: Kind, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len() + 8);
    out.extend_from_slice(prefix.as_bytes());
    out.push(b':');
    out.push(kind.tag());
    out.extend_from_slice(b":{");
    escape_into(key, &mut out);
    out.push(b'}');
    out
}

/// The Redis key of `key` under `prefix` for strategy `kind`, with a key longer than
/// [`MAX_KEY_LEN`] bytes stored under its SHA-256 digest: `{\#<64 hex digits>}`. The escape
/// never writes `\#` (a backslash is only ever followed by `\ ( ) a q < >`), so a digest name
/// never equals an escaped user key.
pub(crate) fn encode_any_length(prefix: &str, kind: Kind, key: &str) -> Vec<u8> {
    use sha2::Digest;
    if key.len() <= MAX_KEY_LEN {
        return encode(prefix, kind, key);
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut out = Vec::with_capacity(prefix.len() + 72);
    out.extend_from_slice(prefix.as_bytes());
    out.push(b':');
    out.push(kind.tag());
    out.extend_from_slice(b":{\\#");
    for b in digest {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out.push(b'}');
    out
}

/// Decodes the user part of an encoded key (the inverse of the escape); `None` if `redis_key`
/// is not an encoded key. Used by tests to prove injectivity.
#[cfg(test)]
fn decode(redis_key: &[u8]) -> Option<(Kind, String)> {
    let open = redis_key.iter().position(|&b| b == b'{')?;
    let kind = match redis_key.get(open.checked_sub(2)?)? {
        b'a' => Kind::Absolute,
        b's' => Kind::Suppressed,
        _ => return None,
    };
    let body = redis_key.get(open + 1..redis_key.len().checked_sub(1)?)?;
    if redis_key.last() != Some(&b'}') {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut it = body.iter();
    while let Some(&b) = it.next() {
        if b == b'}' || b == b'{' {
            return None;
        }
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match it.next()? {
            b'\\' => b'\\',
            b'(' => b'{',
            b')' => b'}',
            b'a' => b'*',
            b'q' => b'?',
            b'<' => b'[',
            b'>' => b']',
            _ => return None,
        });
    }
    Some((kind, String::from_utf8(out).ok()?))
}

/// Whether `prefix` is usable: non-empty, short, and without braces (which would move the hash
/// tag).
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && !prefix.bytes().any(|b| b == b'{' || b == b'}')
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of `key`, by the server's rule: the hash tag (between the first `{`
/// and the next `}`) if it is non-empty, else the whole key.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_over_the_limit_is_stored_under_its_digest_and_never_collides_with_a_short_one() {
        let short = "k".repeat(MAX_KEY_LEN);
        assert_eq!(
            encode_any_length("p", Kind::Hybrid, &short),
            encode("p", Kind::Hybrid, &short)
        );
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let d = encode_any_length("p", Kind::Hybrid, &long);
        assert_eq!(d.len(), "p:h:{\\#}".len() + 64);
        assert!(d.starts_with(b"p:h:{\\#") && d.ends_with(b"}"));
        // SHA-256("k" x 513), as `printf 'k%.0s' $(seq 513) | sha256sum` prints it
        assert_eq!(
            &d[7..71],
            b"45a7c7ef95c3417e800362f5672aba16da807261fe7121f3a81b0a0fb6b9a05c"
        );
        let other = encode_any_length("p", Kind::Hybrid, &format!("{}j", "k".repeat(MAX_KEY_LEN)));
        assert_ne!(d, other, "keys differing in the last byte");
        assert_ne!(d, encode_any_length("p", Kind::HybridSuppressed, &long));
        // a user key that spells the digest name is escaped differently
        let spelled = String::from_utf8(d[5..d.len() - 1].to_vec()).expect("ascii");
        assert_ne!(encode_any_length("p", Kind::Hybrid, &spelled), d);
    }

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn encoding_is_injective_and_braces_stay_in_the_tag() {
        let keys = [
            "",
            "a",
            "a}",
            "a\\)",
            "{x}",
            "*",
            "\\a",
            "?",
            "[]",
            "\\",
            "\\\\",
            "ü ñ 日本",
            "a:b",
            "}{",
            "\\(",
        ];
        let mut seen = std::collections::HashSet::new();
        for k in keys {
            let e = encode("p", Kind::Absolute, k);
            assert!(seen.insert(e.clone()), "collision for {k:?}");
            assert_eq!(decode(&e), Some((Kind::Absolute, k.to_string())));
            let body = &e[5..e.len() - 1];
            assert!(
                !body.iter().any(|b| b"{}*?[]".contains(b)),
                "{k:?} -> {e:?}"
            );
            if !k.is_empty() {
                assert_eq!(slot(&e), crc16(body) % SLOTS);
            }
        }
        assert_ne!(
            encode("p", Kind::Absolute, "k"),
            encode("p", Kind::Suppressed, "k")
        );
        assert!(valid_prefix("svc:checkout"));
        assert!(!valid_prefix("a{b"));
        assert!(!valid_prefix(""));
    }
}
