//! The agent importing into a host's own Guix store through `guix archive --import`, against
//! a STAND-IN for Guix (`tests/it/guix-standin`, run as `guix`): no Guix can run here. The
//! stand-in reads the Guix-signed export bundle as Guix's daemon does, checks each item's
//! signature with libgcrypt (guile-gcrypt) against its ACL, and registers the path in a
//! Guix-schema database. A path lands signed by the host's ferry Guix key; a NAR that does not
//! match its signed hash never reaches the stand-in as a signed item; a host key missing from
//! Guix's ACL is refused by the stand-in, and nothing is registered.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use closure::PathInfo;
use nar_core::store_path::{StoreDir, StorePath};
use proto::frame::{AckOutcome, Frame, RejectReason};
use signing::guix::SigningKey;
use store::{DbKind, Store, StoreLayout};
use transfer::agent::daemon::DaemonStore;
use transfer::agent::guix_store::GuixOptions;
use transfer::agent::AgentOptions;

use crate::agent::{daemon_host_layout, nar_of, start_for, Raw};

const STANDIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/guix-standin");

/// A Guix host root: an empty Guix-schema database (made by ferry's store, then moved where
/// Guix keeps it), Guix's ACL naming the host's ferry key when `authorized`, ferry's ACL naming
/// the coordinator's `key`.
struct GuixHost {
    root: PathBuf,
    layout: StoreLayout,
}

impl GuixHost {
    fn new(root: PathBuf, key: &SigningKey, authorized: bool) -> GuixHost {
        let maker = root.join("db-maker");
        drop(Store::open(StoreLayout::new(&maker, StoreDir::guix(), None).unwrap()).unwrap());
        let db = root.join("var/guix/db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::copy(maker.join("var/ferry/db/db.sqlite"), db.join("db.sqlite")).unwrap();
        std::fs::remove_dir_all(&maker).unwrap();
        let layout = daemon_host_layout(&root, DbKind::Guix, key);
        // The host's ferry key, and Guix's ACL (`guix archive --authorize`).
        let (host_key, _) = transfer::trust::load_or_generate_key(layout.state_dir()).unwrap();
        let other = SigningKey::generate(&mut rand::thread_rng());
        let trusted = if authorized { host_key.verifying_key() } else { other.verifying_key() };
        std::fs::create_dir_all(root.join("etc/guix")).unwrap();
        signing::keyfile::authorize_key_in_file(&root.join("etc/guix/acl"), trusted.to_sexp())
            .unwrap();
        GuixHost { root, layout }
    }

    fn agent(&self) -> AgentOptions {
        let env: Vec<(OsString, OsString)> =
            vec![("GUIX_STANDIN_ROOT".into(), self.root.clone().into_os_string())];
        let mut options = AgentOptions::new(self.layout.clone());
        options.daemon =
            Some(DaemonStore::Guix(GuixOptions { program: PathBuf::from(STANDIN), env }));
        options
    }

    /// What the stand-in imported, in order.
    fn imported(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.root.join("imported")).unwrap_or_default();
        log.lines().map(str::to_owned).collect()
    }

    fn valid(&self) -> Vec<StorePath> {
        Store::open_read_only(self.layout.clone()).unwrap().all_valid_paths().unwrap()
    }
}

fn add(store: &mut Store, dir: &Path, name: &str, data: &[u8], refs: &[&StorePath]) -> PathInfo {
    let src = dir.join("src").join(name);
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data"), data).unwrap();
    let text: String =
        refs.iter().map(|r| format!("{}\n", r.to_absolute(&StoreDir::guix()))).collect();
    std::fs::write(src.join("refs"), text).unwrap();
    let path = crate::nix_fixture::made_up_path(name);
    let mut nar = Vec::new();
    let digest = nar_core::dump::dump_hashed(&src, &mut nar).unwrap();
    let info = PathInfo::new(path, digest, refs.iter().map(|r| (*r).clone()).collect());
    store.import_nar(&info, &mut &nar[..]).unwrap();
    info
}

fn send(raw: &mut Raw, info: &PathInfo, key: &SigningKey, nar: &[u8]) -> Frame {
    let sig = crate::agent::signed(key, &StoreDir::guix(), info);
    raw.send(Frame::PathStart(Box::new(start_for(info, sig))));
    for chunk in nar.chunks(64 << 10) {
        raw.send(Frame::Data(chunk.to_vec()));
    }
    raw.send(Frame::PathEnd);
    raw.recv()
}

struct World {
    dir: tempfile::TempDir,
    local: Store,
    key: SigningKey,
    lib: PathInfo,
    app: PathInfo,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let layout = StoreLayout::new(dir.path().join("local"), StoreDir::guix(), None).unwrap();
    let mut local = Store::open(layout).unwrap();
    let lib = add(&mut local, dir.path(), "lib-1.0", &[7u8; 100_000], &[]);
    let app = add(&mut local, dir.path(), "app-1.0", b"app", &[&lib.path]);
    World { dir, local, key: SigningKey::generate(&mut rand::thread_rng()), lib, app }
}

#[test]
fn paths_land_in_guix_signed_and_a_bad_nar_is_never_imported() {
    let w = world();
    let host = GuixHost::new(w.dir.path().join("host"), &w.key, true);
    let mut raw = Raw::open_with(host.agent());
    raw.handshake();
    let mut bad = nar_of(&w.local, &w.lib);
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    match send(&mut raw, &w.lib, &w.key, &bad) {
        Frame::Reject { reason: RejectReason::HashMismatch, message, .. } => {
            assert!(message.contains("the path was not imported"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(host.imported().is_empty(), "{:?}", host.imported());
    for info in [&w.lib, &w.app] {
        match send(&mut raw, info, &w.key, &nar_of(&w.local, info)) {
            Frame::Ack { outcome: AckOutcome::Imported, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    raw.send(Frame::Done);
    assert!(matches!(raw.recv(), Frame::Bye { imported: 2, rejected: 1 }));
    let abs = |i: &PathInfo| i.path.to_absolute(&StoreDir::guix());
    assert_eq!(host.imported(), [abs(&w.lib), abs(&w.app)]);
    // Registered with the NAR hash and the references ferry sent.
    let guix = Store::open_read_only(host.layout.clone()).unwrap();
    let app = guix.query_path_info(&w.app.path).unwrap().unwrap();
    assert_eq!((app.nar_hash, app.nar_size), (w.app.nar_hash, w.app.nar_size));
    assert_eq!(app.references, w.app.references);
}

#[test]
fn a_host_key_guix_does_not_trust_is_refused_and_nothing_is_registered() {
    let w = world();
    let host = GuixHost::new(w.dir.path().join("host"), &w.key, false);
    let mut raw = Raw::open_with(host.agent());
    raw.handshake();
    match send(&mut raw, &w.lib, &w.key, &nar_of(&w.local, &w.lib)) {
        Frame::Reject { reason: RejectReason::Store, message, .. } => {
            assert!(message.contains("guix archive --import"), "{message}");
            assert!(message.contains("key not authorized"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    raw.send(Frame::Done);
    assert!(matches!(raw.recv(), Frame::Bye { imported: 0, rejected: 1 }));
    assert!(host.imported().is_empty());
    assert!(host.valid().is_empty());
}
