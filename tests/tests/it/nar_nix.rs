//! Byte compatibility of nar-core with Debian's Nix: `nix-store --dump`, `nix-hash`,
//! `nix-store --restore`, `nix-store --print-fixed-path`, on generated and real trees.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_tests::nix::{dump as nix_dump, hash as nix_hash};
use ferry_tests::run_text;
use nar_core::hash::Sha256Hash;
use nar_core::store_path::{make_fixed_output_path, make_source_path, FileIngestion, StoreDir};

fn ferry_dump(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    nar_core::dump::dump(path, &mut out).unwrap();
    out
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every shape the format has, in one tree per case plus one tree holding them all.
fn generated_trees(root: &Path) -> Vec<PathBuf> {
    let mut cases = Vec::new();
    let mut case = |name: &str| {
        let p = root.join(name);
        cases.push(p.clone());
        p
    };
    write(&case("empty-file"), b"", 0o644);
    fs::create_dir(case("empty-dir")).unwrap();
    write(&case("executable"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&case("owner-x-only"), b"x", 0o700);
    symlink("relative/target", case("relative-link")).unwrap();
    symlink("/absolute/target", case("absolute-link")).unwrap();
    symlink("dangling-nowhere", case("dangling-link")).unwrap();

    let deep = case("deep");
    let mut p = deep.clone();
    for i in 0..60 {
        p.push(format!("level{i}"));
    }
    fs::create_dir_all(&p).unwrap();
    write(&p.join("bottom"), b"deep\n", 0o644);

    let sorting = case("sorting");
    fs::create_dir(&sorting).unwrap();
    for name in ["B", "a", "A", "b", "_", "-", "Z9", "z", "0", "a.b", "a-b", "ab"] {
        write(&sorting.join(name), name.as_bytes(), 0o644);
    }
    let names = case("names");
    fs::create_dir(&names).unwrap();
    for name in
        ["with space", "ünïcödé", "日本語", "tab\there", "new\nline", "quote\"s", "emoji 🚀"]
    {
        write(&names.join(name), name.as_bytes(), 0o644);
    }

    let all = case("all");
    fs::create_dir(&all).unwrap();
    fs::create_dir(all.join("sub")).unwrap();
    write(&all.join("sub/file"), &[0u8; 4097], 0o644);
    write(&all.join("x"), b"exec", 0o555);
    symlink("sub/file", all.join("link")).unwrap();
    fs::create_dir(all.join("empty")).unwrap();
    cases
}

#[test]
fn generated_trees_match_nix_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for tree in generated_trees(tmp.path()) {
        let ours = ferry_dump(&tree);
        let theirs = nix_dump(&tree);
        assert!(ours == theirs, "NAR of {} differs from nix-store --dump", tree.display());
        let hash = nar_core::dump::hash_path(&tree).unwrap();
        assert_eq!(hash.hash.to_nix32(), nix_hash(&tree), "hash of {}", tree.display());
        assert_eq!(hash.size, theirs.len() as u64);
    }
}

#[test]
fn restores_agree_with_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    for tree in generated_trees(&src) {
        let name = tree.file_name().unwrap().to_str().unwrap().to_owned();
        let nar = nix_dump(&tree);
        // Nix's NAR restored by ferry.
        let ours = tmp.path().join(format!("ferry-{name}"));
        nar_core::restore::restore(&nar[..], &ours).unwrap();
        // ferry's NAR restored by Nix.
        let theirs = tmp.path().join(format!("nix-{name}"));
        let nar_file = tmp.path().join(format!("{name}.nar"));
        fs::write(&nar_file, ferry_dump(&tree)).unwrap();
        let status = ferry_tests::nix::command("nix-store")
            .arg("--restore")
            .arg(&theirs)
            .stdin(fs::File::open(&nar_file).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "nix-store --restore of ferry's NAR of {name}");
        // Same content, executable bits and symlink targets: both dump to the source NAR.
        assert!(ferry_dump(&ours) == nar, "ferry's restore of {name}");
        assert!(nix_dump(&theirs) == nar, "Nix's restore of {name}");
        assert_same_tree(&ours, &theirs);
    }
}

/// Content, executable bits and symlink targets equal, walked independently of the NAR code.
fn assert_same_tree(a: &Path, b: &Path) {
    let ma = fs::symlink_metadata(a).unwrap();
    let mb = fs::symlink_metadata(b).unwrap();
    assert_eq!(ma.file_type(), mb.file_type(), "{}", a.display());
    if ma.is_symlink() {
        assert_eq!(fs::read_link(a).unwrap(), fs::read_link(b).unwrap());
    } else if ma.is_file() {
        assert_eq!(
            ma.permissions().mode() & 0o111 != 0,
            mb.permissions().mode() & 0o111 != 0,
            "{}",
            a.display()
        );
        assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap());
        assert_eq!(
            ma.permissions().mode() & 0o777,
            if ma.permissions().mode() & 0o100 != 0 { 0o555 } else { 0o444 }
        );
    } else {
        let mut ea: Vec<_> = fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
        let mut eb: Vec<_> = fs::read_dir(b).unwrap().map(|e| e.unwrap().file_name()).collect();
        ea.sort();
        eb.sort();
        assert_eq!(ea, eb, "{}", a.display());
        for name in ea {
            assert_same_tree(&a.join(&name), &b.join(&name));
        }
    }
}

#[test]
fn large_file_matches_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big");
    let mut f = fs::File::create(&path).unwrap();
    // 100 MB of incompressible-ish bytes (a simple LCG, so no RNG dependency).
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..100 {
        for chunk in block.chunks_mut(8) {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    drop(f);
    let ours = nar_core::dump::hash_path(&path).unwrap();
    assert_eq!(ours.hash.to_nix32(), nix_hash(&path));
    assert_eq!(Sha256Hash::of(&ferry_dump(&path)), ours.hash);
    assert_eq!(Sha256Hash::of(&nix_dump(&path)), ours.hash);
}

#[test]
fn real_system_trees_match_nix() {
    for tree in ["/usr/share/doc", "/usr/lib/python3.11"] {
        let path = Path::new(tree);
        assert!(path.is_dir(), "{tree} is missing on this machine");
        let theirs = nix_dump(path);
        let ours = ferry_dump(path);
        assert!(ours == theirs, "NAR of {tree} differs from nix-store --dump");
        assert_eq!(
            nar_core::dump::hash_path(path).unwrap().hash.to_nix32(),
            nix_hash(path),
            "{tree}"
        );
    }
}

#[test]
fn store_paths_match_nix_print_fixed_path() {
    let tmp = tempfile::tempdir().unwrap();
    let trees = generated_trees(tmp.path());
    for store_dir in [StoreDir::GUIX, StoreDir::NIX] {
        let dir = StoreDir::new(store_dir).unwrap();
        let env = [("NIX_STORE_DIR", store_dir)];
        for tree in &trees {
            let name = tree.file_name().unwrap().to_str().unwrap();
            let hash = nar_core::dump::hash_path(tree).unwrap().hash;
            let expected = run_text(
                "nix-store",
                &["--print-fixed-path", "--recursive", "sha256", &hash.to_nix32(), name],
                &env,
            );
            let ours = make_source_path(&dir, name, &hash).unwrap().to_absolute(&dir);
            assert_eq!(ours, expected, "{name} in {store_dir}");
        }
        // Flat fixed outputs, with several algorithms.
        for (algo, hex_digest) in [
            ("sha256", "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"),
            ("sha1", "f572d396fae9206628714fb2ce00f72e94f2258f"),
            ("md5", "b1946ac92492d2347c6235b4d2611184"),
        ] {
            let digest = (0..hex_digest.len() / 2)
                .map(|i| u8::from_str_radix(&hex_digest[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<u8>>();
            let nix32 = nar_core::base32::encode(&digest);
            let expected =
                run_text("nix-store", &["--print-fixed-path", algo, &nix32, "hello.txt"], &env);
            let ours =
                make_fixed_output_path(&dir, "hello.txt", FileIngestion::Flat, algo, &digest)
                    .unwrap();
            assert_eq!(ours.to_absolute(&dir), expected, "{algo} flat in {store_dir}");
            let expected = run_text(
                "nix-store",
                &["--print-fixed-path", "--recursive", algo, &nix32, "hello.txt"],
                &env,
            );
            let ours =
                make_fixed_output_path(&dir, "hello.txt", FileIngestion::Recursive, algo, &digest)
                    .unwrap();
            assert_eq!(ours.to_absolute(&dir), expected, "{algo} recursive in {store_dir}");
        }
    }
}
