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
//! machine as they come. `--dry-run` prints each machine's plan: the paths the host lacks and
//! their exact NAR bytes (on stdout; on stderr with `--json`, whose stdout is the JSON only).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde_json::json;
use store::{LayoutOptions, StoreLayout};

use crate::output::progress::Board;
use crate::output::{format_bytes, Printer};
use crate::settings::GlobalOpts;
use deploy::deployment::{Deployment, Machine, StoreChoice};
use deploy::error::error_chain;
use deploy::orchestrate::{self, HostRun, Options, RolloutRun, Stream};
use deploy::plan::{HostPlan, HostReport};
use deploy::rollout::{Rollout, Step};

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
    /// Run the command after `--` on every selected machine in parallel (as `guix deploy -x`);
    /// each output line is prefixed with the machine; exit 0 only if it exited 0 everywhere.
    #[arg(short = 'x', long, conflicts_with_all = ["dry_run", "roll_back", "list_generations"])]
    pub execute: bool,
    /// The command for `-x`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
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
    eprintln!(
        "The following {} machine(s) will be {verb}: {}",
        machines.len(),
        machines.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let started = Instant::now();
    let options = Options {
        jobs,
        fail_fast: args.fail_fast,
        never_confirm: std::env::var_os(orchestrate::NEVER_CONFIRM_ENV).is_some(),
        fan_out: args.fan_out.map(|k| k as usize),
    };
    let results = if args.roll_back {
        orchestrate::roll_back(&machines, &options, &Board::new(printer, "rolled back"))
    } else if args.dry_run {
        let board = Board::new(printer, "ok");
        let plans = orchestrate::dry_run(&deployment, &machines, &layout, &options, &board)?;
        print_plans(printer, &machines, &plans)?;
        let report = |r: HostRun<HostPlan>| HostRun {
            result: r.result.map(|plan| plan.report()),
            elapsed: r.elapsed,
        };
        plans.into_iter().map(report).collect()
    } else {
        let (key, generated) = transfer::trust::load_or_generate_key(layout.state_dir())
            .context("cannot load or generate the signing key")?;
        if let Some(dir) = generated {
            eprintln!(
                "ferry: generated a signing key pair in {} (signing-key.sec, signing-key.pub); \
                 machines with `authorize = true` (the default) get it added to their ACL",
                dir.display()
            );
        }
        let board = Board::new(printer, "ok");
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
                    eprintln!("wave {} of {}: {}", w + 1, waves.waves().len(), names.join(", "));
                }
            }
            let run = orchestrate::deploy_rollout(
                &deployment,
                &machines,
                &layout,
                &key,
                &options,
                &rollout,
                args.roll_back_on_failure,
                &board,
            )?;
            let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
            return report(printer, &names, &run.runs, Some(&run), started.elapsed());
        }
        orchestrate::deploy(&deployment, &machines, &layout, &key, &options, &board)?
    };
    let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    report(printer, &names, &results, None, started.elapsed())
}

/// A staged rollout's line under the table, and its JSON: the waves, which one stopped the
/// run and why, what was rolled back.
fn rollout_summary(names: &[&str], run: &RolloutRun) -> (String, serde_json::Value) {
    let count = run.waves.waves().len();
    let reason = run.stopped_by.map(|wave| {
        let failed: Vec<&str> = run.failed.iter().map(|&i| names[i]).collect();
        let later = match count - wave {
            0 => String::new(),
            1 => format!("; wave {count} not started"),
            _ => format!("; waves {}-{count} not started", wave + 1),
        };
        format!("wave {wave} of {count} failed on {}{later}", failed.join(", "))
    });
    let mut line = match &reason {
        Some(r) => format!("rollout stopped: {r}"),
        None => format!("rollout: {count} wave(s), all succeeded"),
    };
    if !run.rolled_back.is_empty() {
        let back: Vec<&str> = run.rolled_back.iter().map(|&i| names[i]).collect();
        line.push_str(&format!("; rolled back (--roll-back-on-failure): {}", back.join(", ")));
    }
    let json = json!({
        "waves": count, "stopped_by_wave": run.stopped_by, "reason": reason,
        "rolled_back": run.rolled_back.iter().map(|&i| names[i]).collect::<Vec<_>>(),
    });
    (format!("{line}\n"), json)
}

/// `--dry-run`: what would be copied to each machine (on stderr with `--json`).
fn print_plans(
    printer: Printer,
    machines: &[&Machine],
    plans: &[HostRun<HostPlan>],
) -> anyhow::Result<()> {
    let mut text = String::new();
    for (m, run) in machines.iter().zip(plans) {
        let Ok(plan) = &run.result else { continue };
        if let Some(store) = &plan.host_store {
            let how = m.configuration.host_store.name();
            text.push_str(&format!("{}: the host's store: {store} (store = \"{how}\")\n", m.name));
        }
        if let Some(bytes) = plan.agent_upload {
            text.push_str(&format!(
                "{}: would upload the agent ({})\n",
                m.name,
                format_bytes(bytes)
            ));
        }
        text.push_str(&format!(
            "{}: would copy {} path(s), {} bytes:\n",
            m.name,
            plan.to_send.len(),
            plan.bytes
        ));
        for p in &plan.to_send {
            text.push_str(&format!("  {} {}\n", p.path, p.nar_size));
        }
    }
    if printer.is_json() {
        eprint!("{text}");
    } else {
        let mut out = printer.stdout();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

/// Print the table (or JSON); the exit code.
fn report(
    printer: Printer,
    names: &[&str],
    results: &[HostRun<HostReport>],
    rollout: Option<&RolloutRun>,
    total: Duration,
) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    let mut rows = Vec::new();
    let mut table = format!(
        "{:<16} {:<10} {:>10} {:>16} {:>8}  DETAIL\n",
        "MACHINE", "RESULT", "GENERATION", "SENT", "TIME"
    );
    for (i, (name, HostRun { result, elapsed })) in names.iter().zip(results).enumerate() {
        let time = format!("{:.1}s", elapsed.as_secs_f64());
        // A staged rollout: each row says its wave.
        let wave = rollout.map(|r| r.waves.wave_of(i));
        let in_wave = wave.map_or_else(String::new, |w| format!("wave {w}: "));
        match result {
            Ok(r) => {
                ok &= r.success;
                let generation = r.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
                let sent = if r.bytes == 0 && r.paths == 0 {
                    "-".to_owned()
                } else {
                    format!("{} ({})", format_bytes(r.bytes), r.paths)
                };
                table.push_str(&format!(
                    "{name:<16} {:<10} {generation:>10} {sent:>16} {time:>8}  {in_wave}{}\n",
                    if r.success { "ok" } else { "FAILED" },
                    r.detail
                ));
                rows.push(json!({
                    "machine": name, "success": r.success, "generation": r.generation,
                    "paths_sent": r.paths, "paths_shared": r.shared, "bytes_sent": r.bytes,
                    "seconds": elapsed.as_secs_f64(), "detail": r.detail,
                    "steps": r.steps.iter().map(|(k, v)| (k.to_string(), json!(v.as_secs_f64())))
                        .collect::<serde_json::Map<_, _>>(),
                }));
            }
            Err(e) => {
                ok = false;
                let full = error_chain(e);
                let first = full.lines().next().unwrap_or_default().to_owned();
                table.push_str(&format!(
                    "{name:<16} {:<10} {:>10} {:>16} {time:>8}  {in_wave}{first}\n",
                    "FAILED", "-", "-"
                ));
                rows.push(json!({
                    "machine": name, "success": false, "generation": null, "paths_sent": 0,
                    "bytes_sent": 0, "seconds": elapsed.as_secs_f64(), "detail": full,
                }));
            }
        }
        if let (Some(w), Some(row)) = (wave, rows.last_mut()) {
            row["wave"] = json!(w);
        }
    }
    let mut doc = json!({ "success": ok, "seconds": total.as_secs_f64(), "machines": rows });
    if let Some(run) = rollout {
        let (line, json) = rollout_summary(names, run);
        table.push_str(&line);
        doc["rollout"] = json;
    }
    if printer.is_json() {
        eprint!("{table}");
        printer.json(&doc)?;
    } else {
        let mut out = printer.stdout();
        out.write_all(table.as_bytes())?;
        out.flush()?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `-x -- CMD ARGS...`: run on every machine in parallel, output prefixed with the machine.
fn execute(machines: &[&Machine], command: &[String], jobs: usize) -> anyhow::Result<ExitCode> {
    let results =
        orchestrate::execute(machines, command, jobs, &|name, stream, line| match stream {
            Stream::Output => {
                let _ = writeln!(std::io::stdout().lock(), "{name}: {line}");
            }
            Stream::Stderr => eprintln!("{name}: {line}"),
        });
    let mut ok = true;
    for (m, run) in machines.iter().zip(results) {
        match run.result {
            Ok(r) if r.code == Some(0) => eprintln!("{}: command succeeded", m.name),
            Ok(r) => {
                ok = false;
                match r.code {
                    Some(c) => eprintln!("{}: command exited with code {c}", m.name),
                    None => eprintln!("{}: command was killed by a signal", m.name),
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("{}: error: {}", m.name, error_chain(&e));
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn list_generations(machines: &[&Machine], jobs: usize) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for (m, run) in machines.iter().zip(orchestrate::list_generations(machines, jobs)) {
        println!("{} ({}):", m.name, m.configuration.root.display());
        match run.result {
            Ok(gens) if gens.is_empty() => println!("  no generations"),
            Ok(gens) => {
                for g in gens {
                    println!(
                        "  {:>4}  {}  {}{}",
                        g.number,
                        format_time(SystemTime::UNIX_EPOCH + Duration::from_secs(g.time)),
                        g.system,
                        if g.current { "  (current)" } else { "" }
                    );
                }
            }
            Err(e) => {
                ok = false;
                println!("  error: {}", error_chain(&e));
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
    fn times() {
        assert_eq!(format_time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        assert_eq!(format_time(t), "2025-11-24 16:00 UTC");
    }
}
