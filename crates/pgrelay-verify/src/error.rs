//! Errors of a verification run: which side, which table, and whether
//! running `verify` again later can succeed (transient) or the operator
//! must change something first (fatal). A mismatch is NOT an error: it is
//! a [`crate::TableResult`] with `equal == false`.

use std::time::Duration;

use pgrelay_source::SourceError;

/// Source or target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Connecting, or a query on an open connection, failed.
    #[error("{side}: {what}: {error}")]
    Sql {
        side: Side,
        what: String,
        #[source]
        error: SourceError,
    },
    /// A table asked for does not exist on the source.
    #[error("table {schema}.{name} does not exist on the source; check the table list")]
    NoSuchTable { schema: String, name: String },
    /// The target did not reach the source LSN of a snapshot in time.
    #[error(
        "pipeline {pipeline:?}: the target did not apply up to source LSN {wanted} within {waited:?} \
         (applied: {applied}); is `pgrelay stream` running and is the pipeline name (slot) right?"
    )]
    LagTimeout {
        pipeline: String,
        wanted: String,
        applied: String,
        waited: Duration,
    },
    /// Neither a `pgrelay.progress` row on the target nor a slot on the
    /// source has the pipeline's name.
    #[error(
        "pipeline {pipeline:?} is unknown: no pgrelay.progress row on the target and no \
         replication slot of that name on the source; give the name of the stream's slot"
    )]
    UnknownPipeline { pipeline: String },
    /// A server returned a hash sum that is not an integer (never seen;
    /// the sum of `bigint` hashes is an integral `numeric`).
    #[error(
        "{side}: {what}: the hash sum {value:?} is not an integer; report this as a pgrelay bug"
    )]
    BadAggregate {
        side: Side,
        what: String,
        value: String,
    },
    /// The shutdown future completed first.
    #[error("verification interrupted by shutdown")]
    Interrupted,
}

impl VerifyError {
    /// Whether running the same verification again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            VerifyError::Sql { error, .. } => error.is_transient(),
            VerifyError::NoSuchTable { .. }
            | VerifyError::UnknownPipeline { .. }
            | VerifyError::BadAggregate { .. } => false,
            VerifyError::LagTimeout { .. } | VerifyError::Interrupted => true,
        }
    }

    pub(crate) fn sql(side: Side, what: impl Into<String>, e: tokio_postgres::Error) -> Self {
        VerifyError::Sql {
            side,
            what: what.into(),
            error: SourceError::from_sql(&side.to_string(), e),
        }
    }
}
