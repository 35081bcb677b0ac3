//! Byte streams to an agent, over one trait: a local subprocess (`ferry serve` under a root on
//! this machine), in-process (the agent on a thread, for tests), and SSH
//! (crate::ssh_transport, an exec channel on a russh session).
//!
//! A [`Transport`] opens a [`Connection`]: a reader and a writer speaking the ferry protocol,
//! and an [`AgentHandle`] to wait for the agent and collect what it printed on stderr, which
//! errors quote.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::agent::{AgentOptions, ServeSummary};

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
/// how every transfer error quotes what the other side said.
pub(crate) fn stderr_note(prefix: &str, stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!("{prefix}{t}")
    }
}

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

/// `ferry serve` as a subprocess of this machine (`local:///ROOT`).
#[derive(Debug, Clone)]
pub struct LocalTransport {
    /// The ferry executable to run (normally the current one).
    pub program: PathBuf,
    /// The host store's root.
    pub root: PathBuf,
    /// Its logical store dir, when not the default.
    pub store_dir: Option<String>,
    /// Its state dir, when not the default.
    pub state_dir: Option<PathBuf>,
    /// Extra environment for the agent.
    pub env: Vec<(String, String)>,
}

impl LocalTransport {
    /// The current executable serving the store under `root`.
    pub fn new(root: PathBuf) -> io::Result<Self> {
        Ok(LocalTransport {
            program: std::env::current_exe()?,
            root,
            store_dir: None,
            state_dir: None,
            env: Vec::new(),
        })
    }

    /// `PROGRAM --root R [--store-dir D] [--state-dir S] ARGS...` with `env`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--root").arg(&self.root);
        if let Some(d) = &self.store_dir {
            c.arg("--store-dir").arg(d);
        }
        if let Some(d) = &self.state_dir {
            c.arg("--state-dir").arg(d);
        }
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

#[derive(Debug)]
struct ChildAgent {
    child: Child,
    stderr: StderrTail,
    stderr_thread: Option<JoinHandle<()>>,
    host: String,
}

impl AgentHandle for ChildAgent {
    fn wait(&mut self) -> Result<(), TransportError> {
        let status = self
            .child
            .wait()
            .map_err(|e| TransportError::Other(format!("waiting for the agent: {e}")))?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        if status.success() {
            Ok(())
        } else {
            Err(TransportError::AgentFailed {
                host: self.host.clone(),
                status: status.to_string(),
                stderr: self.stderr.text(),
            })
        }
    }
    fn stderr(&self) -> String {
        self.stderr.text()
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

impl Transport for LocalTransport {
    fn describe(&self) -> String {
        format!("local://{}", self.root.display())
    }

    fn connect(&self) -> Result<Connection, TransportError> {
        self.connect_ferry(&["serve"])
    }
}

impl LocalTransport {
    /// Start `PROGRAM ARGS...` for this root as the agent is started, and connect to its stdin
    /// and stdout: [`Transport::connect`] is this with `serve`. The handle waits for its exit.
    pub fn connect_ferry(&self, args: &[&str]) -> Result<Connection, TransportError> {
        let mut command = self.command(args);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|error| TransportError::Spawn {
            command: format!("{:?}", self.command(args)),
            error,
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (stderr, stderr_thread) = StderrTail::collect(child.stderr.take().expect("piped"));
        Ok(Connection {
            reader: Box::new(stdout),
            writer: Box::new(stdin),
            agent: Box::new(ChildAgent {
                child,
                stderr,
                stderr_thread: Some(stderr_thread),
                host: self.describe(),
            }),
        })
    }
}

/// The agent on a thread of this process, over a socket pair (unit tests).
#[derive(Debug, Clone)]
pub struct InProcessTransport {
    /// The agent's store and settings.
    pub options: AgentOptions,
}

#[derive(Debug)]
struct ThreadAgent {
    thread: Option<JoinHandle<Result<ServeSummary, String>>>,
    error: Arc<Mutex<String>>,
    socket: UnixStream,
}

impl AgentHandle for ThreadAgent {
    fn wait(&mut self) -> Result<(), TransportError> {
        let Some(t) = self.thread.take() else { return Ok(()) };
        match t.join() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = e.clone();
                Err(TransportError::AgentFailed {
                    host: "in-process".into(),
                    status: "error".into(),
                    stderr: e,
                })
            }
            Err(_) => Err(TransportError::Other("the in-process agent panicked".into())),
        }
    }
    fn stderr(&self) -> String {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn kill(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Transport for InProcessTransport {
    fn describe(&self) -> String {
        format!("in-process://{}", self.options.layout.root().display())
    }

    fn connect(&self) -> Result<Connection, TransportError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| TransportError::Other(format!("socketpair: {e}")))?;
        let options = self.options.clone();
        let agent_in = theirs.try_clone().map_err(|e| TransportError::Other(e.to_string()))?;
        let kill_handle = theirs.try_clone().map_err(|e| TransportError::Other(e.to_string()))?;
        let thread = std::thread::spawn(move || {
            let result = crate::agent::serve(options, agent_in, &theirs).map_err(|e| e.to_string());
            let _ = theirs.shutdown(std::net::Shutdown::Both);
            result
        });
        let reader = ours.try_clone().map_err(|e| TransportError::Other(e.to_string()))?;
        Ok(Connection {
            reader: Box::new(reader),
            writer: Box::new(HalfCloseOnDrop(ours)),
            agent: Box::new(ThreadAgent {
                thread: Some(thread),
                error: Arc::default(),
                socket: kill_handle,
            }),
        })
    }
}

/// Shuts down the write half when dropped, so the peer sees end of stream even while a clone
/// of the socket is still reading.
#[derive(Debug)]
struct HalfCloseOnDrop(UnixStream);

impl Write for HalfCloseOnDrop {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for HalfCloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}
