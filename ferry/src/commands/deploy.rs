//! `ferry deploy FILE`: build each selected machine's system, copy it to the machine and
//! activate it there; or list generations, roll back, run a command (`-x`), or print what
//! would be copied (`--dry-run`).
//!
//! Glue: the arguments, the deployment file and the local store's key here; the run is
//! [`deploy::orchestrate`]'s (machines in parallel, `-j`, default 8; one machine's failure
//! never stops the others unless `--fail-fast`), its progress rendered by [`Board`] (one line
//! per machine). The run ends with a table (or `--json`) and exits 0 only if every selected
//! machine succeeded. Errors name the machine and the step.
//!
//! `--rollout 1,25%,100%` (or the file's `rollout`) deploys in waves ([`deploy::rollout`]): the
//! table and `--json` give each machine's wave and a line (`rollout`) on why the run stopped;
//! `--roll-back-on-failure` returns the machines the run activated when it fails.
//! `--fan-out K` (or the machines' `via`) copies through relays ([`deploy::fanout`]); each
//! machine's detail says how its copy went.
//!
//! `-x -- CMD ARGS...` runs a command on every selected machine in parallel (in its root, with
//! its current system's `profile/bin` first on `PATH`); output lines are prefixed with the
//! machine as they come (with `--json`, collected per machine, stdout and stderr apart). `-x`
//! without a command, or `--` without `-x`, is a usage error (exit 2, checked in `main`).
//! `--dry-run` prints each machine's plan: the paths the host lacks and their NAR bytes (on
//! stdout; on stderr with `--json`, whose stdout is the JSON only); with `--roll-back`, the
//! generation each machine would return to. What is printed at the end, and every JSON shape,
//! is [`crate::output::deploy`]'s.
//!
//! Ctrl-C during a run: the first starts no new work and prints each machine's state (a host
//! waiting for confirmation is not confirmed and rolls back by itself); the run then ends with
//! exit code 130. The second exits at once (130).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use signal_hook::consts::SIGINT;
use signal_hook::iterator::Signals;
use store::{LayoutOptions, StoreLayout};

use crate::output::deploy::ExecOutput;
use crate::output::progress::{Board, Lines};
use crate::output::{self, Printer};
use crate::settings::GlobalOpts;
use deploy::deployment::{Deployment, Machine, StoreChoice};
use deploy::orchestrate::{self, HostRun, Options, Stream};
use deploy::rollout::{Rollout, Step};

/// `ferry deploy` arguments.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Deployment file (TOML; docs/deployment.md, examples/demo.toml).
    pub file: PathBuf,
    /// Machines to act on: names, @tags and globs (`web*`, `db?`), comma-separated (default:
    /// all).
    #[arg(long, value_name = "NAME|@TAG|GLOB,...")]
    pub on: Option<String>,
    /// Print per machine what would be copied (paths and bytes), or with --roll-back the
    /// generation each would return to; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// List each machine's generations.
    #[arg(long, conflicts_with_all = ["dry_run", "roll_back"])]
    pub list_generations: bool,
    /// Return each machine to its previous generation (profile, activate, services).
    #[arg(short = 'r', long)]
    pub roll_back: bool,
    /// Machines worked on at the same time (each its own pipeline).
    #[arg(short = 'j', long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// Start no further machine after the first failure (default: keep going).
    #[arg(long)]
    pub fail_fast: bool,
    /// Deploy in waves: cumulative steps, each a host count or a percentage of the selected
    /// machines (e.g. 1,25%,100%); a wave starts when every machine of the previous one is
    /// activated and confirmed healthy, the first failure stops the run (default: the file's
    /// `rollout`, else one wave).
    #[arg(long, value_name = "STEPS", conflicts_with_all = ["dry_run", "roll_back", "list_generations", "execute"])]
    pub rollout: Option<Rollout>,
    /// Copy through relays: each host feeds up to K others (trees of at most three tiers,
    /// in file order), so the coordinator's link carries each path once per tree; hosts a
    /// relay did not serve are copied directly (default: the machines' `via`, else direct).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..), conflicts_with_all = ["roll_back", "list_generations", "execute"])]
    pub fan_out: Option<u32>,
    /// When the run stops on a failure, return every machine it activated to its previous
    /// generation (default: finished waves stay).
    #[arg(long, conflicts_with_all = ["dry_run", "roll_back", "list_generations", "execute"])]
    pub roll_back_on_failure: bool,
    /// Print the result table as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Put each machine's closure into this binary cache (`s3://BUCKET?…`, `file:///DIR`)
    /// first, narinfos signed with the local Nix key; then deploy as usual.
    #[arg(long, value_name = "URI", conflicts_with_all = ["dry_run", "roll_back", "list_generations", "execute"])]
    pub push_to: Option<String>,
    /// Run the command after `--` on every selected machine in parallel (as `guix deploy -x`);
    /// each output line is prefixed with the machine; exit 0 only if it exited 0 everywhere.
    #[arg(short = 'x', long, conflicts_with_all = ["dry_run", "roll_back", "list_generations"])]
    pub execute: bool,
    /// The command for `-x`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl DeployArgs {
    /// What clap's declarations cannot say: `-x` and `--` go together (exit 2, as guix
    /// deploy's messages).
    pub fn usage_error(&self) -> Option<(clap::error::ErrorKind, String)> {
        use clap::error::ErrorKind;
        match (self.execute, self.command.is_empty()) {
            (true, true) => Some((
                ErrorKind::MissingRequiredArgument,
                "'-x' specified but no command given: put it after --, as in \
                 ferry deploy FILE -x -- uname -a"
                    .into(),
            )),
            (false, false) => Some((
                ErrorKind::ArgumentConflict,
                "'--' was used, but '-x' was not specified".into(),
            )),
            _ => None,
        }
    }
}

/// Run `ferry deploy`.
pub fn run(global: &GlobalOpts, printer: Printer, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let printer = printer.with_json(args.json);
    // A store path in the file must be in the deployment's store: the file's `store`, else
    // `--store`, else ferry's own store as the options resolve it.
    let ferry_store_dir = crate::settings::layout(global)
        .map_or_else(|_| nar_core::store_path::StoreDir::guix(), |l| l.store_dir().clone());
    let choice = StoreChoice { kind: global.store, ferry_store_dir };
    let deployment = Deployment::load_with(&args.file, &choice)?;
    for warning in &deployment.warnings {
        eprintln!("ferry: {warning}");
    }
    let machines = deployment.select(args.on.as_deref())?;
    let jobs = args.jobs as usize;
    if args.list_generations {
        let results = orchestrate::list_generations(&machines, jobs);
        let ok = output::deploy::generations(printer, &machines, results)?;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    if args.execute {
        return execute(printer, &machines, &args.command, jobs);
    }
    if args.roll_back && args.dry_run {
        let results = orchestrate::list_generations(&machines, jobs);
        let ok = output::deploy::roll_back_plans(printer, &machines, results)?;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let layout = StoreLayout::resolve(&LayoutOptions {
        store: deployment.store,
        ..crate::settings::layout_options(global)
    })?;
    let verb = if args.roll_back {
        "rolled back"
    } else if args.dry_run {
        "deployed (dry run)"
    } else {
        "deployed"
    };
    note!(
        "The following {} machine(s) will be {verb}: {}",
        machines.len(),
        machines.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let started = Instant::now();
    let options = Options {
        jobs,
        fail_fast: args.fail_fast,
        never_confirm: std::env::var_os(orchestrate::NEVER_CONFIRM_ENV).is_some(),
        push_to: args.push_to.clone(),
        fan_out: args.fan_out.map(|k| k as usize),
        ..Options::default()
    };
    let board = Board::new(printer, if args.roll_back { "rolled back" } else { "ok" });
    let signals = on_interrupt(options.interrupt.clone(), board.lines())?;
    let mut plans = None;
    let mut rollout_run = None;
    let results = if args.roll_back {
        orchestrate::roll_back(&machines, &options, &board)
    } else if args.dry_run {
        let made = orchestrate::dry_run(&deployment, &machines, &layout, &options, &board)?;
        output::deploy::plans(printer, &machines, &made)?;
        // Each machine's report for the table, and its plan for the JSON.
        let (results, made): (Vec<_>, Vec<_>) = made
            .into_iter()
            .map(|HostRun { result, elapsed }| match result {
                Ok(plan) => (HostRun { result: Ok(plan.report()), elapsed }, Some(plan)),
                Err(e) => (HostRun { result: Err(e), elapsed }, None),
            })
            .unzip();
        plans = Some(made);
        results
    } else {
        let (key, generated) = transfer::trust::load_or_generate_key(layout.state_dir())
            .context("cannot load or generate the signing key")?;
        if let Some(dir) = generated {
            note!(
                "ferry: generated a signing key pair in {} (signing-key.sec, signing-key.pub); \
                 machines with `authorize = true` (the default) get it added to their ACL",
                dir.display()
            );
        }
        let rollout = args.rollout.clone().or_else(|| deployment.rollout.clone());
        if rollout.is_some() || args.roll_back_on_failure {
            let rollout = rollout.unwrap_or_else(|| {
                Rollout::new(vec![Step::Percent(100)]).expect("one step is a rollout")
            });
            let waves = rollout.waves(machines.len());
            if waves.waves().len() > 1 {
                for (w, range) in waves.waves().iter().enumerate() {
                    let names: Vec<&str> =
                        machines[range.clone()].iter().map(|m| m.name.as_str()).collect();
                    board.lines().note(&format!(
                        "wave {} of {}: {}",
                        w + 1,
                        waves.waves().len(),
                        names.join(", ")
                    ));
                }
            }
            let mut run = orchestrate::deploy_rollout(
                &deployment,
                &machines,
                &layout,
                &key,
                &options,
                &rollout,
                args.roll_back_on_failure,
                &board,
            )?;
            let results = std::mem::take(&mut run.runs);
            rollout_run = Some(run);
            results
        } else {
            orchestrate::deploy(&deployment, &machines, &layout, &key, &options, &board)?
        }
    };
    let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    signals.close();
    board.lines().finish_all();
    let ok = output::deploy::report(
        printer,
        &names,
        &results,
        plans.as_deref(),
        rollout_run.as_ref(),
        started.elapsed(),
    )?;
    Ok(if options.interrupt.load(Ordering::SeqCst) {
        ExitCode::from(INTERRUPTED)
    } else if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The exit code of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
const INTERRUPTED: u8 = 130;

/// Ctrl-C during a run: the first sets `interrupt` (the run starts no new work, see
/// `deploy::orchestrate`) and prints each machine's state; the second exits at once.
fn on_interrupt(
    interrupt: Arc<AtomicBool>,
    lines: Arc<Lines>,
) -> anyhow::Result<signal_hook::iterator::Handle> {
    let mut signals = Signals::new([SIGINT]).context("cannot handle Ctrl-C")?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if interrupt.swap(true, Ordering::SeqCst) {
                eprintln!("\nferry: interrupted again: aborting");
                std::process::exit(INTERRUPTED.into());
            }
            lines.note("ferry: interrupted: starting no new work (Ctrl-C again to abort now)");
            for state in lines.states() {
                lines.note(&state);
            }
        }
    });
    Ok(handle)
}

/// `-x -- CMD ARGS...`: run on every machine in parallel, output prefixed with the machine
/// as it comes (with `--json`, collected into the JSON document).
fn execute(
    printer: Printer,
    machines: &[&Machine],
    command: &[String],
    jobs: usize,
) -> anyhow::Result<ExitCode> {
    let json = printer.is_json();
    let collected = ExecOutput::default();
    let results =
        orchestrate::execute(machines, command, jobs, json, &|name, stream, line| match (
            json, stream,
        ) {
            (true, _) => collected.push(name, stream == Stream::Stderr, line),
            (false, Stream::Output) => {
                let _ = writeln!(std::io::stdout().lock(), "{name}: {line}");
            }
            (false, Stream::Stderr) => eprintln!("{name}: {line}"),
        });
    let ok = output::deploy::exec(printer, machines, command, results, &collected)?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
