//! Connection configuration, read the way libpq reads it.
//!
//! Job: turn a connection string — a `postgres://`/`postgresql://` URL or
//! `key=value` pairs — plus libpq's environment variables (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGAPPNAME`,
//! `PGCONNECT_TIMEOUT`, `PGPASSFILE`, `PGSSLROOTCERT`, `PGSSLCERT`,
//! `PGSSLKEY`, `PGCHANNELBINDING`, `PGOPTIONS`, ...) into a [`Config`]: an
//! ordered list of [`Target`]s (hosts are tried in order), credentials, TLS
//! and keepalive settings.
//!
//! Invariants:
//! * Precedence is libpq's: a value in the connection string beats the
//!   environment, which beats the built-in default (OS user name, database
//!   named after the user, port 5432, `sslmode=prefer`, a Unix socket in
//!   `/var/run/postgresql` if that directory exists, else `/tmp`).
//! * The password never leaves this module in readable form except through
//!   [`Password::expose`]: [`Config`]'s `Debug` prints `<redacted>`,
//!   [`Config::redacted`] prints `***`, and [`ConfigError`]s quote positions
//!   and key names, never the text around a password.
//! * Unknown keys are errors (as in libpq); libpq keys whose feature pgrelay
//!   does not implement are errors that say so, unless they are given at
//!   their do-nothing value.
//! * Passwords from `~/.pgpass` are not looked up here but per host at
//!   connect time (module `pgpass`), because the file is keyed by host and
//!   port.
//!
//! PostgreSQL reference: libpq "Connection Strings" (libpq-connstring),
//! "Parameter Key Words" (libpq-paramkeywords) and "Environment Variables"
//! (libpq-envars).

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The port PostgreSQL listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 5432;

/// Why a connection string cannot be used. Never transient: the text has to
/// change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not a valid connection string.
    #[error(
        "connection string syntax error at character {position}: {message}; write key=value \
         pairs separated by spaces (quote values containing spaces: key='a b') or a URL \
         postgresql://user@host:port/dbname?key=value"
    )]
    Syntax {
        /// Byte offset in the connection string.
        position: usize,
        /// What is wrong there.
        message: String,
    },
    /// A known key has a value of the wrong form.
    #[error("invalid value {value:?} for connection option \"{key}\": expected {expected}")]
    InvalidValue {
        /// The option.
        key: String,
        /// The value given (never for `password`).
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A key libpq does not know either.
    #[error(
        "unknown connection option \"{key}\"; valid names are libpq's (host, port, user, \
         dbname, password, sslmode, application_name, connect_timeout, ...)"
    )]
    UnknownOption {
        /// The key as written.
        key: String,
    },
    /// A libpq feature pgrelay does not implement.
    #[error("connection option \"{key}\" is not supported by pgrelay: {reason}")]
    Unsupported {
        /// The key.
        key: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The options contradict each other or something required is missing.
    #[error("invalid connection settings: {message}")]
    Invalid {
        /// What to fix.
        message: String,
    },
}

impl ConfigError {
    /// Configuration never fixes itself.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// `sslmode`: whether TLS is used and what is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS if the plain attempt fails.
    Allow,
    /// TLS if the server offers it, plain otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS or fail; the certificate is not checked unless a root
    /// certificate file exists, in which case this acts as `verify-ca`.
    Require,
    /// TLS, and the certificate chain must lead to `sslrootcert`.
    VerifyCa,
    /// `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether a connection without TLS is unacceptable.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// `channel_binding`: SCRAM-SHA-256-PLUS use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// Never bind the SCRAM exchange to the TLS channel.
    Disable,
    /// Bind when on TLS and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Fail unless the server authenticates us with SCRAM-SHA-256-PLUS.
    Require,
}

impl ChannelBinding {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address (TCP).
    Tcp(String),
    /// The directory holding the server's Unix socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// One server to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name used for TLS verification, `.pgpass` and messages; for TCP, also
    /// resolved to addresses unless `hostaddr` is set.
    pub host: Host,
    /// Numeric address to connect to instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    /// TCP port, or the number in the socket file name.
    pub port: u16,
}

impl Target {
    /// Path of the Unix socket file, for Unix targets.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Unix(_) => {
                let path = self.socket_path().unwrap_or_default();
                write!(f, "{}", path.display())
            }
            Host::Tcp(name) => {
                if name.contains(':') {
                    write!(f, "[{name}]:{}", self.port)?;
                } else {
                    write!(f, "{name}:{}", self.port)?;
                }
                match self.hostaddr {
                    Some(addr) if addr.to_string() != *name => write!(f, " (hostaddr {addr})"),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// A password; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The password itself, for the authentication exchange.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Everything needed to open a replication connection.
///
/// Build it with [`Config::parse`] (connection string + environment) and
/// adjust fields afterwards if needed. `Debug` and [`Config::redacted`] are
/// safe to log.
#[derive(Clone)]
pub struct Config {
    /// Servers to try, in order; the first that accepts us wins.
    pub targets: Vec<Target>,
    /// Role name.
    pub user: String,
    /// Password; if `None`, `passfile` is consulted when the server asks.
    pub password: Option<Password>,
    /// Database (logical replication is per database).
    pub dbname: String,
    /// Shown in `pg_stat_replication.application_name`.
    pub application_name: Option<String>,
    /// Command-line options for the server process (`-c name=value ...`).
    pub options: Option<String>,
    /// Limit for each host's connection attempt (TCP, TLS and
    /// authentication together); `None` waits indefinitely.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalives on (default) or off.
    pub keepalives: bool,
    /// Idle time before the first keepalive probe; `None` = OS default.
    pub keepalives_idle: Option<Duration>,
    /// Time between probes; `None` = OS default.
    pub keepalives_interval: Option<Duration>,
    /// Unanswered probes before the connection is dead; `None` = OS default.
    pub keepalives_count: Option<u32>,
    /// `TCP_USER_TIMEOUT`; `None` = OS default.
    pub tcp_user_timeout: Option<Duration>,
    /// TLS policy.
    pub sslmode: SslMode,
    /// CA certificates (PEM) to verify the server with; defaults to
    /// `~/.postgresql/root.crt`. Used only if the file exists, and required
    /// for `verify-ca`/`verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate chain (PEM); defaults to
    /// `~/.postgresql/postgresql.crt`, used only if the file exists.
    pub sslcert: Option<PathBuf>,
    /// Client private key (PEM, unencrypted); defaults to
    /// `~/.postgresql/postgresql.key`.
    pub sslkey: Option<PathBuf>,
    /// Send the host name in the TLS handshake (SNI) when it is a name.
    pub sslsni: bool,
    /// SCRAM channel binding policy.
    pub channel_binding: ChannelBinding,
    /// Password file; defaults to `~/.pgpass`.
    pub passfile: Option<PathBuf>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("targets", &self.targets)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalives", &self.keepalives)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_count", &self.keepalives_count)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("sslsni", &self.sslsni)
            .field("channel_binding", &self.channel_binding)
            .field("passfile", &self.passfile)
            .finish()
    }
}

impl FromStr for Config {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Config::parse(s)
    }
}

/// The Unix socket directory used when no host is given: Debian's
/// `/var/run/postgresql` if it exists, else upstream's `/tmp`.
pub fn default_socket_dir() -> PathBuf {
    let debian = Path::new("/var/run/postgresql");
    if debian.is_dir() {
        debian.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

/// Keys libpq defines, with their environment variable.
const KEYS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("dbname", Some("PGDATABASE")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("options", Some("PGOPTIONS")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslsni", Some("PGSSLSNI")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("replication", None),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
];

/// libpq keys for features pgrelay leaves out, and what to do instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "service",
        "service files are not read; put the settings in the connection string",
    ),
    (
        "sslpassword",
        "encrypted private keys are not supported; store the key unencrypted with mode 0600",
    ),
    ("sslcrl", "certificate revocation lists are not checked"),
    ("sslcrldir", "certificate revocation lists are not checked"),
    (
        "sslcertmode",
        "a client certificate is sent whenever sslcert exists",
    ),
    (
        "ssl_min_protocol_version",
        "TLS 1.2 and 1.3 are negotiated automatically",
    ),
    (
        "ssl_max_protocol_version",
        "TLS 1.2 and 1.3 are negotiated automatically",
    ),
    (
        "requirepeer",
        "peer credential checks on Unix sockets are not implemented",
    ),
    (
        "krbsrvname",
        "Kerberos/GSSAPI authentication is not supported",
    ),
    ("gsslib", "Kerberos/GSSAPI authentication is not supported"),
    (
        "gssdelegation",
        "Kerberos/GSSAPI authentication is not supported",
    ),
    (
        "require_auth",
        "use channel_binding=require or pg_hba.conf to restrict methods",
    ),
    (
        "min_protocol_version",
        "protocol version 3.0 is always used",
    ),
    (
        "max_protocol_version",
        "protocol version 3.0 is always used",
    ),
    ("sslkeylogfile", "TLS key logging is not supported"),
];

impl Config {
    /// Parses a connection string, filling gaps from the process
    /// environment and the OS user name like libpq.
    pub fn parse(conninfo: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(conninfo, |name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with the environment supplied by `env` (which is
    /// also asked for `HOME`), for callers that must not read the process
    /// environment.
    pub fn parse_with_env(
        conninfo: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut pairs = Vec::new();
        parse_conninfo(conninfo, 0, &mut pairs)?;
        build(pairs, &env)
    }

    /// A URL form of the configuration for logs: no password (`***` shows
    /// one is set), every host, and the options that matter for
    /// troubleshooting.
    pub fn redacted(&self) -> String {
        let mut s = String::from("postgresql://");
        s.push_str(&encode(&self.user));
        if self.password.is_some() {
            s.push_str(":***");
        }
        s.push('@');
        let mut addrs = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match &t.host {
                Host::Tcp(name) if name.contains(':') => {
                    let _ = write!(s, "[{name}]");
                }
                Host::Tcp(name) => s.push_str(&encode(name)),
                Host::Unix(dir) => s.push_str(&encode(&dir.to_string_lossy())),
            }
            let _ = write!(s, ":{}", t.port);
            addrs.push(t.hostaddr.map(|a| a.to_string()).unwrap_or_default());
        }
        s.push('/');
        s.push_str(&encode(&self.dbname));
        let mut q: Vec<(&str, String)> = Vec::new();
        if addrs.iter().any(|a| !a.is_empty()) {
            q.push(("hostaddr", addrs.join(",")));
        }
        q.push(("sslmode", self.sslmode.as_str().to_owned()));
        if self.channel_binding != ChannelBinding::Prefer {
            q.push(("channel_binding", self.channel_binding.as_str().to_owned()));
        }
        for (k, p) in [
            ("sslrootcert", &self.sslrootcert),
            ("sslcert", &self.sslcert),
        ] {
            if let Some(p) = p.as_ref().filter(|p| p.exists()) {
                q.push((k, p.to_string_lossy().into_owned()));
            }
        }
        if let Some(a) = &self.application_name {
            q.push(("application_name", a.clone()));
        }
        if let Some(t) = self.connect_timeout {
            q.push(("connect_timeout", t.as_secs().to_string()));
        }
        if let Some(o) = &self.options {
            q.push(("options", o.clone()));
        }
        for (i, (k, v)) in q.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            let _ = write!(s, "{k}={}", encode(v));
        }
        s
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Strict percent-decoding: `%` must be followed by two hex digits and the
/// result must be UTF-8. `offset` is where `s` starts in the whole string,
/// for error positions; the text itself is never quoted (it may be a
/// password).
fn decode(s: &str, offset: usize, what: &str) -> Result<String, ConfigError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit());
            match hex {
                Some(v) => out.push(v),
                None => {
                    return Err(ConfigError::Syntax {
                        position: offset + i,
                        message: format!(
                            "invalid percent-encoding in the {what}: '%' must be followed by two \
                             hexadecimal digits (write a literal '%' as %25)"
                        ),
                    })
                }
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::Syntax {
        position: offset,
        message: format!("the {what} does not decode to UTF-8"),
    })
}

/// Parses either form, appending `(key, value)` in order of appearance.
fn parse_conninfo(
    s: &str,
    offset: usize,
    out: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            return parse_url(rest, offset + scheme.len(), out);
        }
    }
    parse_keyword_value(s, offset, out)
}

fn parse_keyword_value(
    s: &str,
    offset: usize,
    out: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    let b = s.as_bytes();
    let mut i = 0;
    let syntax = |position: usize, message: String| ConfigError::Syntax {
        position: offset + position,
        message,
    };
    let mut expanded_dbname = false;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Ok(());
        }
        let key_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[key_start..i];
        if key.is_empty() {
            return Err(syntax(i, "a key is missing before '='".into()));
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(syntax(i, format!("missing \"=\" after \"{key}\"")));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        let mut value = Vec::new();
        if b.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(syntax(
                            value_start,
                            format!("unterminated quoted value of \"{key}\" (missing closing ')"),
                        ))
                    }
                    Some(b'\\') => {
                        if let Some(&c) = b.get(i + 1) {
                            value.push(c);
                        }
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    i += 1;
                    if let Some(&c) = b.get(i) {
                        value.push(c);
                    }
                } else {
                    value.push(b[i]);
                }
                i += 1;
            }
        }
        let value = String::from_utf8(value)
            .map_err(|_| syntax(value_start, format!("value of \"{key}\" is not UTF-8")))?;
        // libpq expands the first dbname that is itself a connection
        // string, in place.
        if key == "dbname"
            && !expanded_dbname
            && (value.contains('=')
                || value.starts_with("postgresql://")
                || value.starts_with("postgres://"))
        {
            expanded_dbname = true;
            parse_conninfo(&value, offset + value_start, out)?;
        } else {
            out.push((key.to_owned(), value));
        }
    }
}

fn parse_url(s: &str, offset: usize, out: &mut Vec<(String, String)>) -> Result<(), ConfigError> {
    let (main, query) = match s.find('?') {
        Some(q) => (&s[..q], Some((&s[q + 1..], q + 1))),
        None => (s, None),
    };
    let (authority, path) = match main.find('/') {
        Some(p) => (&main[..p], Some((&main[p + 1..], p + 1))),
        None => (main, None),
    };
    // The last '@' ends the user info, so an unencoded '@' in a password
    // still works.
    let (userinfo, hosts, hosts_at) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..], at + 1),
        None => (None, authority, 0),
    };
    if let Some(ui) = userinfo {
        let (user, password) = match ui.find(':') {
            Some(c) => (&ui[..c], Some((&ui[c + 1..], c + 1))),
            None => (ui, None),
        };
        if !user.is_empty() {
            out.push(("user".into(), decode(user, offset, "user name")?));
        }
        if let Some((pw, at)) = password {
            out.push(("password".into(), decode(pw, offset + at, "password")?));
        }
    }
    if !hosts.is_empty() {
        let mut names = Vec::new();
        let mut ports = Vec::new();
        let mut pos = hosts_at;
        for spec in hosts.split(',') {
            let (host, port) = if let Some(rest) = spec.strip_prefix('[') {
                let Some(close) = rest.find(']') else {
                    return Err(ConfigError::Syntax {
                        position: offset + pos,
                        message: "an IPv6 address in the URL is missing its closing ']'".into(),
                    });
                };
                let after = &rest[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => p,
                    None if after.is_empty() => "",
                    None => {
                        return Err(ConfigError::Syntax {
                            position: offset + pos + close + 2,
                            message: "expected ':' or ',' after an IPv6 address in the URL".into(),
                        })
                    }
                };
                (rest[..close].to_owned(), port)
            } else {
                let (h, p) = match spec.find(':') {
                    Some(c) => (&spec[..c], &spec[c + 1..]),
                    None => (spec, ""),
                };
                (decode(h, offset + pos, "host name")?, p)
            };
            names.push(host);
            ports.push(decode(port, offset + pos, "port")?);
            pos += spec.len() + 1;
        }
        if names.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), names.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some((db, at)) = path {
        if !db.is_empty() {
            out.push(("dbname".into(), decode(db, offset + at, "database name")?));
        }
    }
    if let Some((q, at)) = query {
        let mut pos = at;
        for param in q.split('&') {
            if param.is_empty() {
                pos += 1;
                continue;
            }
            let Some(eq) = param.find('=') else {
                return Err(ConfigError::Syntax {
                    position: offset + pos,
                    message: "URL query parameter without '=' (write ?key=value&key2=value2)"
                        .into(),
                });
            };
            let key = decode(&param[..eq], offset + pos, "query parameter name")?;
            let value = decode(&param[eq + 1..], offset + pos + eq + 1, "query parameter")?;
            // JDBC's spelling, which libpq accepts too.
            if key == "ssl" && value == "true" {
                out.push(("sslmode".into(), "require".into()));
            } else {
                out.push((key, value));
            }
            pos += param.len() + 1;
        }
    }
    Ok(())
}

fn invalid(key: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

fn parse_int(key: &str, value: &str) -> Result<i64, ConfigError> {
    value
        .trim()
        .parse::<i64>()
        .map_err(|_| invalid(key, value, "an integer"))
}

/// Seconds (or milliseconds for `tcp_user_timeout`) where zero means "the
/// default".
fn parse_positive_duration(
    key: &str,
    value: &str,
    unit: fn(u64) -> Duration,
) -> Result<Option<Duration>, ConfigError> {
    let n = parse_int(key, value)?;
    if n < 0 {
        return Err(invalid(key, value, "zero or a positive integer"));
    }
    Ok((n > 0).then(|| unit(n.unsigned_abs())))
}

fn build(
    pairs: Vec<(String, String)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut given: Vec<(&'static str, String)> = Vec::new();
    for (key, value) in pairs {
        if let Some((_, reason)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
            return Err(ConfigError::Unsupported {
                key,
                reason: (*reason).to_owned(),
            });
        }
        let Some((k, _)) = KEYS.iter().find(|(k, _)| *k == key) else {
            return Err(ConfigError::UnknownOption { key });
        };
        given.retain(|(g, _)| g != k);
        given.push((k, value));
    }
    let get = |key: &str| -> Option<String> {
        if let Some((_, v)) = given.iter().find(|(k, _)| *k == key) {
            return Some(v.clone());
        }
        let var = KEYS.iter().find(|(k, _)| *k == key).and_then(|(_, v)| *v)?;
        env(var).filter(|v| !v.is_empty())
    };
    let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);

    // Options accepted only at values that need no implementation.
    let at_default: &[(&str, &[&str], &str)] = &[
        (
            "replication",
            &["database"],
            "pgrelay always opens logical replication (replication=database) connections",
        ),
        (
            "gssencmode",
            &["disable", "prefer", "allow"],
            "GSSAPI encryption is not supported; use TLS (sslmode)",
        ),
        (
            "target_session_attrs",
            &["any"],
            "hosts are tried in order and the first that accepts the connection is used",
        ),
        (
            "load_balance_hosts",
            &["disable"],
            "hosts are tried in the order given",
        ),
        (
            "sslnegotiation",
            &["postgres"],
            "TLS is negotiated with SSLRequest",
        ),
        (
            "client_encoding",
            &["UTF8", "utf8", "UTF-8", "utf-8", "auto"],
            "pgrelay always uses UTF8",
        ),
    ];
    for (key, ok, reason) in at_default {
        if let Some(v) = get(key) {
            if !ok.contains(&v.as_str()) {
                return Err(ConfigError::Unsupported {
                    key: (*key).to_owned(),
                    reason: format!("value {v:?} is not available: {reason}"),
                });
            }
        }
    }

    let split = |v: Option<String>| -> Vec<String> {
        v.map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let hosts = split(get("host"));
    let hostaddrs = split(get("hostaddr"));
    let ports = split(get("port"));
    let n = if !hosts.is_empty() {
        hosts.len()
    } else {
        hostaddrs.len().max(1)
    };
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
        return Err(ConfigError::Invalid {
            message: format!(
                "could not match {} host names to {} hostaddr values; give one hostaddr per host",
                hosts.len(),
                hostaddrs.len()
            ),
        });
    }
    if ports.len() > 1 && ports.len() != n {
        return Err(ConfigError::Invalid {
            message: format!(
                "could not match {} port numbers to {n} hosts; give one port, or one per host",
                ports.len()
            ),
        });
    }
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let host = hosts.get(i).map(String::as_str).unwrap_or("");
        let hostaddr = match hostaddrs.get(i).map(String::as_str).unwrap_or("") {
            "" => None,
            a => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| invalid("hostaddr", a, "a numeric IPv4 or IPv6 address"))?,
            ),
        };
        let port = match ports
            .get(i)
            .or(ports.first())
            .map(String::as_str)
            .unwrap_or("")
        {
            "" => DEFAULT_PORT,
            p => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("port", p, "a port number from 1 to 65535"))?,
        };
        let host = if let Some(addr) = hostaddr.filter(|_| host.is_empty() || host.starts_with('/'))
        {
            Host::Tcp(addr.to_string())
        } else if host.starts_with('/') {
            Host::Unix(PathBuf::from(host))
        } else if host.is_empty() {
            Host::Unix(default_socket_dir())
        } else {
            Host::Tcp(host.to_owned())
        };
        targets.push(Target {
            host,
            hostaddr,
            port,
        });
    }

    let user = match get("user") {
        Some(u) => u,
        None => whoami::username().map_err(|e| ConfigError::Invalid {
            message: format!(
                "no user name given and the operating system user name is unavailable ({e}); set \
                 user= or PGUSER"
            ),
        })?,
    };
    let dbname = get("dbname").unwrap_or_else(|| user.clone());
    let under_home = |rel: &str| home.as_ref().map(|h| h.join(rel));

    let connect_timeout = match get("connect_timeout") {
        Some(v) => {
            let n = parse_int("connect_timeout", &v)?;
            // libpq: zero or negative waits forever; 1 is raised to 2.
            (n > 0).then(|| Duration::from_secs(n.max(2).unsigned_abs()))
        }
        None => None,
    };
    let keepalives = match get("keepalives") {
        Some(v) => parse_int("keepalives", &v)? != 0,
        None => true,
    };
    let secs = |key| -> Result<Option<Duration>, ConfigError> {
        get(key)
            .map(|v| parse_positive_duration(key, &v, Duration::from_secs))
            .transpose()
            .map(Option::flatten)
    };
    let keepalives_idle = secs("keepalives_idle")?;
    let keepalives_interval = secs("keepalives_interval")?;
    let keepalives_count = match get("keepalives_count") {
        Some(v) => {
            let n = parse_int("keepalives_count", &v)?;
            let n = u32::try_from(n)
                .map_err(|_| invalid("keepalives_count", &v, "zero or a positive integer"))?;
            (n > 0).then_some(n)
        }
        None => None,
    };
    let tcp_user_timeout = get("tcp_user_timeout")
        .map(|v| parse_positive_duration("tcp_user_timeout", &v, Duration::from_millis))
        .transpose()?
        .flatten();
    let sslmode = match get("sslmode") {
        Some(v) => SslMode::parse(&v).ok_or_else(|| {
            invalid(
                "sslmode",
                &v,
                "disable, allow, prefer, require, verify-ca or verify-full",
            )
        })?,
        None => SslMode::Prefer,
    };
    let sslrootcert = match get("sslrootcert") {
        Some(v) if v == "system" => {
            return Err(ConfigError::Unsupported {
                key: "sslrootcert".into(),
                reason: "sslrootcert=system (the operating system's CA store) is not available; \
                         give the path of a PEM file with the CA certificates"
                    .into(),
            })
        }
        Some(v) => Some(PathBuf::from(v)),
        None => under_home(".postgresql/root.crt"),
    };
    let sslcert = get("sslcert")
        .map(PathBuf::from)
        .or_else(|| under_home(".postgresql/postgresql.crt"));
    let sslkey = get("sslkey")
        .map(PathBuf::from)
        .or_else(|| under_home(".postgresql/postgresql.key"));
    let sslsni = match get("sslsni") {
        Some(v) => match v.as_str() {
            "0" => false,
            "1" => true,
            _ => return Err(invalid("sslsni", &v, "0 or 1")),
        },
        None => true,
    };
    let channel_binding = match get("channel_binding") {
        Some(v) => match v.as_str() {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => return Err(invalid("channel_binding", &v, "disable, prefer or require")),
        },
        None => ChannelBinding::Prefer,
    };
    if channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
        return Err(ConfigError::Invalid {
            message: "channel_binding=require needs TLS, but sslmode=disable; use sslmode=require \
                      or stronger"
                .into(),
        });
    }
    let passfile = get("passfile")
        .map(PathBuf::from)
        .or_else(|| under_home(".pgpass"));
    let application_name = get("application_name").or_else(|| get("fallback_application_name"));

    Ok(Config {
        targets,
        user,
        password: get("password").map(Password),
        dbname,
        application_name,
        options: get("options"),
        connect_timeout,
        keepalives,
        keepalives_idle,
        keepalives_interval,
        keepalives_count,
        tcp_user_timeout,
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        sslsni,
        channel_binding,
        passfile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_env(s: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse_with_env(s, move |k| env.get(k).cloned())
    }

    fn parse(s: &str) -> Config {
        parse_env(s, &[("PGUSER", "osuser"), ("HOME", "/home/u")])
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target {
            host: Host::Tcp(host.into()),
            hostaddr: None,
            port,
        }
    }

    #[test]
    fn keyword_value_basics_and_quoting() {
        let c = parse(
            "host=db.example port = 6543 user=alice \
             dbname=app\\ x application_name='' sslmode=verify-full",
        );
        assert_eq!(c.targets, vec![tcp("db.example", 6543)]);
        assert_eq!(c.user, "alice");
        assert_eq!(c.dbname, "app x");
        assert_eq!(c.application_name.as_deref(), Some(""));
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        let c = parse(r"password='a \'b\' \\c d' user=u");
        assert_eq!(
            c.password.as_ref().map(Password::expose),
            Some(r"a 'b' \c d")
        );
    }

    #[test]
    fn keyword_value_errors_never_quote_passwords() {
        let err = parse_env("host=h password='secret-value", &[]).expect_err("unterminated");
        assert!(
            matches!(err, ConfigError::Syntax { position: 16, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = parse_env("host", &[]).expect_err("no =");
        assert!(
            err.to_string().contains("missing \"=\" after \"host\""),
            "{err}"
        );
        let err = parse_env("bogus=1", &[]).expect_err("unknown");
        assert_eq!(
            err,
            ConfigError::UnknownOption {
                key: "bogus".into()
            }
        );
        let err = parse_env("service=x", &[]).expect_err("unsupported");
        assert!(matches!(err, ConfigError::Unsupported { .. }));
        let err = parse_env("user=u sslmode=maybe", &[]).expect_err("bad mode");
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err = parse_env("user=u port=0", &[]).expect_err("port 0");
        assert!(matches!(err, ConfigError::InvalidValue { .. }));
        assert!(!err.is_transient());
    }

    #[test]
    fn urls() {
        let c = parse(
            "postgresql://al%40ice:p%3Ass%40w0rd@db1.example:5433,[::1]:5434,db3/my%20db\
             ?sslmode=require&application_name=relay&connect_timeout=1",
        );
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.as_ref().map(Password::expose), Some("p:ss@w0rd"));
        assert_eq!(
            c.targets,
            vec![tcp("db1.example", 5433), tcp("::1", 5434), tcp("db3", 5432)]
        );
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("relay"));
        assert_eq!(
            c.connect_timeout,
            Some(Duration::from_secs(2)),
            "1 s is raised to 2"
        );

        let c = parse("postgres://%2Fvar%2Flib%2Fpg:5999/db");
        assert_eq!(c.targets[0].host, Host::Unix("/var/lib/pg".into()));
        assert_eq!(
            c.targets[0].socket_path(),
            Some(PathBuf::from("/var/lib/pg/.s.PGSQL.5999"))
        );
        let c = parse("postgresql:///db?host=/run/pg&port=6000&ssl=true");
        assert_eq!(c.targets[0].host, Host::Unix("/run/pg".into()));
        assert_eq!(c.targets[0].port, 6000);
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.dbname, "db");
        // An unencoded '@' in the password still works.
        let c = parse("postgresql://u:a@b@h/d");
        assert_eq!(c.password.as_ref().map(Password::expose), Some("a@b"));

        let err = parse_env("postgresql://u:se%zzcret@h/d", &[]).expect_err("bad escape");
        assert!(
            matches!(err, ConfigError::Syntax { position: 17, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("cret"), "{err}");
        let err = parse_env("postgresql://h/d?sslmode", &[]).expect_err("no =");
        assert!(matches!(err, ConfigError::Syntax { .. }));
        let err = parse_env("postgresql://[::1/d", &[]).expect_err("no ]");
        assert!(err.to_string().contains("']'"), "{err}");
    }

    #[test]
    fn dbname_may_be_a_connection_string() {
        let c = parse("dbname='host=h2 port=7 dbname=real' user=x");
        assert_eq!(c.targets, vec![tcp("h2", 7)]);
        assert_eq!(c.dbname, "real");
        assert_eq!(c.user, "x");
        let c = parse("dbname=postgresql://h3/other");
        assert_eq!(c.targets, vec![tcp("h3", 5432)]);
        assert_eq!(c.dbname, "other");
    }

    #[test]
    fn host_lists_and_hostaddr() {
        let c = parse("host=a,b,/sock port=1,2,3");
        assert_eq!(c.targets[0], tcp("a", 1));
        assert_eq!(c.targets[1], tcp("b", 2));
        assert_eq!(c.targets[2].host, Host::Unix("/sock".into()));
        let c = parse("host=a,b port=9");
        assert_eq!(c.targets, vec![tcp("a", 9), tcp("b", 9)]);
        let c = parse("host=name.in.cert hostaddr=127.0.0.1");
        assert_eq!(c.targets[0].host, Host::Tcp("name.in.cert".into()));
        assert_eq!(c.targets[0].hostaddr, Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(
            c.targets[0].to_string(),
            "name.in.cert:5432 (hostaddr 127.0.0.1)"
        );
        let c = parse("hostaddr=10.0.0.1,10.0.0.2");
        assert_eq!(c.targets[1].host, Host::Tcp("10.0.0.2".into()));
        let err = parse_env("user=u host=a,b port=1,2,3", &[]).expect_err("mismatch");
        assert!(
            err.to_string().contains("3 port numbers to 2 hosts"),
            "{err}"
        );
        let err = parse_env("user=u host=a,b hostaddr=1.2.3.4", &[]).expect_err("mismatch");
        assert!(matches!(err, ConfigError::Invalid { .. }));
        let err = parse_env("user=u hostaddr=example.com", &[]).expect_err("not numeric");
        assert!(matches!(err, ConfigError::InvalidValue { .. }));
        // No host at all: the default socket directory.
        let c = parse("");
        assert_eq!(c.targets[0].host, Host::Unix(default_socket_dir()));
        assert_eq!(c.targets[0].port, 5432);
    }

    #[test]
    fn environment_defaults_and_precedence() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "7777"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "9"),
            ("PGPASSFILE", "/etc/pgpass"),
            ("PGCHANNELBINDING", "require"),
            ("HOME", "/home/u"),
        ];
        let c = parse_env("", &env).expect("parse");
        assert_eq!(c.targets, vec![tcp("envhost", 7777)]);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_ref().map(Password::expose), Some("envpw"));
        assert_eq!(c.dbname, "envdb");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(9)));
        assert_eq!(c.passfile, Some(PathBuf::from("/etc/pgpass")));
        assert_eq!(c.channel_binding, ChannelBinding::Require);
        assert_eq!(
            c.sslrootcert,
            Some(PathBuf::from("/home/u/.postgresql/root.crt"))
        );
        // The connection string wins over the environment.
        let c = parse_env(
            "host=h user=u dbname=d sslmode=disable channel_binding=prefer",
            &env,
        )
        .expect("parse");
        assert_eq!(c.targets, vec![tcp("h", 7777)]);
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("u", "d"));
        assert_eq!(c.sslmode, SslMode::Disable);
        // dbname defaults to the user, passfile to ~/.pgpass.
        let c = parse_env("user=solo", &[("HOME", "/h")]).expect("parse");
        assert_eq!(c.dbname, "solo");
        assert_eq!(c.passfile, Some(PathBuf::from("/h/.pgpass")));
        assert!(c.password.is_none());
        // Without any user the OS user name is used.
        let c = parse_env("", &[]).expect("parse");
        assert!(!c.user.is_empty());
    }

    #[test]
    fn keepalives_and_timeouts() {
        let c = parse(
            "keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=4 \
             tcp_user_timeout=2500 connect_timeout=0",
        );
        assert!(c.keepalives);
        assert_eq!(c.keepalives_idle, Some(Duration::from_secs(30)));
        assert_eq!(c.keepalives_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.keepalives_count, Some(4));
        assert_eq!(c.tcp_user_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(c.connect_timeout, None);
        let c = parse("keepalives=0 keepalives_idle=0");
        assert!(!c.keepalives);
        assert_eq!(c.keepalives_idle, None);
        assert!(parse_env("user=u keepalives_count=-1", &[]).is_err());
        assert!(parse_env("user=u connect_timeout=soon", &[]).is_err());
    }

    #[test]
    fn accepted_only_at_default_values() {
        parse(
            "replication=database gssencmode=disable target_session_attrs=any client_encoding=UTF8",
        );
        for bad in [
            "replication=true",
            "gssencmode=require",
            "target_session_attrs=read-write",
            "client_encoding=LATIN1",
            "sslrootcert=system",
            "sslmode=disable channel_binding=require",
        ] {
            let err = parse_env(&format!("user=u {bad}"), &[]).expect_err(bad);
            assert!(
                matches!(
                    err,
                    ConfigError::Unsupported { .. } | ConfigError::Invalid { .. }
                ),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn debug_and_redacted_hide_the_password() {
        let c = parse(
            "host=a,/tmp port=1,2 hostaddr=127.0.0.1, user='u s' password=hunter2 dbname=d \
             application_name=x",
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let r = c.redacted();
        assert!(!r.contains("hunter2"), "{r}");
        assert_eq!(
            r,
            "postgresql://u%20s:***@a:1,%2Ftmp:2/d?hostaddr=127.0.0.1%2C&sslmode=prefer&application_name=x"
        );
        // The redacted form parses back (minus the password).
        let back = parse(&r.replace(":***", ""));
        assert_eq!(back.targets, c.targets);
        assert_eq!(format!("{:?}", Password::new("x")), "Password(<redacted>)");
    }
}
