//! The CopyBoth stream of a logical replication connection.
//!
//! Job: hand the consumer every XLogData (one pgoutput message each) and
//! keep the walsender informed of the consumer's progress with Standby
//! Status Updates, so the slot's `confirmed_flush_lsn` advances and the
//! server does not time us out.
//!
//! Invariants:
//! * The LSNs reported never go backwards: `flush` is the highest of the
//!   consumer's [`LogicalStream::set_flushed`] values (and of keepalive
//!   positions confirmed while idle, see below), `write` is at least
//!   `flush` and covers every XLogData handed out, `apply` equals `flush`.
//!   Only `flush` moves the slot; it therefore only covers what the
//!   consumer says is durable.
//! * Status updates are sent: at once when a keepalive asks for a reply;
//!   when `flush` changed, at most every `min_interval` (100 ms by
//!   default); and at least every `status_interval` (`wal_sender_timeout /
//!   3`, or 10 s when the timeout is disabled) even if nothing changed.
//!   The timer runs inside [`LogicalStream::next`] (a `select!` with the
//!   socket read), so a consumer waiting in `next()` on a silent server
//!   still sends them; a consumer must keep calling `next()` (or call
//!   [`LogicalStream::shutdown`]): nothing is sent while it does not.
//! * Idle confirmation (on by default, [`FeedbackSettings`]): when the
//!   consumer has flushed everything it was given (`flush >=` the highest
//!   XLogData `wal_start` handed out), a keepalive's `wal_end` is taken as
//!   flushed, like pg_recvlogical does, so a quiet database, or one that
//!   only writes tables outside the publications, does not keep WAL behind
//!   the slot. This is safe because the walsender only reports a position
//!   once every transaction committed before it has been sent; a
//!   transaction still being sent has its commit at or after that position
//!   and is sent again after a reconnect.
//! * Reads are large and buffered ([`crate::connection`]); on plain TCP
//!   and Unix sockets a reader thread does them; over TCP it pauses
//!   briefly when it keeps up, so a fast consumer does not cost the
//!   walsender a wake-up per message. Every frame already buffered is
//!   processed before the socket is read again; XLogData payloads are
//!   slices of the receive buffer.
//! * `next()` is cancel-safe: if its future is dropped, no message is lost
//!   (a message is only removed from the buffer in the same poll that
//!   returns it) and unsent status bytes are sent by the next call.
//!   `shutdown()` is not: dropping it leaves the connection half-closed;
//!   drop the stream then.
//! * An ErrorResponse becomes [`SourceError::Server`] (transient per
//!   SQLSTATE); a lost connection a transient [`SourceError::Io`]; after an
//!   error the stream only returns [`SourceError::Closed`].
//!
//! PostgreSQL reference: "Streaming Replication Protocol"
//! (protocol-replication: START_REPLICATION, XLogData, Primary keepalive
//! message, Standby status update) and "COPY Operations" in "Message Flow"
//! (protocol-flow).

use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use pgrelay_types::{Lsn, PgTimestamp};
use pgrelay_wire::{
    copy_data, copy_done, Frame, ReplicationMessage, StandbyStatusUpdate, XLogData,
};
use postgres_protocol::message::frontend;
use tokio::time::Instant;

use crate::client::ReplicationClient;
use crate::connect::{log_notice, parse_error, parse_parameter};
use crate::error::SourceError;

/// How the stream reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackSettings {
    /// Longest time between two status updates. `None`: a third of the
    /// server's `wal_sender_timeout` (10 s if it is 0).
    pub status_interval: Option<Duration>,
    /// Shortest time between two status updates sent because the flushed
    /// position changed.
    pub min_interval: Duration,
    /// Confirm keepalive positions while the consumer is caught up (see the
    /// module docs).
    pub confirm_idle_keepalives: bool,
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        FeedbackSettings {
            status_interval: None,
            min_interval: Duration::from_millis(100),
            confirm_idle_keepalives: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The server ended COPY (CopyDone or CommandComplete); waiting for
    /// ReadyForQuery.
    ServerDone,
    Ended,
    Failed,
}

/// A running logical replication stream. See the module docs for the
/// feedback rules.
pub struct LogicalStream {
    client: ReplicationClient,
    slot: String,
    state: State,
    copy_done_sent: bool,
    /// Highest XLogData `wal_start` handed out.
    received: Lsn,
    /// Highest position the consumer (or an idle keepalive) confirmed.
    flushed: Lsn,
    /// Highest WAL end the server reported.
    server_wal_end: Lsn,
    last_sent_flush: Lsn,
    last_sent_at: Instant,
    reply_requested: bool,
    status_interval: Duration,
    min_interval: Duration,
    confirm_idle_keepalives: bool,
}

impl std::fmt::Debug for LogicalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalStream")
            .field("slot", &self.slot)
            .field("state", &self.state)
            .field("received", &self.received)
            .field("flushed", &self.flushed)
            .field("server_wal_end", &self.server_wal_end)
            .finish_non_exhaustive()
    }
}

impl LogicalStream {
    pub(crate) fn new(
        client: ReplicationClient,
        slot: String,
        start: Lsn,
        status_interval: Duration,
        feedback: FeedbackSettings,
    ) -> Self {
        LogicalStream {
            client,
            slot,
            state: State::Streaming,
            copy_done_sent: false,
            received: start,
            flushed: start,
            server_wal_end: Lsn::INVALID,
            last_sent_flush: start,
            last_sent_at: Instant::now(),
            reply_requested: false,
            status_interval: status_interval.max(Duration::from_millis(10)),
            min_interval: feedback.min_interval,
            confirm_idle_keepalives: feedback.confirm_idle_keepalives,
        }
    }

    /// The slot being streamed.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The client's server major version.
    pub fn server_major(&self) -> u32 {
        self.client.server_major()
    }

    /// Highest `wal_start` of the XLogData handed out so far.
    pub fn received_lsn(&self) -> Lsn {
        self.received
    }

    /// The flush position that is (or will next be) reported.
    pub fn flushed_lsn(&self) -> Lsn {
        self.flushed
    }

    /// The server's latest WAL end (from XLogData and keepalives), for lag.
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// Records that everything up to `lsn` is durably processed (for
    /// pgoutput: the `end_lsn` of the last applied commit). Lower values
    /// than before are ignored. Reported by the next status update, sent
    /// from `next()` or `shutdown()`.
    pub fn set_flushed(&mut self, lsn: Lsn) {
        if lsn > self.flushed {
            tracing::trace!(slot = %self.slot, lsn = %lsn, "consumer flushed");
            self.flushed = lsn;
        }
    }

    fn closed(&self, state: &'static str) -> SourceError {
        SourceError::Closed {
            target: self.client.target().to_string(),
            state,
        }
    }

    /// Whether a complete XLogData message is already buffered, so that
    /// [`LogicalStream::next`] returns it without reading the socket. A
    /// consumer batching its own wake-ups (e.g. notifying other tasks once
    /// per read instead of once per message) flushes them when this is
    /// false, before `next` may wait.
    pub fn has_buffered_data(&mut self) -> bool {
        self.has_buffered_message()
    }

    fn has_buffered_message(&mut self) -> bool {
        self.state == State::Streaming && self.client.conn_mut().has_buffered_xlogdata()
    }

    /// The next XLogData, or `None` once the stream ended cleanly (after
    /// the server ended COPY, e.g. because it is shutting down: reconnect
    /// to continue). Sends status updates as described in the module docs.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<XLogData>, SourceError> {
        match self.state {
            State::Ended => return Ok(None),
            State::Failed => return Err(self.closed("failed")),
            State::Streaming | State::ServerDone => {}
        }
        let result = self.next_inner().await;
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Option<XLogData>, SourceError> {
        loop {
            while let Some(frame) = self.client.conn_mut().try_frame()? {
                match frame.tag {
                    b'd' => {
                        if self.state != State::Streaming {
                            continue;
                        }
                        let msg = ReplicationMessage::decode(&frame.body).map_err(|e| {
                            SourceError::protocol(self.client.conn_mut().target(), e.to_string())
                        })?;
                        match msg {
                            ReplicationMessage::XLogData(x) => {
                                if x.wal_start > self.received {
                                    self.received = x.wal_start;
                                }
                                if x.wal_end > self.server_wal_end {
                                    self.server_wal_end = x.wal_end;
                                }
                                return Ok(Some(x));
                            }
                            ReplicationMessage::PrimaryKeepalive(k) => {
                                if k.wal_end > self.server_wal_end {
                                    self.server_wal_end = k.wal_end;
                                }
                                if self.confirm_idle_keepalives
                                    && self.flushed >= self.received
                                    && k.wal_end > self.flushed
                                {
                                    tracing::trace!(slot = %self.slot, lsn = %k.wal_end, "idle: confirming keepalive position");
                                    self.flushed = k.wal_end;
                                }
                                if k.reply_requested {
                                    self.reply_requested = true;
                                }
                            }
                        }
                    }
                    b'c' | b'C' => {
                        if self.state == State::Streaming {
                            tracing::info!(slot = %self.slot, "the server ended the replication stream");
                        }
                        self.state = State::ServerDone;
                        if !self.copy_done_sent {
                            copy_done(self.client.conn_mut().wbuf());
                            self.copy_done_sent = true;
                        }
                    }
                    b'Z' => {
                        self.client.mark_ready();
                        self.state = State::Ended;
                        return Ok(None);
                    }
                    _ => self.other_frame(&frame, "during replication")?,
                }
            }
            let now = Instant::now();
            if self.state == State::Streaming && self.status_due(now) {
                self.queue_status(now);
            }
            if self.client.conn_mut().has_pending_writes() {
                self.client.conn_mut().flush().await?;
            }
            let deadline = self.next_deadline();
            let server_done = self.state == State::ServerDone;
            let read = {
                let conn = self.client.conn_mut();
                tokio::select! {
                    read = conn.fill() => Some(read),
                    _ = tokio::time::sleep_until(deadline) => None,
                }
            };
            match read {
                None | Some(Ok(())) => {}
                // The walsender may exit right after ending COPY.
                Some(Err(SourceError::Io { .. })) if server_done => {
                    self.state = State::Ended;
                    return Ok(None);
                }
                Some(Err(e)) => return Err(e),
            }
        }
    }

    fn status_due(&self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.last_sent_at);
        self.reply_requested
            || since >= self.status_interval
            || (self.flushed != self.last_sent_flush && since >= self.min_interval)
    }

    fn next_deadline(&self) -> Instant {
        if self.state != State::Streaming {
            return self.last_sent_at + Duration::from_secs(3600);
        }
        if self.flushed != self.last_sent_flush {
            self.last_sent_at + self.min_interval.min(self.status_interval)
        } else {
            self.last_sent_at + self.status_interval
        }
    }

    fn queue_status(&mut self, now: Instant) {
        let write = self.received.max(self.flushed);
        let update = StandbyStatusUpdate {
            write,
            flush: self.flushed,
            apply: self.flushed,
            client_time: PgTimestamp::from_system_time(SystemTime::now())
                .unwrap_or(PgTimestamp::POSTGRES_EPOCH),
            reply_requested: false,
        };
        let mut body = BytesMut::with_capacity(StandbyStatusUpdate::LEN);
        update.encode(&mut body);
        // 34 bytes always fit in a CopyData.
        let _ = copy_data(&body, self.client.conn_mut().wbuf());
        tracing::debug!(
            slot = %self.slot,
            write = %write,
            lsn = %self.flushed,
            reply = self.reply_requested,
            "sending standby status update"
        );
        self.last_sent_flush = self.flushed;
        self.last_sent_at = now;
        self.reply_requested = false;
    }

    /// Ends streaming like a clean pg_recvlogical exit: a final status
    /// update with the flushed position, CopyDone, then every message up
    /// to the server's ReadyForQuery is read (XLogData still in flight is
    /// discarded; it is sent again next time because it was never
    /// confirmed). Returns the client, usable for more commands. May take
    /// as long as the server needs to finish the transaction it is sending;
    /// wrap it in a timeout if that matters (dropping it closes the
    /// connection, which loses nothing but the unsent status update).
    pub async fn shutdown(mut self) -> Result<ReplicationClient, SourceError> {
        match self.state {
            State::Failed => return Err(self.closed("failed")),
            State::Ended => return Ok(self.client),
            State::Streaming | State::ServerDone => {}
        }
        if self.state == State::Streaming {
            self.queue_status(Instant::now());
        }
        if !self.copy_done_sent {
            copy_done(self.client.conn_mut().wbuf());
            self.copy_done_sent = true;
        }
        self.client.conn_mut().flush().await?;
        tracing::info!(slot = %self.slot, lsn = %self.flushed, "stopping replication");
        loop {
            let frame = match self.client.conn_mut().read_frame().await {
                Ok(f) => f,
                Err(e) => return Err(e),
            };
            match frame.tag {
                b'd' | b'c' | b'C' => {}
                b'Z' => {
                    self.client.mark_ready();
                    return Ok(self.client);
                }
                _ => self.other_frame(&frame, "while stopping replication")?,
            }
        }
    }

    /// Frames that may arrive at any point of the COPY exchange: an error
    /// ends it, notices are logged, parameter changes recorded; anything
    /// else is a protocol violation (`during` says where we were).
    fn other_frame(&mut self, frame: &Frame, during: &str) -> Result<(), SourceError> {
        let target = self.client.conn_mut().target().to_owned();
        match frame.tag {
            b'E' => Err(SourceError::from_response(parse_error(
                &target,
                &frame.body,
            )?)),
            b'N' => {
                log_notice(&target, &frame.body);
                Ok(())
            }
            b'S' => {
                let (k, v) = parse_parameter(&target, &frame.body)?;
                self.client.set_parameter(k, v);
                Ok(())
            }
            other => Err(SourceError::protocol(
                &target,
                format!("unexpected message {:?} {during}", char::from(other)),
            )),
        }
    }

    /// Closes the connection without the CopyDone exchange (the server
    /// keeps the last reported position). Prefer [`LogicalStream::shutdown`].
    pub async fn abort(mut self) {
        frontend::terminate(self.client.conn_mut().wbuf());
        let _ = self.client.conn_mut().flush().await;
    }
}
