//! A throwaway OpenSSH server on loopback: the host every transfer, deploy and bench test talks to.
//!
//! [`Sshd::start`] runs Debian's `/usr/sbin/sshd -D -e -f CONFIG` on a free `127.0.0.1` port with
//! everything in a temp dir: an ed25519 host key (RSA and ECDSA host keys on request), user keys of
//! the three kinds (ed25519, RSA, ECDSA) all in its `authorized_keys`, a `known_hosts` file that
//! pins the host keys, an `ssh_config` for OpenSSH clients (Nix, rsync) and the server log. Nothing
//! of the system's own sshd is read or changed; the only thing created outside the temp dir is
//! `/run/sshd` (sshd's privilege separation directory) when it is missing.
//!
//! The server logs in the user running the tests (root in CI, `PermitRootLogin
//! prohibit-password`), by key only, or another existing user ([`SshdOptions::user`], for the
//! `sudo -n` tests; the fixture needs root then). For another user the fixture's temp dir is
//! made traversable (mode 711, not listable), `authorized_keys` readable (sshd reads it as the
//! user) and the sessions' `home/` is given to that user; the private keys stay the caller's. It is stopped by PID when the fixture is dropped, together
//! with every session process it forked. [`Sshd::kill_connections`] cuts the live sessions while
//! the listener stays up (a dropped connection); [`Sshd::kill`] takes the whole server down.
//!
//! Remote sessions get `HOME` set to the fixture's own `home/` (`SetEnv HOME=...`): the
//! login user's shell startup files are not run (Debian's bash sources `~/.bashrc` for commands
//! over SSH, and a slow or locking one — pyenv's rehash lock, say — would stall every channel),
//! and each host of a fleet has its own `~/.cache`. The working directory of a session is still
//! the user's home from the password database, so tests should give remote paths absolutely.
//! They also get the variables that make a Nix started there (`ferry copy --to nix+ssh://`,
//! `nix copy --to ssh://`) read only the tests' `nix.conf`, as every local Nix does
//! ([`crate::nix::remote_env`]): through `SetEnv`, which the fixture owns, rather than the login
//! user's `~/.ssh/environment`, which is state outside the temp dir and needs
//! `PermitUserEnvironment`.
//!
//! A missing `sshd` or `ssh-keygen` is a panic that says which package to install, never a skip.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian's OpenSSH server lives.
pub const SSHD: &str = "/usr/sbin/sshd";

/// The `PATH` sshd gives a session on Debian (its compiled-in default for root).
pub const DEFAULT_REMOTE_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A kind of SSH key the fixture makes with `ssh-keygen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ssh-rsa` (2048 bits, signed with `rsa-sha2-256/512`).
    Rsa,
    /// `ecdsa-sha2-nistp256`.
    Ecdsa,
}

impl KeyKind {
    /// All three kinds.
    pub const ALL: [KeyKind; 3] = [KeyKind::Ed25519, KeyKind::Rsa, KeyKind::Ecdsa];

    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::Ed25519 => &["-t", "ed25519"],
            KeyKind::Rsa => &["-t", "rsa", "-b", "2048"],
            KeyKind::Ecdsa => &["-t", "ecdsa", "-b", "256"],
        }
    }

    /// File name stem used in the fixture's directory.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Rsa => "rsa",
            KeyKind::Ecdsa => "ecdsa",
        }
    }
}

/// How to start an [`Sshd`].
#[derive(Debug, Clone)]
pub struct SshdOptions {
    /// Offer the `sftp` subsystem (`internal-sftp`). Without it, uploads must go over exec.
    pub sftp: bool,
    /// Host key kinds, in the order sshd lists them; the first is [`Sshd::host_key`].
    pub host_keys: Vec<KeyKind>,
    /// `PATH` of remote sessions (`SetEnv PATH=...`); `None` keeps sshd's default. See
    /// [`remote_path`].
    pub path: Option<String>,
    /// Extra `sshd_config` lines, appended verbatim.
    pub extra_config: Vec<String>,
    /// The login user; `None` is the user running the tests. Another user must exist (see
    /// [`user_exists`]); tests that need one skip with a message when it does not.
    pub user: Option<String>,
}

impl Default for SshdOptions {
    fn default() -> Self {
        SshdOptions {
            sftp: true,
            host_keys: vec![KeyKind::Ed25519],
            path: None,
            extra_config: Vec::new(),
            user: None,
        }
    }
}

impl SshdOptions {
    /// The default server without the `sftp` subsystem (to test bootstrap over exec).
    pub fn without_sftp() -> Self {
        SshdOptions { sftp: false, ..Self::default() }
    }
}

/// A `PATH` value for remote sessions: `dirs` first, then sshd's default system path.
pub fn remote_path(dirs: &[&Path]) -> String {
    let mut parts: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    parts.push(DEFAULT_REMOTE_PATH.to_owned());
    parts.join(":")
}

/// A running throwaway sshd; stopped (with its sessions) on drop.
#[derive(Debug)]
pub struct Sshd {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
    user: String,
    host_keys: Vec<(KeyKind, String)>,
    options: SshdOptions,
}

impl Sshd {
    /// Start a server with the default options (ed25519 host key, SFTP on).
    pub fn start() -> Sshd {
        Sshd::start_with(SshdOptions::default())
    }

    /// Start a server; panics with the log when it does not come up.
    pub fn start_with(options: SshdOptions) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install it with `apt-get install -y openssh-server`"
        );
        assert!(!options.host_keys.is_empty(), "an sshd needs at least one host key");
        // sshd refuses to start without its privilege separation directory. Creating it needs
        // root; a non-root sshd runs without privilege separation and does not use it.
        let _ = fs::create_dir_all("/run/sshd");

        let dir = tempfile::Builder::new().prefix("ferry-sshd-").tempdir().expect("temp dir");
        let user = options.user.clone().unwrap_or_else(current_user);
        let mut host_keys = Vec::new();
        for kind in &options.host_keys {
            let path = dir.path().join(format!("host_{}", kind.name()));
            keygen(*kind, &path);
            host_keys.push((*kind, public_key_line(&path)));
        }
        let mut authorized = String::new();
        for kind in KeyKind::ALL {
            let path = dir.path().join(format!("id_{}", kind.name()));
            keygen(kind, &path);
            authorized.push_str(&public_key_line(&path));
            authorized.push('\n');
        }
        write_private(&dir.path().join("authorized_keys"), &authorized);
        fs::create_dir(dir.path().join("home")).expect("create the sessions' HOME");
        if user != current_user() {
            open_to_user(dir.path(), &user);
        }

        let mut sshd = Sshd { dir, child: None, port: 0, user, host_keys, options };
        let mut last_log = String::new();
        for _attempt in 0..20 {
            let port = free_port();
            sshd.port = port;
            sshd.write_files();
            let config = sshd.config_path();
            let log = fs::File::create(sshd.log_path()).expect("sshd log file");
            let check =
                Command::new(SSHD).arg("-t").arg("-f").arg(&config).output().unwrap_or_else(|e| {
                    panic!("cannot run {SSHD}: {e} (install it: apt-get install -y openssh-server)")
                });
            assert!(
                check.status.success(),
                "sshd -t rejects the fixture config:\n{}",
                String::from_utf8_lossy(&check.stderr)
            );
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {SSHD}: {e} (apt-get install -y openssh-server)")
                });
            sshd.child = Some(child);
            match sshd.wait_ready(Duration::from_secs(10)) {
                Ok(()) => return sshd,
                Err(why) => {
                    last_log = format!("{why}\n{}", sshd.log());
                    sshd.stop();
                    if !last_log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("sshd did not start:\n{last_log}");
    }

    fn write_files(&self) {
        let d = self.dir.path();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nPidFile {pid}\nAuthorizedKeysFile {auth}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel VERBOSE\n\
             MaxSessions 200\nMaxStartups 200:30:400\nAllowUsers {user}\n",
            port = self.port,
            pid = d.join("sshd.pid").display(),
            auth = d.join("authorized_keys").display(),
            user = self.user,
        );
        for (kind, _) in &self.host_keys {
            config.push_str(&format!(
                "HostKey {}\n",
                d.join(format!("host_{}", kind.name())).display()
            ));
        }
        if self.options.sftp {
            config.push_str("Subsystem sftp internal-sftp\n");
        }
        // sshd honours only the first SetEnv directive: merge ours with any in extra_config
        // (theirs win) into one line.
        let mut env = vec![format!("HOME={}", self.default_home().display())];
        // A Nix started on the host (`ferry copy --to nix+ssh://`, `nix copy --to ssh://`)
        // reads the tests' configuration only, as every local one does (crate::nix).
        for (var, value) in crate::nix::remote_env() {
            env.push(format!("{var}={}", value.to_string_lossy()));
        }
        if let Some(path) = &self.options.path {
            env.push(format!("PATH={path}"));
        }
        let mut extra = String::new();
        for line in &self.options.extra_config {
            match setenv_vars(line) {
                Some(vars) => env.extend(vars),
                None => {
                    extra.push_str(line);
                    extra.push('\n');
                }
            }
        }
        let mut merged: Vec<String> = Vec::new();
        for var in env.into_iter().rev() {
            let name = var.split('=').next().unwrap_or_default().to_owned();
            if !merged.iter().any(|m| m.split('=').next() == Some(name.as_str())) {
                merged.push(var);
            }
        }
        merged.reverse();
        config.push_str(&format!("SetEnv {}\n{extra}", merged.join(" ")));
        fs::write(self.config_path(), config).expect("write sshd_config");

        let mut known = String::new();
        for (_, line) in &self.host_keys {
            known.push_str(&format!(
                "[127.0.0.1]:{} {line}\n[localhost]:{} {line}\n",
                self.port, self.port
            ));
        }
        fs::write(self.known_hosts(), known).expect("write known_hosts");

        let ssh_config = format!(
            "Host peer\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  LogLevel ERROR\n  BatchMode yes\n",
            self.port,
            self.user,
            self.identity(KeyKind::Ed25519).display(),
            self.known_hosts().display()
        );
        fs::write(self.ssh_config(), ssh_config).expect("write ssh_config");
    }

    /// Wait until the server answers with its SSH banner.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("sshd exited ({status})"));
                }
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 8];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sshd did not answer on 127.0.0.1:{} within {timeout:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user (the one running the tests).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The PID of the listening sshd (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The first host key as a public key line: `ssh-ed25519 AAAA...` (no comment).
    pub fn host_key(&self) -> &str {
        &self.host_keys[0].1
    }

    /// The host key of one kind, if the server has one.
    pub fn host_key_of(&self, kind: KeyKind) -> Option<&str> {
        self.host_keys.iter().find(|(k, _)| *k == kind).map(|(_, line)| line.as_str())
    }

    /// A `known_hosts` file with every host key under `[127.0.0.1]:PORT` and `[localhost]:PORT`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The private key file of one kind (OpenSSH format, no passphrase), authorized on the host.
    pub fn identity(&self, kind: KeyKind) -> PathBuf {
        self.dir.path().join(format!("id_{}", kind.name()))
    }

    /// The ed25519 identity.
    pub fn identity_ed25519(&self) -> PathBuf {
        self.identity(KeyKind::Ed25519)
    }

    /// An `ssh_config` with host alias `peer` for OpenSSH clients (`ssh -F FILE peer`,
    /// `NIX_SSHOPTS="-F FILE"`, `rsync -e "ssh -F FILE"`), strict host key checking on.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// The fixture's temp dir (keys, config, log); free for tests to put a host root in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `HOME` of remote sessions: an empty directory of the fixture's own, unless a
    /// `SetEnv HOME=...` line in [`SshdOptions::extra_config`] chose another.
    pub fn home(&self) -> PathBuf {
        let vars: Vec<String> =
            self.options.extra_config.iter().filter_map(|l| setenv_vars(l)).flatten().collect();
        vars.iter()
            .rev()
            .find_map(|v| v.strip_prefix("HOME=").map(PathBuf::from))
            .unwrap_or_else(|| self.default_home())
    }

    fn default_home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The generated `sshd_config`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    /// The server's log so far (`-e`, `LogLevel VERBOSE`), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the listener is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL every session process the server forked (connections drop, as when a network
    /// link dies); the listener stays up and takes new connections.
    pub fn kill_connections(&self) {
        if let Some(pid) = self.pid() {
            kill_all(&descendants(pid));
        }
    }

    /// SIGSTOP every session process: connections stay open but go silent, as behind a dead
    /// link (only keepalives notice). [`Sshd::thaw_connections`] resumes them; drop kills them.
    pub fn freeze_connections(&self) {
        if let Some(pid) = self.pid() {
            signal_all("-STOP", &descendants(pid));
        }
    }

    /// SIGCONT the processes [`Sshd::freeze_connections`] stopped.
    pub fn thaw_connections(&self) {
        if let Some(pid) = self.pid() {
            signal_all("-CONT", &descendants(pid));
        }
    }

    /// SIGKILL the server and all its sessions, as a crashed host. [`Sshd::is_running`] is false
    /// afterwards.
    pub fn kill(&mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let sessions = descendants(child.id());
            let _ = child.kill();
            let _ = child.wait();
            kill_all(&sessions);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Several throwaway hosts, each with its own keys, port and temp dir.
#[derive(Debug)]
pub struct Fleet {
    /// The hosts, in start order.
    pub hosts: Vec<Sshd>,
}

impl Fleet {
    /// Start `n` default servers.
    pub fn start(n: usize) -> Fleet {
        Fleet::start_with(n, &SshdOptions::default())
    }

    /// Start `n` servers with the same options.
    pub fn start_with(n: usize, options: &SshdOptions) -> Fleet {
        Fleet { hosts: (0..n).map(|_| Sshd::start_with(options.clone())).collect() }
    }

    /// The hosts.
    pub fn iter(&self) -> std::slice::Iter<'_, Sshd> {
        self.hosts.iter()
    }
}

/// Whether a local user named `name` exists (`id -u NAME`).
pub fn user_exists(name: &str) -> bool {
    Command::new("id")
        .args(["-u", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `id -u NAME` / `id -g NAME`.
fn id_of(flag: &str, user: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().expect("run id");
    assert!(out.status.success(), "no user {user:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
}

/// Let `user` log in to a fixture in `dir`: traverse it, read `authorized_keys`, own `home/`.
fn open_to_user(dir: &Path, user: &str) {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = (id_of("-u", user), id_of("-g", user));
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).expect("chmod the fixture dir");
    fs::set_permissions(dir.join("authorized_keys"), fs::Permissions::from_mode(0o644))
        .expect("chmod authorized_keys");
    std::os::unix::fs::chown(dir.join("home"), Some(uid), Some(gid)).unwrap_or_else(|e| {
        panic!("cannot give the sessions' home to {user} (the fixture needs root for that): {e}")
    });
}

/// A loopback port that was free a moment ago (bind to port 0, read it, release it). The caller
/// retries when sshd then finds it taken.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// The name of the user running the tests.
pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un failed");
    String::from_utf8(out.stdout).expect("UTF-8 user name").trim().to_owned()
}

fn keygen(kind: KeyKind, path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "ferry-test"])
        .args(kind.keygen_args())
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run ssh-keygen: {e} (install it: apt-get install -y openssh-server)")
        });
    assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `TYPE BASE64` of a `.pub` file, without the comment.
fn public_key_line(private: &Path) -> String {
    let text = fs::read_to_string(private.with_extension("pub")).expect("read public key");
    let mut fields = text.split_whitespace();
    format!("{} {}", fields.next().expect("key type"), fields.next().expect("key data"))
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).expect("write file");
    let out = Command::new("chmod").arg("600").arg(path).output().expect("chmod");
    assert!(out.status.success());
}

/// The `VAR=VALUE` words of a `SetEnv` config line (`None` for other lines).
fn setenv_vars(line: &str) -> Option<Vec<String>> {
    let mut words = line.split_whitespace();
    let keyword = words.next()?;
    keyword.eq_ignore_ascii_case("SetEnv").then(|| words.map(str::to_owned).collect())
}

/// Every live descendant of `pid`, read from `/proc/*/stat`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

fn kill_all(pids: &[u32]) {
    signal_all("-KILL", pids);
}

fn signal_all(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
