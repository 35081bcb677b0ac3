//! Deploying through relays ([`transfer::fanout`]): `via = "NAME"` per machine, or
//! `--fan-out K` (ferry builds trees of at most three tiers).
//!
//! The machines' pipelines meet at a [`Gate`] once planned (every machine runs at once for
//! that). The last to arrive copies through the trees: per tree, the coordinator first adds its
//! key to the ACL of every host below the first one (`authorize`, on its own connection to
//! each: a relay never carries `Authorize`), then pushes the union of the tree's closures to
//! the first host with a `Forward` naming the others; the frames travel the coordinator's link
//! once and are teed down the tree. Then every pipeline goes on as without relays: its own
//! copy finds what the relays delivered (nothing to send) and sends directly whatever they did
//! not, so a relay that fails or is unreachable costs its children a direct copy, never the
//! deploy. Each machine's result says how its copy went.
//!
//! `[relay.NAME]` hosts (relay-only: not deployed) head the trees of the machines whose `via`
//! names them: the coordinator pushes to their agent (its store, under the relay's `root`,
//! keeps nothing: `Forward` without `own`), which feeds the machines.
//!
//! A machine can be in a tree when it is a `managed-host` with a pinned `host-key` (the relay
//! checks it) whose host keeps ferry's store (facts: `store = "ferry"`); the others are copied
//! directly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex};

use closure::{PathInfo, ValidatedClosure};
use proto::frame::ForwardOutcome;
use proto::uri::StoreParams;
use transfer::fanout::tree::{self, Node};
use transfer::fanout::{forward_for, HostSpec};
use transfer::push::{push_closure, NoProgress, PushOptions};
use transfer::transport::ssh::{SettingsSource, SshAuth, SshConfig, SshTransport};

use crate::apply::Apply;
use crate::deployment::{Environment, Machine, RelayHost};
use crate::error::error_chain;
use crate::link::{ssh_config, Link};
use crate::plan::{Ctx, HostPlan};
use crate::progress::CopyProgress;

/// How the relays are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOut {
    /// The machines' `via`.
    Via,
    /// Trees of `k` children per host (`--fan-out K`).
    Trees(usize),
}

/// What a machine's plan brings to the gate.
struct Arrival {
    closure: ValidatedClosure,
    host_store: Option<String>,
}

struct State {
    arrivals: Vec<Option<Arrival>>,
    arrived: usize,
    /// Per machine, what the relays did for it (`None`: not in a tree).
    notes: Option<Vec<Option<String>>>,
}

/// Where the machines' pipelines wait for each other between planning and applying.
pub(crate) struct Gate<'a> {
    machines: &'a [&'a Machine],
    /// The `[relay.NAME]` hosts: host `machines.len() + j` of the trees.
    relays: &'a [RelayHost],
    how: FanOut,
    state: Mutex<State>,
    done: Condvar,
}

impl<'a> Gate<'a> {
    pub fn new(machines: &'a [&'a Machine], relays: &'a [RelayHost], how: FanOut) -> Gate<'a> {
        let state = State {
            arrivals: (0..machines.len()).map(|_| None).collect(),
            arrived: 0,
            notes: None,
        };
        Gate { machines, relays, how, state: Mutex::new(state), done: Condvar::new() }
    }

    /// Machine `i` planned (`plan`; `None`: its pipeline failed before): wait until every
    /// machine did and the relays copied.
    pub fn arrive(&self, ctx: &Ctx<'_>, run: &Apply<'_>, i: usize, plan: Option<&HostPlan>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.arrivals[i] =
            plan.map(|p| Arrival { closure: p.closure.clone(), host_store: p.host_store.clone() });
        state.arrived += 1;
        if state.arrived == self.machines.len() {
            let notes = self.copy(ctx, run, &state.arrivals);
            state.notes = Some(notes);
            self.done.notify_all();
        }
        while state.notes.is_none() {
            state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// What the relays did for machine `i` (after [`Gate::arrive`]).
    pub fn note(&self, i: usize) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.notes.as_ref().and_then(|n| n[i].clone())
    }

    /// Copy through every tree, in parallel; the notes per machine.
    /// Host `i`'s name: a machine's, or a relay-only host's.
    fn name(&self, i: usize) -> String {
        match self.machines.get(i) {
            Some(m) => m.name.clone(),
            None => self.relays[i - self.machines.len()].name.clone(),
        }
    }

    fn copy(
        &self,
        ctx: &Ctx<'_>,
        run: &Apply<'_>,
        arrivals: &[Option<Arrival>],
    ) -> Vec<Option<String>> {
        let mut notes: Vec<Option<String>> = vec![None; self.machines.len()];
        // Relay-only hosts (pinned keys: the file requires them) come after the machines.
        let eligible: Vec<bool> = self
            .machines
            .iter()
            .zip(arrivals)
            .map(|(m, a)| {
                m.environment == Environment::ManagedHost
                    && m.configuration.host_key.is_some()
                    && a.as_ref().is_some_and(|a| a.host_store.as_deref() == Some("ferry"))
            })
            .chain(self.relays.iter().map(|_| true))
            .collect();
        let trees = match self.how {
            FanOut::Trees(k) => {
                let hosts: Vec<usize> = (0..self.machines.len()).filter(|&i| eligible[i]).collect();
                tree::fan_out(&hosts, k)
            }
            FanOut::Via => {
                let index: BTreeMap<String, usize> =
                    (0..eligible.len()).map(|i| (self.name(i), i)).collect();
                let parents: Vec<Option<usize>> = self
                    .machines
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let via = m.configuration.via.as_deref().and_then(|v| index.get(v));
                        via.copied().filter(|&p| eligible[i] && eligible[p])
                    })
                    .chain(self.relays.iter().map(|_| None))
                    .collect();
                for (i, m) in self.machines.iter().enumerate() {
                    if m.configuration.via.is_some() && parents[i].is_none() {
                        notes[i] = Some(
                            "copied directly: `via` needs both machines reached over SSH with a \
                             pinned host-key and ferry's store on the host"
                                .into(),
                        );
                    }
                }
                match tree::from_parents(&parents) {
                    Ok(trees) => trees,
                    Err(e) => {
                        let name = |i: usize| self.name(i);
                        let why = match e {
                            tree::TreeError::Cycle(i) => {
                                format!("{} reaches itself through `via`", name(i))
                            }
                            tree::TreeError::TooDeep { host, tiers } => format!(
                                "{} is {tiers} tiers deep through `via` (at most {})",
                                name(host),
                                tree::MAX_TIERS
                            ),
                            other => other.to_string(),
                        };
                        for (i, _) in parents.iter().enumerate().filter(|(_, p)| p.is_some()) {
                            notes[i] = Some(format!("copied directly: {why}"));
                        }
                        notes.truncate(self.machines.len());
                        Vec::new()
                    }
                }
            }
        };
        let results: Vec<Vec<(usize, String)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = trees
                .iter()
                .filter(|t| !t.children.is_empty())
                .map(|t| scope.spawn(move || self.copy_tree(ctx, run, t, arrivals)))
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (i, note) in results.into_iter().flatten() {
            if let Some(slot) = notes.get_mut(i) {
                *slot = Some(note);
            }
        }
        notes
    }

    /// One tree: authorize the hosts below its first one, then push through it.
    fn copy_tree(
        &self,
        ctx: &Ctx<'_>,
        run: &Apply<'_>,
        node: &Node,
        arrivals: &[Option<Arrival>],
    ) -> Vec<(usize, String)> {
        let name = |i: usize| self.name(i);
        let below = node.below();
        let mut members = vec![node.host];
        members.extend(&below);
        // The union of the members' closures, references first.
        let mut infos: BTreeMap<_, PathInfo> = BTreeMap::new();
        for &i in &members {
            let closure = arrivals.get(i).and_then(Option::as_ref).map(|a| a.closure.iter());
            for info in closure.into_iter().flatten() {
                infos.entry(info.path.clone()).or_insert_with(|| info.clone());
            }
        }
        let union = match ValidatedClosure::from_infos(infos.into_values()) {
            Ok(u) => u,
            Err(e) => {
                let why = format!("copied directly: the tree's closure: {e}");
                return below.into_iter().map(|i| (i, why.clone())).collect();
            }
        };
        let query: Vec<_> = union.paths().cloned().collect();
        let parent_of: BTreeMap<usize, usize> = parents(node);
        let mut specs: BTreeMap<usize, HostSpec> = BTreeMap::new();
        let mut failed: Vec<(usize, String)> = Vec::new();
        for &i in &members {
            let Some(m) = self.machines.get(i).copied() else {
                // A relay-only host: always the first of its tree (never behind another).
                let r = &self.relays[i - self.machines.len()];
                let spec = HostSpec {
                    name: r.name.clone(),
                    uri: String::new(),
                    host_key: r.host_key.clone(),
                    relay_identity: r.relay_identity.clone(),
                    needs: Vec::new(),
                };
                specs.insert(i, spec);
                continue;
            };
            let needs: BTreeSet<_> =
                arrivals[i].as_ref().map(|a| a.closure.paths().collect()).unwrap_or_default();
            match host_uri(m) {
                Ok(uri) => {
                    specs.insert(
                        i,
                        HostSpec {
                            name: m.name.clone(),
                            uri,
                            host_key: m.configuration.host_key.clone().unwrap_or_default(),
                            relay_identity: m.configuration.relay_identity.clone(),
                            needs: tree::wants(&query, &needs),
                        },
                    );
                }
                Err(e) => failed.push((i, format!("copied directly: {e}"))),
            }
        }
        if !failed.is_empty() {
            let others: Vec<(usize, String)> = below
                .iter()
                .filter(|i| !failed.iter().any(|(j, _)| j == *i))
                .map(|&i| (i, "copied directly: a host of its relay tree has no SSH URI".into()))
                .collect();
            failed.extend(others);
            return failed;
        }
        // `authorize`: on the coordinator's own connection to each host below the first.
        std::thread::scope(|scope| {
            for &i in below.iter().filter(|&&i| self.machines[i].configuration.authorize) {
                scope.spawn(move || authorize(ctx, run, self.machines[i]));
            }
        });
        let hosts: Vec<HostSpec> = (0..self.machines.len() + self.relays.len())
            .map(|i| {
                specs.get(&i).cloned().unwrap_or_else(|| HostSpec {
                    name: String::new(),
                    uri: String::new(),
                    host_key: String::new(),
                    relay_identity: None,
                    needs: Vec::new(),
                })
            })
            .collect();
        let root_machine = self.machines.get(node.host).copied();
        let root_name = name(node.host);
        let forward = forward_for(node, &hosts, root_machine.is_some());
        let options = PushOptions {
            authorize: root_machine.is_some_and(|m| m.configuration.authorize),
            compress: None,
            frame_cache: run.frame_cache.clone(),
            forward: Some(forward),
            ..PushOptions::default()
        };
        let progress = CopyProgress { host: &root_name, progress: ctx.progress };
        let transport = match root_machine {
            Some(m) => match Link::new(m) {
                Ok(Link::Ssh { transport, .. }) => Ok(transport),
                Ok(_) => Err("not reached over SSH".into()),
                Err(e) => Err(error_chain(&e)),
            },
            None => relay_transport(&self.relays[node.host - self.machines.len()], ctx),
        };
        let pushed = transport.and_then(|t| {
            push_closure(ctx.layout, &union, t.as_ref(), run.key, &options, &progress)
                .map_err(|e| error_chain(&e))
        });
        let mut notes = Vec::new();
        match pushed {
            Ok(summary) => {
                let outcomes: BTreeMap<&str, &ForwardOutcome> =
                    summary.forwarded.iter().map(|o| (o.name.as_str(), o)).collect();
                let fed: Vec<String> = below.iter().map(|&i| name(i)).collect();
                notes.push((node.host, format!("relayed to {}", fed.join(", "))));
                for &i in &below {
                    let via = name(parent_of[&i]);
                    let note = match outcomes.get(name(i).as_str()) {
                        Some(o) if o.ok => format!("copied through relay {via}"),
                        Some(o) => format!("relay {via}: {}; copied directly", o.detail),
                        None => format!("relay {via} did not report it; copied directly"),
                    };
                    ctx.progress.line(&name(i), &note);
                    notes.push((i, note));
                }
            }
            Err(e) => {
                ctx.progress.line(&root_name, &format!("as a relay: {e}"));
                notes.push((node.host, format!("as a relay: {e}")));
                for &i in &below {
                    let note =
                        format!("relay {} failed ({e}); copied directly", name(parent_of[&i]));
                    ctx.progress.line(&name(i), &note);
                    notes.push((i, note));
                }
            }
        }
        notes
    }
}

/// The agent of a relay-only host, over SSH: its store (kept empty) under its root.
fn relay_transport(r: &RelayHost, ctx: &Ctx<'_>) -> Result<Box<SshTransport>, String> {
    let endpoint =
        proto::uri::SshEndpoint { user: r.user.clone(), host: r.host_name.clone(), port: r.port };
    let auth = SshAuth {
        identity: r.identity.clone(),
        host_key: Some(r.host_key.clone()),
        known_hosts: None,
        ssh_config: None,
        source: SettingsSource::DeploymentFile,
    };
    let config = SshConfig::for_endpoint(&endpoint, auth).map_err(|e| error_chain(&e))?;
    let store_dir = ctx.layout.store_dir().as_str();
    let store = StoreParams {
        root: Some(r.root.clone()),
        store_dir: (store_dir != nar_core::store_path::StoreDir::GUIX)
            .then(|| store_dir.to_owned()),
        ..StoreParams::default()
    };
    SshTransport::new(config, store).map(Box::new).map_err(|e| e.to_string())
}

/// Each host below `node` and the host that feeds it.
fn parents(node: &Node) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    for c in &node.children {
        out.insert(c.host, node.host);
        out.extend(parents(c));
    }
    out
}

/// `ssh://user@host:port?root=…` as a relay reaches machine `m` (its resolved SSH settings).
fn host_uri(m: &Machine) -> Result<String, String> {
    let config = ssh_config(m).map_err(|e| error_chain(&e))?;
    if !config.jumps.is_empty() {
        return Err("it is reached through a ProxyJump".into());
    }
    let host = if config.host.contains(':') { format!("[{}]", config.host) } else { config.host };
    let mut params = Vec::new();
    let root = &m.configuration.root;
    if root != std::path::Path::new("/") {
        params.push(format!("root={}", root.display()));
    }
    if let Some(sudo) = m.configuration.sudo {
        params.push(format!("sudo={}", u8::from(sudo)));
    }
    let store_dir = m.configuration.store_dir.as_str();
    if store_dir != nar_core::store_path::StoreDir::GUIX {
        params.push(format!("store-dir={store_dir}"));
    }
    let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
    Ok(format!("ssh://{}@{host}:{}{query}", config.user, config.port))
}

/// Add the coordinator's key to `m`'s ACL over a connection of its own (an empty push).
fn authorize(ctx: &Ctx<'_>, run: &Apply<'_>, m: &Machine) {
    let Ok(Link::Ssh { transport, .. }) = Link::new(m) else { return };
    let Ok(empty) = ValidatedClosure::from_infos(Vec::new()) else { return };
    let options = PushOptions { authorize: true, ..PushOptions::default() };
    if let Err(e) =
        push_closure(ctx.layout, &empty, transport.as_ref(), run.key, &options, &NoProgress)
    {
        ctx.progress
            .line(&m.name, &format!("authorize before the relayed copy: {}", error_chain(&e)));
    }
}
