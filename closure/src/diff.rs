//! The diff against a remote store: which members of a closure the remote lacks.
//!
//! The coordinator sends the whole closure in one query ([`ValidatedClosure::paths`]); the
//! remote answers once, with the paths it has ([`RemoteAnswer::Present`], e.g. from
//! `store::Database::query_valid` or `nix-store --serve`'s QueryValidPaths) or with the
//! ones it lacks ([`RemoteAnswer::Missing`]). [`diff`] turns that one answer into the missing
//! paths **in topological order** (references first, the order to send them in) and the total
//! NAR size to send. An answer naming a path that was not asked about is an error.

use std::collections::BTreeSet;

use nar_core::store_path::StorePath;

use crate::graph::ValidatedClosure;
use crate::path_info::PathInfo;

/// The remote's one answer to "which of these do you have?".
#[derive(Debug, Clone)]
pub enum RemoteAnswer {
    /// The paths the remote holds.
    Present(BTreeSet<StorePath>),
    /// The paths the remote lacks.
    Missing(BTreeSet<StorePath>),
}

/// An answer that does not fit the question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    #[error("the remote's answer names {0}, which is not in the closure that was sent")]
    NotAsked(StorePath),
}

/// What must be sent.
#[derive(Debug, Clone, Default)]
pub struct Missing {
    /// Missing members in topological order (references first).
    pub paths: Vec<PathInfo>,
    /// Sum of their NAR sizes.
    pub nar_size: u64,
}

impl Missing {
    /// Number of missing paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// The members of `closure` the remote lacks, from its one answer.
pub fn diff(closure: &ValidatedClosure, answer: &RemoteAnswer) -> Result<Missing, DiffError> {
    let (named, present_means_have) = match answer {
        RemoteAnswer::Present(set) => (set, true),
        RemoteAnswer::Missing(set) => (set, false),
    };
    if let Some(stranger) = named.iter().find(|p| !closure.contains(p)) {
        return Err(DiffError::NotAsked(stranger.clone()));
    }
    let mut out = Missing::default();
    for info in closure.iter() {
        let named_here = named.contains(&info.path);
        if named_here != present_means_have {
            out.nar_size += info.nar_size;
            out.paths.push(info.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nar_core::hash::{NarDigest, Sha256Hash};

    fn sp(i: u32) -> StorePath {
        let mut d = [0u8; 20];
        d[..4].copy_from_slice(&i.to_le_bytes());
        StorePath::from_parts(d, &format!("p{i}")).unwrap()
    }

    fn info(i: u32, refs: &[u32]) -> PathInfo {
        PathInfo::new(
            sp(i),
            NarDigest { hash: Sha256Hash::of(&i.to_le_bytes()), size: 10 * u64::from(i) },
            refs.iter().map(|&r| sp(r)).collect(),
        )
    }

    #[test]
    fn missing_in_order_with_size() {
        let c = ValidatedClosure::from_infos([
            info(1, &[2, 3]),
            info(2, &[4]),
            info(3, &[4]),
            info(4, &[]),
        ])
        .unwrap();
        let have: BTreeSet<_> = [sp(4), sp(3)].into_iter().collect();
        let m = diff(&c, &RemoteAnswer::Present(have)).unwrap();
        let paths: Vec<_> = m.paths.iter().map(|i| i.path.clone()).collect();
        assert_eq!(paths, vec![sp(2), sp(1)]);
        assert_eq!(m.nar_size, 30);
        let lack: BTreeSet<_> = [sp(1), sp(2)].into_iter().collect();
        let m2 = diff(&c, &RemoteAnswer::Missing(lack)).unwrap();
        assert_eq!(m2.paths, m.paths);
        let all = diff(&c, &RemoteAnswer::Present(BTreeSet::new())).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all.nar_size, c.total_nar_size());
        let err = diff(&c, &RemoteAnswer::Present([sp(9)].into_iter().collect())).unwrap_err();
        assert_eq!(err, DiffError::NotAsked(sp(9)));
    }
}
