//! The far side of `ferry bench --compare`: a throwaway OpenSSH server (Debian's
//! `/usr/sbin/sshd -D -e -f CONFIG`) on a free `127.0.0.1` port, with its keys, `known_hosts`,
//! client `ssh_config` (host alias `peer`, for Nix and rsync) and Nix configuration in a
//! directory of the bench's own. Nothing of the system's sshd is read or changed; `/run/sshd`
//! (sshd's privilege separation directory) is created when missing. Stopped by PID on drop.
//!
//! Sessions get `PATH` = this ferry's directory first (the host has ferry installed, as it has
//! Nix and rsync: no agent upload is timed), `HOME` under the directory, and the variables that
//! make a Nix started there read only the bench's `nix.conf` ([`NIX_CONF`]): the same file every
//! local Nix of the bench reads ([`nix_command`]). (The test harness has its own fixture,
//! `ferry_tests::sshd`; the binary cannot depend on it.)

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where Debian's OpenSSH server lives.
const SSHD: &str = "/usr/sbin/sshd";

/// The only Nix configuration the bench's Nix processes read, on both sides: root without a
/// `nixbld` group, no binary cache, the `nix` command.
pub const NIX_CONF: &str =
    "build-users-group =\nsubstituters =\nexperimental-features = nix-command\nsandbox = false\n";

/// A running throwaway sshd.
#[derive(Debug)]
pub struct BenchSshd {
    dir: PathBuf,
    port: u16,
    user: String,
    child: Child,
}

/// The files of a server, known from its directory alone (the bench's inner process, under
/// `unshare -n`, finds them there).
#[derive(Debug, Clone)]
pub struct SshdFiles {
    /// The directory.
    pub dir: PathBuf,
    /// The port on `127.0.0.1`.
    pub port: u16,
    /// The login user.
    pub user: String,
}

impl SshdFiles {
    /// Read back what [`BenchSshd::start`] wrote into `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<SshdFiles> {
        let text = fs::read_to_string(dir.join("endpoint")).context("the bench sshd's endpoint")?;
        let (user, port) = text.trim().split_once('@').context("bad endpoint file")?;
        Ok(SshdFiles { dir: dir.to_owned(), port: port.parse()?, user: user.to_owned() })
    }

    /// The client key.
    pub fn identity(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// `known_hosts` pinning the host key at `[127.0.0.1]:PORT`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// OpenSSH client configuration: host `peer`.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// `ssh://USER@127.0.0.1:PORT?root=ROOT`: a ferry host with its store under `root`.
    pub fn ferry_uri(&self, root: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}?root={}", self.user, self.port, root.display())
    }

    /// A `Command` for the Nix tool `program` reading only [`NIX_CONF`], its `HOME` under the
    /// directory, and `NIX_SSHOPTS` pointing at [`Self::ssh_config`].
    pub fn nix_command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for var in ["NIX_CONFIG", "NIX_REMOTE", "NIX_PATH", "NIX_STORE_DIR", "NIX_STATE_DIR"] {
            c.env_remove(var);
        }
        let home = self.dir.join("home");
        c.env("NIX_CONF_DIR", self.dir.join("nixconf"))
            .env("NIX_USER_CONF_FILES", self.dir.join("nixconf/nix.conf"))
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("NIX_SSHOPTS", format!("-F {}", self.ssh_config().display()));
        c
    }

    /// `ssh -F CONFIG`, for rsync's `-e`.
    pub fn ssh_command_line(&self) -> String {
        format!("ssh -F {}", self.ssh_config().display())
    }
}

fn keygen(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh-keygen (apt-get install openssh-client)")?;
    if !out.status.success() {
        bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let public = fs::read_to_string(path.with_extension("pub"))?;
    Ok(public.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl BenchSshd {
    /// Start a server whose files live in `dir` (created).
    pub fn start(dir: &Path) -> anyhow::Result<BenchSshd> {
        if !Path::new(SSHD).exists() {
            bail!("{SSHD} is missing: apt-get install openssh-server");
        }
        let _ = fs::create_dir_all("/run/sshd");
        for d in ["home", "nixconf"] {
            fs::create_dir_all(dir.join(d))?;
        }
        fs::write(dir.join("nixconf/nix.conf"), NIX_CONF)?;
        let host_key = keygen(&dir.join("host_ed25519"))?;
        let client_key = keygen(&dir.join("id_ed25519"))?;
        fs::write(dir.join("authorized_keys"), format!("{client_key}\n"))?;
        let user = rustix::process::geteuid();
        let user = if user.is_root() {
            "root".to_owned()
        } else {
            std::env::var("USER").context("who am I: USER is not set")?
        };
        let exe = std::env::current_exe()?;
        let exe_dir = exe.parent().context("the ferry executable's directory")?;
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port()?;
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                 AuthorizedKeysFile {auth}\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nMaxSessions 100\n\
                 MaxStartups 100:30:200\nSubsystem sftp internal-sftp\n\
                 SetEnv HOME={home} PATH={path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
                 NIX_CONF_DIR={nc} NIX_USER_CONF_FILES={nc}/nix.conf\n",
                hk = dir.join("host_ed25519").display(),
                pid = dir.join("sshd.pid").display(),
                auth = dir.join("authorized_keys").display(),
                home = dir.join("home").display(),
                path = exe_dir.display(),
                nc = dir.join("nixconf").display(),
            );
            fs::write(dir.join("sshd_config"), config)?;
            fs::write(dir.join("known_hosts"), format!("[127.0.0.1]:{port} {host_key}\n"))?;
            fs::write(
                dir.join("ssh_config"),
                format!(
                    "Host peer\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  \
                     IdentityFile {id}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  \
                     UserKnownHostsFile {kh}\n  LogLevel ERROR\n  BatchMode yes\n",
                    id = dir.join("id_ed25519").display(),
                    kh = dir.join("known_hosts").display(),
                ),
            )?;
            fs::write(dir.join("endpoint"), format!("{user}@{port}"))?;
            let log = fs::File::create(dir.join("sshd.log"))?;
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(dir.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {SSHD}"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "sshd exited ({status}): {}",
                        fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(BenchSshd { dir: dir.to_owned(), port, user, child });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("the bench's sshd did not come up on port {port}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last.contains("Address already in use") {
                break;
            }
        }
        bail!("the bench's sshd did not start: {last}")
    }

    /// Its files.
    pub fn files(&self) -> SshdFiles {
        SshdFiles { dir: self.dir.clone(), port: self.port, user: self.user.clone() }
    }
}

impl Drop for BenchSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
