//! The relay role of an agent: after `Forward`, this agent is a coordinator to each child (over
//! its own SSH client) and to its own store (an in-process agent), and passes the upstream
//! coordinator's frames on unchanged (see [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use nar_core::store_path::StorePath;
use proto::frame::{
    AckOutcome, Forward, ForwardChild, ForwardOutcome, Frame, Hello, MissingEntry, QueryEntry,
    FEATURE_FORWARD,
};
use proto::io::{FrameReader, FrameWriter};
use proto::peer::{AgentState, CoordinatorState};
use proto::uri::Target as Uri;

use super::tree::narrow;
use crate::agent::{AgentError, AgentOptions, ServeSummary};
use crate::push::NoProgress;
use crate::transport::ssh::{SettingsSource, SshConfig, SshTransport};
use crate::transport::{AgentHandle, Connection, Transport};

/// How long the relay waits for a child's next answer while it has nothing else to do.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

type Writer = FrameWriter<Box<dyn Write + Send>>;
/// What must outlive a down stream's connection (a child's SSH transport).
type Keep = Option<Box<dyn std::any::Any + Send>>;
/// A down stream after the handshake: its frames, its writer, its agent, its state.
type Opened =
    (FrameReader<Box<dyn Read + Send>>, Writer, Box<dyn AgentHandle>, CoordinatorState, Keep);

/// One stream this relay feeds: its own store, or a child.
struct Down {
    /// The child's name (`None`: this relay's own store).
    name: Option<String>,
    /// The names of the hosts below the child.
    below: Vec<String>,
    /// Indexes of the upstream `Query` it gets.
    query: Vec<u32>,
    out: Option<Writer>,
    agent: Option<Box<dyn AgentHandle>>,
    state: CoordinatorState,
    /// Paths it said it lacks (its `Have`).
    missing: Option<BTreeSet<StorePath>>,
    /// Why it is out of the run.
    failed: Option<String>,
    /// The first path it refused.
    rejected: Option<String>,
    bye: bool,
    forwarded: Vec<ForwardOutcome>,
    _keep: Keep,
}

impl Down {
    fn alive(&self) -> bool {
        self.failed.is_none() && self.out.is_some()
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() && !self.bye {
            self.failed = Some(why);
        }
        self.out = None;
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
    }

    /// Send a frame; a failure takes it out of the run.
    fn send(&mut self, frame: &Frame) {
        let Some(out) = self.out.as_mut() else { return };
        let sent = self
            .state
            .on_send(frame)
            .map_err(|e| e.to_string())
            .and_then(|()| out.send(frame).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            self.fail(format!("sending to it: {e}"));
        }
    }

    fn send_data(&mut self, bytes: &[u8]) {
        let Some(out) = self.out.as_mut() else { return };
        if let Err(e) = out.send_data(bytes) {
            self.fail(format!("sending to it: {e}"));
        }
    }

    fn flush(&mut self) {
        if let Some(Err(e)) = self.out.as_mut().map(FrameWriter::flush) {
            self.fail(format!("sending to it: {e}"));
        }
    }

    /// Its outcomes and those of the hosts below it, for `Forwarded`.
    fn outcomes(&self) -> Vec<ForwardOutcome> {
        let Some(name) = &self.name else { return Vec::new() };
        let why = self.failed.clone().or_else(|| self.rejected.clone());
        let why = why.or_else(|| (!self.bye).then(|| "it did not finish".to_owned()));
        let mut out = vec![ForwardOutcome {
            name: name.clone(),
            ok: why.is_none(),
            detail: why.clone().unwrap_or_default(),
        }];
        for below in &self.below {
            let reported = self.forwarded.iter().find(|o| &o.name == below);
            out.push(reported.cloned().unwrap_or_else(|| ForwardOutcome {
                name: below.clone(),
                ok: false,
                detail: format!(
                    "not reached: relay {name} failed: {}",
                    why.clone().unwrap_or_else(|| "no report".into())
                ),
            }));
        }
        out
    }
}

/// What a reader thread saw on a down stream.
enum Event {
    Frame(usize, Frame),
    Ended(usize, String),
}

/// The names below a child.
fn names_below(c: &ForwardChild) -> Vec<String> {
    c.children.iter().flat_map(|g| std::iter::once(g.name.clone()).chain(names_below(g))).collect()
}

/// Reach a child with this relay's own SSH client: its pinned host key, the identity file on
/// this host the coordinator named (never a key sent here), no agent.
/// The transport stays with the connection (its SSH session and runtime live in it).
fn connect_child(child: &ForwardChild) -> Result<(Connection, Keep), String> {
    let Ok(Uri::Ssh { endpoint, store }) = Uri::parse(&child.uri) else {
        return Err(format!("not an ssh:// URI: {}", child.uri));
    };
    let mut config = SshConfig::new(endpoint.host);
    config.port = endpoint.port.unwrap_or(22);
    config.user = endpoint.user.unwrap_or_else(|| "root".into());
    config.host_key = Some(child.host_key.clone());
    config.identity = child.identity.as_ref().map(Into::into);
    config.identities_only = child.identity.is_some();
    config.use_agent = false;
    config.source = SettingsSource::DeploymentFile;
    let transport = SshTransport::new(config, store).map_err(|e| e.to_string())?;
    transport.prepare(&NoProgress).map_err(|e| e.to_string())?;
    let connection = transport.connect().map_err(|e| e.to_string())?;
    Ok((connection, Some(Box::new(transport))))
}

/// Open one down stream and shake hands: `Hello`, its `Welcome` (same store dir as ours), and
/// for a relay child its own `Forward`.
fn open(
    connection: Result<(Connection, Keep), String>,
    store_dir: &str,
    forward: Option<Forward>,
) -> Result<Opened, String> {
    let (Connection { reader, writer, mut agent }, keep) = connection?;
    let mut frames = FrameReader::new(reader);
    let mut out = FrameWriter::new(writer, Arc::new(AtomicU64::new(0)));
    let mut state = CoordinatorState::new();
    let result = (|| {
        let hello = Frame::Hello(Hello::ours());
        state.on_send(&hello).map_err(|e| e.to_string())?;
        out.send(&hello).and_then(|()| out.flush()).map_err(|e| e.to_string())?;
        let welcome = frames.read_frame().map_err(|e| e.to_string())?;
        let welcome = welcome.ok_or("it ended the connection before Welcome")?;
        state.on_receive(&welcome).map_err(|e| e.to_string())?;
        let Frame::Welcome(w) = welcome else { unreachable!("checked by the state machine") };
        if w.store_dir != store_dir {
            return Err(format!("its store is in {}, the relay's in {store_dir}", w.store_dir));
        }
        if let Some(forward) = forward.filter(|f| !f.children.is_empty()) {
            if !w.features.iter().any(|f| f == FEATURE_FORWARD) {
                return Err("it cannot relay (no feature `forward`)".into());
            }
            let frame = Frame::Forward(Box::new(forward));
            state.on_send(&frame).map_err(|e| e.to_string())?;
            out.send(&frame).map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok((frames, out, agent, state, keep)),
        Err(e) => {
            let _ = agent.wait();
            let said = crate::transport::stderr_note("; it said: ", &agent.stderr());
            agent.kill();
            Err(format!("{e}{said}"))
        }
    }
}

/// Serve as a relay (after `Forward`): see the module doc of [`super`]. `up`/`out`/`state`
/// are the upstream session, past the handshake; `options` this host's own store.
pub(crate) fn relay<R: Read, W: Write>(
    options: AgentOptions,
    forward: Forward,
    mut up: FrameReader<R>,
    mut out: FrameWriter<W>,
    mut state: AgentState,
) -> Result<ServeSummary, AgentError> {
    let store_dir = options.layout.store_dir().as_str().to_owned();
    // The streams: this host's store first (when it keeps the paths), then each child,
    // connected and greeted in parallel.
    let mut plans: Vec<(Option<&ForwardChild>, Vec<u32>, Option<Forward>)> = Vec::new();
    if let Some(own) = &forward.own {
        plans.push((None, own.clone(), None));
    }
    for child in &forward.children {
        let (query, own, children) = narrow(child);
        plans.push((Some(child), query, Some(Forward { own: Some(own), children })));
    }
    let opened: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|(child, _, fwd)| {
                let (store_dir, options) = (&store_dir, &options);
                scope.spawn(move || {
                    let connection = match child {
                        None => options
                            .clone()
                            .in_process()
                            .connect()
                            .map(|c| (c, None))
                            .map_err(|e| format!("this relay's own store: {e}")),
                        Some(c) => connect_child(c),
                    };
                    open(connection, store_dir, fwd.clone())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("its connection thread panicked".into())))
            .collect()
    });
    let (events_tx, events) = mpsc::channel();
    let mut downs = Vec::new();
    for (i, ((child, query, _), opened)) in plans.into_iter().zip(opened).enumerate() {
        let mut down = Down {
            name: child.map(|c| c.name.clone()),
            below: child.map(names_below).unwrap_or_default(),
            query,
            out: None,
            agent: None,
            state: CoordinatorState::new(),
            missing: None,
            failed: None,
            rejected: None,
            bye: false,
            forwarded: Vec::new(),
            _keep: None,
        };
        match opened {
            Ok((frames, writer, agent, st, keep)) => {
                (down.out, down.agent, down.state, down._keep) =
                    (Some(writer), Some(agent), st, keep);
                spawn_reader(i, frames, events_tx.clone());
            }
            Err(e) => down.failed = Some(e),
        }
        downs.push(down);
    }
    drop(events_tx);
    let mut relay =
        Relay { downs, events, pending: BTreeMap::new(), summary: ServeSummary::default() };
    let own = forward.own.is_some();

    let result = relay.run(&mut up, &mut out, &mut state, own);
    for d in &mut relay.downs {
        if let Some(mut agent) = d.agent.take() {
            let _ = agent.wait();
        }
    }
    result.map(|()| relay.summary)
}

fn spawn_reader(i: usize, mut frames: FrameReader<Box<dyn Read + Send>>, tx: Sender<Event>) {
    std::thread::spawn(move || loop {
        let event = match frames.read_frame() {
            Ok(Some(f)) => Event::Frame(i, f),
            Ok(None) => Event::Ended(i, "the connection ended".into()),
            Err(e) => Event::Ended(i, e.to_string()),
        };
        let end = matches!(event, Event::Ended(..));
        if tx.send(event).is_err() || end {
            return;
        }
    });
}

struct Relay {
    downs: Vec<Down>,
    events: Receiver<Event>,
    /// Paths sent down and not yet answered by every stream they went to.
    pending: BTreeMap<StorePath, (BTreeSet<usize>, Option<Frame>)>,
    summary: ServeSummary,
}

impl Relay {
    /// The upstream session, from the frame after `Forward` to `Bye`.
    fn run<R: Read, W: Write>(
        &mut self,
        up: &mut FrameReader<R>,
        out: &mut FrameWriter<W>,
        state: &mut AgentState,
        own: bool,
    ) -> Result<(), AgentError> {
        // The streams the current path goes to.
        let mut targets: Vec<usize> = Vec::new();
        loop {
            self.drain(out, state, own, false)?;
            let frame = match up.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Err(AgentError::Eof("in the middle of a relayed session")),
                Err(e) => return Err(e.into()),
            };
            state.on_receive(&frame)?;
            match frame {
                Frame::Query(entries) => {
                    for d in self.downs.iter_mut().filter(|d| d.alive()) {
                        let narrowed = d
                            .query
                            .iter()
                            .filter_map(|&i| entries.get(i as usize))
                            .map(|e| QueryEntry { references: Vec::new(), ..e.clone() })
                            .collect();
                        d.send(&Frame::Query(narrowed));
                        d.flush();
                    }
                    while self.downs.iter().any(|d| d.alive() && d.missing.is_none()) {
                        self.wait(out, state, own)?;
                    }
                    let union: BTreeSet<&StorePath> =
                        self.downs.iter().filter_map(|d| d.missing.as_ref()).flatten().collect();
                    let missing = entries
                        .iter()
                        .filter(|e| union.contains(&e.path))
                        .map(|e| MissingEntry { path: e.path.clone(), resume_from: 0 })
                        .collect();
                    // No trust answer: each host below is authorized by the coordinator directly.
                    send_up(out, state, Frame::Have { missing, bases: Vec::new(), trusted: None })?;
                    out.flush().map_err(AgentError::Write)?;
                }
                Frame::PathStart(start) => {
                    targets = (0..self.downs.len())
                        .filter(|&i| {
                            let d = &self.downs[i];
                            d.alive() && d.missing.as_ref().is_some_and(|m| m.contains(&start.path))
                        })
                        .collect();
                    let path = start.path.clone();
                    let frame = Frame::PathStart(start);
                    for &i in &targets {
                        self.downs[i].send(&frame);
                    }
                    self.pending.insert(path, (targets.iter().copied().collect(), None));
                }
                Frame::Data(bytes) => {
                    for &i in &targets {
                        self.downs[i].send_data(&bytes);
                    }
                }
                Frame::PathEnd => {
                    for &i in &targets {
                        let d = &mut self.downs[i];
                        d.send(&Frame::PathEnd);
                        d.flush();
                    }
                    targets.clear();
                    self.settle(out, state, own)?;
                }
                Frame::Done => {
                    for d in self.downs.iter_mut().filter(|d| d.alive()) {
                        d.send(&Frame::Done);
                        d.flush();
                    }
                    while self.downs.iter().any(|d| d.alive() && !d.bye) {
                        self.wait(out, state, own)?;
                    }
                    for d in &mut self.downs {
                        if !d.bye {
                            d.fail("it did not finish".into());
                        }
                    }
                    self.settle(out, state, own)?;
                    let outcomes = self.downs.iter().flat_map(Down::outcomes).collect();
                    send_up(out, state, Frame::Forwarded(outcomes))?;
                    let bye = Frame::Bye {
                        imported: self.summary.imported,
                        rejected: self.summary.rejected,
                    };
                    send_up(out, state, bye)?;
                    out.flush().map_err(AgentError::Write)?;
                    return Ok(());
                }
                other => {
                    let e = proto::frame::ProtocolError::Unexpected {
                        frame: other.name(),
                        state: "in a relayed session",
                    };
                    return Err(e.into());
                }
            }
        }
    }

    /// Handle what the streams sent so far (blocking for one event when `block`).
    fn drain<W: Write>(
        &mut self,
        out: &mut FrameWriter<W>,
        state: &mut AgentState,
        own: bool,
        block: bool,
    ) -> Result<(), AgentError> {
        let mut first = block;
        loop {
            let event = if first {
                first = false;
                match self.events.recv_timeout(ANSWER_TIMEOUT) {
                    Ok(e) => e,
                    Err(RecvTimeoutError::Timeout) => {
                        for d in self.downs.iter_mut().filter(|d| d.alive()) {
                            d.fail(format!("no answer for {}s", ANSWER_TIMEOUT.as_secs()));
                        }
                        break;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.events.try_recv() {
                    Ok(e) => e,
                    Err(_) => break,
                }
            };
            self.handle(event);
        }
        self.settle(out, state, own)
    }

    fn wait<W: Write>(
        &mut self,
        out: &mut FrameWriter<W>,
        state: &mut AgentState,
        own: bool,
    ) -> Result<(), AgentError> {
        self.drain(out, state, own, true)
    }

    /// One stream's frame or end.
    fn handle(&mut self, event: Event) {
        let (i, frame) = match event {
            Event::Frame(i, f) => (i, f),
            Event::Ended(i, why) => {
                self.downs[i].fail(why);
                return;
            }
        };
        let d = &mut self.downs[i];
        if d.failed.is_some() {
            return;
        }
        if let Err(e) = d.state.on_receive(&frame) {
            d.fail(e.to_string());
            return;
        }
        match frame {
            Frame::Have { missing, .. } => {
                d.missing = Some(missing.into_iter().map(|m| m.path).collect());
            }
            Frame::Ack { .. } | Frame::Reject { .. } => {
                let path = match &frame {
                    Frame::Ack { path, .. } => path.clone(),
                    Frame::Reject { path, message, .. } => {
                        if d.rejected.is_none() && d.name.is_some() {
                            d.rejected = Some(format!("it refused {path}: {message}"));
                        }
                        path.clone()
                    }
                    _ => unreachable!("matched above"),
                };
                if let Some((waiting, answer)) = self.pending.get_mut(&path) {
                    waiting.remove(&i);
                    if d.name.is_none() {
                        *answer = Some(frame);
                    }
                }
            }
            Frame::Forwarded(outcomes) => d.forwarded = outcomes,
            Frame::Bye { .. } => {
                d.bye = true;
                d.out = None;
            }
            _ => {}
        }
    }

    /// Answer upstream every path no stream still owes an answer for: this host's own answer
    /// when its store took the path, else an `Ack`.
    fn settle<W: Write>(
        &mut self,
        out: &mut FrameWriter<W>,
        state: &mut AgentState,
        own: bool,
    ) -> Result<(), AgentError> {
        let downs = &self.downs;
        let done: Vec<StorePath> = self
            .pending
            .iter()
            .filter(|(_, (waiting, _))| waiting.iter().all(|&i| !downs[i].alive()))
            .map(|(p, _)| p.clone())
            .collect();
        let mut any = false;
        for path in done {
            let (_, answer) = self.pending.remove(&path).expect("listed above");
            let own_failed = if own { self.downs[0].failed.clone() } else { None };
            let answer = match (answer, own_failed) {
                (Some(a), _) => a,
                (None, Some(why)) => Frame::Reject {
                    path: path.clone(),
                    reason: proto::frame::RejectReason::Store,
                    message: format!("the relay's own store: {why}"),
                },
                (None, None) => Frame::Ack { path, outcome: AckOutcome::Imported },
            };
            match &answer {
                Frame::Ack { .. } => self.summary.imported += 1,
                _ => self.summary.rejected += 1,
            }
            send_up(out, state, answer)?;
            any = true;
        }
        if any {
            out.flush().map_err(AgentError::Write)?;
        }
        Ok(())
    }
}

fn send_up<W: Write>(
    out: &mut FrameWriter<W>,
    state: &mut AgentState,
    frame: Frame,
) -> Result<(), AgentError> {
    state.on_send(&frame)?;
    out.send(&frame).map_err(AgentError::Write)
}
