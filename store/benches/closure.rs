//! Criterion benches for the closure crate: reference scanning throughput (one core) and the
//! closure of a 100,000-path synthetic graph read from a real SQLite database.
//!
//! `cargo bench -p closure --bench closure` (targets: scanning >= 1 GB/s per core; the
//! 100,000-path closure, database query and validation included, < 1 s). `scan/all-base32`
//! is the pathological case (one 64 MiB run of nix-base32 characters: every window is tested).

use std::collections::BTreeSet;

use closure::{Candidates, PathInfo, RefScanner};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nar_core::hash::{NarDigest, Sha256Hash};
use nar_core::store_path::{fold_digest, StoreDir, StorePath};
use store::{Database, Store, StoreLayout};

/// A store path with a realistic (uniformly random) hash part.
fn sp(i: u32) -> StorePath {
    let digest = fold_digest(&Sha256Hash::of(&i.to_le_bytes()).0);
    StorePath::from_parts(digest, &format!("pkg-{i}")).unwrap()
}

fn scanning(c: &mut Criterion) {
    const LEN: usize = 64 << 20;
    let candidates = Candidates::new((0..10_000).map(sp));
    let binary = ferry_tests::pseudo_random(42, LEN);
    // Text-like: lowercase words and digits (mostly nix-base32 characters) with separators, and
    // a store path every 4 KiB.
    let words = ferry_tests::pseudo_random(7, LEN);
    let alphabet = b"abcdfghijklmnpqrsvwxyz0123456789";
    let mut text: Vec<u8> = words
        .iter()
        .enumerate()
        .map(|(i, b)| if i % 9 == 8 { b' ' } else { alphabet[(*b as usize) % 32] })
        .collect();
    for (k, at) in (0..LEN - 64).step_by(4096).enumerate() {
        let h = sp(k as u32 % 20_000).hash_part();
        text[at..at + 32].copy_from_slice(h.as_bytes());
    }
    // Worst case: one endless run of nix-base32 characters.
    let run = vec![b'0'; LEN];
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.sample_size(10);
    for (name, data) in [("binary", &binary), ("text", &text), ("all-base32", &run)] {
        group.bench_with_input(BenchmarkId::from_parameter(name), data, |b, data| {
            b.iter(|| {
                let mut s = RefScanner::new(&candidates);
                for chunk in data.chunks(256 << 10) {
                    s.update(chunk);
                }
                s.finish().len()
            })
        });
    }
    group.finish();
}

fn closure_from_db(c: &mut Criterion) {
    const N: u32 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let layout = StoreLayout::new(dir.path(), StoreDir::nix(), None).unwrap();
    // Path i refers to i-1 and up to four pseudo-random earlier paths: a DAG whose top (N-1)
    // reaches every path, with ~480,000 edges.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let infos: Vec<PathInfo> = (0..N)
        .map(|i| {
            let mut refs = BTreeSet::new();
            if i > 0 {
                refs.insert(sp(i - 1));
                for _ in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    refs.insert(sp((x % u64::from(i)) as u32));
                }
            }
            let digest = NarDigest { hash: Sha256Hash::of(&i.to_le_bytes()), size: 1000 };
            PathInfo::new(sp(i), digest, refs)
        })
        .collect();
    // Rows only (no files): the bench measures the database and the graph.
    let mut db = Database::open_ferry(&layout.ferry_db_path(), StoreDir::nix()).unwrap();
    for batch in infos.chunks(10_000) {
        db.register(batch).unwrap();
    }
    drop(db);
    let store = Store::open_read_only(layout).unwrap();
    let top = [sp(N - 1)];
    let mut group = c.benchmark_group("closure");
    group.sample_size(10);
    group.bench_function("db-100k", |b| {
        b.iter(|| {
            let closure = store.closure(&top).unwrap();
            assert_eq!(closure.len(), N as usize);
            closure.total_nar_size()
        })
    });
    group.finish();
}

criterion_group!(benches, scanning, closure_from_db);
criterion_main!(benches);
