//! The source reader: one logical replication connection, one decode, and
//! every committed transaction dispatched to every target's log.
//!
//! Invariants:
//! * Events reach the logs in source commit order; a transaction at or
//!   before the last one dispatched (resent after a reconnect) is not
//!   dispatched again.
//! * The slot is confirmed (standby status `flush`) only up to
//!   [`PipelineState::confirmable`], the lowest position every target
//!   made durable; keepalive positions reach the targets as `Position`
//!   events only while no transaction is half received, so confirming
//!   them never skips a transaction.
//! * Lost connections and server restarts are transient: reconnect with
//!   capped exponential backoff and resume after the last dispatched
//!   transaction. Half-received transactions are dropped with the
//!   connection and resent by the server.
//! * When the spill budget is full the reader stops reading (the server
//!   keeps the WAL) and says so in logs, metrics and `/health`.
//!
//! PostgreSQL docs: "Logical Streaming Replication Protocol"
//! (protocol-logical-replication), "Streaming Replication Protocol"
//! (protocol-replication).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgrelay_pgoutput::{
    Decoder, DecoderConfig, Message, ProtocolVersion, Reassembled, Reassembler,
    Streaming as WireStreaming,
};
use pgrelay_source::{
    max_proto_version, Config, FeedbackSettings, LogicalStream, PgOutputOptions, ReplicationClient,
    SourceError, Streaming,
};
use pgrelay_spill::{SpillDir, SpillError};
use pgrelay_types::{Change, Lsn};
use tokio::sync::{watch, Notify};

use crate::log::Event;
use crate::state::PipelineState;
use crate::target::TargetHandle;
use crate::StreamError;

/// Prefix of the non-transactional logical messages that mark a position.
pub const MARKER_PREFIX: &str = "pgrelay";

/// Changes per dispatched chunk.
const CHUNK_CHANGES: usize = 1000;
/// Bytes per dispatched chunk.
const CHUNK_BYTES: usize = 1 << 20;
/// How long the reader waits for a connected target to make room in its
/// log's memory before spilling its backlog to disk.
const SPILL_PATIENCE: Duration = Duration::from_secs(1);
/// Events dispatched before the targets are woken even though more
/// messages are already buffered (see [`SourceReader::dispatch`]).
const NOTIFY_EVERY: usize = 256;

/// The reader's settings.
pub struct SourceReader {
    /// Source connection.
    pub config: Config,
    /// Slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Shared state.
    pub state: Arc<PipelineState>,
    /// One per target.
    pub targets: Vec<TargetHandle>,
    /// Signalled when a target freed log space.
    pub space: Arc<Notify>,
    /// Where transactions being received spill.
    pub spill_dir: PathBuf,
    /// Memory for transactions being received.
    pub transaction_memory: usize,
    /// Backoff cap.
    pub max_retry_delay: Duration,
    /// Events pushed to the logs since the targets were last woken.
    pub unnotified: AtomicUsize,
    /// A streamed transaction is applied while it streams only once the
    /// reader dispatched a commit or position at or past this (the highest
    /// position any target applied): one that started streaming earlier
    /// may have committed at or before a target's progress, and that
    /// target would apply it a second time without knowing (its commit
    /// LSN arrives only at the end). Such transactions are buffered whole.
    pub eager_after: Lsn,
}

struct Cursor {
    /// Commit LSN of the last transaction dispatched.
    commit: Lsn,
    /// Its end LSN.
    end: Lsn,
    /// Last position event dispatched.
    position: Lsn,
}

impl SourceReader {
    /// Streams until `shutdown` turns true. Returns an error only for
    /// fatal problems (slot gone, publication missing, permission).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StreamError> {
        let mut cursor = Cursor {
            commit: Lsn::INVALID,
            end: Lsn::INVALID,
            position: Lsn::INVALID,
        };
        let mut delay = Duration::from_millis(200);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            match self.session(&mut cursor, &mut shutdown).await {
                Ok(()) => return Ok(()),
                Err(StreamError::Source(e)) if e.is_transient() => {
                    self.state.set_source_connected(false);
                    tracing::warn!(error = %e, retry_in = ?delay, "source connection lost; reconnecting");
                    metrics::counter!(
                        "pgrelay_source_reconnects_total",
                        &self.state.source_labels()
                    )
                    .increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    delay = (delay * 2).min(self.max_retry_delay);
                }
                Err(e) => {
                    self.state.set_source_connected(false);
                    return Err(e);
                }
            }
        }
    }

    async fn session(
        &self,
        cursor: &mut Cursor,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamError> {
        let client = tokio::select! {
            c = ReplicationClient::connect(&self.config) => c?,
            _ = shutdown.changed() => return Ok(()),
        };
        let major = client.server_major();
        let proto = max_proto_version(major);
        let mut options = PgOutputOptions::new([self.publication.clone()]);
        options.proto_version = Some(proto);
        // Non-transactional messages with prefix `pgrelay` are position
        // markers (`pgrelay verify` emits one so paused targets need not
        // wait for the next keepalive).
        options.messages = true;
        options.streaming = if proto >= 2 {
            Streaming::On
        } else {
            Streaming::Off
        };
        let feedback = FeedbackSettings {
            confirm_idle_keepalives: false,
            ..FeedbackSettings::default()
        };
        let mut stream = client
            .start_logical_replication(&self.slot, cursor.end, &options, feedback)
            .await?;
        self.state.set_source_connected(true);
        tracing::info!(slot = %self.slot, proto, from = %cursor.end, "streaming from the source");
        let decoder_config = DecoderConfig {
            proto_version: ProtocolVersion::try_from(proto).map_err(|_| {
                StreamError::Fatal(format!(
                    "pgoutput protocol {proto} is unknown to the decoder"
                ))
            })?,
            streaming: if proto >= 2 {
                WireStreaming::On
            } else {
                WireStreaming::Off
            },
        };
        let mut decoder = Decoder::new(decoder_config);
        let spill =
            SpillDir::open(&self.spill_dir, None).map_err(|e| StreamError::Fatal(e.to_string()))?;
        // The first streamed transaction in progress is handed out as it
        // arrives and applied while it streams (see `EagerChunk` and
        // `eager_after`).
        let mut reassembler = Reassembler::new(spill, self.transaction_memory);
        let mut eager = EagerChunk::default();
        let mut mid_group = false;
        let mut received_since_tick = false;
        let received_labels = self.state.source_labels();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let data = tokio::select! {
                biased;
                _ = shutdown.changed() => break Ok(()),
                _ = tick.tick() => {
                    self.notify_targets();
                    self.state.set_wal_end(stream.server_wal_end());
                    let stats = reassembler.stats();
                    let idle = !received_since_tick && !mid_group
                        && stats.open_streams == 0 && stats.pending_prepared == 0;
                    received_since_tick = false;
                    let wal_end = stream.server_wal_end();
                    if idle && wal_end > cursor.position && wal_end >= cursor.end {
                        cursor.position = wal_end;
                        if let Err(e) = self.dispatch(&Event::Position(wal_end), shutdown).await {
                            break Err(e);
                        }
                    }
                    stream.set_flushed(self.state.confirmable());
                    continue;
                }
                r = async {
                    // Wake the targets before waiting for the socket, not
                    // for every event: a wake-up per message (three per
                    // small transaction) costs more than the apply work.
                    // (Coalescing the walsender's small sends is the
                    // source client's reader thread's job.)
                    if !stream.has_buffered_data() {
                        self.notify_targets();
                    }
                    stream.next().await
                } => r,
            };
            let data = match data {
                Ok(Some(d)) => d,
                Ok(None) => {
                    break Err(StreamError::Source(SourceError::Closed {
                        target: "source".into(),
                        state: "failed",
                    }))
                }
                Err(e) => break Err(e.into()),
            };
            received_since_tick = true;
            metrics::counter!("pgrelay_received_bytes_total", &received_labels)
                .increment(data.data.len() as u64);
            let msg = match decoder.decode(&data.data) {
                Ok(m) => m,
                Err(e) => {
                    break Err(StreamError::Fatal(format!(
                        "cannot decode the pgoutput message at {}: {e}",
                        data.wal_start
                    )))
                }
            };
            match &msg {
                Message::Begin(_) | Message::BeginPrepare(_) | Message::StreamStart(_) => {
                    mid_group = true
                }
                Message::Commit(_)
                | Message::Prepare(_)
                | Message::StreamStop
                | Message::StreamCommit(_)
                | Message::StreamAbort(_)
                | Message::StreamPrepare(_)
                | Message::CommitPrepared(_)
                | Message::RollbackPrepared(_) => mid_group = false,
                _ => {}
            }
            reassembler.set_eager_streams(cursor.end.max(cursor.position) >= self.eager_after);
            let out = match reassembler.push(msg) {
                Ok(o) => o,
                Err(e) => break Err(StreamError::Fatal(e.to_string())),
            };
            let (eager_event, out) = match out {
                Some(Reassembled::StreamChange {
                    xid,
                    subxid,
                    change,
                }) => (eager.push(xid, subxid, change), None),
                Some(Reassembled::StreamAbort { xid, subxid }) => {
                    if let Some(e) = eager.take() {
                        if let Err(err) = self.dispatch(&e, shutdown).await {
                            break Err(err);
                        }
                    }
                    (Some(Event::StreamAbort { xid, subxid }), None)
                }
                Some(Reassembled::StreamCommit(info)) => {
                    if let Some(e) = eager.take() {
                        if let Err(err) = self.dispatch(&e, shutdown).await {
                            break Err(err);
                        }
                    }
                    let event = if info.commit_lsn <= cursor.commit && cursor.commit != Lsn::INVALID
                    {
                        // Resent after a reconnect although already
                        // dispatched: drop what was handed out again.
                        Event::StreamAbort {
                            xid: info.xid,
                            subxid: info.xid,
                        }
                    } else {
                        let confirm = match reassembler.flush_limit() {
                            Some(limit) => info.end_lsn.min(limit),
                            None => info.end_lsn,
                        };
                        self.state.note_dispatch();
                        cursor.commit = info.commit_lsn;
                        cursor.end = info.end_lsn;
                        Event::StreamCommit(Arc::new(info), confirm)
                    };
                    (Some(event), None)
                }
                // A stream block ended: hand out what it brought.
                None if !mid_group => (eager.take(), None),
                other => (None, other),
            };
            if let Some(event) = eager_event {
                let commit = matches!(event, Event::StreamCommit(..));
                if let Err(e) = self.dispatch(&event, shutdown).await {
                    break Err(e);
                }
                if commit {
                    self.state.set_wal_end(cursor.end);
                    stream.set_flushed(self.state.confirmable());
                }
                continue;
            }
            let txn = match out {
                Some(Reassembled::Transaction(txn)) => txn,
                Some(Reassembled::Message(m)) => {
                    let stats = reassembler.stats();
                    let marker = !m.transactional && m.prefix.as_str() == MARKER_PREFIX;
                    if marker
                        && !mid_group
                        && stats.open_streams == 0
                        && stats.pending_prepared == 0
                        && m.lsn > cursor.position
                    {
                        cursor.position = m.lsn;
                        if let Err(e) = self.dispatch(&Event::Position(m.lsn), shutdown).await {
                            break Err(e);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            if txn.info.commit_lsn <= cursor.commit && cursor.commit != Lsn::INVALID {
                // Resent after a reconnect: already in every log.
                continue;
            }
            let info = Arc::new(txn.info.clone());
            let confirm = match reassembler.flush_limit() {
                Some(limit) => info.end_lsn.min(limit),
                None => info.end_lsn,
            };
            self.state.note_dispatch();
            if let Err(e) = self.dispatch(&Event::Begin(info.clone()), shutdown).await {
                break Err(e);
            }
            let mut chunk: Vec<Change> = Vec::new();
            let mut chunk_bytes = 0;
            let mut failed = None;
            for change in txn {
                let change = match change {
                    Ok(c) => c,
                    Err(e) => {
                        failed = Some(StreamError::Fatal(e.to_string()));
                        break;
                    }
                };
                chunk_bytes += change.approx_size();
                chunk.push(change);
                if chunk.len() >= CHUNK_CHANGES || chunk_bytes >= CHUNK_BYTES {
                    let full = std::mem::take(&mut chunk);
                    chunk_bytes = 0;
                    if let Err(e) = self
                        .dispatch(&Event::Changes(Arc::new(full)), shutdown)
                        .await
                    {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            if !chunk.is_empty() {
                if let Err(e) = self
                    .dispatch(&Event::Changes(Arc::new(chunk)), shutdown)
                    .await
                {
                    break Err(e);
                }
            }
            if let Err(e) = self
                .dispatch(&Event::Commit(info.clone(), confirm), shutdown)
                .await
            {
                break Err(e);
            }
            cursor.commit = info.commit_lsn;
            cursor.end = info.end_lsn;
            self.state.set_wal_end(info.end_lsn);
            stream.set_flushed(self.state.confirmable());
        };
        match result {
            Ok(()) => {
                // Final feedback, then a clean CopyDone.
                stream.set_flushed(self.state.confirmable());
                shutdown_stream(stream).await;
                Ok(())
            }
            Err(e) => {
                stream.abort().await;
                // The server sends a transaction that was streaming again
                // from its start after the reconnect: targets drop what
                // they applied of it.
                if let Some(xid) = reassembler.eager_stream() {
                    let drop = Event::StreamAbort { xid, subxid: xid };
                    if let Err(e2) = self.dispatch(&drop, shutdown).await {
                        tracing::debug!(error = %e2, "could not hand out the abort of the open streamed transaction");
                    }
                }
                Err(e)
            }
        }
    }

    /// Wakes every target that may have unread events.
    fn notify_targets(&self) {
        if self.unnotified.swap(0, Ordering::Relaxed) == 0 {
            return;
        }
        for t in &self.targets {
            t.data.notify_one();
        }
    }

    /// Waits (at most [`SPILL_PATIENCE`]) while `t` is connected and its
    /// log has no memory left for `event`. A target that is merely behind
    /// frees memory at its next commit; spilling its backlog instead would
    /// make it slower still (every later event encoded, written, read and
    /// decoded until it catches up, which a busy source never lets it do),
    /// so a connected target paces the reader, and only a target that is
    /// down or stuck gets its backlog spilled. A single source transaction
    /// larger than the log's memory still spills (its events stay in
    /// memory until the target commits it), as soon as waiting cannot help.
    async fn wait_for_memory(
        &self,
        t: &TargetHandle,
        event: &Event,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamError> {
        let deadline = tokio::time::Instant::now() + SPILL_PATIENCE;
        loop {
            if !t.state.connected() || t.closed.load(Ordering::Acquire) {
                return Ok(());
            }
            let space = self.space.notified();
            tokio::pin!(space);
            // Registered before the check, so a commit in between is seen.
            space.as_mut().enable();
            {
                let log = t.log.lock().expect("log lock");
                if log.fits_in_memory(event) || log.spilling() {
                    return Ok(());
                }
                // Room appears only when the target commits. Inside a
                // source transaction it cannot before this transaction's
                // commit arrives, so once it has read everything there is
                // nothing to wait for; between transactions it commits
                // when it runs out of events.
                let between = matches!(event, Event::Begin(_) | Event::Position(_));
                if !between && !log.has_unread_memory() {
                    return Ok(());
                }
            }
            // The target must read what it has to make room.
            self.unnotified.fetch_add(1, Ordering::Relaxed);
            self.notify_targets();
            tokio::select! {
                _ = &mut space => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                _ = shutdown.changed() => return Err(StreamError::ShuttingDown),
            }
        }
    }

    /// Pushes one event to every live target's log, waiting while the
    /// spill budget is full. The targets are woken per chunk of changes
    /// (so a large transaction is applied while it is still being read),
    /// every [`NOTIFY_EVERY`] events, and whenever the reader is about to
    /// wait (for the socket, the tick, or spill space).
    async fn dispatch(
        &self,
        event: &Event,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamError> {
        for t in &self.targets {
            if t.closed.load(Ordering::Acquire) {
                continue;
            }
            self.wait_for_memory(t, event, shutdown).await?;
            let mut warned = false;
            loop {
                let pushed = {
                    let mut log = t.log.lock().expect("log lock");
                    let r = log.push(event);
                    if matches!(r, Ok(crate::log::Pushed::Disk)) {
                        t.state.set_spilled(log.disk_bytes());
                    }
                    r
                };
                match pushed {
                    Ok(_) => break,
                    Err(SpillError::BudgetExceeded { budget, used }) => {
                        if !warned {
                            tracing::warn!(target_name = %t.state.name, budget, used, "spill budget full: waiting for slow targets before reading more from the source (raise apply.spill_budget or fix the target)");
                            warned = true;
                        }
                        self.state.set_stalled(true);
                        // The targets must drain for space to appear.
                        self.unnotified.fetch_add(1, Ordering::Relaxed);
                        self.notify_targets();
                        let space = self.space.notified();
                        tokio::select! {
                            _ = space => {}
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = shutdown.changed() => return Err(StreamError::ShuttingDown),
                        }
                        if t.closed.load(Ordering::Acquire) {
                            break;
                        }
                    }
                    Err(e) => {
                        return Err(StreamError::Fatal(format!(
                            "target log of {}: {e}",
                            t.state.name
                        )))
                    }
                }
            }
            if warned {
                self.state.set_stalled(false);
                tracing::info!(target_name = %t.state.name, "spill space available again; reading from the source");
            }
        }
        let n = self.unnotified.fetch_add(1, Ordering::Relaxed) + 1;
        if matches!(event, Event::Changes(_) | Event::StreamChanges { .. }) || n >= NOTIFY_EVERY {
            self.notify_targets();
        }
        Ok(())
    }
}

/// Changes of the eager streamed transaction collected into one event:
/// cut at [`CHUNK_CHANGES`] / [`CHUNK_BYTES`], at a change of
/// subtransaction (each event carries one), and at the end of each stream
/// block (so targets apply what arrived without waiting for more).
#[derive(Default)]
struct EagerChunk {
    owner: Option<(pgrelay_types::Xid, pgrelay_types::Xid)>,
    changes: Vec<Change>,
    bytes: usize,
}

impl EagerChunk {
    /// Adds a change; returns the full chunk to dispatch, if any.
    fn push(
        &mut self,
        xid: pgrelay_types::Xid,
        subxid: pgrelay_types::Xid,
        change: Change,
    ) -> Option<Event> {
        let out = if self.owner.is_some_and(|o| o != (xid, subxid)) {
            self.take()
        } else {
            None
        };
        self.owner = Some((xid, subxid));
        self.bytes += change.approx_size();
        self.changes.push(change);
        if out.is_none() && (self.changes.len() >= CHUNK_CHANGES || self.bytes >= CHUNK_BYTES) {
            return self.take();
        }
        out
    }

    /// The collected changes as an event (`None` when empty).
    fn take(&mut self) -> Option<Event> {
        let (xid, subxid) = self.owner.take()?;
        self.bytes = 0;
        if self.changes.is_empty() {
            return None;
        }
        Some(Event::StreamChanges {
            xid,
            subxid,
            changes: Arc::new(std::mem::take(&mut self.changes)),
        })
    }
}

async fn shutdown_stream(stream: LogicalStream) {
    match tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await {
        Ok(Ok(client)) => {
            let _ = client.close().await;
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "ending the replication stream"),
        Err(_) => tracing::debug!("the server did not end the stream within 5 s"),
    }
}
