//! A script call whose reply is lost after the server executed it (the connection dies on the
//! way back) is never sent again behind the caller's back: the request counts once, and the
//! caller learns that the outcome is unknown (issue 7.5). Single servers and clusters alike.
#![cfg(feature = "redis")]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use eyelet::RateLimiter;
use support::proxy::Proxy;
use support::rate;
use support::redis_server::{RedisCluster, RedisServer};

/// The reply of a one-operation script call: a 40-byte bulk string (now + 4 numbers).
const ONE_OP_REPLY: &[u8] = b"$40\r\n";

async fn lose_one_reply<'p>(rl: &Arc<RateLimiter>, proxy_of: impl Fn(&str) -> &'p Proxy) {
    let abs = rl.redis().absolute();
    let r = rate(1000.0 / 60.0); // C = 1000: a second application would be admitted too
                                 // warm up: connections open, script cached
    for i in 0..20 {
        abs.inc(&format!("warm{i}"), &r, 1).await.expect("warm up");
    }
    let key = "once";
    let proxy = proxy_of(key);
    proxy.lose_next_reply(ONE_OP_REPLY);
    let res = abs.inc(key, &r, 1).await;
    assert_eq!(proxy.lost(), 1, "the reply was lost on its way back");
    match &res {
        Err(e) => assert!(
            e.may_have_been_applied(),
            "a lost reply is an unknown outcome, not a failure: {e:?}"
        ),
        Ok(d) => panic!("the call was re-sent after its reply was lost and answered {d:?}"),
    }
    // the limiter reconnects; the request was applied exactly once
    let mut total = None;
    for _ in 0..50 {
        match abs.get(key).await {
            Ok(t) => {
                total = Some(t);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(total, Some(1), "applied once, never twice: {res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_not_resent_on_a_single_server() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port);
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .redis_url(proxy.url())
        .prefix("lost1")
        .redis_deadline(Duration::from_secs(2))
        .sweeper(false)
        .connect()
        .await
        .expect("connect");
    lose_one_reply(&rl, |_| &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_not_resent_on_a_cluster() {
    let cluster = RedisCluster::start_behind_proxies();
    let rl = RateLimiter::builder()
        .window(Duration::from_secs(60))
        .redis_cluster(cluster.proxy_urls())
        .prefix("lostc")
        .redis_deadline(Duration::from_secs(2))
        .sweeper(false)
        .connect()
        .await
        .expect("connect");
    lose_one_reply(&rl, |key| {
        let redis_key = format!("lostc:a:{{{key}}}");
        &cluster.proxies[cluster.node_of(&redis_key)]
    })
    .await;
}
