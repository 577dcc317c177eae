//! DDL generated from the source's catalogs, for sources no installed
//! pg_dump can dump (or when forced).
//!
//! Covers schemas, extensions, enums, domains (with their constraints),
//! composite types, sequences (every parameter; `OWNED BY` once the tables
//! exist), functions and procedures (`pg_get_functiondef`), tables with
//! defaults, NOT NULL, CHECK constraints, identity columns (with their
//! sequence options), stored (and 18's virtual) generated columns, collations, storage
//! parameters, UNLOGGED, partitioned tables and their partitions (nested
//! too), REPLICA IDENTITY, views and materialized views (in dependency
//! order) as pre-data; primary keys, unique and exclusion constraints,
//! indexes, `REPLICA IDENTITY USING INDEX`, foreign keys, triggers (with
//! their enabled state) and materialized view refreshes as post-data.
//! Invariants: everything is read in one REPEATABLE READ transaction with
//! `search_path = pg_catalog`, so every name the server renders
//! (`format_type`, `pg_get_expr`, `pg_get_*def`) is schema-qualified;
//! extension members (pg_depend deptype 'e') are skipped (CREATE EXTENSION
//! makes them); objects a partition inherits from its parent (constraints
//! with `conparentid`, index partitions, cloned triggers) are skipped because
//! creating them on the parent recreates them on every partition.
//! Not covered (use a pg_dump for these): comments, rules, policies, range
//! and base types, aggregates, operators, casts, statistics objects,
//! non-partition table inheritance (such tables are created with all their
//! columns and no INHERITS), event triggers, ownership and privileges (see
//! `dump_roles`).
//! PostgreSQL docs: "System Catalogs" (catalogs), "System Information
//! Functions" (functions-info), CREATE TABLE (sql-createtable).

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_postgres::Client;

use crate::split::{qualified, quote_ident};
use crate::{ObjectKind, SchemaError, Statement};

type Oid = u32;

const NOT_EXT: &str = "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{CAT}'::regclass \
                       AND e.objid = {OID} AND e.deptype = 'e')";

fn not_ext(catalog: &str, oid: &str) -> String {
    NOT_EXT.replace("{CAT}", catalog).replace("{OID}", oid)
}

struct SeqParams {
    type_name: String,
    start: i64,
    increment: i64,
    min: i64,
    max: i64,
    cache: i64,
    cycle: bool,
}

impl SeqParams {
    fn from_row(row: &tokio_postgres::Row, first: usize) -> SeqParams {
        SeqParams {
            type_name: row.get(first),
            start: row.get(first + 1),
            increment: row.get(first + 2),
            min: row.get(first + 3),
            max: row.get(first + 4),
            cache: row.get(first + 5),
            cycle: row.get(first + 6),
        }
    }

    fn options(&self, with_type: bool) -> String {
        let mut s = String::new();
        if with_type {
            s.push_str(&format!("AS {} ", self.type_name));
        }
        s.push_str(&format!(
            "INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
            self.increment,
            self.min,
            self.max,
            self.start,
            self.cache,
            if self.cycle { "CYCLE" } else { "NO CYCLE" }
        ));
        s
    }
}

const SEQ_COLS: &str = "pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, \
                        s.seqmin, s.seqmax, s.seqcache, s.seqcycle";

fn excluded(exclude: &[(String, String)], schema: &str, table: &str) -> bool {
    exclude.iter().any(|(s, t)| s == schema && t == table)
}

async fn begin(source: &Client) -> Result<(), SchemaError> {
    source
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL search_path = pg_catalog",
        )
        .await
        .map_err(SchemaError::query("begin the catalog read transaction"))
}

async fn end(source: &Client) {
    let _ = source.batch_execute("COMMIT").await;
}

/// Every sequence in `schemas` except those an excluded table owns
/// (identity, serial or `OWNED BY`), as `(schema, name)`.
pub(crate) async fn sequence_list(
    source: &Client,
    schemas: &[String],
    exclude: &[(String, String)],
) -> Result<Vec<(String, String)>, SchemaError> {
    let rows = source
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, tn.nspname::text, tc.relname::text \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                      AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                      AND d.deptype IN ('i', 'a') AND d.refobjsubid > 0 \
                 LEFT JOIN pg_catalog.pg_class tc ON tc.oid = d.refobjid \
                 LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace \
                 WHERE c.relkind = 'S' AND n.nspname = ANY($1) AND {} ORDER BY c.oid",
                not_ext("pg_catalog.pg_class", "c.oid")
            ),
            &[&schemas],
        )
        .await
        .map_err(SchemaError::query("list sequences"))?;
    Ok(rows
        .iter()
        .filter(|r| {
            let ts: Option<String> = r.get(2);
            let tt: Option<String> = r.get(3);
            match (ts, tt) {
                (Some(s), Some(t)) => !excluded(exclude, &s, &t),
                _ => true,
            }
        })
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The sequences excluded tables own (serial, identity, `OWNED BY`), as
/// `(schema, name)`: pg_dump would dump a serial one without its table.
pub(crate) async fn sequences_of_excluded(
    source: &Client,
    exclude: &[(String, String)],
) -> Result<Vec<(String, String)>, SchemaError> {
    let mut out = Vec::new();
    for (schema, table) in exclude {
        let rows = source
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_depend d \
                 JOIN pg_catalog.pg_class c ON c.oid = d.objid AND c.relkind = 'S' \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_class t ON t.oid = d.refobjid \
                 JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
                 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                   AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0 \
                   AND tn.nspname = $1 AND t.relname = $2",
                &[schema, table],
            )
            .await
            .map_err(SchemaError::query("list sequences of excluded tables"))?;
        out.extend(rows.iter().map(|r| (r.get(0), r.get(1))));
    }
    Ok(out)
}

/// `REFRESH MATERIALIZED VIEW` for every populated materialized view in
/// `schemas` (pg_dump's schema-only output leaves them empty), in creation
/// order.
pub(crate) async fn refreshes(
    source: &Client,
    schemas: &[String],
    exclude: &[(String, String)],
) -> Result<Vec<Statement>, SchemaError> {
    let rows = source
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'm' AND c.relispopulated AND n.nspname = ANY($1) AND {} \
                 ORDER BY c.oid",
                not_ext("pg_catalog.pg_class", "c.oid")
            ),
            &[&schemas],
        )
        .await
        .map_err(SchemaError::query("list materialized views"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(s, n)| !excluded(exclude, s, n))
        .map(|(s, n)| {
            Statement::new(
                ObjectKind::Refresh,
                format!("{s}.{n}"),
                format!("REFRESH MATERIALIZED VIEW {}", qualified(&s, &n)),
            )
        })
        .collect())
}

/// `CREATE EXTENSION IF NOT EXISTS` for every extension of the database
/// (and its schema if that is outside `schemas`). pg_dump leaves extensions
/// out when schemas are listed with `--schema`, so that path uses this too.
pub(crate) async fn extensions(
    source: &Client,
    schemas: &[String],
) -> Result<Vec<Statement>, SchemaError> {
    let rows = source
        .query(
            "SELECT e.extname::text, n.nspname::text FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname <> 'plpgsql' ORDER BY e.oid",
            &[],
        )
        .await
        .map_err(SchemaError::query("list extensions"))?;
    let mut out = Vec::new();
    for r in &rows {
        let (ext, schema): (String, String) = (r.get(0), r.get(1));
        if !schemas.contains(&schema) && schema != "pg_catalog" {
            out.push(Statement::new(
                ObjectKind::Schema,
                schema.clone(),
                format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&schema)),
            ));
        }
        out.push(Statement::new(
            ObjectKind::Extension,
            ext.clone(),
            format!(
                "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {} CASCADE",
                quote_ident(&ext),
                quote_ident(&schema)
            ),
        ));
    }
    Ok(out)
}

struct Table {
    oid: Oid,
    schema: String,
    name: String,
    persistence: String,
    replident: String,
    partkey: Option<String>,
    bound: Option<String>,
    parent: Option<Oid>,
    options: Option<String>,
}

impl Table {
    fn qname(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// Generates (pre-data, post-data) for `schemas`.
pub(crate) async fn generate(
    source: &Client,
    schemas: &[String],
    exclude: &[(String, String)],
) -> Result<(Vec<Statement>, Vec<Statement>), SchemaError> {
    begin(source).await?;
    let result = generate_in_tx(source, schemas, exclude).await;
    end(source).await;
    result
}

async fn generate_in_tx(
    source: &Client,
    schemas: &[String],
    exclude: &[(String, String)],
) -> Result<(Vec<Statement>, Vec<Statement>), SchemaError> {
    let mut pre = Vec::new();
    let mut post = Vec::new();
    let q = |sql: String, what: &'static str| async move {
        source
            .query(&sql, &[&schemas])
            .await
            .map_err(SchemaError::query(format!(
                "read {what} from the source catalogs"
            )))
    };

    // Schemas.
    for s in schemas {
        pre.push(Statement::new(
            ObjectKind::Schema,
            s.clone(),
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)),
        ));
    }

    pre.extend(extensions(source, schemas).await?);

    // Types: enums, domains, composites, in creation (oid) order so a
    // domain over an enum follows the enum.
    let mut types: Vec<(Oid, Vec<Statement>)> = Vec::new();
    let rows = q(
        format!(
            "SELECT t.oid, n.nspname::text, t.typname::text, \
                    ARRAY(SELECT quote_literal(e.enumlabel) FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typtype = 'e' AND n.nspname = ANY($1) AND {}",
            not_ext("pg_type", "t.oid")
        ),
        "enums",
    )
    .await?;
    for r in &rows {
        let (schema, name): (String, String) = (r.get(1), r.get(2));
        let labels: Vec<String> = r.get(3);
        types.push((
            r.get(0),
            vec![Statement::new(
                ObjectKind::Type,
                format!("{schema}.{name}"),
                format!(
                    "CREATE TYPE {} AS ENUM ({})",
                    qualified(&schema, &name),
                    labels.join(", ")
                ),
            )],
        ));
    }
    let rows = q(
        format!(
            "SELECT t.oid, n.nspname::text, t.typname::text, format_type(t.typbasetype, t.typtypmod), \
                    t.typnotnull, t.typdefault, \
                    CASE WHEN t.typcollation <> 0 AND t.typcollation <> bt.typcollation THEN \
                      (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co \
                       JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = t.typcollation) END, \
                    ARRAY(SELECT 'CONSTRAINT ' || quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid) \
                          FROM pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c' AND c.convalidated ORDER BY c.oid), \
                    ARRAY(SELECT 'CONSTRAINT ' || quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid) \
                          FROM pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c' AND NOT c.convalidated ORDER BY c.oid) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_type bt ON bt.oid = t.typbasetype \
             WHERE t.typtype = 'd' AND n.nspname = ANY($1) AND {}",
            not_ext("pg_type", "t.oid")
        ),
        "domains",
    )
    .await?;
    for r in &rows {
        let (schema, name, base): (String, String, String) = (r.get(1), r.get(2), r.get(3));
        let notnull: bool = r.get(4);
        let default: Option<String> = r.get(5);
        let collation: Option<String> = r.get(6);
        let checks: Vec<String> = r.get(7);
        let unvalidated: Vec<String> = r.get(8);
        let qn = qualified(&schema, &name);
        let mut sql = format!("CREATE DOMAIN {qn} AS {base}");
        if let Some(c) = collation {
            sql.push_str(&format!(" COLLATE {c}"));
        }
        if let Some(d) = default {
            sql.push_str(&format!(" DEFAULT {d}"));
        }
        if notnull {
            sql.push_str(" NOT NULL");
        }
        for c in checks {
            sql.push(' ');
            sql.push_str(&c);
        }
        let mut st = vec![Statement::new(
            ObjectKind::Type,
            format!("{schema}.{name}"),
            sql,
        )];
        for c in unvalidated {
            st.push(Statement::new(
                ObjectKind::Type,
                format!("{schema}.{name}"),
                format!("ALTER DOMAIN {qn} ADD {c}"),
            ));
        }
        types.push((r.get(0), st));
    }
    let rows = q(
        format!(
            "SELECT t.oid, n.nspname::text, t.typname::text, \
                    ARRAY(SELECT quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod) \
                          || CASE WHEN a.attcollation <> 0 AND a.attcollation <> at.typcollation THEN \
                               ' COLLATE ' || (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) \
                                 FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace \
                                 WHERE co.oid = a.attcollation) ELSE '' END \
                          FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid \
                          WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_class c ON c.oid = t.typrelid \
             WHERE t.typtype = 'c' AND c.relkind = 'c' AND n.nspname = ANY($1) AND {}",
            not_ext("pg_type", "t.oid")
        ),
        "composite types",
    )
    .await?;
    for r in &rows {
        let (schema, name): (String, String) = (r.get(1), r.get(2));
        let cols: Vec<String> = r.get(3);
        types.push((
            r.get(0),
            vec![Statement::new(
                ObjectKind::Type,
                format!("{schema}.{name}"),
                format!(
                    "CREATE TYPE {} AS ({})",
                    qualified(&schema, &name),
                    cols.join(", ")
                ),
            )],
        ));
    }
    types.sort_by_key(|(oid, _)| *oid);
    pre.extend(types.into_iter().flat_map(|(_, s)| s));

    // Functions and procedures (bodies are not checked at creation:
    // check_function_bodies is off while applying).
    let rows = q(
        format!(
            "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), \
                    pg_get_functiondef(p.oid) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.prokind IN ('f', 'p') AND n.nspname = ANY($1) AND {} ORDER BY p.oid",
            not_ext("pg_proc", "p.oid")
        ),
        "functions",
    )
    .await?;
    for r in &rows {
        let (schema, name, args, def): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        pre.push(Statement::new(
            ObjectKind::Function,
            format!("{schema}.{name}({args})"),
            def.trim_end().trim_end_matches(';').to_string(),
        ));
    }

    // Free-standing and serial sequences (identity sequences come with
    // their column); OWNED BY is set once the tables exist.
    let rows = q(
        format!(
            "SELECT n.nspname::text, c.relname::text, {SEQ_COLS}, \
                    (SELECT ARRAY[tn.nspname::text, tc.relname::text, a.attname::text] FROM pg_depend d \
                       JOIN pg_class tc ON tc.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = tc.relnamespace \
                       JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                        AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a' AND d.refobjsubid > 0 LIMIT 1) \
             FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = ANY($1) AND {} \
               AND NOT EXISTS (SELECT 1 FROM pg_depend i WHERE i.classid = 'pg_class'::regclass \
                               AND i.objid = c.oid AND i.deptype = 'i') \
             ORDER BY c.oid",
            not_ext("pg_class", "c.oid")
        ),
        "sequences",
    )
    .await?;
    let mut owned_by = Vec::new();
    for r in &rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let owner: Option<Vec<String>> = r.get(9);
        if owner
            .as_ref()
            .is_some_and(|o| o.len() == 3 && excluded(exclude, &o[0], &o[1]))
        {
            // Goes with the table left out.
            continue;
        }
        let p = SeqParams::from_row(r, 2);
        let qn = qualified(&schema, &name);
        pre.push(Statement::new(
            ObjectKind::Sequence,
            format!("{schema}.{name}"),
            format!("CREATE SEQUENCE {qn} {}", p.options(true)),
        ));
        if let Some(o) = owner {
            if o.len() == 3 && schemas.contains(&o[0]) && !excluded(exclude, &o[0], &o[1]) {
                owned_by.push(Statement::new(
                    ObjectKind::SequenceOwnedBy,
                    format!("{schema}.{name}"),
                    format!(
                        "ALTER SEQUENCE {qn} OWNED BY {}.{}",
                        qualified(&o[0], &o[1]),
                        quote_ident(&o[2])
                    ),
                ));
            }
        }
    }

    // Tables.
    let rows = q(
        format!(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text, \
                    c.relreplident::text, \
                    CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END, \
                    CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END, \
                    (SELECT h.inhparent FROM pg_inherits h WHERE h.inhrelid = c.oid AND c.relispartition), \
                    array_to_string(c.reloptions, ', ') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1) AND {} ORDER BY c.oid",
            not_ext("pg_class", "c.oid")
        ),
        "tables",
    )
    .await?;
    let mut tables: Vec<Table> = rows
        .iter()
        .map(|r| Table {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            persistence: r.get(4),
            replident: r.get(5),
            partkey: r.get(6),
            bound: r.get(7),
            parent: r.get(8),
            options: r.get::<_, Option<String>>(9).filter(|s| !s.is_empty()),
        })
        .filter(|t| !excluded(exclude, &t.schema, &t.name))
        .collect();
    let included: HashSet<Oid> = tables.iter().map(|t| t.oid).collect();
    let names: HashMap<Oid, String> = tables.iter().map(|t| (t.oid, t.qname())).collect();
    // Parents before partitions.
    let mut ordered = Vec::with_capacity(tables.len());
    let mut done: HashSet<Oid> = HashSet::new();
    while !tables.is_empty() {
        let before = tables.len();
        let (ready, rest): (Vec<Table>, Vec<Table>) = tables.into_iter().partition(|t| {
            t.parent
                .is_none_or(|p| !included.contains(&p) || done.contains(&p))
        });
        for t in &ready {
            done.insert(t.oid);
        }
        ordered.extend(ready);
        tables = rest;
        if tables.len() == before {
            // A cycle cannot happen in pg_inherits; never loop forever.
            ordered.append(&mut tables);
        }
    }

    // Identity sequence options per (table, column).
    let rows = q(
        format!(
            "SELECT d.refobjid, d.refobjsubid, n.nspname::text, c.relname::text, {SEQ_COLS} \
             FROM pg_depend d JOIN pg_class c ON c.oid = d.objid JOIN pg_sequence s ON s.seqrelid = c.oid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
               AND d.deptype = 'i' AND n.nspname = ANY($1)"
        ),
        "identity sequences",
    )
    .await?;
    let mut identity: HashMap<(Oid, i32), String> = HashMap::new();
    for r in &rows {
        let p = SeqParams::from_row(r, 4);
        let (schema, name): (String, String) = (r.get(2), r.get(3));
        identity.insert(
            (r.get(0), r.get(1)),
            format!(
                "SEQUENCE NAME {} {}",
                qualified(&schema, &name),
                p.options(false)
            ),
        );
    }

    // Columns.
    let rows = q(
        "SELECT a.attrelid, a.attnum::int4, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                a.attidentity::text, a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid), \
                CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN \
                  quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         LEFT JOIN pg_collation co ON co.oid = a.attcollation \
         LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attrelid, a.attnum"
            .to_string(),
        "columns",
    )
    .await?;
    let mut columns: HashMap<Oid, Vec<String>> = HashMap::new();
    for r in &rows {
        let rel: Oid = r.get(0);
        let attnum: i32 = r.get(1);
        let name: String = r.get(2);
        let ty: String = r.get(3);
        let notnull: bool = r.get(4);
        let ident: String = r.get(5);
        let generated: String = r.get(6);
        let default: Option<String> = r.get(7);
        let collation: Option<String> = r.get(8);
        let mut col = format!("{} {ty}", quote_ident(&name));
        if let Some(c) = collation {
            col.push_str(&format!(" COLLATE {c}"));
        }
        match (generated.as_str(), &default) {
            ("s", Some(expr)) => col.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED")),
            // PostgreSQL 18's virtual generated columns (computed on read).
            ("v", Some(expr)) => col.push_str(&format!(" GENERATED ALWAYS AS ({expr}) VIRTUAL")),
            (_, Some(expr)) => col.push_str(&format!(" DEFAULT {expr}")),
            _ => {}
        }
        if ident == "a" || ident == "d" {
            let how = if ident == "a" { "ALWAYS" } else { "BY DEFAULT" };
            let opts = identity
                .get(&(rel, attnum))
                .map(|o| format!(" ({o})"))
                .unwrap_or_default();
            col.push_str(&format!(" GENERATED {how} AS IDENTITY{opts}"));
        }
        if notnull {
            col.push_str(" NOT NULL");
        }
        columns.entry(rel).or_default().push(col);
    }

    for t in &ordered {
        let qn = t.qname();
        let unlogged = if t.persistence == "u" {
            "UNLOGGED "
        } else {
            ""
        };
        let parent = t.parent.filter(|p| included.contains(p));
        let mut sql = match (parent, &t.bound) {
            (Some(p), Some(bound)) => format!(
                "CREATE {unlogged}TABLE {qn} PARTITION OF {} {bound}",
                names[&p]
            ),
            _ => format!(
                "CREATE {unlogged}TABLE {qn} ({})",
                columns
                    .get(&t.oid)
                    .map(|c| c.join(", "))
                    .unwrap_or_default()
            ),
        };
        if let Some(k) = &t.partkey {
            sql.push_str(&format!(" PARTITION BY {k}"));
        }
        if let Some(o) = &t.options {
            sql.push_str(&format!(" WITH ({o})"));
        }
        let kind = if parent.is_some() {
            ObjectKind::Partition
        } else {
            ObjectKind::Table
        };
        pre.push(Statement::new(
            kind,
            format!("{}.{}", t.schema, t.name),
            sql,
        ));
    }
    // Partition-local defaults that differ from the parent's.
    let rows = q(
        "SELECT c.oid, a.attname::text, pg_get_expr(d.adbin, d.adrelid) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_inherits h ON h.inhrelid = c.oid \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
         JOIN pg_attribute pa ON pa.attrelid = h.inhparent AND pa.attname = a.attname \
         LEFT JOIN pg_attrdef pd ON pd.adrelid = pa.attrelid AND pd.adnum = pa.attnum \
         WHERE c.relispartition AND n.nspname = ANY($1) AND a.attgenerated = '' \
           AND (pd.adbin IS NULL OR pg_get_expr(pd.adbin, pd.adrelid) <> pg_get_expr(d.adbin, d.adrelid))"
            .to_string(),
        "partition defaults",
    )
    .await?;
    for r in &rows {
        let rel: Oid = r.get(0);
        if let Some(qn) = names.get(&rel) {
            let (col, expr): (String, String) = (r.get(1), r.get(2));
            pre.push(Statement::new(
                ObjectKind::Default,
                qn.clone(),
                format!(
                    "ALTER TABLE ONLY {qn} ALTER COLUMN {} SET DEFAULT {expr}",
                    quote_ident(&col)
                ),
            ));
        }
    }

    // CHECK constraints defined on the table itself (inherited ones come
    // from the parent).
    let rows = q(
        "SELECT c.conrelid, c.conname::text, pg_get_constraintdef(c.oid) FROM pg_constraint c \
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE c.contype = 'c' AND c.conislocal AND n.nspname = ANY($1) ORDER BY c.oid"
            .to_string(),
        "check constraints",
    )
    .await?;
    for r in &rows {
        let rel: Oid = r.get(0);
        if let Some(qn) = names.get(&rel) {
            let (name, def): (String, String) = (r.get(1), r.get(2));
            pre.push(Statement::new(
                ObjectKind::Constraint,
                format!("{qn} {name}"),
                format!(
                    "ALTER TABLE {qn} ADD CONSTRAINT {} {def}",
                    quote_ident(&name)
                ),
            ));
        }
    }
    pre.append(&mut owned_by);

    for t in &ordered {
        let clause = match t.replident.as_str() {
            "f" => "FULL",
            "n" => "NOTHING",
            _ => continue,
        };
        pre.push(Statement::new(
            ObjectKind::ReplicaIdentity,
            t.qname(),
            format!("ALTER TABLE ONLY {} REPLICA IDENTITY {clause}", t.qname()),
        ));
    }

    // Views and materialized views, dependencies first.
    let rows = q(
        format!(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, pg_get_viewdef(c.oid), \
                    array_to_string(c.reloptions, ', '), c.relispopulated \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY($1) AND {} ORDER BY c.oid",
            not_ext("pg_class", "c.oid")
        ),
        "views",
    )
    .await?;
    let deps = source
        .query(
            "SELECT DISTINCT r.ev_class, d.refobjid FROM pg_rewrite r \
             JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
             WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class",
            &[],
        )
        .await
        .map_err(SchemaError::query("read view dependencies"))?;
    let mut view_deps: HashMap<Oid, Vec<Oid>> = HashMap::new();
    for d in &deps {
        view_deps.entry(d.get(0)).or_default().push(d.get(1));
    }
    // A view in the exclusion list is left out like a table (as pg_dump's
    // --exclude-table does).
    let rows: Vec<&tokio_postgres::Row> = rows
        .iter()
        .filter(|r| !excluded(exclude, r.get(1), r.get(2)))
        .collect();
    let view_oids: HashSet<Oid> = rows.iter().map(|r| r.get(0)).collect();
    let mut pending: BTreeMap<Oid, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get(0), *r)).collect();
    let mut created: HashSet<Oid> = HashSet::new();
    let mut refreshes = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<Oid> = pending
            .keys()
            .copied()
            .filter(|oid| {
                view_deps.get(oid).is_none_or(|ds| {
                    ds.iter()
                        .all(|d| !view_oids.contains(d) || created.contains(d) || d == oid)
                })
            })
            .collect();
        let ready = if ready.is_empty() {
            pending.keys().copied().take(1).collect()
        } else {
            ready
        };
        for oid in ready {
            let Some(r) = pending.remove(&oid) else {
                continue;
            };
            created.insert(oid);
            let (schema, name, kind, def): (String, String, String, String) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            let options: Option<String> = r.get(5);
            let populated: bool = r.get(6);
            let qn = qualified(&schema, &name);
            let with = options
                .filter(|o| !o.is_empty())
                .map(|o| format!(" WITH ({o})"))
                .unwrap_or_default();
            let def = def.trim().trim_end_matches(';');
            if kind == "m" {
                pre.push(Statement::new(
                    ObjectKind::MaterializedView,
                    format!("{schema}.{name}"),
                    format!("CREATE MATERIALIZED VIEW {qn}{with} AS {def} WITH NO DATA"),
                ));
                if populated {
                    refreshes.push(Statement::new(
                        ObjectKind::Refresh,
                        format!("{schema}.{name}"),
                        format!("REFRESH MATERIALIZED VIEW {qn}"),
                    ));
                }
            } else {
                pre.push(Statement::new(
                    ObjectKind::View,
                    format!("{schema}.{name}"),
                    format!("CREATE VIEW {qn}{with} AS {def}"),
                ));
            }
        }
    }

    // ---- post-data ----
    let mut rel_names = names.clone();
    let view_rows = source
        .query(
            "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY($1)",
            &[&schemas],
        )
        .await
        .map_err(SchemaError::query("list views"))?;
    for r in &view_rows {
        let oid: Oid = r.get(0);
        if view_oids.contains(&oid) {
            rel_names.insert(oid, r.get(1));
        }
    }

    // Key and exclusion constraints, then other indexes.
    let rows = q(
        "SELECT c.conrelid, c.contype::text, c.conname::text, pg_get_constraintdef(c.oid), c.confrelid \
         FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE c.contype IN ('p', 'u', 'x', 'f') AND c.conparentid = 0 AND n.nspname = ANY($1) ORDER BY c.oid"
            .to_string(),
        "key constraints",
    )
    .await?;
    let mut fks = Vec::new();
    for r in &rows {
        let rel: Oid = r.get(0);
        let Some(qn) = names.get(&rel) else { continue };
        let (ty, name, def): (String, String, String) = (r.get(1), r.get(2), r.get(3));
        let kind = match ty.as_str() {
            "p" => ObjectKind::PrimaryKey,
            "u" => ObjectKind::Unique,
            "x" => ObjectKind::Constraint,
            _ => ObjectKind::ForeignKey,
        };
        let st = Statement::new(
            kind,
            format!("{qn} {name}"),
            format!(
                "ALTER TABLE {qn} ADD CONSTRAINT {} {def}",
                quote_ident(&name)
            ),
        );
        if kind == ObjectKind::ForeignKey {
            let referenced: Oid = r.get(4);
            if !names.contains_key(&referenced) {
                tracing::warn!(constraint = %st.name, "foreign key references a table that is not copied; left out");
                continue;
            }
            fks.push(st);
        } else {
            post.push(st);
        }
    }
    let rows = q(
        "SELECT i.indrelid, ic.relname::text, pg_get_indexdef(i.indexrelid) \
         FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = ANY($1) AND t.relkind IN ('r', 'p', 'm') \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid \
                           AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')) \
           AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) \
         ORDER BY i.indexrelid"
            .to_string(),
        "indexes",
    )
    .await?;
    for r in &rows {
        let rel: Oid = r.get(0);
        let Some(qn) = rel_names.get(&rel) else {
            continue;
        };
        let (name, def): (String, String) = (r.get(1), r.get(2));
        // A partitioned table's index is shown as `ON ONLY parent`; without
        // ONLY it is built on every partition and attached in one step.
        let def = def.replacen(" ON ONLY ", " ON ", 1);
        post.push(Statement::new(
            ObjectKind::Index,
            format!("{qn} {name}"),
            def,
        ));
    }
    let rows = q(
        "SELECT i.indrelid, ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE i.indisreplident AND n.nspname = ANY($1)"
            .to_string(),
        "replica identity indexes",
    )
    .await?;
    for r in &rows {
        let rel: Oid = r.get(0);
        let Some(qn) = names.get(&rel) else { continue };
        let name: String = r.get(1);
        post.push(Statement::new(
            ObjectKind::ReplicaIdentity,
            qn.clone(),
            format!(
                "ALTER TABLE ONLY {qn} REPLICA IDENTITY USING INDEX {}",
                quote_ident(&name)
            ),
        ));
    }
    post.append(&mut fks);

    let rows = q(
        "SELECT t.tgrelid, t.tgname::text, pg_get_triggerdef(t.oid), t.tgenabled::text \
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND n.nspname = ANY($1) ORDER BY t.oid"
            .to_string(),
        "triggers",
    )
    .await?;
    for r in &rows {
        let rel: Oid = r.get(0);
        let Some(qn) = rel_names.get(&rel) else {
            continue;
        };
        let (name, def, enabled): (String, String, String) = (r.get(1), r.get(2), r.get(3));
        post.push(Statement::new(
            ObjectKind::Trigger,
            format!("{qn} {name}"),
            def,
        ));
        let state = match enabled.as_str() {
            "D" => "DISABLE TRIGGER",
            "R" => "ENABLE REPLICA TRIGGER",
            "A" => "ENABLE ALWAYS TRIGGER",
            _ => continue,
        };
        post.push(Statement::new(
            ObjectKind::Trigger,
            format!("{qn} {name}"),
            format!("ALTER TABLE {qn} {state} {}", quote_ident(&name)),
        ));
    }
    post.append(&mut refreshes);
    Ok((pre, post))
}
