//! `ferry copy --from ssh://` against Debian's OpenSSH on loopback (the `ferry_tests::sshd`
//! fixture): the host's agent sends the closure back on the same connection, and the local
//! store accepts it only when the host's key is in the local ACL, exactly as a host checks a
//! push. A refused pull leaves nothing valid; an accepted one verifies clean; a second pull
//! receives nothing; a path the host lacks is a clear error.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{ferry, ferry_dir, ok, FERRY};

/// The host's store: `top` → {`big` (2 MiB), `base`}, `big` → `base`.
fn host_store(dir: &Path) -> (PathBuf, String) {
    let root = dir.join("host");
    let r = root.to_str().unwrap().to_owned();
    let src = dir.join("src");
    let (base, big) = ferry_tests::add_base_and_big(FERRY, &root, &src, 11);
    std::fs::create_dir_all(src.join("top")).unwrap();
    std::fs::write(src.join("top/refs"), format!("{base}\n{big}\n")).unwrap();
    let top = ok(&["--root", &r, "store", "add", src.join("top").to_str().unwrap()]);
    (root, top.trim().to_owned())
}

fn pull(sshd: &Sshd, host: &Path, local: &Path, paths: &[&str]) -> (Output, Value) {
    let uri = format!("ssh://{}@127.0.0.1:{}?root={}", sshd.user(), sshd.port(), host.display());
    let mut args: Vec<String> = vec![
        "--root".into(),
        local.display().to_string(),
        "copy".into(),
        "--json".into(),
        "--identity".into(),
        sshd.identity_ed25519().display().to_string(),
        "--known-hosts".into(),
        sshd.known_hosts().display().to_string(),
        "--from".into(),
        uri,
    ];
    args.extend(paths.iter().map(|p| p.to_string()));
    let out = ferry().args(&args).output().unwrap();
    eprintln!("pull: {}", String::from_utf8_lossy(&out.stderr));
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, json)
}

fn authorize(root: &Path, public_key: &Path) {
    let mut child = ferry()
        .args(["--root", root.to_str().unwrap(), "archive", "--authorize"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&std::fs::read(public_key).unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn pull_over_ssh_checks_the_local_acl_and_lands_the_closure() {
    let dir = tempfile::tempdir().unwrap();
    let (host, top) = host_store(dir.path());
    let local = dir.path().join("local");
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&ferry_dir()])),
        ..SshdOptions::default()
    });
    let closure: BTreeSet<String> =
        ok(&["--root", host.to_str().unwrap(), "gc", "--requisites", &top])
            .lines()
            .map(str::to_owned)
            .collect();
    assert_eq!(closure.len(), 3);

    // The host's key is not trusted here: every path is refused, nothing becomes valid.
    let (out, json) = pull(&sshd, &host, &local, &[&top]);
    assert!(!out.status.success(), "{json}");
    assert_eq!(json["paths_received"], 0, "{json}");
    assert_eq!(json["paths_rejected"], 3, "{json}");
    for r in json["rejected"].as_array().unwrap() {
        assert_eq!(r["reason"], "unauthorized-key", "{json}");
    }
    assert!(ferry_tests::store_paths(FERRY, &local).is_empty());

    // Trust the host's key (made by its agent on the first send): the closure lands.
    authorize(&local, &host.join("var/ferry/signing-key.pub"));
    let (out, json) = pull(&sshd, &host, &local, &[&top]);
    assert!(out.status.success(), "{json}\n{}", sshd.log());
    assert_eq!(json["paths_received"], 3, "{json}");
    assert_eq!(ferry_tests::store_paths(FERRY, &local), closure);
    ok(&["--root", local.to_str().unwrap(), "store", "verify", "--check-contents"]);

    // Nothing left to receive.
    let (out, json) = pull(&sshd, &host, &local, &[&top]);
    assert!(out.status.success());
    assert_eq!(json["paths_received"], 0, "{json}");

    // A path the host does not have: a clear error naming it.
    let absent = format!("{}/{}-absent", "/gnu/store", "0".repeat(32));
    let (out, _) = pull(&sshd, &host, &local, &[&absent]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent"), "{stderr}");
}
