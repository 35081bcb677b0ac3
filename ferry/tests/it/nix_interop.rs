//! ferry against a real Nix (Debian's Nix 2.8) chroot store: closures, path info, verify and
//! source paths must agree with `nix-store`, and ferry must not modify Nix's database.
//!
//! Needs `nix-store` and `nix-instantiate` on PATH (CI installs `nix-bin`); without them the
//! tests fail with a message saying so. Every Nix command runs on a chroot store under a temp
//! dir (`--store DIR`), never on the machine's `/nix`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use ferry_tests::nix;
use nar_core::hash::Sha256Hash;
use nar_core::store_path::{fold_digest, StoreDir, StorePath};

use crate::util;

fn run(cmd: &mut Command) -> String {
    String::from_utf8(run_bytes(cmd)).unwrap()
}

fn run_bytes(cmd: &mut Command) -> Vec<u8> {
    let out: Output = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn nix_store(store: &Path, args: &[&str]) -> String {
    run(nix::command("nix-store").arg("--store").arg(store).args(args))
}

fn ferry(args: &[&str]) -> String {
    run(util::ferry().args(args))
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// An input-addressed path name with a made-up hash part.
fn made_up(name: &str) -> StorePath {
    StorePath::from_parts(fold_digest(&Sha256Hash::of(name.as_bytes()).0), name).unwrap()
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

/// A `nix-store --import` stream (perf.md §1) for `(dir, path, references)` in order.
fn export_stream(items: &[(&Path, &str, Vec<String>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (dir, path, refs) in items {
        out.extend_from_slice(&1u64.to_le_bytes());
        nar_core::dump::dump(dir, &mut out).unwrap();
        out.extend_from_slice(&0x4558_494eu64.to_le_bytes());
        put_str(&mut out, path.as_bytes());
        out.extend_from_slice(&(refs.len() as u64).to_le_bytes());
        for r in refs {
            put_str(&mut out, r.as_bytes());
        }
        put_str(&mut out, b"");
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

struct NixFixture {
    _tmp: tempfile::TempDir,
    store: std::path::PathBuf,
    src_dir: std::path::PathBuf,
    src: String,
    text: String,
    leaf: String,
    top: String,
    all: Vec<String>,
}

fn fixture() -> NixFixture {
    nix::require();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    let src_dir = tmp.path().join("src");
    ferry_tests::write_sample_tree(&src_dir);
    let (src, text) = nix::tree_and_referrer(&store, &src_dir, "src");

    // Input-addressed paths with chosen references: a diamond over `leaf`, a self-reference
    // on `top`, and an edge to the text path.
    let dir = StoreDir::nix();
    let [leaf, m1, m2, top] =
        ["leaf-1.0", "mid-a-2.0", "mid-b-2.0", "top-3.0"].map(|n| made_up(n).to_absolute(&dir));
    let mut items = Vec::new();
    let dirs = tmp.path().join("items");
    let specs: [(&str, Vec<String>); 4] = [
        (&leaf, vec![]),
        (&m1, vec![leaf.clone(), text.clone()]),
        (&m2, vec![leaf.clone()]),
        (&top, vec![m1.clone(), m2.clone(), top.clone()]),
    ];
    for (i, (path, refs)) in specs.iter().enumerate() {
        let d = dirs.join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("refs"), refs.join("\n")).unwrap();
        items.push((d, *path, refs.clone()));
    }
    let stream = export_stream(
        &items.iter().map(|(d, p, r)| (d.as_path(), *p, r.clone())).collect::<Vec<_>>(),
    );
    let mut child = nix::command("nix-store")
        .arg("--store")
        .arg(&store)
        .arg("--import")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let all = vec![src.clone(), text.clone(), leaf.clone(), m1, m2, top.clone()];
    NixFixture { _tmp: tmp, store, src_dir, src, text, leaf, top, all }
}

fn db_digest(store: &Path) -> Sha256Hash {
    Sha256Hash::of(&std::fs::read(store.join("nix/var/nix/db/db.sqlite")).unwrap())
}

#[test]
fn closures_and_path_info_match_nix_store() {
    let f = fixture();
    let root = f.store.to_str().unwrap();
    let before = db_digest(&f.store);
    // Both ways of pointing at a Nix store: auto-detected, and with an explicit store dir.
    let ways: [Vec<&str>; 2] =
        [vec!["--root", root], vec!["--root", root, "--store-dir", "/nix/store"]];
    for way in &ways {
        for p in &f.all {
            let mut args = way.clone();
            args.extend(["gc", "--requisites", p]);
            let ours = lines(&ferry(&args));
            let theirs = lines(&nix_store(&f.store, &["-qR", p]));
            let ours_set: BTreeSet<_> = ours.iter().cloned().collect();
            let theirs_set: BTreeSet<_> = theirs.iter().cloned().collect();
            assert_eq!(ours_set, theirs_set, "requisites of {p}");
            assert_eq!(ours.len(), ours_set.len(), "no duplicates");
            // Our order is topological: each path's references come before it.
            for (i, q) in ours.iter().enumerate() {
                for r in lines(&nix_store(&f.store, &["-q", "--references", q])) {
                    let j = ours.iter().position(|x| *x == r).unwrap();
                    assert!(j <= i, "{r} must come before {q}");
                }
            }
            for field in ["--hash", "--size", "--references", "--referrers", "--deriver"] {
                let mut args = way.clone();
                args.extend(["store", "info", field, p]);
                assert_eq!(
                    ferry(&args),
                    nix_store(&f.store, &["-q", field, p]),
                    "store info {field} {p}"
                );
            }
            let mut args = way.clone();
            args.extend(["store", "info", "--hash", "--size", "--references", p]);
            let expected = ["--hash", "--size", "--references"]
                .map(|field| nix_store(&f.store, &["-q", field, p]))
                .concat();
            assert_eq!(ferry(&args), expected, "combined fields of {p}");
        }
    }
    // The closure of the top path has all six paths.
    let closure = lines(&ferry(&["--root", root, "gc", "-R", &f.top]));
    assert_eq!(closure.len(), 6);
    assert!(closure.iter().position(|p| *p == f.leaf) < closure.iter().position(|p| *p == f.top));
    assert!(closure.iter().position(|p| *p == f.src) < closure.iter().position(|p| *p == f.text));
    // `store list` equals Nix's view of valid paths.
    let listed: BTreeSet<_> =
        lines(&ferry(&["--root", root, "store", "list"])).into_iter().collect();
    assert_eq!(listed, f.all.iter().cloned().collect());
    // Re-hashing every path from disk agrees with the hashes Nix recorded.
    ferry(&["--root", root, "store", "verify", "--check-contents"]);
    assert_eq!(db_digest(&f.store), before, "ferry must not modify Nix's database");
}

#[test]
fn ferry_source_paths_equal_nix_store_add() {
    let f = fixture();
    let ours_root = tempfile::tempdir().unwrap();
    let r = ours_root.path().to_str().unwrap();
    let src = f.src_dir.to_str().unwrap();
    let ours = ferry(&["--root", r, "--store-dir", "/nix/store", "store", "add", src]);
    assert_eq!(ours.trim(), f.src);
    for field in ["--hash", "--size"] {
        assert_eq!(
            ferry(&["--root", r, "--store-dir", "/nix/store", "store", "info", field, &f.src]),
            nix_store(&f.store, &["-q", field, &f.src]),
        );
    }
    // The stored copy's NAR is byte-identical to Nix's copy.
    let ours_nar = run_bytes(
        nix::command("nix-store")
            .arg("--dump")
            .arg(ours_root.path().join(f.src.trim_start_matches('/'))),
    );
    let theirs_nar = run_bytes(
        nix::command("nix-store").arg("--dump").arg(f.store.join(f.src.trim_start_matches('/'))),
    );
    assert_eq!(Sha256Hash::of(&ours_nar), Sha256Hash::of(&theirs_nar));
}
