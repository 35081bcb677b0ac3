//! The agent ferry uploads to a host without one (issue 13's first contact, issue 14's "verified
//! before it runs"), against Debian's OpenSSH on loopback with a fresh `$HOME` and no `ferry`
//! on the host's PATH: the agent is a static executable that starts in a root without a
//! dynamic loader; an upload cut at several points resumes and leaves no temp file; a cached
//! agent with other bytes is replaced, never run; `deploy --dry-run` on a fresh host changes
//! nothing there; a `ferry` on the host's PATH runs only when its bytes are ours; a host of
//! another architecture, or `agent = "PATH"` without one, is a clear error. The probe starts a
//! cached agent in the same exec (one `Starting session: command` in the server's log), and a
//! verification record never lets changed bytes run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};

use crate::util::FERRY;
const STOP_ENV: &str = "FERRY_TEST_AGENT_UPLOAD_STOP_AFTER";

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

/// The uploaded agent's name: `ferry-<version>-<sha256>`.
pub(crate) fn agent_name() -> String {
    format!("ferry-{}-{}", env!("CARGO_PKG_VERSION"), sha256(Path::new(FERRY)))
}

/// Whether the ELF file has a `PT_INTERP` program header (needs a dynamic loader).
fn has_interp(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(bytes[4], 2, "64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

/// A local store with a small closure, and a fresh host: sshd with its own `$HOME` and the
/// default PATH (no ferry there).
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    top: String,
    home: tempfile::TempDir,
    sshd: Sshd,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_path(None)
    }

    /// As [`Setup::new`], with `path` as the host's PATH.
    fn with_path(path: Option<String>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("local");
        let (_, top) = ferry_tests::add_base_and_big(FERRY, &root, &dir.path().join("src"), 1);
        let home = tempfile::tempdir().unwrap();
        let sshd = Sshd::start_with(SshdOptions {
            extra_config: vec![format!("SetEnv HOME={}", home.path().display())],
            path,
            ..SshdOptions::default()
        });
        Setup { _dir: dir, root, top, home, sshd }
    }

    fn agent_dir(&self) -> PathBuf {
        self.home.path().join(".cache/ferry/agent")
    }

    /// `ferry copy --to ssh://...?root=HOST/h`, with `env`.
    fn copy(&self, env: &[(&str, &str)]) -> Output {
        let host = self.sshd.dir().join("h");
        let mut c = ferry_tests::ferry_command(FERRY);
        c.args(["--root", self.root.to_str().unwrap(), "copy", "--authorize", "--identity"])
            .arg(self.sshd.identity_ed25519())
            .arg("--known-hosts")
            .arg(self.sshd.known_hosts())
            .arg("--to")
            .arg(format!(
                "ssh://{}@127.0.0.1:{}?root={}",
                self.sshd.user(),
                self.sshd.port(),
                host.display()
            ))
            .arg(&self.top);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// The files in the agent directory but the verification records (`NAME.verified`).
    fn agent_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.agent_dir())
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| !n.ends_with(".verified"));
        names.sort();
        names
    }
}

/// The commands the server has run so far (`Starting session: command …` lines of its log).
fn execs(sshd: &Sshd) -> usize {
    sshd.log().lines().filter(|l| l.contains("Starting session: command")).count()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_agent_is_static_and_starts_in_a_root_without_a_loader() {
    let s = Setup::new();
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    let agent = s.agent_dir().join(agent_name());
    assert_eq!(s.agent_files(), vec![agent_name()]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(s.agent_dir()).unwrap().permissions().mode() & 0o777, 0o700);
    let bytes = fs::read(&agent).unwrap();
    assert_eq!(bytes, fs::read(FERRY).unwrap(), "the upload is this executable");
    assert!(!has_interp(&bytes), "the agent needs no dynamic loader");

    // Run it in a root holding only the agent and a static busybox.
    let busybox = Path::new("/bin/busybox");
    let uid = Command::new("id").arg("-u").output().unwrap();
    if !busybox.exists() || String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIP the chroot run: needs root and busybox-static (/bin/busybox)");
        return;
    }
    let jail = tempfile::tempdir().unwrap();
    fs::create_dir(jail.path().join("bin")).unwrap();
    fs::copy(busybox, jail.path().join("bin/busybox")).unwrap();
    fs::copy(&agent, jail.path().join("ferry")).unwrap();
    assert!(!jail.path().join("lib64").exists() && !jail.path().join("lib").exists());
    let out = Command::new("chroot")
        .arg(jail.path())
        .args(["/bin/busybox", "sh", "-c", "/ferry --version"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // `ferry VERSION`, and ` (COMMIT)` in a git checkout.
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with(&format!("ferry {}", env!("CARGO_PKG_VERSION"))), "{version}");
}

#[test]
fn an_interrupted_upload_resumes_and_leaves_no_temp_file() {
    let s = Setup::new();
    let part = |ext: &str| s.agent_dir().join(format!("{}.{ext}.part", agent_name()));
    // Cut after 1 byte, then 64 KiB, then 1 MiB more: each run keeps what arrived.
    let mut expected = 0u64;
    for stop in [1u64, 65536, 1 << 20] {
        let out = s.copy(&[(STOP_ENV, &stop.to_string())]);
        assert!(!out.status.success(), "stopped upload: {}", stderr(&out));
        assert!(stderr(&out).contains(STOP_ENV), "{}", stderr(&out));
        expected += stop;
        let size = fs::metadata(part("zst")).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size, expected, "the partial file holds every byte sent so far");
        assert_eq!(s.agent_files(), vec![format!("{}.zst.part", agent_name())]);
    }
    // Killed mid-upload (the process, not the hook): the next run goes on from there too.
    let mut child = {
        let host = s.sshd.dir().join("h");
        let mut c = ferry_tests::ferry_command(FERRY);
        c.args(["--root", s.root.to_str().unwrap(), "copy", "--identity"])
            .arg(s.sshd.identity_ed25519())
            .arg("--known-hosts")
            .arg(s.sshd.known_hosts())
            .arg("--to")
            .arg(format!(
                "ssh://{}@127.0.0.1:{}?root={}",
                s.sshd.user(),
                s.sshd.port(),
                host.display()
            ))
            .arg(&s.top)
            // Slow enough to be killed mid-way: the hook stops late; the kill comes first.
            .env(STOP_ENV, "4000000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let started = std::time::Instant::now();
    while fs::metadata(part("zst")).map(|m| m.len()).unwrap_or(0) <= expected
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    let before = fs::metadata(part("zst")).map(|m| m.len()).unwrap_or(0);
    assert!(before > 0, "something was uploaded before the kill");

    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    let err = stderr(&out);
    let first = err.lines().find(|l| l.contains("uploading agent ")).expect(&err);
    assert!(!first.contains("uploading agent 0 B/"), "resumed, not restarted: {err}");
    eprintln!("{first}");
    assert_eq!(s.agent_files(), vec![agent_name()], "no temp or partial file is left");
    assert_eq!(sha256(&s.agent_dir().join(agent_name())), sha256(Path::new(FERRY)));
}

#[test]
fn a_cached_agent_with_other_bytes_is_replaced_not_run() {
    let s = Setup::new();
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    let agent = s.agent_dir().join(agent_name());
    let marker = s.home.path().join("the-impostor-ran");
    fs::write(
        &agent,
        format!(
            "#!/bin/sh\ntouch {}\necho 'ferry {}'\n",
            marker.display(),
            env!("CARGO_PKG_VERSION")
        ),
    )
    .unwrap();
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert!(!marker.exists(), "a cached file whose hash differs was run");
    assert_eq!(sha256(&agent), sha256(Path::new(FERRY)), "it was replaced");
    assert_eq!(s.agent_files(), vec![agent_name()]);
}

#[test]
fn a_ferry_on_the_hosts_path_runs_only_when_its_bytes_are_ours() {
    // A `ferry` of the right version on the host's PATH, but other bytes: not run, the agent
    // is uploaded instead.
    let bin = tempfile::tempdir().unwrap();
    let marker = bin.path().join("the-path-ferry-ran");
    let path_ferry = bin.path().join("ferry");
    let impostor = format!(
        "#!/bin/sh\ntouch {}\necho 'ferry {}'\n",
        marker.display(),
        env!("CARGO_PKG_VERSION")
    );
    fs::write(&path_ferry, impostor).unwrap();
    fs::set_permissions(&path_ferry, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = Setup::with_path(Some(remote_path(&[bin.path()])));
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert!(!marker.exists(), "a PATH ferry with other bytes was run");
    assert_eq!(s.agent_files(), vec![agent_name()], "the agent was uploaded instead");

    // The same bytes as ours on the PATH (in a directory only root can write): used as they
    // are, nothing uploaded.
    fs::remove_dir_all(s.agent_dir()).unwrap();
    fs::copy(FERRY, &path_ferry).unwrap();
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert!(
        s.agent_files().is_empty(),
        "uploaded although the PATH ferry is ours: {:?}",
        s.agent_files()
    );
}

/// Every file and directory under `dir`: path, type, mode, size and content hash.
fn listing(dir: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -printf '%p %y %m %s %T@\\n' | sort && find . -type f -exec sha256sum {} + | sort")
        .arg("sh")
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn deployment(s: &Setup, dir: &Path, extra: &str) -> PathBuf {
    fs::create_dir_all(dir.join("pkgs/hello/bin")).unwrap();
    fs::write(dir.join("pkgs/hello/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    let file = dir.join("d.toml");
    fs::write(
        &file,
        format!(
            "[[machine]]\nname = \"fresh\"\n[machine.operating-system]\npackages = [\"./pkgs/hello\"]\n\
             [machine.configuration]\nhost-name = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
             identity = \"{}\"\nhost-key = \"{}\"\nroot = \"{}\"\n{extra}\n",
            s.sshd.port(),
            s.sshd.user(),
            s.sshd.identity_ed25519().display(),
            s.sshd.host_key(),
            s.sshd.dir().join("root").display()
        ),
    )
    .unwrap();
    file
}

fn deploy(dir: &Path, args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(args)
        .current_dir(dir)
        .env_remove("FERRY_STORE_DIR")
        .env_remove("FERRY_STATE_DIR")
        .env("FERRY_ROOT", dir.join("coordinator"))
        .env("HOME", dir.join("home"))
        .output()
        .unwrap()
}

#[test]
fn a_dry_run_on_a_fresh_host_changes_nothing_there() {
    let s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let file = deployment(&s, dir.path(), "");
    let root = s.sshd.dir().join("root");
    fs::create_dir_all(&root).unwrap();
    let (home_before, root_before) = (listing(s.home.path()), listing(&root));
    let out = deploy(dir.path(), &["deploy", file.to_str().unwrap(), "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\n{}", stderr(&out), s.sshd.log());
    assert!(stdout.contains("fresh: would upload the agent ("), "{stdout}");
    assert!(stdout.contains("fresh: would copy "), "{stdout}");
    assert_eq!(listing(s.home.path()), home_before, "the host's home changed");
    assert_eq!(listing(&root), root_before, "the host's root changed");

    // The real deploy then uploads the agent, with progress, and deploys.
    let out = deploy(dir.path(), &["deploy", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert!(stderr(&out).contains("fresh: uploading agent "), "{}", stderr(&out));
    assert_eq!(s.agent_files(), vec![agent_name()]);
}

#[test]
fn another_architecture_or_a_missing_host_ferry_is_a_clear_error() {
    let s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    // A "ferry built for aarch64": an ELF header naming that machine.
    let mut other = fs::read(FERRY).unwrap()[..64].to_vec();
    other[18..20].copy_from_slice(&183u16.to_le_bytes());
    fs::write(dir.path().join("ferry-aarch64"), &other).unwrap();
    let file = deployment(&s, dir.path(), "agent = \"ferry-aarch64\"");
    let out = deploy(dir.path(), &["deploy", file.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the host is x86_64 (uname -m)") && err.contains("is built for aarch64"),
        "{err}"
    );
    assert!(err.contains("agent = \"PATH/TO/ferry\""), "{err}");
    assert!(!s.agent_dir().exists(), "nothing was uploaded");

    let file = deployment(&s, dir.path(), "agent = \"PATH\"");
    let out = deploy(dir.path(), &["deploy", file.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("has no `ferry` on its PATH"), "{err}");
}

#[test]
fn the_probe_starts_the_agent_it_finds_in_the_same_exec() {
    let s = Setup::new();
    // A fresh host: probe, upload, then the agent.
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert!(stderr(&out).contains("uploading agent "), "{}", stderr(&out));
    let first = execs(&s.sshd);
    assert!(first >= 3, "probe, upload and agent: {first} commands\n{}", s.sshd.log());
    // The agent is cached: the probe becomes the agent.
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert_eq!(execs(&s.sshd) - first, 1, "one command for probe and agent\n{}", s.sshd.log());
}

#[test]
fn a_verification_record_never_lets_changed_bytes_run() {
    let s = Setup::new();
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    let agent = s.agent_dir().join(agent_name());
    let record = s.agent_dir().join(format!("{}.verified", agent_name()));
    // A record is kept only for a file changed at least 2 s before it was hashed.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert!(record.exists(), "the hashed agent was recorded");
    let before = execs(&s.sshd);
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert_eq!(execs(&s.sshd) - before, 1, "started by the probe on its record");

    // The same size, other bytes: the record no longer matches, the hash differs, the file is
    // replaced.
    let mut bytes = fs::read(&agent).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    fs::write(&agent, &bytes).unwrap();
    let out = s.copy(&[]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.sshd.log());
    assert!(stderr(&out).contains("uploading agent "), "{}", stderr(&out));
    assert_eq!(sha256(&agent), sha256(Path::new(FERRY)), "it was replaced");
    assert_eq!(s.agent_files(), vec![agent_name()]);
}
