//! Migration selection end to end against real servers: several source
//! databases in one configuration (`databases:` include/exclude globs, a
//! `db.schema.table` exclusion) through `validate`, `init`, `stream` (one
//! process, one `/health` and `/metrics`), `verify`, `status`,
//! `switchover --reverse` (one fence, then every database streamed back
//! from the new primary) and `cleanup`, from PostgreSQL 15 to 17; and `init --interactive` driven through a real
//! pseudo-terminal (tmux), choosing databases and a table to leave out,
//! plus its refusal without a terminal.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pgrelay_testkit::{
    assert_databases_equal, compare_databases, describe, simple_rows, unique_name, Cluster,
};
use tokio::process::Command;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

async fn sql(c: &tokio_postgres::Client, q: &str) -> Vec<Vec<Option<String>>> {
    simple_rows(c, q)
        .await
        .unwrap_or_else(|e| panic!("{q}: {}", describe(&e)))
}

async fn scalar(c: &tokio_postgres::Client, q: &str) -> String {
    sql(c, q).await[0][0].clone().unwrap_or_default()
}

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

/// A tmux session on its own server socket, so parallel tests and the
/// developer's own tmux are never touched.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (apt-get install -y tmux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Waits until the screen shows `what`.
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

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", "-t", "t", k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
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

    let tmux = Tmux {
        socket: unique_name("pgrelay_test"),
    };
    let stdout = dir.path().join("out.txt");
    let rc = dir.path().join("rc.txt");
    let cmd = format!(
        "{PGRELAY} init --interactive --config {} > {} ; echo $? > {}; sleep 600",
        config.display(),
        stdout.display(),
        rc.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "200",
        "-y",
        "50",
        &cmd,
    ]);
    let screen = tmux
        .wait_for("Databases to migrate", Duration::from_secs(30))
        .await;
    // Sizes are shown; postgres is offered but not ticked.
    assert!(
        screen.contains(" kB") || screen.contains(" MiB"),
        "{screen}"
    );
    assert!(screen.contains("postgres"), "{screen}");
    // Rows: a (ticked from the URL), b, c, postgres. Tick b.
    tmux.keys(&["Down", "Space", "Enter"]);
    let screen = tmux
        .wait_for("Tables to leave out", Duration::from_secs(30))
        .await;
    assert!(screen.contains(&format!("{b}.public.t2")), "{screen}");
    assert!(!screen.contains(&format!("{c}.public")), "{screen}");
    // Rows: a.big, a.t1, b.t2. Leave out a.big.
    tmux.keys(&["Space", "Enter"]);
    let screen = tmux.wait_for("(y/n)", Duration::from_secs(60)).await;
    assert!(!screen.contains("initialized"), "{screen}");
    tmux.keys(&["y"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rc.exists() || std::fs::read_to_string(&rc).unwrap().trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "init did not finish; screen:\n{}",
            tmux.screen()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = std::fs::read_to_string(&stdout).unwrap();
    assert_eq!(
        std::fs::read_to_string(&rc).unwrap().trim(),
        "0",
        "{out}\n{}",
        tmux.screen()
    );
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
