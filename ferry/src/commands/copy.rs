//! `ferry copy --to URI... PATH...`: copy closures to hosts, sending only what each lacks.
//!
//! Targets (see `proto::uri`): `local:///ROOT` (an agent as a local subprocess),
//! `ssh://[user@]host[:port]` (an agent over SSH), `nix+ssh://…` (`nix-store --serve --write`),
//! `file:///DIR` (a binary cache directory). Paths are signed with the local key
//! `<state>/signing-key.sec` (generated on first use). Hosts run in parallel; one host's
//! failure does not stop the others. Progress goes to stderr (bars on a terminal, plain lines
//! otherwise); the summary too, or with `--json` one JSON object on stdout.
//!
//! `--from URI PATH...` copies the other way: `ssh://` (the host's agent sends the closures,
//! signed with its key, which the local ACL must hold; `transfer::pull`), `local:///ROOT` (read
//! from that store directly) and `nix+ssh://` (`nix-store --serve`).
//!
//! Every kind of target goes through one library call (`transfer::target`: `copy_to_all`,
//! `copy_from`); this command parses the arguments, renders progress and prints the summary.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use proto::frame::Encoding;
use serde_json::json;
use transfer::pull::PullSummary;
use transfer::push::adaptive::CompressSetting;
use transfer::push::{Progress, ProgressEvent, PushOptions, PushSummary};
use transfer::target::nix_host::PullReport;
use transfer::target::{CopyReport, Received, Source, Target};
use transfer::transport::ssh::SshAuth;

use crate::settings::GlobalOpts;

/// Test hook: the coordinator stops writing after this many wire bytes (a cut connection).
pub const CUT_AFTER_ENV: &str = "FERRY_TEST_CUT_AFTER";

/// `ferry copy` arguments.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Copy to this target (repeat for several hosts).
    #[arg(long = "to", value_name = "URI", required_unless_present = "from")]
    pub to: Vec<String>,
    /// Copy from this target into the local store.
    #[arg(long, value_name = "URI", conflicts_with = "to")]
    pub from: Option<String>,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Add the local signing key to each host's ACL first.
    #[arg(long)]
    pub authorize: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// zstd level for path data: auto (follow the measured link; the default), max (fewest
    /// bytes), none, or 1..=19.
    #[arg(long, default_value = "auto", value_name = "LEVEL|max|auto")]
    pub compress: CompressSetting,
    /// Never send deltas against paths the hosts already have.
    #[arg(long)]
    pub no_delta: bool,
    /// A fixed zstd level for path data (same as --compress N).
    #[arg(long, value_name = "N", conflicts_with = "compress")]
    pub compression_level: Option<i32>,
    /// Send path data uncompressed.
    #[arg(long)]
    pub no_compress: bool,
    /// Store paths whose closures to copy.
    #[arg(required = true)]
    pub paths: Vec<String>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The terminal's bars, one per host.
type Bars = (MultiProgress, Mutex<Vec<(String, ProgressBar)>>);

/// Renders progress: one bar per host on a terminal, plain lines otherwise.
struct Render {
    bars: Option<Bars>,
    /// Per host: NAR bytes sent, paths landed, paths missing.
    hosts: Mutex<std::collections::BTreeMap<String, (u64, usize, usize)>>,
    /// Per host: the agent upload's rate.
    uploads: AgentUploads,
    last_line: Mutex<Instant>,
    quiet: bool,
}

impl Render {
    fn new(quiet: bool) -> Self {
        let bars = (std::io::stderr().is_terminal() && !quiet)
            .then(|| (MultiProgress::new(), Mutex::new(Vec::new())));
        Render {
            bars,
            hosts: Mutex::default(),
            uploads: AgentUploads::default(),
            last_line: Mutex::new(Instant::now()),
            quiet,
        }
    }

    fn bar(&self, host: &str) -> Option<ProgressBar> {
        let (multi, bars) = self.bars.as_ref()?;
        let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bar)) = bars.iter().find(|(h, _)| h == host) {
            return Some(bar.clone());
        }
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(host.to_owned());
        bars.push((host.to_owned(), bar.clone()));
        Some(bar)
    }

    fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            for (_, bar) in bars.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                bar.finish();
            }
        }
    }
}

impl Progress for Render {
    fn event(&self, host: &str, event: &ProgressEvent<'_>) {
        if self.quiet && self.bars.is_none() {
            return;
        }
        let bar = self.bar(host);
        match event {
            ProgressEvent::Plan { closure_paths, missing_paths, nar_bytes, resumed_bytes } => {
                self.hosts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(host.to_owned())
                    .or_default()
                    .2 = *missing_paths;
                if let Some(bar) = bar {
                    // The bar may have shown the agent's upload.
                    bar.set_position(0);
                    bar.reset_eta();
                    bar.reset_elapsed();
                    bar.set_length(*nar_bytes);
                    bar.set_message(format!("{missing_paths}/{closure_paths} paths"));
                } else {
                    let resumed = if *resumed_bytes > 0 {
                        format!(", {} resumed", mib(*resumed_bytes))
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "{host}: {missing_paths} of {closure_paths} paths missing, {} to send{resumed}",
                        mib(*nar_bytes)
                    );
                }
            }
            ProgressEvent::Sent { .. } | ProgressEvent::Landed { .. } => {
                let (sent, landed, missing) = {
                    let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = hosts.entry(host.to_owned()).or_default();
                    match event {
                        ProgressEvent::Sent { nar_bytes } => entry.0 += nar_bytes,
                        _ => entry.1 += 1,
                    }
                    *entry
                };
                if let Some(bar) = bar {
                    if let ProgressEvent::Sent { nar_bytes } = event {
                        bar.inc(*nar_bytes);
                    }
                    bar.set_message(format!("{landed}/{missing} paths landed"));
                } else {
                    let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                    if last.elapsed() >= Duration::from_secs(2) {
                        *last = Instant::now();
                        eprintln!("{host}: {} sent, {landed}/{missing} paths landed", mib(sent));
                    }
                }
            }
            ProgressEvent::AgentUpload { sent, total, codec } => {
                let line = self.uploads.line(host, *sent, *total, codec);
                if let Some(bar) = bar {
                    bar.set_length(*total);
                    bar.set_position(*sent);
                    bar.set_message(format!("uploading agent ({codec})"));
                } else if let Some(line) = line {
                    eprintln!("{host}: {line}");
                }
            }
            _ => {}
        }
    }
}

/// The agent uploads under way, per host: when each started and from which byte, for the
/// rate and ETA of "uploading agent 2.1/4.4 MiB (zstd), 1.9 MiB/s, ETA 1s".
#[derive(Debug, Default)]
pub(crate) struct AgentUploads(Mutex<std::collections::BTreeMap<String, Upload>>);

/// When an upload started, from which byte, and when its last line was printed.
type Upload = (Instant, u64, Option<Instant>);

impl AgentUploads {
    /// The line for this event, at most every 2 s per host (and at the start and the end).
    pub(crate) fn line(&self, host: &str, sent: u64, total: u64, codec: &str) -> Option<String> {
        let mut uploads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (started, first, last) = uploads.entry(host.to_owned()).or_insert((now, sent, None));
        let due = last.is_none_or(|l| l.elapsed() >= Duration::from_secs(2)) || sent == total;
        if !due {
            return None;
        }
        *last = Some(now);
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.2 { (sent - *first) as f64 / secs } else { 0.0 };
        let pace = if rate > 0.0 && sent < total {
            format!(", {}/s, ETA {:.0}s", mib(rate as u64), (total - sent) as f64 / rate)
        } else if rate > 0.0 {
            format!(", {}/s", mib(rate as u64))
        } else {
            String::new()
        };
        let fraction =
            format!("{:.1}/{:.1} MiB", sent as f64 / 1048576.0, total as f64 / 1048576.0);
        Some(format!("uploading agent {fraction} ({codec}){pace}"))
    }
}

/// SSH settings from the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SshArgs {
    /// SSH identity file (ed25519, RSA, ECDSA); default: ssh-agent, then ~/.ssh/id_*.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The host's SSH key ("ssh-ed25519 AAAA..."); default: known_hosts.
    #[arg(long, value_name = "KEY")]
    pub host_key: Option<String>,
    /// known_hosts file (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
}

impl SshArgs {
    /// The SSH settings these flags give.
    pub fn auth(&self) -> SshAuth {
        SshAuth {
            identity: self.identity.clone(),
            host_key: self.host_key.clone(),
            known_hosts: self.known_hosts.clone(),
        }
    }
}

fn summary_json(s: &PushSummary) -> serde_json::Value {
    json!({
        "host": s.host,
        "closure_paths": s.closure_paths,
        "paths_missing": s.paths_missing,
        "paths_sent": s.paths_sent,
        "paths_landed": s.paths_landed,
        "nar_bytes_sent": s.nar_bytes_sent,
        "resumed_bytes": s.resumed_bytes,
        "wire_bytes": s.wire_bytes,
        "wire_bytes_received": s.wire_bytes_received,
        "diff_round_trips": s.diff_round_trips,
        "paths_delta": s.encode.paths_delta,
        "delta_fallbacks": s.delta_fallbacks,
        "paths_shared": s.encode.paths_shared,
        "levels": s.encode.levels.iter().map(|(l, n)| json!([l, n])).collect::<Vec<_>>(),
        "seconds": s.seconds,
        "phases": {
            "closure": s.phases.closure.as_secs_f64(),
            "connect": s.phases.connect.as_secs_f64(),
            "diff": s.phases.diff.as_secs_f64(),
            "send": s.phases.send.as_secs_f64(),
            "import": s.phases.import.as_secs_f64(),
        },
        "rejected": s.rejected.iter().map(|r| json!({
            "path": r.path.to_string(),
            "reason": r.reason.as_str(),
            "message": r.message,
        })).collect::<Vec<_>>(),
    })
}

fn print_summary(s: &PushSummary) {
    let ratio = if s.nar_bytes_sent > 0 {
        format!(" ({:.0}% of NAR bytes)", 100.0 * s.wire_bytes as f64 / s.nar_bytes_sent as f64)
    } else {
        String::new()
    };
    eprintln!(
        "{}: sent {} of {} paths, {} NAR bytes{}, {} on the wire{ratio}, {} refused; {:.2} s \
         (closure {:.2}, connect {:.2}, diff {:.2}, send {:.2}, import {:.2})",
        s.host,
        s.paths_sent,
        s.closure_paths,
        s.nar_bytes_sent,
        if s.resumed_bytes > 0 {
            format!(" (+{} resumed)", s.resumed_bytes)
        } else {
            String::new()
        },
        s.wire_bytes,
        s.rejected.len(),
        s.seconds,
        s.phases.closure.as_secs_f64(),
        s.phases.connect.as_secs_f64(),
        s.phases.diff.as_secs_f64(),
        s.phases.send.as_secs_f64(),
        s.phases.import.as_secs_f64(),
    );
}

pub fn run(global: &GlobalOpts, args: CopyArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if let Some(uri) = &args.from {
        return copy_from(global, &args, uri);
    }
    let layout = crate::settings::layout(global)?;
    let auth = args.ssh.auth();
    let targets =
        args.to.iter().map(|uri| Target::from_uri(uri, &auth)).collect::<Result<Vec<_>, _>>()?;
    let t = Instant::now();
    let store = crate::settings::open_read_only(global)?;
    let roots = args
        .paths
        .iter()
        .map(|p| crate::settings::parse_store_arg(&store, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let closure = store.closure(&roots).context("cannot compute the closure")?;
    drop(store);
    let closure_time = t.elapsed();
    let (key, generated) = transfer::trust::load_or_generate_key(layout.state_dir())?;
    if let Some(dir) = generated {
        eprintln!(
            "ferry: generated a signing key pair in {} (signing-key.sec, signing-key.pub); hosts \
             accept paths it signs once it is in their ACL (ferry copy --authorize)",
            dir.display()
        );
    }
    let compress = match args.compression_level {
        Some(level) => CompressSetting::Level(level),
        None => args.compress,
    };
    let options = PushOptions {
        encoding: if args.no_compress { Encoding::None } else { Encoding::Zstd },
        zstd_level: match compress {
            CompressSetting::Level(l) => l,
            _ => PushOptions::default().zstd_level,
        },
        compress: Some(compress),
        delta: !args.no_delta,
        authorize: args.authorize,
        cut_after: std::env::var(CUT_AFTER_ENV).ok().and_then(|v| v.parse().ok()),
        ..PushOptions::default()
    };
    let render = Render::new(false);
    let source = Source { layout: &layout, closure: &closure, key: &key };
    let results = transfer::target::copy_to_all(&targets, &source, &options, &render);
    render.finish();
    let mut failed = false;
    let mut hosts_json = Vec::new();
    let (mut paths_sent, mut nar_sent, mut wire) = (0usize, 0u64, 0u64);
    for (uri, result) in args.to.iter().zip(results) {
        match result {
            Ok(CopyReport { mut summary, generated_nix_key }) => {
                if let Some((dir, public)) = generated_nix_key {
                    eprintln!(
                        "ferry: generated a Nix signing key pair in {} (nix-signing-key.sec, \
                         nix-signing-key.pub: {public}); add the public key to \
                         trusted-public-keys to use the cache",
                        dir.display(),
                    );
                }
                summary.phases.closure = closure_time;
                summary.seconds += closure_time.as_secs_f64();
                paths_sent += summary.paths_sent;
                nar_sent += summary.nar_bytes_sent;
                wire += summary.wire_bytes;
                if !summary.rejected.is_empty() {
                    failed = true;
                    for r in &summary.rejected {
                        eprintln!("ferry: {uri}: refused {}: {}: {}", r.path, r.reason, r.message);
                    }
                }
                if !args.json {
                    print_summary(&summary);
                }
                hosts_json.push(summary_json(&summary));
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                failed = true;
                eprintln!("ferry: error: {e:#}");
                hosts_json.push(json!({ "host": uri, "error": format!("{e:#}") }));
            }
        }
    }
    if args.json {
        let out = json!({
            "paths_sent": paths_sent,
            "nar_bytes_sent": nar_sent,
            "wire_bytes": wire,
            "seconds": started.elapsed().as_secs_f64(),
            "closure_paths": closure.len(),
            "hosts": hosts_json,
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{out}")?;
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `--from URI`: copy the closures into the local store. The roots are store paths of the
/// target's store; for a store on this machine, also its physical paths.
fn copy_from(global: &GlobalOpts, args: &CopyArgs, uri: &str) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let target = Target::from_uri(uri, &args.ssh.auth())?;
    let ours = crate::settings::layout(global)?;
    let roots = match target.local_store(&ours)? {
        Some(theirs) => {
            let source = store::Store::open_read_only(theirs)?;
            args.paths
                .iter()
                .map(|p| crate::settings::parse_store_arg(&source, p))
                .collect::<anyhow::Result<Vec<_>>>()?
        }
        None => args
            .paths
            .iter()
            .map(|p| {
                ours.store_dir().parse_path(p).with_context(|| format!("{p:?} is not a store path"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let render = Render::new(false);
    let received = transfer::target::copy_from(&target, &ours, &roots, &render);
    render.finish();
    Ok(match received? {
        Received::Pushed(summary) => print_pushed(args, &summary),
        Received::Pulled(summary) => print_pulled(args, uri, &summary),
        Received::FromNix(report) => print_from_nix(args, uri, &report, started),
    })
}

/// `--from local:///ROOT`: the summary of the push from that store into ours.
fn print_pushed(args: &CopyArgs, summary: &PushSummary) -> ExitCode {
    if args.json {
        println!("{}", summary_json(summary));
    } else {
        print_summary(summary);
    }
    if summary.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--from ssh://`: what the host's agent sent back (`transfer::pull`); the paths must be
/// signed by a key in the local ACL, and their NAR hashes are checked, as a host checks what it
/// receives.
fn print_pulled(args: &CopyArgs, uri: &str, summary: &PullSummary) -> ExitCode {
    let rejections: Vec<_> = summary
        .serve
        .rejections
        .iter()
        .map(|(path, reason, message)| {
            json!({"path": path.to_string(), "reason": reason.as_str(), "message": message})
        })
        .collect();
    if args.json {
        println!(
            "{}",
            json!({
                "host": summary.host,
                "paths_received": summary.serve.imported,
                "paths_rejected": summary.serve.rejected,
                "rejected": rejections,
                "wire_bytes": summary.wire_bytes_received + summary.wire_bytes_sent,
                "wire_bytes_received": summary.wire_bytes_received,
                "seconds": summary.seconds,
            })
        );
    } else {
        for (path, reason, message) in &summary.serve.rejections {
            eprintln!("{uri}: refused {path}: {reason}: {message}");
        }
        eprintln!(
            "{uri}: received {} paths ({} bytes on the wire), {} refused; {:.2} s",
            summary.serve.imported,
            summary.wire_bytes_received,
            summary.serve.rejected,
            summary.seconds
        );
    }
    if summary.serve.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--from nix+ssh://`: what a host running Nix sent (`nix-store --serve`). Paths need no
/// signature, as with `nix copy --from ssh://` (the SSH host key authenticates the source); the
/// NAR hashes are checked on import.
fn print_from_nix(args: &CopyArgs, uri: &str, report: &PullReport, started: Instant) -> ExitCode {
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "paths_received": report.paths_received,
                "paths_present": report.paths_present,
                "nar_bytes_received": report.nar_bytes_received,
                "seconds": seconds,
            })
        );
    } else {
        eprintln!(
            "{uri}: received {} paths ({} NAR bytes), {} present already; {seconds:.2} s",
            report.paths_received, report.nar_bytes_received, report.paths_present
        );
    }
    ExitCode::SUCCESS
}
