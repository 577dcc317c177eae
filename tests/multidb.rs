//! Migration selection end to end against real servers: several source
//! databases in one configuration (`databases:` include/exclude globs, a
//! `db.schema.table` exclusion) through `validate`, `init`, `stream` (one
//! process, one `/health` and `/metrics`), `verify`, `status`,
//! `switchover --reverse` (one fence, then every database streamed back
//! from the new primary) and `cleanup`, from PostgreSQL 15 to 17; and `init --interactive` driven through a real
//! pseudo-terminal (openpty), choosing databases and a table to leave out,
//! plus its refusal without a terminal.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pgrelay_testkit::{assert_databases_equal, compare_databases, unique_name, Cluster};
use pgrelay_testkit::{query as sql, query_scalar as scalar};
use tokio::process::Command;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

fn pgrelay(args: &[&str], config: &Path) -> Output {
    std::process::Command::new(PGRELAY)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn http(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
}

async fn health(port: u16) -> Option<(u16, serde_json::Value)> {
    let (code, body) = http(port, "/health").await?;
    Some((code, serde_json::from_str(&body).ok()?))
}

const APP: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE audit (id bigserial PRIMARY KEY, what text);
INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 300) g;
INSERT INTO audit (what) SELECT 'a' || g FROM generate_series(1, 100) g;";

const BILLING: &str = "
CREATE SCHEMA ledger;
CREATE TABLE ledger.invoices (id int PRIMARY KEY, amount numeric(10,2), paid bool DEFAULT false);
CREATE TABLE audit (id bigserial PRIMARY KEY, what text);
INSERT INTO ledger.invoices SELECT g, g * 1.5 FROM generate_series(1, 500) g;
INSERT INTO audit (what) VALUES ('kept: only app.public.audit is excluded');
CREATE TABLE lookup (id int PRIMARY KEY);
INSERT INTO lookup SELECT generate_series(1, 5);
CREATE VIEW lookup_v AS SELECT id FROM lookup;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_selected_databases_15_to_17() {
    let source = Cluster::builder(15)
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "10")
        .start();
    // wal_level=logical: the new primary streams back with --reverse.
    let target = Cluster::builder(17).setting("wal_level", "logical").start();
    let u = unique_name("mdb");
    let (app, billing, skip) = (
        format!("{u}_app"),
        format!("{u}_billing"),
        format!("{u}_skip"),
    );
    for db in [&app, &billing, &skip] {
        source.create_database(db);
    }
    let src_app = source.connect(&app).await;
    let src_billing = source.connect(&billing).await;
    sql(&src_app, APP).await;
    sql(&src_billing, BILLING).await;
    sql(
        &source.connect(&skip).await,
        "CREATE TABLE t (id int PRIMARY KEY)",
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgrelay.yml");
    let port = pgrelay_testkit::free_port();
    std::fs::write(
        &config,
        format!(
            "source: {{ url: \"{}\", slot: mig }}
targets:
  - {{ name: new, url: \"{}\" }}
databases: {{ include: [\"{u}_*\"], exclude: [\"*_skip\"] }}
tables: {{ exclude: [\"{app}.public.audit\", \"{billing}.public.lookup\"] }}
listen: \"127.0.0.1:{port}\"
",
            source.superuser_url("postgres"),
            target.superuser_url("postgres"),
        ),
    )
    .unwrap();

    let out = pgrelay(&["validate", "--schema-copy"], &config);
    let t = text(&out);
    assert!(out.status.success(), "validate: {t}");
    assert!(
        t.contains(&format!("== database {app} ==")) && t.contains(&format!("database {billing}")),
        "{t}"
    );
    assert!(!t.contains(&skip), "{t}");

    let out = pgrelay(&["init", "--yes"], &config);
    let t = text(&out);
    assert!(out.status.success(), "init: {t}");
    assert!(t.contains("summary: 2 database(s)"), "{t}");
    let slots = scalar(
        &src_app,
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots",
    )
    .await;
    assert_eq!(slots, format!("mig_{app},mig_{billing}"));

    let log = std::fs::File::create(dir.path().join("stream.log")).unwrap();
    let mut stream = Command::new(PGRELAY)
        .args(["stream", "--config"])
        .arg(&config)
        .env("PGRELAY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(dir.path().join("stream.log")).unwrap_or_default();
    // Changes in both databases while streaming, the excluded table too.
    sql(
        &src_app,
        "INSERT INTO customers (name) SELECT 'late' || g FROM generate_series(1, 50) g;
         UPDATE customers SET name = upper(name) WHERE id % 7 = 0;
         DELETE FROM customers WHERE id % 11 = 0;
         INSERT INTO audit (what) VALUES ('not replicated');",
    )
    .await;
    sql(
        &src_billing,
        "UPDATE ledger.invoices SET paid = true WHERE id % 3 = 0;
         INSERT INTO ledger.invoices VALUES (1000, 1), (1001, 2);
         INSERT INTO audit (what) VALUES ('replicated');",
    )
    .await;

    // One /health for both pipelines; wait until both caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, h)) = health(port).await {
            let pipelines = h["pipelines"].as_array().cloned().unwrap_or_default();
            assert_eq!(pipelines.len(), 2, "{h}");
            let caught_up = pipelines.iter().all(|p| {
                p["targets"]
                    .as_array()
                    .is_some_and(|ts| ts.iter().all(|t| t["lag_bytes"] == 0))
            });
            if caught_up {
                assert_eq!(pipelines[0]["database"], app.as_str(), "{h}");
                assert_eq!(
                    pipelines[1]["targets"][0]["name"],
                    format!("new/{billing}"),
                    "{h}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not caught up: {:?}\n{}",
            health(port).await,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Source-side series carry the database; targets are NAME/DB.
    let (_, metrics) = http(port, "/metrics").await.expect("/metrics");
    for want in [
        format!("pgrelay_received_bytes_total{{database=\"{app}\"}}"),
        format!("pgrelay_source_up{{database=\"{billing}\"}}"),
        format!("pgrelay_lag_bytes{{target=\"new/{billing}\"}}"),
    ] {
        assert!(metrics.contains(&want), "{want} missing:\n{metrics}");
    }

    // verify while streaming: both databases, exact.
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || pgrelay(&["verify"], &config)
    })
    .await
    .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "verify: {t}\n{}", logs());
    assert!(t.contains(&format!("✓ new/{app}: public.customers")), "{t}");
    assert!(
        t.contains(&format!("✓ new/{billing}: ledger.invoices")),
        "{t}"
    );
    assert!(t.contains(&format!("✓ new/{billing}: public.audit")), "{t}");
    assert!(!t.contains(&format!("new/{app}: public.audit")), "{t}");

    let out = pgrelay(&["status", "--json"], &config);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(st.as_array().map(Vec::len), Some(2), "{}", text(&out));
    for p in st.as_array().unwrap() {
        assert_eq!(p["targets"][0]["state"], "streaming", "{}", text(&out));
    }

    // Both databases switch over at once (one fence, one downtime), then
    // stream back from the new primary, every database.
    let back_port = pgrelay_testkit::free_port();
    let mut switch = Command::new(PGRELAY)
        .args(["switchover", "--yes", "--max-lag", "256MB", "--reverse"])
        .args(["--listen", &format!("127.0.0.1:{back_port}")])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut t = String::new();
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(switch.stdout.take().unwrap()).lines();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await
        {
            t.push_str(&line);
            t.push('\n');
            if line.starts_with("streaming back") {
                break;
            }
        }
    }
    assert!(t.contains("write downtime"), "switchover: {t}\n{}", logs());
    assert!(t.contains(&format!("mig_{app}_reverse")), "{t}");
    // Sequences followed, database by database.
    let seq = "SELECT last_value FROM customers_id_seq";
    assert_eq!(
        scalar(&target.connect(&app).await, seq).await,
        scalar(&src_app, seq).await
    );
    // A write on the new primary reaches the old source.
    sql(
        &target.connect(&app).await,
        "INSERT INTO customers (name) VALUES ('after the switchover')",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(
        &src_app,
        "SELECT count(*) FROM customers WHERE name = 'after the switchover'",
    )
    .await
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "not streamed back: {:?}",
            health(back_port).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, h) = health(back_port).await.expect("reverse /health");
    assert_eq!(h["pipelines"].as_array().map(Vec::len), Some(2), "{h}");
    let _ = switch.start_kill();
    let out = pgrelay(&["status", "--json"], &config);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for p in st.as_array().unwrap() {
        assert_eq!(
            p["targets"][0]["migration_phase"],
            "switched over",
            "{}",
            text(&out)
        );
    }

    let _ = stream.start_kill();
    let _ = stream.wait().await;

    // The excluded database and table never reached the target.
    let tgt = target.connect("postgres").await;
    assert_eq!(
        scalar(
            &tgt,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{skip}'")
        )
        .await,
        "0"
    );
    let tgt_app = target.connect(&app).await;
    assert_eq!(
        scalar(&tgt_app, "SELECT to_regclass('public.audit') IS NULL").await,
        "t"
    );
    let cmp = compare_databases(&src_app, &tgt_app).await.unwrap();
    assert_eq!(cmp.differences.len(), 1, "{cmp}");
    sql(&src_app, "DROP TABLE audit").await;
    assert_databases_equal(&src_app, &tgt_app).await;
    // An excluded table a copied view reads keeps its (empty) definition.
    let tgt_billing = target.connect(&billing).await;
    assert_eq!(
        scalar(&tgt_billing, "SELECT count(*) FROM lookup_v").await,
        "0"
    );
    for c in [&src_billing, &tgt_billing] {
        sql(c, "DROP VIEW lookup_v; DROP TABLE lookup").await;
    }
    assert_databases_equal(&src_billing, &tgt_billing).await;

    let out = pgrelay(&["cleanup", "--yes"], &config);
    assert!(out.status.success(), "cleanup: {}", text(&out));
    assert_eq!(
        scalar(&src_app, "SELECT count(*) FROM pg_replication_slots").await,
        "0"
    );
}

/// A command running on a pseudo-terminal of its own (openpty; it is the
/// session leader with the pty as controlling terminal), as an operator's
/// shell would run it: what it writes is collected, keys are typed into it.
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    fn spawn(cmd: &mut std::process::Command) -> Pty {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: plain out-parameters; the returned descriptors are owned below.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are not owned elsewhere.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                OwnedFd::from_raw_fd(slave),
            )
        };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // The parent's copies of the slave are gone with `cmd`'s Stdio, so
        // reading the master ends (EIO) when the child exits.
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            child,
            output,
        }
    }

    /// Everything written so far, escape sequences removed.
    fn screen(&self) -> String {
        let raw = String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned();
        let mut out = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for f in chars.by_ref() {
                        if ('@'..='~').contains(&f) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            } else if c != '\r' {
                out.push(c);
            }
        }
        out
    }

    /// Waits until the output shows `what`.
    async fn wait_for(&self, what: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what:?}; screen:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types keys, a moment apart as a person would.
    fn keys(&mut self, keys: &[&str]) {
        use std::io::Write;
        for k in keys {
            self.master.write_all(k.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const DOWN: &str = "\x1b[B";
const SPACE: &str = " ";
const ENTER: &str = "\r";

/// One database's pipeline failing while streaming (its only target lost
/// the table) stops alone: the other database keeps streaming, `/health`
/// answers 503 naming the failed pipeline's error, and pgrelay exits 1 on
/// SIGTERM with that error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_database_leaves_the_others_streaming() {
    let source = Cluster::builder(15).setting("wal_level", "logical").start();
    let target = Cluster::start(17);
    let u = unique_name("mfl");
    let (a, b) = (format!("{u}_a"), format!("{u}_b"));
    for db in [&a, &b] {
        for c in [&source, &target] {
            c.create_database(db);
            sql(
                &c.connect(db).await,
                "CREATE TABLE t (id int PRIMARY KEY, v text)",
            )
            .await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgrelay.yml");
    let port = pgrelay_testkit::free_port();
    std::fs::write(
        &config,
        format!(
            "source: {{ url: \"{}\", slot: mfl }}
targets:
  - {{ name: new, url: \"{}\" }}
databases: {{ include: [\"{u}_*\"] }}
listen: \"127.0.0.1:{port}\"
",
            source.superuser_url("postgres"),
            target.superuser_url("postgres"),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("stream.log")).unwrap();
    let mut stream = Command::new(PGRELAY)
        .args(["stream", "--config"])
        .arg(&config)
        .env("PGRELAY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(dir.path().join("stream.log")).unwrap_or_default();
    let (src_a, src_b) = (source.connect(&a).await, source.connect(&b).await);
    let tgt_b = target.connect(&b).await;
    let arrived = |id: i32| {
        let tgt_b = &tgt_b;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let n = scalar(tgt_b, &format!("SELECT count(*) FROM t WHERE id = {id}")).await;
                if n == "1" {
                    return;
                }
                assert!(Instant::now() < deadline, "row {id} never arrived");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    sql(&src_b, "INSERT INTO t VALUES (1, 'before')").await;
    arrived(1).await;

    // Database a's only target loses the table: a fatal apply error.
    sql(&target.connect(&a).await, "DROP TABLE t").await;
    sql(&src_a, "INSERT INTO t VALUES (1, 'breaks a')").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        if let Some((503, h)) = health(port).await {
            let pipelines = h["pipelines"].as_array().cloned().unwrap_or_default();
            if let Some(p) = pipelines.iter().find(|p| p["error"].is_string()) {
                break p.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no failed pipeline in /health: {:?}\n{}",
            health(port).await,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed["database"], a.as_str(), "{failed}");

    // Database b still streams.
    sql(&src_b, "INSERT INTO t VALUES (2, 'after')").await;
    arrived(2).await;
    assert!(
        logs().contains("the other databases keep streaming"),
        "{}",
        logs()
    );

    let pid = stream.id().expect("pid") as i32;
    // SAFETY: signalling a child we own.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), stream.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(1), "{}", logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_interactive_in_a_terminal() {
    let source = Cluster::builder(15)
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "10")
        .start();
    let target = Cluster::start(17);
    let u = unique_name("itv");
    let (a, b, c) = (format!("{u}_a"), format!("{u}_b"), format!("{u}_c"));
    for db in [&a, &b, &c] {
        source.create_database(db);
    }
    let src_a = source.connect(&a).await;
    let src_b = source.connect(&b).await;
    sql(
        &src_a,
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g;
         CREATE TABLE t1 (id int PRIMARY KEY, v text);
         INSERT INTO t1 SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await;
    sql(
        &src_b,
        "CREATE TABLE t2 (id int PRIMARY KEY); INSERT INTO t2 SELECT generate_series(1, 10);",
    )
    .await;
    sql(
        &source.connect(&c).await,
        "CREATE TABLE t3 (id int PRIMARY KEY)",
    )
    .await;

    // One database per configuration, as before; the terminal adds one.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgrelay.yml");
    std::fs::write(
        &config,
        format!(
            "source: {{ url: \"{}\" }}\ntargets:\n  - {{ name: new, url: \"{}\" }}\n",
            source.superuser_url(&a),
            target.superuser_url(&a),
        ),
    )
    .unwrap();

    // Without a terminal: a clear refusal, exit 2, nothing created.
    let out = pgrelay(&["init", "--interactive"], &config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("needs a terminal"), "{}", text(&out));

    let mut term = Pty::spawn(
        std::process::Command::new(PGRELAY)
            .args(["init", "--interactive", "--config"])
            .arg(&config),
    );
    let screen = term
        .wait_for("Databases to migrate", Duration::from_secs(30))
        .await;
    // Sizes are shown; postgres is offered but not ticked.
    assert!(
        screen.contains(" KiB") || screen.contains(" MiB"),
        "{screen}"
    );
    assert!(screen.contains("postgres"), "{screen}");
    // Rows: a (ticked from the URL), b, c, postgres. Tick b.
    term.keys(&[DOWN, SPACE, ENTER]);
    let screen = term
        .wait_for("Tables to leave out", Duration::from_secs(30))
        .await;
    assert!(screen.contains(&format!("{b}.public.t2")), "{screen}");
    assert!(!screen.contains(&format!("{c}.public")), "{screen}");
    // Rows: a.big, a.t1, b.t2. Leave out a.big.
    term.keys(&[SPACE, ENTER]);
    let screen = term.wait_for("(y/n)", Duration::from_secs(60)).await;
    assert!(!screen.contains("initialized"), "{screen}");
    term.keys(&["y"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = term.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "init did not finish; screen:\n{}",
            term.screen()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The reader drains what is left once the child is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = term.screen();
    assert!(status.success(), "{out}");
    assert!(out.contains("summary: 2 database(s)"), "{out}");
    assert!(out.contains(&format!("left out: {a}.public.big")), "{out}");
    assert!(
        out.contains(&format!(
            "pgrelay stream --database {a} --database {b} --exclude {a}.public.big"
        )),
        "{out}"
    );

    // a without big, b whole, c not at all.
    let tgt_a = target.connect(&a).await;
    assert_eq!(
        scalar(&tgt_a, "SELECT to_regclass('public.big') IS NULL").await,
        "t"
    );
    sql(&src_a, "DROP TABLE big").await;
    assert_databases_equal(&src_a, &tgt_a).await;
    assert_databases_equal(&src_b, &target.connect(&b).await).await;
    assert_eq!(
        scalar(
            &target.connect("postgres").await,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{c}'")
        )
        .await,
        "0"
    );
    assert_eq!(
        scalar(
            &src_a,
            "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots"
        )
        .await,
        format!("pgrelay_{a},pgrelay_{b}")
    );
}
