//! What `ferry deploy` prints when it is done: the result table (or its JSON), a dry run's
//! plans, the machines' generations (`--list-generations`) and `-x`'s results. Each JSON shape
//! is documented in `docs/json.md`; with `--json` the human text goes to stderr and stdout holds
//! the one JSON document.
//!
//! Numbers: every table gives paths sent and paths present, NAR bytes (the paths' archives,
//! uncompressed) and wire bytes (what crossed the transport: compressed frames, handshake and
//! diff included), in IEC units ([`format_bytes`]); the JSON gives them as exact integers.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use deploy::deployment::Machine;
use deploy::error::error_chain;
use deploy::orchestrate::{ExecReport, HostRun, RolloutRun};
use deploy::plan::{HostPlan, HostReport};
use proto::session::GenerationInfo;
use serde_json::{json, Value};

use super::{format_bytes, Printer};

/// Write `text` to stdout, or to stderr when stdout carries JSON.
fn human(printer: Printer, text: &str) -> io::Result<()> {
    if printer.is_json() {
        eprint!("{text}");
        Ok(())
    } else {
        let mut out = printer.stdout();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

/// The end of a per-machine listing: `{success, machines}` with `--json`, else `text`.
fn per_machine(printer: Printer, ok: bool, text: &str, rows: Vec<Value>) -> io::Result<bool> {
    if printer.is_json() {
        printer.json(&json!({ "success": ok, "machines": rows }))?;
    } else {
        human(printer, text)?;
    }
    Ok(ok)
}

/// The first line of an error's chain (for a table cell).
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// `--dry-run`: what would be copied to each machine (to stderr with `--json`).
pub fn plans(
    printer: Printer,
    machines: &[&Machine],
    plans: &[HostRun<HostPlan>],
) -> io::Result<()> {
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
            "{}: would copy {} path(s), {} of NAR:\n",
            m.name,
            plan.to_send.len(),
            format_bytes(plan.bytes)
        ));
        for p in &plan.to_send {
            text.push_str(&format!("  {} {}\n", p.path, format_bytes(p.nar_size)));
        }
    }
    human(printer, &text)
}

/// A dry run's plan in JSON (`plan` of a machine in `docs/json.md`).
fn plan_json(plan: &HostPlan) -> Value {
    json!({
        "system": plan.system,
        "host_store": plan.host_store,
        "agent_upload_bytes": plan.agent_upload,
        "on_this_system": plan.on_this_system,
        "warnings": plan.warnings,
        "paths": plan.to_send.iter()
            .map(|p| json!({ "path": p.path, "nar_size": p.nar_size }))
            .collect::<Vec<_>>(),
    })
}

/// The table header: which numbers are which.
/// PATHS SENT, NAR and WIRE are what the coordinator sent; PRESENT the paths the host had;
/// CACHED the paths the host fetched itself from its `substitute-from` caches.
const HEADER: [&str; 10] = [
    "MACHINE",
    "RESULT",
    "GENERATION",
    "PATHS SENT",
    "PRESENT",
    "CACHED",
    "NAR",
    "WIRE",
    "TIME",
    "DETAIL",
];

fn table_row(cells: [&str; 10]) -> String {
    let [machine, result, generation, sent, present, cached, nar, wire, time, detail] = cells;
    format!(
        "{machine:<16} {result:<10} {generation:>10} {sent:>10} {present:>7} {cached:>6} \
         {nar:>10} {wire:>10} {time:>7}  {detail}\n"
    )
}

/// The deploy's result: the table on stdout (stderr with `--json`, whose stdout is the JSON
/// document); `plans` are a dry run's; `rollout` a staged rollout's waves (each row's DETAIL
/// starts with its wave, and a line under the table says why the run stopped). Returns whether
/// every machine succeeded.
pub fn report(
    printer: Printer,
    names: &[&str],
    results: &[HostRun<HostReport>],
    plans: Option<&[Option<HostPlan>]>,
    rollout: Option<&RolloutRun>,
    total: Duration,
) -> io::Result<bool> {
    let mut ok = true;
    let mut rows = Vec::new();
    let mut table = table_row(HEADER);
    for (i, (name, HostRun { result, elapsed })) in names.iter().zip(results).enumerate() {
        let time = format!("{:.1}s", elapsed.as_secs_f64());
        let plan = plans.and_then(|p| p.get(i)).and_then(Option::as_ref);
        // A staged rollout: each row says its wave.
        let wave = rollout.map(|r| r.waves.wave_of(i));
        let in_wave = wave.map_or_else(String::new, |w| format!("wave {w}: "));
        match result {
            Ok(r) => {
                ok &= r.success;
                let generation = r.generation.map_or_else(|| "-".into(), |g| g.to_string());
                let copied = r.paths > 0 || r.present > 0;
                let count = |n: usize| if copied { n.to_string() } else { "-".into() };
                let nar = if copied { format_bytes(r.bytes) } else { "-".into() };
                let wire = r.wire_bytes.filter(|_| copied).map_or_else(|| "-".into(), format_bytes);
                // What the host fetched itself from its `substitute-from` caches.
                let (sub_paths, sub_bytes) =
                    r.substituted.iter().fold((0, 0), |(p, b), s| (p + s.paths, b + s.nar_bytes));
                let cached = if sub_paths == 0 { "-".into() } else { sub_paths.to_string() };
                table.push_str(&table_row([
                    name,
                    if r.success { "ok" } else { "FAILED" },
                    &generation,
                    &count(r.paths),
                    &count(r.present),
                    &cached,
                    &nar,
                    &wire,
                    &time,
                    &format!("{in_wave}{}", r.detail),
                ]));
                let mut row = json!({
                    "machine": name, "success": r.success, "generation": r.generation,
                    "paths_sent": r.paths, "paths_present": r.present, "paths_shared": r.shared,
                    "nar_bytes_sent": r.bytes, "wire_bytes_sent": r.wire_bytes,
                    "paths_substituted": sub_paths, "nar_bytes_substituted": sub_bytes,
                    "substituted": r.substituted,
                    "seconds": elapsed.as_secs_f64(), "detail": r.detail, "error": null,
                    "steps": r.steps.iter().map(|(k, v)| (k.to_string(), json!(v.as_secs_f64())))
                        .collect::<serde_json::Map<_, _>>(),
                });
                if let Some(plan) = plan {
                    row["plan"] = plan_json(plan);
                }
                rows.push(row);
            }
            Err(e) => {
                ok = false;
                let full = error_chain(e);
                table.push_str(&table_row([
                    name,
                    "FAILED",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    &time,
                    &format!("{in_wave}{}", first_line(&full)),
                ]));
                rows.push(json!({
                    "machine": name, "success": false, "generation": null, "paths_sent": 0,
                    "paths_present": 0, "paths_shared": 0, "nar_bytes_sent": 0,
                    "wire_bytes_sent": null, "paths_substituted": 0, "nar_bytes_substituted": 0,
                    "substituted": [], "seconds": elapsed.as_secs_f64(), "detail": full,
                    "error": full, "steps": {},
                }));
            }
        }
        if let (Some(w), Some(row)) = (wave, rows.last_mut()) {
            row["wave"] = json!(w);
        }
    }
    let mut doc = json!({
        "success": ok,
        "dry_run": plans.is_some(),
        "seconds": total.as_secs_f64(),
        "machines": rows,
    });
    if let Some(run) = rollout {
        let (line, json) = rollout_summary(names, run);
        table.push_str(&line);
        doc["rollout"] = json;
    }
    human(printer, &table)?;
    if printer.is_json() {
        printer.json(&doc)?;
    }
    Ok(ok)
}

/// A staged rollout's line under the table, and its JSON: the waves, which one stopped the
/// run and why, what was rolled back.
fn rollout_summary(names: &[&str], run: &RolloutRun) -> (String, Value) {
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

/// Collects `-x`'s output per machine for `--json` (in text mode lines go out as they come).
#[derive(Debug, Default)]
pub struct ExecOutput(std::sync::Mutex<std::collections::BTreeMap<String, (String, String)>>);

impl ExecOutput {
    /// A line of machine `name`'s stdout (`stderr` false) or stderr.
    pub fn push(&self, name: &str, stderr: bool, line: &str) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (out, err) = all.entry(name.to_owned()).or_default();
        let text = if stderr { err } else { out };
        text.push_str(line);
        text.push('\n');
    }

    fn take(&self, name: &str) -> (String, String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(name).unwrap_or_default()
    }
}

/// `-x`'s result per machine (stderr lines; with `--json` the JSON document); whether the
/// command exited 0 everywhere.
pub fn exec(
    printer: Printer,
    machines: &[&Machine],
    command: &[String],
    results: Vec<HostRun<ExecReport>>,
    output: &ExecOutput,
) -> io::Result<bool> {
    let mut ok = true;
    let mut rows = Vec::new();
    for (m, run) in machines.iter().zip(results) {
        let (stdout, stderr) = output.take(&m.name);
        let seconds = run.elapsed.as_secs_f64();
        let (code, error) = match run.result {
            Ok(r) => {
                match r.code {
                    Some(0) => note!("{}: command succeeded", m.name),
                    Some(c) => eprintln!("{}: command exited with code {c}", m.name),
                    None => eprintln!("{}: command was killed by a signal", m.name),
                }
                (r.code, None)
            }
            Err(e) => {
                let e = error_chain(&e);
                eprintln!("{}: error: {e}", m.name);
                (None, Some(e))
            }
        };
        let success = code == Some(0);
        ok &= success;
        rows.push(json!({
            "machine": m.name, "success": success, "exit_code": code,
            "signaled": error.is_none() && code.is_none(),
            "stdout": stdout, "stderr": stderr, "seconds": seconds, "error": error,
        }));
    }
    if printer.is_json() {
        printer.json(&json!({ "success": ok, "command": command, "machines": rows }))?;
    }
    Ok(ok)
}

/// `--list-generations`: each machine's generations (stdout, or the JSON document).
pub fn generations(
    printer: Printer,
    machines: &[&Machine],
    results: Vec<HostRun<Vec<GenerationInfo>>>,
) -> io::Result<bool> {
    let mut ok = true;
    let mut text = String::new();
    let mut rows = Vec::new();
    for (m, run) in machines.iter().zip(results) {
        let root = m.configuration.root.display().to_string();
        text.push_str(&format!("{} ({root}):\n", m.name));
        match run.result {
            Ok(gens) => {
                if gens.is_empty() {
                    text.push_str("  no generations\n");
                }
                for g in &gens {
                    let date = format_time(SystemTime::UNIX_EPOCH + Duration::from_secs(g.time));
                    let current = if g.current { "  (current)" } else { "" };
                    let failed =
                        g.failed.as_ref().map(|f| format!("  (failed: {f})")).unwrap_or_default();
                    text.push_str(&format!(
                        "  {:>4}  {date}  {}{current}{failed}\n",
                        g.number, g.system
                    ));
                }
                let list: Vec<Value> = gens
                    .iter()
                    .map(|g| {
                        json!({
                            "number": g.number,
                            "time": g.time,
                            "date": iso_time(g.time),
                            "system": g.system,
                            "current": g.current,
                            "failed": g.failed,
                        })
                    })
                    .collect();
                rows.push(json!({
                    "machine": m.name, "root": root, "success": true, "generations": list,
                    "error": null,
                }));
            }
            Err(e) => {
                ok = false;
                let e = error_chain(&e);
                text.push_str(&format!("  error: {e}\n"));
                rows.push(json!({
                    "machine": m.name, "root": root, "success": false, "generations": [],
                    "error": e,
                }));
            }
        }
    }
    per_machine(printer, ok, &text, rows)
}

/// `--roll-back --dry-run`: the generation each machine would return to (the rule of
/// [`deploy::generations::roll_back_target`]); nothing changes.
pub fn roll_back_plans(
    printer: Printer,
    machines: &[&Machine],
    results: Vec<HostRun<Vec<GenerationInfo>>>,
) -> io::Result<bool> {
    let mut ok = true;
    let mut text = String::new();
    let mut rows = Vec::new();
    for (m, run) in machines.iter().zip(results) {
        let planned =
            run.result.map_err(|e| format!("error: {}", error_chain(&e))).and_then(|gens| {
                let numbers = gens.iter().map(|g| (g.number, g.current, g.failed.is_some()));
                let (from, to) =
                    deploy::generations::roll_back_target(numbers).map_err(|e| e.to_string())?;
                let system = gens.iter().find(|g| g.number == to).map(|g| g.system.clone());
                Ok((from, to, system.unwrap_or_default()))
            });
        match planned {
            Ok((from, to, system)) => {
                text.push_str(&format!(
                    "{}: would roll back from generation {from} to {to} ({system})\n",
                    m.name
                ));
                rows.push(json!({
                    "machine": m.name, "success": true, "from": from, "to": to,
                    "system": system, "error": null,
                }));
            }
            Err(e) => {
                ok = false;
                text.push_str(&format!("{}: {e}\n", m.name));
                rows.push(json!({
                    "machine": m.name, "success": false, "from": null, "to": null,
                    "system": null, "error": e,
                }));
            }
        }
    }
    per_machine(printer, ok, &text, rows)
}

/// Year, month, day, hour, minute, second (UTC) of `secs` since the epoch.
fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let (h, mi, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
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
    (y, mo, d, h, mi, s)
}

/// `YYYY-MM-DD HH:MM UTC`.
fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi, _) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
}

/// RFC 3339 in UTC: `YYYY-MM-DDTHH:MM:SSZ`.
fn iso_time(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(format_time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        assert_eq!(format_time(t), "2025-11-24 16:00 UTC");
        assert_eq!(iso_time(1_764_000_007), "2025-11-24T16:00:07Z");
    }

    #[test]
    fn the_table_says_which_numbers_are_which() {
        let header = table_row(HEADER);
        for word in ["PATHS SENT", "PRESENT", "NAR", "WIRE"] {
            assert!(header.contains(word), "{header}");
        }
    }
}
