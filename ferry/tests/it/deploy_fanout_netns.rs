//! Relays on a real network: hosts in network namespaces made by the test, on a "LAN" bridge;
//! the coordinator's namespace reaches the bridge through one veth shaped to 20 Mbit/s each
//! way (`tc tbf`; this kernel has no `netem`, so no added latency). The bytes the coordinator
//! sends are counted by the kernel at that link.
//!
//! - `--fan-out 3` over eight hosts (one tree): each path crosses the coordinator's link once,
//!   every host verifies its store clean.
//! - A relay killed in the middle of its copy: its children finish by direct copies, and their
//!   results say so.
//! - `fan_out_figure` (ignored; run by hand, see benches/README.md): time and link bytes of
//!   eight hosts direct and through relays, against one host.
//!
//! Needs root for `ip netns add` (CI runs as root); elsewhere the tests print a SKIP line.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use ferry_tests::netns::Netns;
use ferry_tests::sshd::{remote_path, Fleet, Sshd, SshdOptions};
use serde_json::Value;

use crate::deploy_fanout::authorize_relays;
use crate::deploy_ssh::{current, machine, root};
use crate::util::{ferry_dir, FERRY};

/// The coordinator's namespace, its shaped uplink to the LAN, and the hosts on the LAN.
struct Lan {
    coordinator: Netns,
    uplink: String,
    fleet: Fleet,
    _namespaces: Vec<Netns>,
}

const RATE: &str = "20mbit";

fn lan(n: usize) -> Option<Lan> {
    if let Some(why) = Netns::unavailable() {
        eprintln!("SKIP: network namespaces cannot be made here: {why}");
        return None;
    }
    let coordinator = Netns::new("coord");
    let switch = Netns::new("lan");
    switch.bridge("br0");
    let (uplink, lan_end) = Netns::attach(&coordinator, "10.214.0.1/24", &switch, "br0");
    coordinator.shape(&uplink, RATE);
    switch.shape(&lan_end, RATE);
    let mut namespaces = vec![switch];
    let mut hosts = Vec::new();
    for i in 0..n {
        let ns = Netns::new(&format!("h{i}"));
        let addr = format!("10.214.0.{}", 10 + i);
        Netns::attach(&ns, &format!("{addr}/24"), &namespaces[0], "br0");
        hosts.push(Sshd::start_with(SshdOptions {
            netns: Some((ns.name().to_owned(), addr.clone())),
            path: Some(remote_path(&[&ferry_dir()])),
            ..SshdOptions::default()
        }));
        assert!(coordinator.can_connect(&addr, 22), "the coordinator reaches {addr}");
        namespaces.push(ns);
    }
    let fleet = Fleet { hosts };
    authorize_relays(&fleet);
    Some(Lan { coordinator, uplink, fleet, _namespaces: namespaces })
}

/// A deployment directory: a package with `blob_mib` MiB of incompressible bytes (`seed`).
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: crate::util::coordinator_dir() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The deployment file over `hosts` (named h0, h1, ...), the package of `blob_mib` MiB.
    fn file(&self, hosts: &[Sshd], blob_mib: usize, seed: u64) -> String {
        let pkg = self.path().join(format!("pkgs/big{seed}"));
        fs::create_dir_all(pkg.join("bin")).unwrap();
        fs::write(pkg.join("blob"), ferry_tests::pseudo_random(seed, blob_mib << 20)).unwrap();
        let hello = pkg.join("bin/hello");
        fs::write(&hello, "#!/bin/sh\necho \"Hello, $1\"\n").unwrap();
        fs::set_permissions(&hello, fs::Permissions::from_mode(0o755)).unwrap();
        let mut text = format!(
            "[operating-system.base]\npackages = [\"./pkgs/big{seed}\"]\n\
             health-checks = [{{ command = 'test -s \"$FERRY_ROOT/etc/motd\"' }}]\n\
             files = {{ motd = \"{seed}\" }}\n"
        );
        for (i, sshd) in hosts.iter().enumerate() {
            let extra = format!(
                "confirm-timeout = 60\nrelay-identity = \"{}\"",
                sshd.identity_ed25519().display()
            );
            text.push_str(&machine(&format!("h{i}"), sshd, "\"base\"", &extra));
        }
        let path = self.path().join("fleet.toml");
        fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// `ferry deploy FILE --json ARGS...` in the coordinator's namespace.
    fn deploy(&self, lan: &Lan, file: &str, args: &[&str]) -> (Output, Value) {
        let mut command = lan.coordinator.command(FERRY);
        // The clean environment of ferry_command, inside the namespace.
        for var in
            ["FERRY_ROOT", "FERRY_STORE_DIR", "FERRY_STATE_DIR", "FERRY_STORE", "SSH_AUTH_SOCK"]
        {
            command.env_remove(var);
        }
        command
            .current_dir(self.path())
            .env("FERRY_ROOT", self.path().join("coordinator"))
            .env("HOME", self.path().join("home"))
            .args(["deploy", file, "--json"])
            .args(args);
        let out = command.output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out, json)
    }
}

fn machine_json<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["machines"].as_array().unwrap().iter().find(|m| m["machine"] == name).unwrap()
}

fn verify(host: &Sshd) {
    let r = root(host);
    let out = ferry_tests::ferry_command(FERRY)
        .arg("--root")
        .arg(&r)
        .args(["store", "verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", r.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn fan_out_sends_each_path_over_the_coordinators_link_once() {
    let Some(lan) = lan(8) else { return };
    let env = Env::new();
    let blob = 6usize << 20;
    let file = env.file(&lan.fleet.hosts, blob >> 20, 1);
    let before = lan.coordinator.tx_bytes(&lan.uplink);
    let (out, json) = env.deploy(&lan, &file, &["--fan-out", "3"]);
    let sent = lan.coordinator.tx_bytes(&lan.uplink) - before;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for (i, host) in lan.fleet.iter().enumerate() {
        let m = machine_json(&json, &format!("h{i}"));
        assert_eq!(m["success"], true, "{json}\n{stderr}");
        if i > 0 {
            let detail = m["detail"].as_str().unwrap();
            assert!(detail.contains("copied through relay h"), "{detail}");
        }
        assert_eq!(current(&root(host)).as_deref(), Some("system-1-link"));
        verify(host);
    }
    // Once over the link: the blob (incompressible) plus the sessions' small talk; eight
    // direct copies would be eight blobs.
    assert!(sent > blob as u64, "{sent} bytes over the uplink");
    assert!(sent < (blob + blob / 2) as u64, "{sent} bytes over the uplink for a {blob}-byte blob");
}

#[test]
fn a_relay_killed_mid_run_leaves_its_children_to_direct_copies() {
    let Some(lan) = lan(4) else { return };
    let env = Env::new();
    let file = env.file(&lan.fleet.hosts, 8, 2);
    // Kill the relay's sessions (its agent and its SSH clients to h1..h3) once its copy is
    // under way: its partial file exists only while a path is arriving.
    let relay = &lan.fleet.hosts[0];
    let partial = root(relay).join("var/ferry/partial");
    let (out, json) = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if fs::read_dir(&partial).is_ok_and(|mut d| d.next().is_some()) {
                    relay.kill_connections();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        });
        let run = env.deploy(&lan, &file, &["--fan-out", "3"]);
        assert!(killer.join().unwrap(), "the relay's copy never started");
        run
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{json}\n{stderr}");
    assert_eq!(machine_json(&json, "h0")["success"], false, "{json}");
    for (i, host) in lan.fleet.iter().enumerate().skip(1) {
        let m = machine_json(&json, &format!("h{i}"));
        assert_eq!(m["success"], true, "{json}\n{stderr}");
        let detail = m["detail"].as_str().unwrap();
        assert!(detail.contains("relay h0") && detail.ends_with("copied directly"), "{detail}");
        assert!(m["paths_sent"].as_u64().unwrap() > 0, "{json}");
        assert_eq!(current(&root(host)).as_deref(), Some("system-1-link"));
        verify(host);
    }
}

/// The figure of benches/README.md: eight hosts behind the 20 Mbit/s link, a 16 MiB
/// incompressible package; one host alone, eight direct, eight through relays (`--fan-out 3`).
#[test]
#[ignore = "a benchmark (about two minutes): run by hand, see benches/README.md"]
fn fan_out_figure() {
    let Some(lan) = lan(8) else { return };
    let env = Env::new();
    let mib = 16;
    let mut rows = Vec::new();
    for (seed, (what, hosts, args)) in [
        ("one host, direct", 1, &[][..]),
        ("8 hosts, direct", 8, &[][..]),
        ("8 hosts, --fan-out 3", 8, &["--fan-out", "3"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let file = env.file(&lan.fleet.hosts[..hosts], mib, 100 + seed as u64);
        let before = lan.coordinator.tx_bytes(&lan.uplink);
        let started = Instant::now();
        let (out, json) = env.deploy(&lan, &file, args);
        let seconds = started.elapsed().as_secs_f64();
        let sent = lan.coordinator.tx_bytes(&lan.uplink) - before;
        assert!(out.status.success(), "{json}\n{}", String::from_utf8_lossy(&out.stderr));
        rows.push((what, seconds, sent));
    }
    let one = rows[0].1;
    println!("| run | time | vs one host | coordinator link bytes |");
    println!("|---|---:|---:|---:|");
    for (what, seconds, sent) in rows {
        println!(
            "| {what} | {seconds:.1} s | {:.2}x | {:.1} MiB |",
            seconds / one,
            sent as f64 / f64::from(1 << 20)
        );
    }
}
