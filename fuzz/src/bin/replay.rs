//! Runs corpus files (or single crash artifacts) through a target on any
//! toolchain: `replay` (whole corpus), `replay <target>`, or
//! `replay <target> <file>...`. A panic means a bug: the process fails.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let (names, files): (Vec<&str>, &[String]) = match args.split_first() {
        None => (pgrelay_fuzz::TARGETS.iter().map(|(n, _)| *n).collect(), &[]),
        Some((t, files)) => (vec![t.as_str()], files),
    };
    for name in names {
        let Some(f) = pgrelay_fuzz::target(name) else {
            eprintln!(
                "unknown target {name:?}; targets: {:?}",
                pgrelay_fuzz::TARGETS
                    .iter()
                    .map(|t| t.0)
                    .collect::<Vec<_>>()
            );
            std::process::exit(2);
        };
        if files.is_empty() {
            match pgrelay_fuzz::replay_dir(&root.join(name), f) {
                Ok(n) => println!("{name}: {n} inputs ok"),
                Err(e) => {
                    eprintln!("{name}: cannot read corpus: {e}");
                    std::process::exit(1);
                }
            }
        } else {
            for file in files {
                match std::fs::read(file) {
                    Ok(data) => {
                        f(&data);
                        println!("{name}: {file} ok");
                    }
                    Err(e) => {
                        eprintln!("{file}: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }
    }
}
