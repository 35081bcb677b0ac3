//! The copy pipeline, coordinator side: closure → one-round-trip diff → NAR dump → zstd →
//! sign → stream → acknowledgements.
//!
//! [`push_closure`] runs one session against one agent:
//! 1. `Hello`/`Welcome` (the host's store dir must match ours), optionally `Authorize`
//!    (sent with the `Query`, answered before `Have`: no round trip of its own);
//! 2. one `Query` with the whole closure (path, NAR hash, size), answered by one `Have`;
//! 3. a sender thread streams each missing path in topological order — `PathStart` (path info
//!    and signature), the NAR dumped from disk, zstd-compressed, cut into `Data` frames, then
//!    `PathEnd` — never waiting for acknowledgements; a path the agent partly holds is sent
//!    from the byte it announced;
//! 4. meanwhile this thread reads `Ack`/`Reject` as each path lands, then `Bye`; and the
//!    host's `Received` counts (feature `progress`), reported as [`ProgressEvent::Received`]:
//!    the bytes the host has, not the bytes handed to the connection.
//!
//! A host that says in `Have` that it does not trust our key (feature `trust`) gets `Done` at
//! once: no path data is sent for paths it would refuse ([`PushError::Untrusted`]).
//!
//! Each path's encoding (level, full or delta against a base the host offered, shared with other
//! hosts' sessions) is [`encode::PathEncoder`]'s decision. When deltas were sent, the
//! sender waits for every answer before `Done` and re-sends in full the paths whose delta failed
//! on the host (and those then refused for a missing reference), in the same session.
//!
//! Memory stays bounded: the NAR is produced by `dump` into the zstd encoder, whose output is
//! cut into chunks of [`proto::frame::DATA_CHUNK`] bytes written straight to the stream;
//! back-pressure from a slow link blocks the dump.
//!
//! | module | what |
//! |---|---|
//! | [`encode`] | per-path encoding: level, delta or full, link metering |
//! | [`frame_cache`] | compress once: encoded streams shared by the sessions of a push |
//! | [`adaptive`] | zstd level and delta on/off from the measured link and compressor |

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use closure::{PathInfo, ValidatedClosure};

use nar_core::store_path::StorePath;
use signing::guix::SigningKey;
use store::StoreLayout;

pub mod adaptive;
pub mod encode;
pub mod frame_cache;
pub mod segments;

use crate::deadline::{DeadlineReader, DeadlineWriter, Deadlines, Watch};
use crate::transport::{AgentHandle, Connection, Transport, TransportError, AGENT_SAID};
use adaptive::CompressSetting;
use encode::{EncodeOptions, EncodeStats, LinkMeter, Metered, PathEncoder, QueuedWriter};
use frame_cache::FrameCache;
use proto::frame::{
    Encoding, Forward, ForwardOutcome, Frame, Hello, PathStart, ProtocolError, QueryEntry,
    RejectReason, Welcome, FEATURE_DELTA, FEATURE_FORWARD, FEATURE_GRAPH, FEATURE_NIX_SIGS,
    FEATURE_TRUST,
};
use proto::io::{FrameReader, FrameWriter, FramedError};
use proto::peer::CoordinatorState;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Encoding of path data.
    pub encoding: Encoding,
    /// zstd level when `compress` is `None` (3 by default).
    pub zstd_level: i32,
    /// `Some`: the adaptive controller picks level and delta per path (`--compress
    /// auto|max|LEVEL`); `None`: the fixed `zstd_level`, with a delta whenever a base exists.
    pub compress: Option<CompressSetting>,
    /// Send deltas when the host offers a base (`--no-delta` clears it).
    pub delta: bool,
    /// Encoded streams shared with the other sessions of a multi-host push (compress once).
    pub frame_cache: Option<Arc<FrameCache>>,
    /// A link rate (wire bytes/s) to start the adaptive controller from.
    pub link_rate_hint: Option<f64>,
    /// zstd worker threads (0: compress on the sender thread).
    pub zstd_workers: u32,
    /// Add our signing key to the host's ACL before sending.
    pub authorize: bool,
    /// Test hook: stop writing after this many wire bytes, as if the connection were cut.
    pub cut_after: Option<u64>,
    /// How long each phase may wait for the host ([`crate::deadline`]).
    pub deadlines: Deadlines,
    /// Ask the host whether it trusts our key, and stop before any path data when it does not
    /// (feature `trust`, [`PushError::Untrusted`]). The agent's half of a pull sends anyway:
    /// the pulling side reports each path it refuses.
    pub trust_check: bool,
    /// The host is a relay: whom it feeds, sent as `Forward` before the `Query`
    /// ([`crate::fanout`]); the outcomes come back in [`PushSummary::forwarded`].
    pub forward: Option<Forward>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            encoding: Encoding::Zstd,
            zstd_level: 3,
            zstd_workers: 0,
            compress: None,
            delta: true,
            frame_cache: None,
            link_rate_hint: None,
            authorize: false,
            cut_after: None,
            deadlines: Deadlines::default(),
            trust_check: true,
            forward: None,
        }
    }
}

/// Progress reported while pushing (the binary renders it).
#[derive(Debug)]
#[non_exhaustive]
pub enum ProgressEvent<'a> {
    /// Handshake done.
    Connected { welcome: &'a Welcome },
    /// The diff is known.
    Plan { closure_paths: usize, missing_paths: usize, nar_bytes: u64, resumed_bytes: u64 },
    /// More NAR bytes went out (handed to the connection: the host may not have them yet).
    Sent { nar_bytes: u64 },
    /// The host has `nar_bytes` of the NAR bytes to send (cumulative, at most the plan's
    /// `nar_bytes`): what it reported receiving (feature `progress`) or, from an agent without
    /// it, the sizes of the paths it answered.
    Received { nar_bytes: u64 },
    /// The host registered a path.
    Landed { path: &'a StorePath },
    /// The host refused a path.
    Rejected { path: &'a StorePath, reason: RejectReason, message: &'a str },
    /// The agent program is being uploaded to the host (before the agent starts): `sent` of
    /// `total` compressed bytes (`sent` counts the bytes a resumed upload found there), with
    /// `codec` (`zstd`, `gzip`).
    AgentUpload { sent: u64, total: u64, codec: &'a str },
}

/// A receiver of [`ProgressEvent`]s.
pub trait Progress: Send + Sync {
    /// Called from the pushing threads.
    fn event(&self, host: &str, event: &ProgressEvent<'_>);
}

/// Ignores progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: &str, _: &ProgressEvent<'_>) {}
}

/// A path the host refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub path: StorePath,
    pub reason: RejectReason,
    pub message: String,
}

/// Time spent in each phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Computing the closure (set by the caller that computed it).
    pub closure: Duration,
    /// Starting the agent and the handshake (and authorization).
    pub connect: Duration,
    /// The one diff round trip.
    pub diff: Duration,
    /// Streaming path data, until the last byte was written.
    pub send: Duration,
    /// From the last byte written to the last acknowledgement.
    pub import: Duration,
}

/// What a push did.
#[derive(Debug, Clone, Default)]
pub struct PushSummary {
    /// The transport's description.
    pub host: String,
    /// The host's answer to the handshake.
    pub welcome: Option<Welcome>,
    /// Paths in the closure.
    pub closure_paths: usize,
    /// Paths the host lacked.
    pub paths_missing: usize,
    /// Paths whose data was sent.
    pub paths_sent: usize,
    /// Paths the host registered (or had already).
    pub paths_landed: usize,
    /// NAR bytes sent (excluding bytes the host already held from an interrupted transfer).
    pub nar_bytes_sent: u64,
    /// NAR bytes not sent because the host held them from an interrupted transfer.
    pub resumed_bytes: u64,
    /// Bytes written to the connection.
    pub wire_bytes: u64,
    /// Bytes read from the connection.
    pub wire_bytes_received: u64,
    /// `Query` round trips (always one).
    pub diff_round_trips: u32,
    /// Paths refused, with the reasons.
    pub rejected: Vec<Rejection>,
    /// Time per phase.
    pub phases: Phases,
    /// Wall time of the whole push (closure included when the caller set it).
    pub seconds: f64,
    /// Whether the key was newly added to the host's ACL.
    pub authorized: Option<bool>,
    /// Deltas, levels, sharing.
    pub encode: EncodeStats,
    /// Paths whose delta failed on the host and that were sent again in full.
    pub delta_fallbacks: usize,
    /// A relay's report on the hosts below it ([`PushOptions::forward`]).
    pub forwarded: Vec<ForwardOutcome>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: {error}{}", crate::transport::stderr_note(AGENT_SAID, .stderr))]
    Session { host: String, error: FramedError, stderr: String },
    #[error(
        "{host} keeps its store in {theirs}, this store is in {ours}: store paths differ between \
         them (choose the host's store dir with ?store-dir=)"
    )]
    StoreDirMismatch { host: String, ours: String, theirs: String },
    #[error("{host}: sending {path}: {error}")]
    Send { host: String, path: String, error: io::Error },
    #[error(
        "the closure has {paths} paths, more than the {max} one session can send (split the \
         copy)"
    )]
    ClosureTooLarge { paths: usize, max: u32 },
    /// The host's ACL lacks our key (feature `trust`): nothing was sent.
    #[error(
        "{host} does not trust this signing key: it would refuse all {paths} missing path(s), so \
         none was sent ({wire_bytes} bytes on the wire: handshake and diff). Authorize the key: \
         `ferry copy --authorize` (`authorize = true` for a deployment's machine), or on the host \
         `ferry archive --authorize < signing-key.pub` (the public key in this ferry's state \
         directory)"
    )]
    Untrusted { host: String, paths: usize, wire_bytes: u64 },
    #[error("{host}: the agent cannot relay (it does not offer the feature `forward`)")]
    NoForward { host: String },
}

/// Stops writing after a byte budget (the `cut_after` test hook).
struct CutWriter<W> {
    inner: W,
    left: Option<u64>,
}

impl<W: Write> Write for CutWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.left {
            Some(0) => {
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection cut (test hook)"))
            }
            Some(left) => {
                let n = buf.len().min(left as usize);
                let n = self.inner.write(&buf[..n])?;
                self.left = Some(left - n as u64);
                Ok(n)
            }
            None => self.inner.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The `Query` entries for `closure`, in its order; with `graph`, each carries the indexes of
/// its references other than itself (feature `graph`, see [`proto::frame`]).
pub fn query_entries(closure: &ValidatedClosure, graph: bool) -> Vec<QueryEntry> {
    closure
        .iter()
        .map(|i| QueryEntry {
            path: i.path.clone(),
            nar_hash: i.nar_hash,
            nar_size: i.nar_size,
            references: if graph {
                i.references_except_self()
                    .filter_map(|r| closure.position(r))
                    .map(|x| x as u32)
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect()
}

/// Push `closure` (from the store at `local`) to the agent behind `transport`.
pub fn push_closure(
    local: &StoreLayout,
    closure: &ValidatedClosure,
    transport: &dyn Transport,
    key: &SigningKey,
    options: &PushOptions,
    progress: &dyn Progress,
) -> Result<PushSummary, PushError> {
    let host = transport.describe();
    let started = Instant::now();
    transport.prepare(progress)?;
    let Connection { reader, writer, agent } = transport.connect()?;
    // A deadline kills the connection (unblocking a write to a host that stopped reading).
    let agent: Arc<Mutex<Box<dyn AgentHandle>>> = Arc::new(Mutex::new(agent));
    let killer = agent.clone();
    let watch = Watch::start(options.deadlines, "while waiting for Welcome", move || {
        killer.lock().unwrap_or_else(|p| p.into_inner()).kill()
    });
    let wire_out = Arc::new(AtomicU64::new(0));
    let meter = Arc::new(LinkMeter::default());
    let mut frames = FrameReader::new(DeadlineReader::new(reader, watch.clone()));
    // A thread writes to the connection, so encoding runs ahead of the link.
    let out = FrameWriter::new(
        QueuedWriter::spawn(Metered {
            inner: DeadlineWriter::new(
                CutWriter { inner: writer, left: options.cut_after },
                watch.clone(),
            ),
            meter: meter.clone(),
        }),
        wire_out.clone(),
    );
    let result = session(
        local,
        closure,
        &host,
        key,
        options,
        progress,
        &mut frames,
        out,
        (&wire_out, &meter),
        started,
        &watch,
    );
    let expired = watch.close();
    let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
    if expired {
        agent.kill();
    }
    match result {
        Ok(mut summary) => {
            drop(frames);
            agent.wait()?;
            summary.wire_bytes = wire_out.load(Ordering::Relaxed);
            summary.seconds =
                started.elapsed().as_secs_f64() + summary.phases.closure.as_secs_f64();
            Ok(summary)
        }
        Err(e) => {
            drop(frames);
            // Give the agent a moment to finish writing its complaint, then stop it.
            let stderr = match agent.wait() {
                Ok(()) => agent.stderr(),
                Err(TransportError::AgentFailed { stderr, .. }) => stderr,
                Err(other) => other.to_string(),
            };
            Err(match e {
                PushError::Session { host, error, .. } => {
                    PushError::Session { host, error, stderr }
                }
                other => other,
            })
        }
    }
}

/// One push session on an open stream (also the agent's half of a pull, [`crate::pull`]).
///
/// Long, and kept whole on purpose: the handshake, the diff, the sender thread and the
/// acknowledgement loop share one state machine (`state`), its `send`/`receive` closures and
/// the counters inside one `thread::scope`; split into functions they would pass all of these
/// around, and the protocol's order would no longer read top to bottom.
#[allow(clippy::too_many_arguments)]
pub(crate) fn session<R: io::Read, W: Write + Send>(
    local: &StoreLayout,
    closure: &ValidatedClosure,
    host: &str,
    key: &SigningKey,
    options: &PushOptions,
    progress: &dyn Progress,
    frames: &mut FrameReader<R>,
    mut out: FrameWriter<W>,
    (wire_out, meter): (&Arc<AtomicU64>, &Arc<LinkMeter>),
    started: Instant,
    watch: &Watch,
) -> Result<PushSummary, PushError> {
    let session_err = |source: FramedError| PushError::Session {
        host: host.to_owned(),
        error: source,
        stderr: String::new(),
    };
    let io_err = |e: io::Error| session_err(FramedError::Io(e));
    let state = Mutex::new(CoordinatorState::new());
    let send = |out: &mut FrameWriter<W>, frame: Frame| -> Result<(), PushError> {
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_send(&frame)
            .map_err(|e| session_err(e.into()))?;
        out.send(&frame).map_err(io_err)
    };
    let receive = |frames: &mut FrameReader<R>| -> Result<Frame, PushError> {
        let frame = frames.read_frame().map_err(session_err)?;
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        match frame {
            Some(f) => {
                st.on_receive(&f).map_err(|e| session_err(e.into()))?;
                Ok(f)
            }
            None => {
                st.on_eof().map_err(|e| session_err(e.into()))?;
                Err(session_err(ProtocolError::Eof { state: "after the session" }.into()))
            }
        }
    };
    let mut summary = PushSummary {
        host: host.to_owned(),
        closure_paths: closure.len(),
        diff_round_trips: 1,
        ..Default::default()
    };

    if closure.len() > proto::frame::MAX_QUERY_ENTRIES as usize {
        let max = proto::frame::MAX_QUERY_ENTRIES;
        return Err(PushError::ClosureTooLarge { paths: closure.len(), max });
    }

    // Handshake.
    watch.phase("while waiting for Welcome", true);
    // Our key, so that the host says in `Have` whether it trusts it (feature `trust`).
    let public_key = options.trust_check.then(|| key.verifying_key().to_key_file());
    let hello = Hello { public_key, ..Hello::ours() };
    send(&mut out, Frame::Hello(hello))?;
    out.flush().map_err(io_err)?;
    let Frame::Welcome(welcome) = receive(frames)? else {
        unreachable!("checked by the state machine")
    };
    frames.decoder_mut().set_peer(format!(
        "{}..={} (ferry {})",
        welcome.min_version, welcome.max_version, welcome.ferry_version
    ));
    if welcome.store_dir != local.store_dir().as_str() {
        return Err(PushError::StoreDirMismatch {
            host: host.to_owned(),
            ours: local.store_dir().to_string(),
            theirs: welcome.store_dir.clone(),
        });
    }
    let peer_delta = welcome.features.iter().any(|f| f == FEATURE_DELTA);
    let peer_trust = welcome.features.iter().any(|f| f == FEATURE_TRUST);
    let peer_nix_sigs = welcome.features.iter().any(|f| f == FEATURE_NIX_SIGS);
    // The reference graph only serves base choice: sent when deltas may be used.
    let peer_graph = options.delta
        && peer_delta
        && options.forward.is_none()
        && welcome.features.iter().any(|f| f == FEATURE_GRAPH);
    let peer_forward = welcome.features.iter().any(|f| f == FEATURE_FORWARD);
    progress.event(host, &ProgressEvent::Connected { welcome: &welcome });
    summary.welcome = Some(welcome);
    if options.forward.is_some() && !peer_forward {
        return Err(PushError::NoForward { host: host.to_owned() });
    }
    // `Authorize`, a relay's `Forward` and the `Query` go out together: the host handles them
    // in order (so `Have` already speaks of the updated ACL), and the authorization costs no
    // round trip of its own.
    if options.authorize {
        send(&mut out, Frame::Authorize { public_key: key.verifying_key().to_key_file() })?;
    }
    if let Some(forward) = &options.forward {
        send(&mut out, Frame::Forward(Box::new(forward.clone())))?;
    }
    summary.phases.connect = started.elapsed();

    // The diff: one round trip.
    let t = Instant::now();
    send(&mut out, Frame::Query(query_entries(closure, peer_graph)))?;
    out.flush().map_err(io_err)?;
    if options.authorize {
        watch.phase("while waiting for Authorized", false);
        if let Frame::Authorized { added } = receive(frames)? {
            summary.authorized = Some(added);
        }
    }
    watch.phase("while waiting for Have", false);
    let Frame::Have { missing, bases, trusted } = receive(frames)? else {
        unreachable!("checked by the state machine")
    };
    let bases: BTreeMap<StorePath, Vec<StorePath>> = bases.into_iter().collect();
    let resume: BTreeMap<StorePath, u64> =
        missing.into_iter().map(|m| (m.path, m.resume_from)).collect();
    let missing_set = resume.keys().cloned().collect();
    let plan =
        closure::diff(closure, &closure::RemoteAnswer::Missing(missing_set)).map_err(|e| {
            session_err(ProtocolError::Malformed { frame: "Have", reason: e.to_string() }.into())
        })?;
    summary.phases.diff = t.elapsed();
    summary.paths_missing = plan.len();
    let to_send: Vec<(&PathInfo, u64)> = plan
        .paths
        .iter()
        .map(|info| (info, resume.get(&info.path).copied().unwrap_or(0).min(info.nar_size)))
        .collect();
    summary.resumed_bytes = to_send.iter().map(|(_, o)| *o).sum();
    if peer_trust && trusted == Some(false) && !to_send.is_empty() {
        // Every path would be refused: stop before any path data (see `proto::frame`, Trust).
        send(&mut out, Frame::Done)?;
        out.flush().map_err(io_err)?;
        watch.phase("while waiting for Bye", false);
        while !matches!(receive(frames)?, Frame::Bye { .. }) {}
        return Err(PushError::Untrusted {
            host: host.to_owned(),
            paths: to_send.len(),
            wire_bytes: wire_out.load(Ordering::Relaxed),
        });
    }
    // What the host has of the paths to send, for `ProgressEvent::Received`.
    let sizes: BTreeMap<&StorePath, u64> =
        to_send.iter().map(|(i, offset)| (&i.path, i.nar_size - offset)).collect();
    let to_receive = plan.nar_size - summary.resumed_bytes;
    let (mut answered_bytes, mut reported_bytes) = (0u64, 0u64);
    progress.event(
        host,
        &ProgressEvent::Plan {
            closure_paths: closure.len(),
            missing_paths: plan.len(),
            nar_bytes: plan.nar_size - summary.resumed_bytes,
            resumed_bytes: summary.resumed_bytes,
        },
    );

    // Stream (sender thread) while reading answers (this thread).
    let t_send = Instant::now();
    let store_dir = local.store_dir().clone();
    let report = |n: u64| progress.event(host, &ProgressEvent::Sent { nar_bytes: n });
    let answers = Answers::default();
    let encode_options = EncodeOptions {
        compress: options.encoding != Encoding::None,
        adaptive: options.compress,
        level: options.zstd_level,
        workers: options.zstd_workers,
        delta: options.delta && peer_delta,
        link_rate_hint: options.link_rate_hint,
    };
    let mut forwarded = Vec::new();
    let (landed, outcome, sent) = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let mut encoder = PathEncoder::new(
                local,
                encode_options,
                options.frame_cache.clone(),
                meter.clone(),
                wire_out.clone(),
            );
            let mut nar_sent = 0u64;
            let mut paths_sent = 0usize;
            let mut deltas = 0usize;
            let mut resumed = 0usize;
            let mut fallbacks = 0usize;
            let result = (|| -> Result<(), PushError> {
                // Sends one path; returns (NAR bytes sent, whether it went as a delta).
                let mut send_path = |info: &PathInfo,
                                     offset: u64,
                                     candidates: &[StorePath],
                                     out: &mut FrameWriter<W>|
                 -> Result<(u64, bool), PushError> {
                    let references: Vec<StorePath> = info.references.iter().cloned().collect();
                    let signature = crate::trust::sign_path(
                        key,
                        &store_dir,
                        &info.path,
                        &info.nar_hash,
                        info.nar_size,
                        &references,
                    );
                    let prepared = encoder.prepare(info, offset, candidates);
                    let is_delta = matches!(prepared.encoding, Encoding::ZstdDelta { .. });
                    let start = PathStart {
                        path: info.path.clone(),
                        nar_hash: info.nar_hash,
                        nar_size: info.nar_size,
                        references,
                        deriver: info.deriver.clone(),
                        ca: info.ca.clone(),
                        signature,
                        encoding: prepared.encoding.clone(),
                        offset,
                        // The source store's Nix signatures: claims the host checks itself.
                        nix_sigs: if peer_nix_sigs { info.sigs.clone() } else { Vec::new() },
                    };
                    send(out, Frame::PathStart(Box::new(start)))?;
                    let sent = encoder.write_data(prepared, info, offset, out, &report).map_err(
                        |source| PushError::Send {
                            host: host.to_owned(),
                            path: info.path.to_absolute(&store_dir),
                            error: source,
                        },
                    )?;
                    send(out, Frame::PathEnd)?;
                    Ok((sent, is_delta))
                };
                for (info, offset) in &to_send {
                    let candidates = bases.get(&info.path).map(Vec::as_slice).unwrap_or(&[]);
                    let (sent, is_delta) = send_path(info, *offset, candidates, &mut out)?;
                    nar_sent += sent;
                    paths_sent += 1;
                    deltas += usize::from(is_delta);
                    resumed += usize::from(*offset > 0);
                }
                if deltas > 0 || resumed > 0 {
                    // Fallback: once every path is answered, send again in full what a failed
                    // delta or resume kept out (and what was refused for lack of it).
                    out.flush().map_err(io_err)?;
                    let retry = answers.take_retries(paths_sent);
                    fallbacks =
                        retry.iter().filter(|r| r.reason == RejectReason::DeltaFailed).count();
                    for (info, _) in
                        to_send.iter().filter(|(i, _)| retry.iter().any(|r| r.path == i.path))
                    {
                        nar_sent += send_path(info, 0, &[], &mut out)?.0;
                        paths_sent += 1;
                    }
                }
                send(&mut out, Frame::Done)?;
                out.flush().map_err(io_err)
            })();
            let elapsed = t_send.elapsed();
            // Closing our side lets the agent see the end if we stopped early.
            drop(out);
            let stats = encoder.stats.clone();
            result.map(|()| (nar_sent, paths_sent, elapsed, stats, fallbacks))
        });
        let mut landed = 0usize;
        let outcome = loop {
            watch.phase("while waiting for the host's answers", false);
            match receive(frames) {
                Ok(Frame::Received { nar_bytes }) => {
                    // The host's own count (feature `progress`); never past what there is to
                    // send (a peer's number).
                    reported_bytes = reported_bytes.max(nar_bytes.min(to_receive));
                    let nar_bytes = reported_bytes.max(answered_bytes);
                    progress.event(host, &ProgressEvent::Received { nar_bytes });
                }
                Ok(Frame::Ack { path, .. }) => {
                    landed += 1;
                    answers.answered(None);
                    answered_bytes =
                        (answered_bytes + sizes.get(&path).copied().unwrap_or(0)).min(to_receive);
                    progress.event(host, &ProgressEvent::Landed { path: &path });
                    let nar_bytes = reported_bytes.max(answered_bytes);
                    progress.event(host, &ProgressEvent::Received { nar_bytes });
                }
                Ok(Frame::Reject { path, reason, message }) => {
                    progress.event(
                        host,
                        &ProgressEvent::Rejected { path: &path, reason, message: &message },
                    );
                    answers.answered(Some(Rejection { path, reason, message }));
                }
                Ok(Frame::Forwarded(outcomes)) => forwarded = outcomes,
                Ok(Frame::Bye { .. }) => break Ok(()),
                Ok(_) => unreachable!("checked by the state machine"),
                Err(e) => break Err(e),
            }
        };
        answers.close();
        let sent = sender.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (landed, outcome, sent)
    });
    summary.forwarded = forwarded;
    let rejected = answers.into_rejected();
    // The sender's error is the cause when both failed (a cut connection ends the reading too).
    let (nar_sent, paths_sent, send_time, encode_stats, fallbacks) = match (sent, outcome) {
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(e),
        (Ok(s), Ok(())) => s,
    };
    summary.phases.send = send_time;
    summary.phases.import = t_send.elapsed().saturating_sub(send_time);
    summary.paths_sent = paths_sent;
    summary.nar_bytes_sent = nar_sent;
    summary.paths_landed = landed;
    summary.rejected = rejected;
    summary.encode = encode_stats;
    summary.delta_fallbacks = fallbacks;
    summary.wire_bytes = wire_out.load(Ordering::Relaxed);
    summary.wire_bytes_received = frames.bytes_read();
    Ok(summary)
}

/// The answers received so far, shared between the reading thread and the sender (which waits
/// for them before the fallback of failed deltas).
#[derive(Debug, Default)]
struct Answers {
    state: Mutex<AnswerState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct AnswerState {
    answered: usize,
    closed: bool,
    rejected: Vec<Rejection>,
}

impl Answers {
    fn lock(&self) -> std::sync::MutexGuard<'_, AnswerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answered(&self, rejection: Option<Rejection>) {
        let mut st = self.lock();
        st.answered += 1;
        st.rejected.extend(rejection);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Wait until `sent` paths are answered (or the session ended), then take the rejections
    /// worth a full re-send: failed deltas, and, when there are any, missing references.
    fn take_retries(&self, sent: usize) -> Vec<Rejection> {
        let mut st = self.lock();
        while st.answered < sent && !st.closed {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if !st.rejected.iter().any(|r| r.reason == RejectReason::DeltaFailed) {
            return Vec::new();
        }
        let (retry, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut st.rejected).into_iter().partition(|r| {
                matches!(r.reason, RejectReason::DeltaFailed | RejectReason::MissingReference)
            });
        st.rejected = keep;
        retry
    }

    fn into_rejected(self) -> Vec<Rejection> {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner()).rejected
    }
}
