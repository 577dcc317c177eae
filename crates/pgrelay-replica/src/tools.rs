//! Finding the PostgreSQL program (`pg_basebackup`, `pg_ctl`, `pg_rewind`)
//! that matches a server's major version.
//!
//! A physical standby is a byte copy of its primary, so every program that
//! touches it must be of the primary's major. Search order, first match
//! wins, and every candidate's `--version` is checked (Debian's
//! `pg_wrapper` in PATH may answer for another major):
//! 1. `--pg-bin DIR` (only there, when given);
//! 2. `$PGRELAY_PG_BIN_<major>`;
//! 3. every directory in `PATH`;
//! 4. Debian's `/usr/lib/postgresql/<major>/bin`;
//! 5. the project's install folder (`scripts/install-postgres.sh`):
//!    `$PGRELAY_PG_DIR`, or `.pg` in the current directory or one of its
//!    parents, as `<dir>/<major>/bin` and
//!    `<dir>/pgserver-<major>/pgserver/pginstall/bin`.
//!
//! A miss is an error naming what to install. PostgreSQL docs:
//! "pg_basebackup" (its server-version compatibility notes).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ReplicaError, Result};

/// Where to look for PostgreSQL programs.
#[derive(Debug, Clone, Default)]
pub struct ToolSearch {
    /// `--pg-bin DIR`: when set, the only place searched.
    pub pg_bin: Option<PathBuf>,
}

/// The major version a program reports with `--version`
/// (`pg_basebackup (PostgreSQL) 16.2` → 16).
pub fn version_major(program: &Path) -> Option<u32> {
    let out = Command::new(program).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version_major(text: &str) -> Option<u32> {
    let after = text.split(')').nth(1)?.trim();
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl ToolSearch {
    /// The directories searched for `major`, in order.
    pub fn candidates(&self, major: u32) -> Vec<PathBuf> {
        if let Some(dir) = &self.pg_bin {
            return vec![dir.clone()];
        }
        let mut dirs = Vec::new();
        if let Some(dir) = std::env::var_os(format!("PGRELAY_PG_BIN_{major}")) {
            dirs.push(PathBuf::from(dir));
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        let mut roots = Vec::new();
        if let Some(dir) = std::env::var_os("PGRELAY_PG_DIR") {
            roots.push(PathBuf::from(dir));
        }
        if let Ok(cwd) = std::env::current_dir() {
            for a in cwd.ancestors() {
                roots.push(a.join(".pg"));
            }
        }
        for root in roots {
            dirs.push(root.join(major.to_string()).join("bin"));
            dirs.push(
                root.join(format!("pgserver-{major}"))
                    .join("pgserver/pginstall/bin"),
            );
        }
        dirs
    }

    /// `name` of PostgreSQL `major`, or an error naming what to install.
    pub fn find(&self, name: &str, major: u32) -> Result<PathBuf> {
        let mut wrong = Vec::new();
        for dir in self.candidates(major) {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            match version_major(&path) {
                Some(m) if m == major => return Ok(path),
                Some(m) => wrong.push(format!("{} is {m}", path.display())),
                None => wrong.push(format!("{} does not run", path.display())),
            }
        }
        let seen = if wrong.is_empty() {
            String::new()
        } else {
            format!(" (found, but not usable: {})", wrong.join("; "))
        };
        let where_ = match &self.pg_bin {
            Some(d) => format!("in --pg-bin {}", d.display()),
            None => format!(
                "in $PGRELAY_PG_BIN_{major}, PATH, /usr/lib/postgresql/{major}/bin or the \
                 project's .pg folder"
            ),
        };
        let package = if matches!(name, "pg_ctl" | "postgres" | "pg_rewind" | "initdb") {
            format!("postgresql-{major}")
        } else {
            format!("postgresql-client-{major}")
        };
        Err(ReplicaError::ToolMissing(format!(
            "{name} of PostgreSQL {major} not found {where_}{seen}; it must match the \
             server's major version: install the Debian package `{package}` or run \
             `scripts/install-postgres.sh`, or point --pg-bin (or PGRELAY_PG_BIN_{major}) at \
             the directory holding it"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version_major("pg_basebackup (PostgreSQL) 16.2\n"),
            Some(16)
        );
        assert_eq!(
            parse_version_major("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_version_major("garbage"), None);
    }

    #[test]
    fn missing_tool_names_the_package() {
        let search = ToolSearch {
            pg_bin: Some(PathBuf::from("/nonexistent")),
        };
        let e = search.find("pg_basebackup", 13).unwrap_err().to_string();
        assert!(e.contains("postgresql-client-13"), "{e}");
        assert!(e.contains("scripts/install-postgres.sh"), "{e}");
    }
}
