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
//!
//! Over SSH the agent program is found or uploaded first (with progress). A dry run never
//! uploads it: when the host lacks it, the facts come from a `sh`-only probe ([`sh_facts`]) that
//! reads the profile links, the provenance and the devices as the agent would; what it cannot
//! know is whether a path present on disk is valid in the host's database (a present path
//! counts as present), and the plan says so.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use closure::ValidatedClosure;
use proto::session::{DeviceSpec, Facts, FactsRequest, Substituted};
use store::Store;

use crate::checks::{self, Device, Verdict};
use crate::deployment::Deployment;
use crate::deployment::Machine;
use crate::error::DeployError;
use crate::link::{HostSession, Link};
use crate::progress::{CopyProgress, DeployProgress, Phase};
use crate::system::{BuiltSystem, Provenance};
use store::StoreLayout;
use transfer::transport::ssh::AgentReady;

/// What every machine's pipeline shares.
pub(crate) struct Ctx<'a> {
    pub layout: &'a StoreLayout,
    pub deployment: &'a Deployment,
    pub progress: &'a dyn DeployProgress,
    /// A dry run: nothing changes on the hosts (the agent is not uploaded).
    pub dry_run: bool,
    /// `--push-to`: the binary cache each machine's closure goes into before its facts (one
    /// writer for the run, one machine at a time: the first writes a path, the others find it
    /// there), so hosts that substitute from it find the closure.
    pub push_to: Option<&'a std::sync::Mutex<transfer::target::cache::CacheWriter>>,
}

/// One machine's result for the table.
#[derive(Debug, Clone, Default)]
pub struct HostReport {
    pub success: bool,
    /// The generation the host is on at the end.
    pub generation: Option<u64>,
    /// Paths sent (for a dry run: that would be sent).
    pub paths: usize,
    /// Paths of the closure the host had already.
    pub present: usize,
    /// Of the paths sent, those whose compressed stream another machine's copy made (compress
    /// once).
    pub shared: usize,
    /// NAR bytes of the paths sent (uncompressed, as `nix-store --dump` writes them).
    pub bytes: u64,
    /// Bytes that crossed the transport to the host (compressed frames, the handshake and the
    /// diff included); `None` for a dry run.
    pub wire_bytes: Option<u64>,
    pub detail: String,
    /// Time spent in each step.
    pub steps: Vec<(&'static str, Duration)>,
    /// What the host fetched itself from each of its `substitute-from` caches.
    pub substituted: Vec<Substituted>,
    /// This run switched the host to a new generation, confirmed (what a rollout's
    /// `--roll-back-on-failure` undoes).
    pub activated: bool,
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
    /// The host's store the copy goes to (`nix` or `ferry`, as the host chose for `store`).
    pub host_store: Option<String>,
    /// What the checks warned about (they passed).
    pub warnings: Vec<String>,
    /// Time spent in each step so far.
    pub steps: Vec<(&'static str, Duration)>,
    /// A dry run on a host without the agent: its size, which a real run uploads first (the
    /// facts then came from a `sh`-only probe).
    pub agent_upload: Option<u64>,
    /// The system's whole closure in the local store (what the copy offers).
    pub(crate) closure: ValidatedClosure,
    /// What the host fetched itself from its `substitute-from` caches (before `to_send` was
    /// made).
    pub substituted: Vec<Substituted>,
}

impl HostPlan {
    /// A dry run's result: nothing changed.
    pub fn report(&self) -> HostReport {
        HostReport {
            success: true,
            generation: self.current_generation,
            paths: self.to_send.len(),
            present: self.closure.len() - self.to_send.len(),
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
    /// `None` only for a dry run on a host without the agent (facts from `sh`).
    pub session: Option<HostSession>,
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
    // 0. `--push-to`: the closure into the binary cache first.
    if let Some(cache) = ctx.push_to {
        let started = Instant::now();
        let writer = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let physical: Vec<_> =
            closure.iter().map(|i| (i, ctx.layout.physical_path(&i.path))).collect();
        writer
            .write_paths(&physical, &mut |_| {})
            .map_err(|e| DeployError::PushTo(Box::new(e.into())))?;
        steps.push(("push-to", started.elapsed()));
    }
    let started = Instant::now();
    // 1. Facts: one round trip, on the session that also does the copy and the activation.
    progress.phase(&m.name, Phase::Connect);
    let link = Link::new(m).map_err(DeployError::Connect)?;
    let upload_progress = CopyProgress { host: &m.name, progress };
    let ready = link.prepare_agent(ctx.dry_run, &upload_progress).map_err(DeployError::Facts)?;
    let agent_upload = match ready {
        Some(AgentReady::WouldUpload { bytes }) => Some(bytes),
        _ => None,
    };
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
        profile: m.os.prebuilt.as_ref().map(|p| p.profile.clone()),
        host_store: Some(m.configuration.host_store.name().to_owned()),
        // A real run only: a dry run changes nothing on the host.
        substitute_from: if ctx.dry_run { Vec::new() } else { c.substitute_from.clone() },
    };
    let (session, facts) = match agent_upload {
        Some(bytes) => {
            progress.line(
                &m.name,
                &format!(
                    "would upload the agent ({:.1} MiB); facts from a sh-only probe (paths on \
                     disk count as present)",
                    bytes as f64 / f64::from(1 << 20)
                ),
            );
            (None, sh_facts(&link, m, &request)?)
        }
        None => {
            let session = link.session().map_err(DeployError::Facts)?;
            let facts = session.facts(request).map_err(DeployError::Facts)?;
            (Some(session), facts)
        }
    };
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
        host_store: facts.store.clone(),
        to_send,
        warnings,
        steps,
        agent_upload,
        closure,
        substituted: facts.substituted.clone(),
    };
    for s in &plan.substituted {
        for reason in &s.refused {
            progress.line(&m.name, &format!("{}: refused: {reason}", s.cache));
        }
    }
    Ok(Planned { plan, link, session, lap })
}

/// The `sh`-only facts probe: `$1` the host root (empty for `/`), `$2` the system to deploy;
/// stdin: the closure's paths, one a line; then the device probe.
const SH_FACTS: &str = r#"r=${1%/}
echo "arch $(uname -m)"
p="$r/var/ferry/profiles"
if t=$(readlink "$p/system" 2>/dev/null); then
  t=${t##*/}; echo "profile $t"
  if s=$(readlink "$p/$t" 2>/dev/null); then
    case "$s" in /*) ;; *) s="$p/$s";; esac
    echo "system $s"
    case "$s" in "$r"/*) h=$s;; *) h=$r$s;; esac
    [ -f "$h/provenance" ] && echo "provenance $(od -An -v -tx1 "$h/provenance" | tr -d ' \n')"
  fi
fi
while IFS= read -r x; do [ -e "$r$x" ] || [ -L "$r$x" ] || echo "missing $x"; done
echo devices
FERRY_ROOT=$r; export FERRY_ROOT
"#;

/// Machine `m`'s facts from `sh` alone (module doc): a dry run on a host without the agent.
fn sh_facts(link: &Link, m: &Machine, request: &FactsRequest) -> Result<Facts, DeployError> {
    let checks: Vec<checks::DeviceCheck> = request
        .devices
        .iter()
        .map(|d| checks::DeviceCheck {
            device: Device::parse(&d.device),
            mount_point: d.mount_point.clone(),
        })
        .collect();
    let script = format!("{SH_FACTS}{}", checks::probe_script(&checks));
    let root = m.configuration.root.display().to_string();
    let root = if root == "/" { String::new() } else { root };
    let system = request.system.clone().unwrap_or_default();
    let stdin: String = request.paths.iter().map(|p| format!("{p}\n")).collect();
    let out = link
        .sh(&script, &[root.clone(), system.clone()], stdin.as_bytes())
        .map_err(DeployError::Facts)?
        .unwrap_or_default();
    let (head, devices) = out.split_once("\ndevices\n").unwrap_or((&out, ""));
    let mut facts = Facts::default();
    let mut arch = String::new();
    for line in head.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "arch" => arch = rest.trim().to_owned(),
            "profile" => {
                facts.generation = rest
                    .strip_prefix("system-")
                    .and_then(|n| n.strip_suffix("-link"))
                    .and_then(|n| n.parse().ok())
            }
            "system" => facts.current_system = Some(rest.to_owned()),
            "provenance" => {
                let hex = rest.trim().as_bytes();
                let bytes: Option<Vec<u8>> = hex
                    .chunks(2)
                    .map(|c| {
                        std::str::from_utf8(c).ok().and_then(|c| u8::from_str_radix(c, 16).ok())
                    })
                    .collect();
                facts.provenance = bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
            }
            "missing" => facts.missing.push(rest.to_owned()),
            _ => {}
        }
    }
    facts.system_type = format!("{arch}-linux");
    facts.on_this_system = facts
        .current_system
        .as_deref()
        .is_some_and(|cur| cur == system || cur == format!("{root}{system}"));
    facts.safety_errors =
        checks::evaluate(&checks, devices).iter().map(ToString::to_string).collect();
    Ok(facts)
}
