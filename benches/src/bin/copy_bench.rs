//! `copy_bench`: `ferry copy` side by side with its peers, over the test harness's real OpenSSH
//! server on loopback (`ferry_tests::sshd`), same closure, one run.
//!
//! - **many small paths**: `--small N` tiny files added as N paths plus one path referring to
//!   all of them; first copy and no-op copy over `local://` and `ssh://` (wall time of the whole
//!   `ferry copy` process, start-up included).
//! - **large closure**: every top-level entry of `--large DIR` becomes one path (ferry store and
//!   a Nix chroot store hold the same trees); first copy over SSH with ferry, with
//!   `nix copy --to ssh://` (remote `nix-store --serve --write`) and with `rsync -a` of the same
//!   trees; each reported as a ratio to ferry. Bytes on the wire against NAR bytes (ferry's
//!   own count), and peak RSS of both ferry sides (`/usr/bin/time -v`; the agent is started
//!   through a wrapper that runs it under `time`).
//!
//! Build and run (release): `cargo build --release -p deploy -p ferry-benches &&
//! target/release/copy_bench --ferry target/release/ferry --small 1000 --large /usr/share`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};
use serde_json::Value;

#[derive(Debug, Parser)]
struct Args {
    /// The ferry executable (release build).
    #[arg(long, default_value = "target/release/ferry")]
    ferry: PathBuf,
    /// Number of tiny paths for the many-small-paths runs (0: skip).
    #[arg(long, default_value_t = 1000)]
    small: usize,
    /// Directory whose top-level entries make the large closure (none: skip).
    #[arg(long)]
    large: Option<PathBuf>,
    /// Skip `nix copy` in the large run.
    #[arg(long)]
    skip_nix: bool,
    /// Extra `ferry copy` argument for the large run (repeat), e.g. `--copy-arg=--no-compress`.
    #[arg(long, allow_hyphen_values = true)]
    copy_arg: Vec<String>,
    /// Where to put stores (default: a temp dir).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Profile both ferry sides of the large run: `perf` (`perf record -g`) or `strace`
    /// (`strace -c -f`), reports in `<work>/profile/` (coordinator.*, agent.<pid>.*).
    #[arg(long, value_parser = ["perf", "strace"])]
    profile: Option<String>,
}

/// The command words that run a ferry side under the chosen profiler (`name`: report file stem).
fn profiler(kind: Option<&str>, dir: &Path, name: &str) -> Vec<String> {
    let out = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    match kind {
        Some("perf") => ["perf", "record", "-g", "-q", "-o"]
            .map(String::from)
            .into_iter()
            .chain([out("perf"), "--".into()])
            .collect(),
        Some("strace") => ["strace", "-c", "-f", "-o"]
            .map(String::from)
            .into_iter()
            .chain([out("strace")])
            .collect(),
        _ => Vec::new(),
    }
}

fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<(f64, String, String)> {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{stderr}", out.status);
    }
    Ok((secs, stdout, stderr))
}

/// Peak RSS in KiB from `/usr/bin/time -v` output.
fn max_rss_kib(time_output: &str) -> Option<u64> {
    time_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .and_then(|v| v.trim().parse().ok())
}

struct Bench {
    ferry: PathBuf,
    copy_args: Vec<String>,
    /// Profiler command words put before the coordinator in the large run.
    profiler: Vec<String>,
    sshd: Sshd,
    /// Where the agent wrapper writes its `time -v` reports.
    agent_times: PathBuf,
}

impl Bench {
    fn ferry(&self, root: &Path) -> Command {
        let mut c = Command::new(&self.ferry);
        c.arg("--root").arg(root);
        c
    }

    fn ssh_uri(&self, root: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}?root={}", self.sshd.user(), self.sshd.port(), root.display())
    }

    /// `ferry copy --json` to `uri`; wall seconds and the summary.
    fn copy(
        &self,
        local: &Path,
        uri: &str,
        paths: &[String],
        timed: bool,
    ) -> Result<(f64, Value, Option<u64>)> {
        let mut c = if timed {
            let mut c = Command::new("/usr/bin/time");
            c.arg("-v").args(&self.profiler).arg(&self.ferry);
            c
        } else {
            Command::new(&self.ferry)
        };
        c.arg("--root").arg(local).args(["copy", "--json", "--authorize", "--to", uri]);
        c.arg("--identity").arg(self.sshd.identity_ed25519());
        c.arg("--known-hosts").arg(self.sshd.known_hosts());
        if timed {
            c.args(&self.copy_args);
        }
        c.args(paths);
        let (secs, stdout, stderr) = run(&mut c)?;
        let json: Value = serde_json::from_str(stdout.trim()).context("copy --json output")?;
        Ok((secs, json, max_rss_kib(&stderr)))
    }

    /// The largest peak RSS among the agent runs reported since the last call.
    fn agent_rss(&self) -> Option<u64> {
        let mut best = None;
        for e in fs::read_dir(&self.agent_times).ok()?.flatten() {
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains("serve") {
                best = best.max(max_rss_kib(&text));
            }
            let _ = fs::remove_file(e.path());
        }
        best
    }
}

fn add_paths(b: &Bench, root: &Path, items: &[PathBuf]) -> Result<Vec<String>> {
    let mut c = b.ferry(root);
    c.args(["store", "add"]).args(items);
    let (_, out, _) = run(&mut c)?;
    Ok(out.lines().map(str::to_owned).collect())
}

fn small(b: &Bench, work: &Path, n: usize) -> Result<()> {
    let src = work.join("small-src");
    fs::create_dir_all(&src)?;
    let items: Vec<PathBuf> = (0..n)
        .map(|i| {
            let p = src.join(format!("p{i}"));
            fs::write(&p, format!("tiny file number {i}\n")).map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let local = work.join("small-local");
    let paths = add_paths(b, &local, &items)?;
    fs::write(src.join("top"), paths.join("\n"))?;
    let top = add_paths(b, &local, &[src.join("top")])?;
    println!("## {} tiny paths + 1 referring to all (closure of {})", n, n + 1);
    println!("| run | wall s | paths sent | NAR bytes | wire bytes | load |");
    println!("|---|---|---|---|---|---|");
    let local_host = work.join("small-host-local");
    let ssh_host = work.join("small-host-ssh");
    for (name, uri) in [
        ("local://", format!("local://{}", local_host.display())),
        ("ssh://", b.ssh_uri(&ssh_host)),
    ] {
        for kind in ["first copy", "no-op copy"] {
            let l = load();
            let (secs, json, _) = b.copy(&local, &uri, &top, false)?;
            println!(
                "| {kind} {name} | {secs:.3} | {} | {} | {} | {l} |",
                json["paths_sent"], json["nar_bytes_sent"], json["wire_bytes"]
            );
        }
    }
    Ok(())
}

fn large(b: &Bench, work: &Path, dir: &Path, skip_nix: bool) -> Result<()> {
    let mut items: Vec<PathBuf> =
        fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    items.sort();
    let local = work.join("large-local");
    let paths = add_paths(b, &local, &items)?;
    let phys = local.join("gnu/store");
    println!(
        "## large closure: {} paths from the top-level entries of {}",
        paths.len(),
        dir.display()
    );

    // ferry over SSH.
    let host = work.join("large-host-ferry");
    let l = load();
    let (ferry_s, json, local_rss) = b.copy(&local, &b.ssh_uri(&host), &paths, true)?;
    let agent_rss = b.agent_rss();
    let nar = json["nar_bytes_sent"].as_u64().unwrap_or(0);
    let wire = json["wire_bytes"].as_u64().unwrap_or(0);
    println!("| tool | wall s | ratio ferry/tool | bytes | load |");
    println!("|---|---|---|---|---|");
    println!(
        "| ferry copy --to ssh:// {} | {ferry_s:.2} | 1.00 | NAR {nar}, wire {wire} ({:.3} of NAR) | {l} |",
        b.copy_args.join(" "),
        wire as f64 / nar.max(1) as f64
    );

    // rsync -a of the same trees over the same sshd.
    let rsync_dst = work.join("large-host-rsync");
    fs::create_dir_all(&rsync_dst)?;
    let l = load();
    let (rsync_s, out, _) = run(Command::new("rsync")
        .args(["-a", "--stats", "-e"])
        .arg(format!("ssh -F {}", b.sshd.ssh_config().display()))
        .arg(format!("{}/", phys.display()))
        .arg(format!("peer:{}/", rsync_dst.display())))?;
    let sent = out.lines().find(|l| l.starts_with("Total bytes sent")).unwrap_or("").to_owned();
    println!("| rsync -a (ssh) | {rsync_s:.2} | {:.2} | {sent} | {l} |", ferry_s / rsync_s);

    if !skip_nix {
        let s1 = work.join("large-nix-src");
        let s3 = work.join("large-nix-dst");
        let mut add = Command::new("nix-store");
        add.arg("--store").arg(&s1).arg("--add").args(&items);
        let (_, out, _) = run(&mut add)?;
        let nix_paths: Vec<String> = out.lines().map(str::to_owned).collect();
        let l = load();
        let (nix_s, _, _) = run(Command::new("nix")
            .env("NIX_SSHOPTS", format!("-F {}", b.sshd.ssh_config().display()))
            .args(["--extra-experimental-features", "nix-command", "copy", "--store"])
            .arg(&s1)
            .arg("--to")
            .arg(format!("ssh://peer?remote-store={}", s3.display()))
            .args(&nix_paths))?;
        println!("| nix copy --to ssh:// | {nix_s:.2} | {:.2} | | {l} |", ferry_s / nix_s);
    }
    let mib =
        |k: Option<u64>| k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or("?".into());
    println!("peak RSS: coordinator {}, agent {}", mib(local_rss), mib(agent_rss));
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let ferry = fs::canonicalize(&args.ferry).context("--ferry")?;
    let temp = tempfile::tempdir()?;
    let work = args.work.clone().unwrap_or_else(|| temp.path().to_owned());
    fs::create_dir_all(&work)?;
    // The agent runs through a wrapper named `ferry` that reports its peak RSS.
    let wrap_dir = work.join("wrapper");
    let agent_times = work.join("agent-times");
    fs::create_dir_all(&wrap_dir)?;
    fs::create_dir_all(&agent_times)?;
    let wrapper = wrap_dir.join("ferry");
    let profile_dir = work.join("profile");
    if args.profile.is_some() {
        fs::create_dir_all(&profile_dir)?;
    }
    let kind = args.profile.as_deref();
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/time -v -o {}/$$ {} {} \"$@\"\n",
            agent_times.display(),
            profiler(kind, &profile_dir, "agent.$$").join(" "),
            ferry.display()
        ),
    )?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&wrap_dir])),
        ..SshdOptions::default()
    });
    let profiler = profiler(kind, &profile_dir, "coordinator");
    let b = Bench { ferry, copy_args: args.copy_arg.clone(), profiler, sshd, agent_times };
    println!("load average at start: {}", load());
    if args.small > 0 {
        small(&b, &work, args.small)?;
    }
    if let Some(dir) = &args.large {
        large(&b, &work, dir, args.skip_nix)?;
    }
    Ok(())
}
