//! A hybrid key's value in Redis, decoded (the format `lua/hybrid_sync.lua` writes): a
//! header of seven little-endian doubles (format, TTL floor, then the counts nb, nx, nr, ns,
//! nc), nb + nx pairs `(k, weight)` and nr + ns + nc records `(id\0, a, b)`.

/// What a hybrid key holds in Redis.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HybridValue {
    /// `(bucket k, weight admitted)`.
    pub buckets: Vec<(u64, u64)>,
    /// `(bucket k, weight declined)` (suppressed keys).
    pub declined: Vec<(u64, u64)>,
    /// `(instance, R, refreshed at)`.
    pub reserves: Vec<(String, u64, u64)>,
    /// `(instance, seq, at)`.
    pub seqs: Vec<(String, u64, u64)>,
    /// `(instance, R, bucket k)`: expired reserves counted as admitted.
    pub conversions: Vec<(String, u64, u64)>,
}

fn f64_at(b: &[u8], pos: &mut usize) -> f64 {
    let v = f64::from_le_bytes(b[*pos..*pos + 8].try_into().expect("8 bytes"));
    *pos += 8;
    v
}

impl HybridValue {
    /// Decodes a value; panics on anything but the current format.
    pub fn decode(b: &[u8]) -> Self {
        let mut pos = 0;
        let header: Vec<f64> = (0..7).map(|_| f64_at(b, &mut pos)).collect();
        assert_eq!(header[0], 1.0, "format 1");
        let count = |i: usize| header[i] as usize;
        let mut pairs = |n: usize| -> Vec<(u64, u64)> {
            (0..n)
                .map(|_| (f64_at(b, &mut pos) as u64, f64_at(b, &mut pos) as u64))
                .collect()
        };
        let buckets = pairs(count(2));
        let declined = pairs(count(3));
        let mut records = |n: usize| -> Vec<(String, u64, u64)> {
            (0..n)
                .map(|_| {
                    let end = pos + b[pos..].iter().position(|&c| c == 0).expect("id end");
                    let id = String::from_utf8(b[pos..end].to_vec()).expect("id");
                    pos = end + 1;
                    (id, f64_at(b, &mut pos) as u64, f64_at(b, &mut pos) as u64)
                })
                .collect()
        };
        let reserves = records(count(4));
        let seqs = records(count(5));
        let conversions = records(count(6));
        assert_eq!(pos, b.len(), "nothing after the records");
        Self {
            buckets,
            declined,
            reserves,
            seqs,
            conversions,
        }
    }

    /// The value of `key`, if it exists.
    pub fn read(c: &mut redis::Connection, key: &str) -> Option<Self> {
        let raw: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(c).expect("GET");
        raw.map(|b| Self::decode(&b))
    }

    /// Weight admitted in its buckets.
    pub fn admitted(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }

    /// Weight declined in its buckets.
    pub fn declined_weight(&self) -> u64 {
        self.declined.iter().map(|b| b.1).sum()
    }

    /// Units held in reserves.
    pub fn reserved(&self) -> u64 {
        self.reserves.iter().map(|r| r.1).sum()
    }

    /// A record in the older per-field spelling: `b<k>`, `x<k>` (the weight), `r:<id>`
    /// (`R:at`), `s:<id>` (`seq:at`), `c:<id>` (`R:k`).
    pub fn field(&self, name: &str) -> Option<String> {
        let record = |list: &[(String, u64, u64)], id: &str| {
            list.iter()
                .find(|r| r.0 == id)
                .map(|r| format!("{}:{}", r.1, r.2))
        };
        let bucket = |list: &[(u64, u64)], k: &str| {
            let k: u64 = k.parse().ok()?;
            list.iter().find(|b| b.0 == k).map(|b| b.1.to_string())
        };
        if let Some(id) = name.strip_prefix("r:") {
            record(&self.reserves, id)
        } else if let Some(id) = name.strip_prefix("s:") {
            record(&self.seqs, id)
        } else if let Some(id) = name.strip_prefix("c:") {
            record(&self.conversions, id)
        } else if let Some(k) = name.strip_prefix('b') {
            bucket(&self.buckets, k)
        } else if let Some(k) = name.strip_prefix('x') {
            bucket(&self.declined, k)
        } else {
            None
        }
    }
}
