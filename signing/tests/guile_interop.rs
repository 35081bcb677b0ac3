//! Interoperability with libgcrypt, the library Guix signs with, driven through guile-gcrypt
//! (`tests/interop.scm`). One guile process per batch.
//!
//! Needs `guile` with the `(gcrypt pk-crypto)` module (Debian: `apt-get install -y guile-3.0
//! guile-gcrypt`). Missing tools fail the test with that hint; they are never skipped.

use std::io::Write;
use std::process::{Command, Stdio};

use signing::acl::Acl;
use signing::guix::{Signature, SigningKey, VerifyingKey};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop.scm");

fn guile(args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("guile")
        .env("GUILE_AUTO_COMPILE", "0")
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `guile` ({e}): these interop tests need guile and guile-gcrypt \
                 (apt-get install -y guile-3.0 guile-gcrypt)"
            )
        });
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "guile failed ({}); is guile-gcrypt installed (apt-get install -y guile-gcrypt)?\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn libgcrypt_keys_and_signatures_are_read_and_reproduced_by_ferry() {
    let out = guile(&["generate", "50", "10"], b"");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 60, "guile output:\n{out}");
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let [kind, public, secret, hash, sig] = f[..] else { panic!("line {i}: {line}") };
        let (public, secret, sig) = (unhex(public), unhex(secret), unhex(sig));
        let digest: [u8; 32] = unhex(hash).try_into().unwrap();

        let vk = VerifyingKey::from_text(&public).unwrap_or_else(|e| panic!("line {i}: {e}"));
        assert_eq!(vk.to_key_file(), public, "line {i}: public key file layout");
        let sk = SigningKey::from_text(&secret).unwrap_or_else(|e| panic!("line {i}: {e}"));
        assert_eq!(sk.to_key_file().as_slice(), &secret[..], "line {i}: secret key file layout");
        assert_eq!(sk.verifying_key(), &vk);
        assert_eq!(format!("{:?}", vk.flavor()).to_lowercase(), kind);

        let parsed = Signature::parse(&sig).unwrap();
        assert!(parsed.verify(), "line {i}: libgcrypt's signature does not verify");
        let mut acl = Acl::new();
        acl.authorize(vk.to_sexp()).unwrap();
        acl.check_signature(&parsed, &digest).unwrap_or_else(|e| panic!("line {i}: {e}"));
        let mut other = digest;
        other[31] ^= 0x80;
        assert!(!vk.verify_digest(&other, &parsed.sig_val().unwrap()), "line {i}");

        // Deterministic nonces: ferry's signature is libgcrypt's, byte for byte.
        let ours = sk.sign(&digest);
        assert_eq!(
            String::from_utf8_lossy(&ours.to_text()),
            String::from_utf8_lossy(&sig),
            "line {i}: signature text differs"
        );
    }
}

#[test]
fn ferry_keys_and_signatures_are_accepted_by_libgcrypt() {
    let mut rng = rand::thread_rng();
    let mut input = String::new();
    for i in 0..60 {
        let (kind, key) = if i < 50 {
            ("ecdsa", SigningKey::generate(&mut rng))
        } else {
            ("eddsa", SigningKey::generate_eddsa(&mut rng))
        };
        let mut digest = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rng, &mut digest);
        let sig = key.sign(&digest);
        input.push_str(&format!(
            "{kind} {} {} {} {}\n",
            hex::encode(key.verifying_key().to_key_file()),
            hex::encode(key.to_key_file().as_slice()),
            hex::encode(digest),
            hex::encode(sig.to_text())
        ));
    }
    let out = guile(&["check"], input.as_bytes());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 60, "guile output:\n{out}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("{i} ok"), "libgcrypt rejected ferry's item {i}");
    }
}

#[test]
fn acl_files_agree_with_guix_matching_and_layout() {
    let mut rng = rand::thread_rng();
    let keys: Vec<SigningKey> = (0..8)
        .map(|i| {
            if i % 3 == 2 {
                SigningKey::generate_eddsa(&mut rng)
            } else {
                SigningKey::generate(&mut rng)
            }
        })
        .collect();
    let mut acl = Acl::new();
    for k in &keys[..5] {
        acl.authorize(k.verifying_key().to_sexp()).unwrap();
    }
    let mut input = format!("{}\n", hex::encode(acl.to_text()));
    for k in &keys {
        input.push_str(&format!("{}\n", hex::encode(k.verifying_key().to_key_file())));
    }
    let out = guile(&["acl"], input.as_bytes());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "guile output:\n{out}");
    for (i, k) in keys.iter().enumerate() {
        let expected = if i < 5 { "yes" } else { "no" };
        assert_eq!(lines[i], expected, "Guix's authorized-key? for key {i}");
        assert_eq!(acl.is_authorized(&k.verifying_key().to_sexp()), i < 5);
    }
    // The ACL Guix writes for all eight keys: ferry reads it and writes the same bytes.
    let guix_acl = unhex(lines[8]);
    let parsed = Acl::parse(&guix_acl).unwrap();
    assert_eq!(parsed.keys().len(), 8);
    let mut ours = Acl::new();
    for k in &keys {
        ours.authorize(k.verifying_key().to_sexp()).unwrap();
    }
    assert_eq!(String::from_utf8(ours.to_text()).unwrap(), String::from_utf8(guix_acl).unwrap());
}
