//! The agent importing into a host's own Nix store (Debian's Nix 2.8 on a chroot store,
//! `nix-store --store ROOT`), over the in-process transport: each path streams into
//! `nix-store --serve --write` and lands with the host's ferry Nix signature (`nix path-info
//! --sigs` shows it, `nix store verify` checks it with the key's public half); a NAR that does
//! not match its signed hash is refused, never registered, and the session goes on; deltas use
//! Nix's own paths as bases, and a base modified in place on the host (its Nix hash no longer
//! matches) falls back to a full transfer, with nothing invalid registered.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use closure::PathInfo;
use nar_core::store_path::{StoreDir, StorePath};
use proto::frame::{AckOutcome, Frame, RejectReason};
use rand::{Rng, SeedableRng};
use signing::guix::SigningKey;
use store::{DbKind, Store, StoreLayout};
use transfer::agent::daemon::DaemonStore;
use transfer::agent::nix_store::NixOptions;
use transfer::agent::AgentOptions;
use transfer::push::{push_closure, NoProgress, PushOptions, PushSummary};

use crate::agent::{daemon_host_layout, nar_of, start_for, Raw};
use crate::nix_fixture::{made_up_path, nix_cmd, nix_store, require_nix, run};

/// A Nix chroot store with ferry's state beside it (the ACL naming `key`).
struct NixHost {
    root: PathBuf,
    layout: StoreLayout,
}

impl NixHost {
    fn new(root: PathBuf, key: &SigningKey) -> NixHost {
        nix_store(&root, &["--init"]);
        let layout = daemon_host_layout(&root, DbKind::Nix, key);
        NixHost { root, layout }
    }

    /// The agent's options: into this Nix store, with the tests' hermetic Nix.
    fn agent(&self) -> AgentOptions {
        let mut env: Vec<(OsString, OsString)> =
            ferry_tests::nix::remote_env().into_iter().map(|(k, v)| (k.into(), v)).collect();
        env.push(("HOME".into(), ferry_tests::nix::state_dir().into_os_string()));
        let mut options = AgentOptions::new(self.layout.clone());
        options.daemon = Some(DaemonStore::Nix(NixOptions { env, ..NixOptions::new(&self.root) }));
        options
    }

    fn abs(&self, p: &StorePath) -> String {
        p.to_absolute(&StoreDir::nix())
    }

    /// `nix-store --store ROOT ARGS` succeeded.
    fn nix_ok(&self, args: &[&str]) -> bool {
        let out = nix_cmd("nix-store").arg("--store").arg(&self.root).args(args).output();
        out.unwrap().status.success()
    }

    /// Valid in Nix's database.
    fn valid(&self, p: &StorePath) -> bool {
        self.nix_ok(&["--check-validity", &self.abs(p)])
    }
}

/// A ferry store with store dir `/nix/store` (made-up input-addressed paths, as Nix builds).
struct Local {
    dir: tempfile::TempDir,
    store: Store,
    key: SigningKey,
}

impl Local {
    fn new() -> Local {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(dir.path().join("local"), StoreDir::nix(), None).unwrap();
        let store = Store::open(layout).unwrap();
        Local { dir, store, key: SigningKey::generate(&mut rand::thread_rng()) }
    }

    /// Add `name` holding `file` and a file naming `refs`.
    fn add(&mut self, name: &str, file: Vec<u8>, refs: &[&StorePath]) -> StorePath {
        let src = self.dir.path().join("src").join(name);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("data"), file).unwrap();
        let text: String =
            refs.iter().map(|r| format!("{}\n", r.to_absolute(&StoreDir::nix()))).collect();
        std::fs::write(src.join("refs"), text).unwrap();
        let path = made_up_path(name);
        let mut nar = Vec::new();
        let digest = nar_core::dump::dump_hashed(&src, &mut nar).unwrap();
        let refs: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
        let info = PathInfo::new(path.clone(), digest, refs);
        self.store.import_nar(&info, &mut &nar[..]).unwrap();
        path
    }

    fn info(&self, p: &StorePath) -> PathInfo {
        self.store.query_path_info(p).unwrap().unwrap()
    }

    fn push(&self, root: &StorePath, host: &NixHost) -> PushSummary {
        let closure = self.store.closure(std::slice::from_ref(root)).unwrap();
        let t = host.agent().in_process();
        push_closure(
            self.store.layout(),
            &closure,
            &t,
            &self.key,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap()
    }
}

/// Code-like text: compressible, with structure a delta can reuse.
fn codeish(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let line =
            format!("fn f{}(x: u32) -> u32 {{ x ^ {} }}\n", r.gen_range(0..5000), r.gen::<u32>());
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

/// `base` with a few bytes changed at `at`.
fn edited(base: &[u8], at: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    v[at..at + 16].copy_from_slice(b"EDITED-EDITED-ED");
    v
}

fn signed(key: &SigningKey, info: &PathInfo) -> Vec<u8> {
    crate::agent::signed(key, &StoreDir::nix(), info)
}

fn send(raw: &mut Raw, info: &PathInfo, key: &SigningKey, nar: &[u8]) -> Frame {
    raw.send(Frame::PathStart(Box::new(start_for(info, signed(key, info)))));
    for chunk in nar.chunks(64 << 10) {
        raw.send(Frame::Data(chunk.to_vec()));
    }
    raw.send(Frame::PathEnd);
    raw.recv()
}

#[test]
fn paths_land_in_nix_signed_and_a_bad_nar_is_never_registered() {
    require_nix();
    let mut local = Local::new();
    let lib = local.add("lib-1.0", codeish(1, 300 << 10), &[]);
    let app = local.add("app-1.0", codeish(2, 1000), &[&lib]);
    let host = NixHost::new(local.dir.path().join("host"), &local.key);
    let (lib_info, app_info) = (local.info(&lib), local.info(&app));

    let mut raw = Raw::open_with(host.agent());
    raw.handshake();
    // A NAR of the signed size with one byte changed: refused by ferry's own check (Nix never
    // sees its last bytes), not registered; the session goes on with a new `nix-store --serve`.
    let mut bad = nar_of(&local.store, &lib_info);
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    match send(&mut raw, &lib_info, &local.key, &bad) {
        Frame::Reject { reason: RejectReason::HashMismatch, message, .. } => {
            assert!(message.contains("the path was not imported"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!host.valid(&lib));
    // A NAR cut short is refused the same way.
    let good = nar_of(&local.store, &lib_info);
    match send(&mut raw, &lib_info, &local.key, &good[..good.len() - 3]) {
        Frame::Reject { reason: RejectReason::HashMismatch, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(!host.valid(&lib));
    for (info, nar) in [(&lib_info, good), (&app_info, nar_of(&local.store, &app_info))] {
        match send(&mut raw, info, &local.key, &nar) {
            Frame::Ack { outcome: AckOutcome::Imported, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    raw.send(Frame::Done);
    assert!(matches!(raw.recv(), Frame::Bye { imported: 2, rejected: 2 }));

    // Nix registered both, references and all, with the host's ferry signature.
    assert!(host.nix_ok(&["--verify", "--check-contents"]));
    let refs = nix_store(&host.root, &["--query", "--references", &host.abs(&app)]);
    assert_eq!(refs.trim(), host.abs(&lib));
    let public =
        std::fs::read_to_string(host.layout.state_dir().join("nix-signing-key.pub")).unwrap();
    let key_name = public.split(':').next().unwrap();
    assert!(key_name.ends_with("-ferry-1"), "{public}");
    let root = host.root.to_str().unwrap();
    let sigs =
        run(nix_cmd("nix").args(["path-info", "--sigs", "--store", root, &host.abs(&app)]), true);
    let sigs = String::from_utf8_lossy(&sigs.stdout);
    assert!(sigs.contains(&format!("{key_name}:")), "{sigs}");
    // `nix store verify` checks the signatures with the public key.
    run(
        nix_cmd("nix").args(["store", "verify", "--store", root, "--sigs-needed", "1"]).args([
            "--option",
            "trusted-public-keys",
            public.trim(),
            &host.abs(&lib),
            &host.abs(&app),
        ]),
        true,
    );
    // No ferry store was made beside Nix's.
    assert!(!host.layout.ferry_db_path().exists());
}

/// The source store's Nix signatures travel with a push (feature `nix-sigs`): the host keeps
/// those a key of its own `trusted-public-keys` made, drops the others (claims, not facts), and
/// adds its own.
#[test]
fn the_sources_nix_signatures_travel_and_only_trusted_ones_stay() {
    require_nix();
    let mut local = Local::new();
    let lib = local.add("lib-2.0", codeish(3, 4096), &[]);
    let info = local.info(&lib);
    let fp = signing::nix::fingerprint(&StoreDir::nix(), &lib, &info.nar_hash, info.nar_size, &[]);
    let mut rng = rand::thread_rng();
    let cache = signing::nix::SigningKey::generate("cache.example.org-1", &mut rng);
    let stranger = signing::nix::SigningKey::generate("stranger-1", &mut rng);
    // A stranger's signature, and one that names the trusted key but is the stranger's.
    let forged = format!("cache.example.org-1:{}", {
        let text = stranger.sign(&fp).to_string();
        text.split_once(':').unwrap().1.to_owned()
    });
    let sigs = [cache.sign(&fp).to_string(), stranger.sign(&fp).to_string(), forged.clone()];
    local.store.add_signatures(&lib, &sigs).unwrap();
    let host = NixHost::new(local.dir.path().join("host"), &local.key);
    let trusted = host.layout.state_dir().join("trusted-public-keys");
    std::fs::write(trusted, format!("{}\n", cache.verifying_key())).unwrap();

    local.push(&lib, &host);
    let root = host.root.to_str().unwrap();
    let out =
        run(nix_cmd("nix").args(["path-info", "--sigs", "--store", root, &host.abs(&lib)]), true);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&sigs[0]), "the trusted cache's signature: {listed}");
    assert!(!listed.contains("stranger-1:") && !listed.contains(&forged), "{listed}");
    assert!(listed.contains("-ferry-1:"), "the host's own: {listed}");
}

#[test]
fn deltas_use_nix_paths_as_bases_and_a_base_modified_in_place_falls_back() {
    require_nix();
    let mut local = Local::new();
    let lib1 = codeish(1, 400 << 10);
    let l1 = local.add("lib-1.0", lib1.clone(), &[]);
    let a1 = local.add("app-1.0", codeish(2, 2000), &[&l1]);
    let l2 = local.add("lib-2.0", edited(&lib1, 1000), &[]);
    let a2 = local.add("app-2.0", codeish(3, 2000), &[&l2]);
    let intact = NixHost::new(local.dir.path().join("intact"), &local.key);
    let modified = NixHost::new(local.dir.path().join("modified"), &local.key);
    for host in [&intact, &modified] {
        assert_eq!(local.push(&a1, host).paths_landed, 2);
    }

    // Intact: lib-2.0 goes as a delta against Nix's lib-1.0.
    let s = local.push(&a2, &intact);
    assert_eq!((s.paths_landed, s.delta_fallbacks), (2, 0), "{s:?}");
    assert!(s.encode.paths_delta >= 1, "{s:?}");
    assert!(s.wire_bytes < (100 << 10), "{s:?}");
    assert!(intact.nix_ok(&["--verify", "--check-contents"]));

    // Modified in place on the host: lib-1.0's files no longer match Nix's recorded hash, so
    // the delta against it is refused and lib-2.0 travels in full.
    let file = modified.layout.physical_path(&l1).join("data");
    let dir = file.parent().unwrap().to_owned();
    chmod(&dir, 0o755);
    chmod(&file, 0o644);
    std::fs::write(&file, edited(&lib1, 5000)).unwrap();
    let s = local.push(&a2, &modified);
    assert_eq!(s.paths_landed, 2, "{s:?}");
    assert!(s.delta_fallbacks >= 1, "{s:?}");
    // What was registered is what was signed: lib-2.0 and app-2.0 verify against their files.
    for p in [&l2, &a2] {
        assert!(modified.nix_ok(&["--verify-path", &modified.abs(p)]), "{p}");
        let hash = nix_store(&modified.root, &["--query", "--hash", &modified.abs(p)]);
        assert_eq!(hash.trim(), local.info(p).nar_hash.to_typed_nix32());
    }
    // lib-1.0 is the one the host broke.
    assert!(!modified.nix_ok(&["--verify-path", &modified.abs(&l1)]));
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}
