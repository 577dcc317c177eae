//! `pgrelay users` against a real server: roles created with a generated
//! or stdin password log in with SCRAM (and not with a wrong password),
//! the server stores only a SCRAM verifier and never sees the clear text
//! (checked in its log with `log_statement = all`), `list` shows them, and
//! dropping a role that owns a table explains the choices and changes
//! nothing, while `--drop-schema` and `--reassign-to` then work.

use std::process::{Output, Stdio};
use std::time::Duration;

use pgrelay_testkit::{connect_plain, simple_rows, Cluster};
use serde_json::Value as Json;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

async fn users(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(PGRELAY)
        .arg("users")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run pgrelay");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("pgrelay users did not finish")
        .expect("pgrelay users output")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn login(cluster: &Cluster, role: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={role} password='{}' dbname=postgres",
        cluster.port(),
        password.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_log_in_with_scram_and_drops_explain_themselves() {
    let major = *pgrelay_testkit::majors().last().expect("a major");
    // The testkit trusts every other role on 127.0.0.1; these must use SCRAM.
    let cluster = Cluster::builder(major)
        .hba_line("host all app_gen 127.0.0.1/32 scram-sha-256")
        .hba_line("host all app_stdin 127.0.0.1/32 scram-sha-256")
        .setting("log_statement", "'all'")
        .start();
    let su = cluster.superuser_url("postgres");

    let out = users(
        &[
            "create",
            "app_gen",
            "--schema",
            "app_gen",
            "--generate",
            "--primary",
            &su,
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let generated = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        generated.len(),
        24,
        "stdout is the password alone: {}",
        text(&out)
    );
    let client = connect_plain(&login(&cluster, "app_gen", &generated))
        .await
        .expect("the generated password logs in");
    client
        .batch_execute("CREATE TABLE app_gen.orders (id int PRIMARY KEY)")
        .await
        .expect("the role owns its schema");
    assert!(
        connect_plain(&login(&cluster, "app_gen", "wrong-password"))
            .await
            .is_err(),
        "a wrong password must not log in"
    );

    let password = "stdin pässword with 'quotes' \\ and spaces";
    let out = users(
        &["create", "app_stdin", "--password-stdin", "--primary", &su],
        Some(&format!("{password}\n")),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let client = connect_plain(&login(&cluster, "app_stdin", password))
        .await
        .expect("the stdin password logs in");
    let me = simple_rows(&client, "SELECT current_user").await.unwrap();
    assert_eq!(me[0][0].as_deref(), Some("app_stdin"));
    client
        .batch_execute("CREATE TABLE public.stdin_owned (id int)")
        .await
        .unwrap_or_else(|_| {
            cluster.execute_blocking(
                "postgres",
                "CREATE TABLE public.stdin_owned (id int); ALTER TABLE public.stdin_owned OWNER TO app_stdin",
            )
        });

    // Only verifiers are stored, and the clear text never reached the server.
    for role in ["app_gen", "app_stdin"] {
        let stored = cluster
            .scalar_blocking(
                "postgres",
                &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
            )
            .unwrap();
        assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    }
    let log = cluster.log();
    assert!(
        log.contains("CREATE ROLE"),
        "log_statement = all logs the DDL"
    );
    assert!(
        !log.contains(&generated) && !log.contains("pässword"),
        "clear text in the server log"
    );

    let out = users(&["list", "--json", "--primary", &su], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let roles: Json = serde_json::from_slice(&out.stdout).unwrap();
    let gen = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "app_gen")
        .unwrap_or_else(|| panic!("{roles}"));
    assert_eq!(gen["password"], "scram-sha-256");
    assert_eq!(gen["login"], true);
    assert_eq!(gen["schemas"][0], "app_gen");
    let out = users(&["list", "--primary", &su], None).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("app_stdin"),
        "{}",
        text(&out)
    );

    // A role owning a table: explained, nothing changed.
    let out = users(&["drop", "app_gen", "--primary", &su], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "app_gen.orders",
        "--reassign-to",
        "--drop-owned",
        "--drop-schema",
        "Nothing was changed",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert_eq!(
        cluster
            .scalar_blocking(
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname = 'app_gen'"
            )
            .as_deref(),
        Some("1")
    );
    let out = users(
        &["drop", "app_gen", "--drop-schema", "--primary", &su],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        cluster
            .scalar_blocking(
                "postgres",
                "SELECT count(*) FROM pg_roles r, pg_namespace n \
                 WHERE r.rolname = 'app_gen' OR n.nspname = 'app_gen'"
            )
            .as_deref(),
        Some("0")
    );
    // --reassign-to keeps the table, owned by someone else.
    let out = users(
        &[
            "drop",
            "app_stdin",
            "--reassign-to",
            "postgres",
            "--primary",
            &su,
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        cluster
            .scalar_blocking(
                "postgres",
                "SELECT tableowner FROM pg_tables WHERE tablename = 'stdin_owned'"
            )
            .as_deref(),
        Some("postgres")
    );
}
