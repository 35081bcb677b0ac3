//! `delta_bench`: bytes on the wire for the Debian delta corpus (perf.md §4), ferry's delta
//! frames against zstd's `--patch-from`, plain zstd and rsync, with the time and peak RSS of
//! ferry's delta encode and decode.
//!
//! Corpus: `/work/shared/corpus/debian-pairs.sh DIR` (default `/tmp/delta-corpus`): for each tag
//! `DIR/nar/TAG-{old,new}.nar` and the unpacked trees `DIR/tree/TAG-{old,new}`.
//!
//! Each ferry encode and decode runs as a child process of this binary (hidden `encode` /
//! `decode` subcommands) that reports its own peak RSS (`VmHWM`), so the figures are per side.
//! The decode child rebuilds the base NAR from the old *tree* (as the agent does from its store),
//! checks its hash, applies the delta and checks the new NAR's hash.
//!
//! Columns: (a) ferry full zstd of the new NAR at the level the adaptive controller picks for a
//! 20 Mbit/s link, and at max; (b) `zstd -19 --long=29 -T2`; (c) `zstd -19 --long=29 -T2
//! --patch-from=OLD`; (d) ferry delta at `--compress max`; (e) rsync of the unpacked trees;
//! with `--nix`, (n) the bytes `nix copy --to ssh://` puts on the connection for the new tree
//! ([`ferry_benches::nix_copy`], over the test harness's loopback sshd). `--segment-mib` and
//! `--budget-mib` change (d)'s segmentation (experiments; the protocol uses the defaults).
//! (b), (c) are read from `--ref-dir` (`TAG.b.zst`, `TAG.c.zst`) when present, else run if
//! `--run-zstd`, else left out.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nar_core::hash::{NarDigest, NarHasher, Sha256Hash};
use serde_json::{json, Value};
use transfer::delta::stream::{self as delta, EncodeParams, VerifiedBase};
use transfer::push::adaptive::{AdaptiveConfig, Controller};

#[derive(Debug, Parser)]
#[command(name = "delta_bench")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Corpus directory (debian-pairs.sh output).
    #[arg(long, default_value = "/tmp/delta-corpus")]
    corpus: PathBuf,
    /// Pairs to measure, comma-separated.
    #[arg(long, default_value = "lo,linux,ff")]
    pairs: String,
    /// Level of ferry's delta (d): the `--compress max` level.
    #[arg(long, default_value_t = delta::MAX_LEVEL)]
    delta_level: i32,
    /// Skip (a) at max level (slow: ~2 MB/s).
    #[arg(long)]
    skip_full_max: bool,
    /// Directory with `TAG.b.zst` / `TAG.c.zst` made by the zstd CLI.
    #[arg(long, default_value = "/tmp/delta-ref")]
    ref_dir: PathBuf,
    /// Run the zstd CLI for (b)/(c) when `--ref-dir` has no result.
    #[arg(long)]
    run_zstd: bool,
    /// rsync over this ssh config's host `peer` (else the harness's sshd with `--nix`, else
    /// local-to-local with --no-whole-file).
    #[arg(long)]
    ssh_config: Option<PathBuf>,
    /// Scratch directory (delta files, rsync targets).
    #[arg(long, default_value = "/tmp/delta-bench")]
    tmp: PathBuf,
    /// Write the JSON result here.
    #[arg(long)]
    json_file: Option<PathBuf>,
    /// Also measure `nix copy --to ssh://` of the new tree (a loopback sshd is started).
    #[arg(long)]
    nix: bool,
    /// Skip ferry's delta (d) (slow at level 19).
    #[arg(long)]
    skip_delta: bool,
    /// Skip rsync (e).
    #[arg(long)]
    skip_rsync: bool,
    /// (d) segment size in MiB (default: `delta::SEGMENT_MAX`).
    #[arg(long)]
    segment_mib: Option<u64>,
    /// (d) frame budget (prefix + segment) in MiB (default: `delta::FRAME_BUDGET`).
    #[arg(long)]
    budget_mib: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (child) encode NEW against BASE into OUT; prints JSON.
    #[command(hide = true)]
    Encode { base: PathBuf, new: PathBuf, out: PathBuf, level: i32, segment: u64, budget: u64 },
    /// (child) rebuild the base from TREE, check BASE_HASH, apply DELTA, check NEW_HASH.
    #[command(hide = true)]
    Decode {
        tree: PathBuf,
        base_hash: String,
        base_size: u64,
        delta: PathBuf,
        new_hash: String,
        new_size: u64,
    },
}

fn vm_hwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn file_digest(p: &Path) -> Result<NarDigest> {
    let mut f =
        BufReader::with_capacity(1 << 20, File::open(p).with_context(|| p.display().to_string())?);
    let mut h = NarHasher::new();
    io::copy(&mut f, &mut h)?;
    Ok(h.finish())
}

fn child_encode(base: &Path, new: &Path, out: &Path, params: &EncodeParams) -> Result<()> {
    let t0 = Instant::now();
    let base_nar = fs::read(base)?;
    let bd = {
        let mut h = NarHasher::new();
        h.update(&base_nar);
        h.finish()
    };
    let new_size = fs::metadata(new)?.len();
    let reader = BufReader::with_capacity(1 << 20, File::open(new)?);
    let w = io::BufWriter::new(File::create(out)?);
    let t1 = Instant::now();
    let stats = delta::encode(&base_nar, &bd, reader, new_size, params, w)?;
    let enc = t1.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bytes": stats.delta_bytes, "encode_s": enc, "total_s": t0.elapsed().as_secs_f64(),
               "segments": stats.segments.len(), "peak_rss_kib": vm_hwm_kib()})
    );
    Ok(())
}

fn child_decode(tree: &Path, bh: &str, bs: u64, d: &Path, nh: &str, ns: u64) -> Result<()> {
    let t0 = Instant::now();
    let base = VerifiedBase::rebuild(tree, &NarDigest { hash: Sha256Hash::parse(bh)?, size: bs })?;
    let rebuild = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let input = BufReader::with_capacity(1 << 20, File::open(d)?);
    let expected = NarDigest { hash: Sha256Hash::parse(nh)?, size: ns };
    delta::decode_verified(&base, input, io::sink(), &expected)?;
    println!(
        "{}",
        json!({"rebuild_s": rebuild, "apply_s": t1.elapsed().as_secs_f64(),
               "total_s": t0.elapsed().as_secs_f64(), "peak_rss_kib": vm_hwm_kib(), "verified": true})
    );
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

fn run_child(args: &[String]) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// ferry's full compression: the zstd stream encoder at `level` (long mode at 19, as the
/// protocol's full path would use), bytes only.
fn full_zstd(new: &Path, level: i32) -> Result<(u64, f64)> {
    let t = Instant::now();
    let mut counter = Counter(0);
    let mut enc = zstd::stream::Encoder::new(&mut counter, level)?;
    enc.long_distance_matching(level >= 19)?;
    if level >= 19 {
        enc.window_log(27)?;
    }
    io::copy(&mut BufReader::with_capacity(1 << 20, File::open(new)?), &mut enc)?;
    enc.finish()?;
    Ok((counter.0, t.elapsed().as_secs_f64()))
}

struct Counter(u64);
impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn zstd_cli(args: &Args, tag: &str, which: &str, old: &Path, new: &Path) -> Result<Option<u64>> {
    let p = args.ref_dir.join(format!("{tag}.{which}.zst"));
    let time = args.ref_dir.join(format!("{tag}.{which}.time"));
    if p.exists() && time.exists() {
        return Ok(Some(fs::metadata(&p)?.len()));
    }
    if !args.run_zstd {
        return Ok(None);
    }
    fs::create_dir_all(&args.ref_dir)?;
    let mut c = Command::new("zstd");
    c.args(["-q", "-f", "-19", "-T2", "--long=29"]);
    if which == "c" {
        c.arg(format!("--patch-from={}", old.display()));
    }
    c.arg(new).arg("-o").arg(&p);
    eprintln!("  running {c:?}");
    if !c.status()?.success() {
        bail!("zstd failed");
    }
    fs::write(&time, "")?;
    Ok(Some(fs::metadata(&p)?.len()))
}

/// rsync of the new tree onto a copy of the old one; bytes sent + received as `--stats` says.
fn rsync(
    args: &Args,
    ssh_config: Option<&Path>,
    old_tree: &Path,
    new_tree: &Path,
    tag: &str,
) -> Result<(u64, String)> {
    let dst = args.tmp.join(format!("rsync-{tag}"));
    let _ = fs::remove_dir_all(&dst);
    let st = Command::new("cp").arg("-a").arg(old_tree).arg(&dst).status()?;
    if !st.success() {
        bail!("cp -a failed");
    }
    let mut c = Command::new("rsync");
    c.args(["-az", "--stats", "--delete"]);
    let how = if let Some(cfg) = ssh_config {
        c.arg("-e").arg(format!("ssh -F {}", cfg.display()));
        c.arg(format!("{}/", new_tree.display())).arg(format!("peer:{}/", dst.display()));
        "rsync -az over ssh (loopback sshd)".to_string()
    } else {
        c.arg("--no-whole-file");
        c.arg(format!("{}/", new_tree.display())).arg(format!("{}/", dst.display()));
        "rsync -az --no-whole-file local-to-local (approximation)".to_string()
    };
    let out = c.output()?;
    if !out.status.success() {
        bail!("rsync: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .map(|v| v.replace(',', "").parse().unwrap_or(0))
            .unwrap_or(0)
    };
    let bytes = num("Total bytes sent:") + num("Total bytes received:");
    let _ = fs::remove_dir_all(&dst);
    Ok((bytes, how))
}

fn main() -> Result<()> {
    let args = Args::parse();
    match &args.cmd {
        Some(Cmd::Encode { base, new, out, level, segment, budget }) => {
            let params =
                EncodeParams { level: *level, segment_max: *segment, frame_budget: *budget };
            return child_encode(base, new, out, &params);
        }
        Some(Cmd::Decode { tree, base_hash, base_size, delta, new_hash, new_size }) => {
            return child_decode(tree, base_hash, *base_size, delta, new_hash, *new_size)
        }
        None => {}
    }
    fs::create_dir_all(&args.tmp)?;
    // The adaptive default on a 20 Mbit/s link (priors only, as at the start of a push).
    let link = 20e6 / 8.0;
    let choice = Controller::new(AdaptiveConfig::default()).with_link_rate(link).choose(false);
    let choice_delta = Controller::new(AdaptiveConfig::default()).with_link_rate(link).choose(true);
    eprintln!(
        "adaptive at 20 Mbit/s: full level {}, with a base: {:?}",
        choice.level, choice_delta
    );
    let sshd = args.nix.then(ferry_tests::sshd::Sshd::start);
    let segment = args.segment_mib.map_or(delta::SEGMENT_MAX, |m| m << 20);
    let budget = args.budget_mib.map_or(delta::FRAME_BUDGET, |m| m << 20);
    let mut rows = Vec::new();
    for tag in args.pairs.split(',') {
        let old = args.corpus.join(format!("nar/{tag}-old.nar"));
        let new = args.corpus.join(format!("nar/{tag}-new.nar"));
        let old_tree = args.corpus.join(format!("tree/{tag}-old"));
        let new_tree = args.corpus.join(format!("tree/{tag}-new"));
        let od = file_digest(&old)?;
        let nd = file_digest(&new)?;
        eprintln!("{tag}: NAR {} -> {} B", od.size, nd.size);
        let (a_auto, a_auto_s) = full_zstd(&new, choice.level)?;
        eprintln!("  (a) full zstd -{}: {a_auto} B ({a_auto_s:.1} s)", choice.level);
        let a_max = if args.skip_full_max {
            None
        } else {
            let (b, s) = full_zstd(&new, delta::MAX_LEVEL)?;
            eprintln!("  (a) full zstd -{} --long: {b} B ({s:.1} s)", delta::MAX_LEVEL);
            Some(b)
        };
        let b = zstd_cli(&args, tag, "b", &old, &new)?;
        let c = zstd_cli(&args, tag, "c", &old, &new)?;
        eprintln!("  (b) {b:?}  (c) {c:?}");
        let dfile = args.tmp.join(format!("{tag}.delta"));
        let s = |p: &Path| p.display().to_string();
        let (enc, dec) = if args.skip_delta {
            (Value::Null, Value::Null)
        } else {
            let enc = run_child(&[
                "encode".into(),
                s(&old),
                s(&new),
                s(&dfile),
                args.delta_level.to_string(),
                segment.to_string(),
                budget.to_string(),
            ])?;
            eprintln!("  (d) encode {enc}");
            let dec = run_child(&[
                "decode".into(),
                s(&old_tree),
                od.hash.to_hex(),
                od.size.to_string(),
                s(&dfile),
                nd.hash.to_hex(),
                nd.size.to_string(),
            ])?;
            eprintln!("  (d) decode {dec}");
            (enc, dec)
        };
        let d = enc["bytes"].as_u64();
        let (e, e_how) = if args.skip_rsync {
            (None, String::new())
        } else {
            // The harness's sshd (with --nix) when no --ssh-config is given.
            let harness = sshd.as_ref().map(|s| s.ssh_config());
            let cfg = args.ssh_config.as_deref().or(harness.as_deref());
            let (e, how) = rsync(&args, cfg, &old_tree, &new_tree, tag)?;
            eprintln!("  (e) {how}: {e} B");
            (Some(e), how)
        };
        let nix = match &sshd {
            Some(sshd) => {
                let n = ferry_benches::nix_copy::nix_copy_over_ssh(sshd, &args.tmp, &[&new_tree])?;
                eprintln!(
                    "  (n) nix copy --to ssh://: {} B sent, {} B received, NAR {} B, {:.1} s",
                    n.sent, n.received, n.nar_bytes, n.seconds
                );
                json!({"sent": n.sent, "received": n.received, "wire_bytes": n.wire_bytes(),
                       "nar_bytes": n.nar_bytes, "seconds": n.seconds})
            }
            None => Value::Null,
        };
        let ratio = |x: Option<u64>, y: Option<u64>| Some(x? as f64 / y? as f64);
        rows.push(json!({
            "pair": tag, "old_nar": od.size, "new_nar": nd.size,
            "a_level": choice.level, "a_auto": a_auto, "a_auto_s": a_auto_s, "a_max": a_max,
            "b_zstd19_long": b, "c_patch_from19": c, "d_delta": d, "d_level": args.delta_level,
            "d_segment_max": segment, "d_frame_budget": budget,
            "d_encode": enc, "d_decode": dec, "e_rsync": e, "e_how": e_how,
            "nix_copy_ssh": nix, "load": loadavg(),
            "d_over_c": ratio(d, c), "d_over_e": ratio(d, e),
            "d_over_nix": ratio(d, nix["wire_bytes"].as_u64()),
        }));
        let _ = fs::remove_file(&dfile);
    }
    let out = json!({"adaptive_20mbit": {"full_level": choice.level, "with_base": format!("{choice_delta:?}")}, "pairs": rows});
    println!("{}", serde_json::to_string_pretty(&out)?);
    if let Some(p) = &args.json_file {
        fs::write(p, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
