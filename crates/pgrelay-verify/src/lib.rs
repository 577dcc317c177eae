//! `pgrelay verify`: are the target's tables identical to the source's?
//!
//! Per table, a row count and an order-independent checksum over every row
//! — the exact numeric sum of a 64-bit row hash built from per-column
//! hashes (see `plan::pair`) — computed in key ranges (see [`plan`]) on
//! both servers at once: `parallel` connections per side; each source
//! worker hands its item to the target workers as soon as it holds its
//! snapshot, so the two sides scan the same item at the same time. A table
//! whose key is one collation-free column is read in ONE sequential scan
//! per side that sorts rows into the ranges (`width_bucket`) — on a side
//! where the table is large, as `parallel` TID-range slices of the heap
//! read at once on extra connections sharing one exported snapshot, since
//! the planner does not parallelize that query — and other tables in one
//! index range scan per range. A range differs when its count or
//! sum differs; the first [`MAX_REPORTED_RANGES`] differing ranges of a
//! table are reported with their key bounds.
//!
//! Consistency while a pipeline streams: each source range is read in its
//! own REPEATABLE READ READ ONLY transaction whose first statement reads
//! `pg_current_wal_lsn()`; that statement takes the snapshot before it
//! reads the LSN, so every transaction the snapshot sees committed below
//! that LSN. With [`VerifyOptions::pipeline`] set, the target range is read
//! only once the target has applied up to that LSN — its
//! `pgrelay.progress.end_lsn` for the pipeline, or the source slot of the
//! same name confirmed past it (the slot is confirmed only up to what every
//! target applied; this covers WAL the pipeline has nothing to apply for,
//! such as other databases' writes). The target then holds at least what the
//! source snapshot saw, but may hold later changes too, so a differing range
//! is read again (fresh snapshot, fresh LSN) up to [`VerifyOptions::retries`]
//! times with growing pauses; only differences that persist are reported.
//! On a quiescent source (after a switchover fence, with the targets caught
//! up) the first pass is exact and retries never change a verdict.
//!
//! Row text is made comparable across servers by fixing every setting that
//! changes a type's text output (DateStyle, IntervalStyle, TimeZone,
//! extra_float_digits, bytea_output, lc_monetary) on every connection.
//!
//! PostgreSQL docs: "Transaction Isolation" (transaction-iso, Repeatable
//! Read), "System Administration Functions" (pg_current_wal_lsn,
//! pg_export_snapshot), "SET TRANSACTION" (SNAPSHOT),
//! "pg_replication_slots", "Aggregate Functions" (sum over bigint is
//! numeric, exact), "Mathematical Functions" (width_bucket with a
//! thresholds array), "Hash Indexes"/"Interfacing Extensions to Indexes"
//! (hash support function 2, the extended hashes).

mod error;
mod plan;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use pgrelay_types::Lsn;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Client;

pub use error::{Side, VerifyError};
use plan::SideSql;

/// At most this many differing ranges are reported per table.
pub const MAX_REPORTED_RANGES: usize = 10;
/// How long one range waits for the target to apply up to its source LSN.
pub const LAG_WAIT: Duration = Duration::from_secs(600);
/// How often the applied position of the pipeline is polled.
const POLL: Duration = Duration::from_millis(100);

/// Settings that change text output, set identically on both sides.
const SESSION_SETUP: &str = "SET datestyle = 'ISO, MDY'; SET intervalstyle = 'postgres'; \
    SET timezone = 'UTC'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
    SET lc_monetary = 'C'";

/// How to verify.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Connections per side (each side runs this many range scans at once).
    pub parallel: usize,
    /// Target rows per key range.
    pub range_rows: u64,
    /// Re-checks of differing ranges while a streamer catches up.
    pub retries: u32,
    /// Pipeline (slot) name: wait for the target to apply each snapshot's
    /// source LSN before reading it.
    pub pipeline: Option<String>,
    /// Read every source range in this exported snapshot (`SET
    /// TRANSACTION SNAPSHOT`) instead of one of its own — for a caller that
    /// has frozen the target at exactly that snapshot's position (pgrelay's
    /// verify pauses the streamer there), which makes one pass exact.
    pub snapshot: Option<String>,
    /// A table checked in one bucket scan (see the module docs) that is
    /// larger than this many heap blocks on a side is read there in
    /// `parallel` slices of its heap at once, on connections of their own,
    /// all in one snapshot.
    pub slice_above_blocks: u64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            parallel: 4,
            range_rows: 250_000,
            retries: 3,
            pipeline: None,
            snapshot: None,
            slice_above_blocks: 16_384,
        }
    }
}

/// A key range `[lo, hi)` of a table and what each side holds in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Key column names (empty: the table has no usable key, or is checked
    /// as one range; the range is the whole table).
    pub key: Vec<String>,
    /// Inclusive lower bound, one text value per key column (`None`: from
    /// the smallest key).
    pub lo: Option<Vec<String>>,
    /// Exclusive upper bound (`None`: to the largest key).
    pub hi: Option<Vec<String>>,
    pub source_rows: u64,
    pub target_rows: u64,
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo.is_none() && self.hi.is_none() {
            f.write_str("whole table")?;
        } else {
            let tuple = |v: &Vec<String>| {
                if v.len() == 1 {
                    v[0].clone()
                } else {
                    format!("({})", v.join(", "))
                }
            };
            let cols = if self.key.len() == 1 {
                self.key[0].clone()
            } else {
                format!("({})", self.key.join(", "))
            };
            let lo = self.lo.as_ref().map_or("-inf".to_string(), tuple);
            let hi = self.hi.as_ref().map_or("+inf".to_string(), tuple);
            write!(f, "{cols} in [{lo}, {hi})")?;
        }
        write!(
            f,
            ": {} source rows, {} target rows",
            self.source_rows, self.target_rows
        )
    }
}

/// The verdict for one table.
#[derive(Clone, Debug)]
pub struct TableResult {
    pub schema: String,
    pub name: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub equal: bool,
    /// The first [`MAX_REPORTED_RANGES`] ranges that still differed after
    /// the retries, in key order.
    pub mismatched_ranges: Vec<KeyRange>,
    /// How many ranges differed in all (may exceed the list above).
    pub mismatched_range_count: usize,
    /// How many ranges the table was checked in.
    pub ranges: usize,
    /// Why the table could not be compared row by row (missing on the
    /// target, missing columns); `equal` is false then.
    pub problem: Option<String>,
    pub elapsed: Duration,
}

/// Verifies `tables` (schema, name) of `source` against `target`.
pub async fn verify_tables(
    source: &pgrelay_source::Config,
    target: &pgrelay_source::Config,
    tables: &[(String, String)],
    options: &VerifyOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<TableResult>, VerifyError> {
    tokio::select! {
        biased;
        _ = shutdown => Err(VerifyError::Interrupted),
        r = run(source, target, tables, options) => r,
    }
}

/// Count and hash sum of one range on one side.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Agg {
    count: i64,
    sum: String,
}

/// One table's plan.
struct TablePlan {
    schema: String,
    name: String,
    sql: Option<(SideSql, SideSql)>,
    key: Vec<String>,
    /// Split points; ranges = points + 1.
    points: Vec<Vec<String>>,
    problem: Option<String>,
    planning: Duration,
    /// Heap blocks on (source, target) at plan time; only read for tables
    /// checked by bucket scans.
    blocks: [u64; 2],
}

impl TablePlan {
    /// The heap slices one side reads a bucket scan of this table in.
    fn slices(&self, side: Side, options: &VerifyOptions) -> Vec<plan::BlockRange> {
        let blocks = match side {
            Side::Source => self.blocks[0],
            Side::Target => self.blocks[1],
        };
        let n = if blocks > options.slice_above_blocks {
            options.parallel.max(1)
        } else {
            1
        };
        plan::block_slices(blocks, n)
    }

    fn ranges(&self) -> usize {
        if self.sql.is_some() {
            self.points.len() + 1
        } else {
            0
        }
    }

    fn bounds(&self, r: usize) -> (Option<&Vec<String>>, Option<&Vec<String>>) {
        let lo = if r == 0 {
            None
        } else {
            Some(&self.points[r - 1])
        };
        (lo, self.points.get(r))
    }
}

async fn connect(config: &pgrelay_source::Config, side: Side) -> Result<Client, VerifyError> {
    let client = pgrelay_source::connect_sql(config)
        .await
        .map_err(|error| VerifyError::Sql {
            side,
            what: "connecting".into(),
            error,
        })?;
    client
        .batch_execute(SESSION_SETUP)
        .await
        .map_err(|e| VerifyError::sql(side, "setting up the session", e))?;
    Ok(client)
}

async fn run(
    source: &pgrelay_source::Config,
    target: &pgrelay_source::Config,
    tables: &[(String, String)],
    options: &VerifyOptions,
) -> Result<Vec<TableResult>, VerifyError> {
    let parallel = options.parallel.max(1);
    let (src, tgt) = tokio::try_join!(
        try_join_all((0..parallel).map(|_| connect(source, Side::Source))),
        try_join_all((0..parallel).map(|_| connect(target, Side::Target))),
    )?;
    let plans = plan_all(&src[0], &tgt[0], tables, options.range_rows).await?;

    // The applied position of the pipeline, polled on connections of its own.
    let (applied_tx, applied_rx) = watch::channel(Lsn::INVALID);
    let watcher = async {
        match &options.pipeline {
            Some(p) => {
                let (s, t) =
                    tokio::try_join!(connect(source, Side::Source), connect(target, Side::Target))?;
                watch_applied(&s, &t, p, &applied_tx).await
            }
            None => std::future::pending().await,
        }
    };
    let checks = check_all(&plans, [source, target], &src, &tgt, options, applied_rx);
    let (outcomes, spent) = tokio::select! {
        r = watcher => return Err(r.expect_err("the watcher only ends on an error")),
        r = checks => r?,
    };
    Ok(report(plans, outcomes, spent))
}

async fn plan_all(
    src: &Client,
    tgt: &Client,
    tables: &[(String, String)],
    range_rows: u64,
) -> Result<Vec<TablePlan>, VerifyError> {
    let (src_coll, tgt_coll) = tokio::try_join!(
        plan::default_collation(src, Side::Source),
        plan::default_collation(tgt, Side::Target)
    )?;
    let mut plans = Vec::with_capacity(tables.len());
    for (schema, name) in tables {
        let started = Instant::now();
        let (s, t) = tokio::try_join!(
            plan::load_table(src, Side::Source, &src_coll, schema, name),
            plan::load_table(tgt, Side::Target, &tgt_coll, schema, name),
        )?;
        let s = s.ok_or_else(|| VerifyError::NoSuchTable {
            schema: schema.clone(),
            name: name.clone(),
        })?;
        let mut p = TablePlan {
            schema: schema.clone(),
            name: name.clone(),
            sql: None,
            key: Vec::new(),
            points: Vec::new(),
            problem: None,
            planning: Duration::ZERO,
            blocks: [0, 0],
        };
        match t {
            None => {
                p.problem = Some(
                    "the table does not exist on the target; create it (pgrelay init copies the schema)"
                        .into(),
                )
            }
            Some(t) => match plan::pair(&s, &t) {
                Err(problem) => p.problem = Some(problem),
                Ok(pairing) => {
                    if let Some(why) = &pairing.unsplit_reason {
                        tracing::warn!(table = %s.qualified, "{why}");
                    }
                    let (points, source_blocks) =
                        plan::split_points(src, &s, &pairing.key, range_rows).await?;
                    p.points = points;
                    if pairing.source.bucketable && !p.points.is_empty() {
                        let target_blocks = plan::heap_blocks(tgt, Side::Target, t.oid).await?;
                        p.blocks = [source_blocks, target_blocks];
                    }
                    p.key = pairing.key;
                    p.sql = Some((pairing.source, pairing.target));
                }
            },
        }
        p.planning = started.elapsed();
        plans.push(p);
    }
    Ok(plans)
}

/// Publishes max(target progress end_lsn, source slot confirmed_flush_lsn)
/// of `pipeline` until an error.
async fn watch_applied(
    src: &Client,
    tgt: &Client,
    pipeline: &str,
    applied: &watch::Sender<Lsn>,
) -> Result<(), VerifyError> {
    let parse = |s: Option<String>| {
        s.and_then(|s| Lsn::from_str(&s).ok())
            .unwrap_or(Lsn::INVALID)
    };
    loop {
        let progress = tgt
            .query_opt(
                "SELECT p.end_lsn::text FROM pgrelay.progress p \
                 WHERE to_regclass('pgrelay.progress') IS NOT NULL AND p.pipeline = $1",
                &[&pipeline],
            )
            .await;
        let progress = match progress {
            Ok(r) => r.map(|r| parse(r.get(0))),
            // No pgrelay schema (yet): nothing applied.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
            Err(e) => {
                return Err(VerifyError::sql(
                    Side::Target,
                    "reading pgrelay.progress",
                    e,
                ))
            }
        };
        let slot = src
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&pipeline],
            )
            .await
            .map_err(|e| VerifyError::sql(Side::Source, "reading pg_replication_slots", e))?;
        if progress.is_none() && slot.is_none() {
            return Err(VerifyError::UnknownPipeline {
                pipeline: pipeline.to_string(),
            });
        }
        let slot = parse(slot.and_then(|r| r.get(0)));
        let now = progress.unwrap_or(Lsn::INVALID).max(slot);
        applied.send_if_modified(|v| {
            let newer = now > *v;
            if newer {
                *v = now;
            }
            newer
        });
        tokio::time::sleep(POLL).await;
    }
}

/// Both sides' aggregates of one range.
type Outcome = (Agg, Agg);
/// Per range: both sides' aggregates; per table: time spent checking it.
type Checked = (HashMap<(usize, usize), Outcome>, HashMap<usize, Duration>);

/// Checks every range, then re-checks the differing ones.
async fn check_all(
    plans: &[TablePlan],
    configs: [&pgrelay_source::Config; 2],
    src: &[Client],
    tgt: &[Client],
    options: &VerifyOptions,
    applied: watch::Receiver<Lsn>,
) -> Result<Checked, VerifyError> {
    // A split table whose key can be bucketed is read in one sequential
    // scan per side that sorts rows into its ranges (`bucket_query`):
    // cheaper than one index range scan per range. Re-checks read single
    // ranges.
    let work: Vec<Work> = plans
        .iter()
        .enumerate()
        .flat_map(|(t, p)| {
            let whole = p.ranges() > 1 && p.sql.as_ref().is_some_and(|(s, _)| s.bucketable);
            let items: Vec<Work> = if whole {
                vec![Work::Buckets(t)]
            } else {
                (0..p.ranges()).map(|r| Work::Range(t, r)).collect()
            };
            items
        })
        .collect();
    let ranges: usize = plans.iter().map(TablePlan::ranges).sum();
    tracing::info!(
        tables = plans.len(),
        ranges,
        scans = work.len(),
        "verifying"
    );
    let (mut outcomes, mut spent) =
        check_pass(plans, configs, src, tgt, options, &applied, work).await?;
    for attempt in 1..=options.retries {
        let mut differing: Vec<(usize, usize)> = outcomes
            .iter()
            .filter(|(_, (s, t))| s != t)
            .map(|(k, _)| *k)
            .collect();
        if differing.is_empty() {
            break;
        }
        differing.sort_unstable();
        let pause = Duration::from_millis(200) * 2u32.saturating_pow(attempt - 1).min(32);
        tracing::info!(
            attempt,
            ranges = differing.len(),
            pause_ms = pause.as_millis() as u64,
            "re-checking differing ranges"
        );
        tokio::time::sleep(pause).await;
        let differing = differing
            .into_iter()
            .map(|(t, r)| Work::Range(t, r))
            .collect();
        let (again, more) =
            check_pass(plans, configs, src, tgt, options, &applied, differing).await?;
        outcomes.extend(again);
        for (t, d) in more {
            *spent.entry(t).or_default() += d;
        }
    }
    Ok((outcomes, spent))
}

/// One pass over `work`: source workers read ranges in snapshots and hand
/// them (with their LSN) to target workers through a bounded queue.
async fn check_pass(
    plans: &[TablePlan],
    configs: [&pgrelay_source::Config; 2],
    src: &[Client],
    tgt: &[Client],
    options: &VerifyOptions,
    applied: &watch::Receiver<Lsn>,
    work: Vec<Work>,
) -> Result<Checked, VerifyError> {
    // Per table: when its first range started and its last one ended.
    let spans: Mutex<HashMap<usize, (Instant, Instant)>> = Mutex::new(HashMap::new());
    let queue = Mutex::new(VecDeque::from(work));
    // Each item reaches the target side as soon as its source snapshot
    // (and LSN) is taken, with a oneshot for the source's aggregates: the
    // two sides scan the same item at the same time.
    type SourceAggs = oneshot::Receiver<Vec<(usize, Agg)>>;
    let (tx, rx) = mpsc::channel::<(Work, Lsn, SourceAggs)>(src.len() * 2);
    let rx = tokio::sync::Mutex::new(rx);
    let results = Mutex::new(HashMap::new());
    let senders: Vec<_> = src.iter().map(|c| (c, tx.clone())).collect();
    drop(tx);
    let source_workers = senders.into_iter().map(|(client, tx)| {
        let (queue, spans) = (&queue, &spans);
        async move {
            // Connections of this worker's own for the other slices of a
            // sliced bucket scan, opened when first needed.
            let mut extras: Vec<Client> = Vec::new();
            loop {
                let Some(item) = queue.lock().expect("queue lock").pop_front() else {
                    return Ok::<_, VerifyError>(());
                };
                let now = Instant::now();
                spans
                    .lock()
                    .expect("spans lock")
                    .entry(item.table())
                    .or_insert((now, now));
                let plan = &plans[item.table()];
                let slices = item.slices(plan, Side::Source, options);
                let clients =
                    slice_clients(client, &mut extras, slices.len(), configs[0], Side::Source)
                        .await?;
                let lsn =
                    source_snapshot(&clients, plan, item, options.snapshot.as_deref()).await?;
                let (aggs_tx, aggs_rx) = oneshot::channel();
                if tx.send((item, lsn, aggs_rx)).await.is_err() {
                    return Ok(());
                }
                let aggs = source_read(&clients, plan, item, &slices).await?;
                // The target side gone means the pass is failing already.
                let _ = aggs_tx.send(aggs);
            }
        }
    });
    let target_workers = tgt.iter().map(|client| {
        let (rx, results, spans) = (&rx, &results, &spans);
        let mut applied = applied.clone();
        async move {
            let mut extras: Vec<Client> = Vec::new();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((item, lsn, saggs)) = next else {
                    return Ok::<_, VerifyError>(());
                };
                if let Some(pipeline) = &options.pipeline {
                    wait_applied(&mut applied, lsn, pipeline).await?;
                }
                let plan = &plans[item.table()];
                let slices = item.slices(plan, Side::Target, options);
                let clients =
                    slice_clients(client, &mut extras, slices.len(), configs[1], Side::Target)
                        .await?;
                let taggs = target_read(&clients, plan, item, &slices).await?;
                // A source worker that failed returns its error to the
                // join, which ends this worker too.
                let saggs = saggs.await.map_err(|_| VerifyError::Interrupted)?;
                {
                    let mut results = results.lock().expect("results lock");
                    for (r, (s, t)) in pair_aggs(item, plan.ranges(), saggs, taggs) {
                        results.insert((item.table(), r), (s, t));
                    }
                }
                if let Some(span) = spans.lock().expect("spans lock").get_mut(&item.table()) {
                    span.1 = Instant::now();
                }
            }
        }
    });
    tokio::try_join!(try_join_all(source_workers), try_join_all(target_workers))?;
    let spent = spans
        .into_inner()
        .expect("spans lock")
        .into_iter()
        .map(|(t, (a, b))| (t, b.saturating_duration_since(a)))
        .collect();
    Ok((results.into_inner().expect("results lock"), spent))
}

/// The connections for `slices` heap slices: `first`, then `extras`,
/// opening more until there are enough.
async fn slice_clients<'a>(
    first: &'a Client,
    extras: &'a mut Vec<Client>,
    slices: usize,
    config: &pgrelay_source::Config,
    side: Side,
) -> Result<Vec<&'a Client>, VerifyError> {
    while extras.len() + 1 < slices {
        extras.push(connect(config, side).await?);
    }
    Ok(std::iter::once(first)
        .chain(extras.iter())
        .take(slices)
        .collect())
}

async fn wait_applied(
    applied: &mut watch::Receiver<Lsn>,
    wanted: Lsn,
    pipeline: &str,
) -> Result<(), VerifyError> {
    if *applied.borrow() >= wanted {
        return Ok(());
    }
    let started = Instant::now();
    let r = tokio::time::timeout(LAG_WAIT, applied.wait_for(|l| *l >= wanted))
        .await
        .map(|r| r.map(|_| ()));
    match r {
        Ok(Ok(())) => {
            tracing::debug!(lsn = %wanted, waited_ms = started.elapsed().as_millis() as u64, "target caught up");
            Ok(())
        }
        // The watcher is gone only when the whole check is being torn down.
        Ok(Err(_)) => Err(VerifyError::Interrupted),
        Err(_) => Err(VerifyError::LagTimeout {
            pipeline: pipeline.to_string(),
            wanted: wanted.to_string(),
            applied: applied.borrow().to_string(),
            waited: LAG_WAIT,
        }),
    }
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// Whether the range has a lower / upper bound, and the bounds' values.
fn params(plan: &TablePlan, r: usize) -> (bool, bool, Vec<Param<'_>>) {
    let (lo, hi) = plan.bounds(r);
    let mut p: Vec<Param<'_>> = Vec::new();
    for v in lo.into_iter().chain(hi) {
        for s in v {
            p.push(s);
        }
    }
    (lo.is_some(), hi.is_some(), p)
}

fn agg(row: &tokio_postgres::Row) -> Agg {
    Agg {
        count: row.get(0),
        sum: row.get(1),
    }
}

/// One unit of work of a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// Range `.1` of table `.0`, through its key index.
    Range(usize, usize),
    /// Every range of table `.0` in one sequential scan (per heap slice).
    Buckets(usize),
}

impl Work {
    fn table(self) -> usize {
        match self {
            Work::Range(t, _) | Work::Buckets(t) => t,
        }
    }

    fn describe(self, plan: &TablePlan) -> String {
        match self {
            Work::Range(_, r) => format!("checking {}.{} range {r}", plan.schema, plan.name),
            Work::Buckets(_) => format!("checking {}.{}", plan.schema, plan.name),
        }
    }

    /// The heap slices this item is read in on `side` (one connection
    /// each, all in one snapshot).
    fn slices(
        self,
        plan: &TablePlan,
        side: Side,
        options: &VerifyOptions,
    ) -> Vec<plan::BlockRange> {
        match self {
            Work::Range(..) => vec![(None, None)],
            Work::Buckets(_) => plan.slices(side, options),
        }
    }
}

/// Runs `item`'s query on one side, one heap slice per client at once;
/// per range index, its aggregate. A bucket scan returns only the ranges
/// that hold rows; the slices' aggregates of a range add up.
async fn read(
    clients: &[&Client],
    plan: &TablePlan,
    sql: &SideSql,
    item: Work,
    slices: &[plan::BlockRange],
    side: Side,
) -> Result<Vec<(usize, Agg)>, VerifyError> {
    let err = |e| VerifyError::sql(side, item.describe(plan), e);
    match item {
        Work::Range(_, r) => {
            let client = clients.first().ok_or(VerifyError::Interrupted)?;
            let (lo, hi, p) = params(plan, r);
            let row = client
                .query_one(&sql.range_query(lo, hi), &p)
                .await
                .map_err(err)?;
            Ok(vec![(r, agg(&row))])
        }
        Work::Buckets(_) => {
            let queries: Vec<String> = slices
                .iter()
                .map(|b| sql.bucket_query(&plan.points, *b))
                .collect();
            let per_slice =
                try_join_all(clients.iter().zip(&queries).map(|(c, q)| c.query(q, &[])))
                    .await
                    .map_err(err)?;
            let mut merged: HashMap<usize, (i64, i128)> = HashMap::new();
            for row in per_slice.iter().flatten() {
                let bucket: i32 = row.get(0);
                let a = Agg {
                    count: row.get(1),
                    sum: row.get(2),
                };
                let sum = a
                    .sum
                    .parse::<i128>()
                    .map_err(|_| VerifyError::BadAggregate {
                        side,
                        what: item.describe(plan),
                        value: a.sum.clone(),
                    })?;
                let e = merged
                    .entry(usize::try_from(bucket).unwrap_or(0))
                    .or_default();
                e.0 += a.count;
                e.1 += sum;
            }
            Ok(merged
                .into_iter()
                .map(|(r, (count, sum))| {
                    (
                        r,
                        Agg {
                            count,
                            sum: sum.to_string(),
                        },
                    )
                })
                .collect())
        }
    }
}

/// Both sides' aggregates per range of `item`, an empty range counting
/// as zero rows with sum 0 (what a range query returns for it).
fn pair_aggs(
    item: Work,
    ranges: usize,
    source: Vec<(usize, Agg)>,
    target: Vec<(usize, Agg)>,
) -> Vec<(usize, Outcome)> {
    let empty = || Agg {
        count: 0,
        sum: "0".to_string(),
    };
    let mut out: HashMap<usize, Outcome> = HashMap::new();
    let all = match item {
        Work::Range(_, r) => r..r + 1,
        Work::Buckets(_) => 0..ranges,
    };
    for r in all {
        out.insert(r, (empty(), empty()));
    }
    for (r, a) in source {
        out.entry(r).or_insert_with(|| (empty(), empty())).0 = a;
    }
    for (r, a) in target {
        out.entry(r).or_insert_with(|| (empty(), empty())).1 = a;
    }
    out.into_iter().collect()
}

const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Opens `item`'s REPEATABLE READ READ ONLY transaction on the source (on
/// every client, all in the first one's snapshot) and returns an LSN at or
/// past every commit that snapshot sees.
async fn source_snapshot(
    clients: &[&Client],
    plan: &TablePlan,
    item: Work,
    snapshot: Option<&str>,
) -> Result<Lsn, VerifyError> {
    let err = |e| VerifyError::sql(Side::Source, item.describe(plan), e);
    let (first, others) = clients.split_first().ok_or(VerifyError::Interrupted)?;
    first.batch_execute(BEGIN).await.map_err(err)?;
    if let Some(id) = snapshot {
        first.batch_execute(&set_snapshot(id)).await.map_err(err)?;
    }
    // First statement: takes the snapshot, then reads the LSN. The other
    // slices' transactions share the snapshot: the caller's, or this one's
    // exported.
    let export = snapshot.is_none() && !others.is_empty();
    let row = first
        .query_one(
            if export {
                "SELECT pg_current_wal_lsn()::text, pg_export_snapshot()"
            } else {
                "SELECT pg_current_wal_lsn()::text, NULL::text"
            },
            &[],
        )
        .await
        .map_err(err)?;
    let lsn: String = row.get(0);
    let exported: Option<String> = row.get(1);
    if let Some(id) = exported.as_deref().or(snapshot) {
        share_snapshot(others, id).await.map_err(err)?;
    }
    Ok(Lsn::from_str(&lsn).unwrap_or(Lsn::INVALID))
}

/// `SET TRANSACTION SNAPSHOT` for an exported snapshot id.
fn set_snapshot(id: &str) -> String {
    format!("SET TRANSACTION SNAPSHOT '{}'", id.replace('\'', "''"))
}

/// Opens a transaction in snapshot `id` on every client.
async fn share_snapshot(clients: &[&Client], id: &str) -> Result<(), tokio_postgres::Error> {
    let sql = format!("{BEGIN}; {}", set_snapshot(id));
    try_join_all(clients.iter().map(|c| c.batch_execute(&sql))).await?;
    Ok(())
}

/// Ends the transaction on every client.
async fn commit(clients: &[&Client]) -> Result<(), tokio_postgres::Error> {
    try_join_all(clients.iter().map(|c| c.batch_execute("COMMIT"))).await?;
    Ok(())
}

/// Reads `item` in the transactions [`source_snapshot`] opened, and ends
/// them.
async fn source_read(
    clients: &[&Client],
    plan: &TablePlan,
    item: Work,
    slices: &[plan::BlockRange],
) -> Result<Vec<(usize, Agg)>, VerifyError> {
    let (sql, _) = plan.sql.as_ref().expect("only planned tables have ranges");
    let aggs = read(clients, plan, sql, item, slices, Side::Source).await?;
    commit(clients)
        .await
        .map_err(|e| VerifyError::sql(Side::Source, item.describe(plan), e))?;
    Ok(aggs)
}

/// Reads `item` on the target: one statement, or, in heap slices, one
/// transaction per client in the first one's exported snapshot.
async fn target_read(
    clients: &[&Client],
    plan: &TablePlan,
    item: Work,
    slices: &[plan::BlockRange],
) -> Result<Vec<(usize, Agg)>, VerifyError> {
    let (_, sql) = plan.sql.as_ref().expect("only planned tables have ranges");
    if clients.len() < 2 {
        return read(clients, plan, sql, item, slices, Side::Target).await;
    }
    let err = |e| VerifyError::sql(Side::Target, item.describe(plan), e);
    let (first, others) = clients.split_first().ok_or(VerifyError::Interrupted)?;
    first.batch_execute(BEGIN).await.map_err(err)?;
    let id: String = first
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(err)?
        .get(0);
    share_snapshot(others, &id).await.map_err(err)?;
    let aggs = read(clients, plan, sql, item, slices, Side::Target).await?;
    commit(clients).await.map_err(err)?;
    Ok(aggs)
}

fn report(
    plans: Vec<TablePlan>,
    outcomes: HashMap<(usize, usize), Outcome>,
    spent: HashMap<usize, Duration>,
) -> Vec<TableResult> {
    plans
        .into_iter()
        .enumerate()
        .map(|(t, p)| {
            let mut res = TableResult {
                schema: p.schema.clone(),
                name: p.name.clone(),
                source_rows: 0,
                target_rows: 0,
                equal: p.problem.is_none(),
                mismatched_ranges: Vec::new(),
                mismatched_range_count: 0,
                ranges: p.ranges(),
                problem: p.problem.clone(),
                elapsed: p.planning + spent.get(&t).copied().unwrap_or_default(),
            };
            for r in 0..p.ranges() {
                let (s, tg) = &outcomes[&(t, r)];
                res.source_rows += s.count as u64;
                res.target_rows += tg.count as u64;
                if s != tg {
                    res.equal = false;
                    res.mismatched_range_count += 1;
                    if res.mismatched_ranges.len() < MAX_REPORTED_RANGES {
                        let (lo, hi) = p.bounds(r);
                        res.mismatched_ranges.push(KeyRange {
                            key: p.key.clone(),
                            lo: lo.cloned(),
                            hi: hi.cloned(),
                            source_rows: s.count as u64,
                            target_rows: tg.count as u64,
                        });
                    }
                }
            }
            res
        })
        .collect()
}
