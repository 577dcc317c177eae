//! `ApplyError`: why applying to a target failed, and whether retrying on a
//! new connection can succeed.
//!
//! Invariants: every error is either transient (the server went away,
//! restarted, ran out of connection slots, or aborted the transaction to
//! resolve a serialization conflict or deadlock: reconnect, build a new
//! `Applier`, replay from the durable progress) or fatal (the target refuses
//! the change: a constraint, a missing table or column, a permission; a
//! human must fix the target first). Fatal errors raised while applying a
//! change name the table and the source commit LSN, and say how to fix it.
//! Passwords never appear: messages come from the server's error fields and
//! our own text, never from connection strings.
//!
//! PostgreSQL reference: "PostgreSQL Error Codes" (errcodes-appendix).

use std::fmt;

use pgrelay_types::Lsn;

/// Where in the stream an error happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorContext {
    /// `schema.table` on the target, if the failing statement was about one table.
    pub table: Option<String>,
    /// Commit LSN of the source transaction being applied (for a run of
    /// inserts spanning several source transactions, the first one).
    pub commit_lsn: Option<Lsn>,
    /// What was being done, e.g. "insert", "COPY of 500 rows", "commit".
    pub operation: String,
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.operation)?;
        if let Some(t) = &self.table {
            write!(f, " on table {t}")?;
        }
        if let Some(l) = self.commit_lsn {
            write!(f, " (source transaction commit LSN {l})")?;
        }
        Ok(())
    }
}

/// An apply failure.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The target or the connection failed in a way that can go away by
    /// itself. Reconnect, build a new `Applier`, replay from its `progress()`.
    #[error("transient target error during {context}: {message}; pgrelay reconnects and replays from the last durable progress")]
    Transient {
        /// What was being done.
        context: Box<ErrorContext>,
        /// The server's message or the connection failure.
        message: String,
        /// SQLSTATE, when the server sent one.
        sqlstate: Option<String>,
    },
    /// The target refuses the change; retrying cannot help until a human
    /// changes the target.
    #[error("target refused {context}: {message}; fix: {fix}")]
    Fatal {
        /// What was being done, on which table, for which source transaction.
        context: Box<ErrorContext>,
        /// The server's message (with detail) or our own diagnosis.
        message: String,
        /// SQLSTATE, when the server sent one.
        sqlstate: Option<String>,
        /// What the operator should do.
        fix: String,
    },
    /// The caller used the API out of order (a bug in the caller, not in the
    /// target), or the Applier was used after an error.
    #[error("apply API misuse: {0}")]
    Usage(String),
}

impl ApplyError {
    /// Whether reconnecting and replaying can succeed without a human.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Transient { .. })
    }

    /// The SQLSTATE the server reported, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ApplyError::Transient { sqlstate, .. } | ApplyError::Fatal { sqlstate, .. } => {
                sqlstate.as_deref()
            }
            ApplyError::Usage(_) => None,
        }
    }

    /// Where it happened, if it happened on the target.
    pub fn context(&self) -> Option<&ErrorContext> {
        match self {
            ApplyError::Transient { context, .. } | ApplyError::Fatal { context, .. } => {
                Some(context)
            }
            ApplyError::Usage(_) => None,
        }
    }

    /// A fatal error raised by pgrelay itself (no server error).
    pub(crate) fn fatal(context: ErrorContext, message: String, fix: String) -> Self {
        ApplyError::Fatal {
            context: Box::new(context),
            message,
            sqlstate: None,
            fix,
        }
    }

    /// Classifies a tokio-postgres error.
    pub(crate) fn from_pg(e: &tokio_postgres::Error, context: ErrorContext) -> Self {
        let Some(db) = e.as_db_error() else {
            // No SQLSTATE: the connection itself failed (I/O, closed).
            return ApplyError::Transient {
                context: Box::new(context),
                message: describe_io(e),
                sqlstate: None,
            };
        };
        let code = db.code().code().to_string();
        let mut message = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            message.push_str("; ");
            message.push_str(d);
        }
        if let Some(h) = db.hint() {
            message.push_str("; hint: ");
            message.push_str(h);
        }
        message.push_str(&format!(" (SQLSTATE {code})"));
        if is_transient_sqlstate(&code) {
            return ApplyError::Transient {
                context: Box::new(context),
                message,
                sqlstate: Some(code),
            };
        }
        let fix = fix_for(&code, context.table.as_deref());
        ApplyError::Fatal {
            context: Box::new(context),
            message,
            sqlstate: Some(code),
            fix,
        }
    }
}

fn describe_io(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// SQLSTATEs after which the same work can succeed on a new connection.
pub(crate) fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(
            code,
            "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "53300" // too_many_connections
                | "53400" // configuration_limit_exceeded
                | "55P03" // lock_not_available (lock_timeout)
                | "57014" // query_canceled (statement_timeout, pg_cancel_backend)
                | "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now
                | "57P05" // idle_session_timeout
                | "25P03" // idle_in_transaction_session_timeout
                | "58030" // io_error
        )
}

fn fix_for(code: &str, table: Option<&str>) -> String {
    let t = table.unwrap_or("the table");
    match code {
        "42P01" => format!(
            "create {t} on the target with the source's definition (pgrelay copies rows, not \
             schema; e.g. pg_dump --schema-only -t {t} SOURCE | psql TARGET), then restart"
        ),
        "42703" => format!(
            "add the missing column to {t} on the target (ALTER TABLE {t} ADD COLUMN ... with \
             the source's type), then restart"
        ),
        "42501" => format!(
            "grant the target role INSERT, UPDATE, DELETE, TRUNCATE on {t} and USAGE on its \
             schema (or connect as the table owner), then restart"
        ),
        "23505" => format!(
            "the target already holds a row with this key in {t}: the table was changed on \
             the target outside pgrelay; delete the conflicting row or re-copy the table, then \
             restart"
        ),
        "23502" => format!(
            "a column of {t} is NOT NULL on the target but the source sends NULL (or does not \
             send the column): align the target's definition with the source, then restart"
        ),
        "23503" => format!(
            "a foreign key of {t} is violated: keep session_replication_role = replica (the \
             default) so foreign keys are not checked during apply, or fix the target rows"
        ),
        "23514" | "23P01" => format!(
            "a CHECK or exclusion constraint of {t} on the target rejects a source row: make \
             the target's constraints match the source"
        ),
        c if c.starts_with("22") || c == "42804" => format!(
            "a column type of {t} differs between source and target: make the target column's \
             type match the source (ALTER TABLE {t} ALTER COLUMN ... TYPE ...), then restart"
        ),
        "25006" => "the target is read-only (a standby or default_transaction_read_only): point \
                    the target URL at a writable primary"
            .to_string(),
        _ => format!(
            "fix the target so this statement succeeds on {t}, then restart; pgrelay resumes \
             after the last durably applied source transaction"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for c in [
            "08006", "08P01", "40001", "40P01", "53300", "57P01", "57P03",
        ] {
            assert!(is_transient_sqlstate(c), "{c}");
        }
        for c in ["23505", "42P01", "42703", "42501", "22P02", "XX000"] {
            assert!(!is_transient_sqlstate(c), "{c}");
        }
        assert!(fix_for("42P01", Some("public.t")).contains("public.t"));
    }

    #[test]
    fn display_names_table_and_lsn() {
        let e = ApplyError::fatal(
            ErrorContext {
                table: Some("public.t".into()),
                commit_lsn: Some(Lsn(0x1_0000_0010)),
                operation: "update".into(),
            },
            "boom".into(),
            "do this".into(),
        );
        let s = e.to_string();
        assert!(s.contains("public.t") && s.contains("1/10") && s.contains("fix: do this"));
        assert!(!e.is_transient());
    }
}
