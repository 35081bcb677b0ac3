//! `ferry store ...`: add, query, list, verify and delete store items, and compute source paths.
//!
//! The store is found from `--root`, `--store-dir` and `--state-dir` (or `FERRY_ROOT`,
//! `FERRY_STORE_DIR`, `FERRY_STATE_DIR`; see `store::layout`). Read-only commands (`info`,
//! `list`, and `verify` on a foreign database) also read an existing Nix or Guix database under
//! the root when no ferry database exists there, so `ferry --root /tmp/s1 store info --hash
//! /nix/store/…` answers like `nix-store --store /tmp/s1 -q --hash /nix/store/…`.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use nar_core::store_path::{make_source_path, StoreDir, StorePath};
use signing::keyfile;
use store::Store;

use crate::settings::{layout, open_read_only, open_writable, parse_store_arg, GlobalOpts};

/// Store subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Print the store path a file or tree would get when added as a source item.
    Path {
        /// Name of the item (default: the file name of PATH).
        #[arg(long)]
        name: Option<String>,
        /// File or tree.
        path: std::path::PathBuf,
    },
    /// Add files or trees as source items (atomically); print their store paths.
    ///
    /// References are found by scanning each item for the hash parts of valid paths.
    Add {
        /// Name of the item (default: the file name; only with one PATH).
        #[arg(long)]
        name: Option<String>,
        /// Files, directories or symlinks.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print what the database records about valid paths.
    ///
    /// With no field flag, prints every field as `key: value` lines. With field flags, prints
    /// those fields in the order hash, size, references, referrers, deriver, one value per line,
    /// the way `nix-store -q --hash`, `--size`, `--references`, `--referrers` and `--deriver` do.
    Info {
        /// NAR hash, `sha256:<nix-base32>`.
        #[arg(long)]
        hash: bool,
        /// NAR size in bytes.
        #[arg(long)]
        size: bool,
        /// References, one absolute path per line, sorted.
        #[arg(long)]
        references: bool,
        /// Valid paths referring to it, sorted.
        #[arg(long)]
        referrers: bool,
        /// Print one JSON object per path (an array of them): path, narHash, narSize,
        /// references, deriver, signatures, ca, registrationTime, referrers.
        #[arg(long, conflicts_with_all = ["hash", "size", "references", "referrers", "deriver"])]
        json: bool,
        /// Deriver (`unknown-deriver` when none).
        #[arg(long)]
        deriver: bool,
        /// Store paths (a path inside an item means the item).
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// List every valid path, sorted.
    #[command(visible_alias = "ls")]
    List {
        /// Print one JSON array of the paths.
        #[arg(long)]
        json: bool,
    },
    /// Check the database and that every valid path exists; exit 1 on any problem.
    ///
    /// Opening the store for writing first removes leftovers of interrupted operations
    /// (`.tmp-*` entries, unfinished renames), when no other writer is active.
    Verify {
        /// Also recompute every path's NAR hash and size (in parallel) and compare.
        #[arg(long)]
        check_contents: bool,
        /// Record the hash and size found on disk for paths whose contents changed (implies
        /// --check-contents); missing paths cannot be repaired this way and still fail.
        #[arg(long)]
        repair_db: bool,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Check only these store paths (default: every valid path).
        paths: Vec<String>,
    },
    /// Delete valid paths that no other valid path refers to.
    Delete {
        /// Store paths.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Add Nix signatures, as `nix store sign` does: each path's fingerprint
    /// `1;path;sha256:…;size;refs` signed with a Nix secret key, recorded in the database.
    Sign {
        /// Nix secret key file (`name:base64`, as `nix-store --generate-binary-cache-key` or
        /// `ferry archive --generate-key=nix:NAME` writes it); must be mode 0600 or stricter.
        #[arg(long, required = true)]
        key_file: PathBuf,
        /// Also sign every path in the closures of PATHs.
        #[arg(short, long)]
        recursive: bool,
        /// Store paths.
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

pub fn run(global: &GlobalOpts, command: StoreCommand) -> anyhow::Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let code = match command {
        StoreCommand::Path { name, path } => {
            return print_source_path(global, name.as_deref(), &path)
        }
        StoreCommand::Add { name, paths } => {
            if name.is_some() && paths.len() > 1 {
                anyhow::bail!("--name needs exactly one PATH ({} given)", paths.len());
            }
            let mut store = open_writable(global)?;
            for path in &paths {
                let info = store
                    .add_path(path, name.as_deref())
                    .with_context(|| format!("cannot add {}", path.display()))?;
                writeln!(out, "{}", info.path.to_absolute(store.store_dir()))?;
            }
            ExitCode::SUCCESS
        }
        StoreCommand::Info { json: true, paths, .. } => info_json(global, &paths, &mut out)?,
        StoreCommand::Info { hash, size, references, referrers, deriver, paths, .. } => {
            let fields = InfoFields { hash, size, references, referrers, deriver };
            info_text(global, fields, &paths, &mut out)?
        }
        StoreCommand::List { json } => {
            let store = open_read_only(global)?;
            let paths = store.all_valid_paths()?;
            let paths = paths.iter().map(|p| p.to_absolute(store.store_dir()));
            if json {
                serde_json::to_writer(&mut out, &paths.collect::<Vec<_>>())?;
                writeln!(out)?;
            } else {
                for p in paths {
                    writeln!(out, "{p}")?;
                }
            }
            ExitCode::SUCCESS
        }
        StoreCommand::Verify { check_contents, repair_db, json, paths } => {
            verify(global, Verify { check_contents, repair_db, json }, &paths, &mut out)?
        }
        StoreCommand::Sign { key_file, recursive, paths } => {
            sign_paths(global, &key_file, recursive, &paths)?;
            ExitCode::SUCCESS
        }
        StoreCommand::Delete { paths } => {
            let mut store = open_writable(global)?;
            for text in &paths {
                let path = parse_store_arg(&store, text)?;
                store.delete(&path)?;
                writeln!(out, "deleted {}", path.to_absolute(store.store_dir()))?;
            }
            ExitCode::SUCCESS
        }
    };
    out.flush()?;
    Ok(code)
}

/// `ferry store info --json PATH...`: one JSON array of objects, as `nix path-info --json`.
fn info_json(
    global: &GlobalOpts,
    paths: &[String],
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let store = open_read_only(global)?;
    let dir = store.store_dir().clone();
    let mut objects = Vec::new();
    for text in paths {
        let path = parse_store_arg(&store, text)?;
        let info = store.path_info(&path)?;
        let mut referrers: Vec<String> =
            store.referrers(&path)?.iter().map(|r| r.to_absolute(&dir)).collect();
        referrers.sort();
        objects.push(serde_json::json!({
            "path": path.to_absolute(&dir),
            "narHash": info.nar_hash.to_string(),
            "narSize": info.nar_size,
            "references": info.absolute_references(&dir),
            "deriver": info.deriver.as_ref().map(|d| d.to_absolute(&dir)),
            "signatures": info.sigs,
            "ca": info.ca,
            "registrationTime": info.registration_time,
            "referrers": referrers,
        }));
    }
    serde_json::to_writer_pretty(&mut *out, &objects)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The fields `ferry store info` prints, as `nix-store -q` flags.
#[derive(Debug, Clone, Copy)]
struct InfoFields {
    hash: bool,
    size: bool,
    references: bool,
    referrers: bool,
    deriver: bool,
}

/// `ferry store info [--hash|--size|--references|--referrers|--deriver] PATH...`.
fn info_text(
    global: &GlobalOpts,
    fields: InfoFields,
    paths: &[String],
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let InfoFields { hash, size, references, referrers, deriver } = fields;
    let store = open_read_only(global)?;
    let dir = store.store_dir().clone();
    let all = !(hash || size || references || referrers || deriver);
    for text in paths {
        let path = parse_store_arg(&store, text)?;
        let info = store.path_info(&path)?;
        let deriver_text = info
            .deriver
            .as_ref()
            .map(|d| d.to_absolute(&dir))
            .unwrap_or_else(|| "unknown-deriver".into());
        if all {
            writeln!(out, "path: {}", path.to_absolute(&dir))?;
            writeln!(out, "nar-hash: {}", info.nar_hash)?;
            writeln!(out, "nar-size: {}", info.nar_size)?;
            for r in info.absolute_references(&dir) {
                writeln!(out, "reference: {r}")?;
            }
            writeln!(out, "deriver: {deriver_text}")?;
            for sig in &info.sigs {
                writeln!(out, "sig: {sig}")?;
            }
            if let Some(ca) = &info.ca {
                writeln!(out, "ca: {ca}")?;
            }
            writeln!(out, "registration-time: {}", info.registration_time)?;
            if paths.len() > 1 {
                writeln!(out)?;
            }
            continue;
        }
        if hash {
            writeln!(out, "{}", info.nar_hash)?;
        }
        if size {
            writeln!(out, "{}", info.nar_size)?;
        }
        if references {
            for r in info.absolute_references(&dir) {
                writeln!(out, "{r}")?;
            }
        }
        if referrers {
            let mut all: Vec<String> =
                store.referrers(&path)?.iter().map(|r| r.to_absolute(&dir)).collect();
            all.sort();
            for r in all {
                writeln!(out, "{r}")?;
            }
        }
        if deriver {
            writeln!(out, "{deriver_text}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The options of `ferry store verify`.
struct Verify {
    check_contents: bool,
    repair_db: bool,
    json: bool,
}

/// `ferry store verify [--check-contents] [--repair-db] [--json] [PATH...]`.
fn verify(
    global: &GlobalOpts,
    Verify { check_contents, repair_db, json }: Verify,
    paths: &[String],
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let check_contents = check_contents || repair_db;
    let layout = layout(global)?;
    let foreign_db = layout.database().0 != store::DbKind::Ferry;
    if repair_db && foreign_db {
        anyhow::bail!(
            "--repair-db: the store under {} is a Nix or Guix database, which ferry \
             only reads",
            layout.root().display()
        );
    }
    let mut store = if foreign_db { Store::open_read_only(layout)? } else { Store::open(layout)? };
    let only =
        paths.iter().map(|p| parse_store_arg(&store, p)).collect::<anyhow::Result<Vec<_>>>()?;
    let only = (!paths.is_empty()).then_some(only.as_slice());
    let mut report = store.verify_paths(only, check_contents)?;
    let mut repaired = Vec::new();
    if repair_db {
        repaired = store.repair_db(&report)?;
        for path in &repaired {
            eprintln!(
                "ferry: repaired the database entry of {}",
                path.to_absolute(store.store_dir())
            );
        }
        report.problems.retain(|problem| !matches!(problem, store::VerifyProblem::Modified { .. }));
    }
    for cleaned in &report.cleaned {
        note!("ferry: removed leftover {}", cleaned.display());
    }
    for leftover in &report.leftovers {
        note!(
            "ferry: note: leftover of an interrupted operation (removed by the next \
             writer): {}",
            leftover.display()
        );
    }
    if json {
        let dir = store.store_dir();
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({
                "success": report.is_clean(),
                "checked": report.checked,
                "contents_checked": check_contents,
                "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "repaired": repaired.iter().map(|p| p.to_absolute(dir)).collect::<Vec<_>>(),
            }),
        )?;
        writeln!(out)?;
    } else {
        for problem in &report.problems {
            writeln!(out, "{problem}")?;
        }
    }
    note!(
        "ferry: checked {} valid paths{}: {} problems",
        report.checked,
        if check_contents { " and their contents" } else { "" },
        report.problems.len()
    );
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

// ---------------------------------------------------------------------------------------------
// `ferry store sign`

/// `ferry store sign --key-file F [-r] PATH...`: add a Nix signature of each path's fingerprint
/// `1;path;sha256:…;size;refs` (made with the Nix secret key in `key_file`) to the database, as
/// `nix store sign` does. Returns how many paths were signed.
pub fn sign_paths(
    global: &GlobalOpts,
    key_file: &Path,
    recursive: bool,
    paths: &[String],
) -> anyhow::Result<usize> {
    let key = keyfile::load_nix_signing_key(key_file)?;
    let mut store = open_writable(global)?;
    let dir = store.store_dir().clone();
    let mut targets: Vec<StorePath> = Vec::new();
    for text in paths {
        let path = parse_store_arg(&store, text)?;
        // Fails with "path … is not valid" for an invalid one.
        store.path_info(&path)?;
        targets.push(path);
    }
    if recursive {
        targets = store.closure(&targets)?.paths().cloned().collect();
    }
    let mut signed = 0;
    for path in &targets {
        let info = store.path_info(path)?;
        let refs: Vec<StorePath> = info.references.iter().cloned().collect();
        let fingerprint =
            signing::nix::fingerprint(&dir, &info.path, &info.nar_hash, info.nar_size, &refs);
        let sig = key.sign(&fingerprint).to_string();
        store.add_signatures(path, &[sig]).with_context(|| {
            format!("cannot record the signature of {}", path.to_absolute(&dir))
        })?;
        signed += 1;
    }
    Ok(signed)
}

// ---------------------------------------------------------------------------------------------
// `ferry store path`

/// `ferry store path`: the source store path PATH would get.
pub fn print_source_path(
    global: &GlobalOpts,
    name: Option<&str>,
    path: &Path,
) -> anyhow::Result<ExitCode> {
    let store_dir =
        StoreDir::new(global.store_dir.clone().unwrap_or_else(|| StoreDir::GUIX.to_owned()))?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => {
            let file_name = path
                .file_name()
                .with_context(|| format!("{} has no file name; pass --name", path.display()))?;
            String::from_utf8(file_name.as_bytes().to_vec())
                .context("the file name is not UTF-8; pass --name")?
        }
    };
    let digest = nar_core::dump::hash_path(path)?;
    let store_path = make_source_path(&store_dir, &name, &digest.hash)?;
    writeln!(io::stdout(), "{}", store_path.to_absolute(&store_dir))?;
    Ok(ExitCode::SUCCESS)
}
