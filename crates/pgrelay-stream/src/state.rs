//! The pipeline's live state, shared by the source reader, the target
//! workers, `/health` and the metrics: each writer owns its fields and
//! readers take consistent-enough snapshots (atomics and short locks, no
//! lock held across an await).
//!
//! Invariant: nothing here holds a connection string or a password; error
//! texts come from errors that already redact them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use pgrelay_types::{Lsn, PgTimestamp};
use serde_json::json;

/// What a target worker is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPhase {
    /// Connecting for the first time.
    Starting,
    /// The initial copy runs.
    Copying,
    /// Applying changes.
    Streaming,
    /// Lost its connection or hit a transient error; retrying.
    Retrying,
    /// Stopped on a fatal error; needs an operator.
    Failed,
    /// Shut down.
    Stopped,
}

impl TargetPhase {
    /// Lower-case name used in /health and status.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetPhase::Starting => "starting",
            TargetPhase::Copying => "copying",
            TargetPhase::Streaming => "streaming",
            TargetPhase::Retrying => "retrying",
            TargetPhase::Failed => "failed",
            TargetPhase::Stopped => "stopped",
        }
    }
}

/// One target.
pub struct TargetState {
    /// Its name.
    pub name: String,
    phase: Mutex<TargetPhase>,
    last_error: Mutex<Option<String>>,
    connected: AtomicBool,
    /// How far the slot may be confirmed for this target.
    applied: AtomicU64,
    /// Source commit time of the last transaction it made durable.
    applied_ts: AtomicI64,
    /// Its log is empty and nothing is pending.
    caught_up: AtomicBool,
    spilled: AtomicU64,
}

impl TargetState {
    /// A target at `start` (the slot's confirmed position).
    pub fn new(name: &str, start: Lsn) -> Self {
        TargetState {
            name: name.to_owned(),
            phase: Mutex::new(TargetPhase::Starting),
            last_error: Mutex::new(None),
            connected: AtomicBool::new(false),
            applied: AtomicU64::new(start.0),
            applied_ts: AtomicI64::new(i64::MIN),
            caught_up: AtomicBool::new(false),
            spilled: AtomicU64::new(0),
        }
    }

    /// Sets the phase (and clears the error when streaming again).
    pub fn set_phase(&self, phase: TargetPhase) {
        if phase == TargetPhase::Streaming {
            *self.last_error.lock().expect("lock") = None;
        }
        *self.phase.lock().expect("lock") = phase;
    }

    /// The phase.
    pub fn phase(&self) -> TargetPhase {
        self.phase.lock().expect("lock").clone()
    }

    /// Records an error (already free of secrets).
    pub fn set_error(&self, e: String) {
        *self.last_error.lock().expect("lock") = Some(e);
    }

    /// The last error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("lock").clone()
    }

    /// Connection state.
    pub fn set_connected(&self, c: bool) {
        self.connected.store(c, Ordering::Relaxed);
    }

    /// Connection state.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Moves the confirmable position forward (never back).
    pub fn advance(&self, lsn: Lsn, commit_ts: Option<PgTimestamp>) {
        self.applied.fetch_max(lsn.0, Ordering::AcqRel);
        if let Some(ts) = commit_ts {
            self.applied_ts.fetch_max(ts.0, Ordering::AcqRel);
        }
    }

    /// The confirmable position.
    pub fn applied(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Acquire))
    }

    /// Whether it has applied everything dispatched so far.
    pub fn set_caught_up(&self, c: bool) {
        self.caught_up.store(c, Ordering::Relaxed);
    }

    /// Whether it has applied everything dispatched so far.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// Bytes of its backlog on disk.
    pub fn set_spilled(&self, b: u64) {
        self.spilled.store(b, Ordering::Relaxed);
    }

    /// Bytes of its backlog on disk.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Replication lag in bytes behind the source's WAL end.
    pub fn lag_bytes(&self, wal_end: Lsn) -> u64 {
        if self.caught_up() {
            return 0;
        }
        wal_end.0.saturating_sub(self.applied().0)
    }

    /// Replication lag in seconds: 0 when it has applied everything the
    /// source sent; otherwise the age of the last source commit it
    /// applied (an upper bound on the age of the oldest change it has
    /// not applied).
    pub fn lag_seconds(&self, now: SystemTime, behind_since: Option<SystemTime>) -> f64 {
        if self.caught_up() {
            return 0.0;
        }
        let ts = self.applied_ts.load(Ordering::Relaxed);
        let reference = if ts == i64::MIN {
            behind_since
        } else {
            PgTimestamp(ts).to_system_time()
        };
        reference
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// The whole pipeline.
pub struct PipelineState {
    /// Slot (pipeline) name.
    pub slot: String,
    /// The source database, for a pipeline of a multi-database
    /// configuration: the `database` label of the source-side metrics,
    /// which would otherwise mix several pipelines of one process.
    pub database: Option<String>,
    /// Targets in configuration order.
    pub targets: Vec<std::sync::Arc<TargetState>>,
    source_connected: AtomicBool,
    wal_end: AtomicU64,
    stalled: AtomicBool,
    phase: Mutex<&'static str>,
    /// Whether the pipeline ever reached the streaming phase.
    streamed: AtomicBool,
    /// Why the pipeline stopped, when it stopped on an error.
    error: Mutex<Option<String>>,
    started: SystemTime,
    /// When the source first had something a target had not applied
    /// (for lag seconds before any commit time is known).
    behind_since: Mutex<Option<SystemTime>>,
}

impl PipelineState {
    /// A fresh state.
    pub fn new(slot: &str, targets: Vec<std::sync::Arc<TargetState>>) -> Self {
        PipelineState {
            slot: slot.to_owned(),
            database: None,
            targets,
            source_connected: AtomicBool::new(false),
            wal_end: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            phase: Mutex::new("starting"),
            streamed: AtomicBool::new(false),
            error: Mutex::new(None),
            started: SystemTime::now(),
            behind_since: Mutex::new(None),
        }
    }

    /// Source connection state.
    pub fn set_source_connected(&self, c: bool) {
        self.source_connected.store(c, Ordering::Relaxed);
    }

    /// The source's WAL end as last reported.
    pub fn set_wal_end(&self, lsn: Lsn) {
        self.wal_end.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// The source's WAL end as last reported.
    pub fn wal_end(&self) -> Lsn {
        Lsn(self.wal_end.load(Ordering::Acquire))
    }

    /// The source waits because the spill budget is used up.
    pub fn set_stalled(&self, s: bool) {
        self.stalled.store(s, Ordering::Relaxed);
    }

    /// Whether the source waits for spill space.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Pipeline phase: starting, copying, streaming, stopping.
    pub fn set_phase(&self, p: &'static str) {
        if p == "streaming" {
            self.streamed.store(true, Ordering::Relaxed);
        }
        *self.phase.lock().expect("lock") = p;
    }

    /// Whether the pipeline got past setup (preflight, copy) to streaming.
    pub fn streamed(&self) -> bool {
        self.streamed.load(Ordering::Relaxed)
    }

    /// Records why the pipeline stopped (shown by `/health`, which then
    /// reports it unhealthy).
    pub fn set_error(&self, e: String) {
        *self.error.lock().expect("lock") = Some(e);
    }

    /// Marks the first moment a target fell behind.
    pub fn note_dispatch(&self) {
        let mut b = self.behind_since.lock().expect("lock");
        if b.is_none() {
            *b = Some(SystemTime::now());
        }
    }

    /// The slot may be confirmed up to here: the lowest position over
    /// every target (failed ones included, so they lose nothing).
    pub fn confirmable(&self) -> Lsn {
        self.targets
            .iter()
            .map(|t| t.applied())
            .min()
            .unwrap_or(Lsn::INVALID)
    }

    /// Labels of the pipeline-wide (source-side) series: none for a
    /// single pipeline, `database` for one of several.
    pub fn source_labels(&self) -> Vec<(&'static str, String)> {
        match &self.database {
            Some(d) => vec![("database", d.clone())],
            None => Vec::new(),
        }
    }

    /// Makes every series exist from the start (at zero), so dashboards
    /// and alerts see them before the first change flows.
    pub fn register_metrics(&self) {
        let source = self.source_labels();
        metrics::counter!("pgrelay_received_bytes_total", &source).increment(0);
        for t in &self.targets {
            metrics::counter!("pgrelay_applied_transactions_total", "target" => t.name.clone())
                .increment(0);
            for op in ["insert", "update", "delete", "truncate"] {
                metrics::counter!("pgrelay_applied_changes_total", "target" => t.name.clone(), "op" => op)
                    .increment(0);
            }
        }
    }

    /// Updates the Prometheus gauges.
    pub fn export_metrics(&self) {
        let wal_end = self.wal_end();
        let now = SystemTime::now();
        let behind = *self.behind_since.lock().expect("lock");
        for t in &self.targets {
            let labels = [("target", t.name.clone())];
            metrics::gauge!("pgrelay_lag_bytes", &labels).set(t.lag_bytes(wal_end) as f64);
            metrics::gauge!("pgrelay_lag_seconds", &labels).set(t.lag_seconds(now, behind));
            metrics::gauge!("pgrelay_spilled_bytes", &labels).set(t.spilled() as f64);
            metrics::gauge!("pgrelay_target_up", &labels).set(if t.connected() {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("pgrelay_applied_lsn", &labels).set(t.applied().0 as f64);
        }
        let source = self.source_labels();
        metrics::gauge!("pgrelay_source_up", &source).set(
            if self.source_connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        metrics::gauge!("pgrelay_source_stalled", &source).set(if self.stalled() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("pgrelay_slot_retained_bytes", &source)
            .set(wal_end.0.saturating_sub(self.confirmable().0) as f64);
    }

    /// The `/health` document and whether every target is streaming.
    pub fn health(&self) -> (bool, serde_json::Value) {
        let wal_end = self.wal_end();
        let now = SystemTime::now();
        let behind = *self.behind_since.lock().expect("lock");
        let error = self.error.lock().expect("lock").clone();
        let mut healthy =
            self.source_connected.load(Ordering::Relaxed) && !self.stalled() && error.is_none();
        let targets: Vec<_> = self
            .targets
            .iter()
            .map(|t| {
                let phase = t.phase();
                let ok =
                    t.connected() && matches!(phase, TargetPhase::Streaming | TargetPhase::Copying);
                healthy &= ok;
                json!({
                    "name": t.name,
                    "state": phase.as_str(),
                    "connected": t.connected(),
                    "applied_lsn": t.applied().to_string(),
                    "lag_bytes": t.lag_bytes(wal_end),
                    "lag_seconds": t.lag_seconds(now, behind),
                    "spilled_bytes": t.spilled(),
                    "last_error": t.last_error(),
                })
            })
            .collect();
        let phase = *self.phase.lock().expect("lock");
        let mut doc = json!({
            "status": if healthy { "ok" } else { "degraded" },
            "phase": phase,
            "slot": self.slot,
            "source": {
                "connected": self.source_connected.load(Ordering::Relaxed),
                "wal_end": wal_end.to_string(),
                "confirmed_lsn": self.confirmable().to_string(),
                "stalled": self.stalled(),
            },
            "uptime_seconds": now.duration_since(self.started).map_or(0, |d| d.as_secs()),
            "targets": targets,
        });
        if let Some(d) = &self.database {
            doc["database"] = json!(d);
        }
        if let Some(e) = error {
            doc["error"] = json!(e);
        }
        (healthy, doc)
    }
}
