//! Golden vectors (guix-spec §1.4), round trips through every adapter and every buffer split,
//! and the decoder's totality on arbitrary bytes.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nar_core::hash::Sha256Hash;
use nar_core::read::{read_nar, validate, NarEvent, ReadError};
use nar_core::write::NarWriter;
use proptest::prelude::*;

/// An in-memory tree: what a NAR can express.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Directory(BTreeMap<Vec<u8>, Node>),
}

fn encode(node: &Node) -> Vec<u8> {
    fn walk(w: &mut NarWriter<&mut Vec<u8>>, node: &Node) {
        match node {
            Node::File { executable, contents } => w.file_bytes(*executable, contents).unwrap(),
            Node::Symlink(target) => w.symlink(target).unwrap(),
            Node::Directory(entries) => {
                w.directory().unwrap();
                for (name, child) in entries {
                    w.entry(name).unwrap();
                    walk(w, child);
                }
                w.directory_end().unwrap();
            }
        }
    }
    let mut out = Vec::new();
    let mut w = NarWriter::new(&mut out);
    walk(&mut w, node);
    w.finish().unwrap();
    out
}

/// Decode into a tree, reading through a buffer of `capacity` bytes (so tokens split anywhere).
fn decode(nar: &[u8], capacity: usize) -> Result<Node, ReadError> {
    let mut reader = BufReader::with_capacity(capacity, nar);
    let mut stack: Vec<(Option<Vec<u8>>, Node)> = vec![];
    let mut pending_name: Option<Vec<u8>> = None;
    let mut root = None;
    let finish = |stack: &mut Vec<(Option<Vec<u8>>, Node)>,
                  root: &mut Option<Node>,
                  name: Option<Vec<u8>>,
                  node: Node| {
        match stack.last_mut() {
            Some((_, Node::Directory(entries))) => {
                entries.insert(name.expect("entry name"), node);
            }
            _ => *root = Some(node),
        }
    };
    let digest = read_nar(&mut reader, |event, _| {
        match event {
            NarEvent::Directory => {
                stack.push((pending_name.take(), Node::Directory(BTreeMap::new())))
            }
            NarEvent::Entry { name } => pending_name = Some(name.to_vec()),
            NarEvent::File { executable, .. } => {
                stack.push((pending_name.take(), Node::File { executable, contents: vec![] }))
            }
            NarEvent::Data(bytes) => match stack.last_mut() {
                Some((_, Node::File { contents, .. })) => contents.extend_from_slice(bytes),
                _ => panic!("data outside a file"),
            },
            NarEvent::FileEnd | NarEvent::DirectoryEnd => {
                let (name, node) = stack.pop().unwrap();
                finish(&mut stack, &mut root, name, node);
            }
            NarEvent::Symlink { target } => {
                let name = pending_name.take();
                finish(&mut stack, &mut root, name, Node::Symlink(target.to_vec()));
            }
            NarEvent::End => {}
        }
        Ok::<(), ReadError>(())
    })?;
    nar_core::read::expect_eof(&mut reader, digest.size)?;
    Ok(root.unwrap())
}

fn write_tree(node: &Node, path: &Path) {
    match node {
        Node::File { executable, contents } => {
            let mut f = std::fs::File::create(path).unwrap();
            f.write_all(contents).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Node::Symlink(target) => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path).unwrap()
        }
        Node::Directory(entries) => {
            std::fs::create_dir(path).unwrap();
            for (name, child) in entries {
                write_tree(child, &path.join(std::ffi::OsStr::from_bytes(name)));
            }
        }
    }
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9_ .+-]{1,12}".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(1u8..=255, 1..20),
    ]
    .prop_filter("valid entry name", |n| nar_core::wire::invalid_name_reason(n).is_none())
}

fn arb_tree() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(executable, contents)| Node::File { executable, contents }),
        proptest::collection::vec(1u8..=255, 1..40).prop_map(Node::Symlink),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..8).prop_map(Node::Directory)
    })
}

/// Every restored node has the store's canonical metadata: mtime 1, files 0444 or 0555 (as
/// the archive says), directories 0555.
fn assert_canonical(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1, 0), "mtime of {}", path.display());
    let mode = meta.mode() & 0o7777;
    if meta.is_dir() {
        assert_eq!(mode, 0o555, "mode of {}", path.display());
        for entry in std::fs::read_dir(path).unwrap() {
            assert_canonical(&entry.unwrap().path());
        }
    } else if meta.is_file() {
        assert!(mode == 0o444 || mode == 0o555, "mode {mode:o} of {}", path.display());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// encode → decode is the identity, through buffers of every size.
    #[test]
    fn encode_then_decode(tree in arb_tree(), capacity in 1usize..64) {
        let nar = encode(&tree);
        prop_assert_eq!(&decode(&nar, capacity).unwrap(), &tree);
        prop_assert_eq!(&decode(&nar, 1 << 16).unwrap(), &tree);
    }

    /// A tree written to disk dumps to the same bytes, and restores to a tree that dumps again
    /// to the same bytes.
    #[test]
    fn disk_round_trip(tree in arb_tree()) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write_tree(&tree, &src);
        let nar = encode(&tree);
        let mut dumped = Vec::new();
        nar_core::dump::dump(&src, &mut dumped).unwrap();
        prop_assert_eq!(&dumped, &nar);
        let digest = nar_core::dump::hash_path(&src).unwrap();
        prop_assert_eq!(digest.hash, Sha256Hash::of(&nar));
        prop_assert_eq!(digest.size, nar.len() as u64);
        let out = tmp.path().join("out");
        let restored = nar_core::restore::restore(&nar[..], &out).unwrap();
        prop_assert_eq!(restored, digest);
        assert_canonical(&out);
        let mut again = Vec::new();
        nar_core::dump::dump(&out, &mut again).unwrap();
        prop_assert_eq!(&again, &nar);
        nar_core::restore::remove_tree(&out).unwrap();
    }

    /// The decoder never panics, whatever the bytes.
    #[test]
    fn decoder_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = validate(&mut &bytes[..]);
        let mut prefixed = nar_core::testdata::hello_nar()[..24].to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = validate(&mut &prefixed[..]);
    }

    /// A flipped byte anywhere in a valid archive is either still valid or rejected: never a panic.
    #[test]
    fn flipped_bytes(tree in arb_tree(), position in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut nar = encode(&tree);
        let i = position.index(nar.len());
        nar[i] ^= 1 << bit;
        if let Ok(node) = decode(&nar, 7) {
            prop_assert_eq!(encode(&node), nar);
        }
    }
}

fn hex_sha(bytes: &[u8]) -> String {
    Sha256Hash::of(bytes).to_hex()
}

#[test]
fn guix_spec_vectors() {
    let hello = encode(&Node::File { executable: false, contents: b"hello\n".to_vec() });
    assert_eq!(hello, nar_core::testdata::hello_nar());
    assert_eq!(hello.len(), 120);
    assert_eq!(hex_sha(&hello), "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13");
    assert_eq!(
        Sha256Hash::of(&hello).to_nix32(),
        "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
    );

    let exec = encode(&Node::File { executable: true, contents: b"hello\n".to_vec() });
    assert_eq!(exec.len(), 152);
    let exec_sha = hex_sha(&exec);
    assert!(exec_sha.starts_with("65436039d3f9") && exec_sha.ends_with("3010fa"), "{exec_sha}");

    let empty = encode(&Node::File { executable: false, contents: vec![] });
    assert_eq!(empty.len(), 112);
    assert_eq!(hex_sha(&empty), "77ac62e2629d8e45f624589c0c8bf99e24b3a722349bf1e79bc186008534e246");

    assert_eq!(encode(&Node::Symlink(b"hello.txt".to_vec())).len(), 128);

    let dir = Node::Directory(BTreeMap::from([
        (b"B".to_vec(), Node::Directory(BTreeMap::new())),
        (b"a".to_vec(), Node::File { executable: false, contents: b"x".to_vec() }),
        (b"b".to_vec(), Node::File { executable: true, contents: vec![] }),
        (b"c".to_vec(), Node::Symlink(b"a".to_vec())),
    ]));
    let nar = encode(&dir);
    assert_eq!(nar.len(), 864);
    assert_eq!(hex_sha(&nar), "b32a3082b2304c6ab9dba590e6142055f00631b76b14f8ff846512cc4218100d");
    for capacity in 1..40 {
        assert_eq!(decode(&nar, capacity).unwrap(), dir);
    }
}

#[test]
fn dump_rejects_special_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let socket_path = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let err = nar_core::dump::dump(&dir, std::io::sink()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("sock") && text.contains("socket"), "{text}");
    let err = nar_core::dump::hash_path(&dir).unwrap_err();
    assert!(err.to_string().contains("socket"), "{err}");
}

#[cfg(feature = "tokio")]
#[test]
fn async_adapter_agrees_with_sync() {
    let nar = encode(&Node::Directory(BTreeMap::from([
        (b"a".to_vec(), Node::File { executable: true, contents: vec![7; 5000] }),
        (b"l".to_vec(), Node::Symlink(b"a".to_vec())),
    ])));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut sync_events = Vec::new();
    let sync_digest = read_nar(&mut &nar[..], |e, off| {
        sync_events.push(format!("{e:?}@{off}"));
        Ok::<(), ReadError>(())
    })
    .unwrap();
    let mut async_events = Vec::new();
    let async_digest = rt
        .block_on(nar_core::read::tokio_io::read_nar_async(&mut &nar[..], |e, off| {
            async_events.push(format!("{e:?}@{off}"));
            Ok::<(), ReadError>(())
        }))
        .unwrap();
    assert_eq!(sync_digest, async_digest);
    assert_eq!(sync_events, async_events);
}
