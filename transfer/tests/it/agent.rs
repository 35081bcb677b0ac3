//! The agent against hostile or broken coordinators, over the in-process transport: a tampered
//! byte in flight, unsigned and badly signed paths, a version mismatch, an unknown frame. Each is
//! refused with its own error and nothing invalid becomes valid.

use std::io::{self, Write};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use closure::{PathInfo, ValidatedClosure};

use nar_core::store_path::StoreDir;
use proto::frame::{Encoding, Frame, Hello, PathStart, ProtocolError, RejectReason};
use proto::io::{FrameReader, FrameWriter};
use proto::peer::CoordinatorState;
use signing::guix::SigningKey;
use store::{DbKind, LayoutOptions, Store, StoreLayout};
use transfer::agent::AgentOptions;
use transfer::push::{push_closure, NoProgress, PushError, PushOptions};
use transfer::transport::{Connection, InProcessTransport, Transport, TransportError};

pub(crate) struct Stores {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) local: Store,
    pub(crate) host: StoreLayout,
    /// A second host, always authorized.
    pub(crate) scratch: StoreLayout,
    pub(crate) key: SigningKey,
    /// `marked` (a file holding MARKER), `big` (1 MiB, incompressible), `top` → both.
    pub(crate) closure: ValidatedClosure,
}

const MARKER: &[u8] = b"TAMPER-MARKER-0123456789";

pub(crate) fn stores(authorize: bool) -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let layout =
        |name: &str| StoreLayout::new(dir.path().join(name), StoreDir::guix(), None).unwrap();
    let mut local = Store::open(layout("local")).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("marked"), [MARKER, b"\n"].concat()).unwrap();
    let marked = local.add_path(&src.join("marked"), None).unwrap();
    let mut big = Vec::with_capacity(1 << 20);
    let mut x = 1u64;
    while big.len() < 1 << 20 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        big.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(src.join("big"), big).unwrap();
    let big = local.add_path(&src.join("big"), None).unwrap();
    let dir_store = local.store_dir().clone();
    std::fs::write(
        src.join("top"),
        format!("{}\n{}\n", marked.path.to_absolute(&dir_store), big.path.to_absolute(&dir_store)),
    )
    .unwrap();
    let top = local.add_path(&src.join("top"), None).unwrap();
    let closure = local.closure(&[top.path]).unwrap();
    assert_eq!(closure.len(), 3);
    let key = SigningKey::generate(&mut rand::thread_rng());
    let host = layout("host");
    let scratch = layout("scratch");
    let hosts: &[&StoreLayout] = if authorize { &[&host, &scratch] } else { &[&scratch] };
    for h in hosts {
        std::fs::create_dir_all(h.state_dir()).unwrap();
        signing::keyfile::authorize_key_in_file(
            &h.state_dir().join("acl"),
            key.verifying_key().to_sexp(),
        )
        .unwrap();
    }
    Stores { _dir: dir, local, host, scratch, key, closure }
}

pub(crate) fn host_valid(host: &StoreLayout) -> Vec<String> {
    let store = Store::open(host.clone()).unwrap();
    let report = store.verify(true).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    store.all_valid_paths().unwrap().iter().map(|p| p.name().to_owned()).collect()
}

/// Flips one byte of the stream to the agent: the first byte of MARKER, or the byte at an
/// offset.
#[derive(Debug)]
struct Tamper {
    inner: InProcessTransport,
    at: Option<u64>,
}

struct TamperWriter {
    inner: Box<dyn Write + Send>,
    at: Option<u64>,
    pos: u64,
    done: bool,
}

impl Write for TamperWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut copy = buf.to_vec();
        if !self.done {
            let hit = match self.at {
                Some(at) => (at >= self.pos && at < self.pos + buf.len() as u64)
                    .then(|| (at - self.pos) as usize),
                None => buf.windows(MARKER.len()).position(|w| w == MARKER),
            };
            if let Some(i) = hit {
                copy[i] ^= 0x20;
                self.done = true;
            }
        }
        self.inner.write_all(&copy)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Transport for Tamper {
    fn describe(&self) -> String {
        "tampered".into()
    }
    fn connect(&self) -> Result<Connection, TransportError> {
        let mut c = self.inner.connect()?;
        c.writer = Box::new(TamperWriter { inner: c.writer, at: self.at, pos: 0, done: false });
        Ok(c)
    }
}

#[test]
fn clean_copy_then_noop() {
    let s = stores(true);
    let t = AgentOptions::new(s.host.clone()).in_process();
    let o = PushOptions::default();
    let first = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    assert_eq!(first.paths_sent, 3);
    assert!(first.rejected.is_empty());
    assert_eq!(first.nar_bytes_sent, s.closure.total_nar_size());
    assert_eq!(host_valid(&s.host).len(), 3);
    let second = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    assert_eq!((second.paths_sent, second.nar_bytes_sent, second.diff_round_trips), (0, 0, 1));
}

#[test]
fn tampered_byte_in_flight_is_a_hash_mismatch() {
    let s = stores(true);
    let t = Tamper { inner: AgentOptions::new(s.host.clone()).in_process(), at: None };
    let o = PushOptions { encoding: Encoding::None, ..PushOptions::default() };
    let summary = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    let reasons: Vec<(String, RejectReason)> =
        summary.rejected.iter().map(|r| (r.path.name().to_owned(), r.reason)).collect();
    assert!(reasons.contains(&("marked".into(), RejectReason::HashMismatch)), "{reasons:?}");
    assert!(reasons.contains(&("top".into(), RejectReason::MissingReference)), "{reasons:?}");
    let msg = &summary.rejected.iter().find(|r| r.path.name() == "marked").unwrap().message;
    assert!(msg.contains("has hash") && msg.contains("was not imported"), "{msg}");
    assert_eq!(host_valid(&s.host), vec!["big".to_owned()]);
}

#[test]
fn tampered_compressed_byte_is_refused() {
    let s = stores(true);
    let plain = AgentOptions::new(s.host.clone()).in_process();
    // Learn where the stream is, on a scratch host: the big path is most of it.
    let probe = AgentOptions::new(s.scratch.clone()).in_process();
    let o = PushOptions::default();
    let wire = push_closure(s.local.layout(), &s.closure, &probe, &s.key, &o, &NoProgress)
        .unwrap()
        .wire_bytes;
    let t = Tamper { inner: plain, at: Some(wire / 2) };
    let summary = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    let big = summary.rejected.iter().find(|r| r.path.name() == "big").expect("big refused");
    assert!(
        matches!(big.reason, RejectReason::HashMismatch | RejectReason::CorruptData),
        "{big:?}"
    );
    assert!(!host_valid(&s.host).contains(&"big".to_owned()));
}

#[test]
fn unauthorized_key_refused() {
    let s = stores(false);
    let t = AgentOptions::new(s.host.clone()).in_process();
    // The host says in `Have` that it does not trust the key: nothing is sent.
    let e = push_closure(
        s.local.layout(),
        &s.closure,
        &t,
        &s.key,
        &PushOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(e, PushError::Untrusted { paths: 3, .. }), "{e}");
    assert!(host_valid(&s.host).is_empty());
    // Sent anyway (without asking), each path is refused on its own.
    let o = PushOptions { trust_check: false, ..PushOptions::default() };
    let summary = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    assert_eq!(summary.rejected.len(), 3);
    assert!(summary.rejected.iter().all(|r| r.reason == RejectReason::Unauthorized));
    assert!(host_valid(&s.host).is_empty());
    // With --authorize the same copy goes through.
    let o = PushOptions { authorize: true, ..PushOptions::default() };
    let summary = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &NoProgress).unwrap();
    assert_eq!(summary.authorized, Some(true));
    assert!(summary.rejected.is_empty());
}

/// A hand-driven coordinator session.
pub(crate) struct Raw {
    pub(crate) frames: FrameReader<Box<dyn io::Read + Send>>,
    pub(crate) out: FrameWriter<Box<dyn Write + Send>>,
    pub(crate) agent: Box<dyn transfer::transport::AgentHandle>,
}

impl Raw {
    pub(crate) fn open(host: &StoreLayout) -> Raw {
        Raw::open_with(AgentOptions::new(host.clone()))
    }
    pub(crate) fn open_with(options: AgentOptions) -> Raw {
        let t = options.in_process();
        let Connection { reader, writer, agent } = t.connect().unwrap();
        Raw {
            frames: FrameReader::new(reader),
            out: FrameWriter::new(writer, Arc::new(AtomicU64::new(0))),
            agent,
        }
    }
    pub(crate) fn send(&mut self, f: Frame) {
        self.out.send(&f).unwrap();
        self.out.flush().unwrap();
    }
    /// The next frame other than `Received` (feature `progress`: counts, not answers).
    pub(crate) fn recv(&mut self) -> Frame {
        loop {
            match self.frames.read_frame().unwrap().expect("a frame") {
                Frame::Received { .. } => {}
                other => return other,
            }
        }
    }
    pub(crate) fn handshake(&mut self) {
        self.send(Frame::Hello(Hello::ours()));
        assert!(matches!(self.recv(), Frame::Welcome(_)));
        self.send(Frame::Query(Vec::new()));
        assert!(matches!(self.recv(), Frame::Have { .. }));
    }
}

/// The layout of a host whose store is `kind`'s daemon's under `root` (its database read in
/// place), with ferry's state dir made and `key` in its ACL.
pub(crate) fn daemon_host_layout(
    root: &std::path::Path,
    kind: DbKind,
    key: &SigningKey,
) -> StoreLayout {
    let options = LayoutOptions {
        root: Some(root.to_owned()),
        store: Some(kind),
        ..LayoutOptions::default()
    };
    let layout = StoreLayout::resolve(&options).unwrap();
    std::fs::create_dir_all(layout.state_dir()).unwrap();
    let acl = layout.state_dir().join("acl");
    signing::keyfile::authorize_key_in_file(&acl, key.verifying_key().to_sexp()).unwrap();
    layout
}

/// The coordinator's signature of `info` under `store_dir`, as a `PathStart` carries it.
pub(crate) fn signed(
    key: &signing::guix::SigningKey,
    store_dir: &nar_core::store_path::StoreDir,
    info: &PathInfo,
) -> Vec<u8> {
    let refs: Vec<_> = info.references.iter().cloned().collect();
    transfer::trust::sign_path(key, store_dir, &info.path, &info.nar_hash, info.nar_size, &refs)
}

pub(crate) fn start_for(info: &PathInfo, signature: Vec<u8>) -> PathStart {
    PathStart {
        path: info.path.clone(),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references.iter().cloned().collect(),
        deriver: None,
        ca: info.ca.clone(),
        signature,
        encoding: Encoding::None,
        offset: 0,
        nix_sigs: Vec::new(),
    }
}

pub(crate) fn nar_of(local: &Store, info: &PathInfo) -> Vec<u8> {
    let mut nar = Vec::new();
    nar_core::dump::dump(&local.physical_path(&info.path), &mut nar).unwrap();
    nar
}

#[test]
fn unsigned_and_badly_signed_paths_refused_session_goes_on() {
    let s = stores(true);
    let marked = s.closure.iter().find(|i| i.path.name() == "marked").unwrap().clone();
    let nar = nar_of(&s.local, &marked);
    let mut raw = Raw::open(&s.host);
    raw.handshake();
    // Unsigned.
    raw.send(Frame::PathStart(Box::new(start_for(&marked, Vec::new()))));
    raw.send(Frame::Data(nar.clone()));
    raw.send(Frame::PathEnd);
    match raw.recv() {
        Frame::Reject { reason, message, .. } => {
            assert_eq!(reason, RejectReason::Unsigned);
            assert!(message.contains("not signed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Signed by an authorized key, but for another size: the signature does not cover this.
    let dir = StoreDir::guix();
    let refs: Vec<_> = marked.references.iter().cloned().collect();
    let wrong = transfer::trust::sign_path(
        &s.key,
        &dir,
        &marked.path,
        &marked.nar_hash,
        marked.nar_size + 1,
        &refs,
    );
    raw.send(Frame::PathStart(Box::new(start_for(&marked, wrong))));
    raw.send(Frame::Data(nar.clone()));
    raw.send(Frame::PathEnd);
    match raw.recv() {
        Frame::Reject { reason, message, .. } => {
            assert_eq!(reason, RejectReason::BadSignature);
            assert!(message.contains("signed hash doesn't match"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Garbage data under a good signature: corrupt data.
    let good = transfer::trust::sign_path(
        &s.key,
        &dir,
        &marked.path,
        &marked.nar_hash,
        marked.nar_size,
        &refs,
    );
    raw.send(Frame::PathStart(Box::new(start_for(&marked, good.clone()))));
    raw.send(Frame::Data(b"not a nar at all, not at all".to_vec()));
    raw.send(Frame::PathEnd);
    assert!(matches!(raw.recv(), Frame::Reject { reason: RejectReason::CorruptData, .. }));
    // The session goes on: the right one lands.
    raw.send(Frame::PathStart(Box::new(start_for(&marked, good))));
    raw.send(Frame::Data(nar));
    raw.send(Frame::PathEnd);
    assert!(matches!(raw.recv(), Frame::Ack { .. }));
    raw.send(Frame::Done);
    assert_eq!(raw.recv(), Frame::Bye { imported: 1, rejected: 3 });
    raw.agent.wait().unwrap();
    assert_eq!(host_valid(&s.host), vec!["marked".to_owned()]);
}

#[test]
fn version_mismatch_and_unknown_frame_are_clear_errors() {
    let s = stores(true);
    let mut raw = Raw::open(&s.host);
    let mut hello = Hello::ours();
    hello.min_version = 90;
    hello.max_version = 99;
    hello.ferry_version = "9.9.9".into();
    raw.send(Frame::Hello(hello.clone()));
    let mut state = CoordinatorState::new();
    state.on_send(&Frame::Hello(hello)).unwrap();
    let welcome = raw.recv();
    // The coordinator side sees the mismatch from the Welcome alone.
    let e = state.on_receive(&welcome).unwrap_err();
    assert!(matches!(e, ProtocolError::VersionMismatch { .. }), "{e}");
    match raw.recv() {
        Frame::Error(m) => assert!(m.contains("90..=99") && m.contains("9.9.9"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(raw.agent.wait().is_err());

    let mut raw = Raw::open(&s.host);
    raw.handshake();
    // A frame of type 0x66.
    raw.out.into_inner().write_all(&[1, 0, 0, 0, 0x66]).unwrap();
    let mut frames = raw.frames;
    match frames.read_frame().unwrap() {
        Some(Frame::Error(m)) => assert!(m.contains("0x66") && m.contains("ferry"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Feature `progress`: the host tells what it received as a path's data arrives (not only when
/// paths are acknowledged), and the counts only grow, up to the bytes to send.
#[test]
fn the_host_tells_what_it_received_as_data_arrives() {
    #[derive(Default)]
    struct Seen {
        total: std::sync::Mutex<u64>,
        counts: std::sync::Mutex<Vec<u64>>,
    }
    impl transfer::push::Progress for Seen {
        fn event(&self, _: &str, event: &transfer::push::ProgressEvent<'_>) {
            match event {
                transfer::push::ProgressEvent::Plan { nar_bytes, .. } => {
                    *self.total.lock().unwrap() = *nar_bytes
                }
                transfer::push::ProgressEvent::Received { nar_bytes } => {
                    self.counts.lock().unwrap().push(*nar_bytes)
                }
                _ => {}
            }
        }
    }
    let s = stores(true);
    let t = AgentOptions::new(s.host.clone()).in_process();
    let seen = Seen::default();
    let o = PushOptions::default();
    let summary = push_closure(s.local.layout(), &s.closure, &t, &s.key, &o, &seen).unwrap();
    assert_eq!(summary.paths_landed, 3);
    let total = *seen.total.lock().unwrap();
    let counts = seen.counts.lock().unwrap().clone();
    assert_eq!(counts.last(), Some(&total), "{counts:?}");
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    // Acknowledgements alone give at most one count below the 1 MiB path's size (the small
    // path before it); the host counted that path's data as it arrived.
    let big = s.closure.iter().find(|i| i.path.name() == "big").unwrap().nar_size;
    let inside = counts.iter().filter(|&&n| n > 0 && n < big).count();
    assert!(inside >= 2, "{counts:?}");
}
