//! `ferry deploy` of systems built by Nix (`system = "/nix/store/…"` with its `switch`
//! command) from the coordinator's Nix chroot store (`store = "nix"`) to two real sshd hosts
//! (whose stores are ferry's, with store dir `/nix/store`): generations in the host's
//! `/nix/var/nix/profiles/system` as Nix names them, each activated by its own
//! `bin/switch-to-configuration switch`; a second generation where only the changed paths
//! travel; a failing switch, a failing health check and a missing confirmation roll back with
//! the previous generation's own switch command; `boot-switch` when the live switch fails;
//! `--list-generations` and `--roll-back` on the Nix profile. Into hosts whose stores are Nix's
//! own: Nix registers each path (through `nix-store --serve --write`) with the host's ferry Nix
//! signature, and verifies clean.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_tests::sshd::{remote_path, Fleet, Sshd, SshdOptions};
use serde_json::Value;

use crate::nix_source_store::build_system_with;
use crate::util::{coordinator, ferry_dir};

fn root(sshd: &Sshd) -> PathBuf {
    sshd.dir().join("root")
}

/// The deployment: `top` with its switch (and boot-switch), to every host of the fleet.
fn deployment(fleet: &Fleet, top: &str, extra_os: &str) -> String {
    let mut text = format!(
        "store = \"nix\"\n[operating-system.sys]\nsystem = \"{top}\"\n\
         switch = [\"bin/switch-to-configuration\", \"switch\"]\n{extra_os}\n"
    );
    for (i, sshd) in fleet.iter().enumerate() {
        text.push_str(&format!(
            "[[machine]]\nname = \"h{i}\"\noperating-system = \"sys\"\n\
             [machine.configuration]\nhost-name = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
             identity = \"{}\"\nhost-key = \"{}\"\nroot = \"{}\"\nconfirm-timeout = 3\n",
            sshd.port(),
            sshd.user(),
            sshd.identity_ed25519().display(),
            sshd.host_key(),
            root(sshd).display()
        ));
    }
    text
}

struct Run {
    dir: PathBuf,
}

impl Run {
    /// A test directory (with the coordinator's `home`) and a run in it.
    fn new() -> (tempfile::TempDir, Run) {
        let tmp = crate::util::coordinator_dir();
        let run = Run { dir: tmp.path().to_owned() };
        (tmp, run)
    }

    fn ferry(&self, code: i32, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
        let mut c = coordinator(&self.dir);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out: Output = c.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(out.status.code(), Some(code), "ferry {}:\n{stdout}\n{stderr}", args.join(" "));
        (stdout, stderr)
    }

    /// Deploy `text`; the summary's machines, by name.
    fn deploy(&self, code: i32, text: &str, env: &[(&str, &str)]) -> Vec<Value> {
        let file = self.dir.join("fleet.toml");
        fs::write(&file, text).unwrap();
        let (stdout, stderr) = self.ferry(code, &["deploy", file.to_str().unwrap(), "--json"], env);
        let json: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        json["machines"].as_array().unwrap().clone()
    }
}

/// The host's profile: the generation `system` points at, and what that link points at.
fn profile(root: &Path) -> (String, String) {
    let dir = root.join("nix/var/nix/profiles");
    let current = fs::read_link(dir.join("system")).unwrap().to_string_lossy().into_owned();
    let system = fs::read_link(dir.join(&current)).unwrap().to_string_lossy().into_owned();
    (current, system)
}

/// The switch log's last line: `$0 $1` of the last switch command run.
fn last_switch(root: &Path) -> String {
    let log = fs::read_to_string(root.join("switch.log")).unwrap_or_default();
    log.lines().last().unwrap_or_default().to_owned()
}

fn switch_line(root: &Path, top: &str, arg: &str) -> String {
    format!("{}{top}/bin/switch-to-configuration {arg}", root.display())
}

#[test]
fn nix_systems_deploy_switch_and_roll_back_with_their_own_commands() {
    let (tmp, run) = Run::new();
    let nix_root = tmp.path().join("coordinator");
    let top1 = build_system_with(&nix_root, &[]);
    let top2 = build_system_with(&nix_root, &[("appText", "app-v2")]);
    let top3 = build_system_with(&nix_root, &[("appText", "app-v2"), ("failOn", "switch")]);
    let top4 = build_system_with(&nix_root, &[("appText", "app-v3"), ("failOn", "switch")]);
    let fleet = Fleet::start_with(
        2,
        &SshdOptions { path: Some(remote_path(&[&ferry_dir()])), ..SshdOptions::default() },
    );
    let roots: Vec<PathBuf> = fleet.iter().map(root).collect();

    // Generation 1: the whole closure travels; each host switched with `switch`.
    for m in run.deploy(0, &deployment(&fleet, &top1, ""), &[]) {
        assert_eq!((m["generation"].as_u64(), m["paths_sent"].as_u64()), (Some(1), Some(3)), "{m}");
    }
    for r in &roots {
        assert_eq!(profile(r), ("system-1-link".into(), format!("{}{top1}", r.display())));
        assert_eq!(last_switch(r), switch_line(r, &top1, "switch"));
    }

    // Generation 2 changes `app`: `app` and the toplevel travel, `lib` does not.
    for m in run.deploy(0, &deployment(&fleet, &top2, ""), &[]) {
        assert_eq!((m["generation"].as_u64(), m["paths_sent"].as_u64()), (Some(2), Some(2)), "{m}");
    }
    for r in &roots {
        assert_eq!(profile(r), ("system-2-link".into(), format!("{}{top2}", r.display())));
        assert_eq!(last_switch(r), switch_line(r, &top2, "switch"));
    }

    // A live switch that fails, with a boot-switch: activated for the next boot.
    let boot = "boot-switch = [\"bin/switch-to-configuration\", \"boot\"]";
    for m in run.deploy(0, &deployment(&fleet, &top3, boot), &[]) {
        assert_eq!(m["generation"].as_u64(), Some(3), "{m}");
        assert_eq!(m["detail"], "activated for next boot (the live switch failed)", "{m}");
    }
    for r in &roots {
        assert_eq!(profile(r), ("system-3-link".into(), format!("{}{top3}", r.display())));
        assert_eq!(last_switch(r), switch_line(r, &top3, "boot"));
    }

    // A switch that fails without one: back to generation 3, with generation 3's own
    // commands (its switch, failing, then its boot-switch).
    for m in run.deploy(1, &deployment(&fleet, &top4, ""), &[]) {
        let detail = m["detail"].as_str().unwrap();
        assert!(detail.contains("rolled back from generation 4 to 3"), "{m}");
    }
    for r in &roots {
        assert_eq!(profile(r).0, "system-3-link");
        let log = fs::read_to_string(r.join("switch.log")).unwrap();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        let want = [("top3", "boot"), ("top3", "switch"), ("top4", "switch")]
            .map(|(t, a)| switch_line(r, if t == "top3" { &top3 } else { &top4 }, a));
        assert_eq!(tail, want);
    }

    // A failing health check: back to generation 3.
    let failing = "health-checks = [{ command = \"false\" }]";
    for m in run.deploy(1, &deployment(&fleet, &top1, failing), &[]) {
        let detail = m["detail"].as_str().unwrap();
        assert!(detail.contains("health checks failed"), "{m}");
        assert!(detail.contains("rolled back from generation 5 to 3"), "{m}");
    }
    for r in &roots {
        assert_eq!(profile(r).0, "system-3-link");
        assert_eq!(last_switch(r), switch_line(r, &top3, "boot"));
    }

    // No confirmation: the host rolls back by itself.
    let never = [("FERRY_TEST_NEVER_CONFIRM", "1")];
    for m in run.deploy(1, &deployment(&fleet, &top2, ""), &never) {
        let detail = m["detail"].as_str().unwrap();
        assert!(detail.contains("no confirmation from the coordinator within"), "{m}");
        assert!(detail.contains("rolled back from generation 6 to 3"), "{m}");
    }
    for r in &roots {
        assert_eq!(profile(r).0, "system-3-link");
    }

    // --list-generations and --roll-back on the Nix profile.
    let file = tmp.path().join("fleet.toml");
    fs::write(&file, deployment(&fleet, &top2, "")).unwrap();
    let f = file.to_str().unwrap();
    let (stdout, _) = run.ferry(0, &["deploy", f, "--list-generations", "--on", "h0"], &[]);
    let current = format!("{}{top3}  (current)", roots[0].display());
    assert!(stdout.lines().any(|l| l.starts_with("     3  ") && l.ends_with(&current)), "{stdout}");
    assert_eq!(stdout.matches(&top2).count(), 2, "generations 2 and 6: {stdout}");
    let (stdout, _) = run.ferry(0, &["deploy", f, "--roll-back"], &[]);
    assert_eq!(stdout.matches("rolled back from generation 3").count(), 2, "{stdout}");
    for r in &roots {
        assert_eq!(profile(r).0, "system-2-link");
        assert_eq!(last_switch(r), switch_line(r, &top2, "switch"));
    }
}

/// `nix-store --store ROOT ARGS...` with the tests' hermetic Nix; its stdout.
fn host_nix(root: &Path, args: &[&str]) -> String {
    let out = ferry_tests::nix::command("nix-store").arg("--store").arg(root).args(args).output();
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "nix-store --store {} {args:?}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nix_systems_go_into_the_hosts_own_nix_stores() {
    ferry_tests::nix::require();
    let (tmp, run) = Run::new();
    let nix_root = tmp.path().join("coordinator");
    let top1 = build_system_with(&nix_root, &[]);
    let top2 = build_system_with(&nix_root, &[("appText", "app-v2")]);
    let fleet = Fleet::start_with(
        2,
        &SshdOptions { path: Some(remote_path(&[&ferry_dir()])), ..SshdOptions::default() },
    );
    let roots: Vec<PathBuf> = fleet.iter().map(root).collect();
    for r in &roots {
        host_nix(r, &["--init"]);
    }

    // `store = "auto"` (the default) finds each host's Nix store.
    let file = tmp.path().join("fleet.toml");
    fs::write(&file, deployment(&fleet, &top1, "")).unwrap();
    let (stdout, _) = run.ferry(0, &["deploy", file.to_str().unwrap(), "--dry-run"], &[]);
    for i in 0..2 {
        assert!(
            stdout.contains(&format!("h{i}: the host's store: nix (store = \"auto\")")),
            "{stdout}"
        );
    }

    // Generation 1, then 2 where only `app` and the toplevel travel; Nix registers them.
    for (top, generation, sent) in [(&top1, 1, 3), (&top2, 2, 2)] {
        for m in run.deploy(0, &deployment(&fleet, top, ""), &[]) {
            assert_eq!(
                (m["generation"].as_u64(), m["paths_sent"].as_u64()),
                (Some(generation), Some(sent)),
                "{m}"
            );
        }
        for r in &roots {
            assert_eq!(
                profile(r),
                (format!("system-{generation}-link"), format!("{}{top}", r.display()))
            );
            assert_eq!(last_switch(r), switch_line(r, top, "switch"));
            host_nix(r, &["--verify", "--check-contents"]);
            let closure = host_nix(r, &["--query", "--requisites", top]);
            let names: Vec<&str> = closure.lines().map(|l| &l[44..]).collect();
            assert_eq!(names, ["lib", "app", "toplevel"], "{closure}");
            // Registered by Nix with the host's ferry Nix signature.
            let sigs = ferry_tests::nix::command("nix")
                .args(["path-info", "--sigs", "--store"])
                .arg(r)
                .arg(top)
                .output()
                .unwrap();
            let sigs = String::from_utf8_lossy(&sigs.stdout);
            assert!(sigs.contains("-ferry-1:"), "{sigs}");
        }
    }
}

/// `ferry copy --to local:///ROOT?store=nix` (and `ssh://…?store=nix`): the agent runs as
/// `ferry serve --store nix` and hands each verified path to the host's own Nix, as a deploy
/// does; Nix registers the closure, signed by the host's ferry key.
#[test]
fn copy_with_store_nix_goes_into_the_hosts_nix_store() {
    ferry_tests::nix::require();
    let (tmp, _) = Run::new();
    let top = build_system_with(&tmp.path().join("coordinator"), &[]);
    let host = tmp.path().join("host");
    host_nix(&host, &["--init"]);
    let uri = format!("local://{}?store=nix", host.display());
    let out = coordinator(tmp.path())
        .envs(ferry_tests::nix::remote_env())
        .args(["--store", "nix", "copy", "--authorize", "--json", "--to", &uri, &top])
        .output()
        .unwrap();
    let stdout = ferry_tests::success_stdout(&["copy", "--to", &uri], out);
    host_nix(&host, &["--verify", "--check-contents"]);
    let closure = host_nix(&host, &["--query", "--requisites", &top]);
    assert_eq!(closure.lines().count(), 3, "{closure}\n{stdout}");
    let sigs = ferry_tests::nix::command("nix")
        .args(["path-info", "--sigs", "--store"])
        .arg(&host)
        .arg(&top)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sigs.stdout).contains("-ferry-1:"));
    // ferry made no store of its own beside Nix's.
    assert!(!host.join("var/ferry/db").exists());
}
