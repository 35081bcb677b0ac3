//! Who the agent serves, and what that allows.
//!
//! [`Role::Host`] is `ferry serve` on a host: a coordinator the host's operator let in pushes
//! paths; it may add its key to the ACL (`Authorize`) and ask for a closure (`SendClosure`).
//!
//! [`Role::Puller`] is the local side of a pull (`ferry copy --from`): it receives on behalf of
//! the local user from a host it does not trust for more than its signatures. Its trust is what
//! it was before the session: the host may not change the ACL (`Authorize` is a protocol error)
//! nor ask for the local store (`SendClosure` is one too), and only the closure of the roots
//! asked for is accepted. That closure is learnt from the host's `Query`, whose reference graph
//! (feature `graph`) must reach every entry from the roots, and each path's signed references
//! must be the ones the graph claimed: an entry outside the closure ends the session, and a path
//! whose signed references disagree is refused.

use std::collections::{BTreeMap, BTreeSet};

use nar_core::store_path::StorePath;
use proto::frame::{PathStart, QueryEntry};

use crate::deadline::Watch;

/// Who the agent serves.
#[derive(Debug, Clone)]
pub enum Role {
    /// A host serving a coordinator (`ferry serve`).
    Host,
    /// The local side of a pull of the closure of `roots` (the caller names the host in
    /// errors), waiting for the host under `watch`'s deadlines.
    Puller { roots: Vec<StorePath>, watch: Watch },
}

/// The closure a puller accepts, from the host's `Query`: each path and the references the
/// graph gave it (other than itself).
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    paths: BTreeMap<StorePath, BTreeSet<StorePath>>,
}

impl Accepted {
    /// The closure of `roots` in the graph of `entries`; an error naming the entries the roots
    /// do not reach (a host offering what was not asked for).
    pub(crate) fn from_query(roots: &[StorePath], entries: &[QueryEntry]) -> Result<Self, String> {
        let index: BTreeMap<&StorePath, usize> =
            entries.iter().enumerate().map(|(i, e)| (&e.path, i)).collect();
        let mut reached = vec![false; entries.len()];
        let mut stack: Vec<usize> = Vec::new();
        // A root missing from the query is left to the final check (the pull then fails
        // naming it); the closure is what the roots present reach.
        stack.extend(roots.iter().filter_map(|r| index.get(r).copied()));
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut reached[i], true) {
                continue;
            }
            stack.extend(entries[i].references.iter().map(|&r| r as usize));
        }
        let outside: Vec<String> = entries
            .iter()
            .zip(&reached)
            .filter(|(_, r)| !**r)
            .map(|(e, _)| e.path.to_string())
            .collect();
        if !outside.is_empty() {
            let shown = outside.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            return Err(format!(
                "the host offered {} paths outside the closure of the requested roots: {shown}",
                outside.len()
            ));
        }
        let paths = entries
            .iter()
            .map(|e| {
                let refs = e.references.iter().map(|&r| entries[r as usize].path.clone());
                (e.path.clone(), refs.collect())
            })
            .collect();
        Ok(Accepted { paths })
    }

    /// Whether `start` is a path of the closure, with the references the graph claimed; the
    /// refusal's message otherwise.
    pub(crate) fn check(&self, start: &PathStart) -> Result<(), String> {
        let Some(refs) = self.paths.get(&start.path) else {
            return Err("it is not in the closure of the requested roots".into());
        };
        let signed: BTreeSet<StorePath> =
            start.references.iter().filter(|r| **r != start.path).cloned().collect();
        if &signed != refs {
            return Err("its signed references are not the ones the host's query listed".into());
        }
        Ok(())
    }
}
