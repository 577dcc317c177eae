//! CI entry point on stable: every corpus file of every target must run
//! without panicking.

use std::path::PathBuf;

#[test]
fn replay_whole_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, f) in pgrelay_fuzz::TARGETS {
        let n = pgrelay_fuzz::replay_dir(&root.join(name), *f)
            .unwrap_or_else(|e| panic!("corpus/{name}: {e}"));
        assert!(n > 0, "corpus/{name} is empty");
    }
}

#[test]
fn message_framing_round_trips() {
    let msgs: [&[u8]; 3] = [b"a", b"", b"xyz"];
    let joined = pgrelay_fuzz::join_messages(msgs);
    assert_eq!(pgrelay_fuzz::split_messages(&joined), msgs);
    for b in 0..=255u8 {
        let cfg = pgrelay_fuzz::config_from(b);
        assert_eq!(
            pgrelay_fuzz::config_from(pgrelay_fuzz::config_byte(cfg)),
            cfg
        );
    }
}
