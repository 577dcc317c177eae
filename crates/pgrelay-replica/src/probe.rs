//! Does pg_hba.conf let this role open a *physical* replication
//! connection from here?
//!
//! The server checks pg_hba.conf right after the startup packet, before it
//! asks for a password: an authentication request means a line matched,
//! an ErrorResponse with SQLSTATE 28000 naming pg_hba.conf means none did
//! (or a `reject` line did). So the probe sends a startup packet with
//! `replication=true` (physical; a `replication=database` connection is
//! matched against database names, not `replication`, which is why the
//! logical replication client cannot answer this) and reads one message;
//! no password is sent. TLS is negotiated as the URL's sslmode says, since
//! `hostssl`/`hostnossl` lines depend on it.
//!
//! PostgreSQL docs: "The pg_hba.conf File" (auth-pg-hba-conf), "Start-up"
//! in "Message Flow" (protocol-flow), "SSL Session Encryption".

use std::net::IpAddr;

use bytes::{Buf, BytesMut};
use pgrelay_source::{Config, Host, SslMode};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ReplicaError, Result};

/// What the server answered to a physical replication startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HbaVerdict {
    /// A pg_hba.conf line matched (authentication would follow).
    Allowed,
    /// No line matched, or a `reject` line did.
    Rejected {
        /// The server's message.
        message: String,
        /// The line that would allow it, for pg_hba.conf.
        line_to_add: String,
    },
}

/// Probes `config`'s first host.
pub async fn probe_physical_replication(config: &Config) -> Result<HbaVerdict> {
    let target = config
        .targets
        .first()
        .ok_or_else(|| ReplicaError::Precondition("the primary URL names no host".into()))?;
    let user = config.user.clone();
    let (verdict_message, client_ip) = match &target.host {
        Host::Unix(_) => {
            let path = target.socket_path().expect("unix target has a socket path");
            let mut s = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                ReplicaError::Precondition(format!("cannot connect to {}: {e}", path.display()))
            })?;
            (startup(&mut s, &user).await?, None)
        }
        Host::Tcp(name) => {
            let addr = match target.hostaddr {
                Some(a) => std::net::SocketAddr::new(a, target.port),
                None => tokio::net::lookup_host((name.as_str(), target.port))
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        ReplicaError::Precondition(format!("cannot resolve host {name}"))
                    })?,
            };
            let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
                ReplicaError::Precondition(format!("cannot connect to {target}: {e}"))
            })?;
            let local = tcp.local_addr().ok().map(|a| a.ip());
            let answer = if config.sslmode == SslMode::Disable {
                startup(&mut tcp, &user).await?
            } else {
                let mut req = BytesMut::new();
                frontend::ssl_request(&mut req);
                io(tcp.write_all(&req).await)?;
                let mut b = [0u8; 1];
                io(tcp.read_exact(&mut b).await)?;
                if b[0] == b'S' {
                    let tls = pgrelay_source::rustls_client_config(config, target)?;
                    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| {
                            ReplicaError::Precondition(format!("bad TLS server name {name}: {e}"))
                        })?;
                    let connector = tokio_rustls::TlsConnector::from(tls);
                    let mut s = connector.connect(server_name, tcp).await.map_err(|e| {
                        ReplicaError::Precondition(format!("TLS handshake with {target}: {e}"))
                    })?;
                    startup(&mut s, &user).await?
                } else if config.sslmode.requires_tls() {
                    return Err(ReplicaError::Precondition(format!(
                        "{target} does not offer TLS but sslmode={} requires it",
                        config.sslmode.as_str()
                    )));
                } else {
                    startup(&mut tcp, &user).await?
                }
            };
            (answer, local)
        }
    };
    Ok(match verdict_message {
        None => HbaVerdict::Allowed,
        Some(message) => {
            let line_to_add = match &target.host {
                Host::Unix(_) => format!("local replication {user} scram-sha-256"),
                Host::Tcp(_) => {
                    let ip = quoted_host(&message)
                        .and_then(|h| h.parse::<IpAddr>().ok())
                        .or(client_ip);
                    let cidr = match ip {
                        Some(IpAddr::V4(a)) => format!("{a}/32"),
                        Some(IpAddr::V6(a)) => format!("{a}/128"),
                        None => "<client-ip>/32".into(),
                    };
                    format!("host replication {user} {cidr} scram-sha-256")
                }
            };
            HbaVerdict::Rejected {
                message,
                line_to_add,
            }
        }
    })
}

fn io<T>(r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| ReplicaError::io("probing the primary's pg_hba.conf", e))
}

/// The `host "..."` the server quotes in its rejection message.
fn quoted_host(message: &str) -> Option<String> {
    let rest = &message[message.find("host \"")? + 6..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Sends the startup packet and reads the first answer: `None` when the
/// server moved on to authentication, `Some(message)` for a pg_hba
/// rejection. Other errors are returned as errors.
async fn startup<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: &str,
) -> Result<Option<String>> {
    let mut buf = BytesMut::new();
    frontend::startup_message(
        [
            ("user", user),
            ("database", "replication"),
            ("replication", "true"),
            ("application_name", "pgrelay_hba_probe"),
        ],
        &mut buf,
    )
    .map_err(|e| ReplicaError::io("building the startup packet", e))?;
    io(s.write_all(&buf).await)?;
    io(s.flush().await)?;
    loop {
        let mut head = [0u8; 5];
        io(s.read_exact(&mut head).await)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(ReplicaError::Precondition(
                "the primary answered the replication startup with garbage".into(),
            ));
        }
        let mut body = vec![0u8; len - 4];
        io(s.read_exact(&mut body).await)?;
        match head[0] {
            b'R' => return Ok(None),
            b'N' => continue,
            b'E' => {
                let (code, message) = error_fields(&body);
                if code == "28000" && message.contains("pg_hba.conf") {
                    return Ok(Some(message));
                }
                return Err(ReplicaError::Precondition(format!(
                    "the primary refused a replication connection: {message} (SQLSTATE {code})"
                )));
            }
            other => {
                return Err(ReplicaError::Precondition(format!(
                    "unexpected message {:?} from the primary during startup",
                    char::from(other)
                )))
            }
        }
    }
}

/// (SQLSTATE, message) of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    let mut b = body;
    let (mut code, mut message) = (String::new(), String::new());
    while b.has_remaining() {
        let kind = b.get_u8();
        if kind == 0 {
            break;
        }
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let value = String::from_utf8_lossy(&b[..end]).into_owned();
        b.advance((end + 1).min(b.len()));
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_quoted_host() {
        let m = "no pg_hba.conf entry for replication connection from host \"10.0.0.7\", user \"repl\", no encryption";
        assert_eq!(quoted_host(m).as_deref(), Some("10.0.0.7"));
        assert_eq!(quoted_host("nothing"), None);
    }
}
