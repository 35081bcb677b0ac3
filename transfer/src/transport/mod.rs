//! Byte streams to an agent, over one trait.
//!
//! A [`Transport`] opens a [`Connection`]: a reader and a writer speaking the ferry protocol,
//! and an [`AgentHandle`] to wait for the agent and collect what it printed on stderr, which
//! errors quote. The transports:
//!
//! | module | what |
//! |---|---|
//! | `local` | [`LocalTransport`]: `ferry serve` under a root on this machine, as a subprocess |
//! | `in_process` | [`InProcessTransport`]: an agent on a thread of this process, over a socket pair (`ferry copy --from local://`, tests; made by [`crate::agent::AgentOptions::in_process`]) |
//! | [`ssh`] | [`ssh::SshTransport`]: the agent on an exec channel of a russh session, uploaded when missing |
//!
//! This module knows no agent: the in-process transport runs whatever serve function it is
//! given, so the agent (which pushes back on a pull) can depend on transports, not the reverse.

mod in_process;
mod local;
pub mod ssh;

pub use in_process::InProcessTransport;
pub use local::LocalTransport;

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Why a connection could not be opened or the agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("cannot start the agent {command}: {error}")]
    Spawn { command: String, error: io::Error },
    #[error("the agent on {host} failed ({status}){}", stderr_note(":\n", .stderr))]
    AgentFailed { host: String, status: String, stderr: String },
    /// The agent must run under `sudo -n` and the host's sudo does not allow it.
    #[error(
        "{host}: the agent must run as root through `sudo -n`, which needs password-less sudo \
         for user {user} on that host ({detail}); allow it there (e.g. `{user} ALL=(root) \
         NOPASSWD: ALL` in /etc/sudoers.d/), log in as root, or use a store the user owns \
         (`?root=DIR&sudo=0`)"
    )]
    SudoRefused { host: String, user: String, detail: String },
    #[error("{0}")]
    Other(String),
}

/// `prefix` and the trimmed `stderr` of a remote program, or nothing when it printed nothing:
/// how every transfer error quotes what the other side said. The peer's text is data: its last
/// [`STDERR_SHOWN`] bytes are kept, control characters escaped ([`proto::text::peer_text`]).
pub(crate) fn stderr_note(prefix: &str, stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        return String::new();
    }
    let mut cut = t.len().saturating_sub(STDERR_SHOWN);
    while !t.is_char_boundary(cut) {
        cut += 1;
    }
    let shown = proto::text::peer_text(&t[cut..], STDERR_SHOWN);
    if cut > 0 {
        format!("{prefix}({cut} earlier bytes not shown) {shown}")
    } else {
        format!("{prefix}{shown}")
    }
}

/// How much of a peer's stderr an error quotes (its end).
pub(crate) const STDERR_SHOWN: usize = 8 << 10;

/// How push and pull errors introduce the agent's stderr.
pub(crate) const AGENT_SAID: &str = "\nthe agent said:\n";

/// The running agent behind a connection.
pub trait AgentHandle: Send + fmt::Debug {
    /// Wait for the agent to end; an error when it failed.
    fn wait(&mut self) -> Result<(), TransportError>;
    /// What the agent printed on stderr so far (the last 64 KiB).
    fn stderr(&self) -> String;
    /// Stop the agent now.
    fn kill(&mut self);
}

/// A byte stream to an agent.
pub struct Connection {
    /// Frames from the agent.
    pub reader: Box<dyn Read + Send>,
    /// Frames to the agent.
    pub writer: Box<dyn Write + Send>,
    /// The agent.
    pub agent: Box<dyn AgentHandle>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("agent", &self.agent).finish_non_exhaustive()
    }
}

/// A way to reach an agent.
pub trait Transport: Send + Sync + fmt::Debug {
    /// For messages: `local:///tmp/host1`, `ssh://root@web1:22`.
    fn describe(&self) -> String;
    /// Start an agent and connect to it.
    fn connect(&self) -> Result<Connection, TransportError>;
    /// Make sure the agent program is there before [`Transport::connect`], reporting an
    /// upload to `progress` ([`crate::push::ProgressEvent::AgentUpload`]); nothing to do
    /// unless the agent may have to be uploaded (SSH).
    fn prepare(&self, _progress: &dyn crate::push::Progress) -> Result<(), TransportError> {
        Ok(())
    }
}

/// Keeps the last bytes a stream printed.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    const MAX: usize = 64 << 10;

    /// Collect `stream` on a thread until it ends.
    pub fn collect(stream: impl Read + Send + 'static) -> (Self, JoinHandle<()>) {
        let tail = StderrTail::default();
        let t = tail.clone();
        let handle = std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                t.push(&buf[..n]);
            }
        });
        (tail, handle)
    }

    /// Append bytes.
    pub fn push(&self, bytes: &[u8]) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.extend_from_slice(bytes);
        if v.len() > Self::MAX {
            let cut = v.len() - Self::MAX;
            v.drain(..cut);
        }
    }

    /// The text so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}
