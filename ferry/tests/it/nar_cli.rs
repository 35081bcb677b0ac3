//! The `ferry nar` and `ferry store path` commands as a user runs them: real binary, real files,
//! Debian's Nix as the reference; exit codes 0 (ok), 1 (error), 2 (usage).

use std::path::Path;
use std::process::Command;

use crate::util::{ferry, output_with_stdin, FERRY};

fn sample_tree(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("tree");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    std::fs::write(root.join("README"), b"hello\n").unwrap();
    std::os::unix::fs::symlink("bin/tool", root.join("link")).unwrap();
    root
}

#[test]
fn dump_hash_restore_ls() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let dump = ferry().args(["nar", "dump"]).arg(&tree).output().unwrap();
    assert!(dump.status.success());
    assert!(
        dump.stdout == ferry_tests::nix::dump(&tree),
        "ferry nar dump differs from nix-store --dump"
    );

    let hash = ferry().args(["nar", "hash"]).arg(&tree).output().unwrap();
    assert_eq!(String::from_utf8(hash.stdout).unwrap().trim(), ferry_tests::nix::hash(&tree));
    let hex = ferry().args(["nar", "hash", "--base16"]).arg(&tree).output().unwrap();
    let nix_hex =
        ferry_tests::run_text("nix-hash", &["--type", "sha256", tree.to_str().unwrap()], &[]);
    assert_eq!(String::from_utf8(hex.stdout).unwrap().trim(), nix_hex);

    let out_dir = tmp.path().join("restored");
    let mut restore = ferry();
    restore.args(["nar", "restore"]).arg(&out_dir);
    let restored = output_with_stdin(restore, &dump.stdout);
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert!(ferry_tests::nix::dump(&out_dir) == dump.stdout);

    let mut ls = ferry();
    ls.args(["nar", "ls"]);
    let listing = output_with_stdin(ls, &dump.stdout);
    assert_eq!(
        String::from_utf8(listing.stdout).unwrap(),
        "directory\t-\t-\t/\nregular\t6\t-\t/README\ndirectory\t-\t-\t/bin\nregular\t10\tx\t/bin/tool\nsymlink\t-\t-\t/link -> bin/tool\n"
    );
}

#[test]
fn store_path_matches_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let hash = ferry_tests::nix::hash(&tree);
    for store_dir in ["/gnu/store", "/nix/store"] {
        let ours = ferry()
            .args(["store", "path", "--store-dir", store_dir, "--name", "my-tree"])
            .arg(&tree)
            .output()
            .unwrap();
        assert!(ours.status.success());
        let theirs = ferry_tests::run_text(
            "nix-store",
            &["--print-fixed-path", "--recursive", "sha256", &hash, "my-tree"],
            &[("NIX_STORE_DIR", store_dir)],
        );
        assert_eq!(String::from_utf8(ours.stdout).unwrap().trim(), theirs);
    }
}

#[test]
fn exit_codes_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Usage error: 2.
    let usage = ferry().args(["nar", "frobnicate"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let usage = ferry().args(["nar", "dump"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    // Missing file: 1, naming the file.
    let missing = ferry().args(["nar", "dump"]).arg(tmp.path().join("nope")).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"));
    // A corrupt NAR: 1, with the byte offset, and nothing left behind.
    let mut nar = nar_core::testdata::hello_nar();
    nar[103] = 1; // a padding byte after the contents

    let target = tmp.path().join("out");
    let mut restore = ferry();
    restore.args(["nar", "restore"]).arg(&target);
    let failed = output_with_stdin(restore, &nar);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("at byte 103"), "{stderr}");
    assert!(!target.exists());
    // A FIFO is refused by name.
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let refused = ferry().args(["nar", "dump"]).arg(&fifo).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("fifo") && stderr.contains("FIFO"), "{stderr}");
}

#[test]
fn closed_stdout_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![1u8; 8 << 20]).unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' nar dump '{}' | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}",
            FERRY,
            big.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "0",
        "ferry's exit status when its reader went away"
    );
}
