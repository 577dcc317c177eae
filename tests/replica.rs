//! `pgrelay replica` against real servers: standbys of a 15 (over TLS,
//! with a SCRAM replication role) and a 16 primary created by the binary,
//! streaming and serving read-only queries; `status` (text, JSON,
//! `--watch`) with lag near 0, a slot-retention warning, and exit 1 for a
//! configured standby that is missing; `monitor`'s metrics and /health;
//! synchronous mode making a commit wait for a stopped standby; promotion
//! by URL and by data directory; a refused pg_hba.conf reported with the
//! line to add; a planned switchover after which the old primary streams
//! from the new one and no committed row is missing; `rejoin` with
//! pg_rewind after a split-brain failover; and the pg_control fields read
//! directly, checked against the server on every major.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use pgrelay_testkit::{
    connect_plain, free_port, per_major, simple_rows, unique_name, Cluster, PgInstall,
    REPLICATION_ROLE, TEST_PASSWORD,
};
use serde_json::Value as Json;
use tokio::process::Command;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

async fn pgrelay(args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(PGRELAY).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("pgrelay did not finish within 300 s")
    .expect("run pgrelay")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn pgrelay_ok(args: &[&str]) -> String {
    let out = pgrelay(args).await;
    assert!(
        out.status.success(),
        "pgrelay {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A data directory for a standby made by the binary; its server is
/// stopped on drop (immediate mode) and the directory removed.
struct StandbyDir {
    _dir: tempfile::TempDir,
    pgdata: PathBuf,
    pg_ctl: PathBuf,
    port: u16,
}

impl StandbyDir {
    fn new(major: u32) -> StandbyDir {
        let base = std::env::var_os("PGRELAY_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgrelay-replica-pg{major}-"))
            .tempdir_in(base)
            .expect("temp dir");
        // The server's OS user must be able to reach the data directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        StandbyDir {
            pgdata: dir.path().join("data"),
            _dir: dir,
            pg_ctl: PgInstall::require(major).tool("pg_ctl"),
            port: free_port(),
        }
    }

    fn pgdata(&self) -> &str {
        self.pgdata.to_str().expect("utf-8 path")
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut c = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            c
        } else {
            std::process::Command::new(&self.pg_ctl)
        };
        c.arg("-D").arg(&self.pgdata).args(args);
        let out = c.output().expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.pgdata.join("pgrelay-server.log")).unwrap_or_default()
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Drop for StandbyDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- standby log ---\n{}--- end ---", self.log());
        }
        if self.pgdata.join("postmaster.pid").exists() {
            let mut c = if is_root() {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
                c
            } else {
                std::process::Command::new(&self.pg_ctl)
            };
            c.arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = c.output();
        }
    }
}

async fn scalar(conninfo: &str, sql: &str) -> Option<String> {
    let client = connect_plain(conninfo).await.expect("connect");
    simple_rows(&client, sql).await.expect(sql)[0][0].clone()
}

/// Polls `sql` on `conninfo` until it returns `want` (60 s).
async fn wait_for(conninfo: &str, sql: &str, want: &str) {
    let mut last = None;
    for _ in 0..600 {
        if let Ok(client) = connect_plain(conninfo).await {
            if let Ok(rows) = simple_rows(&client, sql).await {
                last = rows[0][0].clone();
                if last.as_deref() == Some(want) {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{sql}` on {conninfo} still returns {last:?}, not {want}");
}

fn status_json(out: &str) -> Json {
    serde_json::from_str(out.lines().last().expect("one JSON line")).expect("status JSON")
}

/// create → streaming, read-only reads → status → sync mode blocks a commit
/// while the standby is down → promote.
async fn standby_lifecycle(major: u32, tls: bool, promote_by_pgdata: bool) {
    let mut builder = Cluster::builder(major);
    if tls {
        builder = builder.tls();
    }
    let primary = builder.start();
    let su = primary.superuser_url("postgres");
    primary.execute_blocking(
        "postgres",
        "CREATE TABLE items (id int PRIMARY KEY, note text); \
         INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    );
    let standby = StandbyDir::new(major);
    let port = standby.port.to_string();
    let mut repl_url = format!(
        "postgres://{REPLICATION_ROLE}:{TEST_PASSWORD}@127.0.0.1:{}/postgres",
        primary.port()
    );
    if let Some(t) = primary.tls() {
        repl_url.push_str(&format!(
            "?sslmode=verify-full&sslrootcert={}",
            t.ca_file.display()
        ));
    }
    let name = unique_name("standby");
    let out = pgrelay_ok(&[
        "replica",
        "create",
        "--primary",
        &repl_url,
        "--pgdata",
        standby.pgdata(),
        "--name",
        &name,
        "--start",
        "--port",
        &port,
        "--timeout",
        "90s",
    ])
    .await;
    assert!(out.contains("streaming"), "{out}");
    // The password is in primary_conninfo (0600 file), never in output.
    assert!(!out.contains(TEST_PASSWORD));
    let auto = std::fs::read_to_string(standby.pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&format!("application_name={name}")), "{auto}");
    assert!(
        auto.contains(&format!("primary_slot_name = '{name}'")),
        "{auto}"
    );
    assert!(standby.pgdata.join("standby.signal").exists());

    let s = standby.conninfo();
    assert_eq!(
        scalar(&s, "SELECT pg_is_in_recovery()").await.as_deref(),
        Some("t")
    );
    assert_eq!(
        scalar(&s, "SELECT count(*) FROM items").await.as_deref(),
        Some("1000")
    );
    primary.execute_blocking("postgres", "INSERT INTO items VALUES (1001, 'new')");
    wait_for(&s, "SELECT count(*) FROM items", "1001").await;
    let client = connect_plain(&s).await.unwrap();
    let err = client
        .batch_execute("INSERT INTO items VALUES (5000, 'x')")
        .await
        .expect_err("a standby refuses writes");
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err}");
    if tls {
        let ssl = primary.scalar_blocking(
            "postgres",
            &format!(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) \
                 WHERE r.application_name = '{name}'"
            ),
        );
        assert_eq!(
            ssl.as_deref(),
            Some("t"),
            "the standby must stream over TLS"
        );
    }

    // status: the standby streams with (near) zero lag.
    let json = status_json(
        &pgrelay_ok(&[
            "replica",
            "status",
            "--primary",
            &su,
            "--json",
            "--expect",
            &name,
        ])
        .await,
    );
    let st = json["standbys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(st["state"], "streaming", "{json}");
    assert!(st["replay_lag_bytes"].as_i64().unwrap() < 1 << 20, "{json}");
    let slot = json["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(slot["active"], true, "{json}");
    assert_eq!(json["healthy"], true);
    let text_out = pgrelay_ok(&["replica", "status", "--primary", &su]).await;
    eprintln!("replica status:\n{text_out}");
    assert!(
        text_out.contains(&name) && text_out.contains("streaming"),
        "{text_out}"
    );
    let missing = pgrelay(&[
        "replica",
        "status",
        "--primary",
        &su,
        "--json",
        "--expect",
        "ghost",
    ])
    .await;
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let json = status_json(&String::from_utf8_lossy(&missing.stdout));
    assert_eq!(json["missing"][0], "ghost", "{json}");

    monitor_exports(&su, &name).await;
    watch_repeats(&su, &name).await;

    // An inactive slot retaining more WAL than the threshold is a warning,
    // not a failure.
    let idle = unique_name("idle");
    primary.execute_blocking(
        "postgres",
        &format!(
            "SELECT pg_create_physical_replication_slot('{idle}', true); \
             INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(10001, 12000) g"
        ),
    );
    let json = status_json(
        &pgrelay_ok(&[
            "replica",
            "status",
            "--primary",
            &su,
            "--json",
            "--slot-warn-bytes",
            "1kB",
        ])
        .await,
    );
    let slot = json["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == idle.as_str())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(
        (slot["active"].as_bool(), slot["warning"].as_bool()),
        (Some(false), Some(true)),
        "{json}"
    );
    assert!(slot["retained_bytes"].as_i64().unwrap() > 1024, "{json}");
    assert!(
        json["warnings"][0].as_str().unwrap().contains(&idle),
        "{json}"
    );
    primary.execute_blocking(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{idle}')"),
    );

    // Synchronous mode: with the standby down, a commit waits for it.
    let out = pgrelay_ok(&[
        "replica",
        "sync-mode",
        "--primary",
        &su,
        "--on",
        "--standby",
        &name,
    ])
    .await;
    assert!(out.contains(&format!("\"{name}\"")), "{out}");
    wait_for(
        &primary.conninfo("postgres", "postgres"),
        &format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"),
        "sync",
    )
    .await;
    primary.execute_blocking(
        "postgres",
        "INSERT INTO items VALUES (2001, 'sync, standby up')",
    );
    standby.pg_ctl(&["-m", "fast", "-w", "stop"]);
    let writer = primary.connect("postgres").await;
    let mut commit = tokio::spawn(async move {
        writer
            .batch_execute("INSERT INTO items VALUES (2002, 'sync, standby down')")
            .await
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut commit)
            .await
            .is_err(),
        "a synchronous commit returned while the only synchronous standby was down"
    );
    // Down, status exits 1: a synchronous standby is a configured one.
    let down = pgrelay(&["replica", "status", "--primary", &su]).await;
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    standby.pg_ctl(&[
        "-l",
        standby.pgdata.join("pgrelay-server.log").to_str().unwrap(),
        "-w",
        "start",
    ]);
    tokio::time::timeout(Duration::from_secs(120), commit)
        .await
        .expect("the commit returns once the standby is back")
        .unwrap()
        .expect("commit");
    wait_for(&s, "SELECT count(*) FROM items WHERE id = 2002", "1").await;
    let out = pgrelay_ok(&["replica", "sync-mode", "--primary", &su, "--off"]).await;
    assert!(out.ends_with("-> ''\n"), "{out}");

    // Promote.
    if promote_by_pgdata {
        pgrelay_ok(&["replica", "promote", "--pgdata", standby.pgdata()]).await;
    } else {
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", standby.port);
        pgrelay_ok(&["replica", "promote", "--standby", &url]).await;
    }
    assert_eq!(
        scalar(&s, "SELECT pg_is_in_recovery()").await.as_deref(),
        Some("f")
    );
    let client = connect_plain(&s).await.unwrap();
    client
        .batch_execute("INSERT INTO items VALUES (3001, 'written on the promoted standby')")
        .await
        .expect("the promoted standby takes writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_of_15_over_tls() {
    if !pgrelay_testkit::selected(15) {
        return;
    }
    standby_lifecycle(15, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_of_16() {
    if !pgrelay_testkit::selected(16) {
        return;
    }
    standby_lifecycle(16, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_replication_prints_the_pg_hba_line() {
    if !pgrelay_testkit::selected(15) {
        return;
    }
    let primary = Cluster::builder(15)
        .hba_line(&format!(
            "host replication {REPLICATION_ROLE} 127.0.0.1/32 reject"
        ))
        .start();
    let standby = StandbyDir::new(15);
    let url = primary.url(REPLICATION_ROLE, "postgres");
    let out = pgrelay(&[
        "replica",
        "create",
        "--primary",
        &url,
        "--pgdata",
        standby.pgdata(),
        "--name",
        "refused",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "host replication {REPLICATION_ROLE} 127.0.0.1/32 scram-sha-256"
        )),
        "{err}"
    );
    assert!(!err.contains(TEST_PASSWORD), "{err}");
    assert_eq!(
        primary
            .scalar_blocking("postgres", "SELECT count(*) FROM pg_replication_slots")
            .as_deref(),
        Some("0"),
        "nothing is created when the check fails"
    );
    assert!(!standby.pgdata.exists());
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to monitor");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `replica monitor`: /metrics carries the standby's lag and its slot's
/// retention, /health is 200 with the status document, SIGTERM ends it.
async fn monitor_exports(primary: &str, standby: &str) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new(PGRELAY)
        .args([
            "replica",
            "monitor",
            "--primary",
            primary,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--interval", "200ms", "--expect", standby])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run monitor");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("monitor announces its address")
            .unwrap()
            .expect("monitor exited early");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    let lag = format!("pgrelay_replica_lag_bytes{{standby=\"{standby}\"}}");
    let slot = format!("pgrelay_slot_retained_bytes{{slot=\"{standby}\"}}");
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(&addr, "/metrics").await.1;
        if metrics.contains(&lag) && metrics.contains(&slot) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(&lag), "{metrics}");
    assert!(metrics.contains(&slot), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "pgrelay_replica_lag_seconds{{standby=\"{standby}\"}}"
        )),
        "{metrics}"
    );
    let (status, body) = http_get(&addr, "/health").await;
    assert_eq!(status, 200, "{body}");
    let health: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(health["healthy"], true, "{health}");
    assert!(!body.contains(TEST_PASSWORD));
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("monitor stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// `status --watch --json` prints one document per interval until SIGTERM,
/// then exits 0 while the expected standby streams.
async fn watch_repeats(primary: &str, standby: &str) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new(PGRELAY)
        .args([
            "replica",
            "status",
            "--primary",
            primary,
            "--json",
            "--watch",
        ])
        .args(["--interval", "100ms", "--expect", standby])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run status --watch");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a sample per interval")
            .unwrap()
            .expect("status --watch exited early");
        let doc: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["healthy"], true, "{doc}");
    }
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("status --watch stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_loses_nothing() {
    if !pgrelay_testkit::selected(15) {
        return;
    }
    let primary = Cluster::start(15);
    let su = primary.superuser_url("postgres");
    primary.execute_blocking(
        "postgres",
        "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    );
    let standby = StandbyDir::new(15);
    let name = unique_name("sw");
    pgrelay_ok(&[
        "replica",
        "create",
        "--primary",
        &su,
        "--pgdata",
        standby.pgdata(),
        "--name",
        &name,
        "--start",
        "--sync",
        "--port",
        &standby.port.to_string(),
    ])
    .await;

    // A writer commits rows until the primary goes away; every id whose
    // COMMIT returned must survive the switchover.
    let writer = primary.connect("postgres").await;
    let committed = tokio::spawn(async move {
        let mut ok = Vec::new();
        for id in 1i64.. {
            match writer
                .execute("INSERT INTO ledger (id) VALUES ($1)", &[&id])
                .await
            {
                Ok(_) => ok.push(id),
                Err(_) => break,
            }
            if id % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ok
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let standby_url = format!("postgres://postgres@127.0.0.1:{}/postgres", standby.port);
    let old_name = unique_name("former");
    let out = pgrelay_ok(&[
        "replica",
        "switchover",
        "--primary",
        &su,
        "--primary-pgdata",
        path(primary.data_dir()),
        "--standby",
        &standby_url,
        "--standby-pgdata",
        standby.pgdata(),
        "--new-standby-name",
        &old_name,
        "--json",
    ])
    .await;
    let report: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    eprintln!("switchover report: {report}");
    assert!(report["write_downtime_ms"].is_u64(), "{report}");
    assert_eq!(report["new_primary"], name.as_str());
    assert_eq!(report["rewound"], false, "{report}");
    assert_eq!(
        report["synchronous_standby_names"],
        format!("\"{old_name}\"")
    );
    let committed = committed.await.unwrap();
    assert!(
        committed.len() > 10,
        "the writer committed only {}",
        committed.len()
    );

    let new_primary = standby.conninfo();
    let old_primary = primary.conninfo("postgres", "postgres");
    assert_eq!(
        scalar(&new_primary, "SELECT pg_is_in_recovery()")
            .await
            .as_deref(),
        Some("f")
    );
    assert_eq!(
        scalar(&old_primary, "SELECT pg_is_in_recovery()")
            .await
            .as_deref(),
        Some("t")
    );
    let client = connect_plain(&new_primary).await.unwrap();
    let present: Vec<i64> = client
        .query("SELECT id FROM ledger ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&i64> = committed
        .iter()
        .filter(|id| present.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "committed rows lost in the switchover: {missing:?}"
    );
    // The old primary streams from the new one (synchronously) and sees new writes.
    let state = scalar(
        &new_primary,
        &format!(
            "SELECT state || '/' || sync_state FROM pg_stat_replication \
             WHERE application_name = '{old_name}'"
        ),
    )
    .await;
    assert_eq!(state.as_deref(), Some("streaming/sync"));
    client
        .batch_execute("INSERT INTO ledger (id) VALUES (-1)")
        .await
        .unwrap();
    wait_for(
        &old_primary,
        "SELECT count(*) FROM ledger WHERE id = -1",
        "1",
    )
    .await;
    let json =
        status_json(&pgrelay_ok(&["replica", "status", "--primary", &standby_url, "--json"]).await);
    assert_eq!(json["healthy"], true, "{json}");
}

/// Failover, then `replica rejoin`: the old primary kept taking writes
/// after the standby was promoted, so its WAL diverged; pg_rewind brings
/// it back and it streams from the new primary with the new primary's
/// rows only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_after_failover_rewinds() {
    if !pgrelay_testkit::selected(15) {
        return;
    }
    // pg_rewind needs both wal_log_hints (or checksums) and the old
    // primary's WAL back to the last common checkpoint.
    let primary = Cluster::builder(15)
        .setting("wal_log_hints", "on")
        .setting("wal_keep_size", "'64MB'")
        .start();
    let su = primary.superuser_url("postgres");
    primary.execute_blocking(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    );
    let standby = StandbyDir::new(15);
    let name = unique_name("failover");
    pgrelay_ok(&[
        "replica",
        "create",
        "--primary",
        &su,
        "--pgdata",
        standby.pgdata(),
        "--name",
        &name,
        "--start",
        "--port",
        &standby.port.to_string(),
    ])
    .await;
    let s = standby.conninfo();
    wait_for(&s, "SELECT count(*) FROM t", "100").await;
    let standby_url = format!("postgres://postgres@127.0.0.1:{}/postgres", standby.port);
    pgrelay_ok(&["replica", "promote", "--standby", &standby_url]).await;
    // Split brain: both take writes.
    primary.execute_blocking(
        "postgres",
        "INSERT INTO t SELECT generate_series(1001, 1100); CHECKPOINT",
    );
    let client = connect_plain(&s).await.unwrap();
    client
        .batch_execute("INSERT INTO t SELECT generate_series(2001, 2010)")
        .await
        .unwrap();
    let old_name = unique_name("rejoined");
    let out = pgrelay_ok(&[
        "replica",
        "rejoin",
        "--primary",
        &standby_url,
        "--pgdata",
        path(primary.data_dir()),
        "--name",
        &old_name,
    ])
    .await;
    assert!(out.contains("pg_rewind ran"), "{out}");
    let old = primary.conninfo("postgres", "postgres");
    assert_eq!(
        scalar(&old, "SELECT pg_is_in_recovery()").await.as_deref(),
        Some("t")
    );
    client
        .batch_execute("INSERT INTO t VALUES (3001)")
        .await
        .unwrap();
    wait_for(&old, "SELECT count(*) FROM t WHERE id = 3001", "1").await;
    assert_eq!(
        scalar(
            &old,
            "SELECT count(*) FILTER (WHERE id > 1000 AND id < 2000) || '/' || count(*) FROM t"
        )
        .await
        .as_deref(),
        Some("0/111"),
        "the rewound server has exactly the new primary's rows"
    );
}

// pg_control is read directly (no pg_controldata of every major needed):
// its leading fields must match what the server itself reports.
per_major!(pg_control_layout, |major: u32| async move {
    let cluster = Cluster::start(major);
    cluster.execute_blocking("postgres", "CREATE TABLE x (a int); CHECKPOINT");
    let row = cluster.query_blocking(
        "postgres",
        "SELECT checkpoint_lsn::text, timeline_id::text FROM pg_control_checkpoint()",
    );
    let control = pgrelay_replica::os::control_data(cluster.data_dir()).unwrap();
    assert_eq!(
        Some(pgrelay_replica::os::lsn_text(control.checkpoint)),
        row[0][0],
        "{control:?}"
    );
    assert_eq!(Some(control.timeline.to_string()), row[0][1]);
    assert_eq!(control.state, 6, "in production");
    let mut cluster = cluster;
    cluster.stop();
    assert!(pgrelay_replica::os::control_data(cluster.data_dir())
        .unwrap()
        .shut_down_cleanly());
});
