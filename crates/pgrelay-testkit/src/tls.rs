//! A throwaway certificate authority for TLS tests.
//!
//! Each TLS-enabled cluster gets its own CA, a server certificate valid for
//! `localhost` and `127.0.0.1` (so `sslmode=verify-full` succeeds against
//! either host form), and client certificates on demand whose common name is
//! the role they authenticate (PostgreSQL's `cert` method maps CN to role).
//! Implements the file layout of "Secure TCP/IP Connections with SSL"
//! (ssl_cert_file, ssl_key_file, ssl_ca_file) in the PostgreSQL docs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A CA with its key, able to sign more certificates.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// PEM files of one issued certificate.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pgrelay test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa { cert, key }
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, common_name: &str, sans: Vec<SanType>, dir: &Path, stem: &str) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf certificate");
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        write_private(&files.key, &key.serialize_pem());
        files
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn issue_server(&self, dir: &Path) -> CertFiles {
        let sans = vec![
            SanType::DnsName("localhost".try_into().expect("dns name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        self.issue("localhost", sans, dir, "server")
    }

    /// A client certificate whose CN is `role`.
    pub fn issue_client(&self, role: &str, dir: &Path) -> CertFiles {
        self.issue(role, Vec::new(), dir, &format!("client-{role}"))
    }

    /// A rustls client configuration trusting only this CA: rustls always
    /// checks the chain and the host name, i.e. libpq's `verify-full`.
    pub fn rustls_client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("CA certificate is valid DER");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Private keys must be 0600: libpq and the server both refuse looser ones.
fn write_private(path: &Path, pem: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    f.write_all(pem.as_bytes()).expect("write key file");
}

/// Connects over TLS trusting only `ca` (host name and chain verified, as
/// libpq's `sslmode=verify-full`), driving the connection on the current
/// runtime. `conninfo` should carry `sslmode=require` so TLS is mandatory.
pub async fn connect_tls(
    conninfo: &str,
    ca: &TestCa,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(ca.rustls_client_config());
    let (client, conn) = tokio_postgres::connect(conninfo, tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
