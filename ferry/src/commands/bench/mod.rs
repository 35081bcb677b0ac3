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
//!
//! # `--link kernel`
//!
//! The emulated link shapes the agent's byte stream; `--link kernel` shapes packets instead, for
//! SSH hosts on loopback (`ssh://…@127.0.0.1:PORT`). `ferry bench` re-runs itself under
//! `unshare -n` (a private network namespace with only `lo`, gone when it exits) with the
//! environment variables `FERRY_BENCH_NETNS_DIR` and `FERRY_BENCH_NETNS_QDISC` set. The sshd
//! stays outside: for each host port the outer process serves a Unix socket in that directory
//! (path-named Unix sockets cross network namespaces) relayed to the real `127.0.0.1:PORT`, and
//! the inner one listens on the same `127.0.0.1:PORT` inside the namespace (so `known_hosts`
//! entries still match) and relays each connection to that Unix socket
//! ([`transfer::relay::Relay`]). The inner process copies the `--base` closures first, unshaped,
//! then shapes `lo` and times the transfer:
//!
//! - with `netem` (when `tc qdisc add dev lo root netem` works):
//!   `tc qdisc add dev lo root netem delay LATENCY rate RATE`, and the relay adds nothing;
//! - otherwise (this project's kernels have no netem) `tbf` for the rate,
//!   `tc qdisc add dev lo root tbf rate RATE burst 32kb latency 50ms` with `lo`'s MTU set to
//!   1500, and the relay adds `LATENCY` to each direction.
//!
//! Both directions share `lo`'s one qdisc, so the rate is shared by what goes up and what comes
//! back (little, for a push: acknowledgements). Where `unshare`, `ip` or `tc` is missing or not
//! allowed (they need root), `ferry bench` says so on stderr and uses the emulated link.
//!
//! # `--compare`
//!
//! `ferry bench --compare nix,nix-ssh-ng,rsync[,casync] PATH...` puts ferry and its peers side
//! by side on the same kernel-shaped links, fresh host each run: [`compare`] (the runner and its
//! throwaway sshd, [`sshd`]), [`stats`] (link specs, median and spread, ratios: pure),
//! [`plot`] (`--plot FILE.svg`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::frame::Encoding;
use proto::uri::Target;
use serde_json::json;
use transfer::push::adaptive::CompressSetting;
use transfer::push::frame_cache::FrameCache;
use transfer::push::{push_closure, NoProgress, PushOptions, PushSummary};
use transfer::shaping::{LinkSpec, Qdisc, ShapedTransport};
use transfer::transport::Transport;

use super::copy::SshArgs;
use crate::output::format_bytes;
use crate::settings::GlobalOpts;
pub use stats::{parse_latency, parse_rate};

mod compare;
mod plot;
mod sshd;
pub mod stats;

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

/// What shapes the link in `ferry bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkKind {
    /// Rate and latency emulated inside the transport: any host, any machine.
    Emulated,
    /// `tc` in a private network namespace (SSH hosts on loopback; see the module doc).
    Kernel,
}

/// `ferry bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Host to copy to (`local:///ROOT`, `ssh://…`); repeat for several hosts.
    #[arg(long = "to", value_name = "URI", required_unless_present = "compare")]
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
    /// emulated (inside the transport) or kernel (`tc` in a private network namespace, for
    /// SSH hosts on loopback; falls back to emulated where that is not possible).
    #[arg(long, value_enum, default_value = "emulated")]
    pub link: LinkKind,
    /// full, zstd or delta.
    #[arg(long, value_enum, default_value = "delta")]
    pub mode: Mode,
    /// zstd level: auto (follow the link), max, none, or 1..=19.
    #[arg(long, default_value = "auto", value_name = "LEVEL|max|auto")]
    pub compress: CompressSetting,
    /// Encode separately for each host (measure what compress-once saves).
    #[arg(long)]
    pub no_share: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Compare ferry with these peers (comma-separated: nix, nix-ssh-ng, rsync, casync) on the
    /// same kernel-shaped links, a throwaway sshd as the host (needs root: unshare -n, tc).
    #[arg(long, value_name = "TOOLS", conflicts_with_all = ["to", "link", "rate", "latency"])]
    pub compare: Option<String>,
    /// With --compare: the shaped links, `NAME=RATE/LATENCY,...` (the unshaped loopback always
    /// comes first; an empty list: loopback only).
    #[arg(
        long,
        default_value = "lan=1gbit/1ms,wan=100mbit/20ms,slow=20mbit/40ms",
        requires = "compare"
    )]
    pub links: String,
    /// With --compare: rounds; each runs every tool once per link, order rotated.
    #[arg(long, default_value_t = 3, requires = "compare")]
    pub rounds: usize,
    /// With --compare: write a plot of time against link rate per tool (SVG).
    #[arg(long, value_name = "FILE.svg", requires = "compare")]
    pub plot: Option<std::path::PathBuf>,
    /// With --compare: where the hosts' directories go (default: the temp dir).
    #[arg(long, value_name = "DIR", requires = "compare")]
    pub work: Option<std::path::PathBuf>,
    /// Store paths whose closures to transfer.
    #[arg(required = true)]
    pub paths: Vec<String>,
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

/// Set in the process `--link kernel` runs under `unshare -n`: the directory of the Unix
/// sockets that lead out of the namespace.
const NETNS_DIR_ENV: &str = "FERRY_BENCH_NETNS_DIR";
/// Set with [`NETNS_DIR_ENV`]: `netem` or `tbf`, what the outer process found to work.
const NETNS_QDISC_ENV: &str = "FERRY_BENCH_NETNS_QDISC";

/// `sh -c SCRIPT` in a throwaway network namespace: `Err(stderr)` when it fails.
fn in_netns(script: &str) -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(["-n", "--", "sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// What can shape `lo` in a private network namespace here: netem, else tbf, else why not.
fn probe_qdisc() -> Result<Qdisc, String> {
    if in_netns("ip link set lo up && tc qdisc add dev lo root netem delay 1ms").is_ok() {
        return Ok(Qdisc::Netem);
    }
    in_netns("ip link set lo up && tc qdisc add dev lo root tbf rate 1mbit burst 32kb latency 50ms")
        .map(|()| Qdisc::Tbf)
}

/// Run a command (`ip`, `tc`) in the current namespace.
fn run_tool(program: &str, args: &[String]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The loopback address and port of an `ssh://` target, for `--link kernel`.
fn loopback_endpoint(uri: &str, target: &Target) -> anyhow::Result<std::net::SocketAddr> {
    let Target::Ssh { endpoint, .. } = target else {
        bail!("{uri}: --link kernel shapes SSH hosts on loopback only; use --link emulated")
    };
    let ip: std::net::IpAddr = match endpoint.host.as_str() {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => {
            h.parse().ok().filter(|ip: &std::net::IpAddr| ip.is_loopback()).with_context(|| {
                format!(
                    "{uri}: --link kernel shapes SSH hosts on loopback only; use --link emulated"
                )
            })?
        }
    };
    Ok((ip, endpoint.port.unwrap_or(22)).into())
}

/// `--link kernel`, outside the namespace: relay each host's port to a Unix socket, run this
/// same command under `unshare -n`, return its exit code. `None`: not possible here (said on
/// stderr), use the emulated link.
fn run_outside_netns(endpoints: &[std::net::SocketAddr]) -> anyhow::Result<Option<ExitCode>> {
    let qdisc = match probe_qdisc() {
        Ok(q) => q,
        Err(why) => {
            eprintln!(
                "ferry bench: no kernel link shaping here (unshare -n, ip and tc, as root: {why}); \
                 using the emulated link"
            );
            return Ok(None);
        }
    };
    let dir = tempfile::Builder::new().prefix("ferry-bench-netns-").tempdir()?;
    let relay = transfer::relay::Relay::new(Duration::ZERO)?;
    for ep in endpoints {
        let sock = dir.path().join(format!("{}.sock", ep.port()));
        if !sock.exists() {
            relay.unix_to_tcp(sock, *ep)?;
        }
    }
    let exe = std::env::current_exe().context("cannot find the running ferry executable")?;
    let status = std::process::Command::new("unshare")
        .args(["-n", "--"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(NETNS_DIR_ENV, dir.path())
        .env(NETNS_QDISC_ENV, qdisc.name())
        .status()
        .context("cannot run unshare -n")?;
    drop(relay);
    Ok(Some(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => bail!("ferry bench under unshare -n was killed ({status})"),
    }))
}

/// `--link kernel`, inside the namespace: what was set up, until the link is shaped.
struct Netns {
    qdisc: Qdisc,
    relay: transfer::relay::Relay,
}

impl Netns {
    /// `lo` up, and a relay from each host's address here to its Unix socket in `dir`.
    fn enter(
        dir: &std::path::Path,
        qdisc: Qdisc,
        endpoints: &[std::net::SocketAddr],
    ) -> anyhow::Result<Netns> {
        run_tool("ip", &["link", "set", "lo", "up"].map(String::from))?;
        if qdisc == Qdisc::Tbf {
            // Packets the size of a real link's: tbf drops any larger than its bucket.
            run_tool("ip", &["link", "set", "lo", "mtu", "1500"].map(String::from))?;
        }
        let relay = transfer::relay::Relay::new(Duration::ZERO)?;
        let mut bound = Vec::new();
        for ep in endpoints {
            if !bound.contains(ep) {
                relay
                    .tcp_to_unix(*ep, dir.join(format!("{}.sock", ep.port())))
                    .with_context(|| format!("cannot listen on {ep} in the network namespace"))?;
                bound.push(*ep);
            }
        }
        Ok(Netns { qdisc, relay })
    }

    /// Shape `lo` (and the relay's latency for tbf). Returns how, for the report.
    fn shape(&self, rate: f64, latency: Duration) -> anyhow::Result<String> {
        if self.qdisc == Qdisc::Tbf && !rate.is_finite() {
            self.relay.set_latency(latency);
            return Ok("kernel: relay latency only (unlimited rate)".into());
        }
        let mut args: Vec<String> = ["qdisc", "add", "dev", "lo", "root"].map(String::from).into();
        args.extend(self.qdisc.tc_args(rate, latency));
        run_tool("tc", &args)?;
        Ok(match self.qdisc {
            Qdisc::Netem => format!("kernel: tc {}", args.join(" ")),
            Qdisc::Tbf => {
                self.relay.set_latency(latency);
                format!("kernel: tc {} + relay latency", args.join(" "))
            }
        })
    }
}

/// The benchmark from start to end: targets, kernel link set-up, closures, set-up copy, the
/// measured copy and its report. Kept whole (about 200 lines) because the steps run once each,
/// in this order, and share the link set-up that must live until the report is printed.
pub fn run(global: &GlobalOpts, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.compare.is_some() {
        return compare::run_compare(global, args);
    }
    let rate = parse_rate(&args.rate)?;
    let latency = parse_latency(&args.latency)?;
    let spec = LinkSpec { rate, latency, burst: 16 * 1024 };
    let layout = crate::settings::layout(global)?;
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
    let mut netns = None;
    if args.link == LinkKind::Kernel {
        let endpoints = targets
            .iter()
            .map(|(uri, t)| loopback_endpoint(uri, t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match (std::env::var_os(NETNS_DIR_ENV), std::env::var(NETNS_QDISC_ENV).as_deref()) {
            (Some(dir), Ok(q)) => {
                let qdisc = if q == "netem" { Qdisc::Netem } else { Qdisc::Tbf };
                netns = Some(Netns::enter(std::path::Path::new(&dir), qdisc, &endpoints)?);
            }
            _ => {
                if let Some(code) = run_outside_netns(&endpoints)? {
                    return Ok(code);
                }
            }
        }
    }
    let store = crate::settings::open_read_only(global)?;
    let parse = |list: &[String]| {
        list.iter()
            .map(|p| crate::settings::parse_store_arg(&store, p))
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
    let transports: Vec<Box<dyn Transport>> = targets
        .iter()
        .map(|(uri, _)| {
            transfer::target::Target::from_uri(uri, &args.ssh.auth())?
                .into_transport()
                .with_context(|| format!("{uri}: ferry bench copies to local:// and ssh:// hosts"))
        })
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
    let link = match &netns {
        Some(n) => n.shape(rate, latency)?,
        None => "emulated".to_owned(),
    };

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
                let shaped: Box<dyn Transport> = if netns.is_some() {
                    inner
                } else {
                    Box::new(ShapedTransport { inner, up: spec, down: spec })
                };
                scope.spawn(move || {
                    push_closure(layout, closure, shaped.as_ref(), key, options, &NoProgress)
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
                if s.paths_sent == 0 {
                    eprintln!(
                        "ferry bench: warning: {uri} already had all {} paths: nothing was sent, \
                         so this run measures no transfer (a host warm from an earlier run? use a \
                         fresh one)",
                        s.closure_paths
                    );
                }
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
        "link": link,
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
            "ferry bench: mode {mode}, {} paths ({} NAR) to {} host(s) over {} / {} one way \
             ({link}); {wall:.2} s wall, coordinator CPU {}",
            closure.len(),
            format_bytes(closure.total_nar_size()),
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
                "  {}: {} paths ({} as deltas), NAR {}, wire {} (ratio {:.3}), {:.2} s \
                 (connect {:.2}, diff {:.2}, send {:.2}, import {:.2}), {}/s NAR, link model \
                 {:.2} s (x{:.2}), levels {}",
                h["host"].as_str().unwrap_or(""),
                h["paths_sent"],
                h["paths_delta"],
                format_bytes(h["nar_bytes"].as_u64().unwrap_or(0)),
                format_bytes(h["wire_bytes"].as_u64().unwrap_or(0)),
                h["ratio"].as_f64().unwrap_or(0.0),
                h["seconds"].as_f64().unwrap_or(0.0),
                h["phases"]["connect"].as_f64().unwrap_or(0.0),
                h["phases"]["diff"].as_f64().unwrap_or(0.0),
                h["phases"]["send"].as_f64().unwrap_or(0.0),
                h["phases"]["import"].as_f64().unwrap_or(0.0),
                format_bytes(h["throughput_nar_bytes_per_sec"].as_f64().unwrap_or(0.0) as u64),
                h["link_model_seconds"].as_f64().unwrap_or(0.0),
                h["vs_link_model"].as_f64().unwrap_or(0.0),
                h["levels"],
            );
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
