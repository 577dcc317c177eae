//! Connecting and authenticating against real servers, every major 14–18.
//!
//! One TLS-enabled cluster per major covers the whole matrix: trust over
//! TCP and over the Unix socket, md5, SCRAM-SHA-256, the REPLICATION role,
//! TLS with verify-full (by name and by IP), verify-full against a name the
//! certificate does not carry (fails) versus verify-ca (passes), an unknown
//! CA, require without a root certificate, client-certificate login,
//! SCRAM-SHA-256-PLUS with channel_binding=require (and its refusal for md5
//! and plain TCP), wrong and missing passwords, and the password file.

mod common;

use std::path::Path;

use pgrelay_source::{Config, ReplicationClient, SourceError};
use pgrelay_testkit::{
    Cluster, TestCa, CERT_ROLE, MD5_ROLE, REPLICATION_ROLE, SCRAM_ROLE, SUPERUSER, TEST_PASSWORD,
};

fn config(conninfo: &str, home: &Path) -> Config {
    common::isolated_config(conninfo, home)
}

async fn connect(conninfo: &str, home: &Path) -> Result<ReplicationClient, SourceError> {
    ReplicationClient::connect(&config(conninfo, home)).await
}

async fn scalar(client: &mut ReplicationClient, sql: &str) -> String {
    common::repl_value(client, sql)
        .await
        .unwrap_or_else(|| panic!("{sql}: no value"))
}

async fn must_connect(conninfo: &str, home: &Path) -> ReplicationClient {
    connect(conninfo, home)
        .await
        .unwrap_or_else(|e| panic!("{conninfo}: {e}"))
}

const SSL_IN_USE: &str = "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

pgrelay_testkit::per_major!(auth_matrix, |major| async move {
    let pg = Cluster::builder(major).tls().start();
    let tls = pg.tls().expect("TLS cluster");
    // Replication connections need the REPLICATION attribute; the password
    // roles keep their authentication methods.
    pg.execute_blocking(
        "postgres",
        &format!("ALTER ROLE {MD5_ROLE} REPLICATION; ALTER ROLE {SCRAM_ROLE} REPLICATION; ALTER ROLE {CERT_ROLE} REPLICATION"),
    );
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let port = pg.port();
    let ca = tls.ca_file.display().to_string();
    let tcp = |role: &str, extra: &str| {
        format!("host=127.0.0.1 port={port} user={role} dbname=postgres {extra}")
    };
    let with_pw = |role: &str, extra: &str| tcp(role, &format!("password={TEST_PASSWORD} {extra}"));

    // trust, TCP without TLS.
    let mut c = must_connect(
        &tcp(SUPERUSER, "sslmode=disable application_name=auth-test"),
        home,
    )
    .await;
    assert_eq!(c.server_major(), major);
    assert!(c.server_version().starts_with(&major.to_string()));
    assert!(!c.is_tls());
    assert!(c.backend_pid() > 0);
    assert_eq!(scalar(&mut c, "SELECT current_user").await, SUPERUSER);
    assert_eq!(scalar(&mut c, "SHOW application_name").await, "auth-test");
    c.close().await.expect("close");

    // trust over the Unix socket, given as a URL with an encoded path.
    let dir = pg.socket_dir().display().to_string().replace('/', "%2F");
    let mut c = must_connect(
        &format!("postgresql://{SUPERUSER}@{dir}:{port}/postgres"),
        home,
    )
    .await;
    assert_eq!(scalar(&mut c, "SELECT current_user").await, SUPERUSER);
    assert!(!c.is_tls(), "Unix sockets are never encrypted");

    // md5 and SCRAM-SHA-256, plain TCP.
    for role in [MD5_ROLE, SCRAM_ROLE] {
        let mut c = must_connect(&with_pw(role, "sslmode=disable"), home).await;
        assert_eq!(scalar(&mut c, "SELECT current_user").await, role);
    }

    // The REPLICATION role runs replication commands.
    let mut c = must_connect(&with_pw(REPLICATION_ROLE, "sslmode=disable"), home).await;
    let id = c.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(id.dbname.as_deref(), Some("postgres"));
    assert!(id.xlog_pos.is_valid());

    // prefer (the default) uses TLS when the server offers it.
    let mut c = must_connect(&with_pw(SCRAM_ROLE, ""), home).await;
    assert!(c.is_tls());
    assert_eq!(scalar(&mut c, SSL_IN_USE).await, "true");

    // verify-full by name and by IP: the certificate has both.
    for host in ["localhost", "127.0.0.1"] {
        let conninfo = format!(
            "host={host} port={port} user={SUPERUSER} dbname=postgres sslmode=verify-full sslrootcert={ca}"
        );
        let mut c = must_connect(&conninfo, home).await;
        assert!(c.is_tls());
        assert_eq!(scalar(&mut c, SSL_IN_USE).await, "true");
    }

    // A name the certificate does not carry: verify-full refuses,
    // verify-ca (chain only) accepts. hostaddr avoids needing DNS.
    let other_name = |mode: &str| {
        format!(
            "host=db.not-in-cert.example hostaddr=127.0.0.1 port={port} user={SUPERUSER} \
             dbname=postgres sslmode={mode} sslrootcert={ca}"
        )
    };
    let err = connect(&other_name("verify-full"), home)
        .await
        .expect_err("wrong name accepted");
    assert!(matches!(err, SourceError::Tls { .. }), "{err:?}");
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains("db.not-in-cert.example") && text.contains("verify-full"),
        "{text}"
    );
    let mut c = must_connect(&other_name("verify-ca"), home).await;
    assert_eq!(scalar(&mut c, SSL_IN_USE).await, "true");

    // A CA that did not sign the server certificate.
    let stranger = TestCa::new();
    let stranger_file = home.join("stranger.crt");
    std::fs::write(&stranger_file, stranger.cert_pem()).expect("write CA");
    let err = connect(
        &tcp(
            SUPERUSER,
            &format!("sslmode=verify-ca sslrootcert={}", stranger_file.display()),
        ),
        home,
    )
    .await
    .expect_err("unknown CA accepted");
    assert!(matches!(err, SourceError::Tls { .. }), "{err:?}");
    // verify-full needs a root certificate.
    let err = connect(&tcp(SUPERUSER, "sslmode=verify-full"), home)
        .await
        .expect_err("no CA");
    assert!(err.to_string().contains("sslrootcert"), "{err}");

    // require without a root certificate encrypts without verifying.
    let mut c = must_connect(&tcp(SUPERUSER, "sslmode=require"), home).await;
    assert_eq!(scalar(&mut c, SSL_IN_USE).await, "true");

    // Client certificate login (pg_hba `cert`).
    let client_cert = tls.ca.issue_client(CERT_ROLE, home);
    let cert_conninfo = format!(
        "host=localhost port={port} user={CERT_ROLE} dbname=postgres sslmode=verify-full \
         sslrootcert={ca} sslcert={} sslkey={}",
        client_cert.cert.display(),
        client_cert.key.display()
    );
    let mut c = must_connect(&cert_conninfo, home).await;
    assert_eq!(scalar(&mut c, "SELECT current_user").await, CERT_ROLE);
    // Without the certificate the cert role cannot log in.
    let no_cert = format!(
        "host=localhost port={port} user={CERT_ROLE} dbname=postgres sslmode=verify-ca sslrootcert={ca}"
    );
    let err = connect(&no_cert, home)
        .await
        .expect_err("cert role without certificate");
    assert!(!err.is_transient(), "{err}");

    // SCRAM-SHA-256-PLUS: channel binding required and honoured.
    let mut c = must_connect(
        &with_pw(
            SCRAM_ROLE,
            &format!("sslmode=verify-ca sslrootcert={ca} channel_binding=require"),
        ),
        home,
    )
    .await;
    assert_eq!(scalar(&mut c, "SELECT current_user").await, SCRAM_ROLE);
    // md5 cannot bind to the channel; plain TCP has no channel.
    let err = connect(
        &with_pw(MD5_ROLE, "sslmode=require channel_binding=require"),
        home,
    )
    .await
    .expect_err("md5 with channel_binding=require");
    assert!(matches!(err, SourceError::Authentication { .. }), "{err:?}");
    assert!(err.to_string().contains("channel_binding=require"), "{err}");
    let err = connect(
        &tcp(SUPERUSER, "sslmode=require channel_binding=require"),
        home,
    )
    .await
    .expect_err("trust with channel_binding=require");
    assert!(err.to_string().contains("without channel binding"), "{err}");

    // A wrong password: fatal, names user and host, never the password.
    for (role, extra) in [
        (SCRAM_ROLE, "sslmode=disable"),
        (MD5_ROLE, "sslmode=disable"),
        (SCRAM_ROLE, "sslmode=require"),
    ] {
        let wrong = tcp(role, &format!("password=not-{TEST_PASSWORD} {extra}"));
        let err = connect(&wrong, home)
            .await
            .expect_err("wrong password accepted");
        let text = err.to_string();
        assert!(
            matches!(&err, SourceError::AuthenticationFailed { sqlstate, .. } if sqlstate.as_str() == "28P01"),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert!(text.contains(&format!("\"{role}\"")), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(
            !text.contains(TEST_PASSWORD) && !format!("{err:?}").contains(TEST_PASSWORD),
            "{text}"
        );
    }

    // No password anywhere: a clear client-side error.
    let err = connect(&tcp(SCRAM_ROLE, "sslmode=disable"), home)
        .await
        .expect_err("no password");
    assert!(matches!(err, SourceError::Authentication { .. }), "{err:?}");
    assert!(err.to_string().contains("none was given"), "{err}");

    // The password file: used when private, ignored when group-readable.
    {
        use std::os::unix::fs::PermissionsExt;
        let passfile = home.join(".pgpass");
        std::fs::write(
            &passfile,
            format!("# test\nother:*:*:*:nope\n127.0.0.1:{port}:*:{SCRAM_ROLE}:{TEST_PASSWORD}\n"),
        )
        .expect("write pgpass");
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut c = must_connect(&tcp(SCRAM_ROLE, "sslmode=disable"), home).await;
        assert_eq!(scalar(&mut c, "SELECT current_user").await, SCRAM_ROLE);
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(connect(&tcp(SCRAM_ROLE, "sslmode=disable"), home)
            .await
            .is_err());
    }

    // Several hosts: a dead one first, then the server.
    let dead = pgrelay_testkit::free_port();
    let mut c = must_connect(
        &format!("host=127.0.0.1,127.0.0.1 port={dead},{port} user={SUPERUSER} dbname=postgres sslmode=disable"),
        home,
    )
    .await;
    assert_eq!(c.target().port, port);
    assert_eq!(scalar(&mut c, "SELECT 1").await, "1");
    let err = connect(
        &format!("host=127.0.0.1,127.0.0.1 port={dead},{dead} user={SUPERUSER} sslmode=disable connect_timeout=5"),
        home,
    )
    .await
    .expect_err("nobody listens");
    assert!(
        matches!(err, SourceError::ConnectFailed { ref attempts } if attempts.len() == 2),
        "{err:?}"
    );
    assert!(err.is_transient(), "refused connections are transient");
});
