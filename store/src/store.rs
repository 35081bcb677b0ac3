//! [`Store`]: the local store: add, import, query, closure, verify, delete, garbage collection.
//!
//! **Validity.** A path is valid only once its files are complete, fsynced, renamed into place
//! and registered in one transaction, with all its references already valid (design.md, "The
//! store"). The steps of [`Store::add_path`] and [`Store::import_nar`]:
//! 1. restore the NAR (for `add`, streamed from `dump` of the source through a bounded
//!    in-memory pipe) into `<store>/.tmp-<random>`, syncing every file and directory; the restore
//!    returns the NAR hash and size of what it wrote (for `add`, the path is computed from it
//!    with `make_source_path`; for `import`, it must equal the expected hash and size);
//! 2. write an intent record `<state>/pending/<base name>` (fsynced);
//! 3. in one `BEGIN IMMEDIATE` transaction: check the path is not valid yet and its references
//!    are; remove any stale invalid copy at the final name; `rename` the temp dir into place;
//!    fsync the store dir; insert the rows; commit;
//! 4. remove the intent record.
//!
//! **Crash safety.** A crash before the rename leaves a `.tmp-*` entry; between the rename and
//! the commit, an unregistered entry at the final name with its intent record. Opening the
//! store for writing, when no other writer holds it, removes every `.tmp-*` entry and, for each
//! intent record whose path is not valid, the entry at its final name. So after any crash a path
//! is either fully valid or absent. Deletion uses the same intent records (the row is deleted
//! and committed first, the files removed after).
//!
//! **Locking.** `<state>/lock` is `flock`ed: every writer holds it shared for its lifetime;
//! start-up cleanup and garbage collection need it exclusive (cleanup is skipped when another
//! writer is active; GC fails with [`StoreError::Busy`]). Concurrent writers are serialized by
//! SQLite's write lock in step 3, so two processes adding the same path both succeed with one copy.
//!
//! **Foreign stores.** [`Store::open_read_only`] reads whatever database the layout points at,
//! including an existing Nix (schema 10) or Guix (schema 7) database, and never writes to it.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nar_core::dump::{dump, DumpError};
use nar_core::hash::{NarDigest, Sha256Hash};
use nar_core::restore::{remove_tree, restore_with, RestoreError, RestoreOptions};
use nar_core::store_path::{make_source_path, StoreDir, StorePath, StorePathError};
use rustix::fs::{flock, FlockOperation};

use crate::db::{Database, DbError};
use crate::layout::{DbKind, StoreLayout};
use closure::scan::{scan_tree, Candidates, ScanError};
use closure::PathInfo;
use closure::{ClosureError, ValidatedClosure};

pub mod batch;
mod signatures;
pub mod staged;
pub use batch::{BatchOutcome, ImportBatch};
pub use staged::StagedNar;

/// Environment variable naming a step at which the process aborts, for crash tests only:
/// `after-restore`, `after-marker`, `after-rename` (before the commit), `after-commit`,
/// `delete-after-commit`. Unset in normal use.
pub const CRASH_POINT_ENV: &str = "FERRY_TEST_CRASH_AT";

fn crash_point(step: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var(CRASH_POINT_ENV).ok());
    if point.as_deref() == Some(step) {
        std::process::abort();
    }
}

/// Prefix of temporary entries in the store dir.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Errors from store operations; each names the path and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// (The I/O error is part of the message, not a `source`: printed with its causes, the
    /// reason would show twice.)
    #[error("{op} {path:?}: {error}")]
    Io { op: &'static str, path: PathBuf, error: io::Error },
    #[error("cannot read {path:?} to add it to the store: {source}")]
    Dump { path: PathBuf, source: DumpError },
    #[error("cannot unpack {path} into the store: {source}")]
    Restore { path: String, source: RestoreError },
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("invalid store path or name: {0}")]
    Name(#[from] StorePathError),
    #[error(
        "NAR of {path} has hash {actual} and size {actual_size}, expected {expected} and size \
         {expected_size}; the path was not imported"
    )]
    HashMismatch {
        path: String,
        expected: Sha256Hash,
        expected_size: u64,
        actual: Sha256Hash,
        actual_size: u64,
    },
    #[error("cannot add {path}: its reference {reference} is not valid in this store")]
    ReferenceNotValid { path: String, reference: String },
    #[error("path {0} is not valid")]
    NotValid(String),
    #[error("the store is read-only: {0}")]
    ReadOnly(String),
    #[error("the store at {0:?} is busy: another ferry process is writing to it")]
    Busy(PathBuf),
    #[error("no store database at {0:?} (nothing has been added to this store yet)")]
    NoDatabase(PathBuf),
    #[error(transparent)]
    Closure(#[from] ClosureError),
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |error| StoreError::Io { op, path: path.to_owned(), error }
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The path is now valid.
    Imported,
    /// It was valid already; the copy received was checked and discarded.
    AlreadyValid,
}

/// A problem [`Store::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyProblem {
    /// The database itself (integrity check, dangling rows).
    Database(String),
    /// A valid path with nothing on disk.
    Missing(String),
    /// A valid path whose contents no longer match its recorded hash or size.
    Modified { path: String, expected: NarDigest, actual: NarDigest },
    /// A valid path that cannot be read.
    Unreadable { path: String, reason: String },
    /// A path given to check that is not valid.
    NotValid(String),
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyProblem::Database(s) => write!(f, "database: {s}"),
            VerifyProblem::Missing(p) => {
                write!(f, "{p}: valid in the database but missing on disk")
            }
            VerifyProblem::Modified { path, expected, actual } => write!(
                f,
                "{path}: contents modified: hash {} size {} on disk, {} size {} recorded",
                actual.hash, actual.size, expected.hash, expected.size
            ),
            VerifyProblem::Unreadable { path, reason } => write!(f, "{path}: unreadable: {reason}"),
            VerifyProblem::NotValid(p) => write!(f, "{p}: not a valid path"),
        }
    }
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Valid paths checked.
    pub checked: usize,
    /// Problems; empty when the store is sound.
    pub problems: Vec<VerifyProblem>,
    /// Leftovers of interrupted operations (removed by the next writer's start-up).
    pub leftovers: Vec<PathBuf>,
    /// Leftovers this open removed (only when opened for writing with no other writer).
    pub cleaned: Vec<PathBuf>,
}

impl VerifyReport {
    /// No problems (leftovers are not problems: they are never valid and get removed).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What garbage collection did (or, dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// The roots found.
    pub roots: BTreeSet<StorePath>,
    /// Paths deleted (or that would be), referrers before references.
    pub deleted: Vec<StorePath>,
    /// Sum of their NAR sizes.
    pub freed_nar_bytes: u64,
    /// Entries in the store dir that were not valid paths, removed.
    pub removed_invalid: Vec<PathBuf>,
}

/// The local store.
#[derive(Debug)]
pub struct Store {
    layout: StoreLayout,
    db: Database,
    /// `<state>/lock`, held shared while open for writing.
    lock: Option<File>,
    cleaned: Vec<PathBuf>,
}

impl Store {
    /// Open for writing: creates the store dir, state dir and ferry database if needed, takes
    /// the shared writer lock, and cleans up after crashed operations when no other writer is
    /// active.
    pub fn open(layout: StoreLayout) -> Result<Store, StoreError> {
        if let Some(kind @ (DbKind::Nix | DbKind::Guix)) = layout.store_kind() {
            return Err(StoreError::ReadOnly(format!(
                "the {kind} store in {} is read in place and never written by ferry",
                layout.physical_store_dir().display()
            )));
        }
        let store_dir = layout.physical_store_dir();
        fs::create_dir_all(&store_dir).map_err(io_err("cannot create store dir", &store_dir))?;
        let pending = layout.pending_dir();
        fs::create_dir_all(&pending).map_err(io_err("cannot create", &pending))?;
        let db = Database::open_ferry(&layout.ferry_db_path(), layout.store_dir().clone())?;
        let lock_path = layout.lock_path();
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("cannot open lock file", &lock_path))?;
        let mut store = Store { layout, db, lock: None, cleaned: Vec::new() };
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
            store.cleaned = store.cleanup()?;
        }
        flock(&lock, FlockOperation::LockShared).map_err(|e| StoreError::Io {
            op: "cannot lock",
            path: lock_path,
            error: e.into(),
        })?;
        store.lock = Some(lock);
        Ok(store)
    }

    /// Open for reading the database the layout points at (ferry's, or an existing Nix or Guix
    /// one), without locking or writing anything.
    pub fn open_read_only(layout: StoreLayout) -> Result<Store, StoreError> {
        let (kind, path) = layout.database();
        if !path.exists() {
            return Err(StoreError::NoDatabase(path));
        }
        let db = Database::open_read_only(&path, kind, layout.store_dir().clone())?;
        Ok(Store { layout, db, lock: None, cleaned: Vec::new() })
    }

    /// The layout.
    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// The logical store dir.
    pub fn store_dir(&self) -> &StoreDir {
        self.layout.store_dir()
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Leftovers removed when this store was opened.
    pub fn cleaned_on_open(&self) -> &[PathBuf] {
        &self.cleaned
    }

    /// Parse an absolute store path (`<store dir>/<hash>-<name>`, sub-paths rejected).
    pub fn parse_path(&self, text: &str) -> Result<StorePath, StoreError> {
        Ok(self.store_dir().parse_path(text)?)
    }

    /// Where a path lives on disk.
    pub fn physical_path(&self, path: &StorePath) -> PathBuf {
        self.layout.physical_path(path)
    }

    fn absolute(&self, path: &StorePath) -> String {
        path.to_absolute(self.store_dir())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.lock.is_some() {
            Ok(())
        } else {
            Err(StoreError::ReadOnly(format!(
                "{:?} was opened read-only ({:?} database)",
                self.db.path(),
                self.db.kind()
            )))
        }
    }

    /// Remove `.tmp-*` entries and undo unfinished renames; needs the exclusive lock.
    fn cleanup(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let store_dir = self.layout.physical_store_dir();
        for entry in fs::read_dir(&store_dir).map_err(io_err("cannot list", &store_dir))? {
            let entry = entry.map_err(io_err("cannot list", &store_dir))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let p = entry.path();
                remove_tree(&p).map_err(io_err("cannot remove leftover", &p))?;
                removed.push(p);
            }
        }
        let pending = self.layout.pending_dir();
        for entry in fs::read_dir(&pending).map_err(io_err("cannot list", &pending))? {
            let entry = entry.map_err(io_err("cannot list", &pending))?;
            let marker = entry.path();
            let name = entry.file_name();
            if let Ok(path) = StorePath::from_base_name(&name.to_string_lossy()) {
                if !self.db.is_valid(&path)? {
                    let target = self.physical_path(&path);
                    if fs::symlink_metadata(&target).is_ok() {
                        remove_tree(&target).map_err(io_err("cannot remove invalid", &target))?;
                        removed.push(target);
                    }
                }
            }
            fs::remove_file(&marker).map_err(io_err("cannot remove", &marker))?;
        }
        if !removed.is_empty() {
            sync_dir(&store_dir)?;
        }
        Ok(removed)
    }

    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.write_u128(now);
        self.layout.physical_store_dir().join(format!("{TEMP_PREFIX}{:016x}", h.finish()))
    }

    /// Add a file, directory or symlink as a source item named `name` (default: its file name).
    /// References are found by scanning it for the hash parts of valid paths. Returns the
    /// path's info; adding the same content again is a no-op.
    pub fn add_path(&mut self, source: &Path, name: Option<&str>) -> Result<PathInfo, StoreError> {
        self.check_writable()?;
        let name =
            match name {
                Some(n) => n.to_owned(),
                None => source.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(
                    || StoreError::Io {
                        op: "cannot take the name of",
                        path: source.to_owned(),
                        error: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "no file name; use --name",
                        ),
                    },
                )?,
            };
        nar_core::store_path::validate_name(&name)?;
        let candidates = Candidates::new(self.db.all_valid_paths()?);
        let temp = self.temp_path();
        let (scanned, restored) =
            rayon::join(|| scan_tree(source, &candidates), || copy_via_nar(source, &temp));
        let (references, digest) = match (scanned, restored) {
            (Ok(refs), Ok(digest)) => (refs, digest),
            (Err(e), restored) => {
                if restored.is_ok() {
                    let _ = remove_tree(&temp);
                }
                return Err(e.into());
            }
            (Ok(_), Err(e)) => return Err(e),
        };
        let path = make_source_path(self.store_dir(), &name, &digest.hash)?;
        let mut info = PathInfo::new(path, digest, references);
        // The path is content-addressed in Nix's sense only without references: as in Guix,
        // found references do not change a source path, so a path with references must not
        // claim `ca` (Nix rejects such a path: "claims to be content-addressed but isn't").
        if info.references_except_self().next().is_none() {
            info.ca = Some(format!("fixed:r:{}", digest.hash.to_typed_nix32()));
        }
        info.ultimate = true;
        self.commit(temp, &info)?;
        Ok(self.db.query_path_info(&info.path)?.unwrap_or(info))
    }

    /// Import a path received as a NAR: `info` is what the sender claims (path, hash, size,
    /// references, deriver, sigs, ca). The NAR is restored into a temp dir and must hash to
    /// `info.nar_hash` / `info.nar_size`; references must already be valid (checked before
    /// any byte is read, and again at commit). The reader is left right after the archive, so
    /// several NARs can follow each other in one stream. Signature checks are the caller's.
    pub fn import_nar<R: BufRead + ?Sized>(
        &mut self,
        info: &PathInfo,
        reader: &mut R,
    ) -> Result<ImportOutcome, StoreError> {
        self.check_writable()?;
        let abs = self.absolute(&info.path);
        for r in info.references_except_self() {
            if !self.db.is_valid(r)? {
                return Err(StoreError::ReferenceNotValid {
                    path: abs,
                    reference: self.absolute(r),
                });
            }
        }
        let options = RestoreOptions { fsync: true, ..RestoreOptions::default() };
        let temp = self.restore_checked(info, reader, &options)?;
        self.commit(temp, info)
    }

    /// Restore the NAR read from `reader` into a new temporary entry of the store dir and check
    /// it has `info`'s hash and size; returns the entry. On error nothing of it stays.
    pub(crate) fn restore_checked<R: BufRead + ?Sized>(
        &self,
        info: &PathInfo,
        reader: &mut R,
        options: &RestoreOptions,
    ) -> Result<PathBuf, StoreError> {
        let abs = self.absolute(&info.path);
        let temp = self.temp_path();
        // Bounded by what the sender declared (and signed): never more bytes than its size.
        let options = RestoreOptions {
            max_size: Some(info.nar_size),
            max_nodes: Some(options.max_nodes.unwrap_or(nar_core::restore::MAX_NODES)),
            ..options.clone()
        };
        let digest = restore_with(reader, &temp, &options, false)
            .map_err(|source| StoreError::Restore { path: abs.clone(), source })?;
        if digest != info.nar_digest() {
            let _ = remove_tree(&temp);
            return Err(StoreError::HashMismatch {
                path: abs,
                expected: info.nar_hash,
                expected_size: info.nar_size,
                actual: digest.hash,
                actual_size: digest.size,
            });
        }
        Ok(temp)
    }

    /// Steps 2–4 of the module docs.
    fn commit(&mut self, temp: PathBuf, info: &PathInfo) -> Result<ImportOutcome, StoreError> {
        crash_point("after-restore");
        let base = info.path.base_name();
        let marker = self.layout.pending_dir().join(&base);
        write_marker(&marker)?;
        crash_point("after-marker");
        let target = self.physical_path(&info.path);
        let store_dir = self.layout.physical_store_dir();
        let abs = self.absolute(&info.path);
        let result = self.db.with_write_transaction(|txn| {
            if txn.is_valid(&info.path)? {
                return Ok(ImportOutcome::AlreadyValid);
            }
            for r in info.references_except_self() {
                if !txn.is_valid(r)? {
                    return Err(StoreError::ReferenceNotValid {
                        path: abs.clone(),
                        reference: r.to_absolute(self.layout.store_dir()),
                    });
                }
            }
            if fs::symlink_metadata(&target).is_ok() {
                remove_tree(&target).map_err(io_err("cannot remove stale invalid", &target))?;
            }
            fs::rename(&temp, &target).map_err(io_err("cannot rename into place", &target))?;
            sync_dir(&store_dir)?;
            crash_point("after-rename");
            txn.register(std::slice::from_ref(info))?;
            Ok(ImportOutcome::Imported)
        });
        if result.is_ok() {
            crash_point("after-commit");
        }
        if !matches!(result, Ok(ImportOutcome::Imported)) {
            let _ = remove_tree(&temp);
        }
        // On error after the rename, the marker stays and the next start-up removes the copy.
        if result.is_ok() {
            let _ = fs::remove_file(&marker);
        }
        result
    }

    /// Record in the database the NAR hash and size found on disk for every path `report` found
    /// modified (`ferry store verify --repair-db`); returns the paths repaired. Missing and
    /// unreadable paths cannot be repaired from the database and are left as they are.
    pub fn repair_db(&mut self, report: &VerifyReport) -> Result<Vec<StorePath>, StoreError> {
        self.check_writable()?;
        let mut repaired = Vec::new();
        for problem in &report.problems {
            if let VerifyProblem::Modified { path, actual, .. } = problem {
                let path = self.parse_path(path)?;
                let mut info = self.path_info(&path)?;
                info.nar_hash = actual.hash;
                info.nar_size = actual.size;
                self.db.register(std::slice::from_ref(&info))?;
                repaired.push(path);
            }
        }
        Ok(repaired)
    }

    /// Is `path` valid?
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, StoreError> {
        Ok(self.db.is_valid(path)?)
    }

    /// The subset of `paths` that is valid (one batch: the agent's answer to a diff query).
    pub fn query_valid<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.db.query_valid(paths)?)
    }

    /// A valid path's info, or `None`.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        Ok(self.db.query_path_info(path)?)
    }

    /// A valid path's info, or [`StoreError::NotValid`].
    pub fn path_info(&self, path: &StorePath) -> Result<PathInfo, StoreError> {
        self.query_path_info(path)?.ok_or_else(|| StoreError::NotValid(self.absolute(path)))
    }

    /// Valid paths referring to `path`.
    pub fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.db.query_referrers(path)?)
    }

    /// Every valid path.
    pub fn all_valid_paths(&self) -> Result<Vec<StorePath>, StoreError> {
        Ok(self.db.all_valid_paths()?)
    }

    /// The closure of `roots`, validated, in topological order (references first).
    pub fn closure(&self, roots: &[StorePath]) -> Result<ValidatedClosure, StoreError> {
        let graph = self.db.closure_graph(roots)?;
        Ok(ValidatedClosure::from_indexed(graph, roots.iter().cloned())?)
    }

    /// Check the database, that every valid path exists, and with `check_contents` that its
    /// NAR hash and size still match (hashed in parallel).
    pub fn verify(&self, check_contents: bool) -> Result<VerifyReport, StoreError> {
        self.verify_paths(None, check_contents)
    }

    /// [`Store::verify`] restricted to `only` (every valid path when `None`); a path given that
    /// is not valid is a problem.
    pub fn verify_paths(
        &self,
        only: Option<&[StorePath]>,
        check_contents: bool,
    ) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport { cleaned: self.cleaned.clone(), ..Default::default() };
        report.problems.extend(self.db.check_integrity()?.into_iter().map(VerifyProblem::Database));
        let infos = match only {
            None => self.db.all_path_infos()?,
            Some(paths) => {
                let mut infos = Vec::with_capacity(paths.len());
                for path in paths {
                    match self.db.query_path_info(path)? {
                        Some(info) => infos.push(info),
                        None => report.problems.push(VerifyProblem::NotValid(self.absolute(path))),
                    }
                }
                infos
            }
        };
        report.checked = infos.len();
        let layout = &self.layout;
        // Missing paths are problems already; the others are hashed together (their NAR
        // sizes schedule the work), and the problems are listed in the paths' order.
        let present: Vec<bool> = infos
            .iter()
            .map(|info| fs::symlink_metadata(layout.physical_path(&info.path)).is_ok())
            .collect();
        let items: Vec<_> = infos
            .iter()
            .zip(&present)
            .filter(|(_, here)| check_contents && **here)
            .map(|(info, _)| (layout.physical_path(&info.path), info.nar_size))
            .collect();
        let mut hashed = crate::hashing::hash_paths(&items).into_iter();
        let mut problems = Vec::new();
        for (info, here) in infos.iter().zip(present) {
            let path = info.path.to_absolute(layout.store_dir());
            if !here {
                problems.push(VerifyProblem::Missing(path));
                continue;
            }
            match hashed.next() {
                None => {}
                Some(Ok(actual)) if actual == info.nar_digest() => {}
                Some(Ok(actual)) => problems.push(VerifyProblem::Modified {
                    path,
                    expected: info.nar_digest(),
                    actual,
                }),
                Some(Err(e)) => {
                    problems.push(VerifyProblem::Unreadable { path, reason: e.to_string() })
                }
            }
        }
        report.problems.extend(problems);
        let store_dir = self.layout.physical_store_dir();
        if let Ok(entries) = fs::read_dir(&store_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    report.leftovers.push(entry.path());
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.layout.pending_dir()) {
            report.leftovers.extend(entries.flatten().map(|e| e.path()));
        }
        report.leftovers.sort();
        Ok(report)
    }

    /// Delete a valid path that no other valid path refers to.
    pub fn delete(&mut self, path: &StorePath) -> Result<(), StoreError> {
        self.check_writable()?;
        let marker = self.layout.pending_dir().join(path.base_name());
        write_marker(&marker)?;
        let result = self.db.delete(path);
        if let Err(e) = result {
            let _ = fs::remove_file(&marker);
            return Err(e.into());
        }
        crash_point("delete-after-commit");
        let target = self.physical_path(path);
        if fs::symlink_metadata(&target).is_ok() {
            let temp = self.temp_path();
            fs::rename(&target, &temp).map_err(io_err("cannot move away", &target))?;
            sync_dir(&self.layout.physical_store_dir())?;
            remove_tree(&temp).map_err(io_err("cannot remove", &temp))?;
        }
        fs::remove_file(&marker).map_err(io_err("cannot remove", &marker))?;
        Ok(())
    }

    /// GC roots: store paths that symlinks under `<state>/gcroots` and `<state>/profiles` point
    /// to (at any depth), valid ones only.
    pub fn find_roots(&self) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut roots = BTreeSet::new();
        for dir in [self.layout.gcroots_dir(), self.layout.profiles_dir()] {
            self.walk_roots(&dir, &mut roots)?;
        }
        Ok(roots)
    }

    fn walk_roots(&self, dir: &Path, roots: &mut BTreeSet<StorePath>) -> Result<(), StoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot list", dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", dir))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io_err("cannot stat", &path))?;
            if ft.is_dir() {
                self.walk_roots(&path, roots)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err("cannot read link", &path))?;
                let text = target.to_string_lossy();
                // A logical store path, or the same path as seen under the root.
                let phys_prefix = self.layout.physical_store_dir();
                let logical = match target.strip_prefix(&phys_prefix) {
                    Ok(rest) if self.layout.root() != Path::new("/") => {
                        format!("{}/{}", self.store_dir(), rest.to_string_lossy())
                    }
                    _ => text.into_owned(),
                };
                if let Ok((item, _)) = self.store_dir().split_path(&logical) {
                    if self.db.is_valid(&item)? {
                        roots.insert(item);
                    }
                }
            }
        }
        Ok(())
    }

    /// Delete every valid path not reachable from the roots ([`Self::find_roots`] plus
    /// `extra_roots`), referrers first, and every store-dir entry that is not a valid path.
    /// Needs the exclusive lock. With `dry_run`, only report.
    pub fn collect_garbage(
        &mut self,
        extra_roots: &[StorePath],
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        self.check_writable()?;
        let lock = self.lock.as_ref().expect("writable");
        if flock(lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            // A failed conversion may have dropped the shared lock (flock(2)): take it again.
            let _ = flock(lock, FlockOperation::LockShared);
            return Err(StoreError::Busy(self.layout.physical_store_dir()));
        }
        let result = self.collect_garbage_locked(extra_roots, dry_run);
        let lock = self.lock.as_ref().expect("writable");
        let _ = flock(lock, FlockOperation::LockShared);
        result
    }

    fn collect_garbage_locked(
        &mut self,
        extra_roots: &[StorePath],
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport { roots: self.find_roots()?, ..Default::default() };
        report.roots.extend(extra_roots.iter().cloned());
        let roots: Vec<StorePath> = report.roots.iter().cloned().collect();
        let live: BTreeSet<StorePath> =
            self.db.closure(&roots)?.into_iter().map(|i| i.path).collect();
        let all = ValidatedClosure::from_infos(self.db.all_path_infos()?)?;
        let dead: Vec<&PathInfo> = all.iter().rev().filter(|i| !live.contains(&i.path)).collect();
        for info in dead {
            report.freed_nar_bytes += info.nar_size;
            report.deleted.push(info.path.clone());
        }
        let store_dir = self.layout.physical_store_dir();
        let valid: BTreeSet<StorePath> = all.paths().cloned().collect();
        for entry in fs::read_dir(&store_dir).map_err(io_err("cannot list", &store_dir))? {
            let entry = entry.map_err(io_err("cannot list", &store_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".links" {
                continue;
            }
            let is_valid = StorePath::from_base_name(&name).is_ok_and(|p| valid.contains(&p));
            if !is_valid {
                report.removed_invalid.push(entry.path());
            }
        }
        if !dry_run {
            for path in report.deleted.clone() {
                self.delete(&path)?;
            }
            for p in &report.removed_invalid {
                remove_tree(p).map_err(io_err("cannot remove", p))?;
            }
        }
        Ok(report)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err("cannot sync", dir))
}

fn write_marker(marker: &Path) -> Result<(), StoreError> {
    let f = File::create(marker).map_err(io_err("cannot write intent record", marker))?;
    f.sync_all().map_err(io_err("cannot sync", marker))?;
    if let Some(dir) = marker.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Copy `source` to `target` canonically (what restoring its NAR gives), streaming the NAR
/// from `dump` on a second thread through a bounded in-memory pipe. Returns the NAR digest.
fn copy_via_nar(source: &Path, target: &Path) -> Result<NarDigest, StoreError> {
    let (writer, receiver) = nar_core::pipe::chunk_pipe(8);
    std::thread::scope(|scope| {
        let producer =
            scope.spawn(move || dump(source, io::BufWriter::with_capacity(256 << 10, writer)));
        let mut reader = receiver.into_reader();
        let restored = restore_with(
            &mut reader,
            target,
            &RestoreOptions { fsync: true, ..RestoreOptions::default() },
            true,
        );
        drop(reader); // unblocks the producer if the restore stopped early
        let dumped = producer.join().expect("the NAR dump thread panicked");
        match (dumped, restored) {
            (Err(source_err), _) => {
                let _ = remove_tree(target);
                Err(StoreError::Dump { path: source.to_owned(), source: source_err })
            }
            (Ok(_), Err(e)) => {
                Err(StoreError::Restore { path: target.display().to_string(), source: e })
            }
            (Ok(size), Ok(digest)) => {
                debug_assert_eq!(size, digest.size);
                Ok(digest)
            }
        }
    })
}
