//! `ferry copy --to ssh://` to a host whose ACL lacks the coordinator's key: the diff round trip
//! says so (protocol feature `trust`), and the copy stops before any path data, with the hint
//! to authorize the key. Then `--authorize` copies, and a host that trusts the key gets the
//! paths without it.

use std::path::Path;

use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{ferry, ferry_dir, FERRY};

fn ssh_uri(sshd: &Sshd, root: &Path) -> String {
    format!("ssh://{}@127.0.0.1:{}?root={}", sshd.user(), sshd.port(), root.display())
}

#[test]
fn an_untrusted_key_stops_before_any_path_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    // Two paths, one of 2 MiB of incompressible bytes.
    let (_, top) = ferry_tests::add_base_and_big(FERRY, &root, &dir.path().join("src"), 9);
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&ferry_dir()])),
        ..SshdOptions::default()
    });
    let host = dir.path().join("host");
    let copy = |extra: &[&str], cut_after: Option<&str>| {
        let mut c = ferry();
        c.arg("--root").arg(&root).arg("copy").arg("--json");
        c.arg("--identity").arg(sshd.identity_ed25519());
        c.arg("--known-hosts").arg(sshd.known_hosts());
        c.args(["--to", &ssh_uri(&sshd, &host)]).args(extra).arg(&top);
        if let Some(n) = cut_after {
            c.env("FERRY_TEST_CUT_AFTER", n);
        }
        let out = c.output().unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out, json)
    };

    // The coordinator may write at most 64 KiB before its connection is cut (the test hook):
    // a copy that sent path data would fail with a cut connection, not with the trust error.
    let (out, json) = copy(&[], Some("65536"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", sshd.log());
    let h = &json["hosts"][0];
    assert_eq!(h["untrusted_key"], true, "{json}\n{stderr}");
    assert_eq!((h["paths_missing"].as_u64(), h["nar_bytes_sent"].as_u64()), (Some(2), Some(0)));
    let wire = h["wire_bytes"].as_u64().unwrap();
    assert!(wire < 64 << 10, "{wire} bytes on the wire: {json}");
    assert!(stderr.contains("does not trust this signing key"), "{stderr}");
    assert!(stderr.contains("--authorize"), "the hint names the flag: {stderr}");
    assert!(stderr.contains("ferry archive --authorize"), "and the host's command: {stderr}");
    assert!(!stderr.contains("connection cut"), "{stderr}");
    // Nothing landed on the host, and no partial data was kept.
    assert!(ferry_tests::store_paths(FERRY, &host).is_empty());
    let partial = host.join("var/ferry/partial");
    assert!(!partial.exists() || std::fs::read_dir(&partial).unwrap().next().is_none());

    // With --authorize the key is added first, and the paths travel.
    let (out, json) = copy(&["--authorize"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json["paths_sent"], 2, "{json}");
    assert_eq!(ferry_tests::store_paths(FERRY, &host).len(), 2);
}
