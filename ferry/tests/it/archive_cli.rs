//! `ferry archive` and `ferry store sign` through the real binary, on temp roots only.
//!
//! - Guix bundles: key generation, authorization, signed export and import (round trip), and one
//!   test per rejection (guix-spec §2.5 messages): after each, exit code 1, the items before the
//!   bad one valid, the bad one not, the store clean.
//! - Debian's Nix (`nix-store`, `nix`; CI installs `nix-bin`) on chroot stores (`--store DIR`):
//!   bundles both ways, and `ferry store sign` signatures equal to `nix store sign`'s.
//! - libgcrypt through guile-gcrypt (`guile-3.0 guile-gcrypt`): reads a ferry key and checks a
//!   ferry signature.
//!
//! Missing tools fail the tests with the package to install; they never skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::{ferry_in, output_with_stdin};
use nar_core::store_path::StoreDir;
use signing::bundle::{BundleReader, BundleWriter, ItemMeta};

// ---------------------------------------------------------------------------------------------
// Running things

fn check(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// ferry on a /gnu/store root, no stdin; stdout.
fn ok(root: &Path, args: &[&str]) -> String {
    ok_in(root, "/gnu/store", args)
}

fn ok_in(root: &Path, store_dir: &str, args: &[&str]) -> String {
    let mut cmd = ferry_in(root, store_dir);
    cmd.args(args).stdin(Stdio::null());
    String::from_utf8(check(cmd.output().unwrap(), &format!("ferry {args:?}"))).unwrap()
}

fn ok_bytes(root: &Path, store_dir: &str, args: &[&str]) -> Vec<u8> {
    let mut cmd = ferry_in(root, store_dir);
    cmd.args(args).stdin(Stdio::null());
    check(cmd.output().unwrap(), &format!("ferry {args:?}"))
}

fn ferry_stdin(root: &Path, store_dir: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = ferry_in(root, store_dir);
    cmd.args(args);
    output_with_stdin(cmd, stdin)
}

fn valid_paths(root: &Path) -> Vec<String> {
    if !root.join("var/ferry/db/db.sqlite").exists() {
        return Vec::new();
    }
    ok(root, &["store", "list"]).lines().map(str::to_owned).collect()
}

/// `store verify --check-contents` is clean and nothing is left in the store dir but valid
/// paths.
fn assert_clean(root: &Path, store_dir: &str) {
    ok_in(root, store_dir, &["store", "verify", "--check-contents"]);
    let physical = root.join(store_dir.trim_start_matches('/'));
    if let Ok(entries) = std::fs::read_dir(&physical) {
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with('.'), "leftover {name} in {}", physical.display());
        }
    }
}

fn tool(program: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not on PATH: install it (apt-get install -y {}); these tests do not skip",
        ferry_tests::package_of(program)
    );
    let mut cmd = ferry_tests::tool(program);
    cmd.env("GUILE_AUTO_COMPILE", "0");
    cmd
}

fn tool_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    String::from_utf8(check(out, &format!("{cmd:?}"))).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fixture: a source store with a key and two items, b referring to a

struct Source {
    tmp: tempfile::TempDir,
    root: PathBuf,
    a: String,
    b: String,
}

impl Source {
    fn state(&self) -> PathBuf {
        self.root.join("var/ferry")
    }

    fn public_key(&self) -> Vec<u8> {
        std::fs::read(self.state().join("signing-key.pub")).unwrap()
    }

    /// A fresh root whose ACL authorizes this source's key (or is empty).
    fn target(&self, name: &str, authorize: bool) -> PathBuf {
        let root = self.tmp.path().join(name);
        if authorize {
            check(
                ferry_stdin(&root, "/gnu/store", &["archive", "--authorize"], &self.public_key()),
                "authorize",
            );
        }
        root
    }

    fn physical(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

fn source() -> Source {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("source");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(files.join("b/bin")).unwrap();
    ok(&root, &["archive", "--generate-key"]);
    std::fs::write(files.join("a"), "contents of a\n").unwrap();
    let a = ok(&root, &["store", "add", files.join("a").to_str().unwrap()]).trim().to_owned();
    std::fs::write(files.join("b/bin/run"), format!("#!/bin/sh\nexec {a}\n")).unwrap();
    std::fs::set_permissions(files.join("b/bin/run"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    std::os::unix::fs::symlink("bin/run", files.join("b/link")).unwrap();
    let b = ok(&root, &["store", "add", files.join("b").to_str().unwrap()]).trim().to_owned();
    assert_eq!(ok(&root, &["store", "info", "--references", &b]), format!("{a}\n"));
    Source { tmp, root, a, b }
}

/// Both items, signed with the source's key, written with the signing crate so that `b` can
/// carry a deriver (`ferry store add` records none). Returns the bundle and b's deriver.
fn signed_bundle_with_deriver(src: &Source) -> (Vec<u8>, String) {
    let dir = StoreDir::guix();
    let key =
        signing::keyfile::load_guix_signing_key(&src.state().join("signing-key.sec")).unwrap();
    let deriver = format!("/gnu/store/{}-b.drv", "5".repeat(32));
    let mut writer = BundleWriter::new(Vec::new(), dir.clone());
    for (path, refs, drv) in
        [(&src.a, vec![], None), (&src.b, vec![src.a.clone()], Some(deriver.clone()))]
    {
        let meta = ItemMeta {
            path: dir.parse_path(path).unwrap(),
            references: refs.iter().map(|r| dir.parse_path(r).unwrap()).collect(),
            deriver: drv.map(|d| dir.parse_path(&d).unwrap()),
        };
        let mut nar = Vec::new();
        nar_core::dump::dump(&src.physical(path), &mut nar).unwrap();
        writer.write_signed(&meta, &mut &nar[..], &key).unwrap();
    }
    (writer.finish().unwrap(), deriver)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> usize {
    from + haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Where b's item starts: right after a's trailer (a is the first item).
fn second_item_start(bundle: &[u8]) -> usize {
    let mut reader = BundleReader::new(bundle, StoreDir::guix());
    reader.next_item().unwrap().unwrap();
    reader.offset() as usize
}

/// Replace the hash-part character at `at` by another nix-base32 character.
fn flip_hash_char(bundle: &mut [u8], at: usize) {
    bundle[at] = if bundle[at] == b'0' { b'1' } else { b'0' };
}

/// Import `bundle` into `target` and check the rejection: exit 1, `message` on stderr, a valid,
/// b not valid, the store clean.
fn assert_rejected(src: &Source, target: &Path, bundle: &[u8], args: &[&str], message: &str) {
    let mut all = vec!["archive", "--import"];
    all.extend_from_slice(args);
    let out = ferry_stdin(target, "/gnu/store", &all, bundle);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    assert!(stderr.contains(message), "expected {message:?} in:\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}\n", src.a), "imported before");
    let valid = valid_paths(target);
    assert!(valid.contains(&src.a), "the item before the bad one stays valid");
    assert!(!valid.contains(&src.b), "the bad item is not valid");
    assert_clean(target, "/gnu/store");
}

const TROJAN: &str = "signed hash doesn't match actual contents of imported archive; archive \
                      could be corrupt, or someone is trying to import a Trojan horse";

// ---------------------------------------------------------------------------------------------
// Guix bundles

#[test]
fn guix_round_trip_export_r_import_verify() {
    let src = source();
    let sec = src.state().join("signing-key.sec");
    assert_eq!(std::fs::metadata(&sec).unwrap().permissions().mode() & 0o777, 0o400);
    let again = ferry_in(&src.root, "/gnu/store").args(["archive", "--generate-key"]).output();
    let again = again.unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("key pair exists under"));

    // Without -r only the path given; with -r its closure, references first.
    let only_b = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", &src.b]);
    let mut reader = BundleReader::new(&only_b[..], StoreDir::guix());
    let (item, _) = reader.next_item().unwrap().unwrap();
    assert_eq!(item.info().path.to_absolute(&StoreDir::guix()), src.b);
    assert!(reader.next_item().unwrap().is_none());
    let bundle = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", "-r", &src.b]);

    let target = src.target("target", true);
    let out =
        check(ferry_stdin(&target, "/gnu/store", &["archive", "--import"], &bundle), "import");
    assert_eq!(String::from_utf8(out).unwrap(), format!("{}\n{}\n", src.a, src.b));
    assert_clean(&target, "/gnu/store");
    for p in [&src.a, &src.b] {
        let fields = ["--hash", "--size", "--references", "--deriver"];
        for field in fields {
            assert_eq!(
                ok(&target, &["store", "info", field, p]),
                ok(&src.root, &["store", "info", field, p]),
                "{field} of {p}"
            );
        }
    }
    assert_eq!(valid_paths(&target), valid_paths(&src.root));
    // Importing again is a no-op that succeeds.
    check(ferry_stdin(&target, "/gnu/store", &["archive", "--import"], &bundle), "re-import");
    assert_clean(&target, "/gnu/store");
    // An empty export is just the end marker.
    assert_eq!(ok_bytes(&src.root, "/gnu/store", &["archive", "--export"]), vec![0u8; 8]);
    // The bundle with a deriver imports too, and the deriver is recorded.
    let (with_deriver, deriver) = signed_bundle_with_deriver(&src);
    let target2 = src.target("target2", true);
    check(
        ferry_stdin(&target2, "/gnu/store", &["archive", "--import"], &with_deriver),
        "import with deriver",
    );
    assert_eq!(ok(&target2, &["store", "info", "--deriver", &src.b]), format!("{deriver}\n"));
}

#[test]
fn large_item_streams_through_export_and_import() {
    let src = source();
    // 24 MiB of incompressible-looking bytes, in a tree with the small items.
    let big = src.tmp.path().join("big");
    std::fs::create_dir(&big).unwrap();
    let mut data = Vec::with_capacity(24 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < 24 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(big.join("blob"), &data).unwrap();
    std::fs::write(big.join("uses"), &src.b).unwrap();
    let path = ok(&src.root, &["store", "add", big.to_str().unwrap()]).trim().to_owned();
    let bundle = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", "-r", &path]);
    let target = src.target("target", true);
    let out =
        check(ferry_stdin(&target, "/gnu/store", &["archive", "--import"], &bundle), "import");
    assert_eq!(String::from_utf8(out).unwrap(), format!("{}\n{}\n{path}\n", src.a, src.b));
    assert_clean(&target, "/gnu/store");
    assert_eq!(
        std::fs::read(target.join(path.trim_start_matches('/')).join("blob")).unwrap(),
        data
    );
}

#[test]
fn export_refuses_a_path_changed_on_disk() {
    let src = source();
    let file = src.physical(&src.a);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&file, "contents of A\n").unwrap();
    let out = ferry_in(&src.root, "/gnu/store")
        .args(["archive", "--export", "-r", &src.b])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("hash of path `{}' has changed from", src.a)), "{stderr}");
    // What was written stops inside the item: no importer accepts it.
    let target = src.target("target", true);
    let out = ferry_stdin(&target, "/gnu/store", &["archive", "--import"], &out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(valid_paths(&target).is_empty());
    assert_clean(&target, "/gnu/store");
    // An invalid path is refused by name.
    let bogus = format!("/gnu/store/{}-bogus", "0".repeat(32));
    let out = ferry_in(&src.root, "/gnu/store").args(["archive", "--export", &bogus]).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("path `{bogus}' is not valid")));
}

#[test]
fn eddsa_key_and_acl_bootstrap_from_own_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("eddsa");
    ok(&root, &["archive", "--generate-key=(genkey (ecc (curve Ed25519) (flags eddsa)))"]);
    let public = std::fs::read_to_string(root.join("var/ferry/signing-key.pub")).unwrap();
    assert!(public.contains("(flags eddsa)"), "{public}");
    let file = tmp.path().join("f");
    std::fs::write(&file, "f\n").unwrap();
    let path = ok(&root, &["store", "add", file.to_str().unwrap()]).trim().to_owned();
    let bundle = ok_bytes(&root, "/gnu/store", &["archive", "--export", &path]);
    assert!(String::from_utf8_lossy(&bundle).contains("(eddsa"), "signed with EdDSA");
    // A host with the same key pair and no ACL trusts its own key (Guix's ensure-acl).
    let host = tmp.path().join("host");
    let state = host.join("var/ferry");
    std::fs::create_dir_all(&state).unwrap();
    for f in ["signing-key.pub", "signing-key.sec"] {
        std::fs::copy(root.join("var/ferry").join(f), state.join(f)).unwrap();
    }
    assert!(!state.join("acl").exists());
    let out = check(ferry_stdin(&host, "/gnu/store", &["archive", "--import"], &bundle), "import");
    assert_eq!(String::from_utf8(out).unwrap(), format!("{path}\n"));
    let acl = std::fs::read_to_string(state.join("acl")).unwrap();
    assert!(acl.starts_with("(acl \n (entry \n  (public-key ") && acl.contains("(guix import)"));
    // Authorizing the same key again leaves the ACL as it is.
    check(
        ferry_stdin(&host, "/gnu/store", &["archive", "--authorize"], public.as_bytes()),
        "authorize",
    );
    assert_eq!(std::fs::read_to_string(state.join("acl")).unwrap(), acl);
}

#[test]
fn reject_no_signature() {
    let src = source();
    // a signed, then b unsigned (the Nix form), spliced into one bundle.
    let a = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", &src.a]);
    let b = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", "--format", "nix", &src.b]);
    let bundle = [&a[..a.len() - 8], &b[..]].concat();
    let target = src.target("target", true);
    let message = format!("imported archive of `{}' lacks a signature", src.b);
    assert_rejected(&src, &target, &bundle, &[], &message);
    // `--format nix` without --no-check-sigs refuses it too, with a hint.
    let target = src.target("target-nix", true);
    assert_rejected(&src, &target, &bundle, &["--format", "nix"], "--no-check-sigs");
    // And --no-check-sigs is refused for Guix bundles (usage error).
    let out = ferry_stdin(&target, "/gnu/store", &["archive", "--import", "--no-check-sigs"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn reject_unauthorized_key() {
    let src = source();
    // A second source with the same items (content-addressed) and another key.
    let other = src.tmp.path().join("other");
    ok(&other, &["archive", "--generate-key"]);
    for p in [&src.a, &src.b] {
        let bundle = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", p]);
        let own = std::fs::read(src.state().join("signing-key.pub")).unwrap();
        check(ferry_stdin(&other, "/gnu/store", &["archive", "--authorize"], &own), "auth");
        check(ferry_stdin(&other, "/gnu/store", &["archive", "--import"], &bundle), "copy");
    }
    let a = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", &src.a]);
    let b = ok_bytes(&other, "/gnu/store", &["archive", "--export", &src.b]);
    let bundle = [&a[..a.len() - 8], &b[..]].concat();
    let target = src.target("target", true);
    assert_rejected(&src, &target, &bundle, &[], "unauthorized public key: (public-key");
    // With an empty ACL even the first item is refused.
    let empty = src.target("empty", false);
    let out = ferry_stdin(&empty, "/gnu/store", &["archive", "--import"], &bundle);
    assert_eq!(out.status.code(), Some(1));
    assert!(valid_paths(&empty).is_empty());
}

fn hash_mismatch(flip: impl FnOnce(&mut Vec<u8>, &Source, &str, usize)) {
    let src = source();
    let (mut bundle, deriver) = signed_bundle_with_deriver(&src);
    // The unmodified bundle imports.
    let sane = src.target("sane", true);
    check(ferry_stdin(&sane, "/gnu/store", &["archive", "--import"], &bundle), "sane import");
    let start = second_item_start(&bundle);
    flip(&mut bundle, &src, &deriver, start);
    let target = src.target("target", true);
    assert_rejected(&src, &target, &bundle, &[], TROJAN);
}

#[test]
fn reject_hash_mismatch_in_nar() {
    hash_mismatch(|bundle, _, _, start| {
        let at = find(bundle, b"#!/bin/sh", start);
        bundle[at + 2] = b'?';
    });
}

#[test]
fn reject_hash_mismatch_in_path() {
    hash_mismatch(|bundle, src, _, start| {
        let at = find(bundle, src.b.as_bytes(), start);
        flip_hash_char(bundle, at + "/gnu/store/".len() + 5);
    });
}

#[test]
fn reject_hash_mismatch_in_references() {
    hash_mismatch(|bundle, src, _, start| {
        let path_at = find(bundle, src.b.as_bytes(), start);
        let at = find(bundle, src.a.as_bytes(), path_at);
        flip_hash_char(bundle, at + "/gnu/store/".len() + 5);
    });
}

#[test]
fn reject_hash_mismatch_in_deriver() {
    hash_mismatch(|bundle, _, deriver, start| {
        let at = find(bundle, deriver.as_bytes(), start);
        flip_hash_char(bundle, at + "/gnu/store/".len() + 5);
    });
}

#[test]
fn reject_invalid_signature() {
    let src = source();
    let mut bundle = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", "-r", &src.b]);
    let start = second_item_start(&bundle);
    // The last hex digit of r in b's signature: same key, same hash, wrong value.
    let r_at = find(&bundle, b"(r #", start);
    let end = find(&bundle, b"#", r_at + 4);
    let digit = &mut bundle[end - 1];
    *digit = if *digit == b'0' { b'1' } else { b'0' };
    let target = src.target("target", true);
    assert_rejected(&src, &target, &bundle, &[], "invalid signature: (signature");
}

#[test]
fn reject_truncated_bundle() {
    let src = source();
    let bundle = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", "-r", &src.b]);
    let start = second_item_start(&bundle);
    let cut = find(&bundle, b"#!/bin/sh", start) + 4;
    let target = src.target("target", true);
    assert_rejected(&src, &target, &bundle[..cut], &[], &format!("bundle truncated at byte {cut}"));
    // Cut inside the trailer (the signature) as well.
    let target = src.target("target2", true);
    let cut = bundle.len() - 100;
    assert_rejected(&src, &target, &bundle[..cut], &[], "bundle truncated at byte");
}

#[test]
fn reject_missing_reference() {
    let src = source();
    // a, then b without a being... : a third item c refers to nothing; b's reference a is
    // missing from the bundle and from the target.
    let files = src.tmp.path().join("c");
    std::fs::write(&files, "c\n").unwrap();
    let c = ok(&src.root, &["store", "add", files.to_str().unwrap()]).trim().to_owned();
    let first = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", &c]);
    let second = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", &src.b]);
    let bundle = [&first[..first.len() - 8], &second[..]].concat();
    let target = src.target("target", true);
    let out = ferry_stdin(&target, "/gnu/store", &["archive", "--import"], &bundle);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("path ‘{}’ is not valid", src.a)), "{stderr}");
    assert_eq!(valid_paths(&target), vec![c], "the item before stays valid");
    assert_clean(&target, "/gnu/store");
}

#[test]
fn reject_world_readable_secret_key() {
    let src = source();
    let sec = src.state().join("signing-key.sec");
    std::fs::set_permissions(&sec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ferry_in(&src.root, "/gnu/store")
        .args(["archive", "--export", "-r", &src.b])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let message =
        format!("file `{}' should be secret (inaccessible to everybody else)!", sec.display());
    assert!(stderr.contains(&message), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is exported");
    // The same rule for Nix keys in `store sign`.
    ok(&src.root, &["archive", "--generate-key=nix:test-1"]);
    let nix_sec = src.state().join("nix-signing-key.sec");
    std::fs::set_permissions(&nix_sec, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = ferry_in(&src.root, "/gnu/store")
        .args(["store", "sign", "--key-file", nix_sec.to_str().unwrap(), &src.a])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("should be secret"));
    assert!(!ok(&src.root, &["store", "info", &src.a]).contains("sig:"));
}

#[test]
fn guix_key_is_read_by_libgcrypt_which_accepts_a_ferry_signature() {
    let src = source();
    let bundle = ok_bytes(&src.root, "/gnu/store", &["archive", "--export", &src.a]);
    let mut reader = BundleReader::new(&bundle[..], StoreDir::guix());
    let (item, _) = reader.next_item().unwrap().unwrap();
    let sig = String::from_utf8(item.signature_text().unwrap().to_vec()).unwrap();
    let export_hash = item.info().export_hash.to_hex();
    let script = r#"
(use-modules (gcrypt pk-crypto) (gcrypt base16) (ice-9 textual-ports))
(define (slurp f) (call-with-input-file f get-string-all))
(define args (cdr (command-line)))
(define pub (string->canonical-sexp (slurp (car args))))
(define sec (string->canonical-sexp (slurp (cadr args))))
(define sig (string->canonical-sexp (slurp (caddr args))))
(define data (find-sexp-token sig 'data))
;; libgcrypt verifies ferry's signature with ferry's public key file...
(display (verify (find-sexp-token sig 'sig-val) data pub)) (newline)
;; ...and signs the same hash with ferry's secret key file: RFC 6979, so the same value.
(display (canonical-sexp->string (sign data sec))) (newline)
(display (bytevector->base16-string
          (canonical-sexp-nth-data (find-sexp-token data 'hash) 2))) (newline)
"#;
    let dir = src.tmp.path();
    std::fs::write(dir.join("check.scm"), script).unwrap();
    std::fs::write(dir.join("sig"), &sig).unwrap();
    let out = tool_ok(
        tool("guile")
            .arg(dir.join("check.scm"))
            .arg(src.state().join("signing-key.pub"))
            .arg(src.state().join("signing-key.sec"))
            .arg(dir.join("sig")),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "#t", "libgcrypt rejected ferry's signature:\n{out}");
    let ours = signing::Sexp::parse(sig.as_bytes()).unwrap();
    let ours = ours.find_token("sig-val").unwrap().to_advanced_string();
    assert!(out.contains(&export_hash), "the signed hash is the export hash:\n{out}");
    assert!(
        out.replace(['\n', ' '], "").contains(&ours.replace(['\n', ' '], "")),
        "libgcrypt's signature with ferry's key equals ferry's:\n{out}\nours:\n{ours}"
    );
}

// ---------------------------------------------------------------------------------------------
// Debian's Nix

fn nix_store(store: &Path, args: &[&str]) -> String {
    tool_ok(tool("nix-store").arg("--store").arg(store).args(args))
}

/// A Nix chroot store with a source tree and a text file referring to it (made by Nix
/// itself), plus the requisites of the text file.
struct NixStore {
    store: PathBuf,
    src: String,
    text: String,
}

fn nix_fixture(tmp: &Path) -> NixStore {
    let store = tmp.join("nix");
    let tree = tmp.join("tree");
    ferry_tests::write_sample_tree(&tree);
    let (src, text) = ferry_tests::nix::tree_and_referrer(&store, &tree, "tree");
    NixStore { store, src, text }
}

#[test]
fn nix_store_export_imports_into_ferry() {
    let tmp = tempfile::tempdir().unwrap();
    let nix = nix_fixture(tmp.path());
    let requisites = nix_store(&nix.store, &["-qR", &nix.text]);
    let mut args = vec!["--export"];
    args.extend(requisites.lines());
    let bundle = tool_ok(tool("nix-store").arg("--store").arg(&nix.store).args(&args));
    let bundle = bundle.into_bytes();
    let root = tmp.path().join("ferry");
    // Unsigned: refused without the explicit flag.
    let out =
        ferry_stdin(&root, "/nix/store", &["archive", "--import", "--format", "nix"], &bundle);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks a signature"));
    let out = ferry_stdin(
        &root,
        "/nix/store",
        &["archive", "--import", "--format", "nix", "--no-check-sigs"],
        &bundle,
    );
    let imported = String::from_utf8(check(out, "import nix bundle")).unwrap();
    assert_eq!(imported, format!("{}\n{}\n", nix.src, nix.text));
    assert_clean(&root, "/nix/store");
    // ferry exports from Nix's store in place (read-only), byte for byte as nix-store does.
    let ours = ok_bytes(
        &nix.store,
        "/nix/store",
        &["archive", "--export", "--format", "nix", "-r", &nix.text],
    );
    assert_eq!(ours, bundle);
    for p in [&nix.src, &nix.text] {
        for field in ["--hash", "--size", "--references"] {
            assert_eq!(
                ok_in(&root, "/nix/store", &["store", "info", field, p]),
                nix_store(&nix.store, &["-q", field, p]),
                "{field} of {p}"
            );
        }
    }
}

#[test]
fn ferry_nix_export_imports_into_nix_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ferry");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(files.join("lib")).unwrap();
    std::fs::write(files.join("lib/libx.so"), b"\x7fELF not really\0\x01").unwrap();
    let lib = ok_in(&root, "/nix/store", &["store", "add", files.join("lib").to_str().unwrap()]);
    let lib = lib.trim().to_owned();
    std::fs::write(files.join("app"), format!("#!/bin/sh\nLD_LIBRARY_PATH={lib}/lib\n")).unwrap();
    let app = ok_in(&root, "/nix/store", &["store", "add", files.join("app").to_str().unwrap()]);
    let app = app.trim().to_owned();
    let bundle =
        ok_bytes(&root, "/nix/store", &["archive", "--export", "--format", "nix", "-r", &app]);
    let nix = tmp.path().join("nix");
    let mut cmd = tool("nix-store");
    cmd.arg("--store").arg(&nix).arg("--import");
    let imported = String::from_utf8(check(output_with_stdin(cmd, &bundle), "nix-store --import"));
    assert_eq!(imported.unwrap(), format!("{lib}\n{app}\n"));
    nix_store(&nix, &["--verify-path", &lib]);
    nix_store(&nix, &["--verify-path", &app]);
    nix_store(&nix, &["--check-validity", &lib, &app]);
    assert_eq!(nix_store(&nix, &["-q", "--references", &app]), format!("{lib}\n"));
    for field in ["--hash", "--size"] {
        assert_eq!(
            nix_store(&nix, &["-q", field, &app]),
            ok_in(&root, "/nix/store", &["store", "info", field, &app])
        );
    }
    // And Nix's own export of those paths is byte-identical to ferry's.
    let theirs = tool_ok(tool("nix-store").arg("--store").arg(&nix).args(["--export", &lib, &app]));
    assert_eq!(theirs.into_bytes(), bundle);
}

#[test]
fn store_sign_matches_nix_store_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let nix = nix_fixture(tmp.path());
    // The same paths (with the reference) in a ferry store.
    let requisites = nix_store(&nix.store, &["-qR", &nix.text]);
    let mut args = vec!["--export"];
    args.extend(requisites.lines());
    let bundle = tool_ok(tool("nix-store").arg("--store").arg(&nix.store).args(&args));
    let root = tmp.path().join("ferry");
    check(
        ferry_stdin(
            &root,
            "/nix/store",
            &["archive", "--import", "--format", "nix", "--no-check-sigs"],
            bundle.as_bytes(),
        ),
        "import",
    );
    // A key from Nix, and one from ferry.
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (sk, pk) = (keys.join("sk"), keys.join("pk"));
    tool_ok(
        tool("nix-store").args(["--generate-binary-cache-key", "test-cache-1"]).arg(&sk).arg(&pk),
    );
    std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ferry_pk = ok_in(&root, "/nix/store", &["archive", "--generate-key=nix:ferry-cache-1"]);
    let ferry_sk = root.join("var/ferry/nix-signing-key.sec");
    assert_eq!(
        std::fs::read_to_string(root.join("var/ferry/nix-signing-key.pub")).unwrap(),
        ferry_pk.trim()
    );

    for key in [&sk, &ferry_sk] {
        let key = key.to_str().unwrap();
        ok_in(&root, "/nix/store", &["store", "sign", "--key-file", key, &nix.text, &nix.src]);
        tool_ok(
            tool("nix")
                .args(["--extra-experimental-features", "nix-command", "store", "sign"])
                .arg("--store")
                .arg(&nix.store)
                .args(["--key-file", key, &nix.text, &nix.src]),
        );
    }
    // Signing twice adds nothing.
    let sk_str = sk.to_str().unwrap();
    ok_in(&root, "/nix/store", &["store", "sign", "--key-file", sk_str, "-r", &nix.text]);
    for p in [&nix.src, &nix.text] {
        let theirs = tool_ok(
            tool("nix")
                .args(["--extra-experimental-features", "nix-command", "path-info", "--sigs"])
                .arg("--store")
                .arg(&nix.store)
                .arg(p),
        );
        let mut theirs: Vec<String> = theirs
            .split_whitespace()
            .skip(1)
            .filter(|t| !t.starts_with("ca:"))
            .map(str::to_owned)
            .collect();
        let mut ours: Vec<String> = ok_in(&root, "/nix/store", &["store", "info", p])
            .lines()
            .filter_map(|l| l.strip_prefix("sig: ").map(str::to_owned))
            .collect();
        assert_eq!(ours.len(), 2, "{ours:?}");
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "signatures of {p}");
    }
    // Nix checks the signatures made with ferry's key against ferry's public key file.
    tool_ok(
        tool("nix")
            .args(["--extra-experimental-features", "nix-command", "store", "verify"])
            .arg("--store")
            .arg(&nix.store)
            .args(["--sigs-needed", "1", "--trusted-public-keys", ferry_pk.trim(), &nix.text]),
    );
    // Nix public keys are accepted by --authorize into trusted-public-keys.
    check(
        ferry_stdin(&root, "/nix/store", &["archive", "--authorize"], ferry_pk.as_bytes()),
        "authorize nix key",
    );
    let trusted = std::fs::read_to_string(root.join("var/ferry/trusted-public-keys")).unwrap();
    assert_eq!(trusted, ferry_pk);
}
