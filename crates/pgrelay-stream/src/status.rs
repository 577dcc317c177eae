//! `pgrelay status` and `pgrelay cleanup`: what a pipeline looks like from
//! the servers' own catalogs (so it works whether or not `pgrelay stream`
//! runs), and removing everything a pipeline created.
//!
//! Invariants: status only reads; cleanup drops the slot only when no one
//! streams from it, then the publication, then each target's progress
//! rows (and the `pgrelay` schema once no pipeline uses it). Lag seconds
//! is 0 when the target has applied everything the source wrote (so an
//! idle source reads as caught up), else the age of the last source
//! commit the target applied. PostgreSQL docs: "pg_replication_slots",
//! "pg_publication_tables", "System Administration Functions"
//! (pg_current_wal_lsn, pg_wal_lsn_diff).

use std::time::SystemTime;

use pgrelay_types::Lsn;
use serde::Serialize;

use crate::config::StreamConfig;
use crate::select::quote_ident;
use crate::StreamError;

/// The slot as the source sees it.
#[derive(Debug, Serialize)]
pub struct SlotStatus {
    /// Name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// Whether a walsender streams from it.
    pub active: bool,
    /// Confirmed position.
    pub confirmed_flush_lsn: Option<String>,
    /// Oldest WAL it needs.
    pub restart_lsn: Option<String>,
    /// WAL kept for it, in bytes.
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

/// One target.
#[derive(Debug, Serialize)]
pub struct TargetStatus {
    /// Name.
    pub name: String,
    /// Whether it could be queried.
    pub reachable: bool,
    /// `unreachable`, `not started`, `copying`, `streaming` or `stopped`.
    pub state: String,
    /// End LSN of the last applied source transaction.
    pub applied_lsn: Option<String>,
    /// Its source commit time.
    pub applied_commit_time: Option<String>,
    /// Bytes of source WAL not yet applied.
    pub lag_bytes: Option<i64>,
    /// See the module docs.
    pub lag_seconds: Option<f64>,
    /// Tables whose initial copy finished.
    pub tables_ready: i64,
    /// Tables the pipeline copies.
    pub tables_total: i64,
    /// Why it is unreachable.
    pub error: Option<String>,
    /// The migration phase recorded by `pgrelay init`/`switchover`, if any.
    pub migration_phase: Option<String>,
}

/// Everything `pgrelay status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The slot.
    pub slot: SlotStatus,
    /// Current WAL position of the source.
    pub source_wal_lsn: String,
    /// Publication name and its tables.
    pub publication: String,
    /// Tables in the publication.
    pub publication_tables: i64,
    /// Per target.
    pub targets: Vec<TargetStatus>,
}

fn q(what: &str) -> impl Fn(tokio_postgres::Error) -> StreamError + '_ {
    move |e| StreamError::Fatal(format!("{what}: {e}"))
}

/// Reads the pipeline's state from the servers.
pub async fn status(config: &StreamConfig) -> Result<Status, StreamError> {
    let source = pgrelay_source::connect_sql(&config.source).await?;
    let wal: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(q("reading the source's WAL position"))?
        .get(0);
    let wal_lsn: Lsn = wal.parse().unwrap_or(Lsn::INVALID);
    let row = source
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text, restart_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(q("reading pg_replication_slots"))?;
    let slot = match &row {
        Some(r) => SlotStatus {
            name: config.slot.clone(),
            exists: true,
            active: r.get(0),
            confirmed_flush_lsn: r.get(1),
            restart_lsn: r.get(2),
            retained_bytes: r.get(3),
            wal_status: r.get(4),
        },
        None => SlotStatus {
            name: config.slot.clone(),
            exists: false,
            active: false,
            confirmed_flush_lsn: None,
            restart_lsn: None,
            retained_bytes: None,
            wal_status: None,
        },
    };
    let publication_tables: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(q("reading pg_publication_tables"))?
        .get(0);
    let mut targets = Vec::new();
    for t in &config.targets {
        targets
            .push(target_status(t, &config.slot, wal_lsn, slot.active, publication_tables).await);
    }
    Ok(Status {
        slot,
        source_wal_lsn: wal,
        publication: config.publication.clone(),
        publication_tables,
        targets,
    })
}

async fn target_status(
    t: &crate::config::TargetConfig,
    pipeline: &str,
    wal: Lsn,
    slot_active: bool,
    total: i64,
) -> TargetStatus {
    let mut out = TargetStatus {
        name: t.name.clone(),
        reachable: false,
        state: "unreachable".into(),
        applied_lsn: None,
        applied_commit_time: None,
        lag_bytes: None,
        lag_seconds: None,
        tables_ready: 0,
        tables_total: total,
        error: None,
        migration_phase: None,
    };
    let client = match pgrelay_source::connect_sql(&t.config).await {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    out.reachable = true;
    let has_schema: bool = client
        .query_one(
            "SELECT to_regclass('pgrelay.progress') IS NOT NULL AND to_regclass('pgrelay.table_sync') IS NOT NULL",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(false);
    if !has_schema {
        out.state = "not started".into();
        return out;
    }
    if let Ok(r) = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'ready'), count(*) FROM pgrelay.table_sync WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
    {
        out.tables_ready = r.get(0);
    }
    let progress = client
        .query_opt(
            "SELECT end_lsn::text, commit_time,
                    extract(epoch FROM commit_time)::float8
               FROM pgrelay.progress WHERE pipeline = $1",
            &[&pipeline],
        )
        .await;
    if let Ok(Some(r)) = progress {
        let end: String = r.get(0);
        let ts: Option<SystemTime> = r.get(1);
        out.applied_commit_time = ts.map(|t| {
            pgrelay_types::PgTimestamp::from_system_time(t)
                .and_then(|p| p.to_rfc3339())
                .unwrap_or_default()
        });
        let end_lsn: Lsn = end.parse().unwrap_or(Lsn::INVALID);
        let lag = wal.0.saturating_sub(end_lsn.0);
        out.applied_lsn = Some(end);
        // Small differences are WAL the pipeline does not publish
        // (other tables, checkpoints): not lag a target can apply.
        let caught_up = lag < 1024 * 1024 && slot_active;
        out.lag_bytes = Some(if caught_up { 0 } else { lag as i64 });
        out.lag_seconds = Some(if caught_up {
            0.0
        } else {
            ts.and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64())
        });
    }
    let migration: bool = client
        .query_one("SELECT to_regclass('pgrelay.migration') IS NOT NULL", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(false);
    if migration {
        if let Ok(Some(r)) = client
            .query_opt(
                "SELECT phase FROM pgrelay.migration WHERE pipeline = $1",
                &[&pipeline],
            )
            .await
        {
            out.migration_phase = Some(r.get(0));
        }
    }
    out.state = if out.migration_phase.as_deref() == Some("switched over") {
        "switched over".into()
    } else if out.tables_ready < total {
        format!("copying ({}/{} tables)", out.tables_ready, total)
    } else if slot_active {
        "streaming".into()
    } else {
        "stopped".into()
    };
    out
}

/// What cleanup removed.
#[derive(Debug, Default, Serialize)]
pub struct Cleaned {
    /// The slot was dropped.
    pub slot: bool,
    /// The publication was dropped.
    pub publication: bool,
    /// Targets whose progress was removed.
    pub targets: Vec<String>,
    /// Targets that could not be reached (their rows remain).
    pub unreachable: Vec<String>,
}

/// Drops the slot, the publication and the targets' progress.
pub async fn cleanup(config: &StreamConfig) -> Result<Cleaned, StreamError> {
    let source = pgrelay_source::connect_sql(&config.source).await?;
    let mut out = Cleaned::default();
    let active: Option<Option<i32>> = source
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(q("reading pg_replication_slots"))?
        .map(|r| r.get(0));
    match active {
        Some(Some(pid)) => {
            return Err(StreamError::Fatal(format!(
                "slot {} is in use by process {pid}; stop `pgrelay stream` first, then run cleanup again",
                config.slot
            )))
        }
        Some(None) => {
            source
                .execute("SELECT pg_drop_replication_slot($1)", &[&config.slot])
                .await
                .map_err(q("dropping the slot"))?;
            out.slot = true;
        }
        None => {}
    }
    let exists = source
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(q("reading pg_publication"))?
        .is_some();
    if exists {
        source
            .batch_execute(&format!(
                "DROP PUBLICATION {}",
                quote_ident(&config.publication)
            ))
            .await
            .map_err(q("dropping the publication"))?;
        out.publication = true;
    }
    for t in &config.targets {
        match pgrelay_source::connect_sql(&t.config).await {
            Ok(client) => {
                pgrelay_apply::meta::drop_pipeline(&client, &config.slot)
                    .await
                    .map_err(|e| StreamError::Fatal(format!("target {}: {e}", t.name)))?;
                out.targets.push(t.name.clone());
            }
            Err(_) => out.unreachable.push(t.name.clone()),
        }
    }
    Ok(out)
}
