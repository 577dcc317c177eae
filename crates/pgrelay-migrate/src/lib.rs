//! pgrelay-migrate: version-upgrade moves on top of the streamer —
//! [`validate`] (preflight checklist), [`init`] (schema, data, post-data),
//! [`verify`] (checksums per key range), [`switchover`] (fence, drain,
//! sequences, verify, measured downtime) and the recorded [`phase`] that
//! `pgrelay status` shows.
//!
//! A migration is a pipeline (`pgrelay.yml`: source, targets, tables) whose
//! targets start empty: `init` copies the schema and the data from the
//! slot's snapshot, `pgrelay stream` keeps them current, `switchover` moves
//! the writes. PostgreSQL docs: "Upgrading a PostgreSQL Cluster"
//! (upgrading, the logical replication method).

#![deny(unsafe_code)]

pub mod init;
pub mod phase;
pub mod switchover;
pub mod validate;
pub mod verify;

/// Why a migration step failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A connection failed.
    #[error(transparent)]
    Source(#[from] pgrelay_source::SourceError),
    /// The streamer's setup failed.
    #[error(transparent)]
    Stream(#[from] pgrelay_stream::StreamError),
    /// Something an operator must fix.
    #[error("{0}")]
    Fatal(String),
    /// The operator declined.
    #[error("cancelled; nothing was changed")]
    Cancelled,
}

impl MigrateError {
    pub(crate) fn sql(what: &str, e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => MigrateError::Fatal(format!(
                "{what}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            )),
            None => MigrateError::Fatal(format!("{what}: {e}")),
        }
    }

    /// Whether running again later can succeed without a human.
    pub fn is_transient(&self) -> bool {
        match self {
            MigrateError::Source(e) => e.is_transient(),
            MigrateError::Stream(e) => e.is_transient(),
            MigrateError::Fatal(_) | MigrateError::Cancelled => false,
        }
    }
}
