//! Trust boundaries against lying peers (issue 14): small peers built on `proto`'s frames speak
//! to the real agent and coordinator over the in-process transport. A host being pulled from
//! cannot change the puller's trust nor land what was not asked for; an agent cannot leave
//! paths unanswered; signed sizes bound what a stream may write; resume data is not trusted;
//! unsigned metadata is checked; silent and slow peers meet deadlines; peer text is escaped
//! and capped; hostile queries, rejection floods and bogus keys stay bounded.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use closure::PathInfo;
use nar_core::hash::Sha256Hash;
use nar_core::store_path::{StoreDir, StorePath};
use proto::frame::{
    Encoding, Frame, Hello, MissingEntry, PathStart, QueryEntry, RejectReason, Welcome, FEATURES,
};
use proto::io::{FrameReader, FrameWriter};
use signing::guix::SigningKey;
use store::StoreLayout;
use transfer::agent::AgentOptions;
use transfer::deadline::Deadlines;
use transfer::push::{push_closure, NoProgress, PushOptions};
use transfer::transport::InProcessTransport;

use crate::agent::{host_valid, nar_of, start_for, stores, Raw};

/// One end of an in-process connection, spoken frame by frame.
struct Peer {
    frames: FrameReader<UnixStream>,
    out: FrameWriter<UnixStream>,
    /// The stream the frames go to (to write bytes one at a time).
    raw: UnixStream,
}

impl Peer {
    fn over(input: UnixStream, output: &UnixStream) -> Peer {
        Peer {
            frames: FrameReader::new(input),
            out: FrameWriter::new(output.try_clone().unwrap(), Arc::new(AtomicU64::new(0))),
            raw: output.try_clone().unwrap(),
        }
    }
    fn send(&mut self, f: Frame) -> io::Result<()> {
        self.out.send(&f)?;
        self.out.flush()
    }
    fn recv(&mut self) -> Option<Frame> {
        self.frames.read_frame().ok().flatten()
    }
    /// Read until the other side closes.
    fn drain(&mut self) {
        while self.recv().is_some() {}
    }
}

/// A transport named `liar://NAME` whose agent is `script`.
fn liar(name: &str, script: impl Fn(&mut Peer) + Send + Sync + 'static) -> InProcessTransport {
    InProcessTransport::new(format!("liar://{name}"), move |input, output| {
        let mut peer = Peer::over(input, output);
        script(&mut peer);
        Ok(())
    })
}

fn welcome() -> Welcome {
    Welcome {
        min_version: proto::frame::MIN_VERSION,
        max_version: proto::frame::VERSION,
        ferry_version: env!("CARGO_PKG_VERSION").into(),
        features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        store_dir: StoreDir::guix().as_str().to_owned(),
        system: "x86_64-linux".into(),
        free_bytes: 1 << 40,
        generation: None,
    }
}

fn entry(info: &PathInfo) -> QueryEntry {
    QueryEntry {
        path: info.path.clone(),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: Vec::new(),
    }
}

fn signed(key: &SigningKey, info: &PathInfo) -> Vec<u8> {
    crate::agent::signed(key, &StoreDir::guix(), info)
}

fn path_named(s: &crate::agent::Stores, name: &str) -> PathInfo {
    s.closure.iter().find(|i| i.path.name() == name).unwrap().clone()
}

/// What a lying host pushes: a path, its NAR, its signature.
type Pushed = (PathInfo, Vec<u8>, Vec<u8>);

/// A pulled host's side: after `SendClosure`, push `info`, first sending `Authorize{key}` (a
/// public key file) when `authorize` is given.
fn lying_host(
    info: Option<Pushed>,
    authorize: Option<Vec<u8>>,
) -> impl Fn(&mut Peer) + Send + Sync + 'static {
    move |p: &mut Peer| {
        let _hello = p.recv();
        let _ = p.send(Frame::Welcome(welcome()));
        let _send_closure = p.recv();
        let _ = p.send(Frame::Hello(Hello::ours()));
        let _welcome = p.recv();
        if let Some(key) = &authorize {
            let _ = p.send(Frame::Authorize { public_key: key.clone() });
            if !matches!(p.recv(), Some(Frame::Authorized { .. })) {
                return p.drain();
            }
        }
        let entries: Vec<QueryEntry> = info.iter().map(|(i, _, _)| entry(i)).collect();
        let _ = p.send(Frame::Query(entries));
        if !matches!(p.recv(), Some(Frame::Have { .. })) {
            return p.drain();
        }
        if let Some((i, nar, signature)) = &info {
            let _ = p.send(Frame::PathStart(Box::new(start_for(i, signature.clone()))));
            let _ = p.send(Frame::Data(nar.clone()));
            let _ = p.send(Frame::PathEnd);
        }
        let _ = p.send(Frame::Done);
        p.drain();
    }
}

fn acl_text(layout: &StoreLayout) -> Vec<u8> {
    std::fs::read(layout.state_dir().join("acl")).unwrap_or_default()
}

/// Case 1: the pulled host sends `Authorize` with its own key, then another path than the one
/// asked for. The pull fails naming the host and `Authorize`; the local ACL and store are
/// unchanged.
#[test]
fn a_pulled_host_cannot_change_the_pullers_trust() {
    let s = stores(true);
    let marked = path_named(&s, "marked");
    let top = path_named(&s, "top");
    let evil = SigningKey::generate(&mut rand::thread_rng());
    let nar = nar_of(&s.local, &marked);
    let dest = StoreLayout::new(s._dir.path().join("dest"), StoreDir::guix(), None).unwrap();
    let pushed = (marked.clone(), nar, signed(&evil, &marked));
    let t = liar("evil-host", lying_host(Some(pushed), Some(evil.verifying_key().to_key_file())));
    let err = transfer::pull::pull_closure(&t, &[top.path], AgentOptions::new(dest.clone()))
        .map(|s| s.serve)
        .unwrap_err()
        .to_string();
    assert!(err.contains("liar://evil-host") && err.contains("Authorize"), "{err}");
    let acl = signing::keyfile::read_acl(&dest.state_dir().join("acl")).unwrap();
    assert!(!acl.is_authorized(&evil.verifying_key().to_sexp()), "the host's key was added");
    assert!(host_valid(&dest).is_empty());
}

/// Case 2: a trusted host that sends nothing, or a path outside the requested closure: the
/// pull fails naming the missing root, and nothing unrequested becomes valid.
#[test]
fn a_pull_fails_unless_the_requested_roots_arrive() {
    let s = stores(true);
    let marked = path_named(&s, "marked");
    let big = path_named(&s, "big");
    let dest = StoreLayout::new(s._dir.path().join("dest"), StoreDir::guix(), None).unwrap();
    std::fs::create_dir_all(dest.state_dir()).unwrap();
    signing::keyfile::authorize_key_in_file(
        &dest.state_dir().join("acl"),
        s.key.verifying_key().to_sexp(),
    )
    .unwrap();
    let nothing = liar("empty-host", lying_host(None, None));
    let err = transfer::pull::pull_closure(
        &nothing,
        std::slice::from_ref(&big.path),
        AgentOptions::new(dest.clone()),
    )
    .map(|s| s.serve)
    .unwrap_err()
    .to_string();
    let big_abs = big.path.to_absolute(&StoreDir::guix());
    assert!(err.contains("liar://empty-host") && err.contains(&big_abs), "{err}");
    let nar = nar_of(&s.local, &marked);
    let pushed = (marked.clone(), nar, signed(&s.key, &marked));
    let other = liar("other-host", lying_host(Some(pushed), None));
    let err = transfer::pull::pull_closure(&other, &[big.path], AgentOptions::new(dest.clone()))
        .map(|s| s.serve)
        .unwrap_err()
        .to_string();
    assert!(err.contains("liar://other-host"), "{err}");
    assert!(host_valid(&dest).is_empty());
}

/// Case 3: an agent that takes every path, answers none and says `Bye`: the push fails naming
/// the paths left unanswered.
#[test]
fn a_push_fails_when_the_agent_leaves_paths_unanswered() {
    let s = stores(true);
    let t = liar("silent-acks", |p: &mut Peer| {
        let _hello = p.recv();
        let _ = p.send(Frame::Welcome(welcome()));
        let Some(Frame::Query(entries)) = p.recv() else { return };
        let missing =
            entries.iter().map(|e| MissingEntry { path: e.path.clone(), resume_from: 0 }).collect();
        let _ = p.send(Frame::Have { missing, bases: Vec::new(), trusted: None });
        while let Some(f) = p.recv() {
            if f == Frame::Done {
                let _ = p.send(Frame::Bye { imported: 0, rejected: 0 });
            }
        }
    });
    let o = PushOptions::default();
    let err = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress)
        .map(|s| (s.paths_sent, s.paths_landed))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("liar://silent-acks") && err.contains("without answering 3 paths"),
        "{err}"
    );
    assert!(err.contains("-top"), "{err}");
}

/// A NAR of one regular file of `len` zero bytes, zstd-compressed (a few KiB per 100 MiB).
fn zstd_nar_of_zeros(len: u64) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }
    let mut head = Vec::new();
    for s in ["nix-archive-1", "(", "type", "regular", "contents"] {
        string(&mut head, s.as_bytes());
    }
    head.extend_from_slice(&len.to_le_bytes());
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(&head).unwrap();
    io::copy(&mut io::repeat(0).take(len), &mut enc).unwrap();
    let mut tail = Vec::new();
    string(&mut tail, b")");
    enc.write_all(&tail).unwrap();
    enc.finish().unwrap()
}

fn send_path(raw: &mut Raw, start: PathStart, data: &[u8]) -> Frame {
    raw.send(Frame::PathStart(Box::new(start)));
    for chunk in data.chunks(128 << 10) {
        raw.send(Frame::Data(chunk.to_vec()));
    }
    raw.send(Frame::PathEnd);
    raw.recv()
}

/// Case 4: a signed `PathStart` declaring a small NAR, followed by a small zstd stream that
/// decompresses to 64 MiB: the restore stops at the declared size, naming the offset.
#[test]
fn restore_stops_at_the_signed_nar_size() {
    let s = stores(true);
    let marked = path_named(&s, "marked");
    let mut raw = Raw::open(&s.host);
    raw.handshake();
    let mut start = start_for(&marked, signed(&s.key, &marked));
    start.encoding = Encoding::Zstd;
    match send_path(&mut raw, start, &zstd_nar_of_zeros(64 << 20)) {
        Frame::Reject { reason, message, .. } => {
            assert_eq!(reason, RejectReason::CorruptData, "{message}");
            let declared = format!("declared size of {} bytes", marked.nar_size);
            assert!(message.contains(&declared) && message.contains("at NAR byte"), "{message}");
            assert!(message.contains("-marked"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    raw.send(Frame::Done);
    assert!(matches!(raw.recv(), Frame::Bye { imported: 0, rejected: 1 }));
    assert!(host_valid(&s.host).is_empty());
}

/// Case 4, inodes: a signed NAR of a directory of 300 files, to an agent allowing 100 nodes
/// per path.
#[test]
fn restore_stops_at_the_node_cap() {
    let s = stores(true);
    let tree = s._dir.path().join("many");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..300 {
        std::fs::write(tree.join(format!("f{i}")), b"").unwrap();
    }
    let mut nar = Vec::new();
    nar_core::dump::dump(&tree, &mut nar).unwrap();
    let digest = nar_core::hash::NarDigest { hash: Sha256Hash::of(&nar), size: nar.len() as u64 };
    let path = StorePath::from_parts([7; 20], "many").unwrap();
    let info = PathInfo::new(path, digest, Default::default());
    let mut raw =
        Raw::open_with(AgentOptions { max_nodes: 100, ..AgentOptions::new(s.host.clone()) });
    raw.handshake();
    match send_path(&mut raw, start_for(&info, signed(&s.key, &info)), &nar) {
        Frame::Reject { reason, message, .. } => {
            assert_eq!(reason, RejectReason::CorruptData, "{message}");
            assert!(message.contains("more than 100 files"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Case 5: a stream into a resumable path that claims more than its declared size and is cut:
/// the partial file holds at most the declared size, and the next copy lands the path in one
/// session (the bytes held do not match: it is sent again in full).
#[test]
fn resume_data_is_verified_not_trusted() {
    let s = stores(true);
    let big = path_named(&s, "big");
    let mut raw = Raw::open(&s.host);
    raw.send(Frame::Hello(Hello::ours()));
    assert!(matches!(raw.recv(), Frame::Welcome(_)));
    raw.send(Frame::Query(vec![entry(&big)]));
    assert!(matches!(raw.recv(), Frame::Have { .. }));
    // A NAR header claiming a file of 4 MiB, then 3 MiB of bytes, then the connection is cut.
    let mut stream = zstd::stream::decode_all(&zstd_nar_of_zeros(4 << 20)[..]).unwrap();
    stream.truncate(3 << 20);
    raw.send(Frame::PathStart(Box::new(start_for(&big, signed(&s.key, &big)))));
    for chunk in stream.chunks(128 << 10) {
        raw.send(Frame::Data(chunk.to_vec()));
    }
    raw.agent.kill();
    let _ = raw.agent.wait();
    let partial = s.host.state_dir().join("partial");
    for f in std::fs::read_dir(&partial).into_iter().flatten().flatten() {
        let len = f.metadata().unwrap().len();
        assert!(len <= big.nar_size, "{} holds {len} bytes > {}", f.path().display(), big.nar_size);
    }
    let t = AgentOptions::new(s.host.clone()).in_process();
    let o = PushOptions::default();
    let summary = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    assert_eq!(host_valid(&s.host).len(), 3);
}

/// Case 6: a `ca` with newlines and narinfo lines, and a deriver that is no derivation, under a
/// good signature: refused before anything is stored; a cache never writes (and signs) them.
#[test]
fn unsigned_metadata_is_checked_before_it_is_stored_or_signed() {
    let mut s = stores(true);
    let marked = path_named(&s, "marked");
    let nar = nar_of(&s.local, &marked);
    let mut raw = Raw::open(&s.host);
    raw.handshake();
    let good = signed(&s.key, &marked);
    let mut bad_ca = start_for(&marked, good.clone());
    bad_ca.ca = Some(format!(
        "fixed:r:{}\nURL: nar/evil.nar\nReferences: x",
        marked.nar_hash.to_typed_nix32()
    ));
    let mut bad_deriver = start_for(&marked, good);
    bad_deriver.deriver = Some(StorePath::from_parts([3; 20], "made-up").unwrap());
    for start in [bad_ca, bad_deriver] {
        match send_path(&mut raw, start, &nar) {
            Frame::Reject { reason, message, .. } => {
                assert_eq!(reason, RejectReason::CorruptData, "{message}");
                assert!(message.contains("ca") || message.contains("deriver"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(host_valid(&s.host).is_empty());
    // A local path holding such a `ca` is not written into a signed narinfo.
    let mut info = marked.clone();
    info.path = StorePath::from_parts([4; 20], "marked-copy").unwrap();
    info.ca = Some("fixed:r:sha256:x\nURL: evil".into());
    s.local.import_nar(&info, &mut &nar[..]).unwrap();
    let cache = s._dir.path().join("cache");
    let key = signing::nix::SigningKey::generate("test-1", &mut rand::thread_rng());
    let writer = transfer::target::cache::CacheWriter::open(
        &cache,
        StoreDir::guix(),
        Some(key),
        Default::default(),
    )
    .unwrap();
    let err = writer.write_path(&info, &s.local.physical_path(&info.path)).unwrap_err();
    assert!(err.to_string().contains("not a Nix content address"), "{err}");
    assert!(!std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .any(|e| { e.path().extension().is_some_and(|x| x == "narinfo") }));
}

fn short_deadlines() -> Deadlines {
    Deadlines {
        handshake: Duration::from_secs(2),
        idle: Duration::from_secs(1),
        floor_rate: 1 << 20,
    }
}

/// Case 8: an agent silent after `Welcome`, one that trickles its `Have` a byte at a time, and
/// one silent from the start: each push ends with an error naming the host, the phase and the
/// time waited.
#[test]
fn silent_and_slow_agents_meet_a_deadline() {
    let s = stores(true);
    let o = PushOptions { deadlines: short_deadlines(), ..PushOptions::default() };
    let silent = liar("silent", |p: &mut Peer| {
        let _hello = p.recv();
        let _ = p.send(Frame::Welcome(welcome()));
        p.drain();
    });
    let slow = liar("slow", |p: &mut Peer| {
        let _hello = p.recv();
        let _ = p.send(Frame::Welcome(welcome()));
        let _query = p.recv();
        let mut have = Vec::new();
        Frame::Have { missing: Vec::new(), bases: Vec::new(), trusted: None }.encode(&mut have);
        for b in have.iter().cycle() {
            std::thread::sleep(Duration::from_millis(300));
            if p.raw.write_all(&[*b]).is_err() {
                return;
            }
        }
    });
    let mute = liar("mute", |p: &mut Peer| p.drain());
    for (t, phase) in
        [(silent, "waiting for Have"), (slow, "waiting for Have"), (mute, "waiting for Welcome")]
    {
        let err = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress)
            .map(|s| s.paths_sent)
            .unwrap_err()
            .to_string();
        let name = transfer::transport::Transport::describe(&t);
        assert!(err.contains(&name) && err.contains(phase) && err.contains("no progress"), "{err}");
    }
    // The same for a pull: a host silent after its `Welcome`.
    let top = path_named(&s, "top");
    let host = liar("silent-host", |p: &mut Peer| {
        let _hello = p.recv();
        let _ = p.send(Frame::Welcome(welcome()));
        p.drain();
    });
    let dest = StoreLayout::new(s._dir.path().join("dest"), StoreDir::guix(), None).unwrap();
    let local = AgentOptions { deadlines: short_deadlines(), ..AgentOptions::new(dest) };
    let err = transfer::pull::pull_closure(&host, &[top.path], local)
        .map(|s| s.serve)
        .unwrap_err()
        .to_string();
    assert!(err.contains("liar://silent-host") && err.contains("no progress"), "{err}");
}

/// Case 9: an agent whose `Reject` reasons hold terminal escapes and 10 MiB of text, and one
/// whose `Error` and stderr do: what the coordinator keeps and shows is escaped and capped.
#[test]
fn peer_text_is_escaped_and_capped() {
    let s = stores(true);
    let nasty = format!("\x1b]0;pwned\x07\x1b[2J{}", "A".repeat(10 << 20));
    let reason = nasty.clone();
    let t = liar("rude", move |p: &mut Peer| {
        let _hello = p.recv();
        let _ = p.send(Frame::Welcome(welcome()));
        let Some(Frame::Query(entries)) = p.recv() else { return };
        let missing =
            entries.iter().map(|e| MissingEntry { path: e.path.clone(), resume_from: 0 }).collect();
        let _ = p.send(Frame::Have { missing, bases: Vec::new(), trusted: None });
        let mut rejected = 0;
        while let Some(f) = p.recv() {
            match f {
                Frame::PathStart(start) => {
                    let message = reason.clone();
                    let _ = p.send(Frame::Reject {
                        path: start.path,
                        reason: RejectReason::Store,
                        message,
                    });
                    rejected += 1;
                }
                Frame::Done => {
                    let _ = p.send(Frame::Bye { imported: 0, rejected });
                }
                _ => {}
            }
        }
    });
    let o = PushOptions::default();
    let summary = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    assert_eq!(summary.rejected.len(), 3);
    for r in &summary.rejected {
        assert!(
            !r.message.contains('\x1b') && !r.message.contains('\x07'),
            "{:?}",
            &r.message[..40]
        );
        assert!(r.message.len() < 8 << 10, "{} bytes kept", r.message.len());
    }
    let shout = nasty.clone();
    let t = InProcessTransport::new("liar://shouting", move |input, output| {
        let mut p = Peer::over(input, output);
        let _hello = p.recv();
        let _ = p.send(Frame::Welcome(welcome()));
        let _query = p.recv();
        let _ = p.send(Frame::Error(shout.clone()));
        Err(shout.clone())
    });
    let err = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress)
        .map(|s| s.paths_sent)
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{:?}", &err[..200]);
    assert!(err.len() < 32 << 10, "{} bytes shown", err.len());
}

/// Case 10: a `Query` of more entries than the cap is refused with the cap named; a flood of
/// refused paths keeps a bounded list in the summary.
#[test]
fn hostile_queries_and_rejection_floods_stay_bounded() {
    let s = stores(true);
    let mut raw = Raw::open(&s.host);
    raw.send(Frame::Hello(Hello::ours()));
    assert!(matches!(raw.recv(), Frame::Welcome(_)));
    let n = proto::frame::MAX_QUERY_ENTRIES + 1;
    let entries: Vec<QueryEntry> = (0..n)
        .map(|i| {
            let mut digest = [0u8; 20];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            QueryEntry {
                path: StorePath::from_parts(digest, "q").unwrap(),
                nar_hash: Sha256Hash::of(b"q"),
                nar_size: 1,
                references: Vec::new(),
            }
        })
        .collect();
    raw.send(Frame::Query(entries));
    match raw.recv() {
        Frame::Error(message) => assert!(message.contains("more than the 200000"), "{message}"),
        other => panic!("{:?}", other.name()),
    }
    // 150 unsigned paths: all refused, the first 100 kept.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let options = AgentOptions::new(s.scratch.clone());
    let agent_out = theirs.try_clone().unwrap();
    let agent = std::thread::spawn(move || transfer::agent::serve(options, theirs, agent_out));
    let mut p = Peer::over(ours.try_clone().unwrap(), &ours);
    p.send(Frame::Hello(Hello::ours())).unwrap();
    assert!(matches!(p.recv(), Some(Frame::Welcome(_))));
    p.send(Frame::Query(Vec::new())).unwrap();
    assert!(matches!(p.recv(), Some(Frame::Have { .. })));
    let marked = path_named(&s, "marked");
    for i in 0..150u32 {
        let mut info = marked.clone();
        let mut digest = [9u8; 20];
        digest[..4].copy_from_slice(&i.to_le_bytes());
        info.path = StorePath::from_parts(digest, "unsigned").unwrap();
        p.send(Frame::PathStart(Box::new(start_for(&info, Vec::new())))).unwrap();
        p.send(Frame::PathEnd).unwrap();
        assert!(matches!(p.recv(), Some(Frame::Reject { .. })));
    }
    p.send(Frame::Done).unwrap();
    assert!(matches!(p.recv(), Some(Frame::Bye { rejected: 150, .. })));
    let summary = agent.join().unwrap().unwrap();
    assert_eq!(summary.rejected, 150);
    assert_eq!(summary.rejections.len(), 100);
}

/// Case 11: `Authorize` with an empty key, an RSA key, the all-zero point and a 1 MiB `q`:
/// each ends the session with an error, and the ACL is unchanged.
#[test]
fn authorize_takes_only_valid_ed25519_keys() {
    let s = stores(true);
    let before = acl_text(&s.scratch);
    let zero = format!("(public-key (ecc (curve Ed25519) (q #{}#)))", "00".repeat(32));
    let huge = format!("(public-key (ecc (curve Ed25519) (q #{}#)))", "ab".repeat(1 << 20));
    let keys: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"(public-key (rsa (n #00C0FFEE#) (e #010001#)))".to_vec(),
        zero.into_bytes(),
        huge.into_bytes(),
    ];
    for key in keys {
        let mut raw = Raw::open(&s.scratch);
        raw.send(Frame::Hello(Hello::ours()));
        assert!(matches!(raw.recv(), Frame::Welcome(_)));
        raw.send(Frame::Authorize { public_key: key.clone() });
        match raw.recv() {
            Frame::Error(m) => assert!(m.contains("cannot authorize the key"), "{m}"),
            other => {
                panic!("{:?} for {:?}", other, String::from_utf8_lossy(&key[..key.len().min(60)]))
            }
        }
        let _ = raw.agent.wait();
        assert_eq!(acl_text(&s.scratch), before);
    }
}
