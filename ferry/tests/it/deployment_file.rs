//! `ferry deploy` on `local` machines, through the real binary: the README demo, redeploys,
//! rollback, failures that roll back, safety and downgrade checks, file errors.
//!
//! Every test runs in a fresh temp directory: the coordinator's store under `FERRY_ROOT`, the
//! hosts under `XDG_DATA_HOME/ferry/hosts/<name>`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_tests::git;

use crate::util::{coordinator, copy_tree, examples, ferry_at};

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

    fn host(&self, name: &str) -> PathBuf {
        self.path().join("data/ferry/hosts").join(name)
    }

    fn ferry(&self, args: &[&str]) -> Output {
        coordinator(self.path())
            .args(args)
            .env("XDG_DATA_HOME", self.path().join("data"))
            .output()
            .unwrap()
    }

    /// Run and expect an exit code; returns stdout + stderr.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.ferry(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "ferry {}:\n{text}", args.join(" "));
        text
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn current(&self, host: &str) -> Option<String> {
        fs::read_link(self.host(host).join("var/ferry/profiles/system"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

#[test]
fn the_demo_deploys_redeploys_and_rolls_back() {
    let env = Env::new();
    let demo = examples().join("demo.toml");
    let demo = demo.to_str().unwrap();
    let out = env.expect(0, &["deploy", demo]);
    assert!(out.contains("The following 2 machine(s) will be deployed: demo1, demo2"), "{out}");
    for (host, name) in [("demo1", "demo1"), ("demo2", "demo2")] {
        let root = env.host(host);
        assert_eq!(
            fs::read_to_string(root.join("var/hello.txt")).unwrap(),
            format!("Hello, demo, from {name}!\n")
        );
        assert!(fs::read_to_string(root.join("etc/motd")).unwrap().starts_with("Welcome"));
        assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), format!("{name}\n"));
        assert_eq!(env.current(host).as_deref(), Some("system-1-link"));
    }
    // Nothing changed: nothing copied, no new generation.
    let out = env.expect(0, &["deploy", demo]);
    assert_eq!(out.matches("already on this system").count(), 2, "{out}");
    let out = env.expect(0, &["deploy", demo, "--list-generations"]);
    assert_eq!(out.matches("(current)").count(), 2, "{out}");

    // A changed copy of the demo: new generation, the service is left alone, etc changes.
    let copy = env.path().join("demo");
    copy_tree(&examples(), &copy);
    fs::write(copy.join("motd"), "Changed motd\n").unwrap();
    let changed = copy.join("demo.toml");
    let changed = changed.to_str().unwrap();
    let out = env.expect(0, &["deploy", changed, "--on", "demo1", "--dry-run"]);
    assert!(out.contains("demo1: would copy 1 path(s)"), "{out}");
    // A dry run on a host never deployed to creates nothing there.
    let other = copy.join("other.toml");
    fs::write(&other, fs::read_to_string(changed).unwrap().replace("\"demo2\"", "\"fresh\""))
        .unwrap();
    let out = env.expect(0, &["deploy", other.to_str().unwrap(), "--on", "fresh", "--dry-run"]);
    assert!(out.contains("fresh: would copy 2 path(s)"), "{out}");
    assert!(!env.host("fresh").exists());
    assert_eq!(env.current("demo1").as_deref(), Some("system-1-link"));
    let out = env.expect(0, &["deploy", changed, "--on", "demo1"]);
    assert!(!out.contains("starting service hello"), "{out}");
    assert_eq!(env.current("demo1").as_deref(), Some("system-2-link"));
    assert_eq!(fs::read_to_string(env.host("demo1").join("etc/motd")).unwrap(), "Changed motd\n");
    assert_eq!(env.current("demo2").as_deref(), Some("system-1-link"));

    // Roll back demo1 for real; demo2 has nothing to roll back to.
    let out = env.expect(1, &["deploy", demo, "--roll-back"]);
    assert!(out.contains("rolled back from generation 2"), "{out}");
    assert!(out.contains("no generation before generation 1"), "{out}");
    assert_eq!(env.current("demo1").as_deref(), Some("system-1-link"));
    assert!(fs::read_to_string(env.host("demo1").join("etc/motd")).unwrap().starts_with("Welcome"));
    // The next deploy takes generation 3: generation 2 is never overwritten.
    env.expect(0, &["deploy", changed, "--on", "demo1"]);
    assert_eq!(env.current("demo1").as_deref(), Some("system-3-link"));

    // -x: on every machine, output prefixed, the profile's programs on PATH.
    let out = env.expect(0, &["deploy", demo, "-x", "--", "hello", "x"]);
    assert!(out.contains("demo1: Hello, x, from demo1!"), "{out}");
    assert!(out.contains("demo2: Hello, x, from demo2!"), "{out}");
    assert!(out.contains("demo2: command succeeded"), "{out}");
    let out = env.expect(1, &["deploy", demo, "--on", "demo2", "-x", "--", "sh", "-c", "exit 3"]);
    assert!(out.contains("demo2: command exited with code 3"), "{out}");
    // Usage errors: exit 2.
    let out = env.expect(2, &["deploy", demo, "-x"]);
    assert!(out.contains("'-x' specified but no command given"), "{out}");
    let out = env.expect(2, &["deploy", demo, "--", "true"]);
    assert!(out.contains("'--' was used, but '-x' was not specified"), "{out}");
}

const FLEET: &str = r#"
[operating-system.base]
packages = ["./hello"]
services = [{ name = "svc", start = 'echo SVC > "$FERRY_ROOT/var/svc"' }]

[[machine]]
name = "good"
environment = "local"
operating-system = { inherit = "base", timezone = "TZ" }

[[machine]]
name = "bad"
environment = "local"
operating-system = { inherit = "base", timezone = "TZ", BAD }

[[machine]]
name = "unhealthy"
environment = "local"
operating-system = { inherit = "base", timezone = "TZ", UNHEALTHY }

[[machine]]
name = "remote"
tags = ["remote"]
operating-system = "base"
[machine.configuration]
host-name = "127.0.0.1"
port = 1
host-key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVHkdCT6mGqEKxBnRWWvj5Lq1LcObrY6rUJ2cUpuHiN"
"#;

fn fleet(env: &Env, timezone: &str, bad: &str, unhealthy: &str) -> String {
    fs::create_dir_all(env.path().join("fleet/hello/bin")).unwrap();
    fs::write(env.path().join("fleet/hello/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    let text =
        FLEET.replace("TZ", timezone).replace(", BAD", bad).replace(", UNHEALTHY", unhealthy);
    env.write("fleet/fleet.toml", &text)
}

#[test]
fn failures_roll_back_and_never_stop_the_others() {
    let env = Env::new();
    let file = fleet(&env, "Etc/UTC", "", "");
    let out = env.expect(0, &["deploy", &file, "--on", "good,bad,unhealthy"]);
    assert_eq!(out.matches("activated").count(), 3, "{out}");

    // v2: `bad`'s service fails to start, `unhealthy`'s health check fails, the managed host
    // is unreachable (a closed loopback port); `good` still deploys.
    let file = fleet(
        &env,
        "Europe/Paris",
        r#", services = [{ name = "svc", start = "exit 3" }]"#,
        r#", health-checks = [{ command = "echo sick >&2; exit 4" }]"#,
    );
    let out = env.expect(1, &["deploy", &file]);
    let row = |name: &str| {
        out.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_owned()
    };
    assert!(row("good").contains(" ok ") && row("good").contains("activated"), "{out}");
    assert!(
        row("bad").contains("FAILED")
            && row("bad")
                .contains("activate exited with code 1; rolled back from generation 2 to 1"),
        "{out}"
    );
    assert!(
        row("unhealthy").contains("FAILED")
            && row("unhealthy")
                .contains("health checks failed: `echo sick >&2; exit 4` exited with code 4: sick"),
        "{out}"
    );
    assert!(row("remote").contains("FAILED") && row("remote").contains("connect"), "{out}");
    assert_eq!(env.current("good").as_deref(), Some("system-2-link"));
    assert_eq!(env.current("bad").as_deref(), Some("system-1-link"));
    assert_eq!(env.current("unhealthy").as_deref(), Some("system-1-link"));
    // The rolled-back hosts run the old system again.
    for host in ["bad", "unhealthy"] {
        assert_eq!(fs::read_to_string(env.host(host).join("etc/timezone")).unwrap(), "Etc/UTC\n");
    }
    // The failed generations are kept (never overwritten): the next one is 3.
    assert!(env.host("bad").join("var/ferry/profiles/system-2-link").exists());
    // ... and marked failed, with the reason.
    let out = env.expect(0, &["deploy", &file, "--on", "bad,good", "--list-generations"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("2 ")
            && l.ends_with("(failed: activate exited with code 1)")),
        "{out}"
    );
    assert_eq!(out.matches("(failed: ").count(), 1, "{out}");

    let out = env.ferry(&["deploy", &file, "--on", "bad,good", "--list-generations", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let generations = |name: &str| {
        let machines = json["machines"].as_array().unwrap();
        machines.iter().find(|m| m["machine"] == name).unwrap()["generations"].clone()
    };
    let bad = generations("bad");
    assert_eq!(bad[0]["failed"], serde_json::Value::Null, "{json}");
    let failed = bad[1]["failed"].as_str().unwrap_or_default();
    assert!(failed.contains("activate exited with code 1"), "{json}");
    assert_eq!(generations("good")[1]["failed"], serde_json::Value::Null, "{json}");

    // --roll-back --dry-run says where each would go, and changes nothing; a rollback never
    // returns to a failed generation (bad has 1 current and 2 failed: nothing before 1).
    let out = env.expect(1, &["deploy", &file, "--on", "good,bad", "--roll-back", "--dry-run"]);
    assert!(out.contains("good: would roll back from generation 2 to 1 ("), "{out}");
    assert!(
        out.contains("bad: cannot roll back: there is no generation before generation 1"),
        "{out}"
    );
    let out =
        env.ferry(&["deploy", &file, "--on", "good,bad", "--roll-back", "--dry-run", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["success"], false, "{json}");
    let good = &json["machines"][0];
    assert_eq!(
        (good["machine"].as_str(), good["from"].as_u64(), good["to"].as_u64()),
        (Some("good"), Some(2), Some(1)),
        "{json}"
    );
    assert!(
        json["machines"][1]["error"].as_str().unwrap_or_default().contains("no generation before"),
        "{json}"
    );
    assert_eq!(env.current("good").as_deref(), Some("system-2-link"));
}

#[test]
fn built_counts_only_the_systems_built() {
    let env = Env::new();
    let missing = "/gnu/store/00000000000000000000000000000000-missing";
    let file = fleet(&env, "Etc/UTC", &format!(r#", packages = ["{missing}"]"#), "");
    let out = env.expect(1, &["deploy", &file, "--on", "good,bad"]);
    assert!(out.contains("built 1 system(s)"), "{out}");
    assert!(out.contains(&format!("package {missing} is not in the local store")), "{out}");
}

#[test]
fn coordinator_probe_failure_rolls_back() {
    let env = Env::new();
    let file = fleet(&env, "Etc/UTC", "", "");
    env.expect(0, &["deploy", &file, "--on", "unhealthy"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // (Health checks are not part of the system: change the system too.)
    let file = fleet(
        &env,
        "Europe/Paris",
        "",
        &format!(r#", health-checks = [{{ tcp = {port}, host = "127.0.0.1", timeout = 2 }}]"#),
    );
    let out = env.expect(1, &["deploy", &file, "--on", "unhealthy"]);
    assert!(out.contains("the coordinator's checks failed: tcp 127.0.0.1:"), "{out}");
    assert!(out.contains("rolled back from generation 2 to 1"), "{out}");
    assert_eq!(env.current("unhealthy").as_deref(), Some("system-1-link"));
}

#[test]
fn first_deploy_failure_has_nothing_to_return_to() {
    let env = Env::new();
    let file = fleet(&env, "Etc/UTC", r#", services = [{ name = "svc", start = "false" }]"#, "");
    let out = env.expect(1, &["deploy", &file, "--on", "bad"]);
    assert!(out.contains("no previous generation to return to"), "{out}");
    // --fail-fast with one job: nothing starts after the failure.
    let out = env.expect(1, &["deploy", &file, "--on", "bad,unhealthy", "-j", "1", "--fail-fast"]);
    assert!(out.contains("skipped: an earlier machine failed (--fail-fast)"), "{out}");
    assert_eq!(env.current("unhealthy"), None);
}

#[test]
fn safety_check_names_the_missing_device() {
    let env = Env::new();
    let file = env.write(
        "fs.toml",
        r#"
[[machine]]
name = "m"
environment = "local"
[machine.operating-system]
file-systems = [{ device = "/dev/ferry-missing", mount-point = "/", type = "ext4" },
                { device = "LABEL=nolabel", mount-point = "/data", type = "ext4" },
                { device = "none", mount-point = "/tmp", type = "tmpfs" }]
"#,
    );
    let out = env.expect(1, &["deploy", &file]);
    assert!(
        out.contains(
            "safety checks failed: device '/dev/ferry-missing' not found: No such file or \
             directory; no file system with label 'nolabel'"
        ),
        "{out}"
    );
    assert_eq!(env.current("m"), None);
    // With the device present under the host root, and the label, it deploys.
    fs::create_dir_all(env.host("m").join("dev/disk/by-label")).unwrap();
    fs::write(env.host("m").join("dev/ferry-missing"), "").unwrap();
    fs::write(env.host("m").join("dev/disk/by-label/nolabel"), "").unwrap();
    env.expect(0, &["deploy", &file]);
    // And `safety-checks = false` skips them.
    let t = fs::read_to_string(&file).unwrap().replace("ferry-missing", "other");
    let file =
        env.write("fs.toml", &format!("{t}[machine.configuration]\nsafety-checks = false\n"));
    env.expect(0, &["deploy", &file]);
}

#[test]
fn downgrades_are_refused_unless_allowed() {
    let env = Env::new();
    let repo = env.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let deploy_file = |motd: &str, allow: bool| {
        fs::write(
            repo.join("d.toml"),
            format!(
                "[[machine]]\nname = \"m\"\nenvironment = \"local\"\n\
                 operating-system = {{ files = {{ motd = \"{motd}\" }} }}\n\
                 [machine.configuration]\nallow-downgrades = {allow}\n"
            ),
        )
        .unwrap();
        git(&repo, &["add", "d.toml"]);
        git(&repo, &["commit", "-q", "-m", motd]);
        git(&repo, &["rev-parse", "HEAD"])
    };
    let file = repo.join("d.toml");
    let file = file.to_str().unwrap();
    let old = deploy_file("one", false);
    env.expect(0, &["deploy", file]);
    deploy_file("two", false);
    env.expect(0, &["deploy", file]);
    let provenance =
        fs::read_to_string(env.host("m").join("var/ferry/current-system/provenance")).unwrap();
    assert!(provenance.contains("\"deployment-file\": \"d.toml\""), "{provenance}");
    git(&repo, &["checkout", "-q", &old]);
    let out = env.expect(1, &["deploy", file]);
    assert!(out.contains("aborting reconfiguration because commit"), "{out}");
    assert!(out.contains("allow-downgrades = true"), "{out}");
    assert_eq!(env.current("m").as_deref(), Some("system-2-link"));
    // Allowed: a warning, and the deploy goes on.
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["checkout", "-q", "-b", "old", &old]);
    let t = fs::read_to_string(repo.join("d.toml")).unwrap().replace("= false", "= true");
    fs::write(repo.join("d.toml"), t).unwrap();
    git(&repo, &["commit", "-q", "-am", "allow"]);
    let out = env.expect(0, &["deploy", file]);
    assert!(out.contains("warning: moving from"), "{out}");
}

#[test]
fn file_errors_have_line_and_column() {
    let env = Env::new();
    let file = env.write(
        "bad.toml",
        "[[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = {}\nport = 22\n",
    );
    let out = env.expect(1, &["deploy", &file]);
    assert!(out.contains(&format!("ferry: error: {file}:5:1: unknown field `port`")), "{out}");
    let file = env.write(
        "bad.toml",
        "[[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"nope\"\n",
    );
    let out = env.expect(1, &["deploy", &file]);
    assert!(out.contains(&format!("{file}:4:20: no [operating-system.nope] declaration")), "{out}");
    let file = env.write(
        "ok.toml",
        "[[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = {}\n",
    );
    let out = env.expect(1, &["deploy", &file, "--on", "zz"]);
    assert!(out.contains("no machine named 'zz'"), "{out}");
    let file = env.write(
        "ok.toml",
        "[[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = {}\n\
         [machine.configuration]\nsystem = \"mips64el-linux\"\n",
    );
    let out = env.expect(1, &["deploy", &file]);
    assert!(out.contains("incorrect target system ('mips64el-linux' was given"), "{out}");
}

/// `ferry host session`, driven by hand: requests answered one at a time; an unknown one
/// ends the session with a clear error.
#[test]
fn host_session_answers_requests_and_refuses_unknown_ones() {
    use std::io::Write;
    let env = Env::new();
    let root = env.path().join("host");
    let session = |input: &str| {
        let mut child = ferry_at(&root)
            .args(["host", "session"])
            .env("HOME", env.path().join("home"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let path = "/gnu/store/00000000000000000000000000000000-x";
    let facts = format!("facts {{\"system\":null,\"devices\":[],\"paths\":[\"{path}\"]}}\n");
    let out = session(&facts);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["missing"], serde_json::json!([path]), "{answer}");
    assert_eq!(answer["generation"], serde_json::Value::Null, "{answer}");

    let out = session(&format!("{facts}reboot now\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "facts answered first");
    assert!(stderr.contains("unknown session request \"reboot now\""), "{stderr}");
}
