//! Agents over SSH: an in-process client (`russh`, no `ssh` subprocess) that owns its session
//! and multiplexes every channel to a host over it, and the [`SshTransport`] running the ferry
//! agent on an exec channel of it.
//!
//! | module | what |
//! |---|---|
//! | `client` | [`SshSession`]: connect, authenticate, exec, upload (SFTP or `cat`), keepalive |
//! | `config` | `~/.ssh/config` as OpenSSH reads it (`Host` patterns, `HostName`, `User`, `Port`, `IdentityFile`, `ProxyJump`…) |
//! | `known_hosts` | host-key checking: the pinned key or `known_hosts` (hashed, patterns, `@revoked`); pinned-key lines as `ssh-keyscan` prints them |
//! | `agent_file` | the agent program on this side: named by its SHA-256, compressed once per process |
//! | `bootstrap` | the one probe (agent found and verified, decompressors, `sudo -n`), which starts the agent it found in the same exec; the compressed, resumed, verified upload |
//! | `transport` | [`SshTransport`]: the agent (or any `ferry` command) over an exec channel |
//!
//! This module holds what they share: the settings of a host ([`SshConfig`], built from a URI or
//! a deployment file's machine by [`SshConfig::for_endpoint`], the one place that reads the
//! user's SSH config), the errors ([`SshError`]) and the quoting of remote command lines
//! ([`shell_quote`]).
//!
//! - Settings come from the command line or the deployment file first, then from the SSH config
//!   (`~/.ssh/config`, or the file given as `--ssh-config` / `ssh-config = PATH`, which replaces
//!   it as `ssh -F` does; `/etc/ssh/ssh_config` is not read), then the defaults (port 22, user
//!   `root`, 10 s connect timeout).
//! - `ProxyJump` bastions are reached in turn, each through a direct-tcpip channel of the
//!   previous one, each with its own settings from the SSH config (its own `ProxyJump` only for
//!   the first, as `ssh -J` does) and its own host-key check against known_hosts
//!   (`--known-hosts`, when given, for every hop).
//! - Host keys are never trusted on first use. The key the host offers must equal the pinned
//!   [`SshConfig::host_key`] or an entry for the host in `known_hosts`. An unknown or changed key
//!   is an [`SshError`] showing the expected and offered keys and the exact `ssh-keyscan` line
//!   to record it after checking it out of band.
//! - Authentication tries the identity file (ed25519, RSA with `rsa-sha2-*`, ECDSA; OpenSSH
//!   private key format), then the SSH config's `IdentityFile`s, then the keys of `ssh-agent`
//!   (`SSH_AUTH_SOCK`; with `IdentitiesOnly`, only those whose `.pub` is one of the identity
//!   files), then, when no identity was given, `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
//! - Error hints name settings as the user gives them ([`SettingsSource`]): `--host-key` for
//!   `ferry copy`, `host-key = …` for a deployment file.
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
pub mod config;
mod known_hosts;
mod transport;

pub use bootstrap::{local_arch, AgentReady, AgentSource, AGENT_DIR, UPLOAD_STOP_ENV};
pub use client::{RemoteExit, RemoteProcess, RemoteStdin, RemoteStdout, SshSession, UploadMethod};
pub use known_hosts::{parse_host_key, HostKeyLine, HostKeyLineError};
pub use transport::{RemoteRun, SshTransport};

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
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
    /// More private key files (the SSH config's `IdentityFile`s), tried after `identity`; one
    /// that does not exist is skipped.
    pub identity_files: Vec<PathBuf>,
    /// Only the identity files are tried, and of ssh-agent's keys only theirs
    /// (`IdentitiesOnly`).
    pub identities_only: bool,
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
    /// The bastions to go through (`ProxyJump`), in order: the first is connected to directly,
    /// each next one (and then this host) through a direct-tcpip channel of the one before.
    pub jumps: Vec<SshConfig>,
    /// Where these settings come from, for the hints of errors.
    pub source: SettingsSource,
}

/// Where a host's settings come from: error hints name the settings as the user gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SettingsSource {
    /// `ferry copy`'s flags (`--host-key`, `--identity`).
    #[default]
    CommandLine,
    /// A deployment file's `[machine.configuration]` (`host-key = …`, `identity = …`).
    DeploymentFile,
    /// A `ProxyJump` bastion on the way to `target` (its settings are the SSH config's).
    Bastion {
        /// `host:port` of the host behind it.
        target: String,
    },
}

impl SettingsSource {
    /// How to pin `key`, followed by " or ", or nothing for a bastion (no pin for it).
    fn pin_hint(&self, key: &str) -> String {
        match self {
            SettingsSource::CommandLine => format!("pin it with --host-key \"{key}\" or "),
            SettingsSource::DeploymentFile => format!(
                "pin it with `host-key = \"{key}\"` in the machine's [machine.configuration] or "
            ),
            SettingsSource::Bastion { .. } => String::new(),
        }
    }

    /// What a pinned key is called.
    fn pinned(&self) -> &'static str {
        match self {
            SettingsSource::DeploymentFile => {
                "the pinned host key (host-key in the deployment file)"
            }
            _ => "the pinned host key (--host-key)",
        }
    }

    /// How to name another identity.
    fn identity_hint(&self) -> &'static str {
        match self {
            SettingsSource::CommandLine => "or pass --identity FILE",
            SettingsSource::DeploymentFile => {
                "or set `identity = \"FILE\"` (the private key) in the machine's \
                 [machine.configuration]"
            }
            SettingsSource::Bastion { .. } => {
                "or give the bastion an IdentityFile in the SSH config"
            }
        }
    }
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
            identity_files: Vec::new(),
            identities_only: false,
            use_agent: true,
            host_key: None,
            known_hosts: None,
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Keepalive::default()),
            jumps: Vec::new(),
            source: SettingsSource::CommandLine,
        }
    }

    /// The one way SSH settings are made, for `ferry copy` (a URI's endpoint and the command
    /// line's [`SshAuth`]) and a deploy (a deployment file's machine): the endpoint's and
    /// `auth`'s values, then the SSH config's for the endpoint's host (read here: `auth`'s
    /// file, else `~/.ssh/config` when there is one), then [`SshConfig::new`]'s defaults.
    pub fn for_endpoint(endpoint: &SshEndpoint, auth: SshAuth) -> Result<SshConfig, SshError> {
        let env = LocalEnv::of_process();
        let file = read_config_file(auth.ssh_config.as_deref(), &env)?;
        let mut config =
            resolve(&file, &endpoint.host, endpoint.user.clone(), endpoint.port, &env, 0)?;
        let SshAuth { identity, host_key, known_hosts, ssh_config: _, source } = auth;
        if identity.is_some() {
            config.identity = identity;
            config.identity_files.clear();
        }
        config.host_key = host_key;
        if let Some(k) = &known_hosts {
            config.known_hosts = Some(k.clone());
        }
        let target = config.target();
        for hop in &mut config.jumps {
            if let Some(k) = &known_hosts {
                hop.known_hosts = Some(k.clone());
            }
            hop.source = SettingsSource::Bastion { target: target.clone() };
        }
        config.source = source;
        Ok(config)
    }

    /// `host:port` (`[host]:port` for IPv6 literals), as errors show it; a bastion's says whose.
    pub fn target(&self) -> String {
        let address = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        match &self.source {
            SettingsSource::Bastion { target } => format!("{address} (bastion for {target})"),
            _ => address,
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

    /// The command that prints the host's keys for recording them; for a host behind bastions,
    /// run on the last one (the host may be reachable from there only).
    pub fn keyscan_command(&self) -> String {
        let scan = format!("ssh-keyscan -p {} {}", self.port, shell_quote(&self.host));
        match self.jumps.last() {
            None => scan,
            Some(b) => format!(
                "ssh -p {} {} {}",
                b.port,
                shell_quote(&format!("{}@{}", b.user, b.host)),
                shell_quote(&scan)
            ),
        }
    }

    fn known_hosts_path(&self) -> Option<PathBuf> {
        self.known_hosts
            .clone()
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts")))
    }
}

/// How to authenticate to a host and check its key, besides its address: `ferry copy`'s
/// `--identity`, `--host-key`, `--known-hosts`, `--ssh-config`, or a deployment file's
/// `identity`, `host-key`, `ssh-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshAuth {
    /// Private key file (default: the SSH config's, ssh-agent, then `~/.ssh/id_*`).
    pub identity: Option<PathBuf>,
    /// The host's key, `ssh-ed25519 AAAA...` or a line of `ssh-keyscan` (default: known_hosts).
    pub host_key: Option<String>,
    /// The known_hosts file (default: the SSH config's, else `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// The SSH config file, read instead of `~/.ssh/config` (as `ssh -F`).
    pub ssh_config: Option<PathBuf>,
    /// Where these settings come from (for error hints).
    pub source: SettingsSource,
}

/// What token expansion needs of this machine: the home directory and the user's name.
struct LocalEnv {
    home: Option<PathBuf>,
    user: String,
}

impl LocalEnv {
    fn of_process() -> LocalEnv {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default();
        LocalEnv { home, user }
    }
}

/// `path` (it must exist), else `~/.ssh/config` when it exists, parsed with its includes.
fn read_config_file(path: Option<&Path>, env: &LocalEnv) -> Result<config::ConfigFile, SshError> {
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let list = |dir: &Path| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        files.sort();
        files
    };
    let (path, required) = match (path, &env.home) {
        (Some(p), _) => (p.to_owned(), true),
        (None, Some(home)) => (home.join(".ssh/config"), false),
        (None, None) => return Ok(config::ConfigFile::default()),
    };
    let cannot = |e: String| SshError::Config(format!("cannot read {}: {e}", path.display()));
    let text = match read(&path).map_err(|e| cannot(e.to_string()))? {
        Some(t) => t,
        None if required => return Err(cannot("no such file".to_owned())),
        None => return Ok(config::ConfigFile::default()),
    };
    config::ConfigFile::parse(&path, &text, env.home.as_deref(), &read, &list)
        .map_err(|e| SshError::Config(e.to_string()))
}

/// The settings of `alias` (the name as given) from the SSH config `file`, with `user` and
/// `port` (given explicitly) winning, and its bastions resolved the same way.
fn resolve(
    file: &config::ConfigFile,
    alias: &str,
    user: Option<String>,
    port: Option<u16>,
    env: &LocalEnv,
    depth: usize,
) -> Result<SshConfig, SshError> {
    if depth > 8 {
        return Err(SshError::Config(format!(
            "ProxyJump to {alias}: more than 8 bastions deep (a loop?)"
        )));
    }
    let s = file.settings(alias);
    let port = port.or(s.port).unwrap_or(22);
    let user = user.or(s.user).unwrap_or_else(|| "root".to_owned());
    let mut tokens = config::Tokens {
        host: alias,
        alias,
        port,
        user: &user,
        local_user: &env.user,
        home: env.home.as_deref(),
    };
    let bad = |what: &str, e: String| SshError::Config(format!("{what} of {alias}: {e}"));
    let host = match &s.host_name {
        Some(h) => config::expand(h, &tokens).map_err(|e| bad("HostName", e))?,
        None => alias.to_owned(),
    };
    tokens.host = &host;
    let mut cfg = SshConfig::new(host.clone());
    cfg.port = port;
    cfg.user = user.clone();
    for f in &s.identity_files {
        cfg.identity_files
            .push(config::expand(f, &tokens).map_err(|e| bad("IdentityFile", e))?.into());
    }
    cfg.identities_only = s.identities_only.unwrap_or(false);
    if let Some(f) = s.user_known_hosts_files.as_ref().and_then(|f| f.first()) {
        cfg.known_hosts =
            Some(config::expand(f, &tokens).map_err(|e| bad("UserKnownHostsFile", e))?.into());
    }
    if let Some(t) = s.connect_timeout.filter(|t| !t.is_zero()) {
        cfg.connect_timeout = t;
    }
    let jumps = s.proxy_jump.as_deref().filter(|j| !j.eq_ignore_ascii_case("none"));
    for (i, spec) in jumps.into_iter().flat_map(|j| j.split(',')).enumerate() {
        let jump = config::parse_jump(spec).map_err(|e| bad("ProxyJump", e))?;
        if jump.host == alias {
            continue; // a `Host *` ProxyJump that names the bastion itself
        }
        let mut hop = resolve(file, &jump.host, jump.user, jump.port, env, depth + 1)?;
        // The first bastion's own ProxyJump applies; the later ones are reached through the
        // list, as `ssh -J a,b` does.
        if i == 0 {
            cfg.jumps.append(&mut hop.jumps);
        }
        hop.jumps.clear();
        cfg.jumps.push(hop);
    }
    Ok(cfg)
}

/// Why an SSH operation failed; each names the host and the step, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The SSH config file cannot be read, or a value in it is malformed.
    #[error("SSH config: {0}")]
    Config(String),
    /// A bastion could not open a channel to the next hop.
    #[error("{target}: connect through {via}: {reason} (does the bastion allow TCP forwarding, and can it reach the host?)")]
    Jump {
        /// `host:port` of the next hop.
        target: String,
        /// The bastion.
        via: String,
        /// Why.
        reason: String,
    },
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
         {} ({})\nCheck that key out of band, then {pin}record it with:\n  {} >> {known_hosts}",
        offered.key, offered.fingerprint, offered.keyscan
    )]
    HostKeyUnknown {
        /// `host:port`.
        target: String,
        /// How to pin the key, followed by " or " (empty for a bastion).
        pin: String,
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
    #[error("{target}: host key: cannot parse the pinned key {key:?}: {reason}")]
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
         public keys to the user's ~/.ssh/authorized_keys on the host, {hint}.",
        tried.join("; ")
    )]
    Auth {
        /// `host:port`.
        target: String,
        /// How to give another key, in the user's terms.
        hint: &'static str,
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
    /// `type base64`, as `--host-key` and `host-key` take it.
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

    #[test]
    fn settings_from_the_ssh_config() {
        let text = "Host web\n  HostName 10.1.0.2\n  Port 2222\n  User deploy\n  \
                    IdentityFile ~/.ssh/id_%r_%h\n  IdentitiesOnly yes\n  \
                    ProxyJump ops@b1,b2:2200\n  ConnectTimeout 4\n\
                    Host b1\n  HostName 10.0.0.2\n  ProxyJump b0\n  \
                    UserKnownHostsFile ~/kh other\n\
                    Host b2\n  ProxyJump nowhere\n\
                    Host *\n  User fallback\n  ProxyJump b0\n";
        let home = Path::new("/home/me");
        let none = |_: &Path| Ok(None);
        let nothing = |_: &Path| Vec::new();
        let file =
            config::ConfigFile::parse(Path::new("c"), text, Some(home), &none, &nothing).unwrap();
        let env = LocalEnv { home: Some(home.to_owned()), user: "me".into() };
        let web = resolve(&file, "web", None, None, &env, 0).unwrap();
        assert_eq!((web.host.as_str(), web.port, web.user.as_str()), ("10.1.0.2", 2222, "deploy"));
        assert_eq!(web.identity_files, vec![PathBuf::from("/home/me/.ssh/id_deploy_10.1.0.2")]);
        assert!(web.identities_only);
        assert_eq!(web.connect_timeout, Duration::from_secs(4));
        // b1's own ProxyJump (b0) comes first; b2's is not followed (as `ssh -J b1,b2`); b0's
        // `Host *` ProxyJump names itself and is skipped.
        let hops: Vec<(&str, u16, &str)> =
            web.jumps.iter().map(|j| (j.host.as_str(), j.port, j.user.as_str())).collect();
        assert_eq!(
            hops,
            vec![("b0", 22, "fallback"), ("10.0.0.2", 22, "ops"), ("b2", 2200, "fallback")]
        );
        assert_eq!(web.jumps[1].known_hosts, Some(PathBuf::from("/home/me/kh")));
        assert!(web.jumps.iter().all(|j| j.jumps.is_empty()));
        // Explicit values win.
        let given = resolve(&file, "web", Some("root".into()), Some(22), &env, 0).unwrap();
        assert_eq!((given.port, given.user.as_str()), (22, "root"));
        // Not in the file: the defaults, and the name as given.
        let other = resolve(&config::ConfigFile::default(), "x", None, None, &env, 0).unwrap();
        assert_eq!((other.host.as_str(), other.port, other.user.as_str()), ("x", 22, "root"));
        // A loop is an error.
        let looped = config::ConfigFile::parse(
            Path::new("c"),
            "Host a\n ProxyJump b\nHost b\n ProxyJump a\n",
            None,
            &none,
            &nothing,
        )
        .unwrap();
        assert!(resolve(&looped, "a", None, None, &env, 0).is_err());
    }
}
