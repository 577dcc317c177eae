//! One target worker: reads its log, applies through `pgrelay-apply` in
//! batches, reports durable progress, and survives connection loss.
//!
//! Invariants:
//! * The log is committed (events forgotten) and the target's confirmable
//!   position advanced only after the target transaction holding those
//!   events and the progress row committed.
//! * A failed batch is rolled back by the server; the worker reconnects
//!   with capped exponential backoff (indefinitely), rewinds the log to
//!   the last commit and replays; the applier skips source transactions
//!   the progress row already covers, so nothing is applied twice.
//! * A fatal error (constraint violation, missing table, permission)
//!   stops only this target: its position freezes, so the slot keeps the
//!   WAL it still needs, and its log is dropped (a restart of pgrelay
//!   after the fix replays from the slot).
//! * On shutdown the worker finishes the source transaction in hand only
//!   if it is complete, commits what is pending, and stops.
//! * A transaction the source streams while in progress (`Event::Stream*`)
//!   is applied as it arrives on a second connection, in a target
//!   transaction of its own with a savepoint per subtransaction, while
//!   whole transactions keep committing on the first. Before each of its
//!   chunks the first connection commits what it holds, so the streamed
//!   transaction never waits for a lock the worker itself holds; it
//!   commits (with progress) in source commit order at its Stream Commit.
//!   Its chunks leave the log as the worker commits other work, so a
//!   failed session cannot replay it: the worker then asks for a pipeline
//!   restart, which streams again from the slot (confirmed only up to what
//!   every target made durable), the way a process restart would.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgrelay_apply::{Applier, ApplyError, ApplyOptions};
use pgrelay_types::{Lsn, Xid};
use tokio::sync::{watch, Notify};

use crate::config::TargetConfig;
use crate::log::{Event, TargetLog};
use crate::state::{TargetPhase, TargetState};

/// What a worker shares with the source reader.
pub struct TargetHandle {
    /// Its state (health, metrics, confirm position).
    pub state: Arc<TargetState>,
    /// Its backlog.
    pub log: Arc<Mutex<TargetLog>>,
    /// Signalled when events were pushed.
    pub data: Arc<Notify>,
    /// Set once the target failed fatally: stop pushing.
    pub closed: Arc<std::sync::atomic::AtomicBool>,
}

/// Everything a worker needs.
pub struct Worker {
    /// Connection and role.
    pub target: TargetConfig,
    /// Shared with the source.
    pub handle: TargetHandle,
    /// Signalled when the worker freed log space.
    pub space: Arc<Notify>,
    /// Applier settings.
    pub options: ApplyOptions,
    /// Backoff cap.
    pub max_retry_delay: Duration,
    /// Set to ask for a pipeline restart (see the module docs); sending
    /// `true` on `stop` then ends this generation of the pipeline.
    pub restart: Arc<std::sync::atomic::AtomicBool>,
    /// Stops every worker of this generation.
    pub stop: Arc<watch::Sender<bool>>,
}

/// The streamed transaction being applied while it streams.
struct OpenStream {
    xid: Xid,
    /// Subtransactions with a savepoint, in creation order.
    savepoints: Vec<Xid>,
}

fn savepoint_name(subxid: Xid) -> String {
    format!("pgrelay_sub_{}", subxid.0)
}

/// Why an apply session ended.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("target backlog: {0}")]
    Log(#[from] pgrelay_spill::SpillError),
    #[error("verification pause: {0}")]
    Pause(String),
    #[error("{0}")]
    Stream(String),
}

/// `pgrelay verify`'s handshake with a running streamer: it inserts a row
/// with lsn 0/0 and the worker stops at its next transaction boundary
/// (filling `reached_lsn`, its last applied commit); verify then exports a
/// source snapshot and sets the row's lsn to its position (clearing
/// `reached_lsn`); the worker applies every source transaction committed
/// before it and none after, fills `reached_lsn` again, and waits until
/// the row is deleted.
pub const PAUSE_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgrelay;
CREATE TABLE IF NOT EXISTS pgrelay.verify_pause (
    pipeline text PRIMARY KEY, lsn pg_lsn NOT NULL, reached_lsn pg_lsn,
    requested_at timestamptz NOT NULL DEFAULT now())";
const PAUSE_POLL: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(600);

enum Outcome {
    Shutdown,
    Retry(String),
    Fatal(String),
    /// The session failed while a streamed transaction was half applied.
    Restart(String),
}

impl Worker {
    /// Runs until `shutdown` turns true (or a fatal error).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let state = self.handle.state.clone();
        let mut delay = Duration::from_millis(200);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let outcome = self.session(&mut shutdown).await;
            state.set_connected(false);
            match outcome {
                Outcome::Shutdown => break,
                Outcome::Restart(e) => {
                    tracing::warn!(target_name = %state.name, error = %e, "target failed while applying a transaction that is still streaming; restarting the pipeline from the slot so it is sent again");
                    state.set_error(e);
                    metrics::counter!("pgrelay_target_retries_total", "target" => state.name.clone()).increment(1);
                    self.restart
                        .store(true, std::sync::atomic::Ordering::Release);
                    let _ = self.stop.send(true);
                    return;
                }
                Outcome::Retry(e) => {
                    tracing::warn!(target_name = %state.name, error = %e, retry_in = ?delay, "target unavailable; retrying");
                    state.set_phase(TargetPhase::Retrying);
                    state.set_error(e);
                    metrics::counter!("pgrelay_target_retries_total", "target" => state.name.clone()).increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    delay = (delay * 2).min(self.max_retry_delay);
                }
                Outcome::Fatal(e) => {
                    tracing::error!(target_name = %state.name, error = %e, "target stopped; fix the cause and restart pgrelay: it resumes from this target's last applied transaction");
                    state.set_phase(TargetPhase::Failed);
                    state.set_error(e);
                    self.handle
                        .closed
                        .store(true, std::sync::atomic::Ordering::Release);
                    self.handle.log.lock().expect("log lock").clear();
                    self.space.notify_waiters();
                    return;
                }
            }
        }
        state.set_phase(TargetPhase::Stopped);
    }

    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Outcome {
        let state = &self.handle.state;
        let client = tokio::select! {
            c = pgrelay_source::connect_sql(&self.target.config) => c,
            _ = shutdown.changed() => return Outcome::Shutdown,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) if e.is_transient() => return Outcome::Retry(e.to_string()),
            Err(e) => return Outcome::Fatal(e.to_string()),
        };
        let mut applier = match Applier::new(client, self.options.clone()).await {
            Ok(a) => a,
            Err(e) => return classify(e),
        };
        state.set_connected(true);
        state.set_phase(TargetPhase::Streaming);
        self.handle.log.lock().expect("log lock").rewind();
        tracing::info!(target_name = %state.name, progress = ?applier.progress().map(|p| p.end_lsn.to_string()), "target connected");
        let mut open = None;
        let outcome = match self.apply_loop(&mut applier, &mut open, shutdown).await {
            Ok(()) => Outcome::Shutdown,
            Err(WorkerError::Apply(e)) => classify(e),
            Err(WorkerError::Log(e)) if e.is_transient() => Outcome::Retry(e.to_string()),
            Err(WorkerError::Log(e)) => Outcome::Fatal(e.to_string()),
            Err(WorkerError::Pause(e)) => Outcome::Retry(e),
            Err(WorkerError::Stream(e)) => Outcome::Restart(e),
        };
        match outcome {
            Outcome::Retry(e) if open.is_some() => Outcome::Restart(e),
            other => other,
        }
    }

    /// The second connection, for streamed transactions (made on first use).
    async fn side<'a>(
        &self,
        side: &'a mut Option<Applier>,
    ) -> Result<&'a mut Applier, WorkerError> {
        if side.is_none() {
            let client = pgrelay_source::connect_sql(&self.target.config)
                .await
                .map_err(|e| {
                    WorkerError::Stream(format!("connecting for a streamed transaction: {e}"))
                })?;
            *side = Some(Applier::new(client, self.options.clone()).await?);
        }
        Ok(side.as_mut().expect("just set"))
    }

    async fn apply_loop(
        &self,
        applier: &mut Applier,
        open: &mut Option<OpenStream>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        // The connection streamed transactions are applied on.
        let mut side: Option<Applier> = None;
        let state = &self.handle.state;
        // Inside a source transaction (between Begin and Commit)?
        let mut in_txn = false;
        // The current source transaction is already applied: ignore it.
        let mut skipping = false;
        // Something was applied since the last flush.
        let mut dirty = false;
        // Confirmable position and commit time once pending work commits.
        let mut pending: Option<(Lsn, Option<pgrelay_types::PgTimestamp>)> = None;
        // A `pgrelay verify` asking this target to stop right before the
        // first source transaction committing at or after this LSN.
        let mut pause: Option<Lsn> = None;
        let mut pause_checked = Instant::now();
        applier
            .client()
            .batch_execute(PAUSE_DDL)
            .await
            .map_err(|e| WorkerError::Pause(e.to_string()))?;
        loop {
            if !in_txn && pause.is_none() && pause_checked.elapsed() >= PAUSE_POLL {
                pause_checked = Instant::now();
                pause = self.pause_request(applier).await?;
                // 0/0: stop now, so the verification can pick its snapshot
                // ahead of this target.
                if pause == Some(Lsn::INVALID) {
                    if dirty {
                        self.flush(applier, &mut dirty, &mut pending).await?;
                    }
                    pause = self.hold(applier, Lsn::INVALID, shutdown).await?;
                }
            }
            let next = {
                let mut log = self.handle.log.lock().expect("log lock");
                let n = log.next_event().map_err(WorkerError::Log)?;
                state.set_spilled(log.disk_bytes());
                n
            };
            let Some(event) = next else {
                // Idle: make pending work durable now (latency), then wait.
                if !in_txn {
                    if dirty {
                        self.flush(applier, &mut dirty, &mut pending).await?;
                    }
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                    state.set_caught_up(true);
                }
                let wait = self.handle.data.notified();
                tokio::pin!(wait);
                // Re-check after registering, so a push between the
                // check and the wait is not missed.
                if !self.handle.log.lock().expect("log lock").fully_read() {
                    continue;
                }
                tokio::select! {
                    _ = &mut wait => {}
                    _ = shutdown.changed() => {
                        if !in_txn {
                            continue;
                        }
                        // Mid-transaction with the rest not yet received:
                        // roll back; it is replayed after restart.
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            };
            state.set_caught_up(false);
            let at = match &event {
                Event::Begin(info) | Event::StreamCommit(info, _) => Some(info.commit_lsn),
                Event::Position(lsn) if !in_txn => Some(*lsn),
                _ => None,
            };
            if let (Some(p), Some(at)) = (pause, at) {
                if at >= p {
                    if dirty {
                        self.flush(applier, &mut dirty, &mut pending).await?;
                    }
                    pause = self.hold(applier, p, shutdown).await?;
                }
            }
            match event {
                Event::Begin(info) => {
                    in_txn = true;
                    skipping = !applier.begin(&info).await?;
                }
                Event::Changes(changes) => {
                    if !skipping {
                        applier.changes(&changes).await?;
                        dirty = true;
                    }
                }
                Event::Commit(info, confirm) => {
                    in_txn = false;
                    // Always closed, skipped or not: the applier holds the
                    // open transaction until its commit.
                    applier.commit(&info).await?;
                    if !skipping {
                        dirty = true;
                    }
                    skipping = false;
                    pending = Some((confirm, Some(info.commit_ts)));
                    if !dirty {
                        self.settle(&mut pending)?;
                    } else if applier.should_flush() {
                        self.flush(applier, &mut dirty, &mut pending).await?;
                    }
                    if *shutdown.borrow() {
                        if dirty {
                            self.flush(applier, &mut dirty, &mut pending).await?;
                        }
                        return Ok(());
                    }
                }
                Event::Position(lsn) => {
                    if !in_txn {
                        pending = Some((lsn, None));
                        if !dirty {
                            self.settle(&mut pending)?;
                        }
                    }
                }
                Event::StreamChanges {
                    xid,
                    subxid,
                    changes,
                } => {
                    // Nothing of ours may hold a lock the streamed
                    // transaction could wait for.
                    if dirty {
                        self.flush(applier, &mut dirty, &mut pending).await?;
                    }
                    let side = self.side(&mut side).await?;
                    match open {
                        Some(o) if o.xid != xid => {
                            return Err(WorkerError::Stream(format!(
                                "changes of streamed transaction {xid} while {} is open",
                                o.xid
                            )))
                        }
                        Some(_) => {}
                        None => {
                            side.begin_streamed().await?;
                            *open = Some(OpenStream {
                                xid,
                                savepoints: Vec::new(),
                            });
                        }
                    }
                    let o = open.as_mut().expect("opened above");
                    if subxid != xid && !o.savepoints.contains(&subxid) {
                        side.savepoint(&savepoint_name(subxid)).await?;
                        o.savepoints.push(subxid);
                    }
                    side.changes(&changes).await?;
                    // Everything read is durable or part of the open
                    // stream, which is never replayed from the log (a
                    // failure restarts the pipeline instead): free the
                    // log's memory now, or a large streamed transaction
                    // would fill it and spill until its commit.
                    self.settle(&mut pending)?;
                }
                Event::StreamAbort { xid, subxid } => {
                    if let (Some(o), Some(side)) = (open.as_mut(), side.as_mut()) {
                        if o.xid == xid && subxid == xid {
                            side.abort_streamed().await?;
                            *open = None;
                        } else if o.xid == xid {
                            if let Some(i) = o.savepoints.iter().position(|s| *s == subxid) {
                                side.rollback_to(&savepoint_name(subxid)).await?;
                                o.savepoints.truncate(i + 1);
                            }
                        }
                    }
                }
                Event::StreamCommit(info, confirm) => {
                    if dirty {
                        self.flush(applier, &mut dirty, &mut pending).await?;
                    }
                    if let Some(o) = open.take() {
                        if o.xid != info.xid {
                            return Err(WorkerError::Stream(format!(
                                "commit of streamed transaction {} while {} is open",
                                info.xid, o.xid
                            )));
                        }
                        let side = side.as_mut().expect("an open stream has its connection");
                        let applied = applier.progress().map(|p| p.commit_lsn);
                        side.commit_streamed(&info, applied).await?;
                    }
                    pending = Some((confirm, Some(info.commit_ts)));
                    self.settle(&mut pending)?;
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The pause `pgrelay verify` asks for, if any.
    async fn pause_request(&self, applier: &mut Applier) -> Result<Option<Lsn>, WorkerError> {
        let row = applier
            .client()
            .query_opt(
                "SELECT lsn::text FROM pgrelay.verify_pause WHERE pipeline = $1 AND reached_lsn IS NULL",
                &[&self.options.pipeline],
            )
            .await
            .map_err(|e| WorkerError::Pause(e.to_string()))?;
        Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
    }

    /// Everything before `at` is applied and nothing after it (or, for
    /// 0/0, nothing more for now): say so and wait until the verification
    /// removes its request (`None`) or moves it to a new point.
    async fn hold(
        &self,
        applier: &mut Applier,
        at: Lsn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Lsn>, WorkerError> {
        let c = applier.client();
        let pipeline = &self.options.pipeline;
        let reached = applier.progress().map_or(Lsn::INVALID, |p| p.commit_lsn);
        let e = |e: tokio_postgres::Error| WorkerError::Pause(e.to_string());
        c.execute(
            "UPDATE pgrelay.verify_pause SET reached_lsn = $2::text::pg_lsn
              WHERE pipeline = $1 AND lsn = $3::text::pg_lsn",
            &[pipeline, &reached.to_string(), &at.to_string()],
        )
        .await
        .map_err(e)?;
        tracing::info!(target_name = %self.handle.state.name, lsn = %at, "paused for verification");
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return Ok(None),
            }
            let row = c
                .query_opt(
                    "SELECT lsn::text, reached_lsn IS NULL FROM pgrelay.verify_pause WHERE pipeline = $1",
                    &[pipeline],
                )
                .await
                .map_err(e)?;
            let Some(row) = row else { break };
            let lsn: Lsn = row.get::<_, String>(0).parse().unwrap_or(Lsn::INVALID);
            let fresh: bool = row.get(1);
            if lsn != at && fresh {
                tracing::info!(target_name = %self.handle.state.name, lsn = %lsn, "verification point set; applying up to it");
                return Ok(Some(lsn));
            }
            if started.elapsed() > MAX_PAUSE {
                tracing::warn!(target_name = %self.handle.state.name, "verification pause exceeded 10 minutes; resuming");
                c.execute(
                    "DELETE FROM pgrelay.verify_pause WHERE pipeline = $1",
                    &[pipeline],
                )
                .await
                .map_err(e)?;
                break;
            }
        }
        tracing::info!(target_name = %self.handle.state.name, paused = ?started.elapsed(), "resumed after verification");
        Ok(None)
    }

    /// Nothing is pending on the target: what was read is done.
    fn settle(
        &self,
        pending: &mut Option<(Lsn, Option<pgrelay_types::PgTimestamp>)>,
    ) -> Result<(), WorkerError> {
        self.handle
            .log
            .lock()
            .expect("log lock")
            .commit()
            .map_err(WorkerError::Log)?;
        if let Some((lsn, ts)) = pending.take() {
            self.handle.state.advance(lsn, ts);
        }
        self.space.notify_waiters();
        Ok(())
    }

    async fn flush(
        &self,
        applier: &mut Applier,
        dirty: &mut bool,
        pending: &mut Option<(Lsn, Option<pgrelay_types::PgTimestamp>)>,
    ) -> Result<(), WorkerError> {
        applier.flush().await?;
        *dirty = false;
        self.settle(pending)
    }
}

fn classify(e: ApplyError) -> Outcome {
    if e.is_transient() {
        Outcome::Retry(e.to_string())
    } else {
        Outcome::Fatal(e.to_string())
    }
}
