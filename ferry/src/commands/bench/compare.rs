//! `ferry bench --compare nix,nix-ssh-ng,rsync,casync`: ferry and its peers side by side, same
//! closure, same kernel-shaped link, fresh host each run.
//!
//! The far side is a throwaway sshd ([`super::sshd`]) on the real loopback. The bench re-runs
//! itself under `unshare -n` (as `--link kernel` does: a private network namespace with only
//! `lo`); inside, `127.0.0.1:PORT` is the latency relay ([`transfer::relay::Relay`]), whose other
//! end is a Unix socket leading out to the sshd. Every tool runs as its own process inside the
//! namespace and reaches the host through `lo`, shaped per link with `tc … tbf` (rate) plus the
//! relay (one-way latency); the unshaped `loopback` link comes first. The bytes on the wire are
//! `lo`'s transmit counter in the namespace (`/proc/net/dev`) around each run: every byte both
//! ways, TCP/IP headers included, and nothing but the tool's traffic.
//!
//! The tools, per link and round (order rotated each round), each into a fresh host directory
//! removed afterwards (all set-up untimed and off the link):
//! - `ferry`: `ferry copy --to ssh://…?root=HOST` (a separate process; ferry is on the host's
//!   `PATH`, as Nix and rsync are: no agent upload);
//! - `nix copy ssh://` / `nix copy ssh-ng://` (`nix`, `nix-ssh-ng`): Debian's Nix, hermetic
//!   (the bench's own `nix.conf`, `HOME`), from a Nix chroot store holding the closure's trees
//!   (added with `nix-store --add`: the same NAR bytes, content-addressed, without references)
//!   to `remote-store=HOST`;
//! - `rsync -az` of the closure's trees into `HOST/store/`;
//! - `casync` (with `--base` only): the host holds a chunk store of the old trees; each new tree
//!   is chunked locally (`casync make`, its defaults: zstd chunks), the index files and the
//!   chunks the host lacks cross with `rsync --ignore-existing`, and the host extracts the trees
//!   (`casync extract`).
//!
//! With `--base` (a generation update) every host first holds the base closure: ferry's store
//! (local copy), the Nix store (Nix has no base: it skips paths the host has, nothing more),
//! rsync's trees under the new paths' names where the names match ("onto the old tree"; run
//! with `-I` so a changed file of the same size and mtime is not skipped), casync's chunk store.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::sshd::{BenchSshd, SshdFiles};
use super::stats::{self, Link, Row, Spread};
use super::{probe_qdisc, run_tool, BenchArgs, Qdisc, NETNS_DIR_ENV, NETNS_QDISC_ENV};
use crate::output::format_bytes;
use crate::settings::GlobalOpts;

/// A tool `--compare` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ferry,
    Nix,
    NixSshNg,
    Rsync,
    Casync,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ferry => "ferry",
            Tool::Nix => "nix copy ssh://",
            Tool::NixSshNg => "nix copy ssh-ng://",
            Tool::Rsync => "rsync -az",
            Tool::Casync => "casync",
        }
    }

    fn parse(word: &str) -> anyhow::Result<Tool> {
        Ok(match word.trim() {
            "nix" => Tool::Nix,
            "nix-ssh-ng" => Tool::NixSshNg,
            "rsync" => Tool::Rsync,
            "casync" => Tool::Casync,
            "ferry" => Tool::Ferry,
            w => bail!("--compare {w:?}: expected nix, nix-ssh-ng, rsync or casync"),
        })
    }

    /// `Err(why)` when this machine cannot run it.
    fn available(self, base: bool) -> Result<(), String> {
        let needs: &[&str] = match self {
            Tool::Ferry => &[],
            Tool::Nix => &["nix", "nix-store"],
            Tool::NixSshNg => &["nix", "nix-store", "nix-daemon"],
            Tool::Rsync => &["rsync"],
            Tool::Casync => &["casync", "rsync"],
        };
        if self == Tool::Casync && !base {
            return Err("casync compares generation updates only (--base)".into());
        }
        match needs.iter().find(|p| which(p).is_none()) {
            Some(p) => Err(format!("{p} is not installed")),
            None => Ok(()),
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Set in the process running under `unshare -n`: the bench's work directory.
const COMPARE_DIR_ENV: &str = "FERRY_BENCH_COMPARE_DIR";

fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `lo`'s transmit byte counter in `/proc/net/dev` (the reading process's namespace).
pub fn lo_tx_bytes(proc_net_dev: &str) -> Option<u64> {
    let line = proc_net_dev.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    let fields: Vec<&str> = line.split_once(':')?.1.split_whitespace().collect();
    fields.get(8)?.parse().ok()
}

fn wire_counter() -> anyhow::Result<u64> {
    lo_tx_bytes(&fs::read_to_string("/proc/net/dev")?).context("no lo in /proc/net/dev")
}

/// Run `cmd` to completion; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Remove a directory tree even where Nix or a store made it read-only.
fn remove_tree(dir: &Path) {
    if dir.exists() {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir).status();
        let _ = fs::remove_dir_all(dir);
    }
}

/// Outside the namespace: the sshd, the Unix socket relay to it, and this command again under
/// `unshare -n`; its exit code. Everything made here is removed afterwards.
pub fn run_compare(global: &GlobalOpts, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = std::env::var_os(COMPARE_DIR_ENV) {
        return inside(global, &args, Path::new(&dir));
    }
    let qdisc = probe_qdisc().map_err(|why| {
        anyhow::anyhow!(
            "--compare runs every tool through a kernel-shaped link in a private network \
             namespace, which needs unshare -n, ip and tc as root: {why}"
        )
    })?;
    let parent = args.work.clone().unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new().prefix("ferry-bench-compare-").tempdir_in(&parent)?;
    let sshd = BenchSshd::start(&work.path().join("sshd"))?;
    let relay = transfer::relay::Relay::new(Duration::ZERO)?;
    relay.unix_to_tcp(work.path().join("sshd.sock"), ([127, 0, 0, 1], sshd.files().port).into())?;
    let exe = std::env::current_exe().context("cannot find the running ferry executable")?;
    let status = Command::new("unshare")
        .args(["-n", "--"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(COMPARE_DIR_ENV, work.path())
        .env(NETNS_QDISC_ENV, qdisc.name())
        .env_remove(NETNS_DIR_ENV)
        .status()
        .context("cannot run unshare -n")?;
    drop(relay);
    drop(sshd);
    remove_tree(work.path());
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => bail!("ferry bench under unshare -n was killed ({status})"),
    })
}

/// What every run needs: the closure in each tool's form, and where the host lives.
struct Setup<'a> {
    global: &'a GlobalOpts,
    sshd: SshdFiles,
    work: PathBuf,
    /// Absolute store paths of the roots (ferry's argument).
    roots: Vec<String>,
    /// Physical trees of the closure and of the base closure.
    trees: Vec<PathBuf>,
    base_trees: Vec<PathBuf>,
    base_roots: Vec<String>,
    /// Nix chroot store holding the trees, and the Nix paths of the closure and base.
    nix_src: PathBuf,
    nix_paths: Vec<String>,
    nix_base_paths: Vec<String>,
}

impl Setup<'_> {
    /// `ferry` with the global store options of this run.
    fn ferry(&self) -> anyhow::Result<Command> {
        let mut c = Command::new(std::env::current_exe()?);
        let g = self.global;
        if let Some(r) = &g.root {
            c.arg("--root").arg(r);
        }
        if let Some(s) = &g.store_dir {
            c.arg("--store-dir").arg(s);
        }
        if let Some(s) = &g.state_dir {
            c.arg("--state-dir").arg(s);
        }
        if let Some(k) = g.store {
            c.arg("--store").arg(k.to_string());
        }
        Ok(c)
    }

    /// Untimed: give a fresh `host` what `--base` says it already has.
    fn seed(&self, tool: Tool, host: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(host)?;
        if self.base_trees.is_empty() {
            return Ok(());
        }
        match tool {
            Tool::Ferry => {
                let mut c = self.ferry()?;
                c.args(["copy", "--authorize", "--to"])
                    .arg(format!("local://{}", host.display()))
                    .args(&self.base_roots);
                run(&mut c)?;
            }
            Tool::Nix | Tool::NixSshNg => {
                let mut c = self.sshd.nix_command("nix");
                c.args(["copy", "--no-check-sigs", "--store"])
                    .arg(&self.nix_src)
                    .arg("--to")
                    .arg(host)
                    .args(&self.nix_base_paths);
                run(&mut c)?;
            }
            Tool::Rsync => {
                let store = host.join("store");
                fs::create_dir_all(&store)?;
                for old in &self.base_trees {
                    let target = rsync_target(old, &self.trees, &self.base_trees);
                    let target = store.join(target.context("a tree without a name")?);
                    run(Command::new("cp").arg("-a").arg(old).arg(&target))?;
                }
            }
            Tool::Casync => {
                for (i, old) in self.base_trees.iter().enumerate() {
                    run(Command::new("casync")
                        .arg("make")
                        .arg(format!("--store={}", host.join("castr").display()))
                        .arg(host.join(format!("old-{i}.caidx")))
                        .arg(old))?;
                }
            }
        }
        Ok(())
    }

    /// The timed part of one run: the tool from start to exit. For ferry, what its copy
    /// reported (phases, levels, paths sent), for the report.
    fn transfer(&self, tool: Tool, host: &Path) -> anyhow::Result<Option<serde_json::Value>> {
        match tool {
            Tool::Ferry => {
                let mut c = self.ferry()?;
                c.args(["copy", "--json", "--authorize", "--to"])
                    .arg(self.sshd.ferry_uri(host))
                    .arg("--identity")
                    .arg(self.sshd.identity())
                    .arg("--known-hosts")
                    .arg(self.sshd.known_hosts())
                    .args(&self.roots);
                let out = run(&mut c)?;
                let summary: serde_json::Value =
                    serde_json::from_str(out.trim()).context("ferry copy --json")?;
                if summary["paths_sent"] == 0 {
                    eprintln!(
                        "ferry bench: warning: ferry sent 0 paths to a fresh host ({}); this run \
                         measures nothing",
                        host.display()
                    );
                }
                // One host: its own summary has the phases and levels.
                let host = &summary["hosts"][0];
                let keep = ["paths_sent", "nar_bytes_sent", "wire_bytes", "levels", "phases"];
                return Ok(Some(keep.iter().map(|k| (k.to_string(), host[k].clone())).collect()));
            }
            Tool::Nix | Tool::NixSshNg => {
                let scheme = if tool == Tool::Nix { "ssh" } else { "ssh-ng" };
                let mut c = self.sshd.nix_command("nix");
                c.args(["copy", "--no-check-sigs", "--store"])
                    .arg(&self.nix_src)
                    .arg("--to")
                    .arg(format!("{scheme}://peer?remote-store={}", host.display()))
                    .args(&self.nix_paths);
                run(&mut c)?;
            }
            Tool::Rsync => {
                let mut c = Command::new("rsync");
                c.arg(if self.base_trees.is_empty() { "-az" } else { "-azI" })
                    .arg("-e")
                    .arg(self.sshd.ssh_command_line())
                    .args(&self.trees)
                    .arg(format!("peer:{}/store/", host.display()));
                run(&mut c)?;
            }
            Tool::Casync => self.casync(host)?,
        }
        Ok(None)
    }

    /// One run of `tool` into a fresh `host` (removed afterwards): the sample for the table
    /// (`None` when it failed, said on stderr) and the run's JSON record.
    fn run_one(
        &self,
        tool: Tool,
        host: &Path,
        link: &Link,
        round: usize,
    ) -> (Option<(String, String, f64, f64)>, serde_json::Value) {
        remove_tree(host);
        let l = load();
        let result = self.seed(tool, host).context("set-up").and_then(|()| {
            let before = wire_counter()?;
            let t = Instant::now();
            let report = self.transfer(tool, host)?;
            let secs = t.elapsed().as_secs_f64();
            Ok((secs, wire_counter()?.saturating_sub(before), report))
        });
        remove_tree(host);
        let (name, r) = (tool.name(), round + 1);
        match result {
            Ok((secs, bytes, report)) => {
                let b = format_bytes(bytes);
                eprintln!(
                    "  {} round {r}: {name}: {secs:.2} s, {b} on the wire (load {l})",
                    link.name
                );
                let sample = (link.name.clone(), name.to_owned(), secs, bytes as f64);
                let run = json!({ "link": link.name, "round": r, "tool": name, "seconds": secs,
                    "wire_bytes": bytes, "load": l, "ferry": report });
                (Some(sample), run)
            }
            Err(e) => {
                eprintln!("  {} round {r}: {name}: error: {e:#}", link.name);
                let run = json!({ "link": link.name, "round": r, "tool": name,
                    "error": format!("{e:#}"), "load": l });
                (None, run)
            }
        }
    }

    /// casync's update: chunk locally, send indexes and missing chunks, extract on the host.
    fn casync(&self, host: &Path) -> anyhow::Result<()> {
        let local = self.work.join("casync-local");
        remove_tree(&local);
        fs::create_dir_all(local.join("idx"))?;
        for (i, tree) in self.trees.iter().enumerate() {
            run(Command::new("casync")
                .arg("make")
                .arg(format!("--store={}", local.join("castr").display()))
                .arg(local.join(format!("idx/{i}.caidx")))
                .arg(tree))?;
        }
        run(Command::new("rsync")
            .args(["-a", "--ignore-existing", "-e"])
            .arg(self.sshd.ssh_command_line())
            .arg(local.join("castr"))
            .arg(local.join("idx"))
            .arg(format!("peer:{}/", host.display())))?;
        let mut script = format!("set -e; mkdir -p {}/store", host.display());
        for (i, tree) in self.trees.iter().enumerate() {
            let name = tree.file_name().context("a tree without a name")?.to_string_lossy();
            script.push_str(&format!(
                "; casync extract --store={h}/castr {h}/idx/{i}.caidx {h}/store/{name}",
                h = host.display()
            ));
        }
        run(Command::new("ssh").arg("-F").arg(self.sshd.ssh_config()).arg("peer").arg(script))?;
        remove_tree(&local);
        Ok(())
    }
}

/// A store tree's package name: without its hash part and version (`abc…-python3-3.11.2` →
/// `python3`; Nix's rule: the version starts at the first `-` followed by a digit).
fn tree_name(tree: &Path) -> String {
    let base = tree.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = base.split_once('-').map_or(base.as_str(), |(_, n)| n);
    let cut = name
        .char_indices()
        .find(|&(i, c)| c == '-' && name[i + 1..].starts_with(|d: char| d.is_ascii_digit()));
    cut.map_or(name, |(i, _)| &name[..i]).to_owned()
}

/// Where rsync's host keeps `old` ("onto the old tree"): under the name of the new tree of the
/// same package name (or the only new tree, when both closures are one path), else its own.
fn rsync_target(old: &Path, trees: &[PathBuf], base_trees: &[PathBuf]) -> Option<PathBuf> {
    let same = trees.iter().find(|t| tree_name(t) == tree_name(old));
    let only = (trees.len() == 1 && base_trees.len() == 1).then(|| &trees[0]);
    same.or(only).unwrap_or(&old.to_path_buf()).file_name().map(PathBuf::from)
}

/// Shape `lo` for `link` (loopback: no qdisc, no latency).
fn shape(relay: &transfer::relay::Relay, qdisc: Qdisc, link: &Link) -> anyhow::Result<String> {
    let _ = run_tool("tc", &["qdisc", "del", "dev", "lo", "root"].map(String::from));
    relay.set_latency(link.latency);
    if !link.rate.is_finite() {
        return Ok("unshaped".into());
    }
    let mut args: Vec<String> = ["qdisc", "add", "dev", "lo", "root"].map(String::from).into();
    args.extend(qdisc.tc_args(link.rate, link.latency));
    run_tool("tc", &args)?;
    Ok(format!(
        "tc {}{}",
        args.join(" "),
        if qdisc == Qdisc::Tbf { " + relay latency" } else { "" }
    ))
}

/// Inside the namespace: set up, run every tool on every link and round, report.
fn inside(global: &GlobalOpts, args: &BenchArgs, work: &Path) -> anyhow::Result<ExitCode> {
    let sshd = SshdFiles::load(&work.join("sshd"))?;
    let qdisc = match std::env::var(NETNS_QDISC_ENV).as_deref() {
        Ok("netem") => Qdisc::Netem,
        _ => Qdisc::Tbf,
    };
    run_tool("ip", &["link", "set", "lo", "up"].map(String::from))?;
    run_tool("ip", &["link", "set", "lo", "mtu", "1500"].map(String::from))?;
    let relay = transfer::relay::Relay::new(Duration::ZERO)?;
    relay.tcp_to_unix(([127, 0, 0, 1], sshd.port).into(), work.join("sshd.sock"))?;

    let base = !args.base.is_empty();
    let mut tools = vec![Tool::Ferry];
    let mut skipped = Vec::new();
    for word in args.compare.as_deref().unwrap_or("").split(',').filter(|w| !w.trim().is_empty()) {
        let tool = Tool::parse(word)?;
        if tools.contains(&tool) {
            continue;
        }
        match tool.available(base) {
            Ok(()) => tools.push(tool),
            Err(why) => {
                eprintln!("ferry bench: skipping {}: {why}", tool.name());
                skipped.push(json!({ "tool": tool.name(), "why": why }));
            }
        }
    }
    let mut links = vec![Link::loopback()];
    links.extend(stats::parse_links(&args.links)?);

    let store = crate::settings::open_read_only(global)?;
    let layout = crate::settings::layout(global)?;
    let parse = |list: &[String]| {
        list.iter()
            .map(|p| crate::settings::parse_store_arg(&store, p))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let (roots, base_roots) = (parse(&args.paths)?, parse(&args.base)?);
    let closure = store.closure(&roots).context("cannot compute the closure")?;
    let base_closure = store.closure(&base_roots).context("cannot compute the base closure")?;
    drop(store);
    let abs = |p: &nar_core::store_path::StorePath| p.to_absolute(layout.store_dir());
    let trees: Vec<PathBuf> = closure.paths().map(|p| layout.physical_path(p)).collect();
    let base_trees: Vec<PathBuf> = if base {
        base_closure.paths().map(|p| layout.physical_path(p)).collect()
    } else {
        Vec::new()
    };
    let nix_src = work.join("nix-src");
    let add = |trees: &[PathBuf]| -> anyhow::Result<Vec<String>> {
        if trees.is_empty() || !tools.iter().any(|t| matches!(t, Tool::Nix | Tool::NixSshNg)) {
            return Ok(Vec::new());
        }
        let mut c = sshd.nix_command("nix-store");
        c.arg("--store").arg(&nix_src).arg("--add").args(trees);
        Ok(run(&mut c)?.lines().map(str::to_owned).collect())
    };
    let setup = Setup {
        global,
        roots: roots.iter().map(abs).collect(),
        base_roots: base_roots.iter().map(abs).collect(),
        nix_paths: add(&trees)?,
        nix_base_paths: add(&base_trees)?,
        sshd,
        work: work.to_owned(),
        trees,
        base_trees,
        nix_src,
    };

    let rounds = args.rounds.max(1);
    let load_before = load();
    eprintln!(
        "ferry bench --compare: {} paths ({} NAR){}, {} tools, {} links, {rounds} rounds; load {load_before}",
        closure.len(),
        format_bytes(closure.total_nar_size()),
        if base { format!(", onto a base of {} paths", base_closure.len()) } else { String::new() },
        tools.len(),
        links.len(),
    );
    let mut samples = Vec::new();
    let mut runs = Vec::new();
    let mut link_json = Vec::new();
    let mut failed = false;
    for link in &links {
        let how = shape(&relay, qdisc, link)?;
        link_json.push(json!({
            "name": link.name,
            "rate_bytes_per_sec": link.rate.is_finite().then_some(link.rate),
            "latency_ms": link.latency.as_secs_f64() * 1e3,
            "shaping": how,
        }));
        for round in 0..rounds {
            for i in stats::round_order(tools.len(), round) {
                let tool = tools[i];
                let host = work.join(format!("host-{}-{round}-{i}", link.name));
                let (sample, run) = setup.run_one(tool, &host, link, round);
                failed |= sample.is_none();
                samples.extend(sample);
                runs.push(run);
            }
        }
    }
    let _ = run_tool("tc", &["qdisc", "del", "dev", "lo", "root"].map(String::from));
    let rows = stats::table(&samples, Tool::Ferry.name());
    let load_after = load();
    if let Some(file) = &args.plot {
        let rates: Vec<(String, Option<f64>)> =
            links.iter().map(|l| (l.name.clone(), l.mbit())).collect();
        let title = format!(
            "{} paths, {} NAR{}",
            closure.len(),
            format_bytes(closure.total_nar_size()),
            if base { " (generation update)" } else { "" }
        );
        super::plot::write(file, &rows, &rates, &title)?;
    }
    let spread =
        |s: Option<Spread>| s.map(|s| json!({ "median": s.median, "min": s.min, "max": s.max }));
    let out = json!({
        "closure_paths": closure.len(),
        "closure_nar_bytes": closure.total_nar_size(),
        "base_paths": if base { base_closure.len() } else { 0 },
        "rounds": rounds,
        "load_before": load_before,
        "load_after": load_after,
        "tools": tools.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "skipped": skipped,
        "links": link_json,
        "runs": runs,
        "rows": rows.iter().map(|r| json!({
            "link": r.link, "tool": r.tool, "seconds": spread(r.seconds),
            "wire_bytes": spread(r.wire_bytes), "ferry_ratio": r.ferry_ratio,
        })).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{out}");
    } else {
        print!("{}", text_table(&rows));
        println!("load average: before {load_before}, after {load_after}");
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The report as a Markdown table: median and range of wall time, median bytes on the wire,
/// ferry's time over each peer's.
fn text_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| link | tool | median s | min–max s | on the wire (median) | ferry ÷ tool |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (median, range) = match r.seconds {
            Some(s) => (format!("{:.2}", s.median), format!("{:.2}–{:.2}", s.min, s.max)),
            None => ("–".into(), "–".into()),
        };
        t.push_str(&format!(
            "| {} | {} | {median} | {range} | {} | {} |\n",
            r.link,
            r.tool,
            r.wire_bytes.map_or("–".into(), |w| format_bytes(w.median as u64)),
            r.ferry_ratio.map_or("–".into(), |x| format!("{x:.2}x")),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lo_counter() {
        let dev = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:  123456     100    0    0    0     0          0         0   654321     99    0    0    0     0       0          0\n  \
            eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        assert_eq!(lo_tx_bytes(dev), Some(654321));
        assert_eq!(lo_tx_bytes("eth0: 1 2 3"), None);
    }

    #[test]
    fn names_and_tools() {
        assert_eq!(tree_name(Path::new("/gnu/store/abc-python3.11")), "python3.11");
        assert_eq!(tree_name(Path::new("/gnu/store/abc-python3-3.11.2")), "python3");
        assert_eq!(tree_name(Path::new("/gnu/store/abc-linux-firmware-2024")), "linux-firmware");
        assert_eq!(tree_name(Path::new("/x/nohash")), "nohash");
        let p = |s: &str| PathBuf::from(s);
        let (new, old) =
            ([p("/s/a-app-2.0"), p("/s/b-lib-1.1")], [p("/s/c-app-1.0"), p("/s/d-etc")]);
        assert_eq!(rsync_target(&old[0], &new, &old), Some(p("a-app-2.0")));
        assert_eq!(rsync_target(&old[1], &new, &old), Some(p("d-etc")));
        assert_eq!(
            rsync_target(&p("/s/x-foo"), &[p("/s/y-bar")], &[p("/s/x-foo")]),
            Some(p("y-bar"))
        );
        assert_eq!(Tool::parse("nix-ssh-ng").unwrap(), Tool::NixSshNg);
        assert!(Tool::parse("scp").is_err());
        assert!(Tool::Casync.available(false).is_err());
    }

    #[test]
    fn table_text() {
        let rows = stats::table(
            &[
                ("loopback".into(), "ferry".into(), 1.0, 2048.0),
                ("loopback".into(), "rsync -az".into(), 2.0, 4096.0),
            ],
            "ferry",
        );
        let t = text_table(&rows);
        assert!(t.contains("| loopback | rsync -az | 2.00 | 2.00–2.00 | 4.0 KiB | 0.50x |"), "{t}");
    }
}
