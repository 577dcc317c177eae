//! Where the PostgreSQL binaries of each major version live.
//!
//! `scripts/install-postgres.sh` puts server binaries for majors 14–18 under
//! `<repo>/.pg/<major>/bin`; `PGRELAY_PG_DIR` moves that folder and
//! `PGRELAY_PG_BIN_<major>` points one major anywhere else. `PGRELAY_PG_VERSIONS`
//! (comma or space separated) restricts the majors that per-version tests run
//! on. A major a test asks for that is not installed is a test failure whose
//! message carries the install command: tests never skip silently.

use std::path::{Path, PathBuf};

/// Every major the project supports, oldest first.
pub const SUPPORTED_MAJORS: [u32; 5] = [14, 15, 16, 17, 18];

/// The command that installs what a failing lookup was missing.
pub const INSTALL_HINT: &str = "run `scripts/install-postgres.sh` from the repository root \
     (or point PGRELAY_PG_BIN_<major> at a PostgreSQL bin directory)";

/// The repository root, found from this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn install_dir() -> PathBuf {
    std::env::var_os("PGRELAY_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".pg"))
}

/// The majors tests should cover: `PGRELAY_PG_VERSIONS` if set, else all of
/// [`SUPPORTED_MAJORS`].
pub fn majors() -> Vec<u32> {
    match std::env::var("PGRELAY_PG_VERSIONS") {
        Ok(list) if !list.trim().is_empty() => {
            let mut out: Vec<u32> = list
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse().unwrap_or_else(|_| {
                        panic!("PGRELAY_PG_VERSIONS holds {s:?}, which is not a major version such as 16")
                    })
                })
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        }
        _ => SUPPORTED_MAJORS.to_vec(),
    }
}

/// Whether `major` is in the set selected by `PGRELAY_PG_VERSIONS`. Tests for
/// one major call this first so a restricted run leaves them out on purpose.
pub fn selected(major: u32) -> bool {
    majors().contains(&major)
}

/// The `bin` directory of one installed major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInstall {
    pub major: u32,
    pub bin: PathBuf,
}

impl PgInstall {
    /// Finds `major`, or explains how to install it.
    pub fn find(major: u32) -> Result<PgInstall, String> {
        let var = format!("PGRELAY_PG_BIN_{major}");
        let bin = match std::env::var_os(&var) {
            Some(dir) => PathBuf::from(dir),
            None => install_dir().join(major.to_string()).join("bin"),
        };
        if bin.join("postgres").is_file() && bin.join("initdb").is_file() {
            Ok(PgInstall { major, bin })
        } else {
            Err(format!(
                "PostgreSQL {major} is not installed: no postgres/initdb in {}; {INSTALL_HINT}",
                bin.display()
            ))
        }
    }

    /// Like [`PgInstall::find`], panicking with the install command: the
    /// form tests use.
    pub fn require(major: u32) -> PgInstall {
        Self::find(major).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// A client tool (`psql`, `pgbench`, `pg_dump`, ...) from the newest
/// installed major that ships it. Client tools talk to older servers, so the
/// newest one is the most widely usable.
pub fn client_tool(name: &str) -> Result<PathBuf, String> {
    SUPPORTED_MAJORS
        .iter()
        .rev()
        .filter_map(|&m| PgInstall::find(m).ok())
        .map(|i| i.tool(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no installed PostgreSQL major ships `{name}`; {INSTALL_HINT}"))
}
