//! `pgrelay verify` for a pipeline: every selected table of the source
//! against each target, through pgrelay-verify (key ranges, parallel,
//! snapshot LSN matched against the target's applied progress, re-checks
//! of ranges that changed meanwhile).

use pgrelay_stream::config::TargetConfig;
use pgrelay_stream::StreamConfig;
use pgrelay_verify::{TableResult, VerifyOptions};

use crate::MigrateError;

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
