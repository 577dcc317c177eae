//! Running PostgreSQL's programs as the right OS user, and reading a data
//! directory's own files (PG_VERSION, postmaster.pid, global/pg_control).
//!
//! PostgreSQL refuses to run as root. When pgrelay runs as root, every
//! server program (`pg_ctl`, `pg_rewind`) runs through `runuser -u USER`
//! as the data directory's owner ([`ServerUser::for_data_dir`]); files
//! pgrelay writes as root (a base backup, configuration) are handed to
//! that user afterwards ([`ServerUser::chown_tree`]), the data directory
//! mode being 0700 as the server demands. When pgrelay is not root,
//! programs run as the current user and nothing is chowned.
//!
//! Invariant: no password is ever passed on a command line (visible in
//! `ps`); callers pass it through the environment (`PGPASSWORD`).
//! PostgreSQL docs: "Creating a Database Cluster" (ownership), "pg_ctl",
//! "pg_controldata" (the fields of pg_control read here).

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::tools::ToolSearch;
use crate::{ReplicaError, Result};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged OS user PostgreSQL runs as, when pgrelay is root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

fn passwd_entry(pw: *const libc::passwd) -> Option<ServerUser> {
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points to a passwd record that stays valid
    // until the next getpw* call, which cannot happen before we copy it
    // (callers hold PASSWD_LOCK).
    unsafe {
        Some(ServerUser {
            name: CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned(),
            uid: (*pw).pw_uid,
            gid: (*pw).pw_gid,
        })
    }
}

static PASSWD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl ServerUser {
    /// Looks a user up by name.
    pub fn by_name(name: &str) -> Result<ServerUser> {
        let c = CString::new(name)
            .map_err(|_| ReplicaError::Precondition(format!("bad OS user name {name:?}")))?;
        let _g = PASSWD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: c is a valid NUL-terminated string.
        passwd_entry(unsafe { libc::getpwnam(c.as_ptr()) }).ok_or_else(|| {
            ReplicaError::Precondition(format!(
                "OS user `{name}` does not exist; PostgreSQL must run as an unprivileged user: \
                 create it (Debian's postgresql packages create `postgres`) or pass --os-user"
            ))
        })
    }

    fn by_uid(uid: u32) -> Option<ServerUser> {
        let _g = PASSWD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: getpwuid has no preconditions.
        passwd_entry(unsafe { libc::getpwuid(uid) })
    }

    /// The user a server for `pgdata` runs as when pgrelay is root:
    /// `explicit` (`--os-user`) if given, else the owner of `pgdata` (or,
    /// for a directory still to be created, of its nearest existing
    /// parent) unless that is root, else `postgres`. `None` when pgrelay is
    /// not root: programs then run as the current user.
    pub fn for_data_dir(pgdata: &Path, explicit: Option<&str>) -> Result<Option<ServerUser>> {
        if !is_root() {
            return Ok(None);
        }
        if let Some(name) = explicit {
            return ServerUser::by_name(name).map(Some);
        }
        for dir in pgdata.ancestors() {
            if let Ok(meta) = std::fs::metadata(dir) {
                if meta.uid() != 0 {
                    if let Some(u) = ServerUser::by_uid(meta.uid()) {
                        return Ok(Some(u));
                    }
                }
                break;
            }
        }
        ServerUser::by_name("postgres").map(Some)
    }

    /// Gives `path` and everything below it to this user.
    pub fn chown_tree(&self, path: &Path) -> Result<()> {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| ReplicaError::io(format!("stat {}", path.display()), e))?;
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| ReplicaError::io(format!("chown {}", path.display()), e))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| ReplicaError::io(format!("read {}", path.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| ReplicaError::io(format!("read {}", path.display()), e))?;
                self.chown_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// `program` run as `user` (through `runuser`), or directly.
pub fn command_as(user: Option<&ServerUser>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(&u.name).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `cmd` to completion on a blocking thread; a non-zero exit is a
/// [`ReplicaError::Command`] carrying its output.
pub async fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().map_err(|e| ReplicaError::Command {
            what: what.clone(),
            detail: format!("could not run {:?}: {e}", cmd.get_program()),
        })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ReplicaError::Command {
                what,
                detail: format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    })
    .await
    .map_err(|e| ReplicaError::Command {
        what: "a helper thread".into(),
        detail: e.to_string(),
    })?
}

/// Makes `pgdata` 0700 and owned by `user` (the server refuses a data
/// directory others can read), and checks that `user` can actually reach
/// it through its parents.
pub async fn hand_over_data_dir(pgdata: &Path, user: Option<&ServerUser>) -> Result<()> {
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ReplicaError::io(format!("chmod 0700 {}", pgdata.display()), e))?;
    let Some(user) = user else { return Ok(()) };
    user.chown_tree(pgdata)?;
    let mut probe = command_as(Some(user), Path::new("test"));
    probe.arg("-w").arg(pgdata);
    if run(probe, "access check").await.is_err() {
        return Err(ReplicaError::Precondition(format!(
            "OS user `{}` (who runs the server) cannot write {}: make every parent directory \
             traversable for it (chmod o+x, or chown them), or choose another --pgdata",
            user.name,
            pgdata.display()
        )));
    }
    Ok(())
}

/// The major version a data directory was made by (its `PG_VERSION`).
pub fn data_dir_major(pgdata: &Path) -> Result<u32> {
    let file = pgdata.join("PG_VERSION");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        ReplicaError::io(
            format!(
                "read {} (is this a PostgreSQL data directory?)",
                file.display()
            ),
            e,
        )
    })?;
    text.trim().parse().map_err(|_| {
        ReplicaError::Precondition(format!(
            "{} holds {:?}, not a major version",
            file.display(),
            text.trim()
        ))
    })
}

/// What `postmaster.pid` says about a running server.
#[derive(Debug, Clone)]
pub struct Postmaster {
    /// Process id.
    pub pid: i32,
    /// Port.
    pub port: u16,
    /// First Unix socket directory, if any.
    pub socket_dir: Option<PathBuf>,
}

/// The running server of `pgdata`, if its postmaster.pid names a live
/// process.
pub fn postmaster(pgdata: &Path) -> Option<Postmaster> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid: i32 = lines.first()?.trim().parse().ok()?;
    // SAFETY: kill(pid, 0) only probes for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return None;
    }
    let port = lines.get(3)?.trim().parse().ok()?;
    let socket_dir = lines
        .get(4)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    Some(Postmaster {
        pid,
        port,
        socket_dir,
    })
}

/// `pg_ctl` of one data directory, run as its owner.
#[derive(Debug, Clone)]
pub struct PgCtl {
    /// The pg_ctl program (of the data directory's major).
    pub program: PathBuf,
    /// The data directory.
    pub pgdata: PathBuf,
    /// Who runs it (when pgrelay is root).
    pub user: Option<ServerUser>,
}

impl PgCtl {
    /// pg_ctl for `pgdata`, of the major its PG_VERSION names, run as its
    /// owner (or `os_user`).
    pub fn for_data_dir(pgdata: &Path, tools: &ToolSearch, os_user: Option<&str>) -> Result<PgCtl> {
        let major = data_dir_major(pgdata)?;
        Ok(PgCtl {
            program: tools.find("pg_ctl", major)?,
            pgdata: pgdata.to_path_buf(),
            user: ServerUser::for_data_dir(pgdata, os_user)?,
        })
    }

    fn command(&self) -> Command {
        let mut c = command_as(self.user.as_ref(), &self.program);
        c.arg("-D").arg(&self.pgdata);
        c
    }

    /// Starts the server and waits until it accepts connections (a standby
    /// accepts read-only connections once consistent). Its log goes to
    /// `log_file`.
    pub async fn start(&self, log_file: &Path, timeout: Duration) -> Result<()> {
        let mut c = self.command();
        c.arg("-l").arg(log_file).args([
            "-w",
            "-t",
            &timeout.as_secs().max(1).to_string(),
            "start",
        ]);
        run(c, &format!("pg_ctl start -D {}", self.pgdata.display()))
            .await
            .map_err(|e| with_log_tail(e, log_file))?;
        Ok(())
    }

    /// Clean shutdown in `fast` mode: sessions end, a shutdown checkpoint
    /// is written, and connected standbys receive all WAL first.
    pub async fn stop_fast(&self, timeout: Duration) -> Result<()> {
        let mut c = self.command();
        c.args([
            "-m",
            "fast",
            "-w",
            "-t",
            &timeout.as_secs().max(1).to_string(),
            "stop",
        ]);
        run(c, &format!("pg_ctl stop -D {}", self.pgdata.display())).await?;
        Ok(())
    }

    /// Promotes a standby and waits until it left recovery.
    pub async fn promote(&self, timeout: Duration) -> Result<()> {
        let mut c = self.command();
        c.args(["-w", "-t", &timeout.as_secs().max(1).to_string(), "promote"]);
        run(c, &format!("pg_ctl promote -D {}", self.pgdata.display())).await?;
        Ok(())
    }
}

/// Appends the end of the server log to a pg_ctl failure.
fn with_log_tail(e: ReplicaError, log_file: &Path) -> ReplicaError {
    match e {
        ReplicaError::Command { what, detail } => {
            let log = std::fs::read_to_string(log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            ReplicaError::Command {
                what,
                detail: format!(
                    "{detail}; server log {}: {}",
                    log_file.display(),
                    tail.join(" | ")
                ),
            }
        }
        other => other,
    }
}

/// The fields of `global/pg_control` a switchover needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlData {
    /// `DBState`: 1 = shut down, 2 = shut down in recovery, 6 = in production.
    pub state: u32,
    /// LSN of the latest checkpoint record.
    pub checkpoint: u64,
    /// Timeline of the latest checkpoint.
    pub timeline: u32,
}

impl ControlData {
    /// Whether the server was shut down cleanly as a primary.
    pub fn shut_down_cleanly(&self) -> bool {
        self.state == 1
    }
}

/// Reads `global/pg_control` directly: its leading fields
/// (system_identifier u64, pg_control_version u32, catalog_version_no u32,
/// state u32, time i64, checkPoint u64, checkPointCopy.redo u64,
/// checkPointCopy.ThisTimeLineID u32) have kept this layout since
/// PostgreSQL 9.5, so no `pg_controldata` of the right major is needed.
/// Native byte order, as the server writes it.
pub fn control_data(pgdata: &Path) -> Result<ControlData> {
    let file = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&file)
        .map_err(|e| ReplicaError::io(format!("read {}", file.display()), e))?;
    if bytes.len() < 52 {
        return Err(ReplicaError::Precondition(format!(
            "{} is too short to be a pg_control file",
            file.display()
        )));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    Ok(ControlData {
        state: u32_at(16),
        checkpoint: u64_at(32),
        timeline: u32_at(48),
    })
}

/// `X/Y` text form of an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `X/Y`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}
