//! Debian's Nix, run hermetically: every Nix process a test or bench starts comes from
//! [`command`], and the Nix that `ferry copy --to nix+ssh://` starts on a loopback host gets the
//! same configuration through the sshd fixture ([`remote_env`]).
//!
//! What a brand-new machine has is Debian's `nix-bin` and nothing else: no `nixbld` group, no
//! `/etc/nix/nix.conf`, no network, and a `HOME` that is the user's. So each Nix process here
//! reads only the configuration file this module writes ([`conf_dir`], `NIX_CONF_DIR` and
//! `NIX_USER_CONF_FILES`; an inherited `NIX_CONFIG` is removed):
//! - `build-users-group =`: root builds (and checks nothing) without the `nixbld` group, which
//!   Debian's Nix otherwise names in a warning on every command;
//! - `substituters =`: never reach for a binary cache;
//! - `experimental-features = nix-command`: `nix copy`, `nix store …`, `nix path-info`.
//!
//! The file, not `NIX_CONFIG`, because the remote side needs it too and `SetEnv` in
//! `sshd_config` cannot carry the newlines `NIX_CONFIG` separates settings with; and because it
//! replaces the system's `nix.conf` instead of adding to it. `HOME` and the `XDG_*` directories
//! point at a state directory of the tests' own ([`state_dir`]), so Nix's caches never land in
//! the user's home.
//!
//! Both directories live under the temp dir at fixed names per user
//! (`ferry-tests-nix-UID/{conf,home}`), written idempotently: every test process shares them,
//! and nothing is left behind per run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The configuration every Nix run by the tests reads, and nothing else.
pub const NIX_CONF: &str =
    "# Written by ferry-tests (tests/src/nix.rs): the only Nix configuration the tests use.\n\
build-users-group =\n\
substituters =\n\
experimental-features = nix-command\n";

/// Variables inherited from the caller's environment that would change what Nix does.
const INHERITED: &[&str] =
    &["NIX_CONFIG", "NIX_REMOTE", "NIX_PATH", "NIX_STORE_DIR", "NIX_STATE_DIR"];

/// The base directory of [`conf_dir`] and [`state_dir`], created once per process.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let uid = rustix::process::geteuid().as_raw();
        let base = std::env::temp_dir().join(format!("ferry-tests-nix-{uid}"));
        let conf = base.join("conf");
        let home = base.join("home");
        for dir in [&base, &conf, &home] {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let meta = std::fs::metadata(&base).expect("stat the Nix test dir");
        assert_eq!(meta.uid(), uid, "{} belongs to another user: remove it", base.display());
        // Readable by the other users the sshd fixture may log in (the `sudo -n` tests).
        for dir in [&base, &conf] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the Nix test dir");
        }
        // Written next to it and renamed: parallel test processes never read half a file.
        let file = conf.join("nix.conf");
        if std::fs::read_to_string(&file).ok().as_deref() != Some(NIX_CONF) {
            let tmp = conf.join(format!("nix.conf.{}", std::process::id()));
            std::fs::write(&tmp, NIX_CONF).expect("write nix.conf");
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
                .expect("chmod nix.conf");
            std::fs::rename(&tmp, &file).expect("install nix.conf");
        }
        base
    })
}

/// The directory holding the tests' `nix.conf` (`NIX_CONF_DIR`).
pub fn conf_dir() -> PathBuf {
    base().join("conf")
}

/// `HOME` of local Nix processes, and the root of their `XDG_*` directories.
pub fn state_dir() -> PathBuf {
    base().join("home")
}

/// The environment that makes a Nix process read only [`NIX_CONF`], whatever the machine's
/// configuration: for a Nix started on an sshd fixture host (whose `HOME` is the fixture's own).
pub fn remote_env() -> Vec<(&'static str, OsString)> {
    let conf = conf_dir();
    vec![
        ("NIX_CONF_DIR", conf.clone().into_os_string()),
        ("NIX_USER_CONF_FILES", conf.join("nix.conf").into_os_string()),
    ]
}

/// A `Command` for the Nix tool `program` (`nix-store`, `nix`, `nix-hash`, ...) that reads only
/// [`NIX_CONF`] and keeps its state under [`state_dir`] ([`configure`]). Callers add their own
/// arguments and environment (`NIX_STORE_DIR`, say) after this.
pub fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    configure(&mut c);
    c
}

/// Give `c` the environment of [`command`]: for a Nix tool started through a wrapper that
/// passes its environment on (`/usr/bin/time nix-store ...` in the NAR bench).
pub fn configure(c: &mut Command) -> &mut Command {
    for var in INHERITED {
        c.env_remove(var);
    }
    c.envs(remote_env());
    let home = state_dir();
    c.env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
}

/// Panics with the package to install unless `nix-store --version` runs: the Nix tests fail
/// on a machine without Nix, they never skip.
pub fn require() {
    let ok = command("nix-store").arg("--version").output().map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "nix-store not found or not working: these tests need Debian's Nix \
         (apt-get update && apt-get install -y nix-bin); they do not skip"
    );
}

/// `stderr` of a Nix process without its `warning: ...` lines: what a test that expects a
/// quiet peer compares with the empty string (a machine's Nix may warn about its own set-up).
pub fn without_warnings(stderr: &str) -> String {
    stderr.lines().filter(|l| !l.starts_with("warning: ")).map(|l| format!("{l}\n")).collect()
}

/// `program ARGS...` (through [`command`]) on success: its stdout. Panics with the command line,
/// exit status and stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Vec<u8> {
    crate::run(program, args, &[]).stdout
}

/// `nix-store --store ROOT ARGS...` (a chroot store, never the machine's `/nix`) on success:
/// its stdout.
pub fn store(root: &Path, args: &[&str]) -> String {
    let root = root.to_str().expect("UTF-8 path");
    let args: Vec<&str> = ["--store", root].iter().chain(args).copied().collect();
    String::from_utf8(run("nix-store", &args)).expect("UTF-8 output")
}

/// `nix-store --dump PATH`.
pub fn dump(path: &Path) -> Vec<u8> {
    run("nix-store", &["--dump", path.to_str().expect("UTF-8 path")])
}

/// `nix-hash --type sha256 --base32 PATH`.
pub fn hash(path: &Path) -> String {
    crate::run_text(
        "nix-hash",
        &["--type", "sha256", "--base32", path.to_str().expect("UTF-8 path")],
        &[],
    )
}

/// A Nix key pair made by `nix-store --generate-binary-cache-key NAME` in `dir`: (the secret
/// key file `NAME.sec`, mode 0600; the public key text `NAME:base64`).
pub fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let sk = dir.join(format!("{name}.sec"));
    let pk = dir.join(format!("{name}.pub"));
    let (s, p) = (sk.to_str().expect("UTF-8 path"), pk.to_str().expect("UTF-8 path"));
    run("nix-store", &["--generate-binary-cache-key", name, s, p]);
    std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
    (sk, std::fs::read_to_string(&pk).expect("read the public key").trim().to_owned())
}

/// Adds `tree` to the Nix chroot store at `store` (`nix-store --add`) and has Nix itself make a
/// text file (`builtins.toFile`) that refers to it under the name `name`. Returns the two store
/// paths: (the tree, the text file); the text file's only reference is the tree.
pub fn tree_and_referrer(store: &Path, tree: &Path, name: &str) -> (String, String) {
    let store_arg = store.to_str().expect("UTF-8 path");
    let added = crate::run_text(
        "nix-store",
        &["--store", store_arg, "--add", tree.to_str().expect("UTF-8 path")],
        &[],
    );
    let expr = format!(
        "builtins.toFile \"ref\" \"see ${{builtins.path {{ path = {}; name = \"{name}\"; }}}}\"",
        tree.display()
    );
    let text = crate::run_text(
        "nix-instantiate",
        &["--store", store_arg, "--read-write-mode", "--eval", "-E", &expr],
        &[],
    )
    .trim_matches('"')
    .to_owned();
    let references =
        crate::run_text("nix-store", &["--store", store_arg, "-q", "--references", &text], &[]);
    assert_eq!(references, added, "the text file made by Nix must refer to the tree");
    (added, text)
}
