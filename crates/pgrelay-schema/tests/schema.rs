//! Schema copy against real servers: a realistic schema on an older source
//! (FKs, enums, domains, composite type, identity and serial sequences, a
//! free-standing sequence, a partitioned table with two partitions and an FK
//! to it, generated columns, a view, a trigger with its function, a table
//! without a primary key, partial and expression indexes, a quoted
//! mixed-case table) copied to a newer major, once with DDL
//! generated from the catalogs (14 → 17, with roles and grants), once
//! with pg_dump (15 → 17, found automatically) and once falling back to the
//! catalogs because no pg_dump can dump the source (17 → 18). Each run: pre-data, the
//! rows (COPY), post-data in parallel, large objects, then the target's
//! catalog is compared with the source's object by object, the data with the
//! test kit's comparison, and sequences are synced and used.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use pgrelay_schema::{
    apply_post_data, apply_pre_data, apply_statements, copy_large_objects, dump_roles_selected,
    dump_schema, sync_sequences, DumpSource, ObjectKind, SchemaOptions,
};
use pgrelay_testkit::{assert_databases_equal, connect_plain, Cluster};
use tokio_postgres::Client;

const DB: &str = "shop";
const APP_PASSWORD: &str = "App-Secret-pw-41";

const SCHEMA_SQL: &str = r#"
CREATE EXTENSION citext;
CREATE SCHEMA app;
CREATE TYPE app.status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN app.email AS text NOT NULL CONSTRAINT email_has_at CHECK (VALUE ~ '@');
CREATE DOMAIN app.money_amount AS numeric(12,2) DEFAULT 0 CONSTRAINT money_nonneg CHECK (VALUE >= 0);
CREATE TYPE app.address AS (street text, zip varchar(10));
CREATE SEQUENCE app.invoice_no AS integer INCREMENT BY 5 MINVALUE 100 MAXVALUE 1000000 START WITH 100 CACHE 3 CYCLE;
CREATE TABLE app.customers (
  id bigint GENERATED ALWAYS AS IDENTITY (START WITH 1000 INCREMENT BY 2),
  email app.email UNIQUE,
  name text COLLATE "C" NOT NULL,
  nick citext,
  addr app.address,
  created timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id)
);
CREATE TABLE app.orders (
  id serial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES app.customers(id) ON DELETE CASCADE,
  status app.status NOT NULL DEFAULT 'new',
  amount app.money_amount,
  qty int NOT NULL CONSTRAINT qty_positive CHECK (qty > 0),
  unit_price numeric(10,2) NOT NULL,
  total numeric GENERATED ALWAYS AS (qty * unit_price) STORED,
  invoice int DEFAULT nextval('app.invoice_no'),
  note text
) WITH (fillfactor = 90);
CREATE INDEX orders_open ON app.orders (customer_id) WHERE status <> 'shipped';
CREATE INDEX orders_lower_note ON app.orders (lower(note));
CREATE TABLE app.events (
  id bigint NOT NULL,
  at date NOT NULL,
  kind text CHECK (kind <> ''),
  payload jsonb,
  PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_kind ON app.events (kind);
CREATE TABLE app.lines (
  order_id int NOT NULL REFERENCES app.orders(id),
  event_id bigint,
  event_at date,
  FOREIGN KEY (event_id, event_at) REFERENCES app.events (id, at)
);
CREATE TABLE app.audit_log (at timestamptz DEFAULT now(), who text, what text);
ALTER TABLE app.audit_log REPLICA IDENTITY FULL;
CREATE FUNCTION app.log_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO app.audit_log (who, what) VALUES (current_user, 'order ' || NEW.id || '; ok');
  RETURN NEW;
END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.log_order();
CREATE VIEW app.open_orders AS
  SELECT o.id, c.name, o.total FROM app.orders o JOIN app.customers c ON c.id = o.customer_id
  WHERE o.status <> 'shipped';
CREATE TABLE public."Mixed Case" ("Id" int PRIMARY KEY, "select" text UNIQUE);
"#;

const DATA_SQL: &str = r#"
INSERT INTO app.customers (email, name, addr)
  SELECT 'c' || g || '@example.com', 'Customer ' || g, ROW('Street ' || g, lpad(g::text, 5, '0'))::app.address
  FROM generate_series(1, 50) g;
INSERT INTO app.orders (customer_id, status, amount, qty, unit_price, note)
  SELECT 1000 + 2 * (g % 50), (ARRAY['new','paid','shipped'])[1 + g % 3]::app.status, g * 1.5, 1 + g % 7, g % 13 + 0.25,
         CASE WHEN g % 4 = 0 THEN NULL ELSE 'Note ' || g END
  FROM generate_series(1, 200) g;
INSERT INTO app.events (id, at, kind, payload)
  SELECT g, DATE '2024-06-01' + (g * 3), 'k' || (g % 5), jsonb_build_object('g', g)
  FROM generate_series(1, 150) g;
INSERT INTO app.lines SELECT g, g, DATE '2024-06-01' + (g * 3) FROM generate_series(1, 100) g;
INSERT INTO public."Mixed Case" SELECT g, 'v' || g FROM generate_series(1, 20) g;
"#;

const ROLES_SQL: &str = r#"
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE app_user LOGIN PASSWORD 'App-Secret-pw-41' CONNECTION LIMIT 7;
GRANT app_owner TO app_user;
GRANT USAGE ON SCHEMA app TO app_user;
GRANT SELECT ON app.customers TO app_user;
ALTER TABLE app.audit_log OWNER TO app_owner;
"#;

async fn rows(client: &Client, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join(" | "),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The catalog of a database, object by object, rendered by the server
/// with `search_path = pg_catalog` so every name is schema-qualified on both
/// sides alike. Names the server makes up for constraints cloned onto
/// partitions are masked (their pattern changed in 18).
async fn catalog(client: &Client) -> BTreeMap<&'static str, Vec<String>> {
    client
        .batch_execute("SET search_path = pg_catalog")
        .await
        .expect("set search_path");
    let user = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT IN ('information_schema', 'pgrelay')";
    let queries: Vec<(&'static str, String)> = vec![
        ("relations", format!(
            "SELECT c.oid::regclass::text, c.relkind, c.relpersistence, c.relreplident, \
                    coalesce(pg_get_partkeydef(c.oid), '-'), coalesce(pg_get_expr(c.relpartbound, c.oid), '-'), \
                    coalesce(array_to_string(c.reloptions, ','), '-') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'c') AND {user}")),
        ("columns", format!(
            "SELECT c.oid::regclass::text, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    a.attidentity, a.attgenerated, coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), \
                    coalesce(co.collname, '-') \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN pg_collation co ON co.oid = a.attcollation \
             WHERE c.relkind IN ('r', 'p', 'v', 'c') AND a.attnum > 0 AND NOT a.attisdropped AND {user}")),
        ("constraints", format!(
            "SELECT CASE WHEN c.conrelid <> 0 THEN c.conrelid::regclass::text ELSE format_type(c.contypid, NULL) END, CASE WHEN c.conparentid <> 0 THEN '(named by the server)' ELSE c.conname::text END, c.contype, \
                    pg_get_constraintdef(c.oid), c.convalidated \
             FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
             WHERE c.contype <> 'n' AND {user}")),
        ("indexes", format!(
            "SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), \
                    i.indisprimary, i.indisunique, i.indisvalid, i.indisreplident \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {user}")),
        ("triggers", format!(
            "SELECT pg_get_triggerdef(t.oid), t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {user}")),
        ("views", format!(
            "SELECT c.oid::regclass::text, pg_get_viewdef(c.oid) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND {user}")),
        ("sequences", format!(
            "SELECT c.oid::regclass::text, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, \
                    s.seqmax, s.seqcache, s.seqcycle, \
                    coalesce((SELECT d.refobjid::regclass::text || '.' || d.refobjsubid || ':' || d.deptype::text \
                              FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                                AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')), '-') \
             FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {user}")),
        ("types", format!(
            "SELECT format_type(t.oid, NULL), t.typtype, coalesce(format_type(nullif(t.typbasetype, 0), t.typtypmod), '-'), \
                    t.typnotnull, coalesce(t.typdefault, '-'), \
                    coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e \
                              WHERE e.enumtypid = t.oid), '-') \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typtype IN ('e', 'd', 'c') AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') \
               AND {user}")),
        ("functions", format!(
            "SELECT p.oid::regprocedure::text, pg_get_function_result(p.oid), p.prosrc, p.prokind \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {user} \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass \
                               AND d.objid = p.oid AND d.deptype = 'e')")),
    ];
    let mut out = BTreeMap::new();
    for (name, sql) in queries {
        out.insert(name, rows(client, &sql).await);
    }
    out
}

fn assert_catalogs_equal(
    source: &BTreeMap<&'static str, Vec<String>>,
    target: &BTreeMap<&'static str, Vec<String>>,
) {
    for (what, src) in source {
        let dst = &target[what];
        let missing: Vec<&String> = src.iter().filter(|r| !dst.contains(r)).collect();
        let extra: Vec<&String> = dst.iter().filter(|r| !src.contains(r)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what} differ\n  only on the source: {missing:#?}\n  only on the target: {extra:#?}"
        );
        assert!(!src.is_empty(), "{what}: nothing compared");
    }
}

/// Copies every ordinary table's rows with COPY (generated columns are
/// recomputed on the target).
async fn copy_rows(source: &Client, target: &Client) {
    let tables = rows(
        source,
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname IN ('app', 'public')",
    )
    .await;
    for t in tables {
        let out = source
            .copy_out(&format!("COPY {t} TO STDOUT"))
            .await
            .expect("copy out");
        futures_util::pin_mut!(out);
        let sink = target
            .copy_in(&format!("COPY {t} FROM STDIN"))
            .await
            .expect("copy in");
        futures_util::pin_mut!(sink);
        while let Some(chunk) = out.next().await {
            sink.send(chunk.expect("copy chunk")).await.expect("send");
        }
        sink.as_mut().finish().await.expect("finish copy");
    }
}

async fn scenario(
    source_major: u32,
    target_major: u32,
    force_catalog: bool,
    with_roles: bool,
    expect_pg_dump: bool,
    list_schemas: bool,
) {
    let source = Cluster::start(source_major);
    let target = Cluster::builder(target_major)
        .hba_line("host all app_user 127.0.0.1/32 scram-sha-256")
        .start();
    source.create_database(DB);
    target.create_database(DB);
    source.execute_blocking(DB, SCHEMA_SQL);
    if with_roles {
        source.execute_blocking(DB, ROLES_SQL);
    }
    source.execute_blocking(DB, DATA_SQL);
    source.execute_blocking(
        DB,
        "SELECT lo_from_bytea(424242, convert_to(repeat('large object bytes ', 100000), 'UTF8'));
         SELECT lo_from_bytea(0, '\\x00ff00'::bytea);",
    );
    if with_roles {
        source.execute_blocking(DB, "ALTER LARGE OBJECT 424242 OWNER TO app_owner");
    }

    let src = source.connect(DB).await;
    let dst = target.connect(DB).await;
    let source_config = pgrelay_source::Config::parse(&source.superuser_url(DB)).expect("url");
    let target_config = pgrelay_source::Config::parse(&target.superuser_url(DB)).expect("url");

    let options = SchemaOptions {
        roles: with_roles,
        force_catalog,
        // Listing schemas makes pg_dump leave extensions out.
        schemas: list_schemas.then(|| vec!["app".to_string(), "public".to_string()]),
        ..SchemaOptions::default()
    };
    let dump = dump_schema(&source_config, &src, &options)
        .await
        .expect("dump schema");
    match &dump.source {
        DumpSource::Catalog => assert!(!expect_pg_dump, "expected pg_dump to be used"),
        DumpSource::PgDump { major, .. } => {
            assert!(expect_pg_dump, "expected the catalogs to be used");
            assert!(
                *major >= source_major,
                "pg_dump {major} for a {source_major} source"
            );
        }
    }
    let mut seqs = dump.sequences.clone();
    seqs.sort();
    assert_eq!(
        seqs,
        vec![
            ("app".to_string(), "customers_id_seq".to_string()),
            ("app".to_string(), "invoice_no".to_string()),
            ("app".to_string(), "orders_id_seq".to_string()),
        ]
    );
    for kind in [
        ObjectKind::Index,
        ObjectKind::ForeignKey,
        ObjectKind::Trigger,
    ] {
        assert!(
            dump.post_data.iter().any(|s| s.kind == kind),
            "no {kind:?} in post-data"
        );
    }

    let role_statements = if with_roles {
        let all = dump_roles_selected(&src, &options)
            .await
            .expect("dump roles");
        assert!(
            !format!("{all:?}").contains("SCRAM-SHA-256$"),
            "Debug output shows a password verifier"
        );
        let (before, grants): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|s| s.kind != ObjectKind::Grant);
        apply_statements(&dst, &before).await.expect("apply roles");
        Some(grants)
    } else {
        None
    };

    apply_pre_data(&dst, &dump).await.expect("apply pre-data");
    copy_rows(&src, &dst).await;
    let report = apply_post_data(&target_config, &dump, 3)
        .await
        .expect("apply post-data");
    assert!(report.connections > 1, "{report:?}");
    assert!(
        report.indexes >= 8 && report.foreign_keys >= 3,
        "{report:?}"
    );
    if let Some(grants) = &role_statements {
        apply_statements(&dst, grants).await.expect("apply grants");
    }
    assert_eq!(copy_large_objects(&src, &dst).await.expect("copy LOs"), 2);

    assert_catalogs_equal(&catalog(&src).await, &catalog(&dst).await);
    assert_databases_equal(&src, &dst).await;
    let lo = "SELECT oid, pg_get_userbyid(lomowner), md5(lo_get(oid)) FROM pg_largeobject_metadata";
    assert_eq!(rows(&src, lo).await, rows(&dst, lo).await);

    // Sequences: after the sync, inserts on the target continue past the
    // source's values (no duplicate keys), and the trigger fires there.
    assert_eq!(
        sync_sequences(&src, &dst, &dump.sequences)
            .await
            .expect("sync"),
        3
    );
    dst.batch_execute("SET search_path = public")
        .await
        .expect("reset search_path");
    let new_customer: i64 = dst
        .query_one(
            "INSERT INTO app.customers (email, name) VALUES ('new@example.com', 'New') RETURNING id",
            &[],
        )
        .await
        .expect("insert customer on the target")
        .get(0);
    assert_eq!(
        new_customer,
        1000 + 2 * 50,
        "identity continues after the source"
    );
    let new_order = dst
        .query_one(
            "INSERT INTO app.orders (customer_id, qty, unit_price) VALUES ($1, 2, 3.5) RETURNING id, invoice, total::text",
            &[&new_customer],
        )
        .await
        .expect("insert order on the target");
    assert_eq!(new_order.get::<_, i32>(0), 201);
    let source_invoice: i32 = src
        .query_one("SELECT max(invoice) FROM app.orders", &[])
        .await
        .expect("max invoice")
        .get(0);
    let invoice: i32 = new_order.get(1);
    assert!(
        invoice > source_invoice,
        "invoice {invoice} must follow {source_invoice}"
    );
    assert_eq!(new_order.get::<_, String>(2), "7.00");
    let audited: i64 = dst
        .query_one(
            "SELECT count(*) FROM app.audit_log WHERE what = 'order 201; ok'",
            &[],
        )
        .await
        .expect("audit")
        .get(0);
    assert_eq!(
        audited, 1,
        "the trigger and its function work on the target"
    );
    let fk = dst
        .execute("INSERT INTO app.lines VALUES (999999, NULL, NULL)", &[])
        .await
        .expect_err("foreign key must reject a missing order");
    assert_eq!(fk.code().map(|c| c.code()), Some("23503"));

    if with_roles && expect_pg_dump {
        // pg_dump keeps owners when roles are copied.
        let owners = "SELECT c.oid::regclass::text, pg_get_userbyid(c.relowner) FROM pg_class c \
                      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app'";
        let on_source = rows(&src, owners).await;
        assert!(on_source.iter().any(|r| r.ends_with("| app_owner")));
        assert_eq!(on_source, rows(&dst, owners).await);
    }
    if with_roles {
        let conninfo = |pw: &str| {
            format!(
                "host=127.0.0.1 port={} user=app_user password={pw} dbname={DB}",
                target.port()
            )
        };
        let app = connect_plain(&conninfo(APP_PASSWORD))
            .await
            .expect("app_user logs in on the target with the source's password");
        let n: i64 = app
            .query_one("SELECT count(*) FROM app.customers", &[])
            .await
            .expect("granted SELECT")
            .get(0);
        assert_eq!(n, 51);
        let denied = app
            .query_one("SELECT count(*) FROM app.orders", &[])
            .await
            .expect_err("no grant on orders");
        assert_eq!(denied.code().map(|c| c.code()), Some("42501"));
        let member: bool = app
            .query_one("SELECT pg_has_role('app_user', 'app_owner', 'MEMBER')", &[])
            .await
            .expect("membership")
            .get(0);
        assert!(member);
        assert!(
            connect_plain(&conninfo("wrong-password")).await.is_err(),
            "a wrong password must be refused (SCRAM is enforced)"
        );
        let limit: i32 = dst
            .query_one(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app_user'",
                &[],
            )
            .await
            .expect("role")
            .get(0);
        assert_eq!(limit, 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_ddl_from_14_to_17_with_roles() {
    scenario(14, 17, true, true, false, false).await;
}

/// The migration's main path: no pg_dump 14 here, pg_dump 15 dumps the 14
/// source, keeping owners and privileges (roles copied first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_ddl_from_14_to_17_with_roles() {
    scenario(14, 17, false, true, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_ddl_from_15_to_17_listed_schemas() {
    scenario(15, 17, false, false, true, true).await;
}

/// A 16 source: the PostgreSQL 16 client tools under `.pg/pgserver-16`
/// qualify (pg_dump 15 does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_ddl_from_16_to_17() {
    scenario(16, 17, false, false, true, false).await;
}

/// No pg_dump 17 or newer is installed here, so a 17 source falls back to
/// the catalogs on its own; the 18 target adds NOT NULL constraints to
/// pg_constraint, which the copy must not trip over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_fallback_from_17_to_18_listed_schemas() {
    if pgrelay_schema::find_pg_dump(None, 17)
        .await
        .expect("search")
        .is_some()
    {
        panic!(
            "a pg_dump >= 17 is installed; this test expects none (run it where only 15/16 exist)"
        );
    }
    scenario(17, 18, false, false, false, true).await;
}

/// Many sequences (more than one batch), odd names, and every state a
/// sequence can be in: never used, used, `setval(..., false)`, descending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sequences_copies_every_state_in_batches() {
    let source = Cluster::start(14);
    let target = Cluster::start(17);
    let ddl = r#"
        CREATE SCHEMA "Odd Schema";
        CREATE SEQUENCE "Odd Schema"."seq ""quoted""";
        CREATE SEQUENCE public.down INCREMENT BY -3 MINVALUE -1000 MAXVALUE 10 START WITH 10;
        DO $$ BEGIN FOR i IN 1..1200 LOOP EXECUTE format('CREATE SEQUENCE public.s%s', i); END LOOP; END $$;
    "#;
    source.execute_blocking("postgres", ddl);
    target.execute_blocking("postgres", ddl);
    source.execute_blocking(
        "postgres",
        r#"DO $$ BEGIN FOR i IN 1..1200 BY 7 LOOP PERFORM nextval(format('public.s%s', i)) FROM generate_series(1, i); END LOOP; END $$;
           SELECT setval('public.s2', 77, false);
           SELECT nextval('"Odd Schema"."seq ""quoted"""');
           SELECT nextval('public.down'), nextval('public.down');"#,
    );
    let src = source.connect("postgres").await;
    let dst = target.connect("postgres").await;
    let mut seqs: Vec<(String, String)> = (1..=1200)
        .map(|i| ("public".to_string(), format!("s{i}")))
        .collect();
    seqs.push(("Odd Schema".into(), "seq \"quoted\"".into()));
    seqs.push(("public".into(), "down".into()));
    assert_eq!(sync_sequences(&src, &dst, &seqs).await.expect("sync"), 1202);
    let state = "SELECT c.oid::regclass::text, pg_sequence_last_value(c.oid), \
                 (SELECT s.seqstart FROM pg_sequence s WHERE s.seqrelid = c.oid) \
                 FROM pg_class c WHERE c.relkind = 'S'";
    let on_source = rows(&src, state).await;
    assert_eq!(on_source.len(), 1202);
    assert_eq!(on_source, rows(&dst, state).await);
    for (sql, expected) in [
        ("SELECT nextval('public.s2')", 77),
        ("SELECT nextval('public.s8')", 9),
        ("SELECT nextval('public.s3')", 1),
        ("SELECT nextval('public.down')", 4),
        ("SELECT nextval('\"Odd Schema\".\"seq \"\"quoted\"\"\"')", 2),
    ] {
        let v: i64 = dst.query_one(sql, &[]).await.expect(sql).get(0);
        assert_eq!(v, expected, "{sql}");
    }
}
