//! [`PathInfo`]: what a store database records about one valid path.
//!
//! It mirrors a `ValidPaths` row plus its `Refs` (guix-spec §6.3) and Nix's extra columns
//! (`sigs`, `ca`, `ultimate`). The NAR hash is stored as `sha256:<hex>` in the database (both
//! Guix and Nix do so) and printed as `sha256:<nix-base32>` (as `nix-store -q --hash` does).

use std::collections::BTreeSet;

use nar_core::hash::{NarDigest, Sha256Hash};
use nar_core::store_path::{StoreDir, StorePath};

/// Everything the database knows about one valid store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The store item.
    pub path: StorePath,
    /// SHA-256 of its NAR serialization.
    pub nar_hash: Sha256Hash,
    /// Size in bytes of its NAR serialization.
    pub nar_size: u64,
    /// Store items it refers to (may include itself).
    pub references: BTreeSet<StorePath>,
    /// The derivation that built it, when known.
    pub deriver: Option<StorePath>,
    /// Nix signatures (`name:base64`), in database order.
    pub sigs: Vec<String>,
    /// Content-address assertion (Nix `ca` column), e.g. `fixed:r:sha256:…`.
    pub ca: Option<String>,
    /// Unix seconds when it was registered.
    pub registration_time: i64,
    /// Built locally (Nix `ultimate`).
    pub ultimate: bool,
}

impl PathInfo {
    /// A path info with only the required fields; the rest empty, registration time 0 (set when
    /// registering).
    pub fn new(path: StorePath, nar: NarDigest, references: BTreeSet<StorePath>) -> Self {
        PathInfo {
            path,
            nar_hash: nar.hash,
            nar_size: nar.size,
            references,
            deriver: None,
            sigs: Vec::new(),
            ca: None,
            registration_time: 0,
            ultimate: false,
        }
    }

    /// The NAR hash and size together.
    pub fn nar_digest(&self) -> NarDigest {
        NarDigest { hash: self.nar_hash, size: self.nar_size }
    }

    /// References other than the path itself.
    pub fn references_except_self(&self) -> impl Iterator<Item = &StorePath> {
        self.references.iter().filter(move |r| **r != self.path)
    }

    /// Absolute references, sorted, as Nix prints them.
    pub fn absolute_references(&self, store_dir: &StoreDir) -> Vec<String> {
        let mut out: Vec<String> =
            self.references.iter().map(|r| r.to_absolute(store_dir)).collect();
        out.sort();
        out
    }
}
