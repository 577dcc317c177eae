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
//!
//! PostgreSQL reference: "Messaging Overview" (protocol-overview) and
//! "Message Formats" (protocol-message-formats).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use pgrelay_wire::{Frame, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
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
    socket: Socket,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: FrameDecoder,
    /// `host:port` or socket path, for messages.
    target: String,
    /// The last read took everything the socket had (it returned less than
    /// the free space offered). Never set over TLS, where one read returns
    /// at most one record whatever is queued.
    drained: bool,
}

impl Connection {
    pub(crate) fn new(socket: Socket, target: String) -> Self {
        Connection {
            socket,
            rbuf: BytesMut::with_capacity(READ_BLOCK),
            wbuf: BytesMut::with_capacity(1024),
            decoder: FrameDecoder::new(),
            target,
            drained: false,
        }
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Whether the last read emptied the socket (see `drained`).
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.socket, Socket::Tls(_))
    }

    /// The next complete frame already buffered, without I/O.
    pub(crate) fn try_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        self.decoder
            .decode(&mut self.rbuf)
            .map_err(|e| SourceError::protocol(&self.target, e.to_string()))
    }

    /// One read from the socket into the receive buffer. Cancel-safe.
    pub(crate) async fn fill(&mut self) -> Result<(), SourceError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE
            && !self.rbuf.try_reclaim(READ_RESERVE)
        {
            // Frames handed out still share the block (or a frame is larger
            // than it): carry the partial frame over to a new block instead
            // of `reserve`, which doubles a block it owns alone.
            let mut fresh = BytesMut::with_capacity(READ_BLOCK.max(self.rbuf.len() + READ_RESERVE));
            fresh.extend_from_slice(&self.rbuf);
            self.rbuf = fresh;
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let tls = self.is_tls();
        match self.socket.read_buf(&mut self.rbuf).await {
            Ok(n) if n > 0 => {
                self.drained = !tls && n < spare;
                Ok(())
            }
            Ok(0) => Err(SourceError::io(
                format!("reading from {}", self.target),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ),
            )),
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

    /// Received bytes not yet split into frames.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.rbuf
    }

    pub(crate) fn has_pending_writes(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes the whole send buffer. Cancel-safe: what was not written
    /// stays buffered.
    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        while !self.wbuf.is_empty() {
            match self.socket.write_buf(&mut self.wbuf).await {
                Ok(0) => {
                    return Err(SourceError::io(
                        format!("writing to {}", self.target),
                        io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(SourceError::io(format!("writing to {}", self.target), e)),
            }
        }
        self.socket
            .flush()
            .await
            .map_err(|e| SourceError::io(format!("writing to {}", self.target), e))
    }

    /// Best-effort orderly close (TLS close_notify / FIN).
    pub(crate) async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.socket.shutdown().await;
    }
}
