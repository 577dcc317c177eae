#!/usr/bin/env bash
# The whole test suite: installs PostgreSQL 14-18 under .pg/ when missing
# (scripts/install-postgres.sh is idempotent), then runs every test of the
# workspace against real servers. Extra arguments go to `cargo test`.
# PGRELAY_PG_VERSIONS="15 17" restricts the majors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-postgres.sh
exec cargo test --workspace --locked "$@"
