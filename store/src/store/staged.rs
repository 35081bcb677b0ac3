//! Two-step import for streams whose metadata follows the archive.
//!
//! In an export bundle (guix-spec §2.1) the NAR comes first and the store path, references,
//! deriver and signature after it, so [`Store::import_nar`], which needs the metadata up front,
//! cannot be used without holding the whole NAR. Guix's daemon restores into a temporary
//! directory first and decides afterwards (§2.5 step 1); so does this:
//!
//! 1. [`Store::stage`] reserves a `.tmp-*` entry in the store dir; [`StagedNar::restore`]
//!    unpacks one NAR into it (fsynced) and records its hash and size. It needs no access to
//!    the store, so it can run on another thread while the caller reads the stream.
//! 2. The caller reads and checks the metadata (signature, ACL, ...).
//! 3. [`Store::commit_staged`] checks that the NAR matches `info` (hash and size) and that the
//!    references are valid, then renames and registers exactly as [`Store::import_nar`] does
//!    (steps 2–4 of the module docs of [`crate::store`]).
//!
//! A [`StagedNar`] that is dropped without being committed removes its temporary entry; one
//! left behind by a crash is a `.tmp-*` leftover that the next writer removes. Either way the
//! path never becomes valid.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use nar_core::hash::NarDigest;
use nar_core::restore::{remove_tree, restore_with, RestoreOptions};

use super::{ImportOutcome, Store, StoreError};
use closure::PathInfo;

/// A NAR restored (or about to be) into a temporary entry of the store, before its store path
/// is known. See the module docs.
#[derive(Debug)]
pub struct StagedNar {
    temp: Option<PathBuf>,
    digest: Option<NarDigest>,
}

impl StagedNar {
    /// Restore one NAR from `reader` into the temporary entry, syncing it to disk; returns its
    /// hash and size. The reader is left right after the archive. On error nothing stays on
    /// disk. A second call fails (the entry exists).
    pub fn restore<R: BufRead + ?Sized>(
        &mut self,
        reader: &mut R,
    ) -> Result<NarDigest, StoreError> {
        let temp = self.temp.as_deref().expect("a StagedNar holds its entry until committed");
        let digest = restore_with(
            reader,
            temp,
            &RestoreOptions { fsync: true, ..RestoreOptions::default() },
            false,
        )
        .map_err(|source| StoreError::Restore { path: temp.display().to_string(), source })?;
        self.digest = Some(digest);
        Ok(digest)
    }

    /// The hash and size of the restored NAR, once [`Self::restore`] succeeded.
    pub fn digest(&self) -> Option<NarDigest> {
        self.digest
    }

    /// Where the NAR is (or will be) unpacked: a `.tmp-*` entry of the physical store dir.
    pub fn temp_path(&self) -> &Path {
        self.temp.as_deref().expect("a StagedNar holds its entry until committed")
    }
}

impl Drop for StagedNar {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = remove_tree(&temp);
        }
    }
}

impl Store {
    /// Reserve a temporary entry in the store dir for a NAR whose metadata is not known yet
    /// (see the module docs of [`crate::store::staged`]).
    pub fn stage(&self) -> Result<StagedNar, StoreError> {
        self.check_writable()?;
        Ok(StagedNar { temp: Some(self.temp_path()), digest: None })
    }

    /// Make a staged NAR valid as `info.path`: its hash and size must equal `info`'s, and every
    /// reference must be valid; then it is renamed into place and registered in one
    /// transaction, as [`Store::import_nar`] does. On any error the staged copy is removed and
    /// nothing becomes valid. A path that is valid already is left as it is
    /// ([`ImportOutcome::AlreadyValid`]).
    pub fn commit_staged(
        &mut self,
        mut staged: StagedNar,
        info: &PathInfo,
    ) -> Result<ImportOutcome, StoreError> {
        self.check_writable()?;
        let abs = self.absolute(&info.path);
        let Some(digest) = staged.digest else {
            return Err(StoreError::NotValid(format!(
                "{abs} (its NAR was not restored before the commit)"
            )));
        };
        if digest != info.nar_digest() {
            return Err(StoreError::HashMismatch {
                path: abs,
                expected: info.nar_hash,
                expected_size: info.nar_size,
                actual: digest.hash,
                actual_size: digest.size,
            });
        }
        for r in info.references_except_self() {
            if !self.db.is_valid(r)? {
                return Err(StoreError::ReferenceNotValid {
                    path: abs,
                    reference: self.absolute(r),
                });
            }
        }
        let temp = staged.temp.take().expect("a StagedNar holds its entry until committed");
        self.commit(temp, info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::StoreLayout;
    use nar_core::hash::Sha256Hash;
    use nar_core::store_path::make_source_path;

    fn leftovers(store: &Store) -> Vec<String> {
        std::fs::read_dir(store.layout().physical_store_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(super::super::TEMP_PREFIX))
            .collect()
    }

    #[test]
    fn stage_then_commit_or_discard() {
        let root = tempfile::tempdir().unwrap();
        let mut store = Store::open(StoreLayout::at_root(root.path()).unwrap()).unwrap();
        let nar = nar_core::testdata::hello_nar();
        let digest = NarDigest { hash: Sha256Hash::of(&nar), size: nar.len() as u64 };
        let path = make_source_path(store.store_dir(), "hello.txt", &digest.hash).unwrap();
        let other =
            make_source_path(store.store_dir(), "other", &Sha256Hash::of(b"other")).unwrap();

        // Restored, then dropped: nothing stays.
        let mut staged = store.stage().unwrap();
        assert_eq!(staged.restore(&mut &nar[..]).unwrap(), digest);
        assert!(staged.temp_path().exists());
        drop(staged);
        assert!(leftovers(&store).is_empty());

        // Wrong hash or a missing reference: refused, removed, not valid.
        let mut staged = store.stage().unwrap();
        staged.restore(&mut &nar[..]).unwrap();
        let mut wrong = PathInfo::new(path.clone(), digest, Default::default());
        wrong.nar_size += 1;
        let e = store.commit_staged(staged, &wrong).unwrap_err();
        assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
        let mut staged = store.stage().unwrap();
        staged.restore(&mut &nar[..]).unwrap();
        let dangling = PathInfo::new(path.clone(), digest, [other.clone()].into_iter().collect());
        let e = store.commit_staged(staged, &dangling).unwrap_err();
        assert!(matches!(e, StoreError::ReferenceNotValid { .. }), "{e}");
        assert!(!store.is_valid(&path).unwrap());
        assert!(leftovers(&store).is_empty());

        // A truncated NAR: the restore fails and leaves nothing.
        let mut staged = store.stage().unwrap();
        assert!(staged.restore(&mut &nar[..100]).is_err());
        let e = store.commit_staged(staged, &wrong).unwrap_err();
        assert!(matches!(e, StoreError::NotValid(_)), "{e}");
        assert!(leftovers(&store).is_empty());

        // The right info: valid, with the contents in place; a second copy is discarded.
        let info = PathInfo::new(path.clone(), digest, Default::default());
        for expected in [ImportOutcome::Imported, ImportOutcome::AlreadyValid] {
            let mut staged = store.stage().unwrap();
            staged.restore(&mut &nar[..]).unwrap();
            assert_eq!(store.commit_staged(staged, &info).unwrap(), expected);
        }
        assert_eq!(std::fs::read(store.physical_path(&path)).unwrap(), b"hello\n");
        assert_eq!(store.path_info(&path).unwrap().nar_digest(), digest);
        assert!(leftovers(&store).is_empty());
        assert!(store.verify(true).unwrap().is_clean());
    }
}
