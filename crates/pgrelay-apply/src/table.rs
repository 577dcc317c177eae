//! One source relation shape mapped onto its target table: which target
//! column each source column lands in, with the TARGET's type, and the SQL
//! of every statement shape applied to it.
//!
//! Invariants: columns are matched by name, never by position (the target
//! may order them differently or have more); parameter types are the
//! target's `atttypid` (user-defined type OIDs differ between servers), so
//! the target's input function parses each text value. A `Table` is built
//! for one immutable `RelationInfo`; a changed relation (e.g. ADD COLUMN on
//! both sides) arrives as a new `RelationInfo` and gets a new `Table`.
//! Statement SQL is a pure function of the statement key (operation, which
//! columns are SET, how each WHERE column is compared), so a cached prepared
//! statement is reused for every row of the same shape.
//!
//! Row matching follows native logical replication ("Logical Replication",
//! logical-replication-publication, REPLICA IDENTITY): with a key identity
//! the WHERE clause is on the key columns; with REPLICA IDENTITY FULL on
//! every sent column, NULL-safely, touching exactly one row even when
//! identical duplicates exist (`WHERE ctid = (SELECT ctid ... LIMIT 1)`).
//! Types without a default btree/hash equality (json, point, xml, arrays,
//! composites, ranges) are compared through their text output, produced by
//! the target on both sides so settings such as TimeZone cannot differ.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use pgrelay_types::{Lsn, RelationInfo, ReplicaIdentity};
use tokio_postgres::types::{Kind, Type};
use tokio_postgres::{Client, Statement};

use crate::error::{ApplyError, ErrorContext};
use crate::meta::{SyncState, TableSync};
use crate::sql::{display_qualified, quote_ident, quote_qualified};

/// How a column takes part in a WHERE clause, per row.
pub(crate) const W_SKIP: u8 = 0;
pub(crate) const W_PARAM: u8 = 1;
pub(crate) const W_NULL: u8 = 2;

/// A target column a source column maps to.
#[derive(Debug)]
pub(crate) struct TargetColumn {
    pub quoted: String,
    pub ty: Type,
    /// The type (or a domain's base type) has a default btree or hash
    /// equality, so `col = $n` works and can use an index.
    pub has_eq: bool,
    /// `GENERATED ALWAYS AS IDENTITY` on the target: inserts need
    /// `OVERRIDING SYSTEM VALUE` (native apply bypasses the rewriter that
    /// enforces it; SQL cannot) and UPDATE may not assign it.
    pub identity_always: bool,
}

/// The copy state of the table for this pipeline.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sync {
    /// Not copied by this pipeline (or copied long ago): apply everything.
    None,
    /// Copy finished; changes of transactions that committed before
    /// `sync_lsn` are already in the copy.
    Ready(Option<Lsn>),
    /// The copy has not finished: changes must not arrive yet.
    Copying,
}

pub(crate) struct Table {
    pub rel: Arc<RelationInfo>,
    /// `schema.name` for messages.
    pub display: Arc<str>,
    /// `"schema"."name"` for SQL.
    pub qualified: String,
    pub partitioned: bool,
    pub cols: Vec<TargetColumn>,
    pub sync: Sync,
    pub stmts: HashMap<Vec<u8>, Statement>,
    /// Nothing can observe the order of this table's row changes relative
    /// to other tables' or other keys' (no trigger fires, no rule, no
    /// inheritance, no unique or exclusion constraint other than on the
    /// replica identity columns, and `session_replication_role = replica`
    /// so foreign keys are not checked): other tables' deferred updates
    /// need not be sent before its changes, and its buffered inserts need
    /// not be sent before other tables' updates are deferred. True also
    /// for REPLICA IDENTITY FULL tables (e.g. an insert-only log table
    /// without any unique index), whose own updates are never deferred.
    pub independent: bool,
    /// Updates of this table by an unchanged key may be deferred and
    /// merged within a target transaction: independent, and a key-based
    /// replica identity (merging needs a key; FULL matches whole rows).
    pub mergeable: bool,
}

/// Statement keys start with one of these.
pub(crate) const K_INSERT: u8 = b'I';
pub(crate) const K_COPY: u8 = b'C';
pub(crate) const K_UPDATE: u8 = b'U';
pub(crate) const K_UPDATE_ONE: u8 = b'V';
pub(crate) const K_DELETE: u8 = b'D';
pub(crate) const K_DELETE_ONE: u8 = b'E';
pub(crate) const K_UPDATE_SET: u8 = b'S';

const LOOKUP: &str = "\
SELECT c.relkind::text, a.attname::text, a.atttypid, t.typname::text, tn.nspname::text, \
       a.attgenerated <> '', \
       (b.typtype = 'e' OR (b.typtype = 'b' AND b.typcategory <> 'A' AND EXISTS ( \
          SELECT 1 FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod \
          WHERE am.amname IN ('btree', 'hash') AND oc.opcdefault \
            AND (oc.opcintype = b.oid OR EXISTS ( \
                 SELECT 1 FROM pg_cast k WHERE k.castsource = b.oid \
                   AND k.casttarget = oc.opcintype AND k.castmethod = 'b' \
                   AND k.castcontext = 'i'))))), \
       a.attidentity = 'a' \
FROM pg_class c \
JOIN pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
JOIN pg_type t ON t.oid = a.atttypid \
JOIN pg_namespace tn ON tn.oid = t.typnamespace \
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/// Whether the table is plain (no rules, inheritance children or triggers
/// that fire under `session_replication_role = replica`), and the columns
/// (sorted, comma-separated; `!` for expression, partial or exclusion
/// indexes) of each of its unique indexes.
const INDEPENDENT: &str = "\
SELECT c.relkind = 'r' AND NOT c.relhasrules AND NOT c.relhassubclass \
       AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid \
                       AND t.tgenabled IN ('A', 'R')), \
       ARRAY(SELECT CASE WHEN i.indexprs IS NULL AND i.indpred IS NULL AND NOT i.indisexclusion \
                    THEN (SELECT string_agg(a.attname::text, ',' ORDER BY a.attname) \
                          FROM pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey)) \
                    ELSE '!' END \
             FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion)) \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

impl Table {
    /// Reads the target's definition of `rel`'s table and maps columns by name.
    pub async fn lookup(
        client: &Client,
        rel: &Arc<RelationInfo>,
        sync: &HashMap<(String, String), TableSync>,
        commit_lsn: Option<Lsn>,
        replica_role: bool,
    ) -> Result<Table, ApplyError> {
        let schema = rel.schema_name();
        let display: Arc<str> = display_qualified(schema, &rel.name).into();
        let ctx = |op: &str| ErrorContext {
            table: Some(display.to_string()),
            commit_lsn,
            operation: op.to_string(),
        };
        let rows = client
            .query(LOOKUP, &[&schema, &rel.name.as_str()])
            .await
            .map_err(|e| ApplyError::from_pg(&e, ctx("reading the target table's columns")))?;
        if rows.is_empty() {
            return Err(ApplyError::Fatal {
                context: Box::new(ctx("looking up the target table")),
                message: format!("table {display} does not exist on the target"),
                sqlstate: Some("42P01".into()),
                fix: format!(
                    "create {display} on the target with the source's definition (pgrelay \
                     copies rows, not schema; e.g. pg_dump --schema-only -t {display} SOURCE \
                     | psql TARGET), then restart"
                ),
            });
        }
        let partitioned = rows[0].get::<_, String>(0) == "p";
        let mut by_name: HashMap<String, (u32, String, String, bool, bool, bool)> = HashMap::new();
        for r in &rows {
            by_name.insert(
                r.get(1),
                (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)),
            );
        }
        let mut cols = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            let Some((oid, typname, typschema, generated, has_eq, identity_always)) =
                by_name.get(c.name.as_str())
            else {
                return Err(ApplyError::Fatal {
                    context: Box::new(ctx("mapping source columns to the target table")),
                    message: format!(
                        "column {} of {display} is replicated from the source but does not \
                         exist on the target",
                        quote_ident(&c.name)
                    ),
                    sqlstate: Some("42703".into()),
                    fix: format!(
                        "ALTER TABLE {display} ADD COLUMN {} <the source's type>; on the \
                         target, then restart",
                        quote_ident(&c.name)
                    ),
                });
            };
            if *generated {
                return Err(ApplyError::fatal(
                    ctx("mapping source columns to the target table"),
                    format!(
                        "column {} of {display} is a generated column on the target but a \
                         plain column on the source",
                        quote_ident(&c.name)
                    ),
                    format!(
                        "make {} a plain column on the target (ALTER TABLE {display} ALTER \
                         COLUMN {} DROP EXPRESSION), then restart",
                        quote_ident(&c.name),
                        quote_ident(&c.name)
                    ),
                ));
            }
            let ty = Type::from_oid(*oid).unwrap_or_else(|| {
                Type::new(typname.clone(), *oid, Kind::Pseudo, typschema.clone())
            });
            cols.push(TargetColumn {
                quoted: quote_ident(&c.name),
                ty,
                has_eq: *has_eq,
                identity_always: *identity_always,
            });
        }
        let sync = match sync.get(&(schema.to_string(), rel.name.to_string())) {
            None => Sync::None,
            Some(s) if s.state == SyncState::Ready => Sync::Ready(s.sync_lsn),
            Some(_) => Sync::Copying,
        };
        let independent = replica_role
            && Self::independent(client, rel)
                .await
                .map_err(|e| ApplyError::from_pg(&e, ctx("reading the target table's indexes")))?;
        Ok(Table {
            independent,
            mergeable: independent && rel.replica_identity != ReplicaIdentity::Full,
            rel: rel.clone(),
            display,
            qualified: quote_qualified(schema, &rel.name),
            partitioned,
            cols,
            sync,
            stmts: HashMap::new(),
        })
    }

    async fn independent(
        client: &Client,
        rel: &RelationInfo,
    ) -> Result<bool, tokio_postgres::Error> {
        // Without key columns there must be no unique index at all (the
        // list below then has to be empty).
        let mut key: Vec<&str> = rel.key_columns().map(|(_, c)| c.name.as_str()).collect();
        key.sort_unstable();
        let key = key.join(",");
        let row = client
            .query_opt(INDEPENDENT, &[&rel.schema_name(), &rel.name.as_str()])
            .await?;
        Ok(row.is_some_and(|r| {
            let plain: bool = r.get(0);
            let unique: Vec<String> = r.get(1);
            plain && unique.iter().all(|u| !key.is_empty() && *u == key)
        }))
    }

    /// The SQL and parameter types of the statement with `key`.
    ///
    /// Key layout: `[K_INSERT, rows]`, `[K_COPY]`, or for updates
    /// `[op, set_0..set_n, where_0..where_n]` (set: 1 = SET this column,
    /// 0 = leave it, e.g. unchanged TOAST) and for deletes
    /// `[op, where_0..where_n]` (where: `W_SKIP`, `W_PARAM`, `W_NULL`).
    pub fn build(&self, key: &[u8]) -> (String, Vec<Type>) {
        let n = self.cols.len();
        let mut sql = String::with_capacity(64 + 24 * n);
        let mut types = Vec::with_capacity(n);
        match key[0] {
            K_INSERT => {
                // key[1] rows per statement (multi-row VALUES).
                let _ = write!(sql, "INSERT INTO {} (", self.qualified);
                push_list(&mut sql, self.cols.iter().map(|c| c.quoted.as_str()));
                if self.cols.iter().any(|c| c.identity_always) {
                    sql.push_str(") OVERRIDING SYSTEM VALUE VALUES ");
                } else {
                    sql.push_str(") VALUES ");
                }
                for r in 0..usize::from(key[1]) {
                    sql.push_str(if r > 0 { ", (" } else { "(" });
                    for (i, c) in self.cols.iter().enumerate() {
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        types.push(c.ty.clone());
                        let _ = write!(sql, "${}", types.len());
                    }
                    sql.push(')');
                }
            }
            K_COPY => {
                let _ = write!(sql, "COPY {} (", self.qualified);
                push_list(&mut sql, self.cols.iter().map(|c| c.quoted.as_str()));
                sql.push_str(") FROM STDIN");
            }
            K_UPDATE | K_UPDATE_ONE => {
                let _ = write!(sql, "UPDATE {} SET ", self.qualified);
                let mut first = true;
                for (i, c) in self.cols.iter().enumerate() {
                    if key[1 + i] == 1 {
                        if !first {
                            sql.push_str(", ");
                        }
                        first = false;
                        types.push(c.ty.clone());
                        let _ = write!(sql, "{} = ${}", c.quoted, types.len());
                    }
                }
                self.push_where(&mut sql, &mut types, &key[1 + n..], key[0] == K_UPDATE_ONE);
            }
            K_UPDATE_SET => {
                // key: [op, code_0..code_n], code 1 = SET the column, 2 = a
                // key column (WHERE), 0 = neither. Every parameter is a
                // text[] of one column's values, unnested in step.
                let mut set = String::new();
                let mut cond = String::new();
                let mut from = String::new();
                let mut alias = String::new();
                for (i, c) in self.cols.iter().enumerate() {
                    let code = key[1 + i];
                    if code == 0 {
                        continue;
                    }
                    types.push(Type::TEXT_ARRAY);
                    let p = types.len();
                    if p > 1 {
                        from.push_str(", ");
                        alias.push_str(", ");
                    }
                    let _ = write!(from, "${p}");
                    let _ = write!(alias, "p{p}");
                    let ty = format!(
                        "{}.{}",
                        quote_ident(c.ty.schema()),
                        quote_ident(c.ty.name())
                    );
                    let (list, sep) = if code == 1 {
                        (&mut set, ", ")
                    } else {
                        (&mut cond, " AND ")
                    };
                    if !list.is_empty() {
                        list.push_str(sep);
                    }
                    if code == 1 {
                        let _ = write!(list, "{} = v.p{p}::{ty}", c.quoted);
                    } else {
                        let _ = write!(list, "t.{} = v.p{p}::{ty}", c.quoted);
                    }
                }
                if cond.is_empty() {
                    cond.push_str("false");
                }
                let _ = write!(
                    sql,
                    "UPDATE {} AS t SET {set} FROM unnest({from}) AS v({alias}) WHERE {cond}",
                    self.qualified
                );
            }
            K_DELETE | K_DELETE_ONE => {
                let _ = write!(sql, "DELETE FROM {}", self.qualified);
                self.push_where(&mut sql, &mut types, &key[1..], key[0] == K_DELETE_ONE);
            }
            other => unreachable!("statement key {other}"),
        }
        (sql, types)
    }

    fn push_where(&self, sql: &mut String, types: &mut Vec<Type>, codes: &[u8], one_row: bool) {
        let mut cond = String::new();
        for (i, c) in self.cols.iter().enumerate() {
            let code = codes[i];
            if code == W_SKIP {
                continue;
            }
            if !cond.is_empty() {
                cond.push_str(" AND ");
            }
            if code == W_NULL {
                let _ = write!(cond, "{} IS NULL", c.quoted);
            } else {
                types.push(c.ty.clone());
                if c.has_eq {
                    let _ = write!(cond, "{} = ${}", c.quoted, types.len());
                } else {
                    let _ = write!(cond, "{}::text = ${}::text", c.quoted, types.len());
                }
            }
        }
        if cond.is_empty() {
            // Every sent column was skipped; the caller rejects this before
            // building, but never emit an unqualified UPDATE/DELETE.
            cond.push_str("false");
        }
        if one_row {
            // ctid is only unique within one physical table; a partitioned
            // target needs the partition too.
            let id = if self.partitioned {
                "(tableoid, ctid)"
            } else {
                "ctid"
            };
            let _ = write!(
                sql,
                " WHERE {id} = (SELECT {id} FROM {} WHERE {cond} LIMIT 1)",
                self.qualified
            );
        } else {
            let _ = write!(sql, " WHERE {cond}");
        }
    }
}

fn push_list<'a>(sql: &mut String, items: impl Iterator<Item = &'a str>) {
    for (i, s) in items.enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(s);
    }
}
