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
//!   through a wrapper that runs it under `time`). `--large` repeats (the entries of every
//!   directory given); `--runs N` runs every tool once per round, in turn, into fresh targets
//!   removed after each run, and ends with the medians; `--baseline FERRY` adds a second ferry
//!   build (both sides) to every round, for before/after figures from one run;
//!   `--skip-rsync`/`--skip-nix` leave a peer out (e.g. for a memory run on a big closure).
//! - **durability**: the file system is synced (untimed) before each tool, so no tool pays for
//!   the previous one's writeback; after each tool a `sync` is timed on its own and reported as
//!   "+ sync", the time until its copy is on disk. ferry's agent makes its paths durable itself
//!   (one `syncfs` per batch), `rsync -a` never syncs, `nix-store --serve --write` syncs its
//!   database; so "+ sync" compares equal work, the wall time alone favours the tools that leave
//!   writeback for later.
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
    /// Directory whose top-level entries make the large closure (repeat to add more; none:
    /// skip).
    #[arg(long)]
    large: Vec<PathBuf>,
    /// Skip `nix copy` in the large run.
    #[arg(long)]
    skip_nix: bool,
    /// Skip `rsync -a` in the large run.
    #[arg(long)]
    skip_rsync: bool,
    /// A second ferry executable (e.g. the build before a change) run in the same rounds of the
    /// large run, with the same stores.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Rounds of the large run; each runs every tool once, in turn, into fresh targets.
    #[arg(long, default_value_t = 1)]
    runs: usize,
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
    /// The agent wrapper's directory: `<dir>/<name>/ferry` runs the ferry executable `name`.
    wrap_dir: PathBuf,
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

    /// The large run's `ferry copy` with executable `ferry`; the host runs the same executable
    /// (its wrapper directory goes first on the remote `PATH` through the `env` it is run with).
    fn copy_with(
        &self,
        ferry: &Path,
        local: &Path,
        uri: &str,
        paths: &[String],
    ) -> Result<(f64, Value, Option<u64>)> {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").args(&self.profiler).arg(ferry);
        c.arg("--root").arg(local).args(["copy", "--json", "--authorize", "--to", uri]);
        c.arg("--identity").arg(self.sshd.identity_ed25519());
        c.arg("--known-hosts").arg(self.sshd.known_hosts());
        c.args(&self.copy_args);
        c.args(paths);
        let (secs, stdout, stderr) = run(&mut c)?;
        let json: Value = serde_json::from_str(stdout.trim()).context("copy --json output")?;
        Ok((secs, json, max_rss_kib(&stderr)))
    }

    /// `ferry copy --json` to `uri`; wall seconds and the summary.
    fn copy(&self, local: &Path, uri: &str, paths: &[String]) -> Result<(f64, Value)> {
        let mut c = Command::new(&self.ferry);
        c.arg("--root").arg(local).args(["copy", "--json", "--authorize", "--to", uri]);
        c.arg("--identity").arg(self.sshd.identity_ed25519());
        c.arg("--known-hosts").arg(self.sshd.known_hosts());
        c.args(paths);
        let (secs, stdout, _) = run(&mut c)?;
        let json: Value = serde_json::from_str(stdout.trim()).context("copy --json output")?;
        Ok((secs, json))
    }

    /// Make the agent wrapper run `exe`.
    fn point_wrapper(&self, exe: &Path) -> Result<()> {
        let target = self.wrap_dir.join("exe");
        fs::write(&target, exe.as_os_str().as_encoded_bytes())?;
        Ok(())
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
            let (secs, json) = b.copy(&local, &uri, &top)?;
            println!(
                "| {kind} {name} | {secs:.3} | {} | {} | {} | {l} |",
                json["paths_sent"], json["nar_bytes_sent"], json["wire_bytes"]
            );
        }
    }
    Ok(())
}

/// The median of `v` (not empty).
/// `sync`: every file system's dirty data written back; returns the seconds it took.
fn sync_all() -> Result<f64> {
    Ok(run(&mut Command::new("sync"))?.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn remove_all(dir: &Path) {
    if dir.exists() {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir).status();
        let _ = fs::remove_dir_all(dir);
    }
}

/// Options of the large run.
struct LargeOptions<'a> {
    dirs: &'a [PathBuf],
    skip_nix: bool,
    skip_rsync: bool,
    baseline: Option<&'a Path>,
    runs: usize,
}

fn large(b: &Bench, work: &Path, o: &LargeOptions<'_>) -> Result<()> {
    let mut items = Vec::new();
    for dir in o.dirs {
        for e in fs::read_dir(dir)? {
            items.push(e?.path());
        }
    }
    items.sort();
    let local = work.join("large-local");
    let paths = add_paths(b, &local, &items)?;
    let phys = local.join("gnu/store");
    let dirs: Vec<String> = o.dirs.iter().map(|d| d.display().to_string()).collect();
    println!(
        "## large closure: {} paths from the top-level entries of {}",
        paths.len(),
        dirs.join(", ")
    );
    let nix_src = work.join("large-nix-src");
    let nix_paths: Vec<String> = if o.skip_nix {
        Vec::new()
    } else {
        let mut add = ferry_tests::nix::command("nix-store");
        add.arg("--store").arg(&nix_src).arg("--add").args(&items);
        let (_, out, _) = run(&mut add)?;
        out.lines().map(str::to_owned).collect()
    };
    let mut tools: Vec<(String, Option<PathBuf>)> = vec![("ferry".into(), Some(b.ferry.clone()))];
    if let Some(base) = o.baseline {
        tools.push(("ferry (baseline)".into(), Some(base.to_owned())));
    }
    if !o.skip_rsync {
        tools.push(("rsync -a".into(), None));
    }
    if !o.skip_nix {
        tools.push(("nix copy".into(), None));
    }
    println!(
        "| round | tool | wall s | ferry/tool | + sync s | ferry/tool (+ sync) | bytes | peak RSS coordinator / agent MiB | load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mib = |k: Option<u64>| k.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or("?".into());
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut synced_times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut synced_ratios: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for round in 1..=o.runs {
        let mut ferry_s = None;
        let mut ferry_synced = None;
        for (i, (name, exe)) in tools.iter().enumerate() {
            let dst = work.join(format!("large-dst-{i}"));
            remove_all(&dst);
            sync_all()?;
            let l = load();
            let (secs, bytes, rss) = match (name.as_str(), exe) {
                ("rsync -a", _) => {
                    fs::create_dir_all(&dst)?;
                    let (secs, out, _) = run(Command::new("rsync")
                        .args(["-a", "--stats", "-e"])
                        .arg(format!("ssh -F {}", b.sshd.ssh_config().display()))
                        .arg(format!("{}/", phys.display()))
                        .arg(format!("peer:{}/", dst.display())))?;
                    let sent = out.lines().find(|l| l.starts_with("Total bytes sent"));
                    (secs, sent.unwrap_or("").to_owned(), String::new())
                }
                ("nix copy", _) => {
                    let (secs, _, _) = run(ferry_tests::nix::command("nix")
                        .env("NIX_SSHOPTS", format!("-F {}", b.sshd.ssh_config().display()))
                        .arg("copy")
                        .arg("--store")
                        .arg(&nix_src)
                        .arg("--to")
                        .arg(format!("ssh://peer?remote-store={}", dst.display()))
                        .args(&nix_paths))?;
                    (secs, String::new(), String::new())
                }
                (_, Some(exe)) => {
                    // The host runs the same executable as the coordinator.
                    b.point_wrapper(exe)?;
                    let (secs, json, local_rss) =
                        b.copy_with(exe, &local, &b.ssh_uri(&dst), &paths)?;
                    let agent_rss = b.agent_rss();
                    let nar = json["nar_bytes_sent"].as_u64().unwrap_or(0);
                    let wire = json["wire_bytes"].as_u64().unwrap_or(0);
                    let bytes = format!(
                        "NAR {nar}, wire {wire} ({:.3} of NAR), levels {}",
                        wire as f64 / nar.max(1) as f64,
                        json["hosts"][0]["levels"]
                    );
                    (secs, bytes, format!("{} / {}", mib(local_rss), mib(agent_rss)))
                }
                _ => unreachable!(),
            };
            let synced = secs + sync_all()?;
            remove_all(&dst);
            let first = *ferry_s.get_or_insert(secs);
            let first_synced = *ferry_synced.get_or_insert(synced);
            times[i].push(secs);
            ratios[i].push(first / secs);
            synced_times[i].push(synced);
            synced_ratios[i].push(first_synced / synced);
            println!(
                "| {round} | {name} | {secs:.2} | {:.2} | {synced:.2} | {:.2} | {bytes} | {rss} | {l} |",
                first / secs,
                first_synced / synced
            );
        }
    }
    println!();
    println!("| tool | median wall s | median ferry/tool (per round) | median + sync s | median ferry/tool (+ sync) |");
    println!("|---|---|---|---|---|");
    for (i, (name, _)) in tools.iter().enumerate() {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            median(times[i].clone()),
            median(ratios[i].clone()),
            median(synced_times[i].clone()),
            median(synced_ratios[i].clone())
        );
    }
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
    // The executable it runs is named in `<wrapper dir>/exe` (so a baseline build can be
    // run on both sides too).
    fs::write(wrap_dir.join("exe"), ferry.as_os_str().as_encoded_bytes())?;
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/time -v -o {}/$$ {} \"$(cat {})\" \"$@\"\n",
            agent_times.display(),
            profiler(kind, &profile_dir, "agent.$$").join(" "),
            wrap_dir.join("exe").display()
        ),
    )?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[&wrap_dir])),
        ..SshdOptions::default()
    });
    let profiler = profiler(kind, &profile_dir, "coordinator");
    let b = Bench {
        ferry,
        wrap_dir: wrap_dir.clone(),
        copy_args: args.copy_arg.clone(),
        profiler,
        sshd,
        agent_times,
    };
    println!("load average at start: {}", load());
    if args.small > 0 {
        small(&b, &work, args.small)?;
    }
    if !args.large.is_empty() {
        let baseline = args.baseline.as_deref().map(fs::canonicalize).transpose()?;
        let o = LargeOptions {
            dirs: &args.large,
            skip_nix: args.skip_nix,
            skip_rsync: args.skip_rsync,
            baseline: baseline.as_deref(),
            runs: args.runs.max(1),
        };
        large(&b, &work, &o)?;
    }
    Ok(())
}
