//! The connection the batcher owns: one server (auto-reconnecting) or a Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisResult, Value};

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
                    let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(deadline)
                        .response_timeout(deadline)
                        .retries(2)
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
        // Fail early on a wrong URL or password rather than on the first decision.
        let pong = tokio::time::timeout(deadline, conn.query(&redis::cmd("PING")))
            .await
            .map_err(|_| RedisError::Timeout { deadline })?;
        pong.map_err(map)?;
        Ok(conn)
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
}
