//! Adding Nix signatures to valid paths (`nix store sign`; the `sigs` column).

use nar_core::store_path::StorePath;

use super::{Store, StoreError};

impl Store {
    /// Add Nix signatures (`name:base64`, as [`closure::PathInfo::sigs`] holds them) to a valid
    /// path, keeping the ones it has and skipping duplicates, in one transaction. Returns the
    /// path's signatures after the change. Computing and checking the signatures is the
    /// caller's (the `signing` crate).
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.check_writable()?;
        Ok(self.db.add_signatures(path, sigs)?)
    }
}
