//! The connection the batcher owns: one server (auto-reconnecting) or a Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{Cmd, RedisResult, Value};

use super::script::DECIDE_LUA;
use super::RedisError;

/// Where the limiter's Redis lives.
#[derive(Clone)]
pub(crate) enum Target {
    /// One server (or a proxy), by URL.
    Single(String),
    /// A Redis Cluster, by seed node URLs.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Target {
    /// Never prints URLs: they may carry credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Single(_) => f.write_str("Single(..)"),
            Target::Cluster(n) => write!(f, "Cluster({} seed nodes)", n.len()),
        }
    }
}

/// A cloneable multiplexed connection: concurrent commands share one socket per node and are
/// pipelined by the client.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects within `deadline`.
    pub(crate) async fn open(target: &Target, deadline: Duration) -> Result<Conn, RedisError> {
        let map = |e: redis::RedisError| RedisError::from_client(&e, deadline);
        let open = async {
            match target {
                Target::Single(url) => {
                    let client = redis::Client::open(url.as_str()).map_err(map)?;
                    // No retries inside the client: a call while the server is down fails at
                    // once with a connection error, and the next call tries again.
                    let config = ConnectionManagerConfig::new()
                        .set_number_of_retries(0)
                        .set_connection_timeout(Some(deadline))
                        .set_response_timeout(Some(deadline));
                    let m = ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(map)?;
                    Ok::<_, RedisError>(Conn::Single(m))
                }
                Target::Cluster(nodes) => {
                    // No retries inside the client either: it would re-send a script after a
                    // dropped connection or a timeout, when it may already have run (counting
                    // a decision twice). The batcher re-sends only what provably did not run
                    // (redirects, TRYAGAIN, ...), and follows MOVED/ASK itself.
                    let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(deadline)
                        .response_timeout(deadline)
                        .retries(0)
                        .build()
                        .map_err(map)?;
                    let c = client.get_async_connection().await.map_err(map)?;
                    Ok(Conn::Cluster(c))
                }
            }
        };
        let mut conn = tokio::time::timeout(deadline, open)
            .await
            .map_err(|_| RedisError::Timeout { deadline })??;
        // Fail early on a wrong URL or password rather than on the first decision, and load
        // the script (on every primary of a cluster), so that the first calls need no EVAL.
        let pong = tokio::time::timeout(deadline, conn.query(&redis::cmd("PING")))
            .await
            .map_err(|_| RedisError::Timeout { deadline })?;
        pong.map_err(map)?;
        let load = tokio::time::timeout(deadline, conn.load_script())
            .await
            .map_err(|_| RedisError::Timeout { deadline })?;
        load.map_err(map)?;
        Ok(conn)
    }

    /// `SCRIPT LOAD` of the decision script, on every primary of a cluster.
    async fn load_script(&mut self) -> RedisResult<Value> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(DECIDE_LUA);
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let all = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                c.route_command(cmd, all).await
            }
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    pub(crate) async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// `cmd` sent to the node a `MOVED` or `ASK` error named (`ASK` prefixes `ASKING`), on a
    /// cluster; on a single server, as [`query`](Self::query).
    pub(crate) async fn query_redirected(
        &mut self,
        cmd: &Cmd,
        redirect: &Redirect,
    ) -> RedisResult<Value> {
        let Conn::Cluster(c) = self else {
            return self.query(cmd).await;
        };
        let route = SingleNodeRoutingInfo::ByAddress {
            host: redirect.host.clone(),
            port: redirect.port,
        };
        if redirect.ask {
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING").add_command(cmd.clone());
            let mut replies = c.route_pipeline(pipe, 1, 1, route).await?;
            Ok(replies.pop().unwrap_or(Value::Nil))
        } else {
            c.route_command(cmd.clone(), RoutingInfo::SingleNode(route))
                .await
        }
    }
}

/// Where a cluster node said a slot is served (`MOVED`), or is being imported (`ASK`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) ask: bool,
}

impl Redirect {
    /// The redirect an error carries, if it is a `MOVED` or `ASK`.
    pub(crate) fn of(e: &redis::RedisError) -> Option<Redirect> {
        let ask = e.code() == Some("ASK");
        let (addr, _slot) = e.redirect_node()?;
        let (host, port) = addr.rsplit_once(':')?;
        Some(Redirect {
            host: host.to_string(),
            port: port.parse().ok()?,
            ask,
        })
    }
}
