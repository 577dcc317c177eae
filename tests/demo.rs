//! `pgrelay demo`: starts its servers, streams a live workload, and on
//! Ctrl-C (SIGINT) verifies the targets equal the source and cleans up;
//! a missing PostgreSQL major is explained with how to install it.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_streams_until_ctrl_c_then_verifies_and_cleans_up() {
    let mut child = Command::new(PGRELAY)
        .args(["demo", "--rate", "100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    // Let it show lag a few times, then press Ctrl-C.
    let mut lag_lines = 0;
    while lag_lines < 6 {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("demo printed nothing for 120 s")
            .unwrap()
            .unwrap_or_else(|| panic!("demo ended early: {out:#?}"));
        if line.contains(" lag ") {
            lag_lines += 1;
        }
        out.push(line);
    }
    let pid = child.id().unwrap() as i32;
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    while let Ok(Some(line)) = lines.next_line().await {
        out.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("demo did not finish after Ctrl-C")
        .unwrap();
    let text = out.join("\n");
    assert!(status.success(), "demo failed: {text}");
    assert_eq!(
        text.matches("tables equal to the source").count(),
        2,
        "{text}"
    );
    assert!(text.contains("demo servers removed"), "{text}");
}

#[test]
fn a_missing_major_says_how_to_install_it() {
    let out = std::process::Command::new(PGRELAY)
        .args(["demo", "--source-major", "13"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("PostgreSQL 13 is not installed") && err.contains("install-postgres.sh"),
        "{err}"
    );
}
