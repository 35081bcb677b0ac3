//! A host store that belongs to a daemon ([`AgentOptions::daemon`](super::AgentOptions::daemon)):
//! Nix's ([`super::nix_store`]) or Guix's ([`super::guix_store`]). The agent reads the daemon's
//! database in place (read only: the diff, delta bases and their NAR hashes) and hands each
//! verified NAR to the daemon's own import, which registers it; each path is answered once the
//! daemon registered it. What both do: the NAR streams to the daemon while ferry hashes it, and
//! what makes it importable (Nix: its last bytes; Guix: the item's signed trailer) goes out
//! only once the whole NAR matched the signed hash and size; a path that does not match is cut
//! off (its import process killed) and never registered. The references of a path must be
//! valid in the daemon's database before any byte of it is sent.

use std::io::Read;
use std::path::Path;

use closure::PathInfo;
use nar_core::store_path::StoreDir;
use store::{ImportOutcome, Store, StoreError};

use super::guix_store::{GuixOptions, GuixSink};
use super::nix_store::{NixOptions, NixSink};

/// Which daemon's store the agent imports into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonStore {
    /// Nix's, through `nix-store --serve --write`.
    Nix(NixOptions),
    /// Guix's, through `guix archive --import`.
    Guix(GuixOptions),
}

/// The session's import into the daemon's store.
#[derive(Debug)]
pub(crate) enum Sink {
    Nix(NixSink),
    Guix(GuixSink),
}

impl Sink {
    /// The sink for `daemon`, signing with the host's keys in `state_dir` (made on first use).
    pub(crate) fn new(
        daemon: DaemonStore,
        store_dir: StoreDir,
        state_dir: &Path,
    ) -> Result<Sink, crate::trust::KeyError> {
        Ok(match daemon {
            DaemonStore::Nix(o) => Sink::Nix(NixSink::new(o, store_dir, state_dir)?),
            DaemonStore::Guix(o) => Sink::Guix(GuixSink::new(o, store_dir, state_dir)?),
        })
    }

    /// Check `info`'s references against the daemon's database (`store`), then hand over the
    /// NAR read from `nar`; `Ok` once the daemon registered it.
    pub(crate) fn add(
        &mut self,
        store: &Store,
        info: &PathInfo,
        nar: &mut dyn Read,
    ) -> Result<ImportOutcome, StoreError> {
        crate::delta::bases::references_valid(store, info)?;
        self.add_checked(info, nar)
    }

    /// [`Sink::add`] for a path whose references were checked.
    pub(crate) fn add_checked(
        &mut self,
        info: &PathInfo,
        nar: &mut dyn Read,
    ) -> Result<ImportOutcome, StoreError> {
        match self {
            Sink::Nix(s) => s.add(info, nar),
            Sink::Guix(s) => s.add(info, nar),
        }
    }

    /// End the session's import processes.
    pub(crate) fn finish(&mut self) {
        if let Sink::Nix(s) = self {
            s.finish();
        }
    }
}

/// A reader that passes `inner` on while hashing it, and fails instead of ending when what it
/// read does not match `expected` (too long, too short or another hash): an importer reading
/// through it never sees a complete NAR that was not checked. [`Checked::mismatch`] then holds
/// the digest of what was read.
pub(crate) struct Checked<'a> {
    inner: &'a mut dyn Read,
    hasher: nar_core::hash::NarHasher,
    expected: nar_core::hash::NarDigest,
    /// Set when the input did not match.
    pub(crate) mismatch: Option<nar_core::hash::NarDigest>,
}

impl<'a> Checked<'a> {
    pub(crate) fn new(inner: &'a mut dyn Read, expected: nar_core::hash::NarDigest) -> Self {
        Checked { inner, hasher: nar_core::hash::NarHasher::new(), expected, mismatch: None }
    }

    fn refuse(&mut self) -> std::io::Error {
        let digest = std::mem::take(&mut self.hasher).finish();
        self.mismatch = Some(digest);
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the NAR does not match its signed hash",
        )
    }
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.mismatch.is_some() {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidData));
        }
        let left = self.expected.size - self.hasher.size();
        // One byte more than is left shows a NAR longer than signed.
        let want = buf.len().min(usize::try_from(left + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.hasher.update(&buf[..n]);
        if self.hasher.size() > self.expected.size {
            return Err(self.refuse());
        }
        if n == 0 && self.hasher.clone().finish() != self.expected {
            return Err(self.refuse());
        }
        Ok(n)
    }
}
