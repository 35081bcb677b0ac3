//! `sudo -n` before the agent, for real: a loopback OpenSSH server (`ferry_tests::sshd`) that
//! logs in a user other than root, whose agent runs as root through the host's `sudo`.
//!
//! The users come from `.ci/sudo-users` (run by `.ci/run` as root): `ferry-ci` may run anything
//! with `sudo -n`, `ferry-nosudo` may not. A test whose user does not exist prints a `SKIP` line
//! saying so and passes; tests never create users.
//!
//! No test writes into the machine's own store: the host store is a root-owned directory in the
//! fixture's temp dir, chosen with `?root=DIR&sudo=1` (deploy: `root = DIR`, `sudo = true`), so
//! the agent still goes through sudo.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_tests::sshd::{user_exists, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{coordinator, ferry, ferry_dir};

const SUDO_USER: &str = "ferry-ci";
const NO_SUDO_USER: &str = "ferry-nosudo";

fn ok(args: &[&str]) -> String {
    let out = ferry().args(args).output().unwrap();
    assert!(out.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `false` after printing a SKIP line (uncaptured) when `user` does not exist here.
fn have_user(test: &str, user: &str) -> bool {
    if user_exists(user) {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIP copy_sudo::{test}: no user {user} on this machine (make it as root with \
         `bash .ci/sudo-users`)"
    );
    false
}

/// A local store with a closure of two paths; the top one's path.
fn local(dir: &Path) -> (PathBuf, String) {
    let root = dir.join("local");
    let r = root.to_str().unwrap();
    let src = dir.join("src");
    fs::create_dir_all(src.join("top")).unwrap();
    fs::write(src.join("base"), b"base\n").unwrap();
    let base = ok(&["--root", r, "store", "add", src.join("base").to_str().unwrap()]);
    fs::write(src.join("top/blob"), ferry_tests::pseudo_random(9, 256 << 10)).unwrap();
    fs::write(src.join("top/ref"), base.trim()).unwrap();
    let top = ok(&["--root", r, "store", "add", src.join("top").to_str().unwrap()]);
    (root, top.trim().to_owned())
}

fn copy(local: &Path, sshd: &Sshd, uri: &str, top: &str) -> (Output, Value) {
    let out = ferry()
        .arg("--root")
        .arg(local)
        .args(["copy", "--json", "--authorize", "--identity"])
        .arg(sshd.identity_ed25519())
        .arg("--known-hosts")
        .arg(sshd.known_hosts())
        .args(["--to", uri, top])
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, json)
}

/// Every file, directory and symlink under `dir` (itself included), with its owner's uid.
fn owners(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    let meta = fs::symlink_metadata(dir).unwrap();
    out.push((dir.to_owned(), meta.uid()));
    if meta.is_dir() {
        for entry in fs::read_dir(dir).unwrap() {
            owners(&entry.unwrap().path(), out);
        }
    }
}

fn uid_of(user: &str) -> u32 {
    ferry_tests::run_text("id", &["-u", user], &[]).parse().unwrap()
}

#[test]
fn copy_as_a_sudo_user_uploads_the_agent_and_writes_as_root() {
    if !have_user("copy_as_a_sudo_user_uploads_the_agent_and_writes_as_root", SUDO_USER) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (local, top) = local(dir.path());
    // No ferry on the user's PATH: the agent is uploaded to its ~/.cache/ferry, then run
    // with `sudo -n`.
    let sshd =
        Sshd::start_with(SshdOptions { user: Some(SUDO_USER.into()), ..SshdOptions::default() });
    let host = sshd.dir().join("host");
    let uri = format!("ssh://{SUDO_USER}@127.0.0.1:{}?root={}&sudo=1", sshd.port(), host.display());
    let (out, json) = copy(&local, &sshd, &uri, &top);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
    assert_eq!(json["paths_sent"], 2, "{json}");

    let uploaded = sshd.home().join(".cache/ferry/agent").join(super::agent_upload::agent_name());
    let meta = fs::metadata(&uploaded)
        .unwrap_or_else(|e| panic!("the agent was not uploaded to {}: {e}", uploaded.display()));
    assert_eq!(meta.uid(), uid_of(SUDO_USER), "the upload is the login user's");

    ok(&["--root", host.to_str().unwrap(), "store", "verify", "--check-contents"]);
    let listed = ok(&["--root", host.to_str().unwrap(), "store", "list"]);
    assert!(listed.lines().any(|l| l == top), "{listed}");
    let mut all = Vec::new();
    owners(&host, &mut all);
    assert!(all.len() > 5, "{all:?}");
    let not_root: Vec<_> = all.iter().filter(|(_, uid)| *uid != 0).collect();
    assert!(not_root.is_empty(), "written by the agent, so owned by root: {not_root:?}");

    // The same again: nothing to send, the uploaded agent is found and reused.
    let (out, json) = copy(&local, &sshd, &uri, &top);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json["paths_sent"], 0, "{json}");
}

#[test]
fn a_user_without_password_less_sudo_is_told_so() {
    if !have_user("a_user_without_password_less_sudo_is_told_so", NO_SUDO_USER) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (local, top) = local(dir.path());
    let sshd =
        Sshd::start_with(SshdOptions { user: Some(NO_SUDO_USER.into()), ..SshdOptions::default() });
    let host = sshd.dir().join("host");
    let uri =
        format!("ssh://{NO_SUDO_USER}@127.0.0.1:{}?root={}&sudo=1", sshd.port(), host.display());
    let (out, _) = copy(&local, &sshd, &uri, &top);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`sudo -n`, which needs password-less sudo for user {NO_SUDO_USER} on that host"
        )) && stderr.contains("a password is required"),
        "{stderr}"
    );
    assert!(!stderr.to_lowercase().contains("protocol"), "{stderr}");
    // Refused before anything was uploaded or written.
    assert!(!host.exists());
    assert!(!sshd.home().join(".cache/ferry").exists());
}

#[test]
fn deploy_as_a_sudo_user() {
    if !have_user("deploy_as_a_sudo_user", SUDO_USER) {
        return;
    }
    let dir = crate::util::coordinator_dir();
    let d = dir.path();
    crate::util::hello_package(d);
    // The build's ferry on PATH when the user can reach it (else it is uploaded).
    let ferry_dir = ferry_dir();
    let sshd = Sshd::start_with(SshdOptions {
        user: Some(SUDO_USER.into()),
        path: Some(ferry_tests::sshd::remote_path(&[&ferry_dir])),
        ..SshdOptions::default()
    });
    let root = sshd.dir().join("root");
    let file = d.join("deploy.toml");
    fs::write(
        &file,
        format!(
            "[operating-system.base]\npackages = [\"./pkgs/hello\"]\nfiles = {{ motd = \"hi\" }}\n\
             services = [{{ name = \"hello\", start = 'hello web > \"$FERRY_ROOT/var/hello.txt\"' }}]\n\
             [[machine]]\nname = \"m\"\noperating-system = \"base\"\n\
             [machine.configuration]\nhost-name = \"127.0.0.1\"\nport = {}\nuser = \"{SUDO_USER}\"\n\
             identity = \"{}\"\nhost-key = \"{}\"\nroot = \"{}\"\nsudo = true\n\
             confirm-timeout = 20\n",
            sshd.port(),
            sshd.identity_ed25519().display(),
            sshd.host_key(),
            root.display()
        ),
    )
    .unwrap();
    let out = coordinator(d).arg("deploy").arg(&file).arg("--json").output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", sshd.log());
    let json: Value = serde_json::from_str(stdout.trim()).unwrap();
    let m = &json["machines"][0];
    assert_eq!(m["success"], true, "{json}\n{stderr}");
    assert_eq!(m["generation"], 1, "{json}");
    assert_eq!(fs::read_to_string(root.join("var/hello.txt")).unwrap(), "Hello, web\n");
    assert_eq!(fs::read_to_string(root.join("etc/motd")).unwrap(), "hi");
    ok(&["--root", root.to_str().unwrap(), "store", "verify", "--check-contents"]);
    // The activation and the service ran as root.
    for p in [root.join("var/hello.txt"), root.join("var/ferry/profiles")] {
        assert_eq!(fs::symlink_metadata(&p).unwrap().uid(), 0, "{}", p.display());
    }
}
