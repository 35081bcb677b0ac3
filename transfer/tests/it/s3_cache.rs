//! `transfer::target::cache` on an S3 bucket (moto's server, `ferry_tests::s3`) and over HTTP:
//! a push, a no-op push that sends nothing (counted at the server), a pull into a fresh store
//! over `s3://` and over `http://`, Debian's Nix reading the same bucket as an HTTP binary cache
//! (`nix-store --verify --check-contents` passes), tampered objects refused, and no secret in
//! any message.

use std::path::Path;
use std::sync::Once;

use crate::nix_fixture::*;
use ferry_tests::s3::{Moto, SECRET_KEY};
use nar_core::store_path::StoreDir;
use proto::uri::Target as Uri;
use signing::keyfile::load_nix_signing_key;
use signing::nix::VerifyingKey;
use store::{Store, StoreLayout};
use transfer::target::cache::{
    backend_for, Backend, CacheError, CacheOptions, CacheReader, CacheWriter,
};

/// The tests' credentials, in the environment the S3 client reads (the same values in every
/// test of this binary, so setting them once is enough).
fn credentials(moto: &Moto) {
    static SET: Once = Once::new();
    SET.call_once(|| {
        for (k, v) in moto.env() {
            std::env::set_var(k, v);
        }
    });
}

fn backend(uri: &str) -> Box<dyn Backend> {
    backend_for(&Uri::parse(uri).unwrap(), false).unwrap().unwrap()
}

fn open_store(root: &Path) -> Store {
    Store::open(StoreLayout::new(root, StoreDir::nix(), None).unwrap()).unwrap()
}

#[test]
fn s3_push_noop_pull_and_nix_reads_it_over_http() {
    require_nix();
    let moto = Moto::start();
    credentials(&moto);
    moto.create_bucket("cache");
    let tmp = tempfile::tempdir().unwrap();
    let fx = build(&tmp.path().join("ferry"));
    let (sk_file, pk) = nix_key_pair(tmp.path(), "ferry-s3-1");
    let key = load_nix_signing_key(&sk_file).unwrap();
    let trusted = vec![VerifyingKey::parse(&pk).unwrap()];
    let uri = moto.uri("cache");
    assert_eq!(key.verifying_key(), trusted[0]);

    let writer = CacheWriter::with_backend(
        backend(&uri),
        StoreDir::nix(),
        Some(load_nix_signing_key(&sk_file).unwrap()),
        CacheOptions::default(),
    )
    .unwrap();
    let report = writer.write_closure(&fx.store, &fx.roots()).unwrap();
    assert_eq!((report.paths_done, report.paths_skipped), (4, 0));
    let keys = moto.keys("cache");
    assert_eq!(keys.iter().filter(|k| k.ends_with(".narinfo")).count(), 4, "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("nar/")).count(), 4, "{keys:?}");
    assert!(keys.contains(&"nix-cache-info".to_owned()));

    // A no-op push: existence checks only, nothing written, nothing downloaded.
    moto.forget_requests();
    let writer =
        CacheWriter::with_backend(backend(&uri), StoreDir::nix(), Some(key), Default::default())
            .unwrap();
    let again = writer.write_closure(&fx.store, &fx.roots()).unwrap();
    assert_eq!((again.paths_done, again.paths_skipped), (0, 4));
    let requests = moto.requests();
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| ["PUT", "POST", "DELETE"].contains(&r.method.as_str()))
        .collect();
    assert!(writes.is_empty(), "a no-op push wrote: {writes:?}");
    let narinfo_gets = requests.iter().filter(|r| r.method == "GET" && r.url.contains(".narinfo"));
    assert_eq!(narinfo_gets.count(), 0, "{requests:?}");
    assert_eq!(requests.iter().filter(|r| r.method == "HEAD").count(), 4, "{requests:?}");

    // Pull into fresh stores, over s3:// and over plain http://.
    for (label, from) in [("s3", uri.clone()), ("http", moto.http_url("cache"))] {
        let mut dest = open_store(&tmp.path().join(format!("dest-{label}")));
        let reader =
            CacheReader::with_backend(backend(&from), StoreDir::nix(), trusted.clone()).unwrap();
        let report = reader.import_closure(&mut dest, &fx.roots()).unwrap();
        assert_eq!((report.paths_done, report.paths_skipped), (4, 0), "{label}");
        assert!(dest.verify(true).unwrap().is_clean(), "{label}");
        for p in fx.all() {
            assert_eq!(dest.path_info(&p).unwrap().nar_hash, fx.info(&p).nar_hash, "{label} {p}");
        }
    }

    // Debian's Nix reads the bucket as an HTTP binary cache.
    let nix_root = tmp.path().join("nix");
    let roots: Vec<String> = fx.roots().iter().map(|p| fx.abs(p)).collect();
    let out = run(
        nix_cmd("nix")
            .args(["copy", "--from", &moto.http_url("cache"), "--to"])
            .arg(&nix_root)
            .args(["--option", "trusted-public-keys", &pk])
            .args(&roots),
        false,
    );
    assert!(out.status.success(), "nix copy failed:\n{}", String::from_utf8_lossy(&out.stderr));
    nix_store(&nix_root, &["--verify", "--check-contents"]);
    let hash = nix_store(&nix_root, &["-q", "--hash", &fx.abs(&fx.lib)]);
    assert_eq!(hash.trim(), fx.info(&fx.lib).nar_hash.to_typed_nix32());
}

#[test]
fn tampered_objects_in_a_bucket_are_refused() {
    let moto = Moto::start();
    credentials(&moto);
    moto.create_bucket("tamper");
    let tmp = tempfile::tempdir().unwrap();
    let fx = build(&tmp.path().join("ferry"));
    let key = signing::nix::SigningKey::generate("ferry-s3-2", &mut rand::thread_rng());
    let trusted = vec![key.verifying_key()];
    let uri = moto.uri("tamper");
    let writer =
        CacheWriter::with_backend(backend(&uri), StoreDir::nix(), Some(key), Default::default())
            .unwrap();
    writer.write_closure(&fx.store, &fx.roots()).unwrap();
    let reader = CacheReader::with_backend(backend(&uri), StoreDir::nix(), trusted).unwrap();
    let narinfo_key = format!("{}.narinfo", fx.lib.hash_part());
    let original = moto.get("tamper", &narinfo_key).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let lib = reader.narinfo(&fx.lib).unwrap().unwrap();

    // A flipped byte in the NAR (recompressed, so only the NAR hash can tell).
    let compressed = moto.get("tamper", &lib.url).unwrap();
    let mut nar = zstd::decode_all(&compressed[..]).unwrap();
    let n = nar.len();
    nar[n - 200] ^= 1;
    moto.put("tamper", &lib.url, &zstd::encode_all(&nar[..], 3).unwrap());
    let mut fresh = open_store(&tmp.path().join("fresh"));
    let err = reader.import_closure(&mut fresh, std::slice::from_ref(&fx.lib)).unwrap_err();
    assert!(matches!(err, CacheError::Import { .. }), "{err}");
    assert!(fresh.all_valid_paths().unwrap().is_empty());
    moto.put("tamper", &lib.url, &compressed);

    // A narinfo with another NAR hash (its signature no longer matches), or another signature.
    let other_hash = nar_core::hash::Sha256Hash::of(b"other").to_typed_nix32();
    let wrong_hash =
        text.lines()
            .map(|l| {
                if l.starts_with("NarHash: ") {
                    format!("NarHash: {other_hash}")
                } else {
                    l.into()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
    let stranger = signing::nix::SigningKey::generate("ferry-s3-2", &mut rand::thread_rng());
    let mut resigned = NarInfoText(text.clone()).without_sigs();
    resigned.push_str(&format!("Sig: {}\n", stranger.sign(&lib.fingerprint(&StoreDir::nix()))));
    for (label, tampered) in [("wrong hash", wrong_hash), ("wrong signature", resigned)] {
        moto.put("tamper", &narinfo_key, tampered.as_bytes());
        let err = reader.import_closure(&mut fresh, std::slice::from_ref(&fx.lib)).unwrap_err();
        assert!(matches!(err, CacheError::Untrusted { .. }), "{label}: {err}");
        assert!(fresh.all_valid_paths().unwrap().is_empty(), "{label}");
    }
    // A narinfo pointing outside the cache.
    let escape = text.replace(&format!("URL: {}", lib.url), "URL: ../../etc/passwd");
    moto.put("tamper", &narinfo_key, escape.as_bytes());
    let err = reader.narinfo(&fx.lib).unwrap_err();
    assert!(err.to_string().contains("not a relative key"), "{err}");

    // Restored, it imports.
    moto.put("tamper", &narinfo_key, &original);
    reader.import_closure(&mut fresh, std::slice::from_ref(&fx.lib)).unwrap();
}

/// The narinfo text without its `Sig:` lines.
struct NarInfoText(String);

impl NarInfoText {
    fn without_sigs(&self) -> String {
        self.0.lines().filter(|l| !l.starts_with("Sig: ")).map(|l| format!("{l}\n")).collect()
    }
}

#[test]
fn no_message_shows_the_secret_and_http_is_read_only() {
    let moto = Moto::start();
    credentials(&moto);
    // Nothing listens on this port: every request fails, and the message names the cache.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let uri = format!("s3://nowhere?endpoint=http://127.0.0.1:{port}&region=us-east-1");
    let b = backend(&uri);
    let err =
        CacheWriter::with_backend(b, StoreDir::nix(), None, CacheOptions::default()).unwrap_err();
    let shown = format!("{err} {err:?} {:?}", backend(&uri));
    assert!(shown.contains("s3://nowhere"), "{shown}");
    assert!(!shown.contains(SECRET_KEY), "the secret is shown: {shown}");

    // A missing bucket on a live server.
    let err = CacheWriter::with_backend(
        backend(&moto.uri("missing")),
        StoreDir::nix(),
        None,
        CacheOptions::default(),
    )
    .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(SECRET_KEY), "{err:?}");

    let err = CacheWriter::with_backend(
        backend(&moto.http_url("x")),
        StoreDir::nix(),
        None,
        CacheOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, CacheError::ReadOnly(_)), "{err}");
}
