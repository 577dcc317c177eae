//! The standby's configuration: `primary_conninfo` built from the primary
//! URL, and the settings pgrelay owns in `postgresql.auto.conf`.
//!
//! `primary_conninfo` carries the primary's host(s), port, user, the
//! standby's name as `application_name` (what `pg_stat_replication` and
//! `synchronous_standby_names` know it by), and the URL's TLS settings
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, as absolute paths since
//! the server's working directory is its data directory). The password, if
//! the URL has one, goes into `primary_conninfo` as `pg_basebackup -R`
//! does: postgresql.auto.conf is mode 0600 inside the 0700 data directory.
//! A URL without a password but with `passfile` passes the `passfile` on
//! (the server's OS user must be able to read it).
//!
//! Settings are written by replacing any earlier line for the same key and
//! appending, which is what `ALTER SYSTEM` does with the same file; the
//! server reads the last occurrence of a key, so postgresql.conf values
//! are overridden. PostgreSQL docs: "Replication" settings (runtime-config-
//! replication: primary_conninfo, primary_slot_name), "Setting Parameters"
//! (ALTER SYSTEM and postgresql.auto.conf), "Preparing Standby Servers".

use std::path::{Path, PathBuf};

use pgrelay_source::{Config, Host};

use crate::os::ServerUser;
use crate::quote::{conf_value, conninfo_value};
use crate::{ReplicaError, Result};

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// A libpq connection string reaching the primary of `config` as
/// `application_name`, with the password when `with_password`.
pub fn primary_conninfo(config: &Config, application_name: &str, with_password: bool) -> String {
    let mut parts: Vec<(&str, String)> = Vec::new();
    let hosts: Vec<String> = config
        .targets
        .iter()
        .map(|t| match &t.host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => absolute(dir).to_string_lossy().into_owned(),
        })
        .collect();
    parts.push(("host", hosts.join(",")));
    if config.targets.iter().any(|t| t.hostaddr.is_some()) {
        let addrs: Vec<String> = config
            .targets
            .iter()
            .map(|t| t.hostaddr.map(|a| a.to_string()).unwrap_or_default())
            .collect();
        parts.push(("hostaddr", addrs.join(",")));
    }
    let ports: Vec<String> = config.targets.iter().map(|t| t.port.to_string()).collect();
    parts.push(("port", ports.join(",")));
    parts.push(("user", config.user.clone()));
    if with_password {
        if let Some(p) = &config.password {
            parts.push(("password", p.expose().to_string()));
        } else if let Some(f) = &config.passfile {
            parts.push(("passfile", absolute(f).to_string_lossy().into_owned()));
        }
    }
    parts.push(("application_name", application_name.to_string()));
    parts.push(("sslmode", config.sslmode.as_str().to_string()));
    for (k, v) in [
        ("sslrootcert", &config.sslrootcert),
        ("sslcert", &config.sslcert),
        ("sslkey", &config.sslkey),
    ] {
        if let Some(p) = v.as_ref().filter(|p| p.exists()) {
            parts.push((k, absolute(p).to_string_lossy().into_owned()));
        }
    }
    if let Some(t) = config.connect_timeout {
        parts.push(("connect_timeout", t.as_secs().max(1).to_string()));
    }
    parts
        .into_iter()
        .map(|(k, v)| format!("{k}={}", conninfo_value(&v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `conninfo` with any password value replaced by `***`, for output.
pub fn redact_conninfo(conninfo: &str) -> String {
    let mut out = String::new();
    let mut rest = conninfo;
    while let Some(i) = rest.find("password=") {
        let at_word_start = i == 0 || rest[..i].ends_with(' ');
        out.push_str(&rest[..i + 9]);
        rest = &rest[i + 9..];
        if !at_word_start {
            continue;
        }
        out.push_str("***");
        // Skip the value: quoted ('...' with \-escapes) or up to a space.
        if let Some(stripped) = rest.strip_prefix('\'') {
            let mut chars = stripped.char_indices();
            let mut end = stripped.len();
            while let Some((j, c)) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == '\'' {
                    end = j + 1;
                    break;
                }
            }
            rest = &stripped[end.min(stripped.len())..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Sets (`Some`) or removes (`None`) keys in `<pgdata>/postgresql.auto.conf`;
/// values are written as quoted strings. The file stays owned by `owner`
/// with mode 0600.
pub fn set_auto_conf(
    pgdata: &Path,
    settings: &[(&str, Option<String>)],
    owner: Option<&ServerUser>,
) -> Result<()> {
    let file = pgdata.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n",
        ),
        Err(e) => return Err(ReplicaError::io(format!("read {}", file.display()), e)),
    };
    let mut out = String::new();
    for line in old.lines() {
        let key = line
            .split(['=', ' ', '\t'])
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if settings.iter().any(|(k, _)| *k == key) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (k, v) in settings {
        if let Some(v) = v {
            out.push_str(&format!("{k} = {}\n", conf_value(v)));
        }
    }
    write_owned(&file, out.as_bytes(), owner)
}

/// Writes `file` with mode 0600, owned by `owner`.
pub fn write_owned(file: &Path, contents: &[u8], owner: Option<&ServerUser>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(file, contents)
        .map_err(|e| ReplicaError::io(format!("write {}", file.display()), e))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ReplicaError::io(format!("chmod {}", file.display()), e))?;
    if let Some(u) = owner {
        std::os::unix::fs::chown(file, Some(u.uid), Some(u.gid))
            .map_err(|e| ReplicaError::io(format!("chown {}", file.display()), e))?;
    }
    Ok(())
}

/// What makes a data directory start as a streaming standby.
#[derive(Debug, Clone)]
pub struct StandbySettings {
    /// `primary_conninfo` (with the password, if any).
    pub primary_conninfo: String,
    /// `primary_slot_name`.
    pub slot: String,
    /// `port`, when pgrelay chose it.
    pub port: Option<u16>,
    /// `unix_socket_directories`, when pgrelay chose it.
    pub socket_dir: Option<PathBuf>,
}

/// Writes the standby settings and `standby.signal` into `pgdata`.
pub fn write_standby_config(
    pgdata: &Path,
    s: &StandbySettings,
    owner: Option<&ServerUser>,
) -> Result<()> {
    let mut settings: Vec<(&str, Option<String>)> = vec![
        ("primary_conninfo", Some(s.primary_conninfo.clone())),
        ("primary_slot_name", Some(s.slot.clone())),
        ("hot_standby", Some("on".into())),
    ];
    if let Some(p) = s.port {
        settings.push(("port", Some(p.to_string())));
    }
    if let Some(d) = &s.socket_dir {
        settings.push((
            "unix_socket_directories",
            Some(d.to_string_lossy().into_owned()),
        ));
    }
    set_auto_conf(pgdata, &settings, owner)?;
    write_owned(&pgdata.join("standby.signal"), b"", owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_carries_tls_and_redacts() {
        let c = Config::parse(
            "host=db.example port=5433 user=repl password=s3cr'et dbname=x sslmode=verify-full",
        )
        .unwrap();
        let ci = primary_conninfo(&c, "standby_a", true);
        assert!(ci.contains("host=db.example port=5433 user=repl"), "{ci}");
        assert!(ci.contains("password='s3cr\\'et'"), "{ci}");
        assert!(ci.contains("application_name=standby_a"), "{ci}");
        assert!(ci.contains("sslmode=verify-full"), "{ci}");
        let r = redact_conninfo(&ci);
        assert!(!r.contains("s3cr"), "{r}");
        assert!(r.contains("password=*** application_name"), "{r}");
        assert!(!primary_conninfo(&c, "s", false).contains("password"));
    }

    #[test]
    fn auto_conf_replaces_keys() {
        let dir = std::env::temp_dir().join(format!("pgrelay-replica-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("postgresql.auto.conf"),
            "# header\nport = '1'\nwork_mem = '8MB'\n",
        )
        .unwrap();
        set_auto_conf(
            &dir,
            &[("port", Some("2".into())), ("work_mem", None)],
            None,
        )
        .unwrap();
        let s = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert_eq!(s, "# header\nport = '2'\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
