//! Passwords from libpq's password file (`~/.pgpass`, `PGPASSFILE`,
//! `passfile=`).
//!
//! Job: find the password for one (host, port, database, user) when the
//! connection string and environment gave none and the server asks for one.
//!
//! Invariants (libpq's): lines are `hostname:port:database:username:password`;
//! blank lines and lines starting with `#` are skipped; in the first four
//! fields `*` matches anything; `\:` and `\\` stand for `:` and `\` in every
//! field; the first matching line wins. For a Unix socket connection the host
//! field is matched against the socket directory, or `localhost` when the
//! directory is the default one. The file is ignored (with a warning) if it
//! is not a regular file or if group or others have any access to it. The
//! password is never logged.
//!
//! PostgreSQL reference: libpq "The Password File" (libpq-pgpass).

use std::io;
use std::path::Path;

use crate::config::{default_socket_dir, Host, Password, Target};

/// Looks `target`/`dbname`/`user` up in `path`. `None` if the file is
/// missing, unsafe, unreadable or has no matching line.
pub(crate) fn lookup(path: &Path, target: &Target, dbname: &str, user: &str) -> Option<Password> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the password file; ignoring it");
            return None;
        }
    };
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "the password file is not a plain file; ignoring it");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the password file has group or world access; permissions should be u=rw (0600) \
                 or less; ignoring it"
            );
            return None;
        }
    }
    let contents = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the password file; ignoring it");
            return None;
        }
    };
    let host = match &target.host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) if *dir == default_socket_dir() => "localhost".to_owned(),
        Host::Unix(dir) => dir.to_string_lossy().into_owned(),
    };
    find(&contents, &host, &target.port.to_string(), dbname, user).map(Password::new)
}

/// The password of the first line matching all four keys.
pub(crate) fn find(
    contents: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    contents.lines().find_map(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut rest = line;
        for want in [host, port, dbname, user] {
            rest = match_field(rest, want)?;
        }
        Some(unescape_password(rest))
    })
}

/// If the field at the start of `line` matches `want` (or is `*`), the
/// text after its terminating `:`.
fn match_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut value = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => return None,
            },
            ':' => return (value == want).then(|| &line[i + 1..]),
            c => value.push(c),
        }
    }
    // A line with fewer than five fields matches nothing.
    None
}

/// The password field: escapes removed, ending at an unescaped `:`.
fn unescape_password(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => out.push('\\'),
            },
            ':' => break,
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const FILE: &str = "\
# comment line: *:*:*:*:never
db.example:5432:app:alice:first
db.example:*:*:alice:second
localhost:5433:*:bob:b\\:ob\\\\pw:trailing
host\\:colon:1:d:u:escaped-host
*:*:*:carol:wild

short:1:2:3
/run/pg:5432:*:dave:socketpw
";

    #[test]
    fn first_match_wins_with_wildcards() {
        assert_eq!(
            find(FILE, "db.example", "5432", "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(FILE, "db.example", "6000", "other", "alice").as_deref(),
            Some("second")
        );
        assert_eq!(
            find(FILE, "elsewhere", "1", "x", "carol").as_deref(),
            Some("wild")
        );
        assert_eq!(find(FILE, "elsewhere", "1", "x", "alice"), None);
        assert_eq!(
            find(FILE, "db.example", "5432", "app", "*"),
            None,
            "* in a key is literal"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            find(FILE, "localhost", "5433", "d", "bob").as_deref(),
            Some("b:ob\\pw")
        );
        assert_eq!(
            find(FILE, "host:colon", "1", "d", "u").as_deref(),
            Some("escaped-host")
        );
        assert_eq!(find(FILE, "short", "1", "2", "3"), None);
        assert_eq!(
            find("h:1:d:u:pw\r\n", "h", "1", "d", "u").as_deref(),
            Some("pw")
        );
        assert_eq!(find("h:1:d:u:", "h", "1", "d", "u").as_deref(), Some(""));
    }

    #[test]
    fn file_permissions_and_socket_hosts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgpass");
        std::fs::write(&path, FILE).expect("write");
        let socket = Target {
            host: Host::Unix(PathBuf::from("/run/pg")),
            hostaddr: None,
            port: 5432,
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            lookup(&path, &socket, "db", "dave")
                .map(|p| p.expose().to_owned())
                .as_deref(),
            Some("socketpw")
        );
        let default = Target {
            host: Host::Unix(default_socket_dir()),
            hostaddr: None,
            port: 5433,
        };
        assert_eq!(
            lookup(&path, &default, "db", "bob")
                .map(|p| p.expose().to_owned())
                .as_deref(),
            Some("b:ob\\pw"),
            "the default socket directory matches localhost"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(
            lookup(&path, &socket, "db", "dave").is_none(),
            "group-readable file used"
        );
        assert!(lookup(&dir.path().join("missing"), &socket, "db", "dave").is_none());
        assert!(
            lookup(dir.path(), &socket, "db", "dave").is_none(),
            "a directory"
        );
    }
}
