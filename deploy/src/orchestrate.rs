//! The deploy run: every selected machine's pipeline, in parallel, each with its own result.
//!
//! One pipeline for both environments (`local` roots and `managed-host` machines over SSH),
//! through a [`Link`] per machine: the steps on the host are requests of one `ferry host
//! session` per machine (see [`proto::session`]): facts, copy and activation share one
//! process and one channel.
//!
//! - [`deploy`]: one thread builds the machines' systems into the local store in machine order
//!   (one writer); each machine's pipeline starts as soon as its own system is there, makes
//!   its [`HostPlan`] ([`crate::plan`]) and executes it (`apply`).
//! - [`deploy_rollout`]: the same in waves ([`crate::rollout`]): a wave starts when every
//!   machine of the previous one is activated and confirmed healthy; the first failure stops
//!   the run (and, if asked, rolls back every machine the run activated).
//! - [`dry_run`]: the same up to the plans, which it returns; nothing changes on the hosts.
//! - [`roll_back`], [`execute`] (`-x`), [`list_generations`]: one `ferry host` command each.
//!
//! Machines run in parallel (`jobs` at a time); one machine's failure never stops the others
//! unless `fail_fast`. Progress goes to a [`DeployProgress`]; errors name the step.
//!
//! **Interrupts.** Once [`Options::interrupt`] is set (the front end's first Ctrl-C) the run
//! starts no new work: no machine not yet started, no copy not yet started, no activation, no
//! confirmation (a host waiting for one rolls back by itself at its deadline); the steps under
//! way end as they would. Each machine so stopped ends with [`DeployError::Interrupted`].

pub use std::sync::atomic::AtomicBool as InterruptFlag;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::session::{GenerationInfo, HostLine};
use signing::guix::SigningKey;
use store::{Store, StoreLayout};
use transfer::push::frame_cache::FrameCache;

pub use crate::apply::NEVER_CONFIRM_ENV;
use crate::apply::{apply, Apply};
use crate::deployment::{Deployment, Machine};
use crate::error::error_chain;
use crate::error::DeployError;
use crate::fanout::{FanOut, Gate};
use crate::link::Link;
use crate::plan::{plan_host, Ctx, HostPlan, HostReport, Planned};
use crate::progress::{DeployProgress, Phase};
use crate::rollout::{Rollout, WavePlan};
use crate::system::{self, BuiltSystem, Provenance};

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Machines worked on at the same time.
    pub jobs: usize,
    /// Start no further machine after the first failure.
    pub fail_fast: bool,
    /// Never confirm an activation ([`NEVER_CONFIRM_ENV`]).
    pub never_confirm: bool,
    /// Set to stop starting new work (module docs, "Interrupts").
    pub interrupt: Arc<AtomicBool>,
    /// A binary cache (`s3://`, `file://`) each machine's closure is put into before its copy
    /// (`--push-to`): one writer for the run, so a path is written once whatever the machines.
    pub push_to: Option<String>,
    /// `--fan-out K`: copy through relay trees of `K` children per host ([`crate::fanout`]);
    /// without it, the machines' `via` make the trees.
    pub fan_out: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 8,
            fail_fast: false,
            never_confirm: false,
            interrupt: Arc::default(),
            push_to: None,
            fan_out: None,
        }
    }
}

impl Options {
    /// `Err(Interrupted(what))` once the run was interrupted.
    pub(crate) fn check_interrupt(&self, what: &'static str) -> Result<(), DeployError> {
        if self.interrupt.load(Ordering::SeqCst) {
            Err(DeployError::Interrupted(what))
        } else {
            Ok(())
        }
    }
}

/// What a run got from one machine, and how long its pipeline took.
#[derive(Debug)]
pub struct HostRun<T> {
    pub result: Result<T, DeployError>,
    pub elapsed: Duration,
}

/// What `-x` got from one machine.
#[derive(Debug, Clone)]
pub struct ExecReport {
    /// The command's exit code (`None`: killed by a signal).
    pub code: Option<i32>,
}

/// Run `work` for every machine, `jobs` at a time; results in machine order. `ok` says
/// whether a result counts as a success (for `fail_fast`).
fn for_each_machine<T: Send>(
    machines: &[&Machine],
    options: &Options,
    ok: fn(&T) -> bool,
    work: &(dyn Fn(usize, &Machine) -> Result<T, DeployError> + Sync),
) -> Vec<HostRun<T>> {
    let slots: Vec<Mutex<Option<HostRun<T>>>> = machines.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(machines.len()).max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(m) = machines.get(i) else { break };
                let run = if options.fail_fast && failed.load(Ordering::SeqCst) {
                    HostRun { result: Err(DeployError::Skipped), elapsed: Duration::ZERO }
                } else if let Err(e) = options.check_interrupt("not started") {
                    HostRun { result: Err(e), elapsed: Duration::ZERO }
                } else {
                    let start = Instant::now();
                    let result = work(i, m);
                    HostRun { result, elapsed: start.elapsed() }
                };
                if !run.result.as_ref().is_ok_and(ok) {
                    failed.store(true, Ordering::SeqCst);
                }
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
            });
        }
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner()).expect("every machine ran"))
        .collect()
}

/// Build every machine's system (one thread, machine order) while each machine's pipeline
/// waits for its own and then runs `then` on its plan.
fn pipelines<T: Send>(
    ctx: &Ctx<'_>,
    machines: &[&Machine],
    options: &Options,
    ok: fn(&T) -> bool,
    gate: Option<(&Gate<'_>, &Apply<'_>)>,
    then: &(dyn Fn(usize, &Machine, Planned) -> Result<T, DeployError> + Sync),
) -> Result<Vec<HostRun<T>>, DeployError> {
    let started = Instant::now();
    // ferry's builder writes to the local store; systems built elsewhere are only read there
    // (a Nix or Guix store is never written).
    let open = if machines.iter().all(|m| m.os.prebuilt.is_some()) {
        Store::open_read_only
    } else {
        Store::open
    };
    let mut store = open(ctx.layout.clone()).map_err(|e| DeployError::LocalStore(Box::new(e)))?;
    let built = Slots::new(machines.len());
    let progress = ctx.progress;
    Ok(std::thread::scope(|scope| {
        scope.spawn(|| {
            let _close = CloseOnDrop(&built);
            let mut added = system::AddedPackages::default();
            // git runs once for the file; each machine adds its declaration's name.
            let provenance = Provenance::of_file(&ctx.deployment.file, None);
            let mut succeeded = 0;
            for (i, m) in machines.iter().enumerate() {
                let provenance =
                    Provenance { declaration: m.declaration.clone(), ..provenance.clone() };
                let result = match &m.os.prebuilt {
                    Some(prebuilt) => system::prebuilt(&store, prebuilt),
                    None => system::build_with(&mut store, &m.os, &provenance, &mut added),
                }
                .map_err(|source| DeployError::Build { machine: m.name.clone(), source });
                if let Ok(system) = &result {
                    progress.line(&m.name, &format!("system {}", system.absolute));
                    succeeded += 1;
                }
                built.put(i, result.map(|system| (system, provenance)));
            }
            // Only the systems that were built: failed builds are each machine's error.
            progress.built(succeeded, started.elapsed());
        });
        for_each_machine(machines, options, ok, &|i, m| {
            progress.start(&m.name);
            progress.phase(&m.name, Phase::Build);
            let planned = built
                .take(i)
                .and_then(|(system, provenance)| plan_host(ctx, m, &system, &provenance));
            if let Some((gate, run)) = gate {
                gate.arrive(ctx, run, i, planned.as_ref().ok().map(|p| &p.plan));
            }
            let r = planned.and_then(|planned| then(i, m, planned));
            match &r {
                Ok(r) => progress.done(&m.name, ok(r)),
                Err(e) => {
                    progress.error(&m.name, e);
                    progress.done(&m.name, false);
                }
            }
            r
        })
    }))
}

/// Deploy: build, plan, copy and activate every machine's system (see the module doc); the
/// copies are signed with `key`. `Err` only when the local store cannot be opened.
pub fn deploy(
    deployment: &Deployment,
    machines: &[&Machine],
    layout: &StoreLayout,
    key: &SigningKey,
    options: &Options,
    progress: &dyn DeployProgress,
) -> Result<Vec<HostRun<HostReport>>, DeployError> {
    let push_to = push_to_writer(options, layout)?;
    let ctx = Ctx { layout, deployment, progress, dry_run: false, push_to: push_to.as_ref() };
    let run = apply_run(key, machines.len(), options);
    deploy_with(&ctx, &run, machines, options)
}

/// `--push-to`: the one cache writer of the run, if any.
fn push_to_writer(
    options: &Options,
    layout: &StoreLayout,
) -> Result<Option<std::sync::Mutex<transfer::target::cache::CacheWriter>>, DeployError> {
    let Some(uri) = &options.push_to else { return Ok(None) };
    let level = transfer::target::cache::DEFAULT_ZSTD_LEVEL;
    let (writer, _) = transfer::target::cache_writer(uri, layout, level)
        .map_err(|e| DeployError::PushTo(Box::new(e)))?;
    Ok(Some(std::sync::Mutex::new(writer)))
}

/// What a real run shares: the key, the compress-once cache over `machines` machines, and
/// the options (whether the run was interrupted).
fn apply_run<'a>(key: &'a SigningKey, machines: usize, options: &'a Options) -> Apply<'a> {
    // Compress once: each path's zstd stream is made by the first machine's session that
    // sends it and copied by the others (all at the same level, so they share).
    let frame_cache = (machines > 1).then(|| Arc::new(FrameCache::new(machines)));
    Apply { key, frame_cache, never_confirm: options.never_confirm, options }
}

fn deploy_with(
    ctx: &Ctx<'_>,
    run: &Apply<'_>,
    machines: &[&Machine],
    options: &Options,
) -> Result<Vec<HostRun<HostReport>>, DeployError> {
    let how = options
        .fan_out
        .map(FanOut::Trees)
        .or_else(|| machines.iter().any(|m| m.configuration.via.is_some()).then_some(FanOut::Via));
    let Some(how) = how.filter(|h| machines.len() > 1 || *h == FanOut::Via) else {
        return pipelines(ctx, machines, options, |r: &HostReport| r.success, None, &|_, m, p| {
            apply(ctx, run, m, p)
        });
    };
    // Relays: every machine plans, then the trees copy, then every machine applies its plan
    // (crate::fanout); all machines run at once so that they meet, and none is skipped
    // (`fail_fast` would leave the others waiting for it).
    let gate = Gate::new(machines, &ctx.deployment.relays, how);
    let jobs = options.jobs.max(machines.len());
    let options = Options { jobs, fail_fast: false, ..options.clone() };
    let ok = |r: &HostReport| r.success;
    pipelines(ctx, machines, &options, ok, Some((&gate, run)), &|i, m, planned| {
        let mut report = apply(ctx, run, m, planned)?;
        if let Some(note) = gate.note(i) {
            report.detail = format!("{}; {note}", report.detail);
        }
        Ok(report)
    })
}

/// What a staged rollout did ([`deploy_rollout`]).
#[derive(Debug)]
pub struct RolloutRun {
    /// Per machine, in selection order; the machines of waves that never started have
    /// [`DeployError::NotStarted`].
    pub runs: Vec<HostRun<HostReport>>,
    /// The waves the machines were in.
    pub waves: WavePlan,
    /// The wave (1-based) whose failure stopped the run.
    pub stopped_by: Option<usize>,
    /// The machines (indices) of that wave that failed.
    pub failed: Vec<usize>,
    /// The machines (indices) `--roll-back-on-failure` returned to their previous generation.
    pub rolled_back: Vec<usize>,
}

/// [`deploy`] in waves (see [`crate::rollout`]): each wave is a deploy of its machines (in
/// parallel, `jobs` at a time); the next starts only when every machine of this one succeeded,
/// that is activated and confirmed healthy. The first wave with a failure stops the run; with
/// `roll_back_on_failure` every machine this run activated then returns to its previous
/// generation. The compress-once cache spans the waves.
#[allow(clippy::too_many_arguments)]
pub fn deploy_rollout(
    deployment: &Deployment,
    machines: &[&Machine],
    layout: &StoreLayout,
    key: &SigningKey,
    options: &Options,
    rollout: &Rollout,
    roll_back_on_failure: bool,
    progress: &dyn DeployProgress,
) -> Result<RolloutRun, DeployError> {
    let push_to = push_to_writer(options, layout)?;
    let ctx = Ctx { layout, deployment, progress, dry_run: false, push_to: push_to.as_ref() };
    let run = apply_run(key, machines.len(), options);
    let waves = rollout.waves(machines.len());
    let mut runs: Vec<HostRun<HostReport>> = Vec::with_capacity(machines.len());
    let mut stopped_by = None;
    let mut failed = Vec::new();
    for range in waves.waves() {
        if let Some(wave) = stopped_by {
            runs.extend(range.clone().map(|_| HostRun {
                result: Err(DeployError::NotStarted { wave }),
                elapsed: Duration::ZERO,
            }));
            continue;
        }
        runs.extend(deploy_with(&ctx, &run, &machines[range.clone()], options)?);
        let ok: Vec<bool> =
            runs.iter().map(|r| r.result.as_ref().is_ok_and(|r| r.success)).collect();
        stopped_by = waves.stopped_by(&ok);
        failed = range.clone().filter(|&i| !ok[i]).collect();
    }
    let mut rolled_back = Vec::new();
    if stopped_by.is_some() && roll_back_on_failure {
        let activated: Vec<usize> = (0..runs.len())
            .filter(|&i| runs[i].result.as_ref().is_ok_and(|r| r.activated))
            .collect();
        let back: Vec<&Machine> = activated.iter().map(|&i| machines[i]).collect();
        for (i, undo) in activated.into_iter().zip(roll_back(&back, options, progress)) {
            let Ok(report) = &mut runs[i].result else { continue };
            let was = report.generation.map_or_else(|| "-".into(), |g| g.to_string());
            report.success = false;
            report.steps.push(("roll back", undo.elapsed));
            match undo.result {
                Ok(r) if r.success => {
                    report.generation = r.generation;
                    report.activated = false;
                    report.detail = format!(
                        "activated generation {was}, then rolled back (--roll-back-on-failure): {}",
                        r.detail
                    );
                    rolled_back.push(i);
                }
                Ok(r) => {
                    report.detail = format!(
                        "activated generation {was}; roll back (--roll-back-on-failure) failed: {}",
                        r.detail
                    )
                }
                Err(e) => {
                    report.detail = format!(
                        "activated generation {was}; roll back (--roll-back-on-failure) failed: {}",
                        error_chain(&e)
                    )
                }
            }
        }
    }
    Ok(RolloutRun { runs, waves, stopped_by, failed, rolled_back })
}

/// Dry run: build every machine's system and plan its deploy (the hosts' facts and the
/// checks); change nothing on the hosts.
pub fn dry_run(
    deployment: &Deployment,
    machines: &[&Machine],
    layout: &StoreLayout,
    options: &Options,
    progress: &dyn DeployProgress,
) -> Result<Vec<HostRun<HostPlan>>, DeployError> {
    let ctx = Ctx { layout, deployment, progress, dry_run: true, push_to: None };
    pipelines(&ctx, machines, options, |_| true, None, &|_, _, planned| {
        if let Some(session) = planned.session {
            session.end().map_err(DeployError::EndSession)?;
        }
        Ok(planned.plan)
    })
}

/// Return every machine to its previous generation (profile, activate, services).
pub fn roll_back(
    machines: &[&Machine],
    options: &Options,
    progress: &dyn DeployProgress,
) -> Vec<HostRun<HostReport>> {
    for_each_machine(machines, options, |r| r.success, &|_, m| {
        progress.start(&m.name);
        let r = roll_back_one(m, progress);
        match &r {
            Ok(r) => progress.done(&m.name, r.success),
            Err(e) => {
                progress.error(&m.name, e);
                progress.done(&m.name, false);
            }
        }
        r
    })
}

fn roll_back_one(m: &Machine, progress: &dyn DeployProgress) -> Result<HostReport, DeployError> {
    let link = Link::new(m).map_err(DeployError::RollBack)?;
    let mut args = vec!["roll-back"];
    if let Some(p) = &m.os.prebuilt {
        args.extend(["--profile", p.profile.as_str()]);
        args.extend(p.switch.iter().flat_map(|a| ["--switch", a.as_str()]));
        let boot = p.boot_switch.iter().flatten();
        args.extend(boot.flat_map(|a| ["--boot-switch", a.as_str()]));
    }
    let mut result = None;
    let exit = link
        .host(&args, b"", &mut |line| match HostLine::parse(line) {
            Some(HostLine::Result(r)) => result = Some(r),
            Some(HostLine::Line(l)) => progress.line(&m.name, &l),
            _ => progress.line(&m.name, line),
        })
        .map_err(DeployError::RollBack)?;
    let r = result.ok_or_else(|| DeployError::RollBackEnded(exit.describe()))?;
    Ok(HostReport {
        success: r.success,
        generation: r.generation,
        detail: r.detail,
        ..HostReport::default()
    })
}

/// Which stream of a `-x` command a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Its stdout (and its stderr, as they come, unless `split_stderr`).
    Output,
    /// What the agent program printed on stderr, and with `split_stderr` the command's stderr
    /// (after the command ended).
    Stderr,
}

/// `-x`: run `command` on every machine in parallel (in its root, with its current system's
/// `profile/bin` first on `PATH`); each line goes to `line(machine, stream, text)`. With
/// `split_stderr` the command's stderr comes apart from its stdout (after it ended).
pub fn execute(
    machines: &[&Machine],
    command: &[String],
    jobs: usize,
    split_stderr: bool,
    line: &(dyn Fn(&str, Stream, &str) + Sync),
) -> Vec<HostRun<ExecReport>> {
    let mut args = vec!["exec"];
    if split_stderr {
        args.push("--split-stderr");
    }
    args.push("--");
    args.extend(command.iter().map(String::as_str));
    let options = Options { jobs, ..Options::default() };
    for_each_machine(machines, &options, |r| r.code == Some(0), &|_, m| {
        let link = Link::new(m)?;
        let exit = link.host(&args, b"", &mut |l| line(&m.name, Stream::Output, l))?;
        for l in exit.stderr.trim().lines() {
            line(&m.name, Stream::Stderr, l);
        }
        Ok(ExecReport { code: exit.code })
    })
}

/// Every machine's generations.
pub fn list_generations(machines: &[&Machine], jobs: usize) -> Vec<HostRun<Vec<GenerationInfo>>> {
    let options = Options { jobs, ..Options::default() };
    for_each_machine(machines, &options, |_| true, &|_, m| {
        let mut args = vec!["generations", "--json"];
        if let Some(p) = &m.os.prebuilt {
            args.extend(["--profile", p.profile.as_str()]);
        }
        Ok(Link::new(m)?.host_json(&args, &())?)
    })
}

/// A machine's built system and its provenance, or why it could not be built.
type Built = Result<(BuiltSystem, Provenance), DeployError>;

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

    fn lock(&self) -> MutexGuard<'_, (Vec<Option<Built>>, usize)> {
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
            *slot = Some(Err(DeployError::BuildStopped));
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
        state.0[i].take().expect("each machine's system is taken once")
    }
}

/// Closes the slots when the builder ends, however it ends.
struct CloseOnDrop<'a>(&'a Slots);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkError;

    #[test]
    fn errors_name_the_step_and_chain_their_causes() {
        let refused =
            DeployError::Refused { list: vec!["/gnu/store/a: no".into()], authorize: false };
        assert_eq!(
            refused.to_string(),
            "copy: the host refused 1 path(s): /gnu/store/a: no (set `authorize = true` to add \
             this machine's signing key to its ACL)"
        );
        let safety = DeployError::Safety(vec!["a".into(), "b".into()]);
        assert_eq!(
            safety.to_string(),
            "safety checks failed: a; b (set `safety-checks = false` to skip them)"
        );
        let facts = DeployError::Facts(LinkError::Session("h: ferry host session: gone".into()));
        assert_eq!(error_chain(&facts), "connect and facts: h: ferry host session: gone");
    }

    #[test]
    fn fail_fast_skips_the_machines_after_a_failure() {
        let m = |n: &str| {
            format!(
                "[[machine]]\nname = \"{n}\"\nenvironment = \"local\"\n\
                 [machine.operating-system]\n"
            )
        };
        let file = m("a") + &m("b");
        let d = Deployment::parse(std::path::Path::new("/d.toml"), &file, &|_| Some("/h".into()))
            .unwrap();
        let machines = d.select(None).unwrap();
        let options = Options { jobs: 1, fail_fast: true, ..Options::default() };
        let runs = for_each_machine(&machines, &options, |ok: &bool| *ok, &|i, _| Ok(i != 0));
        assert!(matches!(runs[0].result, Ok(false)));
        assert!(matches!(runs[1].result, Err(DeployError::Skipped)));
    }
}
