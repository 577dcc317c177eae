//! How the native replication is doing: the publication and its tables,
//! and per target the subscription's enabled state, its apply worker, each
//! table's sync state, the received and applied positions and the lag.
//!
//! Lag, per target:
//! * `lag_bytes` = `pg_current_wal_lsn() - confirmed_flush_lsn` of the
//!   subscription's slot on the source: WAL the source has written that
//!   the target has not confirmed as applied and flushed. When the
//!   target is idle and caught up the walsender's keepalives move
//!   `confirmed_flush_lsn` to the end of WAL, so this reaches 0.
//! * `lag_seconds` = 0 whenever `lag_bytes` is 0 (caught up, even when
//!   nothing has been written for hours); otherwise the source's
//!   `pg_stat_replication.flush_lag` for the subscription's walsender (how
//!   long the last confirmed WAL took from the source's flush to the
//!   target's confirmation), or, when the walsender reports none (not
//!   connected, no sample yet), the time since the target last reported
//!   a position to the source (`now() - pg_stat_subscription.latest_end_time`).
//!
//! A target is healthy when reachable, its subscription exists, is
//! enabled and has a running apply worker, and every table is `r` (ready)
//! or `s` (synchronized). The whole is healthy when the source is
//! reachable, the publication exists with the configured tables, and
//! every target is healthy. Nothing here contains a password.
//! PostgreSQL docs: "pg_stat_subscription", "pg_stat_replication",
//! "pg_replication_slots", "pg_subscription_rel" (srsubstate).

use serde::Serialize;

use crate::config::NativeConfig;
use crate::reconcile::{
    connect_server, find_subscription, publication_tables, resolve_tables, Server,
};
use crate::Settings;

/// One table of a subscription.
#[derive(Debug, Clone, Serialize)]
pub struct TableSync {
    /// `schema.table`.
    pub table: String,
    /// `srsubstate`: `i`, `d`, `f`, `s` or `r`.
    pub state: String,
    /// Its meaning: `init`, `data_copy`, `finished_copy`, `synchronized`, `ready`.
    pub state_name: &'static str,
}

/// One target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// Configured name.
    pub name: String,
    /// Subscription name.
    pub subscription: String,
    /// Whether the target answered.
    pub reachable: bool,
    /// Why not, or what else is wrong.
    pub error: Option<String>,
    /// Whether the subscription exists.
    pub exists: bool,
    /// `subenabled`.
    pub enabled: bool,
    /// Whether the apply worker runs (`pg_stat_subscription.pid`).
    pub worker_running: bool,
    /// Tables and their sync state.
    pub tables: Vec<TableSync>,
    /// Last WAL position received by the apply worker.
    pub received_lsn: Option<String>,
    /// Last position reported to the source (applied and flushed).
    pub latest_end_lsn: Option<String>,
    /// When the last message from the source arrived.
    pub last_msg_receipt_time: Option<String>,
    /// The slot's `confirmed_flush_lsn` on the source.
    pub confirmed_flush_lsn: Option<String>,
    /// Whether the slot is in use by a walsender.
    pub slot_active: bool,
    /// See the module documentation.
    pub lag_bytes: Option<i64>,
    /// See the module documentation.
    pub lag_seconds: Option<f64>,
    /// See the module documentation.
    pub healthy: bool,
}

/// The publication.
#[derive(Debug, Clone, Serialize)]
pub struct PublicationStatus {
    /// Name.
    pub name: String,
    /// Whether it exists on the source.
    pub exists: bool,
    /// Its tables.
    pub tables: Vec<String>,
    /// The tables the configuration asks for (when the source answered).
    pub configured_tables: Vec<String>,
}

/// Everything `/health` and `status` report.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// See the module documentation.
    pub healthy: bool,
    /// Whether the source answered.
    pub source_reachable: bool,
    /// Why not.
    pub source_error: Option<String>,
    /// The publication.
    pub publication: PublicationStatus,
    /// The targets, in configuration order.
    pub targets: Vec<TargetStatus>,
}

fn state_name(s: &str) -> &'static str {
    match s {
        "i" => "init",
        "d" => "data_copy",
        "f" => "finished_copy",
        "s" => "synchronized",
        "r" => "ready",
        _ => "unknown",
    }
}

fn once(settings: &Settings) -> Settings {
    Settings {
        max_wait_attempts: 1,
        ..settings.clone()
    }
}

/// Collects the status, connecting to every server once (no waiting: an
/// unreachable server is reported, not retried; a connection attempt
/// without its own `connect_timeout` gives up after 10 s so one
/// black-holed server cannot stall the monitor).
pub async fn collect_status(config: &NativeConfig) -> Status {
    let mut config = config.clone();
    for c in
        std::iter::once(&mut config.source).chain(config.targets.iter_mut().map(|t| &mut t.conn))
    {
        c.connect_timeout
            .get_or_insert(std::time::Duration::from_secs(10));
    }
    let config = &config;
    let source = connect_server("source", &config.source, &once(&config.settings)).await;
    let mut status = Status {
        healthy: false,
        source_reachable: source.is_ok(),
        source_error: source.as_ref().err().map(|e| e.to_string()),
        publication: PublicationStatus {
            name: config.publication.clone(),
            exists: false,
            tables: Vec::new(),
            configured_tables: Vec::new(),
        },
        targets: Vec::new(),
    };
    let mut publication_ok = false;
    if let Ok(src) = &source {
        match (
            publication_tables(src, &config.publication).await,
            resolve_tables(src, &config.tables).await,
        ) {
            (Ok(actual), Ok(wanted)) => {
                status.publication.exists = actual.is_some();
                let actual: Vec<String> = actual
                    .unwrap_or_default()
                    .iter()
                    .map(|t| t.to_string())
                    .collect();
                let wanted: Vec<String> = wanted.iter().map(|t| t.to_string()).collect();
                publication_ok = status.publication.exists && actual == wanted;
                status.publication.tables = actual;
                status.publication.configured_tables = wanted;
            }
            (Err(e), _) | (_, Err(e)) => status.source_error = Some(e.to_string()),
        }
    }
    for tc in &config.targets {
        let mut ts = TargetStatus {
            name: tc.name.clone(),
            subscription: tc.subscription.clone(),
            reachable: false,
            error: None,
            exists: false,
            enabled: false,
            worker_running: false,
            tables: Vec::new(),
            received_lsn: None,
            latest_end_lsn: None,
            last_msg_receipt_time: None,
            confirmed_flush_lsn: None,
            slot_active: false,
            lag_bytes: None,
            lag_seconds: None,
            healthy: false,
        };
        let label = format!("target {}", tc.name);
        match connect_server(&label, &tc.conn, &once(&tc.settings)).await {
            Err(e) => ts.error = Some(e.to_string()),
            Ok(target) => {
                ts.reachable = true;
                if let Err(e) = fill_target(&mut ts, &target, source.as_ref().ok()).await {
                    ts.error = Some(e.to_string());
                }
            }
        }
        ts.healthy = ts.reachable
            && ts.error.is_none()
            && ts.exists
            && ts.enabled
            && ts.worker_running
            && ts.tables.iter().all(|t| t.state == "r" || t.state == "s");
        status.targets.push(ts);
    }
    status.healthy = status.source_reachable
        && status.source_error.is_none()
        && publication_ok
        && status.targets.iter().all(|t| t.healthy);
    status
}

async fn fill_target(
    ts: &mut TargetStatus,
    target: &Server,
    source: Option<&Server>,
) -> Result<(), crate::NativeError> {
    let Some(sub) = find_subscription(target, &ts.subscription).await? else {
        ts.error = Some(format!(
            "subscription {} does not exist; run `pgrelay native apply`",
            ts.subscription
        ));
        return Ok(());
    };
    ts.exists = true;
    ts.enabled = sub.enabled;
    ts.tables = sub
        .tables
        .iter()
        .map(|(t, s)| TableSync {
            table: t.to_string(),
            state: s.clone(),
            state_name: state_name(s),
        })
        .collect();
    // Parallel apply workers (16+) have a leader; table sync workers a relid.
    let leader = if target.major >= 16 {
        " AND leader_pid IS NULL"
    } else {
        ""
    };
    let rows = target
        .client
        .query(
            &format!(
                "SELECT pid IS NOT NULL, received_lsn::text, latest_end_lsn::text, \
                        last_msg_receipt_time::text, \
                        extract(epoch FROM now() - latest_end_time)::float8 \
                 FROM pg_stat_subscription WHERE subid = $1 AND relid IS NULL{leader}"
            ),
            &[&sub.oid],
        )
        .await
        .map_err(|e| crate::NativeError::Server {
            server: target.label.clone(),
            source: Box::new(pgrelay_source::SourceError::from_sql(&target.label, e)),
        })?;
    let mut since_report: Option<f64> = None;
    if let Some(r) = rows.first() {
        ts.worker_running = r.get(0);
        ts.received_lsn = r.get(1);
        ts.latest_end_lsn = r.get(2);
        ts.last_msg_receipt_time = r.get(3);
        since_report = r.get(4);
    }
    let Some(source) = source else { return Ok(()) };
    let rows = source
        .client
        .query(
            "SELECT s.active, s.confirmed_flush_lsn::text, \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::float8 END, \
                    extract(epoch FROM r.flush_lag)::float8 \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&ts.subscription],
        )
        .await
        .map_err(|e| crate::NativeError::Server {
            server: source.label.clone(),
            source: Box::new(pgrelay_source::SourceError::from_sql(&source.label, e)),
        })?;
    if let Some(r) = rows.first() {
        ts.slot_active = r.get(0);
        ts.confirmed_flush_lsn = r.get(1);
        let bytes: Option<f64> = r.get(2);
        let flush_lag: Option<f64> = r.get(3);
        ts.lag_bytes = bytes.map(|b| b.max(0.0) as i64);
        ts.lag_seconds = match ts.lag_bytes {
            Some(0) => Some(0.0),
            Some(_) => flush_lag.or(since_report).map(|s| s.max(0.0)),
            None => None,
        };
    } else {
        ts.error = Some(format!(
            "the source has no replication slot {}; the subscription cannot receive changes \
             (recreate it: `pgrelay native teardown` then `apply`)",
            ts.subscription
        ));
    }
    Ok(())
}

/// Records the status as metrics: `pgrelay_lag_bytes{target}`,
/// `pgrelay_lag_seconds{target}`, `pgrelay_subscription_enabled{target}`,
/// `pgrelay_subscription_worker_running{target}`,
/// `pgrelay_target_healthy{target}`, `pgrelay_table_sync_state{target,table,state}`
/// (1 for the table's current state) and `pgrelay_publication_tables`.
pub fn record_metrics(status: &Status) {
    metrics::gauge!("pgrelay_publication_tables").set(status.publication.tables.len() as f64);
    metrics::gauge!("pgrelay_healthy").set(if status.healthy { 1.0 } else { 0.0 });
    for t in &status.targets {
        let target = t.name.clone();
        if let Some(b) = t.lag_bytes {
            metrics::gauge!("pgrelay_lag_bytes", "target" => target.clone()).set(b as f64);
        }
        if let Some(s) = t.lag_seconds {
            metrics::gauge!("pgrelay_lag_seconds", "target" => target.clone()).set(s);
        }
        metrics::gauge!("pgrelay_subscription_enabled", "target" => target.clone())
            .set(if t.enabled { 1.0 } else { 0.0 });
        metrics::gauge!("pgrelay_subscription_worker_running", "target" => target.clone())
            .set(if t.worker_running { 1.0 } else { 0.0 });
        metrics::gauge!("pgrelay_target_healthy", "target" => target.clone()).set(if t.healthy {
            1.0
        } else {
            0.0
        });
        for tb in &t.tables {
            for s in ["i", "d", "f", "s", "r"] {
                metrics::gauge!("pgrelay_table_sync_state", "target" => target.clone(),
                    "table" => tb.table.clone(), "state" => state_name(s))
                .set(if tb.state == s { 1.0 } else { 0.0 });
            }
        }
    }
}
