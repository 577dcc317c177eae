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
///
/// `Display` and `source()` are written by hand: the server errors are
/// boxed (they are large) and `source()` must return the `SourceError`
/// itself, not its box, so callers walking the chain find it.
#[derive(Debug)]
pub enum NativeError {
    /// The configuration file could not be read or parsed.
    File(pgrelay_config::ConfigFileError),
    /// The configuration is inconsistent.
    Config(String),
    /// A statement failed.
    Server {
        /// `source` or `target NAME`.
        server: String,
        /// What failed.
        source: Box<SourceError>,
    },
    /// A server could not be reached within the configured attempts.
    Unreachable {
        /// `source` or `target NAME`, with its address (no password).
        server: String,
        /// Why.
        source: Box<SourceError>,
    },
    /// A server is not set up for logical replication, or a target lacks
    /// tables or columns; the message names everything to fix.
    Precondition(String),
    /// Stopped by a shutdown request.
    Interrupted,
}

impl std::fmt::Display for NativeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NativeError::File(e) => e.fmt(f),
            NativeError::Config(m) | NativeError::Precondition(m) => f.write_str(m),
            NativeError::Server { server, source }
            | NativeError::Unreachable { server, source } => {
                write!(f, "{server}: {source}")
            }
            NativeError::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl std::error::Error for NativeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NativeError::File(e) => e.source(),
            NativeError::Server { source, .. } | NativeError::Unreachable { source, .. } => {
                Some(&**source)
            }
            _ => None,
        }
    }
}

impl From<pgrelay_config::ConfigFileError> for NativeError {
    fn from(e: pgrelay_config::ConfigFileError) -> Self {
        NativeError::File(e)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_expose_the_source_error_as_cause() {
        let e = NativeError::Unreachable {
            server: "source".into(),
            source: Box::new(SourceError::from(
                pgrelay_source::Config::parse("port=notanumber").unwrap_err(),
            )),
        };
        let cause = std::error::Error::source(&e).expect("a cause");
        assert!(cause.downcast_ref::<SourceError>().is_some());
        assert!(!e.is_config());
    }
}
