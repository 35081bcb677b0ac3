//! The store on real files and a real SQLite database under temp roots.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use closure::{diff, PathInfo, RemoteAnswer};

use nar_core::dump::{dump, hash_path};
use nar_core::store_path::{make_source_path, StoreDir, StorePath};
use store::{DbError, GcReport, ImportOutcome, Store, StoreError, StoreLayout};

fn layout(root: &Path) -> StoreLayout {
    StoreLayout::new(root, StoreDir::guix(), None).unwrap()
}

fn tree(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::create_dir_all(p.join("bin")).unwrap();
    fs::write(p.join("bin/run"), format!("#!/bin/sh\n{text}\n")).unwrap();
    fs::set_permissions(p.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(p.join("README"), text).unwrap();
    std::os::unix::fs::symlink("bin/run", p.join("link")).unwrap();
    p
}

#[test]
fn add_is_canonical_idempotent_and_finds_references() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut store = Store::open(layout(root.path())).unwrap();

    let a_src = tree(src.path(), "a", "hello");
    let a = store.add_path(&a_src, None).unwrap();
    let nar = hash_path(&a_src).unwrap();
    assert_eq!(a.nar_digest(), nar);
    assert_eq!(a.path, make_source_path(&StoreDir::guix(), "a", &nar.hash).unwrap());
    assert!(a.references.is_empty());
    assert_eq!(a.ca, Some(format!("fixed:r:{}", nar.hash.to_typed_nix32())), "content-addressed");
    let phys = store.physical_path(&a.path);
    assert_eq!(hash_path(&phys).unwrap(), nar, "the stored copy has the same NAR");
    assert_eq!(fs::metadata(phys.join("bin/run")).unwrap().permissions().mode() & 0o777, 0o555);
    assert_eq!(fs::metadata(phys.join("README")).unwrap().permissions().mode() & 0o777, 0o444);
    assert_eq!(store.add_path(&a_src, None).unwrap().path, a.path, "idempotent");

    // b mentions a's absolute path: a becomes a reference.
    let abs_a = a.path.to_absolute(store.store_dir());
    let b_src = tree(src.path(), "b", &format!("exec {abs_a}/bin/run"));
    let b = store.add_path(&b_src, Some("b-1.0")).unwrap();
    assert_eq!(b.references, [a.path.clone()].into_iter().collect());
    assert_eq!(store.path_info(&b.path).unwrap().references, b.references);
    assert_eq!(b.ca, None, "a source path with references is not content-addressed for Nix");

    let c = store.closure(std::slice::from_ref(&b.path)).unwrap();
    let order: Vec<_> = c.paths().cloned().collect();
    assert_eq!(order, vec![a.path.clone(), b.path.clone()]);
    assert_eq!(c.total_nar_size(), a.nar_size + b.nar_size);

    // The diff against a remote holding a.
    let remote_has: BTreeSet<_> = [a.path.clone()].into_iter().collect();
    let missing = diff(&c, &RemoteAnswer::Present(remote_has)).unwrap();
    assert_eq!(missing.paths.len(), 1);
    assert_eq!(missing.nar_size, b.nar_size);

    let err = store.delete(&a.path).unwrap_err();
    assert!(matches!(err, StoreError::Db(DbError::StillReferenced { .. })), "{err}");
    assert!(phys.exists());
    store.delete(&b.path).unwrap();
    store.delete(&a.path).unwrap();
    assert!(!phys.exists());
    assert!(store.all_valid_paths().unwrap().is_empty());
    let report = store.verify(true).unwrap();
    assert!(report.is_clean() && report.leftovers.is_empty(), "{report:?}");
}

#[test]
fn import_checks_hash_and_references_and_leaves_nothing_on_failure() {
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut src = Store::open(layout(src_root.path())).unwrap();
    let a = src.add_path(&tree(files.path(), "a", "x"), None).unwrap();
    let abs_a = a.path.to_absolute(src.store_dir());
    let b = src.add_path(&tree(files.path(), "b", &abs_a), None).unwrap();
    let nar_of = |p: &StorePath| {
        let mut out = Vec::new();
        dump(&src.physical_path(p), &mut out).unwrap();
        out
    };
    let (nar_a, nar_b) = (nar_of(&a.path), nar_of(&b.path));

    let mut dst = Store::open(layout(dst_root.path())).unwrap();
    // b before a: its reference is not valid, rejected before reading.
    let err = dst.import_nar(&b, &mut &nar_b[..]).unwrap_err();
    assert!(matches!(err, StoreError::ReferenceNotValid { .. }), "{err}");
    // Wrong hash claimed.
    let mut lying = a.clone();
    lying.nar_hash = b.nar_hash;
    let err = dst.import_nar(&lying, &mut &nar_a[..]).unwrap_err();
    assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&abs_a), "{err}");
    // Truncated stream.
    let err = dst.import_nar(&a, &mut &nar_a[..nar_a.len() / 2]).unwrap_err();
    assert!(matches!(err, StoreError::Restore { .. }), "{err}");
    assert!(!dst.is_valid(&a.path).unwrap());
    assert_eq!(fs::read_dir(dst.layout().physical_store_dir()).unwrap().count(), 0);

    // Both NARs in one stream, in order.
    let mut stream = Vec::new();
    stream.extend_from_slice(&nar_a);
    stream.extend_from_slice(&nar_b);
    let mut reader = &stream[..];
    assert_eq!(dst.import_nar(&a, &mut reader).unwrap(), ImportOutcome::Imported);
    assert_eq!(dst.import_nar(&b, &mut reader).unwrap(), ImportOutcome::Imported);
    assert!(reader.is_empty());
    assert_eq!(dst.import_nar(&a, &mut &nar_a[..]).unwrap(), ImportOutcome::AlreadyValid);
    let got = dst.path_info(&b.path).unwrap();
    assert_eq!(
        (got.nar_hash, got.nar_size, &got.references),
        (b.nar_hash, b.nar_size, &b.references)
    );
    assert!(dst.verify(true).unwrap().is_clean());
}

#[test]
fn open_cleans_up_interrupted_operations() {
    let root = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let l = layout(root.path());
    let a;
    {
        let mut store = Store::open(l.clone()).unwrap();
        a = store.add_path(&tree(files.path(), "a", "x"), None).unwrap();
    }
    let store_dir = l.physical_store_dir();
    // A crash mid-restore, and a crash between rename and commit.
    fs::create_dir_all(store_dir.join(".tmp-0123/sub")).unwrap();
    fs::set_permissions(store_dir.join(".tmp-0123"), fs::Permissions::from_mode(0o555)).unwrap();
    let ghost = "00000000000000000000000000000000-ghost";
    fs::create_dir(store_dir.join(ghost)).unwrap();
    fs::write(l.pending_dir().join(ghost), b"").unwrap();
    // An intent record for a path that did become valid: the path stays.
    fs::write(l.pending_dir().join(a.path.base_name()), b"").unwrap();

    let ro = Store::open_read_only(l.clone()).unwrap();
    assert_eq!(ro.verify(false).unwrap().leftovers.len(), 3);
    drop(ro);

    let store = Store::open(l.clone()).unwrap();
    assert_eq!(store.cleaned_on_open().len(), 2, "{:?}", store.cleaned_on_open());
    assert!(!store_dir.join(".tmp-0123").exists());
    assert!(!store_dir.join(ghost).exists());
    assert!(store.physical_path(&a.path).exists());
    let report = store.verify(true).unwrap();
    assert!(report.is_clean() && report.leftovers.is_empty(), "{report:?}");
}

#[test]
fn verify_finds_missing_and_modified_paths() {
    let root = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut store = Store::open(layout(root.path())).unwrap();
    let a = store.add_path(&tree(files.path(), "a", "x"), None).unwrap();
    let b = store.add_path(&tree(files.path(), "b", "y"), None).unwrap();
    let readme = store.physical_path(&a.path).join("README");
    fs::set_permissions(&readme, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&readme, "tampered").unwrap();
    nar_core::restore::remove_tree(&store.physical_path(&b.path)).unwrap();
    let report = store.verify(true).unwrap();
    assert_eq!(report.problems.len(), 2, "{report:?}");
    let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(text.iter().any(|t| t.contains("modified") && t.contains("-a")), "{text:?}");
    assert!(text.iter().any(|t| t.contains("missing on disk") && t.contains("-b")), "{text:?}");
}

#[test]
fn gc_keeps_the_closure_of_roots() {
    let root = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let l = layout(root.path());
    let mut store = Store::open(l.clone()).unwrap();
    let a = store.add_path(&tree(files.path(), "a", "x"), None).unwrap();
    let abs_a = a.path.to_absolute(store.store_dir());
    let b = store.add_path(&tree(files.path(), "b", &abs_a), None).unwrap();
    let c = store.add_path(&tree(files.path(), "c", "z"), None).unwrap();
    let d = store.add_path(&tree(files.path(), "d", &c.path.to_absolute(store.store_dir())), None);
    let d = d.unwrap();
    fs::create_dir_all(l.gcroots_dir()).unwrap();
    std::os::unix::fs::symlink(b.path.to_absolute(store.store_dir()), l.gcroots_dir().join("b"))
        .unwrap();
    fs::create_dir(l.physical_store_dir().join("junk")).unwrap();

    let dry: GcReport = store.collect_garbage(&[], true).unwrap();
    assert_eq!(dry.deleted, vec![d.path.clone(), c.path.clone()], "referrers first");
    assert!(store.is_valid(&c.path).unwrap());
    let report = store.collect_garbage(&[], false).unwrap();
    assert_eq!(report.deleted.len(), 2);
    assert_eq!(report.removed_invalid.len(), 1);
    assert_eq!(report.freed_nar_bytes, c.nar_size + d.nar_size);
    let left: BTreeSet<_> = store.all_valid_paths().unwrap().into_iter().collect();
    assert_eq!(left, [a.path.clone(), b.path.clone()].into_iter().collect());
    assert!(!store.physical_path(&c.path).exists());
    assert!(store.verify(true).unwrap().is_clean());

    // A second writer makes GC busy.
    let _other = Store::open(l.clone()).unwrap();
    let err = store.collect_garbage(&[], true).unwrap_err();
    assert!(matches!(err, StoreError::Busy(_)), "{err}");
}

#[test]
fn corrupt_database_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path());
    fs::create_dir_all(l.ferry_db_path().parent().unwrap()).unwrap();
    fs::write(l.ferry_db_path(), b"this is not an sqlite database, it is garbage....").unwrap();
    let err = Store::open(l.clone()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("corrupt") && text.contains("db.sqlite"), "{text}");
    let err = Store::open_read_only(l).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn read_only_store_refuses_writes_and_missing_db_is_named() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path());
    let err = Store::open_read_only(l.clone()).unwrap_err();
    assert!(matches!(err, StoreError::NoDatabase(_)), "{err}");
    drop(Store::open(l.clone()).unwrap());
    let mut ro = Store::open_read_only(l).unwrap();
    let err = ro.add_path(root.path(), Some("x")).unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly(_)), "{err}");
    let _ = PathInfo::clone;
}
