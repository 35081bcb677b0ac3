//! `ferry copy --to local:///ROOT`: real closures to one and several hosts (agents as local
//! subprocesses under temp roots), no-op second copies, and faults at 20 random points of a
//! copy (the agent killed, or the stream cut) followed by a copy that sends only what was
//! missing and resumes the large path from the byte the agent had.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::util::ferry;

fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = ferry();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run ferry")
}

fn ok(args: &[&str]) -> String {
    ferry_tests::success_stdout(args, run(args, &[]))
}

/// A local store with a closure: `top` → {`lib`, `big`} → `base`, plus `doc` (no refs).
/// `big` is 3 MiB of incompressible data (kept as a partial file by the agent).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    top: String,
}

fn add(root: &Path, src: &Path) -> String {
    ok(&["--root", root.to_str().unwrap(), "store", "add", src.to_str().unwrap()]).trim().to_owned()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("base"), b"the base library\n").unwrap();
    let base = add(&root, &src.join("base"));
    let big = src.join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("blob"), ferry_tests::pseudo_random(7, 3 << 20)).unwrap();
    std::fs::write(big.join("uses"), format!("{base}\n")).unwrap();
    let big = add(&root, &big);
    let lib = src.join("lib");
    std::fs::create_dir_all(lib.join("sub")).unwrap();
    std::fs::write(lib.join("sub/a"), format!("needs {base}\n").repeat(100)).unwrap();
    std::os::unix::fs::symlink("sub/a", lib.join("link")).unwrap();
    let lib = add(&root, &lib);
    let top = src.join("top");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(top.join("refs"), format!("{lib}\n{big}\n")).unwrap();
    let top = add(&root, &top);
    std::fs::write(src.join("doc"), b"unrelated").unwrap();
    add(&root, &src.join("doc"));
    Fixture { root, top, _dir: dir }
}

impl Fixture {
    fn closure(&self) -> BTreeSet<String> {
        ok(&["--root", self.root.to_str().unwrap(), "gc", "--requisites", &self.top])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn nar_size(&self, path: &str) -> u64 {
        ok(&["--root", self.root.to_str().unwrap(), "store", "info", "--size", path])
            .trim()
            .parse()
            .unwrap()
    }

    /// `ferry copy --json` to `hosts`; returns (exit success, JSON).
    fn copy(
        &self,
        hosts: &[&Path],
        extra: &[&str],
        env: &[(&str, String)],
    ) -> (bool, Value, String) {
        let uris: Vec<String> = hosts.iter().map(|h| format!("local://{}", h.display())).collect();
        let mut args = vec!["--root", self.root.to_str().unwrap(), "copy", "--json"];
        for u in &uris {
            args.push("--to");
            args.push(u);
        }
        args.extend_from_slice(extra);
        args.push(&self.top);
        let out = run(&args, env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        (out.status.success(), json, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn valid_paths(host: &Path) -> BTreeSet<String> {
    if !host.join("var/ferry/db/db.sqlite").exists() {
        return BTreeSet::new();
    }
    ok(&["--root", host.to_str().unwrap(), "store", "list"]).lines().map(str::to_owned).collect()
}

fn assert_verifies(host: &Path) {
    let out = run(&["--root", host.to_str().unwrap(), "store", "verify", "--check-contents"], &[]);
    assert!(
        out.status.success(),
        "store at {} does not verify:\n{}{}",
        host.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn copy_to_one_and_several_hosts_then_nothing_to_send() {
    let f = fixture();
    let hosts = tempfile::tempdir().unwrap();
    let h1 = hosts.path().join("h1");
    let h2 = hosts.path().join("h2");
    let closure = f.closure();
    assert_eq!(closure.len(), 4);
    let total: u64 = closure.iter().map(|p| f.nar_size(p)).sum();

    let (ok1, json, err) = f.copy(&[&h1], &["--authorize"], &[]);
    assert!(ok1, "{err}");
    assert!(err.contains("generated a signing key pair"), "{err}");
    assert_eq!(json["paths_sent"], 4, "{json}");
    assert_eq!(json["nar_bytes_sent"], total);
    assert!(json["wire_bytes"].as_u64().unwrap() > 0);
    assert!(json["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(valid_paths(&h1), closure);
    assert_verifies(&h1);

    // Two hosts at once: h1 has everything, h2 nothing.
    let (ok2, json, err) = f.copy(&[&h1, &h2], &["--authorize"], &[]);
    assert!(ok2, "{err}");
    assert_eq!(json["hosts"][0]["paths_sent"], 0, "{json}");
    assert_eq!(json["hosts"][1]["paths_sent"], 4, "{json}");
    assert_eq!(json["nar_bytes_sent"], total);
    assert_eq!(valid_paths(&h2), closure);
    assert_verifies(&h2);

    // A second copy sends no path data: one handshake and one diff round trip.
    let (ok3, json, err) = f.copy(&[&h1, &h2], &[], &[]);
    assert!(ok3, "{err}");
    for host in json["hosts"].as_array().unwrap() {
        assert_eq!(host["paths_sent"], 0, "{json}");
        assert_eq!(host["nar_bytes_sent"], 0);
        assert_eq!(host["diff_round_trips"], 1);
        // Hello, the query (4 paths) and Done: well under a kilobyte.
        assert!(host["wire_bytes"].as_u64().unwrap() < 1024, "{json}");
    }
}

#[test]
fn unauthorized_key_is_refused_and_nothing_becomes_valid() {
    let f = fixture();
    let hosts = tempfile::tempdir().unwrap();
    let h = hosts.path().join("h");
    let (success, json, err) = f.copy(&[&h], &[], &[]);
    assert!(!success);
    // The diff round trip said the key is not trusted: no path was sent (feature `trust`).
    assert_eq!(json["hosts"][0]["untrusted_key"], true, "{json}");
    assert_eq!(json["hosts"][0]["nar_bytes_sent"], 0, "{json}");
    assert!(err.contains("does not trust this signing key"), "{err}");
    assert!(valid_paths(&h).is_empty());
    assert_verifies(&h);
}

#[test]
fn store_dir_mismatch_is_an_error() {
    let f = fixture();
    let hosts = tempfile::tempdir().unwrap();
    let uri = format!("local://{}?store-dir=/nix/store", hosts.path().join("h").display());
    let out = run(&["--root", f.root.to_str().unwrap(), "copy", "--to", &uri, &f.top], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keeps its store in /nix/store"), "{err}");
}

/// Kill the agent, or cut the coordinator's stream, at 20 points spread over a copy; after
/// each, the host verifies clean, and the next copy sends exactly the paths still missing,
/// resuming the large path from the bytes the agent kept.
#[test]
fn faults_at_twenty_points_then_complete_copy_sends_only_what_is_missing() {
    let f = fixture();
    let closure = f.closure();
    let sizes: Vec<(String, u64)> = closure.iter().map(|p| (p.clone(), f.nar_size(p))).collect();
    let hosts = tempfile::tempdir().unwrap();
    let base = closure.iter().find(|p| p.ends_with("-base")).unwrap().clone();
    // Each host first gets `base` (and the key in its ACL) from a complete copy.
    let prepare = |host: &Path| {
        let uri = format!("local://{}", host.display());
        let a = run(
            &["--root", f.root.to_str().unwrap(), "copy", "--authorize", "--to", &uri, &base],
            &[],
        );
        assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    };
    // Measure the wire bytes of the copy that then sends the rest.
    let probe = hosts.path().join("probe");
    prepare(&probe);
    let (success, json, err) = f.copy(&[&probe], &[], &[]);
    assert!(success, "{err}");
    let wire = json["wire_bytes"].as_u64().unwrap();

    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut resumed_somewhere = false;
    for i in 0..20u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Spread the points over the whole copy: slot i of 20, a random place inside it.
        let point = (wire * i + seed % wire) / 20;
        let host = hosts.path().join(format!("h{i}"));
        prepare(&host);
        let hook = if i % 2 == 0 { "FERRY_TEST_AGENT_DIE_AFTER" } else { "FERRY_TEST_CUT_AFTER" };
        let (success, _, err) = f.copy(&[&host], &[], &[(hook, point.to_string())]);
        assert!(!success, "a copy cut at byte {point} of {wire} ({hook}) succeeded:\n{err}");
        assert_verifies(&host);
        let present = valid_paths(&host);
        let missing: Vec<&(String, u64)> =
            sizes.iter().filter(|(p, _)| !present.contains(p)).collect();
        let (success, json, err) = f.copy(&[&host], &[], &[]);
        assert!(success, "the copy after a cut at {point} ({hook}) failed:\n{err}");
        assert_eq!(json["paths_sent"], missing.len() as u64, "cut at {point} ({hook}): {json}");
        let resumed = json["hosts"][0]["resumed_bytes"].as_u64().unwrap();
        let expected: u64 = missing.iter().map(|(_, s)| s).sum();
        assert_eq!(
            json["nar_bytes_sent"].as_u64().unwrap() + resumed,
            expected,
            "cut at {point} ({hook}): {json}"
        );
        resumed_somewhere |= resumed > 0;
        assert_eq!(valid_paths(&host), closure);
        assert_verifies(&host);
    }
    assert!(resumed_somewhere, "no cut fell inside the large path");
}

/// A cut in the middle of the large path: the next copy sends fewer NAR bytes than the path.
#[test]
fn cut_large_path_resumes_from_the_byte_the_agent_had() {
    let f = fixture();
    let closure = f.closure();
    let big = closure.iter().find(|p| p.ends_with("-big")).unwrap().clone();
    let big_size = f.nar_size(&big);
    let hosts = tempfile::tempdir().unwrap();
    let host = hosts.path().join("h");
    let base = closure.iter().find(|p| p.ends_with("-base")).unwrap();
    let uri = format!("local://{}", host.display());
    let a =
        run(&["--root", f.root.to_str().unwrap(), "copy", "--authorize", "--to", &uri, base], &[]);
    assert!(a.status.success());
    // Kill the agent two thirds into the large path (the base is there, so big goes first).
    let (success, _, _) =
        f.copy(&[&host], &[], &[("FERRY_TEST_AGENT_DIE_AFTER", (big_size * 2 / 3).to_string())]);
    assert!(!success);
    let partial: Vec<_> = std::fs::read_dir(host.join("var/ferry/partial")).unwrap().collect();
    assert_eq!(partial.len(), 1, "one partial file kept");
    let (success, json, err) = f.copy(&[&host], &[], &[]);
    assert!(success, "{err}");
    let resumed = json["hosts"][0]["resumed_bytes"].as_u64().unwrap();
    assert!(resumed > big_size / 2, "resumed only {resumed} of {big_size}: {json}");
    assert!(json["nar_bytes_sent"].as_u64().unwrap() < big_size, "{json}");
    assert!(std::fs::read_dir(host.join("var/ferry/partial")).unwrap().next().is_none());
    assert_eq!(valid_paths(&host), closure);
    assert_verifies(&host);
}

/// The agent registers paths in batches (one sync pass, one transaction): killed at each step
/// of a batch's commit (`FERRY_TEST_CRASH_AT` reaches the agent), the host's store verifies
/// clean with every path either valid and complete or absent, and the next copy completes.
/// The closure has 40 small paths, so a batch takes the `syncfs` branch.
#[test]
fn agent_killed_inside_a_batch_commit_leaves_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let items: Vec<String> = (0..40)
        .map(|i| {
            let p = src.join(format!("small{i}"));
            std::fs::write(&p, format!("small path {i}\n")).unwrap();
            p.display().to_string()
        })
        .collect();
    let mut args = vec!["--root", root.to_str().unwrap(), "store", "add"];
    args.extend(items.iter().map(String::as_str));
    let paths = ok(&args);
    std::fs::write(src.join("top"), &paths).unwrap();
    let top = add(&root, &src.join("top"));
    let closure: BTreeSet<String> =
        ok(&["--root", root.to_str().unwrap(), "gc", "--requisites", &top])
            .lines()
            .map(str::to_owned)
            .collect();
    assert_eq!(closure.len(), 41);
    let hosts = tempfile::tempdir().unwrap();
    for (i, step) in
        ["after-restore", "after-marker", "after-rename", "after-commit"].iter().enumerate()
    {
        let h = hosts.path().join(format!("h{i}"));
        let uri = format!("local://{}", h.display());
        let copy = |env: &[(&str, String)]| {
            run(
                &[
                    "--root",
                    root.to_str().unwrap(),
                    "copy",
                    "--json",
                    "--authorize",
                    "--to",
                    &uri,
                    &top,
                ],
                env,
            )
        };
        let out = copy(&[("FERRY_TEST_CRASH_AT", (*step).to_owned())]);
        assert!(!out.status.success(), "{step}: the agent should have died");
        assert_verifies(&h);
        let valid = valid_paths(&h);
        match *step {
            "after-commit" => assert!(!valid.is_empty(), "{step}: the batch was committed"),
            _ => assert!(valid.is_empty(), "{step}: nothing may be valid: {valid:?}"),
        }
        let out = copy(&[]);
        assert!(out.status.success(), "{step}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(valid_paths(&h), closure, "{step}");
        assert_verifies(&h);
        // No temp dirs or intent records left behind.
        let leftovers: Vec<_> = std::fs::read_dir(h.join("gnu/store"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{step}: {leftovers:?}");
    }
}
