//! Text of the replication commands, per server major version.
//!
//! Job: build `CREATE_REPLICATION_SLOT`, `DROP_REPLICATION_SLOT` and
//! `START_REPLICATION ... LOGICAL` with pgoutput options, choosing the
//! syntax the server's major understands and refusing options it does not
//! have with [`SourceError::Unsupported`] before anything is sent.
//!
//! Invariants:
//! * Names are always double-quoted identifiers and values single-quoted
//!   literals (`''` doubling; the replication grammar has no backslash
//!   escapes), so no input can change the command's structure. Slot names
//!   are additionally checked against the server's own rule (1-63 of
//!   `[a-z0-9_]`) for a clearer message.
//! * Slot syntax: 14 uses `EXPORT_SNAPSHOT`/`NOEXPORT_SNAPSHOT`/
//!   `USE_SNAPSHOT` keywords; 15+ the parenthesised options
//!   `(SNAPSHOT 'export', TWO_PHASE true, FAILOVER true)`. `TWO_PHASE` needs
//!   15, `FAILOVER` 17.
//! * pgoutput: `proto_version` defaults to the highest the server speaks
//!   (14: 2, 15: 3, 16+: 4); `streaming` needs proto 2, `two_phase` proto 3
//!   (15+), `streaming 'parallel'` proto 4 (16+), `origin` 16+. Options at
//!   their default value are not sent, so older servers never see names they
//!   do not know.
//!
//! PostgreSQL reference: "Streaming Replication Protocol"
//! (protocol-replication: CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT,
//! START_REPLICATION) and "Logical Streaming Replication Parameters"
//! (protocol-logical-replication).

use std::fmt::Write as _;

use pgrelay_types::Lsn;

use crate::error::SourceError;

/// What `CREATE_REPLICATION_SLOT` does with the snapshot at the slot's
/// consistent point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotAction {
    /// Export it for `SET TRANSACTION SNAPSHOT` on other connections; valid
    /// until the next command on this connection.
    Export,
    /// Make it the snapshot of the current transaction on this connection,
    /// which must have begun with `BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ`.
    Use,
    /// Neither.
    #[default]
    NoExport,
}

/// Options of [`crate::ReplicationClient::create_replication_slot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreateSlotOptions {
    /// Dropped automatically when the session ends.
    pub temporary: bool,
    /// Snapshot handling.
    pub snapshot: SnapshotAction,
    /// Decode prepared transactions at PREPARE time (PostgreSQL 15+).
    pub two_phase: bool,
    /// Synchronize the slot to standbys for failover (PostgreSQL 17+).
    pub failover: bool,
}

/// pgoutput's `streaming` option: in-progress transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Streaming {
    /// Whole transactions only, after commit.
    #[default]
    Off,
    /// Stream large in-progress transactions (proto 2+).
    On,
    /// Stream, allowing parallel apply (proto 4, PostgreSQL 16+).
    Parallel,
}

/// pgoutput's `origin` option (PostgreSQL 16+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFilter {
    /// `any`: every change.
    Any,
    /// `none`: only changes without a replication origin (not themselves
    /// replicated), to avoid loops in bidirectional setups.
    LocalOnly,
}

/// pgoutput options for `START_REPLICATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutputOptions {
    /// `None` picks [`max_proto_version`] for the server.
    pub proto_version: Option<u32>,
    /// Publications to stream (at least one).
    pub publication_names: Vec<String>,
    /// Column values in binary send/recv format.
    pub binary: bool,
    /// Include `pg_logical_emit_message` messages.
    pub messages: bool,
    /// In-progress transaction streaming.
    pub streaming: Streaming,
    /// Prepared transactions at PREPARE time (proto 3, 15+).
    pub two_phase: bool,
    /// Origin filter (16+); `None` sends nothing (server default `any`).
    pub origin: Option<OriginFilter>,
}

impl PgOutputOptions {
    /// Options streaming `publications` with every other setting at its
    /// default.
    pub fn new<I, S>(publications: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        PgOutputOptions {
            proto_version: None,
            publication_names: publications.into_iter().map(Into::into).collect(),
            binary: false,
            messages: false,
            streaming: Streaming::Off,
            two_phase: false,
            origin: None,
        }
    }
}

/// The highest pgoutput protocol version a server major speaks.
pub fn max_proto_version(server_major: u32) -> u32 {
    match server_major {
        0..=13 => 1,
        14 => 2,
        15 => 3,
        _ => 4,
    }
}

pub(crate) use pgrelay_types::sql::quote_ident;

/// `'value'` with embedded quotes doubled. Not the shared SQL form: the
/// walsender's replication-command scanner knows no `E'...'` strings, and
/// takes backslashes literally.
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The server's rule for slot names (ReplicationSlotValidateName).
pub(crate) fn validate_slot_name(name: &str) -> Result<(), SourceError> {
    let bad =
        |reason: &str| SourceError::invalid(format!("replication slot name {name:?}"), reason);
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 63 {
        return Err(bad("it is longer than 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad(
            "slot names may only contain lower case letters, digits and underscores",
        ));
    }
    Ok(())
}

fn unsupported(feature: &str, server_major: u32, minimum_major: u32) -> SourceError {
    SourceError::Unsupported {
        feature: feature.to_owned(),
        server_major,
        minimum_major,
    }
}

/// `CREATE_REPLICATION_SLOT` for a logical pgoutput slot.
pub(crate) fn create_slot(
    name: &str,
    options: &CreateSlotOptions,
    server_major: u32,
) -> Result<String, SourceError> {
    validate_slot_name(name)?;
    if options.two_phase && server_major < 15 {
        return Err(unsupported(
            "creating a slot with TWO_PHASE",
            server_major,
            15,
        ));
    }
    if options.failover && server_major < 17 {
        return Err(unsupported(
            "creating a slot with FAILOVER",
            server_major,
            17,
        ));
    }
    let mut cmd = format!("CREATE_REPLICATION_SLOT {}", quote_ident(name));
    if options.temporary {
        cmd.push_str(" TEMPORARY");
    }
    cmd.push_str(" LOGICAL pgoutput");
    if server_major < 15 {
        cmd.push_str(match options.snapshot {
            SnapshotAction::Export => " EXPORT_SNAPSHOT",
            SnapshotAction::Use => " USE_SNAPSHOT",
            SnapshotAction::NoExport => " NOEXPORT_SNAPSHOT",
        });
    } else {
        let snapshot = match options.snapshot {
            SnapshotAction::Export => "export",
            SnapshotAction::Use => "use",
            SnapshotAction::NoExport => "nothing",
        };
        let _ = write!(cmd, " (SNAPSHOT '{snapshot}'");
        if options.two_phase {
            cmd.push_str(", TWO_PHASE true");
        }
        if options.failover {
            cmd.push_str(", FAILOVER true");
        }
        cmd.push(')');
    }
    Ok(cmd)
}

/// `DROP_REPLICATION_SLOT name [WAIT]`.
pub(crate) fn drop_slot(name: &str, wait: bool) -> Result<String, SourceError> {
    validate_slot_name(name)?;
    let mut cmd = format!("DROP_REPLICATION_SLOT {}", quote_ident(name));
    if wait {
        cmd.push_str(" WAIT");
    }
    Ok(cmd)
}

/// `START_REPLICATION SLOT name LOGICAL lsn (options)` for pgoutput.
pub(crate) fn start_replication(
    slot: &str,
    start: Lsn,
    options: &PgOutputOptions,
    server_major: u32,
) -> Result<String, SourceError> {
    validate_slot_name(slot)?;
    let max = max_proto_version(server_major);
    let proto = options.proto_version.unwrap_or(max);
    if proto == 0 {
        return Err(SourceError::invalid(
            "pgoutput proto_version 0",
            "versions start at 1",
        ));
    }
    if proto > max {
        let minimum = match proto {
            2 => 14,
            3 => 15,
            _ => 16,
        };
        return Err(unsupported(
            &format!("pgoutput proto_version {proto}"),
            server_major,
            minimum,
        ));
    }
    if options.publication_names.is_empty() {
        return Err(SourceError::invalid(
            "publication_names",
            "pgoutput needs at least one publication (CREATE PUBLICATION ... FOR TABLE ...)",
        ));
    }
    if let Some(p) = options
        .publication_names
        .iter()
        .find(|p| p.is_empty() || p.contains('\0'))
    {
        return Err(SourceError::invalid(
            format!("publication name {p:?}"),
            "names must be non-empty and contain no NUL",
        ));
    }
    let needs_proto = |what: &str, min: u32| -> Result<(), SourceError> {
        if proto < min {
            Err(SourceError::invalid(
                format!("pgoutput option {what} with proto_version {proto}"),
                format!("it needs proto_version {min} or higher (leave proto_version unset to use the highest the server supports)"),
            ))
        } else {
            Ok(())
        }
    };
    let mut opts: Vec<(&str, String)> = vec![
        ("proto_version", proto.to_string()),
        (
            "publication_names",
            options
                .publication_names
                .iter()
                .map(|p| quote_ident(p))
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    if options.binary {
        if server_major < 14 {
            return Err(unsupported("pgoutput option binary", server_major, 14));
        }
        opts.push(("binary", "true".into()));
    }
    if options.messages {
        if server_major < 14 {
            return Err(unsupported("pgoutput option messages", server_major, 14));
        }
        opts.push(("messages", "true".into()));
    }
    match options.streaming {
        Streaming::Off => {}
        Streaming::On => {
            if server_major < 14 {
                return Err(unsupported("pgoutput option streaming", server_major, 14));
            }
            needs_proto("streaming", 2)?;
            opts.push(("streaming", "on".into()));
        }
        Streaming::Parallel => {
            if server_major < 16 {
                return Err(unsupported(
                    "pgoutput option streaming 'parallel'",
                    server_major,
                    16,
                ));
            }
            needs_proto("streaming 'parallel'", 4)?;
            opts.push(("streaming", "parallel".into()));
        }
    }
    if options.two_phase {
        if server_major < 15 {
            return Err(unsupported("pgoutput option two_phase", server_major, 15));
        }
        needs_proto("two_phase", 3)?;
        opts.push(("two_phase", "true".into()));
    }
    if let Some(origin) = options.origin {
        if server_major < 16 {
            return Err(unsupported("pgoutput option origin", server_major, 16));
        }
        let v = match origin {
            OriginFilter::Any => "any",
            OriginFilter::LocalOnly => "none",
        };
        opts.push(("origin", v.into()));
    }
    let mut cmd = format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (",
        quote_ident(slot)
    );
    for (i, (k, v)) in opts.iter().enumerate() {
        if i > 0 {
            cmd.push_str(", ");
        }
        let _ = write!(cmd, "{} {}", quote_ident(k), quote_literal(v));
    }
    cmd.push(')');
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's \\n"), "'it''s \\n'");
    }

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("pgrelay_1").is_ok());
        for bad in ["", "Upper", "with-dash", "spa ce", "x\"y", &"a".repeat(64)] {
            let err = validate_slot_name(bad).expect_err(bad);
            assert!(!err.is_transient());
        }
        assert!(validate_slot_name(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn create_slot_syntax_per_major() {
        let opts = |snapshot, temporary| CreateSlotOptions {
            temporary,
            snapshot,
            ..Default::default()
        };
        assert_eq!(
            create_slot("s", &opts(SnapshotAction::Export, true), 14).expect("14"),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_slot("s", &opts(SnapshotAction::NoExport, false), 14).expect("14"),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_slot("s", &opts(SnapshotAction::Use, false), 14).expect("14"),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput USE_SNAPSHOT"
        );
        assert_eq!(
            create_slot("s", &opts(SnapshotAction::NoExport, false), 15).expect("15"),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        let all = CreateSlotOptions {
            temporary: false,
            snapshot: SnapshotAction::Export,
            two_phase: true,
            failover: true,
        };
        assert_eq!(
            create_slot("s", &all, 17).expect("17"),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'export', TWO_PHASE true, FAILOVER true)"
        );
        let two_phase = CreateSlotOptions {
            two_phase: true,
            ..Default::default()
        };
        let err = create_slot("s", &two_phase, 14).expect_err("14 two_phase");
        assert!(matches!(
            err,
            SourceError::Unsupported {
                minimum_major: 15,
                server_major: 14,
                ..
            }
        ));
        assert!(err.to_string().contains("PostgreSQL 15 or newer"), "{err}");
        assert_eq!(
            create_slot("s", &two_phase, 15).expect("15"),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE true)"
        );
        let err = create_slot("s", &all, 16).expect_err("16 failover");
        assert!(matches!(
            err,
            SourceError::Unsupported {
                minimum_major: 17,
                ..
            }
        ));
        assert!(create_slot("Bad", &CreateSlotOptions::default(), 16).is_err());
        assert_eq!(
            drop_slot("s", true).expect("drop"),
            "DROP_REPLICATION_SLOT \"s\" WAIT"
        );
        assert_eq!(
            drop_slot("s", false).expect("drop"),
            "DROP_REPLICATION_SLOT \"s\""
        );
    }

    #[test]
    fn proto_versions() {
        assert_eq!(
            [13, 14, 15, 16, 17, 18].map(max_proto_version),
            [1, 2, 3, 4, 4, 4]
        );
    }

    #[test]
    fn start_replication_options_per_major() {
        let lsn = Lsn(0x16_B374_D848);
        let basic = PgOutputOptions::new(["pub", "odd \"one\", 'x'"]);
        assert_eq!(
            start_replication("s", lsn, &basic, 14).expect("14"),
            "START_REPLICATION SLOT \"s\" LOGICAL 16/B374D848 (\"proto_version\" '2', \
             \"publication_names\" '\"pub\",\"odd \"\"one\"\", ''x''\"')"
        );
        assert!(start_replication("s", lsn, &basic, 16)
            .expect("16")
            .contains("\"proto_version\" '4'"));
        let full = PgOutputOptions {
            proto_version: None,
            publication_names: vec!["p".into()],
            binary: true,
            messages: true,
            streaming: Streaming::Parallel,
            two_phase: true,
            origin: Some(OriginFilter::LocalOnly),
        };
        assert_eq!(
            start_replication("s", Lsn(0), &full, 17).expect("17"),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (\"proto_version\" '4', \
             \"publication_names\" '\"p\"', \"binary\" 'true', \"messages\" 'true', \
             \"streaming\" 'parallel', \"two_phase\" 'true', \"origin\" 'none')"
        );
        let err = start_replication("s", lsn, &full, 15).expect_err("15 parallel");
        assert!(
            matches!(
                err,
                SourceError::Unsupported {
                    minimum_major: 16,
                    ..
                }
            ),
            "{err}"
        );
        let two_phase = PgOutputOptions {
            two_phase: true,
            streaming: Streaming::On,
            ..PgOutputOptions::new(["p"])
        };
        assert!(start_replication("s", lsn, &two_phase, 15)
            .expect("15")
            .contains("\"streaming\" 'on', \"two_phase\" 'true'"));
        let err = start_replication("s", lsn, &two_phase, 14).expect_err("14 two_phase");
        assert!(matches!(
            err,
            SourceError::Unsupported {
                minimum_major: 15,
                ..
            }
        ));
        let origin = PgOutputOptions {
            origin: Some(OriginFilter::Any),
            ..PgOutputOptions::new(["p"])
        };
        assert!(matches!(
            start_replication("s", lsn, &origin, 15),
            Err(SourceError::Unsupported {
                minimum_major: 16,
                ..
            })
        ));
        let too_new = PgOutputOptions {
            proto_version: Some(4),
            ..PgOutputOptions::new(["p"])
        };
        assert!(matches!(
            start_replication("s", lsn, &too_new, 15),
            Err(SourceError::Unsupported {
                minimum_major: 16,
                server_major: 15,
                ..
            })
        ));
        let old_proto = PgOutputOptions {
            proto_version: Some(1),
            streaming: Streaming::On,
            ..PgOutputOptions::new(["p"])
        };
        assert!(matches!(
            start_replication("s", lsn, &old_proto, 16),
            Err(SourceError::InvalidArgument { .. })
        ));
        assert!(
            start_replication("s", lsn, &PgOutputOptions::new(Vec::<String>::new()), 16).is_err()
        );
    }
}
