//! Pull: copy closures from an agent's store into the local one (`ferry copy --from`).
//!
//! The protocol's pull (see [`proto::peer`], "Pull") swaps the roles on one stream: after
//! the handshake the local side sends `SendClosure{roots}`; the agent then pushes the roots'
//! closure from its store with [`crate::push`]'s session, signed with its host's key, and the
//! local side serves that push with [`crate::agent::serve_as`] on the local store. So everything
//! a host checks on push is checked here on the local side, by the same code: the
//! one-round-trip diff against the local store, each path's signature against the local ACL
//! (`<state>/acl`: the sending host's key must be in it), the NAR hash and size while
//! restoring, and batched, crash-safe registration.
//!
//! The host is trusted for no more than its signatures: the local side serves it as
//! [`Role::Puller`], so the host cannot change the local ACL (`Authorize` is a protocol error
//! naming the host), ask for the local store, or land a path outside the closure of the roots
//! asked for; each wait for it has a deadline ([`crate::deadline`], [`AgentOptions::deadlines`]);
//! and the pull fails unless every root is valid locally at the end (refusals in the summary,
//! or [`PullError::RootsMissing`] when the host sent nothing that explains it).
//!
//! [`pull_closure`] is the local half; the agent's half is in [`crate::agent`] (it pushes with
//! [`crate::push`]'s session), so this module needs only the agent and the transport.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nar_core::store_path::StorePath;

use crate::agent::{AgentError, AgentOptions, Role, ServeSummary};
use crate::deadline::{DeadlineReader, DeadlineWriter, Watch};
use crate::transport::{AgentHandle, Connection, Transport, TransportError};
use proto::frame::{Frame, Hello, ProtocolError};
use proto::io::{FrameReader, FrameWriter, FramedError};
use proto::peer::CoordinatorState;

/// What a pull did.
#[derive(Debug, Clone, Default)]
pub struct PullSummary {
    /// The transport's description.
    pub host: String,
    /// Paths registered locally, and paths refused with the reasons.
    pub serve: ServeSummary,
    /// Bytes read from the connection.
    pub wire_bytes_received: u64,
    /// Bytes written to the connection.
    pub wire_bytes_sent: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: {error}{}", crate::transport::stderr_note(crate::transport::AGENT_SAID, .stderr))]
    Handshake { host: String, error: Box<FramedError>, stderr: String },
    #[error(
        "{host} keeps its store in {theirs}, this store is in {ours}: store paths differ between \
         them (choose the host's store dir with ?store-dir=)"
    )]
    StoreDirMismatch { host: String, ours: String, theirs: String },
    #[error(
        "the agent on {host} (ferry {version}) cannot send paths (no `send` feature); install \
         this ferry version there"
    )]
    NoSendFeature { host: String, version: String },
    #[error("{host}: receiving: {error}{}", crate::transport::stderr_note(crate::transport::AGENT_SAID, .stderr))]
    Receive { host: String, error: Box<AgentError>, stderr: String },
    #[error(
        "{host}: the pull ended without {missing}, and the host sent nothing that was refused"
    )]
    RootsMissing { host: String, missing: String },
    #[error("cannot check the local store after the pull: {0}")]
    Store(#[from] store::StoreError),
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Pull the closures of `roots` from the agent behind `transport` into the store of `local`
/// (opened for writing for the session). Paths the local store refuses are listed in the
/// summary; the session goes on without them, as on push. A pull that ends with a root not
/// valid locally is a failure: refused paths in the summary, or [`PullError::RootsMissing`]
/// when nothing was refused.
pub fn pull_closure(
    transport: &dyn Transport,
    roots: &[StorePath],
    local: AgentOptions,
) -> Result<PullSummary, PullError> {
    let host = transport.describe();
    let started = Instant::now();
    let Connection { reader, writer, agent } = transport.connect()?;
    // A deadline kills the connection (unblocking a write to a host that stopped reading).
    let agent: Arc<std::sync::Mutex<Box<dyn AgentHandle>>> = Arc::new(std::sync::Mutex::new(agent));
    let killer = agent.clone();
    let watch = Watch::start(local.deadlines, "while waiting for Welcome", move || {
        killer.lock().unwrap_or_else(|p| p.into_inner()).kill()
    });
    let reader = DeadlineReader::new(reader, watch.clone());
    let writer = DeadlineWriter::new(writer, watch.clone());
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut frames = FrameReader::new(Counted { inner: reader, count: received.clone() });
    let mut out = FrameWriter::new(writer, sent.clone());
    let mut state = CoordinatorState::new();
    let ours = local.layout.store_dir().as_str().to_owned();
    let handshake = (|| -> Result<(), PullError> {
        let fail = |error: FramedError| PullError::Handshake {
            host: host.clone(),
            error: Box::new(error),
            stderr: String::new(),
        };
        let hello = Frame::Hello(Hello::ours());
        state.on_send(&hello).map_err(|e| fail(e.into()))?;
        out.send(&hello).and_then(|()| out.flush()).map_err(|e| fail(e.into()))?;
        let welcome = match frames.read_frame().map_err(fail)? {
            Some(f) => f,
            None => {
                return Err(fail(ProtocolError::Eof { state: "before Welcome" }.into()));
            }
        };
        state.on_receive(&welcome).map_err(|e| fail(e.into()))?;
        let Frame::Welcome(welcome) = welcome else { unreachable!("checked by the state machine") };
        if welcome.store_dir != ours {
            return Err(PullError::StoreDirMismatch {
                host: host.clone(),
                ours: ours.clone(),
                theirs: welcome.store_dir,
            });
        }
        if !welcome.features.iter().any(|f| f == proto::frame::FEATURE_SEND) {
            return Err(PullError::NoSendFeature {
                host: host.clone(),
                version: welcome.ferry_version,
            });
        }
        let ask = Frame::SendClosure { roots: roots.to_vec() };
        state.on_send(&ask).map_err(|e| fail(e.into()))?;
        out.send(&ask).and_then(|()| out.flush()).map_err(|e| fail(e.into()))
    })();
    let stderr_of = |agent: &mut Box<dyn crate::transport::AgentHandle>| match agent.wait() {
        Ok(()) => agent.stderr(),
        Err(TransportError::AgentFailed { stderr, .. }) => stderr,
        Err(other) => other.to_string(),
    };
    if let Err(e) = handshake {
        let expired = watch.close();
        let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
        if expired {
            agent.kill();
        }
        drop(frames);
        drop(out);
        let stderr = stderr_of(&mut agent);
        return Err(match e {
            PullError::Handshake { host, error, .. } => {
                PullError::Handshake { host, error, stderr }
            }
            other => other,
        });
    }
    // The agent sends nothing between `Welcome` and its `Hello`, which comes after our
    // `SendClosure`: nothing is buffered, and the stream goes to the local agent as it is.
    if frames.decoder_mut().buffered() != 0 {
        let expired = watch.close();
        let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
        if expired {
            agent.kill();
        }
        drop(frames);
        drop(out);
        let stderr = stderr_of(&mut agent);
        let error = ProtocolError::Unexpected { frame: "data", state: "before the agent's Hello" };
        return Err(PullError::Handshake { host, error: Box::new(error.into()), stderr });
    }
    let reader = frames.into_inner();
    let layout = local.layout.clone();
    let role = Role::Puller { roots: roots.to_vec(), watch: watch.clone() };
    let served = crate::agent::serve_as(local, reader, out.into_inner(), role);
    let expired = watch.close();
    let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
    if expired {
        agent.kill();
    }
    match served {
        Ok(serve) => {
            agent.wait()?;
            check_roots(&layout, roots, &host, &serve)?;
            Ok(PullSummary {
                host,
                serve,
                wire_bytes_received: received.load(Ordering::Relaxed),
                wire_bytes_sent: sent.load(Ordering::Relaxed),
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        Err(error) => {
            let stderr = stderr_of(&mut agent);
            Err(PullError::Receive { host, error: Box::new(error), stderr })
        }
    }
}

/// Every root asked for must be valid locally once the session is over: when some are not and
/// no path was refused, the host did not send them ([`PullError::RootsMissing`]); when paths
/// were refused, the summary's refusals say why and make the pull a failure for its callers
/// (as on push).
fn check_roots(
    layout: &store::StoreLayout,
    roots: &[StorePath],
    host: &str,
    serve: &ServeSummary,
) -> Result<(), PullError> {
    if serve.rejected > 0 {
        return Ok(());
    }
    let store = store::Store::open_read_only(layout.clone())?;
    let valid = store.query_valid(roots.iter())?;
    let missing: Vec<String> = roots
        .iter()
        .filter(|r| !valid.contains(*r))
        .map(|r| r.to_absolute(layout.store_dir()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PullError::RootsMissing { host: host.to_owned(), missing: missing.join(", ") })
}
