//! A dependency-free random-mutation fuzzer for stable toolchains, where
//! libFuzzer's coverage guidance is unavailable: mutates corpus inputs
//! (bit flips, interesting integers at random offsets, splices, insertions,
//! deletions, truncations) and runs them through a target, catching panics.
//!
//! `smoke <target|all> [seconds per target, default 60] [seed]`
//! Crashing inputs are written to `fuzz/artifacts/<target>/crash-<hash>`
//! and reproduced with `cargo run --bin replay -- <target> <file>`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0x00, 0x00],
    &[0xff, 0xff],
    &[0x7f, 0xff],
    &[0x80, 0x00],
    &[0x00, 0x00, 0x00, 0x00],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x80, 0x00, 0x00, 0x00],
    &[0x00, 0x00, 0x00, 0x04],
    &[0x00, 0x00, 0x40, 0x00],
    &[0x00, 0x00, 0x02, 0xf2],
    b"S\x00\x00\x02\xf2\x01",
    b"E",
    b"N",
    b"K",
    b"O",
    b"t",
    b"u",
    b"n",
    b"b",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(6) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len + 1);
                let end = (i + v.len()).min(len);
                input.splice(i..end, v.iter().copied());
            }
            3 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, v.iter().copied());
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                input.truncate(i);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let s = rng.below(other.len());
                    let e = s + rng.below(other.len() - s + 1);
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[s..e].iter().copied());
                }
            }
            _ if len > 1 => {
                // Duplicate a chunk: repeats messages and fields.
                let s = rng.below(len);
                let e = s + 1 + rng.below((len - s).min(64));
                let chunk = input[s..e.min(len)].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            _ => input.push(rng.next() as u8),
        }
    }
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashes = 0;
    for (name, f) in pgrelay_fuzz::TARGETS {
        if which != "all" && which != *name {
            continue;
        }
        let dir = root.join("corpus").join(name);
        let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        corpus.sort();
        if corpus.is_empty() {
            corpus.push(Vec::new());
        }
        let mut rng = Rng(seed ^ fnv(name.as_bytes()) | 1);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut runs: u64 = 0;
        let mut found = std::collections::BTreeSet::new();
        while Instant::now() < deadline {
            for _ in 0..256 {
                let mut input = corpus[rng.below(corpus.len())].clone();
                mutate(&mut rng, &mut input, &corpus);
                runs += 1;
                if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
                    let h = fnv(&input);
                    if found.insert(h) {
                        let dir = root.join("artifacts").join(name);
                        let _ = std::fs::create_dir_all(&dir);
                        let path = dir.join(format!("crash-{h:016x}"));
                        let _ = std::fs::write(&path, &input);
                        eprintln!("{name}: crash saved to {}", path.display());
                    }
                }
            }
        }
        println!(
            "{name}: {runs} runs in {secs}s (seed {seed}), {} distinct crashes",
            found.len()
        );
        crashes += found.len();
    }
    if crashes > 0 {
        std::process::exit(1);
    }
}
