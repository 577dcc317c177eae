//! pgrelay-copy: the initial data copy of `pgrelay stream` and
//! `pgrelay init`. Every selected table is read once from the snapshot a
//! logical slot exported, and written to every target at the same time, so
//! that streaming from the slot's consistent point afterwards neither
//! misses nor repeats a change.
//!
//! How (see the modules for details):
//! * `workers` source sessions each run `BEGIN ISOLATION LEVEL REPEATABLE
//!   READ READ ONLY; SET TRANSACTION SNAPSHOT '<id>'`, and pull work units
//!   from one queue: a whole small table, or one ctid range of a large heap
//!   (`COPY (SELECT cols FROM ONLY t WHERE ctid >= '(a,0)' AND ctid <
//!   '(b,0)') TO STDOUT`, a TID range scan on PostgreSQL 14+). Largest
//!   tables go first so the tail of the copy stays parallel.
//! * COPY data is never parsed: CopyData messages are gathered into
//!   256 KiB blocks and the same block (reference-counted, not copied) goes
//!   into a bounded channel per target, whose writer task feeds
//!   `COPY t (cols) FROM STDIN`. A slow target fills its channel and so
//!   throttles the reader; memory stays at about
//!   `workers × targets × 5 blocks`.
//! * Binary format whenever the bytes mean the same on both servers
//!   (`plan`), text format otherwise; rows are counted by the targets'
//!   COPY command tags.
//! * Progress and resume through `pgrelay.table_sync` on each target
//!   (`target`): tables `ready` for the pipeline are skipped, others are
//!   marked `copying`, emptied, copied chunk by chunk (each chunk its own
//!   transaction), then marked `ready` at the snapshot's LSN.
//!
//! Metrics (the `metrics` facade; the binary installs the recorder):
//! `pgrelay_copy_bytes_total{pipeline,table}` (COPY bytes read from the
//! source), `pgrelay_copy_rows_total{pipeline,table}` (rows committed on the
//! targets, counted once however many targets),
//! `pgrelay_copy_chunks_total{pipeline}`,
//! `pgrelay_copy_tables_pending{pipeline}` (tables not yet `ready`).
//!
//! Invariants: a table is `ready` on a target only when all its rows as of
//! the snapshot are committed there; an error or a shutdown leaves no
//! partially written chunk (its transaction aborts) and never marks a table
//! `ready`; no password appears in an error or log line.
//!
//! PostgreSQL docs: "COPY" (sql-copy), "SET TRANSACTION" (exported
//! snapshots), "Streaming Replication Protocol" (CREATE_REPLICATION_SLOT …
//! EXPORT_SNAPSHOT), "Logical Replication: Initial Snapshot"
//! (logical-replication-architecture).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod plan;
mod target;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use pgrelay_source::Config;
use pgrelay_types::Lsn;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::Client;

pub use error::CopyError;
pub use plan::{estimate, TableEstimate};

use plan::{qualified, quote_ident, SourceTable};

/// One table to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// Schema name, unquoted.
    pub schema: String,
    /// Table name, unquoted. A partitioned table is copied leaf by leaf
    /// into the same-named table on the target, which routes the rows.
    pub name: String,
    /// Non-generated columns, in source order, unquoted. Targets must have
    /// columns of these names.
    pub columns: Vec<String>,
}

/// One destination database.
#[derive(Debug, Clone)]
pub struct CopyTarget {
    /// Name used in logs, events and errors.
    pub name: String,
    /// How to connect (the password never appears in errors or logs).
    pub config: Config,
}

/// The snapshot the copy reads: exported by CREATE_REPLICATION_SLOT on a
/// replication connection that must stay open (and idle) until
/// [`copy_tables`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    /// Exported snapshot id (`00000003-00000002-1`).
    pub snapshot: String,
    /// The slot's consistent point: the snapshot shows exactly the changes
    /// committed before it. Recorded as `sync_lsn` of every copied table.
    pub lsn: Lsn,
}

/// Tuning of [`copy_tables`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Pipeline name: the key of this copy's rows in `pgrelay.table_sync`.
    pub pipeline: String,
    /// Parallel source sessions (each with one session per target).
    pub workers: usize,
    /// Heaps larger than this many pages are split into ctid ranges of
    /// this many pages, copied in parallel.
    pub chunk_pages: u64,
    /// `SET session_replication_role = replica` on target sessions: no
    /// triggers and no foreign-key checks while copying. Needs a superuser
    /// (or, on PostgreSQL 15+, `GRANT SET ON PARAMETER`).
    pub session_replication_role_replica: bool,
}

impl CopyOptions {
    /// Defaults for `pipeline`: 4 workers, 8192-page (64 MiB) chunks,
    /// replica role on.
    pub fn new(pipeline: impl Into<String>) -> Self {
        CopyOptions {
            pipeline: pipeline.into(),
            workers: 4,
            chunk_pages: 8192,
            session_replication_role_replica: true,
        }
    }
}

/// What the copy is doing; sent on a bounded channel, for progress bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// The first chunk of a table started.
    TableStarted {
        /// `schema.table`.
        table: String,
        /// Work units the table was split into.
        chunks: usize,
        /// Targets the table is copied to (the others have it `ready`).
        targets: Vec<String>,
    },
    /// Progress within a table, cumulative. `bytes` counts COPY data read
    /// from the source so far; `rows` counts rows of committed chunks.
    /// Dropped, not waited for, when the channel is full.
    Progress {
        /// `schema.table`.
        table: String,
        /// Rows committed on the targets so far.
        rows: u64,
        /// COPY bytes read from the source so far.
        bytes: u64,
    },
    /// The table is `ready` on every target it was copied to.
    TableDone {
        /// `schema.table`.
        table: String,
        /// Rows copied (as counted by each target's COPY).
        rows: u64,
        /// COPY bytes read from the source.
        bytes: u64,
        /// From the first chunk's start to `ready`.
        elapsed: Duration,
    },
}

/// Wire format a table was copied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// `FORMAT binary`: every type has binary I/O and embeds no
    /// server-specific OID.
    Binary,
    /// `FORMAT text`, with DateStyle/IntervalStyle/extra_float_digits
    /// pinned on both ends.
    Text,
}

/// The outcome for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Rows copied (0 when every target already had the table `ready`).
    pub rows: u64,
    /// COPY bytes read from the source.
    pub bytes: u64,
    /// Work units (ctid ranges or whole heaps).
    pub chunks: usize,
    /// Format used.
    pub format: CopyFormat,
    /// Targets that received the table.
    pub copied_to: Vec<String>,
    /// Targets that had it `ready` already and were left alone.
    pub skipped_on: Vec<String>,
    /// Time from the first chunk's start to `ready` (zero if skipped).
    pub elapsed: Duration,
}

/// The outcome of [`copy_tables`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// One entry per requested table, in request order.
    pub tables: Vec<TableReport>,
    /// Rows copied, all tables.
    pub rows: u64,
    /// COPY bytes read from the source, all tables.
    pub bytes: u64,
    /// Wall time of the whole call.
    pub elapsed: Duration,
}

/// Size of the blocks handed to target writers.
const BLOCK: usize = 256 * 1024;
/// Blocks in flight per target per worker; a slower target makes the
/// reader wait once its channel is full.
const BLOCKS_IN_FLIGHT: usize = 4;
/// How often (in COPY bytes) a worker reports progress within a chunk.
const PROGRESS_EVERY: u64 = 32 * 1024 * 1024;

/// Copies `tables` from `source` as of `snapshot` into every target, and
/// records them `ready` at `snapshot.lsn` in each target's
/// `pgrelay.table_sync`. Tables already `ready` for `options.pipeline` on a
/// target are skipped there. Completion of `shutdown` stops the copy:
/// chunks in flight are rolled back and [`CopyError::Interrupted`] is
/// returned. Cancel safety: dropping the future has the same effect.
pub async fn copy_tables(
    source: &Config,
    snapshot: &SnapshotSpec,
    targets: &[CopyTarget],
    tables: &[TableCopy],
    options: &CopyOptions,
    events: mpsc::Sender<CopyEvent>,
    shutdown: impl Future<Output = ()>,
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    validate(snapshot, targets, tables, options)?;
    let run = run(source, snapshot, targets, tables, options, events, started);
    tokio::select! {
        r = run => r,
        () = shutdown => {
            tracing::info!("initial copy interrupted by shutdown");
            Err(CopyError::Interrupted)
        }
    }
}

fn validate(
    snapshot: &SnapshotSpec,
    targets: &[CopyTarget],
    tables: &[TableCopy],
    options: &CopyOptions,
) -> Result<(), CopyError> {
    if snapshot.snapshot.is_empty()
        || !snapshot
            .snapshot
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(CopyError::Invalid(format!(
            "snapshot id {:?} is not an exported snapshot id (like 00000003-0000001B-1)",
            snapshot.snapshot
        )));
    }
    if options.workers == 0 {
        return Err(CopyError::Invalid("copy workers must be at least 1".into()));
    }
    if options.chunk_pages == 0 {
        return Err(CopyError::Invalid(
            "chunk size must be at least 1 page".into(),
        ));
    }
    if options.pipeline.is_empty() {
        return Err(CopyError::Invalid("the pipeline name is empty".into()));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = tables
        .iter()
        .find(|t| !seen.insert((t.schema.as_str(), t.name.as_str())))
    {
        return Err(CopyError::Invalid(format!(
            "table {}.{} is listed twice",
            t.schema, t.name
        )));
    }
    let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(CopyError::Invalid(
            "two copy targets have the same name".into(),
        ));
    }
    Ok(())
}

/// Per-table state shared by the workers.
struct TableRun {
    table: TableCopy,
    display: String,
    /// Indexes into the targets that need this table.
    targets: Vec<usize>,
    binary: bool,
    chunks: usize,
    remaining: AtomicUsize,
    rows: AtomicU64,
    bytes: AtomicU64,
    started: AtomicBool,
    start: Mutex<Option<Instant>>,
    elapsed: Mutex<Duration>,
}

/// One unit of work: a whole heap, or one page range of it.
struct Unit {
    table: usize,
    copy_out: String,
}

struct Shared {
    tables: Vec<TableRun>,
    units: Vec<Unit>,
    next: AtomicUsize,
    targets: Vec<CopyTarget>,
    pipeline: String,
    lsn: Lsn,
    replica_role: bool,
    events: mpsc::Sender<CopyEvent>,
}

async fn run(
    source: &Config,
    snapshot: &SnapshotSpec,
    targets: &[CopyTarget],
    tables: &[TableCopy],
    options: &CopyOptions,
    events: mpsc::Sender<CopyEvent>,
    started: Instant,
) -> Result<CopyReport, CopyError> {
    // Plan on the first worker's session: it also proves the snapshot is
    // still importable before any target is touched.
    let first_source = open_source(source, &snapshot.snapshot).await?;
    let mut planned: Vec<SourceTable> = Vec::with_capacity(tables.len());
    for t in tables {
        planned.push(plan::plan_table(&first_source, t).await?);
    }
    // A partition listed with one of its ancestors would be copied twice.
    for (t, p) in tables.iter().zip(&planned) {
        if let Some((s, n)) = p.ancestors.iter().find(|(s, n)| {
            tables
                .iter()
                .any(|other| &other.schema == s && &other.name == n)
        }) {
            return Err(CopyError::Invalid(format!(
                "{}.{} is a partition of {s}.{n}, which is also in the table list; list only \
                 the partitioned table (its partitions are copied with it)",
                t.schema, t.name
            )));
        }
    }

    // Inspect every target, then mark and empty what it needs.
    let mut needs: Vec<Vec<bool>> = vec![Vec::new(); tables.len()];
    let mut binary: Vec<bool> = planned.iter().map(|p| p.binary_ok).collect();
    for target in targets {
        let mut control = connect_target(target, options.session_replication_role_replica).await?;
        target::ensure_meta(&control, &target.name).await?;
        let states = target::inspect(&control, &target.name, &options.pipeline, tables).await?;
        let mut begin = Vec::new();
        for (i, st) in states.iter().enumerate() {
            needs[i].push(!st.ready);
            if st.ready {
                continue;
            }
            if st.column_types != planned[i].column_types && binary[i] {
                tracing::info!(
                    table = %format!("{}.{}", tables[i].schema, tables[i].name),
                    target = %target.name,
                    "column types differ between source and target; copying in text format"
                );
                binary[i] = false;
            }
            begin.push((&tables[i], st.partitioned));
        }
        target::begin_tables(&mut control, &target.name, &options.pipeline, &begin).await?;
    }

    // Work units, largest tables first.
    let mut order: Vec<usize> = (0..tables.len()).collect();
    let pages = |i: usize| planned[i].heaps.iter().map(|h| h.pages).sum::<u64>();
    order.sort_by_key(|&i| std::cmp::Reverse(pages(i)));
    let mut runs = Vec::with_capacity(tables.len());
    let mut units = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let table_targets: Vec<usize> = (0..targets.len()).filter(|&k| needs[i][k]).collect();
        runs.push(TableRun {
            table: t.clone(),
            display: format!("{}.{}", t.schema, t.name),
            targets: table_targets,
            binary: binary[i],
            chunks: 0,
            remaining: AtomicUsize::new(0),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: AtomicBool::new(false),
            start: Mutex::new(None),
            elapsed: Mutex::new(Duration::ZERO),
        });
    }
    for &i in &order {
        if runs[i].targets.is_empty() {
            continue;
        }
        let before = units.len();
        for sql in copy_out_statements(&tables[i], &planned[i], runs[i].binary, options.chunk_pages)
        {
            units.push(Unit {
                table: i,
                copy_out: sql,
            });
        }
        runs[i].chunks = units.len() - before;
        runs[i].remaining.store(runs[i].chunks, Ordering::SeqCst);
    }
    let pending = runs.iter().filter(|r| !r.targets.is_empty()).count();
    metrics::gauge!("pgrelay_copy_tables_pending", "pipeline" => options.pipeline.clone())
        .set(pending as f64);
    tracing::info!(
        tables = tables.len(),
        units = units.len(),
        targets = targets.len(),
        lsn = %snapshot.lsn,
        "starting initial copy"
    );

    let shared = Arc::new(Shared {
        tables: runs,
        units,
        next: AtomicUsize::new(0),
        targets: targets.to_vec(),
        pipeline: options.pipeline.clone(),
        lsn: snapshot.lsn,
        replica_role: options.session_replication_role_replica,
        events,
    });
    let workers = options.workers.min(shared.units.len());
    let mut set = JoinSet::new();
    let mut first_source = Some(first_source);
    for w in 0..workers {
        let shared = shared.clone();
        let source = source.clone();
        let snap = snapshot.snapshot.clone();
        let existing = first_source.take();
        set.spawn(async move {
            let first = existing.is_some();
            let worker = match existing {
                Some(c) => Worker::new(w, c, shared).await,
                None => match open_source(&source, &snap).await {
                    Ok(c) => Worker::new(w, c, shared).await,
                    Err(e) => Err(e),
                },
            };
            match worker {
                Ok(worker) => worker.run().await,
                // Fewer sessions than asked for (max_connections, a
                // connection limit) only slows the copy down: the first
                // worker's sessions prove the servers are reachable.
                Err(e) if !first && e.is_transient() => {
                    tracing::warn!(worker = w, error = %e, "copy worker could not start; continuing with fewer workers");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        });
    }
    drop(first_source);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            // Dropping the set aborts the other workers; their chunks roll
            // back.
            Ok(Err(e)) => return Err(e),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    let mut report = CopyReport {
        tables: Vec::with_capacity(tables.len()),
        rows: 0,
        bytes: 0,
        elapsed: started.elapsed(),
    };
    for (i, r) in shared.tables.iter().enumerate() {
        let rows = r.rows.load(Ordering::SeqCst);
        let bytes = r.bytes.load(Ordering::SeqCst);
        report.rows += rows;
        report.bytes += bytes;
        report.tables.push(TableReport {
            schema: r.table.schema.clone(),
            name: r.table.name.clone(),
            rows,
            bytes,
            chunks: r.chunks,
            format: if r.binary {
                CopyFormat::Binary
            } else {
                CopyFormat::Text
            },
            copied_to: r.targets.iter().map(|&k| targets[k].name.clone()).collect(),
            skipped_on: (0..targets.len())
                .filter(|&k| !needs[i][k])
                .map(|k| targets[k].name.clone())
                .collect(),
            elapsed: *r.elapsed.lock().unwrap_or_else(|e| e.into_inner()),
        });
    }
    tracing::info!(
        rows = report.rows,
        bytes = report.bytes,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "initial copy done"
    );
    Ok(report)
}

/// The COPY TO statements of one table: one per heap, or one per ctid
/// range for heaps larger than `chunk_pages`.
fn copy_out_statements(
    table: &TableCopy,
    planned: &SourceTable,
    binary: bool,
    chunk_pages: u64,
) -> Vec<String> {
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
    let cols = cols.join(", ");
    let format = if binary { " (FORMAT binary)" } else { "" };
    let mut out = Vec::new();
    for heap in &planned.heaps {
        if heap.pages <= chunk_pages {
            out.push(format!("COPY {} ({cols}) TO STDOUT{format}", heap.quoted));
            continue;
        }
        let mut start = 0;
        while start < heap.pages {
            let end = start + chunk_pages;
            // The last range is open-ended: pages added after planning
            // are read too.
            let upper = if end >= heap.pages {
                String::new()
            } else {
                format!(" AND ctid < '({end},0)'::tid")
            };
            out.push(format!(
                "COPY (SELECT {cols} FROM ONLY {} WHERE ctid >= '({start},0)'::tid{upper}) \
                 TO STDOUT{format}",
                heap.quoted
            ));
            start = end;
        }
    }
    if planned.heaps.is_empty() {
        // A partitioned table without leaves: nothing to read, but it still
        // goes through the states so it ends `ready`.
        out.push(format!(
            "COPY (SELECT {cols} FROM {} WHERE false) TO STDOUT{format}",
            qualified(&table.schema, &table.name)
        ));
    }
    out
}

/// A source session inside the exported snapshot.
async fn open_source(source: &Config, snapshot: &str) -> Result<Client, CopyError> {
    let client = pgrelay_source::connect_sql(source)
        .await
        .map_err(|e| CopyError::Source {
            step: "connect to the source".into(),
            source: Box::new(e),
        })?;
    client
        // row_security = off: a table whose policies would hide rows from
        // this role fails loudly instead of being copied in part (as
        // pg_dump does).
        .batch_execute(&format!(
            "{}; SET idle_in_transaction_session_timeout = 0; SET row_security = off",
            target::PIN_TEXT_IO
        ))
        .await
        .map_err(|e| CopyError::source("set up the session", e))?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| CopyError::source("begin the snapshot transaction", e))?;
    // Validated as hex digits and dashes, so it needs no escaping.
    client
        .batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .await
        .map_err(|e| {
            CopyError::source(
                "import the exported snapshot (the replication connection that created the slot \
                 must stay open and idle until the copy ends)",
                e,
            )
        })?;
    Ok(client)
}

async fn connect_target(target: &CopyTarget, replica_role: bool) -> Result<Client, CopyError> {
    let client = pgrelay_source::connect_sql(&target.config)
        .await
        .map_err(|e| CopyError::Target {
            target: target.name.clone(),
            step: format!("connect to target {}", target.name),
            source: Box::new(e),
        })?;
    client
        .batch_execute(&target::session_setup(replica_role))
        .await
        .map_err(|e| {
            CopyError::target(
                &target.name,
                if replica_role {
                    "set up the session (session_replication_role = replica needs a superuser, \
                     or GRANT SET ON PARAMETER session_replication_role on PostgreSQL 15+)"
                } else {
                    "set up the session"
                },
                e,
            )
        })?;
    Ok(client)
}

/// What a reader hands a target writer.
enum Block {
    Data(Bytes),
    /// All data sent: commit the chunk. A channel closed without `End`
    /// aborts it.
    End,
}

/// Why reading a chunk stopped early.
enum ReadError {
    Source(CopyError),
    /// A target writer ended before the data did.
    WriterGone,
}

struct Worker {
    id: usize,
    source: Client,
    /// One session per target that has work (None for the others).
    targets: Vec<Option<Client>>,
    shared: Arc<Shared>,
}

impl Worker {
    async fn new(id: usize, source: Client, shared: Arc<Shared>) -> Result<Worker, CopyError> {
        let mut targets = Vec::with_capacity(shared.targets.len());
        for (k, t) in shared.targets.iter().enumerate() {
            let used = shared.tables.iter().any(|r| r.targets.contains(&k));
            targets.push(if used {
                Some(connect_target(t, shared.replica_role).await?)
            } else {
                None
            });
        }
        Ok(Worker {
            id,
            source,
            targets,
            shared,
        })
    }

    async fn run(mut self) -> Result<(), CopyError> {
        loop {
            let i = self.shared.next.fetch_add(1, Ordering::SeqCst);
            if i >= self.shared.units.len() {
                return Ok(());
            }
            self.copy_unit(i).await?;
        }
    }

    async fn copy_unit(&mut self, unit: usize) -> Result<(), CopyError> {
        let shared = self.shared.clone();
        let u = &shared.units[unit];
        let t = &shared.tables[u.table];
        if !t.started.swap(true, Ordering::SeqCst) {
            *t.start.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            let _ = shared
                .events
                .send(CopyEvent::TableStarted {
                    table: t.display.clone(),
                    chunks: t.chunks,
                    targets: t
                        .targets
                        .iter()
                        .map(|&k| shared.targets[k].name.clone())
                        .collect(),
                })
                .await;
        }
        tracing::debug!(worker = self.id, table = %t.display, sql = %u.copy_out, "copying chunk");

        let copy_in = target::copy_in_sql(&t.table, t.binary);
        let mut writers = JoinSet::new();
        let mut senders = Vec::with_capacity(t.targets.len());
        for &k in &t.targets {
            let name = &shared.targets[k].name;
            let client = self.targets[k]
                .as_ref()
                .expect("session for a target with work");
            let sink = client.copy_in::<_, Bytes>(&copy_in).await.map_err(|e| {
                CopyError::target(name, format!("start COPY into {}", t.display), e)
            })?;
            let (tx, rx) = mpsc::channel(BLOCKS_IN_FLIGHT);
            senders.push(tx);
            writers.spawn(write_target(k, sink, rx));
        }

        match self.read_chunk(&u.copy_out, t, &senders).await {
            Ok(()) => {
                for tx in &senders {
                    let _ = tx.send(Block::End).await;
                }
            }
            Err(ReadError::Source(e)) => {
                // Closing the channels without `End` aborts every target's
                // COPY: nothing of this chunk is committed anywhere.
                drop(senders);
                writers.abort_all();
                return Err(e);
            }
            // A writer failed; its error is collected below.
            Err(ReadError::WriterGone) => {}
        }
        drop(senders);
        let mut written: Vec<(usize, u64)> = Vec::with_capacity(t.targets.len());
        let mut failure = None;
        while let Some(joined) = writers.join_next().await {
            match joined {
                Ok(Ok(w)) => written.push(w),
                Ok(Err((k, Some(e)))) => {
                    failure.get_or_insert_with(|| {
                        CopyError::target(
                            &shared.targets[k].name,
                            format!("COPY into {}", t.display),
                            e,
                        )
                    });
                }
                // Aborted because another target failed.
                Ok(Err((_, None))) => {}
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        written.sort_unstable();
        let rows = written.first().map(|w| w.1).unwrap_or(0);
        if let Some(&(k, got)) = written.iter().find(|w| w.1 != rows) {
            return Err(CopyError::RowCountMismatch {
                table: t.display.clone(),
                target: shared.targets[k].name.clone(),
                expected: rows,
                got,
            });
        }
        let total_rows = t.rows.fetch_add(rows, Ordering::SeqCst) + rows;
        metrics::counter!(
            "pgrelay_copy_rows_total",
            "pipeline" => shared.pipeline.clone(),
            "table" => t.display.clone()
        )
        .increment(rows);
        metrics::counter!("pgrelay_copy_chunks_total", "pipeline" => shared.pipeline.clone())
            .increment(1);
        let _ = shared.events.try_send(CopyEvent::Progress {
            table: t.display.clone(),
            rows: total_rows,
            bytes: t.bytes.load(Ordering::SeqCst),
        });
        if t.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.finish_table(t).await?;
        }
        Ok(())
    }

    /// Streams one COPY TO into the writers' channels, in blocks.
    async fn read_chunk(
        &self,
        sql: &str,
        t: &TableRun,
        senders: &[mpsc::Sender<Block>],
    ) -> Result<(), ReadError> {
        let step = || format!("COPY out of {}", t.display);
        let stream = self
            .source
            .copy_out(sql)
            .await
            .map_err(|e| ReadError::Source(CopyError::source(step(), e)))?;
        let mut stream = pin!(stream);
        let mut buf = BytesMut::with_capacity(BLOCK + 64 * 1024);
        let mut since_progress = 0u64;
        while let Some(data) = stream.next().await {
            let data = data.map_err(|e| ReadError::Source(CopyError::source(step(), e)))?;
            let block = if buf.is_empty() && data.len() >= BLOCK {
                data
            } else {
                buf.extend_from_slice(&data);
                if buf.len() < BLOCK {
                    continue;
                }
                std::mem::replace(&mut buf, BytesMut::with_capacity(BLOCK + 64 * 1024)).freeze()
            };
            since_progress += block.len() as u64;
            self.dispatch(block, t, senders).await?;
            if since_progress >= PROGRESS_EVERY {
                since_progress = 0;
                let _ = self.shared.events.try_send(CopyEvent::Progress {
                    table: t.display.clone(),
                    rows: t.rows.load(Ordering::SeqCst),
                    bytes: t.bytes.load(Ordering::SeqCst),
                });
            }
        }
        if !buf.is_empty() {
            self.dispatch(buf.freeze(), t, senders).await?;
        }
        Ok(())
    }

    async fn dispatch(
        &self,
        block: Bytes,
        t: &TableRun,
        senders: &[mpsc::Sender<Block>],
    ) -> Result<(), ReadError> {
        t.bytes.fetch_add(block.len() as u64, Ordering::Relaxed);
        metrics::counter!(
            "pgrelay_copy_bytes_total",
            "pipeline" => self.shared.pipeline.clone(),
            "table" => t.display.clone()
        )
        .increment(block.len() as u64);
        for tx in senders {
            if tx.send(Block::Data(block.clone())).await.is_err() {
                // The writer ended early: it failed, and the caller's join
                // reports why. Stop reading.
                return Err(ReadError::WriterGone);
            }
        }
        Ok(())
    }

    async fn finish_table(&self, t: &TableRun) -> Result<(), CopyError> {
        let rows = t.rows.load(Ordering::SeqCst);
        for &k in &t.targets {
            let client = self.targets[k]
                .as_ref()
                .expect("session for a target with work");
            target::finish_table(
                client,
                &self.shared.targets[k].name,
                &self.shared.pipeline,
                &t.table,
                self.shared.lsn,
                rows,
            )
            .await?;
        }
        let elapsed = t
            .start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|s| s.elapsed())
            .unwrap_or_default();
        *t.elapsed.lock().unwrap_or_else(|e| e.into_inner()) = elapsed;
        metrics::gauge!("pgrelay_copy_tables_pending", "pipeline" => self.shared.pipeline.clone())
            .decrement(1.0);
        let bytes = t.bytes.load(Ordering::SeqCst);
        tracing::info!(table = %t.display, rows, bytes, elapsed_ms = elapsed.as_millis() as u64, lsn = %self.shared.lsn, "table copied");
        let _ = self
            .shared
            .events
            .send(CopyEvent::TableDone {
                table: t.display.clone(),
                rows,
                bytes,
                elapsed,
            })
            .await;
        Ok(())
    }
}

/// Feeds one target's COPY FROM from its channel; commits on `End`.
/// Returns the rows the target's command tag reports, or the target index
/// with the error (`None`: the reader went away, the COPY was aborted).
async fn write_target(
    k: usize,
    sink: tokio_postgres::CopyInSink<Bytes>,
    mut rx: mpsc::Receiver<Block>,
) -> Result<(usize, u64), (usize, Option<tokio_postgres::Error>)> {
    let mut sink = pin!(sink);
    loop {
        match rx.recv().await {
            Some(Block::Data(b)) => sink.send(b).await.map_err(|e| (k, Some(e)))?,
            Some(Block::End) => {
                return sink
                    .as_mut()
                    .finish()
                    .await
                    .map(|n| (k, n))
                    .map_err(|e| (k, Some(e)))
            }
            None => return Err((k, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableCopy {
        TableCopy {
            schema: "public".into(),
            name: name.into(),
            columns: vec!["id".into()],
        }
    }

    #[test]
    fn validate_refuses_bad_requests() {
        let snap = SnapshotSpec {
            snapshot: "00000003-0000001B-1".into(),
            lsn: Lsn(1),
        };
        let opts = CopyOptions::new("p");
        let tables = [table("a"), table("b")];
        assert!(validate(&snap, &[], &tables, &opts).is_ok());
        let twice = [table("a"), table("a")];
        assert!(validate(&snap, &[], &twice, &opts)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let injected = SnapshotSpec {
            snapshot: "1'; DROP TABLE x; --".into(),
            lsn: Lsn(1),
        };
        assert!(matches!(
            validate(&injected, &[], &tables, &opts),
            Err(CopyError::Invalid(_))
        ));
        for bad in [
            CopyOptions {
                workers: 0,
                ..opts.clone()
            },
            CopyOptions {
                chunk_pages: 0,
                ..opts.clone()
            },
            CopyOptions::new(""),
        ] {
            assert!(validate(&snap, &[], &tables, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunk_statements_cover_the_heap() {
        let planned = SourceTable {
            heaps: vec![plan::Heap {
                quoted: "\"public\".\"t\"".into(),
                pages: 25,
            }],
            column_types: vec!["integer".into()],
            binary_ok: true,
            ancestors: vec![],
        };
        let stmts = copy_out_statements(&table("t"), &planned, true, 10);
        assert_eq!(
            stmts,
            [
                "COPY (SELECT \"id\" FROM ONLY \"public\".\"t\" WHERE ctid >= '(0,0)'::tid AND ctid < '(10,0)'::tid) TO STDOUT (FORMAT binary)",
                "COPY (SELECT \"id\" FROM ONLY \"public\".\"t\" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid) TO STDOUT (FORMAT binary)",
                "COPY (SELECT \"id\" FROM ONLY \"public\".\"t\" WHERE ctid >= '(20,0)'::tid) TO STDOUT (FORMAT binary)",
            ]
        );
        let small = copy_out_statements(&table("t"), &planned, false, 25);
        assert_eq!(small, ["COPY \"public\".\"t\" (\"id\") TO STDOUT"]);
    }
}
