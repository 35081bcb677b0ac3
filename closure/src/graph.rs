//! Closures: collect path infos with [`ClosureBuilder`], validate them into a
//! [`ValidatedClosure`].
//!
//! Validation proves, once, what every later step relies on: every reference of every member
//! is itself a member (no dangling references), and there is no cycle apart from
//! self-references (a cycle is reported naming every path on it). The validated closure holds
//! its members in **topological order, references first**: the order to send, import and
//! register them in. The order is deterministic: a depth-first post-order visiting paths and
//! references in `StorePath` order.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use nar_core::store_path::{StoreDir, StorePath};

use crate::path_info::PathInfo;

/// Why a set of path infos is not a closure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClosureError {
    #[error("{referrer} refers to {reference}, which is not in the closure")]
    Dangling { referrer: StorePath, reference: StorePath },
    #[error("reference cycle: {}", cycle_text(.cycle))]
    Cycle { cycle: Vec<StorePath> },
    #[error("root {0} is not in the closure")]
    MissingRoot(StorePath),
    #[error("{0} was added twice with different information")]
    Conflict(StorePath),
}

fn cycle_text(cycle: &[StorePath]) -> String {
    let mut parts: Vec<String> = cycle.iter().map(|p| p.to_string()).collect();
    if let Some(first) = parts.first().cloned() {
        parts.push(first);
    }
    parts.join(" -> ")
}

/// Path infos with their references also given as indexes into `infos` (self-references
/// left out): what [`ValidatedClosure::from_indexed`] validates without hashing paths.
#[derive(Debug, Clone, Default)]
pub struct IndexedGraph {
    /// The members.
    pub infos: Vec<PathInfo>,
    /// For each member, the indexes of its references other than itself.
    pub edges: Vec<Vec<u32>>,
}

/// Path infos being collected into a closure.
#[derive(Debug, Default, Clone)]
pub struct ClosureBuilder {
    nodes: Vec<PathInfo>,
    index: PathMap<usize>,
    roots: BTreeSet<StorePath>,
}

/// A fast hasher for keys that are (or start with) uniformly random digests: store paths and
/// hash parts. Not DoS-resistant; the digests are SHA-256 output.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        // murmur3's fmix64, so every output bit depends on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A map keyed by store path with [`DigestHasher`].
pub(crate) type PathMap<V> = HashMap<StorePath, V, BuildHasherDefault<DigestHasher>>;

impl ClosureBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one member. Adding the same path twice is fine when the information agrees.
    pub fn add(&mut self, info: PathInfo) -> Result<(), ClosureError> {
        match self.index.get(&info.path) {
            Some(&i) => {
                let old = &self.nodes[i];
                if old.nar_hash != info.nar_hash || old.references != info.references {
                    Err(ClosureError::Conflict(info.path))
                } else {
                    Ok(())
                }
            }
            None => {
                self.index.insert(info.path.clone(), self.nodes.len());
                self.nodes.push(info);
                Ok(())
            }
        }
    }

    /// Add many members.
    pub fn extend(
        &mut self,
        infos: impl IntoIterator<Item = PathInfo>,
    ) -> Result<(), ClosureError> {
        infos.into_iter().try_for_each(|i| self.add(i))
    }

    /// Mark `path` as a root (what the closure was asked for); checked by [`Self::build`].
    pub fn add_root(&mut self, path: StorePath) {
        self.roots.insert(path);
    }

    /// Validate: roots present, references closed, no cycles; order references first.
    pub fn build(self) -> Result<ValidatedClosure, ClosureError> {
        for root in &self.roots {
            if !self.index.contains_key(root) {
                return Err(ClosureError::MissingRoot(root.clone()));
            }
        }
        // Visit in path order, so the result does not depend on the order of insertion.
        let mut infos = self.nodes;
        infos.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let mut index = self.index;
        for (i, info) in infos.iter().enumerate() {
            *index.get_mut(&info.path).expect("indexed") = i;
        }
        let mut edges: Vec<Vec<u32>> = Vec::with_capacity(infos.len());
        for info in &infos {
            let mut out = Vec::with_capacity(info.references.len());
            for r in info.references_except_self() {
                match index.get(r) {
                    Some(&j) => out.push(j as u32),
                    None => {
                        return Err(ClosureError::Dangling {
                            referrer: info.path.clone(),
                            reference: r.clone(),
                        })
                    }
                }
            }
            edges.push(out);
        }
        let order = topo_order(&edges).map_err(|cycle| ClosureError::Cycle {
            cycle: cycle.into_iter().map(|i| infos[i as usize].path.clone()).collect(),
        })?;
        let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
        let ordered: Vec<PathInfo> =
            order.into_iter().map(|i| slots[i as usize].take().expect("each once")).collect();
        for (i, info) in ordered.iter().enumerate() {
            *index.get_mut(&info.path).expect("indexed") = i;
        }
        let lazy = std::sync::OnceLock::new();
        let _ = lazy.set(index);
        Ok(ValidatedClosure { infos: ordered, index: lazy, roots: self.roots })
    }
}

/// Iterative DFS post-order (references before referrers). `Err` holds a cycle.
fn topo_order(edges: &[Vec<u32>]) -> Result<Vec<u32>, Vec<u32>> {
    const WHITE: u8 = 0;
    const GRAY: u8 = 1;
    const BLACK: u8 = 2;
    let n = edges.len();
    let mut color = vec![WHITE; n];
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<(u32, usize)> = Vec::new();
    for start in 0..n as u32 {
        if color[start as usize] != WHITE {
            continue;
        }
        color[start as usize] = GRAY;
        stack.push((start, 0));
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let out = &edges[node as usize];
            if *next < out.len() {
                let child = out[*next];
                *next += 1;
                match color[child as usize] {
                    WHITE => {
                        color[child as usize] = GRAY;
                        stack.push((child, 0));
                    }
                    GRAY => {
                        let from = stack.iter().position(|&(n, _)| n == child).expect("on stack");
                        return Err(stack[from..].iter().map(|&(n, _)| n).collect());
                    }
                    _ => {}
                }
            } else {
                color[node as usize] = BLACK;
                order.push(node);
                stack.pop();
            }
        }
    }
    Ok(order)
}

/// A closed, acyclic set of path infos in topological order (references first).
#[derive(Debug, Clone)]
pub struct ValidatedClosure {
    infos: Vec<PathInfo>,
    /// Path → position, built on first use (validation from an indexed graph needs none).
    index: std::sync::OnceLock<PathMap<usize>>,
    roots: BTreeSet<StorePath>,
}

impl ValidatedClosure {
    /// Validate `infos` as a closure (no roots recorded).
    pub fn from_infos(infos: impl IntoIterator<Item = PathInfo>) -> Result<Self, ClosureError> {
        let mut b = ClosureBuilder::new();
        b.extend(infos)?;
        b.build()
    }

    /// Validate a graph whose edges are already indexes (as [`IndexedGraph`]):
    /// every edge must point inside, every reference of an info must be one of its edges'
    /// targets (or itself), and there must be no cycle. Records `roots` (which must be members).
    pub fn from_indexed(
        graph: IndexedGraph,
        roots: impl IntoIterator<Item = StorePath>,
    ) -> Result<Self, ClosureError> {
        let IndexedGraph { infos, edges } = graph;
        assert_eq!(infos.len(), edges.len(), "one edge list per info");
        for (info, out) in infos.iter().zip(&edges) {
            // The edges must be exactly the references other than self: each edge target is a
            // distinct reference, and there are as many edges as such references.
            let mut ok = out.len() == info.references_except_self().count();
            for &j in out {
                ok &= infos
                    .get(j as usize)
                    .is_some_and(|t| t.path != info.path && info.references.contains(&t.path));
            }
            if !ok {
                let reference = info
                    .references_except_self()
                    .find(|r| {
                        !out.iter().any(|&j| infos.get(j as usize).is_some_and(|t| t.path == **r))
                    })
                    .unwrap_or(&info.path)
                    .clone();
                return Err(ClosureError::Dangling { referrer: info.path.clone(), reference });
            }
        }
        let order = topo_order(&edges).map_err(|cycle| ClosureError::Cycle {
            cycle: cycle.into_iter().map(|i| infos[i as usize].path.clone()).collect(),
        })?;
        let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
        let ordered: Vec<PathInfo> =
            order.into_iter().map(|i| slots[i as usize].take().expect("each once")).collect();
        let roots: BTreeSet<StorePath> = roots.into_iter().collect();
        if let Some(missing) = roots.iter().find(|r| !ordered.iter().any(|i| i.path == **r)) {
            return Err(ClosureError::MissingRoot(missing.clone()));
        }
        Ok(ValidatedClosure { infos: ordered, index: std::sync::OnceLock::new(), roots })
    }

    fn index(&self) -> &PathMap<usize> {
        self.index.get_or_init(|| {
            let mut map = PathMap::default();
            map.reserve(self.infos.len());
            for (i, info) in self.infos.iter().enumerate() {
                map.insert(info.path.clone(), i);
            }
            map
        })
    }

    /// Members in topological order, references first.
    pub fn iter(&self) -> std::slice::Iter<'_, PathInfo> {
        self.infos.iter()
    }

    /// Member paths in topological order.
    pub fn paths(&self) -> impl Iterator<Item = &StorePath> {
        self.infos.iter().map(|i| &i.path)
    }

    /// Absolute member paths in topological order.
    pub fn absolute_paths(&self, store_dir: &StoreDir) -> Vec<String> {
        self.paths().map(|p| p.to_absolute(store_dir)).collect()
    }

    /// The roots recorded by the builder.
    pub fn roots(&self) -> &BTreeSet<StorePath> {
        &self.roots
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.infos.len()
    }

    /// No members.
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// Is `path` a member?
    pub fn contains(&self, path: &StorePath) -> bool {
        self.index().contains_key(path)
    }

    /// A member's info.
    pub fn get(&self, path: &StorePath) -> Option<&PathInfo> {
        self.index().get(path).map(|&i| &self.infos[i])
    }

    /// Position of a member in the topological order.
    pub fn position(&self, path: &StorePath) -> Option<usize> {
        self.index().get(path).copied()
    }

    /// Sum of the members' NAR sizes.
    pub fn total_nar_size(&self) -> u64 {
        self.infos.iter().map(|i| i.nar_size).sum()
    }

    /// The members, in topological order.
    pub fn into_infos(self) -> Vec<PathInfo> {
        self.infos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nar_core::hash::{NarDigest, Sha256Hash};
    use proptest::prelude::*;

    pub(crate) fn sp(i: u32) -> StorePath {
        let mut d = [0u8; 20];
        d[..4].copy_from_slice(&i.to_le_bytes());
        StorePath::from_parts(d, &format!("p{i}")).unwrap()
    }

    fn info(i: u32, refs: &[u32]) -> PathInfo {
        PathInfo::new(
            sp(i),
            NarDigest { hash: Sha256Hash::of(&i.to_le_bytes()), size: u64::from(i) + 1 },
            refs.iter().map(|&r| sp(r)).collect(),
        )
    }

    #[test]
    fn order_dangling_cycle() {
        let c = ValidatedClosure::from_infos([info(1, &[2, 3, 1]), info(2, &[3]), info(3, &[])])
            .unwrap();
        let order: Vec<_> = c.paths().cloned().collect();
        assert_eq!(order, vec![sp(3), sp(2), sp(1)]);
        assert_eq!(c.total_nar_size(), 2 + 3 + 4);

        let err = ValidatedClosure::from_infos([info(1, &[2])]).unwrap_err();
        assert_eq!(err, ClosureError::Dangling { referrer: sp(1), reference: sp(2) });

        let err = ValidatedClosure::from_infos([
            info(1, &[2]),
            info(2, &[3]),
            info(3, &[1]),
            info(4, &[1]),
        ])
        .unwrap_err();
        let ClosureError::Cycle { cycle } = &err else { panic!("{err}") };
        assert_eq!(cycle.len(), 3);
        assert!(err.to_string().contains("p1") && err.to_string().contains("p3"), "{err}");

        let mut b = ClosureBuilder::new();
        b.add_root(sp(9));
        assert_eq!(b.build().unwrap_err(), ClosureError::MissingRoot(sp(9)));
    }

    #[test]
    fn from_indexed_validates() {
        let g = IndexedGraph {
            infos: vec![info(1, &[2, 1]), info(2, &[3]), info(3, &[])],
            edges: vec![vec![1], vec![2], vec![]],
        };
        let c = ValidatedClosure::from_indexed(g.clone(), [sp(1)]).unwrap();
        assert_eq!(c.paths().cloned().collect::<Vec<_>>(), vec![sp(3), sp(2), sp(1)]);
        assert_eq!(c.position(&sp(1)), Some(2));
        let mut bad = g.clone();
        bad.edges[0].clear();
        let err = ValidatedClosure::from_indexed(bad, []).unwrap_err();
        assert_eq!(err, ClosureError::Dangling { referrer: sp(1), reference: sp(2) });
        let mut cyclic = g.clone();
        cyclic.infos[2] = info(3, &[1]);
        cyclic.edges[2] = vec![0];
        assert!(matches!(
            ValidatedClosure::from_indexed(cyclic, []),
            Err(ClosureError::Cycle { .. })
        ));
        assert_eq!(
            ValidatedClosure::from_indexed(g, [sp(9)]).unwrap_err(),
            ClosureError::MissingRoot(sp(9))
        );
    }

    #[test]
    fn deep_chain_does_not_overflow() {
        let n = 200_000u32;
        let infos = (0..n).map(|i| if i + 1 < n { info(i, &[i + 1]) } else { info(i, &[]) });
        let c = ValidatedClosure::from_infos(infos).unwrap();
        assert_eq!(c.iter().next().unwrap().path, sp(n - 1));
    }

    proptest! {
        /// Random DAGs (edges only to higher numbers): closed, ordered, idempotent.
        #[test]
        fn topological_and_idempotent(edges in proptest::collection::vec(
            proptest::collection::vec(any::<prop::sample::Index>(), 0..5), 1..60)) {
            let n = edges.len() as u32;
            let infos: Vec<PathInfo> = edges.iter().enumerate().map(|(i, e)| {
                let i = i as u32;
                let refs: Vec<u32> = if i + 1 < n {
                    e.iter().map(|x| i + 1 + x.index((n - i - 1) as usize) as u32).collect()
                } else { vec![] };
                info(i, &refs)
            }).collect();
            let c = ValidatedClosure::from_infos(infos.clone()).unwrap();
            prop_assert_eq!(c.len(), infos.len());
            for member in c.iter() {
                for r in member.references_except_self() {
                    prop_assert!(c.position(r).unwrap() < c.position(&member.path).unwrap());
                }
            }
            let again = ValidatedClosure::from_infos(c.clone().into_infos()).unwrap();
            prop_assert_eq!(again.into_infos(), c.into_infos());
        }
    }
}
