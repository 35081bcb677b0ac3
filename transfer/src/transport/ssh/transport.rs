//! [`SshTransport`]: the agent over an exec channel of a [`crate::transport::ssh::SshSession`] (russh), with
//! agent bootstrap.
//!
//! One SSH session per host is opened on first use and reused for every channel (the probe, the
//! upload, each agent session). Before the first agent starts, the bootstrap (see
//! `bootstrap`) finds the agent program on the host, checked by the host's SHA-256 program, or
//! uploads it compressed to `~/.cache/ferry/agent/ferry-<version>-<sha256>` (resumed when an
//! earlier upload was cut); [`SshTransport::prepare_agent`] does it with progress, or only
//! finds out for a dry run. The first agent of a transport is started by the probe itself when
//! the host has the program (one exec for both): [`Transport::prepare`] starts `ferry serve`
//! so and keeps it for the [`Transport::connect`] that follows (an agent kept for other
//! arguments is given up). Nothing needs to be installed on a host but sshd.
//!
//! The agent runs as `[sudo -n --] FERRY [--root R] [--store-dir D] [--state-dir S] serve`;
//! `sudo -n` is added when the remote user is not root and the target is the host's own store
//! (no `root=` parameter), since only root may write it, or when `sudo=1` asks for it
//! ([`StoreParams::use_sudo`]). The agent program stays the login user's (found on `PATH` or
//! uploaded to its `~/.cache/ferry/agent`); only the agent runs as root. When sudo will be used, the
//! same probe runs `sudo -n true` and reports `sudo ok`, `sudo missing` or `sudo refused MSG`,
//! so a host where the user may not use sudo without a password fails at once with
//! [`TransportError::SudoRefused`] instead of an agent that never answers.
//!
//! The blocking [`crate::transport::Connection`] halves drive the async channel through a
//! tokio runtime owned by the transport.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use super::bootstrap::{AgentProgram, AgentSource, Run};
use super::{
    RemoteExit, RemoteProcess, RemoteStatus, RemoteStdin, RemoteStdout, SshConfig, SshSession,
};
use crate::transport::{AgentHandle, Connection, Transport, TransportError};
use proto::uri::StoreParams;

/// The ferry agent over SSH.
pub struct SshTransport {
    pub(super) config: SshConfig,
    pub(super) store: StoreParams,
    runtime: Arc<Runtime>,
    session: tokio::sync::Mutex<Option<Arc<SshSession>>>,
    pub(super) program: Mutex<Option<AgentProgram>>,
    /// The agent [`Transport::prepare`] started with its probe, and its arguments, for the
    /// [`Transport::connect`] that follows.
    started: Mutex<Option<(Vec<String>, RemoteProcess)>>,
    /// Which program runs as the agent (this executable by default).
    pub agent: AgentSource,
}

impl fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshTransport")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

pub(super) fn other(e: impl fmt::Display) -> TransportError {
    TransportError::Other(e.to_string())
}

impl SshTransport {
    /// A transport to `config`'s host and the store chosen by `store`.
    pub fn new(config: SshConfig, store: StoreParams) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-ssh")
            .enable_all()
            .build()?;
        Ok(SshTransport {
            config,
            store,
            runtime: Arc::new(runtime),
            session: tokio::sync::Mutex::new(None),
            program: Mutex::new(None),
            started: Mutex::new(None),
            agent: AgentSource::default(),
        })
    }

    /// Whether the agent was uploaded by this transport (after the first connection).
    pub fn uploaded_agent(&self) -> Option<bool> {
        self.program.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|p| p.uploaded)
    }

    /// The runtime the session's tasks run on (for callers driving other protocols over it,
    /// such as `nix-store --serve`).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The host's session, connected on first use and reused.
    pub async fn session(&self) -> Result<Arc<SshSession>, TransportError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let preload = self.preload_agent();
        let connected = SshSession::connect(&self.config).await;
        if let Some(preload) = preload {
            let _ = preload.await;
        }
        let s = Arc::new(connected.map_err(other)?);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Run `ferry ARGS...` on the host with the agent's program (found or uploaded as for the
    /// agent, with the same store options and `sudo -n` when the agent would get it), on this
    /// transport's session: write `stdin` to it and close it, hand each stdout line (without
    /// its newline) to `line` as it comes, and return how it ended with its stderr. `line` is
    /// called outside the runtime, so it may block or use this transport again.
    pub fn run_ferry(
        &self,
        args: &[String],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> Result<RemoteRun, TransportError> {
        let session = self.runtime.block_on(self.session())?;
        self.run_ferry_on(&session, args, stdin, line)
    }

    /// Run `sh -c SCRIPT sh ARGS...` on the host as the login user with `stdin`, on this
    /// transport's session (no agent involved: the sh-only probes of a dry run); its stdout,
    /// or an error with its stderr when it fails.
    pub fn run_sh(
        &self,
        script: &str,
        args: &[String],
        stdin: &[u8],
    ) -> Result<String, TransportError> {
        self.runtime.block_on(async {
            let session = self.session().await?;
            let mut argv = vec!["sh", "-c", script, "sh"];
            argv.extend(args.iter().map(String::as_str));
            let (mut input, mut output, exit) = session.exec(&argv).await.map_err(other)?.split();
            let _ = async {
                input.write_all(stdin).await?;
                input.shutdown().await
            }
            .await;
            let mut out = Vec::new();
            let read = output.read_to_end(&mut out).await;
            exit.wait_checked().await.map_err(other)?;
            read.map_err(|e| other(format!("{}: reading output: {e}", self.describe())))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
    }

    /// [`SshTransport::run_ferry`] over a new SSH connection of its own, closed afterwards: for
    /// messages that must not depend on the connection carrying another command (a deploy's
    /// confirmation proves the host is still reachable).
    pub fn run_ferry_on_new_connection(
        &self,
        args: &[String],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> Result<RemoteRun, TransportError> {
        let session = self.runtime.block_on(SshSession::connect(&self.config)).map_err(other)?;
        let result = self.run_ferry_on(&session, args, stdin, line);
        self.runtime.block_on(session.close());
        result
    }

    fn run_ferry_on(
        &self,
        session: &SshSession,
        args: &[String],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> Result<RemoteRun, TransportError> {
        let rt = self.runtime.handle().clone();
        let (mut input, output, exit) = rt.block_on(self.start_agent(session, args))?.split();
        // A command that does not read its input may end first: that is not an error here.
        let _ = rt.block_on(async {
            input.write_all(stdin).await?;
            input.shutdown().await
        });
        let mut reader = io::BufReader::new(BlockingReader { inner: output, rt: rt.clone() });
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match io::BufRead::read_until(&mut reader, b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    line(&String::from_utf8_lossy(&buf));
                }
                Err(e) => return Err(other(format!("{}: reading output: {e}", self.describe()))),
            }
        }
        let (status, stderr) = rt.block_on(exit.wait_with_stderr()).map_err(other)?;
        Ok(RemoteRun { status, stderr })
    }
}

/// How a command run by [`SshTransport::run_ferry`] ended.
#[derive(Debug, Clone)]
pub struct RemoteRun {
    /// Its exit status.
    pub status: RemoteStatus,
    /// Its stderr (the tail).
    pub stderr: String,
}

impl Transport for SshTransport {
    fn describe(&self) -> String {
        format!("ssh://{}@{}", self.config.user, self.config.target())
    }

    fn connect(&self) -> Result<Connection, TransportError> {
        self.connect_ferry(&["serve".to_owned()])
    }

    /// The bootstrap, whose probe also starts `ferry serve` when the host has the agent (kept
    /// for the [`Transport::connect`] that follows: one exec in all).
    fn prepare(&self, progress: &dyn crate::push::Progress) -> Result<(), TransportError> {
        let args = vec!["serve".to_owned()];
        self.runtime.block_on(async {
            let session = self.session().await?;
            let (_, started) = self.ensure_agent(&session, Run::Start(&args), progress).await?;
            if let Some(process) = started {
                *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some((args, process));
            }
            Ok(())
        })
    }
}

impl SshTransport {
    /// Start `ferry ARGS...` on the host as the agent is started (its program, store options
    /// and `sudo -n`), on this transport's session, and connect to its stdin and stdout:
    /// [`Transport::connect`] is this with `serve`. The handle waits for the command's exit.
    pub fn connect_ferry(&self, args: &[String]) -> Result<Connection, TransportError> {
        // The agent `prepare` started, when it is this command (another is given up).
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner()).take();
        let process = match started {
            Some((started_args, process)) if started_args == args => process,
            _ => self.runtime.block_on(async {
                let session = self.session().await?;
                self.start_agent(&session, args).await
            })?,
        };
        let (stdin, stdout, exit) = process.split();
        let handle = self.runtime.handle().clone();
        Ok(Connection {
            reader: Box::new(BlockingReader { inner: stdout, rt: handle.clone() }),
            writer: Box::new(BlockingWriter { inner: Some(stdin), rt: handle.clone() }),
            agent: Box::new(SshAgent {
                exit: Some(exit),
                rt: handle,
                host: self.describe(),
                stderr: String::new(),
            }),
        })
    }
}

struct BlockingReader {
    inner: RemoteStdout,
    rt: tokio::runtime::Handle,
}

impl Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rt.block_on(self.inner.read(buf))
    }
}

struct BlockingWriter {
    inner: Option<RemoteStdin>,
    rt: tokio::runtime::Handle,
}

impl Write for BlockingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner =
            self.inner.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.rt.block_on(inner.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(inner) => self.rt.block_on(inner.flush()),
            None => Ok(()),
        }
    }
}

impl Drop for BlockingWriter {
    fn drop(&mut self) {
        // End of stream for the agent.
        if let Some(mut inner) = self.inner.take() {
            let _ = self.rt.block_on(inner.shutdown());
        }
    }
}

struct SshAgent {
    exit: Option<RemoteExit>,
    rt: tokio::runtime::Handle,
    host: String,
    stderr: String,
}

impl fmt::Debug for SshAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshAgent").field("host", &self.host).finish_non_exhaustive()
    }
}

impl AgentHandle for SshAgent {
    fn wait(&mut self) -> Result<(), TransportError> {
        let Some(exit) = self.exit.take() else { return Ok(()) };
        self.stderr = exit.stderr();
        match self.rt.block_on(exit.wait()) {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(TransportError::AgentFailed {
                host: self.host.clone(),
                status: status.to_string(),
                stderr: self.stderr.clone(),
            }),
            Err(e) => Err(TransportError::AgentFailed {
                host: self.host.clone(),
                status: e.to_string(),
                stderr: self.stderr.clone(),
            }),
        }
    }
    fn stderr(&self) -> String {
        match &self.exit {
            Some(exit) => exit.stderr(),
            None => self.stderr.clone(),
        }
    }
    fn kill(&mut self) {
        self.exit = None;
    }
}
