//! `ferry store` and `ferry gc` through the real binary, on temp roots.

use std::path::Path;
use std::process::Output;

use crate::util::ferry_at;

fn ferry(root: &Path, args: &[&str]) -> Output {
    ferry_at(root).args(args).output().expect("run ferry")
}

fn ok(root: &Path, args: &[&str]) -> String {
    ferry_tests::success_stdout(args, ferry(root, args))
}

#[test]
fn add_info_requisites_verify_delete_gc() {
    let root = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let r = root.path();
    let lib = files.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(lib.join("libx.so"), b"\x7fELF not really").unwrap();
    let lib_path = ok(r, &["store", "add", lib.to_str().unwrap()]).trim().to_owned();
    assert!(lib_path.starts_with("/gnu/store/") && lib_path.ends_with("-lib"), "{lib_path}");
    // `store path` agrees with what `store add` did.
    assert_eq!(ok(r, &["store", "path", lib.to_str().unwrap()]).trim(), lib_path);

    let app = files.path().join("app");
    std::fs::write(&app, format!("#!/bin/sh\nLD_LIBRARY_PATH={lib_path}\n")).unwrap();
    let app_path =
        ok(r, &["store", "add", "--name", "app-1.0", app.to_str().unwrap()]).trim().to_owned();
    assert_eq!(ok(r, &["store", "info", "--references", &app_path]), format!("{lib_path}\n"));
    assert_eq!(ok(r, &["store", "info", "--referrers", &lib_path]), format!("{app_path}\n"));
    let full = ok(r, &["store", "info", &app_path]);
    assert!(full.contains("nar-hash: sha256:") && full.contains(&format!("reference: {lib_path}")));
    // With a reference, the item is not content-addressed in Nix's sense (no `ca`); without, it is.
    assert!(!full.contains("ca:"), "{full}");
    assert!(ok(r, &["store", "info", &lib_path]).contains("ca: fixed:r:sha256:"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(r, &["store", "info", "--json", &app_path])).unwrap();
    assert_eq!(json[0]["path"], app_path.as_str());
    assert_eq!(json[0]["references"][0], lib_path.as_str());
    assert!(json[0]["narHash"].as_str().unwrap().starts_with("sha256:"));
    assert!(json[0]["narSize"].as_u64().unwrap() > 0);
    assert_eq!(ok(r, &["gc", "--references", &app_path]), format!("{lib_path}\n"));
    assert_eq!(ok(r, &["gc", "--references", &lib_path]), "");
    let hash = ok(r, &["store", "info", "--hash", "--size", &app_path]);
    let lines: Vec<&str> = hash.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("sha256:") && lines[1].parse::<u64>().is_ok(), "{hash}");

    assert_eq!(ok(r, &["gc", "--requisites", &app_path]), format!("{lib_path}\n{app_path}\n"));
    // A path inside an item, and the physical path, mean the item.
    let phys = format!("{}{app_path}", r.display());
    assert_eq!(ok(r, &["gc", "-R", &phys]), format!("{lib_path}\n{app_path}\n"));
    assert_eq!(ok(r, &["store", "list"]).lines().count(), 2);
    assert_eq!(ok(r, &["store", "ls"]), ok(r, &["store", "list"]));
    ok(r, &["store", "verify", "--check-contents"]);

    let out = ferry(r, &["store", "delete", &lib_path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("still referenced by") && err.contains(&app_path), "{err}");

    // GC with app as a root keeps both; without roots deletes both, referrers first.
    let dry = ok(r, &["gc", "--dry-run", &app_path]);
    assert_eq!(dry, "");
    let deleted = ok(r, &["gc"]);
    assert_eq!(deleted, format!("deleted {app_path}\ndeleted {lib_path}\n"));
    assert_eq!(ok(r, &["store", "list"]), "");
    ok(r, &["store", "verify", "--check-contents"]);
}

#[test]
fn verify_reports_tampering_and_corrupt_db_is_clear() {
    let root = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let r = root.path();
    let f = files.path().join("f");
    std::fs::write(&f, b"one").unwrap();
    let p = ok(r, &["store", "add", f.to_str().unwrap()]).trim().to_owned();
    let phys = format!("{}{p}", r.display());
    std::process::Command::new("chmod").args(["u+w", &phys]).status().unwrap();
    std::fs::write(&phys, b"two").unwrap();
    let out = ferry(r, &["store", "verify", "--check-contents"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&p) && text.contains("modified"), "{text}");

    // Only the paths named are checked; a path that is not valid is a problem.
    let g = files.path().join("g");
    std::fs::write(&g, b"untouched").unwrap();
    let q = ok(r, &["store", "add", g.to_str().unwrap()]).trim().to_owned();
    ok(r, &["store", "verify", "--check-contents", &q]);
    let out = ferry(r, &["store", "verify", &p.replace(&p[11..15], "0000")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a valid path"));

    // --repair-db records what is on disk; then the store verifies clean.
    let out = ferry(r, &["store", "verify", "--repair-db", &p]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("repaired the database entry"));
    ok(r, &["store", "verify", "--check-contents"]);
    let hash = ok(r, &["store", "info", "--hash", &p]);
    let on_disk = ok(r, &["nar", "hash", &phys]);
    assert_eq!(hash.trim(), format!("sha256:{}", on_disk.trim()));

    std::fs::write(r.join("var/ferry/db/db.sqlite"), vec![b'x'; 4096]).unwrap();
    let out = ferry(r, &["store", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") && err.contains("db.sqlite"), "{err}");
}
