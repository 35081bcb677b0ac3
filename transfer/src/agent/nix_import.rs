//! Handing paths the agent received to the host's own Nix store: `nix-store --import`
//! (`nix-store --store ROOT --import` for a chroot store under a root other than `/`), fed
//! the `nix-store --export` framing of [`signing::bundle`] (Nix form, no signature), so that Nix
//! itself registers each path, references first.
//!
//! The agent receives into a ferry store as always (each NAR rebuilt and hash-checked there;
//! for a Nix host, a staging store beside Nix's); [`import_into_nix`] then imports the staged
//! paths Nix does not have yet, each NAR dumped from the staged copy and checked again against
//! the hash recorded at receipt while it is written.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use nar_core::store_path::StorePath;
use signing::bundle::{BundleWriteError, BundleWriter, ItemMeta};
use store::{Store, StoreError};

/// Why an import into Nix failed (the paths before the failing one may be registered).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot run nix-store --import: {0}")]
    Run(io::Error),
    #[error("writing {path} for nix-store --import: {source}")]
    Write { path: String, source: BundleWriteError },
    #[error("{path}: the staged copy's NAR hash is {found}, not the {expected} it arrived with")]
    HashMismatch { path: String, expected: String, found: String },
    #[error("a reference cycle among the paths to import: {0}")]
    Cycle(String),
    #[error("nix-store --import failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
}

/// Import into the Nix store whose database is `nix` every path valid in `staging` that Nix
/// lacks, references first. `nix_root`: the root of Nix's chroot store (`None` for `/`).
/// Returns the paths imported.
pub fn import_into_nix(
    staging: &Store,
    nix: &Store,
    nix_root: Option<&Path>,
) -> Result<Vec<StorePath>, NixImportError> {
    let staged = staging.all_valid_paths()?;
    let in_nix = nix.query_valid(staged.iter())?;
    let mut todo = Vec::new();
    for path in staged.iter().filter(|p| !in_nix.contains(p)) {
        todo.push(
            staging
                .query_path_info(path)?
                .ok_or_else(|| StoreError::NotValid(path.to_absolute(staging.store_dir())))?,
        );
    }
    // References first: take, round by round, the paths whose references are all in Nix or
    // taken already.
    let mut done: BTreeSet<StorePath> = in_nix;
    let mut order = Vec::with_capacity(todo.len());
    while !todo.is_empty() {
        let (ready, rest): (Vec<_>, Vec<_>) = todo
            .into_iter()
            .partition(|i| i.references.iter().all(|r| r == &i.path || done.contains(r)));
        if ready.is_empty() {
            let names = rest.iter().map(|i| i.path.to_absolute(staging.store_dir()));
            return Err(NixImportError::Cycle(names.collect::<Vec<_>>().join(", ")));
        }
        done.extend(ready.iter().map(|i| i.path.clone()));
        order.extend(ready);
        todo = rest;
    }
    if order.is_empty() {
        return Ok(Vec::new());
    }

    let mut command = Command::new("nix-store");
    if let Some(root) = nix_root.filter(|r| *r != Path::new("/")) {
        command.arg("--store").arg(root);
    }
    let mut child = command
        .arg("--import")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NixImportError::Run)?;
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let stdin = child.stdin.take().expect("piped");
    let written = write_export(staging, &order, stdin);
    if written.is_err() {
        // A truncated export: nix-store registers nothing more.
        let _ = child.kill();
    }
    let status = child.wait().map_err(NixImportError::Run)?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    written?;
    if !status.success() {
        return Err(NixImportError::Failed { status: status.to_string(), stderr });
    }
    Ok(order.into_iter().map(|i| i.path).collect())
}

/// The export of `items` (in this order) from `staging`, with the end marker.
fn write_export(
    staging: &Store,
    items: &[closure::PathInfo],
    out: impl Write,
) -> Result<(), NixImportError> {
    let dir = staging.store_dir().clone();
    let mut writer = BundleWriter::new(io::BufWriter::new(out), dir.clone());
    for info in items {
        let path = info.path.to_absolute(&dir);
        let meta = ItemMeta {
            path: info.path.clone(),
            references: info.references.iter().cloned().collect(),
            deriver: info.deriver.clone(),
        };
        let (mut nar, dumper) = pipe_dump(&staging.physical_path(&info.path))
            .map_err(|e| NixImportError::Write { path: path.clone(), source: e.into() })?;
        let written = writer.write_unsigned(&meta, &mut nar);
        drop(nar);
        let _ = dumper.join();
        let item =
            written.map_err(|source| NixImportError::Write { path: path.clone(), source })?;
        if item.nar.hash != info.nar_hash {
            return Err(NixImportError::HashMismatch {
                path,
                expected: info.nar_hash.to_typed_nix32(),
                found: item.nar.hash.to_typed_nix32(),
            });
        }
    }
    writer
        .finish()
        .map(drop)
        .map_err(|e| NixImportError::Write { path: "the end marker".into(), source: e.into() })
}

/// The NAR of `path`, dumped on a thread into a pipe (a failed dump ends the NAR early,
/// which the bundle writer's check refuses).
fn pipe_dump(path: &Path) -> io::Result<(File, std::thread::JoinHandle<()>)> {
    let (reader, writer) = rustix::pipe::pipe()?;
    let path = path.to_owned();
    let dumper = std::thread::spawn(move || {
        let _ = nar_core::dump::dump(&path, File::from(writer));
    });
    Ok((File::from(reader), dumper))
}
