//! `link_bench`: the generation update (issue 7) to one SSH host on loopback over the same
//! slow link made two ways, side by side in one run: `ferry bench --link emulated` (rate and
//! latency inside the transport) and `--link kernel` (a private network namespace: `tc` on
//! `lo` for the rate, netem or the latency relay for the delay; see `ferry bench`'s doc).
//!
//! It reuses the store `gen_update` builds (`--work`, its `generations.json`): run `gen_update`
//! once first. Each run gets a fresh host root in a loopback sshd of the test harness (ferry on
//! the session's `PATH`, no upload), copies generation 1 unshaped, then generation 2 through the
//! link, and reports time, wire bytes and the link model (wire bytes / rate + connect + diff).
//! Runs alternate (emulated, kernel, emulated, …) so that load changes hit both alike.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "link_bench",
    about = "The generation update to a loopback SSH host over the emulated and the kernel-shaped link, side by side"
)]
struct Args {
    #[command(flatten)]
    link: ferry_benches::GenUpdateLink,
    /// `MODE:COMPRESS` of `ferry bench`.
    #[arg(long, default_value = "delta:auto")]
    setting: String,
    /// Runs of each link kind.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

fn bench(a: &Args, sshd: &Sshd, link: &str, gen1: &str, gen2: &str, host: &Path) -> Result<Value> {
    let (mode, compress) = a.setting.split_once(':').context("--setting is MODE:COMPRESS")?;
    let uri = format!("ssh://{}@127.0.0.1:{}?root={}", sshd.user(), sshd.port(), host.display());
    let out = Command::new(&a.link.ferry)
        .arg("--root")
        .arg(a.link.work.join("local"))
        .args(["bench", "--link", link, "--to", &uri, "--base", gen1])
        .args(["--rate", &a.link.rate, "--latency", &a.link.latency, "--mode", mode])
        .args(["--compress", compress, "--json", "--identity"])
        .arg(sshd.identity_ed25519())
        .arg("--known-hosts")
        .arg(sshd.known_hosts())
        .arg(gen2)
        .output()
        .context("running ferry bench")?;
    if !out.status.success() {
        bail!("ferry bench --link {link}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    if let Some(e) = v["hosts"][0].get("error") {
        bail!("--link {link}: {e}");
    }
    Ok(v)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let gens: Value = serde_json::from_str(
        &std::fs::read_to_string(a.link.work.join("generations.json"))
            .context("no generations.json under --work: run gen_update first")?,
    )?;
    let (gen1, gen2) = (gens["gen1"].as_str().unwrap_or(""), gens["gen2"].as_str().unwrap_or(""));
    let ferry = std::fs::canonicalize(&a.link.ferry)?;
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[ferry.parent().context("ferry's directory")?])),
        ..SshdOptions::default()
    });
    println!(
        "| link | how | wire bytes | time s | connect+diff s | link model s | time / link model | load before → after |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in 0..a.runs {
        for link in ["emulated", "kernel"] {
            let host = sshd.dir().join(format!("host-{link}-{run}"));
            let before = loadavg();
            let v = bench(&a, &sshd, link, gen1, gen2, &host)?;
            let after = loadavg();
            let _ = std::fs::remove_dir_all(&host);
            let h = &v["hosts"][0];
            let setup = h["phases"]["connect"].as_f64().unwrap_or(0.0)
                + h["phases"]["diff"].as_f64().unwrap_or(0.0);
            println!(
                "| {link} | {} | {} | {:.2} | {setup:.2} | {:.2} | {:.2} | {before} → {after} |",
                v["link"].as_str().unwrap_or(""),
                h["wire_bytes"],
                h["seconds"].as_f64().unwrap_or(0.0),
                h["link_model_seconds"].as_f64().unwrap_or(0.0),
                h["vs_link_model"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}
