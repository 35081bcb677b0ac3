//! The `agent_session` fuzz target's seeds, run as a test (the fuzz target runs the same
//! [`run_session`] on mutations of them). `FERRY_WRITE_SEEDS=1` rewrites the seeds in
//! `fuzz/corpus/agent_session/` from the sessions below.

use std::path::PathBuf;

use closure::PathInfo;
use nar_core::hash::{NarDigest, Sha256Hash};
use nar_core::store_path::{StoreDir, StorePath};
use proto::frame::{Encoding, Frame, PathStart, QueryEntry};

use crate::agent_session_check::{run_session, seed_key};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/agent_session")
}

/// A NAR of one regular file holding `contents`.
fn nar_of(contents: &[u8]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }
    let mut nar = Vec::new();
    for s in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents", contents, b")"] {
        string(&mut nar, s);
    }
    nar
}

fn signed_start(name: &str, nar: &[u8], encoding: Encoding) -> PathStart {
    let path = StorePath::from_parts([name.len() as u8; 20], name).unwrap();
    let digest = NarDigest { hash: Sha256Hash::of(nar), size: nar.len() as u64 };
    let info = PathInfo::new(path.clone(), digest, Default::default());
    let signature = transfer::trust::sign_path(
        &seed_key(),
        &StoreDir::guix(),
        &path,
        &info.nar_hash,
        info.nar_size,
        &[],
    );
    PathStart {
        path,
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: Vec::new(),
        deriver: None,
        ca: None,
        signature,
        encoding,
        offset: 0,
        nix_sigs: Vec::new(),
    }
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let nar = nar_of(b"hello\n");
    let good = signed_start("good", &nar, Encoding::None);
    let query = Frame::Query(vec![QueryEntry {
        path: good.path.clone(),
        nar_hash: good.nar_hash,
        nar_size: good.nar_size,
        references: Vec::new(),
    }]);
    let mut unsigned = good.clone();
    unsigned.signature.clear();
    let bomb = {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        std::io::Write::write_all(&mut enc, &nar_of(&vec![0u8; 1 << 20])).unwrap();
        enc.finish().unwrap()
    };
    let mut bomb_start = signed_start("bomb", &nar, Encoding::Zstd);
    bomb_start.ca = Some("fixed:r:sha256:x\nURL: evil".into());
    let key = seed_key().verifying_key().to_key_file();
    vec![
        ("empty", encode(&[Frame::Query(Vec::new()), Frame::Done])),
        (
            "one-path",
            encode(&[
                query.clone(),
                Frame::PathStart(Box::new(good.clone())),
                Frame::Data(nar.clone()),
                Frame::PathEnd,
                Frame::Done,
            ]),
        ),
        (
            "unsigned",
            encode(&[
                query.clone(),
                Frame::PathStart(Box::new(unsigned)),
                Frame::Data(nar.clone()),
                Frame::PathEnd,
                Frame::Done,
            ]),
        ),
        (
            "authorize",
            encode(&[
                Frame::Authorize { public_key: key },
                Frame::Authorize { public_key: b"(public-key (rsa))".to_vec() },
            ]),
        ),
        (
            "bomb",
            encode(&[
                Frame::Query(Vec::new()),
                Frame::PathStart(Box::new(bomb_start)),
                Frame::Data(bomb),
                Frame::PathEnd,
                Frame::Done,
            ]),
        ),
        (
            "cut",
            encode(&[query, Frame::PathStart(Box::new(good)), Frame::Data(nar[..40].to_vec())]),
        ),
    ]
}

#[test]
fn agent_session_fuzz_seeds_hold() {
    let dir = corpus();
    if std::env::var_os("FERRY_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        run_session(&std::fs::read(entry.path()).unwrap());
        ran += 1;
    }
    assert!(ran >= seeds().len(), "{ran} seeds in {}", dir.display());
}
