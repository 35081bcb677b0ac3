//! `gen_update`: the generation-update bench (issue 7). Time to update one host from
//! generation 1 to generation 2 over an emulated link, with `ferry bench`, for several settings
//! side by side in one run.
//!
//! The store (built once under `--work`, reused after): generation 1 holds one store item per
//! corpus package (the *old* trees of `debian-pairs.sh`: kernel, LibreOffice core, Firefox ESR),
//! with references between items written into their files (`ferry-refs`: LibreOffice names the
//! kernel item, Firefox both others), and a `system-1` item naming all three; generation 2 swaps
//! the old versions for the new ones, so, as in Nix and Guix, the changed kernel changes the
//! hash strings inside its referrers. Trees are staged with hard links (`cp -al`) plus the
//! `ferry-refs` file, then added with `ferry store add`.
//!
//! Each setting runs on a fresh host (`local://`): `ferry bench --base SYSTEM-1 ... SYSTEM-2`
//! (the host gets generation 1 unshaped and untimed, then generation 2 through the emulated
//! link). Settings are `MODE:COMPRESS` (`delta:auto` = the adaptive defaults, `zstd:3` = a full
//! zstd -3 transfer). The table gives time, wire bytes, and the ratios the issue asks for:
//! time / time of the first `zstd:` setting, and time / (wire bytes / rate + connect + diff).
//!
//! With `--nix`, the bytes `nix copy --to ssh://` puts on the connection for generation 2
//! ([`ferry_benches::nix_copy`]: the generation-2 items added to a Nix chroot store, copied over
//! the test harness's loopback sshd), one path at a time so each pair gets its own column; Nix
//! has no deltas, so what the host already holds does not change its bytes. `--nix-only` skips
//! the ferry settings.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "gen_update",
    about = "Builds the generation-update store from the delta corpus and times `ferry bench` per setting over an emulated link"
)]
struct Args {
    #[command(flatten)]
    link: ferry_benches::GenUpdateLink,
    /// Corpus directory (debian-pairs.sh output).
    #[arg(long, default_value = "/tmp/delta-corpus")]
    corpus: PathBuf,
    /// Settings, `MODE:COMPRESS`, comma-separated.
    #[arg(long, default_value = "delta:auto,zstd:3")]
    settings: String,
    /// Write all `ferry bench` reports here as one JSON array.
    #[arg(long)]
    json_file: Option<PathBuf>,
    /// Also measure `nix copy --to ssh://` of generation 2, per path.
    #[arg(long)]
    nix: bool,
    /// Only the `nix copy` measurement.
    #[arg(long)]
    nix_only: bool,
}

/// (tag, package name, old version, new version)
const PACKAGES: [(&str, &str, &str, &str); 3] = [
    ("linux", "linux-image", "6.1.176", "6.1.192"),
    ("lo", "libreoffice-core", "7.4.7-deb12u13", "7.4.7-deb12u14"),
    ("ff", "firefox-esr", "140.12.0esr", "153.7.0esr"),
];

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// Stage `tree` as `name` (hard links) with a `ferry-refs` file naming `refs`, add it.
fn add_item(
    a: &Args,
    store: &Path,
    tree: Option<&Path>,
    name: &str,
    refs: &[String],
) -> Result<String> {
    let stage = a.link.work.join("stage").join(name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(stage.parent().expect("has parent"))?;
    match tree {
        Some(t) => {
            run(Command::new("cp").arg("-al").arg(t).arg(&stage))?;
        }
        None => std::fs::create_dir_all(&stage)?,
    }
    let text: String = refs.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(stage.join("ferry-refs"), text)?;
    let path = run(Command::new(&a.link.ferry)
        .arg("--root")
        .arg(store)
        .args(["store", "add", "--name", name])
        .arg(&stage))?;
    std::fs::remove_dir_all(&stage)?;
    Ok(path)
}

/// Build (or reuse) the local store; returns the two system items.
fn build_store(a: &Args) -> Result<(String, String)> {
    let store = a.link.work.join("local");
    let done = a.link.work.join("generations.json");
    if let Ok(text) = std::fs::read_to_string(&done) {
        let v: Value = serde_json::from_str(&text)?;
        return Ok((
            v["gen1"].as_str().unwrap_or("").into(),
            v["gen2"].as_str().unwrap_or("").into(),
        ));
    }
    let mut gens = Vec::new();
    for (g, side) in [(1, "old"), (2, "new")] {
        let mut items: Vec<String> = Vec::new();
        for (tag, pkg, old, new) in PACKAGES {
            let version = if side == "old" { old } else { new };
            let tree = a.corpus.join("tree").join(format!("{tag}-{side}"));
            let item = add_item(a, &store, Some(&tree), &format!("{pkg}-{version}"), &items)?;
            eprintln!("generation {g}: {item}");
            items.push(item);
        }
        let system = add_item(a, &store, None, &format!("system-{g}"), &items)?;
        eprintln!("generation {g}: {system}");
        gens.push(system);
    }
    std::fs::write(&done, serde_json::json!({ "gen1": gens[0], "gen2": gens[1] }).to_string())?;
    Ok((gens[0].clone(), gens[1].clone()))
}

/// `nix copy --to ssh://` of each path of generation 2's closure, one at a time: a table row
/// per path and the total.
fn nix_columns(a: &Args, gen2: &str) -> Result<Value> {
    let store = a.link.work.join("local");
    let closure = run(Command::new(&a.link.ferry).arg("--root").arg(&store).args([
        "gc",
        "--requisites",
        gen2,
    ]))?;
    let sshd = ferry_tests::sshd::Sshd::start();
    let scratch = a.link.work.join("nix");
    std::fs::create_dir_all(&scratch)?;
    println!("| generation 2 path | NAR bytes | `nix copy --to ssh://` bytes sent | received | sent / NAR | seconds | load |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let (mut total, mut rows) = ((0u64, 0u64, 0u64), Vec::new());
    for path in closure.lines() {
        let physical = store.join(path.trim_start_matches('/'));
        let n = ferry_benches::nix_copy::nix_copy_over_ssh(&sshd, &scratch, &[&physical])?;
        let name = path.rsplit('/').next().unwrap_or(path);
        let name = name.split_once('-').map_or(name, |(_, n)| n);
        println!(
            "| {name} | {} | {} | {} | {:.4} | {:.1} | {} |",
            n.nar_bytes,
            n.sent,
            n.received,
            n.sent as f64 / n.nar_bytes.max(1) as f64,
            n.seconds,
            loadavg()
        );
        total = (total.0 + n.nar_bytes, total.1 + n.sent, total.2 + n.received);
        rows.push(serde_json::json!({"path": path, "nar_bytes": n.nar_bytes, "sent": n.sent,
            "received": n.received, "seconds": n.seconds}));
    }
    println!(
        "| **total** ({} paths, one connection each) | {} | {} | {} | {:.4} | | |",
        rows.len(),
        total.0,
        total.1,
        total.2,
        total.1 as f64 / total.0.max(1) as f64
    );
    Ok(serde_json::json!({"nix_copy_ssh": rows}))
}

fn main() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.link.work)?;
    let (gen1, gen2) = build_store(&a)?;
    let mut reports = Vec::new();
    if a.nix || a.nix_only {
        reports.push(nix_columns(&a, &gen2)?);
        if a.nix_only {
            if let Some(f) = &a.json_file {
                std::fs::write(f, serde_json::to_string_pretty(&reports)?)?;
            }
            return Ok(());
        }
    }
    println!(
        "| setting | paths (delta) | NAR bytes | wire bytes | time s | connect+diff s | link model s | time / link model | time / first zstd | levels | load before → after |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut zstd_time: Option<f64> = None;
    let mut rows = Vec::new();
    for setting in a.settings.split(',') {
        let (mode, compress) = setting.split_once(':').context("setting is MODE:COMPRESS")?;
        let host = a.link.work.join(format!("host-{mode}-{compress}"));
        if host.exists() {
            std::fs::remove_dir_all(&host)?;
        }
        let before = loadavg();
        let out = run(Command::new(&a.link.ferry)
            .arg("--root")
            .arg(a.link.work.join("local"))
            .arg("bench")
            .arg("--to")
            .arg(format!("local://{}", host.display()))
            .args(["--base", &gen1, "--rate", &a.link.rate, "--latency", &a.link.latency])
            .args(["--mode", mode, "--compress", compress, "--json", &gen2]))?;
        let after = loadavg();
        let v: Value = serde_json::from_str(&out)?;
        let h = &v["hosts"][0];
        if let Some(e) = h.get("error") {
            bail!("{setting}: {e}");
        }
        let time = h["seconds"].as_f64().unwrap_or(0.0);
        if mode == "zstd" && zstd_time.is_none() {
            zstd_time = Some(time);
        }
        rows.push((setting.to_owned(), v.clone(), before, after));
        reports.push(v);
        let _ = std::fs::remove_dir_all(&host);
    }
    for (setting, v, before, after) in rows {
        let h = &v["hosts"][0];
        let time = h["seconds"].as_f64().unwrap_or(0.0);
        let setup = h["phases"]["connect"].as_f64().unwrap_or(0.0)
            + h["phases"]["diff"].as_f64().unwrap_or(0.0);
        println!(
            "| {setting} | {} ({}) | {} | {} | {time:.1} | {setup:.2} | {:.1} | {:.2} | {} | {} | {before} → {after} |",
            h["paths_sent"],
            h["paths_delta"],
            h["nar_bytes"],
            h["wire_bytes"],
            h["link_model_seconds"].as_f64().unwrap_or(0.0),
            h["vs_link_model"].as_f64().unwrap_or(0.0),
            zstd_time.map_or("-".into(), |z| format!("{:.2}", time / z)),
            h["levels"],
        );
    }
    if let Some(f) = &a.json_file {
        std::fs::write(f, serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(())
}
