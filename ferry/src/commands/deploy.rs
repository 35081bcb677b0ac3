//! `ferry deploy FILE`: build each selected machine's system, copy it to the machine and
//! activate it there; or list generations, roll back, run a command (`-x`).
//!
//! One pipeline for both environments (`local` roots and `managed-host` machines over SSH),
//! through a [`Link`] per machine: the copy goes through the transfer engine
//! (`push_closure`, signed with this machine's key, generated on first use), and the steps on
//! the host are requests of one `ferry host session` command per machine (see
//! [`proto::session`]) run by the agent program (a local subprocess, or over the host's
//! one SSH session): facts, copy and activation share one process and one channel.
//!
//! Per machine, after every system was built into the local store (one writer):
//! 1. `facts`, one round trip: system type, current generation and its provenance, the
//!    safety-check device probe, and which paths of the closure the host lacks;
//! 2. the system-type check, the safety checks, the downgrade check (the host's provenance
//!    commit must be an ancestor of ours unless `allow-downgrades`);
//! 3. the copy of the missing paths (`authorize` adds our key to the host's ACL first); a
//!    host already on the system stops here;
//! 4. `activate`: the host registers generation N+1 and drives the activation state machine,
//!    streaming `activate`'s output; when it waits for confirmation, this side runs the TCP
//!    and HTTP probes and answers `ferry host confirm TOKEN` (or `--reject REASON`) over a new
//!    connection. Without an answer before the deadline the host rolls back by itself. With
//!    `confirm-timeout = false` the probes run after activation and only warn.
//!
//! Machines run in parallel (`-j`, default 8); one machine's failure never stops the others
//! unless `--fail-fast`. Progress is one line per machine; the run ends with a table (or
//! `--json`) and exits 0 only if every selected machine succeeded. Errors name the machine
//! and the step.
//!
//! `-x -- CMD ARGS...` runs a command on every selected machine in parallel (in its root, with
//! its current system's `profile/bin` first on `PATH`); output lines are prefixed with the
//! machine as they come. `--dry-run` asks each host what it lacks (the `facts` round trip) and
//! prints the paths and exact NAR bytes, changing nothing.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use serde_json::json;
use signing::guix::SigningKey;
use store::{LayoutOptions, Store, StoreLayout};
use transfer::frame_cache::FrameCache;
use transfer::push::{push_closure, PushOptions};

use super::board::{Board, HostBar};
use super::GlobalOpts;
use deploy::checks::{self, Device, Verdict};
use deploy::deployment::{Deployment, HealthCheck, Machine};
use deploy::link::{HostSession, Link};
use deploy::system::{self, BuiltSystem, Provenance};
use proto::session::{
    ActivateRequest, DeviceSpec, Facts, FactsRequest, GenerationInfo, HostCheck, HostLine,
};

/// Test hook: the coordinator never confirms an activation (the host must roll back).
pub const NEVER_CONFIRM_ENV: &str = "FERRY_TEST_NEVER_CONFIRM";

/// `ferry deploy` arguments.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Deployment file (TOML; see examples/demo.toml).
    pub file: PathBuf,
    /// Machines to act on: names and @tags, comma-separated (default: all).
    #[arg(long, value_name = "NAME|@TAG,...")]
    pub on: Option<String>,
    /// Print per machine what would be copied (paths and bytes); change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// List each machine's generations.
    #[arg(long, conflicts_with_all = ["dry_run", "roll_back"])]
    pub list_generations: bool,
    /// Return each machine to its previous generation (profile, activate, services).
    #[arg(short = 'r', long, conflicts_with = "dry_run")]
    pub roll_back: bool,
    /// Machines worked on at the same time (each its own pipeline).
    #[arg(short = 'j', long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// Start no further machine after the first failure (default: keep going).
    #[arg(long)]
    pub fail_fast: bool,
    /// Print the result table as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run the command after `--` on every selected machine in parallel (as `guix deploy -x`);
    /// each output line is prefixed with the machine; exit 0 only if it exited 0 everywhere.
    #[arg(short = 'x', long, conflicts_with_all = ["dry_run", "roll_back", "list_generations"])]
    pub execute: bool,
    /// The command for `-x`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// One machine's result for the table.
#[derive(Debug, Default)]
struct HostResult {
    success: bool,
    generation: Option<u64>,
    paths: usize,
    /// Of those, paths whose compressed stream another machine's copy made (compress once).
    shared: usize,
    bytes: u64,
    detail: String,
    /// Seconds spent in each step (for `--json`).
    steps: Vec<(&'static str, f64)>,
}

/// A machine's result and how long its pipeline took.
type Ran = (anyhow::Result<HostResult>, Duration);

/// Run `work` for every machine, `jobs` at a time; results in machine order.
fn for_each_machine(
    machines: &[&Machine],
    jobs: usize,
    fail_fast: bool,
    work: &(dyn Fn(usize, &Machine) -> anyhow::Result<HostResult> + Sync),
) -> Vec<Ran> {
    let slots: Vec<Mutex<Option<Ran>>> = machines.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(machines.len()).max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(m) = machines.get(i) else { break };
                if fail_fast && failed.load(Ordering::SeqCst) {
                    let skipped = Err(anyhow!("skipped: an earlier machine failed (--fail-fast)"));
                    *slots[i].lock().unwrap() = Some((skipped, Duration::ZERO));
                    continue;
                }
                let start = Instant::now();
                let result = work(i, m);
                if !result.as_ref().is_ok_and(|r| r.success) {
                    failed.store(true, Ordering::SeqCst);
                }
                *slots[i].lock().unwrap() = Some((result, start.elapsed()));
            });
        }
    });
    slots.into_iter().map(|s| s.into_inner().unwrap().expect("every machine ran")).collect()
}

/// Run `ferry deploy`.
pub fn run(global: &GlobalOpts, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let deployment = Deployment::load(&args.file)?;
    let machines = deployment.select(args.on.as_deref())?;
    let jobs = args.jobs as usize;
    if args.list_generations {
        return list_generations(&machines, jobs);
    }
    match (args.execute, args.command.is_empty()) {
        (true, true) => bail!("'-x' specified but no command given"),
        (false, false) => bail!("'--' was used, but '-x' was not specified"),
        (true, false) => return execute(&machines, &args.command, jobs),
        (false, true) => {}
    }
    let layout = StoreLayout::resolve(&LayoutOptions {
        root: global.root.clone(),
        store_dir: global.store_dir.clone(),
        state_dir: global.state_dir.clone(),
    })?;
    let verb = if args.roll_back {
        "rolled back"
    } else if args.dry_run {
        "deployed (dry run)"
    } else {
        "deployed"
    };
    eprintln!(
        "The following {} machine(s) will be {verb}: {}",
        machines.len(),
        machines.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let started = Instant::now();
    let board = Board::new();
    let results = if args.roll_back {
        for_each_machine(&machines, jobs, args.fail_fast, &|_, m| {
            let bar = board.host(&m.name);
            let r = roll_back(m, &bar).context("roll back");
            if let Err(e) = &r {
                bar.say(&format!("error: {e:#}"));
            }
            bar.finish(if r.as_ref().is_ok_and(|r| r.success) { "rolled back" } else { "FAILED" });
            r
        })
    } else {
        let key = if args.dry_run {
            None
        } else {
            let (key, generated) = transfer::trust::load_or_generate_key(layout.state_dir())
                .context("cannot load or generate the signing key")?;
            if let Some(dir) = generated {
                eprintln!(
                    "ferry: generated a signing key pair in {} (signing-key.sec, \
                     signing-key.pub); machines with `authorize = true` (the default) get it \
                     added to their ACL",
                    dir.display()
                );
            }
            Some(key)
        };
        // One thread builds the systems in machine order (one writer on the local store);
        // each machine's pipeline starts as soon as its own system is there.
        let mut store = Store::open(layout.clone()).context("cannot open the local store")?;
        let built = Slots::new(machines.len());
        // Compress once: each path's zstd stream is made by the first machine's session that
        // sends it and copied by the others (all at the same level, so they share).
        let frame_cache = (!args.dry_run && machines.len() > 1)
            .then(|| Arc::new(FrameCache::new(machines.len())));
        let ctx = Ctx {
            layout: &layout,
            deployment: &deployment,
            key: key.as_ref(),
            frame_cache: frame_cache.clone(),
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _close = CloseOnDrop(&built);
                let mut added = system::AddedPackages::default();
                // git runs once for the file; each machine adds its declaration's name.
                let provenance = Provenance::of_file(&deployment.file, None);
                for (i, m) in machines.iter().enumerate() {
                    let provenance =
                        Provenance { declaration: m.declaration.clone(), ..provenance.clone() };
                    built.put(i, build_for(&mut store, m, provenance, &mut added));
                }
                eprintln!(
                    "built {} system(s) in {:.1}s",
                    machines.len(),
                    started.elapsed().as_secs_f64()
                );
            });
            for_each_machine(&machines, jobs, args.fail_fast, &|i, m| {
                let bar = board.host(&m.name);
                bar.phase("build");
                let r = match built.take(i) {
                    Ok((system, provenance)) => {
                        deploy_machine(&ctx, m, &system, &provenance, args.dry_run, &bar)
                    }
                    Err(e) => Err(e.context("build")),
                };
                if let Err(e) = &r {
                    bar.say(&format!("error: {e:#}"));
                }
                bar.finish(match &r {
                    Ok(r) if r.success => "ok",
                    _ => "FAILED",
                });
                r
            })
        })
    };
    let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    report(&names, &results, args.json, started.elapsed())
}

/// Print the table (or JSON); the exit code.
fn report(
    names: &[&str],
    results: &[Ran],
    json: bool,
    total: Duration,
) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    let mut rows = Vec::new();
    let mut table = format!(
        "{:<16} {:<10} {:>10} {:>16} {:>8}  DETAIL\n",
        "MACHINE", "RESULT", "GENERATION", "SENT", "TIME"
    );
    for (name, (result, elapsed)) in names.iter().zip(results) {
        let time = format!("{:.1}s", elapsed.as_secs_f64());
        match result {
            Ok(r) => {
                ok &= r.success;
                let generation = r.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
                let sent = if r.bytes == 0 && r.paths == 0 {
                    "-".to_owned()
                } else {
                    format!("{} ({})", human(r.bytes), r.paths)
                };
                table.push_str(&format!(
                    "{name:<16} {:<10} {generation:>10} {sent:>16} {time:>8}  {}\n",
                    if r.success { "ok" } else { "FAILED" },
                    r.detail
                ));
                rows.push(json!({
                    "machine": name, "success": r.success, "generation": r.generation,
                    "paths_sent": r.paths, "paths_shared": r.shared, "bytes_sent": r.bytes,
                    "seconds": elapsed.as_secs_f64(), "detail": r.detail,
                    "steps": r.steps.iter().map(|(k, v)| (k.to_string(), json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                }));
            }
            Err(e) => {
                ok = false;
                let full = format!("{e:#}");
                let first = full.lines().next().unwrap_or_default().to_owned();
                table.push_str(&format!(
                    "{name:<16} {:<10} {:>10} {:>16} {time:>8}  {first}\n",
                    "FAILED", "-", "-"
                ));
                rows.push(json!({
                    "machine": name, "success": false, "generation": null, "paths_sent": 0,
                    "bytes_sent": 0, "seconds": elapsed.as_secs_f64(), "detail": full,
                }));
            }
        }
    }
    if json {
        eprint!("{table}");
        let out = json!({ "success": ok, "seconds": total.as_secs_f64(), "machines": rows });
        writeln!(std::io::stdout().lock(), "{out}")?;
    } else {
        print!("{table}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A machine's built system and its provenance, or why it could not be built.
type Built = anyhow::Result<(BuiltSystem, Provenance)>;

/// The systems, handed from the builder to each machine's pipeline as they are built (in
/// machine order).
struct Slots {
    /// The systems not yet taken, and how many were built.
    state: Mutex<(Vec<Option<Built>>, usize)>,
    filled: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots { state: Mutex::new(((0..n).map(|_| None).collect(), 0)), filled: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Option<Built>>, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Machine `i`'s system (the next one).
    fn put(&self, i: usize, built: Built) {
        let mut state = self.lock();
        state.0[i] = Some(built);
        state.1 = i + 1;
        self.filled.notify_all();
    }

    /// The builder stopped: the machines it did not build get an error instead of waiting.
    fn close(&self) {
        let mut state = self.lock();
        let (slots, count) = &mut *state;
        for slot in &mut slots[*count..] {
            *slot = Some(Err(anyhow!("the build stopped before this machine's system")));
        }
        *count = slots.len();
        self.filled.notify_all();
    }

    /// Wait for machine `i`'s system (taken once).
    fn take(&self, i: usize) -> Built {
        let mut state = self.lock();
        while state.1 <= i {
            state = self.filled.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.0[i].take().unwrap_or_else(|| Err(anyhow!("this machine's system was taken twice")))
    }
}

/// Closes the slots when the builder ends, however it ends.
struct CloseOnDrop<'a>(&'a Slots);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Build a machine's system into the local store.
fn build_for(
    store: &mut Store,
    m: &Machine,
    provenance: Provenance,
    added: &mut system::AddedPackages,
) -> Built {
    let built = system::build_with(store, &m.os, &provenance, added)
        .with_context(|| format!("building the system of {}", m.name))?;
    eprintln!("{}: system {}", m.name, built.absolute);
    Ok((built, provenance))
}

/// What every machine's pipeline shares.
struct Ctx<'a> {
    layout: &'a StoreLayout,
    deployment: &'a Deployment,
    /// `None` for a dry run.
    key: Option<&'a SigningKey>,
    /// Encoded path data shared by the machines' copies.
    frame_cache: Option<Arc<FrameCache>>,
}

/// The device text of a safety check, as the declaration spells it.
fn device_text(d: &Device) -> String {
    match d {
        Device::Path(p) => p.clone(),
        Device::Label(l) => format!("LABEL={l}"),
        Device::Uuid(u) => format!("UUID={u}"),
    }
}

/// One machine's pipeline: facts and checks, copy, activation.
fn deploy_machine(
    ctx: &Ctx<'_>,
    m: &Machine,
    built: &BuiltSystem,
    provenance: &Provenance,
    dry_run: bool,
    bar: &HostBar,
) -> anyhow::Result<HostResult> {
    let c = &m.configuration;
    let store_dir = ctx.layout.store_dir();
    let closure = Store::open_read_only(ctx.layout.clone())
        .and_then(|store| store.closure(std::slice::from_ref(&built.path)))
        .context("closure of the system in the local store")?;

    let mut steps = Vec::new();
    let mut t = Instant::now();
    let mut lap = |name: &'static str| {
        steps.push((name, t.elapsed().as_secs_f64()));
        t = Instant::now();
    };
    // 1. Facts: one round trip, on the session that also does the copy and the activation.
    bar.phase("connect");
    let link = Link::new(m).context("connect")?;
    let session = link.session().context("connect and facts")?;
    let devices = if c.safety_checks {
        checks::device_checks(&m.os)
            .iter()
            .map(|d| DeviceSpec {
                device: device_text(&d.device),
                mount_point: d.mount_point.clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let request = FactsRequest {
        system: Some(built.absolute.clone()),
        devices,
        paths: closure.iter().map(|i| i.path.to_absolute(store_dir)).collect(),
    };
    let facts: Facts = session.facts(request).context("connect and facts")?;
    lap("facts");

    // 2. Checks.
    bar.phase("check");
    checks::system_type_check(&c.system, &facts.system_type)
        .map_err(|e| anyhow!("system type check: {e}"))?;
    if !facts.safety_errors.is_empty() {
        bail!(
            "safety checks failed: {} (set `safety-checks = false` to skip them)",
            facts.safety_errors.join("; ")
        );
    }
    if facts.generation.is_some() {
        let host_provenance = facts.provenance.as_deref().and_then(Provenance::parse);
        let verdict = checks::downgrade_check(
            host_provenance.as_ref(),
            provenance,
            c.allow_downgrades,
            |old, new| checks::git_relation(&ctx.deployment.dir, old, new),
        );
        match verdict {
            Verdict::Proceed => {}
            Verdict::Warn(w) => bar.say(&format!("warning: {w}")),
            Verdict::Refuse(r) => bail!("downgrade check: {r}"),
        }
    }
    let missing: std::collections::BTreeSet<&str> =
        facts.missing.iter().map(String::as_str).collect();
    let to_send: Vec<_> = closure
        .iter()
        .filter(|i| missing.contains(i.path.to_absolute(store_dir).as_str()))
        .collect();
    let bytes: u64 = to_send.iter().map(|i| i.nar_size).sum();
    if dry_run {
        let mut text =
            format!("{}: would copy {} path(s), {} bytes:\n", m.name, to_send.len(), bytes);
        for i in &to_send {
            text.push_str(&format!("  {} {}\n", i.path.to_absolute(store_dir), i.nar_size));
        }
        print!("{text}");
        session.end().context("facts")?;
        return Ok(HostResult {
            success: true,
            generation: facts.generation,
            paths: to_send.len(),
            bytes,
            detail: "dry run: nothing changed".into(),
            steps,
            ..HostResult::default()
        });
    }

    // 3. Copy.
    let (mut paths, mut shared, mut sent) = (0, 0, 0);
    if !to_send.is_empty() {
        bar.phase("copy");
        // The fixed level (no adaptive choice per link), so every machine's copy of a path
        // is the same stream and the frame cache shares it.
        let options = PushOptions {
            authorize: c.authorize,
            compress: None,
            frame_cache: ctx.frame_cache.clone(),
            ..PushOptions::default()
        };
        let key = ctx.key.expect("a key unless dry run");
        let summary = session
            .copy(|t| push_closure(ctx.layout, &closure, t, key, &options, bar))
            .map_err(anyhow::Error::from)
            .and_then(|pushed| pushed.map_err(anyhow::Error::from))
            .context("copy")?;
        if !summary.rejected.is_empty() {
            let list: Vec<String> =
                summary.rejected.iter().map(|r| format!("{}: {}", r.path, r.message)).collect();
            bail!(
                "copy: the host refused {} path(s): {}{}",
                list.len(),
                list.join("; "),
                if c.authorize {
                    ""
                } else {
                    " (set `authorize = true` to add this machine's signing key to its ACL)"
                }
            );
        }
        (paths, shared, sent) =
            (summary.paths_sent, summary.encode.paths_shared, summary.nar_bytes_sent);
        lap("copy");
    }
    if facts.on_this_system {
        session.end().context("copy")?;
        return Ok(HostResult {
            success: true,
            generation: facts.generation,
            paths,
            shared,
            bytes: sent,
            detail: "already on this system".into(),
            steps,
        });
    }

    // 4. Activate, confirm.
    bar.phase("activate");
    let r = activate(&link, session, m, &built.absolute, bar).context("activate")?;
    steps.extend(r.steps);
    Ok(HostResult { paths, shared, bytes: sent, steps, ..r })
}

/// Ask the session to activate and answer the confirmation request (over a new connection).
fn activate(
    link: &Link,
    session: HostSession,
    m: &Machine,
    system: &str,
    bar: &HostBar,
) -> anyhow::Result<HostResult> {
    let c = &m.configuration;
    let request = ActivateRequest {
        system: system.to_owned(),
        confirm_timeout_ms: c.confirm_timeout.map(|d| d.as_millis() as u64),
        health_checks: m
            .os
            .health_checks
            .iter()
            .filter(|h| h.runs_on_host())
            .filter_map(|h| match h {
                HealthCheck::Command { command, timeout } => Some(HostCheck {
                    command: command.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                }),
                _ => None,
            })
            .collect(),
        token: format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()),
    };
    let never_confirm = std::env::var_os(NEVER_CONFIRM_ENV).is_some();
    let mut result = None;
    let mut generation = None;
    let mut confirm_error = None;
    // Steps: `activate` up to the host's confirmation request, then `confirm` to the end.
    let started = Instant::now();
    let mut confirm_asked = None;
    let ended = session.activate(request, &mut |line| match HostLine::parse(line) {
        Some(HostLine::Generation(n)) => {
            generation = Some(n);
            bar.say(&format!("generation {n}"));
        }
        Some(HostLine::Line(l)) => bar.say(&l),
        Some(HostLine::Warning(w)) => bar.say(&format!("warning: {w}")),
        Some(HostLine::Event(e)) => bar.say(&e),
        Some(HostLine::Confirm { seconds, token }) => {
            bar.phase("confirm");
            confirm_asked = Some(Instant::now());
            if never_confirm {
                bar.say(&format!(
                    "not confirming ({NEVER_CONFIRM_ENV}); the host rolls back in {seconds}s"
                ));
                return;
            }
            let verdict = coordinator_probes(m);
            let mut args = vec!["confirm", token.as_str()];
            if let Err(why) = &verdict {
                bar.say(&format!("rejecting: {why}"));
                args.extend(["--reject", why.as_str()]);
            }
            match link.host_on_new_connection(&args, b"", &mut |_| {}) {
                Ok(exit) if exit.success() => {}
                Ok(exit) => confirm_error = Some(exit.describe()),
                Err(e) => confirm_error = Some(format!("{e:#}")),
            }
            if let Some(e) = &confirm_error {
                bar.say(&format!(
                    "cannot confirm over a new connection: {e}; the host rolls back in {seconds}s"
                ));
            }
        }
        Some(HostLine::Result(r)) => result = Some(r),
        None => bar.say(line),
    });
    let hint = match (generation, c.confirm_timeout) {
        (Some(n), Some(_)) => format!(
            " after registering generation {n}; unconfirmed, the host returns to its previous \
             generation by itself (check with --list-generations)"
        ),
        (Some(n), None) => format!(
            " after registering generation {n}; confirmation is off, so the host may be left on \
             it (check with --list-generations, return with --roll-back)"
        ),
        (None, _) => String::new(),
    };
    let ended = ended.map_err(|e| anyhow!("{:#}{hint}", anyhow::Error::from(e)))?;
    let Some(r) = result else {
        bail!(
            "the host ended without a result ({}){hint}",
            ended
                .err()
                .map_or_else(|| "exit code 0".into(), |e| format!("{:#}", anyhow::Error::from(e)))
        );
    };
    let mut detail = r.detail;
    if r.success && c.confirm_timeout.is_none() && detail == "activated" {
        // TCP/HTTP probes belong to confirmation; without it they only warn.
        if let Err(why) = coordinator_probes(m) {
            detail = format!("activated; warning: {why} (confirmation is off: no rollback)");
        }
    }
    let asked = confirm_asked.unwrap_or_else(Instant::now);
    let steps = vec![
        ("activate", asked.duration_since(started).as_secs_f64()),
        ("confirm", asked.elapsed().as_secs_f64()),
    ];
    Ok(HostResult {
        success: r.success,
        generation: r.generation,
        detail,
        steps,
        ..Default::default()
    })
}

fn roll_back(m: &Machine, bar: &HostBar) -> anyhow::Result<HostResult> {
    let link = Link::new(m)?;
    let mut result = None;
    let exit = link.host(&["roll-back"], b"", &mut |line| match HostLine::parse(line) {
        Some(HostLine::Result(r)) => result = Some(r),
        Some(HostLine::Line(l)) => bar.say(&l),
        _ => bar.say(line),
    })?;
    let r = result.ok_or_else(|| anyhow!("{}", exit.describe()))?;
    Ok(HostResult {
        success: r.success,
        generation: r.generation,
        detail: r.detail,
        ..HostResult::default()
    })
}

/// `-x -- CMD ARGS...`: run on every machine in parallel, output prefixed with the machine.
fn execute(machines: &[&Machine], command: &[String], jobs: usize) -> anyhow::Result<ExitCode> {
    let mut args = vec!["exec", "--"];
    args.extend(command.iter().map(String::as_str));
    let results = for_each_machine(machines, jobs, false, &|_, m| {
        let link = Link::new(m)?;
        let name = &m.name;
        let exit = link.host(&args, b"", &mut |line| {
            let _ = writeln!(std::io::stdout().lock(), "{name}: {line}");
        })?;
        let stderr = exit.stderr.trim();
        if !stderr.is_empty() {
            for l in stderr.lines() {
                eprintln!("{name}: {l}");
            }
        }
        Ok(HostResult { success: exit.success(), generation: None, ..HostResult::default() }
            .with_code(exit.code))
    });
    let mut ok = true;
    for (m, (r, _)) in machines.iter().zip(results) {
        match r {
            Ok(r) if r.success => eprintln!("{}: command succeeded", m.name),
            Ok(r) => {
                ok = false;
                eprintln!("{}: {}", m.name, r.detail);
            }
            Err(e) => {
                ok = false;
                eprintln!("{}: error: {e:#}", m.name);
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

impl HostResult {
    fn with_code(mut self, code: Option<i32>) -> HostResult {
        self.detail = match code {
            Some(c) => format!("command exited with code {c}"),
            None => "command was killed by a signal".to_owned(),
        };
        self
    }
}

fn list_generations(machines: &[&Machine], jobs: usize) -> anyhow::Result<ExitCode> {
    let listings: Vec<Mutex<String>> = machines.iter().map(|_| Mutex::default()).collect();
    let results = for_each_machine(machines, jobs, false, &|i, m| {
        let link = Link::new(m)?;
        let gens: Vec<GenerationInfo> = link.host_json(&["generations", "--json"], &())?;
        let mut text = String::new();
        if gens.is_empty() {
            text.push_str("  no generations\n");
        }
        for g in gens {
            text.push_str(&format!(
                "  {:>4}  {}  {}{}\n",
                g.number,
                format_time(SystemTime::UNIX_EPOCH + Duration::from_secs(g.time)),
                g.system,
                if g.current { "  (current)" } else { "" }
            ));
        }
        *listings[i].lock().unwrap() = text;
        Ok(HostResult { success: true, ..HostResult::default() })
    });
    let mut ok = true;
    for ((m, (r, _)), text) in machines.iter().zip(results).zip(listings) {
        println!("{} ({}):", m.name, m.configuration.root.display());
        match r {
            Ok(_) => print!("{}", text.into_inner().unwrap()),
            Err(e) => {
                ok = false;
                println!("  error: {e:#}");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// TCP and HTTP probes from this machine (host: the SSH host name, `localhost` for `local`).
fn coordinator_probes(m: &Machine) -> Result<(), String> {
    let host = m.configuration.host_name.clone().unwrap_or_else(|| "localhost".into());
    for check in &m.os.health_checks {
        match check {
            HealthCheck::Command { .. } => {}
            HealthCheck::Tcp { host: h, port, timeout } => {
                let h = h.clone().unwrap_or_else(|| host.clone());
                tcp_connect(&h, *port, *timeout).map_err(|e| format!("tcp {h}:{port}: {e}"))?;
            }
            HealthCheck::Http { url, status, timeout } => {
                let url = url.replace("{host}", &host);
                let got = http_status(&url, *timeout).map_err(|e| format!("{url}: {e}"))?;
                if got != *status {
                    return Err(format!("{url}: status {got}, expected {status}"));
                }
            }
        }
    }
    Ok(())
}

fn tcp_connect(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

/// `GET url` over plain HTTP/1.0; returns the status code.
fn http_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) =
        rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("bad port in {authority}"))?),
        None => (authority, 80),
    };
    let mut s = tcp_connect(host, port, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or("")))
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (h, mi) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(format_time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        assert_eq!(format_time(t), "2025-11-24 16:00 UTC");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
