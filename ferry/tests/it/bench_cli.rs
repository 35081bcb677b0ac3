//! `ferry bench`: a tiny generation update to two `local://` hosts over a shaped link, in each
//! mode; the JSON report's fields (not its timings) are checked.

use std::path::Path;

use serde_json::Value;

use crate::util::ferry_at;

fn ferry(root: &Path, args: &[&str]) -> String {
    ferry_tests::success_stdout(args, ferry_at(root).args(args).output().expect("run ferry"))
}

/// Text that compresses, and a version of it with a few lines changed.
fn versions() -> (String, String) {
    let mut x = 7u64;
    let mut lines: Vec<String> = (0..6000)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            format!("fn f{i}(v: u64) -> u64 {{ v ^ {} }}\n", x >> 20)
        })
        .collect();
    let old = lines.concat();
    for i in (0..lines.len()).step_by(500) {
        lines[i] = "// changed\n".into();
    }
    (old, lines.concat())
}

#[test]
fn bench_reports_bytes_ratios_and_phases_per_mode() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let (old, new) = versions();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/app-1.0"), old).unwrap();
    std::fs::write(dir.path().join("src/app-2.0"), new).unwrap();
    let add = |name: &str| {
        let p = dir.path().join("src").join(name);
        ferry(&root, &["store", "add", p.to_str().unwrap()]).trim().to_owned()
    };
    let (a1, a2) = (add("app-1.0"), add("app-2.0"));
    let mut wire = Vec::new();
    for mode in ["full", "zstd", "delta"] {
        let h1 = format!("local://{}", dir.path().join(format!("{mode}-1")).display());
        let h2 = format!("local://{}", dir.path().join(format!("{mode}-2")).display());
        let out = ferry(
            &root,
            &[
                "bench",
                "--to",
                &h1,
                "--to",
                &h2,
                "--base",
                &a1,
                "--rate",
                "50mbit",
                "--latency",
                "5ms",
                "--mode",
                mode,
                "--compress",
                "3",
                "--json",
                &a2,
            ],
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mode"], mode);
        assert_eq!(v["closure_paths"], 1);
        assert_eq!(v["rate_bytes_per_sec"], 50e6 / 8.0);
        assert_eq!(v["latency_ms"], 5.0);
        let hosts = v["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 2);
        for h in hosts {
            assert!(h.get("error").is_none(), "{h}");
            assert_eq!(h["paths_sent"], 1);
            assert_eq!(h["rejected"], 0);
            let nar = h["nar_bytes"].as_u64().unwrap();
            let w = h["wire_bytes"].as_u64().unwrap();
            assert_eq!(nar, v["closure_nar_bytes"].as_u64().unwrap());
            assert!((h["ratio"].as_f64().unwrap() - w as f64 / nar as f64).abs() < 1e-9);
            assert_eq!(h["paths_delta"], u64::from(mode == "delta"));
            for phase in ["connect", "diff", "send", "import"] {
                assert!(h["phases"][phase].as_f64().unwrap() >= 0.0);
            }
            assert!(h["throughput_nar_bytes_per_sec"].as_f64().unwrap() > 0.0);
            assert!(h["link_model_seconds"].as_f64().unwrap() > 0.0);
        }
        // Two hosts, one encoding (compress once).
        if mode != "full" {
            assert_eq!(v["shared_encoding"]["produced"], 1, "{v}");
            assert_eq!(v["shared_encoding"]["shared"], 1, "{v}");
        }
        wire.push(hosts[0]["wire_bytes"].as_u64().unwrap());
    }
    // full > zstd > delta on the wire.
    assert!(wire[0] > wire[1] && wire[1] > 10 * wire[2], "{wire:?}");
}
