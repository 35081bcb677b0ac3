//! `deploy_bench`: `ferry deploy` over loopback SSH to a fleet of throwaway sshd servers
//! (`ferry_tests::sshd::Fleet`): the same system deployed to N hosts (default 8) against 1 host,
//! and a no-change redeploy of the N hosts.
//!
//! Targets (issue 6): N hosts take at most 1.5x the time of one host; a no-change redeploy of 8
//! hosts finishes in under 2 s.
//!
//! Setup, once: a fleet of N+1 sshd (the first `--hosts` for the fleet runs, the last for the
//! one-host runs), whose sessions find the `ferry` under test on `PATH` (no agent upload); a
//! package directory of `--size-mib` MiB (half pseudo-random, half text-like, so zstd has
//! something to do) in the deployment file. Each run deploys to fresh host roots (an empty
//! store: the whole closure travels), alternating: 1 host, N hosts, N hosts again (no change).
//! Every deploy is a separate `ferry deploy` process; times are wall-clock from spawn to exit,
//! including building the systems into the coordinator's store (the same for 1 and N, since
//! machines share a declaration but differ in host name: N small system items).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_tests::sshd::{remote_path, Fleet, Sshd, SshdOptions};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "deploy_bench")]
struct Args {
    /// The ferry binary under test (default: target/x86_64-unknown-linux-gnu/release/ferry of this workspace).
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Hosts in the fleet runs.
    #[arg(long, default_value_t = 8)]
    hosts: usize,
    /// Runs of each row.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of the package in the system, MiB.
    #[arg(long, default_value_t = 32)]
    size_mib: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn default_ferry() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("x86_64-unknown-linux-gnu/release/ferry")
}

fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Write the package: `bin/app` and `share/data` (half random, half repetitive text).
fn package(dir: &Path, mib: usize) -> Result<()> {
    fs::create_dir_all(dir.join("bin"))?;
    fs::create_dir_all(dir.join("share"))?;
    let app = dir.join("bin/app");
    fs::write(&app, "#!/bin/sh\necho app\n")?;
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755))?;
    let mut data = Vec::with_capacity(mib << 20);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while data.len() < (mib << 20) / 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let mut n = 0u64;
    while data.len() < mib << 20 {
        data.extend_from_slice(
            format!("line {n} of the text-like half of the package\n").as_bytes(),
        );
        n += 1;
    }
    fs::write(dir.join("share/data"), data)?;
    Ok(())
}

/// CPU seconds of sshd listener `pid` and every session process it has reaped (utime +
/// stime + cutime + cstime of `/proc/PID/stat`): the hosts' share of a deploy (sshd, the
/// shells, `ferry host ...`, the agent, `activate`), read before and after.
fn host_cpu(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    // After the `)`: field 3 (state) is index 0; fields 14-17 are indices 11-14.
    let ticks: u64 =
        rest.split_whitespace().skip(11).take(4).filter_map(|v| v.parse::<u64>().ok()).sum();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The hosts' CPU seconds, summed over `hosts`, once every session process has been reaped.
fn hosts_cpu(hosts: &[Sshd]) -> f64 {
    // Sessions end just after the coordinator: wait (bounded) for their exit to be counted.
    for _ in 0..50 {
        if hosts.iter().all(|h| h.pid().is_none_or(|p| session_count(p) == 0)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    hosts.iter().filter_map(Sshd::pid).map(host_cpu).sum()
}

/// Processes whose parent is `pid`.
fn session_count(pid: u32) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1).map(|pp| pp == pid.to_string()))
                .unwrap_or(false)
        })
        .count()
}

fn machine(name: &str, sshd: &Sshd, root: &Path) -> String {
    format!(
        "[[machine]]\nname = \"{name}\"\noperating-system = {{ inherit = \"base\", host-name = \"{name}\" }}\n\
         [machine.configuration]\nhost-name = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
         identity = \"{}\"\nhost-key = \"{}\"\nroot = \"{}\"\nconfirm-timeout = 30\n",
        sshd.port(),
        sshd.user(),
        sshd.identity_ed25519().display(),
        sshd.host_key(),
        root.display()
    )
}

const BASE: &str = r#"[operating-system.base]
packages = ["./pkg"]
files = { motd = "bench\n" }
services = [{ name = "app", start = 'app > "$FERRY_ROOT/var/app.txt"' }]
health-checks = [{ command = 'grep -q app "$FERRY_ROOT/var/app.txt"' }]
"#;

/// One `ferry deploy` under `/usr/bin/time`: wall seconds, and the coordinator's CPU
/// seconds (user + system of the `ferry deploy` process and its local children; the hosts'
/// sshd and agents are not its children).
fn deploy(ferry: &Path, work: &Path, file: &Path) -> Result<(f64, f64, String)> {
    let cpu_file = work.join("cpu");
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&cpu_file)
        .args(["-f", "%U %S"])
        .arg(ferry)
        .arg("deploy")
        .arg(file)
        .arg("--json")
        .current_dir(work)
        .env("FERRY_ROOT", work.join("coordinator"))
        .env("HOME", work.join("home"))
        .env_remove("FERRY_STORE_DIR")
        .env_remove("FERRY_STATE_DIR")
        .output()
        .context("running ferry deploy")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "ferry deploy {} failed:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cpu: f64 = fs::read_to_string(&cpu_file)?
        .split_whitespace()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // Per step, the slowest machine: `facts 0.05 copy 0.40 activate 0.20`.
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut steps = String::new();
    // "built N system(s) in 0.4s"
    if let Some(built) = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("built ").and_then(|r| r.split(" in ").nth(1)))
    {
        steps.push_str(&format!(" build {built}"));
    }
    for step in ["facts", "copy", "activate", "confirm"] {
        let slowest = summary["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["steps"][step].as_f64())
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
        if let Some(v) = slowest {
            steps.push_str(&format!(" {step} {v:.2}"));
        }
    }
    // Paths whose compressed stream another machine's copy made (compress once).
    let shared: u64 = summary["machines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["paths_shared"].as_u64())
        .sum();
    if shared > 0 {
        steps.push_str(&format!(" (paths shared {shared})"));
    }
    Ok((secs, cpu, steps))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let ferry = args.ferry.clone().unwrap_or_else(default_ferry);
    if !ferry.exists() {
        bail!("{} does not exist: cargo build --release -p deploy first", ferry.display());
    }
    let ferry = ferry.canonicalize()?;
    let ferry_dir = ferry.parent().expect("a file").to_owned();
    let work = tempfile::Builder::new().prefix("ferry-deploy-bench-").tempdir()?;
    let w = work.path();
    fs::create_dir_all(w.join("home"))?;
    package(&w.join("pkg"), args.size_mib)?;
    let options = SshdOptions { path: Some(remote_path(&[&ferry_dir])), ..SshdOptions::default() };
    let fleet = Fleet::start_with(args.hosts + 1, &options);
    let (many, one) = fleet.hosts.split_at(args.hosts);
    let uptime_before = load();

    let (mut t1, mut tn, mut tnoop) = (Vec::new(), Vec::new(), Vec::new());
    let (mut c1, mut cn) = (Vec::new(), Vec::new());
    let (mut hc1, mut hcn) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let roots = |sshd: &Sshd| sshd.dir().join(format!("root-{run}"));
        let mut single = BASE.to_owned();
        single.push_str(&machine("solo", &one[0], &roots(&one[0])));
        let single_file = w.join(format!("one-{run}.toml"));
        fs::write(&single_file, single)?;
        let mut text = BASE.to_owned();
        for (i, sshd) in many.iter().enumerate() {
            text.push_str(&machine(&format!("h{i}"), sshd, &roots(sshd)));
        }
        let fleet_file = w.join(format!("fleet-{run}.toml"));
        fs::write(&fleet_file, text)?;
        if run == 0 {
            // Warm-up: the systems are built into the coordinator's store and the page cache
            // is warm, so that every timed run does the same work.
            let mut warm = BASE.to_owned();
            warm.push_str(&machine("solo", &one[0], &one[0].dir().join("root-warm")));
            fs::write(w.join("warm.toml"), warm)?;
            deploy(&ferry, w, &w.join("warm.toml"))?;
        }
        let l = load();
        let h0 = hosts_cpu(one);
        let (a, cpu_a, steps_a) = deploy(&ferry, w, &single_file)?;
        let h1 = hosts_cpu(one);
        let h2 = hosts_cpu(many);
        let (b, cpu_b, steps_b) = deploy(&ferry, w, &fleet_file)?;
        let h3 = hosts_cpu(many);
        let (c, cpu_c, steps_c) = deploy(&ferry, w, &fleet_file)?;
        let h4 = hosts_cpu(many);
        let (host_a, host_b, host_c) = (h1 - h0, h3 - h2, h4 - h3);
        eprintln!(
            "run {run}: 1 host {a:.2}s (CPU: coordinator {cpu_a:.2}s, host {host_a:.2}s; slowest \
             steps{steps_a}), {} hosts {b:.2}s (CPU: coordinator {cpu_b:.2}s, hosts \
             {host_b:.2}s; slowest steps{steps_b}), {} hosts no change {c:.2}s (CPU: \
             coordinator {cpu_c:.2}s, hosts {host_c:.2}s; slowest steps{steps_c}) (load {l})",
            args.hosts, args.hosts
        );
        hc1.push(host_a);
        hcn.push(host_b);
        t1.push(a);
        tn.push(b);
        tnoop.push(c);
        c1.push(cpu_a);
        cn.push(cpu_b);
    }
    let (m1, mn, mnoop) = (median(&mut t1), median(&mut tn), median(&mut tnoop));
    let (mc1, mcn) = (median(&mut c1), median(&mut cn));
    let (mh1, mhn) = (median(&mut hc1), median(&mut hcn));
    let uptime_after = load();
    let result = json!({
        "hosts": args.hosts,
        "size_mib": args.size_mib,
        "runs": args.runs,
        "one_host_s": m1,
        "fleet_s": mn,
        "fleet_over_one": mn / m1,
        "no_change_fleet_s": mnoop,
        "one_host_coordinator_cpu_s": mc1,
        "fleet_coordinator_cpu_s": mcn,
        "one_host_host_cpu_s": mh1,
        "fleet_hosts_cpu_s": mhn,
        "one_host_all": t1,
        "fleet_all": tn,
        "no_change_all": tnoop,
        "load_before": uptime_before,
        "load_after": uptime_after,
    });
    if args.json {
        println!("{result}");
    } else {
        println!("load before: {uptime_before}; after: {uptime_after}");
        println!("deploy {} MiB package, median of {} runs (min-max):", args.size_mib, args.runs);
        let range = |v: &[f64]| {
            format!(
                "{:.2}-{:.2}",
                v.iter().copied().fold(f64::MAX, f64::min),
                v.iter().copied().fold(0.0, f64::max)
            )
        };
        println!(
            "  1 host                      {m1:.2} s ({})  CPU: coordinator {mc1:.2} s, host {mh1:.2} s",
            range(&t1)
        );
        println!(
            "  {} hosts                     {mn:.2} s ({})  = {:.2}x of 1 host (target <= 1.5x)  \
             CPU: coordinator {mcn:.2} s, hosts {mhn:.2} s",
            args.hosts,
            range(&tn),
            mn / m1
        );
        println!(
            "  {} hosts, no change          {mnoop:.2} s ({})  (target < 2 s)",
            args.hosts,
            range(&tnoop)
        );
    }
    Ok(())
}
