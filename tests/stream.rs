//! `pgrelay stream` end to end against real servers: initial copy then
//! streaming to several targets of other majors, exactly once across
//! kill -9 of pgrelay, restarts of targets and of the source, network cuts
//! through the test kit's proxy, a target down while the others keep up
//! (its backlog spilled), `/health` and `/metrics`, `status` and `cleanup`.
//! The invariant is always the same: the test kit's comparison finds every
//! target equal to the source.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pgrelay_testkit::fixtures::{ALL_TYPES_DDL, ALL_TYPES_ROWS};
use pgrelay_testkit::{
    assert_databases_equal, compare_databases, simple_rows, unique_name, Cluster, FaultProxy,
    Workload,
};
use pgrelay_testkit::{query as sql, query_scalar as scalar};
use tokio::process::{Child, Command};

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

fn logical(major: u32) -> Cluster {
    Cluster::builder(major)
        .setting("wal_level", "logical")
        .setting("max_wal_senders", "20")
        .setting("max_replication_slots", "20")
        .setting("logical_decoding_work_mem", "64kB")
        .start()
}

/// A running `pgrelay stream` with its config file and log.
struct Streamer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    runs: u32,
}

impl Streamer {
    fn new(yaml: &str) -> Streamer {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pgrelay.yml");
        std::fs::write(&config, yaml).unwrap();
        Streamer {
            child: None,
            dir,
            config,
            port: pgrelay_testkit::free_port(),
            runs: 0,
        }
    }

    fn start(&mut self) {
        self.runs += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("run{}.log", self.runs))).unwrap();
        let child = Command::new(PGRELAY)
            .arg("stream")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .env("PGRELAY_LOG", "info,pgrelay_apply=info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start pgrelay stream");
        self.child = Some(child);
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.runs {
            out.push_str(&format!("--- run {i}\n"));
            out.push_str(
                &std::fs::read_to_string(self.dir.path().join(format!("run{i}.log")))
                    .unwrap_or_default(),
            );
        }
        out
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = std::process::Command::new("true").status();
            std::thread::sleep(Duration::from_millis(100));
            let _ = c.try_wait();
        }
    }

    async fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().expect("pid") as i32;
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        tokio::time::timeout(Duration::from_secs(20), c.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "pgrelay did not exit within 20 s of SIGTERM:\n{}",
                    self.logs()
                )
            })
            .unwrap()
    }

    async fn http(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        Some((code, body))
    }

    async fn health(&self) -> Option<(u16, serde_json::Value)> {
        let (code, body) = self.http("/health").await?;
        Some((code, serde_json::from_str(&body).ok()?))
    }

    /// Waits until /health says every target streams with lag 0.
    async fn wait_caught_up(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some((200, h)) = self.health().await {
                let all = h["targets"]
                    .as_array()
                    .is_some_and(|ts| ts.iter().all(|t| t["lag_bytes"] == 0));
                if all {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "targets did not catch up:\n{:?}\n{}",
                self.health().await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("pgrelay logs:\n{}", self.logs());
        }
    }
}

/// Waits until `target` equals `source` (the comparison is the oracle).
async fn wait_equal(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    within: Duration,
    s: &Streamer,
) {
    let deadline = Instant::now() + within;
    loop {
        let cmp = compare_databases(source, target).await.unwrap();
        if cmp.is_equal() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "target never became equal: {cmp}\nhealth: {:?}\n{}",
                s.health().await,
                s.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn yaml(source: &str, slot: &str, targets: &[(&str, String)], extra: &str) -> String {
    let mut y =
        format!("source: {{ url: \"{source}\", slot: {slot}, publication: {slot} }}\ntargets:\n");
    for (n, u) in targets {
        y.push_str(&format!("  - {{ name: {n}, url: \"{u}\" }}\n"));
    }
    y.push_str(extra);
    y
}

const SCHEMA: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(12,2), note text);
CREATE TABLE events (at timestamptz, kind text, payload jsonb);
ALTER TABLE events REPLICA IDENTITY FULL;
CREATE TABLE docs (id int PRIMARY KEY, body text, rev int);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_then_streams_to_two_targets_of_other_majors() {
    let source = logical(15);
    let t1 = Cluster::start(16);
    let t2 = Cluster::start(17);
    let db = unique_name("s");
    for c in [&source, &t1, &t2] {
        c.create_database(&db);
        c.connect(&db).await.batch_execute(SCHEMA).await.unwrap();
    }
    let src = source.connect(&db).await;
    src.batch_execute(
        "INSERT INTO accounts SELECT g, 'o' || g, g * 1.5, NULL FROM generate_series(1, 5000) g;
         INSERT INTO events SELECT now(), 'k', '{\"a\":1}' FROM generate_series(1, 300);
         INSERT INTO docs VALUES (1, repeat('x', 100000), 1);",
    )
    .await
    .unwrap();
    let slot = unique_name("slot");
    let mut s = Streamer::new(&yaml(
        &source.superuser_url(&db),
        &slot,
        &[
            ("east", t1.superuser_url(&db)),
            ("west", t2.superuser_url(&db)),
        ],
        "apply: { max_batch_delay: 50ms }\n",
    ));
    s.start();
    let (c1, c2) = (t1.connect(&db).await, t2.connect(&db).await);
    wait_equal(&src, &c1, Duration::from_secs(60), &s).await;
    // Streaming: row changes, TOAST left unchanged, FULL identity duplicates,
    // a truncate and a large transaction.
    src.batch_execute(
        "UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0;
         DELETE FROM accounts WHERE id % 11 = 0;
         UPDATE docs SET rev = 2;
         INSERT INTO events SELECT now(), 'dup', NULL FROM generate_series(1, 3);
         DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE kind = 'dup' LIMIT 1);
         UPDATE accounts SET id = id + 100000 WHERE id = 1;",
    )
    .await
    .unwrap();
    src.batch_execute("BEGIN; INSERT INTO accounts SELECT g, 'big', 0, repeat('n', 200) FROM generate_series(200000, 260000) g; COMMIT;")
        .await
        .unwrap();
    src.batch_execute("TRUNCATE events; INSERT INTO events VALUES (now(), 'after', NULL);")
        .await
        .unwrap();
    wait_equal(&src, &c1, Duration::from_secs(120), &s).await;
    wait_equal(&src, &c2, Duration::from_secs(60), &s).await;
    s.wait_caught_up(Duration::from_secs(60)).await;
    assert_eq!(scalar(&c1, "SELECT rev FROM docs").await, "2");
    let status = s.sigterm().await;
    assert!(status.success(), "exit {status:?}\n{}", s.logs());
    assert_databases_equal(&src, &c2).await;
}

/// pgbench's tables as `pgbench -i` creates them (targets of majors
/// without pgbench get them from here).
const PGBENCH_DDL: &str = "
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
";

/// Source 15 → targets 14, 16 and 17 at once, under pgbench plus every
/// built-in type, TOAST updates, truncates and a streamed large
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fans_out_to_three_majors_under_pgbench_and_every_type() {
    let source = logical(15);
    let targets = [Cluster::start(14), Cluster::start(16), Cluster::start(17)];
    let db = unique_name("fan");
    source.create_database(&db);
    source.pgbench_init(&db, 2);
    let src = source.connect(&db).await;
    sql(&src, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL").await;
    sql(&src, ALL_TYPES_DDL).await;
    sql(&src, ALL_TYPES_ROWS).await;
    for t in &targets {
        t.create_database(&db);
        let c = t.connect(&db).await;
        c.batch_execute(PGBENCH_DDL).await.unwrap();
        c.batch_execute(ALL_TYPES_DDL).await.unwrap();
    }
    let slot = unique_name("fan");
    let names = ["t14", "t16", "t17"];
    let list: Vec<(&str, String)> = names
        .iter()
        .zip(&targets)
        .map(|(n, t)| (*n, t.superuser_url(&db)))
        .collect();
    let mut s = Streamer::new(&yaml(&source.superuser_url(&db), &slot, &list, ""));
    s.start();
    // pgbench runs in the background while pgrelay streams.
    let bench = Command::from(source.pgbench_command(&db, 4, 500))
        .stdout(Stdio::null())
        .output();
    let bench = tokio::spawn(bench);
    // Concurrently: TOAST-preserving updates, a truncate, a large
    // transaction the source streams in progress.
    for i in 0..5 {
        sql(
            &src,
            &format!("UPDATE all_types SET c_int2 = {i} WHERE id = 1"),
        )
        .await;
    }
    sql(
        &src,
        "UPDATE all_types SET c_big = c_big || 'x' WHERE id = 1",
    )
    .await;
    sql(
        &src,
        "BEGIN; INSERT INTO all_types (id, c_text) SELECT g, repeat('y', 50) FROM generate_series(100, 60100) g; \
         UPDATE all_types SET c_int4 = 1 WHERE id BETWEEN 100 AND 200; COMMIT;",
    )
    .await;
    sql(&src, "DELETE FROM all_types WHERE id > 50000").await;
    let out = bench.await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sql(&src, "TRUNCATE pgbench_history").await;
    sql(
        &src,
        "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1), (1, 1, 1, 1)",
    )
    .await;
    for t in &targets {
        let c = t.connect(&db).await;
        wait_equal(&src, &c, Duration::from_secs(180), &s).await;
    }
    s.wait_caught_up(Duration::from_secs(60)).await;
    assert!(s.sigterm().await.success(), "{}", s.logs());
}

/// Rows of the built-in generator plus a table without any unique key,
/// where a doubled transaction would show as an extra row.
async fn keyless_and_workload(src: &tokio_postgres::Client, wl: &Workload) {
    wl.create_tables(src).await.unwrap();
    sql(
        src,
        "CREATE TABLE ledger (who text, amount int, at timestamptz DEFAULT now());
              ALTER TABLE ledger REPLICA IDENTITY FULL",
    )
    .await;
}

async fn ledger_and_workload(src: &mut tokio_postgres::Client, wl: &mut Workload, rounds: u64) {
    for i in 0..rounds {
        wl.run(src, 20).await.unwrap();
        sql(
            src,
            &format!("INSERT INTO ledger (who, amount) VALUES ('r{i}', {i}), ('r{i}', {i})"),
        )
        .await;
    }
}

/// kill -9 of pgrelay during the initial copy, and again twice during
/// apply: every restart resumes, and nothing is lost or doubled (the
/// keyless ledger would show a doubled transaction as extra rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_copy_and_apply_loses_and_doubles_nothing() {
    let source = logical(16);
    let target = Cluster::start(17);
    let db = unique_name("k9");
    source.create_database(&db);
    target.create_database(&db);
    let mut src = source.connect(&db).await;
    let tgt = target.connect(&db).await;
    let mut wl = Workload::new(9, 3);
    keyless_and_workload(&src, &wl).await;
    keyless_and_workload(&tgt, &wl).await;
    // Enough rows that the copy is still running when we kill it.
    sql(&src, "CREATE TABLE bulk (id bigint PRIMARY KEY, pad text)").await;
    sql(&tgt, "CREATE TABLE bulk (id bigint PRIMARY KEY, pad text)").await;
    sql(
        &src,
        "INSERT INTO bulk SELECT g, repeat('p', 200) FROM generate_series(1, 1500000) g",
    )
    .await;
    ledger_and_workload(&mut src, &mut wl, 3).await;
    let slot = unique_name("k9");
    let mut s = Streamer::new(&yaml(
        &source.superuser_url(&db),
        &slot,
        &[("only", target.superuser_url(&db))],
        "apply: { copy_workers: 2 }\n",
    ));
    s.start();
    // Kill as soon as some table is being copied.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copying = simple_rows(
            &tgt,
            "SELECT count(*) FROM pgrelay.table_sync WHERE state = 'copying'",
        )
        .await
        .ok()
        .and_then(|r| r[0][0].clone());
        if copying.as_deref().is_some_and(|c| c != "0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never started:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.kill9();
    // Writes while pgrelay is down, then restart: the copy resumes.
    ledger_and_workload(&mut src, &mut wl, 2).await;
    s.start();
    wait_equal(&src, &tgt, Duration::from_secs(180), &s).await;
    // Now kill twice mid-stream, under load.
    for _ in 0..2 {
        let load = async {
            ledger_and_workload(&mut src, &mut wl, 10).await;
        };
        let kill = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            s.kill9();
        };
        tokio::join!(load, kill);
        s.start();
    }
    wait_equal(&src, &tgt, Duration::from_secs(120), &s).await;
    let ledger = scalar(&tgt, "SELECT count(*) FROM ledger").await;
    assert_eq!(ledger, scalar(&src, "SELECT count(*) FROM ledger").await);
    assert!(s.sigterm().await.success(), "{}", s.logs());
}

/// A target restart, a source restart and a cut of every connection
/// through a proxy, each mid-stream: the targets end equal with no
/// operator action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_target_restart_source_restart_and_network_cuts() {
    let mut source = logical(15);
    let mut target = Cluster::start(16);
    let db = unique_name("flt");
    source.create_database(&db);
    target.create_database(&db);
    let mut src = source.connect(&db).await;
    let mut wl = Workload::new(3, 2);
    keyless_and_workload(&src, &wl).await;
    keyless_and_workload(&target.connect(&db).await, &wl).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], source.port()).into());
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port());
    let slot = unique_name("flt");
    let mut s = Streamer::new(&yaml(
        &via_proxy,
        &slot,
        &[("t", target.superuser_url(&db))],
        "apply: { max_retry_delay: 1s }\n",
    ));
    s.start();
    ledger_and_workload(&mut src, &mut wl, 3).await;
    wait_equal(
        &src,
        &target.connect(&db).await,
        Duration::from_secs(60),
        &s,
    )
    .await;

    // Target restart mid-stream.
    ledger_and_workload(&mut src, &mut wl, 3).await;
    target.restart();
    ledger_and_workload(&mut src, &mut wl, 3).await;
    wait_equal(
        &src,
        &target.connect(&db).await,
        Duration::from_secs(60),
        &s,
    )
    .await;

    // Network cut between pgrelay and the source.
    ledger_and_workload(&mut src, &mut wl, 3).await;
    proxy.cut_all();
    ledger_and_workload(&mut src, &mut wl, 3).await;
    wait_equal(
        &src,
        &target.connect(&db).await,
        Duration::from_secs(60),
        &s,
    )
    .await;

    // Source restart.
    source.restart();
    let mut src = source.connect(&db).await;
    ledger_and_workload(&mut src, &mut wl, 3).await;
    wait_equal(
        &src,
        &target.connect(&db).await,
        Duration::from_secs(90),
        &s,
    )
    .await;
    s.wait_caught_up(Duration::from_secs(60)).await;
    assert!(s.sigterm().await.success(), "{}", s.logs());
}

/// Transactions the source streams while still in progress are applied as
/// they arrive (a second connection per target, a savepoint per
/// subtransaction). This drives that path through its failure cases: a
/// subtransaction rolled back and one released inside a streamed
/// transaction; a streamed transaction rolled back entirely; small
/// transactions committing while one streams; a target restarted while
/// it holds half a streamed transaction (the pipeline restarts from the
/// slot and the transaction is sent again); and the source connection cut
/// mid-stream. Both targets end equal, and the primary key proves nothing
/// was applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_applied_while_they_stream_survive_aborts_restarts_and_cuts() {
    let source = logical(15);
    let mut t1 = Cluster::start(16);
    let t2 = Cluster::start(17);
    let db = unique_name("eag");
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v text, n int)";
    for c in [&source, &t1, &t2] {
        c.create_database(&db);
        sql(&c.connect(&db).await, ddl).await;
    }
    let proxy = FaultProxy::start(([127, 0, 0, 1], source.port()).into());
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port());
    let slot = unique_name("eag");
    let mut s = Streamer::new(&yaml(
        &via_proxy,
        &slot,
        &[("t1", t1.superuser_url(&db)), ("t2", t2.superuser_url(&db))],
        "apply: { max_retry_delay: 1s }\n",
    ));
    s.start();
    let src = source.connect(&db).await;
    let small = source.connect(&db).await;
    sql(&small, "INSERT INTO big VALUES (0, 'seed', 0)").await;
    for t in [&t1, &t2] {
        wait_equal(&src, &t.connect(&db).await, Duration::from_secs(60), &s).await;
    }
    let rows = |from: i32, to: i32, v: &str| {
        format!("INSERT INTO big SELECT g, '{v}' || g, g FROM generate_series({from}, {to}) g")
    };

    // A: subtransactions, interleaved small commits, and t1 restarted
    // while it holds part of A.
    sql(&src, "BEGIN").await;
    sql(&src, &rows(1, 20_000, "a")).await;
    sql(&src, "SAVEPOINT s1").await;
    sql(&src, &rows(100_001, 120_000, "gone")).await;
    sql(&src, "ROLLBACK TO SAVEPOINT s1").await;
    sql(&src, "SAVEPOINT s2").await;
    sql(&src, "UPDATE big SET v = 'kept' WHERE id <= 100").await;
    sql(&src, "RELEASE SAVEPOINT s2").await;
    sql(&small, "INSERT INTO big VALUES (500000, 'small', 1)").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    t1.restart();
    sql(&small, "INSERT INTO big VALUES (500001, 'small', 2)").await;
    sql(&src, &rows(20_001, 40_000, "a")).await;
    sql(&src, "COMMIT").await;

    // B: streamed, then rolled back entirely.
    sql(&src, "BEGIN").await;
    sql(&src, &rows(200_001, 230_000, "b")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sql(&src, "ROLLBACK").await;

    // C: the source connection is cut while C streams.
    sql(&src, "BEGIN").await;
    sql(&src, &rows(300_001, 320_000, "c")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut_all();
    sql(&src, &rows(320_001, 340_000, "c")).await;
    sql(&src, "DELETE FROM big WHERE id BETWEEN 1 AND 10").await;
    sql(&src, "COMMIT").await;

    // D: subtransactions again, with nothing failing (after a restart the
    // first transactions are buffered whole, so A's savepoints may have
    // been replayed that way).
    for t in [&t1, &t2] {
        wait_equal(&src, &t.connect(&db).await, Duration::from_secs(120), &s).await;
    }
    sql(&src, "BEGIN").await;
    sql(&src, &rows(400_001, 420_000, "d")).await;
    sql(&src, "SAVEPOINT s1").await;
    sql(&src, &rows(420_001, 440_000, "gone")).await;
    sql(&src, "SAVEPOINT s2").await;
    sql(&src, &rows(440_001, 460_000, "gone")).await;
    sql(&src, "ROLLBACK TO SAVEPOINT s1").await;
    sql(&src, "SAVEPOINT s3").await;
    sql(
        &src,
        "UPDATE big SET n = -n WHERE id BETWEEN 400001 AND 400100",
    )
    .await;
    sql(&src, "RELEASE SAVEPOINT s3").await;
    sql(&src, &rows(460_001, 470_000, "d")).await;
    sql(&src, "COMMIT").await;
    for t in [&t1, &t2] {
        wait_equal(&src, &t.connect(&db).await, Duration::from_secs(120), &s).await;
    }
    let logs = s.logs();
    assert!(
        logs.contains("restarting the pipeline from the slot"),
        "t1's restart mid-stream should restart the pipeline:\n{logs}"
    );
    s.wait_caught_up(Duration::from_secs(60)).await;
    assert!(s.sigterm().await.success(), "{}", s.logs());
}

/// One target down for a minute: the other keeps streaming (its lag keeps
/// returning to zero), the down one's backlog spills to disk, `/health`
/// answers 503 while it is down, and it catches up from the spill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_target_spills_while_the_other_keeps_up() {
    let source = logical(15);
    let up = Cluster::start(15);
    let mut down = Cluster::start(17);
    let db = unique_name("dn");
    for c in [&source, &up, &down] {
        c.create_database(&db);
    }
    let mut src = source.connect(&db).await;
    let mut wl = Workload::new(5, 2);
    for c in [&src, &up.connect(&db).await, &down.connect(&db).await] {
        keyless_and_workload(c, &wl).await;
    }
    let slot = unique_name("dn");
    let mut s = Streamer::new(&yaml(
        &source.superuser_url(&db),
        &slot,
        &[
            ("up", up.superuser_url(&db)),
            ("down", down.superuser_url(&db)),
        ],
        "apply: { queue_memory: 256kB, max_retry_delay: 1s }\n",
    ));
    s.start();
    let up_c = up.connect(&db).await;
    wait_equal(&src, &up_c, Duration::from_secs(60), &s).await;
    s.wait_caught_up(Duration::from_secs(30)).await;

    down.stop();
    let started = Instant::now();
    let mut saw_503 = false;
    let mut max_spilled = 0u64;
    let mut up_caught_up = 0;
    let mut max_up_lag_s = 0f64;
    while started.elapsed() < Duration::from_secs(60) {
        ledger_and_workload(&mut src, &mut wl, 2).await;
        if let Some((code, h)) = s.health().await {
            saw_503 |= code == 503;
            for t in h["targets"].as_array().unwrap() {
                if t["name"] == "down" {
                    max_spilled = max_spilled.max(t["spilled_bytes"].as_u64().unwrap_or(0));
                } else {
                    if t["lag_bytes"] == 0 {
                        up_caught_up += 1;
                    }
                    max_up_lag_s = max_up_lag_s.max(t["lag_seconds"].as_f64().unwrap_or(0.0));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("while down: max lag of the other target {max_up_lag_s:.3}s, spilled up to {max_spilled} bytes");
    assert!(saw_503, "/health never said 503 while a target was down");
    assert!(
        max_spilled > 0,
        "the down target's backlog never spilled:\n{}",
        s.logs()
    );
    assert!(
        up_caught_up > 0,
        "the healthy target never caught up while the other was down"
    );
    wait_equal(&src, &up_c, Duration::from_secs(30), &s).await;
    down.start_again();
    wait_equal(&src, &down.connect(&db).await, Duration::from_secs(120), &s).await;
    s.wait_caught_up(Duration::from_secs(60)).await;
    assert_eq!(s.health().await.map(|h| h.0), Some(200));
    assert!(s.sigterm().await.success(), "{}", s.logs());
}

/// A target that refuses a change (a unique index only it has) stops with
/// an error naming the table, the source LSN and the fix, and /health says
/// 503, while the other target keeps streaming; the slot keeps what the
/// failed target needs, so after the fix and a restart it catches up with
/// nothing lost and nothing doubled (the keyless ledger would show it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_stops_one_target_while_the_other_continues() {
    let source = logical(16);
    let good = Cluster::start(15);
    let bad = Cluster::start(17);
    let db = unique_name("ft");
    for c in [&source, &good, &bad] {
        c.create_database(&db);
    }
    let mut src = source.connect(&db).await;
    let good_c = good.connect(&db).await;
    let bad_c = bad.connect(&db).await;
    let mut wl = Workload::new(11, 1);
    for c in [&src, &good_c, &bad_c] {
        keyless_and_workload(c, &wl).await;
        sql(c, "CREATE TABLE items (id int PRIMARY KEY, code text)").await;
    }
    sql(&bad_c, "CREATE UNIQUE INDEX items_code ON items (code)").await;
    let slot = unique_name("ft");
    let mut s = Streamer::new(&yaml(
        &source.superuser_url(&db),
        &slot,
        &[
            ("good", good.superuser_url(&db)),
            ("bad", bad.superuser_url(&db)),
        ],
        "apply: { max_retry_delay: 1s }\n",
    ));
    s.start();
    ledger_and_workload(&mut src, &mut wl, 2).await;
    sql(&src, "INSERT INTO items VALUES (1, 'a'), (2, 'b')").await;
    wait_equal(&src, &bad_c, Duration::from_secs(60), &s).await;

    // Only the bad target refuses this transaction.
    sql(&src, "INSERT INTO items VALUES (3, 'a')").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let error = loop {
        if let Some((code, h)) = s.health().await {
            let t = &h["targets"][1];
            if t["state"] == "failed" {
                assert_eq!(code, 503, "{h:#}");
                assert_eq!(h["targets"][0]["state"], "streaming", "{h:#}");
                break t["last_error"].as_str().unwrap_or_default().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the bad target never failed:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        error.contains("items") && error.contains("23505") && error.contains("fix:"),
        "{error}"
    );
    assert!(
        error.contains("commit LSN") && error.contains('/'),
        "{error}"
    );
    // The good target keeps streaming meanwhile.
    ledger_and_workload(&mut src, &mut wl, 3).await;
    sql(&src, "INSERT INTO items VALUES (4, 'd')").await;
    wait_equal(&src, &good_c, Duration::from_secs(60), &s).await;
    assert_eq!(
        scalar(&bad_c, "SELECT count(*) FROM items").await,
        "2",
        "the failed transaction must not be partly applied"
    );
    // The slot did not move past what the failed target applied: its
    // progress row, or (when its first streamed batch was the failing one)
    // the copy's snapshot point.
    let bad_lsn = scalar(
        &bad_c,
        &format!(
            "SELECT coalesce( \
               (SELECT end_lsn FROM pgrelay.progress WHERE pipeline = '{slot}'), \
               (SELECT max(sync_lsn) FROM pgrelay.table_sync WHERE pipeline = '{slot}'))::text"
        ),
    )
    .await;
    assert!(
        !bad_lsn.is_empty(),
        "the failed target has no position at all"
    );
    let behind = scalar(
        &src,
        &format!(
            "SELECT confirmed_flush_lsn <= '{bad_lsn}'::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = '{slot}'"
        ),
    )
    .await;
    assert_eq!(behind, "t", "the slot moved past the failed target");

    // The fix, then a restart: the bad target resumes from its progress.
    sql(&bad_c, "DROP INDEX items_code").await;
    assert!(s.sigterm().await.success(), "{}", s.logs());
    s.start();
    wait_equal(&src, &bad_c, Duration::from_secs(90), &s).await;
    wait_equal(&src, &good_c, Duration::from_secs(30), &s).await;
    s.wait_caught_up(Duration::from_secs(30)).await;
    assert!(s.sigterm().await.success(), "{}", s.logs());
}

/// `/metrics` is Prometheus text with the documented names, and lag
/// converges to 0 once the load stops; `status` and `cleanup` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_cleanup() {
    let source = logical(17);
    let target = Cluster::start(18);
    let db = unique_name("met");
    source.create_database(&db);
    target.create_database(&db);
    let mut src = source.connect(&db).await;
    let tgt = target.connect(&db).await;
    let mut wl = Workload::new(1, 2);
    keyless_and_workload(&src, &wl).await;
    keyless_and_workload(&tgt, &wl).await;
    let slot = unique_name("met");
    let mut s = Streamer::new(&yaml(
        &source.superuser_url(&db),
        &slot,
        &[("east", target.superuser_url(&db))],
        "",
    ));
    s.start();
    ledger_and_workload(&mut src, &mut wl, 5).await;
    wait_equal(&src, &tgt, Duration::from_secs(60), &s).await;
    // Some of that may have come with the initial copy: stream more.
    s.wait_caught_up(Duration::from_secs(30)).await;
    ledger_and_workload(&mut src, &mut wl, 5).await;
    wait_equal(&src, &tgt, Duration::from_secs(60), &s).await;
    let wanted = [
        "pgrelay_lag_bytes{target=\"east\"}",
        "pgrelay_lag_seconds{target=\"east\"}",
        "pgrelay_applied_transactions_total{target=\"east\"}",
        "pgrelay_received_bytes_total",
        "pgrelay_slot_retained_bytes",
        "pgrelay_spilled_bytes{target=\"east\"}",
    ];
    // The exporter is refreshed once a second: poll until lag reads 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, names) = loop {
        let (code, text) = s.http("/metrics").await.expect("/metrics");
        assert_eq!(code, 200);
        let names = parse_prometheus(&text);
        let done = wanted.iter().all(|w| names.contains_key(*w))
            && names[wanted[0]] == 0.0
            && names[wanted[1]] == 0.0;
        if done {
            break (text, names);
        }
        assert!(
            Instant::now() < deadline,
            "metrics never converged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(names["pgrelay_lag_bytes{target=\"east\"}"], 0.0);
    assert_eq!(names["pgrelay_lag_seconds{target=\"east\"}"], 0.0);
    assert!(names.keys().any(|k| k.starts_with("pgrelay_applied_changes_total{") && k.contains("op=\"insert\"")), "{text}");
    assert!(!text.contains("password") && !text.contains(&source.superuser_url(&db)));

    let status = std::process::Command::new(PGRELAY)
        .args(["status", "--json", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["slot"]["active"], true);
    assert_eq!(st["targets"][0]["state"], "streaming");
    assert_eq!(st["targets"][0]["lag_bytes"], 0);

    // cleanup refuses while streaming, then removes everything.
    let out = std::process::Command::new(PGRELAY)
        .args(["cleanup", "--yes", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop `pgrelay stream` first"));
    assert!(s.sigterm().await.success(), "{}", s.logs());
    let out = std::process::Command::new(PGRELAY)
        .args(["cleanup", "--yes", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        scalar(
            &src,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")
        )
        .await,
        "0"
    );
    assert_eq!(
        scalar(
            &src,
            &format!("SELECT count(*) FROM pg_publication WHERE pubname = '{slot}'")
        )
        .await,
        "0"
    );
    assert_eq!(
        scalar(
            &tgt,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrelay'"
        )
        .await,
        "0"
    );
}

/// Parses Prometheus text exposition, failing on any malformed line.
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut names = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix('#') {
            assert!(
                c.starts_with(" HELP ") || c.starts_with(" TYPE "),
                "bad comment {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let labels = &series[name.len()..];
        assert!(
            labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
            "bad labels in {line:?}"
        );
        names.insert(series.to_owned(), value);
    }
    names
}

/// Preflight reports every problem at once, each with its fix, exit 1,
/// before creating anything; a bad config key exits 2 naming the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_reports_every_problem_and_bad_config_exits_2() {
    let source = logical(15);
    let target = Cluster::start(16);
    let db = unique_name("pf");
    source.create_database(&db);
    target.create_database(&db);
    let src = source.connect(&db).await;
    let tgt = target.connect(&db).await;
    sql(
        &src,
        "CREATE TABLE present (id int PRIMARY KEY, a text, b int);
               CREATE TABLE absent (id int PRIMARY KEY);
               CREATE TABLE nokey (v text)",
    )
    .await;
    sql(
        &tgt,
        "CREATE TABLE present (id int PRIMARY KEY, b text); CREATE TABLE nokey (v text)",
    )
    .await;
    let slot = unique_name("pf");
    let s = Streamer::new(&yaml(
        &source.superuser_url(&db),
        &slot,
        &[("t", target.superuser_url(&db))],
        "",
    ));
    let out = std::process::Command::new(PGRELAY)
        .args(["stream", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in ["absent", "column a", "nokey", "REPLICA IDENTITY FULL"] {
        assert!(err.contains(want), "{want:?} not reported:\n{err}");
    }
    assert!(
        err.contains("column b is integer"),
        "type mismatch of b not reported:\n{err}"
    );
    assert_eq!(
        scalar(
            &src,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")
        )
        .await,
        "0"
    );

    std::fs::write(
        &s.config,
        "source: { url: \"host=x\" }\ntargets:\n  - { name: a, url: \"host=y\", urll: 1 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(PGRELAY)
        .args(["stream", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 3") && err.contains("targets[0].urll"),
        "{err}"
    );
}

/// Every supported source major streams to a target (protocol 1–4).
async fn smoke(major: u32) {
    let source = logical(major);
    let target = Cluster::start(if major == 16 { 17 } else { 16 });
    let db = unique_name("sm");
    source.create_database(&db);
    target.create_database(&db);
    let mut src = source.connect(&db).await;
    let tgt = target.connect(&db).await;
    let mut wl = Workload::new(major as u64, 2);
    keyless_and_workload(&src, &wl).await;
    keyless_and_workload(&tgt, &wl).await;
    ledger_and_workload(&mut src, &mut wl, 2).await;
    let slot = unique_name("sm");
    let mut s = Streamer::new(&yaml(
        &source.superuser_url(&db),
        &slot,
        &[("t", target.superuser_url(&db))],
        "",
    ));
    s.start();
    ledger_and_workload(&mut src, &mut wl, 5).await;
    // A transaction larger than logical_decoding_work_mem: streamed in
    // progress where the protocol allows.
    sql(
        &src,
        "INSERT INTO ledger SELECT 'bulk', g FROM generate_series(1, 20000) g",
    )
    .await;
    wait_equal(&src, &tgt, Duration::from_secs(90), &s).await;
    assert!(s.sigterm().await.success(), "{}", s.logs());
}

pgrelay_testkit::per_major!(every_source_major, smoke);
