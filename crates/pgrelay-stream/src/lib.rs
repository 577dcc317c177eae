//! pgrelay-stream: the streamer. One logical slot, one decode, many
//! targets, each applied in batches with its own durable progress.
//!
//! Layers (each its own module):
//! * [`config`]: the YAML file and flags; [`select`]: which tables;
//!   [`databases`]: one pipeline per selected source database.
//! * [`sync`]: preflight, publication, slot, initial copy (pgrelay-copy).
//! * [`source`]: the replication connection, pgoutput decode and
//!   reassembly (pgrelay-pgoutput), dispatch to every target's [`log`].
//! * [`target`]: one worker per target applying through pgrelay-apply.
//! * [`state`]: what `/health`, metrics and logs report.
//! * [`status`]: `pgrelay status` and `pgrelay cleanup`.
//!
//! The exactly-once argument: each target commits its progress (the last
//! source commit LSN) in the same transaction as the changes; the slot is
//! confirmed only up to the lowest position every target made durable; on
//! restart the slot resends from there and each applier skips what its
//! progress row covers. PostgreSQL docs: "Logical Replication"
//! (logical-replication), "Logical Decoding" (logicaldecoding).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod databases;
pub mod log;
pub mod select;
pub mod source;
pub mod state;
pub mod status;
pub mod sync;
pub mod target;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgrelay_apply::{ApplyOptions, SessionRole};
use pgrelay_spill::SpillDir;
use pgrelay_types::Lsn;
use tokio::sync::{watch, Notify};

pub use config::{Overrides, StreamConfig};
pub use state::{PipelineState, TargetPhase, TargetState};

/// Why the streamer stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Preflight found problems; each line says what to fix.
    #[error("{} problem(s) must be fixed before streaming:\n  {}", .0.len(), .0.join("\n  "))]
    Preflight(Vec<String>),
    /// The source connection failed.
    #[error(transparent)]
    Source(#[from] pgrelay_source::SourceError),
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Something that may work when retried.
    #[error("{0}")]
    Transient(String),
    /// Something an operator must fix.
    #[error("{0}")]
    Fatal(String),
    /// Interrupted by shutdown.
    #[error("interrupted by shutdown")]
    ShuttingDown,
}

impl StreamError {
    /// Whether running again later can succeed without a human.
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Source(e) => e.is_transient(),
            StreamError::Transient(_) | StreamError::ShuttingDown => true,
            StreamError::Preflight(_) | StreamError::Config(_) | StreamError::Fatal(_) => false,
        }
    }
}

/// A configured pipeline; [`Pipeline::state`] is live while it runs.
pub struct Pipeline {
    config: StreamConfig,
    state: Arc<PipelineState>,
    /// The highest position any target is known to have applied (from
    /// the progress rows at setup). A transaction that starts streaming
    /// before the source passed it may already be applied on that target,
    /// which only its commit LSN can tell, so it is not applied while it
    /// streams (see `SourceReader::eager_after`).
    applied_high: Mutex<Lsn>,
}

impl Pipeline {
    /// A pipeline for `config`.
    pub fn new(config: StreamConfig) -> Self {
        let targets = config
            .targets
            .iter()
            .map(|t| Arc::new(TargetState::new(&t.name, Lsn::INVALID)))
            .collect();
        let mut state = PipelineState::new(&config.slot, targets);
        state.database = config.database.clone();
        let state = Arc::new(state);
        Pipeline {
            config,
            state,
            applied_high: Mutex::new(Lsn::INVALID),
        }
    }

    /// Live state for `/health` and metrics.
    pub fn state(&self) -> Arc<PipelineState> {
        self.state.clone()
    }

    /// Preflight, initial copy when needed, then stream until `shutdown`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StreamError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let state = &self.state;
        state.register_metrics();
        // Metrics follow the state once a second for the whole run.
        let ticker = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    state.export_metrics();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let result = async {
            let start = self.setup(stop_rx.clone()).await?;
            for t in &state.targets {
                t.advance(start, None);
            }
            self.stream(stop_rx.clone()).await
        }
        .await;
        ticker.abort();
        state.set_phase("stopped");
        state.export_metrics();
        match result {
            Err(StreamError::ShuttingDown) => Ok(()),
            other => other,
        }
    }

    /// Preflight, publication, slot and initial copy only (what `pgrelay
    /// init` runs): a later `run` streams from the slot's consistent point.
    /// Returns the position streaming will start from.
    pub async fn prepare(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Lsn, StreamError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        self.setup(stop_rx).await
    }

    async fn setup(&self, stop: watch::Receiver<bool>) -> Result<Lsn, StreamError> {
        let config = &self.config;
        let mut delay = Duration::from_millis(500);
        loop {
            match self.setup_once(stop.clone()).await {
                Err(e) if e.is_transient() && !matches!(e, StreamError::ShuttingDown) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot set up yet; retrying");
                    let mut s = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = s.wait_for(|v| *v) => return Err(StreamError::ShuttingDown),
                    }
                    delay = (delay * 2).min(config.apply.max_retry_delay);
                }
                other => return other,
            }
        }
    }

    async fn setup_once(&self, stop: watch::Receiver<bool>) -> Result<Lsn, StreamError> {
        let config = &self.config;
        let source = pgrelay_source::connect_sql(&config.source).await?;
        let mut targets = Vec::new();
        for t in &config.targets {
            let client = pgrelay_source::connect_sql(&t.config)
                .await
                .map_err(|e| annotate(&t.name, e))?;
            pgrelay_apply::meta::ensure_schema(&client)
                .await
                .map_err(|e| StreamError::Fatal(format!("target {}: {e}", t.name)))?;
            targets.push((t.name.clone(), client));
        }
        let tables = sync::preflight(config, &source, &targets).await?;
        sync::ensure_publication(&source, &config.publication, &tables).await?;
        let existing = sync::slot_position(&source, &config.slot).await?;
        let stop_fut = {
            let mut s = stop.clone();
            async move {
                let _ = s.wait_for(|v| *v).await;
            }
        };
        let start = match existing {
            None => {
                self.state.set_phase("copying");
                self.set_targets(TargetPhase::Copying);
                sync::initial_copy(config, &tables, true, stop_fut).await?
            }
            Some(confirmed) => {
                let todo = sync::unfinished(&config.slot, &targets, &tables).await?;
                if !todo.is_empty() {
                    for (target, missing) in &todo {
                        tracing::info!(target_name = %target, tables = missing.len(), "tables not yet copied to this target; copying them from a new snapshot");
                    }
                    self.state.set_phase("copying");
                    self.set_targets(TargetPhase::Copying);
                    sync::initial_copy(config, &tables, false, stop_fut).await?;
                }
                confirmed
            }
        };
        if *stop.borrow() {
            return Err(StreamError::ShuttingDown);
        }
        for (name, client) in &targets {
            let fatal = |e| StreamError::Fatal(format!("target {name}: {e}"));
            let progress = pgrelay_apply::meta::load_progress(client, &config.slot)
                .await
                .map_err(fatal)?;
            // A table copied from a later snapshot skips changes committed
            // before its sync point, which a transaction streaming in
            // progress cannot be checked against: it must start after.
            let synced = pgrelay_apply::meta::load_table_sync(client, &config.slot)
                .await
                .map_err(fatal)?;
            let mut high = self.applied_high.lock().expect("applied_high lock");
            for lsn in progress
                .map(|p| p.end_lsn)
                .into_iter()
                .chain(synced.iter().filter_map(|s| s.sync_lsn))
            {
                *high = (*high).max(lsn);
            }
        }
        Ok(start)
    }

    fn set_targets(&self, phase: TargetPhase) {
        for t in &self.state.targets {
            t.set_phase(phase.clone());
            t.set_connected(true);
        }
    }

    /// Streams until `stop`; a target that failed while applying a
    /// transaction still being streamed asks for a restart, which begins
    /// again from the slot (like a process restart, without one).
    async fn stream(&self, stop: watch::Receiver<bool>) -> Result<(), StreamError> {
        let mut delay = Duration::from_millis(250);
        loop {
            let restart = Arc::new(AtomicBool::new(false));
            let started = std::time::Instant::now();
            let r = self.stream_once(stop.clone(), restart.clone()).await;
            if !restart.load(std::sync::atomic::Ordering::Acquire) || *stop.borrow() {
                return r;
            }
            // The transaction that was streaming is buffered whole in the
            // next run (it started before the WAL end seen so far), so a
            // target that cannot apply streams (e.g. no second connection
            // allowed) still makes progress.
            {
                let mut high = self.applied_high.lock().expect("applied_high lock");
                *high = (*high).max(self.state.wal_end());
            }
            // A target that fails again at once must not make the pipeline
            // restart in a tight loop.
            if started.elapsed() > Duration::from_secs(60) {
                delay = Duration::from_millis(250);
            }
            tracing::info!(retry_in = ?delay, "pipeline restarting from the slot's confirmed position");
            let mut s = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = s.wait_for(|v| *v) => return Ok(()),
            }
            delay = (delay * 2).min(self.config.apply.max_retry_delay);
        }
    }

    async fn stream_once(
        &self,
        stop: watch::Receiver<bool>,
        restart: Arc<AtomicBool>,
    ) -> Result<(), StreamError> {
        let config = &self.config;
        let eager_after = self.state.targets.iter().map(|t| t.applied()).fold(
            *self.applied_high.lock().expect("applied_high lock"),
            Lsn::max,
        );
        self.state.set_phase("streaming");
        let spill = Arc::new(Mutex::new(
            SpillDir::open(&config.apply.spill_dir, Some(config.apply.spill_budget))
                .map_err(|e| StreamError::Fatal(e.to_string()))?,
        ));
        let space = Arc::new(Notify::new());
        // Workers stop on shutdown (finishing their batch); the source
        // reader stops once they all did, so its final status update
        // confirms what they committed last.
        let (worker_stop_tx, worker_stop) = watch::channel(false);
        let worker_stop_tx = Arc::new(worker_stop_tx);
        let (source_stop_tx, source_stop) = watch::channel(false);
        let mut readers = Vec::new();
        let mut workers = tokio::task::JoinSet::new();
        for (i, (t, st)) in config.targets.iter().zip(&self.state.targets).enumerate() {
            let log = Arc::new(Mutex::new(log::TargetLog::new(
                spill.clone(),
                i as u64 + 1,
                config.apply.queue_memory,
            )));
            let data = Arc::new(Notify::new());
            let closed = Arc::new(AtomicBool::new(false));
            let handle = || target::TargetHandle {
                state: st.clone(),
                log: log.clone(),
                data: data.clone(),
                closed: closed.clone(),
            };
            readers.push(handle());
            let worker = target::Worker {
                target: t.clone(),
                handle: handle(),
                space: space.clone(),
                options: ApplyOptions {
                    pipeline: config.slot.clone(),
                    target: t.name.clone(),
                    session_replication_role: match t.role {
                        config::ReplicationRole::Replica => SessionRole::Replica,
                        config::ReplicationRole::Origin => SessionRole::Origin,
                    },
                    max_batch_rows: config.apply.max_batch_rows,
                    max_batch_bytes: config.apply.max_batch_bytes,
                    max_batch_delay: config.apply.max_batch_delay,
                },
                max_retry_delay: config.apply.max_retry_delay,
                restart: restart.clone(),
                stop: worker_stop_tx.clone(),
            };
            workers.spawn(worker.run(worker_stop.clone()));
        }
        {
            let tx = worker_stop_tx.clone();
            let mut ext = stop.clone();
            tokio::spawn(async move {
                let _ = ext.wait_for(|v| *v).await;
                let _ = tx.send(true);
            });
        }
        let joined = tokio::spawn(async move {
            while workers.join_next().await.is_some() {}
            let _ = source_stop_tx.send(true);
        });
        let reader = source::SourceReader {
            config: config.source.clone(),
            slot: config.slot.clone(),
            publication: config.publication.clone(),
            state: self.state.clone(),
            targets: readers,
            space,
            spill_dir: config.apply.spill_dir.clone(),
            transaction_memory: config.apply.transaction_memory,
            max_retry_delay: config.apply.max_retry_delay,
            unnotified: Default::default(),
            eager_after,
        };
        let result = reader.run(source_stop).await;
        let _ = worker_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), joined).await;
        result?;
        if !*stop.borrow() && !restart.load(std::sync::atomic::Ordering::Acquire) {
            let failed: Vec<String> = self
                .state
                .targets
                .iter()
                .map(|t| format!("{}: {}", t.name, t.last_error().unwrap_or_default()))
                .collect();
            return Err(StreamError::Fatal(format!(
                "every target stopped on an error: {}",
                failed.join("; ")
            )));
        }
        Ok(())
    }
}

fn annotate(target: &str, e: pgrelay_source::SourceError) -> StreamError {
    let msg = format!("target {target}: {e}");
    if e.is_transient() {
        StreamError::Transient(msg)
    } else {
        StreamError::Fatal(msg)
    }
}
