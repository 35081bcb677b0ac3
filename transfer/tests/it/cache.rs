//! `transfer::target::cache` against Debian's Nix 2.8: a cache ferry writes is accepted by
//! `nix copy --from file://`, refused when unsigned or signed by an untrusted key, has narinfos
//! identical to Nix's own (apart from the compressed bytes), and a cache Nix writes is read
//! back into a ferry store.
//!
//! Run: `cargo test -p transfer --test cache` (needs `apt-get install -y nix-bin`).

use std::fs;
use std::path::Path;

use crate::nix_fixture::*;
use nar_core::store_path::StoreDir;
use signing::keyfile::load_nix_signing_key;
use signing::nix::{SigningKey, VerifyingKey};
use store::{Store, StoreLayout};
use transfer::target::cache::{CacheError, CacheOptions, CacheReader, CacheWriter, NarInfo};

fn nix_copy_from_cache(
    cache: &Path,
    to: &Path,
    pk: &str,
    paths: &[String],
) -> std::process::Output {
    run(
        nix_cmd("nix")
            .args(["copy", "--from"])
            .arg(format!("file://{}", cache.display()))
            .arg("--to")
            .arg(to)
            .args(["--option", "trusted-public-keys", pk])
            .args(paths),
        false,
    )
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
fn nix_copy_accepts_a_signed_ferry_cache() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let fx = build(&tmp.path().join("ferry"));
    let (sk_file, pk) = nix_key_pair(tmp.path(), "ferry-test-1");
    let key = load_nix_signing_key(&sk_file).unwrap();
    let cache = tmp.path().join("cache");
    let writer =
        CacheWriter::open(&cache, StoreDir::nix(), Some(key), CacheOptions::default()).unwrap();
    let report = writer.write_closure(&fx.store, &fx.roots()).unwrap();
    assert_eq!((report.paths_done, report.paths_skipped), (4, 0));
    assert!(report.file_bytes < report.nar_bytes, "{report:?}");
    let info = fs::read_to_string(cache.join("nix-cache-info")).unwrap();
    assert_eq!(info, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");
    // Nothing temporary left behind.
    for d in [cache.clone(), cache.join("nar")] {
        for e in fs::read_dir(&d).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with(".tmp"), "leftover {name} in {}", d.display());
        }
    }
    // A second write finds everything there.
    let again = writer.write_closure(&fx.store, &fx.roots()).unwrap();
    assert_eq!((again.paths_done, again.paths_skipped), (0, 4));

    let nix_root = tmp.path().join("nix");
    let roots: Vec<String> = fx.roots().iter().map(|p| fx.abs(p)).collect();
    let out = nix_copy_from_cache(&cache, &nix_root, &pk, &roots);
    assert!(out.status.success(), "nix copy failed:\n{}", String::from_utf8_lossy(&out.stderr));
    nix_store(&nix_root, &["--verify", "--check-contents"]);
    for p in fx.all() {
        let info = fx.info(&p);
        let refs = nix_store(&nix_root, &["-q", "--references", &fx.abs(&p)]);
        assert_eq!(sorted_lines(&refs), info.absolute_references(&StoreDir::nix()), "{p}");
        let hash = nix_store(&nix_root, &["-q", "--hash", &fx.abs(&p)]);
        assert_eq!(hash.trim(), info.nar_hash.to_typed_nix32());
    }
    let deriver = nix_store(&nix_root, &["-q", "--deriver", &fx.abs(&fx.top)]);
    assert_eq!(deriver.trim(), fx.abs(&made_up_path("top.drv")));

    // Nix writes the same narinfos (apart from the compressed file) from the imported paths.
    let nix_cache = tmp.path().join("nix-cache");
    run(
        nix_cmd("nix")
            .args(["copy", "--store"])
            .arg(&nix_root)
            .arg("--to")
            .arg(format!(
                "file://{}?compression=zstd&secret-key={}",
                nix_cache.display(),
                sk_file.display()
            ))
            .args(&roots),
        true,
    );
    for p in fx.all() {
        let name = format!("{}.narinfo", p.hash_part());
        let ours = fs::read_to_string(cache.join(&name)).unwrap();
        let theirs = fs::read_to_string(nix_cache.join(&name)).unwrap();
        let strip = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !["URL:", "FileHash:", "FileSize:"].iter().any(|k| l.starts_with(k)))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            strip(&ours),
            strip(&theirs),
            "narinfo of {p}:\nours:\n{ours}\nNix's:\n{theirs}"
        );
        let keys = |t: &str| -> Vec<String> {
            t.lines().map(|l| l.split(':').next().unwrap().to_owned()).collect()
        };
        assert_eq!(keys(&ours), keys(&theirs), "line order of {p}");
    }
}

#[test]
fn nix_refuses_unsigned_and_untrusted_caches() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let fx = build(&tmp.path().join("ferry"));
    let (_sk, pk) = nix_key_pair(tmp.path(), "trusted-1");
    let other = SigningKey::generate("trusted-1", &mut rand::thread_rng());
    for (label, key) in [("unsigned", None), ("wrong key", Some(other))] {
        let cache = tmp.path().join(format!("cache-{}", label.replace(' ', "-")));
        let writer =
            CacheWriter::open(&cache, StoreDir::nix(), key, CacheOptions::default()).unwrap();
        // Input-addressed paths only: Nix accepts content-addressed ones without signatures.
        writer.write_closure(&fx.store, std::slice::from_ref(&fx.top)).unwrap();
        let nix_root = tmp.path().join(format!("nix-{}", label.replace(' ', "-")));
        let out = nix_copy_from_cache(&cache, &nix_root, &pk, &[fx.abs(&fx.top)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{label}: nix copy accepted it");
        assert!(stderr.contains("lacks a valid signature"), "{label}: {stderr}");
    }
}

#[test]
fn ferry_reads_its_own_and_nix_written_caches() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let fx = build(&tmp.path().join("ferry"));
    let (sk_file, pk) = nix_key_pair(tmp.path(), "ferry-test-2");
    let key = load_nix_signing_key(&sk_file).unwrap();
    let trusted = vec![VerifyingKey::parse(&pk).unwrap()];
    let cache = tmp.path().join("cache");
    CacheWriter::open(&cache, StoreDir::nix(), Some(key), CacheOptions::default())
        .unwrap()
        .write_closure(&fx.store, &fx.roots())
        .unwrap();

    // ferry cache → ferry store.
    let mut dest = open_store(&tmp.path().join("dest"));
    let reader = CacheReader::open(&cache, StoreDir::nix(), trusted.clone()).unwrap();
    let report = reader.import_closure(&mut dest, &fx.roots()).unwrap();
    assert_eq!((report.paths_done, report.paths_skipped), (4, 0));
    for p in fx.all() {
        let mut got = dest.path_info(&p).unwrap();
        let mut want = fx.info(&p);
        got.registration_time = 0;
        want.registration_time = 0;
        assert_eq!(got.nar_hash, want.nar_hash);
        assert_eq!(got.references, want.references);
        assert_eq!(got.deriver, want.deriver);
        assert_eq!(got.ca, want.ca);
    }
    assert!(dest.verify(true).unwrap().is_clean());
    let again = reader.import_closure(&mut dest, &fx.roots()).unwrap();
    assert_eq!((again.paths_done, again.paths_skipped), (0, 4));

    // Untrusted: refused before anything is imported.
    let mut fresh = open_store(&tmp.path().join("fresh"));
    let stranger = SigningKey::generate("ferry-test-2", &mut rand::thread_rng()).verifying_key();
    let untrusting = CacheReader::open(&cache, StoreDir::nix(), vec![stranger]).unwrap();
    let err = untrusting.import_closure(&mut fresh, std::slice::from_ref(&fx.top)).unwrap_err();
    assert!(matches!(err, CacheError::Untrusted { .. }), "{err}");
    assert!(fresh.all_valid_paths().unwrap().is_empty());

    // A tampered NAR file: the store refuses it.
    let lib_info = reader.narinfo(&fx.lib).unwrap().unwrap();
    let nar_file = cache.join(&lib_info.url);
    let mut bytes = fs::read(&nar_file).unwrap();
    let tampered = zstd::decode_all(&bytes[..]).unwrap();
    let mut tampered_nar = tampered.clone();
    let n = tampered_nar.len();
    tampered_nar[n - 200] ^= 1;
    bytes = zstd::encode_all(&tampered_nar[..], 3).unwrap();
    fs::write(&nar_file, &bytes).unwrap();
    let err = reader.import_closure(&mut fresh, std::slice::from_ref(&fx.lib)).unwrap_err();
    assert!(err.to_string().contains("libfoo-1.0"), "{err}");
    assert!(fresh.all_valid_paths().unwrap().is_empty());

    // A cache written by `nix copy --to file://` → ferry store.
    let nix_root = tmp.path().join("nix");
    // Restore the tampered file first so Nix can read it.
    fs::write(&nar_file, zstd::encode_all(&tampered[..], 3).unwrap()).unwrap();
    let roots: Vec<String> = fx.roots().iter().map(|p| fx.abs(p)).collect();
    let out = nix_copy_from_cache(&cache, &nix_root, &pk, &roots);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let nix_cache = tmp.path().join("nix-cache");
    run(
        nix_cmd("nix")
            .args(["copy", "--store"])
            .arg(&nix_root)
            .arg("--to")
            .arg(format!("file://{}?compression=zstd", nix_cache.display()))
            .args(&roots),
        true,
    );
    let mut from_nix = open_store(&tmp.path().join("from-nix"));
    let reader = CacheReader::open(&nix_cache, StoreDir::nix(), trusted).unwrap();
    let report = reader.import_closure(&mut from_nix, &fx.roots()).unwrap();
    assert_eq!(report.paths_done, 4);
    assert!(from_nix.verify(true).unwrap().is_clean());
    let parsed = NarInfo::parse(
        &fs::read_to_string(nix_cache.join(format!("{}.narinfo", fx.top.hash_part()))).unwrap(),
        &StoreDir::nix(),
        Path::new("top.narinfo"),
    )
    .unwrap();
    assert_eq!(parsed.path, fx.top);
    assert_eq!(parsed.compression, "zstd");
}

fn open_store(root: &Path) -> Store {
    Store::open(StoreLayout::new(root, StoreDir::nix(), None).unwrap()).unwrap()
}

fn leftovers(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in [cache.to_owned(), cache.join("nar")] {
        for e in fs::read_dir(&d).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name != "nar" && name != "nix-cache-info" {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn a_failed_write_leaves_no_narinfo_and_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StoreDir::nix();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), vec![7u8; 1 << 20]).unwrap();
    let digest = nar_core::dump::hash_path(&src).unwrap();
    let path = made_up_path("x");
    let cache = tmp.path().join("cache");
    let writer = CacheWriter::open(&cache, dir.clone(), None, CacheOptions::default()).unwrap();

    // The files no longer match what the store recorded.
    let mut info = closure::PathInfo::new(path.clone(), digest, Default::default());
    info.nar_size += 1;
    let err = writer.write_path(&info, &src).unwrap_err();
    assert!(matches!(err, CacheError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("-x has NAR hash"), "{err}");
    assert_eq!(leftovers(&cache), Vec::<String>::new());

    // The files cannot be read.
    let info = closure::PathInfo::new(path.clone(), digest, Default::default());
    let err = writer.write_path(&info, &tmp.path().join("missing")).unwrap_err();
    assert!(matches!(err, CacheError::Dump { .. }), "{err}");
    assert_eq!(leftovers(&cache), Vec::<String>::new());
    assert!(!writer.contains(&path).unwrap());

    // And then it works: one NAR, one narinfo.
    writer.write_path(&info, &src).unwrap();
    assert!(writer.contains(&path).unwrap());
    assert_eq!(leftovers(&cache).len(), 2, "{:?}", leftovers(&cache));

    // An existing cache for another store dir is refused.
    let err =
        CacheWriter::open(&cache, StoreDir::guix(), None, CacheOptions::default()).unwrap_err();
    assert!(matches!(err, CacheError::StoreDirMismatch { .. }), "{err}");
}

#[test]
fn narinfo_text_round_trips_with_references_in_nix_order() {
    let dir = StoreDir::nix();
    // Digest order and base-name order differ for these two.
    let a = nar_core::store_path::StorePath::from_base_name("00000000000000000000000000000001-a")
        .unwrap();
    let b = nar_core::store_path::StorePath::from_base_name("10000000000000000000000000000000-b")
        .unwrap();
    let me = made_up_path("me");
    let digest =
        nar_core::hash::NarDigest { hash: nar_core::hash::Sha256Hash::of(b"nar"), size: 8 };
    let mut info =
        closure::PathInfo::new(me.clone(), digest, [a.clone(), b.clone(), me.clone()].into());
    info.deriver = Some(made_up_path("me.drv"));
    let file = nar_core::hash::NarDigest { hash: nar_core::hash::Sha256Hash::of(b"zst"), size: 5 };
    let mut narinfo = NarInfo::from_path_info(&info, "nar/x.nar.zst".into(), "zstd", file);
    let key = SigningKey::generate("k-1", &mut rand::thread_rng());
    narinfo.sign(&dir, &key);
    narinfo.sign(&dir, &key);
    assert_eq!(narinfo.sigs.len(), 1);
    let text = narinfo.to_text(&dir);
    let refs_line = text.lines().find(|l| l.starts_with("References: ")).unwrap();
    let mut sorted: Vec<&str> = refs_line["References: ".len()..].split(' ').collect();
    let written = sorted.clone();
    sorted.sort();
    assert_eq!(written, sorted);
    let parsed = NarInfo::parse(&text, &dir, Path::new("t.narinfo")).unwrap();
    assert_eq!(parsed, narinfo);
    assert!(parsed.verify(&dir, &[key.verifying_key()]));
    assert!(NarInfo::parse("StorePath: /nix/store/x\n", &dir, Path::new("bad")).is_err());
}
