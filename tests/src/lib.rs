//! Shared harness of the integration tests and benches: running real peer tools with clear
//! failures when one is missing; Debian's Nix, hermetic ([`nix`]); the loopback OpenSSH server
//! ([`sshd`]); the `ferry` binary with a clean environment; sample trees and pseudo-random data;
//! `git` with a fixed identity.
//!
//! A missing tool is a test failure that says which package to install, never a silent skip:
//! `.ci/run` installs every package the tests need.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub mod netns;
pub mod nix;
pub mod s3;
pub mod sshd;

/// A `Command` for the peer tool `program`: a Nix tool through [`nix::command`] (hermetic),
/// any other as is.
pub fn tool(program: &str) -> Command {
    if package_of(program) == "nix-bin" {
        nix::command(program)
    } else {
        Command::new(program)
    }
}

/// Run a tool (through [`tool`]) and return its output; panics with the command line, exit status and stderr on
/// failure, or with the package to install when the tool is missing.
pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tool(program);
    command.args(args).stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e} (install it: apt-get install -y {})", package_of(program))
    });
    if !output.status.success() {
        panic!(
            "{program} {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Run a tool and return its stdout as trimmed text.
pub fn run_text(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    String::from_utf8(run(program, args, env).stdout).expect("UTF-8 output").trim().to_owned()
}

/// The Debian package that provides a tool.
pub fn package_of(program: &str) -> &'static str {
    match program {
        "nix-store" | "nix-hash" | "nix" | "nix-instantiate" => "nix-bin",
        "sshd" | "/usr/sbin/sshd" | "ssh-keygen" => "openssh-server",
        "guile" => "guile-3.0 guile-gcrypt",
        "zstd" => "zstd",
        _ => "(unknown package)",
    }
}

/// Writes a small sample tree into `dir`: a text file, an executable script under `sub/` and a
/// relative symlink to the text file.
pub fn write_sample_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("sub")).expect("create the sample tree");
    std::fs::write(dir.join("a.txt"), "hello\n").expect("write a.txt");
    std::fs::write(dir.join("sub/tool"), "#!/bin/sh\necho hi\n").expect("write sub/tool");
    std::fs::set_permissions(dir.join("sub/tool"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod sub/tool");
    std::os::unix::fs::symlink("../a.txt", dir.join("sub/link")).expect("symlink sub/link");
}

/// A command for the `ferry` binary at `program` (a test's `env!("CARGO_BIN_EXE_ferry")`) with
/// every `FERRY_*` variable (`FERRY_ROOT`, `FERRY_STORE_DIR`, `FERRY_STATE_DIR`, the test hooks)
/// removed from its environment, so that only the test's own options and variables choose the
/// store and what ferry does.
pub fn ferry_command(program: &str) -> Command {
    let mut c = Command::new(program);
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(|v| v.starts_with("FERRY_")) {
            c.env_remove(var);
        }
    }
    c
}

/// Runs the `ferry` binary at `program` with `args` (through [`ferry_command`]) and returns its
/// stdout; panics with the arguments and ferry's stderr when it fails.
pub fn ferry_ok(program: &str, args: &[&str]) -> String {
    success_stdout(args, ferry_command(program).args(args).output().expect("spawn ferry"))
}

/// Run `c` and return its stdout; panics with the command, its stdout and stderr when it
/// fails, or with the packages to install when it cannot start.
pub fn stdout_ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| {
        panic!("cannot run {c:?}: {e} (apt-get install -y nix-bin openssh-server)")
    });
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The stdout of a ferry run that must have succeeded; panics with its arguments, exit status
/// and stderr otherwise.
pub fn success_stdout(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Adds two paths to the ferry store at `root` from sources written under `src`: `base` (a tiny
/// file) and `big` (a directory with a 2 MiB pseudo-random `blob` from `seed`, and `ref` naming
/// `base`, so `big` refers to `base`). Returns their store paths (base, big).
pub fn add_base_and_big(program: &str, root: &Path, src: &Path, seed: u64) -> (String, String) {
    let r = root.to_str().expect("UTF-8 path");
    let add = |p: &Path| {
        ferry_ok(program, &["--root", r, "store", "add", p.to_str().expect("UTF-8 path")])
            .trim()
            .to_owned()
    };
    std::fs::create_dir_all(src.join("big")).expect("create the sources");
    std::fs::write(src.join("base"), b"base\n").expect("write base");
    let base = add(&src.join("base"));
    std::fs::write(src.join("big/blob"), pseudo_random(seed, 2 << 20)).expect("write big/blob");
    std::fs::write(src.join("big/ref"), &base).expect("write big/ref");
    let big = add(&src.join("big"));
    (base, big)
}

/// The valid paths of the ferry store at `root` (`ferry --root ROOT store list`); empty when the
/// store has no database yet.
pub fn store_paths(program: &str, root: &Path) -> BTreeSet<String> {
    if !root.join("var/ferry/db/db.sqlite").exists() {
        return BTreeSet::new();
    }
    let root = root.to_str().expect("UTF-8 path");
    ferry_ok(program, &["--root", root, "store", "list"]).lines().map(str::to_owned).collect()
}

/// Panics unless `ferry --root ROOT store verify --check-contents` passes.
pub fn assert_store_verifies(program: &str, root: &Path) {
    let root = root.to_str().expect("UTF-8 path");
    ferry_ok(program, &["--root", root, "store", "verify", "--check-contents"]);
}

/// `len` pseudo-random (incompressible) bytes, the same for the same `seed` (xorshift64*).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        bytes.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Run `git -C dir ARGS` with a fixed author and committer and no global or system git
/// configuration (a fresh machine has no identity; a developer's may sign commits); its trimmed
/// stdout. Panics with git's stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
