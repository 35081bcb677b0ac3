//! `ferry deploy FILE`: build each selected machine's system and activate it, for `local`
//! machines (a root directory on this machine).
//!
//! Per machine: build the system into the local store; safety checks (devices) and the
//! downgrade check; copy the closure into the host root's store; add a generation; then drive
//! [`crate::activation::Activation`] (switch the profile, run `activate`, run the host's
//! health-check commands, run the coordinator's TCP/HTTP probes and confirm or reject), rolling
//! back on failure. A host already on the same system is left alone. Systems are built first
//! (one writer on the local store); then the machines' pipelines run in parallel (`-j`,
//! default 8), each on its own read-only connection to the local store; one machine's failure
//! never stops the others unless `--fail-fast`. The run ends with one line per machine and
//! exits 0 only if every selected machine succeeded.
//!
//! TCP and HTTP health checks run from here as part of confirmation (a failure rejects the
//! deployment and rolls back); with `confirm-timeout = false` they run after activation and
//! only warn.
//!
//! `-x -- CMD ARGS...` runs a command on every selected machine in parallel (for a `local`
//! machine: in its root, with its current system's `profile/bin` on `PATH`).
//!
//! `managed-host` machines need the SSH transfer engine, which is wired in separately; until
//! then they are reported as failed with that reason (and `--dry-run` lists them).
//!
//! The copy into a local host's store is a plain NAR export/import between two stores on this
//! machine (`copy_closure`), the local stand-in for the transfer engine.

use std::fs;
use std::io::{BufReader, Read, Seek, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use closure::{LayoutOptions, Store, StoreLayout};

use super::GlobalOpts;
use crate::activation::{Activation, Config, Event, Input, Outcome};
use crate::checks::{self, Verdict};
use crate::deployment::{Deployment, Environment, HealthCheck, Machine};
use crate::generations::Profiles;
use crate::host::{self, HostOutput};
use crate::system::{self, BuiltSystem, Provenance};

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
    /// Run the command after `--` on every selected machine in parallel (as `guix deploy -x`);
    /// each output line is prefixed with the machine; exit 0 only if it exited 0 everywhere.
    #[arg(short = 'x', long, conflicts_with_all = ["dry_run", "roll_back", "list_generations"])]
    pub execute: bool,
    /// The command for `-x`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Run `ferry deploy`.
pub fn run(global: &GlobalOpts, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let deployment = Deployment::load(&args.file)?;
    let machines = deployment.select(args.on.as_deref())?;
    if args.list_generations {
        return list_generations(&machines);
    }
    match (args.execute, args.command.is_empty()) {
        (true, true) => bail!("'-x' specified but no command given"),
        (false, false) => bail!("'--' was used, but '-x' was not specified"),
        (true, false) => return execute(&machines, &args.command, args.jobs as usize),
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
    // Build every system first (one writer on the local store), then run the hosts' pipelines
    // in parallel, each reading the local store on its own connection.
    let started = Instant::now();
    let mut built: Vec<Option<Built>> = Vec::new();
    if !args.roll_back {
        let mut store = Store::open(layout.clone()).context("cannot open the local store")?;
        for m in &machines {
            built.push(Some(if m.environment == Environment::Local {
                build_for(&mut store, &deployment, m)
            } else {
                Err(anyhow!(
                    "managed-host machines need the SSH transfer engine, which `ferry deploy` \
                     does not drive yet; use a `local` machine"
                ))
            }));
        }
    }
    let build_time = started.elapsed();
    let slots: Vec<Mutex<Option<Ran>>> = machines.iter().map(|_| Mutex::new(None)).collect();
    let built: Vec<Mutex<Option<Built>>> = built.into_iter().map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = (args.jobs as usize).min(machines.len()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(m) = machines.get(i) else { break };
                if args.fail_fast && failed.load(Ordering::SeqCst) {
                    let skipped = Err(anyhow!("skipped: an earlier machine failed (--fail-fast)"));
                    *slots[i].lock().unwrap() = Some((skipped, Duration::ZERO));
                    continue;
                }
                let start = Instant::now();
                let result = if args.roll_back {
                    match m.environment {
                        Environment::Local => roll_back_local(m),
                        Environment::ManagedHost => Err(anyhow!(
                            "managed-host machines need the SSH transfer engine, which \
                             `ferry deploy` does not drive yet"
                        )),
                    }
                } else {
                    match built[i].lock().unwrap().take().expect("built once") {
                        Ok((system, provenance)) => Store::open_read_only(layout.clone())
                            .context("cannot open the local store")
                            .and_then(|store| {
                                deploy_built(
                                    &store,
                                    &deployment,
                                    m,
                                    &system,
                                    &provenance,
                                    args.dry_run,
                                )
                            }),
                        Err(e) => Err(e),
                    }
                };
                if let Err(e) = &result {
                    eprintln!("{}: error: {e:#}", m.name);
                }
                if !result.as_ref().is_ok_and(|r| r.success) {
                    failed.store(true, Ordering::SeqCst);
                }
                *slots[i].lock().unwrap() = Some((result, start.elapsed()));
            });
        }
    });
    let results: Vec<(String, anyhow::Result<HostResult>, Duration)> = machines
        .iter()
        .zip(slots)
        .map(|(m, slot)| {
            let (result, elapsed) = slot.into_inner().unwrap().expect("every machine ran");
            (m.name.clone(), result, elapsed)
        })
        .collect();
    if !args.roll_back {
        eprintln!("built {} system(s) in {:.1}s", machines.len(), build_time.as_secs_f64());
    }
    println!(
        "{:<16} {:<10} {:>10} {:>12} {:>8}  DETAIL",
        "MACHINE", "RESULT", "GENERATION", "SENT", "TIME"
    );
    let mut ok = true;
    for (name, result, elapsed) in &results {
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
                println!(
                    "{name:<16} {:<10} {generation:>10} {sent:>12} {time:>8}  {}",
                    if r.success { "ok" } else { "FAILED" },
                    r.detail
                );
            }
            Err(e) => {
                ok = false;
                let first = format!("{e:#}").lines().next().unwrap_or_default().to_owned();
                println!("{name:<16} {:<10} {:>10} {:>12} {time:>8}  {first}", "FAILED", "-", "-");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A machine's built system and its provenance, or why it could not be built.
type Built = anyhow::Result<(BuiltSystem, Provenance)>;
/// A machine's result and how long its pipeline took.
type Ran = (anyhow::Result<HostResult>, Duration);

/// One machine's result for the table.
#[derive(Debug)]
struct HostResult {
    success: bool,
    generation: Option<u64>,
    paths: usize,
    bytes: u64,
    detail: String,
}

/// `-x -- CMD ARGS...`: run on every machine in parallel, output prefixed with the machine.
/// A `local` machine runs it here in its root, with `FERRY_ROOT` set and its current system's
/// `profile/bin` first on `PATH`.
fn execute(machines: &[&Machine], command: &[String], jobs: usize) -> anyhow::Result<ExitCode> {
    type Exit = Result<Option<i32>, String>;
    let codes: Vec<Mutex<Option<Exit>>> = machines.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(machines.len()).max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(m) = machines.get(i) else { break };
                let result = match m.environment {
                    Environment::ManagedHost => Err(
                        "managed-host machines need the SSH transfer engine, which `ferry deploy` \
                         does not drive yet"
                            .to_owned(),
                    ),
                    Environment::Local => run_local_command(m, command),
                };
                *codes[i].lock().unwrap() = Some(result);
            });
        }
    });
    let mut ok = true;
    for (m, code) in machines.iter().zip(codes) {
        match code.into_inner().unwrap().expect("every machine ran") {
            Ok(Some(0)) => eprintln!("{}: command succeeded", m.name),
            Ok(Some(c)) => {
                ok = false;
                eprintln!("{}: command exited with code {c}", m.name);
            }
            Ok(None) => {
                ok = false;
                eprintln!("{}: command was killed by a signal", m.name);
            }
            Err(e) => {
                ok = false;
                eprintln!("{}: error: {e}", m.name);
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run_local_command(m: &Machine, command: &[String]) -> Result<Option<i32>, String> {
    let root = &m.configuration.root;
    if !root.is_dir() {
        return Err(format!("{} does not exist: deploy to it first", root.display()));
    }
    let bin = Profiles::new(root).current_system_link().join("profile/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
        .map_err(|e| e.to_string())?;
    let child = Command::new(&command[0])
        .args(&command[1..])
        .current_dir(root)
        .env("FERRY_ROOT", root.to_string_lossy().trim_end_matches('/'))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", command[0]))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = writeln!(stdout, "{}: {line}", m.name);
    }
    drop(stdout);
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        eprintln!("{}: {line}", m.name);
    }
    Ok(out.status.code())
}

fn list_generations(machines: &[&Machine]) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for m in machines {
        println!("{} ({}):", m.name, m.configuration.root.display());
        if m.environment != Environment::Local {
            println!("  (managed-host: listing over SSH is not wired yet)");
            ok = false;
            continue;
        }
        let gens = Profiles::new(&m.configuration.root).list()?;
        if gens.is_empty() {
            println!("  no generations");
        }
        for g in gens {
            println!(
                "  {:>4}  {}  {}{}",
                g.number,
                format_time(g.time),
                g.system.display(),
                if g.current { "  (current)" } else { "" }
            );
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn host_store(store_dir: &nar_core::store_path::StoreDir, root: &Path) -> anyhow::Result<Store> {
    fs::create_dir_all(root)
        .with_context(|| format!("cannot create host root {}", root.display()))?;
    let layout = StoreLayout::new(root, store_dir.clone(), None)?;
    Store::open(layout)
        .with_context(|| format!("cannot open the host store under {}", root.display()))
}

/// Build a machine's system into the local store.
fn build_for(
    store: &mut Store,
    deployment: &Deployment,
    m: &Machine,
) -> anyhow::Result<(BuiltSystem, Provenance)> {
    let provenance = Provenance::of_file(&deployment.file, m.declaration.as_deref());
    let built = system::build(store, &m.os, &provenance)
        .with_context(|| format!("building the system of {}", m.name))?;
    eprintln!("{}: system {}", m.name, built.absolute);
    Ok((built, provenance))
}

/// One local machine's pipeline: checks, copy, generation, activation.
fn deploy_built(
    store: &Store,
    deployment: &Deployment,
    m: &Machine,
    built: &BuiltSystem,
    provenance: &Provenance,
    dry_run: bool,
) -> anyhow::Result<HostResult> {
    let c = &m.configuration;
    let root = &c.root;
    let say = |msg: &str| eprintln!("{}: {msg}", m.name);

    // A local machine is this machine.
    if c.build_locally {
        checks::system_type_check(&c.system, &crate::deployment::this_system())
            .map_err(|e| anyhow!(e))?;
    }

    // Safety checks, in one probe.
    if c.safety_checks {
        let device_checks = checks::device_checks(&m.os);
        if !device_checks.is_empty() {
            let out = Command::new("sh")
                .arg("-c")
                .arg(checks::probe_script(&device_checks))
                .env("FERRY_ROOT", root)
                .stdin(Stdio::null())
                .output()
                .context("running the safety checks")?;
            let errors = checks::evaluate(&device_checks, &String::from_utf8_lossy(&out.stdout));
            if !errors.is_empty() {
                let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                bail!(
                    "safety checks failed: {} (set `safety-checks = false` to skip them)",
                    list.join("; ")
                );
            }
        }
    }

    let profiles = Profiles::new(root);
    // Downgrade check against the host's current system.
    let host_provenance = profiles
        .current_system()?
        .and_then(|s| fs::read_to_string(s.join("provenance")).ok())
        .and_then(|t| Provenance::parse(&t));
    if profiles.current_system()?.is_some() {
        let verdict = checks::downgrade_check(
            host_provenance.as_ref(),
            provenance,
            c.allow_downgrades,
            |old, new| checks::git_relation(&deployment.dir, old, new),
        );
        match verdict {
            Verdict::Proceed => {}
            Verdict::Warn(w) => say(&format!("warning: {w}")),
            Verdict::Refuse(r) => bail!("{r}"),
        }
    }

    let closure = store.closure(std::slice::from_ref(&built.path))?;
    let host_layout = StoreLayout::new(root, store.store_dir().clone(), None)?;
    let valid = if host_layout.ferry_db_path().exists() {
        // Read-only: a dry run changes nothing on the host.
        Store::open_read_only(host_layout)?.query_valid(closure.paths())?
    } else {
        Default::default()
    };
    let missing: Vec<_> = closure.iter().filter(|i| !valid.contains(&i.path)).collect();
    let bytes: u64 = missing.iter().map(|i| i.nar_size).sum();
    if dry_run {
        println!("{}: would copy {} path(s), {} bytes:", m.name, missing.len(), bytes);
        for i in &missing {
            println!("  {} {}", i.path.to_absolute(store.store_dir()), i.nar_size);
        }
        return Ok(HostResult {
            success: true,
            generation: profiles.current()?,
            paths: missing.len(),
            bytes,
            detail: "dry run: nothing changed".into(),
        });
    }
    let mut host = host_store(store.store_dir(), root)?;
    for info in &missing {
        copy_path(store, &mut host, info)?;
    }
    let paths = missing.len();
    if paths > 0 {
        say(&format!("copied {paths} path(s), {} bytes", bytes));
    }
    let on_host = profiles.on_host(Path::new(&built.absolute));
    let current = profiles.current()?;
    if let Some(cur) = current {
        if profiles.generation(cur).map(|g| g.system == on_host).unwrap_or(false) {
            return Ok(HostResult {
                success: true,
                generation: Some(cur),
                paths,
                bytes,
                detail: "already on this system".into(),
            });
        }
    }
    let new = profiles.add(&on_host)?;
    say(&format!("generation {new}"));
    let config = Config {
        confirm_timeout: c.confirm_timeout,
        host_health_checks: m.os.health_checks.iter().any(HealthCheck::runs_on_host),
    };
    let name = &m.name;
    let outcome = host::run_activation(
        &profiles,
        Activation::new(new, current, config),
        &m.os.health_checks,
        &mut |o| match o {
            HostOutput::Line(l) => eprintln!("{name}: {l}"),
            HostOutput::Warning(w) => eprintln!("{name}: warning: {w}"),
            HostOutput::Event(Event::RollingBack { from, to, reason }) => {
                eprintln!("{name}: {reason}; rolling back from generation {from} to {to}")
            }
            HostOutput::Event(Event::CannotRollBack { generation, reason }) => {
                eprintln!("{name}: {reason}; generation {generation} has no previous generation")
            }
            HostOutput::Event(_) => {}
        },
        // The coordinator's own probes, then confirm: a local root is always reachable.
        &mut |_deadline| match coordinator_probes(m) {
            Ok(()) => Some(Input::Confirmed),
            Err(why) => Some(Input::Rejected(why)),
        },
    )?;
    let (success, generation, detail) = match outcome {
        Outcome::Deployed { generation } if c.confirm_timeout.is_none() => {
            // TCP/HTTP probes belong to confirmation; without it they only warn.
            match coordinator_probes(m) {
                Ok(()) => (true, generation, "activated".to_owned()),
                Err(why) => (
                    true,
                    generation,
                    format!("activated; warning: {why} (confirmation is off: no rollback)"),
                ),
            }
        }
        Outcome::Deployed { generation } => (true, generation, "activated".to_owned()),
        Outcome::RolledBack { from, to, reason } => {
            (false, to, format!("{reason}; rolled back from generation {from} to {to}"))
        }
        Outcome::Failed { generation, reason } => (
            false,
            generation,
            format!("{reason}; no previous generation to return to (none is current now)"),
        ),
        Outcome::RollbackFailed { from, to, reason, rollback_error } => (
            false,
            from,
            format!(
                "{reason}; rolling back to {to} failed too: {rollback_error} (needs attention)"
            ),
        ),
    };
    Ok(HostResult { success, generation: Some(generation), paths, bytes, detail })
}

/// Copy one valid path into another store on this machine (references must be there already).
fn copy_path(from: &Store, to: &mut Store, info: &closure::PathInfo) -> anyhow::Result<()> {
    let mut tmp = tempfile::tempfile().context("cannot create a temporary file")?;
    nar_core::dump::dump(&from.physical_path(&info.path), &mut tmp)
        .with_context(|| format!("cannot read {}", info.path.to_absolute(from.store_dir())))?;
    tmp.rewind()?;
    to.import_nar(info, &mut BufReader::new(tmp))?;
    Ok(())
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

fn roll_back_local(m: &Machine) -> anyhow::Result<HostResult> {
    let profiles = Profiles::new(&m.configuration.root);
    let name = &m.name;
    let (from, to, code) = host::roll_back(&profiles, &mut |l| eprintln!("{name}: {l}"))?;
    eprintln!("{name}: rolled back from generation {from} to {to}");
    let (success, detail) = match code {
        Some(0) => (true, format!("rolled back from generation {from}")),
        code => (
            false,
            format!(
                "the profile is on generation {to}, but its activate exited with {code:?} \
                 (needs attention)"
            ),
        ),
    };
    Ok(HostResult { success, generation: Some(to), paths: 0, bytes: 0, detail })
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
