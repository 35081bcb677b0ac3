//! [`LocalTransport`]: `ferry serve` as a subprocess of this machine (`local:///ROOT`).

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use super::{AgentHandle, Connection, StderrTail, Transport, TransportError};

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
    /// `--store ferry|nix|guix`: whose store the agent fills (`None`: ferry's).
    pub store: Option<String>,
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
            store: None,
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
        if let Some(kind) = &self.store {
            c.arg("--store").arg(kind);
        }
        c.args(args);
        // Its own process group: a Ctrl-C at the terminal reaches the coordinator only, which
        // decides what to stop (a deploy finishes what runs); the child ends with its stdin.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
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
