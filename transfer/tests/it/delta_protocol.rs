//! Deltas in the live protocol, over the in-process transport: the host offers the older version
//! of each missing path as a base, the coordinator sends a delta frame, the agent checks the
//! base, applies, verifies; a base missing or corrupt on the host falls back to a full transfer
//! in the same session. Also: compress once across hosts, and `--no-delta`.

use std::path::Path;
use std::sync::Arc;

use store::{Store, StoreLayout};

use closure::ValidatedClosure;
use nar_core::store_path::{StoreDir, StorePath};
use rand::{Rng, SeedableRng};
use signing::guix::SigningKey;
use transfer::agent::AgentOptions;
use transfer::push::frame_cache::FrameCache;
use transfer::push::{push_closure, NoProgress, PushOptions, PushSummary};
use transfer::transport::InProcessTransport;

struct World {
    dir: tempfile::TempDir,
    local: Store,
    key: SigningKey,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let local = Store::open(layout(dir.path(), "local")).unwrap();
    World { dir, local, key: SigningKey::generate(&mut rand::thread_rng()) }
}

fn layout(root: &Path, name: &str) -> StoreLayout {
    StoreLayout::new(root.join(name), StoreDir::guix(), None).unwrap()
}

impl World {
    fn host(&self, name: &str) -> StoreLayout {
        let h = layout(self.dir.path(), name);
        std::fs::create_dir_all(h.state_dir()).unwrap();
        signing::keyfile::authorize_key_in_file(
            &h.state_dir().join("acl"),
            self.key.verifying_key().to_sexp(),
        )
        .unwrap();
        h
    }

    /// Add a store item `name` holding `files`, and `refs` written into a file (as Nix and Guix
    /// items name their references).
    fn add(&mut self, name: &str, files: &[(&str, Vec<u8>)], refs: &[&StorePath]) -> StorePath {
        let src = self.dir.path().join("src").join(name);
        std::fs::create_dir_all(&src).unwrap();
        for (f, bytes) in files {
            std::fs::write(src.join(f), bytes).unwrap();
        }
        let sd = self.local.store_dir().clone();
        let text: String = refs.iter().map(|r| format!("{}\n", r.to_absolute(&sd))).collect();
        std::fs::write(src.join("refs"), text).unwrap();
        self.local.add_path(&src, Some(name)).unwrap().path
    }

    fn closure(&self, root: &StorePath) -> ValidatedClosure {
        self.local.closure(std::slice::from_ref(root)).unwrap()
    }

    fn push(&self, root: &StorePath, host: &StoreLayout, o: &PushOptions) -> PushSummary {
        let t = AgentOptions::new(host.clone()).in_process();
        push_closure(self.local.layout(), &self.closure(root), &t, &self.key, o, &NoProgress)
            .unwrap()
    }
}

/// Code-like text: compressible, with structure a delta can reuse.
fn codeish(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let line = format!(
            "fn f{}(x: u32) -> u32 {{ x.wrapping_mul({}) ^ {} }}\n",
            r.gen_range(0..5000),
            r.gen_range(0..1_000_000),
            r.gen::<u32>()
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

/// `base` with a few lines changed.
fn edited(base: &[u8], seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = base.to_vec();
    for _ in 0..8 {
        let at = r.gen_range(0..v.len().saturating_sub(64).max(1));
        for b in v.iter_mut().skip(at).take(40) {
            *b = b'a' + r.gen_range(0..26u8);
        }
    }
    v
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.gen()).collect()
}

/// The host's store verifies `paths` (contents against the recorded NAR hashes).
fn verified(host: &StoreLayout, paths: &[StorePath]) {
    let store = Store::open(host.clone()).unwrap();
    for p in paths {
        assert!(store.is_valid(p).unwrap(), "{p} not valid on the host");
    }
    let report = store.verify_paths(Some(paths), true).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// Generation 1 (lib-1.0 ← app-1.0) and generation 2 (lib-2.0 ← app-2.0), 256 KiB each.
fn generations(w: &mut World) -> (StorePath, StorePath, StorePath, StorePath) {
    let lib1 = codeish(1, 256 << 10);
    let app1 = codeish(2, 256 << 10);
    let l1 = w.add("lib-1.0", &[("lib.so", lib1.clone())], &[]);
    let a1 = w.add("app-1.0", &[("app", app1.clone())], &[&l1]);
    let l2 = w.add("lib-2.0", &[("lib.so", edited(&lib1, 3))], &[]);
    let a2 = w.add("app-2.0", &[("app", edited(&app1, 4))], &[&l2]);
    (l1, a1, l2, a2)
}

#[test]
fn update_goes_as_deltas_and_verifies() {
    let mut w = world();
    let (_, a1, l2, a2) = generations(&mut w);
    let host = w.host("host");
    let o = PushOptions::default();
    let first = w.push(&a1, &host, &o);
    assert_eq!((first.paths_sent, first.encode.paths_delta), (2, 0));
    let second = w.push(&a2, &host, &o);
    assert!(second.rejected.is_empty(), "{:?}", second.rejected);
    assert_eq!((second.paths_sent, second.encode.paths_delta, second.delta_fallbacks), (2, 2, 0));
    verified(&host, &[l2.clone(), a2.clone()]);
    // The same update without deltas, to a second host at the same state.
    let other = w.host("other");
    w.push(&a1, &other, &o);
    let full = w.push(&a2, &other, &PushOptions { delta: false, ..PushOptions::default() });
    assert_eq!(full.encode.paths_delta, 0);
    assert!(
        second.wire_bytes * 5 < full.wire_bytes,
        "delta {} B vs full {} B",
        second.wire_bytes,
        full.wire_bytes
    );
}

#[test]
fn small_empty_identical_and_unrelated_pairs() {
    let mut w = world();
    let host = w.host("host");
    let empty1 = w.add("empty-1", &[("f", Vec::new())], &[]);
    let tiny1 = w.add("tiny-1", &[("f", b"hello\n".to_vec())], &[]);
    let same1 = w.add("same-1", &[("f", codeish(7, 50_000))], &[]);
    let unrel1 = w.add("unrel-1", &[("f", random(8, 60_000))], &[]);
    let g1 = w.add("gen-1", &[], &[&empty1, &tiny1, &same1, &unrel1]);
    let empty2 = w.add("empty-2", &[("f", Vec::new())], &[]);
    let tiny2 = w.add("tiny-2", &[("f", b"hello, world\n".to_vec())], &[]);
    let same2 = w.add("same-2", &[("f", codeish(7, 50_000))], &[]);
    let unrel2 = w.add("unrel-2", &[("f", random(9, 60_000))], &[]);
    let g2 = w.add("gen-2", &[], &[&empty2, &tiny2, &same2, &unrel2]);
    w.push(&g1, &host, &PushOptions::default());
    let s = w.push(&g2, &host, &PushOptions::default());
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!(s.paths_sent, 5);
    assert_eq!(s.encode.paths_delta, 5, "gen-2 against gen-1 too");
    verified(&host, &[empty2, tiny2, same2, unrel2, g2]);
}

#[test]
fn base_missing_on_the_host_falls_back_to_full() {
    let mut w = world();
    let (l1, a1, l2, a2) = generations(&mut w);
    let host = w.host("host");
    w.push(&a1, &host, &PushOptions::default());
    // The database still lists lib-1.0, its files are gone.
    std::fs::remove_dir_all(host.physical_path(&l1)).unwrap();
    let s = w.push(&a2, &host, &PushOptions::default());
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!(s.delta_fallbacks, 1);
    // lib-2.0 (delta failed, then full) and app-2.0 (delta: refused for the missing reference
    // while lib-2.0 was not there, then full): four sends.
    assert_eq!(s.paths_sent, 4);
    assert_eq!(s.paths_landed, 2);
    verified(&host, &[l2, a2]);
}

#[test]
fn base_corrupted_on_the_host_falls_back_and_still_verifies() {
    let mut w = world();
    let (_, a1, l2, a2) = generations(&mut w);
    let host = w.host("host");
    w.push(&a1, &host, &PushOptions::default());
    // Same size, other bytes: only the NAR hash tells.
    let app = host.physical_path(&a1).join("app");
    let mut bytes = std::fs::read(&app).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&app, bytes).unwrap();
    let s = w.push(&a2, &host, &PushOptions::default());
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!((s.encode.paths_delta, s.delta_fallbacks, s.paths_landed), (2, 1, 2));
    verified(&host, &[l2, a2]);
}

#[test]
fn compress_once_for_several_hosts() {
    let mut w = world();
    let (_, a1, l2, a2) = generations(&mut w);
    let hosts: Vec<StoreLayout> = (0..3).map(|i| w.host(&format!("h{i}"))).collect();
    for h in &hosts {
        w.push(&a1, h, &PushOptions::default());
    }
    let cache = Arc::new(FrameCache::new(hosts.len()));
    let o = PushOptions { frame_cache: Some(cache.clone()), ..PushOptions::default() };
    let closure = w.closure(&a2);
    let (local, key) = (w.local.layout().clone(), &w.key);
    let summaries: Vec<PushSummary> = std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                let (local, o, closure) = (&local, &o, &closure);
                scope.spawn(move || {
                    let t = AgentOptions::new(h.clone()).in_process();
                    push_closure(local, closure, &t, key, o, &NoProgress).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stats = cache.stats();
    assert_eq!((stats.produced, stats.shared), (2, 4), "{stats:?}");
    assert_eq!(summaries.iter().map(|s| s.encode.paths_shared).sum::<usize>(), 4);
    for (h, s) in hosts.iter().zip(&summaries) {
        assert!(s.rejected.is_empty());
        verified(h, &[l2.clone(), a2.clone()]);
    }
}

#[test]
fn adaptive_and_no_delta_settings() {
    use transfer::push::adaptive::CompressSetting;
    let mut w = world();
    let (_, a1, l2, a2) = generations(&mut w);
    let host = w.host("host");
    w.push(&a1, &host, &PushOptions::default());
    let o = PushOptions {
        compress: Some(CompressSetting::Auto),
        delta: false,
        ..PushOptions::default()
    };
    let s = w.push(&a2, &host, &o);
    assert_eq!(s.encode.paths_delta, 0);
    assert!(!s.encode.levels.is_empty());
    verified(&host, &[l2, a2]);
    let max = PushOptions { compress: Some(CompressSetting::Max), ..PushOptions::default() };
    let other = w.host("other");
    w.push(&a1, &other, &PushOptions::default());
    let (_, _, _, a3) = {
        let lib = codeish(11, 128 << 10);
        let l = w.add("lib-3.0", &[("lib.so", lib)], &[]);
        (
            l.clone(),
            a1.clone(),
            l.clone(),
            w.add("app-3.0", &[("app", codeish(2, 256 << 10))], &[&l]),
        )
    };
    let s = w.push(&a3, &other, &max);
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!(s.encode.levels, vec![(transfer::push::adaptive::MAX_LEVEL, 2)]);
    assert_eq!(s.encode.paths_delta, 2);
}

/// An older coordinator (no `delta` in its `Hello`) gets no bases; a current one gets the older
/// version of each missing path, by name, and nothing for a path without one.
#[test]
fn bases_only_for_peers_that_speak_delta() {
    use proto::frame::{Frame, Hello, QueryEntry, FEATURE_DELTA};
    use proto::io::{FrameReader, FrameWriter};
    use std::sync::atomic::AtomicU64;
    use transfer::transport::{Connection, Transport};

    let mut w = world();
    let (l1, a1, l2, a2) = generations(&mut w);
    let host = w.host("host");
    w.push(&a1, &host, &PushOptions::default());
    let lone = w.add("lonely-1.0", &[("f", b"x".to_vec())], &[]);
    let closure = w.closure(&a2);
    let mut entries = transfer::push::query_entries(&closure, false);
    let li = w.local.path_info(&lone).unwrap();
    entries.push(QueryEntry {
        path: lone.clone(),
        nar_hash: li.nar_hash,
        nar_size: li.nar_size,
        references: Vec::new(),
    });
    for delta in [false, true] {
        let t = AgentOptions::new(host.clone()).in_process();
        let Connection { reader, writer, mut agent } = t.connect().unwrap();
        let mut frames = FrameReader::new(reader);
        let mut out = FrameWriter::new(writer, Arc::new(AtomicU64::new(0)));
        let mut hello = Hello::ours();
        if !delta {
            hello.features.retain(|f| f != FEATURE_DELTA);
        }
        out.send(&Frame::Hello(hello)).unwrap();
        out.flush().unwrap();
        let Some(Frame::Welcome(welcome)) = frames.read_frame().unwrap() else { panic!() };
        assert!(welcome.features.iter().any(|f| f == FEATURE_DELTA));
        out.send(&Frame::Query(entries.clone())).unwrap();
        out.flush().unwrap();
        let Some(Frame::Have { missing, bases, .. }) = frames.read_frame().unwrap() else {
            panic!()
        };
        assert_eq!(missing.len(), 3);
        if delta {
            let mut got = bases.clone();
            got.sort();
            let mut want = vec![(l2.clone(), vec![l1.clone()]), (a2.clone(), vec![a1.clone()])];
            want.sort();
            assert_eq!(got, want);
        } else {
            assert!(bases.is_empty(), "{bases:?}");
        }
        out.send(&Frame::Done).unwrap();
        out.flush().unwrap();
        assert!(matches!(frames.read_frame().unwrap(), Some(Frame::Bye { .. })));
        drop(out);
        agent.wait().unwrap();
    }
}

/// Point the host's `<profiles>/system` at `root`, as a deploy does.
fn set_generation(host: &StoreLayout, root: &StorePath) {
    let profiles = host.profiles_dir();
    std::fs::create_dir_all(&profiles).unwrap();
    let link = profiles.join("system-1-link");
    std::os::unix::fs::symlink(root.to_absolute(host.store_dir()), &link).unwrap();
    std::os::unix::fs::symlink("system-1-link", profiles.join("system")).unwrap();
}

/// Generation 1 (libfoo-1.0 ← app-1.0 ← system-1) and generation 2, where the library was
/// renamed (libbar-1.1, mostly the same content) and app and system changed a little.
fn renamed(w: &mut World) -> [StorePath; 6] {
    let lib = codeish(21, 256 << 10);
    let app = codeish(22, 128 << 10);
    let libfoo = w.add("libfoo-1.0", &[("lib.so", lib.clone())], &[]);
    let a1 = w.add("app-1.0", &[("app", app.clone())], &[&libfoo]);
    let s1 = w.add("system-1", &[("conf", b"one".to_vec())], &[&a1]);
    let bar = w.add("libbar-1.1", &[("lib.so", edited(&lib, 23))], &[]);
    let a2 = w.add("app-1.1", &[("app", edited(&app, 24))], &[&bar]);
    let s2 = w.add("system-2", &[("conf", b"two".to_vec())], &[&a2]);
    [libfoo, a1, s1, bar, a2, s2]
}

/// A renamed package in a generation update goes as a delta against the path at the same place
/// in the host's current generation; without a current generation there is no base for it.
#[test]
fn renamed_package_gets_a_delta_from_the_same_place() {
    let mut w = world();
    let [_, _, s1, bar, a2, s2] = renamed(&mut w);
    let (host, bare) = (w.host("host"), w.host("bare"));
    for h in [&host, &bare] {
        w.push(&s1, h, &PushOptions::default());
    }
    set_generation(&host, &s1);
    let graph = w.push(&s2, &host, &PushOptions::default());
    assert!(graph.rejected.is_empty(), "{:?}", graph.rejected);
    // libbar-1.1 (same place as libfoo-1.0), app-1.1 and system-2 (by name): all deltas.
    assert_eq!((graph.paths_sent, graph.encode.paths_delta, graph.delta_fallbacks), (3, 3, 0));
    verified(&host, &[bar.clone(), a2.clone(), s2.clone()]);
    let by_name = w.push(&s2, &bare, &PushOptions::default());
    assert_eq!((by_name.paths_sent, by_name.encode.paths_delta), (3, 2));
    assert!(
        graph.wire_bytes * 2 < by_name.wire_bytes,
        "same place {} B vs by name only {} B",
        graph.wire_bytes,
        by_name.wire_bytes
    );
    verified(&bare, &[bar, a2, s2]);
}

/// The agent's answer to a hand-made `Query`: with the reference graph it offers the renamed
/// counterpart first; a coordinator that sends no graph (older ferry) gets bases by name only.
#[test]
fn same_place_bases_only_with_the_graph() {
    use proto::frame::{Frame, Hello, FEATURE_GRAPH};
    use proto::io::{FrameReader, FrameWriter};
    use std::sync::atomic::AtomicU64;
    use transfer::transport::{Connection, Transport};

    let mut w = world();
    let [libfoo, a1, s1, bar, a2, s2] = renamed(&mut w);
    let host = w.host("host");
    w.push(&s1, &host, &PushOptions::default());
    set_generation(&host, &s1);
    let closure = w.closure(&s2);
    for graph in [true, false] {
        let t = AgentOptions::new(host.clone()).in_process();
        let Connection { reader, writer, mut agent } = t.connect().unwrap();
        let mut frames = FrameReader::new(reader);
        let mut out = FrameWriter::new(writer, Arc::new(AtomicU64::new(0)));
        let mut hello = Hello::ours();
        if !graph {
            hello.features.retain(|f| f != FEATURE_GRAPH);
        }
        out.send(&Frame::Hello(hello)).unwrap();
        out.flush().unwrap();
        let Some(Frame::Welcome(welcome)) = frames.read_frame().unwrap() else { panic!() };
        assert!(welcome.features.iter().any(|f| f == FEATURE_GRAPH));
        out.send(&Frame::Query(transfer::push::query_entries(&closure, graph))).unwrap();
        out.flush().unwrap();
        let Some(Frame::Have { bases, .. }) = frames.read_frame().unwrap() else { panic!() };
        let mut got = bases.clone();
        got.sort();
        let mut want = vec![(a2.clone(), vec![a1.clone()]), (s2.clone(), vec![s1.clone()])];
        if graph {
            want.push((bar.clone(), vec![libfoo.clone()]));
        }
        want.sort();
        assert_eq!(got, want, "graph: {graph}");
        out.send(&Frame::Done).unwrap();
        out.flush().unwrap();
        assert!(matches!(frames.read_frame().unwrap(), Some(Frame::Bye { .. })));
        drop(out);
        agent.wait().unwrap();
    }
}

/// An agent that does not announce `graph` (an older ferry) gets the `Query` in the old
/// layout (no graph section, which its decoder would refuse) and still by-name deltas.
#[test]
fn no_graph_for_agents_without_the_feature() {
    let mut w = world();
    let [_, _, s1, bar, a2, s2] = renamed(&mut w);
    let host = w.host("host");
    w.push(&s1, &host, &PushOptions::default());
    set_generation(&host, &s1);
    let t = OldAgent { inner: AgentOptions::new(host.clone()).in_process() };
    let s = push_closure(
        w.local.layout(),
        &w.closure(&s2),
        &t,
        &w.key,
        &PushOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!((s.paths_sent, s.encode.paths_delta), (3, 2));
    verified(&host, &[bar, a2, s2]);
}

/// A real agent behind a relay that removes `graph` from its `Welcome` and fails the session if
/// a `Query` carries references.
#[derive(Debug)]
struct OldAgent {
    inner: InProcessTransport,
}

impl transfer::transport::Transport for OldAgent {
    fn describe(&self) -> String {
        "old-agent".into()
    }

    fn connect(
        &self,
    ) -> Result<transfer::transport::Connection, transfer::transport::TransportError> {
        use proto::frame::{Frame, FEATURE_GRAPH};
        use proto::io::{FrameReader, FrameWriter};
        use std::io::Write;
        use std::sync::atomic::AtomicU64;
        let real = self.inner.connect()?;
        let (to_coord, coord_reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let (from_coord, coord_writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (agent_reader, mut agent_writer) = (real.reader, real.writer);
        // Agent → coordinator: rewrite the Welcome, then copy.
        std::thread::spawn(move || {
            let mut frames = FrameReader::new(agent_reader);
            let mut out = FrameWriter::new(to_coord, Arc::new(AtomicU64::new(0)));
            while let Ok(Some(mut f)) = frames.read_frame() {
                if let Frame::Welcome(wl) = &mut f {
                    wl.features.retain(|x| x != FEATURE_GRAPH);
                }
                if out.send(&f).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        });
        // Coordinator → agent: check the Query, then copy.
        std::thread::spawn(move || {
            let mut frames = FrameReader::new(from_coord);
            let mut out = FrameWriter::new(&mut agent_writer, Arc::new(AtomicU64::new(0)));
            while let Ok(Some(f)) = frames.read_frame() {
                if let Frame::Query(entries) = &f {
                    if entries.iter().any(|e| !e.references.is_empty()) {
                        break;
                    }
                }
                if out.send(&f).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            drop(out);
            let _ = agent_writer.flush();
        });
        Ok(transfer::transport::Connection {
            reader: Box::new(coord_reader.try_clone().unwrap()),
            writer: Box::new(HalfClose(coord_writer)),
            agent: real.agent,
        })
    }
}

/// Shuts the write half when dropped, so the relay sees the end of the stream.
struct HalfClose(std::os::unix::net::UnixStream);

impl std::io::Write for HalfClose {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::Write::write(&mut self.0, buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.0)
    }
}

impl Drop for HalfClose {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}
