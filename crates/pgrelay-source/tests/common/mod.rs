//! Helpers shared by pgrelay-source's integration tests (each test file
//! uses a subset, hence the dead_code allowance).
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use pgrelay_source::{Config, LogicalStream, Lsn, ReplicationClient, XLogData};

/// Parses with an empty environment whose HOME is `home`, so nothing of
/// the machine running the tests (PG* variables, ~/.pgpass,
/// ~/.postgresql/root.crt) leaks in.
pub fn isolated_config(conninfo: &str, home: &Path) -> Config {
    let home = home.display().to_string();
    Config::parse_with_env(conninfo, |k| (k == "HOME").then(|| home.clone()))
        .unwrap_or_else(|e| panic!("{conninfo}: {e}"))
}

/// The first column of the first row `sql` returns on a replication
/// connection.
pub async fn repl_value(client: &mut ReplicationClient, sql: &str) -> Option<String> {
    let results = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    results
        .into_iter()
        .find_map(|r| r.rows.into_iter().next())
        .and_then(|row| row.into_iter().next().flatten())
}

/// XLogData until (and including) the next Commit.
pub async fn transaction(stream: &mut LogicalStream) -> Vec<XLogData> {
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("no data within 30 s")
            .expect("stream error")
            .expect("stream ended");
        let commit = msg.data.first() == Some(&b'C');
        out.push(msg);
        if commit {
            return out;
        }
    }
}

/// `end_lsn` of a pgoutput Commit: 'C', flags, commit LSN, end LSN, time.
pub fn commit_end(msg: &XLogData) -> Lsn {
    let bytes: [u8; 8] = msg.data[10..18].try_into().expect("commit message");
    Lsn(u64::from_be_bytes(bytes))
}
