//! [`HostPlan`]: what a deploy does on one machine, known before anything changes there: the
//! host's facts (one round trip on the machine's session), the checks, and the paths of the
//! system's closure the host lacks with their NAR bytes. `--dry-run` reports the plans; a real
//! run executes each machine's plan on the same session (`apply`).
//!
//! Planning one machine, after its system was built into the local store:
//! 1. `facts`: system type, current generation and its provenance, the safety-check device
//!    probe, and which paths of the closure the host lacks;
//! 2. the system-type check, the safety checks, the downgrade check (the host's provenance
//!    commit must be an ancestor of ours unless `allow-downgrades`; a warning otherwise).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use closure::ValidatedClosure;
use proto::session::{DeviceSpec, Facts, FactsRequest};
use store::Store;

use crate::checks::{self, Device, Verdict};
use crate::deployment::Deployment;
use crate::deployment::Machine;
use crate::error::DeployError;
use crate::link::{HostSession, Link};
use crate::progress::DeployProgress;
use crate::progress::Phase;
use crate::system::{BuiltSystem, Provenance};
use store::StoreLayout;

/// What every machine's pipeline shares.
pub(crate) struct Ctx<'a> {
    pub layout: &'a StoreLayout,
    pub deployment: &'a Deployment,
    pub progress: &'a dyn DeployProgress,
}

/// One machine's result for the table.
#[derive(Debug, Clone, Default)]
pub struct HostReport {
    pub success: bool,
    /// The generation the host is on at the end.
    pub generation: Option<u64>,
    /// Paths sent.
    pub paths: usize,
    /// Of those, paths whose compressed stream another machine's copy made (compress once).
    pub shared: usize,
    /// NAR bytes sent.
    pub bytes: u64,
    pub detail: String,
    /// Time spent in each step.
    pub steps: Vec<(&'static str, Duration)>,
}

/// A path the host lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPath {
    /// Its logical store path.
    pub path: String,
    pub nar_size: u64,
}

/// What a deploy does on one machine.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// The system to activate (logical store path).
    pub system: String,
    /// The host's current generation (the new one gets a higher number).
    pub current_generation: Option<u64>,
    /// The host is on this system already: the run stops after the copy (if any).
    pub on_this_system: bool,
    /// The paths to copy, in closure order.
    pub to_send: Vec<PlannedPath>,
    /// Their NAR bytes.
    pub bytes: u64,
    /// What the checks warned about (they passed).
    pub warnings: Vec<String>,
    /// Time spent in each step so far.
    pub steps: Vec<(&'static str, Duration)>,
    /// The system's whole closure in the local store (what the copy offers).
    pub(crate) closure: ValidatedClosure,
}

impl HostPlan {
    /// A dry run's result: nothing changed.
    pub fn report(&self) -> HostReport {
        HostReport {
            success: true,
            generation: self.current_generation,
            paths: self.to_send.len(),
            bytes: self.bytes,
            detail: "dry run: nothing changed".into(),
            steps: self.steps.clone(),
            ..HostReport::default()
        }
    }
}

/// A plan, with the session it was made on (still open) and when its last step ended.
pub(crate) struct Planned {
    pub plan: HostPlan,
    pub link: Link,
    pub session: HostSession,
    pub lap: Instant,
}

/// The device text of a safety check, as the declaration spells it.
fn device_text(d: &Device) -> String {
    match d {
        Device::Path(p) => p.clone(),
        Device::Label(l) => format!("LABEL={l}"),
        Device::Uuid(u) => format!("UUID={u}"),
    }
}

/// Plan machine `m`'s deploy of `built`: facts and checks, on a new session.
pub(crate) fn plan_host(
    ctx: &Ctx<'_>,
    m: &Machine,
    built: &BuiltSystem,
    provenance: &Provenance,
) -> Result<Planned, DeployError> {
    let c = &m.configuration;
    let progress = ctx.progress;
    let store_dir = ctx.layout.store_dir();
    let closure = Store::open_read_only(ctx.layout.clone())
        .and_then(|store| store.closure(std::slice::from_ref(&built.path)))
        .map_err(|e| DeployError::Closure(Box::new(e)))?;

    let mut steps = Vec::new();
    let started = Instant::now();
    // 1. Facts: one round trip, on the session that also does the copy and the activation.
    progress.phase(&m.name, Phase::Connect);
    let link = Link::new(m).map_err(DeployError::Connect)?;
    let session = link.session().map_err(DeployError::Facts)?;
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
    let facts: Facts = session.facts(request).map_err(DeployError::Facts)?;
    steps.push(("facts", started.elapsed()));
    let lap = Instant::now();

    // 2. Checks.
    progress.phase(&m.name, Phase::Check);
    checks::system_type_check(&c.system, &facts.system_type).map_err(DeployError::SystemType)?;
    if !facts.safety_errors.is_empty() {
        return Err(DeployError::Safety(facts.safety_errors));
    }
    let mut warnings = Vec::new();
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
            Verdict::Warn(w) => {
                progress.line(&m.name, &format!("warning: {w}"));
                warnings.push(w);
            }
            Verdict::Refuse(r) => return Err(DeployError::Downgrade(r)),
        }
    }
    let missing: BTreeSet<&str> = facts.missing.iter().map(String::as_str).collect();
    let to_send: Vec<PlannedPath> = closure
        .iter()
        .map(|i| PlannedPath { path: i.path.to_absolute(store_dir), nar_size: i.nar_size })
        .filter(|p| missing.contains(p.path.as_str()))
        .collect();
    let plan = HostPlan {
        system: built.absolute.clone(),
        current_generation: facts.generation,
        on_this_system: facts.on_this_system,
        bytes: to_send.iter().map(|p| p.nar_size).sum(),
        to_send,
        warnings,
        steps,
        closure,
    };
    Ok(Planned { plan, link, session, lap })
}
