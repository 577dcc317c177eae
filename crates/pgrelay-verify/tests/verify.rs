//! `verify_tables` against real servers: a 14 and a 16 source, each with a
//! 17 target (running in another time zone, so session settings matter).
//!
//! One scenario per source major: equal data in every key shape (bigint,
//! composite, text, uuid, unique NOT NULL, no key, columns in another order
//! on the target) is reported equal and split into several ranges; then one
//! changed, one missing and one extra row (and a keyless extra row, a
//! missing column) are reported in exactly their tables, each with the one
//! range that holds the key; finally writes keep coming on the source while
//! a simulated applier copies them to the target 300 ms later and records
//! `pgrelay.progress` (and, when idle, advances a real logical slot like the
//! streamer's confirmations) — verification with retries converges to equal.

use std::time::{Duration, Instant};

use pgrelay_testkit::Cluster;
use pgrelay_verify::{verify_tables, KeyRange, TableResult, VerifyOptions};

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE ints (id bigint PRIMARY KEY, v text, m mood, ts timestamptz, f float8, n numeric, b bytea);
CREATE TABLE comp (a int, b text, payload jsonb, PRIMARY KEY (a, b));
CREATE TABLE texts (k text PRIMARY KEY, v int);
CREATE TABLE uuids (id uuid PRIMARY KEY, v int);
CREATE TABLE keyless (a int, b text);
CREATE TABLE uniq (code int NOT NULL UNIQUE, v text);
CREATE TABLE \"Odd Name\" (\"Id\" int PRIMARY KEY, \"the value\" text);
CREATE TABLE live (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE parts (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (MINVALUE) TO (1500);
CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (1500) TO (MAXVALUE);
";

const DATA: &str = "
INSERT INTO ints (id, v, m, ts, f, n, b) SELECT g, 'v' || g, (ARRAY['sad','ok','happy']::mood[])[1 + g % 3],
  '2020-01-01 00:00:00+00'::timestamptz + g * interval '1 minute', g / 7.0, g * 1.5, decode(md5(g::text), 'hex')
  FROM generate_series(1, 5000) g;
INSERT INTO comp (a, b, payload) SELECT g % 50, 'k' || g, jsonb_build_object('g', g) FROM generate_series(1, 3000) g;
INSERT INTO texts (k, v) SELECT md5(g::text), g FROM generate_series(1, 3000) g;
INSERT INTO uuids (id, v) SELECT md5(g::text)::uuid, g FROM generate_series(1, 3000) g;
INSERT INTO keyless (a, b) SELECT g % 10, 'x' FROM generate_series(1, 1000) g;
INSERT INTO uniq (code, v) SELECT g * 3, 'u' || g FROM generate_series(1, 1000) g;
INSERT INTO \"Odd Name\" (\"Id\", \"the value\") SELECT g, 'it''s ' || g FROM generate_series(1, 100) g;
INSERT INTO reordered (id, a, b, c) SELECT g, 'a' || g, g * 2, DATE '2000-01-01' + g FROM generate_series(1, 2000) g;
INSERT INTO cols (id, a, extra) SELECT g, g, g FROM generate_series(1, 10) g;
INSERT INTO live (id, v) SELECT g, 0 FROM generate_series(1, 2000) g;
INSERT INTO parts (id, v) SELECT g, 'p' || g FROM generate_series(1, 3000) g;
";

fn tables() -> Vec<(String, String)> {
    [
        "ints",
        "comp",
        "texts",
        "uuids",
        "keyless",
        "uniq",
        "Odd Name",
        "reordered",
        "live",
    ]
    .iter()
    .map(|t| ("public".to_string(), t.to_string()))
    .collect()
}

fn config(c: &Cluster) -> pgrelay_source::Config {
    pgrelay_source::Config::parse(&c.superuser_url("postgres")).expect("test URL parses")
}

fn options(pipeline: Option<&str>, retries: u32) -> VerifyOptions {
    VerifyOptions {
        parallel: 3,
        range_rows: 400,
        retries,
        pipeline: pipeline.map(str::to_string),
        snapshot: None,
        // Every bucket-scanned table is read in heap slices (some empty),
        // so the slices' snapshot sharing and sums are what is checked.
        slice_above_blocks: 0,
    }
}

fn by_name<'a>(results: &'a [TableResult], name: &str) -> &'a TableResult {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no result for {name}: {results:#?}"))
}

/// Whether `range` (bounds as text) holds `key` (text), compared by the
/// source server as `types`.
async fn contains(c: &Cluster, types: &[&str], key: &[&str], range: &KeyRange) -> bool {
    let client = c.connect("postgres").await;
    let mut params: Vec<String> = key.iter().map(|s| s.to_string()).collect();
    let tuple = |start: usize| {
        let v: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::text::{t}", start + i + 1))
            .collect();
        format!("({})", v.join(", "))
    };
    let mut conds = vec!["true".to_string()];
    let k = tuple(0);
    if let Some(lo) = &range.lo {
        conds.push(format!("{k} >= {}", tuple(params.len())));
        params.extend(lo.iter().cloned());
    }
    if let Some(hi) = &range.hi {
        conds.push(format!("{k} < {}", tuple(params.len())));
        params.extend(hi.iter().cloned());
    }
    let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    client
        .query_one(&format!("SELECT {}", conds.join(" AND ")), &p)
        .await
        .expect("containment query")
        .get(0)
}

fn assert_one_range(r: &TableResult) -> &KeyRange {
    assert!(!r.equal, "{}: expected a difference: {r:#?}", r.name);
    assert_eq!(r.mismatched_range_count, 1, "{r:#?}");
    &r.mismatched_ranges[0]
}

async fn scenario(source_major: u32) {
    if !pgrelay_testkit::selected(source_major) || !pgrelay_testkit::selected(17) {
        eprintln!("PostgreSQL {source_major} or 17 not in PGRELAY_PG_VERSIONS; not run");
        return;
    }
    let source = Cluster::builder(source_major)
        .setting("wal_level", "logical")
        .start();
    let target = Cluster::builder(17)
        .setting("timezone", "'Asia/Tokyo'")
        .setting("datestyle", "'SQL, DMY'")
        .start();
    source.execute_blocking(
        "postgres",
        &format!(
            "{SCHEMA}
             CREATE TABLE reordered (id int PRIMARY KEY, a text, b int, c date);
             CREATE TABLE cols (id int PRIMARY KEY, a int, extra int);
             {DATA} ANALYZE;"
        ),
    );
    target.execute_blocking(
        "postgres",
        &format!(
            "{SCHEMA}
             CREATE TABLE reordered (c date, b int, id int PRIMARY KEY, a text);
             CREATE TABLE cols (id int PRIMARY KEY, a int);
             {}",
            DATA.replace(
                "INSERT INTO cols (id, a, extra) SELECT g, g, g",
                "INSERT INTO cols (id, a) SELECT g, g"
            )
        ),
    );
    let (src, tgt) = (config(&source), config(&target));

    // 1. Equal data in every key shape.
    let mut all = tables();
    all.push(("public".into(), "cols".into()));
    let results = verify_tables(&src, &tgt, &all, &options(None, 0), std::future::pending())
        .await
        .expect("verify");
    for r in &results {
        if r.name == "cols" {
            assert!(!r.equal, "{r:#?}");
            let problem = r.problem.as_deref().expect("a missing column is a problem");
            assert!(problem.contains("extra"), "{problem}");
            continue;
        }
        assert!(r.equal, "{r:#?}");
        assert_eq!(r.source_rows, r.target_rows, "{r:#?}");
    }
    assert_eq!(by_name(&results, "ints").source_rows, 5000);
    for (name, min_ranges) in [
        ("ints", 8),
        ("comp", 4),
        ("texts", 4),
        ("uuids", 4),
        ("uniq", 2),
    ] {
        let r = by_name(&results, name);
        assert!(
            r.ranges >= min_ranges,
            "{name} split in {} ranges",
            r.ranges
        );
    }
    assert_eq!(by_name(&results, "keyless").ranges, 1);
    assert_eq!(by_name(&results, "keyless").source_rows, 1000);

    // Shutdown first: nothing is checked.
    let interrupted =
        verify_tables(&src, &tgt, &all, &options(None, 0), std::future::ready(())).await;
    assert!(
        matches!(interrupted, Err(pgrelay_verify::VerifyError::Interrupted)),
        "{interrupted:?}"
    );
    // A table missing on the source is an error, not a verdict.
    let missing = vec![("public".to_string(), "nope".to_string())];
    let err = verify_tables(
        &src,
        &tgt,
        &missing,
        &options(None, 0),
        std::future::pending(),
    )
    .await
    .expect_err("no such table");
    assert!(
        !err.is_transient() && err.to_string().contains("public.nope"),
        "{err}"
    );

    // A pipeline nobody knows fails at once instead of waiting.
    let err = verify_tables(
        &src,
        &tgt,
        &all,
        &options(Some("nope"), 0),
        std::future::pending(),
    )
    .await
    .expect_err("unknown pipeline");
    assert!(
        matches!(err, pgrelay_verify::VerifyError::UnknownPipeline { .. }),
        "{err}"
    );

    // 2. One changed, one missing, one extra row.
    target.execute_blocking(
        "postgres",
        "UPDATE ints SET v = 'changed' WHERE id = 1234;
         DELETE FROM texts WHERE k = md5('777');
         INSERT INTO uuids VALUES (md5('extra')::uuid, -1);
         UPDATE comp SET payload = '{}' WHERE a = 7 AND b = 'k1007';
         INSERT INTO keyless VALUES (99, 'y');
         -- Values swapped between two rows: every column's multiset of
         -- values stays the same, only the row hash mixing notices.
         UPDATE uniq SET v = CASE code WHEN 3 THEN 'u2' ELSE 'u1' END WHERE code IN (3, 6);",
    );
    let results = verify_tables(
        &src,
        &tgt,
        &tables(),
        &options(None, 1),
        std::future::pending(),
    )
    .await
    .expect("verify");
    let differing: Vec<&str> = results
        .iter()
        .filter(|r| !r.equal)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        differing,
        ["ints", "comp", "texts", "uuids", "keyless", "uniq"],
        "{results:#?}"
    );
    let uniq = assert_one_range(by_name(&results, "uniq"));
    assert!(contains(&source, &["int"], &["3"], uniq).await, "{uniq}");
    assert_eq!(uniq.source_rows, uniq.target_rows);

    let ints = assert_one_range(by_name(&results, "ints"));
    assert_eq!(ints.key, ["id"]);
    assert!(ints.lo.is_some() || ints.hi.is_some(), "{ints}");
    assert!(
        contains(&source, &["bigint"], &["1234"], ints).await,
        "{ints}"
    );
    assert!(
        !contains(&source, &["bigint"], &["4999"], ints).await,
        "{ints}"
    );
    assert_eq!(ints.source_rows, ints.target_rows);

    let texts = assert_one_range(by_name(&results, "texts"));
    let k777 = source
        .scalar_blocking("postgres", "SELECT md5('777')")
        .unwrap();
    assert!(
        contains(&source, &["text"], &[&k777], texts).await,
        "{texts}"
    );
    assert_eq!(texts.source_rows, texts.target_rows + 1);
    assert_eq!(by_name(&results, "texts").target_rows, 2999);

    let uuids = assert_one_range(by_name(&results, "uuids"));
    let extra = source
        .scalar_blocking("postgres", "SELECT md5('extra')::uuid::text")
        .unwrap();
    assert!(
        contains(&source, &["uuid"], &[&extra], uuids).await,
        "{uuids}"
    );
    assert_eq!(uuids.source_rows + 1, uuids.target_rows);

    let comp = assert_one_range(by_name(&results, "comp"));
    assert_eq!(comp.key, ["a", "b"]);
    assert!(
        contains(&source, &["int", "text"], &["7", "k1007"], comp).await,
        "{comp}"
    );

    let keyless = assert_one_range(by_name(&results, "keyless"));
    assert!(keyless.key.is_empty() && keyless.lo.is_none() && keyless.hi.is_none());
    assert_eq!((keyless.source_rows, keyless.target_rows), (1000, 1001));
    assert_eq!(
        keyless.to_string(),
        "whole table: 1000 source rows, 1001 target rows"
    );

    // 3. Writes on the source, copied to the target by a simulated applier.
    concurrent_writes(&source, &target).await;
}

/// A writer changes `live` on the source for a few seconds; an applier
/// replays each change on the target 300 ms later, in the same target
/// transaction as the pipeline's `pgrelay.progress` row (end_lsn = a source
/// LSN read after the change committed), and when it has nothing to do it
/// advances the pipeline's slot to the source's current LSN, as the
/// streamer confirms keepalives. Verification runs meanwhile.
async fn concurrent_writes(source: &Cluster, target: &Cluster) {
    let pipeline = pgrelay_testkit::unique_name("sim");
    source.execute_blocking(
        "postgres",
        &format!("SELECT pg_create_logical_replication_slot('{pipeline}', 'pgoutput')"),
    );
    target.execute_blocking(
        "postgres",
        &format!(
            "CREATE SCHEMA pgrelay;
             CREATE TABLE pgrelay.progress (pipeline text PRIMARY KEY, commit_lsn pg_lsn NOT NULL,
               end_lsn pg_lsn NOT NULL, commit_time timestamptz, applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO pgrelay.progress (pipeline, commit_lsn, end_lsn) VALUES ('{pipeline}', '0/0', '0/0');"
        ),
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String, Instant)>(100_000);
    let writing = Duration::from_millis(2500);
    let writer = {
        let client = source.connect("postgres").await;
        async move {
            let started = Instant::now();
            let mut seed: u64 = 42;
            let mut next_id = 2001;
            let mut changes = 0;
            while started.elapsed() < writing {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = 1 + (seed >> 33) % 2000;
                let sql = match (seed >> 20) % 4 {
                    0 => {
                        next_id += 1;
                        format!("INSERT INTO live VALUES ({next_id}, 1)")
                    }
                    1 => format!("DELETE FROM live WHERE id = {id}"),
                    _ => format!("UPDATE live SET v = v + 1 WHERE id = {id}"),
                };
                client.batch_execute(&sql).await.expect("source write");
                let lsn: String = client
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                    .expect("source LSN")
                    .get(0);
                tx.send((sql, lsn, Instant::now()))
                    .await
                    .expect("applier alive");
                changes += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            changes
        }
    };
    let applier = {
        let tgt = target.connect("postgres").await;
        let src = source.connect("postgres").await;
        let pipeline = pipeline.clone();
        async move {
            loop {
                match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                    Ok(Some((sql, lsn, at))) => {
                        tokio::time::sleep_until((at + Duration::from_millis(300)).into()).await;
                        tgt.batch_execute(&format!(
                            "BEGIN; {sql}; UPDATE pgrelay.progress SET commit_lsn = '{lsn}', \
                             end_lsn = '{lsn}', applied_at = now() WHERE pipeline = '{pipeline}'; COMMIT"
                        ))
                        .await
                        .expect("target apply");
                    }
                    Ok(None) => std::future::pending::<()>().await,
                    Err(_) => {
                        src.batch_execute(&format!(
                            "SELECT pg_replication_slot_advance('{pipeline}', pg_current_wal_lsn())"
                        ))
                        .await
                        .expect("advance the slot");
                    }
                }
            }
        }
    };
    let verify = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let live = vec![("public".to_string(), "live".to_string())];
        verify_tables(
            &config(source),
            &config(target),
            &live,
            &options(Some(&pipeline), 8),
            std::future::pending(),
        )
        .await
        .expect("verify while writing")
    };
    let (changes, results) = tokio::select! {
        _ = applier => unreachable!("the applier runs until dropped"),
        r = async { tokio::join!(writer, verify) } => r,
    };
    assert!(changes > 50, "only {changes} changes written");
    let live = &results[0];
    assert!(live.equal, "{live:#?}");
    assert!(live.ranges >= 3, "{live:#?}");
    assert_eq!(live.source_rows, live.target_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_14_to_17() {
    scenario(14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_16_to_17() {
    scenario(16).await;
}
