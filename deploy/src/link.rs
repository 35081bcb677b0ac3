//! [`Link`]: how the deploy coordinator reaches one machine, the same way for both
//! environments.
//!
//! - `local`: a root on this machine. The copy goes to `ferry serve` as a local subprocess
//!   ([`LocalTransport`]); host commands (`ferry host ...`) run as local subprocesses of the
//!   same executable with `--root ROOT`.
//! - `managed-host`: SSH. One [`SshTransport`] per host: its one SSH session carries the
//!   agent for the copy and every `ferry host ...` command (run with the agent program the
//!   transport found or uploaded); a confirmation goes over a new connection of its own.
//!
//! Everything else (what to ask, in which order) is the deploy pipeline's, written once.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context};
use transfer::ssh::SshConfig;
use transfer::ssh_transport::SshTransport;
use transfer::transport::{LocalTransport, StderrTail, Transport};
use transfer::uri::StoreParams;

use crate::deployment::{Environment, Machine};

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

/// The SSH settings of a managed host.
pub fn ssh_config(m: &Machine) -> anyhow::Result<SshConfig> {
    let c = &m.configuration;
    let host = c.host_name.clone().ok_or_else(|| {
        anyhow!("machine '{}' is a managed-host without a `host-name` to connect to", m.name)
    })?;
    let mut config = SshConfig::new(host);
    config.port = c.port;
    config.user = c.user.clone();
    config.identity = c.identity.clone();
    config.host_key = c.host_key.clone();
    Ok(config)
}

impl Link {
    /// Reach machine `m` (nothing is connected yet: SSH connects on first use).
    pub fn new(m: &Machine) -> anyhow::Result<Link> {
        let root = m.configuration.root.clone();
        Ok(match m.environment {
            Environment::Local => {
                let mut transport = LocalTransport::new(root.clone())
                    .context("cannot find the running ferry executable")?;
                // The host's own state dir, whatever FERRY_STATE_DIR says for ours.
                transport.state_dir = Some(root.join("var/ferry"));
                Link::Local { transport }
            }
            Environment::ManagedHost => {
                let store = StoreParams {
                    root: (root != std::path::Path::new("/")).then_some(root),
                    ..StoreParams::default()
                };
                let config = ssh_config(m)?;
                let host_key_hint = format!(
                    "To pin the host's key for machine '{}', check it out of band, for example \
                     with\n  ssh-keyscan -t ed25519 -p {} {}\nand set `host-key = \"ssh-ed25519 \
                     AAAA...\"` in its [machine.configuration].",
                    m.name,
                    config.port,
                    transfer::ssh::shell_quote(&config.host)
                );
                Link::Ssh { transport: Box::new(SshTransport::new(config, store)?), host_key_hint }
            }
        })
    }

    /// The transport the copy goes through.
    pub fn transport(&self) -> &dyn Transport {
        match self {
            Link::Local { transport } => transport,
            Link::Ssh { transport, .. } => transport.as_ref(),
        }
    }

    /// Run `ferry host ARGS...` on the host with `stdin`; each stdout line goes to `line` as
    /// it comes.
    pub fn host(
        &self,
        args: &[&str],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Exit> {
        self.host_on(false, args, stdin, line)
    }

    /// [`Link::host`] over a new connection (a new SSH session; for `local`, a new process as
    /// always).
    pub fn host_on_new_connection(
        &self,
        args: &[&str],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Exit> {
        self.host_on(true, args, stdin, line)
    }

    fn host_on(
        &self,
        fresh: bool,
        args: &[&str],
        stdin: &[u8],
        line: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Exit> {
        let mut argv: Vec<String> = vec!["host".into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        match self {
            Link::Local { transport } => run_local(transport, &argv, stdin, line),
            Link::Ssh { transport, host_key_hint } => {
                let run = if fresh {
                    transport.run_ferry_on_new_connection(&argv, stdin, line)
                } else {
                    transport.run_ferry(&argv, stdin, line)
                };
                let run = run.map_err(|e| {
                    let text = e.to_string();
                    if text.contains(": host key: ") {
                        anyhow!("{text}\n{host_key_hint}")
                    } else {
                        anyhow!(e)
                    }
                })?;
                Ok(Exit { code: run.status.code.map(|c| c as i32), stderr: run.stderr })
            }
        }
    }

    /// Run `ferry host ARGS...` with a JSON request and read its one-line JSON answer.
    pub fn host_json<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        args: &[&str],
        request: &Q,
    ) -> anyhow::Result<A> {
        let mut out = String::new();
        let exit = self.host(args, &serde_json::to_vec(request)?, &mut |l| {
            out.push_str(l);
            out.push('\n');
        })?;
        if !exit.success() {
            return Err(anyhow!("ferry host {}: {}", args.join(" "), exit.describe()));
        }
        serde_json::from_str(out.trim())
            .with_context(|| format!("ferry host {}: unexpected answer {out:?}", args.join(" ")))
    }
}

fn run_local(
    t: &LocalTransport,
    argv: &[String],
    stdin: &[u8],
    line: &mut dyn FnMut(&str),
) -> anyhow::Result<Exit> {
    let mut command = Command::new(&t.program);
    command.arg("--root").arg(&t.root);
    if let Some(d) = &t.store_dir {
        command.arg("--store-dir").arg(d);
    }
    if let Some(d) = &t.state_dir {
        command.arg("--state-dir").arg(d);
    }
    let mut child = command
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", PathBuf::from(&t.program).display()))?;
    let (stderr, stderr_thread) = StderrTail::collect(child.stderr.take().expect("piped"));
    let mut input = child.stdin.take().expect("piped");
    // A command that does not read its input may end first: not an error here.
    let _ = input.write_all(stdin);
    drop(input);
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if out.read_until(b'\n', &mut buf).context("reading a host command's output")? == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        line(&String::from_utf8_lossy(&buf));
    }
    let status = child.wait().context("waiting for a host command")?;
    let _ = stderr_thread.join();
    Ok(Exit { code: status.code(), stderr: stderr.text() })
}
