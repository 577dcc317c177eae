//! pgrelay's test kit: real PostgreSQL servers for every supported major.
//!
//! Every integration test in the workspace stands on this crate: a
//! [`Cluster`] per server (initdb in a temp dir, run as an unprivileged OS
//! user when the test is root, torn down on Drop), generated roles for every
//! authentication method and optional TLS with its own CA, workloads
//! (pgbench and a built-in generator), the database comparison that ends
//! every replication test, and a [`FaultProxy`] that cuts, refuses, delays
//! or stalls TCP connections. Binaries come from `scripts/install-postgres.sh`
//! (see [`install`]); a missing major fails the test with that command.

pub mod bench;
pub mod cluster;
pub mod compare;
pub mod fixtures;
pub mod install;
pub mod proxy;
pub mod tls;
pub mod workload;

pub use cluster::{
    connect_plain, describe, free_port, query, query_scalar, simple_rows, unique_name, Cluster,
    ClusterBuilder, CERT_ROLE, MD5_ROLE, REPLICATION_ROLE, SCRAM_ROLE, SUPERUSER, TEST_PASSWORD,
};
pub use compare::{assert_databases_equal, compare_databases, Comparison, TableDifference};
pub use install::{client_tool, majors, selected, PgInstall, SUPPORTED_MAJORS};
pub use proxy::FaultProxy;
pub use tls::{connect_tls, TestCa};
pub use workload::{Workload, WorkloadStats};

/// Declares one `#[tokio::test]` per supported major, each calling
/// `$body(major).await`. A major left out by `PGRELAY_PG_VERSIONS` returns
/// early and says so; a selected but missing major fails with the install
/// command.
///
/// ```ignore
/// pgrelay_testkit::per_major!(smoke, |major| async move { /* ... */ });
/// ```
#[macro_export]
macro_rules! per_major {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::per_major!(@one $body, pg14, 14);
            $crate::per_major!(@one $body, pg15, 15);
            $crate::per_major!(@one $body, pg16, 16);
            $crate::per_major!(@one $body, pg17, 17);
            $crate::per_major!(@one $body, pg18, 18);
        }
    };
    (@one $body:expr, $test:ident, $major:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            if !$crate::selected($major) {
                eprintln!("PostgreSQL {} not in PGRELAY_PG_VERSIONS; not run", $major);
                return;
            }
            ($body)($major).await
        }
    };
}
