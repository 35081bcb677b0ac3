//! One agent session from arbitrary coordinator bytes, and the store effects checked: shared by
//! the `agent_session` fuzz target (`fuzz/`, which includes this file) and the test running it
//! over its seeds (`fuzz/corpus/agent_session/seed-*`).
//!
//! Input: the bytes a coordinator sends after its `Hello` (which is sent first). The host's
//! ACL holds one key, [`seed_key`] (fixed, so seeds can carry paths it signed). After the
//! session, whatever happened: the store verifies clean (every valid path has the NAR hash and
//! size it was registered with, its references valid), no temp entry is left in the store dir,
//! the ACL holds only valid Ed25519 public keys, every partial file is at most the largest NAR
//! size the input declared, all of them within the partial budget, and everything the agent
//! wrote back decodes as frames.

use std::io::Cursor;

use nar_core::store_path::StoreDir;
use proto::frame::{Frame, FrameDecoder, Hello};
use store::{Store, StoreLayout};
use transfer::agent::AgentOptions;

/// The key the host trusts (its secret is fixed: seeds hold paths it signed).
pub fn seed_key() -> signing::guix::SigningKey {
    signing::guix::SigningKey::from_ecdsa_bytes(&[7u8; 32]).expect("a valid scalar")
}

/// Partial-file budget of the fuzzed agent.
pub const PARTIAL_BUDGET: u64 = 4 << 20;

/// Serve `input` (after a `Hello`) on a fresh store and check its effects (panics on a breach).
pub fn run_session(input: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = StoreLayout::new(dir.path().join("host"), StoreDir::guix(), None).expect("layout");
    std::fs::create_dir_all(layout.state_dir()).expect("state dir");
    let acl = layout.state_dir().join("acl");
    signing::keyfile::authorize_key_in_file(&acl, seed_key().verifying_key().to_sexp())
        .expect("acl");
    let mut stream = Vec::new();
    Frame::Hello(Hello::ours()).encode(&mut stream);
    stream.extend_from_slice(input);
    let options = AgentOptions {
        partial_min: 0,
        partial_budget: PARTIAL_BUDGET,
        max_nodes: 1000,
        // A `Forward` in the input must not make the session reach out to the network.
        relay: false,
        ..AgentOptions::new(layout.clone())
    };
    let mut out = Vec::new();
    let _ = transfer::agent::serve(options, Cursor::new(&stream), &mut out);

    let store = Store::open(layout.clone()).expect("the store opens after any session");
    let report = store.verify(true).expect("verify runs");
    assert!(report.is_clean(), "store not clean after a session: {:?}", report.problems);
    let valid = store.all_valid_paths().expect("valid paths");
    let store_dir = layout.physical_store_dir();
    for entry in std::fs::read_dir(&store_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name == ".links" || valid.iter().any(|p| p.base_name() == name),
            "{name} left in the store dir"
        );
    }
    for key in signing::keyfile::read_acl(&acl).expect("acl reads").keys() {
        signing::guix::VerifyingKey::from_sexp(key).expect("only valid keys in the ACL");
    }
    let mut decoder = FrameDecoder::new();
    decoder.push(&stream);
    let mut largest = 0u64;
    while let Ok(Some(frame)) = decoder.next_frame() {
        if let Frame::PathStart(start) = &frame {
            largest = largest.max(start.nar_size);
        }
        if let Frame::Query(entries) = &frame {
            largest = largest.max(entries.iter().map(|e| e.nar_size).max().unwrap_or(0));
        }
    }
    let partial = layout.state_dir().join("partial");
    let mut total = 0;
    for f in std::fs::read_dir(partial).into_iter().flatten().flatten() {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        assert!(len <= largest, "a partial file of {len} bytes, more than any declared size");
        total += len;
    }
    assert!(total <= PARTIAL_BUDGET, "partial files hold {total} bytes");
    let mut answers = FrameDecoder::new();
    answers.push(&out);
    loop {
        match answers.next_frame() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("the agent wrote a bad frame: {e}"),
        }
    }
}
