//! The initial copy against real servers.
//!
//! `types_to_two_targets` (source: every major; targets: 15 and 17):
//! tables of many built-in types (binary format), user types nested in
//! arrays and `aclitem` (text format: no binary I/O, or OIDs in the binary
//! form), NULLs, TOASTed values, quoted names, a generated column, a
//! partitioned table and a table split into ctid chunks; both targets equal
//! the source, `pgrelay.table_sync` says `ready` at the slot's LSN with the
//! row counts; a second run skips everything.
//!
//! `snapshot_consistency`: rows inserted, updated and deleted after the slot
//! was created are not in the copy (the target equals the source's digest
//! taken before).
//!
//! `chunks_and_resume`: a table split into many ctid ranges copied by four
//! workers is equal (binary) and counted in the metrics, a table whose target column type differs goes
//! in text format; then a table left `ready` is skipped (a change made on
//! the target survives), one left `copying` with partial, wrong rows is
//! emptied and copied again, and one that a `ready` table references by a
//! foreign key (TRUNCATE refuses) is emptied with DELETE and copied again.
//!
//! `slow_target`: one of two targets behind a proxy adding latency; a run
//! whose shutdown future fires after the first chunk returns `Interrupted`
//! and leaves the table `copying`; the next run completes and both targets
//! are equal.
//!
//! `target_restart_is_transient`: a target restarted mid-copy fails the copy
//! with a transient error, and running again completes it.
//!
//! `row_security_fails_loudly`: a role that policies would hide rows from
//! gets a fatal error, not a partial copy.
//!
//! `connection_limit_means_fewer_workers`: with a role limited to two
//! sessions, a four-worker copy completes with the two it got.

mod common;

use std::time::Duration;

use common::*;
use pgrelay_copy::{estimate, CopyEvent, CopyFormat};
use pgrelay_testkit::compare::digest_database;
use pgrelay_testkit::{assert_databases_equal, Cluster, FaultProxy};

const TYPES_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE kinds (
  id int PRIMARY KEY, i2 int2, i8 int8, num numeric, f4 float4, f8 float8, t text,
  vc varchar(10), ch char(3), by bytea, b bool, d date, tm time, tmz timetz, ts timestamp,
  tstz timestamptz, iv interval, u uuid, j json, jb jsonb, ip inet, net cidr, mac macaddr,
  pt point, bx box, r int4range, tr tstzrange, mr int4multirange, ia int4[], ta text[],
  tv tsvector, bits bit(4), vb varbit, m money, md mood, pos positive, pr pair,
  doubled int GENERATED ALWAYS AS (id * 2) STORED);
CREATE TABLE moods (id int PRIMARY KEY, ms mood[], ps pair[]);
CREATE TABLE grants (id int PRIMARY KEY, acl aclitem);
CREATE TABLE big (id int PRIMARY KEY, payload text, blob bytea);
CREATE TABLE many (id bigint PRIMARY KEY, v text);
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed ""Case""" ("select" int, "two words" text);
CREATE TABLE measurements (id int, at date, v float8) PARTITION BY RANGE (at);
CREATE TABLE measurements_2024 PARTITION OF measurements
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_2025 PARTITION OF measurements
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
"#;

const TYPES_DATA: &str = r#"
INSERT INTO kinds (id, i2, i8, num, f4, f8, t, vc, ch, by, b, d, tm, tmz, ts, tstz, iv, u, j, jb,
                   ip, net, mac, pt, bx, r, tr, mr, ia, ta, tv, bits, vb, m, md, pos, pr)
SELECT g, (g % 30000)::int2, g::int8 * 1000000007, g / 7.0, g / 3.0, g / 9.0,
       'text ' || g || E' tab\t nl\n back\\ quote'' é', left('v' || g, 10), 'c' || (g % 10),
       decode(md5(g::text), 'hex'), g % 2 = 0, date '2000-01-01' + g, time '12:34:56.789' + g * interval '1 s',
       timetz '10:00:00+02', timestamp '2020-02-29 23:59:59.999999' + g * interval '1 min',
       timestamptz '2021-06-01 00:00:00+00' + g * interval '1 h', g * interval '1 day 2 hours 3.5 s',
       md5(g::text)::uuid, json_build_object('k', g, 'a', json_build_array(1, 'x')),
       jsonb_build_object('k', g, 'nested', jsonb_build_object('z', null)),
       ('10.0.' || (g % 255) || '.1')::inet, '192.168.0.0/16', '08:00:2b:01:02:03',
       point(g, -g), box(point(0, 0), point(g, g)), int4range(g, g + 10), tstzrange(now() - interval '1 d', null),
       int4multirange(int4range(1, 3), int4range(g + 10, g + 20)), ARRAY[g, NULL, -g], ARRAY['a', NULL, 'b"c', ''],
       to_tsvector('simple', 'the quick brown fox ' || g), (g % 16)::bit(4), '101'::varbit, g * 1.25,
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, g, ROW(g, 'p' || g)::pair
  FROM generate_series(1, 300) g;
INSERT INTO kinds (id) VALUES (1000);
INSERT INTO kinds (id, num, f4, f8, ts, tstz, d) VALUES
  (1001, 'NaN', 'NaN', 'Infinity', 'infinity', '-infinity', 'infinity'),
  (1002, -0.000000000000000000001, -0.0, 1.7976931348623157e308, '4713-01-01 BC', 'epoch', '0001-01-01');
INSERT INTO moods SELECT g, ARRAY['happy', NULL, 'sad']::mood[], ARRAY[ROW(g, 'x')::pair, NULL]
  FROM generate_series(1, 50) g;
INSERT INTO moods (id) VALUES (999);
INSERT INTO grants VALUES (1, 'postgres=arwdDxt/postgres'), (2, '=r/postgres'), (3, NULL);
INSERT INTO big SELECT g, (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 8000) i),
                       decode((SELECT string_agg(md5(i::text || g), '') FROM generate_series(1, 3000) i), 'hex')
  FROM generate_series(1, 12) g;
INSERT INTO big VALUES (100, NULL, NULL), (101, '', '\x');
INSERT INTO many SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 20000) g;
INSERT INTO "Odd Schema"."Mixed ""Case""" SELECT g, 'w ' || g FROM generate_series(1, 10) g;
INSERT INTO measurements SELECT g, date '2024-06-01' + (g % 400), g / 10.0 FROM generate_series(1, 2000) g;
"#;

pgrelay_testkit::per_major!(types_to_two_targets, |major| async move {
    let source = Cluster::start(major);
    let t15 = Cluster::start(15);
    let t17 = Cluster::start(17);
    source.execute_blocking("postgres", TYPES_DDL);
    source.execute_blocking("postgres", TYPES_DATA);
    t15.execute_blocking("postgres", TYPES_DDL);
    t17.execute_blocking("postgres", TYPES_DDL);
    let src = source.connect("postgres").await;
    let tables = user_tables(&src).await;
    assert_eq!(tables.len(), 7, "{tables:?}");
    let kinds = tables.iter().find(|t| t.name == "kinds").expect("kinds");
    assert!(!kinds.columns.contains(&"doubled".to_string()));

    let estimates = estimate(&config(&conninfo(source.port(), "postgres")), &tables)
        .await
        .expect("estimate");
    let big_idx = tables.iter().position(|t| t.name == "big").expect("big");
    assert!(estimates[big_idx].bytes > 1_000_000, "{estimates:?}");
    let parted = tables
        .iter()
        .position(|t| t.name == "measurements")
        .expect("measurements");
    assert!(
        estimates[parted].bytes > 0,
        "partitions summed: {estimates:?}"
    );

    let (_repl, snap) = export_snapshot(&source, "postgres").await;
    let targets = [
        target("t15", t15.port(), "postgres"),
        target("t17", t17.port(), "postgres"),
    ];
    let opts = options("types", 3, 16);

    // A leaf listed with its partitioned parent would be copied twice.
    let mut with_leaf = tables.clone();
    with_leaf.push(pgrelay_copy::TableCopy {
        schema: "public".into(),
        name: "measurements_2024".into(),
        columns: vec!["id".into(), "at".into(), "v".into()],
    });
    let (refused, _) = run_copy(&source, "postgres", &snap, &targets, &with_leaf, &opts).await;
    match refused {
        Err(e @ pgrelay_copy::CopyError::Invalid(_)) => {
            assert!(
                e.to_string().contains("partition of public.measurements"),
                "{e}"
            );
            assert!(!e.is_transient());
        }
        other => panic!("a leaf with its parent must be refused: {other:?}"),
    }

    let (result, events) = run_copy(&source, "postgres", &snap, &targets, &tables, &opts).await;
    let report = result.unwrap_or_else(|e| panic!("copy failed: {e}"));

    let format_of = |name: &str| {
        report
            .tables
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} in report"))
    };
    assert_eq!(format_of("kinds").format, CopyFormat::Binary);
    assert_eq!(format_of("big").format, CopyFormat::Binary);
    assert_eq!(format_of("measurements").format, CopyFormat::Binary);
    assert_eq!(
        format_of("moods").format,
        CopyFormat::Text,
        "enum/composite arrays embed OIDs"
    );
    assert_eq!(
        format_of("grants").format,
        CopyFormat::Text,
        "aclitem has no binary I/O"
    );
    assert!(format_of("many").chunks > 1, "{report:?}");
    assert_eq!(format_of("measurements").chunks, 2, "one unit per leaf");
    assert_eq!(format_of("kinds").rows, 303);
    assert_eq!(format_of("measurements").rows, 2000);

    for t in [&t15, &t17] {
        let client = t.connect("postgres").await;
        assert_databases_equal(&src, &client).await;
        let sync = sync_rows(&client, "types").await;
        assert_eq!(sync.len(), tables.len());
        for (table, state, lsn, rows) in &sync {
            assert_eq!(state, "ready", "{table}");
            assert_eq!(
                lsn.as_deref(),
                Some(snap.lsn.to_string().as_str()),
                "{table}"
            );
            let r = report
                .tables
                .iter()
                .find(|r| format!("{}.{}", r.schema, r.name) == *table)
                .expect("reported");
            assert_eq!(*rows as u64, r.rows, "{table}");
        }
        let doubled: i64 = client
            .query_one("SELECT sum(doubled - 2 * id) FROM kinds", &[])
            .await
            .expect("generated column")
            .get(0);
        assert_eq!(doubled, 0);
    }
    let done: Vec<&CopyEvent> = events
        .iter()
        .filter(|e| matches!(e, CopyEvent::TableDone { .. }))
        .collect();
    assert_eq!(done.len(), tables.len(), "{events:?}");

    // Everything is ready now: a second run touches nothing.
    let (again, _) = run_copy(&source, "postgres", &snap, &targets, &tables, &opts).await;
    let again = again.expect("second run");
    assert_eq!(again.rows, 0);
    assert!(again
        .tables
        .iter()
        .all(|t| t.copied_to.is_empty() && t.skipped_on.len() == 2));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_consistency() {
    let (sm, tm) = pick(16, 17);
    let source = Cluster::start(sm);
    let target_pg = Cluster::start(tm);
    let ddl = "CREATE TABLE items (id int PRIMARY KEY, v text);";
    source.execute_blocking("postgres", ddl);
    target_pg.execute_blocking("postgres", ddl);
    source.execute_blocking(
        "postgres",
        "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5000) g",
    );
    let src = source.connect("postgres").await;
    let before = digest_database(&src).await.expect("digest");

    let (_repl, snap) = export_snapshot(&source, "postgres").await;
    src.batch_execute(
        "INSERT INTO items VALUES (6000, 'after'); UPDATE items SET v = 'changed' WHERE id <= 100;
         DELETE FROM items WHERE id BETWEEN 200 AND 300;",
    )
    .await
    .expect("changes after the snapshot");
    assert_ne!(digest_database(&src).await.expect("digest"), before);

    let tables = user_tables(&src).await;
    let targets = [target("t", target_pg.port(), "postgres")];
    let (result, _) = run_copy(
        &source,
        "postgres",
        &snap,
        &targets,
        &tables,
        &options("snap", 2, 8),
    )
    .await;
    let report = result.unwrap_or_else(|e| panic!("copy failed: {e}"));
    assert!(report.tables[0].chunks > 1);
    let dst = target_pg.connect("postgres").await;
    assert_eq!(digest_database(&dst).await.expect("digest"), before);
    assert_eq!(count(&dst, "items").await, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_and_resume() {
    let (sm, tm) = pick(14, 15);
    let source = Cluster::start(sm);
    let target_pg = Cluster::start(tm);
    let ddl = "CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
               CREATE TABLE half_done (id int PRIMARY KEY, v text);
               CREATE TABLE parents (id int PRIMARY KEY);
               CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents);";
    source.execute_blocking("postgres", ddl);
    target_pg.execute_blocking("postgres", ddl);
    // The target's column type differs: binary would misread it.
    source.execute_blocking(
        "postgres",
        "CREATE TABLE done_before (id int PRIMARY KEY, v text)",
    );
    target_pg.execute_blocking(
        "postgres",
        "CREATE TABLE done_before (id int PRIMARY KEY, v varchar(100))",
    );
    source.execute_blocking(
        "postgres",
        "INSERT INTO accounts SELECT g, g % 10, 0, '' FROM generate_series(1, 100000) g;
         INSERT INTO done_before SELECT g, 'd' || g FROM generate_series(1, 1000) g;
         INSERT INTO half_done SELECT g, 'h' || g FROM generate_series(1, 1000) g;
         INSERT INTO parents SELECT g FROM generate_series(1, 100) g;
         INSERT INTO children SELECT g, g % 100 + 1 FROM generate_series(1, 300) g;",
    );
    let src = source.connect("postgres").await;
    let tables = user_tables(&src).await;
    let targets = [target("t", target_pg.port(), "postgres")];
    let (_repl, snap) = export_snapshot(&source, "postgres").await;
    metrics_text(); // installs the recorder before the copy
    let (result, events) = run_copy(
        &source,
        "postgres",
        &snap,
        &targets,
        &tables,
        &options("resume", 4, 64),
    )
    .await;
    let report = result.unwrap_or_else(|e| panic!("copy failed: {e}"));
    let accounts = report
        .tables
        .iter()
        .find(|t| t.name == "accounts")
        .expect("accounts");
    assert!(accounts.chunks >= 10, "{accounts:?}");
    assert_eq!(accounts.format, CopyFormat::Binary);
    let done_before = report
        .tables
        .iter()
        .find(|t| t.name == "done_before")
        .expect("done_before");
    assert_eq!(
        done_before.format,
        CopyFormat::Text,
        "types differ on the target"
    );
    assert_eq!(accounts.rows, 100_000);
    assert!(events
        .iter()
        .any(|e| matches!(e, CopyEvent::Progress { table, .. } if table == "public.accounts")));
    let dst = target_pg.connect("postgres").await;
    assert_databases_equal(&src, &dst).await;
    let metrics = metrics_text();
    for line in [
        "pgrelay_copy_rows_total{pipeline=\"resume\",table=\"public.accounts\"} 100000",
        "pgrelay_copy_tables_pending{pipeline=\"resume\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    assert!(
        metrics.contains("pgrelay_copy_bytes_total{pipeline=\"resume\",table=\"public.accounts\"}")
    );

    // A crashed run's leftovers: done_before finished (then changed on the
    // target, which a recopy would undo), half_done interrupted with a
    // partial and wrong copy.
    dst.batch_execute(
        "UPDATE done_before SET v = 'kept' WHERE id = 1;
         UPDATE pgrelay.table_sync SET state = 'copying', sync_lsn = NULL
          WHERE pipeline = 'resume' AND table_name = 'half_done';
         DELETE FROM half_done WHERE id > 500; INSERT INTO half_done VALUES (5000, 'stray');
         UPDATE pgrelay.table_sync SET state = 'copying', sync_lsn = NULL
          WHERE pipeline = 'resume' AND table_name = 'parents';
         INSERT INTO parents VALUES (1000);",
    )
    .await
    .expect("simulate a crashed run");
    let (result, _) = run_copy(
        &source,
        "postgres",
        &snap,
        &targets,
        &tables,
        &options("resume", 4, 64),
    )
    .await;
    let report = result.unwrap_or_else(|e| panic!("resumed copy failed: {e}"));
    let by_name = |n: &str| report.tables.iter().find(|t| t.name == n).expect(n);
    assert_eq!(by_name("done_before").skipped_on, vec!["t".to_string()]);
    assert_eq!(by_name("accounts").skipped_on, vec!["t".to_string()]);
    assert_eq!(by_name("half_done").copied_to, vec!["t".to_string()]);
    assert_eq!(by_name("half_done").rows, 1000);
    let kept: String = dst
        .query_one("SELECT v FROM done_before WHERE id = 1", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(kept, "kept", "a ready table must not be copied again");
    assert_eq!(count(&dst, "half_done").await, 1000);
    let stray = dst
        .query_opt("SELECT 1 FROM half_done WHERE id = 5000", &[])
        .await
        .expect("read");
    assert!(stray.is_none(), "partial copy was not emptied");
    // parents is referenced by children (ready, kept): TRUNCATE refuses,
    // so it was emptied row by row instead.
    assert_eq!(by_name("parents").copied_to, vec!["t".to_string()]);
    assert_eq!(by_name("children").skipped_on, vec!["t".to_string()]);
    dst.batch_execute("UPDATE done_before SET v = 'd1' WHERE id = 1")
        .await
        .expect("undo the marker");
    assert_databases_equal(&src, &dst).await;
    let sync = sync_rows(&dst, "resume").await;
    assert!(sync.iter().all(|s| s.1 == "ready"), "{sync:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_target() {
    let (sm, tm) = pick(17, 16);
    let source = Cluster::start(sm);
    let fast = Cluster::start(tm);
    let slow = Cluster::start(pick(18, 18).1);
    let ddl = "CREATE TABLE data (id int PRIMARY KEY, v text);";
    for c in [&source, &fast, &slow] {
        c.execute_blocking("postgres", ddl);
    }
    source.execute_blocking(
        "postgres",
        "INSERT INTO data SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 40000) g",
    );
    let proxy = FaultProxy::start(([127, 0, 0, 1], slow.port()).into());
    proxy.set_latency(Duration::from_millis(3));
    let src = source.connect("postgres").await;
    let tables = user_tables(&src).await;
    let targets = [
        target("fast", fast.port(), "postgres"),
        target("slow", proxy.port(), "postgres"),
    ];
    let (_repl, snap) = export_snapshot(&source, "postgres").await;

    // First a run stopped by its shutdown future after the first chunk:
    // nothing is marked ready.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut stop = Some(stop_tx);
        while let Some(e) = rx.recv().await {
            if matches!(e, CopyEvent::Progress { .. }) {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
            }
        }
    });
    let stopped = pgrelay_copy::copy_tables(
        &config(&conninfo(source.port(), "postgres")),
        &snap,
        &targets,
        &tables,
        &options("slow", 2, 128),
        tx,
        async {
            let _ = stop_rx.await;
        },
    )
    .await;
    assert!(
        matches!(stopped, Err(pgrelay_copy::CopyError::Interrupted)),
        "{stopped:?}"
    );
    let sync = sync_rows(&fast.connect("postgres").await, "slow").await;
    assert_eq!(sync[0].1, "copying", "{sync:?}");

    let (result, _) = run_copy(
        &source,
        "postgres",
        &snap,
        &targets,
        &tables,
        &options("slow", 2, 128),
    )
    .await;
    result.unwrap_or_else(|e| panic!("copy failed: {e}"));
    for c in [&fast, &slow] {
        assert_databases_equal(&src, &c.connect("postgres").await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restart_is_transient() {
    let (sm, tm) = pick(15, 17);
    let source = Cluster::start(sm);
    let mut target_pg = Cluster::start(tm);
    let ddl = "CREATE TABLE data (id int PRIMARY KEY, v text);";
    source.execute_blocking("postgres", ddl);
    target_pg.execute_blocking("postgres", ddl);
    source.execute_blocking(
        "postgres",
        "INSERT INTO data SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 150000) g",
    );
    // Latency keeps the copy running long enough to restart under it.
    let proxy = FaultProxy::start(([127, 0, 0, 1], target_pg.port()).into());
    proxy.set_latency(Duration::from_millis(30));
    let src = source.connect("postgres").await;
    let tables = user_tables(&src).await;
    let targets = vec![target("t", proxy.port(), "postgres")];
    let (_repl, snap) = export_snapshot(&source, "postgres").await;

    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let source_config = config(&conninfo(source.port(), "postgres"));
    let copy = {
        let (snap, targets, tables) = (snap.clone(), targets.clone(), tables.clone());
        tokio::spawn(async move {
            pgrelay_copy::copy_tables(
                &source_config,
                &snap,
                &targets,
                &tables,
                &options("restart", 2, 64),
                tx,
                std::future::pending(),
            )
            .await
        })
    };
    // Restart once the first block reached the target.
    loop {
        match rx.recv().await.expect("events until the copy fails") {
            CopyEvent::Progress { bytes, .. } if bytes > 0 => break,
            CopyEvent::TableDone { .. } => panic!("copy finished before the restart"),
            _ => {}
        }
    }
    tokio::task::block_in_place(|| target_pg.restart());
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let err = copy
        .await
        .expect("copy task")
        .expect_err("a target restart must fail the copy");
    eprintln!("copy failed as expected: {err}");
    assert!(err.is_transient(), "not transient: {err}");

    proxy.set_latency(Duration::ZERO);
    let (result, _) = run_copy(
        &source,
        "postgres",
        &snap,
        &targets,
        &tables,
        &options("restart", 2, 64),
    )
    .await;
    result.unwrap_or_else(|e| panic!("rerun failed: {e}"));
    assert_databases_equal(&src, &target_pg.connect("postgres").await).await;
}

/// The preferred (source, target) majors, or the selected majors when
/// PGRELAY_PG_VERSIONS leaves them out.
fn pick(source: u32, target: u32) -> (u32, u32) {
    let selected = pgrelay_testkit::majors();
    let choose = |m: u32, fallback: usize| {
        if selected.contains(&m) {
            m
        } else {
            selected[fallback.min(selected.len() - 1)]
        }
    };
    (choose(source, 0), choose(target, selected.len() - 1))
}

/// Row-level security that would hide rows from the copying role fails
/// the copy (fatal) instead of copying a subset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_security_fails_loudly() {
    let (sm, tm) = pick(16, 16);
    let source = Cluster::start(sm);
    let target_pg = Cluster::start(tm);
    let ddl = "CREATE TABLE secret (id int PRIMARY KEY, v text);";
    source.execute_blocking("postgres", ddl);
    target_pg.execute_blocking("postgres", ddl);
    source.execute_blocking(
        "postgres",
        &format!(
            "INSERT INTO secret SELECT g, 's' || g FROM generate_series(1, 100) g;
             ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
             CREATE POLICY only_even ON secret FOR SELECT USING (id % 2 = 0);
             GRANT SELECT ON secret TO {role};",
            role = pgrelay_testkit::REPLICATION_ROLE
        ),
    );
    let src = source.connect("postgres").await;
    let tables = user_tables(&src).await;
    let (_repl, snap) = export_snapshot(&source, "postgres").await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let result = pgrelay_copy::copy_tables(
        &config(&source.conninfo(pgrelay_testkit::REPLICATION_ROLE, "postgres")),
        &snap,
        &[target("t", target_pg.port(), "postgres")],
        &tables,
        &options("rls", 1, 16),
        tx,
        std::future::pending(),
    )
    .await;
    let err = result.expect_err("policies hide rows from this role");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("row-level security"), "{err}");
    let dst = target_pg.connect("postgres").await;
    assert_eq!(count(&dst, "secret").await, 0);
}

/// Workers that cannot get a source session (a role connection limit)
/// leave the work to the others instead of failing the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_means_fewer_workers() {
    let (sm, tm) = pick(17, 18);
    let source = Cluster::start(sm);
    let target_pg = Cluster::start(tm);
    let ddl = "CREATE TABLE data (id int PRIMARY KEY, v text);";
    source.execute_blocking("postgres", ddl);
    target_pg.execute_blocking("postgres", ddl);
    source.execute_blocking(
        "postgres",
        &format!(
            "INSERT INTO data SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
             GRANT SELECT ON data TO {role}; ALTER ROLE {role} CONNECTION LIMIT 2;",
            role = pgrelay_testkit::REPLICATION_ROLE
        ),
    );
    let src = source.connect("postgres").await;
    let tables = user_tables(&src).await;
    let (_repl, snap) = export_snapshot(&source, "postgres").await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let report = pgrelay_copy::copy_tables(
        &config(&source.conninfo(pgrelay_testkit::REPLICATION_ROLE, "postgres")),
        &snap,
        &[target("t", target_pg.port(), "postgres")],
        &tables,
        &options("limit", 4, 16),
        tx,
        std::future::pending(),
    )
    .await
    .unwrap_or_else(|e| panic!("copy with 2 of 4 sessions failed: {e}"));
    assert!(report.tables[0].chunks >= 4, "{report:?}");
    assert_databases_equal(&src, &target_pg.connect("postgres").await).await;
}
