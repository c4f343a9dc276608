//! Real `redis-server` processes for the Redis tests: started on free loopback ports, killed,
//! paused and restarted by the tests. Never a shared 6379.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SERVER: &str = "redis-server";
const CLI: &str = "redis-cli";

pub(crate) fn binary(name: &str) -> String {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{name}` not found: the Redis tests need a local Redis 6.2+ server. Install it with \
         `apt-get install -y redis-server` (Debian/Ubuntu) and re-run."
    );
    name.to_string()
}

/// A free loopback port (and, for cluster nodes, its bus port + 10000 too).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if port > 55_000 {
            continue;
        }
        if !with_bus || TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "eyelet-redis-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// One `redis-server` process owned by a test; killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port(extra.contains(&"--cluster-enabled"));
        let mut s = RedisServer {
            port,
            dir: scratch_dir(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = binary(SERVER);
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                if let Ok(mut c) = self.try_conn() {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let c = redis::Client::open(self.url())?;
        c.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A synchronous admin connection.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("admin connection")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty dataset).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} failed");
    }

    /// SIGSTOP: the process stops answering but keeps its sockets.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A paused server must be resumed for SIGKILL to reap promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local 3-master Redis Cluster (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// With [`start_behind_proxies`](Self::start_behind_proxies): one proxy per node, whose
    /// port the node announces, so clients reach the nodes only through them.
    pub proxies: Vec<super::proxy::Proxy>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_nodes(false)
    }

    /// A cluster whose nodes announce a proxy's port ([`super::proxy::Proxy`]).
    pub fn start_behind_proxies() -> Self {
        Self::start_nodes(true)
    }

    fn start_nodes(proxied: bool) -> Self {
        let mut proxies = Vec::new();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let mut args = vec![
                    "--cluster-enabled".to_string(),
                    "yes".into(),
                    "--cluster-node-timeout".into(),
                    "5000".into(),
                ];
                let proxy_port = proxied.then(|| free_port(false));
                if let Some(p) = proxy_port {
                    args.extend([
                        "--cluster-announce-ip".to_string(),
                        "127.0.0.1".into(),
                        "--cluster-announce-port".into(),
                        p.to_string(),
                    ]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let node = RedisServer::start_with(&args);
                if let Some(p) = proxy_port {
                    proxies.push(super::proxy::Proxy::start_on(p, node.port));
                }
                node
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(binary(CLI))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes, proxies };
        c.wait_ok();
        c
    }

    /// Index of the node serving `key`'s hash slot.
    pub fn node_of(&self, key: &str) -> usize {
        let mut admin = self.nodes[0].conn();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut admin)
            .expect("CLUSTER KEYSLOT");
        let ranges: Vec<(i64, i64, Vec<redis::Value>)> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut admin)
            .expect("CLUSTER SLOTS");
        for (lo, hi, master) in ranges {
            if (lo..=hi).contains(&slot) {
                let port = match master.get(1) {
                    Some(redis::Value::Int(p)) => *p as u16,
                    other => panic!("CLUSTER SLOTS port: {other:?}"),
                };
                return self
                    .nodes
                    .iter()
                    .zip(
                        self.proxies
                            .iter()
                            .map(|p| p.port)
                            .chain(std::iter::repeat(0)),
                    )
                    .position(|(n, pp)| n.port == port || pp == port)
                    .expect("a node of this cluster");
            }
        }
        panic!("slot {slot} unassigned")
    }

    /// Seed URLs through the proxies.
    pub fn proxy_urls(&self) -> Vec<String> {
        self.proxies.iter().map(super::proxy::Proxy::url).collect()
    }

    fn wait_ok(&self) {
        let start = Instant::now();
        'outer: while start.elapsed() < Duration::from_secs(30) {
            for n in &self.nodes {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut n.conn())
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'outer;
                }
            }
            return;
        }
        panic!("cluster did not reach cluster_state:ok");
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// All keys on one server (SCAN, never KEYS).
pub fn scan_all(conn: &mut redis::Connection, pattern: &str) -> Vec<Vec<u8>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .expect("SCAN");
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}
