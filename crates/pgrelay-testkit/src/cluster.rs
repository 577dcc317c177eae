//! One throwaway PostgreSQL server per test.
//!
//! A [`Cluster`] is initdb'd into its own temp dir, listens on a free
//! 127.0.0.1 port with its Unix socket in the same dir, and is torn down on
//! Drop even when the test panics (then its server log is printed, so a
//! failing test explains itself). PostgreSQL refuses to run as root, so when
//! the test process is root every server command runs through `runuser` as
//! an unprivileged OS user (`postgres`, or `PGRELAY_PG_OS_USER`).
//!
//! Invariants: a `Cluster` value always owns its directory; the port never
//! changes after the first successful start (tests and proxies hold it);
//! roles and pg_hba.conf are generated per cluster, so tests never share
//! credentials or state. See the PostgreSQL docs "Server Setup and
//! Operation" (initdb, pg_ctl) and "Client Authentication" (pg_hba.conf).

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::install::PgInstall;
use crate::tls::{CertFiles, TestCa};

/// The bootstrap superuser; trusted on the socket and on 127.0.0.1.
pub const SUPERUSER: &str = "postgres";
/// A non-superuser with REPLICATION and a SCRAM password.
pub const REPLICATION_ROLE: &str = "pgrelay_repl";
/// A role whose password is stored as MD5 and authenticated with `md5`.
pub const MD5_ROLE: &str = "pgrelay_md5";
/// A role authenticated with `scram-sha-256`.
pub const SCRAM_ROLE: &str = "pgrelay_scram";
/// A role that may only log in with a client certificate (TLS clusters).
pub const CERT_ROLE: &str = "pgrelay_cert";
/// The password of every password role. Tests that check secrets never leak
/// search output for this string.
pub const TEST_PASSWORD: &str = "pgrelay-Test-Secret-7f3a";

/// Settings every cluster starts with; a builder's own settings come later in
/// postgresql.conf, so they win.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("wal_level", "logical"),
    ("max_replication_slots", "20"),
    ("max_wal_senders", "20"),
    ("max_worker_processes", "16"),
    ("max_logical_replication_workers", "8"),
    ("max_prepared_transactions", "10"),
    ("max_connections", "100"),
    ("shared_buffers", "32MB"),
    // Only an OS crash loses unsynced data; tests kill processes, not kernels.
    ("fsync", "off"),
    ("log_line_prefix", "'%m [%p] %q%u@%d '"),
    ("log_min_messages", "warning"),
    ("datestyle", "'iso, mdy'"),
    ("timezone", "'UTC'"),
];

fn os_user() -> String {
    std::env::var("PGRELAY_PG_OS_USER").unwrap_or_else(|_| "postgres".to_string())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of the OS user servers run as, when we are root.
fn server_owner() -> Option<(libc::uid_t, libc::gid_t)> {
    if !is_root() {
        return None;
    }
    let name = os_user();
    let cname = CString::new(name.clone()).expect("user name has no NUL");
    // SAFETY: getpwnam returns null or a pointer to static storage that we
    // read immediately; tests only call it under the lock below.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        panic!(
            "running as root, PostgreSQL must run as an unprivileged OS user, but user `{name}` \
             does not exist: run `scripts/install-postgres.sh` (it creates it) or set \
             PGRELAY_PG_OS_USER"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path) {
    if let Some((uid, gid)) = server_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to the server user: {e}", path.display()));
    }
}

/// A command run as the server's OS user.
fn server_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg(os_user()).arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: could not run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A free TCP port on 127.0.0.1 that this process has not handed out before.
/// Another process can still take it before the server binds, which
/// [`Cluster::start`] survives by retrying with a new port.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port on 127.0.0.1")
            .port();
        if given.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A name no other test in this run (or a parallel run) uses: for slots,
/// publications and databases. Lowercase, a valid unquoted identifier.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{:04x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    )
}

/// How to build a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    major: u32,
    settings: Vec<(String, String)>,
    hba: Vec<String>,
    tls: bool,
}

/// TLS material of a cluster started with [`ClusterBuilder::tls`].
pub struct ClusterTls {
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub server: CertFiles,
}

/// A running (or stopped) throwaway PostgreSQL server.
pub struct Cluster {
    install: PgInstall,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    running: bool,
    tls: Option<ClusterTls>,
}

impl ClusterBuilder {
    /// Adds `name = value` to postgresql.conf. The value is written as given,
    /// so quote strings: `.setting("wal_sender_timeout", "'2s'")`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Puts a line at the top of pg_hba.conf, before the generated ones.
    pub fn hba_line(mut self, line: &str) -> Self {
        self.hba.push(line.to_string());
        self
    }

    /// Serves TLS with a fresh CA and a server certificate for
    /// `localhost`/127.0.0.1, and accepts client certificates for
    /// [`CERT_ROLE`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn start(self) -> Cluster {
        let install = PgInstall::require(self.major);
        let base = std::env::var_os("PGRELAY_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgrelay-pg{}-", self.major))
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a temp dir in {}: {e}", base.display()));
        let root = dir.path().to_path_buf();
        chown(&root);
        let data = root.join("data");
        let log = root.join("server.log");

        let mut initdb = server_command(&install.tool("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"])
            .arg("--no-sync");
        if let Err(e) = run(initdb, &format!("initdb (PostgreSQL {})", self.major)) {
            panic!("{e}");
        }

        let tls = self.tls.then(|| {
            let ca = TestCa::new();
            let ca_file = root.join("ca.crt");
            std::fs::write(&ca_file, ca.cert_pem()).expect("write CA file");
            let server = ca.issue_server(&root);
            for p in [&ca_file, &server.cert, &server.key] {
                chown(p);
            }
            ClusterTls {
                ca,
                ca_file,
                server,
            }
        });

        let mut conf = String::from("\n# pgrelay-testkit\n");
        let _ = writeln!(conf, "unix_socket_directories = '{}'", root.display());
        for (k, v) in BASE_SETTINGS {
            let _ = writeln!(conf, "{k} = {v}");
        }
        if let Some(t) = &tls {
            let _ = writeln!(conf, "ssl = on");
            let _ = writeln!(conf, "ssl_cert_file = '{}'", t.server.cert.display());
            let _ = writeln!(conf, "ssl_key_file = '{}'", t.server.key.display());
            let _ = writeln!(conf, "ssl_ca_file = '{}'", t.ca_file.display());
        }
        for (k, v) in &self.settings {
            let _ = writeln!(conf, "{k} = {v}");
        }
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(data.join("pg_hba.conf"), hba_conf(&self.hba, self.tls))
            .expect("write pg_hba.conf");

        let mut cluster = Cluster {
            install,
            dir: Some(dir),
            root,
            data,
            log,
            port: 0,
            running: false,
            tls,
        };
        cluster.first_start();
        cluster.create_roles();
        cluster
    }
}

fn hba_conf(extra: &[String], tls: bool) -> String {
    let mut s = String::from("# generated by pgrelay-testkit, first match wins\n");
    for line in extra {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("local all all trust\nlocal replication all trust\n");
    for (role, method) in [
        (MD5_ROLE, "md5"),
        (SCRAM_ROLE, "scram-sha-256"),
        (REPLICATION_ROLE, "scram-sha-256"),
    ] {
        for db in ["all", "replication"] {
            let _ = writeln!(s, "host {db} {role} 127.0.0.1/32 {method}");
        }
    }
    if tls {
        for db in ["all", "replication"] {
            let _ = writeln!(s, "hostssl {db} {CERT_ROLE} 127.0.0.1/32 cert");
        }
    }
    s.push_str("host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n");
    s
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

impl Cluster {
    pub fn builder(major: u32) -> ClusterBuilder {
        ClusterBuilder {
            major,
            settings: Vec::new(),
            hba: Vec::new(),
            tls: false,
        }
    }

    /// A cluster of `major` with the default settings (wal_level=logical).
    pub fn start(major: u32) -> Cluster {
        Self::builder(major).start()
    }

    pub fn major(&self) -> u32 {
        self.install.major
    }

    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket (and everything else).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// `key=value` connection string for `role` on `db` over TCP; password
    /// roles get [`TEST_PASSWORD`].
    pub fn conninfo(&self, role: &str, db: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={role} dbname={db} application_name=pgrelay-testkit",
            self.port
        );
        if role != SUPERUSER {
            let _ = write!(s, " password={TEST_PASSWORD}");
        }
        s
    }

    /// `postgres://` URL for `role` on `db` over TCP.
    pub fn url(&self, role: &str, db: &str) -> String {
        if role == SUPERUSER {
            format!("postgres://{role}@127.0.0.1:{}/{db}", self.port)
        } else {
            format!(
                "postgres://{role}:{TEST_PASSWORD}@127.0.0.1:{}/{db}",
                self.port
            )
        }
    }

    /// Superuser URL of `db`.
    pub fn superuser_url(&self, db: &str) -> String {
        self.url(SUPERUSER, db)
    }

    /// A superuser client on `db`; the connection task runs on the caller's
    /// runtime.
    pub async fn connect(&self, db: &str) -> Client {
        self.connect_as(SUPERUSER, db).await.unwrap_or_else(|e| {
            panic!(
                "connect to PostgreSQL {} on port {}: {e}",
                self.major(),
                self.port
            )
        })
    }

    pub async fn connect_as(&self, role: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
        connect_plain(&self.conninfo(role, db)).await
    }

    /// Runs `sql` (any number of statements) as superuser on `db` from
    /// synchronous code, even inside an async test: it gets its own thread
    /// and runtime. Returns the rows of every statement, as text.
    pub fn query_blocking(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let conninfo = self.conninfo(SUPERUSER, db);
        let sql = sql.to_string();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a runtime");
                rt.block_on(async {
                    let client = connect_plain(&conninfo).await?;
                    simple_rows(&client, &sql).await
                })
            })
            .join()
            .expect("SQL thread panicked")
        });
        result.unwrap_or_else(|e| {
            panic!(
                "SQL on PostgreSQL {} (port {}) failed: {}\nSQL: {sql}",
                self.major(),
                self.port,
                describe(&e)
            )
        })
    }

    pub fn execute_blocking(&self, db: &str, sql: &str) {
        self.query_blocking(db, sql);
    }

    /// The single value of a single-row, single-column query.
    pub fn scalar_blocking(&self, db: &str, sql: &str) -> Option<String> {
        let rows = self.query_blocking(db, sql);
        rows.into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .unwrap_or_else(|| panic!("`{sql}` returned no row"))
    }

    pub fn create_database(&self, name: &str) {
        self.execute_blocking("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    fn pg_ctl(&self) -> Command {
        let mut c = server_command(&self.install.tool("pg_ctl"));
        c.arg("-D").arg(&self.data);
        c
    }

    fn first_start(&mut self) {
        // Another process may grab the port between free_port() and the
        // server's bind; a new port fixes that.
        for attempt in 0..5 {
            self.port = free_port();
            append(
                &self.data.join("postgresql.conf"),
                &format!("port = {}\n", self.port),
            );
            match self.try_start() {
                Ok(()) => return,
                Err(e) if attempt < 4 && self.log().contains("could not bind") => {
                    eprintln!("port {} taken, retrying: {e}", self.port);
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let mut c = self.pg_ctl();
        c.arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"]);
        run(c, &format!("pg_ctl start (PostgreSQL {})", self.major()))?;
        self.running = true;
        Ok(())
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- server log ({}) ---\n{}",
            self.log.display(),
            tail(&self.log(), 80)
        )
    }

    /// Starts a stopped or crashed server (crash recovery runs here).
    pub fn start_again(&mut self) {
        if let Err(e) = self.try_start() {
            self.fail(&e);
        }
    }

    /// Clean shutdown (`-m fast`): sessions are ended, a checkpoint is written.
    pub fn stop(&mut self) {
        let mut c = self.pg_ctl();
        c.args(["-m", "fast", "-w", "-t", "120", "stop"]);
        if let Err(e) = run(c, "pg_ctl stop") {
            self.fail(&e);
        }
        self.running = false;
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Re-reads configuration files (pg_hba.conf, postgresql.conf).
    pub fn reload(&self) {
        let mut c = self.pg_ctl();
        c.arg("reload");
        if let Err(e) = run(c, "pg_ctl reload") {
            self.fail(&e);
        }
    }

    /// Replaces the extra lines at the top of pg_hba.conf and reloads.
    pub fn set_hba(&self, extra: &[&str]) {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        std::fs::write(
            self.data.join("pg_hba.conf"),
            hba_conf(&extra, self.tls.is_some()),
        )
        .expect("write pg_hba.conf");
        self.reload();
    }

    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// kill -9 of the postmaster and every backend, like a power cut to the
    /// server processes. The next [`Cluster::start_again`] runs crash
    /// recovery. Backends are killed too because a surviving backend keeps
    /// the old shared memory attached and the new postmaster refuses to start.
    pub fn crash(&mut self) {
        let pid = self
            .postmaster_pid()
            .unwrap_or_else(|| self.fail("crash(): no postmaster.pid; is the server running?"));
        let children = child_pids(pid);
        // SAFETY: plain kill(2) on pids read from postmaster.pid and /proc.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            for c in &children {
                libc::kill(*c, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::iter::once(pid)
            .chain(children.iter().copied())
            .any(alive)
        {
            if Instant::now() > deadline {
                self.fail("crash(): server processes still alive 30 s after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The dead postmaster is not our child, so it stays a zombie until
        // whoever adopted it reaps it, and a zombie's pid still passes the
        // new postmaster's "is the old one alive" check on postmaster.pid.
        // Give the reaper a moment, then remove the lock file ourselves: a
        // real crash leaves it pointing at a pid that is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: kill(pid, 0) only probes for existence.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
        self.running = false;
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        let mut c = self.pg_ctl();
        c.args(["-w", "-t", "120", "promote"]);
        if let Err(e) = run(c, "pg_ctl promote") {
            self.fail(&e);
        }
    }

    /// A streaming physical standby of this cluster, with its own physical
    /// slot. The primary is restarted (its sessions end): it is stopped
    /// cleanly for a moment so its data
    /// directory can be copied as a consistent base backup; no client tool
    /// is needed, so it works for every major.
    pub fn start_standby(&mut self) -> Cluster {
        let slot = unique_name("standby");
        self.execute_blocking(
            "postgres",
            &format!("SELECT pg_create_physical_replication_slot('{slot}', true)"),
        );
        let base = self
            .root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgrelay-pg{}-standby-", self.major()))
            .tempdir_in(base)
            .expect("create standby temp dir");
        let root = dir.path().to_path_buf();
        chown(&root);
        let data = root.join("data");
        self.stop();
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(&self.data).arg(&data);
        if let Err(e) = run(cp, "copy the data directory") {
            panic!("{e}");
        }
        self.start_again();
        // The copy carries the primary's slots; on the standby they would only
        // pin WAL.
        if let Ok(entries) = std::fs::read_dir(data.join("pg_replslot")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let port = free_port();
        append(
            &data.join("postgresql.conf"),
            &format!(
                "\n# standby\nport = {port}\nunix_socket_directories = '{}'\n\
                 primary_conninfo = 'host=127.0.0.1 port={} user={SUPERUSER} application_name={slot}'\n\
                 primary_slot_name = '{slot}'\nhot_standby = on\n",
                root.display(),
                self.port
            ),
        );
        std::fs::write(data.join("standby.signal"), "").expect("write standby.signal");
        chown(&data.join("standby.signal"));
        let mut standby = Cluster {
            install: self.install.clone(),
            dir: Some(dir),
            log: root.join("server.log"),
            root,
            data,
            port,
            running: false,
            tls: None,
        };
        standby.start_again();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let streaming = self.scalar_blocking(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name = '{slot}' AND state = 'streaming'"
                ),
            );
            if streaming.as_deref() == Some("1") {
                break;
            }
            if Instant::now() > deadline {
                standby.fail("standby did not start streaming within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        standby
    }

    fn create_roles(&self) {
        let mut sql = format!(
            "CREATE ROLE {REPLICATION_ROLE} LOGIN REPLICATION PASSWORD '{TEST_PASSWORD}';\
             CREATE ROLE {SCRAM_ROLE} LOGIN PASSWORD '{TEST_PASSWORD}';\
             SET password_encryption = 'md5';\
             CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{TEST_PASSWORD}';\
             RESET password_encryption;\
             CREATE ROLE {CERT_ROLE} LOGIN;"
        );
        // PUBLIC lost CREATE on schema public in 15; tests create tables as
        // these roles on every major alike.
        for role in [REPLICATION_ROLE, SCRAM_ROLE, MD5_ROLE, CERT_ROLE] {
            let _ = write!(sql, "GRANT ALL ON SCHEMA public TO {role};");
        }
        self.execute_blocking("postgres", &sql);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL {} server log, port {} ({}) ---\n{}--- end of server log ---",
                self.major(),
                self.port,
                self.log.display(),
                tail(&self.log(), 200)
            );
        }
        if self.running || self.postmaster_pid().is_some_and(alive) {
            let mut c = self.pg_ctl();
            c.args(["-m", "immediate", "-w", "-t", "30", "stop"]);
            if run(c, "pg_ctl stop").is_err() {
                if let Some(pid) = self.postmaster_pid() {
                    // SAFETY: kill(2) of our own postmaster.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if std::env::var_os("PGRELAY_KEEP_CLUSTERS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping cluster directory {}", dir.keep().display());
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); only a live process has a state other
    // than Z in /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn child_pids(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut s = all[start..].join("\n");
    s.push('\n');
    s
}

/// Connects without TLS and drives the connection on the current runtime.
pub async fn connect_plain(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Rows of every statement in `sql`, as text (NULL as None).
/// [`simple_rows`] for tests: panics with the statement and the server's
/// message on error.
pub async fn query(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    simple_rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
}

/// The first column of the first row of [`query`] ("" for NULL).
pub async fn query_scalar(client: &Client, sql: &str) -> String {
    query(client, sql).await[0][0].clone().unwrap_or_default()
}

pub async fn simple_rows(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let mut rows = Vec::new();
    for msg in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = msg {
            rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(rows)
}

/// An error with the server's message, detail and SQLSTATE when it has them
/// (tokio-postgres' Display alone says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {}){}",
            db.severity(),
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!("; {d}")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}
