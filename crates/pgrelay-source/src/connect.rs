//! Opening a replication connection: hosts in order, TCP or Unix socket,
//! SSLRequest negotiation, the startup message and authentication.
//!
//! Job: from a [`Config`] to a [`Session`] whose server has sent
//! ReadyForQuery on a `replication=database` connection.
//!
//! Invariants:
//! * Targets are tried in order; for TCP every resolved address is tried;
//!   `connect_timeout` bounds each target's attempt (TCP + TLS +
//!   authentication), like libpq. A single failed attempt is returned as
//!   is; several become [`SourceError::ConnectFailed`] listing each.
//! * `sslmode`: `disable` never sends SSLRequest; `allow` tries plain first
//!   and TLS if the plain attempt is rejected after connecting; `prefer`
//!   sends SSLRequest, continues in plain text if the server answers `N`,
//!   and retries in plain text if the TLS attempt is rejected; `require`
//!   and `verify-*` fail unless TLS is established. Unix sockets never use
//!   TLS, whatever sslmode says (libpq ignores it there too). A wrong
//!   password (28P01) is not retried in the other mode: the same password
//!   would be sent again.
//! * Authentication: trust, cleartext password, MD5, SCRAM-SHA-256 and
//!   SCRAM-SHA-256-PLUS (`tls-server-end-point` binding). With
//!   `channel_binding=require` anything but SCRAM-SHA-256-PLUS is refused,
//!   including the server skipping authentication. The password is looked
//!   up (connection string, `PGPASSWORD`, then the password file) only when
//!   the server asks for one, and is never logged or put in an error.
//! * The startup packet always asks for `replication=database` and
//!   `client_encoding=UTF8`.
//!
//! PostgreSQL reference: "Message Flow" (protocol-flow: Start-up,
//! SSL Session Encryption), "SASL Authentication" (sasl-authentication) and
//! libpq "SSL Support" (libpq-ssl).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use pgrelay_wire::{Cursor, ErrorResponse};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding as ScramBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{ChannelBinding, Config, Host, Password, SslMode, Target};
use crate::connection::{Connection, Socket};
use crate::error::{ConnectAttempt, SourceError};
use crate::{pgpass, tls};

/// A connection that finished startup.
pub(crate) struct Session {
    pub(crate) conn: Connection,
    pub(crate) target: Target,
    pub(crate) parameters: HashMap<String, String>,
    pub(crate) backend_pid: i32,
}

/// Tries every target in order; the first session wins.
pub(crate) async fn connect(config: &Config) -> Result<Session, SourceError> {
    if config.targets.is_empty() {
        return Err(crate::config::ConfigError::Invalid {
            message: "no host to connect to".into(),
        }
        .into());
    }
    let mut attempts = Vec::new();
    for target in &config.targets {
        let plans: &[bool] = match (&target.host, config.sslmode) {
            (Host::Unix(_), _) | (_, SslMode::Disable) => &[false],
            (_, SslMode::Allow) => &[false, true],
            (_, SslMode::Prefer) => &[true, false],
            _ => &[true],
        };
        for (i, &use_tls) in plans.iter().enumerate() {
            let attempt = attempt(config, target, use_tls);
            let result = match config.connect_timeout {
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(SourceError::ConnectTimeout {
                        target: target.to_string(),
                        timeout: limit,
                    }),
                },
                None => attempt.await,
            };
            match result {
                Ok(session) => {
                    tracing::info!(
                        target_host = %target,
                        tls = session.conn.is_tls(),
                        server_version = session.parameters.get("server_version").map(String::as_str).unwrap_or("?"),
                        backend_pid = session.backend_pid,
                        "connected for logical replication"
                    );
                    return Ok(session);
                }
                Err(error) => {
                    tracing::warn!(target_host = %target, tls = use_tls, error = %error, "connection attempt failed");
                    let fallback = i + 1 < plans.len() && worth_other_mode(&error);
                    attempts.push(ConnectAttempt {
                        target: target.to_string(),
                        tls: use_tls,
                        error: Box::new(error),
                    });
                    if !fallback {
                        break;
                    }
                }
            }
        }
    }
    if attempts.len() == 1 {
        if let Some(only) = attempts.pop() {
            return Err(*only.error);
        }
    }
    Err(SourceError::ConnectFailed { attempts })
}

/// Whether an attempt failed after the server was reached, in a way the
/// other TLS mode could avoid (libpq's allow/prefer fallback).
fn worth_other_mode(error: &SourceError) -> bool {
    match error {
        SourceError::AuthenticationFailed { sqlstate, .. } => sqlstate.as_str() != "28P01",
        SourceError::Server { .. }
        | SourceError::Tls { .. }
        | SourceError::Authentication { .. } => true,
        _ => false,
    }
}

async fn attempt(config: &Config, target: &Target, use_tls: bool) -> Result<Session, SourceError> {
    let shown = target.to_string();
    let socket = match &target.host {
        Host::Unix(_) => {
            let path = target.socket_path().unwrap_or_default();
            let unix = UnixStream::connect(&path).await.map_err(|e| {
                SourceError::io(format!("connecting to Unix socket {}", path.display()), e)
            })?;
            Socket::Unix(unix)
        }
        Host::Tcp(name) => {
            let tls_setup = if use_tls {
                Some(tls::setup(config, target)?)
            } else {
                None
            };
            let mut tcp = connect_tcp(config, target, name).await?;
            match tls_setup {
                None => Socket::Tcp(tcp),
                Some(setup) => match negotiate_ssl(&mut tcp, &shown).await? {
                    true => {
                        let connector = tokio_rustls::TlsConnector::from(setup.config);
                        let stream = connector
                            .connect(setup.server_name, tcp)
                            .await
                            .map_err(|e| tls_error(&shown, e))?;
                        Socket::Tls(Box::new(stream))
                    }
                    false if config.sslmode == SslMode::Prefer => Socket::Tcp(tcp),
                    false => {
                        return Err(SourceError::TlsRefused {
                            target: shown,
                            sslmode: config.sslmode.as_str(),
                        })
                    }
                },
            }
        }
    };
    let mut conn = Connection::new(socket, shown);
    startup(&mut conn, config, target)
        .await
        .map(|(parameters, backend_pid)| Session {
            conn,
            target: target.clone(),
            parameters,
            backend_pid,
        })
}

/// rustls reports certificate and handshake problems inside io::Error.
fn tls_error(target: &str, e: io::Error) -> SourceError {
    let is_tls = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if is_tls {
        SourceError::Tls {
            target: target.to_owned(),
            message: e.to_string(),
        }
    } else {
        SourceError::io(format!("TLS handshake with {target}"), e)
    }
}

async fn connect_tcp(
    config: &Config,
    target: &Target,
    name: &str,
) -> Result<TcpStream, SourceError> {
    let addrs: Vec<SocketAddr> = match target.hostaddr {
        Some(ip) => vec![SocketAddr::new(ip, target.port)],
        None => tokio::net::lookup_host((name, target.port))
            .await
            .map_err(|e| SourceError::io(format!("resolving host name {name:?}"), e))?
            .collect(),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no addresses");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                configure_tcp(&tcp, config).map_err(|e| {
                    SourceError::io(format!("setting socket options for {addr}"), e)
                })?;
                return Ok(tcp);
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "TCP connect failed");
                last = e;
            }
        }
    }
    Err(SourceError::io(format!("connecting to {target}"), last))
}

fn configure_tcp(tcp: &TcpStream, config: &Config) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    if config.keepalives {
        let mut ka = socket2::TcpKeepalive::new();
        if let Some(t) = config.keepalives_idle {
            ka = ka.with_time(t);
        }
        if let Some(t) = config.keepalives_interval {
            ka = ka.with_interval(t);
        }
        if let Some(n) = config.keepalives_count {
            ka = ka.with_retries(n);
        }
        sock.set_tcp_keepalive(&ka)?;
    } else {
        sock.set_keepalive(false)?;
    }
    if let Some(t) = config.tcp_user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

/// Sends SSLRequest; `true` if the server agreed. Reads exactly one byte so
/// nothing the server sends before the handshake can be smuggled into the
/// encrypted stream (CVE-2021-23222).
async fn negotiate_ssl(tcp: &mut TcpStream, target: &str) -> Result<bool, SourceError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf)
        .await
        .map_err(|e| SourceError::io(format!("sending SSLRequest to {target}"), e))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| SourceError::io(format!("reading the SSLRequest answer from {target}"), e))?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(SourceError::protocol(
            target,
            format!(
                "answer {:?} to SSLRequest (expected 'S' or 'N'); is this a PostgreSQL server?",
                char::from(other)
            ),
        )),
    }
}

/// Startup message, authentication, and the parameters up to
/// ReadyForQuery.
async fn startup(
    conn: &mut Connection,
    config: &Config,
    target: &Target,
) -> Result<(HashMap<String, String>, i32), SourceError> {
    let mut params: Vec<(&str, &str)> = vec![
        ("user", &config.user),
        ("database", &config.dbname),
        ("replication", "database"),
        ("client_encoding", "UTF8"),
    ];
    if let Some(a) = &config.application_name {
        params.push(("application_name", a));
    }
    if let Some(o) = &config.options {
        params.push(("options", o));
    }
    frontend::startup_message(params.iter().copied(), conn.wbuf()).map_err(|e| {
        SourceError::invalid("startup parameters", format!("{e}; remove NUL characters"))
    })?;
    conn.flush().await?;

    let mut auth = Auth {
        config,
        target,
        scram: None,
        plus: false,
        method: "trust",
        password_source: String::new(),
    };
    let mut parameters = HashMap::new();
    let mut backend_pid = 0;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            b'R' => auth.step(conn, &frame.body).await?,
            b'E' => {
                let resp = parse_error(conn.target(), &frame.body)?;
                return Err(if resp.code.class() == "28" {
                    SourceError::AuthenticationFailed {
                        user: config.user.clone(),
                        target: target.to_string(),
                        sqlstate: resp.code,
                        message: resp.message,
                        password_source: auth.password_source.clone(),
                    }
                } else {
                    SourceError::from_response(resp)
                });
            }
            b'S' => {
                let (k, v) = parse_parameter(conn.target(), &frame.body)?;
                parameters.insert(k, v);
            }
            b'K' => {
                let mut c = Cursor::new(&frame.body);
                backend_pid = c.i32("process id").map_err(|e| {
                    SourceError::protocol(conn.target(), format!("BackendKeyData {e}"))
                })?;
            }
            b'N' => log_notice(conn.target(), &frame.body),
            b'Z' => return Ok((parameters, backend_pid)),
            other => {
                return Err(SourceError::protocol(
                    conn.target(),
                    format!("unexpected message {:?} during startup", char::from(other)),
                ))
            }
        }
    }
}

struct Auth<'a> {
    config: &'a Config,
    target: &'a Target,
    scram: Option<ScramSha256>,
    plus: bool,
    method: &'static str,
    password_source: String,
}

impl Auth<'_> {
    fn fail(&self, message: impl Into<String>) -> SourceError {
        SourceError::Authentication {
            user: self.config.user.clone(),
            target: self.target.to_string(),
            message: message.into(),
        }
    }

    fn password(&mut self) -> Result<Password, SourceError> {
        if let Some(p) = &self.config.password {
            self.password_source = " (given by password= or PGPASSWORD)".into();
            return Ok(p.clone());
        }
        if let Some(file) = &self.config.passfile {
            if let Some(p) =
                pgpass::lookup(file, self.target, &self.config.dbname, &self.config.user)
            {
                self.password_source = format!(" (from the password file {})", file.display());
                return Ok(p);
            }
        }
        Err(self.fail(format!(
            "the server asks for a password ({} authentication) but none was given; set \
             password= in the connection string, PGPASSWORD, or a line in the password file{}",
            self.method,
            self.config
                .passfile
                .as_ref()
                .map(|f| format!(" {}", f.display()))
                .unwrap_or_default()
        )))
    }

    fn refuse_without_binding(&self) -> Result<(), SourceError> {
        if self.config.channel_binding == ChannelBinding::Require {
            return Err(self.fail(format!(
                "channel_binding=require, but the server asked for {} authentication, which \
                 cannot bind to the TLS channel; configure scram-sha-256 in pg_hba.conf or lower \
                 channel_binding",
                self.method
            )));
        }
        Ok(())
    }

    async fn step(&mut self, conn: &mut Connection, body: &Bytes) -> Result<(), SourceError> {
        let mut c = Cursor::new(body);
        let bad = |e| SourceError::protocol(conn.target(), format!("authentication request {e}"));
        let code = c.i32("authentication code").map_err(bad)?;
        match code {
            0 => {
                if self.config.channel_binding == ChannelBinding::Require && !self.plus {
                    return Err(self.fail(format!(
                        "channel_binding=require, but the server accepted us with {} \
                         authentication, without channel binding; configure scram-sha-256 in \
                         pg_hba.conf for this connection or lower channel_binding",
                        self.method
                    )));
                }
                tracing::debug!(method = self.method, "authenticated");
                Ok(())
            }
            3 => {
                self.method = "cleartext password";
                self.refuse_without_binding()?;
                let pw = self.password()?;
                frontend::password_message(pw.expose().as_bytes(), conn.wbuf())
                    .map_err(|_| self.fail("the password contains a NUL character"))?;
                conn.flush().await
            }
            5 => {
                self.method = "md5";
                self.refuse_without_binding()?;
                let salt: [u8; 4] = c
                    .bytes(4, "md5 salt")
                    .map_err(bad)?
                    .as_ref()
                    .try_into()
                    .map_err(|_| SourceError::protocol(conn.target(), "short md5 salt"))?;
                let pw = self.password()?;
                let hash = md5_hash(self.config.user.as_bytes(), pw.expose().as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), conn.wbuf())
                    .map_err(|_| self.fail("cannot encode the md5 response"))?;
                conn.flush().await
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = c.cstr("SASL mechanism").map_err(bad)?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m.to_string());
                }
                self.start_sasl(conn, &mechanisms).await
            }
            11 => {
                let data = c.rest();
                let scram = self.scram.as_mut().ok_or_else(|| {
                    SourceError::protocol(conn.target(), "SASLContinue before SASL")
                })?;
                scram
                    .update(&data)
                    .map_err(|e| SourceError::Authentication {
                        user: self.config.user.clone(),
                        target: self.target.to_string(),
                        message: format!("invalid SCRAM message from the server: {e}"),
                    })?;
                frontend::sasl_response(scram.message(), conn.wbuf())
                    .map_err(|_| self.fail("cannot encode the SCRAM response"))?;
                conn.flush().await
            }
            12 => {
                let data = c.rest();
                let mut scram = self
                    .scram
                    .take()
                    .ok_or_else(|| SourceError::protocol(conn.target(), "SASLFinal before SASL"))?;
                scram.finish(&data).map_err(|e| {
                    self.fail(format!(
                        "the server's SCRAM proof is wrong ({e}): it does not know the password; \
                         check that you are talking to the right server"
                    ))
                })
            }
            2 | 6 | 7 | 8 | 9 => Err(self.fail(format!(
                "the server asks for Kerberos/GSSAPI/SSPI authentication (code {code}), which \
                 pgrelay does not support; use scram-sha-256, md5, password or cert in pg_hba.conf"
            ))),
            other => Err(SourceError::protocol(
                conn.target(),
                format!("unknown authentication request code {other}"),
            )),
        }
    }

    async fn start_sasl(
        &mut self,
        conn: &mut Connection,
        mechanisms: &[String],
    ) -> Result<(), SourceError> {
        let offers = |m: &str| mechanisms.iter().any(|x| x == m);
        let cert_hash = || -> Result<Vec<u8>, String> {
            let cert = conn
                .peer_certificate()
                .ok_or_else(|| "the server sent no certificate".to_owned())?;
            tls::server_end_point(cert)
        };
        let (mechanism, binding, plus) = match self.config.channel_binding {
            ChannelBinding::Require => {
                self.method = SCRAM_SHA_256_PLUS;
                if !conn.is_tls() {
                    return Err(self.fail(
                        "channel_binding=require, but the connection is not encrypted; use \
                         sslmode=require or stronger (and TCP, not a Unix socket)",
                    ));
                }
                if !offers(SCRAM_SHA_256_PLUS) {
                    return Err(self.fail(format!(
                        "channel_binding=require, but the server offers only {mechanisms:?}; \
                         use scram-sha-256 in pg_hba.conf on a server built with TLS"
                    )));
                }
                let hash = cert_hash().map_err(|e| self.fail(e))?;
                (
                    SCRAM_SHA_256_PLUS,
                    ScramBinding::tls_server_end_point(hash),
                    true,
                )
            }
            ChannelBinding::Prefer if conn.is_tls() && offers(SCRAM_SHA_256_PLUS) => {
                match cert_hash() {
                    Ok(hash) => (
                        SCRAM_SHA_256_PLUS,
                        ScramBinding::tls_server_end_point(hash),
                        true,
                    ),
                    Err(e) => {
                        tracing::warn!(reason = %e, "cannot bind SCRAM to the TLS channel; continuing without channel binding");
                        (SCRAM_SHA_256, ScramBinding::unsupported(), false)
                    }
                }
            }
            // On TLS without PLUS on offer: "y", we could bind but the
            // server cannot (lets the server detect a downgrade).
            ChannelBinding::Prefer if conn.is_tls() => {
                (SCRAM_SHA_256, ScramBinding::unrequested(), false)
            }
            _ => (SCRAM_SHA_256, ScramBinding::unsupported(), false),
        };
        self.method = mechanism;
        if !offers(mechanism) {
            return Err(self.fail(format!(
                "the server offers SASL mechanisms {mechanisms:?}, none of which pgrelay supports \
                 ({SCRAM_SHA_256}, {SCRAM_SHA_256_PLUS})"
            )));
        }
        let pw = self.password()?;
        let scram = ScramSha256::new(pw.expose().as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, scram.message(), conn.wbuf())
            .map_err(|_| self.fail("cannot encode the SCRAM message"))?;
        self.scram = Some(scram);
        self.plus = plus;
        conn.flush().await
    }
}

pub(crate) fn parse_error(target: &str, body: &Bytes) -> Result<ErrorResponse, SourceError> {
    ErrorResponse::parse(body).map_err(|e| SourceError::protocol(target, e.to_string()))
}

pub(crate) fn parse_parameter(target: &str, body: &Bytes) -> Result<(String, String), SourceError> {
    let mut c = Cursor::new(body);
    let bad = |e| SourceError::protocol(target, format!("ParameterStatus {e}"));
    let name = c.cstr("parameter name").map_err(bad)?.to_string();
    let value = c.cstr("parameter value").map_err(bad)?.to_string();
    Ok((name, value))
}

pub(crate) fn log_notice(target: &str, body: &Bytes) {
    match ErrorResponse::parse(body) {
        Ok(n) => tracing::info!(
            server = target,
            severity = %n.localized_severity,
            sqlstate = %n.code,
            detail = n.detail.as_deref().unwrap_or(""),
            "server notice: {}",
            n.message
        ),
        Err(e) => tracing::warn!(server = target, error = %e, "unreadable NoticeResponse"),
    }
}
