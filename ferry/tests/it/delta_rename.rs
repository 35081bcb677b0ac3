//! `ferry copy` of a generation update in which a package was renamed (`libfoo-1.0` →
//! `libbar-1.1`, mostly the same bytes): to `local://` hosts and to one host over the loopback
//! sshd, a host whose current generation (`<profiles>/system`) is the old system gets the renamed
//! package as a delta against the path at the same place (feature `graph`); a host without a
//! current generation gets it in full (bases by name only).

use std::path::Path;

use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{ferry, ferry_dir};

fn ok(args: &[&str]) -> String {
    let out = ferry().args(args).output().unwrap();
    assert!(out.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Add the directory `name` holding `files` and a file naming `refs` to the store at `root`.
fn add(root: &str, src: &Path, name: &str, files: &[(&str, &[u8])], refs: &[&str]) -> String {
    let dir = src.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, bytes) in files {
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    std::fs::write(dir.join("refs"), refs.join("\n")).unwrap();
    ok(&["--root", root, "store", "add", dir.to_str().unwrap()])
}

/// `bytes` with a few runs of bytes changed.
fn edited(bytes: &[u8], seed: u8) -> Vec<u8> {
    let mut v = bytes.to_vec();
    for k in 0..6 {
        let at = (k * 37_003 + usize::from(seed) * 101) % (v.len() - 64);
        v[at..at + 32].fill(seed.wrapping_add(k as u8));
    }
    v
}

/// Point `<root>/var/ferry/profiles/system` at `system`, as a deploy does.
fn set_generation(root: &Path, system: &str) {
    let profiles = root.join("var/ferry/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::os::unix::fs::symlink(system, profiles.join("system-1-link")).unwrap();
    std::os::unix::fs::symlink("system-1-link", profiles.join("system")).unwrap();
}

#[test]
fn renamed_package_goes_as_a_delta_to_local_and_ssh_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let r = root.to_str().unwrap();
    let src = dir.path().join("src");
    let lib = ferry_tests::pseudo_random(31, 512 << 10);
    let app = ferry_tests::pseudo_random(32, 128 << 10);
    let libfoo = add(r, &src.join("1"), "libfoo-1.0", &[("lib.so", &lib)], &[]);
    let app1 = add(r, &src.join("1"), "app-1.0", &[("app", &app)], &[&libfoo]);
    let system1 = add(r, &src.join("1"), "system", &[("conf", b"1")], &[&app1]);
    let libbar = add(r, &src.join("2"), "libbar-1.1", &[("lib.so", &edited(&lib, 3))], &[]);
    let app2 = add(r, &src.join("2"), "app-1.1", &[("app", &edited(&app, 4))], &[&libbar]);
    let system2 = add(r, &src.join("2"), "system", &[("conf", b"2")], &[&app2]);

    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&ferry_dir()])),
        ..Default::default()
    });
    let hosts = dir.path().join("hosts");
    let (local_gen, local_bare, ssh_gen) =
        (hosts.join("local-gen"), hosts.join("local-bare"), hosts.join("ssh-gen"));
    let ssh_uri =
        format!("ssh://{}@127.0.0.1:{}?root={}", sshd.user(), sshd.port(), ssh_gen.display());
    let to = [
        format!("local://{}", local_gen.display()),
        format!("local://{}", local_bare.display()),
        ssh_uri,
    ];
    let copy = |system: &str, extra: &[&str]| -> Value {
        let mut args: Vec<String> = ["--root", r, "copy", "--json"].map(String::from).to_vec();
        args.push("--identity".into());
        args.push(sshd.identity_ed25519().display().to_string());
        args.push("--known-hosts".into());
        args.push(sshd.known_hosts().display().to_string());
        for t in &to {
            args.push("--to".into());
            args.push(t.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(system.to_owned());
        let out = ferry().args(&args).output().unwrap();
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    copy(&system1, &["--authorize"]);
    set_generation(&local_gen, &system1);
    set_generation(&ssh_gen, &system1);
    // No frame shared between hosts: each host's bytes are its own.
    let json = copy(&system2, &["--compress", "3"]);
    let hosts_json = json["hosts"].as_array().unwrap();
    let host = |prefix: &str| {
        let found = hosts_json.iter().find(|h| h["host"].as_str().unwrap().starts_with(prefix));
        found.unwrap_or_else(|| panic!("no host {prefix} in {json}"))
    };
    let (gen, bare, ssh) = (host(&to[0]), host(&to[1]), host("ssh://"));
    for h in [gen, bare, ssh] {
        assert_eq!(h["paths_sent"], 3, "{h}");
        assert_eq!(h["delta_fallbacks"], 0, "{h}");
    }
    // libbar-1.1 against libfoo-1.0 (same place), app-1.1 and the system by name.
    assert_eq!(gen["paths_delta"], 3, "{gen}");
    assert_eq!(ssh["paths_delta"], 3, "{ssh}");
    // By name only: libbar-1.1 goes in full (512 KiB of incompressible bytes).
    assert_eq!(bare["paths_delta"], 2, "{bare}");
    let wire = |h: &Value| h["wire_bytes"].as_u64().unwrap();
    assert!(wire(gen) * 4 < wire(bare), "{gen} vs {bare}");
    assert!(wire(ssh) * 4 < wire(bare), "{ssh} vs {bare}");
    for h in [&local_gen, &local_bare, &ssh_gen] {
        ok(&["--root", h.to_str().unwrap(), "store", "verify", "--check-contents"]);
    }
}
