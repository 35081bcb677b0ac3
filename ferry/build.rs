//! The git commit `ferry --version` prints: `FERRY_VERSION_COMMIT` is ` (COMMIT)` when the
//! sources are a git checkout with `git` on PATH (CI builds from a clone), else empty (a source
//! tarball, a vendored copy): the version is then the crate's alone.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    let suffix = commit.as_deref().map_or_else(String::new, |c| format!(" ({c})"));
    println!("cargo:rustc-env=FERRY_VERSION_COMMIT={suffix}");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it names (a commit), and
    // packed refs. Paths from git, so worktrees (where `.git` is a file) work too.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
