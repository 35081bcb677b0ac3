//! Shared fixture of the Nix interop tests (cache, nix_serve, agent_nix): a ferry store with store
//! dir `/nix/store` under a temp root, holding a small closure with references, a self
//! reference, a deriver, an executable, a symlink, an empty directory and a multi-MiB file; and
//! the helpers of ferry-tests that run Debian's Nix (2.8) hermetically on chroot stores
//! (`--store DIR`, never `/nix`), under the names these tests use.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use closure::PathInfo;

use nar_core::hash::Sha256Hash;
use nar_core::store_path::{fold_digest, StoreDir, StorePath};
use store::{Store, StoreLayout};

pub use ferry_tests::nix::{
    command as nix_cmd, key_pair as nix_key_pair, require as require_nix, store as nix_store,
};

pub const INSTALL_HINT: &str =
    "these tests need Debian's Nix: apt-get update && apt-get install -y nix-bin";

/// Run and return the output; panics with stderr when it fails and `must_succeed`.
pub fn run(cmd: &mut Command, must_succeed: bool) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {INSTALL_HINT}"));
    if must_succeed && !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// An input-addressed-looking store path with a made-up (but fixed) hash part.
pub fn made_up_path(name: &str) -> StorePath {
    let digest = fold_digest(&Sha256Hash::of(format!("ferry-test:{name}").as_bytes()).0);
    StorePath::from_parts(digest, name).unwrap()
}

/// The test closure in a ferry store.
pub struct Fixture {
    pub store: Store,
    /// Input-addressed paths, references first: lib, app (refers to lib and itself), top
    /// (refers to app and lib, has a deriver).
    pub lib: StorePath,
    pub app: StorePath,
    pub top: StorePath,
    /// A content-addressed path added with `Store::add_path` (no references).
    pub ca: StorePath,
}

impl Fixture {
    /// Every member, references first.
    pub fn all(&self) -> Vec<StorePath> {
        vec![self.lib.clone(), self.app.clone(), self.top.clone(), self.ca.clone()]
    }
    /// The roots of the closure.
    pub fn roots(&self) -> Vec<StorePath> {
        vec![self.top.clone(), self.ca.clone()]
    }
    pub fn abs(&self, p: &StorePath) -> String {
        p.to_absolute(&StoreDir::nix())
    }
    pub fn info(&self, p: &StorePath) -> PathInfo {
        self.store.path_info(p).unwrap()
    }
}

fn write_exec(path: &Path, contents: &[u8]) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Pseudo-random but compressible bytes (a few MiB).
fn blob(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = x.to_le_bytes();
        // Half random, half a repeated pattern: realistic compression ratio.
        out.extend_from_slice(&word[..4]);
        out.extend_from_slice(b"ELF\0");
    }
    out.truncate(len);
    out
}

fn import(
    store: &mut Store,
    src: &Path,
    path: &StorePath,
    refs: &[&StorePath],
    deriver: Option<StorePath>,
) {
    let mut nar = Vec::new();
    let digest = nar_core::dump::dump_hashed(src, &mut nar).unwrap();
    let refs: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
    let mut info = PathInfo::new(path.clone(), digest, refs);
    info.deriver = deriver;
    store.import_nar(&info, &mut &nar[..]).unwrap();
}

/// Build the fixture under `root` (sources under `root/src`).
pub fn build(root: &Path) -> Fixture {
    let dir = StoreDir::nix();
    let layout = StoreLayout::new(root, dir.clone(), None).unwrap();
    let mut store = Store::open(layout).unwrap();
    let src = root.join("src");

    let lib = made_up_path("libfoo-1.0");
    let l = src.join("lib");
    fs::create_dir_all(l.join("lib")).unwrap();
    fs::create_dir_all(l.join("share/doc")).unwrap();
    fs::create_dir_all(l.join("empty")).unwrap();
    fs::write(l.join("lib/libfoo.so"), blob(3 << 20)).unwrap();
    std::os::unix::fs::symlink("libfoo.so", l.join("lib/libfoo.so.1")).unwrap();
    fs::write(l.join("share/doc/README"), "libfoo: nothing to see\n").unwrap();
    import(&mut store, &l, &lib, &[], None);

    let app = made_up_path("app-2.1");
    let a = src.join("app");
    fs::create_dir_all(a.join("bin")).unwrap();
    write_exec(
        &a.join("bin/app"),
        format!(
            "#!/bin/sh\nLD_LIBRARY_PATH={}/lib exec {}/bin/.app-wrapped \"$@\"\n",
            lib.to_absolute(&dir),
            app.to_absolute(&dir)
        )
        .as_bytes(),
    );
    write_exec(&a.join("bin/.app-wrapped"), &blob(200_000));
    import(&mut store, &a, &app, &[&lib, &app], None);

    let top = made_up_path("top");
    let t = src.join("top");
    fs::write(&t, format!("{}\n{}\n", app.to_absolute(&dir), lib.to_absolute(&dir))).unwrap();
    let deriver = made_up_path("top.drv");
    import(&mut store, &t, &top, &[&app, &lib], Some(deriver));

    let c = src.join("ca-data");
    fs::create_dir_all(&c).unwrap();
    // No store path inside: `Store::add_path` computes a source path without its references,
    // which Nix only accepts as content-addressed when there are none.
    fs::write(c.join("config"), "lib = none\n").unwrap();
    let ca = store.add_path(&c, Some("ca-data")).unwrap().path;

    Fixture { store, lib, app, top, ca }
}
