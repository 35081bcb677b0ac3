//! The russh client: one TCP connection per host ([`SshSession::connect`]: host key checked by
//! [`super::known_hosts`], then authentication; through the `ProxyJump` bastions in turn, each
//! next hop over a direct-tcpip channel of the one before), reused for every channel: [`SshSession::exec`]
//! (a remote command as a duplex byte stream with stderr captured and the exit status as a
//! future), [`SshSession::upload`] (SFTP, or `cat` over exec when the host has no SFTP
//! subsystem), [`SshSession::remote_arch`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use russh::client::{self, Handle};
use russh::keys::ssh_key::{self, HashAlg, PublicKey};
use russh::keys::{Algorithm, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};

use super::known_hosts::{same_family, Expectation};
use super::{shell_command, RemoteStatus, SshConfig, SshError, STDERR_CAP, STDOUT_QUEUE};

/// The russh event handler: checks the host key and keeps the detailed refusal for `connect`.
struct ClientHandler {
    cfg: Arc<SshConfig>,
    expect: Expectation,
    refusal: Arc<Mutex<Option<SshError>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::new(cert.public_key().clone(), "")
            }
        };
        match self.expect.check(&self.cfg, &key) {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

/// One authenticated SSH connection to a host; every channel to the host goes over it.
/// Share it with `Arc` across tasks.
pub struct SshSession {
    handle: Handle<ClientHandler>,
    cfg: Arc<SshConfig>,
    sftp: tokio::sync::Mutex<Option<Result<Arc<russh_sftp::client::SftpSession>, String>>>,
    /// The bastion this session goes through (kept open as long as this one is).
    via: Option<Box<SshSession>>,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession").field("target", &self.cfg.target()).finish()
    }
}

/// Ciphers in order of preference: the AES-GCM ones first (with AES-NI they encrypt bulk data
/// several times faster than chacha20-poly1305, which russh and OpenSSH put first), then
/// russh's default order.
fn cipher_preference() -> Vec<russh::cipher::Name> {
    use russh::cipher::{AES_128_GCM, AES_256_GCM};
    let first = [AES_128_GCM, AES_256_GCM];
    let rest = russh::Preferred::DEFAULT.cipher.iter().filter(|c| !first.contains(c));
    first.iter().chain(rest).copied().collect()
}

fn load_identity(cfg: &SshConfig, path: &Path) -> Result<Arc<ssh_key::PrivateKey>, SshError> {
    let identity_error = |reason: String| SshError::Identity {
        target: cfg.target(),
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| identity_error(e.to_string()))?;
    if PublicKey::from_openssh(text.trim()).is_ok() {
        let private = path.with_extension("");
        return Err(identity_error(format!(
            "this is a public key; the identity is the private key file{}",
            match path.extension() {
                Some(e) if e == "pub" => format!(" ({})", private.display()),
                _ => String::new(),
            }
        )));
    }
    let key = ssh_key::PrivateKey::from_openssh(text.trim_start())
        .map_err(|e| identity_error(format!("{e} (expected an OpenSSH private key)")))?;
    if key.is_encrypted() {
        return Err(identity_error(
            "the key is passphrase-protected; add it to ssh-agent (ssh-add FILE) instead"
                .to_owned(),
        ));
    }
    Ok(Arc::new(key))
}

/// The public key of an identity file: its `.pub`, else the public half of the private key
/// file (readable even when the key is encrypted).
fn public_of(path: &Path) -> Option<PublicKey> {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let from_pub = std::fs::read_to_string(PathBuf::from(pub_path))
        .ok()
        .and_then(|t| PublicKey::from_openssh(t.trim()).ok());
    from_pub.or_else(|| {
        let text = std::fs::read_to_string(path).ok()?;
        ssh_key::PrivateKey::from_openssh(text.trim_start()).ok().map(|k| k.public_key().clone())
    })
}

/// The hash of RSA signatures, from the server's `server-sig-algs`; asked only when an RSA key
/// is offered, since russh waits up to a second for the server's extension info, which not
/// every server sends.
#[derive(Default)]
struct RsaHash(Option<Option<HashAlg>>);

impl RsaHash {
    /// For a key of `algorithm`: `None` but for RSA.
    async fn for_key(
        &mut self,
        handle: &Handle<ClientHandler>,
        algorithm: &Algorithm,
    ) -> Option<HashAlg> {
        if !matches!(algorithm, Algorithm::Rsa { .. }) {
            return None;
        }
        if let Some(hash) = self.0 {
            return hash;
        }
        let hash = match handle.best_supported_rsa_hash().await {
            Ok(Some(h)) => h,
            _ => Some(HashAlg::Sha256),
        };
        self.0 = Some(hash);
        hash
    }
}

impl SshSession {
    /// Connect through `cfg`'s bastions in turn, then to the host; at each hop check the host
    /// key and authenticate, each hop within its own `connect_timeout`.
    pub async fn connect(cfg: &SshConfig) -> Result<SshSession, SshError> {
        let mut via = None;
        for hop in &cfg.jumps {
            via = Some(Self::connect_hop(hop, via).await?);
        }
        Self::connect_hop(cfg, via).await
    }

    /// Connect to one host (directly, or over a channel of the bastion `via`), check its key
    /// and authenticate, within `cfg.connect_timeout`.
    async fn connect_hop(cfg: &SshConfig, via: Option<SshSession>) -> Result<SshSession, SshError> {
        let cfg = Arc::new(cfg.clone());
        let timeout = cfg.connect_timeout;
        let first =
            if via.is_some() { "opening a channel through the bastion" } else { "TCP connect" };
        let step = Arc::new(Mutex::new(first));
        let attempt = Self::connect_inner(cfg.clone(), via, step.clone());
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SshError::Timeout {
                target: cfg.target(),
                timeout,
                step: *step.lock().unwrap_or_else(|p| p.into_inner()),
            }),
        }
    }

    async fn connect_inner(
        cfg: Arc<SshConfig>,
        via: Option<SshSession>,
        step: Arc<Mutex<&'static str>>,
    ) -> Result<SshSession, SshError> {
        let target = cfg.target();
        let set_step = |s| *step.lock().unwrap_or_else(|p| p.into_inner()) = s;
        let expect = Expectation::for_config(&cfg)?;

        // Ask first for the host key algorithms we hold keys of (as OpenSSH does), so a host with
        // several keys offers the one we can check.
        let mut algorithms: Vec<Algorithm> = russh::Preferred::DEFAULT.key.to_vec();
        let known: Vec<Algorithm> = expect.keys().iter().map(|k| k.algorithm()).collect();
        algorithms.sort_by_key(|a| !known.iter().any(|k| same_family(a, k)));
        let config = client::Config {
            preferred: russh::Preferred {
                key: Cow::Owned(algorithms),
                cipher: Cow::Owned(cipher_preference()),
                ..russh::Preferred::DEFAULT
            },
            keepalive_interval: cfg.keepalive.map(|k| k.interval),
            keepalive_max: cfg.keepalive.map_or(3, |k| k.max_missed),
            inactivity_timeout: None,
            nodelay: true,
            window_size: 8 << 20,
            ..client::Config::default()
        };

        let refusal = Arc::new(Mutex::new(None));
        let handler = ClientHandler { cfg: cfg.clone(), expect, refusal: refusal.clone() };
        let config = Arc::new(config);
        let connected = match &via {
            None => {
                let socket = tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port))
                    .await
                    .map_err(|source| SshError::Connect { target: target.clone(), source })?;
                let _ = socket.set_nodelay(true);
                set_step("key exchange");
                client::connect_stream(config, socket, handler).await
            }
            Some(bastion) => {
                let channel = bastion
                    .handle
                    .channel_open_direct_tcpip(
                        cfg.host.as_str(),
                        u32::from(cfg.port),
                        "127.0.0.1",
                        0,
                    )
                    .await
                    .map_err(|e| SshError::Jump {
                        target: target.clone(),
                        via: bastion.target(),
                        reason: e.to_string(),
                    })?;
                set_step("key exchange");
                client::connect_stream(config, channel.into_stream(), handler).await
            }
        };
        let mut handle = match connected {
            Ok(h) => h,
            Err(source) => {
                if let Some(e) = refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(e);
                }
                return Err(SshError::Protocol { target, step: "connect", source });
            }
        };
        set_step("authentication");
        Self::authenticate(&cfg, &mut handle).await?;
        Ok(SshSession { handle, cfg, sftp: tokio::sync::Mutex::new(None), via: via.map(Box::new) })
    }

    /// Offer the keys in turn (see the module doc of [`super`] for the order); every refusal
    /// is noted for the error.
    async fn authenticate(
        cfg: &SshConfig,
        handle: &mut Handle<ClientHandler>,
    ) -> Result<(), SshError> {
        let target = cfg.target();
        let mut tried = Vec::new();
        let mut rsa_hash = RsaHash::default();

        // The explicit identity first: one that cannot be loaded is an error.
        if let Some(path) = &cfg.identity {
            let key = load_identity(cfg, path)?;
            if Self::offer(cfg, handle, path, key, &mut rsa_hash, &mut tried).await? {
                return Ok(());
            }
        }
        // The SSH config's identity files: a missing one is skipped, as ssh does.
        for path in &cfg.identity_files {
            if Self::offer_file(cfg, handle, path, &mut rsa_hash, &mut tried).await? {
                return Ok(());
            }
        }

        if cfg.use_agent {
            // With IdentitiesOnly, only the agent's copies of the identity files.
            let only: Option<Vec<PublicKey>> = cfg.identities_only.then(|| {
                cfg.identity
                    .iter()
                    .chain(&cfg.identity_files)
                    .filter_map(|p| public_of(p))
                    .collect()
            });
            if Self::offer_agent(cfg, handle, only.as_deref(), &mut rsa_hash, &mut tried).await {
                return Ok(());
            }
        }

        // The default files, only when no identity was named.
        if cfg.identity.is_none() && cfg.identity_files.is_empty() {
            if let Some(home) = std::env::var_os("HOME") {
                for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                    let path = PathBuf::from(&home).join(".ssh").join(name);
                    if Self::offer_file(cfg, handle, &path, &mut rsa_hash, &mut tried).await? {
                        return Ok(());
                    }
                }
            }
        }
        if tried.is_empty() {
            tried.push("no identity given, no ssh-agent, no ~/.ssh/id_* file".to_owned());
        }
        Err(SshError::Auth {
            target,
            hint: cfg.source.identity_hint(),
            user: cfg.user.clone(),
            tried,
        })
    }

    /// Offer the key of `path` if the file exists (a key that cannot be loaded is noted).
    async fn offer_file(
        cfg: &SshConfig,
        handle: &mut Handle<ClientHandler>,
        path: &Path,
        rsa_hash: &mut RsaHash,
        tried: &mut Vec<String>,
    ) -> Result<bool, SshError> {
        if !path.exists() {
            return Ok(false);
        }
        match load_identity(cfg, path) {
            Ok(key) => Self::offer(cfg, handle, path, key, rsa_hash, tried).await,
            Err(e) => {
                tried.push(e.to_string());
                Ok(false)
            }
        }
    }

    /// Offer one private key; `Ok(false)` (and a note) when the server refuses it.
    async fn offer(
        cfg: &SshConfig,
        handle: &mut Handle<ClientHandler>,
        path: &Path,
        key: Arc<ssh_key::PrivateKey>,
        rsa_hash: &mut RsaHash,
        tried: &mut Vec<String>,
    ) -> Result<bool, SshError> {
        let desc =
            format!("{} ({})", path.display(), key.public_key().fingerprint(HashAlg::Sha256));
        let hash = rsa_hash.for_key(handle, &key.algorithm()).await;
        let with_hash = PrivateKeyWithHashAlg::new(key, hash);
        let result = handle
            .authenticate_publickey(&cfg.user, with_hash)
            .await
            .map_err(|source| SshError::Protocol { target: cfg.target(), step: "auth", source })?;
        if !result.success() {
            tried.push(format!("{desc} refused"));
        }
        Ok(result.success())
    }

    /// Offer the keys of ssh-agent (those in `only`, when given); whether one was accepted.
    async fn offer_agent(
        cfg: &SshConfig,
        handle: &mut Handle<ClientHandler>,
        only: Option<&[PublicKey]>,
        rsa_hash: &mut RsaHash,
        tried: &mut Vec<String>,
    ) -> bool {
        if std::env::var_os("SSH_AUTH_SOCK").is_none() {
            tried.push("ssh-agent: SSH_AUTH_SOCK is not set".to_owned());
            return false;
        }
        let mut agent = match russh::keys::agent::client::AgentClient::connect_env().await {
            Ok(a) => a,
            Err(e) => {
                tried.push(format!("ssh-agent: cannot connect: {e}"));
                return false;
            }
        };
        let ids = match agent.request_identities().await {
            Ok(ids) if ids.is_empty() => {
                tried.push("ssh-agent: holds no keys".to_owned());
                return false;
            }
            Ok(ids) => ids,
            Err(e) => {
                tried.push(format!("ssh-agent: cannot list keys: {e}"));
                return false;
            }
        };
        for id in ids {
            let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
                continue;
            };
            if only.is_some_and(|only| !only.iter().any(|k| k.key_data() == key.key_data())) {
                continue;
            }
            let hash = rsa_hash.for_key(handle, &key.algorithm()).await;
            let fp = key.fingerprint(HashAlg::Sha256);
            match handle.authenticate_publickey_with(&cfg.user, key, hash, &mut agent).await {
                Ok(r) if r.success() => return true,
                Ok(_) => tried.push(format!("ssh-agent key {fp} refused")),
                Err(e) => tried.push(format!("ssh-agent key {fp}: {e}")),
            }
        }
        false
    }

    /// The configuration this session was opened with.
    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    /// `host:port`.
    pub fn target(&self) -> String {
        self.cfg.target()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Run `argv` on the host (each argument shell-quoted) on a new channel of this session.
    pub async fn exec<S: AsRef<str>>(&self, argv: &[S]) -> Result<RemoteProcess, SshError> {
        let command = shell_command(argv);
        self.exec_command(&command).await
    }

    /// Run a command line given verbatim to the remote shell (quote it with [`shell_command`]).
    pub async fn exec_command(&self, command: &str) -> Result<RemoteProcess, SshError> {
        let exec_err = |reason: String| SshError::Exec {
            target: self.target(),
            command: command.to_owned(),
            reason,
        };
        if command.contains('\0') {
            return Err(exec_err("the command holds a NUL byte".to_owned()));
        }
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| exec_err(format!("cannot open a channel: {e}")))?;
        channel.exec(true, command).await.map_err(|e| exec_err(format!("cannot send: {e}")))?;
        // Wait for the server's answer to the exec request: data before it is kept.
        let mut early = Vec::new();
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    return Err(exec_err("the host refused to run it".to_owned()))
                }
                Some(ChannelMsg::WindowAdjusted { .. }) => {}
                Some(msg @ (ChannelMsg::Data { .. } | ChannelMsg::ExtendedData { .. })) => {
                    early.push(msg)
                }
                Some(other) => early.push(other),
                None => return Err(exec_err("the connection closed".to_owned())),
            }
        }
        let (read_half, write_half) = channel.split();
        let (ended_tx, ended_rx) = watch::channel(false);
        let stdin = RemoteStdin::new(write_half.make_writer(), ended_rx);
        let (stdout_tx, stdout_rx) = mpsc::channel(STDOUT_QUEUE);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (close_tx, close_rx) = oneshot::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let ends = PumpEnds {
            stdout: stdout_tx,
            stderr: stderr.clone(),
            exit: exit_tx,
            close: close_rx,
            ended: ended_tx,
        };
        tokio::spawn(pump(read_half, write_half, early, ends));
        Ok(RemoteProcess {
            stdin,
            stdout: RemoteStdout { rx: stdout_rx, current: Bytes::new() },
            exit: RemoteExit {
                rx: exit_rx,
                stderr,
                close: Some(close_tx),
                target: self.target(),
                command: command.to_owned(),
            },
        })
    }

    /// Run `argv` with empty stdin and return its stdout; a non-zero exit is
    /// [`SshError::CommandFailed`] with its stderr.
    pub async fn run<S: AsRef<str>>(&self, argv: &[S]) -> Result<Vec<u8>, SshError> {
        let process = self.exec(argv).await?;
        let (mut stdin, mut stdout, exit) = process.split();
        let _ = stdin.shutdown().await;
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out).await;
        let status = exit.wait_checked().await?;
        debug_assert!(status.success());
        read.map_err(|e| SshError::Exec {
            target: self.target(),
            command: shell_command(argv),
            reason: format!("reading stdout: {e}"),
        })?;
        Ok(out)
    }

    /// The host's machine architecture (`uname -m`: `x86_64`, `aarch64`...).
    pub async fn remote_arch(&self) -> Result<String, SshError> {
        let out = self.run(&["uname", "-m"]).await?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// The SFTP session of this connection, opened on first use; `Err` with the reason when the
    /// host has no SFTP subsystem.
    async fn sftp(&self) -> Result<Arc<russh_sftp::client::SftpSession>, String> {
        let mut slot = self.sftp.lock().await;
        if slot.is_none() {
            *slot = Some(self.open_sftp().await);
        }
        slot.clone().unwrap_or_else(|| Err("no SFTP session".to_owned()))
    }

    async fn open_sftp(&self) -> Result<Arc<russh_sftp::client::SftpSession>, String> {
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| format!("subsystem request: {e}"))?;
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    return Err("the host has no sftp subsystem".to_owned())
                }
                Some(ChannelMsg::WindowAdjusted { .. }) => {}
                Some(other) => {
                    return Err(format!("unexpected answer to the sftp request: {other:?}"))
                }
                None => return Err("the channel closed on the sftp request".to_owned()),
            }
        }
        let sftp = russh_sftp::client::SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| format!("sftp handshake: {e}"))?;
        Ok(Arc::new(sftp))
    }

    /// Copy a local file to `remote` (absolute, or relative to the login's home directory) with
    /// permission bits `mode`, creating the parent directory. The data goes over SFTP, or through
    /// `cat` on an exec channel when the host has no SFTP subsystem; it lands under a temp name
    /// that is checked for size, then renamed over `remote` (`mv -f`: atomic replacement).
    /// Returns whether SFTP was used.
    pub async fn upload(
        &self,
        local: &Path,
        remote: &str,
        mode: u32,
    ) -> Result<UploadMethod, SshError> {
        let upload_err = |reason: String| SshError::Upload {
            target: self.target(),
            local: local.display().to_string(),
            remote: remote.to_owned(),
            reason,
        };
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| upload_err(format!("cannot open: {e}")))?;
        let size = file.metadata().await.map_err(|e| upload_err(e.to_string()))?.len();
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = format!("{remote}.ferry-upload-{}-{nonce:08x}", std::process::id());
        let parent = match remote.rfind('/') {
            Some(0) => "/".to_owned(),
            Some(i) => remote[..i].to_owned(),
            None => ".".to_owned(),
        };
        let mode = format!("{:o}", mode & 0o7777);

        match self.sftp().await {
            Ok(sftp) => {
                self.run(&["mkdir", "-p", "--", &parent])
                    .await
                    .map_err(|e| upload_err(e.to_string()))?;
                let mut remote_file = sftp
                    .create(tmp.clone())
                    .await
                    .map_err(|e| upload_err(format!("sftp create {tmp}: {e}")))?;
                let copied = tokio::io::copy_buf(
                    &mut tokio::io::BufReader::with_capacity(256 << 10, &mut file),
                    &mut remote_file,
                )
                .await
                .map_err(|e| upload_err(format!("sftp write: {e}")));
                let closed = remote_file
                    .shutdown()
                    .await
                    .map_err(|e| upload_err(format!("sftp close: {e}")));
                if let Err(e) = copied.and(closed) {
                    let _ = sftp.remove_file(tmp.clone()).await;
                    return Err(e);
                }
                let script = "[ \"$(wc -c < \"$1\")\" -eq \"$2\" ] || { rm -f \"$1\"; echo \"short upload: $(wc -c < \"$1\") of $2 bytes\" >&2; exit 1; }; chmod \"$3\" \"$1\" && mv -f \"$1\" \"$4\"";
                self.run(&["sh", "-c", script, "sh", &tmp, &size.to_string(), &mode, remote])
                    .await
                    .map_err(|e| upload_err(e.to_string()))?;
                Ok(UploadMethod::Sftp)
            }
            Err(why_not) => {
                let script = "mkdir -p -- \"$5\" && cat > \"$1\" && { [ \"$(wc -c < \"$1\")\" -eq \"$2\" ] || { echo \"short upload: $(wc -c < \"$1\") of $2 bytes\" >&2; rm -f \"$1\"; exit 1; }; } && chmod \"$3\" \"$1\" && mv -f \"$1\" \"$4\"";
                let process = self
                    .exec(&[
                        "sh",
                        "-c",
                        script,
                        "sh",
                        &tmp,
                        &size.to_string(),
                        &mode,
                        remote,
                        &parent,
                    ])
                    .await
                    .map_err(|e| upload_err(format!("{e} (SFTP unavailable: {why_not})")))?;
                let (mut stdin, _stdout, exit) = process.split();
                let sent = async {
                    tokio::io::copy(&mut file, &mut stdin).await?;
                    stdin.shutdown().await
                }
                .await;
                let status = exit.wait_checked().await.map_err(|e| upload_err(e.to_string()))?;
                debug_assert!(status.success());
                sent.map_err(|e| upload_err(format!("sending over exec: {e}")))?;
                Ok(UploadMethod::Exec)
            }
        }
    }

    /// Close the connection (every channel ends), then the bastions' it went through.
    pub async fn close(&self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
        if let Some(via) = &self.via {
            Box::pin(via.close()).await;
        }
    }
}

/// How [`SshSession::upload`] moved the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMethod {
    /// Over the SFTP subsystem.
    Sftp,
    /// Through `cat` on an exec channel (the host has no SFTP).
    Exec,
}

/// Where [`pump`] delivers a channel's messages.
struct PumpEnds {
    stdout: mpsc::Sender<Bytes>,
    stderr: Arc<Mutex<Vec<u8>>>,
    exit: oneshot::Sender<Option<RemoteStatus>>,
    /// Fires when the caller gives the process up.
    close: oneshot::Receiver<()>,
    /// Set once the channel has ended (stdin writes fail from then on).
    ended: watch::Sender<bool>,
}

/// Moves channel messages to the stdout queue, the stderr buffer and the exit slot.
async fn pump(
    mut read: russh::ChannelReadHalf,
    write: russh::ChannelWriteHalf<client::Msg>,
    early: Vec<ChannelMsg>,
    ends: PumpEnds,
) {
    let PumpEnds { stdout, stderr, exit, mut close, ended } = ends;
    let mut stdout = Some(stdout);
    let mut status: Option<RemoteStatus> = None;
    let mut close_armed = true;
    let mut pending = early.into_iter();
    loop {
        let msg = if let Some(m) = pending.next() {
            Some(m)
        } else {
            tokio::select! {
                m = read.wait() => m,
                r = &mut close, if close_armed => {
                    close_armed = false;
                    if r.is_ok() {
                        // The caller gave the process up: end the channel.
                        let _ = write.close().await;
                    }
                    continue;
                }
            }
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                if let Some(tx) = &stdout {
                    if tx.send(data).await.is_err() {
                        stdout = None; // reader dropped: discard the rest
                    }
                }
            }
            Some(ChannelMsg::ExtendedData { data, .. }) => {
                let mut buf = stderr.lock().unwrap_or_else(|p| p.into_inner());
                buf.extend_from_slice(&data);
                if buf.len() > STDERR_CAP {
                    let cut = buf.len() - STDERR_CAP;
                    buf.drain(..cut);
                }
            }
            Some(ChannelMsg::Eof) => stdout = None,
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                status = Some(RemoteStatus { code: Some(exit_status), signal: None })
            }
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                status = Some(RemoteStatus { code: None, signal: Some(format!("{signal_name:?}")) })
            }
            Some(ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    drop(stdout);
    let _ = ended.send(true);
    let _ = exit.send(status);
}

/// A remote command: stdin, stdout and the exit. Use [`RemoteProcess::split`] to drive the
/// halves from different tasks.
#[derive(Debug)]
pub struct RemoteProcess {
    /// The command's standard input; `shutdown()` sends EOF.
    pub stdin: RemoteStdin,
    /// The command's standard output.
    pub stdout: RemoteStdout,
    /// Its exit status and stderr.
    pub exit: RemoteExit,
}

impl RemoteProcess {
    /// The three parts.
    pub fn split(self) -> (RemoteStdin, RemoteStdout, RemoteExit) {
        (self.stdin, self.stdout, self.exit)
    }
}

/// Writes to a remote command's stdin, honouring the SSH channel window. Writes fail with
/// `BrokenPipe` once the channel or the connection has ended (also while waiting for window).
pub struct RemoteStdin {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    ended: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl RemoteStdin {
    fn new(inner: impl AsyncWrite + Send + 'static, mut ended: watch::Receiver<bool>) -> Self {
        let ended = Box::pin(async move {
            let _ = ended.wait_for(|e| *e).await;
        });
        RemoteStdin { inner: Box::pin(inner), ended: Some(ended) }
    }

    fn poll_ended(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(fut) = self.ended.as_mut() {
            if fut.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.ended = None;
        }
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the SSH channel has ended (remote exit or connection lost)",
        ))
    }
}

impl fmt::Debug for RemoteStdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RemoteStdin")
    }
}

impl AsyncWrite for RemoteStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_ended(cx)?;
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_ended(cx)?;
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// Reads a remote command's stdout; EOF when the command closes it or the connection ends.
#[derive(Debug)]
pub struct RemoteStdout {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl RemoteStdout {
    /// Put `data` back in front of what is still to be read (bytes read past a marker line by
    /// a caller that hands the rest of the stream on). Only while nothing is buffered.
    pub(super) fn unread(&mut self, data: Bytes) {
        debug_assert!(self.current.is_empty());
        self.current = data;
    }
}

impl AsyncRead for RemoteStdout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(data) => self.current = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// The end of a remote command. Dropping it before the command exits closes the channel.
#[derive(Debug)]
pub struct RemoteExit {
    rx: oneshot::Receiver<Option<RemoteStatus>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    close: Option<oneshot::Sender<()>>,
    target: String,
    command: String,
}

impl RemoteExit {
    /// Stderr received so far (lossy UTF-8, the last [`STDERR_CAP`] bytes).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Wait for the command to end. The connection dropping first is
    /// [`SshError::ConnectionLost`]; a non-zero status is returned as is.
    pub async fn wait(mut self) -> Result<RemoteStatus, SshError> {
        drop(self.close.take()); // finishing normally: never close early
        let status = (&mut self.rx).await.ok().flatten();
        match status {
            Some(s) => Ok(s),
            None => Err(SshError::ConnectionLost {
                target: self.target.clone(),
                command: self.command.clone(),
                stderr: self.stderr(),
            }),
        }
    }

    /// [`RemoteExit::wait`], also returning the command's stderr (the tail, all of it received).
    pub async fn wait_with_stderr(self) -> Result<(RemoteStatus, String), SshError> {
        let stderr = self.stderr.clone();
        let status = self.wait().await?;
        let text =
            String::from_utf8_lossy(&stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        Ok((status, text))
    }

    /// [`RemoteExit::wait`], with a non-zero status as [`SshError::CommandFailed`].
    pub async fn wait_checked(self) -> Result<RemoteStatus, SshError> {
        let target = self.target.clone();
        let command = self.command.clone();
        let stderr = self.stderr.clone();
        let status = self.wait().await?;
        if status.success() {
            Ok(status)
        } else {
            Err(SshError::CommandFailed {
                target,
                command,
                status,
                stderr: String::from_utf8_lossy(&stderr.lock().unwrap_or_else(|p| p.into_inner()))
                    .into_owned(),
            })
        }
    }
}

impl Drop for RemoteExit {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}
