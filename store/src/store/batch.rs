//! Batched import: many received paths restored one by one, made durable and registered
//! together.
//!
//! [`Store::import_nar`] pays for each path a full sequence of syncs (every file and directory,
//! the intent record and its directory, the store dir, the database commit). For a closure of
//! a thousand small paths that is several thousand `fsync`s, which dominate the copy. An
//! [`ImportBatch`] keeps the same guarantees with one sync pass per batch:
//!
//! 1. [`ImportBatch::restore`] checks that every reference is valid or an earlier member of the
//!    batch, restores the NAR into `<store>/.tmp-<random>` **without** syncing, and checks its
//!    hash and size (a mismatch is refused at once and leaves nothing behind);
//! 2. [`ImportBatch::commit`], for all members at once:
//!    1. syncs every file and directory of every temp tree: one `fsync` each for a few, one
//!       `syncfs(2)` of the store's file system for more than [`SYNCFS_MIN_ENTRIES`] (an
//!       `fsync` per small file costs a journal commit each);
//!    2. writes an intent record `<state>/pending/<base name>` per member and syncs the pending
//!       dir once;
//!    3. in one `BEGIN IMMEDIATE` transaction, in order: a member already valid is discarded; a
//!       member with a reference that is neither valid nor registered earlier in this
//!       transaction is refused ([`StoreError::ReferenceNotValid`]); the others are renamed into
//!       place and inserted; then the store dir is synced once and the transaction committed;
//!    4. removes the intent records.
//!
//! **Crash safety** is that of [`crate::store`]: nothing is renamed before it is on disk, nothing
//! is registered before its rename is on disk, and after a crash at any point a member is either
//! valid with all its contents or absent (`.tmp-*` entries and renamed entries with an intent
//! record but no row are removed by the next writer). Dropping a batch removes the temp trees
//! of members not committed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use nar_core::restore::{remove_tree, RestoreOptions};
use nar_core::store_path::StorePath;

use super::{crash_point, io_err, sync_dir, ImportOutcome, Store, StoreError};
use closure::PathInfo;

/// Paths restored into temp trees of the store, waiting to be registered together. See the
/// module docs.
#[derive(Debug, Default)]
pub struct ImportBatch {
    members: Vec<(PathInfo, PathBuf)>,
    paths: HashSet<StorePath>,
    nar_bytes: u64,
    /// Most nodes one member may create (`None`: [`nar_core::restore::MAX_NODES`]).
    max_nodes: Option<u64>,
}

/// The outcome of one member of a committed batch.
pub type BatchOutcome = (StorePath, Result<ImportOutcome, StoreError>);

impl ImportBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cap the files, directories and symlinks one member's NAR may create (the NAR size is
    /// always capped at the member's declared size).
    pub fn with_max_nodes(mut self, max: u64) -> Self {
        self.max_nodes = Some(max);
        self
    }

    /// Members restored and not committed yet.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No member waiting.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// NAR bytes of the members waiting.
    pub fn nar_bytes(&self) -> u64 {
        self.nar_bytes
    }

    /// Is `path` a member waiting to be committed?
    pub fn contains(&self, path: &StorePath) -> bool {
        self.paths.contains(path)
    }

    /// Restore one path received as a NAR (what the sender claims is `info`) into a temp tree
    /// of `store`, unsynced. Its references must be valid in `store` or earlier members of this
    /// batch (checked before any byte is read); the NAR must have `info`'s hash and size. On
    /// error nothing of it stays. A path that is valid already or a member already is not read
    /// ([`ImportOutcome::AlreadyValid`]; the caller skips its data). The reader is left right
    /// after the archive.
    pub fn restore<R: BufRead + ?Sized>(
        &mut self,
        store: &Store,
        info: &PathInfo,
        reader: &mut R,
    ) -> Result<ImportOutcome, StoreError> {
        store.check_writable()?;
        if self.contains(&info.path) || store.db.is_valid(&info.path)? {
            return Ok(ImportOutcome::AlreadyValid);
        }
        let abs = store.absolute(&info.path);
        for r in info.references_except_self() {
            if !self.contains(r) && !store.db.is_valid(r)? {
                return Err(StoreError::ReferenceNotValid {
                    path: abs,
                    reference: store.absolute(r),
                });
            }
        }
        let options = RestoreOptions {
            start_writeback: true,
            max_nodes: self.max_nodes,
            ..RestoreOptions::default()
        };
        let temp = store.restore_checked(info, reader, &options)?;
        self.paths.insert(info.path.clone());
        self.nar_bytes += info.nar_size;
        self.members.push((info.clone(), temp));
        Ok(ImportOutcome::Imported)
    }

    /// Make every member durable and register them in one transaction (steps 2.1–2.4 of the
    /// module docs). Returns each member's outcome in order; the batch is empty afterwards.
    /// An error that breaks the whole batch (the database, syncing) is given to every member;
    /// nothing of it became valid then.
    pub fn commit(&mut self, store: &mut Store) -> Vec<BatchOutcome> {
        let members = std::mem::take(&mut self.members);
        self.paths.clear();
        self.nar_bytes = 0;
        if members.is_empty() {
            return Vec::new();
        }
        match commit_members(store, &members) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                for (_, temp) in &members {
                    let _ = remove_tree(temp);
                }
                let message = e.to_string();
                members
                    .into_iter()
                    .map(|(info, _)| {
                        let err = StoreError::Io {
                            op: "cannot register the batch holding",
                            path: store.physical_path(&info.path),
                            error: std::io::Error::other(message.clone()),
                        };
                        (info.path, Err(err))
                    })
                    .collect()
            }
        }
    }
}

impl Drop for ImportBatch {
    fn drop(&mut self) {
        for (_, temp) in self.members.drain(..) {
            let _ = remove_tree(&temp);
        }
    }
}

fn commit_members(
    store: &mut Store,
    members: &[(PathInfo, PathBuf)],
) -> Result<Vec<BatchOutcome>, StoreError> {
    store.check_writable()?;
    // Only up to the threshold are listed: past it one `syncfs` covers everything.
    let mut entries = Vec::new();
    let mut few = true;
    for (_, temp) in members {
        few = few && list_tree(temp, None, &mut entries, SYNCFS_MIN_ENTRIES)?;
    }
    let store_dir = store.layout.physical_store_dir();
    if !few {
        let dir = File::open(&store_dir).map_err(io_err("cannot open", &store_dir))?;
        rustix::fs::syncfs(&dir).map_err(|e| StoreError::Io {
            op: "cannot sync the file system of",
            path: store_dir.clone(),
            error: e.into(),
        })?;
    } else {
        for (path, is_dir) in &entries {
            if *is_dir {
                sync_dir(path)?;
            } else {
                File::open(path).and_then(|f| f.sync_all()).map_err(io_err("cannot sync", path))?;
            }
        }
    }
    crash_point("after-restore");
    let pending = store.layout.pending_dir();
    let markers: Vec<PathBuf> =
        members.iter().map(|(info, _)| pending.join(info.path.base_name())).collect();
    for marker in &markers {
        File::create(marker).map_err(io_err("cannot write intent record", marker))?;
    }
    sync_dir(&pending)?;
    crash_point("after-marker");
    let layout = store.layout.clone();
    let result = store.db.with_write_transaction(|txn| {
        let mut outcomes = Vec::with_capacity(members.len());
        for (info, temp) in members {
            if txn.is_valid(&info.path)? {
                outcomes.push((info.path.clone(), Ok(ImportOutcome::AlreadyValid)));
                continue;
            }
            let mut missing = None;
            for r in info.references_except_self() {
                if !txn.is_valid(r)? {
                    missing = Some(r);
                    break;
                }
            }
            if let Some(r) = missing {
                let err = StoreError::ReferenceNotValid {
                    path: info.path.to_absolute(layout.store_dir()),
                    reference: r.to_absolute(layout.store_dir()),
                };
                outcomes.push((info.path.clone(), Err(err)));
                continue;
            }
            let target = layout.physical_path(&info.path);
            if fs::symlink_metadata(&target).is_ok() {
                remove_tree(&target).map_err(io_err("cannot remove stale invalid", &target))?;
            }
            fs::rename(temp, &target).map_err(io_err("cannot rename into place", &target))?;
            // Inserted now so later members may refer to it; durable only with the commit,
            // which comes after the store dir is synced below.
            txn.register(std::slice::from_ref(info))?;
            outcomes.push((info.path.clone(), Ok(ImportOutcome::Imported)));
        }
        sync_dir(&store_dir)?;
        crash_point("after-rename");
        Ok::<_, StoreError>(outcomes)
    });
    // On error, renamed entries keep their intent records: the next writer removes them.
    let outcomes = result?;
    crash_point("after-commit");
    for ((_, temp), marker) in members.iter().zip(&markers) {
        // Members not renamed (valid already, or refused) still have their temp tree.
        if fs::symlink_metadata(temp).is_ok() {
            let _ = remove_tree(temp);
        }
        let _ = fs::remove_file(marker);
    }
    Ok(outcomes)
}

/// Above this many files and directories in a batch, one `syncfs(2)` of the store's file
/// system replaces one `fsync` each: `fsync`s of many small files each wait for their own
/// journal commit (about 1 ms apiece on ext4 here), while `syncfs` writes everything back and
/// commits once.
const SYNCFS_MIN_ENTRIES: usize = 16;

/// Add the regular files and directories of a restored tree (children before parents) to
/// `out`, with whether each is a directory; symlinks are covered by their directory. Stops and
/// returns `false` once `out` holds more than `limit`. `is_dir`: the caller knows the type
/// already (from the parent's listing, which needs no `stat`).
fn list_tree(
    path: &Path,
    is_dir: Option<bool>,
    out: &mut Vec<(PathBuf, bool)>,
    limit: usize,
) -> Result<bool, StoreError> {
    let is_dir = match is_dir {
        Some(is_dir) => is_dir,
        None => {
            let meta = fs::symlink_metadata(path).map_err(io_err("cannot stat", path))?;
            if !meta.is_dir() && !meta.is_file() {
                return Ok(out.len() <= limit);
            }
            meta.is_dir()
        }
    };
    if is_dir {
        for entry in fs::read_dir(path).map_err(io_err("cannot list", path))? {
            let entry = entry.map_err(io_err("cannot list", path))?;
            let kind = entry.file_type().map_err(io_err("cannot list", path))?;
            if !kind.is_symlink() && !list_tree(&entry.path(), Some(kind.is_dir()), out, limit)? {
                return Ok(false);
            }
        }
    }
    out.push((path.to_owned(), is_dir));
    Ok(out.len() <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::StoreLayout;
    use nar_core::hash::{NarDigest, Sha256Hash};
    use nar_core::store_path::make_source_path;

    fn leftovers(store: &Store) -> Vec<String> {
        fs::read_dir(store.layout().physical_store_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(super::super::TEMP_PREFIX))
            .collect()
    }

    fn nar_of_file(contents: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, contents).unwrap();
        let mut nar = Vec::new();
        nar_core::dump::dump(&f, &mut nar).unwrap();
        nar
    }

    fn info_for(store: &Store, name: &str, nar: &[u8], refs: &[&StorePath]) -> PathInfo {
        let digest = NarDigest { hash: Sha256Hash::of(nar), size: nar.len() as u64 };
        let path = make_source_path(store.store_dir(), name, &digest.hash).unwrap();
        PathInfo::new(path, digest, refs.iter().map(|r| (*r).clone()).collect())
    }

    #[test]
    fn members_refer_to_earlier_members_and_land_together() {
        let root = tempfile::tempdir().unwrap();
        let mut store = Store::open(StoreLayout::at_root(root.path()).unwrap()).unwrap();
        let (na, nb, nc) = (nar_of_file(b"a"), nar_of_file(b"b"), nar_of_file(b"c"));
        let a = info_for(&store, "a", &na, &[]);
        let b = info_for(&store, "b", &nb, &[&a.path]);
        let ghost = info_for(&store, "ghost", &nar_of_file(b"ghost"), &[]);
        let c = info_for(&store, "c", &nc, &[&ghost.path]);
        let mut batch = ImportBatch::new();
        assert_eq!(batch.restore(&store, &a, &mut &na[..]).unwrap(), ImportOutcome::Imported);
        assert_eq!(batch.restore(&store, &b, &mut &nb[..]).unwrap(), ImportOutcome::Imported);
        // A reference neither valid nor in the batch: refused before reading.
        let e = batch.restore(&store, &c, &mut &nc[..]).unwrap_err();
        assert!(matches!(e, StoreError::ReferenceNotValid { .. }), "{e}");
        // A hash mismatch: refused, nothing left.
        let mut wrong = a.clone();
        wrong.path = make_source_path(store.store_dir(), "w", &Sha256Hash::of(b"w")).unwrap();
        wrong.nar_size += 1;
        let e = batch.restore(&store, &wrong, &mut &na[..]).unwrap_err();
        assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
        assert_eq!(batch.len(), 2);
        assert!(!store.is_valid(&a.path).unwrap(), "nothing valid before the commit");
        let outcomes = batch.commit(&mut store);
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|(_, o)| matches!(o, Ok(ImportOutcome::Imported))));
        assert!(store.is_valid(&a.path).unwrap() && store.is_valid(&b.path).unwrap());
        assert_eq!(fs::read(store.physical_path(&b.path)).unwrap(), b"b");
        assert!(leftovers(&store).is_empty());
        assert!(fs::read_dir(store.layout().pending_dir()).unwrap().next().is_none());
        assert!(store.verify(true).unwrap().is_clean());
        // Valid already: not read again.
        let mut batch = ImportBatch::new();
        assert_eq!(batch.restore(&store, &a, &mut &[][..]).unwrap(), ImportOutcome::AlreadyValid);
        assert!(batch.is_empty());
    }

    #[test]
    fn dropped_batch_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(StoreLayout::at_root(root.path()).unwrap()).unwrap();
        let na = nar_of_file(b"a");
        let a = info_for(&store, "a", &na, &[]);
        let mut batch = ImportBatch::new();
        batch.restore(&store, &a, &mut &na[..]).unwrap();
        assert_eq!(leftovers(&store).len(), 1);
        drop(batch);
        assert!(leftovers(&store).is_empty());
        assert!(!store.is_valid(&a.path).unwrap());
    }
}
