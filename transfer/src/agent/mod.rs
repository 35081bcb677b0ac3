//! The host agent (`ferry serve`): the ferry protocol on a byte stream (stdin/stdout on a
//! host), importing verified paths into the store.
//!
//! For each `PathStart` the agent:
//! 1. checks the signature against `<state>/acl` ([`crate::trust::check_path`]); a path that is
//!    unsigned, badly signed or signed by an unauthorized key is rejected and its data skipped;
//! 2. decodes the data (zstd) and restores the NAR into a temp dir in the store while hashing
//!    it; the hash and size must match and the references must be valid or received earlier
//!    in the session ([`store::ImportBatch::restore`]);
//! 3. answers `Reject` with the reason at once when any of this fails, and goes on with the
//!    next path.
//!
//! **Batched registration.** Restored paths wait in an [`store::ImportBatch`] and are made
//! durable and registered together, in one sync pass and one transaction
//! ([`store::ImportBatch::commit`]): when the batch holds [`AgentOptions::batch_paths`] paths
//! or [`AgentOptions::batch_bytes`] NAR bytes, when its first path waited
//! [`AgentOptions::batch_delay`], whenever the next frame has not arrived yet (the agent never
//! blocks on input with paths unanswered), and at `Done`. Only then is each path answered: `Ack` once it
//! is registered (never before), or `Reject` (a reference refused earlier in the batch). If the
//! session breaks, the waiting paths were never acknowledged nor registered; their temp dirs are
//! removed, and the coordinator sends them again next time.
//!
//! **Deltas.** When the coordinator speaks `delta`, `Have` names base candidates for the missing
//! paths, and a path sent as a delta is applied against the base's NAR rebuilt from this store
//! ([`crate::delta::bases`]); any failure of the delta is a `Reject` with `delta-failed`.
//!
//! **A daemon's store.** With [`AgentOptions::daemon`], the store is the host's own Nix or Guix
//! store ([`daemon`]): its database is only read (valid paths, delta bases and their NAR
//! hashes), and each path, once its signature is checked, streams into the daemon's import
//! (`nix-store --serve --write`, [`nix_store`]; `guix archive --import`, [`guix_store`]), which
//! registers it signed by the host's ferry key; what makes it importable goes out only once its
//! hash matched. Such paths are answered as soon as the daemon registered them (no batch).
//!
//! **Resume.** A path of at least [`AgentOptions::partial_min`] NAR bytes is also written, as
//! its NAR arrives, to `<state>/partial/<path hash part>-<NAR hash hex>`. If the session breaks,
//! the file stays; the next `Query` answers that path with `resume_from` = the bytes held, and
//! the coordinator sends the NAR from there on. The restore then reads the held bytes followed
//! by the new ones, so the whole NAR is hashed and checked as usual. The file is removed when
//! the path was rejected for its contents, and, once the path is complete and checked, when its
//! batch is registered, just before the sync pass (which then has no partial data to write
//! out): a session broken during that registration sends the path again whole.
//!
//! **Partial file cleanup.** At each `Query` the agent removes partial files that cannot be
//! resumed any more: those not written for [`AgentOptions::partial_max_age`] (7 days: the
//! transfer was abandoned), and those of a queried path that is valid now (another session
//! registered it) or that is queried with another NAR hash (the file holds other contents).
//! Partial files of paths this query does not name are left alone unless too old: they may
//! belong to another coordinator's interrupted copy.
//!
//! **Pull.** After `SendClosure` the roles swap on the stream: this side pushes the closure
//! with the coordinator's own session code ([`send`]). The side that pulls serves that push as
//! [`Role::Puller`] ([`role`]): its ACL is what it was before the session, and only the closure
//! it asked for is accepted.
//!
//! **Bounds.** What a coordinator sends is checked against what is signed before it costs
//! more than that: a path's NAR stops at its signed size and at [`AgentOptions::max_nodes`]
//! nodes ([`nar_core::restore`]); its unsigned `ca` and `deriver` must have their grammar
//! ([`crate::trust::check_metadata`]); an `Authorize` must hold a valid Ed25519 public key
//! ([`signing::guix::VerifyingKey`]); a `Query` holds at most
//! [`proto::frame::MAX_QUERY_ENTRIES`] entries; the summary keeps the first
//! [`MAX_KEPT_REJECTIONS`] rejections (and counts the rest). A partial file never grows past
//! its path's declared size, all of them together stay under [`AgentOptions::partial_budget`],
//! and a resumed path whose result does not match is refused with `delta-failed`, which makes
//! the coordinator send it again in full in the same session (the bytes held are not trusted).
//!
//! **Locking.** The store is opened for writing ([`store::Store::open`]), which holds the
//! store's writer lock for the session; concurrent sessions are serialized per path by the
//! database's write transaction.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{ImportBatch, ImportOutcome, Store, StoreError, StoreLayout};

use closure::PathInfo;
use nar_core::hash::NarDigest;
use nar_core::store_path::StorePath;
use signing::acl::Acl;

use proto::frame::{
    AckOutcome, Encoding, Frame, MissingEntry, PathStart, ProtocolError, RejectReason, Welcome,
    FEATURES, FEATURE_DELTA, FEATURE_PROGRESS, FEATURE_TRUST, MIN_VERSION, VERSION,
};
use proto::io::{DataReader, FrameReader, FrameWriter, FramedError};
use proto::peer::AgentState;

use crate::transport::InProcessTransport;

pub mod daemon;
pub mod guix_store;
pub mod nix_store;
mod progress;
mod role;
mod send;
pub mod substitute;

use progress::{Counted, Received};
use role::Accepted;
pub use role::Role;

/// Rejections a session's summary keeps (the rest are counted in [`ServeSummary::rejected`]).
pub const MAX_KEPT_REJECTIONS: usize = 100;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The store to import into.
    pub layout: StoreLayout,
    /// Paths with at least this many NAR bytes are kept in `<state>/partial/` as they arrive.
    pub partial_min: u64,
    /// Partial files untouched for this long are removed (at the next `Query`).
    pub partial_max_age: Duration,
    /// Register the waiting paths once this many are restored.
    pub batch_paths: usize,
    /// Register the waiting paths once they hold this many NAR bytes.
    pub batch_bytes: u64,
    /// Register the waiting paths once the first of them waited this long (checked as paths
    /// arrive).
    pub batch_delay: Duration,
    /// Most files, directories and symlinks one path may create.
    pub max_nodes: u64,
    /// Most bytes all partial files may hold together: a path that would go past it is
    /// received without one (not resumable).
    pub partial_budget: u64,
    /// How long a pull served with these options waits for the host ([`Role::Puller`]).
    pub deadlines: crate::deadline::Deadlines,
    /// Import into the host's own Nix or Guix store instead ([`daemon`]): `layout` is then
    /// that store read in place (its database opened read only), with ferry's state dir.
    pub daemon: Option<daemon::DaemonStore>,
    /// Act as a relay when the coordinator sends `Forward` ([`crate::fanout`]): connect to the
    /// hosts it names, with the identity files it names. Off in fuzzing (no network).
    pub relay: bool,
}

impl AgentOptions {
    /// Defaults for `layout`: partial files from 1 MiB, kept up to 7 days, 16 GiB in all;
    /// batches of up to 1,000 paths, 256 MiB or 1 s; at most 2,000,000 nodes per path.
    pub fn new(layout: StoreLayout) -> Self {
        AgentOptions {
            layout,
            partial_min: 1 << 20,
            partial_max_age: Duration::from_secs(7 * 24 * 3600),
            batch_paths: 1000,
            batch_bytes: 256 << 20,
            batch_delay: Duration::from_secs(1),
            max_nodes: nar_core::restore::MAX_NODES,
            partial_budget: 16 << 30,
            deadlines: crate::deadline::Deadlines::default(),
            daemon: None,
            relay: true,
        }
    }

    /// This agent on a thread of this process ([`InProcessTransport`], named
    /// `in-process://ROOT`): each connection is served by [`serve`] with these options.
    pub fn in_process(self) -> InProcessTransport {
        let name = format!("in-process://{}", self.layout.root().display());
        InProcessTransport::new(name, move |input, output| {
            serve(self.clone(), input, output).map(|_| ()).map_err(|e| e.to_string())
        })
    }
}

/// Why a session ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Framed(#[from] FramedError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("cannot open the store: {0}")]
    Store(StoreError),
    #[error(transparent)]
    Acl(#[from] signing::keyfile::AclFileError),
    #[error("the coordinator went away {0}")]
    Eof(&'static str),
    #[error("writing to the coordinator: {0}")]
    Write(io::Error),
    /// The peer asked for something its role does not allow ([`Role`]).
    #[error("{0}")]
    Refused(String),
    /// The host's ferry key, for a host whose store is a daemon's.
    #[error("the host's signing key: {0}")]
    DaemonKey(crate::trust::KeyError),
}

/// What a session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Paths registered.
    pub imported: u64,
    /// Paths refused.
    pub rejected: u64,
    /// The first [`MAX_KEPT_REJECTIONS`] paths refused, with the reasons.
    pub rejections: Vec<(StorePath, RejectReason, String)>,
}

/// The system type of this build (`x86_64-linux`).
pub fn system_type() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(0)
}

fn current_generation(layout: &StoreLayout) -> Option<String> {
    let link = layout.profiles_dir().join("system");
    fs::read_link(link).ok().map(|t| t.to_string_lossy().into_owned())
}

struct Session<R: Read, W: Write> {
    frames: FrameReader<R>,
    out: FrameWriter<W>,
    state: AgentState,
    options: AgentOptions,
    summary: ServeSummary,
    /// Paths restored, waiting to be registered.
    batch: ImportBatch,
    /// Partial files of the waiting paths, removed when they are registered.
    batch_partials: Vec<PathBuf>,
    /// When the first waiting path was restored.
    batch_started: Option<Instant>,
    /// The zstd decoder context, reused for every path.
    zstd: zstd::zstd_safe::DCtx<'static>,
    role: Role,
    /// As [`Role::Puller`]: the closure accepted, known from the `Query`.
    accepted: Option<Accepted>,
    /// The deadlines of the waits for the peer (a puller's; none for a host).
    watch: crate::deadline::Watch,
    /// NAR bytes received in this session, and the count last told to the coordinator (feature
    /// `progress`; `None` when the coordinator did not ask for it).
    received: Received,
    /// Where verified NARs go when the host's store is a daemon's ([`daemon`]).
    sink: Option<daemon::Sink>,
    /// The host's trusted Nix keys (`trusted-public-keys`), read when a path first brings Nix
    /// signatures (feature `nix-sigs`).
    nix_keys: Option<Vec<signing::nix::VerifyingKey>>,
}

impl<R: Read, W: Write> Session<R, W> {
    fn send(&mut self, frame: Frame) -> Result<(), AgentError> {
        self.state.on_send(&frame)?;
        self.out.send(&frame).map_err(AgentError::Write)
    }

    fn flush(&mut self) -> Result<(), AgentError> {
        self.out.flush().map_err(AgentError::Write)
    }

    /// Send an `Ack` or `Reject` and count it.
    fn answer(&mut self, frame: Frame) -> Result<(), AgentError> {
        match &frame {
            Frame::Ack { .. } => self.summary.imported += 1,
            Frame::Reject { path, reason, message } => {
                self.summary.rejected += 1;
                if self.summary.rejections.len() < MAX_KEPT_REJECTIONS {
                    self.summary.rejections.push((path.clone(), *reason, message.clone()));
                }
            }
            _ => {}
        }
        self.send(frame)
    }

    /// Is it time to register the waiting paths? Also whenever the next frame has not arrived
    /// yet: the agent never waits for input with paths unanswered (a coordinator may wait for
    /// an answer before sending more).
    fn batch_due(&self) -> bool {
        !self.frames.has_frame()
            || self.batch.len() >= self.options.batch_paths
            || self.batch.nar_bytes() >= self.options.batch_bytes
            || self.batch_started.is_some_and(|t| t.elapsed() >= self.options.batch_delay)
    }

    /// Register the waiting paths and answer each of them (after telling the coordinator how
    /// much arrived, feature `progress`).
    fn commit_batch(&mut self, store: &mut Store) -> Result<(), AgentError> {
        self.received.tell(1, &mut self.state, &mut self.out);
        self.batch_started = None;
        if self.batch.is_empty() {
            return Ok(());
        }
        // The waiting paths are complete and checked: their partial files go before the sync
        // pass, so it does not write them out (see the module docs, "Resume").
        for partial in std::mem::take(&mut self.batch_partials) {
            let _ = fs::remove_file(partial);
        }
        let outcomes = self.batch.commit(store);
        for (path, outcome) in outcomes {
            let answer = match outcome {
                Ok(o) => Frame::Ack { path, outcome: ack_outcome(o) },
                Err(e @ StoreError::ReferenceNotValid { .. }) => {
                    reject(&path, RejectReason::MissingReference, e.to_string())
                }
                Err(e) => reject(&path, RejectReason::Store, e.to_string()),
            };
            self.answer(answer)?;
        }
        self.flush()
    }

    /// Tell the coordinator why the session ends, then return the error.
    fn fail(&mut self, err: AgentError) -> AgentError {
        let _ = self.out.send(&Frame::Error(err.to_string()));
        let _ = self.out.flush();
        err
    }
}

/// Serve one session on `input`/`output` (stdin/stdout under `ferry serve`).
///
/// One loop over the coordinator's frames, one arm per frame kind, kept whole so the agent's
/// side of the protocol reads in order; the work of each arm is in `Session`'s methods.
pub fn serve<R: Read, W: Write + Send>(
    options: AgentOptions,
    input: R,
    output: W,
) -> Result<ServeSummary, AgentError> {
    serve_as(options, input, output, Role::Host)
}

/// [`serve`] in a [`Role`].
pub fn serve_as<R: Read, W: Write + Send>(
    options: AgentOptions,
    input: R,
    output: W,
    role: Role,
) -> Result<ServeSummary, AgentError> {
    let batch = ImportBatch::new().with_max_nodes(options.max_nodes);
    let watch = match &role {
        Role::Puller { watch, .. } => watch.clone(),
        Role::Host => crate::deadline::Watch::none(),
    };
    let mut s = Session {
        frames: FrameReader::new(input),
        out: FrameWriter::new(output, Arc::new(AtomicU64::new(0))),
        state: AgentState::new(),
        options,
        summary: ServeSummary::default(),
        batch,
        batch_partials: Vec::new(),
        batch_started: None,
        zstd: zstd::zstd_safe::DCtx::create(),
        role,
        accepted: None,
        watch,
        received: Received::default(),
        sink: None,
        nix_keys: None,
    };
    // Handshake.
    s.watch.phase("while waiting for the host's Hello", true);
    let hello = match s.frames.read_frame() {
        Ok(Some(f)) => f,
        Ok(None) => return Err(AgentError::Eof("before Hello")),
        Err(e) => return Err(s.fail(e.into())),
    };
    let negotiated = s.state.on_receive(&hello);
    let peer_delta = matches!(&hello, Frame::Hello(h) if h.offers(FEATURE_DELTA));
    s.received.wanted = matches!(&hello, Frame::Hello(h) if h.offers(FEATURE_PROGRESS));
    // The coordinator's key, whose trust `Have` tells (feature `trust`).
    let coordinator_key = match &hello {
        Frame::Hello(h) if h.offers(FEATURE_TRUST) => h.public_key.clone(),
        _ => None,
    };
    let layout = s.options.layout.clone();
    let welcome = Welcome {
        min_version: MIN_VERSION,
        max_version: VERSION,
        ferry_version: env!("CARGO_PKG_VERSION").to_owned(),
        features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        store_dir: layout.store_dir().as_str().to_owned(),
        system: system_type(),
        free_bytes: free_bytes(layout.physical_store_dir().parent().unwrap_or(layout.root())),
        generation: current_generation(&layout),
    };
    if let Frame::Hello(h) = &hello {
        s.frames
            .decoder_mut()
            .set_peer(format!("{}..={} (ferry {})", h.min_version, h.max_version, h.ferry_version));
    }
    match negotiated {
        Ok(()) => {}
        Err(ProtocolError::VersionMismatch { .. }) if matches!(hello, Frame::Hello(_)) => {
            s.send(Frame::Welcome(welcome))?;
            let e = negotiated.unwrap_err();
            return Err(s.fail(e.into()));
        }
        Err(e) => return Err(s.fail(e.into())),
    }
    let opened = match &s.options.daemon {
        // The daemon's database is the daemon's: read only, it registers (see daemon).
        Some(_) => Store::open_read_only(layout.clone()),
        None => Store::open(layout.clone()),
    };
    let mut store = match opened {
        Ok(store) => store,
        Err(e) => {
            s.send(Frame::Welcome(welcome))?;
            return Err(s.fail(AgentError::Store(e)));
        }
    };
    if let Some(d) = s.options.daemon.clone() {
        match daemon::Sink::new(d, layout.store_dir().clone(), layout.state_dir()) {
            Ok(sink) => s.sink = Some(sink),
            Err(e) => {
                s.send(Frame::Welcome(welcome))?;
                return Err(s.fail(AgentError::DaemonKey(e)));
            }
        }
    }
    s.send(Frame::Welcome(welcome))?;
    s.flush()?;
    let acl_path = layout.state_dir().join("acl");
    let mut acl = match signing::keyfile::read_acl(&acl_path) {
        Ok(acl) => acl,
        Err(e) => return Err(s.fail(e.into())),
    };
    loop {
        s.watch.phase("while waiting for the host's next frame", false);
        let frame = match s.frames.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Err(AgentError::Eof("in the middle of the session")),
            Err(e) => return Err(s.fail(e.into())),
        };
        if let Err(e) = s.state.on_receive(&frame) {
            return Err(s.fail(e.into()));
        }
        match frame {
            Frame::Authorize { .. } if matches!(s.role, Role::Puller { .. }) => {
                let e = AgentError::Refused(
                    "the host sent Authorize: a host being pulled from cannot change this side's \
                     trust (protocol error)"
                        .into(),
                );
                return Err(s.fail(e));
            }
            Frame::Authorize { public_key } => {
                // Only a valid Ed25519 public key, in its canonical form, goes into the ACL.
                let added = signing::guix::VerifyingKey::from_text(&public_key)
                    .map_err(|e| e.to_string())
                    .and_then(|key| {
                        signing::keyfile::authorize_key_in_file(&acl_path, key.to_sexp())
                            .map_err(|e| e.to_string())
                    });
                match added {
                    Ok(outcome) => {
                        acl = signing::keyfile::read_acl(&acl_path)?;
                        s.send(Frame::Authorized { added: outcome.added })?;
                        s.flush()?;
                    }
                    Err(e) => {
                        return Err(s.fail(AgentError::Protocol(ProtocolError::Peer(format!(
                            "cannot authorize the key: {e}"
                        )))))
                    }
                }
            }
            Frame::Query(entries) => {
                if let Role::Puller { roots, .. } = &s.role {
                    match Accepted::from_query(roots, &entries) {
                        Ok(accepted) => s.accepted = Some(accepted),
                        Err(e) => return Err(s.fail(AgentError::Refused(e))),
                    }
                }
                let paths: Vec<&StorePath> = entries.iter().map(|e| &e.path).collect();
                let valid = match store.query_valid(paths.iter().copied()) {
                    Ok(v) => v,
                    Err(e) => return Err(s.fail(AgentError::Store(e))),
                };
                let missing = entries
                    .iter()
                    .filter(|e| !valid.contains(&e.path))
                    .map(|e| MissingEntry {
                        path: e.path.clone(),
                        resume_from: partial_len(
                            &layout,
                            &e.path,
                            &NarDigest { hash: e.nar_hash, size: e.nar_size },
                        ),
                    })
                    .collect();
                prune_partials(&layout, &entries, &valid, s.options.partial_max_age);
                let bases = if peer_delta {
                    // Offering no bases is always correct: a failure here only costs bytes.
                    crate::delta::bases::host_candidates(&store, &entries, &valid)
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                // Trust as it is now, after any `Authorize` of this session.
                let trusted = coordinator_key.as_ref().map(|key| {
                    signing::guix::VerifyingKey::from_text(key)
                        .is_ok_and(|key| acl.is_authorized(&key.to_sexp()))
                });
                s.send(Frame::Have { missing, bases, trusted })?;
                s.flush()?;
            }
            Frame::PathStart(start) => {
                let answer = receive_path(&mut s, &mut store, &acl, &start)?;
                // The data reader consumed the path's `Data` frames and its `PathEnd`.
                s.state.on_receive(&Frame::PathEnd)?;
                if let Some(answer) = answer {
                    s.answer(answer)?;
                    s.flush()?;
                }
                if s.batch_due() {
                    s.commit_batch(&mut store)?;
                }
            }
            Frame::SendClosure { .. } if matches!(s.role, Role::Puller { .. }) => {
                let e = AgentError::Refused(
                    "the host sent SendClosure: a host being pulled from cannot ask for this \
                     side's store (protocol error)"
                        .into(),
                );
                return Err(s.fail(e));
            }
            Frame::SendClosure { roots } => {
                // Pull: from here on this side pushes (crate::pull is the other side).
                return send::send_closure(&store, &roots, &mut s.frames, s.out);
            }
            Frame::Forward(forward) if matches!(s.role, Role::Host) && s.options.relay => {
                // A relay: from here on this side feeds its own store and its children
                // (crate::fanout), each of which checks what it gets itself.
                drop(store);
                return crate::fanout::relay(s.options, *forward, s.frames, s.out, s.state);
            }
            Frame::Done => {
                s.commit_batch(&mut store)?;
                if let Some(sink) = &mut s.sink {
                    sink.finish();
                }
                let bye = Frame::Bye { imported: s.summary.imported, rejected: s.summary.rejected };
                s.send(bye)?;
                s.flush()?;
                return Ok(s.summary);
            }
            other => {
                let e = ProtocolError::Unexpected {
                    frame: other.name(),
                    state: "in the agent's main loop",
                };
                return Err(s.fail(e.into()));
            }
        }
    }
}

/// `<state>/partial/<hash part>-<NAR hash hex, 32 chars>`.
pub fn partial_path(layout: &StoreLayout, path: &StorePath, nar: &NarDigest) -> PathBuf {
    layout.state_dir().join("partial").join(format!(
        "{}-{}",
        path.hash_part(),
        &nar.hash.to_hex()[..32]
    ))
}

/// Remove the partial files that can no longer be resumed (see the module docs, "Resume"):
/// those older than `max_age`, and those of a path in this query that is valid now, whose
/// NAR hash is not the one queried or that hold more than its NAR size. Returns the files
/// removed.
pub fn prune_partials(
    layout: &StoreLayout,
    entries: &[proto::frame::QueryEntry],
    valid: &std::collections::BTreeSet<StorePath>,
    max_age: Duration,
) -> Vec<PathBuf> {
    let dir = layout.state_dir().join("partial");
    let Ok(listing) = fs::read_dir(&dir) else { return Vec::new() };
    let queried: std::collections::HashMap<String, &proto::frame::QueryEntry> =
        entries.iter().map(|e| (e.path.hash_part(), e)).collect();
    let mut removed = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        let stale = name.split_once('-').and_then(|(hash_part, nar)| {
            queried.get(hash_part).map(|e| {
                valid.contains(&e.path)
                    || !e.nar_hash.to_hex().starts_with(nar)
                    || entry.metadata().is_ok_and(|m| m.len() > e.nar_size)
            })
        });
        if old || stale == Some(true) {
            let path = entry.path();
            if fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

fn partial_len(layout: &StoreLayout, path: &StorePath, nar: &NarDigest) -> u64 {
    fs::metadata(partial_path(layout, path, nar)).map(|m| m.len().min(nar.size)).unwrap_or(0)
}

/// Reads from `inner` and appends what it read to `copy`, up to `left` bytes (the rest of the
/// declared NAR size: a partial file never grows past it).
struct Tee<R> {
    inner: R,
    copy: File,
    left: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let kept = (n as u64).min(self.left) as usize;
        self.copy.write_all(&buf[..kept])?;
        self.left -= kept as u64;
        Ok(n)
    }
}

/// Bytes held by all partial files (checked against [`AgentOptions::partial_budget`]).
fn partial_bytes(layout: &StoreLayout) -> u64 {
    let Ok(listing) = fs::read_dir(layout.state_dir().join("partial")) else { return 0 };
    listing.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
}

fn reject(path: &StorePath, reason: RejectReason, message: String) -> Frame {
    Frame::Reject { path: path.clone(), reason, message }
}

/// Receive one path's data and restore it into the session's batch; the `Reject` (or `Ack` of a
/// path valid already) to send now, or `None` when the path waits in the batch (it is answered
/// when the batch is registered). Errors end the session (the connection broke or the
/// coordinator broke the protocol).
fn receive_path<R: Read, W: Write>(
    s: &mut Session<R, W>,
    store: &mut Store,
    acl: &Acl,
    start: &PathStart,
) -> Result<Option<Frame>, AgentError> {
    let store_dir = store.store_dir().clone();
    if matches!(start.encoding, Encoding::ZstdDelta { .. }) {
        // A delta is imported at once, after the paths waiting in the batch (its references
        // may be among them).
        s.commit_batch(store)?;
    }
    let mut data = DataReader::new(&mut s.frames);
    if let Err((reason, message)) = crate::trust::check_path(acl, &store_dir, start) {
        data.drain()?;
        return Ok(Some(reject(&start.path, reason, message)));
    }
    if let Some(accepted) = &s.accepted {
        if let Err(message) = accepted.check(start) {
            data.drain()?;
            return Ok(Some(reject(&start.path, RejectReason::Unauthorized, message)));
        }
    }
    if let Err(message) = crate::trust::check_metadata(start.ca.as_deref(), start.deriver.as_ref())
    {
        data.drain()?;
        return Ok(Some(reject(&start.path, RejectReason::CorruptData, message)));
    }
    if s.batch.contains(&start.path) {
        // Sent twice: the batch answers it once.
        data.drain()?;
        return Ok(None);
    }
    if store.is_valid(&start.path).map_err(AgentError::Store)? {
        data.drain()?;
        return Ok(Some(Frame::Ack {
            path: start.path.clone(),
            outcome: AckOutcome::AlreadyValid,
        }));
    }
    let digest = NarDigest { hash: start.nar_hash, size: start.nar_size };
    let mut info =
        PathInfo::new(start.path.clone(), digest, start.references.iter().cloned().collect());
    info.deriver = start.deriver.clone();
    info.ca = start.ca.clone();
    if !start.nix_sigs.is_empty() {
        let state_dir = s.options.layout.state_dir();
        let keys = s.nix_keys.get_or_insert_with(|| crate::trust::nix_trusted_keys(state_dir));
        info.sigs = crate::trust::trusted_nix_sigs(keys, store.store_dir(), &info, &start.nix_sigs);
    }

    if let Encoding::ZstdDelta { base } = &start.encoding {
        return receive_delta(&mut data, store, s.sink.as_mut(), &info, base, start).map(Some);
    }
    let partial = partial_path(&s.options.layout, &start.path, &digest);
    let keep_partial = start.nar_size >= s.options.partial_min
        && (start.offset > 0
            || partial_bytes(&s.options.layout).saturating_add(start.nar_size)
                <= s.options.partial_budget);
    let decoded: Box<dyn Read + '_> = match start.encoding {
        Encoding::None => Box::new(&mut data),
        // One decoder context for the whole session, reset for each path.
        Encoding::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_context(&mut data, &mut s.zstd))
        }
        Encoding::ZstdDelta { .. } => unreachable!("handled above"),
    };
    let decoded = Counted {
        inner: decoded,
        left: start.nar_size.saturating_sub(start.offset),
        received: &mut s.received,
        state: &mut s.state,
        out: &mut s.out,
    };
    let source: Box<dyn Read + '_> = if keep_partial {
        let opened = open_partial(&partial, start.offset);
        match opened {
            Ok((held, copy)) => {
                let left = start.nar_size - start.offset.min(start.nar_size);
                Box::new(held.chain(Tee { inner: decoded, copy, left }))
            }
            Err(message) => {
                drop(decoded);
                data.drain()?;
                return Ok(Some(reject(&start.path, RejectReason::CorruptData, message)));
            }
        }
    } else if start.offset != 0 {
        drop(decoded);
        data.drain()?;
        return Ok(Some(reject(
            &start.path,
            RejectReason::CorruptData,
            format!(
                "asked to resume at NAR byte {}, but no partial data is kept for this path",
                start.offset
            ),
        )));
    } else {
        Box::new(decoded)
    };
    let mut reader = BufReader::with_capacity(256 << 10, source);
    let result = match &mut s.sink {
        Some(sink) => sink.add(store, &info, &mut reader),
        None => s.batch.restore(store, &info, &mut reader),
    };
    drop(reader);
    if let Some(fatal) = data.take_fatal() {
        // The connection broke or the protocol was broken: keep the partial file for resume.
        return Err(fatal.into());
    }
    data.drain()?;
    let abs = start.path.to_absolute(&store_dir);
    let answer = match result {
        // The daemon registered it already.
        Ok(ImportOutcome::Imported) if s.sink.is_some() => {
            Frame::Ack { path: start.path.clone(), outcome: AckOutcome::Imported }
        }
        Ok(ImportOutcome::Imported) => {
            if keep_partial {
                s.batch_partials.push(partial);
            }
            s.batch_started.get_or_insert_with(Instant::now);
            return Ok(None);
        }
        Ok(ImportOutcome::AlreadyValid) => {
            Frame::Ack { path: start.path.clone(), outcome: AckOutcome::AlreadyValid }
        }
        Err(e @ StoreError::ReferenceNotValid { .. }) => {
            // Nothing of this path was read: a partial file made now is empty or unchanged.
            return Ok(Some(refusal(start, e, &abs)));
        }
        Err(e @ (StoreError::HashMismatch { .. } | StoreError::Restore { .. }))
            if start.offset > 0 =>
        {
            // The bytes held are not trusted: the coordinator sends the path again in full.
            reject(
                &start.path,
                RejectReason::DeltaFailed,
                format!("resuming at NAR byte {} failed, send it in full: {e}", start.offset),
            )
        }
        Err(e) => refusal(start, e, &abs),
    };
    if keep_partial {
        let _ = fs::remove_file(&partial);
    }
    Ok(Some(answer))
}

fn ack_outcome(outcome: ImportOutcome) -> AckOutcome {
    match outcome {
        ImportOutcome::Imported => AckOutcome::Imported,
        ImportOutcome::AlreadyValid => AckOutcome::AlreadyValid,
    }
}

/// The `Reject` for a path the store refused (`abs`: the path, for messages).
fn refusal(start: &PathStart, error: StoreError, abs: &str) -> Frame {
    let path = &start.path;
    match error {
        e @ StoreError::HashMismatch { .. } => {
            reject(path, RejectReason::HashMismatch, e.to_string())
        }
        e @ StoreError::ReferenceNotValid { .. } => {
            reject(path, RejectReason::MissingReference, e.to_string())
        }
        e @ StoreError::Restore { .. } => {
            reject(path, RejectReason::CorruptData, format!("{e} (while receiving {abs})"))
        }
        e => reject(path, RejectReason::Store, e.to_string()),
    }
}

/// Receive a path sent as a delta ([`crate::delta::bases::apply`]), imported at once (the batch
/// was registered first, so its references are valid), or handed to Nix; no partial file is
/// kept.
fn receive_delta<R: Read>(
    data: &mut DataReader<'_, R>,
    store: &mut Store,
    sink: Option<&mut daemon::Sink>,
    info: &PathInfo,
    base: &StorePath,
    start: &PathStart,
) -> Result<Frame, AgentError> {
    if start.offset != 0 {
        data.drain()?;
        let message = format!("a delta cannot resume (offset {})", start.offset);
        return Ok(reject(&start.path, RejectReason::DeltaFailed, message));
    }
    let result = match sink {
        Some(sink) => crate::delta::bases::prepare(store, info, base).and_then(|verified| {
            let name = base.to_absolute(store.store_dir());
            let import = |r: &mut dyn io::BufRead| sink.add_checked(info, r);
            crate::delta::bases::apply_verified(&verified, &name, info, data, import)
        }),
        None => crate::delta::bases::apply(store, info, base, data),
    };
    if let Some(fatal) = data.take_fatal() {
        return Err(fatal.into());
    }
    data.drain()?;
    let abs = start.path.to_absolute(store.store_dir());
    Ok(match result {
        Ok(outcome) => Frame::Ack { path: start.path.clone(), outcome: ack_outcome(outcome) },
        Err(crate::delta::bases::ApplyError::Store(e)) => refusal(start, e, &abs),
        Err(crate::delta::bases::ApplyError::Delta(message)) => {
            reject(&start.path, RejectReason::DeltaFailed, format!("{abs}: {message}"))
        }
    })
}

/// Open the partial file of a path for a transfer starting at NAR byte `offset`: the bytes
/// held (to read first) and the file positioned for appending what arrives.
fn open_partial(partial: &Path, offset: u64) -> Result<(io::Take<File>, File), String> {
    if let Some(dir) = partial.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(partial)
        .map_err(|e| format!("cannot open {}: {e}", partial.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < offset {
        return Err(format!(
            "asked to resume at NAR byte {offset}, but only {len} bytes are kept in {}",
            partial.display()
        ));
    }
    file.set_len(offset).map_err(|e| e.to_string())?;
    // A second open file description: its own offset, from the start.
    let held =
        File::open(partial).map_err(|e| format!("cannot open {}: {e}", partial.display()))?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    Ok((held.take(offset), file))
}

#[cfg(test)]
mod tests;
