#!/usr/bin/env bash
# CI entry point for pgrelay's fuzz targets (works on stable Rust):
#  1. builds the fuzz workspace (library, replay/seed/smoke runners),
#  2. replays every corpus input through its target (tests/replay.rs),
#  3. runs a short random-mutation smoke round per target
#     (FUZZ_SMOKE_SECS, default 10; 0 disables),
#  4. if `cargo fuzz` is installed, also builds the libFuzzer binaries
#     (on stable via RUSTC_BOOTSTRAP=1, which cargo-fuzz's flags need).
set -euo pipefail
cd "$(dirname "$0")"

cargo build --release --bins
cargo test --release
secs=${FUZZ_SMOKE_SECS:-10}
if [ "$secs" != 0 ]; then
    cargo run --release --bin smoke -- all "$secs"
fi
if cargo fuzz --version >/dev/null 2>&1; then
    if rustc --version | grep -q nightly; then
        cargo fuzz build --features libfuzzer
    else
        RUSTC_BOOTSTRAP=1 cargo fuzz build --features libfuzzer
    fi
else
    echo "cargo-fuzz not installed: skipping the libFuzzer build"
fi
