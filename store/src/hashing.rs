//! NAR hashes of many paths at once, on the rayon pool.
//!
//! One NAR hash is inherently serial (one core's SHA-256), so parallelism comes from hashing
//! several paths at a time. [`hash_paths`] takes each path with its expected NAR size and:
//! - starts the largest first and hands them out one at a time (so that two large paths never
//!   wait behind each other on one worker while another worker hashes small ones);
//! - hashes a path on its worker alone ([`nar_core::dump::dump_hashed`]: read and hash in
//!   turn) when other paths keep the other cores busy, and overlaps the walk with the hashing
//!   on a second thread ([`nar_core::dump::hash_path`]) only for a path larger than an even
//!   share of all the bytes: that one path is the critical path, and the second thread would
//!   otherwise take a core from another path's hashing (plus a copy of every byte between the
//!   threads).
//!
//! On `/usr/lib/python3.11`, the two LibreOffice trees and 1,001 tiny paths (1,004 paths, 292.9 MB
//! of NAR) on 2 cores, `store verify --check-contents`: 0.227 s with one pipelined hash per path
//! in name order, 0.153 s so (medians of `farm-bench`; benches/README.md, "Hashing").

use std::io;
use std::path::Path;

use nar_core::dump::{dump_hashed, hash_path, DumpError};
use nar_core::hash::NarDigest;
use rayon::prelude::*;

/// NAR hash and size of each `(path, expected NAR size)`, in input order, computed in parallel
/// (see the module docs). The sizes only schedule the work: a wrong one costs time, not
/// correctness.
pub fn hash_paths<P: AsRef<Path> + Sync>(items: &[(P, u64)]) -> Vec<Result<NarDigest, DumpError>> {
    let total: u64 = items.iter().map(|(_, size)| size).sum();
    let threads = rayon::current_num_threads().max(1) as u64;
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].1));
    let mut hashed: Vec<(usize, Result<NarDigest, DumpError>)> = order
        .into_par_iter()
        .with_max_len(1)
        .map(|i| {
            let (path, size) = &items[i];
            let path = path.as_ref();
            let digest = if threads == 1 || size.saturating_mul(threads) > total {
                hash_path(path)
            } else {
                dump_hashed(path, io::sink())
            };
            (i, digest)
        })
        .collect();
    hashed.sort_by_key(|(i, _)| *i);
    hashed.into_iter().map(|(_, digest)| digest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Every path's hash is the one `hash_path` gives, in input order, whatever the sizes say
    /// and whichever way each is hashed; a missing path is an error in its place.
    #[test]
    fn parallel_equals_serial() {
        let dir = tempfile::tempdir().unwrap();
        let mut items: Vec<(PathBuf, u64)> = (0..16)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; 1000 * i]).unwrap();
                // Sizes that disagree with the files only change the order of work; the last
                // one claims nearly all the bytes, so it takes the two-thread hash.
                (p, if i == 15 { 1 << 40 } else { (i as u64 * 7919) % 13 })
            })
            .collect();
        items.push((dir.path().join("nope"), 0));
        let hashed = hash_paths(&items);
        for ((p, _), d) in items.iter().zip(&hashed).take(16) {
            assert_eq!(hash_path(p).unwrap(), *d.as_ref().unwrap());
        }
        assert!(hashed[16].is_err());
    }
}
