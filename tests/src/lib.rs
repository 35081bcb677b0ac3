//! Shared harness of the integration tests: running real peer tools (Debian's Nix today; the
//! loopback `sshd` fleet and libgcrypt later) with clear failures when one is missing.
//!
//! A missing tool is a test failure that says which package to install, never a silent skip:
//! `.ci/run` installs every package the tests need.

use std::path::Path;
use std::process::{Command, Output, Stdio};

pub mod sshd;

/// Run a tool and return its output; panics with the command line, exit status and stderr on
/// failure, or with the package to install when the tool is missing.
pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    // Never reach for a binary cache: this machine has no network.
    command.env("NIX_CONFIG", "substituters =\n");
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

/// `nix-store --dump PATH`.
pub fn nix_dump(path: &Path) -> Vec<u8> {
    run("nix-store", &["--dump", path.to_str().expect("UTF-8 path")], &[]).stdout
}

/// `nix-hash --type sha256 --base32 PATH`.
pub fn nix_hash(path: &Path) -> String {
    run_text("nix-hash", &["--type", "sha256", "--base32", path.to_str().expect("UTF-8 path")], &[])
}

/// A command for the `ferry` binary at `program` (a test's `env!("CARGO_BIN_EXE_ferry")`) with
/// `FERRY_ROOT`, `FERRY_STORE_DIR` and `FERRY_STATE_DIR` removed from its environment, so that
/// only the test's own options choose the store.
pub fn ferry_command(program: &str) -> Command {
    let mut c = Command::new(program);
    for var in ["FERRY_ROOT", "FERRY_STORE_DIR", "FERRY_STATE_DIR"] {
        c.env_remove(var);
    }
    c
}

/// `len` pseudo-random (incompressible) bytes, the same for the same `seed`.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Run `git -C dir ARGS` with a fixed author and committer; its trimmed stdout. Panics with
/// git's stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
