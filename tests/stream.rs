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

use pgrelay_testkit::{
    assert_databases_equal, compare_databases, describe, simple_rows, unique_name, Cluster,
    FaultProxy, Workload,
};
use tokio::process::{Child, Command};

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

async fn sql(c: &tokio_postgres::Client, q: &str) -> Vec<Vec<Option<String>>> {
    simple_rows(c, q)
        .await
        .unwrap_or_else(|e| panic!("{q}: {}", describe(&e)))
}

async fn scalar(c: &tokio_postgres::Client, q: &str) -> String {
    sql(c, q).await[0][0].clone().unwrap_or_default()
}

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
