//! `ferry bench --compare`: ferry, rsync, Nix and casync side by side through the kernel-shaped
//! path (a private network namespace, its own throwaway sshd), one round on a tiny closure over
//! the unshaped loopback only. Checks the JSON report's shape and that every tool ran; no
//! timing is asserted. Needs root for `unshare -n` (as CI runs); elsewhere it says so and stops.

use std::path::Path;

use serde_json::Value;

use crate::util::ferry_at;

fn add(root: &Path, file: &Path) -> String {
    let out = ferry_at(root).args(["store", "add"]).arg(file).output().expect("run ferry");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn compare(root: &Path, args: &[&str]) -> Value {
    let out = ferry_at(root)
        .args(["bench", "--links", "", "--rounds", "1", "--json"])
        .args(args)
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry bench {args:?}: {stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{stderr}\n{json}");
    json
}

/// Each of `tools` has one run and one row on the loopback link, with time and bytes; ferry's
/// ratio to every peer is there.
fn check(json: &Value, tools: &[&str]) {
    assert_eq!(json["links"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["links"][0]["name"], "loopback");
    assert_eq!(json["rounds"], 1);
    let rows = json["rows"].as_array().unwrap();
    for tool in tools {
        let row =
            rows.iter().find(|r| r["tool"] == *tool).unwrap_or_else(|| panic!("{tool}: {json}"));
        assert_eq!(row["link"], "loopback");
        let s = &row["seconds"];
        assert!(s["median"].as_f64().unwrap() > 0.0, "{json}");
        assert!(
            s["min"].as_f64() <= s["median"].as_f64() && s["median"].as_f64() <= s["max"].as_f64()
        );
        // At least the files themselves crossed the link.
        assert!(row["wire_bytes"]["median"].as_f64().unwrap() > 4096.0, "{tool}: {json}");
        if *tool == "ferry" {
            assert!(row["ferry_ratio"].is_null());
        } else {
            assert!(row["ferry_ratio"].as_f64().unwrap() > 0.0, "{json}");
        }
    }
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), tools.len(), "{json}");
    assert!(runs.iter().all(|r| r.get("error").is_none()), "{json}");
    // ferry's own account of each run: its phases.
    let ferry = runs.iter().find(|r| r["tool"] == "ferry").unwrap();
    assert!(ferry["ferry"]["phases"]["send"].as_f64().is_some(), "{json}");
}

#[test]
fn bench_compare_with_peers_over_loopback() {
    if !std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("bench_compare: unshare -n is not allowed here (needs root): not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("app-1.0/bin")).unwrap();
    std::fs::create_dir_all(src.join("app-2.0/bin")).unwrap();
    let common = ferry_tests::pseudo_random(1, 96 << 10);
    for (v, seed) in [("1.0", 2), ("2.0", 3)] {
        let tree = src.join(format!("app-{v}"));
        std::fs::write(tree.join("bin/common"), &common).unwrap();
        std::fs::write(tree.join("bin/own"), ferry_tests::pseudo_random(seed, 16 << 10)).unwrap();
    }
    let old = add(&root, &src.join("app-1.0"));
    let new = add(&root, &src.join("app-2.0"));

    let json = compare(&root, &["--compare", "rsync,nix", &new]);
    check(&json, &["ferry", "rsync -az", "nix copy ssh://"]);
    assert_eq!(json["closure_paths"], 1);

    // A generation update: casync joins (Debian's package), rsync goes onto the old tree.
    let json = compare(&root, &["--compare", "rsync,casync", "--base", &old, &new]);
    check(&json, &["ferry", "rsync -az", "casync"]);
    assert_eq!(json["base_paths"], 1);

    // A peer that is not a tool is a usage error.
    let out = ferry_at(&root).args(["bench", "--compare", "scp", &new]).output().unwrap();
    assert!(!out.status.success());
}
