//! `lua/hybrid_sync.lua` called directly on a real server, with parts crafted as the sync
//! actor packs them: the cases a running limiter reaches only through failures (several parts
//! of one key in one call after lost replies) or rarely (a reset between reports).
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use support::hybrid_value::HybridValue;
use support::redis_server::RedisServer;

const SCRIPT: &str = include_str!("../lua/hybrid_sync.lua");
const G: u64 = 10;
const LEASE_TTL: u64 = 80;

/// One part: `(seq, W, C, used, release, want, reset, deltas)`; a suppressed part (`declined`
/// is `Some`) sends its deltas as `(k, accepted, declined)` triples.
struct Part {
    seq: u64,
    w: u64,
    c: u64,
    used: u64,
    release: u64,
    want: u64,
    reset: bool,
    deltas: Vec<(u64, u64)>,
    declined: Option<Vec<(u64, u64)>>,
}

fn part(seq: u64) -> Part {
    Part {
        seq,
        w: 1000,
        c: 100,
        used: 0,
        release: 0,
        want: 0,
        reset: false,
        deltas: Vec::new(),
        declined: None,
    }
}

/// Runs one call for key `hk` at server time `now`; returns the reply's doubles.
fn call(c: &mut redis::Connection, inst: &str, now: u64, parts: &[Part]) -> Vec<f64> {
    let mut ops = Vec::new();
    for p in parts {
        for x in [
            2.0,
            p.seq as f64,
            p.w as f64,
            p.c as f64,
            p.used as f64,
            p.release as f64,
            p.want as f64,
            f64::from(u8::from(p.reset) | (u8::from(p.declined.is_some()) << 1)),
            (p.deltas.len() + p.declined.as_ref().map_or(0, Vec::len)) as f64,
        ] {
            ops.extend_from_slice(&x.to_le_bytes());
        }
        match &p.declined {
            None => {
                for &(k, w) in &p.deltas {
                    ops.extend_from_slice(&(k as f64).to_le_bytes());
                    ops.extend_from_slice(&(w as f64).to_le_bytes());
                }
            }
            Some(declined) => {
                let accepted = p.deltas.iter().map(|&(k, w)| [k, w, 0]);
                for t in accepted.chain(declined.iter().map(|&(k, x)| [k, 0, x])) {
                    for v in t {
                        ops.extend_from_slice(&(v as f64).to_le_bytes());
                    }
                }
            }
        }
    }
    let reply: Vec<u8> = redis::cmd("EVAL")
        .arg(SCRIPT)
        .arg(2)
        .arg("reg")
        .arg("hk")
        .arg(inst)
        .arg(G)
        .arg(LEASE_TTL)
        .arg(ops)
        .arg("1")
        .arg(LEASE_TTL)
        .arg(now)
        .query(c)
        .expect("EVAL");
    reply
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn field(c: &mut redis::Connection, f: &str) -> Option<String> {
    HybridValue::read(c, "hk").and_then(|v| v.field(f))
}

/// Parts sent again after lost replies arrive together: one that gives the reserve back and a
/// later one that asks for a new one. The new reserve must be stored (it counts against every
/// other instance), not dropped because an earlier part of the same call deleted the record.
#[test]
fn a_reserve_given_back_and_taken_again_in_one_call_is_stored() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = 1_000_000;
    let first = Part { want: 5, ..part(1) };
    assert_eq!(call(&mut c, "a", now, &[first])[3], 5.0, "reserve granted");
    let give_back = Part {
        release: 5,
        ..part(2)
    };
    let take_again = Part { want: 3, ..part(3) };
    let reply = call(&mut c, "a", now + 1, &[give_back, take_again]);
    assert_eq!(reply[3], 0.0, "part 2: reserve given back");
    assert_eq!(reply[7], 3.0, "part 3: reserve of 3");
    let stored = field(&mut c, "r:a").expect("the reserve of part 3 is stored");
    assert!(stored.starts_with("3:"), "{stored}");
    // and it counts for another instance
    let other = Part {
        want: 100,
        ..part(1)
    };
    assert_eq!(call(&mut c, "b", now + 2, &[other])[3], 97.0);
}

/// A reset forgets every bucket and every instance's reserve of the key, and what the same
/// call reports after it counts again.
#[test]
fn a_reset_forgets_buckets_and_reserves_and_later_parts_count() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = 2_000_000;
    let k = now / G;
    let a = Part {
        want: 10,
        deltas: vec![(k, 7)],
        ..part(1)
    };
    assert_eq!(
        call(&mut c, "a", now, &[a])[4],
        17.0,
        "7 admitted + 10 reserved"
    );
    let b = Part {
        want: 20,
        ..part(1)
    };
    assert_eq!(call(&mut c, "b", now + 1, &[b])[4], 37.0);
    let reset = Part {
        reset: true,
        ..part(2)
    };
    let after = Part {
        deltas: vec![(k, 2)],
        ..part(3)
    };
    let reply = call(&mut c, "a", now + 2, &[reset, after]);
    assert_eq!(reply[4], 0.0, "nothing live right after the reset");
    assert_eq!(reply[8], 2.0, "the later report counts");
    assert_eq!(field(&mut c, "r:b"), None, "b's reserve is gone");
    assert_eq!(field(&mut c, &format!("b{k}")).as_deref(), Some("2"));
}

/// A reserve its instance stopped refreshing (dead or cut off) counts as admitted at its
/// expiry, not as nothing: the instance may have spent it before it lost touch.
#[test]
fn an_expired_reserve_counts_as_admitted_until_its_window_ends() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = 3_000_000;
    let a = Part { want: 5, ..part(1) };
    assert_eq!(call(&mut c, "a", now, &[a])[3], 5.0);
    // a goes silent; after the lease time-to-live b asks for everything
    let b = Part {
        want: 100,
        ..part(1)
    };
    let reply = call(&mut c, "b", now + LEASE_TTL + 1, &[b]);
    assert_eq!(reply[3], 95.0, "a's 5 units still count");
    assert_eq!(field(&mut c, "r:a"), None, "the reserve record is gone");
    let k = (now + LEASE_TTL) / G;
    assert_eq!(field(&mut c, &format!("b{k}")).as_deref(), Some("5"));
}

/// A suppressed key's parts carry declined weight too: it lands in its own buckets, counts
/// towards nothing but the attempts, is answered with the accepted and declined totals and the
/// oldest live bucket, is applied once when a part is sent again, and a reset forgets it.
#[test]
fn a_suppressed_part_stores_declined_weight_by_bucket_and_answers_with_attempts() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = 4_000_000;
    let k = now / G;
    let a = Part {
        want: 10,
        deltas: vec![(k - 5, 4), (k, 3)],
        declined: Some(vec![(k - 5, 2), (k, 6)]),
        ..part(1)
    };
    let reply = call(&mut c, "a", now, std::slice::from_ref(&a));
    // now, instances, then applied, R, live, free_at, accepted, declined, oldest
    assert_eq!(reply.len(), 2 + 7);
    assert_eq!(
        &reply[2..],
        &[
            1.0,
            10.0,
            17.0,
            ((k - 4) * G + 1000) as f64,
            7.0,
            8.0,
            ((k - 5) * G) as f64
        ]
    );
    assert_eq!(field(&mut c, &format!("x{k}")).as_deref(), Some("6"));
    assert_eq!(field(&mut c, &format!("b{k}")).as_deref(), Some("3"));
    // sent again (its reply was lost): applied once
    let reply = call(&mut c, "a", now + 1, &[a]);
    assert_eq!((reply[2], reply[7]), (0.0, 8.0), "declined counted once");
    // declined weight takes no room: another instance gets C minus accepted and reserves
    let b = Part {
        want: 100,
        declined: Some(Vec::new()),
        ..part(1)
    };
    assert_eq!(call(&mut c, "b", now + 2, &[b])[3], 83.0);
    // a declined bucket leaves with its window
    let later = Part {
        declined: Some(Vec::new()),
        ..part(2)
    };
    let reply = call(&mut c, "a", (k - 4) * G + 1000, &[later]);
    assert_eq!(reply[7], 6.0, "bucket k - 5 left the window");
    assert_eq!(
        field(&mut c, &format!("x{}", k - 5)),
        None,
        "and was deleted"
    );
    let reset = Part {
        reset: true,
        declined: Some(Vec::new()),
        ..part(3)
    };
    let reply = call(&mut c, "a", (k - 4) * G + 1001, &[reset]);
    assert_eq!(
        &reply[6..9],
        &[0.0, 0.0, 0.0],
        "a reset forgets the attempts"
    );
    assert_eq!(field(&mut c, &format!("x{k}")), None);
}

/// An instance cut off long enough for its reserve to expire (a stalled server, a partition)
/// reports when it is back: what it spent arrives as deltas, and the reserve that was counted
/// as admitted at its expiry comes back out, so Redis holds exactly what was admitted.
#[test]
fn a_reserve_counted_at_expiry_comes_back_out_when_its_instance_reports() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = 5_000_000;
    let k = now / G;
    let a = Part {
        want: 10,
        ..part(1)
    };
    assert_eq!(call(&mut c, "a", now, &[a])[3], 10.0);
    // a spends 3 of its 10, then loses Redis; b's call after the lease converts a's reserve
    let b = Part {
        deltas: vec![(k + 20, 1)],
        ..part(1)
    };
    let reply = call(&mut c, "b", now + LEASE_TTL + 5, &[b]);
    assert_eq!(reply[4], 11.0, "a's 10 counted as admitted, plus b's 1");
    // a is back: its part reports the 3 it spent (in their buckets) out of its reserve
    let back = Part {
        used: 3,
        deltas: vec![(k + 1, 3)],
        ..part(2)
    };
    let reply = call(&mut c, "a", now + LEASE_TTL + 50, &[back]);
    assert_eq!(reply[4], 4.0, "exactly the 3 a spent and b's 1");
    assert_eq!(field(&mut c, "c:a"), None, "the conversion is settled");
    // sent again after a lost reply: nothing changes
    let again = Part {
        used: 3,
        deltas: vec![(k + 1, 3)],
        ..part(2)
    };
    assert_eq!(call(&mut c, "a", now + LEASE_TTL + 60, &[again])[4], 4.0);
}

/// A key with more buckets and records than one struct call packs (1,000 doubles) is stored
/// and read back whole, and deltas older than the newest bucket land in their own buckets,
/// in order, whichever order they arrive in.
#[test]
fn a_key_with_thousands_of_buckets_and_hundreds_of_instances_is_kept_whole() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = 7_000_000;
    let k0 = now / G - 2_999;
    let w = 100_000;
    // two parts of instance a: the even buckets, then the odd ones between them
    let evens = Part {
        w,
        c: 1_000_000,
        deltas: (0..1_500).map(|i| (k0 + 2 * i, 1)).collect(),
        ..part(1)
    };
    assert_eq!(call(&mut c, "a", now, &[evens])[4], 1_500.0);
    let odds = Part {
        w,
        c: 1_000_000,
        deltas: (0..1_500).map(|i| (k0 + 2 * i + 1, 2)).rev().collect(),
        ..part(2)
    };
    assert_eq!(call(&mut c, "a", now + 1, &[odds])[4], 4_500.0);
    // 400 other instances take a reserve of 1 each
    for i in 0..400 {
        let p = Part {
            w,
            c: 1_000_000,
            want: 1,
            ..part(1)
        };
        assert_eq!(call(&mut c, &format!("i{i}"), now + 2, &[p])[3], 1.0);
    }
    let v = HybridValue::read(&mut c, "hk").expect("stored");
    assert_eq!(v.buckets.len(), 3_000);
    assert!(v.buckets.windows(2).all(|p| p[0].0 < p[1].0), "sorted");
    assert_eq!(v.buckets[0], (k0, 1));
    assert_eq!(v.buckets[1], (k0 + 1, 2));
    assert_eq!((v.admitted(), v.reserved()), (4_500, 400));
    assert_eq!((v.reserves.len(), v.seqs.len()), (400, 401));
    // and one more delta into the middle, read back by a call
    let mid = Part {
        w,
        c: 1_000_000,
        deltas: vec![(k0 + 1_000, 5)],
        ..part(3)
    };
    assert_eq!(call(&mut c, "a", now + 3, &[mid])[4], 4_905.0);
    let v = HybridValue::read(&mut c, "hk").expect("stored");
    assert_eq!(v.field(&format!("b{}", k0 + 1_000)).as_deref(), Some("6"));
}

/// A key left by an older format (a hash) is replaced, as a restarted server's would be, not
/// an error that would fail the whole sync.
#[test]
fn a_value_of_an_older_format_is_replaced() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let _: () = redis::cmd("HSET")
        .arg("hk")
        .arg("b1")
        .arg("5")
        .query(&mut c)
        .expect("HSET");
    let now = 9_000_000;
    let p = Part {
        deltas: vec![(now / G, 2)],
        ..part(1)
    };
    assert_eq!(call(&mut c, "a", now, &[p])[4], 2.0);
    assert_eq!(
        HybridValue::read(&mut c, "hk").expect("stored").admitted(),
        2
    );
}

/// A write sets a TTL of twice what the key needs and keeps it while it lasts long enough
/// (`KEEPTTL`); a longer window sets a longer one.
#[test]
fn the_ttl_is_set_with_room_and_kept_while_it_suffices() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = 11_000_000;
    let pttl =
        |c: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg("hk").query(c).expect("PTTL") };
    let keep = 1_000 + G + LEASE_TTL + 1_000;
    call(&mut c, "a", now, &[part(1)]);
    let first = pttl(&mut c);
    // twice what is needed, plus the floor a call with its own clock adds (60 s)
    assert!(
        (2 * keep as i64 + 59_000..=2 * keep as i64 + 60_000).contains(&first),
        "{first}"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    call(&mut c, "a", now + 100, &[part(2)]);
    let kept = pttl(&mut c);
    assert!(kept < first, "kept, not set again: {kept} vs {first}");
    // past half of it, a write sets it again
    call(&mut c, "a", now + keep + 1, &[part(3)]);
    assert!(pttl(&mut c) > kept, "set again when it would not last");
    // a longer window needs a longer TTL
    let long = Part {
        w: 100_000,
        ..part(4)
    };
    call(&mut c, "a", now + keep + 2, &[long]);
    assert!(pttl(&mut c) > 200_000 + 60_000, "{}", pttl(&mut c));
}
