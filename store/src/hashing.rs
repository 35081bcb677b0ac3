//! NAR hashes of many paths at once, on the rayon pool.
//!
//! One NAR hash is inherently serial (one core's SHA-256; `nar_core::dump::hash_path` already
//! overlaps the walk with it), so parallelism comes from hashing several paths at a time:
//! [`hash_paths`] runs one [`nar_core::dump::hash_path`] per path on the rayon pool and returns
//! the results in input order.

use std::path::{Path, PathBuf};

use nar_core::dump::{hash_path, DumpError};
use nar_core::hash::NarDigest;
use rayon::prelude::*;

/// NAR hash and size of each path, in input order, computed in parallel.
pub fn hash_paths<P: AsRef<Path> + Sync>(paths: &[P]) -> Vec<Result<NarDigest, DumpError>> {
    paths.par_iter().map(|p| hash_path(p.as_ref())).collect()
}

/// Like [`hash_paths`] but stops at the first error, naming the path.
pub fn hash_paths_all<P: AsRef<Path> + Sync>(
    paths: &[P],
) -> Result<Vec<NarDigest>, (PathBuf, DumpError)> {
    paths
        .par_iter()
        .map(|p| hash_path(p.as_ref()).map_err(|e| (p.as_ref().to_owned(), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_equals_serial() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..16)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; 1000 * i]).unwrap();
                p
            })
            .collect();
        let parallel = hash_paths_all(&paths).unwrap();
        for (p, d) in paths.iter().zip(&parallel) {
            assert_eq!(hash_path(p).unwrap(), *d);
        }
        let missing = [dir.path().join("nope")];
        assert!(hash_paths(&missing)[0].is_err());
    }
}
