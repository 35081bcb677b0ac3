//! Executing a machine's [`HostPlan`] on the session it was made on:
//! 1. the copy of the missing paths through the transfer engine (`push_closure`, signed with
//!    this machine's key; `authorize` adds the key to the host's ACL first); a host already on
//!    the system stops here;
//! 2. `activate`: the host registers generation N+1 (in the system's own profile for one built
//!    by Nix or Guix, which its switch command activates) and drives the activation state machine,
//!    streaming `activate`'s output; when it waits for confirmation, this side runs the TCP
//!    and HTTP probes ([`crate::probes`]) and answers `ferry host confirm TOKEN` (or
//!    `--reject REASON`) over a new connection. Without an answer before the deadline the host
//!    rolls back by itself. With `confirm-timeout = false` the probes run after activation and
//!    only warn.

use std::sync::Arc;
use std::time::Instant;

use proto::session::{ActivateRequest, HostCheck, HostLine, SwitchSpec};
use signing::guix::SigningKey;
use transfer::push::frame_cache::FrameCache;
use transfer::push::{push_closure, PushOptions};

use crate::deployment::{HealthCheck, Machine, PrebuiltSystem};
use crate::error::{error_chain, DeployError};
use crate::link::{HostSession, Link, LinkError};
use crate::orchestrate::Options;
use crate::plan::{Ctx, HostPlan, HostReport, Planned};
use crate::probes::coordinator_probes;
use crate::progress::{CopyProgress, Phase};

/// Test hook, read by the front end into [`crate::orchestrate::Options::never_confirm`]: the coordinator never
/// confirms an activation (the host must roll back).
pub const NEVER_CONFIRM_ENV: &str = "FERRY_TEST_NEVER_CONFIRM";

/// What a real run adds to planning: the key, the shared encodings, the test hook.
pub(crate) struct Apply<'a> {
    pub key: &'a SigningKey,
    /// Encoded path data shared by the machines' copies.
    pub frame_cache: Option<Arc<FrameCache>>,
    /// Never confirm an activation (tests: the host must roll back by itself).
    pub never_confirm: bool,
    /// The run's options: whether it was interrupted.
    pub options: &'a Options,
}

/// Copy and activate machine `m`'s plan.
pub(crate) fn apply(
    ctx: &Ctx<'_>,
    run: &Apply<'_>,
    m: &Machine,
    planned: Planned,
) -> Result<HostReport, DeployError> {
    let Planned { plan, link, session, lap } = planned;
    let session = session.ok_or_else(|| {
        DeployError::Connect(LinkError::Session(format!("{}: no session to apply on", m.name)))
    })?;
    let HostPlan {
        system, current_generation, on_this_system, to_send, closure, substituted, ..
    } = plan;
    let mut steps = plan.steps;
    let c = &m.configuration;

    // 1. Copy.
    run.options.check_interrupt("before the copy: nothing changed on the host")?;
    let (mut paths, mut shared, mut sent, mut wire) = (0, 0, 0, 0);
    let present = closure.len() - to_send.len();
    if !to_send.is_empty() {
        ctx.progress.phase(&m.name, Phase::Copy);
        // The fixed level (no adaptive choice per link), so every machine's copy of a path
        // is the same stream and the frame cache shares it.
        let options = PushOptions {
            authorize: c.authorize,
            compress: None,
            frame_cache: run.frame_cache.clone(),
            ..PushOptions::default()
        };
        let progress = CopyProgress { host: &m.name, progress: ctx.progress };
        let summary = session
            .copy(|t| push_closure(ctx.layout, &closure, t, run.key, &options, &progress))
            .map_err(DeployError::CopySession)?
            .map_err(|e| DeployError::Push(Box::new(e)))?;
        if !summary.rejected.is_empty() {
            let list =
                summary.rejected.iter().map(|r| format!("{}: {}", r.path, r.message)).collect();
            return Err(DeployError::Refused { list, authorize: c.authorize });
        }
        (paths, shared, sent, wire) = (
            summary.paths_sent,
            summary.encode.paths_shared,
            summary.nar_bytes_sent,
            summary.wire_bytes,
        );
        steps.push(("copy", lap.elapsed()));
    }
    if on_this_system {
        session.end().map_err(DeployError::CopySession)?;
        return Ok(HostReport {
            success: true,
            generation: current_generation,
            paths,
            present,
            shared,
            bytes: sent,
            wire_bytes: Some(wire),
            detail: "already on this system".into(),
            steps,
            substituted,
            activated: false,
        });
    }

    // 2. Activate, confirm.
    run.options.check_interrupt("copied, not activated: the host runs what it ran before")?;
    ctx.progress.phase(&m.name, Phase::Activate);
    let r = activate(ctx, run, &link, session, m, &system).map_err(DeployError::Activate)?;
    steps.extend(r.steps);
    Ok(HostReport {
        paths,
        present,
        shared,
        bytes: sent,
        wire_bytes: Some(wire),
        steps,
        substituted,
        ..r
    })
}

/// How the host activates a system built by Nix or Guix.
pub(crate) fn switch_spec(p: &PrebuiltSystem) -> SwitchSpec {
    SwitchSpec {
        profile: p.profile.clone(),
        switch: p.switch.clone(),
        boot_switch: p.boot_switch.clone(),
    }
}

/// Ask the session to activate and answer the confirmation request (over a new connection);
/// the error text says what state the host is left in.
fn activate(
    ctx: &Ctx<'_>,
    run: &Apply<'_>,
    link: &Link,
    session: HostSession,
    m: &Machine,
    system: &str,
) -> Result<HostReport, String> {
    let c = &m.configuration;
    let say = |text: &str| ctx.progress.line(&m.name, text);
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
        switch: m.os.prebuilt.as_ref().map(switch_spec),
    };
    let mut result = None;
    let mut generation = None;
    let mut confirm_error = None;
    // Steps: `activate` up to the host's confirmation request, then `confirm` to the end.
    let started = Instant::now();
    let mut confirm_asked = None;
    let ended = session.activate(request, &mut |line| match HostLine::parse(line) {
        Some(HostLine::Generation(n)) => {
            generation = Some(n);
            say(&format!("generation {n}"));
        }
        Some(HostLine::Line(l)) => say(&l),
        Some(HostLine::Warning(w)) => say(&format!("warning: {w}")),
        Some(HostLine::Event(e)) => say(&e),
        Some(HostLine::Confirm { seconds, token }) => {
            ctx.progress.phase(&m.name, Phase::Confirm);
            ctx.progress.confirm_asked(&m.name, std::time::Duration::from_secs(seconds));
            confirm_asked = Some(Instant::now());
            if run.options.check_interrupt("").is_err() {
                say(&format!(
                    "interrupted: not confirming; the host rolls back by itself in {seconds} s"
                ));
                return;
            }
            if run.never_confirm {
                say(&format!(
                    "not confirming ({NEVER_CONFIRM_ENV}); the host rolls back in {seconds}s"
                ));
                return;
            }
            let verdict = coordinator_probes(m);
            let mut args = vec!["confirm", token.as_str()];
            if let Err(why) = &verdict {
                say(&format!("rejecting: {why}"));
                args.extend(["--reject", why.as_str()]);
            }
            match link.host_on_new_connection(&args, b"", &mut |_| {}) {
                Ok(exit) if exit.success() => {}
                Ok(exit) => confirm_error = Some(exit.describe()),
                Err(e) => confirm_error = Some(error_chain(&e)),
            }
            if let Some(e) = &confirm_error {
                say(&format!(
                    "cannot confirm over a new connection: {e}; the host rolls back in {seconds}s"
                ));
            }
        }
        Some(HostLine::Result(r)) => result = Some(r),
        None => say(line),
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
    let ended = ended.map_err(|e| format!("{}{hint}", error_chain(&e)))?;
    let Some(r) = result else {
        let how = ended.err().map_or_else(|| "exit code 0".into(), |e| error_chain(&e));
        return Err(format!("the host ended without a result ({how}){hint}"));
    };
    let mut detail = r.detail;
    if r.success && c.confirm_timeout.is_none() && detail == "activated" {
        // TCP/HTTP probes belong to confirmation; without it they only warn.
        if let Err(why) = coordinator_probes(m) {
            detail = format!("activated; warning: {why} (confirmation is off: no rollback)");
        }
    }
    let asked = confirm_asked.unwrap_or_else(Instant::now);
    let steps = vec![("activate", asked.duration_since(started)), ("confirm", asked.elapsed())];
    Ok(HostReport {
        success: r.success,
        generation: r.generation,
        detail,
        steps,
        activated: r.success,
        ..HostReport::default()
    })
}
