//! The errors of this crate and whether retrying can help.
//!
//! Job: one error type, [`SourceError`], for everything that can go wrong
//! between reading a connection string and the end of a replication stream,
//! each message written for the operator who has to act on it.
//!
//! Invariants: no error ever contains a password (configuration errors
//! report positions and key names, never values of `password`); every
//! variant is classified by [`SourceError::is_transient`]: `true` means
//! reconnecting later can succeed without anyone changing anything (lost
//! connections, timeouts, server restarts, SQLSTATEs that
//! [`SqlState::is_transient`] calls transient); `false` means a human must
//! fix configuration, credentials, certificates or the server.
//!
//! PostgreSQL reference: "Error and Notice Message Fields"
//! (protocol-error-fields), "PostgreSQL Error Codes" (errcodes-appendix).

use std::fmt;
use std::io;
use std::time::Duration;

use pgrelay_wire::{ErrorResponse, SqlState};

use crate::config::ConfigError;

/// Everything that can fail in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The connection string or a configuration value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A socket operation failed or the server closed the connection.
    #[error("{context}: {source}; the connection is lost, reconnect (pgrelay retries this)")]
    Io {
        /// What was being done, with the server address.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Connecting (including TLS and authentication) took longer than
    /// `connect_timeout`.
    #[error(
        "connecting to {target} timed out after {timeout:?} (connect_timeout); check that the \
         server is up and reachable, or raise connect_timeout"
    )]
    ConnectTimeout {
        /// The host being tried.
        target: String,
        /// The configured limit.
        timeout: Duration,
    },

    /// Every host of a multi-host connection string (or both the TLS and
    /// the plain attempt of `sslmode=prefer`/`allow`) failed.
    #[error("could not connect: {}", AttemptList(.attempts))]
    ConnectFailed {
        /// One entry per attempt, in the order they were made.
        attempts: Vec<ConnectAttempt>,
    },

    /// The TLS handshake failed or the server certificate was rejected.
    #[error(
        "TLS with {target} failed: {message}; check sslmode, sslrootcert (the CA that signed the \
         server certificate), that the host name is in the certificate (verify-full), and \
         sslcert/sslkey"
    )]
    Tls {
        /// The host.
        target: String,
        /// What rustls or the certificate files reported.
        message: String,
    },

    /// The server refused TLS although `sslmode` requires it.
    #[error(
        "{target} does not accept TLS connections, but sslmode={sslmode} requires TLS; enable ssl \
         on the server or lower sslmode"
    )]
    TlsRefused {
        /// The host.
        target: String,
        /// The configured mode.
        sslmode: &'static str,
    },

    /// The server rejected our credentials (SQLSTATE class 28).
    #[error(
        "authentication as user \"{user}\" to {target} failed: {message} (SQLSTATE {sqlstate}); \
         check the password{password_source} and the server's pg_hba.conf"
    )]
    AuthenticationFailed {
        /// Role name.
        user: String,
        /// The host.
        target: String,
        /// SQLSTATE sent by the server.
        sqlstate: SqlState,
        /// The server's message.
        message: String,
        /// Where the password came from, e.g. " (from /home/u/.pgpass)".
        password_source: String,
    },

    /// The client cannot authenticate the way the server asks (no
    /// password, unsupported method, channel binding not possible), or the
    /// server failed to prove it knows the password.
    #[error("authentication as user \"{user}\" to {target} is not possible: {message}")]
    Authentication {
        /// Role name.
        user: String,
        /// The host.
        target: String,
        /// What to fix.
        message: String,
    },

    /// The server sent an ErrorResponse.
    #[error("{}", ServerDisplay { sqlstate, message, detail: detail.as_deref(), hint: hint.as_deref() })]
    Server {
        /// SQLSTATE.
        sqlstate: SqlState,
        /// Primary message.
        message: String,
        /// Detail, if any.
        detail: Option<String>,
        /// The server's suggestion, if any.
        hint: Option<String>,
        /// Whether retrying later can succeed ([`SqlState::is_transient`]).
        transient: bool,
    },

    /// The server sent something the protocol does not allow here.
    #[error(
        "protocol violation from {target}: {message}; the connection is out of sync: reconnect, \
         and report a bug if it repeats"
    )]
    Protocol {
        /// The host.
        target: String,
        /// What was unexpected.
        message: String,
    },

    /// An option needs a newer server.
    #[error(
        "{feature} needs PostgreSQL {minimum_major} or newer, but the server is PostgreSQL \
         {server_major}; leave the option out or upgrade the server"
    )]
    Unsupported {
        /// The option or feature.
        feature: String,
        /// The server's major version.
        server_major: u32,
        /// The first major that supports it.
        minimum_major: u32,
    },

    /// An argument (slot name, publication list, option value) is invalid.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// What was given.
        what: String,
        /// Why it is rejected and what would be accepted.
        reason: String,
    },

    /// An ordinary SQL connection ([`crate::connect_sql`]) or a statement
    /// on it failed.
    #[error("{target}: {message}")]
    Sql {
        /// The host, `host:port` or socket path.
        target: String,
        /// The server's or the driver's message, with detail and hint.
        message: String,
        /// SQLSTATE, when the server reported one.
        sqlstate: Option<SqlState>,
        /// Whether retrying later can succeed.
        transient: bool,
    },

    /// The stream or client was used after it failed or ended.
    #[error("the replication connection to {target} already {state}; open a new connection")]
    Closed {
        /// The host.
        target: String,
        /// "failed" or "ended".
        state: &'static str,
    },
}

impl SourceError {
    /// Whether reconnecting later can succeed without a human changing
    /// anything.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Io { .. } | SourceError::ConnectTimeout { .. } => true,
            SourceError::Server { transient, .. } | SourceError::Sql { transient, .. } => {
                *transient
            }
            SourceError::ConnectFailed { attempts } => {
                attempts.iter().any(|a| a.error.is_transient())
            }
            SourceError::Closed { state, .. } => *state == "failed",
            SourceError::Config(_)
            | SourceError::Tls { .. }
            | SourceError::TlsRefused { .. }
            | SourceError::AuthenticationFailed { .. }
            | SourceError::Authentication { .. }
            | SourceError::Protocol { .. }
            | SourceError::Unsupported { .. }
            | SourceError::InvalidArgument { .. } => false,
        }
    }

    /// The SQLSTATE, for errors the server reported.
    pub fn sqlstate(&self) -> Option<SqlState> {
        match self {
            SourceError::Server { sqlstate, .. }
            | SourceError::AuthenticationFailed { sqlstate, .. } => Some(*sqlstate),
            SourceError::Sql { sqlstate, .. } => *sqlstate,
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        SourceError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn protocol(target: &str, message: impl Into<String>) -> Self {
        SourceError::Protocol {
            target: target.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn from_response(resp: ErrorResponse) -> Self {
        SourceError::Server {
            transient: resp.code.is_transient(),
            sqlstate: resp.code,
            message: resp.message,
            detail: resp.detail,
            hint: resp.hint,
        }
    }

    /// Wraps a tokio-postgres error from a connection to `target`.
    pub fn from_sql(target: &str, e: tokio_postgres::Error) -> Self {
        let transient = crate::sql::is_transient_sql_error(&e);
        let (sqlstate, message) = match e.as_db_error() {
            Some(db) => {
                let mut m = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(d) = db.detail() {
                    m.push_str(&format!("; detail: {d}"));
                }
                if let Some(h) = db.hint() {
                    m.push_str(&format!("; hint: {h}"));
                }
                (SqlState::new(db.code().code().as_bytes()), m)
            }
            None => {
                let mut m = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    m.push_str(&format!(": {src}"));
                }
                (None, m)
            }
        };
        SourceError::Sql {
            target: target.to_owned(),
            message,
            sqlstate,
            transient,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        SourceError::InvalidArgument {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// One failed connection attempt of a [`SourceError::ConnectFailed`].
#[derive(Debug)]
pub struct ConnectAttempt {
    /// `host:port` (or the socket path) and whether TLS was used.
    pub target: String,
    /// Whether this attempt used TLS.
    pub tls: bool,
    /// Why it failed.
    pub error: Box<SourceError>,
}

struct AttemptList<'a>(&'a [ConnectAttempt]);

impl fmt::Display for AttemptList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; then ")?;
            }
            let tls = if a.tls { " with TLS" } else { "" };
            write!(f, "[{}{}] {}", a.target, tls, a.error)?;
        }
        Ok(())
    }
}

struct ServerDisplay<'a> {
    sqlstate: &'a SqlState,
    message: &'a str,
    detail: Option<&'a str>,
    hint: Option<&'a str>,
}

impl fmt::Display for ServerDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server error {}: {}", self.sqlstate, self.message)?;
        if let Some(d) = self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let io = SourceError::io("reading from h:1", io::ErrorKind::UnexpectedEof.into());
        assert!(io.is_transient());
        let server = |code: &[u8]| SourceError::Server {
            sqlstate: SqlState::new(code).expect("code"),
            message: "m".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
            transient: SqlState::new(code).expect("code").is_transient(),
        };
        assert!(server(b"57P01").is_transient());
        assert!(!server(b"42704").is_transient());
        assert_eq!(
            server(b"42704").to_string(),
            "server error 42704: m; detail: d; hint: h"
        );
        let multi = SourceError::ConnectFailed {
            attempts: vec![
                ConnectAttempt {
                    target: "a:1".into(),
                    tls: true,
                    error: Box::new(server(b"28P01")),
                },
                ConnectAttempt {
                    target: "b:2".into(),
                    tls: false,
                    error: Box::new(io),
                },
            ],
        };
        assert!(multi.is_transient());
        let text = multi.to_string();
        assert!(
            text.contains("[a:1 with TLS]") && text.contains("; then [b:2]"),
            "{text}"
        );
    }
}
