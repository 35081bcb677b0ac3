//! `ferry bench --to URI... [--base PATH]... PATH...`: measure archive transfer to hosts over an
//! emulated link.
//!
//! Each host (`local:///ROOT` or `ssh://…`) first receives the closures of the `--base` paths
//! over the plain connection (the set-up, timed apart: what a host already has, e.g. the previous
//! generation), then the closures of `PATH...` through a link emulated inside the transport
//! (`--rate`, `--latency`: [`transfer::shaping::ShapedTransport`], so it runs on any machine,
//! without `tc`). All hosts run in parallel; with several hosts a path's encoding is produced
//! once and shared unless `--no-share`.
//!
//! Modes: `full` (NARs as they are), `zstd` (full NARs, zstd at `--compress`), `delta` (zstd, and
//! deltas against what the host has; the default). The report gives, per host: phase times,
//! NAR bytes, wire bytes, the ratio wire / NAR, throughput (NAR bytes per second of transfer),
//! the paths sent as deltas, the levels used, and what the link alone would take (wire bytes /
//! rate + the measured connect and diff round trips); and the coordinator's CPU time.
//! `--json` prints one JSON object on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use transfer::adaptive::CompressSetting;
use transfer::frame_cache::FrameCache;
use transfer::protocol::Encoding;
use transfer::push::{push_closure, NoProgress, PushOptions, PushSummary};
use transfer::shaping::{LinkSpec, ShapedTransport};
use transfer::transport::Transport;
use transfer::uri::Target;

use super::copy::{transport_for, SshArgs};
use super::GlobalOpts;

/// How path data goes in `ferry bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// NAR bytes as they are.
    Full,
    /// Whole NARs, zstd at `--compress`.
    Zstd,
    /// zstd, and deltas against paths the host has.
    Delta,
}

/// `ferry bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Host to copy to (`local:///ROOT`, `ssh://…`); repeat for several hosts.
    #[arg(long = "to", value_name = "URI", required = true)]
    pub to: Vec<String>,
    /// Copy the closure of this path first, without shaping and untimed (what hosts already have).
    #[arg(long, value_name = "PATH")]
    pub base: Vec<String>,
    /// Link rate of the emulated link (`20mbit`, `512kbit`, `1gbit`, `unlimited`).
    #[arg(long, default_value = "20mbit")]
    pub rate: String,
    /// One-way latency of the emulated link (`40ms`, `0`, `1s`).
    #[arg(long, default_value = "40ms")]
    pub latency: String,
    /// full, zstd or delta.
    #[arg(long, value_enum, default_value = "delta")]
    pub mode: Mode,
    /// zstd level: auto (follow the link), max, none, or 1..=19.
    #[arg(long, default_value = "auto", value_name = "LEVEL|max|auto")]
    pub compress: CompressSetting,
    /// Encode separately for each host (measure what compress-once saves).
    #[arg(long)]
    pub no_share: bool,
    /// SSH identity file.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The host's SSH key.
    #[arg(long, value_name = "KEY")]
    pub host_key: Option<String>,
    /// known_hosts file.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Store paths whose closures to transfer.
    #[arg(required = true)]
    pub paths: Vec<String>,
}

/// `20mbit` → bytes per second.
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let t = text.trim().to_ascii_lowercase();
    if t == "unlimited" || t == "inf" {
        return Ok(f64::INFINITY);
    }
    let (num, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n, *scale)))
        .with_context(|| format!("--rate {text:?}: expected a number and kbit, mbit or gbit"))?;
    let n: f64 = num.trim().parse().with_context(|| format!("--rate {text:?}: bad number"))?;
    if !(n > 0.0 && n.is_finite()) {
        bail!("--rate {text:?}: must be positive");
    }
    Ok(n * scale / 8.0)
}

/// `40ms` → duration.
pub fn parse_latency(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim().to_ascii_lowercase();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t.as_str(), 1e-3)
    };
    let n: f64 = num.trim().parse().with_context(|| format!("--latency {text:?}: bad number"))?;
    if !(n >= 0.0 && n.is_finite()) {
        bail!("--latency {text:?}: must be zero or positive");
    }
    Ok(Duration::from_secs_f64(n * scale))
}

/// CPU seconds (user + system) this process used so far (`/proc/self/stat`).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn host_json(s: &PushSummary, rate: f64) -> serde_json::Value {
    let transfer_secs = s.phases.send.as_secs_f64() + s.phases.import.as_secs_f64();
    let setup = s.phases.connect.as_secs_f64() + s.phases.diff.as_secs_f64();
    let link_secs = if rate.is_finite() { s.wire_bytes as f64 / rate } else { 0.0 };
    let total = setup + transfer_secs;
    json!({
        "host": s.host,
        "closure_paths": s.closure_paths,
        "paths_sent": s.paths_sent,
        "paths_delta": s.encode.paths_delta,
        "delta_fallbacks": s.delta_fallbacks,
        "paths_shared": s.encode.paths_shared,
        "levels": s.encode.levels.iter().map(|(l, n)| json!([l, n])).collect::<Vec<_>>(),
        "rejected": s.rejected.len(),
        "nar_bytes": s.nar_bytes_sent,
        "wire_bytes": s.wire_bytes,
        "wire_bytes_received": s.wire_bytes_received,
        "ratio": if s.nar_bytes_sent > 0 { s.wire_bytes as f64 / s.nar_bytes_sent as f64 } else { 0.0 },
        "seconds": total,
        "phases": {
            "connect": s.phases.connect.as_secs_f64(),
            "diff": s.phases.diff.as_secs_f64(),
            "send": s.phases.send.as_secs_f64(),
            "import": s.phases.import.as_secs_f64(),
        },
        "throughput_nar_bytes_per_sec": if transfer_secs > 0.0 { s.nar_bytes_sent as f64 / transfer_secs } else { 0.0 },
        "link_model_seconds": link_secs + setup,
        "vs_link_model": if link_secs + setup > 0.0 { total / (link_secs + setup) } else { 0.0 },
        "link_rate_estimate": s.encode.link_rate,
    })
}

pub fn run(global: &GlobalOpts, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let rate = parse_rate(&args.rate)?;
    let latency = parse_latency(&args.latency)?;
    let spec = LinkSpec { rate, latency, burst: 16 * 1024 };
    let layout = super::store::layout(global)?;
    let targets: Vec<(String, Target)> = args
        .to
        .iter()
        .map(|uri| {
            let t = Target::parse(uri)?;
            match t {
                Target::Local { .. } | Target::Ssh { .. } => Ok((uri.clone(), t)),
                _ => bail!("{uri}: ferry bench copies to local:// and ssh:// hosts"),
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let store = super::store::open_read_only(global)?;
    let parse = |list: &[String]| {
        list.iter()
            .map(|p| super::store::parse_store_arg(&store, p))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let (base_roots, roots) = (parse(&args.base)?, parse(&args.paths)?);
    let t = Instant::now();
    let closure = store.closure(&roots).context("cannot compute the closure")?;
    let closure_secs = t.elapsed().as_secs_f64();
    let base_closure = if base_roots.is_empty() {
        None
    } else {
        Some(store.closure(&base_roots).context("cannot compute the base closure")?)
    };
    drop(store);
    let (key, _) = transfer::trust::load_or_generate_key(layout.state_dir())?;
    let ssh = SshArgs {
        identity: args.identity.clone(),
        host_key: args.host_key.clone(),
        known_hosts: args.known_hosts.clone(),
    };
    let transports: Vec<Box<dyn Transport>> = targets
        .iter()
        .map(|(uri, t)| transport_for(t, uri, &ssh))
        .collect::<anyhow::Result<_>>()?;

    // Set-up: what the hosts already have, unshaped, and our key in their ACLs.
    let t = Instant::now();
    let setup_options = PushOptions { authorize: true, ..PushOptions::default() };
    let empty = closure::ValidatedClosure::from_infos(Vec::new()).context("empty closure")?;
    let setup_closure = base_closure.as_ref().unwrap_or(&empty);
    for (transport, (uri, _)) in transports.iter().zip(&targets) {
        let s = push_closure(
            &layout,
            setup_closure,
            transport.as_ref(),
            &key,
            &setup_options,
            &NoProgress,
        )
        .with_context(|| format!("{uri}: set-up copy"))?;
        if !s.rejected.is_empty() {
            bail!("{uri}: set-up copy: {} paths refused", s.rejected.len());
        }
    }
    let setup_secs = t.elapsed().as_secs_f64();

    let options = PushOptions {
        encoding: if args.mode == Mode::Full { Encoding::None } else { Encoding::Zstd },
        compress: Some(args.compress),
        delta: args.mode == Mode::Delta,
        frame_cache: (targets.len() > 1 && !args.no_share)
            .then(|| Arc::new(FrameCache::new(targets.len()))),
        ..PushOptions::default()
    };
    let cpu0 = process_cpu_secs();
    let t = Instant::now();
    let results: Vec<anyhow::Result<PushSummary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = transports
            .into_iter()
            .map(|inner| {
                let (layout, closure, key, options) = (&layout, &closure, &key, &options);
                scope.spawn(move || {
                    let shaped = ShapedTransport { inner, up: spec, down: spec };
                    push_closure(layout, closure, &shaped, key, options, &NoProgress)
                        .map_err(anyhow::Error::from)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked"))))
            .collect()
    });
    let wall = t.elapsed().as_secs_f64();
    let cpu = match (cpu0, process_cpu_secs()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut failed = false;
    let mut hosts = Vec::new();
    for ((uri, _), r) in targets.iter().zip(results) {
        match r {
            Ok(s) => {
                failed |= !s.rejected.is_empty();
                hosts.push(host_json(&s, rate));
            }
            Err(e) => {
                failed = true;
                hosts.push(json!({ "host": uri, "error": format!("{e:#}") }));
            }
        }
    }
    let mode = match args.mode {
        Mode::Full => "full",
        Mode::Zstd => "zstd",
        Mode::Delta => "delta",
    };
    let out = json!({
        "mode": mode,
        "compress": format!("{:?}", args.compress),
        "rate_bytes_per_sec": if rate.is_finite() { json!(rate) } else { json!(null) },
        "latency_ms": latency.as_secs_f64() * 1e3,
        "closure_paths": closure.len(),
        "closure_nar_bytes": closure.total_nar_size(),
        "closure_seconds": closure_secs,
        "setup_seconds": setup_secs,
        "seconds": wall,
        "coordinator_cpu_seconds": cpu,
        "shared_encoding": options.frame_cache.as_ref().map(|c| {
            let s = c.stats();
            json!({ "produced": s.produced, "shared": s.shared, "shared_bytes": s.shared_bytes })
        }),
        "hosts": hosts,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "ferry bench: mode {mode}, {} paths ({:.1} MB NAR) to {} host(s) over {} / {} one way; \
             {wall:.2} s wall, coordinator CPU {}",
            closure.len(),
            closure.total_nar_size() as f64 / 1e6,
            targets.len(),
            args.rate,
            args.latency,
            cpu.map_or("?".into(), |c| format!("{c:.2} s")),
        );
        for h in out["hosts"].as_array().into_iter().flatten() {
            if let Some(e) = h.get("error") {
                println!("  {}: error: {}", h["host"], e);
                continue;
            }
            println!(
                "  {}: {} paths ({} as deltas), NAR {:.2} MB, wire {:.2} MB (ratio {:.3}), {:.2} s \
                 (connect {:.2}, diff {:.2}, send {:.2}, import {:.2}), {:.2} MB/s NAR, link model \
                 {:.2} s (x{:.2}), levels {}",
                h["host"].as_str().unwrap_or(""),
                h["paths_sent"],
                h["paths_delta"],
                h["nar_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                h["wire_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                h["ratio"].as_f64().unwrap_or(0.0),
                h["seconds"].as_f64().unwrap_or(0.0),
                h["phases"]["connect"].as_f64().unwrap_or(0.0),
                h["phases"]["diff"].as_f64().unwrap_or(0.0),
                h["phases"]["send"].as_f64().unwrap_or(0.0),
                h["phases"]["import"].as_f64().unwrap_or(0.0),
                h["throughput_nar_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e6,
                h["link_model_seconds"].as_f64().unwrap_or(0.0),
                h["vs_link_model"].as_f64().unwrap_or(0.0),
                h["levels"],
            );
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_latencies() {
        assert_eq!(parse_rate("20mbit").unwrap(), 2.5e6);
        assert_eq!(parse_rate("512kbit").unwrap(), 64e3);
        assert!(parse_rate("unlimited").unwrap().is_infinite());
        assert!(parse_rate("20").is_err() && parse_rate("-1mbit").is_err());
        assert_eq!(parse_latency("40ms").unwrap(), Duration::from_millis(40));
        assert_eq!(parse_latency("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_latency("0").unwrap(), Duration::ZERO);
        assert!(parse_latency("fast").is_err());
    }
}
