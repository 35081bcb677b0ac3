//! `ferry copy` into Nix: `--to file:///DIR` makes a cache that Debian's `nix copy --from
//! file://` imports (signed with the local Nix key), and `--to nix+ssh://` (over the loopback
//! sshd) lands paths that `nix-store --store ROOT --verify` accepts.

use std::path::Path;
use std::process::Command;

use ferry_tests::sshd::Sshd;
use ferry_tests::{nix, stdout_ok};
use serde_json::Value;

use crate::util::ferry_in;

fn ferry(root: &Path) -> Command {
    ferry_in(root, "/nix/store")
}

/// Two /nix/store source paths without references (`ferry store add` records a `fixed:r:`
/// content address, which Nix accepts only for paths without references), copied together.
fn local(dir: &Path) -> (std::path::PathBuf, String, Vec<String>) {
    let root = dir.join("local");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("lib"), b"a library\n".repeat(1000)).unwrap();
    std::fs::write(src.join("app/run"), b"#!/bin/sh\necho hi\n").unwrap();
    std::os::unix::fs::symlink("run", src.join("app/link")).unwrap();
    let added =
        stdout_ok(ferry(&root).args(["store", "add"]).arg(src.join("lib")).arg(src.join("app")));
    let paths: Vec<String> = added.lines().map(str::to_owned).collect();
    (root, paths.join(" "), paths)
}

#[test]
fn file_cache_is_accepted_by_nix_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, app, closure) = local(tmp.path());
    let cache = tmp.path().join("cache");
    let out = stdout_ok(
        ferry(&root)
            .args(["copy", "--json", "--to"])
            .arg(format!("file://{}", cache.display()))
            .args(app.split(' ')),
    );
    let json: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["paths_sent"], 2, "{json}");
    let again = stdout_ok(
        ferry(&root)
            .args(["copy", "--json", "--to"])
            .arg(format!("file://{}", cache.display()))
            .args(app.split(' ')),
    );
    let again: Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["paths_sent"], 0, "{again}");
    let pk = std::fs::read_to_string(root.join("var/ferry/nix-signing-key.pub")).unwrap();
    let nix_root = tmp.path().join("nix");
    stdout_ok(
        nix::command("nix")
            .args(["copy", "--from"])
            .arg(format!("file://{}", cache.display()))
            .arg("--to")
            .arg(&nix_root)
            .args(["--option", "trusted-public-keys", pk.trim()])
            .args(app.split(' ')),
    );
    for p in &closure {
        stdout_ok(
            nix::command("nix-store").arg("--store").arg(&nix_root).args(["-q", "--hash", p]),
        );
    }
    stdout_ok(
        nix::command("nix-store")
            .arg("--store")
            .arg(&nix_root)
            .args(["--verify", "--check-contents"]),
    );
}

#[test]
fn nix_ssh_lands_paths_nix_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, app, closure) = local(tmp.path());
    let sshd = Sshd::start();
    let nix_root = tmp.path().join("nixhost");
    let uri =
        format!("nix+ssh://{}@127.0.0.1:{}?root={}", sshd.user(), sshd.port(), nix_root.display());
    let copy = |root: &Path| {
        let out = stdout_ok(
            ferry(root)
                .args(["copy", "--json", "--identity"])
                .arg(sshd.identity_ed25519())
                .arg("--known-hosts")
                .arg(sshd.known_hosts())
                .args(["--to", &uri])
                .args(app.split(' ')),
        );
        serde_json::from_str::<Value>(out.trim()).unwrap()
    };
    let first = copy(&root);
    assert_eq!(first["paths_sent"], 2, "{first}");
    for p in &closure {
        stdout_ok(
            nix::command("nix-store").arg("--store").arg(&nix_root).args(["-q", "--hash", p]),
        );
    }
    stdout_ok(
        nix::command("nix-store")
            .arg("--store")
            .arg(&nix_root)
            .args(["--verify", "--check-contents"]),
    );
    let second = copy(&root);
    assert_eq!(second["paths_sent"], 0, "{second}");

    // And back: --from nix+ssh:// into a fresh ferry store.
    let back = tmp.path().join("back");
    let out = stdout_ok(
        ferry(&back)
            .args(["copy", "--json", "--identity"])
            .arg(sshd.identity_ed25519())
            .arg("--known-hosts")
            .arg(sshd.known_hosts())
            .args(["--from", &uri])
            .args(app.split(' ')),
    );
    let pulled: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(pulled["paths_received"], 2, "{pulled}");
    stdout_ok(ferry(&back).args(["store", "verify", "--check-contents"]));
    for p in &closure {
        stdout_ok(ferry(&back).args(["store", "info", "--hash", p]));
    }
}
