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
//! from that store directly), `nix+ssh://` (`nix-store --serve`) and binary caches (`file://`,
//! `s3://`, `http(s)://`: paths signed by a Nix key of `<state>/trusted-public-keys` or the
//! machine's own `nix-signing-key.pub`).
//!
//! Every kind of target goes through one library call (`transfer::target`: `copy_to_all`,
//! `copy_from`); this command parses the arguments, renders progress and prints the summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use proto::frame::Encoding;
use serde_json::json;
use transfer::pull::PullSummary;
use transfer::push::adaptive::CompressSetting;
use transfer::push::{PushError, PushOptions, PushSummary};
use transfer::target::nix_host::PullReport;
use transfer::target::{CopyError, CopyReport, Received, Source, Target};
use transfer::transport::ssh::{SettingsSource, SshAuth};

use crate::output::progress::CopyBars;
use crate::output::{format_bytes, Printer};
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
    /// Compression of path data: auto (zstd at the level the measured link calls for; the
    /// default), max (fewest bytes), none (uncompressed), or a zstd level 1..=19.
    #[arg(long, default_value = "auto", value_name = "auto|max|none|LEVEL")]
    pub compress: CompressSetting,
    /// Never send deltas against paths the hosts already have.
    #[arg(long)]
    pub no_delta: bool,
    /// Old spelling of --compress LEVEL.
    #[arg(long, value_name = "N", hide = true, conflicts_with_all = ["compress", "no_compress"])]
    pub compression_level: Option<i32>,
    /// Old spelling of --compress none.
    #[arg(long, hide = true, conflicts_with = "compress")]
    pub no_compress: bool,
    /// Store paths whose closures to copy.
    #[arg(required = true)]
    pub paths: Vec<String>,
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
    /// known_hosts file (default: the SSH config's, else ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// SSH config file read instead of ~/.ssh/config (as `ssh -F`): Host aliases, HostName,
    /// User, Port, IdentityFile, ProxyJump...
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
}

impl SshArgs {
    /// The SSH settings these flags give.
    pub fn auth(&self) -> SshAuth {
        SshAuth {
            identity: self.identity.clone(),
            host_key: self.host_key.clone(),
            known_hosts: self.known_hosts.clone(),
            ssh_config: self.ssh_config.clone(),
            source: SettingsSource::CommandLine,
        }
    }
}

fn summary_json(s: &PushSummary) -> serde_json::Value {
    json!({
        "host": s.host,
        "closure_paths": s.closure_paths,
        "paths_missing": s.paths_missing,
        "paths_present": s.closure_paths - s.paths_missing,
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
    note!(
        "{}: sent {} of {} paths ({} present), {} of NAR{}, {} on the wire{ratio}, {} refused; \
         {:.2} s (closure {:.2}, connect {:.2}, diff {:.2}, send {:.2}, import {:.2})",
        s.host,
        s.paths_sent,
        s.closure_paths,
        s.closure_paths - s.paths_missing,
        format_bytes(s.nar_bytes_sent),
        if s.resumed_bytes > 0 {
            format!(" (+{} resumed)", format_bytes(s.resumed_bytes))
        } else {
            String::new()
        },
        format_bytes(s.wire_bytes),
        s.rejected.len(),
        s.seconds,
        s.phases.closure.as_secs_f64(),
        s.phases.connect.as_secs_f64(),
        s.phases.diff.as_secs_f64(),
        s.phases.send.as_secs_f64(),
        s.phases.import.as_secs_f64(),
    );
}

pub fn run(global: &GlobalOpts, printer: Printer, args: CopyArgs) -> anyhow::Result<ExitCode> {
    let printer = printer.with_json(args.json);
    let started = Instant::now();
    if let Some(uri) = &args.from {
        return copy_from(global, printer, &args, uri);
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
        note!(
            "ferry: generated a signing key pair in {} (signing-key.sec, signing-key.pub); hosts \
             accept paths it signs once it is in their ACL (ferry copy --authorize)",
            dir.display()
        );
    }
    let compress = match (args.compression_level, args.no_compress) {
        (Some(level), _) => CompressSetting::Level(level),
        (None, true) => CompressSetting::Level(0),
        (None, false) => args.compress,
    };
    let options = PushOptions {
        encoding: if compress == CompressSetting::Level(0) {
            Encoding::None
        } else {
            Encoding::Zstd
        },
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
    let render = CopyBars::new(printer);
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
                if !printer.is_json() {
                    print_summary(&summary);
                }
                hosts_json.push(summary_json(&summary));
            }
            Err(e) => {
                // A host that does not trust our key: what crossed the wire before stopping.
                let untrusted = match &e {
                    CopyError::Push(PushError::Untrusted { paths, wire_bytes, .. }) => {
                        Some((*paths, *wire_bytes))
                    }
                    _ => None,
                };
                let e = anyhow::Error::from(e);
                failed = true;
                eprintln!("ferry: error: {e:#}");
                let mut host = json!({ "host": uri, "error": format!("{e:#}") });
                if let Some((paths, wire)) = untrusted {
                    host["untrusted_key"] = json!(true);
                    host["paths_missing"] = json!(paths);
                    host["paths_sent"] = json!(0);
                    host["nar_bytes_sent"] = json!(0);
                    host["wire_bytes"] = json!(wire);
                }
                hosts_json.push(host);
            }
        }
    }
    if printer.is_json() {
        printer.json(&json!({
            "paths_sent": paths_sent,
            "nar_bytes_sent": nar_sent,
            "wire_bytes": wire,
            "seconds": started.elapsed().as_secs_f64(),
            "closure_paths": closure.len(),
            "hosts": hosts_json,
        }))?;
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `--from URI`: copy the closures into the local store. The roots are store paths of the
/// target's store; for a store on this machine, also its physical paths.
fn copy_from(
    global: &GlobalOpts,
    printer: Printer,
    args: &CopyArgs,
    uri: &str,
) -> anyhow::Result<ExitCode> {
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
    let render = CopyBars::new(printer);
    let received = transfer::target::copy_from(&target, &ours, &roots, &render);
    render.finish();
    match received? {
        Received::Pushed(summary) => print_pushed(printer, &summary),
        Received::Pulled(summary) => print_pulled(printer, uri, &summary),
        Received::FromNix(report) | Received::FromCache(report) => {
            print_from_nix(printer, uri, &report, started)
        }
    }
}

/// `--from local:///ROOT`: the summary of the push from that store into ours.
fn print_pushed(printer: Printer, summary: &PushSummary) -> anyhow::Result<ExitCode> {
    if printer.is_json() {
        printer.json(&summary_json(summary))?;
    } else {
        print_summary(summary);
    }
    Ok(if summary.rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `--from ssh://`: what the host's agent sent back (`transfer::pull`); the paths must be
/// signed by a key in the local ACL, and their NAR hashes are checked, as a host checks what it
/// receives.
fn print_pulled(printer: Printer, uri: &str, summary: &PullSummary) -> anyhow::Result<ExitCode> {
    let rejections: Vec<_> = summary
        .serve
        .rejections
        .iter()
        .map(|(path, reason, message)| {
            json!({"path": path.to_string(), "reason": reason.as_str(), "message": message})
        })
        .collect();
    if printer.is_json() {
        printer.json(&json!({
            "host": summary.host,
            "paths_received": summary.serve.imported,
            "paths_rejected": summary.serve.rejected,
            "rejected": rejections,
            "wire_bytes": summary.wire_bytes_received + summary.wire_bytes_sent,
            "wire_bytes_received": summary.wire_bytes_received,
            "seconds": summary.seconds,
        }))?;
    } else {
        for (path, reason, message) in &summary.serve.rejections {
            eprintln!("{uri}: refused {path}: {reason}: {message}");
        }
        note!(
            "{uri}: received {} paths ({} on the wire), {} refused; {:.2} s",
            summary.serve.imported,
            format_bytes(summary.wire_bytes_received),
            summary.serve.rejected,
            summary.seconds
        );
    }
    Ok(if summary.serve.rejected == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `--from nix+ssh://`: what a host running Nix sent (`nix-store --serve`). Paths need no
/// signature, as with `nix copy --from ssh://` (the SSH host key authenticates the source); the
/// NAR hashes are checked on import.
fn print_from_nix(
    printer: Printer,
    uri: &str,
    report: &PullReport,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let seconds = started.elapsed().as_secs_f64();
    if printer.is_json() {
        printer.json(&json!({
            "paths_received": report.paths_received,
            "paths_present": report.paths_present,
            "nar_bytes_received": report.nar_bytes_received,
            "seconds": seconds,
        }))?;
    } else {
        note!(
            "{uri}: received {} paths ({} of NAR), {} present already; {seconds:.2} s",
            report.paths_received,
            format_bytes(report.nar_bytes_received),
            report.paths_present
        );
    }
    Ok(ExitCode::SUCCESS)
}
