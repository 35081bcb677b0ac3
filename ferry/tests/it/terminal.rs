//! The demo deploy on a real terminal (tmux, 100x30), its screen read at the end: one line per
//! host (no stale or duplicated bars), each host's copy collapsed to the numbers the result table
//! prints.
//!
//! Needs `tmux` (installed by `.ci/run`); without it the test says so and passes, except in CI
//! (`CI` set), where it fails.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{copy_tree, examples, FERRY};

const WIDTH: usize = 100;

fn tmux(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new("tmux").arg("-S").arg(socket).args(args).output().expect("run tmux")
}

#[test]
fn a_deploy_on_a_terminal_shows_one_line_per_host_and_the_table_numbers() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing in CI (.ci/run installs it)");
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy_tree(&examples(), &d.join("demo"));
    fs::create_dir_all(d.join("home")).unwrap();
    // The run, then its exit code; the pane stays until the session is killed.
    let script = format!(
        "cd '{d}' && env -i PATH=/usr/bin:/bin TERM=\"$TERM\" HOME='{d}/home' \
         FERRY_ROOT='{d}/coordinator' XDG_DATA_HOME='{d}/data' '{FERRY}' deploy demo/demo.toml; \
         echo \"EXIT $?\"; sleep 600\n",
        d = d.display()
    );
    fs::write(d.join("run.sh"), script).unwrap();
    let socket = d.join("tmux.sock");
    let width = WIDTH.to_string();
    let run = format!("sh '{}'", d.join("run.sh").display());
    let out = tmux(&socket, &["new-session", "-d", "-x", &width, "-y", "30", &run]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    let screen = loop {
        // Rows as drawn (indicatif pads its last line to the terminal's width, so the next
        // output starts on the next row: joining wrapped rows would glue them).
        let out = tmux(&socket, &["capture-pane", "-p"]);
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if screen.contains("EXIT ") || started.elapsed() > Duration::from_secs(180) {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = tmux(&socket, &["kill-server"]);
    eprintln!("{screen}");
    assert!(screen.contains("EXIT 0"), "the deploy failed:\n{screen}");
    for host in ["demo1", "demo2"] {
        // The host's line (its name, then spaces) and its table row; lines about it are
        // `host: ...`.
        let lines: Vec<&str> = screen
            .lines()
            .filter(|l| l.strip_prefix(host).is_some_and(|rest| rest.starts_with(' ')))
            .collect();
        assert_eq!(lines.len(), 2, "one progress line and one table row for {host}:\n{screen}");
        let (bar, row) = (lines[0], lines[1]);
        assert!(!bar.contains('[') && !bar.contains("ETA"), "a stale bar: {bar}\n{screen}");
        // Table: MACHINE RESULT GENERATION PATHS-SENT PRESENT CACHED NAR(2) WIRE(2) TIME DETAIL.
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "ok", "{row}");
        let (sent, nar) = (cells[3], format!("{} {}", cells[6], cells[7]));
        let summary = format!("copied {sent} path(s), {nar} in ");
        assert!(bar.contains(&summary), "the line says {bar:?}, the table {row:?}:\n{screen}");
    }
    let header = screen.lines().find(|l| l.starts_with("MACHINE")).expect("the table");
    for column in ["PATHS SENT", "PRESENT", "CACHED", "NAR", "WIRE"] {
        assert!(header.contains(column), "{header}");
    }
}
