//! Interoperability with Debian's Nix (2.8): narinfo signatures both ways, and the export
//! bundle both ways. Everything runs on chroot stores under a temporary directory (`--store
//! DIR`), never on the machine's `/nix`.
//!
//! Needs `nix-store` and `nix` (Debian: `apt-get install -y nix-bin`). Missing tools fail the
//! test with that hint; they are never skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use nar_core::hash::Sha256Hash;
use nar_core::store_path::{StoreDir, StorePath};
use signing::bundle::{BundleReader, BundleWriter, ItemMeta};
use signing::nix::{fingerprint, Signature, SigningKey, VerifyingKey};

/// A Nix tool, hermetic (ferry-tests' configuration), with stdin closed.
fn command(program: &str) -> Command {
    let mut c = ferry_tests::nix::command(program);
    c.stdin(Stdio::null());
    c
}

fn run_output(program: &str, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut c = command(program);
    c.args(args);
    if let Some(p) = stdin {
        c.stdin(fs::File::open(p).unwrap());
    }
    c.output().unwrap_or_else(|e| {
        panic!("cannot run `{program}` ({e}): these tests need Nix (apt-get install -y nix-bin)")
    })
}

fn run(program: &str, args: &[&str]) -> String {
    run_stdin(program, args, None)
}

fn run_stdin(program: &str, args: &[&str], stdin: Option<&Path>) -> String {
    let out = run_output(program, args, stdin);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: String,
    paths: Vec<String>,
}

/// A chroot store with three paths: two files and one text path referring to both.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let store = root.join("s1").display().to_string();
    fs::write(root.join("a.txt"), "hello\n").unwrap();
    fs::create_dir(root.join("tree")).unwrap();
    fs::write(root.join("tree/x"), "x").unwrap();
    std::os::unix::fs::symlink("x", root.join("tree/link")).unwrap();
    let a =
        run("nix-store", &["--store", &store, "--add", &root.join("a.txt").display().to_string()]);
    let t =
        run("nix-store", &["--store", &store, "--add", &root.join("tree").display().to_string()]);
    let (a, t) = (a.trim().to_owned(), t.trim().to_owned());
    let expr = format!(
        "builtins.toFile \"ref\" \"see ${{builtins.storePath {a}}} and ${{builtins.storePath {t}}}\""
    );
    let r =
        run("nix-instantiate", &["--store", &store, "--read-write-mode", "--eval", "-E", &expr]);
    let r = r.trim().trim_matches('"').to_owned();
    assert!(r.starts_with("/nix/store/"), "{r}");
    Fixture { _tmp: tmp, root, store, paths: vec![a, t, r] }
}

struct PathInfo {
    path: StorePath,
    nar_hash: Sha256Hash,
    nar_size: u64,
    references: Vec<StorePath>,
    sigs: Vec<String>,
}

fn path_info(store: &str, paths: &[String]) -> Vec<PathInfo> {
    let mut args = vec!["path-info", "--store", store, "--json", "--sigs"];
    args.extend(paths.iter().map(String::as_str));
    let json: serde_json::Value = serde_json::from_str(&run("nix", &args)).unwrap();
    let dir = StoreDir::nix();
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let sri = v["narHash"].as_str().unwrap();
            let b64 = sri.strip_prefix("sha256-").unwrap();
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            PathInfo {
                path: dir.parse_path(v["path"].as_str().unwrap()).unwrap(),
                nar_hash: Sha256Hash(bytes.try_into().unwrap()),
                nar_size: v["narSize"].as_u64().unwrap(),
                references: v["references"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| dir.parse_path(r.as_str().unwrap()).unwrap())
                    .collect(),
                sigs: v["signatures"]
                    .as_array()
                    .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

fn generate_nix_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let sk = dir.join(format!("{name}.sec"));
    let pk = dir.join(format!("{name}.pub"));
    run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            name,
            &sk.display().to_string(),
            &pk.display().to_string(),
        ],
    );
    (sk, pk)
}

#[test]
fn nix_signatures_verify_with_ferry() {
    let fx = fixture();
    let dir = StoreDir::nix();
    for k in 0..3 {
        let (sk_file, pk_file) = generate_nix_key(&fx.root, &format!("nix-key-{k}"));
        let ours = signing::keyfile::load_nix_signing_key(&sk_file).unwrap();
        let pk = VerifyingKey::parse(&fs::read_to_string(&pk_file).unwrap()).unwrap();
        assert_eq!(ours.verifying_key(), pk, "ferry derives Nix's public key");
        let mut args = vec!["store", "sign", "--store", &fx.store, "--key-file"];
        let sk_str = sk_file.display().to_string();
        args.push(&sk_str);
        args.extend(fx.paths.iter().map(String::as_str));
        run("nix", &args);
        for info in path_info(&fx.store, &fx.paths) {
            let fp = fingerprint(&dir, &info.path, &info.nar_hash, info.nar_size, &info.references);
            let sig = info
                .sigs
                .iter()
                .map(|s| Signature::parse(s).unwrap())
                .find(|s| s.name() == pk.name())
                .expect("Nix added a signature");
            assert!(pk.verify(&fp, &sig), "{fp}");
            // Ferry's own signature of the same fingerprint is Nix's (Ed25519 is deterministic).
            assert_eq!(ours.sign(&fp), sig);
            let wrong =
                fingerprint(&dir, &info.path, &info.nar_hash, info.nar_size + 1, &info.references);
            assert!(!pk.verify(&wrong, &sig));
        }
    }
}

/// Write a `file://` binary cache (uncompressed NARs) whose narinfos carry `sig_for(fingerprint)`.
fn write_cache(fx: &Fixture, cache: &Path, infos: &[PathInfo], sig_for: &dyn Fn(&str) -> String) {
    fs::create_dir_all(cache.join("nar")).unwrap();
    fs::write(
        cache.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    )
    .unwrap();
    let dir = StoreDir::nix();
    for info in infos {
        let physical = format!("{}{}", fx.store, info.path.to_absolute(&dir));
        let nar = command("nix-store").args(["--dump", &physical]).output().unwrap().stdout;
        assert_eq!(Sha256Hash::of(&nar), info.nar_hash);
        let nar_name = format!("nar/{}.nar", info.nar_hash.to_nix32());
        fs::write(cache.join(&nar_name), &nar).unwrap();
        let fp = fingerprint(&dir, &info.path, &info.nar_hash, info.nar_size, &info.references);
        let refs: Vec<String> = info.references.iter().map(StorePath::base_name).collect();
        let narinfo = format!(
            "StorePath: {}\nURL: {nar_name}\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: {}\nSig: {}\n",
            info.path.to_absolute(&dir),
            info.nar_hash.to_typed_nix32(),
            info.nar_size,
            refs.join(" "),
            sig_for(&fp)
        );
        fs::write(cache.join(format!("{}.narinfo", info.path.hash_part())), narinfo).unwrap();
    }
}

#[test]
fn ferry_signatures_verify_with_nix() {
    let fx = fixture();
    let infos = path_info(&fx.store, &fx.paths);
    let (sk_file, _) = generate_nix_key(&fx.root, "nix-made");
    let keys = [
        signing::keyfile::load_nix_signing_key(&sk_file).unwrap(),
        SigningKey::generate("ferry-made-1", &mut rand::thread_rng()),
    ];
    for (k, key) in keys.iter().enumerate() {
        let cache = fx.root.join(format!("cache{k}"));
        write_cache(&fx, &cache, &infos, &|fp| key.sign(fp).to_string());
        let dest = fx.root.join(format!("dest{k}")).display().to_string();
        let trusted = key.verifying_key().to_string();
        let from = format!("file://{}", cache.display());
        let mut args = vec![
            "copy",
            "--from",
            &from,
            "--to",
            &dest,
            "--option",
            "trusted-public-keys",
            &trusted,
        ];
        args.extend(fx.paths.iter().map(String::as_str));
        run("nix", &args);
        let mut args = vec![
            "store",
            "verify",
            "--store",
            &dest,
            "--sigs-needed",
            "1",
            "--trusted-public-keys",
            &trusted,
        ];
        args.extend(fx.paths.iter().map(String::as_str));
        run("nix", &args);
    }

    // Control: a signature over the wrong fingerprint is refused by Nix.
    let key = &keys[1];
    let cache = fx.root.join("cache-bad");
    write_cache(&fx, &cache, &infos, &|fp| key.sign(&format!("{fp}x")).to_string());
    let dest = fx.root.join("dest-bad").display().to_string();
    let trusted = key.verifying_key().to_string();
    let from = format!("file://{}", cache.display());
    let out = run_output(
        "nix",
        &[
            "copy",
            "--from",
            &from,
            "--to",
            &dest,
            "--option",
            "trusted-public-keys",
            &trusted,
            &fx.paths[0],
        ],
        None,
    );
    assert!(!out.status.success(), "Nix accepted a bad signature");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks a valid signature"));
}

#[test]
fn nix_export_parses_and_ferry_bundles_import_into_nix() {
    let fx = fixture();
    let dir = StoreDir::nix();
    let closure = run("nix-store", &["--store", &fx.store, "-qR", &fx.paths[2]]);
    let closure: Vec<&str> = closure.lines().collect();
    assert_eq!(closure.len(), 3);
    let mut args = vec!["--store", fx.store.as_str(), "--export"];
    args.extend(closure.iter().copied());
    let out = run_output("nix-store", &args, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let export = out.stdout;

    let infos = path_info(&fx.store, &fx.paths);
    let mut reader = BundleReader::new(&export[..], dir.clone());
    let mut writer = BundleWriter::new(Vec::new(), dir.clone());
    let mut seen = 0;
    while let Some((item, nar)) = reader.next_item().unwrap() {
        assert!(item.signature_text().is_none(), "Nix exports carry no signature");
        let item = item.trust_unsigned();
        let info = infos.iter().find(|i| i.path == item.info.path).unwrap();
        assert_eq!(item.info.nar.hash, info.nar_hash);
        assert_eq!(item.info.nar.size, info.nar_size);
        let mut refs = info.references.clone();
        refs.sort_by_key(|r| r.to_absolute(&dir));
        assert_eq!(item.info.references, refs);
        let meta = ItemMeta {
            path: item.info.path.clone(),
            references: item.info.references.clone(),
            deriver: item.info.deriver.clone(),
        };
        writer.write_unsigned(&meta, &mut &nar[..]).unwrap();
        seen += 1;
    }
    assert_eq!(seen, 3);
    assert_eq!(reader.offset(), export.len() as u64);
    let ours = writer.finish().unwrap();
    assert_eq!(ours, export, "ferry's Nix-form bundle is byte-identical to nix-store --export");

    // An item Nix never saw: an input-addressed path with a chosen reference, written by ferry.
    let made = dir.parse_path("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-ferry-made").unwrap();
    let mut continued = ours;
    continued.truncate(continued.len() - 8); // drop the end marker and append one more item
    let mut writer = BundleWriter::new(continued, dir.clone());
    let refs = vec![infos[0].path.clone()];
    writer
        .write_unsigned(
            &ItemMeta { path: made.clone(), references: refs, deriver: None },
            &mut &nar_core::testdata::hello_nar()[..],
        )
        .unwrap();
    let bundle = writer.finish().unwrap();
    let file = fx.root.join("ours.export");
    fs::write(&file, &bundle).unwrap();
    let dest = fx.root.join("s3").display().to_string();
    let imported = run_stdin("nix-store", &["--store", &dest, "--import"], Some(&file));
    assert_eq!(imported.lines().count(), 4, "{imported}");
    for p in fx.paths.iter().chain([&made.to_absolute(&dir)]) {
        run("nix-store", &["--store", &dest, "--verify-path", p]);
    }
    let refs = run("nix-store", &["--store", &dest, "-q", "--references", &made.to_absolute(&dir)]);
    assert_eq!(refs.trim(), infos[0].path.to_absolute(&dir));
    let hash = run("nix-store", &["--store", &dest, "-q", "--hash", &made.to_absolute(&dir)]);
    assert_eq!(hash.trim(), Sha256Hash::of(&nar_core::testdata::hello_nar()).to_typed_nix32());
}
