//! A TCP proxy in front of a `redis-server`, for faults a real server cannot be asked to make:
//! a reply lost after the server executed the request (the connection dies on its way back).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does to replies.
#[derive(Default)]
struct Control {
    /// Drop the next reply (server → client chunk) that starts with this prefix, and close
    /// that connection.
    lose_reply: Mutex<Option<Vec<u8>>>,
    /// Replies lost so far.
    lost: AtomicUsize,
    stop: AtomicBool,
}

/// A proxy listening on a free loopback port, forwarding to `127.0.0.1:upstream`.
pub struct Proxy {
    pub port: u16,
    control: Arc<Control>,
}

impl Proxy {
    /// Starts a proxy on a free port.
    pub fn start(upstream: u16) -> Self {
        Self::start_on(super::redis_server::free_port(false), upstream)
    }

    /// Starts a proxy on `port` (for cluster nodes that announce the proxy's port).
    pub fn start_on(port: u16, upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy port");
        let control = Arc::new(Control::default());
        let c = control.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if c.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c1, s1) = (client.try_clone(), server.try_clone());
                let (Ok(c1), Ok(s1)) = (c1, s1) else { continue };
                thread::spawn(move || pump(c1, s1, None));
                let c = c.clone();
                thread::spawn(move || pump(server, client, Some(c)));
            }
        });
        Proxy { port, control }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The next reply starting with `prefix` is swallowed and its connection closed, as if
    /// the connection died after the server executed the request.
    pub fn lose_next_reply(&self, prefix: &[u8]) {
        *self.control.lose_reply.lock().expect("control") = Some(prefix.to_vec());
    }

    /// Replies lost so far.
    pub fn lost(&self) -> usize {
        self.control.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        // wake the accept loop
        let _ = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(100),
        );
    }
}

/// Copies `from` to `to`; with a control, may lose a reply and close both ends.
fn pump(mut from: TcpStream, mut to: TcpStream, control: Option<Arc<Control>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &control {
            let mut lose = c.lose_reply.lock().expect("control");
            if lose.as_deref().is_some_and(|p| buf[..n].starts_with(p)) {
                *lose = None;
                c.lost.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
