//! Ctrl-C during a deploy, as real SIGINTs to a real run of the binary (`local` machines, one at
//! a time): the first stops starting new work and says each machine's state (one waits for a
//! confirmation that will not come: it rolls back by itself); the run then ends with 130, the
//! machine not yet started untouched. A second SIGINT aborts at once with 130.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::coordinator;

const FILE: &str = r#"
[operating-system.base]
packages = ["./hello"]

[[machine]]
name = "first"
environment = "local"
operating-system = { inherit = "base", host-name = "first" }
[machine.configuration]
confirm-timeout = CONFIRM

[[machine]]
name = "second"
environment = "local"
operating-system = { inherit = "base", host-name = "second" }
[machine.configuration]
confirm-timeout = CONFIRM
"#;

/// A deploy started with stderr collected as it comes.
struct Run {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Run {
    fn start(dir: &Path, confirm_seconds: u64) -> Run {
        std::fs::create_dir_all(dir.join("hello/bin")).unwrap();
        std::fs::write(dir.join("hello/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let file = dir.join("fleet.toml");
        std::fs::write(&file, FILE.replace("CONFIRM", &confirm_seconds.to_string())).unwrap();
        let mut child = coordinator(dir)
            .args(["deploy", "-j", "1"])
            .arg(&file)
            .env("XDG_DATA_HOME", dir.join("data"))
            // The first machine waits for a confirmation that never comes.
            .env("FERRY_TEST_NEVER_CONFIRM", "1")
            // Its own process group, as a shell's foreground job: `interrupt` signals the
            // whole group, as a terminal's Ctrl-C does.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let text = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Run { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until stderr holds `text`.
    fn wait_for(&self, text: &str) {
        let started = Instant::now();
        while !self.stderr().contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no {text:?} in:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C at a terminal: SIGINT to the run's whole process group (the coordinator and
    /// any child it did not put in a group of its own, e.g. a local machine's host session).
    fn interrupt(&self) {
        let group = format!("-{}", self.child.id());
        let status = Command::new("kill").args(["-INT", "--", &group]).status().unwrap();
        assert!(status.success());
    }

    /// Its exit code and stdout.
    fn end(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        let mut stdout = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        (status.code(), stdout)
    }
}

#[test]
fn the_first_ctrl_c_stops_new_work_and_says_each_machines_state() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::start(dir.path(), 3);
    run.wait_for("first: not confirming");
    run.interrupt();
    run.wait_for("starting no new work");
    run.wait_for("first: activated, not confirmed: it rolls back by itself in ");
    let stderr = run.stderr();
    let (code, stdout) = run.end();
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    // The first machine rolled back by itself; the second was never started.
    let row = |name: &str| stdout.lines().find(|l| l.starts_with(name)).unwrap_or("").to_owned();
    assert!(row("second").contains("interrupted: not started"), "{stdout}");
    assert!(!dir.path().join("data/ferry/hosts/second/var/ferry/profiles/system").exists());
    assert!(row("first").contains("FAILED"), "{stdout}");
}

#[test]
fn the_second_ctrl_c_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::start(dir.path(), 60);
    run.wait_for("first: not confirming");
    run.interrupt();
    run.wait_for("starting no new work");
    run.interrupt();
    run.wait_for("interrupted again: aborting");
    let stderr = run.stderr();
    let (code, stdout) = run.end();
    assert_eq!(code, Some(130), "{stderr}");
    // Aborted: no result table (the first machine's wait was not sat out).
    assert!(stdout.is_empty(), "{stdout}");
}
