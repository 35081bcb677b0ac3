//! `nar_bench`: ferry's NAR dump, hash and restore against Nix 2.x and the `nix-nar` crate,
//! side by side in one run on the same warm tree.
//!
//! It builds nothing: it runs an already-built release `ferry` binary (`--ferry`), `nix-store`
//! and `nix-hash` from `PATH`, and itself (hidden `worker` subcommand) for the in-process
//! comparisons, so that every measured thing is a separate process whose peak RSS
//! `/usr/bin/time -f %M` can report. Tools of one row run alternately (ferry, peer, ferry,
//! peer, ...) after a warm-up pass, and each row reports median and min–max seconds, GB/s of
//! NAR (10^9 bytes/s), peak RSS and ferry's throughput over each other tool's.
//!
//! See `benches/README.md` for what each row measures and the figures measured so far.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_benches::{fill_pseudo_random, gb_per_s, load_average, summarize, Summary};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Peak-RSS limit for every ferry process, whatever the file sizes.
const RSS_LIMIT_KIB: u64 = 32 * 1024;
/// Throughput targets (ferry over the Nix tool).
const DUMP_TARGET: f64 = 1.25;
const HASH_TARGET: f64 = 1.35;
/// Size of the in-memory buffer of the SHA-256 ceiling measurement.
const SHA_BUFFER: usize = 1 << 30;

/// Compare ferry's NAR dump/hash/restore with nix-store, nix-hash and the nix-nar crate.
#[derive(Debug, Parser)]
#[command(name = "nar_bench")]
struct Args {
    /// The release ferry binary [default: $CARGO_TARGET_DIR/release/ferry if that variable is
    /// set, else target/release/ferry under the workspace root].
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// The real tree to serialize.
    #[arg(long, default_value = "/usr/lib")]
    tree: PathBuf,
    /// Timed runs of each tool per row.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print the result as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Also write the JSON result to this file (with the table on stdout).
    #[arg(long)]
    json_file: Option<PathBuf>,
    /// Size in bytes of the file of the generated one-file tree (0: skip that data set).
    #[arg(long, default_value_t = 2_000_000_000)]
    big_size: u64,
    /// Where the generated one-file tree is written (removed afterwards).
    #[arg(long, default_value = "/tmp")]
    tmp: PathBuf,
    /// Where the NAR to restore and the restore targets go (removed afterwards). Same disk as
    /// /usr/lib here; not /tmp, where something on this machine makes file creation ~1.5 ms.
    #[arg(long, default_value = "/var/tmp")]
    restore_dir: PathBuf,
    /// Run only these benches (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Bench>,
    #[command(subcommand)]
    worker: Option<Internal>,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// (internal) One in-process measurement; prints "SECONDS NAR_BYTES HASH".
    #[command(hide = true)]
    Worker { kind: Kind, path: PathBuf },
}

/// Groups of rows, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// `ferry nar dump` vs `nix-store --dump`, to /dev/null.
    Dump,
    /// The same into a pipe read by `cat > /dev/null`.
    Pipe,
    /// `ferry nar hash` vs `nix-hash`, and the SHA-256 ceiling.
    Hash,
    /// In process: nar-core's dump / hash_path vs the nix-nar crate's encoder.
    Lib,
    /// `ferry nar restore` vs `nix-store --restore`.
    Restore,
}

/// In-process measurements, each run in a fresh worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// `nar_core::dump::dump` into `io::sink()`.
    FerryDump,
    /// `nar_core::dump::hash_path` (walk and reads on a second thread).
    FerryHash,
    /// `nar_core::dump::dump_hashed` into `io::sink()` (serial dump + SHA-256, one thread).
    FerryDumpHashed,
    /// nix-nar's `Encoder` through `io::copy` into `io::sink()` (as its documentation shows).
    NixnarDump,
    /// nix-nar's `Encoder` read in 64 KiB chunks into `io::sink()`.
    NixnarDump64k,
    /// nix-nar's `Encoder` through `io::copy` into a SHA-256 hasher.
    NixnarHash,
    /// SHA-256 of a 1 GiB in-memory buffer (one core's ceiling).
    Sha256,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.worker {
        Some(Internal::Worker { kind, path }) => worker(*kind, path),
        None => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nar_bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Worker: one in-process measurement.

fn worker(kind: Kind, path: &Path) -> Result<()> {
    let (secs, bytes, hash) = match kind {
        Kind::Sha256 => {
            let mut buf = vec![0u8; SHA_BUFFER];
            fill_pseudo_random(&mut buf, &mut 0x9e37_79b9_7f4a_7c15);
            let start = Instant::now();
            let digest: [u8; 32] = Sha256::digest(&buf).into();
            let secs = start.elapsed().as_secs_f64();
            (secs, buf.len() as u64, nar_core::hash::Sha256Hash(digest).to_nix32())
        }
        _ => {
            let start = Instant::now();
            let (bytes, hash) = in_process(kind, path)?;
            (start.elapsed().as_secs_f64(), bytes, hash)
        }
    };
    println!("{secs} {bytes} {}", if hash.is_empty() { "-" } else { &hash });
    Ok(())
}

fn in_process(kind: Kind, path: &Path) -> Result<(u64, String)> {
    Ok(match kind {
        Kind::FerryDump => (nar_core::dump::dump(path, io::sink())?, String::new()),
        Kind::FerryHash => {
            let digest = nar_core::dump::hash_path(path)?;
            (digest.size, digest.hash.to_nix32())
        }
        Kind::FerryDumpHashed => {
            let digest = nar_core::dump::dump_hashed(path, io::sink())?;
            (digest.size, digest.hash.to_nix32())
        }
        Kind::NixnarDump => {
            let mut encoder = nix_nar::Encoder::new(path)?;
            (io::copy(&mut encoder, &mut io::sink())?, String::new())
        }
        Kind::NixnarDump64k => {
            let mut encoder = nix_nar::Encoder::new(path)?;
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                match encoder.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            (total, String::new())
        }
        Kind::NixnarHash => {
            let mut encoder = nix_nar::Encoder::new(path)?;
            let mut hasher = nar_core::hash::NarHasher::new();
            io::copy(&mut encoder, &mut hasher)?;
            let digest = hasher.finish();
            (digest.size, digest.hash.to_nix32())
        }
        Kind::Sha256 => unreachable!("handled by the caller"),
    })
}

// ---------------------------------------------------------------------------------------------
// Running tools.

/// Where a command's stdout goes.
#[derive(Debug, Clone, Copy)]
enum Out {
    /// `> /dev/null`.
    Null,
    /// `| cat > /dev/null`.
    Cat,
    /// Captured (hash output, worker result).
    Capture,
}

#[derive(Debug, Clone)]
enum How {
    Cli {
        argv: Vec<OsString>,
        stdin: Option<PathBuf>,
        out: Out,
        /// A directory the command creates (restore): removed before and after each run,
        /// and after the first run checked to hash to the source's hash.
        creates: Option<(PathBuf, String)>,
    },
    Worker(Kind, PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The ferry tool the row is about (first in the row).
    Ferry,
    /// Another ferry variant, for explanation.
    FerryVariant,
    /// A tool ferry is compared with.
    Peer,
    /// A physical ceiling, not a competitor.
    Ceiling,
}

#[derive(Debug, Clone)]
struct Tool {
    name: String,
    role: Role,
    how: How,
    /// Bytes processed per run, for GB/s.
    bytes: u64,
    /// What the captured output (hash) must be, if checked.
    expect: Option<String>,
}

#[derive(Debug)]
struct Sample {
    secs: f64,
    rss_kib: Option<u64>,
    output: String,
}

struct Ctx {
    ferry: PathBuf,
    exe: PathBuf,
    time: Option<PathBuf>,
    rss_file: PathBuf,
    runs: usize,
}

impl Ctx {
    fn run(&self, tool: &Tool) -> Result<Sample> {
        let (argv, stdin, out, creates) = match &tool.how {
            How::Cli { argv, stdin, out, creates } => {
                (argv.clone(), stdin.clone(), *out, creates.clone())
            }
            How::Worker(kind, path) => {
                let kind = kind.to_possible_value().expect("no hidden kinds");
                let argv = vec![
                    self.exe.clone().into_os_string(),
                    "worker".into(),
                    kind.get_name().into(),
                    path.clone().into_os_string(),
                ];
                (argv, None, Out::Capture, None)
            }
        };
        if let Some((dir, _)) = &creates {
            remove_if_exists(dir)?;
        }
        let mut cmd = match &self.time {
            Some(time) => {
                let _ = fs::remove_file(&self.rss_file);
                let mut cmd = Command::new(time);
                cmd.arg("-f").arg("%M").arg("-o").arg(&self.rss_file).args(&argv);
                cmd
            }
            None => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        };
        // Nix's tools run hermetic, as in the tests (through `time` too, which passes the
        // environment on).
        let program = Path::new(&argv[0]).file_name().and_then(|n| n.to_str()).unwrap_or("");
        if ferry_tests::package_of(program) == "nix-bin" {
            ferry_tests::nix::configure(&mut cmd);
        }
        cmd.stdin(match &stdin {
            Some(path) => Stdio::from(
                File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ),
            None => Stdio::null(),
        });
        cmd.stderr(Stdio::inherit());
        let shown = || argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        let start = Instant::now();
        let (status, output) = match out {
            Out::Null => (cmd.stdout(Stdio::null()).status()?, Vec::new()),
            Out::Capture => {
                let output = cmd.stdout(Stdio::piped()).output()?;
                (output.status, output.stdout)
            }
            Out::Cat => {
                let mut producer = cmd.stdout(Stdio::piped()).spawn()?;
                let pipe = producer.stdout.take().expect("stdout is piped");
                let mut cat = Command::new("cat").stdin(pipe).stdout(Stdio::null()).spawn()?;
                let status = producer.wait()?;
                let cat_status = cat.wait()?;
                if !cat_status.success() {
                    bail!("cat after `{}` failed: {cat_status}", shown());
                }
                (status, Vec::new())
            }
        };
        let mut secs = start.elapsed().as_secs_f64();
        if !status.success() {
            bail!("`{}` failed: {status}", shown());
        }
        let rss_kib = match &self.time {
            Some(_) => fs::read_to_string(&self.rss_file)
                .ok()
                .and_then(|t| t.lines().rev().find_map(|l| l.trim().parse().ok())),
            None => None,
        };
        let mut output = String::from_utf8_lossy(&output).trim().to_owned();
        if let How::Worker(..) = tool.how {
            let mut fields = output.split_whitespace();
            let (Some(s), Some(b), Some(h)) = (fields.next(), fields.next(), fields.next()) else {
                bail!("worker `{}` printed {output:?}", shown());
            };
            secs = s.parse().context("worker seconds")?;
            let bytes: u64 = b.parse().context("worker bytes")?;
            if bytes != tool.bytes && tool.bytes != 0 {
                bail!("`{}` produced {bytes} bytes, expected {}", shown(), tool.bytes);
            }
            output = if h == "-" { String::new() } else { h.to_owned() };
        }
        Ok(Sample { secs, rss_kib, output })
    }

    fn ferry_cmd(&self, args: &[&dyn AsRefOs]) -> Vec<OsString> {
        let mut argv = vec![self.ferry.clone().into_os_string()];
        argv.extend(args.iter().map(|a| a.os()));
        argv
    }
}

/// Anything that can be one argument.
trait AsRefOs {
    fn os(&self) -> OsString;
}
impl AsRefOs for &str {
    fn os(&self) -> OsString {
        (*self).into()
    }
}
impl AsRefOs for PathBuf {
    fn os(&self) -> OsString {
        self.clone().into_os_string()
    }
}

fn argv(items: &[&dyn AsRefOs]) -> Vec<OsString> {
    items.iter().map(|a| a.os()).collect()
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => nar_core::restore::remove_tree(path)
            .with_context(|| format!("removing {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

fn sync() {
    let _ = Command::new("sync").status();
}

// ---------------------------------------------------------------------------------------------
// Rows.

#[derive(Debug)]
struct ToolResult {
    name: String,
    role: Role,
    bytes: u64,
    secs: Vec<f64>,
    rss_kib: Option<u64>,
    error: Option<String>,
}

impl ToolResult {
    fn summary(&self) -> Option<Summary> {
        summarize(&self.secs)
    }
    fn gbps(&self) -> Option<f64> {
        self.summary().map(|s| gb_per_s(self.bytes, s.median))
    }
}

#[derive(Debug)]
struct Row {
    data_set: String,
    bench: String,
    /// Ferry's throughput over the first peer's must reach this.
    target: Option<f64>,
    load_before: Option<[f64; 3]>,
    tools: Vec<ToolResult>,
    notes: Vec<String>,
}

impl Row {
    fn ferry(&self) -> &ToolResult {
        &self.tools[0]
    }
    /// Ferry's throughput over `other`'s (ratio of median times when the bytes are equal).
    fn ratio(&self, other: &ToolResult) -> Option<f64> {
        Some(self.ferry().gbps()? / other.gbps()?)
    }
    fn first_peer(&self) -> Option<&ToolResult> {
        self.tools.iter().find(|t| t.role == Role::Peer)
    }
    fn target_met(&self) -> Option<bool> {
        let target = self.target?;
        Some(self.ratio(self.first_peer()?)? >= target)
    }
}

fn bench_row(ctx: &Ctx, data_set: &str, bench: &str, target: Option<f64>, tools: Vec<Tool>) -> Row {
    let load_before = load_average();
    eprintln!(
        "== {data_set}: {bench} (load {})",
        load_before.map_or("?".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
    );
    let mut results: Vec<ToolResult> = tools
        .iter()
        .map(|t| ToolResult {
            name: t.name.clone(),
            role: t.role,
            bytes: t.bytes,
            secs: Vec::new(),
            rss_kib: None,
            error: None,
        })
        .collect();
    let mut notes = Vec::new();
    for run in 0..ctx.runs {
        for (tool, result) in tools.iter().zip(results.iter_mut()) {
            if result.error.is_some() {
                continue;
            }
            match ctx.run(tool) {
                Ok(sample) => {
                    eprintln!(
                        "   run {}/{} {:<34} {:>8.3} s {:>6.2} GB/s  rss {}",
                        run + 1,
                        ctx.runs,
                        tool.name,
                        sample.secs,
                        gb_per_s(tool.bytes, sample.secs),
                        sample
                            .rss_kib
                            .map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
                    );
                    if let Some(expect) = &tool.expect {
                        if &sample.output != expect {
                            let note = format!(
                                "{} printed {:?}, expected {expect:?}",
                                tool.name, sample.output
                            );
                            eprintln!("   WARNING: {note}");
                            notes.push(note);
                        }
                    }
                    result.secs.push(sample.secs);
                    result.rss_kib = result.rss_kib.max(sample.rss_kib);
                }
                Err(err) => {
                    eprintln!("   ERROR: {} failed: {err:#}", tool.name);
                    result.error = Some(format!("{err:#}"));
                }
            }
            if let How::Cli { creates: Some((dir, hash)), .. } = &tool.how {
                if run == 0 && result.error.is_none() {
                    if let Some(note) = verify_restored(ctx, &tool.name, dir, hash) {
                        eprintln!("   WARNING: {note}");
                        notes.push(note);
                    }
                }
                if let Err(err) = remove_if_exists(dir) {
                    notes.push(format!("{err:#}"));
                }
                sync();
            }
        }
    }
    notes.dedup();
    Row {
        data_set: data_set.into(),
        bench: bench.into(),
        target,
        load_before,
        tools: results,
        notes,
    }
}

/// After the first restore of each tool: the restored tree must hash to the source's hash.
fn verify_restored(ctx: &Ctx, name: &str, dir: &Path, expect: &str) -> Option<String> {
    let out = Command::new(&ctx.ferry).args(["nar", "hash"]).arg(dir).output();
    match out {
        Ok(out) if out.status.success() => {
            let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (got != expect)
                .then(|| format!("tree restored by {name} hashes to {got}, not {expect}"))
        }
        Ok(out) => Some(format!("hashing the tree restored by {name} failed: {}", out.status)),
        Err(err) => Some(format!("hashing the tree restored by {name} failed: {err}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The bench.

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = remove_if_exists(&self.0) {
            eprintln!("nar_bench: could not remove {}: {err:#}", self.0.display());
        }
    }
}

fn default_ferry() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let dir = if dir.is_absolute() { dir } else { workspace_root().join(dir) };
            dir.join("release/ferry")
        }
        None => workspace_root().join("target/release/ferry"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_owned()
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = ferry_tests::tool(program).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn make_big_tree(dir: &Path, size: u64) -> Result<()> {
    fs::create_dir(dir)?;
    let mut file = File::create(dir.join("big.bin"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut state = 0x0123_4567_89ab_cdef_u64;
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill_pseudo_random(&mut buf[..n], &mut state);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(())
}

fn bench(args: &Args) -> Result<()> {
    let ferry = args.ferry.clone().unwrap_or_else(default_ferry);
    let ferry = fs::canonicalize(&ferry).with_context(|| {
        format!(
            "no ferry binary at {} (build it: cargo build --release -p deploy)",
            ferry.display()
        )
    })?;
    let exe = std::env::current_exe()?;
    let time = Some(PathBuf::from("/usr/bin/time")).filter(|p| p.is_file());
    if time.is_none() {
        eprintln!("nar_bench: /usr/bin/time not found: peak RSS will not be reported");
    }
    let nix_store = find_in_path("nix-store");
    let nix_hash = find_in_path("nix-hash");
    if nix_store.is_none() || nix_hash.is_none() {
        eprintln!(
            "nar_bench: nix-store/nix-hash not in PATH (apt-get install nix-bin): Nix rows skipped"
        );
    }
    let runs = args.runs.max(1);
    let benches: Vec<Bench> = if args.only.is_empty() {
        vec![Bench::Dump, Bench::Pipe, Bench::Hash, Bench::Lib, Bench::Restore]
    } else {
        args.only.clone()
    };

    fs::create_dir_all(&args.tmp)?;
    let scratch = Scratch(args.tmp.join(format!("ferry-bench-{}", std::process::id())));
    fs::create_dir(&scratch.0).with_context(|| format!("creating {}", scratch.0.display()))?;
    let ctx = Ctx { ferry: ferry.clone(), exe, time, rss_file: scratch.0.join("rss"), runs };
    fs::create_dir_all(&args.restore_dir)?;
    let restore_scratch =
        Scratch(args.restore_dir.join(format!("ferry-bench-restore-{}", std::process::id())));
    fs::create_dir(&restore_scratch.0)
        .with_context(|| format!("creating {}", restore_scratch.0.display()))?;

    let started = command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_default();
    let uptime_before = command_line("uptime", &[]).unwrap_or_default();
    eprintln!("nar_bench: {started}; {uptime_before}");
    eprintln!("nar_bench: ferry = {}", ferry.display());

    let mut data_sets = vec![("tree".to_owned(), fs::canonicalize(&args.tree)?)];
    if args.big_size > 0 {
        let dir = scratch.0.join("big");
        eprintln!("nar_bench: writing a {} byte file under {}", args.big_size, dir.display());
        make_big_tree(&dir, args.big_size)?;
        data_sets.push((format!("one {:.1} GB file", args.big_size as f64 / 1e9), dir));
    }

    let mut rows = Vec::new();
    let mut data_set_info = Vec::new();
    for (label, path) in &data_sets {
        let label = format!("{label} ({})", path.display());
        // Warm-up: every file read once by each reader, and the reference hash and size.
        eprintln!("== {label}: warm-up");
        let nar_size = {
            let out = Command::new(&ctx.exe)
                .args(["worker", "ferry-dump"])
                .arg(path)
                .output()
                .context("running the worker")?;
            if !out.status.success() {
                bail!("ferry dump of {} failed", path.display());
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace().nth(1).context("worker output")?.parse::<u64>()?
        };
        let ferry_hash = ctx
            .run(&Tool {
                name: "ferry nar hash".into(),
                role: Role::Ferry,
                how: How::Cli {
                    argv: ctx.ferry_cmd(&[&"nar", &"hash", path]),
                    stdin: None,
                    out: Out::Capture,
                    creates: None,
                },
                bytes: nar_size,
                expect: None,
            })?
            .output;
        let nix_hash_out = match &nix_hash {
            Some(nix_hash) => Some(
                ctx.run(&Tool {
                    name: "nix-hash".into(),
                    role: Role::Peer,
                    how: How::Cli {
                        argv: argv(&[nix_hash, &"--type", &"sha256", &"--base32", path]),
                        stdin: None,
                        out: Out::Capture,
                        creates: None,
                    },
                    bytes: nar_size,
                    expect: None,
                })?
                .output,
            ),
            None => None,
        };
        if let Some(theirs) = &nix_hash_out {
            if theirs != &ferry_hash {
                eprintln!("WARNING: ferry hash {ferry_hash} != nix-hash {theirs}");
            }
        }
        eprintln!("   NAR {nar_size} bytes, sha256 {ferry_hash}");
        data_set_info.push(json!({
            "label": label, "path": path, "nar_bytes": nar_size, "nar_sha256": ferry_hash,
            "nix_hash_agrees": nix_hash_out.as_ref().map(|h| h == &ferry_hash),
        }));
        let expect = Some(ferry_hash.clone());
        let cli = |name: &str, role, argv, out, expect: Option<String>| Tool {
            name: name.into(),
            role,
            how: How::Cli { argv, stdin: None, out, creates: None },
            bytes: nar_size,
            expect,
        };
        let worker = |name: &str, role, kind, expect: Option<String>| Tool {
            name: name.into(),
            role,
            how: How::Worker(kind, path.clone()),
            bytes: nar_size,
            expect,
        };
        let dump_argv = ctx.ferry_cmd(&[&"nar", &"dump", path]);
        for bench in &benches {
            match bench {
                Bench::Dump | Bench::Pipe => {
                    let (out, name) = match bench {
                        Bench::Dump => (Out::Null, "dump > /dev/null"),
                        _ => (Out::Cat, "dump | cat > /dev/null"),
                    };
                    let mut tools =
                        vec![cli("ferry nar dump", Role::Ferry, dump_argv.clone(), out, None)];
                    if let Some(nix_store) = &nix_store {
                        let argv = argv(&[nix_store, &"--dump", path]);
                        tools.push(cli("nix-store --dump", Role::Peer, argv, out, None));
                    }
                    rows.push(bench_row(&ctx, &label, name, Some(DUMP_TARGET), tools));
                }
                Bench::Hash => {
                    let mut tools = vec![cli(
                        "ferry nar hash",
                        Role::Ferry,
                        ctx.ferry_cmd(&[&"nar", &"hash", path]),
                        Out::Capture,
                        expect.clone(),
                    )];
                    if let Some(nix_hash) = &nix_hash {
                        let argv = argv(&[nix_hash, &"--type", &"sha256", &"--base32", path]);
                        let name = "nix-hash --type sha256 --base32";
                        tools.push(cli(name, Role::Peer, argv, Out::Capture, expect.clone()));
                    }
                    let mut ceiling =
                        worker("sha256 of 1 GiB, 1 core", Role::Ceiling, Kind::Sha256, None);
                    ceiling.bytes = SHA_BUFFER as u64;
                    tools.push(ceiling);
                    rows.push(bench_row(&ctx, &label, "hash", Some(HASH_TARGET), tools));
                }
                Bench::Lib => {
                    let tools = vec![
                        worker("nar_core::dump::dump", Role::Ferry, Kind::FerryDump, None),
                        worker("nix_nar::Encoder + io::copy", Role::Peer, Kind::NixnarDump, None),
                        worker(
                            "nix_nar::Encoder, 64 KiB reads",
                            Role::Peer,
                            Kind::NixnarDump64k,
                            None,
                        ),
                    ];
                    rows.push(bench_row(&ctx, &label, "in-process dump to a sink", None, tools));
                    let tools = vec![
                        worker(
                            "nar_core::dump::hash_path",
                            Role::Ferry,
                            Kind::FerryHash,
                            expect.clone(),
                        ),
                        worker(
                            "nix_nar::Encoder + io::copy + sha256",
                            Role::Peer,
                            Kind::NixnarHash,
                            expect.clone(),
                        ),
                        worker(
                            "nar_core::dump::dump_hashed (serial)",
                            Role::FerryVariant,
                            Kind::FerryDumpHashed,
                            expect.clone(),
                        ),
                    ];
                    rows.push(bench_row(&ctx, &label, "in-process hash", None, tools));
                }
                Bench::Restore => {
                    let nar = restore_scratch.0.join("restore-input.nar");
                    let status = Command::new(&ferry)
                        .args(["nar", "dump"])
                        .arg(path)
                        .stdout(File::create(&nar)?)
                        .status()?;
                    if !status.success() || fs::metadata(&nar)?.len() != nar_size {
                        bail!("could not write the NAR of {} to {}", path.display(), nar.display());
                    }
                    sync();
                    let out_dir = restore_scratch.0.join("restored");
                    let restore = |name: &str, role, argv| Tool {
                        name: name.into(),
                        role,
                        how: How::Cli {
                            argv,
                            stdin: Some(nar.clone()),
                            out: Out::Null,
                            creates: Some((out_dir.clone(), ferry_hash.clone())),
                        },
                        bytes: nar_size,
                        expect: None,
                    };
                    let mut tools = vec![restore(
                        "ferry nar restore",
                        Role::Ferry,
                        ctx.ferry_cmd(&[&"nar", &"restore", &out_dir]),
                    )];
                    if let Some(nix_store) = &nix_store {
                        let argv = argv(&[nix_store, &"--restore", &out_dir]);
                        tools.push(restore("nix-store --restore", Role::Peer, argv));
                    }
                    rows.push(bench_row(&ctx, &label, "restore < file", None, tools));
                    fs::remove_file(&nar)?;
                }
            }
        }
    }

    let uptime_after = command_line("uptime", &[]).unwrap_or_default();
    let env = json!({
        "date": started,
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": command_line("uname", &["-r"]),
        "ferry": ferry,
        "nix": command_line("nix-store", &["--version"]),
        "runs": runs,
        "rss_from": if ctx.time.is_some() { "/usr/bin/time -f %M" } else { "not measured" },
    });
    let result = json!({
            "environment": env,
            "data_sets": data_set_info,
            "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
            "targets": targets(&rows).iter().map(|(what, met, detail)| json!({
                "target": what, "met": met, "detail": detail,
            })).collect::<Vec<_>>(),
    });
    if let Some(file) = &args.json_file {
        fs::write(file, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_report(&env, &data_set_info, &rows);
    }
    drop(restore_scratch);
    drop(scratch);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reporting.

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn row_json(row: &Row) -> Value {
    json!({
        "data_set": row.data_set,
        "bench": row.bench,
        "target_ratio": row.target,
        "target_met": row.target_met(),
        "load_before": row.load_before,
        "notes": row.notes,
        "tools": row.tools.iter().map(|t| {
            let s = t.summary();
            json!({
                "name": t.name,
                "role": format!("{:?}", t.role),
                "bytes": t.bytes,
                "secs": t.secs,
                "median_s": s.map(|s| s.median),
                "min_s": s.map(|s| s.min),
                "max_s": s.map(|s| s.max),
                "gb_per_s": t.gbps(),
                "peak_rss_kib": t.rss_kib,
                "ferry_throughput_over_this": if t.role == Role::Ferry { None } else { row.ratio(t) },
                "error": t.error,
            })
        }).collect::<Vec<_>>(),
    })
}

/// (target, met, detail) for every target of the issue.
fn targets(rows: &[Row]) -> Vec<(String, Option<bool>, String)> {
    let mut out = Vec::new();
    for row in rows {
        if let (Some(target), Some(peer)) = (row.target, row.first_peer()) {
            let ratio = row.ratio(peer);
            out.push((
                format!("{}: {}: ferry ≥ {target:.2}x {}", row.data_set, row.bench, peer.name),
                row.target_met(),
                ratio.map_or("not measured".into(), |r| format!("{r:.2}x")),
            ));
        }
    }
    let ferry_rss: Vec<(String, u64)> = rows
        .iter()
        .flat_map(|row| {
            row.tools
                .iter()
                .filter(|t| matches!(t.role, Role::Ferry | Role::FerryVariant))
                .filter_map(move |t| Some((format!("{} / {}", row.bench, t.name), t.rss_kib?)))
        })
        .collect();
    if let Some((worst, kib)) = ferry_rss.iter().max_by_key(|(_, kib)| *kib) {
        out.push((
            "peak RSS of every ferry process < 32 MiB".into(),
            Some(ferry_rss.iter().all(|(_, kib)| *kib < RSS_LIMIT_KIB)),
            format!("largest {:.1} MiB ({worst})", mib(*kib)),
        ));
    }
    out
}

fn print_report(env: &Value, data_sets: &[Value], rows: &[Row]) {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    println!("# nar_bench, {}", s(&env["date"]));
    println!();
    println!("- before: `{}`", s(&env["uptime_before"]));
    println!("- after:  `{}`", s(&env["uptime_after"]));
    println!(
        "- {} CPUs, kernel {}, {}, ferry {}, {} runs per tool, alternating; peak RSS from {}",
        env["cpus"],
        s(&env["kernel"]),
        s(&env["nix"]),
        env["ferry"].as_str().unwrap_or("?"),
        env["runs"],
        s(&env["rss_from"]),
    );
    for d in data_sets {
        println!(
            "- data set {}: NAR {:.3} GB, sha256 {}{}",
            s(&d["label"]),
            d["nar_bytes"].as_u64().unwrap_or(0) as f64 / 1e9,
            s(&d["nar_sha256"]),
            match d["nix_hash_agrees"].as_bool() {
                Some(true) => " (nix-hash agrees)",
                Some(false) => " (NIX-HASH DISAGREES)",
                None => "",
            }
        );
    }
    println!();
    println!("| data set | bench | tool | median s | min–max s | GB/s | peak RSS MiB | ferry ÷ tool (throughput) | load |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        for (i, t) in row.tools.iter().enumerate() {
            let (data_set, bench, load) = if i == 0 {
                (
                    row.data_set.replace('|', "\\|"),
                    row.bench.replace('|', "\\|"),
                    row.load_before.map_or("?".into(), |l| format!("{:.2}", l[0])),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            let (median, range, gbps) = match (t.summary(), &t.error) {
                (_, Some(err)) => ("failed".to_owned(), err.clone(), String::new()),
                (Some(s), None) => (
                    format!("{:.3}", s.median),
                    format!("{:.3}–{:.3}", s.min, s.max),
                    format!("{:.2}", t.gbps().unwrap_or(0.0)),
                ),
                (None, None) => ("-".into(), "-".into(), "-".into()),
            };
            let ratio = match t.role {
                Role::Ferry => String::new(),
                _ => row.ratio(t).map_or("-".into(), |r| format!("{r:.2}x")),
            };
            println!(
                "| {data_set} | {bench} | {} | {median} | {range} | {gbps} | {} | {ratio} | {load} |",
                t.name,
                t.rss_kib.map_or("?".into(), |k| format!("{:.1}", mib(k))),
            );
        }
    }
    let notes: Vec<&String> = rows.iter().flat_map(|r| &r.notes).collect();
    if !notes.is_empty() {
        println!();
        for note in notes {
            println!("- WARNING: {note}");
        }
    }
    println!();
    println!("Targets:");
    for (what, met, detail) in targets(rows) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!("- {what}: {detail}: {verdict}");
    }
}
