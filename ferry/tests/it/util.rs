//! The `ferry` binary under test, built one way for every module of this test binary (on
//! ferry-tests' [`ferry_tests::ferry_command`]: no `FERRY_*` variable of the caller's
//! environment reaches it, so only a test's own options and variables choose the store).
//!
//! The shapes the tests need: a bare command ([`ferry`]), one on a store root ([`ferry_at`],
//! [`ferry_in`] with a store dir), the deploy coordinator of a test directory ([`coordinator`]),
//! a run that must succeed ([`ok`]), a run fed on stdin ([`output_with_stdin`]), and the
//! binary's directory for the `PATH` of loopback hosts ([`ferry_dir`]); the repository's
//! `examples/` ([`examples`]) and a copy of a tree ([`copy_tree`]); a coordinator's test
//! directory ([`coordinator_dir`]) and a one-script package ([`hello_package`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary cargo built for these tests.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// `ferry`, with a clean `FERRY_*` environment.
pub fn ferry() -> Command {
    ferry_tests::ferry_command(FERRY)
}

/// `ferry --root ROOT`.
pub fn ferry_at(root: &Path) -> Command {
    let mut c = ferry();
    c.arg("--root").arg(root);
    c
}

/// `ferry --root ROOT --store-dir STORE_DIR`.
pub fn ferry_in(root: &Path, store_dir: &str) -> Command {
    let mut c = ferry_at(root);
    c.args(["--store-dir", store_dir]);
    c
}

/// The deploy coordinator of a test directory `dir`: `ferry` run in `dir`, its root
/// `dir/coordinator` (`FERRY_ROOT`) and `HOME` `dir/home`.
pub fn coordinator(dir: &Path) -> Command {
    let mut c = ferry();
    c.current_dir(dir).env("FERRY_ROOT", dir.join("coordinator")).env("HOME", dir.join("home"));
    c
}

/// A temp directory for [`coordinator`] runs: it holds the coordinator's `home/`.
pub fn coordinator_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    dir
}

/// The package `DIR/pkgs/hello`: `bin/hello NAME` prints `Hello, NAME`.
pub fn hello_package(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let hello = dir.join("pkgs/hello/bin/hello");
    std::fs::create_dir_all(hello.parent().unwrap()).unwrap();
    std::fs::write(&hello, "#!/bin/sh\necho \"Hello, $1\"\n").unwrap();
    std::fs::set_permissions(&hello, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `ferry ARGS...`, which must succeed: its stdout. Panics with the arguments and ferry's
/// stderr otherwise.
pub fn ok(args: &[&str]) -> String {
    ferry_tests::ferry_ok(FERRY, args)
}

/// Run `cmd` with `stdin` written to its standard input (from another thread, so a command that
/// answers while it reads cannot deadlock on a full pipe); its whole output.
pub fn output_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The command may exit before reading everything (a refusal): not the test's failure.
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for ferry");
    writer.join().expect("stdin writer");
    out
}

/// The directory of the `ferry` binary: put first on a loopback host's `PATH` so its sessions
/// run this build (no upload of a debug binary).
pub fn ferry_dir() -> PathBuf {
    Path::new(FERRY).parent().expect("the binary's directory").to_owned()
}

/// The repository's `examples/` (the README's demo).
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Copy the tree `from` (directories and files) to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
