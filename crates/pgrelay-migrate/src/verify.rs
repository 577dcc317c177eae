//! `pgrelay verify` for a pipeline: every selected table of the source
//! against each target, through pgrelay-verify (key ranges, parallel on
//! both sides).
//!
//! Exactness while `pgrelay stream` runs: the target's worker is first
//! asked to stop at its next transaction boundary; then a temporary logical slot exports
//! a source snapshot together with its consistent point C (the snapshot
//! sees exactly the transactions committed before C). A row in the
//! target's `pgrelay.verify_pause` asks the streamer's worker for that
//! target to stop right before the first source transaction committing at
//! or after C; a non-transactional logical message (prefix `pgrelay`)
//! lets an idle stream reach C at once. The worker reports the last
//! commit it applied; if that is before C, the target holds exactly the
//! snapshot's data and one pass over both sides is exact. If it had
//! already gone past C, the attempt is repeated with a new snapshot. The
//! row is deleted afterwards and the worker resumes. Without a running
//! streamer, verify waits for the pipeline's progress (or slot) to reach
//! each source snapshot and re-checks differing ranges.
//! PostgreSQL docs: "Exporting Snapshots" (functions-snapshot-synchronization),
//! "pg_logical_emit_message".

use std::time::{Duration, Instant};

use pgrelay_source::{CreateSlotOptions, ReplicationClient, SnapshotAction};
use pgrelay_stream::config::TargetConfig;
use pgrelay_stream::target::PAUSE_DDL;
use pgrelay_stream::StreamConfig;
use pgrelay_types::Lsn;
use pgrelay_verify::{TableResult, VerifyOptions};

use crate::MigrateError;

/// How long a running streamer may take to reach the snapshot.
const PAUSE_WAIT: Duration = Duration::from_secs(120);

/// Verifies every selected table on `target`; `parallel` 0 means the
/// default.
pub async fn verify_target(
    config: &StreamConfig,
    target: &TargetConfig,
    parallel: usize,
) -> Result<Vec<TableResult>, MigrateError> {
    let source = pgrelay_source::connect_sql(&config.source).await?;
    let tables = config
        .tables
        .resolve(&source)
        .await
        .map_err(|e| MigrateError::sql("listing tables", e))?;
    let pairs: Vec<(String, String)> = tables.into_iter().map(|t| (t.schema, t.name)).collect();
    let mut options = VerifyOptions {
        pipeline: Some(config.slot.clone()),
        ..VerifyOptions::default()
    };
    if parallel > 0 {
        options.parallel = parallel;
    }
    let streaming: bool = source
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(|e| MigrateError::sql("reading the slot", e))?
        .is_some_and(|r| r.get(0));
    let run = |options: VerifyOptions| {
        let pairs = pairs.clone();
        async move {
            pgrelay_verify::verify_tables(
                &config.source,
                &target.config,
                &pairs,
                &options,
                std::future::pending::<()>(),
            )
            .await
            .map_err(|e| MigrateError::Fatal(format!("verifying target {}: {e}", target.name)))
        }
    };
    if !streaming {
        return run(options).await;
    }
    let tgt = pgrelay_source::connect_sql(&target.config).await?;
    tgt.batch_execute(PAUSE_DDL)
        .await
        .map_err(|e| MigrateError::sql("creating pgrelay.verify_pause", e))?;
    let wait_reached = |what: &'static str| {
        let tgt = &tgt;
        async move {
            let started = Instant::now();
            loop {
                let row = tgt
                    .query_opt(
                        "SELECT reached_lsn::text FROM pgrelay.verify_pause WHERE pipeline = $1",
                        &[&config.slot],
                    )
                    .await
                    .map_err(|e| MigrateError::sql("waiting for the pause", e))?;
                if let Some(Some(l)) = row.map(|r| r.get::<_, Option<String>>(0)) {
                    return Ok::<Lsn, MigrateError>(l.parse().unwrap_or(Lsn::INVALID));
                }
                if started.elapsed() > PAUSE_WAIT {
                    return Err(MigrateError::Fatal(format!(
                        "target {} did not {what} within {PAUSE_WAIT:?}; is `pgrelay stream` healthy (pgrelay status)?",
                        target.name
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for attempt in 1..=5 {
        // First stop the target where it is, so the snapshot below is
        // ahead of it.
        tgt.execute(
            "INSERT INTO pgrelay.verify_pause (pipeline, lsn) VALUES ($1, '0/0')
             ON CONFLICT (pipeline) DO UPDATE SET lsn = '0/0', reached_lsn = NULL, requested_at = now()",
            &[&config.slot],
        )
        .await
        .map_err(|e| MigrateError::sql("requesting the pause", e))?;
        if let Err(e) = wait_reached("pause").await {
            let _ = tgt
                .execute(
                    "DELETE FROM pgrelay.verify_pause WHERE pipeline = $1",
                    &[&config.slot],
                )
                .await;
            return Err(e);
        }
        let mut repl = ReplicationClient::connect(&config.source).await?;
        let slot = format!("{}_verify_{}", config.slot, std::process::id());
        let created = repl
            .create_replication_slot(
                &slot,
                &CreateSlotOptions {
                    temporary: true,
                    snapshot: SnapshotAction::Export,
                    ..CreateSlotOptions::default()
                },
            )
            .await?;
        let at = created.consistent_point;
        let result = async {
            tgt.execute(
                "UPDATE pgrelay.verify_pause SET lsn = $2::text::pg_lsn, reached_lsn = NULL WHERE pipeline = $1",
                &[&config.slot, &at.to_string()],
            )
            .await
            .map_err(|e| MigrateError::sql("requesting the pause", e))?;
            source
                .execute("SELECT pg_logical_emit_message(false, 'pgrelay', 'verify')", &[])
                .await
                .map_err(|e| MigrateError::sql("marking the position", e))?;
            let started = Instant::now();
            let reached = wait_reached("reach the verification point").await?;
            if reached >= at {
                tracing::info!(target_name = %target.name, attempt, lsn = %at, reached = %reached, "target was already past the snapshot; again with a new one");
                return Ok(None);
            }
            tracing::info!(target_name = %target.name, lsn = %at, waited = ?started.elapsed(), "target paused at the snapshot");
            let exact = VerifyOptions {
                pipeline: None,
                retries: 0,
                snapshot: created.snapshot_name.clone(),
                ..options.clone()
            };
            run(exact).await.map(Some)
        }
        .await;
        let _ = tgt
            .execute(
                "DELETE FROM pgrelay.verify_pause WHERE pipeline = $1",
                &[&config.slot],
            )
            .await;
        let _ = repl.close().await;
        if let Some(results) = result? {
            return Ok(results);
        }
    }
    Err(MigrateError::Fatal(format!(
        "target {} kept running past every verification point; retry when the load is lower",
        target.name
    )))
}
