//! Every way a Guix bundle must be refused, each with its message (guix-spec §2.5, §3.6).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use nar_core::store_path::StoreDir;
use signing::acl::{Acl, SignatureError};
use signing::bundle::{BundleError, BundleReader, BundleWriter, ItemMeta, VerifiedItem};
use signing::guix::SigningKey;

const TROJAN: &str = "signed hash doesn't match actual contents of imported archive; archive could be corrupt, or someone is trying to import a Trojan horse";
const REF: &str = "/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt";
const ITEM: &str = "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-uses-hello";
const DRV: &str = "/gnu/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-uses-hello.drv";

fn dir_nar() -> Vec<u8> {
    let mut w = nar_core::write::NarWriter::new(Vec::new());
    w.directory().unwrap();
    w.entry(b"bin").unwrap();
    w.file_bytes(true, b"#!/bin/sh\necho /gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt\n")
        .unwrap();
    w.entry(b"link").unwrap();
    w.symlink(b"bin").unwrap();
    w.directory_end().unwrap();
    w.finish().unwrap().0
}

fn key(seed: u8) -> SigningKey {
    let mut d = [seed; 32];
    d[0] = 0x40 | (seed & 0x3f);
    SigningKey::from_ecdsa_bytes(&d).unwrap()
}

/// A two-item bundle (a reference, then its referrer with a deriver), signed by `signer`
/// (or unsigned).
fn bundle(signer: Option<&SigningKey>) -> Vec<u8> {
    let dir = StoreDir::guix();
    let mut w = BundleWriter::new(Vec::new(), dir.clone());
    let first = ItemMeta { path: dir.parse_path(REF).unwrap(), references: vec![], deriver: None };
    let second = ItemMeta {
        path: dir.parse_path(ITEM).unwrap(),
        references: vec![dir.parse_path(REF).unwrap(), dir.parse_path(ITEM).unwrap()],
        deriver: Some(dir.parse_path(DRV).unwrap()),
    };
    for (meta, nar) in [(first, nar_core::testdata::hello_nar()), (second, dir_nar())] {
        match signer {
            Some(k) => w.write_signed(&meta, &mut &nar[..], k).unwrap(),
            None => w.write_unsigned(&meta, &mut &nar[..]).unwrap(),
        };
    }
    w.finish().unwrap()
}

fn acl() -> Acl {
    let mut acl = Acl::new();
    acl.authorize(key(1).verifying_key().to_sexp()).unwrap();
    acl
}

/// Read and verify every item, as an importer would.
fn import(bytes: &[u8], acl: &Acl) -> Result<Vec<VerifiedItem>, BundleError> {
    let dir = StoreDir::guix();
    let mut r = BundleReader::new(bytes, dir.clone());
    let mut out = Vec::new();
    while let Some((item, _nar)) = r.next_item()? {
        out.push(item.verify(acl, &dir)?);
    }
    Ok(out)
}

fn err(bytes: &[u8], acl: &Acl) -> String {
    import(bytes, acl).unwrap_err().to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn a_good_bundle_imports() {
    let items = import(&bundle(Some(&key(1))), &acl()).unwrap();
    assert_eq!(items.len(), 2);
    let dir = StoreDir::guix();
    assert_eq!(items[1].info.path.to_absolute(&dir), ITEM);
    assert_eq!(items[1].info.references.len(), 2);
    assert_eq!(items[1].info.deriver.as_ref().unwrap().to_absolute(&dir), DRV);
    assert_eq!(items[1].signer.as_ref(), Some(&key(1).verifying_key().to_sexp()));
}

#[test]
fn missing_signature() {
    assert_eq!(
        err(&bundle(None), &acl()),
        format!("imported archive of `{REF}' lacks a signature")
    );
}

#[test]
fn unauthorized_key() {
    let e = err(&bundle(Some(&key(2))), &acl());
    assert!(
        e.starts_with("unauthorized public key: (public-key \n (ecc \n  (curve Ed25519)\n"),
        "{e}"
    );
    let e = err(&bundle(Some(&key(1))), &Acl::new());
    assert!(e.starts_with("unauthorized public key: "), "{e}");
}

#[test]
fn hash_mismatch_on_any_flipped_field() {
    let good = bundle(Some(&key(1)));
    let second_item = find(&good, b"nix-archive-1") + 1;
    let second_item = second_item + find(&good[second_item..], b"nix-archive-1");
    let cases: Vec<(&str, usize)> = vec![
        ("NAR contents", find(&good, b"hello\n")),
        ("NAR of the second item", second_item + find(&good[second_item..], b"echo")),
        ("path", find(&good, ITEM.as_bytes()) + 12),
        // The reference list of the second item (the first occurrence after its NAR).
        ("reference", second_item + find(&good[second_item..], REF.as_bytes()) + 12),
        ("deriver", find(&good, DRV.as_bytes()) + 12),
    ];
    for (what, at) in cases {
        let mut bad = good.clone();
        // Swap to another nix-base32 digit (or another letter) so the path stays well formed.
        bad[at] = if bad[at] == b'a' { b'b' } else { b'a' };
        assert_eq!(err(&bad, &acl()), TROJAN, "flipped byte in the {what} at {at}");
    }
}

#[test]
fn invalid_signature() {
    let good = bundle(Some(&key(1)));
    let at = find(&good, b"(r #") + 4 + 40;
    let mut bad = good.clone();
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    let e = import(&bad, &acl()).unwrap_err();
    assert!(matches!(e, BundleError::Signature(SignatureError::Invalid { .. })), "{e}");
    assert!(e.to_string().starts_with("invalid signature: (signature \n (data \n"), "{e}");
}

#[test]
fn corrupt_signature() {
    let good = bundle(Some(&key(1)));
    let at = find(&good, b"(data");
    let mut bad = good.clone();
    bad[at + 1..at + 5].copy_from_slice(b"date");
    assert!(err(&bad, &acl()).starts_with("corrupt signature data: (signature \n (date \n"));
    let mut bad = good.clone();
    bad[at] = b')';
    assert!(err(&bad, &acl()).starts_with("corrupt signature data: "));
}

#[test]
fn truncated_anywhere() {
    let good = bundle(Some(&key(1)));
    // Reading alone must notice every cut (verification would come after).
    let read_all = |bytes: &[u8]| -> Result<usize, BundleError> {
        let mut r = BundleReader::new(bytes, StoreDir::guix());
        let mut n = 0;
        while r.next_item()?.is_some() {
            n += 1;
        }
        Ok(n)
    };
    assert_eq!(read_all(&good).unwrap(), 2);
    for len in 0..good.len() {
        match read_all(&good[..len]) {
            Err(BundleError::Truncated { offset, .. }) => {
                assert_eq!(offset, len as u64, "cut at {len}")
            }
            other => panic!("cut at {len}: {other:?}"),
        }
    }
}

#[test]
fn framing_errors() {
    let good = bundle(Some(&key(1)));
    let mut bad = good.clone();
    bad[0] = 2;
    assert_eq!(
        err(&bad, &acl()),
        "input doesn't look like something created by `nix-store --export'"
    );
    let mut bad = good.clone();
    let magic = find(&good, b"NIXE");
    bad[magic] = b'X';
    assert_eq!(err(&bad, &acl()), "normalized archive cannot be imported; wrong format");
    let mut bad = good.clone();
    let path = find(&good, REF.as_bytes());
    bad[path + 1] = b'n'; // "/nnu/store/…"
    assert_eq!(err(&bad, &acl()), format!("path `/nnu{}' is not in the store", &REF[4..]));
    // Nothing may follow the signature flag but 0/1.
    let mut bad = good.clone();
    let flag = find(&good, b"(signature") - 16;
    bad[flag] = 7;
    assert!(err(&bad, &acl()).starts_with("bad signature flag 7"));
}

#[test]
fn world_readable_secret_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("signing-key.sec");
    fs::write(&p, key(1).to_key_file().as_slice()).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let e = signing::keyfile::load_guix_signing_key(&p).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "file `{}' should be secret (inaccessible to everybody else)! (its mode is 0644)",
            p.display()
        )
    );
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let k = signing::keyfile::load_guix_signing_key(&p).unwrap();
    assert_eq!(k.verifying_key(), key(1).verifying_key());
    assert!(!format!("{k:?}").contains("private"));
}
