//! Self-test of the test kit against a real server of every major 14–18.
//!
//! Everything later tests rely on is exercised here once per major: start,
//! SQL, restart, crash and recovery, a streaming standby and its promotion,
//! TLS with `verify-full` semantics, SCRAM and MD5 logins and a wrong
//! password, the fault proxy (cut, refuse, latency, stall) as a client sees
//! it, the workloads, and the comparison spotting a single changed row.

use std::time::{Duration, Instant};

use pgrelay_testkit::{
    compare_databases, connect_plain, connect_tls, describe, unique_name, Cluster, FaultProxy,
    PgInstall, TableDifference, TestCa, Workload, MD5_ROLE, REPLICATION_ROLE, SCRAM_ROLE,
    TEST_PASSWORD,
};

async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0)
}

pgrelay_testkit::per_major!(lifecycle, |major| async move {
    let mut pg = Cluster::builder(major)
        .setting("wal_sender_timeout", "'5s'")
        .start();
    let c = pg.connect("postgres").await;
    let version: String = one(&c, "SELECT current_setting('server_version_num')").await;
    assert_eq!(version.len(), 6, "server_version_num {version}");
    assert_eq!(&version[..2], major.to_string(), "wrong major running");
    assert_eq!(one(&c, "SHOW wal_level").await, "logical");
    assert_eq!(one(&c, "SHOW wal_sender_timeout").await, "5s");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    drop(c);

    pg.restart();
    let c = pg.connect("postgres").await;
    assert_eq!(one(&c, "SELECT v FROM t WHERE id = 1").await, "a");
    c.batch_execute("INSERT INTO t VALUES (2, 'committed before the crash')")
        .await
        .unwrap();

    // The connection must see the crash, and recovery must keep the commit.
    pg.crash();
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "client survived a crash"
    );
    pg.start_again();
    assert!(
        pg.log().contains("database system was interrupted")
            || pg.log().contains("not properly shut down"),
        "no crash recovery in the server log"
    );
    let c = pg.connect("postgres").await;
    assert_eq!(one(&c, "SELECT count(*)::text FROM t").await, "2");

    // A standby streams, then takes over.
    // start_standby restarts the primary, so sessions end.
    let standby = pg.start_standby();
    assert!(c.is_closed() || c.simple_query("SELECT 1").await.is_err());
    let c = pg.connect("postgres").await;
    c.batch_execute("INSERT INTO t VALUES (3, 'via WAL')")
        .await
        .unwrap();
    let s = standby.connect("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while one(&s, "SELECT count(*)::text FROM t").await != "3" {
        assert!(
            Instant::now() < deadline,
            "standby never replayed the insert"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(one(&s, "SELECT pg_is_in_recovery()::text").await, "true");
    standby.promote();
    assert_eq!(one(&s, "SELECT pg_is_in_recovery()::text").await, "false");
    s.batch_execute("INSERT INTO t VALUES (4, 'written on the promoted standby')")
        .await
        .unwrap();
});

pgrelay_testkit::per_major!(auth_and_tls, |major| async move {
    let pg = Cluster::builder(major).tls().start();
    let tls = pg.tls().expect("TLS cluster");

    // verify-full: the chain and the host name are checked, for the name
    // and the IP form alike.
    for host in ["localhost", "127.0.0.1"] {
        let conninfo = format!(
            "host={host} port={} user=postgres dbname=postgres sslmode=require",
            pg.port()
        );
        let c = connect_tls(&conninfo, &tls.ca)
            .await
            .unwrap_or_else(|e| panic!("TLS connection to {host} failed: {e}"));
        assert_eq!(
            one(
                &c,
                "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            .await,
            "true"
        );
    }
    let stranger = TestCa::new();
    let conninfo = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=require",
        pg.port()
    );
    assert!(
        connect_tls(&conninfo, &stranger).await.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    // libpq's own verify-full, with Debian's psql 15: built with OpenSSL,
    // unlike the pgserver wheel's tools.
    {
        let out = std::process::Command::new(PgInstall::require(15).tool("psql"))
            .arg(format!(
                "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
                pg.port(),
                tls.ca_file.display()
            ))
            .args(["-XAtc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
            .output()
            .expect("run psql");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "t",
            "psql verify-full: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let c = pg.connect("postgres").await;
    for (role, prefix) in [
        (SCRAM_ROLE, "SCRAM-SHA-256$"),
        (MD5_ROLE, "md5"),
        (REPLICATION_ROLE, "SCRAM-SHA-256$"),
    ] {
        let stored = one(
            &c,
            &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
        )
        .await;
        assert!(
            stored.starts_with(prefix),
            "{role} password stored as {stored:.12}"
        );
        let u = pg
            .connect_as(role, "postgres")
            .await
            .unwrap_or_else(|e| panic!("{role} login failed: {}", describe(&e)));
        assert_eq!(one(&u, "SELECT current_user::text").await, role);
    }
    assert_eq!(
        one(&c, &format!("SELECT (rolreplication AND NOT rolsuper)::text FROM pg_roles WHERE rolname = '{REPLICATION_ROLE}'")).await,
        "true"
    );
    let wrong = format!(
        "host=127.0.0.1 port={} user={SCRAM_ROLE} dbname=postgres password=not-{TEST_PASSWORD}",
        pg.port()
    );
    let Err(err) = connect_plain(&wrong).await else {
        panic!("wrong password accepted");
    };
    assert!(
        describe(&err).contains("password authentication failed"),
        "unexpected error: {}",
        describe(&err)
    );
});

pgrelay_testkit::per_major!(proxy_faults, |major| async move {
    let pg = Cluster::start(major);
    let proxy = FaultProxy::start(([127, 0, 0, 1], pg.port()).into());
    let via = |port: u16| format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");

    let c = connect_plain(&via(proxy.port()))
        .await
        .expect("connect through the proxy");
    assert_eq!(one(&c, "SELECT 'through'").await, "through");
    assert_eq!(proxy.open_connections(), 1);

    proxy.cut_all();
    let err = c
        .simple_query("SELECT 1")
        .await
        .expect_err("query survived a cut");
    assert!(c.is_closed(), "client did not notice the cut: {err}");

    proxy.refuse_for(Duration::from_millis(1500));
    assert!(
        connect_plain(&via(proxy.port())).await.is_err(),
        "connection not refused"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let c = connect_plain(&via(proxy.port()))
        .await
        .expect("connect after refusal ended");

    proxy.set_latency(Duration::from_millis(200));
    let t = Instant::now();
    one(&c, "SELECT 'slow'").await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "latency not applied: {:?}",
        t.elapsed()
    );
    proxy.set_latency(Duration::ZERO);

    proxy.stall();
    let stalled =
        tokio::time::timeout(Duration::from_millis(500), c.simple_query("SELECT 1")).await;
    assert!(
        stalled.is_err(),
        "a query completed through a stalled proxy"
    );
    proxy.resume();
    assert_eq!(one(&c, "SELECT 'resumed'").await, "resumed");
});

pgrelay_testkit::per_major!(workloads_and_comparison, |major| async move {
    let pg = Cluster::start(major);
    let (a, b) = (unique_name("left"), unique_name("right"));
    pg.create_database(&a);
    pg.create_database(&b);
    let mut ca = pg.connect(&a).await;
    let mut cb = pg.connect(&b).await;

    // The same seed writes the same rows into both databases.
    for client in [&mut ca, &mut cb] {
        let mut w = Workload::new(7, 3);
        w.create_tables(client).await.unwrap();
        let stats = w.run(client, 200).await.unwrap();
        assert_eq!(stats.transactions, 200);
        assert!(
            stats.inserts > 0 && stats.updates > 0 && stats.deletes > 0,
            "{stats:?}"
        );
        client
            .batch_execute("UPDATE wl_0 SET at = '2000-01-01'; UPDATE wl_1 SET at = '2000-01-01'; UPDATE wl_2 SET at = '2000-01-01'")
            .await
            .unwrap();
    }
    let cmp = compare_databases(&ca, &cb).await.unwrap();
    assert!(cmp.is_equal(), "{cmp}");
    assert_eq!(cmp.tables_compared, 3);
    let toasted = one(
        &ca,
        "SELECT count(*)::text FROM wl_0 WHERE length(payload) > 2000",
    )
    .await;
    assert_ne!(toasted, "0", "the workload wrote no TOASTed value");

    // One changed value in one row is found, and only in its table.
    cb.batch_execute(
        "UPDATE wl_1 SET n = coalesce(n, 0) + 1 WHERE id = (SELECT min(id) FROM wl_1)",
    )
    .await
    .unwrap();
    let cmp = compare_databases(&ca, &cb).await.unwrap();
    match cmp.differences.as_slice() {
        [TableDifference::Rows { table, left, right }] => {
            assert_eq!(table, "wl_1");
            assert_eq!(left.rows, right.rows);
            assert_ne!(left.hash, right.hash);
        }
        other => panic!("expected exactly wl_1 to differ, got {other:?}"),
    }
    // A missing table is reported too.
    cb.batch_execute("DROP TABLE wl_2").await.unwrap();
    let cmp = compare_databases(&ca, &cb).await.unwrap();
    assert!(
        cmp.differences
            .contains(&TableDifference::OnlyLeft("wl_2".into())),
        "{cmp}"
    );

    // pgbench initialises and runs against every major.
    let bench = unique_name("bench");
    pg.create_database(&bench);
    pg.pgbench_init(&bench, 1);
    pg.pgbench_run(&bench, 2, 50);
    let c = pg.connect(&bench).await;
    assert_eq!(
        one(&c, "SELECT count(*)::text FROM pgbench_history").await,
        "100"
    );
});
