//! `ferry gc`: garbage collection, and the closure queries it is built on.
//!
//! - `ferry gc --requisites PATH...`: the closure of PATHS, references first (the set
//!   `nix-store -qR` prints; it works on a Nix or Guix database under `--root` too).
//! - `ferry gc --referrers PATH...`: valid paths that refer to PATHS.
//! - `ferry gc --print-roots`: the roots: symlinks into the store under `<state>/gcroots` and
//!   `<state>/profiles`.
//! - `ferry gc [--dry-run] [PATH...]`: delete every valid path not reachable from the roots
//!   (plus PATHS), referrers first, and every store-dir entry that is not a valid path.
//!
//! With `--json`, stdout is one JSON document: `{"paths": [...]}` for the queries, and for a
//! collection `{"dry_run", "roots", "deleted", "removed_invalid", "freed_nar_bytes"}`
//! (`docs/json.md`).

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::process::ExitCode;

use crate::output::format_bytes;
use crate::settings::GlobalOpts;
use crate::settings::{open_read_only, open_writable, parse_store_arg};

/// Arguments of `ferry gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Print the closure of PATHS (references first) instead of collecting garbage.
    #[arg(long, short = 'R', conflicts_with_all = ["referrers", "print_roots", "dry_run"])]
    pub requisites: bool,
    /// Print the valid paths that refer to PATHS.
    #[arg(long, conflicts_with_all = ["print_roots", "dry_run"])]
    pub referrers: bool,
    /// Print the direct references of PATHS.
    #[arg(long, conflicts_with_all = ["requisites", "referrers", "print_roots", "dry_run"])]
    pub references: bool,
    /// Print the GC roots.
    #[arg(long, conflicts_with = "dry_run")]
    pub print_roots: bool,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Store paths: to query, or extra roots when collecting.
    pub paths: Vec<String>,
}

pub fn run(global: &GlobalOpts, args: GcArgs) -> anyhow::Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    if args.requisites || args.referrers || args.references {
        if args.paths.is_empty() {
            anyhow::bail!("--references, --requisites and --referrers need at least one PATH");
        }
        let store = open_read_only(global)?;
        let dir = store.store_dir().clone();
        let paths =
            args.paths.iter().map(|p| parse_store_arg(&store, p)).collect::<Result<Vec<_>, _>>()?;
        let listed: Vec<String> = if args.requisites {
            let closure = store.closure(&paths)?;
            closure.paths().map(|p| p.to_absolute(&dir)).collect()
        } else {
            let mut all = BTreeSet::new();
            for p in &paths {
                if args.references {
                    all.extend(store.path_info(p)?.references);
                } else {
                    all.extend(store.referrers(p)?);
                }
            }
            let mut all: Vec<String> = all.iter().map(|p| p.to_absolute(&dir)).collect();
            all.sort();
            all
        };
        print_paths(&mut out, args.json, &listed)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut store = open_writable(global)?;
    let dir = store.store_dir().clone();
    if args.print_roots {
        let roots: Vec<String> = store.find_roots()?.iter().map(|r| r.to_absolute(&dir)).collect();
        print_paths(&mut out, args.json, &roots)?;
        return Ok(ExitCode::SUCCESS);
    }
    let extra =
        args.paths.iter().map(|p| parse_store_arg(&store, p)).collect::<Result<Vec<_>, _>>()?;
    let report = store.collect_garbage(&extra, args.dry_run)?;
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    if args.json {
        let json = serde_json::json!({
            "dry_run": args.dry_run,
            "roots": report.roots.len(),
            "deleted": report.deleted.iter().map(|p| p.to_absolute(&dir)).collect::<Vec<_>>(),
            "removed_invalid": report.removed_invalid.iter()
                .map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "freed_nar_bytes": report.freed_nar_bytes,
        });
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
    } else {
        for p in &report.deleted {
            writeln!(out, "{verb} {}", p.to_absolute(&dir))?;
        }
        for p in &report.removed_invalid {
            writeln!(out, "{verb} invalid {}", p.display())?;
        }
    }
    out.flush()?;
    note!(
        "ferry: {} roots; {verb} {} paths ({} of NAR) and {} invalid entries",
        report.roots.len(),
        report.deleted.len(),
        format_bytes(report.freed_nar_bytes),
        report.removed_invalid.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Store paths, one a line, or `{"paths": [...]}` with `--json`.
fn print_paths(out: &mut impl Write, json: bool, paths: &[String]) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, &serde_json::json!({ "paths": paths }))?;
        writeln!(out)?;
    } else {
        for p in paths {
            writeln!(out, "{p}")?;
        }
    }
    out.flush()
}
