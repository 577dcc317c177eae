//! Write workloads for replication tests.
//!
//! Two kinds: pgbench (TPC-B-like, from the newest installed major that
//! ships it; pgbench talks to older and newer servers alike), and a built-in
//! generator that needs no client tool and exercises what pgbench does not:
//! deletes, NULLs, wide TOASTed values, several tables, and a deterministic
//! sequence from a seed so a failing run can be replayed.

use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use crate::cluster::{Cluster, SUPERUSER};
use crate::install::client_tool;

impl Cluster {
    fn pgbench(&self, db: &str) -> Command {
        let bin = client_tool("pgbench").unwrap_or_else(|e| panic!("{e}"));
        let mut c = Command::new(bin);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port().to_string(),
            "-U",
            SUPERUSER,
        ])
        .arg(db);
        c
    }

    /// `pgbench -i -s scale`: the four pgbench tables with primary keys.
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        let mut c = self.pgbench(db);
        c.args(["-i", "-q", "-s", &scale.to_string()]);
        run_pgbench(c);
    }

    /// `pgbench -c clients -t transactions` (TPC-B-like, each client runs
    /// `transactions` transactions).
    pub fn pgbench_run(&self, db: &str, clients: u32, transactions: u32) {
        run_pgbench(self.pgbench_command(db, clients, transactions));
    }

    /// `pgbench -n -c clients -T seconds` as `role` (a testkit role with
    /// [`crate::TEST_PASSWORD`]): an application load that is not a
    /// superuser, so it can be fenced.
    pub fn pgbench_command_as(&self, role: &str, db: &str, clients: u32, seconds: u32) -> Command {
        let bin = client_tool("pgbench").unwrap_or_else(|e| panic!("{e}"));
        let mut c = Command::new(bin);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port().to_string(),
            "-U",
            role,
        ])
        .env("PGPASSWORD", crate::TEST_PASSWORD)
        .args(["-n", "-c", &clients.to_string(), "-T", &seconds.to_string()])
        .arg(db);
        c
    }

    /// The command [`Cluster::pgbench_run`] runs, to start it in the
    /// background (`tokio::process::Command::from(cmd).output()`) while a
    /// test does other things.
    pub fn pgbench_command(&self, db: &str, clients: u32, transactions: u32) -> Command {
        let mut c = self.pgbench(db);
        c.args([
            "-n",
            "-c",
            &clients.to_string(),
            "-t",
            &transactions.to_string(),
        ]);
        c
    }
}

fn run_pgbench(mut c: Command) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("could not run pgbench {c:?}: {e}"));
    assert!(
        out.status.success(),
        "pgbench failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The built-in generator: `tables` tables `wl_<n>` with a bigint key, a
/// nullable int, a text payload (sometimes large enough to be TOASTed) and a
/// timestamp.
pub struct Workload {
    rng: StdRng,
    tables: u32,
    next_id: i64,
}

/// What a run did, so tests can state expectations.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadStats {
    pub transactions: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
}

impl Workload {
    pub fn new(seed: u64, tables: u32) -> Workload {
        Workload {
            rng: StdRng::seed_from_u64(seed),
            tables: tables.max(1),
            next_id: 1,
        }
    }

    pub fn table_names(&self) -> Vec<String> {
        (0..self.tables).map(|i| format!("wl_{i}")).collect()
    }

    /// Creates the tables (primary key on `id`).
    pub async fn create_tables(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        for t in self.table_names() {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id bigint PRIMARY KEY, n int, \
                     payload text, at timestamptz NOT NULL DEFAULT now())"
                ))
                .await?;
        }
        Ok(())
    }

    fn payload(&mut self) -> Option<String> {
        match self.rng.gen_range(0..20) {
            0 => None,
            // Larger than the TOAST threshold (about 2 kB) even compressed.
            1 => Some(
                (0..3000)
                    .map(|_| char::from(self.rng.gen_range(b'a'..=b'z')))
                    .collect(),
            ),
            _ => Some(format!("row-{}", self.rng.gen::<u32>())),
        }
    }

    /// Runs `transactions` transactions of 1–10 random statements each.
    pub async fn run(
        &mut self,
        client: &mut Client,
        transactions: u64,
    ) -> Result<WorkloadStats, tokio_postgres::Error> {
        let mut stats = WorkloadStats::default();
        for _ in 0..transactions {
            let tx = client.transaction().await?;
            for _ in 0..self.rng.gen_range(1..=10) {
                let table = format!("wl_{}", self.rng.gen_range(0..self.tables));
                let existing = self.rng.gen_range(1..self.next_id.max(2));
                match self.rng.gen_range(0..10) {
                    0..=5 => {
                        let id = self.next_id;
                        self.next_id += 1;
                        let n: Option<i32> = self.rng.gen_bool(0.9).then(|| self.rng.gen());
                        let payload = self.payload();
                        tx.execute(
                            &format!("INSERT INTO {table} (id, n, payload) VALUES ($1, $2, $3)"),
                            &[&id, &n, &payload],
                        )
                        .await?;
                        stats.inserts += 1;
                    }
                    6..=8 => {
                        // Half the updates leave the payload alone, so a
                        // TOASTed value travels as "unchanged".
                        let n: i32 = self.rng.gen();
                        if self.rng.gen_bool(0.5) {
                            tx.execute(
                                &format!("UPDATE {table} SET n = $2 WHERE id = $1"),
                                &[&existing, &n],
                            )
                            .await?;
                        } else {
                            let payload = self.payload();
                            tx.execute(
                                &format!("UPDATE {table} SET n = $2, payload = $3 WHERE id = $1"),
                                &[&existing, &n, &payload],
                            )
                            .await?;
                        }
                        stats.updates += 1;
                    }
                    _ => {
                        tx.execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&existing])
                            .await?;
                        stats.deletes += 1;
                    }
                }
            }
            tx.commit().await?;
            stats.transactions += 1;
        }
        Ok(stats)
    }
}
