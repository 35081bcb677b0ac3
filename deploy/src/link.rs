//! [`Link`]: how the deploy coordinator reaches one machine, the same way for both
//! environments.
//!
//! - `local`: a root on this machine. Host commands (`ferry host ...`) run as local
//!   subprocesses of the same executable with `--root ROOT` ([`LocalTransport`]).
//! - `managed-host`: SSH. One [`SshTransport`] per host: its one SSH session carries every
//!   `ferry host ...` command (run with the agent program the transport found or uploaded); a
//!   confirmation goes over a new connection of its own.
//!
//! A deploy runs one [`HostSession`] per machine (`ferry host session`): the facts, the copy
//! (the agent's protocol on the same streams, lent to `push_closure` as a [`Transport`]) and
//! the activation, one after the other in one command: one process and one channel per host
//! instead of one per step.
//!
//! Everything else (what to ask, in which order) is the deploy pipeline's, written once.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use proto::uri::StoreParams;
use transfer::push::Progress;
use transfer::transport::ssh::{
    AgentReady, SettingsSource, SshAuth, SshConfig, SshError, SshTransport,
};
use transfer::transport::{
    AgentHandle, Connection, LocalTransport, StderrTail, Transport, TransportError,
};

use crate::deployment::{Environment, Machine};
use proto::session::{ActivateRequest, Facts, FactsRequest, SessionRequest};

/// Why a host could not be reached, or a host command or session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("machine '{0}' is a managed-host without a `host-name` to connect to")]
    NoHostName(String),
    #[error("cannot find the running ferry executable")]
    NoExecutable(#[source] std::io::Error),
    /// Setting up the SSH transport (its runtime).
    #[error(transparent)]
    SshSetup(std::io::Error),
    /// The machine's SSH settings (its SSH config file) are wrong.
    #[error("machine '{machine}': {source}")]
    SshConfig { machine: String, source: Box<SshError> },
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A host key error, with what to do about it.
    #[error("{error}\n{hint}")]
    HostKey { error: String, hint: String },
    #[error("cannot run {program}")]
    Spawn { program: String, source: std::io::Error },
    #[error("reading a host command's output")]
    Output(#[source] std::io::Error),
    #[error("waiting for a host command")]
    Wait(#[source] std::io::Error),
    /// The request could not be encoded.
    #[error(transparent)]
    Request(serde_json::Error),
    #[error("ferry host {command}: {exit}")]
    HostCommand { command: String, exit: String },
    #[error("ferry host {command}: unexpected answer {answer:?}")]
    UnexpectedAnswer { command: String, answer: String, source: serde_json::Error },
    #[error("the session's input is closed")]
    SessionClosed,
    #[error("ferry host session: unexpected facts {line:?}")]
    UnexpectedFacts { line: String, source: serde_json::Error },
    /// The session broke off or failed: the host, what, and what the host said.
    #[error("{0}")]
    Session(String),
}

/// How a host command ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it printed on stderr (the tail).
    pub stderr: String,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// `exit code N: STDERR` for error messages.
    pub fn describe(&self) -> String {
        let status = match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_owned(),
        };
        let stderr = self.stderr.trim();
        let stderr = stderr.strip_prefix("ferry: error: ").unwrap_or(stderr);
        if stderr.is_empty() {
            status
        } else {
            format!("{stderr} ({status})")
        }
    }
}

/// One machine, reachable.
pub enum Link {
    Local {
        transport: LocalTransport,
    },
    Ssh {
        transport: Box<SshTransport>,
        /// What to do about a host key error, for this machine.
        host_key_hint: String,
    },
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Local { .. } => f.write_str("Link::Local"),
            Link::Ssh { .. } => f.write_str("Link::Ssh"),
        }
    }
}

/// The SSH settings of a managed host: the deployment file's, then its SSH config's.
pub fn ssh_config(m: &Machine) -> Result<SshConfig, LinkError> {
    let c = &m.configuration;
    let host = c.host_name.clone().ok_or_else(|| LinkError::NoHostName(m.name.clone()))?;
    let endpoint = proto::uri::SshEndpoint { user: c.user.clone(), host, port: c.port };
    let auth = SshAuth {
        identity: c.identity.clone(),
        host_key: c.host_key.clone(),
        known_hosts: None,
        ssh_config: c.ssh_config.clone(),
        source: SettingsSource::DeploymentFile,
    };
    SshConfig::for_endpoint(&endpoint, auth)
        .map_err(|e| LinkError::SshConfig { machine: m.name.clone(), source: Box::new(e) })
}

impl Link {
    /// Reach machine `m` (nothing is connected yet: SSH connects on first use).
    pub fn new(m: &Machine) -> Result<Link, LinkError> {
        let root = m.configuration.root.clone();
        // The deployment's store dir, when it is not the host's default.
        let store_dir = Some(m.configuration.store_dir.as_str())
            .filter(|d| *d != nar_core::store_path::StoreDir::GUIX)
            .map(str::to_owned);
        Ok(match m.environment {
            Environment::Local => {
                let mut transport =
                    LocalTransport::new(root.clone()).map_err(LinkError::NoExecutable)?;
                // The host's own state dir, whatever FERRY_STATE_DIR says for ours.
                transport.state_dir = Some(root.join("var/ferry"));
                transport.store_dir = store_dir;
                Link::Local { transport }
            }
            Environment::ManagedHost => {
                // A non-root `user` runs the host's commands with `sudo -n` for the host's own
                // store, or when `sudo = true` asks for it (StoreParams::use_sudo).
                let store = StoreParams {
                    root: (root != std::path::Path::new("/")).then_some(root),
                    sudo: m.configuration.sudo,
                    store_dir,
                    ..StoreParams::default()
                };
                let config = ssh_config(m)?;
                let host_key_hint = format!(
                    "To pin the host's key for machine '{}', check it out of band, for example \
                     with\n  {}\nand set `host-key = \"…\"` in its [machine.configuration] to a \
                     line it prints (or just its \"ssh-ed25519 AAAA…\").",
                    m.name,
                    match config.jumps.last() {
                        None => format!(
                            "ssh-keyscan -t ed25519 -p {} {}",
                            config.port,
                            transfer::transport::ssh::shell_quote(&config.host)
                        ),
                        Some(_) => config.keyscan_command(),
                    }
                );
                let mut transport =
                    SshTransport::new(config, store).map_err(LinkError::SshSetup)?;
                transport.agent = m.configuration.agent.clone();
                Link::Ssh { transport: Box::new(transport), host_key_hint }
            }
        })
    }

    /// Over SSH: find the host's agent program, or upload it reporting to `progress`; with
    /// `dry_run`, only find out (nothing changes on the host). `None` for a `local` machine.
    pub fn prepare_agent(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Option<AgentReady>, LinkError> {
        match self {
            Link::Local { .. } => Ok(None),
            Link::Ssh { transport, .. } => {
                transport.prepare_agent(dry_run, progress).map(Some).map_err(|e| self.with_hint(e))
            }
        }
    }

    /// Run `sh -c SCRIPT sh ARGS...` on the host as the login user (no agent needed), with
    /// `stdin`; its stdout, or an error with its stderr when it fails. `None` for a `local`
    /// machine.
    pub fn sh(
        &self,
        script: &str,
        args: &[String],
        stdin: &[u8],
    ) -> Result<Option<String>, LinkError> {
        match self {
            Link::Local { .. } => Ok(None),
            Link::Ssh { transport, .. } => {
                let out = transport.run_sh(script, args, stdin).map_err(|e| self.with_hint(e))?;
                Ok(Some(out))
            }
        }
    }

    /// Run `ferry host ARGS...` on the host with `stdin`; each stdout line goes to `line` as
    /// it comes.
    pub fn host(
        &self,
        args: &[&str],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> Result<Exit, LinkError> {
        self.host_on(false, args, stdin, line)
    }

    /// [`Link::host`] over a new connection (a new SSH session; for `local`, a new process as
    /// always).
    pub fn host_on_new_connection(
        &self,
        args: &[&str],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> Result<Exit, LinkError> {
        self.host_on(true, args, stdin, line)
    }

    fn host_on(
        &self,
        fresh: bool,
        args: &[&str],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> Result<Exit, LinkError> {
        let mut argv: Vec<String> = vec!["host".into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        match self {
            Link::Local { transport } => run_local(transport, &argv, stdin, line),
            Link::Ssh { transport, .. } => {
                let run = if fresh {
                    transport.run_ferry_on_new_connection(&argv, stdin, line)
                } else {
                    transport.run_ferry(&argv, stdin, line)
                };
                let run = run.map_err(|e| self.with_hint(e))?;
                Ok(Exit { code: run.status.code.map(|c| c as i32), stderr: run.stderr })
            }
        }
    }

    /// Start `ferry host session` on the host (over the host's one SSH session; for `local`, a
    /// subprocess): the facts, the copy and the activation of one deploy in one command.
    pub fn session(&self) -> Result<HostSession, LinkError> {
        let args = ["host", "session"];
        let (connection, host) = match self {
            Link::Local { transport } => (transport.connect_ferry(&args), transport.describe()),
            Link::Ssh { transport, .. } => {
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                (transport.connect_ferry(&args), transport.describe())
            }
        };
        let Connection { reader, writer, agent } = connection.map_err(|e| self.with_hint(e))?;
        Ok(HostSession {
            host,
            reader: Arc::new(Mutex::new(BufReader::new(reader))),
            writer: Arc::new(Mutex::new(Some(writer))),
            agent: Arc::new(Mutex::new(agent)),
        })
    }

    /// `e`, with what to do about a host key error (of the host: a bastion's says what to do).
    fn with_hint(&self, e: TransportError) -> LinkError {
        let text = e.to_string();
        match self {
            Link::Ssh { host_key_hint, .. }
                if text.contains(": host key: ") && !text.contains("(bastion for ") =>
            {
                LinkError::HostKey { error: e.to_string(), hint: host_key_hint.clone() }
            }
            _ => e.into(),
        }
    }

    /// Run `ferry host ARGS...` with a JSON request and read its one-line JSON answer.
    pub fn host_json<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        args: &[&str],
        request: &Q,
    ) -> Result<A, LinkError> {
        let mut out = String::new();
        let request = serde_json::to_vec(request).map_err(LinkError::Request)?;
        let exit = self.host(args, &request, &mut |l| {
            out.push_str(l);
            out.push('\n');
        })?;
        if !exit.success() {
            return Err(LinkError::HostCommand { command: args.join(" "), exit: exit.describe() });
        }
        serde_json::from_str(out.trim()).map_err(|source| LinkError::UnexpectedAnswer {
            command: args.join(" "),
            answer: out.clone(),
            source,
        })
    }
}

type SharedReader = Arc<Mutex<BufReader<Box<dyn Read + Send>>>>;
/// `None` once closed (end of the host's stdin).
type SharedWriter = Arc<Mutex<Option<Box<dyn Write + Send>>>>;

/// A running `ferry host session` (see [`proto::session`]): one request at a time.
pub struct HostSession {
    host: String,
    /// Every read goes through this one buffer: the copy's frames come after the lines.
    reader: SharedReader,
    writer: SharedWriter,
    agent: Arc<Mutex<Box<dyn AgentHandle>>>,
}

impl std::fmt::Debug for HostSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSession").field("host", &self.host).finish_non_exhaustive()
    }
}

impl HostSession {
    fn send(&self, request: &SessionRequest) -> Result<(), LinkError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = writer.as_mut().ok_or(LinkError::SessionClosed)?;
        w.write_all(request.encode().as_bytes())
            .and_then(|()| w.flush())
            .map_err(|e| self.failed(&format!("sending a request: {e}")))
    }

    /// One line of output; `None` at the end.
    fn line(&self) -> Result<Option<String>, LinkError> {
        let mut buf = Vec::new();
        let n = self
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.failed(&format!("reading its output: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    /// Why the session stopped short: `what`, and what the host printed on stderr.
    fn failed(&self, what: &str) -> LinkError {
        let stderr = self.agent.lock().unwrap_or_else(|p| p.into_inner()).stderr();
        let stderr = stderr.trim();
        let stderr = stderr.strip_prefix("ferry: error: ").unwrap_or(stderr);
        if stderr.is_empty() {
            LinkError::Session(format!("{}: ferry host session: {what}", self.host))
        } else {
            LinkError::Session(format!("{}: ferry host session: {what}: {stderr}", self.host))
        }
    }

    /// `facts`: one JSON line.
    pub fn facts(&self, request: FactsRequest) -> Result<Facts, LinkError> {
        self.send(&SessionRequest::Facts(request))?;
        match self.line()? {
            Some(line) => serde_json::from_str(&line)
                .map_err(|source| LinkError::UnexpectedFacts { line, source }),
            None => Err(self.end().err().unwrap_or_else(|| self.failed("ended without facts"))),
        }
    }

    /// `copy`: the agent on the session's streams, for `push` (`push_closure` through the
    /// transport it is given).
    pub fn copy<T>(&self, push: impl FnOnce(&dyn Transport) -> T) -> Result<T, LinkError> {
        self.send(&SessionRequest::Copy)?;
        Ok(push(&InSession {
            host: self.host.clone(),
            reader: self.reader.clone(),
            writer: self.writer.clone(),
            agent: self.agent.clone(),
        }))
    }

    /// `activate`: the session's last request; each output line goes to `line` as it comes.
    /// `Err` when the output broke off; otherwise how the session ended.
    pub fn activate(
        self,
        request: ActivateRequest,
        line: &mut dyn FnMut(&str),
    ) -> Result<Result<(), LinkError>, LinkError> {
        self.send(&SessionRequest::Activate(request))?;
        self.close_input();
        while let Some(l) = self.line()? {
            line(&l);
        }
        Ok(self.end())
    }

    fn close_input(&self) {
        // Dropping the writer ends the host's stdin.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Close the session's input and wait for its end.
    pub fn end(&self) -> Result<(), LinkError> {
        self.close_input();
        let mut agent = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        agent.wait().map_err(|e| match e {
            TransportError::AgentFailed { status, stderr, .. } => {
                let stderr = stderr.trim();
                let stderr = stderr.strip_prefix("ferry: error: ").unwrap_or(stderr);
                LinkError::Session(format!(
                    "{}: ferry host session failed ({status}): {stderr}",
                    self.host
                ))
            }
            e => e.into(),
        })
    }
}

/// The copy's view of a [`HostSession`]: its streams, lent to one `push_closure`; the
/// session goes on after the agent's `Bye`.
struct InSession {
    host: String,
    reader: SharedReader,
    writer: SharedWriter,
    agent: Arc<Mutex<Box<dyn AgentHandle>>>,
}

impl std::fmt::Debug for InSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InSession").field("host", &self.host).finish_non_exhaustive()
    }
}

impl Transport for InSession {
    fn describe(&self) -> String {
        self.host.clone()
    }

    fn connect(&self) -> Result<Connection, TransportError> {
        Ok(Connection {
            reader: Box::new(Lent(self.reader.clone())),
            writer: Box::new(Lent(self.writer.clone())),
            agent: Box::new(LentAgent(self.agent.clone())),
        })
    }
}

/// A lent stream: reads and writes go to the session's; dropping it closes nothing.
struct Lent<T>(Arc<Mutex<T>>);

impl Read for Lent<BufReader<Box<dyn Read + Send>>> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).read(buf)
    }
}

impl Write for Lent<Option<Box<dyn Write + Send>>> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// The session's command stands for the agent: it goes on after the copy, so waiting for
/// it here is waiting for nothing; its stderr is the session's.
#[derive(Debug)]
struct LentAgent(Arc<Mutex<Box<dyn AgentHandle>>>);

impl AgentHandle for LentAgent {
    fn wait(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
    fn stderr(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).stderr()
    }
    fn kill(&mut self) {}
}

fn run_local(
    t: &LocalTransport,
    argv: &[String],
    stdin: &[u8],
    line: &mut dyn FnMut(&str),
) -> Result<Exit, LinkError> {
    let mut command = Command::new(&t.program);
    command.arg("--root").arg(&t.root);
    if let Some(d) = &t.store_dir {
        command.arg("--store-dir").arg(d);
    }
    if let Some(d) = &t.state_dir {
        command.arg("--state-dir").arg(d);
    }
    // Its own process group, as the agent's (transfer::transport::local): a Ctrl-C at the
    // terminal reaches the coordinator only.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LinkError::Spawn {
            program: PathBuf::from(&t.program).display().to_string(),
            source,
        })?;
    let (stderr, stderr_thread) = StderrTail::collect(child.stderr.take().expect("piped"));
    let mut input = child.stdin.take().expect("piped");
    // A command that does not read its input may end first: not an error here.
    let _ = input.write_all(stdin);
    drop(input);
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if out.read_until(b'\n', &mut buf).map_err(LinkError::Output)? == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        line(&String::from_utf8_lossy(&buf));
    }
    let status = child.wait().map_err(LinkError::Wait)?;
    let _ = stderr_thread.join();
    Ok(Exit { code: status.code(), stderr: stderr.text() })
}
