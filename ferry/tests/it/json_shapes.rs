//! One snapshot per `--json` shape (`docs/json.md` documents each): `deploy`, `deploy
//! --dry-run`, `deploy -x`, `deploy --list-generations`, `copy --to`, `copy --from local://`,
//! `store info` and `gc`. Each run is real (the demo's `local` machines, stores in temp dirs); what
//! varies between runs is redacted before the snapshot: durations and dates, byte counts,
//! temp directories, store hashes.
//!
//! Bless changed snapshots (after reading the diff) with:
//!
//! ```text
//! INSTA_UPDATE=always cargo test -p ferry --test integration json_shapes
//! ```
//!
//! or `cargo insta review` with cargo-insta installed. The snapshots live in
//! `ferry/tests/it/snapshots/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::util::{coordinator, copy_tree, examples, ferry};

/// Keys whose values vary from run to run.
const TIMES: &[&str] = &["seconds", "time", "date", "registrationTime"];
/// Counts that depend on which machine's copy ran first (compress once).
const RACES: &[&str] = &["paths_shared"];
/// Keys whose numbers depend on compression, provenance or the file system.
const SIZES: &[&str] = &[
    "nar_bytes_sent",
    "wire_bytes_sent",
    "wire_bytes",
    "wire_bytes_received",
    "nar_size",
    "narSize",
    "resumed_bytes",
    "agent_upload_bytes",
    "free_bytes",
    "freed_nar_bytes",
];

/// `value` with what varies replaced by placeholders: durations, sizes, `tmp` (a temp dir),
/// store hashes (32 nix-base32 characters before a `-`), signatures.
pub fn redact(value: &Value, tmp: &Path) -> Value {
    fn walk(v: &Value, key: Option<&str>, tmp: &str) -> Value {
        match (v, key) {
            (Value::Object(map), Some("steps" | "phases")) => {
                map.keys().map(|k| (k.clone(), Value::from("[seconds]"))).collect()
            }
            (Value::Object(map), _) => {
                map.iter().map(|(k, v)| (k.clone(), walk(v, Some(k), tmp))).collect()
            }
            (Value::Array(items), _) => items.iter().map(|v| walk(v, key, tmp)).collect(),
            (Value::Number(_), Some(k)) if TIMES.contains(&k) => Value::from("[seconds]"),
            (Value::String(_), Some(k)) if TIMES.contains(&k) => Value::from("[date]"),
            (Value::Number(_), Some(k)) if SIZES.contains(&k) => Value::from("[bytes]"),
            (Value::Number(_), Some(k)) if RACES.contains(&k) => Value::from("[count]"),
            (Value::String(s), Some("signatures" | "narHash")) => {
                Value::from(if s.is_empty() { "" } else { "[redacted]" })
            }
            (Value::String(s), _) => Value::from(redact_text(s, tmp)),
            (other, _) => other.clone(),
        }
    }
    walk(value, None, &tmp.display().to_string())
}

/// `text` with `tmp` as `[TMP]` and store hashes as `[HASH]`.
fn redact_text(text: &str, tmp: &str) -> String {
    let text = text.replace(tmp, "[TMP]");
    let nix32 = |c: char| "0123456789abcdfghijklmnpqrsvwxyz".contains(c);
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..].iter().take_while(|c| nix32(**c)).count();
        let boundary = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if boundary && run == 32 && chars.get(i + 32) == Some(&'-') {
            out.push_str("[HASH]");
            i += 32;
        } else {
            out.extend(&chars[i..i + run.max(1)]);
            i += run.max(1);
        }
    }
    out
}

/// stdout as the one JSON document it must be (nothing else on stdout).
fn json_of(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

struct Demo {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Demo {
    /// The README demo, copied into a temp dir (its hosts there too).
    fn new() -> Demo {
        let dir = crate::util::coordinator_dir();
        copy_tree(&examples(), &dir.path().join("demo"));
        let file = dir.path().join("demo/demo.toml");
        Demo { dir, file }
    }

    fn run(&self, code: i32, args: &[&str]) -> Output {
        let out = coordinator(self.dir.path())
            .arg("deploy")
            .arg(&self.file)
            .args(args)
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "deploy {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn json(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(code, args);
        pretty(&redact(&json_of(&out, &format!("deploy {args:?}")), self.dir.path()))
    }
}

#[test]
fn deploy_shapes() {
    let demo = Demo::new();
    insta::assert_snapshot!(
        "deploy_dry_run",
        demo.json(0, &["--json", "--dry-run", "--on", "demo1"])
    );
    insta::assert_snapshot!("deploy", demo.json(0, &["--json"]));
    insta::assert_snapshot!(
        "deploy_list_generations",
        demo.json(0, &["--json", "--list-generations"])
    );
    // A command failing on one machine: exit 1, and its stdout and stderr apart.
    let script = "echo out; echo err >&2; [ \"$(cat etc/hostname)\" = demo1 ]";
    insta::assert_snapshot!(
        "deploy_execute",
        demo.json(1, &["--json", "-x", "--", "sh", "-c", script])
    );
    insta::assert_snapshot!("deploy_roll_back", demo.json(1, &["--json", "--roll-back"]));
}

#[test]
fn the_dry_run_prints_nothing_but_json_on_stdout() {
    let demo = Demo::new();
    let out = demo.run(0, &["--dry-run", "--json"]);
    let json = json_of(&out, "deploy --dry-run --json");
    assert_eq!(json["machines"][0]["plan"]["paths"].as_array().unwrap().len(), 2, "{json}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("demo1: would copy 2 path(s)"), "{stderr}");
    // The table is on stderr and says which numbers are which.
    assert!(stderr.contains("PATHS SENT") && stderr.contains("WIRE"), "{stderr}");
}

/// A store with a two-path closure; returns (temp dir, root, top path).
fn store() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let add = |src: &Path| {
        let out =
            ferry().arg("--root").arg(&root).args(["store", "add"]).arg(src).output().unwrap();
        ferry_tests::success_stdout(&["store", "add"], out).trim().to_owned()
    };
    fs::write(dir.path().join("base"), b"the base\n").unwrap();
    let base = add(&dir.path().join("base"));
    fs::write(dir.path().join("top"), format!("uses {base}\n")).unwrap();
    let top = add(&dir.path().join("top"));
    (dir, root, top)
}

#[test]
fn copy_and_store_shapes() {
    let (dir, root, top) = store();
    let host = dir.path().join("host");
    let to = format!("local://{}", host.display());
    let copy = |args: &[&str]| {
        let out = ferry().arg("--root").arg(&root).arg("copy").args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        pretty(&redact(&json_of(&out, "copy"), dir.path()))
    };
    insta::assert_snapshot!("copy_to", copy(&["--json", "--authorize", "--to", &to, &top]));
    // Back from the host into a fresh store (a push from that store into ours).
    let back = dir.path().join("back");
    let out = ferry()
        .arg("--root")
        .arg(&back)
        .args(["copy", "--json", "--from", &to, &top])
        .output()
        .unwrap();
    let json = json_of(&out, "copy --from");
    insta::assert_snapshot!("copy_from_local", pretty(&redact(&json, dir.path())));

    let out = ferry().arg("--root").arg(&root).args(["store", "info", "--json", &top]).output();
    let json = json_of(&out.unwrap(), "store info");
    insta::assert_snapshot!("store_info", pretty(&redact(&json, dir.path())));

    let store = |args: &[&str]| {
        let out = ferry().arg("--root").arg(&root).arg("store").args(args).output().unwrap();
        pretty(&redact(&json_of(&out, &format!("store {args:?}")), dir.path()))
    };
    insta::assert_snapshot!("store_list", store(&["list", "--json"]));
    let out =
        ferry().args(["nar", "hash", "--json"]).arg(dir.path().join("base")).output().unwrap();
    insta::assert_snapshot!("nar_hash", pretty(&redact(&json_of(&out, "nar hash"), dir.path())));
    insta::assert_snapshot!("store_verify", store(&["verify", "--check-contents", "--json"]));

    let gc = |args: &[&str]| {
        let out = ferry().arg("--root").arg(&root).arg("gc").args(args).output().unwrap();
        pretty(&redact(&json_of(&out, &format!("gc {args:?}")), dir.path()))
    };
    insta::assert_snapshot!("gc_requisites", gc(&["--json", "--requisites", &top]));
    // Nothing is a root: a dry run would delete both paths.
    insta::assert_snapshot!("gc_dry_run", gc(&["--json", "--dry-run"]));
}

#[test]
fn redaction() {
    let tmp = Path::new("/tmp/x");
    let v = serde_json::json!({
        "seconds": 1.5, "steps": {"copy": 0.1}, "nar_bytes_sent": 3,
        "path": "/tmp/x/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-hello",
        "paths": [{"nar_size": 7}],
    });
    assert_eq!(
        redact(&v, tmp).to_string(),
        r#"{"nar_bytes_sent":"[bytes]","path":"[TMP]/gnu/store/[HASH]-hello","paths":[{"nar_size":"[bytes]"}],"seconds":"[seconds]","steps":{"copy":"[seconds]"}}"#
    );
}

/// `-q`: a successful deploy says nothing on stderr (no notes, no progress lines); stdout still
/// has the table.
#[test]
fn a_quiet_deploy_prints_only_the_table() {
    let demo = Demo::new();
    let out = demo.run(0, &["-q"]);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(stderr, "", "stdout:\n{stdout}");
    assert!(
        stdout.starts_with("MACHINE") && stdout.contains("demo1") && stdout.contains("demo2"),
        "{stdout}"
    );
}
