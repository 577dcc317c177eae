//! The one error type of pgrelay-replica: what failed, what to do about
//! it, and whether running the same command again can help
//! ([`ReplicaError::is_transient`]). Messages never contain a password:
//! SQL errors carry only the server's message, detail and hint, and
//! connection strings are redacted before they reach a message.

use pgrelay_source::SourceError;

/// Everything that can go wrong while managing replicas and roles.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Connecting to a server failed (see the wrapped error's own hint).
    #[error(transparent)]
    Connect(#[from] SourceError),
    /// A statement failed on a server.
    #[error("{context}: {message}")]
    Sql {
        /// What pgrelay was doing.
        context: String,
        /// The server's message, detail and hint.
        message: String,
        /// Whether retrying can help (lost connection, server starting...).
        transient: bool,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
    },
    /// The servers are not in a state that allows the operation; the
    /// message lists what to change.
    #[error("{0}")]
    Precondition(String),
    /// A PostgreSQL program is not installed; the message names the package.
    #[error("{0}")]
    ToolMissing(String),
    /// An external program (pg_basebackup, pg_ctl, pg_rewind) failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// The program and its purpose.
        what: String,
        /// Its output, and a hint when the failure is a known one.
        detail: String,
    },
    /// Waiting for a server state did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The file and the operation.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A role cannot be dropped as asked; the message explains the choices.
    #[error("{0}")]
    RoleOwnsObjects(String),
}

impl ReplicaError {
    /// Whether running the same command again later can succeed without
    /// the operator changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicaError::Connect(e) => e.is_transient(),
            ReplicaError::Sql { transient, .. } => *transient,
            ReplicaError::Timeout(_) => true,
            _ => false,
        }
    }

    /// A failed statement, with the server's message, detail and hint.
    pub fn sql(context: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        let (message, code) = match e.as_db_error() {
            Some(db) => {
                let mut m = db.message().to_string();
                if let Some(d) = db.detail() {
                    m.push_str(&format!(" ({d})"));
                }
                if let Some(h) = db.hint() {
                    m.push_str(&format!("; hint: {h}"));
                }
                (m, Some(db.code().code().to_string()))
            }
            None => (e.to_string(), None),
        };
        ReplicaError::Sql {
            context: context.into(),
            message,
            transient: pgrelay_source::is_transient_sql_error(e),
            code,
        }
    }

    /// A failed file operation on `path`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ReplicaError::Io {
            what: what.into(),
            source,
        }
    }

    /// The SQLSTATE of a failed statement.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicaError::Sql { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}
