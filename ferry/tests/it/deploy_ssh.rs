//! `ferry deploy` to `managed-host` machines over SSH, end to end: real OpenSSH servers on
//! loopback (`ferry_tests::sshd::Fleet`), each machine with its own `root` on the host.
//!
//! Deploy to three hosts, dry run, redeploy where only the changed paths travel, `-x`,
//! `--list-generations`, `--roll-back`; an unreachable host, an unknown host key and a failing
//! `activate` next to a host that deploys; confirmation never given (the host rolls back by
//! itself) and rejected by a failing coordinator probe; downgrade refused and allowed; a
//! safety check failing for a missing device.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_tests::git;
use ferry_tests::sshd::{free_port, remote_path, Fleet, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{coordinator, ferry_dir};

pub(crate) struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new() -> Env {
        let dir = crate::util::coordinator_dir();
        crate::util::hello_package(dir.path());
        Env { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ferry(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = coordinator(self.path());
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Run, expect an exit code; returns (stdout, stderr).
    pub(crate) fn expect_env(
        &self,
        code: i32,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (String, String) {
        let out = self.ferry(args, env);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(out.status.code(), Some(code), "ferry {}:\n{stdout}\n{stderr}", args.join(" "));
        (stdout, stderr)
    }

    pub(crate) fn expect(&self, code: i32, args: &[&str]) -> (String, String) {
        self.expect_env(code, args, &[])
    }

    /// `ferry deploy FILE --json ARGS...`: the summary, per machine.
    pub(crate) fn deploy(
        &self,
        code: i32,
        file: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Summary {
        let mut all = vec!["deploy", file, "--json"];
        all.extend(args);
        let (stdout, stderr) = self.expect_env(code, &all, env);
        let json: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        Summary { json, stderr }
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> String {
        let p = self.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

pub(crate) struct Summary {
    pub json: Value,
    pub stderr: String,
}

impl Summary {
    pub(crate) fn machine(&self, name: &str) -> &Value {
        self.json["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == name)
            .unwrap_or_else(|| panic!("no {name} in {}", self.json))
    }
}

/// Hosts whose sessions find this build's `ferry` on PATH (no upload of a debug binary).
pub(crate) fn fleet(n: usize) -> Fleet {
    Fleet::start_with(
        n,
        &SshdOptions { path: Some(remote_path(&[&ferry_dir()])), ..SshdOptions::default() },
    )
}

pub(crate) fn root(sshd: &Sshd) -> PathBuf {
    sshd.dir().join("root")
}

/// A `[[machine]]` for an sshd of the fleet.
pub(crate) fn machine(name: &str, sshd: &Sshd, os: &str, extra: &str) -> String {
    format!(
        "[[machine]]\nname = \"{name}\"\noperating-system = {os}\n\
         [machine.configuration]\nhost-name = \"{}\"\nport = {}\nuser = \"{}\"\n\
         identity = \"{}\"\nhost-key = \"{}\"\nroot = \"{}\"\n{extra}\n",
        sshd.host(),
        sshd.port(),
        sshd.user(),
        sshd.identity_ed25519().display(),
        sshd.host_key(),
        root(sshd).display()
    )
}

pub(crate) const BASE: &str = r#"
[operating-system.base]
packages = ["./pkgs/hello"]
files = { motd = "MOTD" }
services = [{ name = "hello", start = 'hello web > "$FERRY_ROOT/var/hello.txt"' }]
health-checks = [{ command = 'grep -q "Hello, web" "$FERRY_ROOT/var/hello.txt"' }]
"#;

pub(crate) fn current(root: &Path) -> Option<String> {
    fs::read_link(root.join("var/ferry/profiles/system"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

#[test]
fn deploy_three_hosts_redeploy_execute_roll_back() {
    let env = Env::new();
    let fleet = fleet(3);
    let names = ["web1", "web2", "web3"];
    let file = |motd: &str| {
        let mut text = BASE.replace("MOTD", motd);
        for (name, sshd) in names.iter().zip(fleet.iter()) {
            text.push_str(&machine(name, sshd, "\"base\"", "confirm-timeout = 20"));
        }
        env.write("fleet.toml", &text)
    };
    let f = file("one");
    let s = env.deploy(0, &f, &[], &[]);
    assert!(s.stderr.contains("generated a signing key pair in"), "{}", s.stderr);
    for name in names {
        let m = s.machine(name);
        assert_eq!(m["success"], true, "{}\n{}", s.json, s.stderr);
        assert_eq!(m["generation"], 1, "{}", s.json);
        assert!(m["paths_sent"].as_u64().unwrap() >= 2, "{}", s.json);
    }
    // Compress once: the package's stream was made by one machine's copy, copied by the others.
    let shared: u64 = names.iter().map(|n| s.machine(n)["paths_shared"].as_u64().unwrap()).sum();
    assert!(shared >= 2, "{}", s.json);
    let first_paths = s.machine("web1")["paths_sent"].as_u64().unwrap();
    for sshd in fleet.iter() {
        let r = root(sshd);
        assert_eq!(current(&r).as_deref(), Some("system-1-link"));
        assert_eq!(fs::read_to_string(r.join("var/hello.txt")).unwrap(), "Hello, web\n");
        env.expect(0, &["--root", r.to_str().unwrap(), "store", "verify", "--check-contents"]);
    }

    // The declaration changes: a dry run lists what would travel and changes nothing.
    let f = file("two");
    let (stdout, _) = env.expect(0, &["deploy", &f, "--dry-run", "--on", "web1", "--json"]);
    let plan: Value = serde_json::from_str(&stdout).unwrap();
    let would = plan["machines"][0]["plan"]["paths"].as_array().unwrap().clone();
    assert!(!would.is_empty() && (would.len() as u64) < first_paths, "{stdout}");
    assert!(
        would.iter().all(|p| !p["path"].as_str().unwrap().contains("-hello")),
        "the package is there already: {stdout}"
    );
    let bytes: u64 = would.iter().map(|p| p["nar_size"].as_u64().unwrap()).sum();
    assert_eq!(plan["machines"][0]["nar_bytes_sent"], bytes, "{stdout}");
    assert_eq!(plan["machines"][0]["paths_sent"], would.len(), "{stdout}");
    assert_eq!(current(&root(&fleet.hosts[0])).as_deref(), Some("system-1-link"));

    // Redeploy: only the changed paths travel, exactly what the dry run announced.
    let s = env.deploy(0, &f, &[], &[]);
    for name in names {
        let m = s.machine(name);
        assert_eq!(m["success"], true, "{}\n{}", s.json, s.stderr);
        assert_eq!(m["generation"], 2, "{}", s.json);
        assert_eq!(m["paths_sent"].as_u64().unwrap(), would.len() as u64, "{}", s.json);
        assert_eq!(m["nar_bytes_sent"].as_u64().unwrap(), bytes, "{}", s.json);
        assert!(m["wire_bytes_sent"].as_u64().unwrap() > 0, "{}", s.json);
    }
    // activate's output came back, prefixed with the machine.
    assert!(s.stderr.contains("web2: activate: "), "{}", s.stderr);
    for sshd in fleet.iter() {
        assert_eq!(fs::read_to_string(root(sshd).join("etc/motd")).unwrap(), "two");
    }
    // Nothing changed: nothing travels, nothing is activated.
    let s = env.deploy(0, &f, &[], &[]);
    assert_eq!(s.machine("web3")["paths_sent"], 0, "{}", s.json);
    assert_eq!(s.machine("web3")["detail"], "already on this system", "{}", s.json);

    // -x: in parallel, output prefixed, exit 0 only if all returned 0.
    let (stdout, _) = env.expect(0, &["deploy", &f, "-x", "--", "sh", "-c", "cat etc/motd; echo"]);
    for name in names {
        assert!(stdout.contains(&format!("{name}: two")), "{stdout}");
    }
    let (stdout, stderr) = env.expect(
        1,
        &["deploy", &f, "-x", "--", "sh", "-c", "hello x; [ \"$(cat etc/motd)\" = one ]"],
    );
    assert!(stdout.contains("web1: Hello, x"), "the profile is on PATH: {stdout}");
    assert!(stderr.contains("web2: command exited with code 1"), "{stderr}");

    // Generations, then roll back.
    let (stdout, _) = env.expect(0, &["deploy", &f, "--list-generations", "--on", "web3"]);
    assert!(stdout.contains("   2  ") && stdout.contains("(current)"), "{stdout}");
    let (stdout, _) = env.expect(0, &["deploy", &f, "--roll-back"]);
    assert_eq!(stdout.matches("rolled back from generation 2").count(), 3, "{stdout}");
    for sshd in fleet.iter() {
        assert_eq!(current(&root(sshd)).as_deref(), Some("system-1-link"));
        assert_eq!(fs::read_to_string(root(sshd).join("etc/motd")).unwrap(), "one");
    }
}

#[test]
fn one_unreachable_one_failing_the_third_deploys() {
    let env = Env::new();
    let fleet = fleet(3);
    let closed = free_port();
    let file = |bad_start: &str| {
        let mut text = BASE.replace("MOTD", bad_start);
        text.push_str(&machine("good", &fleet.hosts[0], "\"base\"", "confirm-timeout = 20"));
        let bad = format!(
            "{{ inherit = \"base\", services = [{{ name = \"hello\", start = '{bad_start}' }}], \
             health-checks = [] }}"
        );
        text.push_str(&machine("bad", &fleet.hosts[1], &bad, "confirm-timeout = 20"));
        let gone = machine("gone", &fleet.hosts[2], "\"base\"", "")
            .replace(&format!("port = {}", fleet.hosts[2].port()), &format!("port = {closed}"));
        text.push_str(&gone);
        // A host whose key is not pinned and not in known_hosts.
        let unknown = machine("unknown", &fleet.hosts[2], "\"base\"", "")
            .lines()
            .filter(|l| !l.starts_with("host-key"))
            .collect::<Vec<_>>()
            .join("\n");
        text.push_str(&unknown);
        env.write("fleet.toml", &text)
    };
    let s = env.deploy(0, &file("true"), &["--on", "good,bad"], &[]);
    assert_eq!(s.json["success"], true, "{}\n{}", s.json, s.stderr);
    let s = env.deploy(1, &file("exit 1"), &[], &[]);
    let good = s.machine("good");
    assert_eq!(good["success"], true, "{}\n{}", s.json, s.stderr);
    assert_eq!(good["generation"], 2, "{}", s.json);
    let bad = s.machine("bad");
    assert_eq!(bad["success"], false, "{}", s.json);
    assert_eq!(bad["generation"], 1, "{}", s.json);
    let detail = bad["detail"].as_str().unwrap();
    assert!(
        detail.contains("activate exited with code 1; rolled back from generation 2 to 1"),
        "{detail}"
    );
    assert_eq!(current(&root(&fleet.hosts[1])).as_deref(), Some("system-1-link"));
    let gone = s.machine("gone")["detail"].as_str().unwrap();
    assert!(gone.contains("connect") && gone.contains(&closed.to_string()), "{gone}");
    let unknown = s.machine("unknown")["detail"].as_str().unwrap();
    assert!(unknown.contains("ssh-keyscan -t ed25519 -p"), "{unknown}");
    // The table names each failure (on stderr with --json).
    assert!(
        s.stderr.lines().any(|l| l.starts_with("bad ") && l.contains("FAILED")),
        "{}",
        s.stderr
    );
    assert!(s.stderr.contains("gone: error: connect and facts: "), "{}", s.stderr);
}

#[test]
fn confirmation_withheld_or_rejected_rolls_back() {
    let env = Env::new();
    let fleet = fleet(1);
    let sshd = &fleet.hosts[0];
    let closed = free_port();
    let file = |motd: &str, probe: &str| {
        let mut text = BASE.replace("MOTD", motd);
        let os = format!("{{ inherit = \"base\"{probe} }}");
        text.push_str(&machine("m", sshd, &os, "confirm-timeout = 2"));
        env.write("m.toml", &text)
    };
    let s = env.deploy(0, &file("one", ""), &[], &[]);
    assert_eq!(s.machine("m")["generation"], 1, "{}", s.json);
    // The coordinator never confirms: the host rolls back by itself after 2 s.
    let s = env.deploy(1, &file("two", ""), &[], &[("FERRY_TEST_NEVER_CONFIRM", "1")]);
    let detail = s.machine("m")["detail"].as_str().unwrap();
    assert!(
        detail.contains("no confirmation from the coordinator within")
            && detail.contains("rolled back from generation 2 to 1"),
        "{detail}"
    );
    assert_eq!(current(&root(sshd)).as_deref(), Some("system-1-link"));
    assert_eq!(fs::read_to_string(root(sshd).join("etc/motd")).unwrap(), "one");
    // A failing TCP probe from the coordinator: it rejects, the host rolls back.
    let probe = format!(", health-checks = [{{ tcp = {closed}, timeout = 1 }}]");
    let s = env.deploy(1, &file("three", &probe), &[], &[]);
    let detail = s.machine("m")["detail"].as_str().unwrap();
    assert!(
        detail.contains("the coordinator's checks failed: tcp 127.0.0.1")
            && detail.contains("rolled back from generation 3 to 1"),
        "{detail}"
    );
    assert_eq!(current(&root(sshd)).as_deref(), Some("system-1-link"));
    // A confirmation nobody waits for (too late) is refused, and leaves nothing behind.
    let r = root(sshd);
    let (_, stderr) = env.expect(1, &["--root", r.to_str().unwrap(), "host", "confirm", "late-1"]);
    assert!(
        stderr.contains("no activation on this host waits for confirmation late-1"),
        "{stderr}"
    );
    let left: Vec<_> = fs::read_dir(r.join("var/ferry/confirm")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn downgrade_and_safety_checks_over_ssh() {
    let env = Env::new();
    let fleet = fleet(1);
    let sshd = &fleet.hosts[0];
    let repo = env.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let write = |motd: &str, allow: bool, fs_lines: &str| {
        let os = format!("{{ files = {{ motd = \"{motd}\" }}{fs_lines} }}");
        let text = machine("m", sshd, &os, &format!("allow-downgrades = {allow}"));
        fs::write(repo.join("d.toml"), text).unwrap();
        git(&repo, &["add", "d.toml"]);
        git(&repo, &["commit", "-q", "-m", motd]);
        git(&repo, &["rev-parse", "HEAD"])
    };
    let file = repo.join("d.toml");
    let file = file.to_str().unwrap();

    // Safety check: the device is missing on the host.
    let missing =
        r#", file-systems = [{ device = "/dev/ferry-missing", mount-point = "/", type = "ext4" }]"#;
    write("zero", false, missing);
    let (stdout, _) = env.expect(1, &["deploy", file]);
    assert!(
        stdout.contains("safety checks failed: device '/dev/ferry-missing' not found"),
        "{stdout}"
    );
    assert_eq!(current(&root(sshd)), None);

    let old = write("one", false, "");
    env.expect(0, &["deploy", file]);
    write("two", false, "");
    env.expect(0, &["deploy", file]);
    git(&repo, &["checkout", "-q", &old]);
    let (stdout, _) = env.expect(1, &["deploy", file]);
    assert!(
        stdout.contains("downgrade check: aborting reconfiguration because commit"),
        "{stdout}"
    );
    assert_eq!(current(&root(sshd)).as_deref(), Some("system-2-link"));
    // Allowed: a warning, and the deploy goes on.
    git(&repo, &["checkout", "-q", "-b", "old", &old]);
    write("one", true, "");
    let (_, stderr) = env.expect(0, &["deploy", file]);
    assert!(stderr.contains("warning: moving from"), "{stderr}");
    assert_eq!(current(&root(sshd)).as_deref(), Some("system-3-link"));
}

#[test]
fn the_host_rolls_back_by_itself_when_the_coordinator_goes_away() {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    let fleet = fleet(1);
    let sshd = &fleet.hosts[0];
    let file = |motd: &str| {
        let mut text = BASE.replace("MOTD", motd);
        text.push_str(&machine("m", sshd, "\"base\"", "confirm-timeout = 3"));
        env.write("m.toml", &text)
    };
    env.deploy(0, &file("one"), &[], &[]);
    // The coordinator dies while the host waits for confirmation: the channel carrying the
    // activation closes under the host, which must still roll back at the deadline.
    let f = file("two");
    let mut child = coordinator(env.path())
        .args(["deploy", &f])
        .env("FERRY_TEST_NEVER_CONFIRM", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let waiting = line.contains("not confirming");
        seen.push(line);
        if waiting {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("not confirming")), "{seen:#?}");
    assert_eq!(current(&root(sshd)).as_deref(), Some("system-2-link"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while current(&root(sshd)).as_deref() != Some("system-1-link") {
        assert!(std::time::Instant::now() < deadline, "no rollback on the host: {seen:#?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Give the old activate time to finish before looking at what it wrote.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while fs::read_to_string(root(sshd).join("etc/motd")).unwrap_or_default() != "one" {
        assert!(std::time::Instant::now() < deadline, "the old system is not active again");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
