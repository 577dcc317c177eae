//! `pgrelay tail`: the logical change stream as JSON lines.
//!
//! A window on what pgrelay receives, for debugging and for piping into
//! other tools. It opens a replication connection, uses (or creates) a
//! publication and a slot, streams with the highest pgoutput protocol the
//! server speaks (in-progress streaming and two-phase on where available),
//! reassembles transactions in commit order (large ones spill to disk
//! beyond the memory budget) and prints one JSON object per event.
//!
//! Invariants: a transaction is confirmed to the server (its end LSN set as
//! flushed) only after all its lines were written and stdout flushed, so a
//! restart with the same `--slot` resumes without losing a transaction.
//! Values are printed in PostgreSQL's text output form; with `--binary`
//! the server sends binary and each value is turned back into text by the
//! source server itself (its type's receive then output function, over an
//! ordinary connection), so the output is identical to text mode.
//! Temporary slots and publications created for `--table` are removed on
//! exit. PostgreSQL docs: "Logical Streaming Replication Protocol"
//! (protocol-logical-replication).

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use pgrelay_pgoutput::{
    Decoder, DecoderConfig, ProtocolVersion, Reassembled, Reassembler, Streaming as WireStreaming,
};
use pgrelay_source::{
    max_proto_version, Config, CreateSlotOptions, FeedbackSettings, LogicalStream, PgOutputOptions,
    ReplicationClient, SnapshotAction, Streaming,
};
use pgrelay_spill::SpillDir;
use pgrelay_types::{Change, Lsn, OldTuple, RelationInfo, TransactionInfo, Tuple, Value};

use crate::sqlconn;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Source server: a postgres:// URL or a key=value connection string.
    #[arg(long, value_name = "URL")]
    source: String,
    /// Publication to stream.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "table",
        required_unless_present = "table"
    )]
    publication: Option<String>,
    /// Table to stream (repeatable); a temporary publication is created for
    /// them and dropped at exit.
    #[arg(long, value_name = "SCHEMA.TABLE")]
    table: Vec<String>,
    /// Persistent slot to use (created if missing) instead of a temporary
    /// one; lets a later run resume where this one stopped.
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Start streaming at this LSN (X/Y) instead of the slot's position.
    #[arg(long, value_name = "LSN")]
    from: Option<Lsn>,
    /// Ask the server for binary column values (still printed as text).
    #[arg(long)]
    binary: bool,
    /// Exit 0 after the first transaction that commits at or after this LSN,
    /// or once the server has sent everything up to it.
    #[arg(long, value_name = "LSN")]
    until: Option<Lsn>,
    /// Bytes of in-progress transactions kept in memory before spilling.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    memory_budget: usize,
    /// Where large transactions spill (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
}

/// An error for which `tail` exits 2: bad arguments or an unreachable server.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

use pgrelay_types::sql::{quote_ident, quote_literal};

/// `schema.table` or `table` (then `public`), each part optionally quoted.
fn qualified_table(spec: &str) -> Result<String, UsageError> {
    let parts: Vec<&str> = spec.splitn(2, '.').collect();
    let ok = |p: &str| !p.is_empty();
    match parts.as_slice() {
        [t] if ok(t) => Ok(format!("public.{}", quote_ident(t))),
        [s, t] if ok(s) && ok(t) => Ok(format!("{}.{}", quote_ident(s), quote_ident(t))),
        _ => Err(UsageError(format!(
            "--table {spec:?} is not a table name; write it as schema.table, e.g. public.orders"
        ))),
    }
}

fn unique_suffix() -> String {
    format!(
        "{}_{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

pub async fn run(args: TailArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let config = Config::parse(&args.source).map_err(|e| UsageError(format!("--source: {e}")))?;
    let tables = args
        .table
        .iter()
        .map(|t| qualified_table(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = ReplicationClient::connect(&config)
        .await
        .map_err(|e| UsageError(format!("cannot connect to {}: {e}", config.redacted())))?;
    let major = client.server_major();

    let (publication, own_publication) = match &args.publication {
        Some(p) => (p.clone(), false),
        None => {
            let name = format!("pgrelay_tail_{}", unique_suffix());
            client
                .simple_query(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    quote_ident(&name),
                    tables.join(", ")
                ))
                .await
                .map_err(|e| UsageError(format!("cannot create a publication for --table: {e}")))?;
            (name, true)
        }
    };

    let result = stream(&args, &config, client, major, &publication, shutdown).await;

    if own_publication {
        // A new connection: the stream's may be gone after an error.
        let cleanup = async {
            let mut c = ReplicationClient::connect(&config).await?;
            c.simple_query(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(&publication)
            ))
            .await?;
            c.close().await
        };
        if let Err(e) = cleanup.await {
            tracing::warn!(publication = %publication, error = %e, "could not drop the temporary publication; drop it by hand");
        }
    }
    result
}

async fn stream(
    args: &TailArgs,
    config: &Config,
    mut client: ReplicationClient,
    major: u32,
    publication: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let proto = max_proto_version(major);
    let two_phase = major >= 15;
    let slot = match &args.slot {
        Some(slot) => {
            let exists = client
                .simple_query(&format!(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = {}",
                    quote_literal(slot)
                ))
                .await?
                .iter()
                .any(|r| !r.rows.is_empty());
            if !exists {
                let opts = CreateSlotOptions {
                    temporary: false,
                    snapshot: SnapshotAction::NoExport,
                    two_phase,
                    failover: false,
                };
                client.create_replication_slot(slot, &opts).await?;
                tracing::info!(slot = %slot, "created replication slot");
            }
            slot.clone()
        }
        None => {
            let name = format!("pgrelay_tail_{}", unique_suffix());
            let opts = CreateSlotOptions {
                temporary: true,
                snapshot: SnapshotAction::NoExport,
                two_phase,
                failover: false,
            };
            client.create_replication_slot(&name, &opts).await?;
            name
        }
    };

    let mut options = PgOutputOptions::new([publication.to_string()]);
    options.proto_version = Some(proto);
    options.binary = args.binary;
    options.messages = true;
    options.streaming = if proto >= 2 {
        Streaming::On
    } else {
        Streaming::Off
    };
    options.two_phase = two_phase;

    let converter = if args.binary {
        let client = pgrelay_source::connect_sql(config)
            .await
            .context("--binary needs an ordinary connection to the source to print values")?;
        Some(sqlconn::TextConverter::new(client))
    } else {
        None
    };

    let decoder_config = DecoderConfig {
        proto_version: ProtocolVersion::try_from(proto)
            .map_err(|_| anyhow!("protocol version {proto} is not known to the decoder"))?,
        streaming: if proto >= 2 {
            WireStreaming::On
        } else {
            WireStreaming::Off
        },
    };
    let spill_parent = args.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spill = SpillDir::open(&spill_parent, None)?;
    let mut printer = Printer {
        out: std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock()),
        line: String::with_capacity(1024),
        txn_key: None,
        txn_fields: String::new(),
        converter,
    };

    let start = args.from.unwrap_or(Lsn::INVALID);
    let mut stream = client
        .start_logical_replication(&slot, start, &options, FeedbackSettings::default())
        .await?;
    tracing::info!(slot = %slot, publication = %publication, proto, "streaming");

    let mut decoder = Decoder::new(decoder_config);
    let mut reassembler = Reassembler::new(spill, args.memory_budget);
    tokio::pin!(shutdown);
    // Checks `--until` against the server's position while the stream is
    // idle (no transaction arrives to compare with).
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome: Result<()> = loop {
        // One interval for the whole run: a timer per message would cost
        // more than decoding it.
        let data = tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            r = stream.next() => r,
            _ = tick.tick() => {
                if idle_past(&stream, &reassembler, args.until) {
                    break Ok(());
                }
                continue;
            }
        };
        let data = match data {
            Ok(Some(d)) => d,
            Ok(None) => {
                break Err(anyhow!(
                    "the server ended the replication stream; run tail again to resume"
                ))
            }
            Err(e) => break Err(e.into()),
        };
        let msg = decoder
            .decode(&data.data)
            .with_context(|| format!("decoding the message at {}", data.wal_start))?;
        let Some(out) = reassembler.push(msg)? else {
            continue;
        };
        match out {
            Reassembled::Message(m) => {
                printer.message(&m, None)?;
                printer.flush()?;
            }
            // tail never turns eager streams on: it prints whole
            // transactions, in commit order.
            Reassembled::StreamChange { .. }
            | Reassembled::StreamAbort { .. }
            | Reassembled::StreamCommit(_) => {}
            Reassembled::Transaction(txn) => {
                let info = txn.info.clone();
                printer.begin(&info)?;
                for change in txn {
                    printer.change(&info, &change?).await?;
                }
                printer.commit(&info)?;
                printer.flush()?;
                let confirm = match reassembler.flush_limit() {
                    Some(limit) => info.end_lsn.min(limit),
                    None => info.end_lsn,
                };
                stream.set_flushed(confirm);
                if args.until.is_some_and(|u| info.commit_lsn >= u) {
                    break Ok(());
                }
            }
        }
    };
    printer.flush()?;
    match outcome {
        Ok(()) => {
            let client = stream.shutdown().await?;
            client.close().await?;
            Ok(())
        }
        Err(e) => {
            stream.abort().await;
            Err(e)
        }
    }
}

/// Whether `--until` is reached on an idle stream: the server has sent
/// everything up to it and no transaction is half received.
fn idle_past<S: pgrelay_pgoutput::SpillStore>(
    stream: &LogicalStream,
    reassembler: &Reassembler<S>,
    until: Option<Lsn>,
) -> bool {
    let Some(until) = until else { return false };
    let stats = reassembler.stats();
    stream.server_wal_end() >= until && stats.open_streams == 0 && stats.pending_prepared == 0
}

struct Printer<W: Write> {
    out: W,
    line: String,
    txn_key: Option<(pgrelay_types::Xid, Lsn)>,
    txn_fields: String,
    converter: Option<sqlconn::TextConverter>,
}

fn push_json_str(line: &mut String, s: &str) {
    line.push('"');
    // Copy runs that need no escaping in one go; most values have none.
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        line.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(line, "\\u{b:04x}");
        } else {
            line.push_str(escaped);
        }
        start = i + 1;
    }
    line.push_str(&s[start..]);
    line.push('"');
}

fn push_json_bytes(line: &mut String, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => push_json_str(line, s),
        Err(_) => push_json_str(line, &String::from_utf8_lossy(b)),
    }
}

impl<W: Write> Printer<W> {
    fn header(&mut self, op: &str, lsn: Lsn, info: &TransactionInfo) {
        // The transaction's fields are the same on every line of it: format
        // them (the timestamp above all) once per transaction.
        let key = (info.xid, info.commit_lsn);
        if self.txn_key != Some(key) {
            self.txn_key = Some(key);
            self.txn_fields.clear();
            let _ = write!(
                self.txn_fields,
                ",\"xid\":{},\"commit_lsn\":\"{}\",\"commit_ts\":",
                info.xid.0, info.commit_lsn
            );
            match info.commit_ts.to_rfc3339() {
                Some(ts) => push_json_str(&mut self.txn_fields, &ts),
                None => self.txn_fields.push_str("null"),
            }
        }
        self.line.clear();
        let _ = write!(self.line, "{{\"op\":\"{op}\",\"lsn\":\"{lsn}\"");
        self.line.push_str(&self.txn_fields);
    }

    fn end_line(&mut self) -> std::io::Result<()> {
        self.line.push_str("}\n");
        self.out.write_all(self.line.as_bytes())
    }

    fn begin(&mut self, info: &TransactionInfo) -> std::io::Result<()> {
        self.header("begin", info.commit_lsn, info);
        let kind = match &info.kind {
            pgrelay_types::TransactionKind::Plain => "plain",
            pgrelay_types::TransactionKind::Streamed => "streamed",
            pgrelay_types::TransactionKind::TwoPhase(_) => "prepared",
        };
        let _ = write!(self.line, ",\"kind\":\"{kind}\"");
        if let Some(origin) = &info.origin {
            self.line.push_str(",\"origin\":");
            push_json_str(&mut self.line, &origin.name);
        }
        if let pgrelay_types::TransactionKind::TwoPhase(p) = &info.kind {
            self.line.push_str(",\"gid\":");
            push_json_str(&mut self.line, &p.gid);
            // Whether the server streamed it before PREPARE (Stream Prepare).
            let _ = write!(self.line, ",\"streamed\":{}", p.streamed);
        }
        self.end_line()
    }

    fn commit(&mut self, info: &TransactionInfo) -> std::io::Result<()> {
        self.header("commit", info.end_lsn, info);
        self.end_line()
    }

    /// A logical message; inside a transaction (transactional ones) it
    /// carries the transaction's fields like any change.
    fn message(
        &mut self,
        m: &pgrelay_types::LogicalMessage,
        txn: Option<&TransactionInfo>,
    ) -> std::io::Result<()> {
        match txn {
            Some(info) => self.header("message", m.lsn, info),
            None => {
                self.line.clear();
                let _ = write!(self.line, "{{\"op\":\"message\",\"lsn\":\"{}\"", m.lsn);
            }
        }
        let _ = write!(
            self.line,
            ",\"transactional\":{},\"prefix\":",
            m.transactional
        );
        push_json_str(&mut self.line, &m.prefix);
        self.line.push_str(",\"content\":");
        push_json_bytes(&mut self.line, &m.content);
        self.end_line()
    }

    async fn change(&mut self, info: &TransactionInfo, change: &Change) -> Result<()> {
        match change {
            Change::Insert { relation, new } => {
                let new = self.texts(relation, new).await?;
                self.row("insert", info, relation, Some(&new), None);
            }
            Change::Update { relation, old, new } => {
                let newt = self.texts(relation, new).await?;
                let oldt = match old {
                    Some(o) => Some((o, self.texts(relation, o.tuple()).await?)),
                    None => None,
                };
                let old_ref = oldt.as_ref().map(|(o, t)| (*o, t));
                self.row("update", info, relation, Some(&newt), old_ref);
            }
            Change::Delete { relation, old } => {
                let oldt = self.texts(relation, old.tuple()).await?;
                self.row("delete", info, relation, None, Some((old, &oldt)));
            }
            Change::Truncate { relations, options } => {
                self.header("truncate", info.commit_lsn, info);
                self.line.push_str(",\"tables\":[");
                for (i, r) in relations.iter().enumerate() {
                    if i > 0 {
                        self.line.push(',');
                    }
                    self.line.push_str("{\"schema\":");
                    push_json_str(&mut self.line, r.schema_name());
                    self.line.push_str(",\"table\":");
                    push_json_str(&mut self.line, &r.name);
                    self.line.push('}');
                }
                let _ = write!(
                    self.line,
                    "],\"cascade\":{},\"restart_identity\":{}",
                    options.cascade, options.restart_identity
                );
            }
            Change::Message(m) => {
                self.message(m, Some(info))?;
                return Ok(());
            }
        }
        self.end_line()?;
        Ok(())
    }

    /// Each column's text form: what the server sent in text mode, or the
    /// server's own rendering of the binary value.
    async fn texts(&mut self, relation: &RelationInfo, tuple: &Tuple) -> Result<Vec<Cell>> {
        let mut out = Vec::with_capacity(tuple.len());
        for (i, v) in tuple.values().iter().enumerate() {
            out.push(match v {
                Value::Null => Cell::Null,
                Value::UnchangedToast => Cell::Unchanged,
                Value::Text(b) => Cell::Text(b.clone()),
                Value::Binary(b) => {
                    let column = relation
                        .columns
                        .get(i)
                        .ok_or_else(|| anyhow!("{} has no column {i}", relation.name.as_str()))?;
                    let conv = self
                        .converter
                        .as_mut()
                        .ok_or_else(|| anyhow!("binary value received without --binary"))?;
                    Cell::Text(conv.render(column.type_oid, b).await?)
                }
            });
        }
        Ok(out)
    }

    fn row(
        &mut self,
        op: &str,
        info: &TransactionInfo,
        relation: &RelationInfo,
        new: Option<&[Cell]>,
        old: Option<(&OldTuple, &Vec<Cell>)>,
    ) {
        self.header(op, info.commit_lsn, info);
        self.line.push_str(",\"schema\":");
        push_json_str(&mut self.line, relation.schema_name());
        self.line.push_str(",\"table\":");
        push_json_str(&mut self.line, &relation.name);
        let mut unchanged = Vec::new();
        if let Some(cells) = new {
            self.line.push_str(",\"new\":");
            self.object(relation, cells, false, Some(&mut unchanged));
        }
        if let Some((kind, cells)) = old {
            let (name, key_only) = match kind {
                OldTuple::Key(_) => ("key", true),
                OldTuple::Full(_) => ("old", false),
            };
            let _ = write!(self.line, ",\"{name}\":");
            self.object(relation, cells, key_only, None);
        }
        if !unchanged.is_empty() {
            self.line.push_str(",\"unchanged_toast\":[");
            for (i, c) in unchanged.iter().enumerate() {
                if i > 0 {
                    self.line.push(',');
                }
                push_json_str(&mut self.line, c);
            }
            self.line.push(']');
        }
    }

    /// A JSON object of column → text. A key tuple carries only key columns
    /// (the rest are sent as NULL placeholders and are left out).
    fn object(
        &mut self,
        relation: &RelationInfo,
        cells: &[Cell],
        key_only: bool,
        mut unchanged: Option<&mut Vec<String>>,
    ) {
        self.line.push('{');
        let mut first = true;
        for (column, cell) in relation.columns.iter().zip(cells) {
            if key_only && !column.is_key {
                continue;
            }
            if let Cell::Unchanged = cell {
                if let Some(u) = unchanged.as_mut() {
                    u.push(column.name.as_str().to_string());
                }
                continue;
            }
            if !first {
                self.line.push(',');
            }
            first = false;
            push_json_str(&mut self.line, &column.name);
            self.line.push(':');
            match cell {
                Cell::Null => self.line.push_str("null"),
                Cell::Text(b) => push_json_bytes(&mut self.line, b),
                Cell::Unchanged => {}
            }
        }
        self.line.push('}');
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

enum Cell {
    Null,
    Unchanged,
    Text(Bytes),
}

pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<UsageError>())
}

#[cfg(test)]
mod tests {
    use super::push_json_str;

    #[test]
    fn json_strings_escape_exactly_what_json_requires() {
        let mut line = String::new();
        push_json_str(&mut line, "a\"b\\c\nd\re\tf\u{1}g é✓");
        assert_eq!(line, r#""a\"b\\c\nd\re\tf\u0001g é✓""#);
        let parsed: String = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\re\tf\u{1}g é✓");
    }
}
