//! Relay fan-out: hosts behind one slow uplink are fed through hosts that already get the
//! update, so the coordinator's link carries each path once per tree instead of once per host.
//!
//! # Shape
//! The coordinator pushes to the first host of each tree ([`tree::fan_out`] for `--fan-out K`,
//! [`tree::from_parents`] for per-machine `via`; at most [`tree::MAX_TIERS`] tiers of hosts)
//! with an ordinary push session plus one `Forward` frame (feature `forward`, see
//! [`proto::frame`]): whom the relay feeds and which entries of the `Query` each host needs
//! ([`forward_for`]). The relay ([`relay`], the agent's relay role) then
//!
//! 1. opens one coordinator session per stream it feeds: its own store (an in-process agent on
//!    the same store, unless it only forwards: a relay-only host, `[relay.NAME]` in a
//!    deployment file, is sent `Forward` without `own` and keeps nothing) and each child, reached with **its own SSH
//!    client** (below); a child that relays in turn gets its own `Forward`, renumbered
//!    ([`tree::narrow`]);
//! 2. passes the `Query` on, narrowed to what each stream's subtree needs, and answers the
//!    coordinator with the union of the `Have`s (no resume offsets, no delta bases: relayed
//!    paths travel whole, zstd-compressed once by the coordinator's frame cache) — the diff is
//!    still one round trip per host, done by its relay in parallel;
//! 3. tees each `PathStart`, `Data` and `PathEnd` it receives, unchanged, to every stream that
//!    lacks the path — frames are forwarded as they arrive, so tiers overlap and a tree takes
//!    about the time of one host on the slow link;
//! 4. answers each path upstream once every stream answered it (its own store's answer; an
//!    `Ack` from a relay that only forwards), and after `Done` reports every host below it in
//!    `Forwarded`.
//!
//! # Trust
//! A relay is not trusted (`SECURITY.md`). It never holds the signing key: the frames it passes
//! on carry the coordinator's signature, and each host checks signature, size, NAR hash and
//! references exactly as for a direct copy (the agent code is the same). A relay can withhold
//! or spoil data; that makes the host refuse a path (reported, then copied directly), never
//! accept a wrong one. `Authorize` is never forwarded (a relay could swap the key): a host's
//! ACL is changed only on the coordinator's own connection to it.
//!
//! # Reaching children: a per-relay identity, not agent forwarding
//! The relay logs in to a child with an identity file that is already **on the relay** (the
//! coordinator only names its path, e.g. `relay-identity`), and checks the child's host key
//! against the key pinned in the deployment file (sent in `Forward`; never trust on first use,
//! never the relay's known_hosts). Agent forwarding was the other choice; it was rejected
//! because a forwarded agent lets whoever controls the relay log in as the coordinator's user
//! *anywhere* for as long as the session lasts, while a per-relay key gives it exactly the
//! access its public key was granted on the children (and can be revoked per relay). No
//! private key is ever copied to a relay by ferry; putting one there is the operator's explicit
//! choice.
//!
//! # Failures
//! A child that cannot be reached, refuses a path or drops out is reported in `Forwarded` (with
//! the hosts below it, "not reached"); a relay that fails takes its whole subtree with it. The
//! caller then copies directly to every host not reported ok, and says so.

mod forward;
pub mod tree;

pub(crate) use forward::relay;

use proto::frame::{Forward, ForwardChild};

use tree::Node;

/// How a relay reaches one host, and what the host needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The host's name (in `Forwarded`).
    pub name: String,
    /// `ssh://[user@]host[:port][?root=…]` as its relay reaches it.
    pub uri: String,
    /// Its pinned host key (`TYPE BASE64`).
    pub host_key: String,
    /// When this host relays: the identity file on it to log in to its children with
    /// (`None`: its SSH defaults, without an agent).
    pub relay_identity: Option<String>,
    /// Indexes into the tree's `Query` of the paths it needs ([`tree::wants`]).
    pub needs: Vec<u32>,
}

/// The `Forward` for the first host of `node`'s tree: its own needs (`own`: it keeps the paths
/// in its store too) and its subtree.
pub fn forward_for(node: &Node, hosts: &[HostSpec], own: bool) -> Forward {
    fn child(node: &Node, parent: &HostSpec, hosts: &[HostSpec]) -> ForwardChild {
        let h = &hosts[node.host];
        ForwardChild {
            name: h.name.clone(),
            uri: h.uri.clone(),
            host_key: h.host_key.clone(),
            identity: parent.relay_identity.clone(),
            wants: h.needs.clone(),
            children: node.children.iter().map(|c| child(c, h, hosts)).collect(),
        }
    }
    let relay = &hosts[node.host];
    Forward {
        own: own.then(|| relay.needs.clone()),
        children: node.children.iter().map(|c| child(c, relay, hosts)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_names_each_childs_relay_identity_and_needs() {
        let host = |i: usize| HostSpec {
            name: format!("h{i}"),
            uri: format!("ssh://10.0.0.{i}"),
            host_key: format!("ssh-ed25519 K{i}"),
            relay_identity: Some(format!("/r{i}/id")),
            needs: vec![i as u32],
        };
        let hosts: Vec<HostSpec> = (0..4).map(host).collect();
        let trees = tree::fan_out(&[0, 1, 2, 3], 2);
        let f = forward_for(&trees[0], &hosts, true);
        assert_eq!(f.own, Some(vec![0]));
        assert_eq!(f.children.len(), 2);
        assert_eq!(f.children[0].name, "h1");
        assert_eq!(f.children[0].identity.as_deref(), Some("/r0/id"));
        assert_eq!(f.children[0].children[0].name, "h3");
        assert_eq!(f.children[0].children[0].identity.as_deref(), Some("/r1/id"));
        assert_eq!(f.children[0].children[0].wants, vec![3]);
        assert_eq!(forward_for(&trees[0], &hosts, false).own, None);
    }
}
