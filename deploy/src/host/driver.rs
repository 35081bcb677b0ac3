//! The host side of activation: carries out the [`Activation`] state machine's actions on a
//! host root. Used by [`HostRoot::activate`](super::HostRoot::activate) and
//! [`HostRoot::roll_back`](super::HostRoot::roll_back) (`ferry host …`, run on the host for
//! `ferry deploy`, locally or over SSH), whose `confirm` callback waits for the coordinator's
//! answer, given over a new connection.
//!
//! - `SwitchProfile` → [`Profiles::switch_to`];
//! - `RunActivate` → point `current-system` at the generation's system, run its `activate`
//!   with `FERRY_ROOT` and `FERRY_PREVIOUS_SYSTEM`, streaming its stdout and stderr lines; for a
//!   system built by Nix or Guix ([`Activator::Switch`]), the generation's own switch command
//!   ([`Switcher`]) instead;
//! - `RunHealthChecks` → the declaration's `command` checks, each with `sh -c` in the root,
//!   `FERRY_ROOT` set (without trailing slash) and its timeout;
//! - `ArmConfirmDeadline { at }` → `confirm(at)`: block until the coordinator confirms
//!   (`Some(Input::Confirmed)`), rejects (`Some(Input::Rejected(why))`) or the deadline passes
//!   (`None`, after which the machine is told the time is `at` and rolls back);
//! - `ClearProfile` → [`Profiles::clear`].

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::switch::Switcher;
use crate::activation::{Action, Activation, Event, Input, Outcome, UnexpectedInput};
use crate::deployment::HealthCheck;
use crate::generations::{GenerationError, Profiles};

/// What the driver reports while it works.
#[derive(Debug)]
pub enum HostOutput<'a> {
    /// A line printed by `activate`.
    Line(&'a str),
    /// A state-machine event.
    Event(&'a Event),
    /// Something that went wrong without changing the outcome.
    Warning(String),
}

/// Errors that stop the driver (the host's state is then what the last step left).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error(transparent)]
    Unexpected(#[from] UnexpectedInput),
    #[error("activation stalled: no action, no deadline and no outcome")]
    Stalled,
}

/// How a generation's system is activated.
#[derive(Debug, Clone, Copy)]
pub enum Activator<'a> {
    /// A system built by ferry: its `activate`, `current-system` pointed at it.
    Ferry,
    /// A system built by Nix or Guix: its switch command.
    Switch(&'a Switcher),
}

/// Drive `activation` to its outcome on the host whose generations are `profiles`.
pub fn run_activation(
    profiles: &Profiles,
    activator: Activator<'_>,
    mut activation: Activation,
    health_checks: &[HealthCheck],
    output: &mut dyn FnMut(HostOutput<'_>),
    confirm: &mut dyn FnMut(Instant) -> Option<Input>,
) -> Result<Outcome, HostError> {
    let root = profiles.root();
    let system_of = |g: u64| -> Result<PathBuf, HostError> { Ok(profiles.generation(g)?.system) };
    loop {
        while let Some(action) = activation.poll_action() {
            let input = match action {
                Action::SwitchProfile { generation } => Input::ProfileSwitched(
                    profiles.switch_to(generation).map_err(|e| e.to_string()),
                ),
                Action::RunActivate { generation, previous } => {
                    let system = system_of(generation)?;
                    let prev = previous.map(system_of).transpose()?;
                    if let Activator::Switch(switcher) = activator {
                        let code = switcher.activate(generation, &system, output);
                        activation.handle(Instant::now(), Input::ActivateExited(code))?;
                        continue;
                    }
                    match profiles.set_current_system(&system) {
                        Ok(()) => Input::ActivateExited(run_activate(
                            root,
                            &system,
                            prev.as_deref(),
                            &mut |line| output(HostOutput::Line(line)),
                        )),
                        Err(e) => {
                            output(HostOutput::Warning(e.to_string()));
                            Input::ActivateExited(None)
                        }
                    }
                }
                Action::RunHealthChecks { .. } => {
                    Input::HealthChecks(run_health_commands(root, health_checks))
                }
                Action::ArmConfirmDeadline { at } => {
                    match confirm(at) {
                        // A late answer loses to the deadline.
                        Some(input) if Instant::now() < at => {
                            activation.handle(Instant::now(), input)?
                        }
                        _ => activation.handle_timeout(at),
                    }
                    continue;
                }
                Action::ClearProfile => {
                    if let Err(e) = profiles.clear() {
                        output(HostOutput::Warning(e.to_string()));
                    }
                    continue;
                }
                Action::Report(event) => {
                    output(HostOutput::Event(&event));
                    continue;
                }
            };
            activation.handle(Instant::now(), input)?;
        }
        if let Some(outcome) = activation.outcome() {
            return Ok(outcome.clone());
        }
        match activation.poll_timeout() {
            Some(deadline) => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                activation.handle_timeout(Instant::now().max(deadline));
            }
            None => return Err(HostError::Stalled),
        }
    }
}

/// Run a system's `activate` under `root`; each line of its stdout and stderr goes to `line`
/// as it comes. Returns the exit code (`None`: killed, or could not run).
pub fn run_activate(
    root: &Path,
    system: &Path,
    previous: Option<&Path>,
    line: &mut dyn FnMut(&str),
) -> Option<i32> {
    let program = system.join("activate");
    let mut command = Command::new(&program);
    command
        .env("FERRY_ROOT", root)
        .env("FERRY_PREVIOUS_SYSTEM", previous.map(Path::as_os_str).unwrap_or_default());
    run_streaming(command, &program, line)
}

/// Run `command` (whose program is `program`) with its stdout and stderr lines going to
/// `line` as they come. Returns the exit code (`None`: killed, or could not run).
pub(super) fn run_streaming(
    mut command: Command,
    program: &Path,
    line: &mut dyn FnMut(&str),
) -> Option<i32> {
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            line(&format!("cannot run {}: {e}", program.display()));
            return None;
        }
    };
    let (tx, rx) = mpsc::channel::<String>();
    let pump = |r: Box<dyn Read + Send>, tx: mpsc::Sender<String>| {
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines() {
                match l {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        })
    };
    let threads = [
        child.stdout.take().map(|o| pump(Box::new(o), tx.clone())),
        child.stderr.take().map(|e| pump(Box::new(e), tx.clone())),
    ];
    drop(tx);
    for l in rx {
        line(&l);
    }
    for t in threads.into_iter().flatten() {
        let _ = t.join();
    }
    child.wait().ok().and_then(|s| s.code())
}

/// Run the `command` health checks under `root`; the failures, one line each.
pub fn run_health_commands(root: &Path, checks: &[HealthCheck]) -> Result<(), Vec<String>> {
    let mut failures = Vec::new();
    let root_env = root.to_string_lossy().trim_end_matches('/').to_owned();
    for check in checks {
        let HealthCheck::Command { command, timeout } = check else { continue };
        let child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(root)
            .env("FERRY_ROOT", &root_env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("`{command}`: cannot run: {e}"));
                continue;
            }
        };
        // Drain stderr on a thread so a chatty check cannot block on a full pipe.
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        let deadline = Instant::now() + *timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        let stderr = stderr.trim();
        match status {
            Some(s) if s.success() => {}
            Some(s) => failures.push(format!(
                "`{command}` exited with {}{}",
                s.code().map_or("a signal".to_owned(), |c| format!("code {c}")),
                if stderr.is_empty() { String::new() } else { format!(": {stderr}") }
            )),
            None => failures.push(format!("`{command}` timed out after {}s", timeout.as_secs())),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// `--roll-back`: switch to the previous generation and run its `activate` with the current
/// one as the previous system (or its own switch command). Returns `(from, to, the exit
/// code)`.
pub fn roll_back(
    profiles: &Profiles,
    activator: Activator<'_>,
    line: &mut dyn FnMut(&str),
) -> Result<(u64, u64, Option<i32>), HostError> {
    let (from, to) = profiles.roll_back()?;
    let from_system = profiles.generation(from)?.system;
    let to_system = profiles.generation(to)?.system;
    if let Activator::Switch(switcher) = activator {
        let code = switcher.activate(to, &to_system, &mut |o| match o {
            HostOutput::Line(l) => line(l),
            HostOutput::Warning(w) => line(&format!("warning: {w}")),
            HostOutput::Event(_) => {}
        });
        return Ok((from, to, code));
    }
    profiles.set_current_system(&to_system)?;
    let code = run_activate(profiles.root(), &to_system, Some(&from_system), line);
    Ok((from, to, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::{Config, Failure};
    use crate::deployment::{Deployment, OperatingSystem};
    use crate::system::{self, Provenance};
    use nar_core::store_path::StoreDir;
    use store::{Store, StoreLayout};

    fn os(text: &str) -> OperatingSystem {
        let file = format!(
            "[[machine]]\nname = \"m\"\nenvironment = \"local\"\n[machine.operating-system]\n{text}\n"
        );
        Deployment::parse(Path::new("/d.toml"), &file, &|_| Some("/h".into())).unwrap().machines[0]
            .os
            .clone()
    }

    /// A host root whose store holds two systems, with generation 1 active.
    fn host(v2: &str) -> (tempfile::TempDir, Profiles, OperatingSystem) {
        let t = tempfile::tempdir().unwrap();
        let mut store =
            Store::open(StoreLayout::new(t.path(), StoreDir::guix(), None).unwrap()).unwrap();
        let provenance = Provenance::of_file(&t.path().join("d.toml"), None);
        let v1 = os("services = [{ name = \"s\", start = 'echo v1 > \"$FERRY_ROOT/s\"' }]");
        let v2 = os(v2);
        let b1 = system::build(&mut store, &v1, &provenance).unwrap();
        let b2 = system::build(&mut store, &v2, &provenance).unwrap();
        let profiles = Profiles::new(t.path());
        let g1 = profiles.add(&profiles.on_host(Path::new(&b1.absolute))).unwrap();
        profiles.add(&profiles.on_host(Path::new(&b2.absolute))).unwrap();
        let mut out = |_: HostOutput<'_>| {};
        let config = Config { confirm_timeout: None, host_health_checks: false };
        let first = Activation::new(g1, None, config);
        assert_eq!(
            run_activation(&profiles, Activator::Ferry, first, &[], &mut out, &mut |_| None)
                .unwrap(),
            Outcome::Deployed { generation: 1 }
        );
        (t, profiles, v2)
    }

    const V2: &str = "services = [{ name = \"s\", start = 'echo v2 > \"$FERRY_ROOT/s\"' }]\n\
                      health-checks = [{ command = 'grep -q v2 \"$FERRY_ROOT/s\"' }]";

    #[test]
    fn a_coordinator_that_never_confirms_gets_a_rollback() {
        let (t, profiles, v2) = host(V2);
        let config =
            Config { confirm_timeout: Some(Duration::from_secs(30)), host_health_checks: true };
        let mut lines = Vec::new();
        let mut asked = None;
        let outcome = run_activation(
            &profiles,
            Activator::Ferry,
            Activation::new(2, Some(1), config),
            &v2.health_checks,
            &mut |o| {
                if let HostOutput::Line(l) = o {
                    lines.push(l.to_owned())
                }
            },
            // Never confirms: returns at once, as if the deadline had passed (no sleeping).
            &mut |deadline| {
                asked = Some(deadline);
                None
            },
        )
        .unwrap();
        assert!(asked.is_some());
        assert_eq!(
            outcome,
            Outcome::RolledBack {
                from: 2,
                to: 1,
                reason: Failure::ConfirmTimeout(Duration::from_secs(30))
            }
        );
        assert_eq!(profiles.current().unwrap(), Some(1));
        assert_eq!(std::fs::read_to_string(t.path().join("s")).unwrap(), "v1\n");
        assert!(lines.iter().any(|l| l == "activate: restarting service s"), "{lines:?}");
    }

    #[test]
    fn confirmed_in_time_stays() {
        let (t, profiles, v2) = host(V2);
        let config =
            Config { confirm_timeout: Some(Duration::from_secs(30)), host_health_checks: true };
        let outcome = run_activation(
            &profiles,
            Activator::Ferry,
            Activation::new(2, Some(1), config),
            &v2.health_checks,
            &mut |_| {},
            &mut |_| Some(Input::Confirmed),
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Deployed { generation: 2 });
        assert_eq!(std::fs::read_to_string(t.path().join("s")).unwrap(), "v2\n");
        let (from, to, code) = roll_back(&profiles, Activator::Ferry, &mut |_| {}).unwrap();
        assert_eq!((from, to, code), (2, 1, Some(0)));
        assert_eq!(std::fs::read_to_string(t.path().join("s")).unwrap(), "v1\n");
    }

    #[test]
    fn health_commands_report_exit_codes_and_timeouts() {
        let t = tempfile::tempdir().unwrap();
        let checks = [
            HealthCheck::Command { command: "true".into(), timeout: Duration::from_secs(5) },
            HealthCheck::Command {
                command: "echo no >&2; exit 2".into(),
                timeout: Duration::from_secs(5),
            },
            HealthCheck::Command { command: "sleep 5".into(), timeout: Duration::from_millis(100) },
            HealthCheck::Tcp { host: None, port: 1, timeout: Duration::from_secs(1) },
        ];
        assert_eq!(
            run_health_commands(t.path(), &checks).unwrap_err(),
            ["`echo no >&2; exit 2` exited with code 2: no", "`sleep 5` timed out after 0s"]
        );
    }
}
