//! `ferry bench --link kernel` to a loopback sshd: the transfer goes through a private network
//! namespace (`unshare -n`, `tc` on its `lo`, the latency relay) and lands intact. Where the
//! machine cannot do that, the bench must say so and fall back to the emulated link; the test
//! accepts either and checks the report says which. (No timing is asserted.)

use std::path::Path;

use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{ferry_at, ferry_dir};

fn ferry(root: &Path, args: &[&str]) -> std::process::Output {
    ferry_at(root).args(args).output().expect("run ferry")
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = ferry(root, args);
    assert!(out.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bench_over_a_kernel_shaped_link_to_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("base-1.0"), ferry_tests::pseudo_random(1, 64 << 10)).unwrap();
    std::fs::write(src.join("app-2.0"), ferry_tests::pseudo_random(2, 192 << 10)).unwrap();
    let base = ok(&root, &["store", "add", src.join("base-1.0").to_str().unwrap()]);
    let app = ok(&root, &["store", "add", src.join("app-2.0").to_str().unwrap()]);
    let ferry_dir = ferry_dir();
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&ferry_dir])),
        ..SshdOptions::default()
    });
    let host = sshd.dir().join("host");
    let uri = format!("ssh://{}@127.0.0.1:{}?root={}", sshd.user(), sshd.port(), host.display());
    let out = ferry(
        &root,
        &[
            "bench",
            "--link",
            "kernel",
            "--rate",
            "50mbit",
            "--latency",
            "5ms",
            "--json",
            "--identity",
            sshd.identity_ed25519().to_str().unwrap(),
            "--known-hosts",
            sshd.known_hosts().to_str().unwrap(),
            "--to",
            &uri,
            "--base",
            base.trim(),
            app.trim(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", sshd.log());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{json}");
    let link = json["link"].as_str().unwrap();
    if link == "emulated" {
        assert!(stderr.contains("no kernel link shaping here"), "{stderr}");
    } else {
        assert!(link.starts_with("kernel: "), "{json}");
        assert!(link.contains("tbf") || link.contains("netem"), "{json}");
    }
    assert_eq!(json["hosts"][0]["paths_sent"], 1, "{json}");
    ok(&host, &["store", "verify", "--check-contents"]);
    let listed = ok(&host, &["store", "list"]);
    assert!(listed.contains(app.trim()) && listed.contains(base.trim()), "{listed}");

    // Only SSH hosts on loopback can be reached through the namespace.
    let local = format!("local://{}", dir.path().join("h2").display());
    let out = ferry(&root, &["bench", "--link", "kernel", "--to", &local, app.trim()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--link kernel shapes SSH hosts on loopback only"), "{stderr}");
}
