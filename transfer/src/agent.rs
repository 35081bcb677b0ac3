//! The host agent (`ferry serve`): the ferry protocol on a byte stream (stdin/stdout on a
//! host), importing verified paths into the store.
//!
//! For each `PathStart` the agent:
//! 1. checks the signature against `<state>/acl` ([`crate::trust::check_path`]); a path that is
//!    unsigned, badly signed or signed by an unauthorized key is rejected and its data skipped;
//! 2. decodes the data (zstd) and restores the NAR into a temp dir in the store while hashing
//!    it ([`closure::Store::import_nar`]); the hash and size must match, the references must be
//!    valid, and the path is registered in one transaction;
//! 3. answers `Ack`, or `Reject` with the reason, and goes on with the next path.
//!
//! **Deltas.** When the coordinator speaks `delta`, `Have` names base candidates for the missing
//! paths, and a path sent as a delta is applied against the base's NAR rebuilt from this store
//! ([`crate::delta_path`]); any failure of the delta is a `Reject` with `delta-failed`.
//!
//! **Resume.** A path of at least [`AgentOptions::partial_min`] NAR bytes is also written, as
//! its NAR arrives, to `<state>/partial/<path hash part>-<NAR hash hex>`. If the session breaks,
//! the file stays; the next `Query` answers that path with `resume_from` = the bytes held, and
//! the coordinator sends the NAR from there on. The restore then reads the held bytes followed
//! by the new ones, so the whole NAR is hashed and checked as usual. The file is removed once
//! the path is valid or was rejected for its contents.
//!
//! **Locking.** The store is opened for writing ([`closure::Store::open`]), which holds the
//! store's writer lock for the session; concurrent sessions are serialized per path by the
//! database's write transaction.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use closure::{ImportOutcome, PathInfo, Store, StoreError, StoreLayout};
use nar_core::hash::NarDigest;
use nar_core::store_path::StorePath;
use signing::acl::Acl;

use crate::framed::{DataReader, FrameReader, FrameWriter, FramedError};
use crate::protocol::{
    AckOutcome, AgentState, Encoding, Frame, MissingEntry, PathStart, ProtocolError, RejectReason,
    Welcome, FEATURES, FEATURE_DELTA, MIN_VERSION, VERSION,
};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The store to import into.
    pub layout: StoreLayout,
    /// Paths with at least this many NAR bytes are kept in `<state>/partial/` as they arrive.
    pub partial_min: u64,
}

impl AgentOptions {
    /// Defaults for `layout` (partial files from 1 MiB).
    pub fn new(layout: StoreLayout) -> Self {
        AgentOptions { layout, partial_min: 1 << 20 }
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
}

/// What a session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Paths registered.
    pub imported: u64,
    /// Paths refused.
    pub rejected: u64,
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
}

impl<R: Read, W: Write> Session<R, W> {
    fn send(&mut self, frame: Frame) -> Result<(), AgentError> {
        self.state.on_send(&frame)?;
        self.out.send(&frame).map_err(AgentError::Write)
    }

    fn flush(&mut self) -> Result<(), AgentError> {
        self.out.flush().map_err(AgentError::Write)
    }

    /// Tell the coordinator why the session ends, then return the error.
    fn fail(&mut self, err: AgentError) -> AgentError {
        let _ = self.out.send(&Frame::Error(err.to_string()));
        let _ = self.out.flush();
        err
    }
}

/// Serve one session on `input`/`output` (stdin/stdout under `ferry serve`).
pub fn serve<R: Read, W: Write>(
    options: AgentOptions,
    input: R,
    output: W,
) -> Result<ServeSummary, AgentError> {
    let mut s = Session {
        frames: FrameReader::new(input),
        out: FrameWriter::new(output, Arc::new(AtomicU64::new(0))),
        state: AgentState::new(),
        options,
        summary: ServeSummary::default(),
    };
    // Handshake.
    let hello = match s.frames.read_frame() {
        Ok(Some(f)) => f,
        Ok(None) => return Err(AgentError::Eof("before Hello")),
        Err(e) => return Err(s.fail(e.into())),
    };
    let negotiated = s.state.on_receive(&hello);
    let peer_delta =
        matches!(&hello, Frame::Hello(h) if h.features.iter().any(|f| f == FEATURE_DELTA));
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
    let mut store = match Store::open(layout.clone()) {
        Ok(store) => store,
        Err(e) => {
            s.send(Frame::Welcome(welcome))?;
            return Err(s.fail(AgentError::Store(e)));
        }
    };
    s.send(Frame::Welcome(welcome))?;
    s.flush()?;
    let acl_path = layout.state_dir().join("acl");
    let mut acl = match signing::keyfile::read_acl(&acl_path) {
        Ok(acl) => acl,
        Err(e) => return Err(s.fail(e.into())),
    };
    loop {
        let frame = match s.frames.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Err(AgentError::Eof("in the middle of the session")),
            Err(e) => return Err(s.fail(e.into())),
        };
        if let Err(e) = s.state.on_receive(&frame) {
            return Err(s.fail(e.into()));
        }
        match frame {
            Frame::Authorize { public_key } => {
                let added =
                    signing::Sexp::parse(&public_key).map_err(|e| e.to_string()).and_then(|key| {
                        signing::keyfile::authorize_key_in_file(&acl_path, key)
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
                let bases = if peer_delta {
                    let lacking: Vec<_> =
                        entries.iter().filter(|e| !valid.contains(&e.path)).collect();
                    // Offering no bases is always correct: a failure here only costs bytes.
                    crate::delta_path::host_candidates(&store, &lacking).unwrap_or_default()
                } else {
                    Vec::new()
                };
                s.send(Frame::Have { missing, bases })?;
                s.flush()?;
            }
            Frame::PathStart(start) => {
                let answer = receive_path(&mut s, &mut store, &acl, &start)?;
                // The data reader consumed the path's `Data` frames and its `PathEnd`.
                s.state.on_receive(&Frame::PathEnd)?;
                match &answer {
                    Frame::Ack { .. } => s.summary.imported += 1,
                    _ => s.summary.rejected += 1,
                }
                s.send(answer)?;
                s.flush()?;
            }
            Frame::Done => {
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

fn partial_len(layout: &StoreLayout, path: &StorePath, nar: &NarDigest) -> u64 {
    fs::metadata(partial_path(layout, path, nar)).map(|m| m.len().min(nar.size)).unwrap_or(0)
}

/// Reads from `inner` and appends what it read to `copy`.
struct Tee<R> {
    inner: R,
    copy: File,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn reject(path: &StorePath, reason: RejectReason, message: String) -> Frame {
    Frame::Reject { path: path.clone(), reason, message }
}

/// Receive one path's data and import it; the `Ack` or `Reject` to send. Errors end the
/// session (the connection broke or the coordinator broke the protocol).
fn receive_path<R: Read, W: Write>(
    s: &mut Session<R, W>,
    store: &mut Store,
    acl: &Acl,
    start: &PathStart,
) -> Result<Frame, AgentError> {
    let store_dir = store.store_dir().clone();
    let mut data = DataReader::new(&mut s.frames);
    if let Err((reason, message)) = crate::trust::check_path(acl, &store_dir, start) {
        data.drain()?;
        return Ok(reject(&start.path, reason, message));
    }
    if store.is_valid(&start.path).map_err(AgentError::Store)? {
        data.drain()?;
        return Ok(Frame::Ack { path: start.path.clone(), outcome: AckOutcome::AlreadyValid });
    }
    let digest = NarDigest { hash: start.nar_hash, size: start.nar_size };
    let mut info =
        PathInfo::new(start.path.clone(), digest, start.references.iter().cloned().collect());
    info.deriver = start.deriver.clone();
    info.ca = start.ca.clone();

    if let Encoding::ZstdDelta { base } = &start.encoding {
        return receive_delta(&mut data, store, &info, base, start);
    }
    let keep_partial = start.nar_size >= s.options.partial_min;
    let partial = partial_path(&s.options.layout, &start.path, &digest);
    let decoded: Box<dyn Read + '_> = match start.encoding {
        Encoding::None => Box::new(&mut data),
        Encoding::Zstd => match zstd::stream::read::Decoder::new(&mut data) {
            Ok(d) => Box::new(d),
            Err(e) => return Err(AgentError::Write(e)),
        },
        Encoding::ZstdDelta { .. } => unreachable!("handled above"),
    };
    let source: Box<dyn Read + '_> = if keep_partial {
        let opened = open_partial(&partial, start.offset);
        match opened {
            Ok((held, copy)) => Box::new(held.chain(Tee { inner: decoded, copy })),
            Err(message) => {
                drop(decoded);
                data.drain()?;
                return Ok(reject(&start.path, RejectReason::CorruptData, message));
            }
        }
    } else if start.offset != 0 {
        drop(decoded);
        data.drain()?;
        return Ok(reject(
            &start.path,
            RejectReason::CorruptData,
            format!(
                "asked to resume at NAR byte {}, but no partial data is kept for this path",
                start.offset
            ),
        ));
    } else {
        decoded
    };
    let mut reader = BufReader::with_capacity(256 << 10, source);
    let result = store.import_nar(&info, &mut reader);
    drop(reader);
    if let Some(fatal) = data.take_fatal() {
        // The connection broke or the protocol was broken: keep the partial file for resume.
        return Err(fatal.into());
    }
    data.drain()?;
    let abs = start.path.to_absolute(&store_dir);
    if let Err(StoreError::ReferenceNotValid { .. }) = &result {
        // Nothing of this path was read: a partial file made now is empty or unchanged.
        return Ok(import_answer(start, result, &abs));
    }
    let answer = import_answer(start, result, &abs);
    if keep_partial {
        let _ = fs::remove_file(&partial);
    }
    Ok(answer)
}

/// The `Ack` or `Reject` for the outcome of an import.
fn import_answer(start: &PathStart, result: Result<ImportOutcome, StoreError>, abs: &str) -> Frame {
    match result {
        Ok(ImportOutcome::Imported) => {
            Frame::Ack { path: start.path.clone(), outcome: AckOutcome::Imported }
        }
        Ok(ImportOutcome::AlreadyValid) => {
            Frame::Ack { path: start.path.clone(), outcome: AckOutcome::AlreadyValid }
        }
        Err(e @ StoreError::HashMismatch { .. }) => {
            reject(&start.path, RejectReason::HashMismatch, e.to_string())
        }
        Err(e @ StoreError::ReferenceNotValid { .. }) => {
            reject(&start.path, RejectReason::MissingReference, e.to_string())
        }
        Err(e @ StoreError::Restore { .. }) => {
            reject(&start.path, RejectReason::CorruptData, format!("{e} (while receiving {abs})"))
        }
        Err(e) => reject(&start.path, RejectReason::Store, e.to_string()),
    }
}

/// Receive a path sent as a delta ([`crate::delta_path::apply`]); no partial file is kept.
fn receive_delta<R: Read>(
    data: &mut DataReader<'_, R>,
    store: &mut Store,
    info: &PathInfo,
    base: &StorePath,
    start: &PathStart,
) -> Result<Frame, AgentError> {
    if start.offset != 0 {
        data.drain()?;
        let message = format!("a delta cannot resume (offset {})", start.offset);
        return Ok(reject(&start.path, RejectReason::DeltaFailed, message));
    }
    let result = crate::delta_path::apply(store, info, base, data);
    if let Some(fatal) = data.take_fatal() {
        return Err(fatal.into());
    }
    data.drain()?;
    let abs = start.path.to_absolute(store.store_dir());
    Ok(match result {
        Ok(outcome) => import_answer(start, Ok(outcome), &abs),
        Err(crate::delta_path::ApplyError::Store(e)) => import_answer(start, Err(e), &abs),
        Err(crate::delta_path::ApplyError::Delta(message)) => {
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
