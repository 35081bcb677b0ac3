//! The relay tree, pure: which host feeds which (`via`, or `--fan-out K`), and the indexes a
//! relay passes on (its `Query` narrowed to a child's subtree, the child's `Forward` renumbered).

use std::collections::{BTreeMap, BTreeSet};

use proto::frame::{ForwardChild, MAX_FORWARD_DEPTH};

/// A host of the tree (an index into the caller's hosts) and the hosts it feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: usize,
    pub children: Vec<Node>,
}

impl Node {
    /// The hosts below this one (not itself), depth first.
    pub fn below(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for c in &self.children {
            out.push(c.host);
            out.extend(c.below());
        }
        out
    }

    /// Tiers of hosts from this one down (1: no children).
    pub fn depth(&self) -> usize {
        1 + self.children.iter().map(Node::depth).max().unwrap_or(0)
    }
}

/// Most tiers of hosts below the coordinator: a first-tier relay, its children and theirs.
pub const MAX_TIERS: usize = MAX_FORWARD_DEPTH;

/// Why `via` settings make no tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    #[error("host {0} reaches itself through its relays (a `via` cycle)")]
    Cycle(usize),
    #[error("host {host} is {tiers} relays deep; at most {MAX_TIERS} tiers of hosts are allowed")]
    TooDeep { host: usize, tiers: usize },
}

/// `--fan-out K`: `hosts` in order, as complete `k`-ary trees of at most [`MAX_TIERS`] tiers
/// (`1 + k + k²` hosts each): the first host of each tree is fed by the coordinator, host `j` of
/// a tree feeds hosts `j·k+1 ..= j·k+k` of it. One tree (the coordinator's link carries each
/// path once) whenever the hosts fit.
pub fn fan_out(hosts: &[usize], k: usize) -> Vec<Node> {
    let k = k.max(1);
    let per_tree = 1 + k + k * k;
    hosts.chunks(per_tree).map(|group| heap(group, 0, k)).collect()
}

fn heap(group: &[usize], j: usize, k: usize) -> Node {
    let children = (j * k + 1..=j * k + k).filter(|&c| c < group.len());
    Node { host: group[j], children: children.map(|c| heap(group, c, k)).collect() }
}

/// Per host, the host it is fed through (`None`: the coordinator): the trees, roots in host
/// order, children in host order. A cycle or more than [`MAX_TIERS`] tiers is an error.
pub fn from_parents(parents: &[Option<usize>]) -> Result<Vec<Node>, TreeError> {
    for start in 0..parents.len() {
        let mut tiers = 1;
        let mut at = start;
        while let Some(p) = parents[at] {
            if p == start {
                return Err(TreeError::Cycle(start));
            }
            tiers += 1;
            if tiers > parents.len() {
                return Err(TreeError::Cycle(start));
            }
            at = p;
        }
        if tiers > MAX_TIERS {
            return Err(TreeError::TooDeep { host: start, tiers });
        }
    }
    fn build(host: usize, parents: &[Option<usize>]) -> Node {
        let children = (0..parents.len()).filter(|&c| parents[c] == Some(host));
        Node { host, children: children.map(|c| build(c, parents)).collect() }
    }
    Ok((0..parents.len()).filter(|&h| parents[h].is_none()).map(|h| build(h, parents)).collect())
}

/// Indexes into `query` (a closure in `Query` order) of the paths in `needs`.
pub fn wants<P: Ord>(query: &[P], needs: &BTreeSet<&P>) -> Vec<u32> {
    (0..query.len()).filter(|&i| needs.contains(&query[i])).map(|i| i as u32).collect()
}

/// What a relay sends `child`: the indexes of its `Query` the child's subtree wants (sorted;
/// the child's `Query` is those entries in that order), and the child's `Forward` children with
/// every index renumbered into that narrowed `Query`.
pub fn narrow(child: &ForwardChild) -> (Vec<u32>, Vec<u32>, Vec<ForwardChild>) {
    fn collect(c: &ForwardChild, all: &mut BTreeSet<u32>) {
        all.extend(&c.wants);
        c.children.iter().for_each(|g| collect(g, all));
    }
    let mut all = BTreeSet::new();
    collect(child, &mut all);
    let union: Vec<u32> = all.into_iter().collect();
    let position: BTreeMap<u32, u32> =
        union.iter().enumerate().map(|(at, &i)| (i, at as u32)).collect();
    let renumber = |wants: &[u32]| wants.iter().map(|i| position[i]).collect::<Vec<u32>>();
    fn remap(c: &ForwardChild, renumber: &dyn Fn(&[u32]) -> Vec<u32>) -> ForwardChild {
        ForwardChild {
            wants: renumber(&c.wants),
            children: c.children.iter().map(|g| remap(g, renumber)).collect(),
            ..c.clone()
        }
    }
    let own = renumber(&child.wants);
    let children = child.children.iter().map(|g| remap(g, &renumber)).collect();
    (union, own, children)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: &Node) -> String {
        if n.children.is_empty() {
            n.host.to_string()
        } else {
            let c: Vec<String> = n.children.iter().map(shape).collect();
            format!("{}({})", n.host, c.join(" "))
        }
    }

    #[test]
    fn fan_out_builds_k_ary_trees_of_at_most_three_tiers() {
        let hosts: Vec<usize> = (0..8).collect();
        let trees = fan_out(&hosts, 3);
        assert_eq!(trees.len(), 1, "8 hosts fit one tree of 1 + 3 + 9");
        assert_eq!(shape(&trees[0]), "0(1(4 5 6) 2(7) 3)");
        assert_eq!(trees[0].depth(), 3);
        assert_eq!(trees[0].below(), vec![1, 4, 5, 6, 2, 7, 3]);
        // k = 2: 1 + 2 + 4 = 7 per tree; the 8th host starts a second tree.
        let trees = fan_out(&hosts, 2);
        assert_eq!(trees.iter().map(shape).collect::<Vec<_>>(), ["0(1(3 4) 2(5 6))", "7"]);
        assert_eq!(shape(&fan_out(&[4, 9], 8)[0]), "4(9)");
        assert!(fan_out(&[], 2).is_empty());
        for k in 1..5 {
            for n in 0..40 {
                let hosts: Vec<usize> = (0..n).collect();
                let trees = fan_out(&hosts, k);
                assert!(trees.iter().all(|t| t.depth() <= MAX_TIERS));
                let mut all: Vec<usize> =
                    trees.iter().flat_map(|t| std::iter::once(t.host).chain(t.below())).collect();
                all.sort();
                assert_eq!(all, hosts, "every host once (k {k}, n {n})");
            }
        }
    }

    #[test]
    fn via_makes_trees_and_refuses_cycles_and_depth() {
        let trees = from_parents(&[None, Some(0), Some(0), None, Some(2)]).unwrap();
        assert_eq!(trees.iter().map(shape).collect::<Vec<_>>(), ["0(1 2(4))", "3"]);
        assert_eq!(from_parents(&[Some(1), Some(0)]), Err(TreeError::Cycle(0)));
        assert_eq!(from_parents(&[Some(0)]), Err(TreeError::Cycle(0)));
        assert_eq!(
            from_parents(&[None, Some(0), Some(1), Some(2)]),
            Err(TreeError::TooDeep { host: 3, tiers: 4 })
        );
    }

    #[test]
    fn wants_and_narrowing_renumber_into_the_childs_query() {
        let query = ["a", "b", "c", "d", "e"];
        let needs: BTreeSet<&&str> = [&"b", &"d", &"x"].into_iter().collect();
        assert_eq!(wants(&query, &needs), vec![1, 3]);
        let leaf = |name: &str, wants: Vec<u32>| ForwardChild {
            name: name.into(),
            uri: format!("ssh://{name}"),
            host_key: "k".into(),
            identity: None,
            wants,
            children: vec![],
        };
        let child = ForwardChild {
            children: vec![leaf("g1", vec![0, 4]), leaf("g2", vec![2])],
            ..leaf("c", vec![2, 3])
        };
        let (union, own, children) = narrow(&child);
        assert_eq!(union, vec![0, 2, 3, 4]);
        assert_eq!(own, vec![1, 2]);
        assert_eq!(children[0].wants, vec![0, 3]);
        assert_eq!(children[1].wants, vec![1]);
        assert_eq!(children[1].name, "g2");
    }
}
