//! `pgrelay native` against real servers: a PostgreSQL 15 source and two
//! targets (15 and 17) configured in the `replication:` format. Rows flow;
//! `--dry-run` changes nothing and hides the password; a second apply is a
//! no-op; a target missing a table fails naming it and changes nothing;
//! adding a table brings its rows to both targets; removing one drops it
//! from the publication and the subscriptions; user triggers stay disabled
//! during the initial copy and come back in their mode; `native run`
//! serves /health with per-target lag converging to 0 and /metrics,
//! reconciles on SIGHUP and on a file change, and stops on SIGTERM;
//! teardown refuses without --yes off a terminal and then removes
//! subscriptions, slots and publication. A second test drives pgrelay's
//! own YAML (globs, `apply:` ignored, `enable_initial_sync: false`).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pgrelay_testkit::{assert_databases_equal, Cluster, TEST_PASSWORD};
use pgrelay_testkit::{query as sql, query_scalar as one};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

/// Polls `q` until it returns `want` (generous deadline, no timing claim).
async fn wait_for(c: &tokio_postgres::Client, q: &str, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = one(c, q).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `{q}` gives {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pgrelay(dir: &Path) -> Command {
    let mut c = Command::new(PGRELAY);
    c.current_dir(dir)
        .env_remove("CONFIG_FILE")
        .env_remove("REPLICATION_CONFIG")
        .env_remove("PGRELAY_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn output(mut cmd: Command) -> Run {
    let out: Output = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("pgrelay did not finish within 180 s")
        .expect("run pgrelay");
    let run = Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(TEST_PASSWORD) && !run.stderr.contains(TEST_PASSWORD),
        "the password leaked:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

async fn native(dir: &Path, args: &[&str]) -> Run {
    let mut c = pgrelay(dir);
    c.arg("native").args(args);
    output(c).await
}

async fn native_ok(dir: &Path, args: &[&str]) -> String {
    let run = native(dir, args).await;
    assert!(
        run.ok,
        "native {args:?} failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// GET over plain HTTP/1.1: (status code, body).
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

/// Polls /health until `pred` holds for the document.
async fn health_until(addr: &str, what: &str, pred: impl Fn(u16, &Json) -> bool) -> Json {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    loop {
        if let Some((code, body)) = http_get(addr, "/health").await {
            assert!(!body.contains(TEST_PASSWORD), "password in /health: {body}");
            let doc: Json = serde_json::from_str(&body).expect("/health is JSON");
            if pred(code, &doc) {
                return doc;
            }
            last = Some((code, doc));
        }
        assert!(Instant::now() < deadline, "{what}; last /health: {last:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn replication_yaml(src: &Cluster, t1: &Cluster, t2: &Cluster, tables: &[&str]) -> String {
    let list = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"replication:
  publication_name: "app_publication"
  source: {{ host: "127.0.0.1", port: {}, user: "postgres", password: "{TEST_PASSWORD}", database: "app" }}
  targets:
    - {{ name: "primary_replica", subscription_name: "primary_subscription", host: "127.0.0.1", port: {},
        user: "postgres", password: "{TEST_PASSWORD}", database: "app",
        settings: {{ enable_initial_sync: true, disable_triggers_during_sync: true }} }}
    - {{ name: "second_replica", subscription_name: "second_subscription", host: "127.0.0.1", port: {},
        user: "postgres", password: "{TEST_PASSWORD}", database: "app" }}
  tables: [{list}]
  settings: {{ max_wait_attempts: 5, wait_interval_seconds: 1, enable_initial_sync: true, disable_triggers_during_sync: false }}
"#,
        src.port(),
        t1.port(),
        t2.port()
    )
}

const SCHEMA: &str = "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL); \
     CREATE TABLE posts (id bigint PRIMARY KEY, user_id int, body text); \
     CREATE TABLE tags (id int PRIMARY KEY, label varchar(20))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_format_source_15_targets_15_and_17() {
    if !pgrelay_testkit::selected(15) || !pgrelay_testkit::selected(17) {
        eprintln!("needs PostgreSQL 15 and 17 in PGRELAY_PG_VERSIONS; not run");
        return;
    }
    let src = Cluster::builder(15).setting("wal_level", "logical").start();
    let t1 = Cluster::start(15);
    let t2 = Cluster::start(17);
    for c in [&src, &t1, &t2] {
        c.create_database("app");
    }
    let s = src.connect("app").await;
    let a = t1.connect("app").await;
    let b = t2.connect("app").await;
    sql(&s, SCHEMA).await;
    sql(&s, "CREATE TABLE comments (id int PRIMARY KEY, body text)").await;
    sql(
        &s,
        "INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 500) g; \
         INSERT INTO posts SELECT g, g % 500 + 1, repeat('x', g % 50) FROM generate_series(1, 2000) g; \
         INSERT INTO comments SELECT g, 'c' || g FROM generate_series(1, 50) g; \
         INSERT INTO tags VALUES (1, 'one'), (2, 'two')",
    )
    .await;
    for t in [&a, &b] {
        sql(t, SCHEMA).await;
    }
    sql(&a, "CREATE TABLE comments (id int PRIMARY KEY, body text)").await;
    // An ALWAYS trigger fires in apply workers: it must stay off during the
    // initial copy (disable_triggers_during_sync on primary_replica) and
    // come back in its mode afterwards.
    sql(
        &a,
        "CREATE SEQUENCE fired; \
         CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN PERFORM nextval('public.fired'); RETURN NEW; END$$; \
         CREATE TRIGGER users_bump AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION bump(); \
         ALTER TABLE users ENABLE ALWAYS TRIGGER users_bump; \
         CREATE TRIGGER posts_bump AFTER INSERT ON posts FOR EACH ROW EXECUTE FUNCTION bump()",
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replication-config.yml");
    let file_s = file.to_str().unwrap();
    std::fs::write(&file, replication_yaml(&src, &t1, &t2, &["users", "posts"])).unwrap();

    // --dry-run prints the SQL, redacted, and changes nothing.
    let out = native_ok(dir.path(), &["--config", file_s, "apply", "--dry-run"]).await;
    assert!(out.contains("CREATE PUBLICATION \"app_publication\" FOR TABLE \"public\".\"posts\", \"public\".\"users\""), "{out}");
    assert!(
        out.contains("CREATE SUBSCRIPTION \"primary_subscription\""),
        "{out}"
    );
    assert!(out.contains("password=***"), "{out}");
    assert!(out.contains("DISABLE TRIGGER \"users_bump\""), "{out}");
    assert_eq!(one(&s, "SELECT count(*) FROM pg_publication").await, "0");

    // apply, found through ./replication-config.yml (the search order).
    let out = native_ok(dir.path(), &["apply"]).await;
    assert!(
        out.contains("initial copy done; triggers re-enabled"),
        "{out}"
    );
    assert_eq!(
        one(
            &a,
            "SELECT tgenabled FROM pg_trigger WHERE tgname = 'users_bump'"
        )
        .await,
        "A",
        "trigger not restored in its mode"
    );
    assert_eq!(
        one(&a, "SELECT is_called FROM fired").await,
        "f",
        "the trigger fired during the initial copy"
    );
    for (t, name) in [(&a, "15"), (&b, "17")] {
        wait_for(
            t,
            "SELECT count(*) FROM posts",
            "2000",
            &format!("initial copy to {name}"),
        )
        .await;
        wait_for(
            t,
            "SELECT count(*) FROM users",
            "500",
            &format!("initial copy to {name}"),
        )
        .await;
    }
    sql(
        &s,
        "INSERT INTO users VALUES (501, 'late'); UPDATE posts SET body = 'edited' WHERE id <= 10",
    )
    .await;
    for t in [&a, &b] {
        wait_for(t, "SELECT count(*) FROM users", "501", "new row").await;
        wait_for(
            t,
            "SELECT count(*) FROM posts WHERE body = 'edited'",
            "10",
            "update",
        )
        .await;
    }
    assert_eq!(
        one(&a, "SELECT is_called FROM fired").await,
        "t",
        "trigger not re-enabled"
    );

    // A second apply is a no-op.
    let out = native_ok(dir.path(), &["--config", file_s, "apply"]).await;
    assert!(out.starts_with("nothing to do"), "{out}");

    // A target missing a table: an error naming it (and the target), and
    // no change anywhere.
    std::fs::write(
        &file,
        replication_yaml(&src, &t1, &t2, &["users", "posts", "comments"]),
    )
    .unwrap();
    let run = native(dir.path(), &["--config", file_s, "apply"]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("target second_replica: missing table(s) public.comments"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("primary_replica"), "{}", run.stderr);
    assert_eq!(
        one(
            &s,
            "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'comments'"
        )
        .await,
        "0"
    );

    // Created there, the table is added and copied to both targets.
    sql(&b, "CREATE TABLE comments (id int PRIMARY KEY, body text)").await;
    let out = native_ok(dir.path(), &["--config", file_s, "apply"]).await;
    assert!(
        out.contains("ALTER PUBLICATION \"app_publication\" ADD TABLE \"public\".\"comments\""),
        "{out}"
    );
    assert!(out.contains("REFRESH PUBLICATION"), "{out}");
    sql(&s, "INSERT INTO comments VALUES (51, 'after')").await;
    for t in [&a, &b] {
        wait_for(t, "SELECT count(*) FROM comments", "51", "added table").await;
    }

    // Removing a table drops it from the publication and the subscriptions.
    std::fs::write(
        &file,
        replication_yaml(&src, &t1, &t2, &["users", "comments"]),
    )
    .unwrap();
    let out = native_ok(dir.path(), &["--config", file_s, "apply"]).await;
    assert!(out.contains("DROP TABLE \"public\".\"posts\""), "{out}");
    assert_eq!(
        one(&s, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'app_publication'").await,
        "comments,users"
    );
    for t in [&a, &b] {
        assert_eq!(
            one(t, "SELECT string_agg(srrelid::regclass::text, ',' ORDER BY srrelid::regclass::text) FROM pg_subscription_rel").await,
            "comments,users"
        );
    }
    let out = native_ok(dir.path(), &["--config", file_s, "apply"]).await;
    assert!(out.starts_with("nothing to do"), "{out}");

    // status, both ways.
    let out = native_ok(dir.path(), &["--config", file_s, "status"]).await;
    assert!(
        out.contains("publication app_publication: 2 table(s): public.comments, public.users"),
        "{out}"
    );
    let doc: Json = serde_json::from_str(
        &native_ok(dir.path(), &["--config", file_s, "status", "--json"]).await,
    )
    .unwrap();
    assert_eq!(doc["targets"][1]["name"], "second_replica");
    assert_eq!(doc["targets"][1]["enabled"], true);

    // native run: /health converges to lag 0 on both targets.
    let port = pgrelay_testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = pgrelay(dir.path())
        .args([
            "native",
            "--config",
            file_s,
            "run",
            "--listen",
            &addr,
            "--interval",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start native run");
    sql(
        &s,
        "INSERT INTO users SELECT g, 'more' FROM generate_series(502, 600) g",
    )
    .await;
    let doc = health_until(&addr, "lag never reached 0 on both targets", |code, d| {
        code == 200
            && d["targets"].as_array().is_some_and(|ts| {
                ts.len() == 2
                    && ts
                        .iter()
                        .all(|t| t["lag_bytes"] == 0 && t["lag_seconds"] == 0.0)
            })
    })
    .await;
    assert_eq!(
        doc["publication"]["tables"],
        serde_json::json!(["public.comments", "public.users"])
    );
    assert_eq!(doc["targets"][0]["worker_running"], true);
    assert_eq!(doc["targets"][0]["tables"][1]["state_name"], "ready");
    let (code, metrics) = http_get(&addr, "/metrics").await.expect("/metrics");
    assert_eq!(code, 200);
    for needle in [
        "pgrelay_lag_bytes{target=\"primary_replica\"}",
        "pgrelay_lag_seconds{target=\"second_replica\"}",
        "pgrelay_subscription_enabled{target=\"second_replica\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
    for t in [&a, &b] {
        wait_for(t, "SELECT count(*) FROM users", "600", "rows while running").await;
    }

    // SIGHUP reconciles (nothing to do, but a new reconcile is recorded).
    let count = doc["last_reconcile"]["count"].as_u64().unwrap();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGHUP) };
    health_until(&addr, "SIGHUP did not reconcile", |_, d| {
        d["last_reconcile"]["count"].as_u64() > Some(count)
    })
    .await;

    // A file that does not parse is reported (503) and the previous
    // configuration kept.
    std::fs::write(&file, "replication:\n  publication_nam: x\n").unwrap();
    let doc = health_until(&addr, "a broken file was not reported", |code, d| {
        code == 503 && d["last_reconcile"]["ok"] == false
    })
    .await;
    let message = doc["last_reconcile"]["message"].as_str().unwrap();
    assert!(message.contains("configuration not reloaded"), "{message}");
    assert!(message.contains("publication_nam"), "{message}");
    assert_eq!(doc["targets"][0]["healthy"], true);

    // A file change reconciles too: tags joins and its rows arrive.
    std::fs::write(
        &file,
        replication_yaml(&src, &t1, &t2, &["users", "comments", "tags"]),
    )
    .unwrap();
    for t in [&a, &b] {
        wait_for(
            t,
            "SELECT count(*) FROM tags",
            "2",
            "table added by a file change",
        )
        .await;
    }
    health_until(&addr, "not healthy after the change", |code, d| {
        code == 200 && d["publication"]["tables"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("native run did not stop within 30 s of SIGTERM")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains(TEST_PASSWORD), "{stderr}");

    // Everything that is published arrived: posts stopped being published
    // before any further change, so whole databases compare equal.
    assert_databases_equal(&s, &a).await;
    assert_databases_equal(&s, &b).await;

    // Re-adding a table whose target copy still holds rows: the initial
    // copy fails on duplicate keys, and apply gives up after
    // max_wait_attempts failures instead of waiting forever, leaving the
    // trigger it disabled recorded (teardown restores it below).
    sql(&a, "ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'").await;
    sql(&a, "SELECT pg_reload_conf()").await;
    std::fs::write(
        &file,
        replication_yaml(&src, &t1, &t2, &["users", "comments", "tags", "posts"]),
    )
    .unwrap();
    let run = native(dir.path(), &["--config", file_s, "apply"]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("DISABLE TRIGGER \"posts_bump\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("warning: target second_replica: table public.posts already holds rows"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("target primary_replica: the initial copy of public.posts"),
        "{}",
        run.stderr
    );
    assert_eq!(
        one(
            &a,
            "SELECT tgenabled FROM pg_trigger WHERE tgname = 'posts_bump'"
        )
        .await,
        "D"
    );

    // teardown: refused off a terminal without --yes, then complete.
    let run = native(dir.path(), &["--config", file_s, "teardown"]).await;
    assert!(!run.ok);
    assert!(
        run.stdout
            .contains("DROP SUBSCRIPTION \"primary_subscription\""),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert_eq!(one(&a, "SELECT count(*) FROM pg_subscription").await, "1");
    native_ok(dir.path(), &["--config", file_s, "teardown", "--yes"]).await;
    for t in [&a, &b] {
        assert_eq!(one(t, "SELECT count(*) FROM pg_subscription").await, "0");
    }
    assert_eq!(
        one(&s, "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)").await,
        "0"
    );
    assert_eq!(
        one(
            &a,
            "SELECT tgenabled FROM pg_trigger WHERE tgname = 'posts_bump'"
        )
        .await,
        "O",
        "teardown did not restore the trigger"
    );
    let out = native_ok(dir.path(), &["--config", file_s, "teardown", "--yes"]).await;
    assert!(out.starts_with("nothing to tear down"), "{out}");
    let run = native(dir.path(), &["--config", file_s, "status"]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("publication app_publication: missing on the source"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("subscription second_subscription missing"),
        "{}",
        run.stdout
    );
}

/// pgrelay's own YAML (shared with the streamer): globs, the streamer's
/// `apply:` section ignored, found through $PGRELAY_CONFIG, and
/// `enable_initial_sync: false` (only changes made after subscribing
/// arrive). Also: the `replication:` format from $REPLICATION_CONFIG as
/// JSON, and exit 2 for a configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_format_with_globs_and_no_initial_copy() {
    let majors = pgrelay_testkit::majors();
    let (Some(&lo), Some(&hi)) = (majors.first(), majors.last()) else {
        return;
    };
    let src = Cluster::start(hi);
    let tgt = Cluster::start(lo);
    let s = src.connect("postgres").await;
    let t = tgt.connect("postgres").await;
    let schema = "CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY, total numeric(10,2)); \
                  CREATE TABLE sales.audit_log (id int PRIMARY KEY); \
                  CREATE TABLE public.misc (id int PRIMARY KEY); \
                  CREATE TABLE sales.events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
                  CREATE TABLE sales.events_2024 PARTITION OF sales.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')";
    sql(&s, schema).await;
    sql(&t, schema).await;
    sql(
        &s,
        "INSERT INTO sales.orders VALUES (1, 9.99); INSERT INTO sales.audit_log VALUES (1)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source: {{url: '{}', publication: own_pub, slot: streamer_slot}}\n\
         targets:\n  - {{name: eu, url: '{}'}}\n\
         tables: {{include: ['sales.*'], exclude: ['sales.audit_*']}}\n\
         native: {{enable_initial_sync: false, max_wait_attempts: 3, wait_interval: 1s}}\n\
         apply: {{batch_size: 1000, whatever: [1, 2]}}\n",
        src.superuser_url("postgres"),
        tgt.superuser_url("postgres"),
    );
    let file = dir.path().join("elsewhere.yml");
    std::fs::write(&file, &yaml).unwrap();
    let mut cmd = pgrelay(dir.path());
    cmd.env("PGRELAY_CONFIG", &file).args(["native", "apply"]);
    let run = output(cmd).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("FOR TABLE \"sales\".\"events\", \"sales\".\"orders\";"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("copy_data = false"), "{}", run.stdout);
    // Subscribed without a copy: the old row stays behind, new ones flow.
    wait_for(
        &t,
        "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate = 'r'",
        "2",
        "ready",
    )
    .await;
    sql(
        &s,
        "INSERT INTO sales.orders VALUES (2, 1.50); INSERT INTO sales.events VALUES (7, '2024-05-01')",
    )
    .await;
    wait_for(
        &t,
        "SELECT count(*) FROM sales.events_2024",
        "1",
        "row of a partition",
    )
    .await;
    wait_for(
        &t,
        "SELECT string_agg(id::text, ',') FROM sales.orders",
        "2",
        "new row only",
    )
    .await;
    // status --json on these majors: healthy (exit 0) once the worker
    // runs and the slot is confirmed, with the LSNs filled in.
    let deadline = Instant::now() + Duration::from_secs(120);
    let doc: Json = loop {
        let mut cmd = pgrelay(dir.path());
        cmd.env("PGRELAY_CONFIG", &file)
            .args(["native", "status", "--json"]);
        let run = output(cmd).await;
        let doc: Json = serde_json::from_str(&run.stdout).expect("status --json is JSON");
        if run.ok {
            break doc;
        }
        assert!(Instant::now() < deadline, "never healthy: {doc:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let eu = &doc["targets"][0];
    assert_eq!(eu["subscription"], "pgrelay_eu");
    assert!(
        eu["received_lsn"].is_string() && eu["confirmed_flush_lsn"].is_string(),
        "{doc:#}"
    );
    assert!(
        eu["lag_bytes"].is_i64() && eu["lag_seconds"].is_f64(),
        "{doc:#}"
    );
    assert_eq!(
        doc["publication"]["tables"],
        serde_json::json!(["sales.events", "sales.orders"])
    );

    // A new table matching the glob joins on the next apply.
    sql(&s, "CREATE TABLE sales.refunds (id int PRIMARY KEY)").await;
    sql(&t, "CREATE TABLE sales.refunds (id int PRIMARY KEY)").await;
    let mut cmd = pgrelay(dir.path());
    cmd.env("PGRELAY_CONFIG", &file).args(["native", "apply"]);
    let run = output(cmd).await;
    assert!(
        run.stdout.contains("ADD TABLE \"sales\".\"refunds\""),
        "{}{}",
        run.stdout,
        run.stderr
    );

    // $REPLICATION_CONFIG as JSON (the replication: format), with a typo:
    // exit 2 naming the key.
    let json = format!(
        r#"{{"replication": {{"publication_name": "own_pub", "source": {{"host": "127.0.0.1", "port": {}, "user": "postgres", "database": "postgres"}},
            "targets": [{{"name": "eu", "subscription_name": "pgrelay_eu", "host": "127.0.0.1", "port": {}, "user": "postgres", "database": "postgres"}}],
            "tables": ["sales.orders", "sales.refunds", "sales.events"], "setings": {{}}}}}}"#,
        src.port(),
        tgt.port()
    );
    let mut cmd = pgrelay(dir.path());
    cmd.env("REPLICATION_CONFIG", &json)
        .args(["native", "status"]);
    let run = output(cmd).await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("setings"), "{}", run.stderr);
    let mut cmd = pgrelay(dir.path());
    cmd.env(
        "REPLICATION_CONFIG",
        json.replace("\"setings\"", "\"settings\""),
    )
    .args(["native", "apply"]);
    let run = output(cmd).await;
    assert!(
        run.ok && run.stdout.starts_with("nothing to do"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let mut cmd = pgrelay(dir.path());
    cmd.env("PGRELAY_CONFIG", &file)
        .args(["native", "teardown", "--yes"]);
    assert!(output(cmd).await.ok);
    assert_eq!(
        one(&s, "SELECT count(*) FROM pg_replication_slots").await,
        "0"
    );
}

/// Preconditions: a source without `wal_level = logical` is refused with
/// the setting to change (exit 1, nothing created); an unreachable server
/// is given up after `max_wait_attempts` (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_settings_are_checked_and_unreachable_servers_exit_2() {
    let Some(&major) = pgrelay_testkit::majors().first() else {
        return;
    };
    let pg = Cluster::builder(major)
        .setting("wal_level", "replica")
        .start();
    pg.create_database("tgt");
    let c = pg.connect("postgres").await;
    sql(&c, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgrelay.yml");
    let yaml = |source_port: u16| {
        format!(
            "source: {{url: 'postgres://postgres@127.0.0.1:{source_port}/postgres', publication: p}}\n\
             targets: [{{name: t1, url: '{}'}}]\n\
             tables: [t]\n\
             native: {{max_wait_attempts: 2, wait_interval: 100ms}}\n",
            pg.superuser_url("tgt")
        )
    };
    std::fs::write(&file, yaml(pg.port())).unwrap();
    // Found as ./pgrelay.yml.
    let run = native(dir.path(), &["apply"]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("wal_level is replica; set wal_level = logical"),
        "{}",
        run.stderr
    );
    assert_eq!(one(&c, "SELECT count(*) FROM pg_publication").await, "0");
    std::fs::write(&file, yaml(pgrelay_testkit::free_port())).unwrap();
    let run = native(dir.path(), &["apply"]).await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("source (postgresql://postgres@127.0.0.1:"),
        "{}",
        run.stderr
    );
}
