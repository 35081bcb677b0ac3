//! `activate` and `confirm`: register a generation for a system and drive its activation
//! ([`driver::run_activation`]); when it waits for confirmation, announce it
//! ([`HostLine::Confirm`]) and poll the answer marker `<root>/var/ferry/confirm/TOKEN` that
//! `confirm` (run over a new connection) writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::session::{self, ActivateRequest, HostLine, HostResult};

use super::driver::{self, Activator, HostOutput};
use super::switch::Switcher;
use super::{HostCommandError, HostRoot};
use crate::activation::{Activation, Config, Event, Input, Outcome};
use crate::deployment::HealthCheck;

/// Where the answers of confirmations are left: `<root>/var/ferry/confirm/TOKEN`.
fn confirm_marker(root: &Path, token: &str) -> PathBuf {
    root.join("var/ferry/confirm").join(token)
}

/// Present while an activation waits for the answer `marker`.
fn waiting_marker(marker: &Path) -> PathBuf {
    marker.with_extension("waiting")
}

impl HostRoot {
    /// Register a generation for `req.system` and activate it; the lines (`generation`,
    /// `line`, `warning`, `event`, `confirm`) go to `emit` as they come. The result is for the
    /// caller to send.
    pub fn activate(
        &self,
        req: &ActivateRequest,
        emit: &mut dyn FnMut(&HostLine),
    ) -> Result<HostResult, HostCommandError> {
        if !session::valid_token(&req.token) {
            return Err(HostCommandError::InvalidToken(req.token.clone()));
        }
        let switcher = req.switch.clone().map(|spec| Switcher::new(self.root(), spec));
        let (profiles, activator) = match &switcher {
            Some(s) => (&s.profiles, Activator::Switch(s)),
            None => (&self.profiles, Activator::Ferry),
        };
        let on_host = profiles.on_host(Path::new(&req.system));
        let present = match activator {
            Activator::Ferry => on_host.join("activate").exists(),
            Activator::Switch(_) => on_host.exists(),
        };
        if !present {
            return Err(HostCommandError::NotASystem(on_host.display().to_string()));
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
        if let Some(s) = &switcher {
            s.record(new)?;
        }
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
        // Both callbacks emit: one `&mut` for the two of them.
        let emit = std::cell::RefCell::new(emit);
        let outcome = driver::run_activation(
            profiles,
            activator,
            Activation::new(new, current, config),
            &checks,
            &mut |o| {
                let line = match o {
                    HostOutput::Line(l) => HostLine::Line(l.to_owned()),
                    HostOutput::Warning(w) => HostLine::Warning(w),
                    HostOutput::Event(Event::RollingBack { from, to, reason }) => HostLine::Event(
                        format!("{reason}; rolling back from generation {from} to {to}"),
                    ),
                    HostOutput::Event(Event::CannotRollBack { generation, reason }) => {
                        HostLine::Event(format!(
                            "{reason}; generation {generation} has no previous generation"
                        ))
                    }
                    HostOutput::Event(_) => return,
                };
                (emit.borrow_mut())(&line);
            },
            &mut |deadline| {
                wait_for_answer(&marker, &req.token, deadline, &mut **emit.borrow_mut())
            },
        )?;
        let _ = fs::remove_file(&marker);
        // The generation that failed is marked: `--list-generations` shows it, rollbacks skip
        // it. A mark that cannot be written is a warning and changes nothing else.
        let failed = match &outcome {
            Outcome::RolledBack { from, reason, .. }
            | Outcome::RollbackFailed { from, reason, .. } => Some((*from, reason)),
            Outcome::Failed { generation, reason } => Some((*generation, reason)),
            Outcome::Deployed { .. } => None,
        };
        if let Some((n, reason)) = failed {
            if let Err(e) = profiles.mark_failed(n, &reason.to_string()) {
                (emit.borrow_mut())(&HostLine::Warning(e.to_string()));
            }
        }
        let mut result = outcome_result(outcome);
        if result.success && switcher.as_ref().is_some_and(|s| s.next_boot(new)) {
            result.detail = "activated for next boot (the live switch failed)".into();
        }
        Ok(result)
    }

    /// `confirm TOKEN [--reject REASON]`: answer the activation waiting for `token`.
    pub fn confirm(&self, token: &str, reject: Option<&str>) -> Result<(), HostCommandError> {
        if !session::valid_token(token) {
            return Err(HostCommandError::InvalidToken(token.to_owned()));
        }
        let marker = confirm_marker(self.root(), token);
        let dir = marker.parent().expect("has a parent");
        if !waiting_marker(&marker).exists() {
            return Err(HostCommandError::NotWaiting(token.to_owned()));
        }
        let tmp = dir.join(format!(".{token}.tmp"));
        fs::write(&tmp, session::encode_answer(reject))
            .and_then(|()| fs::rename(&tmp, &marker))
            .map_err(|source| HostCommandError::Write {
                path: marker.display().to_string(),
                source,
            })
    }
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

/// Tell the coordinator we wait, then poll the marker until the deadline.
fn wait_for_answer(
    marker: &Path,
    token: &str,
    deadline: Instant,
    emit: &mut dyn FnMut(&HostLine),
) -> Option<Input> {
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
