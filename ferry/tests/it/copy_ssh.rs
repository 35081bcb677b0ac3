//! `ferry copy --to ssh://` against Debian's OpenSSH on loopback (the `ferry_tests::sshd`
//! fixture): copies to one and several hosts (separate roots), a no-op second copy, agent
//! bootstrap by upload when the host has no ferry, a wrong host key, and dropped connections
//! mid-copy followed by a copy that sends only what was missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{ferry, ferry_dir, ok, FERRY};

struct Local {
    _dir: tempfile::TempDir,
    root: PathBuf,
    top: String,
}

/// A closure of three paths, one of them 2 MiB.
fn local() -> Local {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let (_, top) = ferry_tests::add_base_and_big(FERRY, &root, &dir.path().join("src"), 5);
    Local { _dir: dir, root, top }
}

fn ssh_uri(sshd: &Sshd, root: &Path) -> String {
    format!("ssh://{}@127.0.0.1:{}?root={}", sshd.user(), sshd.port(), root.display())
}

fn copy(l: &Local, sshd: &Sshd, hosts: &[&Path], extra: &[&str]) -> (Output, Value) {
    let mut args: Vec<String> = vec![
        "--root".into(),
        l.root.display().to_string(),
        "copy".into(),
        "--json".into(),
        "--identity".into(),
        sshd.identity_ed25519().display().to_string(),
        "--known-hosts".into(),
        sshd.known_hosts().display().to_string(),
    ];
    for h in hosts {
        args.push("--to".into());
        args.push(ssh_uri(sshd, h));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(l.top.clone());
    let t = std::time::Instant::now();
    let out = ferry().args(&args).output().unwrap();
    eprintln!("copy took {:?}: {}", t.elapsed(), String::from_utf8_lossy(&out.stderr));
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, json)
}

#[test]
fn copy_over_ssh_to_several_hosts_then_nothing_to_send() {
    let l = local();
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&ferry_dir()])),
        ..SshdOptions::default()
    });
    let hosts = tempfile::tempdir().unwrap();
    let (h1, h2) = (hosts.path().join("h1"), hosts.path().join("h2"));
    let (out, json) = copy(&l, &sshd, &[&h1, &h2], &["--authorize"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
    assert_eq!(json["paths_sent"], 4, "{json}");
    let closure: BTreeSet<String> =
        ok(&["--root", l.root.to_str().unwrap(), "gc", "--requisites", &l.top])
            .lines()
            .map(str::to_owned)
            .collect();
    for h in [&h1, &h2] {
        assert_eq!(ferry_tests::store_paths(FERRY, h), closure);
        ferry_tests::assert_store_verifies(FERRY, h);
    }
    let (out, json) = copy(&l, &sshd, &[&h1, &h2], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json["paths_sent"], 0, "{json}");
    assert_eq!(json["nar_bytes_sent"], 0);
    for host in json["hosts"].as_array().unwrap() {
        assert_eq!(host["diff_round_trips"], 1);
    }
}

#[test]
fn bootstrap_uploads_the_agent_when_the_host_has_none() {
    let l = local();
    let home = tempfile::tempdir().unwrap();
    let sshd = Sshd::start_with(SshdOptions {
        extra_config: vec![format!("SetEnv HOME={}", home.path().display())],
        ..SshdOptions::default()
    });
    let hosts = tempfile::tempdir().unwrap();
    let h = hosts.path().join("h");
    let (out, json) = copy(&l, &sshd, &[&h], &["--authorize"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
    assert_eq!(json["paths_sent"], 2, "{json}");
    let uploaded = home.path().join(format!(".cache/ferry/ferry-{}", env!("CARGO_PKG_VERSION")));
    assert!(uploaded.exists(), "the agent was not uploaded to {}", uploaded.display());
    ferry_tests::assert_store_verifies(FERRY, &h);
}

#[test]
fn wrong_host_key_is_refused_showing_both_keys() {
    let l = local();
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&ferry_dir()])),
        ..SshdOptions::default()
    });
    let other = Sshd::start();
    let hosts = tempfile::tempdir().unwrap();
    let h = hosts.path().join("h");
    let (out, _) = copy(&l, &sshd, &[&h], &["--authorize", "--host-key", other.host_key()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let key_b64 = |k: &str| k.split_whitespace().nth(1).unwrap().to_owned();
    assert!(err.contains(&key_b64(other.host_key())), "{err}");
    assert!(err.contains(&key_b64(sshd.host_key())), "{err}");
    assert!(ferry_tests::store_paths(FERRY, &h).is_empty());
}

/// Drop every SSH connection at several moments of a copy; after each the host verifies, and
/// the next copy sends exactly what was missing.
#[test]
fn dropped_connections_then_complete_copy() {
    let l = local();
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&ferry_dir()])),
        ..SshdOptions::default()
    });
    let hosts = tempfile::tempdir().unwrap();
    let probe = hosts.path().join("probe");
    let started = std::time::Instant::now();
    let (out, _) = copy(&l, &sshd, &[&probe], &["--authorize"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full = started.elapsed();
    let sizes: Vec<(String, u64)> =
        ok(&["--root", l.root.to_str().unwrap(), "gc", "--requisites", &l.top])
            .lines()
            .map(|p| {
                let size = ok(&["--root", l.root.to_str().unwrap(), "store", "info", "--size", p]);
                (p.to_owned(), size.trim().parse().unwrap())
            })
            .collect();
    for i in 0..5u32 {
        let h = hosts.path().join(format!("h{i}"));
        let delay = full * i / 5;
        let started = std::time::Instant::now();
        let (out, _) = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(delay + Duration::from_millis(5));
                sshd.kill_connections();
            });
            copy(&l, &sshd, &[&h], &["--authorize"])
        });
        eprintln!("cut {i} after {:?}: {:?}", delay, started.elapsed());
        let _ = out;
        ferry_tests::assert_store_verifies(FERRY, &h);
        let present = ferry_tests::store_paths(FERRY, &h);
        let missing: u64 = sizes.iter().filter(|(p, _)| !present.contains(p)).map(|(_, s)| s).sum();
        let count = sizes.iter().filter(|(p, _)| !present.contains(p)).count();
        let (out, json) = copy(&l, &sshd, &[&h], &["--authorize"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(json["paths_sent"], count as u64, "{json}");
        let resumed = json["hosts"][0]["resumed_bytes"].as_u64().unwrap();
        assert_eq!(json["nar_bytes_sent"].as_u64().unwrap() + resumed, missing, "{json}");
        assert_eq!(ferry_tests::store_paths(FERRY, &h).len(), sizes.len());
        ferry_tests::assert_store_verifies(FERRY, &h);
    }
}
