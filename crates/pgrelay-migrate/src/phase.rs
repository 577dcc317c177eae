//! The migration phase recorded on each target (`pgrelay.migration`), so
//! `pgrelay status` can tell where a migration is: copying schema, copying
//! data, streaming, switched over.
//!
//! Invariant: written only by `init` and `switchover`; one row per
//! pipeline; readers treat a missing table as "no migration".

use tokio_postgres::Client;

/// Creates the table if missing and sets `pipeline`'s phase.
pub async fn set(
    client: &Client,
    pipeline: &str,
    phase: &str,
    detail: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS pgrelay;
             CREATE TABLE IF NOT EXISTS pgrelay.migration (
                 pipeline text PRIMARY KEY, phase text NOT NULL, detail text,
                 updated_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    client
        .execute(
            "INSERT INTO pgrelay.migration (pipeline, phase, detail) VALUES ($1, $2, $3)
             ON CONFLICT (pipeline) DO UPDATE SET phase = EXCLUDED.phase, detail = EXCLUDED.detail, updated_at = now()",
            &[&pipeline, &phase, &detail],
        )
        .await?;
    Ok(())
}

/// The phase and its detail, if a migration was recorded.
pub async fn get(client: &Client, pipeline: &str) -> Option<(String, Option<String>)> {
    let exists: bool = client
        .query_one("SELECT to_regclass('pgrelay.migration') IS NOT NULL", &[])
        .await
        .ok()?
        .get(0);
    if !exists {
        return None;
    }
    client
        .query_opt(
            "SELECT phase, detail FROM pgrelay.migration WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .ok()
        .flatten()
        .map(|r| (r.get(0), r.get(1)))
}
