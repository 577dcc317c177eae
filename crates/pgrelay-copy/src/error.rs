//! What can stop a copy, and whether running it again can help.
//!
//! Every error names the side (source or which target) and the step, and
//! says through [`CopyError::is_transient`] whether the caller may simply
//! retry later (a lost connection, a server restarting, too many
//! connections) or must have a human change something first (a missing
//! table or column, an expired snapshot, a permission). A retry after any
//! error is safe: chunks are their own target transactions, finished tables
//! are recorded as `ready` and skipped, unfinished ones are truncated and
//! copied again. Messages never contain a password (pgrelay-source redacts
//! them).

use pgrelay_source::SourceError;

/// Why [`crate::copy_tables`] or [`crate::estimate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A call on the source failed.
    #[error("{step}: {source}")]
    Source {
        /// What pgrelay was doing.
        step: String,
        /// The connection or SQL error, which knows whether it is transient.
        #[source]
        source: Box<SourceError>,
    },
    /// A call on one target failed.
    #[error("{step}: {source}")]
    Target {
        /// The target's name from [`crate::CopyTarget`].
        target: String,
        /// What pgrelay was doing.
        step: String,
        /// The connection or SQL error, which knows whether it is transient.
        #[source]
        source: Box<SourceError>,
    },
    /// The request cannot work as given: a table or column missing on one
    /// side, an invalid option. Retrying without a change fails the same way.
    #[error("{0}")]
    Invalid(String),
    /// Rows counted by two targets for the same chunk differ: something else
    /// writes to a target table during the copy.
    #[error(
        "table {table}: target {target} stored {got} rows of a chunk, another target {expected}; \
         make sure nothing else writes to the target tables during the copy, then run again"
    )]
    RowCountMismatch {
        /// `schema.table`.
        table: String,
        /// The target whose count differs.
        target: String,
        /// Rows the other target stored.
        expected: u64,
        /// Rows this target stored.
        got: u64,
    },
    /// The shutdown future completed; chunks in flight were rolled back.
    #[error(
        "copy interrupted by shutdown; run again to resume (tables already copied are skipped, \
         unfinished ones are copied again from the start)"
    )]
    Interrupted,
}

impl CopyError {
    /// Whether running the copy again later can succeed without anyone
    /// changing anything (connection lost, server restarting, overload).
    /// [`CopyError::Interrupted`] is not transient: it was asked for.
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Source { source, .. } | CopyError::Target { source, .. } => {
                source.is_transient()
            }
            CopyError::Invalid(_) | CopyError::RowCountMismatch { .. } | CopyError::Interrupted => {
                false
            }
        }
    }

    pub(crate) fn source(step: impl Into<String>, e: tokio_postgres::Error) -> Self {
        CopyError::Source {
            step: step.into(),
            source: Box::new(SourceError::from_sql("the source", e)),
        }
    }

    pub(crate) fn target(target: &str, step: impl Into<String>, e: tokio_postgres::Error) -> Self {
        CopyError::Target {
            target: target.to_owned(),
            step: step.into(),
            source: Box::new(SourceError::from_sql(&format!("target {target}"), e)),
        }
    }
}
