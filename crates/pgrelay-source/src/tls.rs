//! TLS for replication connections, with libpq's `sslmode` semantics, on
//! rustls (ring provider).
//!
//! Job: build the rustls client configuration for a [`Target`] and wrap a
//! TCP stream after the server accepted an SSLRequest; compute the
//! `tls-server-end-point` channel binding data for SCRAM-SHA-256-PLUS.
//!
//! Invariants (libpq's rules):
//! * `verify-ca` checks the certificate chain against `sslrootcert` but not
//!   the host name (a custom verifier that accepts exactly the "not valid
//!   for this name" failure after the chain has been verified);
//!   `verify-full` checks both, against `host` (not `hostaddr`), matching IP
//!   addresses against the certificate's IP SANs.
//! * `require`, `prefer` and `allow` encrypt without verifying, unless the
//!   root certificate file exists (explicit `sslrootcert` or the default
//!   `~/.postgresql/root.crt`), in which case they verify like `verify-ca`.
//!   `verify-ca`/`verify-full` without that file is an error.
//! * A client certificate is sent when `sslcert` (default
//!   `~/.postgresql/postgresql.crt`) exists; its key must then exist and
//!   must not be readable by group or others (0640 is allowed for
//!   root-owned keys), as libpq insists.
//! * SNI carries the host name when it is a name and `sslsni=1`; the ALPN
//!   protocol is `postgresql`, as libpq 17+ sends.
//!
//! PostgreSQL reference: libpq "SSL Support" (libpq-ssl), "SSLRequest" in
//! "Message Flow" (protocol-flow), and RFC 5929 section 4 for
//! `tls-server-end-point` as used by "SCRAM-SHA-256 Authentication"
//! (sasl-scram-sha-256).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{Config, Host, SslMode, Target};
use crate::error::SourceError;

/// A TLS configuration ready to use for one target.
pub(crate) struct TlsSetup {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration for `target` under `config.sslmode`.
pub(crate) fn setup(config: &Config, target: &Target) -> Result<TlsSetup, SourceError> {
    let tls_err = |message: String| SourceError::Tls {
        target: target.to_string(),
        message,
    };
    let provider = provider();
    let root_file = config.sslrootcert.as_deref().filter(|p| p.exists());
    let verifier: Arc<dyn ServerCertVerifier> = match (config.sslmode, root_file) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            let shown = config
                .sslrootcert
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.postgresql/root.crt".to_owned());
            return Err(tls_err(format!(
                "sslmode={} needs the CA certificate that signed the server's certificate, but \
                 the root certificate file {shown} does not exist; set sslrootcert=/path/to/ca.crt",
                config.sslmode.as_str()
            )));
        }
        (mode, Some(file)) => {
            let roots = load_roots(file).map_err(tls_err)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| tls_err(format!("cannot use {}: {e}", file.display())))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
        (_, None) => Arc::new(NoVerification {
            provider: provider.clone(),
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let client_cert = match config.sslcert.as_deref().filter(|p| p.exists()) {
        Some(cert_file) => {
            Some(load_client_cert(cert_file, config.sslkey.as_deref()).map_err(tls_err)?)
        }
        None => None,
    };
    let mut tls = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err(format!("cannot use the client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    tls.enable_sni = config.sslsni;
    let name = match (&target.host, target.hostaddr) {
        (Host::Tcp(name), _) if !name.is_empty() => name.clone(),
        (_, Some(addr)) => addr.to_string(),
        _ => {
            return Err(tls_err(
                "TLS is only used over TCP; Unix socket connections are never encrypted".into(),
            ))
        }
    };
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| tls_err(format!("{name:?} is not a valid host name for TLS")))?;
    Ok(TlsSetup {
        config: Arc::new(tls),
        server_name,
    })
}

fn load_roots(file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("cannot parse sslrootcert {}: {e}", file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate in sslrootcert {}: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no PEM certificates",
            file.display()
        ));
    }
    Ok(roots)
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_client_cert(cert_file: &Path, key_file: Option<&Path>) -> Result<ClientCert, String> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read sslcert {}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "sslcert {} holds no PEM certificate",
            cert_file.display()
        ));
    }
    let Some(key_file) = key_file.filter(|k| k.exists()) else {
        return Err(format!(
            "the client certificate {} is present but its private key is not; set sslkey",
            cert_file.display()
        ));
    };
    check_key_permissions(key_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read sslkey {}: {e}", key_file.display()))?;
    Ok((chain, key))
}

/// libpq refuses keys that others can read.
fn check_key_permissions(key_file: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(key_file)
            .map_err(|e| format!("cannot read sslkey {}: {e}", key_file.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        let ok = if meta.uid() == 0 {
            mode & 0o137 == 0
        } else {
            mode & 0o077 == 0
        };
        if !ok {
            return Err(format!(
                "private key file {} has group or world access (mode {mode:04o}); it must be \
                 u=rw (0600) or less, or u=rw,g=r (0640) or less if owned by root",
                key_file.display()
            ));
        }
    }
    Ok(())
}

/// `verify-ca`: the chain must verify; the name may not match.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last, so a name error
        // means the chain was fine.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `require`/`prefer`/`allow` without a root certificate: encrypt, accept
/// any certificate, but still check that the server holds its key.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `tls-server-end-point` channel binding data (RFC 5929 section 4.1): the
/// server certificate hashed with the hash of its signature algorithm, MD5
/// and SHA-1 replaced by SHA-256. Like the PostgreSQL server, algorithms
/// without a single hash (RSASSA-PSS, EdDSA) are refused.
pub(crate) fn server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    let oid = signature_algorithm_oid(cert_der).ok_or_else(|| {
        "cannot read the signature algorithm of the server certificate".to_owned()
    })?;
    // DER contents of the OIDs (1.2.840.113549.1.1.x and 1.2.840.10045.4.x).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let algorithm = match oid {
        [rsa @ .., 4 | 5 | 11 | 14] if rsa == RSA => &ring::digest::SHA256,
        [rsa @ .., 12] if rsa == RSA => &ring::digest::SHA384,
        [rsa @ .., 13] if rsa == RSA => &ring::digest::SHA512,
        o if o == ECDSA_SHA1 => &ring::digest::SHA256,
        [ec @ .., 1 | 2] if ec == ECDSA_SHA2 => &ring::digest::SHA256,
        [ec @ .., 3] if ec == ECDSA_SHA2 => &ring::digest::SHA384,
        [ec @ .., 4] if ec == ECDSA_SHA2 => &ring::digest::SHA512,
        _ => {
            return Err(
                "the server certificate's signature algorithm has no hash usable for channel \
                 binding (e.g. RSASSA-PSS or Ed25519); use channel_binding=disable or a \
                 certificate signed with RSA or ECDSA"
                    .to_owned(),
            )
        }
    };
    Ok(ring::digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// The OID contents of `Certificate.signatureAlgorithm.algorithm`:
/// `SEQUENCE { tbsCertificate, SEQUENCE { OID, params }, BIT STRING }`.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_tlv(cert)?;
    let (tag, alg, _) = der_tlv(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_tlv(alg)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_der(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let p256 = cert_der(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point(&p256).expect("p256"),
            ring::digest::digest(&ring::digest::SHA256, &p256).as_ref()
        );
        let p384 = cert_der(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(server_end_point(&p384).expect("p384").len(), 48);
        let ed = cert_der(&rcgen::PKCS_ED25519);
        assert!(server_end_point(&ed)
            .expect_err("ed25519")
            .contains("channel_binding=disable"));
        assert!(server_end_point(b"\x30\x03\x02\x01\x00").is_err());
        assert!(server_end_point(b"").is_err());
    }

    #[test]
    fn setup_follows_sslmode() {
        let parse = |s: &str| {
            crate::config::Config::parse_with_env(s, |k| {
                (k == "HOME").then(|| "/nonexistent".into())
            })
            .expect("config")
        };
        let c = parse("host=db.example user=u sslmode=require sslsni=0");
        let s = setup(&c, &c.targets[0]).expect("require without a root certificate");
        assert!(!s.config.enable_sni);
        assert_eq!(s.config.alpn_protocols, vec![b"postgresql".to_vec()]);
        assert_eq!(s.server_name.to_str(), "db.example");
        let c = parse("host=name.example hostaddr=10.1.2.3 user=u sslmode=verify-full");
        let err = setup(&c, &c.targets[0])
            .err()
            .expect("verify-full without CA");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        assert!(!err.is_transient());
        let c = parse("host=/tmp user=u sslmode=require");
        assert!(setup(&c, &c.targets[0]).is_err(), "TLS over a Unix socket");
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "no certificates here").expect("write");
        let c = parse(&format!(
            "host=h user=u sslmode=verify-ca sslrootcert={}",
            empty.display()
        ));
        let err = setup(&c, &c.targets[0]).err().expect("empty CA file");
        assert!(err.to_string().contains("no PEM certificates"), "{err}");
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_tlv(b"\x04\x02ab!"), Some((4, &b"ab"[..], &b"!"[..])));
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(der_tlv(&long).map(|(_, c, _)| c.len()), Some(256));
        assert_eq!(der_tlv(b"\x04\x05ab"), None);
        assert_eq!(der_tlv(b"\x04\x80"), None);
    }
}
