//! ErrorResponse ('E') and NoticeResponse ('N') bodies: a list of
//! (field code, NUL-terminated string) pairs ended by a zero byte.
//!
//! Invariants: unknown field codes are skipped, as the protocol requires of
//! frontends; text is decoded lossily because the whole point of an error is
//! to be shown to the operator, even if the server wrote it in a non-UTF-8
//! encoding (e.g. before `client_encoding` took effect). The three fields
//! the server always sends (severity, SQLSTATE, message) are required.
//! Transient-vs-fatal classification is by SQLSTATE only: the class says
//! whether retrying the same thing later can succeed.
//!
//! PostgreSQL reference: "Error and Notice Message Fields"
//! (protocol-error-fields) and "PostgreSQL Error Codes" (errcodes-appendix).

use std::fmt;

use bytes::Bytes;

use crate::cursor::{Cursor, CursorError};

/// A five-character SQLSTATE code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `40001` serialization_failure.
    pub const SERIALIZATION_FAILURE: SqlState = SqlState(*b"40001");
    /// `40P01` deadlock_detected.
    pub const DEADLOCK_DETECTED: SqlState = SqlState(*b"40P01");
    /// `55006` object_in_use, e.g. "replication slot is active for PID".
    pub const OBJECT_IN_USE: SqlState = SqlState(*b"55006");
    /// `57P01` admin_shutdown.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");
    /// `57P02` crash_shutdown.
    pub const CRASH_SHUTDOWN: SqlState = SqlState(*b"57P02");
    /// `57P03` cannot_connect_now (starting up, recovery, ...).
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState(*b"57P03");

    /// Parses a code: exactly five ASCII digits or upper-case letters.
    pub fn new(code: &[u8]) -> Option<Self> {
        let code: [u8; 5] = code.try_into().ok()?;
        code.iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            .then_some(SqlState(code))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Constructors only admit ASCII.
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }

    /// The two-character class, e.g. `08` for connection exceptions.
    pub fn class(&self) -> &str {
        self.as_str().get(..2).unwrap_or("??")
    }

    /// Whether retrying later (usually on a new connection) can succeed
    /// without anyone changing anything: lost connections, serialization
    /// failures and deadlocks, resource exhaustion, server shutdown/restart,
    /// and "object in use" (the replication slot is still held by a
    /// previous walsender that has not noticed we went away). Everything
    /// else, notably authentication (28), syntax/undefined objects (42) and
    /// integrity violations (23), needs a human and is fatal.
    pub fn is_transient(&self) -> bool {
        matches!(self.class(), "08" | "53")
            || matches!(
                *self,
                Self::SERIALIZATION_FAILURE
                    | Self::DEADLOCK_DETECTED
                    | Self::OBJECT_IN_USE
                    | Self::ADMIN_SHUTDOWN
                    | Self::CRASH_SHUTDOWN
                    | Self::CANNOT_CONNECT_NOW
            )
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

/// Non-localized severity (field `V`, or `S` when `V` is absent).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// `ERROR`: the current command failed.
    Error,
    /// `FATAL`: the session is over.
    Fatal,
    /// `PANIC`: the server is restarting.
    Panic,
    /// `WARNING`.
    Warning,
    /// `NOTICE`.
    Notice,
    /// `DEBUG`.
    Debug,
    /// `INFO`.
    Info,
    /// `LOG`.
    Log,
    /// A localized severity from a pre-9.6 server with no `V` field.
    Other(String),
}

impl Severity {
    fn parse(s: &str) -> Severity {
        match s {
            "ERROR" => Severity::Error,
            "FATAL" => Severity::Fatal,
            "PANIC" => Severity::Panic,
            "WARNING" => Severity::Warning,
            "NOTICE" => Severity::Notice,
            "DEBUG" => Severity::Debug,
            "INFO" => Severity::Info,
            "LOG" => Severity::Log,
            other => Severity::Other(other.to_owned()),
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    /// Non-localized severity.
    pub severity: Severity,
    /// Severity as the server printed it (`S`), possibly translated.
    pub localized_severity: String,
    /// SQLSTATE (`C`).
    pub code: SqlState,
    /// Primary message (`M`).
    pub message: String,
    /// `D`.
    pub detail: Option<String>,
    /// `H`: what the server suggests doing.
    pub hint: Option<String>,
    /// `P`: 1-based character position in the query.
    pub position: Option<String>,
    /// `p`: position in an internally generated query.
    pub internal_position: Option<String>,
    /// `q`: the internally generated query.
    pub internal_query: Option<String>,
    /// `W`: call stack context.
    pub where_: Option<String>,
    /// `s`.
    pub schema: Option<String>,
    /// `t`.
    pub table: Option<String>,
    /// `c`.
    pub column: Option<String>,
    /// `d`.
    pub data_type: Option<String>,
    /// `n`.
    pub constraint: Option<String>,
    /// `F`: server source file.
    pub file: Option<String>,
    /// `L`: server source line.
    pub line: Option<String>,
    /// `R`: server source routine.
    pub routine: Option<String>,
}

/// Why an ErrorResponse/NoticeResponse body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorResponseError {
    /// A field was cut short or the terminator was missing.
    #[error(
        "malformed ErrorResponse/NoticeResponse {0}; the connection is out of sync: \
         close it and reconnect"
    )]
    Malformed(#[from] CursorError),
    /// A field every server sends was absent.
    #[error(
        "ErrorResponse/NoticeResponse without the required {field} field (byte {offset}); \
         the peer is not a conforming PostgreSQL server: check the connection target"
    )]
    MissingField {
        /// Which field.
        field: &'static str,
        /// End of the body, where the field was expected at the latest.
        offset: usize,
    },
    /// The `C` field was not a five-character SQLSTATE.
    #[error(
        "ErrorResponse/NoticeResponse has an invalid SQLSTATE {code:?} at byte {offset}; \
         the peer is not a conforming PostgreSQL server: check the connection target"
    )]
    InvalidSqlState {
        /// The code as sent.
        code: String,
        /// Where the field's value starts.
        offset: usize,
    },
}

impl ErrorResponseError {
    /// A server that sends unparseable errors will keep doing so: fatal.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl ErrorResponse {
    /// Parses the body of an 'E' or 'N' message (without tag and length).
    pub fn parse(body: &Bytes) -> Result<Self, ErrorResponseError> {
        let mut c = Cursor::new(body);
        let mut severity_v = None;
        let mut resp = ErrorResponse {
            severity: Severity::Other(String::new()),
            localized_severity: String::new(),
            code: SqlState(*b"XX000"),
            message: String::new(),
            detail: None,
            hint: None,
            position: None,
            internal_position: None,
            internal_query: None,
            where_: None,
            schema: None,
            table: None,
            column: None,
            data_type: None,
            constraint: None,
            file: None,
            line: None,
            routine: None,
        };
        let (mut have_s, mut have_c, mut have_m) = (false, false, false);
        loop {
            let code = c.u8("field type")?;
            if code == 0 {
                break;
            }
            let value_offset = c.position();
            let raw = c.cstr_bytes("field value")?;
            let text = || String::from_utf8_lossy(&raw).into_owned();
            match code {
                b'S' => {
                    resp.localized_severity = text();
                    have_s = true;
                }
                b'V' => severity_v = Some(text()),
                b'C' => {
                    resp.code =
                        SqlState::new(&raw).ok_or_else(|| ErrorResponseError::InvalidSqlState {
                            code: text(),
                            offset: value_offset,
                        })?;
                    have_c = true;
                }
                b'M' => {
                    resp.message = text();
                    have_m = true;
                }
                b'D' => resp.detail = Some(text()),
                b'H' => resp.hint = Some(text()),
                b'P' => resp.position = Some(text()),
                b'p' => resp.internal_position = Some(text()),
                b'q' => resp.internal_query = Some(text()),
                b'W' => resp.where_ = Some(text()),
                b's' => resp.schema = Some(text()),
                b't' => resp.table = Some(text()),
                b'c' => resp.column = Some(text()),
                b'd' => resp.data_type = Some(text()),
                b'n' => resp.constraint = Some(text()),
                b'F' => resp.file = Some(text()),
                b'L' => resp.line = Some(text()),
                b'R' => resp.routine = Some(text()),
                // The protocol reserves the right to add field types and
                // tells frontends to ignore unknown ones.
                _ => {}
            }
        }
        c.finish()?;
        let missing = |field| ErrorResponseError::MissingField {
            field,
            offset: body.len(),
        };
        if !have_s {
            return Err(missing("severity (S)"));
        }
        if !have_c {
            return Err(missing("SQLSTATE code (C)"));
        }
        if !have_m {
            return Err(missing("message (M)"));
        }
        resp.severity = Severity::parse(severity_v.as_deref().unwrap_or(&resp.localized_severity));
        Ok(resp)
    }

    /// See [`SqlState::is_transient`].
    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }
}

/// `SEVERITY CODE: message` plus detail and hint, the way psql shows them.
impl fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.localized_severity, self.code, self.message
        )?;
        if let Some(d) = &self.detail {
            write!(f, " DETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " HINT: {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::CursorErrorKind;

    fn parse(b: &'static [u8]) -> Result<ErrorResponse, ErrorResponseError> {
        ErrorResponse::parse(&Bytes::from_static(b))
    }

    #[test]
    fn parses_a_real_slot_in_use_error() {
        let e = parse(
            b"SERROR\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 42\0\
              Fslot.c\0L504\0RReplicationSlotAcquire\0\0",
        )
        .expect("valid");
        assert_eq!(e.severity, Severity::Error);
        assert_eq!(e.code, SqlState::OBJECT_IN_USE);
        assert_eq!(e.routine.as_deref(), Some("ReplicationSlotAcquire"));
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "ERROR 55006: replication slot \"s\" is active for PID 42"
        );
    }

    #[test]
    fn all_fields_and_unknown_ones() {
        let e = parse(
            b"SFEHLER\0VFATAL\0C28P01\0Mm\0Dd\0Hh\0P1\0p2\0qq\0Ww\0ss\0tt\0cc\0dd\0nn\0Ff\0L1\0Rr\0Zignored\0\0",
        )
        .expect("valid");
        assert_eq!(e.severity, Severity::Fatal);
        assert_eq!(e.localized_severity, "FEHLER");
        assert_eq!(e.hint.as_deref(), Some("h"));
        assert_eq!(e.constraint.as_deref(), Some("n"));
        assert!(!e.is_transient());
        assert_eq!(e.to_string(), "FEHLER 28P01: m DETAIL: d HINT: h");
    }

    #[test]
    fn without_v_uses_s_and_bad_utf8_is_lossy() {
        let e = parse(b"SNOTICE\0C00000\0Mna\xefve\0\0").expect("valid");
        assert_eq!(e.severity, Severity::Notice);
        assert_eq!(e.message, "na\u{fffd}ve");
        let e = parse(b"SFOO\0C00000\0Mx\0\0").expect("valid");
        assert_eq!(e.severity, Severity::Other("FOO".into()));
    }

    #[test]
    fn classification() {
        let transient = [
            "08006", "08P01", "40001", "40P01", "53100", "53200", "53300", "57P01", "57P02",
            "57P03", "55006",
        ];
        let fatal = [
            "28P01", "28000", "42601", "42704", "23505", "40003", "55000", "57014", "XX000",
            "58P01",
        ];
        for c in transient {
            assert!(
                SqlState::new(c.as_bytes()).is_some_and(|s| s.is_transient()),
                "{c}"
            );
        }
        for c in fatal {
            assert!(
                SqlState::new(c.as_bytes()).is_some_and(|s| !s.is_transient()),
                "{c}"
            );
        }
        assert_eq!(
            SqlState::new(b"08006").map(|s| s.class().to_owned()),
            Some("08".into())
        );
    }

    #[test]
    fn malformed_bodies() {
        let err = parse(b"SERROR\0C08006\0Mx\0").expect_err("no terminator");
        assert_eq!(
            err,
            ErrorResponseError::Malformed(CursorError {
                offset: 17,
                kind: CursorErrorKind::UnexpectedEnd {
                    field: "field type",
                    needed: 1,
                    available: 0
                }
            })
        );
        let err = parse(b"SERROR\0C08006\0Mx").expect_err("unterminated value");
        assert!(matches!(
            err,
            ErrorResponseError::Malformed(CursorError {
                offset: 15,
                kind: CursorErrorKind::MissingNul { .. }
            })
        ));
        let err = parse(b"SERROR\0Mx\0\0").expect_err("no code");
        assert_eq!(
            err,
            ErrorResponseError::MissingField {
                field: "SQLSTATE code (C)",
                offset: 11
            }
        );
        let err = parse(b"C08006\0Mx\0\0").expect_err("no severity");
        assert!(matches!(
            err,
            ErrorResponseError::MissingField {
                field: "severity (S)",
                ..
            }
        ));
        let err = parse(b"SERROR\0C08006\0\0").expect_err("no message");
        assert!(matches!(
            err,
            ErrorResponseError::MissingField {
                field: "message (M)",
                ..
            }
        ));
        let err = parse(b"SERROR\0C0800\0Mx\0\0").expect_err("short code");
        assert_eq!(
            err,
            ErrorResponseError::InvalidSqlState {
                code: "0800".into(),
                offset: 8
            }
        );
        assert!(parse(b"SERROR\0Cabcde\0Mx\0\0").is_err());
        let err = parse(b"SERROR\0C08006\0Mx\0\0junk").expect_err("trailing");
        assert!(matches!(
            err,
            ErrorResponseError::Malformed(CursorError {
                offset: 18,
                kind: CursorErrorKind::TrailingBytes { count: 4 }
            })
        ));
        assert!(!err.is_transient());
        assert!(parse(b"").is_err());
    }
}
