//! Unit tests of the agent's session helpers.

use super::*;
use nar_core::hash::Sha256Hash;
use proto::frame::QueryEntry;

#[test]
fn partial_files_that_cannot_be_resumed_are_pruned() {
    let root = tempfile::tempdir().unwrap();
    let layout = StoreLayout::at_root(root.path()).unwrap();
    let entry = |i: u8| QueryEntry {
        path: StorePath::from_parts([i; 20], &format!("p{i}")).unwrap(),
        nar_hash: Sha256Hash::of(&[i]),
        nar_size: 1 << 20,
        references: Vec::new(),
    };
    let (valid_now, other_hash, resumable, unqueried) = (entry(1), entry(2), entry(3), entry(4));
    let digest = |e: &QueryEntry| NarDigest { hash: e.nar_hash, size: e.nar_size };
    let file = |e: &QueryEntry, hash: Sha256Hash| {
        let p = partial_path(&layout, &e.path, &NarDigest { hash, size: e.nar_size });
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"held").unwrap();
        p
    };
    let a = file(&valid_now, valid_now.nar_hash);
    let b = file(&other_hash, Sha256Hash::of(b"other contents"));
    let c = file(&resumable, resumable.nar_hash);
    let d = file(&unqueried, unqueried.nar_hash);
    let entries = vec![valid_now.clone(), other_hash.clone(), resumable.clone()];
    let valid = [valid_now.path.clone()].into_iter().collect();
    let removed = prune_partials(&layout, &entries, &valid, Duration::from_secs(3600));
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(!a.exists() && !b.exists() && c.exists() && d.exists());
    assert_eq!(partial_len(&layout, &resumable.path, &digest(&resumable)), 4);
    // Too old: everything goes.
    let removed = prune_partials(&layout, &entries, &valid, Duration::ZERO);
    assert_eq!(removed.len(), 2);
    assert!(!c.exists() && !d.exists());
}
