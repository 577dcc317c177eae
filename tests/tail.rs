//! `pgrelay tail` against real servers of every major 14–18: every
//! pgoutput message kind a user can cause (streamed large transactions with
//! a rolled-back subtransaction, two-phase commit and rollback, logical
//! messages, truncate cascade, a column added mid-stream), every built-in
//! data type printed exactly as the source's `::text` in text and binary
//! mode, unchanged TOAST reported as unchanged, resuming after a server
//! crash, clean exit on SIGTERM, and exit 2 for usage errors.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use pgrelay_testkit::query as sql;
use pgrelay_testkit::{unique_name, Cluster};
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

struct TailRun {
    status: std::process::ExitStatus,
    events: Vec<Json>,
    stderr: String,
}

/// Runs tail to completion (it must end by itself, e.g. via --until).
async fn tail(args: &[&str]) -> TailRun {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(PGRELAY)
            .arg("tail")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tail did not finish within 120 s")
    .expect("run pgrelay");
    let stdout = String::from_utf8(out.stdout).expect("tail printed invalid UTF-8");
    let events = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    TailRun {
        status: out.status,
        events,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tail` of `publication` on `slot` up to `until`, which must succeed.
async fn tail_slot(
    url: &str,
    publication: &str,
    slot: &str,
    until: &str,
    extra: &[&str],
) -> Vec<Json> {
    let mut args = vec![
        "--source",
        url,
        "--publication",
        publication,
        "--slot",
        slot,
        "--until",
        until,
    ];
    args.extend_from_slice(extra);
    let run = tail(&args).await;
    assert!(run.status.success(), "tail {args:?} failed: {}", run.stderr);
    run.events
}

async fn current_lsn(c: &tokio_postgres::Client) -> String {
    sql(c, "SELECT pg_current_wal_lsn()").await[0][0]
        .clone()
        .unwrap()
}

/// Polls `q` until its single value is `want`, for up to 30 s.
async fn wait_for(c: &tokio_postgres::Client, q: &str, want: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sql(c, q).await[0][0].as_deref() != Some(want) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ops<'a>(events: &'a [Json], op: &str, table: &str) -> Vec<&'a Json> {
    events
        .iter()
        .filter(|e| e["op"] == op && e["table"] == table)
        .collect()
}

fn logical_cluster(major: u32) -> Cluster {
    Cluster::builder(major)
        .setting("logical_decoding_work_mem", "'64kB'")
        .start()
}

pgrelay_testkit::per_major!(message_kinds, |major| async move {
    let pg = logical_cluster(major);
    let c = pg.connect("postgres").await;
    let slot = unique_name("tail_slot");
    let publication = unique_name("tail_pub");
    sql(
        &c,
        &format!(
            "CREATE TABLE parent (id int PRIMARY KEY, v text);
             CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent (id), v text);
             CREATE TABLE big (id int PRIMARY KEY, pad text);
             CREATE PUBLICATION {publication} FOR ALL TABLES;"
        ),
    )
    .await;
    // A slot cannot be created in a transaction that wrote.
    sql(
        &c,
        &format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput', false, {})",
            major >= 15
        ),
    )
    .await;
    sql(
        &c,
        "INSERT INTO parent VALUES (1, 'a'), (2, 'b'); INSERT INTO child VALUES (1, 1, 'x');
         UPDATE parent SET v = 'a2' WHERE id = 1;
         UPDATE parent SET id = 3 WHERE id = 2;
         DELETE FROM child WHERE id = 1;",
    )
    .await;
    // Larger than logical_decoding_work_mem: streamed while in progress,
    // with a subtransaction rolled back in the middle.
    sql(
        &c,
        "BEGIN;
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g;
         SAVEPOINT s1;
         INSERT INTO big SELECT g, 'rolled back' FROM generate_series(100001, 101000) g;
         ROLLBACK TO s1;
         INSERT INTO big VALUES (99999, 'after the savepoint');
         COMMIT;",
    )
    .await;
    // One statement batch each: COMMIT/ROLLBACK PREPARED cannot run inside
    // the implicit transaction of a multi-statement query.
    for q in [
        "BEGIN; INSERT INTO parent VALUES (4, 'with message');
         SELECT pg_logical_emit_message(true, 'pfx', 'transactional'); COMMIT;",
        "SELECT pg_logical_emit_message(false, 'pfx', 'not transactional')",
        "BEGIN; INSERT INTO parent VALUES (10, 'prepared, committed'); PREPARE TRANSACTION 'g1'",
        "COMMIT PREPARED 'g1'",
        "BEGIN; INSERT INTO parent VALUES (11, 'prepared, rolled back'); PREPARE TRANSACTION 'g2'",
        "ROLLBACK PREPARED 'g2'",
        // Large and prepared: Stream Prepare on 15+.
        "BEGIN; INSERT INTO big SELECT g, repeat('y', 200) FROM generate_series(200001, 202000) g;
         PREPARE TRANSACTION 'g3'",
        "COMMIT PREPARED 'g3'",
        // Replayed from another node: an Origin message.
        "SELECT pg_replication_origin_create('elsewhere')",
        // Separate statements: the origin must still be set at commit.
        "SELECT pg_replication_origin_session_setup('elsewhere')",
        "INSERT INTO parent VALUES (30, 'from elsewhere')",
        "SELECT pg_replication_origin_session_reset()",
        "TRUNCATE parent CASCADE",
        "ALTER TABLE parent ADD COLUMN extra int DEFAULT 5",
        "INSERT INTO parent VALUES (20, 'with extra', 7)",
    ] {
        sql(&c, q).await;
    }
    let until = current_lsn(&c).await;
    let events = tail_slot(
        &pg.superuser_url("postgres"),
        &publication,
        &slot,
        &until,
        &[],
    )
    .await;
    let ev = &events;

    let inserts: Vec<_> = ops(ev, "insert", "parent");
    let ids: Vec<&str> = inserts
        .iter()
        .map(|e| e["new"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2", "4", "10", "30", "20"], "parent inserts");
    assert_eq!(inserts[0]["schema"], "public");
    assert_eq!(inserts[5]["new"]["extra"], "7", "column added mid-stream");
    let replayed = ev
        .iter()
        .find(|e| e["op"] == "begin" && e["xid"] == inserts[4]["xid"])
        .unwrap();
    assert_eq!(
        replayed["origin"], "elsewhere",
        "origin of a replayed transaction"
    );
    let updates = ops(ev, "update", "parent");
    assert_eq!(updates[0]["new"]["v"], "a2");
    assert!(
        updates[0].get("key").is_none(),
        "no key sent when it did not change"
    );
    assert_eq!(
        updates[1]["key"]["id"], "2",
        "old key of a key-changing update"
    );
    assert_eq!(updates[1]["new"]["id"], "3");
    let deletes = ops(ev, "delete", "child");
    assert_eq!(deletes[0]["key"], serde_json::json!({"id": "1"}));

    let all_big = ops(ev, "insert", "big");
    let (big, big_prepared): (Vec<&Json>, Vec<&Json>) = all_big
        .into_iter()
        .partition(|e| e["new"]["id"].as_str().unwrap().len() < 6);
    assert_eq!(
        big.len(),
        2001,
        "streamed transaction minus the rolled-back savepoint"
    );
    assert_eq!(big_prepared.len(), 2000, "large prepared transaction");
    let prepared_begin = ev
        .iter()
        .find(|e| e["op"] == "begin" && e["xid"] == big_prepared[0]["xid"])
        .unwrap();
    if major >= 15 {
        assert_eq!(prepared_begin["kind"], "prepared");
        assert_eq!(prepared_begin["gid"], "g3");
        assert_eq!(prepared_begin["streamed"], true, "no Stream Prepare");
    }
    assert!(big.iter().all(|e| e["new"]["pad"] != "rolled back"));
    let xid = &big[0]["xid"];
    let begin = ev
        .iter()
        .find(|e| e["op"] == "begin" && &e["xid"] == xid)
        .expect("begin of the big transaction");
    assert_eq!(
        begin["kind"], "streamed",
        "the large transaction was not streamed"
    );

    let messages: Vec<_> = ev.iter().filter(|e| e["op"] == "message").collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    let tx_msg = messages
        .iter()
        .find(|m| m["transactional"] == true)
        .unwrap();
    assert_eq!(tx_msg["content"], "transactional");
    assert_eq!(tx_msg["prefix"], "pfx");
    assert!(messages
        .iter()
        .any(|m| m["transactional"] == false && m["content"] == "not transactional"));

    if major >= 15 {
        let prepared = ev
            .iter()
            .find(|e| e["op"] == "begin" && e["gid"] == "g1")
            .expect("the committed prepared transaction, with its gid");
        assert_eq!(prepared["kind"], "prepared");
    }
    assert!(ev.iter().all(|e| e["new"]["v"] != "prepared, rolled back"));

    let truncate = ev.iter().find(|e| e["op"] == "truncate").expect("truncate");
    assert_eq!(truncate["cascade"], true);
    let mut tables: Vec<&str> = truncate["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    tables.sort_unstable();
    assert_eq!(tables, ["child", "parent"]);

    // Every row event sits between its transaction's begin and commit.
    let mut open: Option<&Json> = None;
    for e in ev {
        match e["op"].as_str().unwrap() {
            "begin" => {
                assert!(open.is_none(), "nested begin");
                open = Some(e);
            }
            "commit" => {
                assert_eq!(open.take().unwrap()["xid"], e["xid"]);
            }
            "message" if e["transactional"] == false => {}
            _ => assert_eq!(open.expect("change outside a transaction")["xid"], e["xid"]),
        }
    }
    // The slot was confirmed past everything printed.
    let confirmed = sql(
        &c,
        &format!("SELECT confirmed_flush_lsn >= '{until}' FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await;
    assert_eq!(
        confirmed[0][0].as_deref(),
        Some("t"),
        "slot not confirmed up to --until"
    );
    sql(&c, &format!("SELECT pg_drop_replication_slot('{slot}')")).await;
});

/// The source's text output form of every column of every row: what the
/// type's output function prints (`format('%s', col)`), as pgoutput sends
/// it. (A `::text` cast differs for a few types: bool gives `true`, inet
/// adds `/32`.)
async fn source_text(
    c: &tokio_postgres::Client,
) -> BTreeMap<String, BTreeMap<String, Option<String>>> {
    let cols: Vec<String> = sql(
        c,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'all_types'::regclass AND attnum > 0
           AND NOT attisdropped ORDER BY attnum",
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    let select = cols
        .iter()
        .map(|c| format!("CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = BTreeMap::new();
    for row in sql(c, &format!("SELECT {select} FROM all_types ORDER BY id")).await {
        let map: BTreeMap<String, Option<String>> = cols.iter().cloned().zip(row).collect();
        out.insert(map["id"].clone().unwrap(), map);
    }
    out
}

async fn check_types(major: u32, binary: bool) {
    let pg = logical_cluster(major);
    let c = pg.connect("postgres").await;
    let slot = unique_name("types_slot");
    let publication = unique_name("types_pub");
    sql(&c, pgrelay_testkit::fixtures::ALL_TYPES_DDL).await;
    // The publication must exist before the changes are decoded: pgoutput
    // looks it up as of each change.
    sql(
        &c,
        &format!("CREATE PUBLICATION {publication} FOR TABLE all_types"),
    )
    .await;
    sql(
        &c,
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
    )
    .await;
    sql(&c, pgrelay_testkit::fixtures::ALL_TYPES_ROWS).await;
    let until = current_lsn(&c).await;
    let url = pg.superuser_url("postgres");
    let extra: &[&str] = if binary { &["--binary"] } else { &[] };
    let events = tail_slot(&url, &publication, &slot, &until, extra).await;
    let expected = source_text(&c).await;

    let inserts = ops(&events, "insert", "all_types");
    assert_eq!(inserts.len(), 3);
    for ins in inserts {
        let new = ins["new"].as_object().unwrap();
        let id = new["id"].as_str().unwrap();
        let mut want = expected[id].clone();
        if id == "1" {
            // The insert carried the value before the UPDATE.
            want.insert("c_int4".into(), Some("-2147483648".into()));
        }
        assert_eq!(new.len(), want.len(), "row {id}: column count");
        for (col, value) in &want {
            let got = match &new[col] {
                Json::Null => None,
                Json::String(s) => Some(s.clone()),
                other => panic!("row {id} {col}: not a string: {other}"),
            };
            assert_eq!(&got, value, "row {id}, column {col} (binary: {binary})");
        }
    }
    // The UPDATE left the TOASTed column alone: reported as unchanged,
    // not as null, and left out of "new".
    let update = &ops(&events, "update", "all_types")[0];
    assert_eq!(update["unchanged_toast"], serde_json::json!(["c_big"]));
    assert!(update["new"].get("c_big").is_none());
    assert_eq!(update["new"]["c_int4"], "7");
    sql(&c, &format!("SELECT pg_drop_replication_slot('{slot}')")).await;
}

pgrelay_testkit::per_major!(every_type_as_text, |major| async move {
    check_types(major, false).await;
});

pgrelay_testkit::per_major!(every_type_binary, |major| async move {
    check_types(major, true).await;
});

// A server crash mid-stream ends tail with a transient error; tail run
// again on the same slot resumes without losing a transaction.
pgrelay_testkit::per_major!(resume_after_crash, |major| async move {
    let mut pg = logical_cluster(major);
    let c = pg.connect("postgres").await;
    let slot = unique_name("crash_slot");
    let publication = unique_name("crash_pub");
    sql(
        &c,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE PUBLICATION {publication} FOR TABLE t;"
        ),
    )
    .await;
    sql(
        &c,
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
    )
    .await;
    for i in 1..=20 {
        sql(&c, &format!("INSERT INTO t VALUES ({i})")).await;
    }
    let url = pg.superuser_url("postgres");
    let mut child = Command::new(PGRELAY)
        .args([
            "tail",
            "--source",
            &url,
            "--publication",
            &publication,
            "--slot",
            &slot,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tail");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("tail printed nothing for 60 s")
            .unwrap()
            .expect("tail ended early");
        let e: Json = serde_json::from_str(&line).unwrap();
        if e["op"] == "insert" {
            seen.push(e["new"]["id"].as_str().unwrap().parse::<i32>().unwrap());
        }
    }
    drop(c);
    pg.crash();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("tail did not exit after the server crashed")
        .unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("transient"),
        "error not marked transient: {stderr}"
    );

    pg.start_again();
    let c = pg.connect("postgres").await;
    for i in 21..=30 {
        sql(&c, &format!("INSERT INTO t VALUES ({i})")).await;
    }
    let until = current_lsn(&c).await;
    let events = tail_slot(&url, &publication, &slot, &until, &[]).await;
    for e in ops(&events, "insert", "t") {
        seen.push(e["new"]["id"].as_str().unwrap().parse().unwrap());
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (1..=30).collect::<Vec<_>>(), "a transaction was lost");
    sql(&c, &format!("SELECT pg_drop_replication_slot('{slot}')")).await;
});

#[tokio::test]
async fn sigterm_exits_cleanly_and_removes_what_it_created() {
    let major = *pgrelay_testkit::majors().last().unwrap();
    let pg = Cluster::start(major);
    let c = pg.connect("postgres").await;
    sql(&c, "CREATE TABLE watched (id int PRIMARY KEY)").await;
    let mut child = Command::new(PGRELAY)
        .args([
            "tail",
            "--source",
            &pg.superuser_url("postgres"),
            "--table",
            "public.watched",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tail");
    // Streaming once the temporary slot is active.
    wait_for(
        &c,
        "SELECT count(*) FROM pg_replication_slots WHERE active AND temporary",
        "1",
        "tail never started streaming",
    )
    .await;
    sql(&c, "INSERT INTO watched VALUES (1)").await;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("no output")
        .unwrap()
        .unwrap();
    assert!(first.contains("\"begin\""), "{first}");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("tail did not exit within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // The temporary slot goes when its walsender exits, a moment later.
    wait_for(
        &c,
        "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
        "0",
        "publication or slot left behind",
    )
    .await;
}

#[tokio::test]
async fn usage_errors_exit_2_with_one_line() {
    let port = pgrelay_testkit::free_port();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--source", "postgres://u@127.0.0.1:1/db", "--table", ""],
            "--table",
        ),
        (
            &["--source", "postgres://u@[bad", "--publication", "p"],
            "--source",
        ),
        (&["--source", "postgres://127.0.0.1/db"], "--publication"),
        (
            &[
                "--source",
                &format!("postgres://u@127.0.0.1:{port}/db"),
                "--publication",
                "p",
            ],
            "cannot connect",
        ),
    ];
    for (args, needle) in cases {
        let run = tail(args).await;
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert!(run.events.is_empty());
        let lines = run.stderr.trim().lines().count();
        assert!(lines <= 3, "{args:?}: not a short error:\n{}", run.stderr);
    }
}
