//! The Redis provider on a local 3-master Redis Cluster: 100,000 hostile user keys, no
//! CROSSSLOT, one Redis key per user key, a TTL on every key.
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use eyelet::{RandomSource, RateLimitDecision, RateLimiter, SplitMix64};
use support::hybrid_value::HybridValue;
use support::rate;
use support::redis_server::{scan_all, RedisCluster};

/// Distinct random keys over an alphabet full of separators, braces, glob characters, spaces
/// and non-ASCII.
fn hostile_keys(n: usize) -> Vec<String> {
    let alphabet: Vec<char> = "ab{}{}::**??[]\\  éß日本🦀xyz019-_.,;'\"\t"
        .chars()
        .collect();
    let mut rng = SplitMix64::new(2026);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    for special in ["", "{}", "}{", "{", "}", "*", "?", " ", "{a}", "a{}b"] {
        seen.insert(special.to_string());
        out.push(special.to_string());
    }
    while out.len() < n {
        let len = 1 + (rng.next_u64() % 24) as usize;
        let k: String = (0..len)
            .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
            .collect();
        if seen.insert(k.clone()) {
            out.push(k);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_on_a_cluster() {
    let cluster = RedisCluster::start();
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .redis_cluster(cluster.urls())
        .prefix("cl")
        .redis_deadline(Duration::from_secs(10))
        .sweeper(false)
        .connect()
        .await
        .expect("connect to the cluster");
    // the script is loaded on every primary at connect (issue 7.9): no first call pays an EVAL
    let sha = redis::Script::new(include_str!("../lua/decide.lua"))
        .get_hash()
        .to_string();
    for node in &cluster.nodes {
        let loaded: Vec<bool> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&sha)
            .query(&mut node.conn())
            .expect("SCRIPT EXISTS");
        assert_eq!(loaded, vec![true], "node {}", node.port);
    }
    let keys = hostile_keys(100_000);
    let one = rate(1.0 / 60.0); // C = 1 per 60 s window
    let mut allowed = 0;
    for chunk in keys.chunks(2_000) {
        // Any error (CROSSSLOT included) fails the test.
        let ds = rl
            .redis()
            .absolute()
            .inc_many(chunk, &one, 1)
            .await
            .expect("inc_many");
        allowed += ds.iter().filter(|d| d.is_allowed()).count();
    }
    // C = 1: had two user keys shared a Redis key, the second would have been rejected.
    assert_eq!(allowed, keys.len());
    for k in keys.iter().take(2_000) {
        assert!(rl
            .redis()
            .suppressed()
            .inc(k, &one, 1)
            .await
            .expect("inc")
            .is_allowed());
        assert!(matches!(
            rl.redis().absolute().inc(k, &one, 1).await.expect("inc"),
            RateLimitDecision::Rejected { .. }
        ));
    }
    assert_eq!(rl.redis().absolute().get("{}").await, Ok(1));

    let mut total = 0;
    let mut without_ttl = 0;
    for node in &cluster.nodes {
        let mut conn = node.conn();
        let found = scan_all(&mut conn, "cl:*");
        total += found.len();
        for k in &found {
            let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut conn).expect("PTTL");
            if ttl < 0 {
                without_ttl += 1;
            }
        }
    }
    eprintln!(
        "{} user keys -> {total} redis keys on 3 masters, {without_ttl} without TTL",
        keys.len()
    );
    assert_eq!(
        total,
        keys.len() + 2_000,
        "one redis key per user key and strategy"
    );
    assert_eq!(without_ttl, 0);
}

/// A slot moving between nodes under the limiter: `ASK` while it migrates and `MOVED` after are
/// followed by the limiter itself (the client's own retries are off, since they would re-send a
/// script after a lost reply), and every call is counted once, on the node that serves the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_and_moved_are_followed_while_a_slot_moves() {
    let cluster = RedisCluster::start();
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .redis_cluster(cluster.urls())
        .prefix("mv")
        .redis_deadline(Duration::from_secs(5))
        .sweeper(false)
        .connect()
        .await
        .expect("connect to the cluster");
    let abs = rl.redis().absolute();
    let r = rate(100.0 / 60.0); // C = 100
    let key = "moving";
    let redis_key = format!("mv:a:{{{key}}}");
    assert!(abs.inc(key, &r, 1).await.expect("inc").is_allowed());
    let from = cluster.node_of(&redis_key);
    let to = (from + 1) % 3;
    let (mut src, mut dst) = (cluster.nodes[from].conn(), cluster.nodes[to].conn());
    let id = |c: &mut redis::Connection| -> String {
        redis::cmd("CLUSTER").arg("MYID").query(c).expect("MYID")
    };
    let (src_id, dst_id) = (id(&mut src), id(&mut dst));
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&redis_key)
        .query(&mut src)
        .expect("KEYSLOT");
    let setslot = |c: &mut redis::Connection, how: &str, node: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(how)
            .arg(node)
            .query(c)
            .expect("SETSLOT");
    };
    setslot(&mut dst, "IMPORTING", &src_id);
    setslot(&mut src, "MIGRATING", &dst_id);
    // still on the source: served there
    assert!(abs
        .inc(key, &r, 1)
        .await
        .expect("inc while migrating")
        .is_allowed());
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(cluster.nodes[to].port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&redis_key)
        .query(&mut src)
        .expect("MIGRATE");
    // moved to the target, slot still migrating: the source answers ASK
    assert!(abs
        .inc(key, &r, 1)
        .await
        .expect("inc after ASK")
        .is_allowed());
    for c in cluster
        .nodes
        .iter()
        .map(|n| n.conn())
        .collect::<Vec<_>>()
        .iter_mut()
    {
        setslot(c, "NODE", &dst_id);
    }
    // the slot now belongs to the target: the limiter's stale map meets MOVED
    assert!(abs
        .inc(key, &r, 1)
        .await
        .expect("inc after MOVED")
        .is_allowed());
    assert_eq!(abs.get(key).await, Ok(4), "four calls, each counted once");
    let on_target: bool = redis::cmd("EXISTS")
        .arg(&redis_key)
        .query(&mut dst)
        .expect("EXISTS");
    assert!(on_target);
}

/// Sums over every hybrid key under `pattern` on every node: accepted and declined weight in
/// buckets, and the number of keys.
fn hybrid_sums(cluster: &RedisCluster, pattern: &str) -> (u64, u64, usize) {
    let (mut accepted, mut declined, mut keys) = (0u64, 0u64, 0usize);
    for node in &cluster.nodes {
        let mut conn = node.conn();
        for k in scan_all(&mut conn, pattern) {
            keys += 1;
            let raw: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut conn).expect("GET");
            let v = HybridValue::decode(&raw);
            accepted += v.admitted();
            declined += v.declined_weight();
        }
    }
    (accepted, declined, keys)
}

/// The hybrid provider on a cluster: two instances sync hostile keys of both strategies (one
/// script call per slot; the registry, in its own slot, by a call of its own), see each other
/// in the registry, and Redis ends up holding exactly what each strategy accepted and declined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hybrid_syncs_hostile_keys_of_both_strategies_on_a_cluster() {
    let cluster = RedisCluster::start();
    let mut rls = Vec::new();
    for _ in 0..2 {
        let rl = RateLimiter::builder()
            .window(Duration::from_secs(60))
            // reserves live 8 intervals: a sync of 2,000 keys (one call per slot) on a loaded
            // 2-core machine must refresh or release them well before that
            .sync_interval(Duration::from_millis(100))
            .hard_limit_factor(1.5)
            .redis_cluster(cluster.urls())
            .prefix("hc")
            .redis_deadline(Duration::from_secs(5))
            .sweeper(false)
            .connect()
            .await
            .expect("connect to the cluster");
        rl.hybrid().flush().await.expect("first sync");
        rls.push(rl);
    }
    for rl in &rls {
        rl.hybrid().flush().await.expect("sync");
        assert_eq!(rl.hybrid().status().instances, 2, "both registered");
    }
    let keys = std::sync::Arc::new(hostile_keys(2_000));
    let r = rate(4.0 / 60.0); // C = 4, H = 6 per 60 s window
    let (mut accepted, mut attempts) = (0u64, 0u64);
    let mut sup_accepted = 0u64;
    for (i, rl) in rls.iter().enumerate() {
        // decided on a blocking thread: the runtime's workers keep running the sync actors
        let (rl2, keys2) = (rl.clone(), keys.clone());
        let (a, t, s) = tokio::task::spawn_blocking(move || {
            let (mut a, mut t, mut s) = (0u64, 0u64, 0u64);
            for chunk in keys2.chunks(500) {
                let ds = rl2.hybrid().absolute().inc_many(chunk, &r, 1);
                a += ds.iter().filter(|d| d.is_allowed()).count() as u64;
                for k in chunk.iter().take(50) {
                    for _ in 0..3 {
                        t += 1;
                        s += u64::from(rl2.hybrid().suppressed().inc(k, &r, 1).is_allowed());
                    }
                }
            }
            (a, t, s)
        })
        .await
        .expect("decisions");
        accepted += a;
        attempts += t;
        sup_accepted += s;
        rl.hybrid().flush().await.expect("sync on the cluster");
        let status = rl.hybrid().status();
        eprintln!("instance {i}: {status:?}");
        // (not `pending_parts == 0`: the timer's next sync may already be under way, and it
        // lists every key still holding a reserve; what the flush promises is checked below,
        // in Redis)
        assert_eq!(
            (status.failures, status.dropped_parts),
            (0, 0),
            "instance {i}"
        );
    }
    for rl in &rls {
        rl.hybrid().flush().await.expect("sync");
    }
    let (abs_in_redis, _, abs_keys) = hybrid_sums(&cluster, "hc:h:*");
    let (sup_in_redis, declined_in_redis, sup_keys) = hybrid_sums(&cluster, "hc:p:*");
    eprintln!(
        "2 instances, {} keys: absolute admitted {accepted} (Redis {abs_in_redis}, {abs_keys} keys); suppressed accepted {sup_accepted} of {attempts} (Redis {sup_in_redis} + {declined_in_redis} declined, {sup_keys} keys)",
        keys.len()
    );
    assert_eq!(abs_keys, keys.len(), "one Redis key per user key");
    assert_eq!(sup_keys, 50 * keys.len() / 500);
    assert_eq!(abs_in_redis, accepted);
    assert_eq!(
        (sup_in_redis, declined_in_redis),
        (sup_accepted, attempts - sup_accepted)
    );
    for rl in &rls {
        rl.hybrid().shutdown().await.expect("shutdown");
    }
}
