//! `ferry host ...` (hidden): the host side of `ferry deploy`, run on a host by the agent
//! program (over SSH, or as a local subprocess for a `local` machine). The host root is the
//! global `--root` (`/` when not given); the store under it is chosen as for `ferry serve`.
//! The requests and answers are described in [`proto::session`].

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use store::Store;
use transfer::agent::AgentOptions;

use crate::settings::GlobalOpts;
use deploy::activation::{Activation, Config, Event, Input, Outcome};
use deploy::checks::{self, Device, DeviceCheck};
use deploy::deployment::HealthCheck;
use deploy::generations::Profiles;
use deploy::host::driver::{self as host, HostOutput};
use proto::session::{
    self as session, ActivateRequest, Facts, FactsRequest, GenerationInfo, HostLine, HostResult,
    SessionRequest,
};

/// `ferry host` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HostCommand {
    /// Report what the checks before a copy need (request as JSON on stdin).
    Facts,
    /// One session for a whole deploy: facts, copy, activate, as requests on stdin (see
    /// `host_protocol`).
    Session,
    /// Register a generation for a system and activate it (request as JSON on stdin).
    Activate,
    /// Answer a waiting activation: confirm it, or reject it with a reason.
    Confirm {
        token: String,
        #[arg(long, value_name = "REASON")]
        reject: Option<String>,
    },
    /// Return to the previous generation (profile, activate, services).
    RollBack,
    /// List the generations.
    Generations {
        #[arg(long)]
        json: bool,
    },
    /// Run a command in the root with the current system's profile on PATH.
    Exec {
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

/// Where the answers of confirmations are left: `<root>/var/ferry/confirm/TOKEN`.
fn confirm_marker(root: &Path, token: &str) -> PathBuf {
    root.join("var/ferry/confirm").join(token)
}

/// Present while an activation waits for the answer `marker`.
fn waiting_marker(marker: &Path) -> PathBuf {
    marker.with_extension("waiting")
}

/// Print one protocol line; a vanished reader is ignored (the work goes on).
fn emit(line: &HostLine) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", line.encode());
    let _ = out.flush();
}

fn read_request<T: serde::de::DeserializeOwned>() -> anyhow::Result<T> {
    let mut text = String::new();
    io::stdin().read_to_string(&mut text).context("reading the request on stdin")?;
    parse_request(&text)
}

fn parse_request<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).context("the request on stdin is not what this ferry expects")
}

/// Print an activation's result line; exit code 1 when it failed.
fn activation_ended(result: HostResult) -> ExitCode {
    let success = result.success;
    emit(&HostLine::Result(result));
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `ferry host session`: requests on stdin, one at a time, each answered before the next is
/// read (see [`proto::session`]); the copy runs the agent on the same streams.
fn session(global: &GlobalOpts, profiles: &Profiles) -> anyhow::Result<ExitCode> {
    let (input, mut out) = super::serve::std_streams()?;
    let mut input = io::BufReader::new(input);
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).context("reading a session request on stdin")? == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        let line = line.strip_suffix('\n').unwrap_or(&line);
        match SessionRequest::parse(line).map_err(anyhow::Error::msg)? {
            SessionRequest::Facts(request) => {
                let facts = facts(global, profiles, &request)?;
                writeln!(out, "{}", serde_json::to_string(&facts)?)
                    .and_then(|()| out.flush())
                    .context("answering facts")?;
            }
            SessionRequest::Copy => {
                let options = AgentOptions::new(crate::settings::layout(global)?);
                transfer::agent::serve(options, &mut input, &mut out)
                    .map_err(|e| anyhow::anyhow!("ferry serve (in the session): {e}"))?;
            }
            SessionRequest::Activate(request) => {
                return Ok(activation_ended(activate(profiles, &request)?));
            }
        }
    }
}

pub fn run(global: &GlobalOpts, command: HostCommand) -> anyhow::Result<ExitCode> {
    let root = global.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let profiles = Profiles::new(&root);
    match command {
        HostCommand::Facts => {
            let facts = facts(global, &profiles, &read_request()?)?;
            println!("{}", serde_json::to_string(&facts)?);
        }
        HostCommand::Session => return session(global, &profiles),
        HostCommand::Activate => {
            return Ok(activation_ended(activate(&profiles, &read_request()?)?))
        }
        HostCommand::Confirm { token, reject } => {
            if !session::valid_token(&token) {
                bail!("invalid confirmation token {token:?}");
            }
            let marker = confirm_marker(&root, &token);
            let dir = marker.parent().expect("has a parent");
            if !waiting_marker(&marker).exists() {
                bail!(
                    "no activation on this host waits for confirmation {token}: its deadline \
                     passed (it rolled back by itself) or it ended"
                );
            }
            let tmp = dir.join(format!(".{token}.tmp"));
            fs::write(&tmp, session::encode_answer(reject.as_deref()))
                .and_then(|()| fs::rename(&tmp, &marker))
                .with_context(|| format!("cannot write {}", marker.display()))?;
        }
        HostCommand::RollBack => {
            let (from, to, code) =
                host::roll_back(&profiles, &mut |l| emit(&HostLine::Line(l.to_owned())))?;
            let result = match code {
                Some(0) => HostResult {
                    success: true,
                    generation: Some(to),
                    detail: format!("rolled back from generation {from}"),
                },
                code => HostResult {
                    success: false,
                    generation: Some(to),
                    detail: format!(
                        "the profile is on generation {to}, but its activate exited with \
                         {code:?} (needs attention)"
                    ),
                },
            };
            let success = result.success;
            emit(&HostLine::Result(result));
            if !success {
                return Ok(ExitCode::from(1));
            }
        }
        HostCommand::Generations { json } => {
            let list: Vec<GenerationInfo> = profiles
                .list()?
                .into_iter()
                .map(|g| GenerationInfo {
                    number: g.number,
                    time: g.time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    system: g.system.display().to_string(),
                    current: g.current,
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for g in list {
                    let current = if g.current { "  (current)" } else { "" };
                    println!("{:>4}  {}{current}", g.number, g.system);
                }
            }
        }
        HostCommand::Exec { command } => return exec(&root, &profiles, &command),
    }
    Ok(ExitCode::SUCCESS)
}

fn facts(global: &GlobalOpts, profiles: &Profiles, req: &FactsRequest) -> anyhow::Result<Facts> {
    let generation = profiles.current()?;
    let current_system = match generation {
        Some(g) => Some(profiles.generation(g)?.system),
        None => None,
    };
    let on_this_system = match (&req.system, &current_system) {
        (Some(s), Some(cur)) => profiles.on_host(Path::new(s)) == *cur,
        _ => false,
    };
    let provenance =
        current_system.as_ref().and_then(|s| fs::read_to_string(s.join("provenance")).ok());
    let mut safety_errors = Vec::new();
    if !req.devices.is_empty() {
        let device_checks: Vec<DeviceCheck> = req
            .devices
            .iter()
            .map(|d| DeviceCheck {
                device: Device::parse(&d.device),
                mount_point: d.mount_point.clone(),
            })
            .collect();
        let out = Command::new("sh")
            .arg("-c")
            .arg(checks::probe_script(&device_checks))
            .env("FERRY_ROOT", profiles.root())
            .stdin(Stdio::null())
            .output()
            .context("running the safety checks")?;
        safety_errors = checks::evaluate(&device_checks, &String::from_utf8_lossy(&out.stdout))
            .iter()
            .map(ToString::to_string)
            .collect();
    }
    let mut missing = req.paths.clone();
    if !req.paths.is_empty() {
        let layout = crate::settings::layout(global)?;
        if layout.database().1.exists() {
            let store = Store::open_read_only(layout)?;
            let paths = req
                .paths
                .iter()
                .map(|p| store.parse_path(p).with_context(|| format!("{p:?} in the request")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let valid = store.query_valid(&paths)?;
            missing = req
                .paths
                .iter()
                .zip(&paths)
                .filter(|(_, p)| !valid.contains(p))
                .map(|(text, _)| text.clone())
                .collect();
        }
    }
    Ok(Facts {
        system_type: deploy::deployment::this_system(),
        generation,
        current_system: current_system.map(|s| s.display().to_string()),
        on_this_system,
        provenance,
        safety_errors,
        missing,
    })
}

/// The table's words for an activation outcome.
fn outcome_result(outcome: Outcome) -> HostResult {
    let (success, generation, detail) = match outcome {
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
    HostResult { success, generation: Some(generation), detail }
}

fn activate(profiles: &Profiles, req: &ActivateRequest) -> anyhow::Result<HostResult> {
    if !session::valid_token(&req.token) {
        bail!("invalid confirmation token {:?}", req.token);
    }
    let on_host = profiles.on_host(Path::new(&req.system));
    if !on_host.join("activate").exists() {
        bail!("{} is not a system in this host's store (copy it first)", on_host.display());
    }
    let current = profiles.current()?;
    if let Some(cur) = current {
        if profiles.generation(cur)?.system == on_host {
            return Ok(HostResult {
                success: true,
                generation: Some(cur),
                detail: "already on this system".into(),
            });
        }
    }
    let new = profiles.add(&on_host)?;
    emit(&HostLine::Generation(new));
    let checks: Vec<HealthCheck> = req
        .health_checks
        .iter()
        .map(|c| HealthCheck::Command {
            command: c.command.clone(),
            timeout: Duration::from_millis(c.timeout_ms),
        })
        .collect();
    let config = Config {
        confirm_timeout: req.confirm_timeout_ms.map(Duration::from_millis),
        host_health_checks: !checks.is_empty(),
    };
    let marker = confirm_marker(profiles.root(), &req.token);
    let _ = fs::remove_file(&marker);
    let outcome = host::run_activation(
        profiles,
        Activation::new(new, current, config),
        &checks,
        &mut |o| match o {
            HostOutput::Line(l) => emit(&HostLine::Line(l.to_owned())),
            HostOutput::Warning(w) => emit(&HostLine::Warning(w)),
            HostOutput::Event(Event::RollingBack { from, to, reason }) => emit(&HostLine::Event(
                format!("{reason}; rolling back from generation {from} to {to}"),
            )),
            HostOutput::Event(Event::CannotRollBack { generation, reason }) => {
                emit(&HostLine::Event(format!(
                    "{reason}; generation {generation} has no previous generation"
                )))
            }
            HostOutput::Event(_) => {}
        },
        &mut |deadline| wait_for_answer(&marker, &req.token, deadline),
    )?;
    let _ = fs::remove_file(&marker);
    Ok(outcome_result(outcome))
}

/// Tell the coordinator we wait, then poll the marker until the deadline.
fn wait_for_answer(marker: &Path, token: &str, deadline: Instant) -> Option<Input> {
    let waiting = waiting_marker(marker);
    let created =
        marker.parent().map_or(Ok(()), fs::create_dir_all).and_then(|()| fs::write(&waiting, b""));
    if let Err(e) = created {
        emit(&HostLine::Warning(format!(
            "cannot create {}: {e}; a confirmation cannot be received",
            waiting.display()
        )));
    }
    let seconds = deadline.saturating_duration_since(Instant::now()).as_secs();
    emit(&HostLine::Confirm { seconds, token: token.to_owned() });
    let mut answer = None;
    while answer.is_none() && Instant::now() < deadline {
        if let Ok(text) = fs::read_to_string(marker) {
            answer = match session::parse_answer(&text) {
                Some(Ok(())) => Some(Input::Confirmed),
                Some(Err(why)) => Some(Input::Rejected(why)),
                None => None,
            };
        }
        if answer.is_none() {
            // A failed stat every 10 ms costs nothing; the answer is seen soon after it lands.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = fs::remove_file(&waiting);
    answer
}

/// `exec`: the command's stdout and stderr both go to our stdout (one stream of lines).
fn exec(root: &Path, profiles: &Profiles, command: &[String]) -> anyhow::Result<ExitCode> {
    if !root.is_dir() {
        bail!("{} does not exist: deploy to it first", root.display());
    }
    let bin = profiles.current_system_link().join("profile/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))?;
    let out = io::stdout().as_fd().try_clone_to_owned()?;
    let status = Command::new(&command[0])
        .args(&command[1..])
        .current_dir(root)
        .env("FERRY_ROOT", root.to_string_lossy().trim_end_matches('/'))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stderr(Stdio::from(out))
        .status()
        .with_context(|| format!("cannot run {}", command[0]))?;
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!("{} was killed by a signal", command[0]);
            ExitCode::from(128)
        }
    })
}
