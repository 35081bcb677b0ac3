//! The seed corpora of the fuzz targets that need real encoder output (`fuzz/corpus/NAME/seed-*`
//! of `frame_decoder`, `host_session`, `delta_decode` and `deployment_parse`), and what the
//! targets check, run over those seeds in a normal test (CI builds the fuzz targets but never
//! runs them).
//!
//! The seeds are made here by the real encoders: `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p
//! ferry-tests --test integration fuzz_seeds` writes them; without the variable the test checks
//! that every seed is there and still decodes (a format change shows up as a failure that says
//! to regenerate them).

use std::path::{Path, PathBuf};

use nar_core::hash::{NarHasher, Sha256Hash};
use nar_core::store_path::{fold_digest, StorePath};
use proto::frame::{
    AckOutcome, Encoding, Frame, FrameDecoder, Hello, MissingEntry, PathStart, QueryEntry,
    RejectReason, Welcome,
};
use proto::session::{
    encode_answer, parse_answer, ActivateRequest, DeviceSpec, FactsRequest, HostCheck, HostLine,
    HostResult, SessionRequest,
};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn path(name: &str) -> StorePath {
    StorePath::from_parts(fold_digest(&Sha256Hash::of(name.as_bytes()).0), name).unwrap()
}

/// Writes the seeds (with `FERRY_WRITE_FUZZ_SEEDS` set) or checks that the committed ones are
/// there; returns the committed bytes.
fn seeds(target: &str, made: Vec<(&str, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let dir = corpus(target);
    let write = std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some();
    made.into_iter()
        .map(|(name, bytes)| {
            let file = dir.join(format!("seed-{name}"));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&file, &bytes).unwrap();
            }
            let committed = std::fs::read(&file).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; write the seeds with FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p \
                     ferry-tests --test integration fuzz_seeds",
                    file.display()
                )
            });
            (file.display().to_string(), committed)
        })
        .collect()
}

/// `flags step` then the frames' bytes (the input of the `frame_decoder` target).
fn frame_seed(handshake_done: bool, step: u8, frames: &[Frame]) -> Vec<u8> {
    let mut out = vec![u8::from(handshake_done), step];
    for f in frames {
        f.encode(&mut out);
    }
    out
}

#[test]
fn frame_decoder_seeds_decode_and_round_trip() {
    let (lib, app) = (path("libfoo-1.0"), path("app-2.1"));
    let hash = Sha256Hash::of(b"a NAR");
    // What an agent reads from a coordinator: a push with a delta and a resumed path.
    let push = [
        Frame::Hello(Hello::ours()),
        Frame::Authorize { public_key: b"(public-key (ecc (curve Ed25519) (q #00#)))".to_vec() },
        Frame::Query(vec![
            QueryEntry { path: lib.clone(), nar_hash: hash, nar_size: 120, references: vec![] },
            QueryEntry { path: app.clone(), nar_hash: hash, nar_size: 4096, references: vec![0] },
        ]),
        Frame::PathStart(Box::new(PathStart {
            path: app.clone(),
            nar_hash: hash,
            nar_size: 4096,
            references: vec![lib.clone(), app.clone()],
            deriver: Some(path("app-2.1.drv")),
            ca: None,
            signature: b"(signature (data (hash sha256 #00#)))".to_vec(),
            encoding: Encoding::ZstdDelta { base: path("app-2.0") },
            offset: 0,
            nix_sigs: Vec::new(),
        })),
        Frame::Data(b"FERRYDL2 and more".to_vec()),
        Frame::PathEnd,
        Frame::PathStart(Box::new(PathStart {
            path: lib.clone(),
            nar_hash: hash,
            nar_size: 120,
            references: vec![],
            deriver: None,
            ca: Some("fixed:r:sha256:0000".into()),
            signature: Vec::new(),
            encoding: Encoding::Zstd,
            offset: 64,
            nix_sigs: Vec::new(),
        })),
        Frame::Data(vec![0x28, 0xb5, 0x2f, 0xfd]),
        Frame::PathEnd,
        Frame::Done,
    ];
    // What a coordinator reads from an agent (and an agent in a pull).
    let answers = [
        Frame::Welcome(Welcome {
            min_version: 1,
            max_version: 1,
            ferry_version: "0.1.0".into(),
            features: vec!["zstd".into(), "delta".into()],
            store_dir: "/gnu/store".into(),
            system: "x86_64-linux".into(),
            free_bytes: 1 << 30,
            generation: Some("/gnu/store/x-system".into()),
        }),
        Frame::Authorized { added: true },
        Frame::Have {
            missing: vec![MissingEntry { path: app.clone(), resume_from: 0 }],
            bases: vec![(app.clone(), vec![path("app-2.0")])],
            trusted: None,
        },
        Frame::Ack { path: lib.clone(), outcome: AckOutcome::AlreadyValid },
        Frame::Reject {
            path: app.clone(),
            reason: RejectReason::DeltaFailed,
            message: "delta base missing".into(),
        },
        Frame::Bye { imported: 1, rejected: 1 },
        Frame::SendClosure { roots: vec![app] },
        Frame::Error("version mismatch".into()),
    ];
    let committed = seeds(
        "frame_decoder",
        vec![
            ("push", frame_seed(false, 0, &push)),
            ("push-split", frame_seed(false, 7, &push)),
            ("answers", frame_seed(true, 3, &answers)),
        ],
    );
    for (file, bytes) in committed {
        let [flags, _, stream @ ..] = &bytes[..] else { panic!("{file}: too short") };
        let mut decoder = FrameDecoder::new();
        if flags & 1 == 1 {
            decoder.set_peer("seed".into());
        }
        decoder.push(stream);
        let mut n = 0;
        while let Some(frame) = decoder.next_frame().unwrap_or_else(|e| panic!("{file}: {e}")) {
            let mut again = Vec::new();
            frame.encode(&mut again);
            let mut d = FrameDecoder::new();
            d.set_peer("seed".into());
            d.push(&again);
            assert_eq!(d.next_frame().unwrap(), Some(frame), "{file}");
            n += 1;
        }
        assert!(n > 5 && decoder.buffered() == 0, "{file}: {n} frames, bytes left over");
    }
}

#[test]
fn host_session_seeds_parse_and_round_trip() {
    let lines = [
        HostLine::Generation(3),
        HostLine::Line("activate: starting service web".into()),
        HostLine::Warning("clock skew".into()),
        HostLine::Event("rolling back".into()),
        HostLine::Confirm { seconds: 30, token: "ab-12".into() },
        HostLine::Result(HostResult {
            success: true,
            generation: Some(3),
            detail: "activated".into(),
        }),
    ];
    let host: String = lines.iter().map(|l| format!("{}\n", l.encode())).collect();
    let requests = [
        SessionRequest::Facts(FactsRequest {
            system: Some("/gnu/store/aaa-system".into()),
            devices: vec![DeviceSpec { device: "LABEL=root".into(), mount_point: "/".into() }],
            paths: vec!["/gnu/store/bbb-hello-2.12".into()],
            profile: None,
            host_store: None,
            substitute_from: Vec::new(),
        }),
        SessionRequest::Copy,
        SessionRequest::Activate(ActivateRequest {
            system: "/gnu/store/aaa-system".into(),
            confirm_timeout_ms: Some(30_000),
            health_checks: vec![HostCheck { command: "true".into(), timeout_ms: 5000 }],
            token: "ab-12".into(),
            switch: None,
        }),
    ];
    let session: String = requests.iter().map(SessionRequest::encode).collect();
    let committed = seeds(
        "host_session",
        vec![
            ("activate-output", host.into_bytes()),
            ("session-requests", session.into_bytes()),
            ("confirm", encode_answer(None).into_bytes()),
            ("reject", encode_answer(Some("tcp :80 refused")).into_bytes()),
        ],
    );
    for (file, bytes) in committed {
        let text = String::from_utf8(bytes).unwrap();
        let understood = text.lines().all(|l| {
            HostLine::parse(l).is_some_and(|p| p.encode() == l)
                || SessionRequest::parse(l).is_ok_and(|r| r.encode() == format!("{l}\n"))
        }) || parse_answer(&text).is_some();
        assert!(understood, "{file}: {text:?}");
    }
}

#[test]
fn delta_decode_seed_decodes_to_the_new_nar() {
    let tmp = tempfile::tempdir().unwrap();
    let nar_of = |name: &str, text: &str| {
        let file = tmp.path().join(name);
        std::fs::write(&file, text).unwrap();
        let mut nar = Vec::new();
        nar_core::dump::dump(&file, &mut nar).unwrap();
        nar
    };
    let old: String = (0..200).map(|i| format!("line {i}: the same as before\n")).collect();
    let new = old.replace("line 100:", "line 100 (changed):") + "one more line\n";
    let (base, target) = (nar_of("old", &old), nar_of("new", &new));
    let digest = |bytes: &[u8]| {
        let mut h = NarHasher::new();
        h.update(bytes);
        h.finish()
    };
    let base_digest = digest(&base);
    let mut delta = Vec::new();
    let params = transfer::delta::stream::EncodeParams::level(3);
    transfer::delta::stream::encode(
        &base,
        &base_digest,
        &target[..],
        target.len() as u64,
        &params,
        &mut delta,
    )
    .unwrap();
    // The target's input: base_len:u16le base stream.
    let mut seed = u16::try_from(base.len()).unwrap().to_le_bytes().to_vec();
    seed.extend_from_slice(&base);
    seed.extend_from_slice(&delta);
    for (file, bytes) in seeds("delta_decode", vec![("text-edit", seed)]) {
        let base_len = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        let (base, stream) = bytes[2..].split_at(base_len);
        let verified =
            transfer::delta::stream::VerifiedBase::from_nar(base.to_vec(), &digest(base)).unwrap();
        let mut out = Vec::new();
        let got = transfer::delta::stream::decode(&verified, stream, &mut out)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got, digest(&out), "{file}");
        assert_eq!(out, target, "{file}: decodes to another NAR");
    }
}

#[test]
fn deployment_parse_seeds_are_the_examples() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let made = ["demo", "ssh"]
        .into_iter()
        .map(|name| (name, std::fs::read(examples.join(format!("{name}.toml"))).unwrap()))
        .collect();
    for (file, bytes) in seeds("deployment_parse", made) {
        let text = String::from_utf8(bytes).unwrap();
        // As the fuzz target: only HOME is set.
        let env = |var: &str| (var == "HOME").then(|| "/home/fuzz".into());
        deploy::deployment::Deployment::parse(&examples.join("deploy.toml"), &text, &env)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}
