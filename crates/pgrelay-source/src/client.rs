//! The replication client: commands on a `replication=database` connection.
//!
//! Job: run the replication commands (IDENTIFY_SYSTEM, SHOW,
//! CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT) and plain SQL through the
//! simple query protocol, and turn the connection into a
//! [`LogicalStream`] with START_REPLICATION.
//!
//! Invariants:
//! * One command at a time (`&mut self`). Every command reads the server's
//!   answer up to ReadyForQuery, so after an ErrorResponse the connection is
//!   still usable, and the first ErrorResponse is returned.
//! * Cancel safety: dropping a command's future does not corrupt the
//!   connection. Unsent bytes stay buffered and the next command first
//!   sends them and discards the abandoned command's answer up to its
//!   ReadyForQuery. The abandoned command may or may not have run.
//!   `start_logical_replication` consumes the client; dropping it midway
//!   closes the connection.
//! * After an I/O or protocol error the client is broken: later calls fail
//!   with [`SourceError::Closed`] (transient: reconnect).
//! * The server's major version comes from the `server_version`
//!   ParameterStatus, and decides command syntax (see [`crate::command`]).
//!
//! PostgreSQL reference: "Streaming Replication Protocol"
//! (protocol-replication) and "Simple Query" in "Message Flow"
//! (protocol-flow).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use pgrelay_types::Lsn;
use pgrelay_wire::Cursor;
use postgres_protocol::message::frontend;

use crate::command::{self, CreateSlotOptions, PgOutputOptions};
use crate::config::{Config, Target};
use crate::connect::{self, log_notice, parse_error, parse_parameter};
use crate::connection::Connection;
use crate::error::SourceError;
use crate::stream::{FeedbackSettings, LogicalStream};

/// What one statement of a simple query returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryResult {
    /// Column names (empty for statements without rows).
    pub columns: Vec<String>,
    /// Rows as text; SQL NULL is `None`.
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete tag, e.g. `SELECT 1`, `BEGIN`.
    pub command_tag: Option<String>,
}

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// `pg_control_system().system_identifier`: the cluster's identity,
    /// to notice being pointed at a different (e.g. restored) cluster.
    pub system_id: u64,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database of this connection.
    pub dbname: Option<String>,
}

/// The answer to CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Name of the slot.
    pub slot_name: String,
    /// WAL position from which the slot's changes are consistent: the
    /// snapshot (if any) shows exactly the data before it.
    pub consistent_point: Lsn,
    /// Exported snapshot name for `SET TRANSACTION SNAPSHOT`, with
    /// [`crate::SnapshotAction::Export`]; valid until the next command on
    /// this connection.
    pub snapshot_name: Option<String>,
    /// Output plugin (`pgoutput`).
    pub output_plugin: Option<String>,
}

/// A connection in replication mode (`replication=database`), ready for
/// commands.
pub struct ReplicationClient {
    conn: Connection,
    target: Target,
    parameters: HashMap<String, String>,
    backend_pid: i32,
    server_major: u32,
    /// A Query was sent and its ReadyForQuery not yet read.
    awaiting_ready: bool,
    broken: bool,
    /// START_REPLICATION already ran on this connection.
    streamed: bool,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("target", &self.target)
            .field("server_major", &self.server_major)
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.conn.is_tls())
            .finish_non_exhaustive()
    }
}

/// The major version in a `server_version` string such as `16.4`,
/// `15.6 (Debian 15.6-1)`, `17beta1` or `18devel`.
pub(crate) fn parse_major(server_version: &str) -> Option<u32> {
    let digits: String = server_version
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A duration as SHOW prints it (`60s`, `1min`, `500ms`, `0`, `2h`, `1d`,
/// `10us`); a bare number is in milliseconds, the unit of
/// `wal_sender_timeout`.
pub(crate) fn parse_pg_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let n: u64 = value[..split].parse().ok()?;
    let unit = value[split..].trim();
    Some(match unit {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

impl ReplicationClient {
    /// Connects (hosts in order, TLS and authentication per `config`) and
    /// waits for the server to be ready. Cancel-safe: dropping the future
    /// closes whatever was opened.
    pub async fn connect(config: &Config) -> Result<Self, SourceError> {
        let session = connect::connect(config).await?;
        let version = session
            .parameters
            .get("server_version")
            .cloned()
            .unwrap_or_default();
        let server_major = parse_major(&version).ok_or_else(|| {
            SourceError::protocol(
                session.conn.target(),
                format!("server_version {version:?} has no major version number"),
            )
        })?;
        Ok(ReplicationClient {
            conn: session.conn,
            target: session.target,
            parameters: session.parameters,
            backend_pid: session.backend_pid,
            server_major,
            awaiting_ready: false,
            broken: false,
            streamed: false,
        })
    }

    /// The server that accepted the connection.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `server_version` as reported, e.g. `16.4`.
    pub fn server_version(&self) -> &str {
        self.parameter("server_version").unwrap_or("")
    }

    /// The server's major version, e.g. 16.
    pub fn server_major(&self) -> u32 {
        self.server_major
    }

    /// A parameter the server reported (ParameterStatus), e.g.
    /// `server_encoding`, `integer_datetimes`, `application_name`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The walsender's process id (`pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub(crate) fn set_parameter(&mut self, name: String, value: String) {
        self.parameters.insert(name, value);
    }

    pub(crate) fn mark_ready(&mut self) {
        self.awaiting_ready = false;
    }

    fn closed(&self) -> SourceError {
        SourceError::Closed {
            target: self.target.to_string(),
            state: "failed",
        }
    }

    /// Sends anything left unsent and skips the rest of an abandoned
    /// command's answer.
    async fn ensure_ready(&mut self) -> Result<(), SourceError> {
        if self.broken {
            return Err(self.closed());
        }
        self.conn.flush().await?;
        while self.awaiting_ready {
            let frame = self.conn.read_frame().await?;
            match frame.tag {
                b'Z' => self.awaiting_ready = false,
                b'S' => {
                    let (k, v) = parse_parameter(self.conn.target(), &frame.body)?;
                    self.parameters.insert(k, v);
                }
                b'N' => log_notice(self.conn.target(), &frame.body),
                b'W' | b'G' | b'H' | b'd' => {
                    return Err(SourceError::protocol(
                        self.conn.target(),
                        "an abandoned command left the connection in COPY mode",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs `sql` with the simple query protocol (several statements
    /// separated by `;` are allowed) and returns one [`QueryResult`] per
    /// statement. On a replication connection this runs both replication
    /// commands and SQL, e.g. `BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ`.
    /// Cancel-safe in the sense of the module docs.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>, SourceError> {
        let result = self.simple_query_inner(sql).await;
        if let Err(e) = &result {
            if !matches!(
                e,
                SourceError::Server { .. } | SourceError::InvalidArgument { .. }
            ) {
                self.broken = true;
            }
        }
        result
    }

    async fn simple_query_inner(&mut self, sql: &str) -> Result<Vec<QueryResult>, SourceError> {
        self.ensure_ready().await?;
        frontend::query(sql, self.conn.wbuf())
            .map_err(|_| SourceError::invalid("query", "it contains a NUL character"))?;
        self.awaiting_ready = true;
        self.conn.flush().await?;
        // Only the first word: the text may carry secrets (ALTER ROLE ...).
        let command = sql.split_whitespace().next().unwrap_or("");
        tracing::debug!(server = self.conn.target(), command, "simple query");
        let mut results = Vec::new();
        let mut current: Option<QueryResult> = None;
        let mut error: Option<SourceError> = None;
        loop {
            let frame = match self.conn.read_frame().await {
                Ok(f) => f,
                // A FATAL error is followed by the server closing the
                // connection: report the error, not the EOF.
                Err(e) => return Err(error.unwrap_or(e)),
            };
            let target = self.conn.target();
            match frame.tag {
                b'T' => {
                    current = Some(QueryResult {
                        columns: parse_row_description(target, &frame.body)?,
                        ..QueryResult::default()
                    })
                }
                b'D' => {
                    let row = parse_data_row(target, &frame.body)?;
                    current
                        .get_or_insert_with(QueryResult::default)
                        .rows
                        .push(row);
                }
                b'C' => {
                    let mut c = Cursor::new(&frame.body);
                    let tag = c.cstr("command tag").map_err(|e| {
                        SourceError::protocol(target, format!("CommandComplete {e}"))
                    })?;
                    let mut done = current.take().unwrap_or_default();
                    done.command_tag = Some(tag.to_string());
                    results.push(done);
                }
                b'I' => results.push(QueryResult::default()),
                b'E' => {
                    let resp = parse_error(target, &frame.body)?;
                    if error.is_none() {
                        error = Some(SourceError::from_response(resp));
                    }
                }
                b'N' => log_notice(target, &frame.body),
                b'S' => {
                    let (k, v) = parse_parameter(target, &frame.body)?;
                    self.parameters.insert(k, v);
                }
                b'Z' => {
                    self.awaiting_ready = false;
                    break;
                }
                b'W' | b'G' | b'H' => {
                    self.broken = true;
                    return Err(SourceError::invalid(
                        "query for simple_query",
                        "it started a COPY; use start_logical_replication for START_REPLICATION \
                         (this connection is now unusable)",
                    ));
                }
                other => {
                    return Err(SourceError::protocol(
                        target,
                        format!(
                            "unexpected message {:?} in a query response",
                            char::from(other)
                        ),
                    ))
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// The single row of a replication command.
    async fn one_row(&mut self, cmd: &str, what: &str) -> Result<Vec<Option<String>>, SourceError> {
        let results = self.simple_query(cmd).await?;
        results
            .into_iter()
            .find_map(|r| r.rows.into_iter().next())
            .ok_or_else(|| {
                SourceError::protocol(self.conn.target(), format!("{what} returned no row"))
            })
    }

    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, SourceError> {
        let row = self.one_row("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM").await?;
        let target = self.conn.target().to_owned();
        let field = |i: usize, name: &str| -> Result<String, SourceError> {
            row.get(i).cloned().flatten().ok_or_else(|| {
                SourceError::protocol(&target, format!("IDENTIFY_SYSTEM without {name}"))
            })
        };
        let bad = |name: &str, v: &str| {
            SourceError::protocol(
                &target,
                format!("IDENTIFY_SYSTEM {name} {v:?} is malformed"),
            )
        };
        let system_id = field(0, "systemid")?;
        let timeline = field(1, "timeline")?;
        let xlog_pos = field(2, "xlogpos")?;
        Ok(SystemIdentity {
            system_id: system_id.parse().map_err(|_| bad("systemid", &system_id))?,
            timeline: timeline.parse().map_err(|_| bad("timeline", &timeline))?,
            xlog_pos: xlog_pos.parse().map_err(|_| bad("xlogpos", &xlog_pos))?,
            dbname: row.get(3).cloned().flatten(),
        })
    }

    /// `SHOW name`: a server setting's current value, as the server prints
    /// it (`60s`, `logical`, ...).
    pub async fn show(&mut self, name: &str) -> Result<String, SourceError> {
        let valid = !name.is_empty()
            && name.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(SourceError::invalid(
                format!("setting name {name:?}"),
                "names are letters, digits and underscores, optionally dotted (ext.name)",
            ));
        }
        let row = self.one_row(&format!("SHOW {name}"), "SHOW").await?;
        row.into_iter()
            .next()
            .flatten()
            .ok_or_else(|| SourceError::protocol(self.conn.target(), "SHOW returned NULL"))
    }

    /// CREATE_REPLICATION_SLOT for a pgoutput slot, in the syntax of the
    /// server's major. With [`crate::SnapshotAction::Export`], use the
    /// snapshot from another connection before sending the next command on
    /// this one; with `Use`, first run `BEGIN ISOLATION LEVEL REPEATABLE
    /// READ` on this connection.
    pub async fn create_replication_slot(
        &mut self,
        name: &str,
        options: &CreateSlotOptions,
    ) -> Result<CreatedSlot, SourceError> {
        let cmd = command::create_slot(name, options, self.server_major)?;
        let row = self.one_row(&cmd, "CREATE_REPLICATION_SLOT").await?;
        let target = self.conn.target().to_owned();
        let point = row.get(1).cloned().flatten().unwrap_or_default();
        let slot = CreatedSlot {
            slot_name: row
                .first()
                .cloned()
                .flatten()
                .unwrap_or_else(|| name.to_owned()),
            consistent_point: point.parse().map_err(|_| {
                SourceError::protocol(&target, format!("consistent_point {point:?} is not an LSN"))
            })?,
            snapshot_name: row.get(2).cloned().flatten(),
            output_plugin: row.get(3).cloned().flatten(),
        };
        tracing::info!(
            slot = %slot.slot_name,
            lsn = %slot.consistent_point,
            temporary = options.temporary,
            snapshot = slot.snapshot_name.as_deref().unwrap_or(""),
            "created replication slot"
        );
        Ok(slot)
    }

    /// DROP_REPLICATION_SLOT; with `wait`, waits for an active slot to be
    /// released instead of failing with SQLSTATE 55006.
    pub async fn drop_replication_slot(
        &mut self,
        name: &str,
        wait: bool,
    ) -> Result<(), SourceError> {
        let cmd = command::drop_slot(name, wait)?;
        self.simple_query(&cmd).await?;
        tracing::info!(slot = name, "dropped replication slot");
        Ok(())
    }

    /// START_REPLICATION for `slot` from `start_lsn` (`Lsn::INVALID` = the
    /// slot's confirmed position) with pgoutput `options`, returning the
    /// stream. Unless `feedback.status_interval` is set, first reads
    /// `wal_sender_timeout` to pace status updates. Consumes the client;
    /// [`LogicalStream::shutdown`] gives it back for further commands, but
    /// streaming again needs a new connection: PostgreSQL ends a second
    /// logical START_REPLICATION on the same connection immediately, so
    /// this returns [`SourceError::InvalidArgument`] instead.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start_lsn: Lsn,
        options: &PgOutputOptions,
        feedback: FeedbackSettings,
    ) -> Result<LogicalStream, SourceError> {
        if self.streamed {
            return Err(SourceError::invalid(
                "second START_REPLICATION on one connection",
                "the walsender ends a second logical START_REPLICATION on the same connection at \
                 once (its end-of-streaming state is never reset); open a new connection",
            ));
        }
        let cmd = command::start_replication(slot, start_lsn, options, self.server_major)?;
        let status_interval = match feedback.status_interval {
            Some(d) => d,
            None => {
                let raw = self.show("wal_sender_timeout").await?;
                let timeout = parse_pg_duration(&raw).ok_or_else(|| {
                    SourceError::protocol(
                        self.conn.target(),
                        format!("wal_sender_timeout {raw:?} is not a duration"),
                    )
                })?;
                if timeout.is_zero() {
                    Duration::from_secs(10)
                } else {
                    timeout / 3
                }
            }
        };
        self.ensure_ready().await?;
        frontend::query(&cmd, self.conn.wbuf()).map_err(|_| {
            SourceError::invalid("START_REPLICATION", "it contains a NUL character")
        })?;
        self.awaiting_ready = true;
        self.conn.flush().await?;
        tracing::debug!(server = self.conn.target(), command = %cmd, "starting replication");
        let mut error = None;
        loop {
            let frame = match self.conn.read_frame().await {
                Ok(f) => f,
                Err(e) => return Err(error.unwrap_or(e)),
            };
            let target = self.conn.target();
            match frame.tag {
                b'W' => {
                    self.streamed = true;
                    self.conn.detach_reader()?;
                    break;
                }
                b'E' => {
                    let resp = parse_error(target, &frame.body)?;
                    error.get_or_insert(SourceError::from_response(resp));
                }
                b'Z' => {
                    self.awaiting_ready = false;
                    return Err(error.unwrap_or_else(|| {
                        SourceError::protocol(target, "START_REPLICATION ended without streaming")
                    }));
                }
                b'N' => log_notice(target, &frame.body),
                b'S' => {
                    let (k, v) = parse_parameter(target, &frame.body)?;
                    self.parameters.insert(k, v);
                }
                other => {
                    return Err(SourceError::protocol(
                        target,
                        format!(
                            "unexpected message {:?} after START_REPLICATION",
                            char::from(other)
                        ),
                    ))
                }
            }
        }
        tracing::info!(
            slot,
            lsn = %start_lsn,
            proto_version = options.proto_version.unwrap_or(command::max_proto_version(self.server_major)),
            status_interval_ms = u64::try_from(status_interval.as_millis()).unwrap_or(u64::MAX),
            "logical replication started"
        );
        Ok(LogicalStream::new(
            self,
            slot.to_owned(),
            start_lsn,
            status_interval,
            feedback,
        ))
    }

    /// Ends the session politely (Terminate) and closes the socket.
    /// Dropping the future (or the client) just closes the socket.
    pub async fn close(mut self) -> Result<(), SourceError> {
        if !self.broken {
            self.ensure_ready().await?;
            frontend::terminate(self.conn.wbuf());
            self.conn.flush().await?;
        }
        self.conn.close().await;
        Ok(())
    }
}

fn parse_row_description(target: &str, body: &Bytes) -> Result<Vec<String>, SourceError> {
    let bad = |e| SourceError::protocol(target, format!("RowDescription {e}"));
    let mut c = Cursor::new(body);
    let n = c.count_i16("field count").map_err(bad)?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        columns.push(c.cstr("field name").map_err(bad)?.to_string());
        c.bytes(18, "field attributes").map_err(bad)?;
    }
    c.finish().map_err(bad)?;
    Ok(columns)
}

fn parse_data_row(target: &str, body: &Bytes) -> Result<Vec<Option<String>>, SourceError> {
    let bad = |e| SourceError::protocol(target, format!("DataRow {e}"));
    let mut c = Cursor::new(body);
    let n = c.count_i16("column count").map_err(bad)?;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = c.i32("value length").map_err(bad)?;
        if len < 0 {
            row.push(None);
        } else {
            let len = usize::try_from(len).unwrap_or(0);
            let v = c.bytes(len, "value").map_err(bad)?;
            row.push(Some(String::from_utf8_lossy(&v).into_owned()));
        }
    }
    c.finish().map_err(bad)?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors() {
        for (v, m) in [
            ("14.11", Some(14)),
            ("15.6 (Debian 15.6-1.pgdg120+2)", Some(15)),
            ("17beta1", Some(17)),
            ("18devel", Some(18)),
            ("9.6.24", Some(9)),
            ("", None),
            ("x", None),
        ] {
            assert_eq!(parse_major(v), m, "{v}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("60000"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_pg_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_pg_duration("-1"), None);
        assert_eq!(parse_pg_duration("5 fortnights"), None);
    }

    #[test]
    fn row_parsing() {
        let body = Bytes::from_static(b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff");
        assert_eq!(
            parse_data_row("t", &body).expect("row"),
            vec![Some("ab".to_owned()), None]
        );
        let body = Bytes::from_static(b"\x00\x01\x00\x00\x00\x05ab");
        assert!(parse_data_row("t", &body).is_err());
        let mut desc = b"\x00\x01slot_name\x00".to_vec();
        desc.extend_from_slice(&[0; 18]);
        assert_eq!(
            parse_row_description("t", &Bytes::from(desc)).expect("desc"),
            vec!["slot_name".to_owned()]
        );
    }
}
