//! Crash safety of `ferry store add` / `ferry store delete`: the real binary is killed with
//! SIGKILL at many points while adding a large generated tree (and aborted at each named step
//! through `FERRY_TEST_CRASH_AT`); afterwards `ferry store verify --check-contents` must be
//! clean and the path must be either fully valid or absent, with no leftovers once a writer
//! has opened the store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::ferry_at;

fn ferry_cmd(root: &Path) -> Command {
    ferry_at(root)
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out: Output = ferry_cmd(root).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ferry {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// About 14 MB in ~900 entries (the test binary is a debug build, ~40x slower than release);
/// some files mention `dep` so the item has a reference.
fn generate(dir: &Path, dep: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("big.bin"), ferry_tests::pseudo_random(1, 4 << 20)).unwrap();
    for d in 0..20u64 {
        let sub = dir.join(format!("d{d:02}"));
        std::fs::create_dir_all(sub.join("deeper")).unwrap();
        for f in 0..40u64 {
            let size = if f % 10 == 0 { 64 << 10 } else { 4096 + (f as usize) * 97 };
            let mut bytes = ferry_tests::pseudo_random(d * 1000 + f + 7, size);
            if f == 3 {
                bytes.extend_from_slice(format!("\n{dep}/lib\n").as_bytes());
            }
            let p = sub.join(format!("f{f:03}"));
            std::fs::write(&p, bytes).unwrap();
            if f % 7 == 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        std::fs::write(sub.join("deeper/x"), b"x").unwrap();
        std::os::unix::fs::symlink("../f001", sub.join("deeper/link")).unwrap();
    }
}

/// Valid or absent, verify clean, and no leftovers after a writer opened the store.
/// Returns whether `path` is valid.
fn check(root: &Path, path: &str, dep: &str, expected_hash: &str) -> bool {
    // `verify` opens the store for writing, which removes leftovers first.
    let verify = ferry_cmd(root).args(["store", "verify", "--check-contents"]).output().unwrap();
    assert!(
        verify.status.success(),
        "verify after crash: {}\n{}{}",
        verify.status,
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let listed = ok(root, &["store", "list"]);
    assert!(listed.lines().any(|l| l == dep), "the reference stays valid");
    let valid = listed.lines().any(|l| l == path);
    let phys = PathBuf::from(format!("{}{path}", root.display()));
    if valid {
        assert_eq!(ok(root, &["store", "info", "--hash", path]).trim(), expected_hash);
        assert_eq!(ok(root, &["store", "info", "--references", path]).trim(), dep);
        assert!(phys.is_dir());
    } else {
        assert!(!phys.exists(), "{} exists but is not valid", phys.display());
    }
    let store_dir = root.join("gnu/store");
    let names: Vec<String> = std::fs::read_dir(&store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "leftovers: {names:?}");
    assert_eq!(std::fs::read_dir(root.join("var/ferry/pending")).unwrap().count(), 0);
    valid
}

fn spawn_add(root: &Path, tree: &Path, crash_at: Option<&str>) -> Child {
    let mut cmd = ferry_cmd(root);
    cmd.args(["store", "add", "--name", "big-1.0"]).arg(tree);
    if let Some(step) = crash_at {
        cmd.env("FERRY_TEST_CRASH_AT", step);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

#[test]
fn sigkill_during_add_and_delete_leaves_path_valid_or_absent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let dep_src = tmp.path().join("dep");
    std::fs::create_dir_all(&dep_src).unwrap();
    std::fs::write(dep_src.join("lib"), b"library").unwrap();
    let dep = ok(&root, &["store", "add", dep_src.to_str().unwrap()]).trim().to_owned();
    let tree = tmp.path().join("tree");
    generate(&tree, &dep);

    // One complete add, timed: the path, its hash and the duration to spread the kills over.
    let start = Instant::now();
    let path =
        ok(&root, &["store", "add", "--name", "big-1.0", tree.to_str().unwrap()]).trim().to_owned();
    let full = start.elapsed();
    let hash = ok(&root, &["store", "info", "--hash", &path]).trim().to_owned();
    assert!(check(&root, &path, &dep, &hash));
    ok(&root, &["store", "delete", &path]);
    assert!(!check(&root, &path, &dep, &hash));

    // Abort at each named step.
    for step in ["after-restore", "after-marker", "after-rename", "after-commit"] {
        let status = spawn_add(&root, &tree, Some(step)).wait().unwrap();
        assert!(!status.success(), "{step}: the process should have aborted");
        let valid = check(&root, &path, &dep, &hash);
        assert_eq!(valid, step == "after-commit", "{step}");
        if valid {
            let mut del = ferry_cmd(&root);
            del.args(["store", "delete", &path]).env("FERRY_TEST_CRASH_AT", "delete-after-commit");
            assert!(!del.status().unwrap().success());
            assert!(!check(&root, &path, &dep, &hash), "delete committed, files removed on open");
        }
    }

    // SIGKILL at 24 points spread over twice the duration of a full add (timing varies with
    // load, so the later points let some adds complete).
    let (mut valid_count, mut absent_count) = (0, 0);
    let kills = 24u32;
    for i in 0..kills {
        let delay = full.mul_f64(f64::from(i) * 2.0 / f64::from(kills));
        let mut child = spawn_add(&root, &tree, None);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        if check(&root, &path, &dep, &hash) {
            valid_count += 1;
            // Kill a delete too, at a varying point.
            let mut del = ferry_cmd(&root)
                .args(["store", "delete", &path])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(u64::from(i) * 3));
            let _ = del.kill();
            del.wait().unwrap();
            if check(&root, &path, &dep, &hash) {
                ok(&root, &["store", "delete", &path]);
            }
            assert!(!check(&root, &path, &dep, &hash));
        } else {
            absent_count += 1;
        }
    }
    eprintln!(
        "full add took {full:?}; after {kills} SIGKILLs: {valid_count} valid, {absent_count} absent"
    );
    assert!(absent_count > 0, "some kills must land before the commit");
}
