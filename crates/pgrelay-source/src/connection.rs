//! Framed, buffered I/O on one server connection (TCP, Unix socket or TLS).
//!
//! Job: the bottom layer, as in mini-redis' `Connection`: read backend
//! messages with pgrelay-wire's [`FrameDecoder`] out of a large receive
//! buffer, and write whatever frontend messages the layers above appended to
//! the send buffer.
//!
//! Invariants:
//! * Reads are large: the receive buffer always has at least
//!   [`READ_RESERVE`] bytes free before a read, and every complete frame in
//!   it is handed out before the socket is read again. Frames are
//!   `Bytes` slices of the receive buffer (no copies).
//! * Receive blocks have one size ([`READ_BLOCK`], more only for a frame
//!   larger than that). A frame kept for long (a change waiting in a
//!   target's backlog) keeps its whole block alive; blocks that never grow
//!   in place keep that cost bounded and let the allocator reuse freed
//!   blocks instead of fragmenting on ever-larger ones.
//! * Cancel safety: [`Connection::fill`], [`Connection::flush`] and
//!   [`Connection::read_frame`] may be dropped at any await point without
//!   losing or duplicating bytes: partially received frames stay in the
//!   receive buffer, unsent bytes stay in the send buffer and are sent by
//!   the next flush.
//! * End of stream and socket errors become transient [`SourceError::Io`].
//! * Once a replication stream starts on a plain TCP or Unix socket,
//!   [`Connection::detach_reader`] hands reading to a thread of its own
//!   (see [`ReaderThread`]); writes then go straight to the blocking
//!   socket. TLS connections stay on the async socket.
//!
//! PostgreSQL reference: "Messaging Overview" (protocol-overview) and
//! "Message Formats" (protocol-message-formats).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use pgrelay_wire::{Frame, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

use crate::error::SourceError;

/// Free space guaranteed in the receive buffer before each read.
pub(crate) const READ_RESERVE: usize = 128 * 1024;
/// Size of a fresh receive block.
const READ_BLOCK: usize = 2 * READ_RESERVE;

/// The transport under a connection.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Socket {
    /// The server's certificate, for channel binding.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Socket::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref()),
            _ => None,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection: socket, receive buffer and decoder, send buffer.
pub(crate) struct Connection {
    io: Io,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: FrameDecoder,
    /// `host:port` or socket path, for messages.
    target: String,
}

enum Io {
    /// Reads and writes on the async socket.
    Async(Socket),
    /// Reads by a [`ReaderThread`], writes on the blocking socket.
    Threaded(Threaded),
    /// Handing reading to a thread failed after the socket was taken: the
    /// connection is unusable.
    Broken,
}

impl Connection {
    pub(crate) fn new(socket: Socket, target: String) -> Self {
        Connection {
            io: Io::Async(socket),
            rbuf: BytesMut::with_capacity(READ_BLOCK),
            wbuf: BytesMut::with_capacity(1024),
            decoder: FrameDecoder::new(),
            target,
        }
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// The server's certificate, for channel binding.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        match &self.io {
            Io::Async(s) => s.peer_certificate(),
            Io::Threaded(_) | Io::Broken => None,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.io, Io::Async(Socket::Tls(_)))
    }

    /// Hands reading to a thread of its own, for the rest of the
    /// connection's life. A no-op over TLS (the session state cannot be
    /// split between two threads) or when already done.
    ///
    /// Why: a task blocked in epoll on the socket is woken for every
    /// message the walsender sends (it flushes after each one), and on
    /// loopback that wake-up runs on the walsender's own CPU time. The
    /// thread reads with plain blocking reads and, over TCP, sleeps between
    /// reads without being registered on the socket (see [`Pacing`]), so
    /// the walsender's sends wake nobody and the next read takes many
    /// messages at once. An async task cannot do that: tokio keeps the
    /// socket registered (edge-triggered) while the task sleeps. Measured:
    /// `pgrelay tail` drained 200k single-row transactions over TCP in
    /// 1.0–2.6 s (~600 reads) instead of 3.9–4.6 s (~300k reads and as many
    /// epoll wake-ups) on the async socket.
    pub(crate) fn detach_reader(&mut self) -> Result<(), SourceError> {
        // `Broken` stays only if turning the socket into a blocking one
        // fails.
        let target = self.target.clone();
        let ctx = |e| SourceError::io(format!("preparing to read from {target}"), e);
        let std_socket = match std::mem::replace(&mut self.io, Io::Broken) {
            Io::Async(Socket::Tcp(s)) => StdSocket::Tcp(s.into_std().map_err(ctx)?),
            Io::Async(Socket::Unix(s)) => StdSocket::Unix(s.into_std().map_err(ctx)?),
            other => {
                self.io = other;
                return Ok(());
            }
        };
        std_socket.set_nonblocking(false).map_err(ctx)?;
        // A server that stops reading must not hang a status update forever.
        std_socket
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(ctx)?;
        let pacing = match &std_socket {
            StdSocket::Unix(_) => Pacing::Eager,
            StdSocket::Tcp(tcp) => Pacing::for_tcp(tcp),
        };
        tracing::debug!(target = %self.target, ?pacing, "reading the replication stream on a thread");
        let reader = std_socket.try_clone().map_err(ctx)?;
        // Complete frames already received are handed out first; a partial
        // one goes to the thread, which completes it.
        let mut ready = Vec::new();
        while let Some(frame) = self
            .decoder
            .decode(&mut self.rbuf)
            .map_err(|e| SourceError::protocol(&self.target, e.to_string()))?
        {
            ready.push(frame);
        }
        let leftover = std::mem::take(&mut self.rbuf);
        let decoder = std::mem::take(&mut self.decoder);
        let (tx, rx) = mpsc::channel(READER_QUEUE);
        let thread = ReaderThread {
            socket: reader,
            rbuf: leftover,
            scratch: vec![0; READ_RESERVE].into_boxed_slice(),
            decoder,
            pacer: Pacer::new(pacing),
            tx,
        };
        std::thread::Builder::new()
            .name("pgrelay-wal-reader".into())
            .spawn(move || thread.run())
            .map_err(ctx)?;
        self.io = Io::Threaded(Threaded {
            socket: std_socket,
            rx,
            ready: ready.into_iter(),
            failed: None,
        });
        Ok(())
    }

    /// The next complete frame already buffered, without I/O.
    pub(crate) fn try_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        match &mut self.io {
            Io::Async(_) => self
                .decoder
                .decode(&mut self.rbuf)
                .map_err(|e| SourceError::protocol(&self.target, e.to_string())),
            Io::Threaded(t) => match t.ready.next() {
                Some(frame) => Ok(Some(frame)),
                None => match t.failed.take() {
                    Some(e) => Err(e.into_source_error(&self.target)),
                    None => Ok(None),
                },
            },
            Io::Broken => Err(broken(&self.target, "reading from")),
        }
    }

    /// Whether a complete XLogData (CopyData starting with `w`) is the next
    /// buffered frame.
    pub(crate) fn has_buffered_xlogdata(&self) -> bool {
        match &self.io {
            Io::Async(_) => {
                let b = &self.rbuf;
                // CopyData: 'd', i32 length (including itself), then 'w'.
                match b.get(..6) {
                    Some(&[b'd', l0, l1, l2, l3, b'w']) => {
                        usize::try_from(i32::from_be_bytes([l0, l1, l2, l3]))
                            .is_ok_and(|len| b.len() > len)
                    }
                    _ => false,
                }
            }
            Io::Threaded(t) => t
                .ready
                .as_slice()
                .first()
                .is_some_and(|f| f.tag == b'd' && f.body.first() == Some(&b'w')),
            Io::Broken => false,
        }
    }

    /// One read from the socket (or one batch from the reader thread) into
    /// the receive buffer. Cancel-safe.
    pub(crate) async fn fill(&mut self) -> Result<(), SourceError> {
        let socket = match &mut self.io {
            Io::Async(socket) => socket,
            Io::Threaded(t) => {
                if t.failed.is_some() {
                    return Ok(());
                }
                match t.rx.recv().await {
                    Some(Ok(frames)) => t.ready = frames.into_iter(),
                    Some(Err(e)) => t.failed = Some(e),
                    None => t.failed = Some(ReadFailure::Io(io::ErrorKind::BrokenPipe.into())),
                }
                return Ok(());
            }
            Io::Broken => return Err(broken(&self.target, "reading from")),
        };
        if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE
            && !self.rbuf.try_reclaim(READ_RESERVE)
        {
            self.rbuf = fresh_block(&self.rbuf);
        }
        match socket.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(eof(&self.target)),
            Ok(_) => Ok(()),
            Err(e) => Err(SourceError::io(format!("reading from {}", self.target), e)),
        }
    }

    /// The next frame, reading as needed. Cancel-safe.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Where frontend messages are appended before [`Connection::flush`].
    pub(crate) fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    pub(crate) fn has_pending_writes(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes the whole send buffer. Cancel-safe: what was not written
    /// stays buffered. On a detached connection the write blocks (briefly:
    /// frontend messages during replication are a few dozen bytes, and the
    /// socket has a write timeout).
    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        let ctx = |e| SourceError::io(format!("writing to {}", self.target), e);
        let socket = match &mut self.io {
            Io::Async(socket) => socket,
            Io::Threaded(t) => {
                t.socket.write_all(&self.wbuf).map_err(ctx)?;
                self.wbuf.clear();
                return Ok(());
            }
            Io::Broken => return Err(broken(&self.target, "writing to")),
        };
        while !self.wbuf.is_empty() {
            match socket.write_buf(&mut self.wbuf).await {
                Ok(0) => return Err(ctx(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) => return Err(ctx(e)),
            }
        }
        socket.flush().await.map_err(ctx)
    }

    /// Best-effort orderly close (TLS close_notify / FIN).
    pub(crate) async fn close(mut self) {
        let _ = self.flush().await;
        match &mut self.io {
            Io::Async(socket) => {
                let _ = socket.shutdown().await;
            }
            // Dropping shuts the socket down.
            Io::Threaded(_) | Io::Broken => {}
        }
    }
}

fn broken(target: &str, doing: &str) -> SourceError {
    SourceError::io(
        format!("{doing} {target}"),
        io::Error::new(
            io::ErrorKind::NotConnected,
            "the connection was lost while starting its reader",
        ),
    )
}

fn eof(target: &str) -> SourceError {
    SourceError::io(
        format!("reading from {target}"),
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ),
    )
}

/// A new receive block holding `partial` (the bytes of a frame not yet
/// complete): used when frames handed out still share the current block
/// (or a frame is larger than it), instead of `reserve`, which doubles a
/// block it owns alone.
fn fresh_block(partial: &[u8]) -> BytesMut {
    let mut fresh = BytesMut::with_capacity(READ_BLOCK.max(partial.len() + READ_RESERVE));
    fresh.extend_from_slice(partial);
    fresh
}

/// Batches of frames queued between the reader thread and the connection.
/// Each is one read (at most [`READ_RESERVE`] bytes of new data, more only
/// to complete a large frame), so the queue holds a few MiB at most.
const READER_QUEUE: usize = 16;

/// How the reader thread spaces its reads. The walsender sends every
/// message with its own `send()`. While the receive window is open, each
/// one goes out as a TCP segment of its own and, on loopback, the whole
/// receive path (and the reader's wake-up) runs on the walsender's CPU
/// time; once the window is closed, its sends only append to its socket's
/// send queue, which then goes out in large segments when the reader makes
/// room. So over TCP the reader does not read as soon as data arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pacing {
    /// Read whenever data is there: Unix sockets. Their sender can queue no
    /// more than its send buffer counted with per-message overhead (~200
    /// small messages at the default 208 KiB), so a pause stalls the
    /// walsender instead of batching it (`tail` fell from 1.03x
    /// pg_recvlogical's speed to 0.27x with one).
    Eager,
    /// A server on another host: after a read that emptied the socket,
    /// with fewer than [`COALESCE_BELOW`] bytes since the last pause, sleep
    /// [`COALESCE_WAIT`]. The receive buffer keeps the kernel's autotuning,
    /// which a long-distance link needs for its bandwidth-delay product.
    Coalesce,
    /// A server on this host (loopback or an own address): the receive
    /// buffer is pinned to [`LOCAL_RECEIVE_BUFFER`], and after a read that
    /// took less than half of it (`half`, from the size the kernel
    /// granted) the reader sleeps [`WINDOW_WAIT`], long enough for a busy
    /// walsender to close the window. A read that took more means the
    /// walsender has more queued, so the next read follows at once.
    Window { half: usize },
}

impl Pacing {
    /// The pacing for a TCP connection; pins the receive buffer for
    /// [`Pacing::Window`]. Falls back to [`Pacing::Coalesce`] when the
    /// addresses or the buffer size cannot be read or set.
    fn for_tcp(tcp: &std::net::TcpStream) -> Pacing {
        let same_host = match (tcp.peer_addr(), tcp.local_addr()) {
            (Ok(peer), Ok(local)) => peer.ip().is_loopback() || peer.ip() == local.ip(),
            _ => false,
        };
        if !same_host {
            return Pacing::Coalesce;
        }
        let sock = socket2::SockRef::from(tcp);
        match sock
            .set_recv_buffer_size(LOCAL_RECEIVE_BUFFER)
            .and_then(|()| sock.recv_buffer_size())
        {
            // Linux reports twice the size asked for (its bookkeeping share).
            Ok(granted) if granted > 0 => Pacing::Window { half: granted / 2 },
            _ => Pacing::Coalesce,
        }
    }
}

/// The read-to-read state of a [`Pacing`].
#[derive(Debug)]
struct Pacer {
    pacing: Pacing,
    /// Bytes read since the last pause ([`Pacing::Coalesce`]).
    since_pause: usize,
}

impl Pacer {
    fn new(pacing: Pacing) -> Self {
        Pacer {
            pacing,
            since_pause: 0,
        }
    }

    /// How long to sleep after a read that returned `n` bytes into a
    /// buffer of `capacity`.
    fn after_read(&mut self, n: usize, capacity: usize) -> Option<Duration> {
        if n == 0 {
            return None;
        }
        match self.pacing {
            Pacing::Eager => None,
            Pacing::Coalesce => {
                self.since_pause += n;
                if n >= capacity {
                    // More is waiting.
                    return None;
                }
                let keeping_up = self.since_pause < COALESCE_BELOW;
                self.since_pause = 0;
                keeping_up.then_some(COALESCE_WAIT)
            }
            Pacing::Window { half } => (n < half).then_some(WINDOW_WAIT),
        }
    }
}

/// The receive buffer asked for when the server is on this host (Linux
/// grants twice this). Small enough that a busy walsender closes the window
/// within [`WINDOW_WAIT`]; large enough that tiny segments do not make the
/// kernel collapse the receive queue on the walsender's time. Measured with
/// `pgrelay tail` over loopback TCP (docs/bench.md, "Pacing reads on one
/// host"): 1M rows in 10k-row transactions took 1.9 s and 1.8 s of
/// walsender CPU (4.2–4.6 s and 4.1–4.6 s with autotuning and
/// [`Pacing::Coalesce`]); 200k single-row transactions 1.06 s either way.
/// Asking for 64 KiB (128 KiB granted) with a 3 ms pause served the first
/// as well but doubled the second: the window stayed open and queued
/// hundreds of tiny segments.
const LOCAL_RECEIVE_BUFFER: usize = 32 * 1024;
/// The pause of [`Pacing::Window`]; also the most latency it adds.
const WINDOW_WAIT: Duration = Duration::from_millis(3);

/// When a read emptied the socket and fewer bytes than this came since the
/// last pause, the reader keeps up with the walsender message by message
/// ...
const COALESCE_BELOW: usize = 256 * 1024;
/// ... and then sleeps this long before reading again ([`Pacing::Coalesce`]),
/// so the messages arriving meanwhile wake nobody and the next read takes
/// them all. Adds at most this much latency; never paid while data is
/// waiting (a read that fills the buffer never pauses: pausing then capped
/// a stream of 1 KB rows at ~26 MB/s, docs/bench.md). Short, because with
/// an autotuned receive buffer a longer pause does not close the window
/// but lets the walsender's queue fill: with 2 ms the pgbench drain's
/// walsender CPU went from 1.0 s to 2.2-2.6 s (`cargo bench --bench
/// stream_vs_native`, docs/bench.md).
const COALESCE_WAIT: Duration = Duration::from_micros(500);

/// How long a write on a detached connection may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the reader thread reports instead of frames.
enum ReadFailure {
    Io(io::Error),
    Protocol(String),
}

impl ReadFailure {
    fn into_source_error(self, target: &str) -> SourceError {
        match self {
            ReadFailure::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => eof(target),
            ReadFailure::Io(e) => SourceError::io(format!("reading from {target}"), e),
            ReadFailure::Protocol(message) => SourceError::protocol(target, message),
        }
    }
}

/// The connection's side of a detached reader.
struct Threaded {
    /// The blocking socket, for writes.
    socket: StdSocket,
    rx: mpsc::Receiver<Result<Vec<Frame>, ReadFailure>>,
    /// Frames of the last batch not handed out yet.
    ready: std::vec::IntoIter<Frame>,
    /// The thread's failure, reported once `ready` is empty.
    failed: Option<ReadFailure>,
}

impl Drop for Threaded {
    fn drop(&mut self) {
        // Wakes the thread out of a blocking read (it then exits); the
        // thread's own clone of the descriptor keeps the socket open until
        // then, so a plain close would not.
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// Reads frames off a blocking socket until it fails or the connection is
/// dropped. Frames are `Bytes` slices of its receive blocks, managed like
/// the async path's (see the module docs).
struct ReaderThread {
    socket: StdSocket,
    rbuf: BytesMut,
    /// Where a read lands before it is appended to `rbuf`: safe code cannot
    /// read into a block's uninitialised capacity, and copying what a read
    /// brought costs less than zeroing the whole free space every time.
    scratch: Box<[u8]>,
    decoder: FrameDecoder,
    pacer: Pacer,
    tx: mpsc::Sender<Result<Vec<Frame>, ReadFailure>>,
}

impl ReaderThread {
    fn run(mut self) {
        let failure = self.read_loop();
        // The connection may be gone already; nothing else to tell.
        let _ = self.tx.blocking_send(Err(failure));
    }

    fn read_loop(&mut self) -> ReadFailure {
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE
                && !self.rbuf.try_reclaim(READ_RESERVE)
            {
                self.rbuf = fresh_block(&self.rbuf);
            }
            let n = match self.socket.read(&mut self.scratch) {
                Ok(0) => return ReadFailure::Io(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return ReadFailure::Io(e),
            };
            // Fits: the block has READ_RESERVE bytes free (no reallocation).
            self.rbuf
                .extend_from_slice(self.scratch.get(..n).unwrap_or_default());
            let mut frames = Vec::new();
            loop {
                match self.decoder.decode(&mut self.rbuf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => {
                        if !frames.is_empty() && self.tx.blocking_send(Ok(frames)).is_err() {
                            return ReadFailure::Io(io::ErrorKind::BrokenPipe.into());
                        }
                        return ReadFailure::Protocol(e.to_string());
                    }
                }
            }
            if !frames.is_empty() && self.tx.blocking_send(Ok(frames)).is_err() {
                // The connection was dropped.
                return ReadFailure::Io(io::ErrorKind::BrokenPipe.into());
            }
            if let Some(wait) = self.pacer.after_read(n, self.scratch.len()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// A plain socket in blocking mode.
enum StdSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl StdSocket {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            StdSocket::Tcp(s) => s.set_nonblocking(on),
            StdSocket::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn set_write_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        match self {
            StdSocket::Tcp(s) => s.set_write_timeout(limit),
            StdSocket::Unix(s) => s.set_write_timeout(limit),
        }
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            StdSocket::Tcp(s) => StdSocket::Tcp(s.try_clone()?),
            StdSocket::Unix(s) => StdSocket::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            StdSocket::Tcp(s) => s.shutdown(how),
            StdSocket::Unix(s) => s.shutdown(how),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StdSocket::Tcp(s) => s.read(buf),
            StdSocket::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            StdSocket::Tcp(s) => s.write_all(buf),
            StdSocket::Unix(s) => s.write_all(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream as StdUnix;

    use super::*;

    /// A message: tag, length, body.
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn pair() -> (Connection, StdUnix) {
        let (ours, theirs) = StdUnix::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        let socket = UnixStream::from_std(ours).expect("tokio socket");
        (Connection::new(Socket::Unix(socket), "test".into()), theirs)
    }

    #[tokio::test]
    async fn detached_reader_keeps_frames_whole_across_reads_and_the_switch() {
        let (mut conn, mut peer) = pair();
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut wire = msg(b'W', b"\0\0\0");
        wire.extend(msg(b'd', b"wfirst"));
        wire.extend(msg(b'd', &big));
        wire.extend(msg(b'd', b"wlast"));
        wire.extend(msg(b'Z', b"I"));
        // Before the switch: the first message and part of the second
        // arrive on the async socket.
        let cut = 5 + 3 + 5 + 6 + 1000;
        peer.write_all(&wire[..cut]).expect("write");
        assert_eq!(conn.read_frame().await.expect("W").tag, b'W');
        conn.detach_reader().expect("detach");
        // The rest in odd pieces, including splits inside length fields.
        let writer = std::thread::spawn(move || {
            for piece in wire[cut..].chunks(7_777) {
                peer.write_all(piece).expect("write");
                std::thread::sleep(Duration::from_micros(200));
            }
            peer
        });
        let first = conn.read_frame().await.expect("first");
        assert_eq!((first.tag, &first.body[..]), (b'd', &b"wfirst"[..]));
        let second = conn.read_frame().await.expect("big");
        assert_eq!(second.body.len(), big.len());
        assert!(second.body[..] == big[..], "the large frame arrives intact");
        assert!(conn
            .read_frame()
            .await
            .expect("last")
            .body
            .ends_with(b"wlast"));
        assert_eq!(conn.read_frame().await.expect("Z").tag, b'Z');
        // Writes go to the blocking socket.
        let mut peer = writer.join().expect("writer");
        conn.wbuf().extend_from_slice(b"hello");
        conn.flush().await.expect("flush");
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut peer, &mut got).expect("read");
        assert_eq!(&got, b"hello");
        // The peer going away is a transient I/O error, reported again on
        // every later read.
        drop(peer);
        for _ in 0..2 {
            let err = conn.read_frame().await.expect_err("eof");
            assert!(matches!(err, SourceError::Io { .. }), "{err:?}");
            assert!(err.is_transient());
        }
    }

    #[test]
    fn pacer_rules() {
        let cap = READ_RESERVE;
        let mut eager = Pacer::new(Pacing::Eager);
        assert_eq!(eager.after_read(10, cap), None);

        // Coalesce: pauses only after a read that emptied the socket, and
        // only when the reads since the last pause were few.
        let mut co = Pacer::new(Pacing::Coalesce);
        assert_eq!(co.after_read(0, cap), None, "an interrupted read");
        assert_eq!(co.after_read(100, cap), Some(COALESCE_WAIT));
        assert_eq!(co.after_read(cap, cap), None, "a full read: more waits");
        assert_eq!(co.after_read(cap, cap), None);
        assert_eq!(
            co.after_read(10, cap),
            None,
            "256 KiB came since the last pause: a busy stream, no pause"
        );
        assert_eq!(co.after_read(10, cap), Some(COALESCE_WAIT), "counter reset");

        // Window: pauses after a read that took less than half the buffer.
        let mut win = Pacer::new(Pacing::Window { half: 32_768 });
        assert_eq!(win.after_read(32_767, cap), Some(WINDOW_WAIT));
        assert_eq!(win.after_read(32_768, cap), None);
        assert_eq!(win.after_read(65_000, cap), None);
        assert_eq!(win.after_read(0, cap), None);
    }

    #[test]
    fn tcp_pacing_pins_a_small_buffer_only_on_the_same_host() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tcp =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        match Pacing::for_tcp(&tcp) {
            Pacing::Window { half } => {
                // Linux grants twice the size asked for; half is that size.
                assert_eq!(half, LOCAL_RECEIVE_BUFFER, "granted {}", half * 2);
            }
            other => panic!("loopback should pace by window, got {other:?}"),
        }
    }

    /// The window pacing over real loopback TCP: a stream of many small
    /// messages (the kind that made a pinned buffer collapse segments)
    /// interleaved with large ones arrives whole and in order.
    #[tokio::test]
    async fn window_paced_reader_delivers_a_loopback_stream_intact() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("nonblocking");
        let socket = TcpStream::from_std(ours).expect("tokio socket");
        let mut conn = Connection::new(Socket::Tcp(socket), "test".into());
        conn.detach_reader().expect("detach");
        const COUNT: u32 = 50_000;
        let writer = std::thread::spawn(move || {
            for i in 0..COUNT {
                let mut body = i.to_be_bytes().to_vec();
                // Every 1000th message is 100 KB, larger than the buffer.
                let len = if i % 1000 == 999 {
                    100_000
                } else {
                    (i % 97) as usize
                };
                body.extend(std::iter::repeat_n(i as u8, len));
                peer.write_all(&msg(b'd', &body)).expect("write");
            }
            peer
        });
        for i in 0..COUNT {
            let frame = conn.read_frame().await.expect("frame");
            let (seq, rest) = frame.body.split_at(4);
            assert_eq!(seq, i.to_be_bytes(), "message {i} in order");
            let len = if i % 1000 == 999 {
                100_000
            } else {
                (i % 97) as usize
            };
            assert_eq!(rest.len(), len, "message {i} whole");
            assert!(rest.iter().all(|b| *b == i as u8), "message {i} intact");
        }
        let _peer = writer.join().expect("writer");
    }

    #[tokio::test]
    async fn detached_reader_reports_a_malformed_length_after_the_good_frames() {
        let (mut conn, mut peer) = pair();
        conn.detach_reader().expect("detach");
        let mut wire = msg(b'd', b"wok");
        // Length 3: shorter than the length field itself.
        wire.extend_from_slice(b"d\x00\x00\x00\x03");
        peer.write_all(&wire).expect("write");
        assert_eq!(&conn.read_frame().await.expect("good").body[..], b"wok");
        let err = conn.read_frame().await.expect_err("bad length");
        assert!(matches!(err, SourceError::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("at stream byte 8"), "{err}");
    }

    #[tokio::test]
    async fn dropping_a_detached_connection_closes_the_socket() {
        let (mut conn, mut peer) = pair();
        conn.detach_reader().expect("detach");
        drop(conn);
        let mut buf = [0u8; 1];
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = std::io::Read::read(&mut peer, &mut buf).expect("EOF, not a timeout");
        assert_eq!(n, 0);
    }
}
