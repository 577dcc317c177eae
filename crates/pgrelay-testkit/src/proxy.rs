//! A TCP fault proxy between a client and a server.
//!
//! Tests point a client at the proxy's port instead of the server's and then
//! break the path on purpose: cut every open connection at once (both sides
//! see a reset, like a firewall or NAT dropping state), refuse new
//! connections for a while, add latency to every forwarded chunk, or stall
//! (bytes are accepted but nothing is forwarded, like a hung peer whose
//! kernel still ACKs). The proxy runs on its own thread and runtime, so it
//! works from sync and async tests alike and keeps forwarding while a test
//! blocks.
//!
//! Invariant: bytes are forwarded in order and never altered; a fault only
//! delays, holds, or ends a connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct State {
    upstream: SocketAddr,
    /// Bumped by cut_all(); every connection ends when it changes.
    cut: watch::Sender<u64>,
    stalled: watch::Sender<bool>,
    refuse_until: Mutex<Option<Instant>>,
    latency: Mutex<Duration>,
    open: AtomicUsize,
    accepted: AtomicUsize,
}

/// A running proxy; stops (and drops its connections) on Drop.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let (cut, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(false);
        let state = Arc::new(State {
            upstream,
            cut,
            stalled,
            refuse_until: Mutex::new(None),
            latency: Mutex::new(Duration::ZERO),
            open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("proxy address");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    tokio::select! {
                        _ = accept_loop(listener, st.clone()) => {}
                        _ = rx => {}
                    }
                    // Ends every connection task still running.
                    st.cut.send_modify(|g| *g += 1);
                });
            })
            .expect("spawn the proxy thread");
        FaultProxy {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Resets every open connection now, in both directions.
    pub fn cut_all(&self) {
        self.state.cut.send_modify(|g| *g += 1);
    }

    /// New connections are reset as soon as they arrive, for `d`.
    pub fn refuse_for(&self, d: Duration) {
        *self
            .state
            .refuse_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
    }

    /// Every forwarded chunk waits `d` first (zero turns latency off).
    pub fn set_latency(&self, d: Duration) {
        *self.state.latency.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// Holds all traffic: reads stop being forwarded until [`FaultProxy::resume`].
    pub fn stall(&self) {
        self.state.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.state.stalled.send_replace(false);
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Connections forwarded since start (refused ones not counted).
    pub fn accepted_connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let refusing = state
            .refuse_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| Instant::now() < t);
        if refusing {
            reset(&client);
            continue;
        }
        let st = state.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(st.upstream).await else {
                reset(&client);
                return;
            };
            st.accepted.fetch_add(1, Ordering::SeqCst);
            st.open.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let mut cut = st.cut.subscribe();
            cut.mark_unchanged();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(
                pump(cr, sw, st.clone(), cut.clone()),
                pump(sr, cw, st.clone(), cut)
            );
            st.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

// A zero linger never blocks on drop (the deprecation is about non-zero
// timeouts): the kernel discards the socket and sends RST at once.
#[allow(deprecated)]
fn reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Forwards one direction until EOF, an error, or a cut. On a cut the
/// socket it reads from gets linger 0, so dropping it sends a RST, as a
/// dropped NAT entry would; a normal EOF closes gracefully.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    st: Arc<State>,
    mut cut: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut stalled = st.stalled.subscribe();
    let forward = async {
        loop {
            // While stalled, stop reading: the kernel keeps accepting bytes
            // until its buffers fill, and nothing reaches the other side.
            wait_unstalled(&mut stalled).await?;
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return None::<()>;
                }
                Ok(n) => n,
            };
            let delay = *st.latency.lock().unwrap_or_else(|e| e.into_inner());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            wait_unstalled(&mut stalled).await?;
            to.write_all(&buf[..n]).await.ok()?;
        }
    };
    let was_cut = tokio::select! {
        _ = forward => false,
        _ = cut.changed() => true,
    };
    if was_cut {
        reset(from.as_ref());
    }
}

async fn wait_unstalled(stalled: &mut watch::Receiver<bool>) -> Option<()> {
    while *stalled.borrow_and_update() {
        stalled.changed().await.ok()?;
    }
    Some(())
}
