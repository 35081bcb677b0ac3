//! Agents over SSH: an in-process client (`russh`, no `ssh` subprocess) that owns its session
//! and multiplexes every channel to a host over it, and the [`SshTransport`] running the ferry
//! agent on an exec channel of it.
//!
//! | module | what |
//! |---|---|
//! | `client` | [`SshSession`]: connect, authenticate, exec, upload (SFTP or `cat`), keepalive |
//! | `known_hosts` | host-key checking: the pinned key or `known_hosts` (hashed, patterns, `@revoked`) |
//! | `agent_file` | the agent program on this side: named by its SHA-256, compressed once per process |
//! | `bootstrap` | the one probe (agent found and verified, decompressors, `sudo -n`), the compressed, resumed, verified upload |
//! | `transport` | [`SshTransport`]: the agent (or any `ferry` command) over an exec channel |
//!
//! This module holds what they share: the settings of a host ([`SshConfig`], built from a URI or
//! a deployment file's machine by [`SshConfig::for_endpoint`]), the errors ([`SshError`]) and
//! the quoting of remote command lines ([`shell_quote`]).
//!
//! - Host keys are never trusted on first use. The key the host offers must equal the pinned
//!   [`SshConfig::host_key`] or an entry for the host in `known_hosts`. An unknown or changed key
//!   is an [`SshError`] showing the expected and offered keys and the exact `ssh-keyscan` line
//!   to record it after checking it out of band.
//! - Authentication tries the identity file (ed25519, RSA with `rsa-sha2-*`, ECDSA; OpenSSH
//!   private key format), then the keys of `ssh-agent` (`SSH_AUTH_SOCK`), then, when no identity
//!   was given, `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
//! - Arguments are quoted for the remote POSIX shell one by one ([`shell_quote`]), never
//!   interpolated into a command line.
//! - Keepalives detect a dead peer; a dropped connection ends every open channel with an error
//!   (their reads see EOF and [`RemoteExit::wait`] reports the loss), never a hang.
//!
//! Flow control: russh acknowledges channel windows as data arrives and propagates backpressure
//! by pausing the whole connection when a channel's queue is full. Each [`RemoteStdout`] buffers at
//! most [`STDOUT_QUEUE`] packets; a caller that stops reading one channel's stdout while
//! expecting progress on another channel of the same session stalls both. Stderr is always
//! drained (the last [`STDERR_CAP`] bytes are kept).

mod agent_file;
mod bootstrap;
mod client;
mod known_hosts;
mod transport;

pub use bootstrap::{local_arch, AgentReady, AgentSource, AGENT_DIR, UPLOAD_STOP_ENV};
pub use client::{RemoteExit, RemoteProcess, RemoteStdin, RemoteStdout, SshSession, UploadMethod};
pub use transport::{RemoteRun, SshTransport};

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use proto::uri::SshEndpoint;

/// Packets a channel's stdout may hold before the session pauses (each at most 32 KiB).
pub const STDOUT_QUEUE: usize = 64;
/// Bytes of stderr kept per remote command (the tail).
pub const STDERR_CAP: usize = 1 << 20;

/// Keepalive settings: a keepalive goes out after `interval` with nothing received; the
/// connection is declared dead after `max_missed` unanswered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before a keepalive is sent.
    pub interval: Duration,
    /// Unanswered keepalives before the connection is dropped.
    pub max_missed: usize,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { interval: Duration::from_secs(15), max_missed: 3 }
    }
}

/// How to reach and authenticate to one host.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port (22).
    pub port: u16,
    /// Login user (`root`).
    pub user: String,
    /// Private key file (OpenSSH format; ed25519, RSA or ECDSA, unencrypted — a protected key
    /// belongs in ssh-agent).
    pub identity: Option<PathBuf>,
    /// Try the keys of ssh-agent (`SSH_AUTH_SOCK`) after the identity (true).
    pub use_agent: bool,
    /// The host key, `ssh-ed25519 AAAA...`; when set, `known_hosts` is not consulted.
    pub host_key: Option<String>,
    /// The known_hosts file (`~/.ssh/known_hosts` when `None`).
    pub known_hosts: Option<PathBuf>,
    /// Limit for TCP connect, key exchange and authentication together (10 s).
    pub connect_timeout: Duration,
    /// Keepalive (15 s × 3); `None` disables it.
    pub keepalive: Option<Keepalive>,
}

impl SshConfig {
    /// Defaults for `host`: port 22, user `root`, agent on, `~/.ssh/known_hosts`, 10 s connect
    /// timeout, keepalive every 15 s with 3 missed allowed.
    pub fn new(host: impl Into<String>) -> SshConfig {
        SshConfig {
            host: host.into(),
            port: 22,
            user: "root".to_owned(),
            identity: None,
            use_agent: true,
            host_key: None,
            known_hosts: None,
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Keepalive::default()),
        }
    }

    /// The one way SSH settings are made, for `ferry copy` (a URI's endpoint and the command
    /// line's [`SshAuth`]) and a deploy (a deployment file's machine): [`SshConfig::new`]'s
    /// defaults, with the endpoint's port and user when it names them.
    pub fn for_endpoint(endpoint: &SshEndpoint, auth: SshAuth) -> SshConfig {
        let mut config = SshConfig::new(endpoint.host.clone());
        if let Some(port) = endpoint.port {
            config.port = port;
        }
        if let Some(user) = &endpoint.user {
            config.user = user.clone();
        }
        let SshAuth { identity, host_key, known_hosts } = auth;
        config.identity = identity;
        config.host_key = host_key;
        config.known_hosts = known_hosts;
        config
    }

    /// `host:port` (`[host]:port` for IPv6 literals), as errors show it.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host's name in known_hosts: `host` on port 22, `[host]:port` otherwise.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    /// The command that prints the host's keys for recording them.
    pub fn keyscan_command(&self) -> String {
        format!("ssh-keyscan -p {} {}", self.port, shell_quote(&self.host))
    }

    fn known_hosts_path(&self) -> Option<PathBuf> {
        self.known_hosts
            .clone()
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts")))
    }
}

/// How to authenticate to a host and check its key, besides its address: `ferry copy`'s
/// `--identity`, `--host-key`, `--known-hosts`, or a deployment file's `identity`, `host-key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshAuth {
    /// Private key file (default: ssh-agent, then `~/.ssh/id_*`).
    pub identity: Option<PathBuf>,
    /// The host's key, `ssh-ed25519 AAAA...` (default: known_hosts).
    pub host_key: Option<String>,
    /// The known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
}

/// Why an SSH operation failed; each names the host and the step, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// TCP connection failed.
    #[error("{target}: connect: {source} (is sshd running there, and is the port right?)")]
    Connect {
        /// `host:port`.
        target: String,
        /// The socket error.
        source: io::Error,
    },
    /// Connect, key exchange or authentication took longer than the timeout.
    #[error("{target}: connect: no SSH session within {timeout:?} during {step} (host down, filtered port, or not an SSH server?)")]
    Timeout {
        /// `host:port`.
        target: String,
        /// The limit.
        timeout: Duration,
        /// What was under way.
        step: &'static str,
    },
    /// The SSH handshake failed (protocol, key exchange, disconnect).
    #[error("{target}: {step}: {source}")]
    Protocol {
        /// `host:port`.
        target: String,
        /// Connect, auth, exec, upload...
        step: &'static str,
        /// The russh error.
        source: russh::Error,
    },
    /// The host has no entry in known_hosts and no key was pinned.
    #[error(
        "{target}: host key: unknown host: no key for {name} in {known_hosts}; the host offered\n  \
         {} ({})\nCheck that key out of band, then pin it with --host-key \"{}\" \
         or record it with:\n  {} >> {known_hosts}",
        offered.key, offered.fingerprint, offered.key, offered.keyscan
    )]
    HostKeyUnknown {
        /// `host:port`.
        target: String,
        /// The known_hosts name looked up.
        name: String,
        /// The file that was searched.
        known_hosts: String,
        /// The key the host offered.
        offered: Box<OfferedKey>,
    },
    /// The host offered a key other than the pinned or recorded one.
    #[error(
        "{target}: host key: HOST KEY MISMATCH (changed host key, or someone in the middle): \
         expected ({origin})\n  {}\nbut the host offered\n  {} ({})\nIf the change is \
         legitimate, check the new key out of band and update {origin}; the host's keys: {}",
        expected.join("\n  "), offered.key, offered.fingerprint, offered.keyscan
    )]
    HostKeyMismatch {
        /// `host:port`.
        target: String,
        /// Where the expected keys came from (the pinned key, or known_hosts file and lines).
        origin: String,
        /// The expected keys (`type base64`).
        expected: Vec<String>,
        /// The key the host offered.
        offered: Box<OfferedKey>,
    },
    /// The host offered a key marked `@revoked` in known_hosts.
    #[error("{target}: host key: the host offered {offered}, which {known_hosts} marks @revoked; refusing")]
    HostKeyRevoked {
        /// `host:port`.
        target: String,
        /// The offered key.
        offered: String,
        /// The known_hosts file.
        known_hosts: String,
    },
    /// The pinned host key does not parse.
    #[error("{target}: host key: cannot parse the pinned key {key:?}: {reason} (expected \"ssh-ed25519 AAAA...\")")]
    BadPinnedKey {
        /// `host:port`.
        target: String,
        /// The given text.
        key: String,
        /// Why.
        reason: String,
    },
    /// The known_hosts file exists but cannot be read.
    #[error("{target}: host key: cannot read {path}: {source}")]
    KnownHosts {
        /// `host:port`.
        target: String,
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The identity file cannot be loaded.
    #[error("{target}: auth: cannot load identity {path}: {reason}")]
    Identity {
        /// `host:port`.
        target: String,
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The server refused every key.
    #[error(
        "{target}: auth: user {user} was refused with every key tried: {}. Add one of these \
         public keys to the user's ~/.ssh/authorized_keys on the host, or pass --identity FILE.",
        tried.join("; ")
    )]
    Auth {
        /// `host:port`.
        target: String,
        /// The login user.
        user: String,
        /// What was tried, and why each failed.
        tried: Vec<String>,
    },
    /// A remote command could not be started.
    #[error("{target}: exec {command}: {reason}")]
    Exec {
        /// `host:port`.
        target: String,
        /// The command line.
        command: String,
        /// Why.
        reason: String,
    },
    /// A remote command ran but failed.
    #[error(
        "{target}: exec {command}: {status}{}",
        crate::transport::stderr_note("; stderr:\n", stderr)
    )]
    CommandFailed {
        /// `host:port`.
        target: String,
        /// The command line.
        command: String,
        /// How it ended.
        status: RemoteStatus,
        /// Its stderr (tail).
        stderr: String,
    },
    /// The connection ended before the remote command reported its exit.
    #[error(
        "{target}: exec {command}: connection lost before the command exited{}",
        crate::transport::stderr_note("; stderr:\n", stderr)
    )]
    ConnectionLost {
        /// `host:port`.
        target: String,
        /// The command line.
        command: String,
        /// Stderr received so far.
        stderr: String,
    },
    /// An upload failed.
    #[error("{target}: upload {local} -> {remote}: {reason}")]
    Upload {
        /// `host:port`.
        target: String,
        /// Local file.
        local: String,
        /// Remote path.
        remote: String,
        /// Why.
        reason: String,
    },
}

/// The host key a host offered, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedKey {
    /// `type base64`, as `--host-key` takes it.
    pub key: String,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// `ssh-keyscan -p PORT HOST`, which prints the host's keys for known_hosts.
    pub keyscan: String,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    /// The exit code, when it exited.
    pub code: Option<u32>,
    /// The signal name, when a signal ended it.
    pub signal: Option<String>,
}

impl RemoteStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for RemoteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, &self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig}"),
            (None, None) => write!(f, "no exit status"),
        }
    }
}

/// Quote one argument for a POSIX shell: bare when it holds only safe characters, otherwise in
/// single quotes with each `'` written as `'\''`.
pub fn shell_quote(arg: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-+=/.,:@%".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// The command line for `argv`, each argument quoted with [`shell_quote`].
pub fn shell_command<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter().map(|a| shell_quote(a.as_ref()).into_owned()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc/d.e-f"), "abc/d.e-f");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_command(&["echo", "a b", "*"]), "echo 'a b' '*'");
    }
}
