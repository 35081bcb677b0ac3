//! `ferry gc`: garbage collection, and the closure queries it is built on.
//!
//! - `ferry gc --requisites PATH...`: the closure of PATHS, references first (the set
//!   `nix-store -qR` prints; it works on a Nix or Guix database under `--root` too).
//! - `ferry gc --referrers PATH...`: valid paths that refer to PATHS.
//! - `ferry gc --print-roots`: the roots: symlinks into the store under `<state>/gcroots` and
//!   `<state>/profiles`.
//! - `ferry gc [--dry-run] [PATH...]`: delete every valid path not reachable from the roots
//!   (plus PATHS), referrers first, and every store-dir entry that is not a valid path.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::process::ExitCode;

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
        if args.requisites {
            let closure = store.closure(&paths)?;
            for p in closure.paths() {
                writeln!(out, "{}", p.to_absolute(&dir))?;
            }
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
            for p in all {
                writeln!(out, "{p}")?;
            }
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut store = open_writable(global)?;
    let dir = store.store_dir().clone();
    if args.print_roots {
        for root in store.find_roots()? {
            writeln!(out, "{}", root.to_absolute(&dir))?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let extra =
        args.paths.iter().map(|p| parse_store_arg(&store, p)).collect::<Result<Vec<_>, _>>()?;
    let report = store.collect_garbage(&extra, args.dry_run)?;
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    for p in &report.deleted {
        writeln!(out, "{verb} {}", p.to_absolute(&dir))?;
    }
    for p in &report.removed_invalid {
        writeln!(out, "{verb} invalid {}", p.display())?;
    }
    out.flush()?;
    note!(
        "ferry: {} roots; {verb} {} paths ({} NAR bytes) and {} invalid entries",
        report.roots.len(),
        report.deleted.len(),
        report.freed_nar_bytes,
        report.removed_invalid.len()
    );
    Ok(ExitCode::SUCCESS)
}
