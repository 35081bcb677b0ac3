//! The machine's own Nix store as the source, read in place (`--store nix`, `store = "nix"`):
//! a "system" built by Debian's Nix into a chroot store (`nix-build --store ROOT`, builders
//! `/bin/sh`, dependencies with references) is read with its references from Nix's database,
//! copied, and Nix's database and state dir are left as they were; ferry's key lands in
//! ferry's state dir. Nix's state dir as `--state-dir` is refused with one message, and a store
//! path of the wrong store dir in a deployment file is an error at its line and column.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::stdout_ok;

use crate::util::FERRY;

/// The system: `toplevel` (bin/switch-to-configuration recording `$0 $1` in
/// `$FERRY_ROOT/switch.log`, failing when its argument is `failOn`) -> `app` -> `lib`.
const SYSTEM_NIX: &str = r#"
{ libText ? "lib-v1", appText ? "app-v1", failOn ? "none" }:
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
  };
  lib = mk "lib" "echo ${libText} > $out";
  app = mk "app" "mkdir -p $out/bin; printf '#!/bin/sh\\n# ${appText}\\nexec cat ${lib}\\n' > $out/bin/app; chmod +x $out/bin/app";
in mk "toplevel" ''
  mkdir -p $out/bin
  ln -s ${app} $out/app
  printf '#!/bin/sh\necho "$0 $1" >> "$FERRY_ROOT/switch.log"\ntest "$1" != ${failOn}\n' > $out/bin/switch-to-configuration
  chmod +x $out/bin/switch-to-configuration
''
"#;

/// Debian's Nix with the tests' own configuration (`ferry_tests::nix`), plus a sandbox that
/// sees the host's /bin/sh (a chroot store builds in one).
pub fn nix(program: &str) -> Command {
    let mut c = ferry_tests::nix::command(program);
    c.env("NIX_CONFIG", "sandbox = true\nsandbox-paths = /bin /lib /lib64 /usr\n");
    c
}

/// Build the system into the Nix chroot store at `root`; its logical toplevel path.
pub fn build_system(root: &Path, lib_text: &str) -> String {
    build_system_with(root, &[("libText", lib_text)])
}

/// Build the system with these arguments (`libText`, `appText`, `failOn`).
pub fn build_system_with(root: &Path, args: &[(&str, &str)]) -> String {
    let expr = root.parent().unwrap().join("system.nix");
    std::fs::write(&expr, SYSTEM_NIX).unwrap();
    let mut c = nix("nix-build");
    c.arg("--store").arg(root).arg("--no-out-link");
    for (name, value) in args {
        c.args(["--argstr", name, value]);
    }
    stdout_ok(c.arg(&expr)).trim().to_owned()
}

fn ferry(args: &[&str]) -> std::process::Output {
    ferry_tests::ferry_command(FERRY).args(args).output().unwrap()
}

/// Every file under `dir` with a digest of its contents, but SQLite's `-shm` and `-wal` files:
/// a reader of a WAL database makes them (as each Nix client does), the database is unchanged.
fn tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.to_string_lossy();
        if p.is_dir() {
            out.extend(tree(&p));
        } else if !name.ends_with("-shm") && !name.ends_with("-wal") {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap_or_default().hash(&mut h);
            out.push((p.clone(), h.finish()));
        }
    }
    out.sort();
    out
}

#[test]
fn nix_store_is_read_in_place_and_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nix-root");
    let top = build_system(&root, "lib-v1");
    let nix_state = root.join("nix/var/nix");
    let before = tree(&nix_state);
    let r = root.to_str().unwrap();

    // The closure, with its references, from Nix's database.
    let req = ferry(&["--store", "nix", "--root", r, "gc", "--requisites", &top]);
    let closure = ferry_tests::success_stdout(&["gc", "--requisites"], req);
    let names: Vec<&str> = closure.lines().map(|l| &l[44..]).collect();
    assert_eq!(names, ["lib", "app", "toplevel"], "{closure}");

    // Copied to a ferry store (which trusts our key), signed with a key in ferry's state dir.
    let dst = tmp.path().join("dst");
    let to = format!("local://{}?store-dir=/nix/store", dst.display());
    let out = ferry(&["--store", "nix", "--root", r, "copy", "--authorize", "--to", &to, &top]);
    ferry_tests::success_stdout(&["copy"], out);
    assert!(root.join("var/ferry/signing-key.sec").exists());
    let verify =
        ferry(&["--root", dst.to_str().unwrap(), "--store-dir", "/nix/store", "store", "verify"]);
    ferry_tests::success_stdout(&["store", "verify"], verify);
    assert_eq!(tree(&nix_state), before, "ferry wrote into Nix's state dir");
    let nix_verify = nix("nix-store")
        .arg("--store")
        .arg(&root)
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(nix_verify.status.success(), "{}", String::from_utf8_lossy(&nix_verify.stderr));

    // Nix's state dir as ferry's: one message, nothing written; writing to Nix's store: refused.
    let out = ferry(&[
        "--root",
        r,
        "--store-dir",
        "/nix/store",
        "--state-dir",
        nix_state.to_str().unwrap(),
        "copy",
        "--to",
        &to,
        &top,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("Nix's own state directory").count(), 1, "{err}");
    assert!(err.contains("--store nix"), "{err}");
    let src = tmp.path().join("file");
    std::fs::write(&src, "x").unwrap();
    let out = ferry(&["--store", "nix", "--root", r, "store", "add", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("read in place and never written"), "{err}");
    assert_eq!(tree(&nix_state), before, "ferry wrote into Nix's state dir");
}

#[test]
fn wrong_store_dir_in_a_deployment_is_an_error_at_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("fleet.toml");
    let hello = "/nix/store/wzqpwja0d0a4jrb0y2rd2ljm2acnsjff-hello";
    std::fs::write(
        &file,
        format!(
            "[operating-system.a]\npackages = [\"{hello}\"]\n[[machine]]\nname = \"m\"\n\
             environment = \"local\"\noperating-system = \"a\"\n"
        ),
    )
    .unwrap();
    let root = tmp.path().join("local");
    let out =
        ferry(&["--root", root.to_str().unwrap(), "deploy", "--dry-run", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "{}:2:13: {hello} is in /nix/store, but this deployment's store (ferry) keeps its paths \
         in /gnu/store",
        file.display()
    );
    assert!(err.contains(&want), "{err}");
}
