//! pgrelay-native: keeps PostgreSQL's built-in logical replication
//! (one publication on a source, one subscription per target) in the shape
//! a YAML file describes, and reports how it is doing.
//!
//! * [`config`]: the `replication:` format of existing deployments and
//!   pgrelay's own YAML, both resolved to one [`NativeConfig`].
//! * [`reconcile`]: compares the desired state with the catalogs
//!   (`pg_publication_tables`, `pg_subscription`, `pg_subscription_rel`),
//!   plans the SQL that closes the gap, runs it (or prints it for
//!   `--dry-run`), and tears everything down.
//! * [`status`]: per-target subscription state, table sync states, LSNs
//!   and lag, as JSON for `/health` and `status --json` and as metrics.
//!
//! Invariants: planning never changes anything; a reconcile of a state that
//! already matches plans nothing; passwords appear only in the subscription
//! connection string sent to the target server, never in a plan's display
//! form, a log line, an error or a status document.
//! PostgreSQL docs: "Logical Replication" (logical-replication),
//! "CREATE PUBLICATION", "CREATE SUBSCRIPTION", "ALTER SUBSCRIPTION".

pub mod config;
pub mod reconcile;
pub mod sql;
pub mod status;

pub use config::{NativeConfig, Settings, TableSpec, TargetConfig};
pub use reconcile::{
    apply, connect_all, execute, plan, reenable_ready, teardown_plan, wait_for_sync, Action, Plan,
    Server, Servers,
};
pub use status::{collect_status, record_metrics, Status, TargetStatus};

use pgrelay_source::SourceError;

/// What can go wrong in `pgrelay native`.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// The configuration file could not be read or parsed.
    #[error(transparent)]
    File(#[from] pgrelay_config::ConfigFileError),
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// A statement failed.
    #[error("{server}: {source}")]
    Server {
        /// `source` or `target NAME`, with its address.
        server: String,
        /// What failed.
        #[source]
        source: Box<SourceError>,
    },
    /// A server could not be reached within the configured attempts.
    #[error("{server}: {source}")]
    Unreachable {
        /// `source` or `target NAME`, with its address (no password).
        server: String,
        /// Why.
        #[source]
        source: Box<SourceError>,
    },
    /// A server is not set up for logical replication, or a target lacks
    /// tables or columns; the message names everything to fix.
    #[error("{0}")]
    Precondition(String),
    /// Stopped by a shutdown request.
    #[error("interrupted")]
    Interrupted,
}

impl NativeError {
    /// Whether retrying later, unchanged, can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            NativeError::Server { source, .. } | NativeError::Unreachable { source, .. } => {
                source.is_transient()
            }
            NativeError::Interrupted => true,
            _ => false,
        }
    }

    /// Whether the configuration (not a server) is at fault.
    pub fn is_config(&self) -> bool {
        matches!(self, NativeError::File(_) | NativeError::Config(_))
    }
}
