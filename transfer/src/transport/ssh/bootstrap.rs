//! Agent bootstrap: which `ferry` runs on a host as the agent, and getting it there.
//!
//! One probe (`sh` only, read-only: a dry run changes nothing) reports the remote uid, `$HOME`
//! and `uname -m`; whether the user may `sudo -n` (when the agent will need it); which of
//! `zstd` and `gzip` the host has to decompress with; and what the host already holds:
//! - a `ferry` on `PATH`, used only when it is this agent (below) and neither it nor its
//!   directory is writable by anyone but the user or root;
//! - the cached agent `~/.cache/ferry/agent/ferry-<version>-<sha256>` (named by its content, in
//!   a 0700 directory of the login user), used only when it is this agent and only the user or
//!   root can write it and its directory;
//! - the compressed partial upload `ferry-<version>-<sha256>.<zst|gz>.part` and its size.
//!
//! When the probe is to start the agent ([`Run::Start`]: the first agent of a transport) and it
//! found one (and `sudo -n`, when needed, said yes), it prints its report, then its end line (a
//! random marker, so nothing the probe prints, such as a file name, can pass for it), then
//! `exec`s the agent: the coordinator reads the report, and the same channel's stdout goes on
//! with the agent's protocol stream. Probe and agent cost one exec. Otherwise (the agent must
//! be uploaded, sudo refused, another architecture...) the probe exits after its end line and
//! the agent starts on a channel of its own after the upload. A dry run's probe
//! ([`Run::Dry`]) never starts anything and writes nothing.
//!
//! "This agent": the file's size is the agent's, and its SHA-256, by the host's own program
//! (`sha256sum`, else `shasum -a 256`), is the agent's. Hashing 15-20 MB on every connect
//! costs tens of milliseconds, so a file that hashed right is recorded in
//! `~/.cache/ferry/agent/ferry-<version>-<sha256>.verified` by its `stat` line (size, device,
//! inode, mtime and ctime to the nanosecond), and a file whose `stat` line is recorded is this
//! agent without hashing again. That is as safe as the hash: the record is read only when it
//! and the 0700 directory holding it can be written by no one but the user or root (who can
//! replace the agent anyway), the file itself still passes the ownership checks each time, and
//! its bytes cannot change without its ctime changing (only root, setting the clock, could
//! forge a ctime); a file is recorded only when its ctime is at least 2 s old, so a write
//! racing the hash changes the ctime after the record. A dry run records nothing; without
//! `stat -c` every connect hashes.
//!
//! Which program runs ([`AgentSource`]): by default this executable (found as above, or
//! uploaded; its architecture must be the host's); `agent = "FILE"` uploads that file the same
//! way (a ferry built for the host); `agent = "PATH"` runs the host's `ferry` on `PATH` as is.
//! This executable is read and hashed (here, once per process) while the session connects.
//!
//! The upload ([`SshTransport::upload_agent`]) sends the program compressed ([`Codec`]: zstd,
//! else gzip), appended to the partial file from the byte the probe found there (an
//! interrupted upload resumes); the host decompresses it to a temp file, checks its SHA-256 and
//! renames it to the content name. A cached file that is not this agent is replaced, never run;
//! without a SHA-256 program the upload is redone on every run (the file just written to the
//! 0700 directory is run). A failed decompression or check removes the temp and partial files
//! (and starts over once when it had resumed); stale temp files are removed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::agent_file::{Codec, LocalAgent};
use super::transport::other;
use super::{RemoteProcess, SshSession, SshTransport};
use crate::push::{Progress, ProgressEvent};
use crate::transport::TransportError;

/// Test hook: the agent upload stops after this many bytes, as if the connection were cut.
pub const UPLOAD_STOP_ENV: &str = "FERRY_TEST_AGENT_UPLOAD_STOP_AFTER";

/// The directory of uploaded agents, under the login user's `$HOME`.
pub const AGENT_DIR: &str = ".cache/ferry/agent";

/// Which program runs as the agent on a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AgentSource {
    /// This executable: a `ferry` on the host's `PATH` whose hash is this one's, else the
    /// verified cached upload, else uploaded.
    #[default]
    ThisExecutable,
    /// This file (a ferry built for the host), found or uploaded the same way
    /// (`agent = "FILE"`).
    File(PathBuf),
    /// The `ferry` on the host's `PATH`, trusted as is (`agent = "PATH"`).
    HostPath,
}

/// The program the agent runs as, once known.
#[derive(Debug, Clone)]
pub(super) struct AgentProgram {
    pub(super) path: String,
    pub(super) sudo: bool,
    pub(super) uploaded: bool,
}

/// What [`SshTransport::prepare_agent`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReady {
    /// The host has the agent: its path.
    Present(String),
    /// It was uploaded: its path and the compressed bytes sent this time.
    Uploaded { path: String, sent: u64 },
    /// A dry run: it would be uploaded; `bytes` is the program's size.
    WouldUpload { bytes: u64 },
}

/// The remote architecture name (`uname -m`) of this build.
pub fn local_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        arch => arch,
    }
}

/// Shell functions both scripts use: `sum FILE` prints its SHA-256 (nothing without a SHA-256
/// program, and then `$hasher` is empty); `safe FILE` says whether only the user or root can
/// write it.
const SH_FUNCTIONS: &str = r#"uid=$(id -u) hasher=1
if command -v sha256sum >/dev/null 2>&1; then h() { sha256sum < "$1"; }
elif command -v shasum >/dev/null 2>&1; then h() { shasum -a 256 < "$1"; }
else h() { return 1; }; hasher=; fi
sum() { s=$(h "$1" 2>/dev/null) && [ -n "$s" ] && echo "${s%% *}"; }
safe() {
  l=$(ls -ldn -- "$1" 2>/dev/null) || return 1
  set -- $l
  case "$1" in ?????w*|????????w*) return 1;; esac
  [ "$3" = "$uid" ] || [ "$3" = 0 ]
}
"#;

/// The probe: `$1` = 1 when the agent runs under `sudo -n`, `$2` the agent's name, `$3` its
/// SHA-256, `$4` its size, `$5` `path` to take the host's `ferry` as is, `$6` what to do
/// ([`Run`]: `dry` changes nothing; `start` ends by `exec`ing the agent found, with the
/// arguments after `$7`), `$7` the end marker line, printed last before the agent starts or
/// the script exits. `ours FILE` says whether FILE is this agent: its size, then a verification
/// record or its SHA-256 (module doc).
const PROBE: &str = r#"want=$1 name=$2 sha=$3 size=$4 mode=$5 run=$6 end=$7
shift 7
d="$HOME/.cache/ferry/agent"
c="$d/$name"
ours() {
  st=$(stat -L -c '%s %d %i %.9Y %.9Z' -- "$1" 2>/dev/null) || st=
  case "$st" in "$size "*|'') ;; *) return 1;; esac
  r="$c.verified"
  if [ -n "$st" ] && [ -f "$r" ] && safe "$d" && safe "$r" && grep -qxF -- "$st" "$r"; then
    return 0
  fi
  [ "$(sum "$1")" = "$sha" ] || return 1
  [ -n "$st" ] && [ "$run" != dry ] || return 0
  t=${st##* }; t=${t%.*}
  case "$t" in ''|*[!0-9]*) return 0;; esac
  [ $(($(date +%s) - t)) -ge 2 ] || return 0
  (umask 077; mkdir -p -- "$d" && chmod 700 -- "$d" && safe "$d" && echo "$st" >> "$r") \
    >/dev/null 2>&1
  return 0
}
echo "uid $uid"
echo "home $HOME"
echo "arch $(uname -m)"
su=
if [ "$want" = 1 ] && [ "$uid" != 0 ]; then
  su=no
  if ! command -v sudo >/dev/null 2>&1; then echo "sudo missing"
  elif out=$(sudo -n true 2>&1 </dev/null); then echo "sudo ok"; su=yes
  else echo "sudo refused $(printf '%s' "$out" | tr '\n' ' ')"; fi
fi
for z in zstd gzip; do command -v "$z" >/dev/null 2>&1 && echo "decompress $z"; done
[ -n "$hasher" ] && echo "hasher"
f=$(command -v ferry 2>/dev/null)
found=
if [ "$mode" = path ]; then found=$f
elif [ -n "$f" ] && [ -f "$f" ] && safe "$f" && safe "${f%/*}" && ours "$f"; then found=$f
elif [ -e "$c" ] && safe "$d" && safe "$c" && ours "$c"; then found=$c
else
  [ -e "$c" ] && echo "cached"
  for z in zst gz; do p="$c.$z.part"; [ -f "$p" ] && echo "partial $z $(($(wc -c < "$p")))"; done
fi
if [ -n "$found" ]; then
  echo "found $found"
  if [ "$run" = start ] && [ "$su" != no ]; then
    echo "start"
    echo "$end"
    [ "$su" = yes ] && exec sudo -n -- "$found" "$@"
    exec "$found" "$@"
  fi
fi
echo "$end""#;

/// The upload: `$1` the directory, `$2` the name, `$3` the extension, `$4` the offset to
/// append at, `$5` the compressed size, `$6` the SHA-256, `$7` the decompressor. Stdin: the
/// compressed bytes from `$4` on. Exit codes: 12 the partial file is not `$4` bytes long, 14
/// stopped short (the partial file is kept), 15 decompression failed, 16 wrong SHA-256 (both
/// remove the partial file).
const UPLOAD: &str = r#"d="$1"; p="$d/$2.$3.part"; t="$d/$2.tmp.$$"
umask 077
mkdir -p -- "$d" && chmod 700 -- "$d" || exit 10
# Temp files of uploads that died, and partial files of other agents, an hour old.
find "$d" "$HOME/.cache/ferry" -maxdepth 1 -type f \( -name '*.tmp.*' -o -name '*.part' \
  -o -name '*.ferry-upload-*' \) ! -path "$p" -mmin +60 -exec rm -f {} + 2>/dev/null
if [ "$4" = 0 ]; then : > "$p" || exit 11
else
  n=$(wc -c < "$p" 2>/dev/null) && n=$((n)) || n=none
  [ "$n" = "$4" ] || { echo "the partial upload holds $n bytes, not $4" >&2; exit 12; }
fi
cat >> "$p" || exit 13
n=$(($(wc -c < "$p")))
[ "$n" = "$5" ] || { echo "the upload stopped at $n of $5 bytes (kept to resume)" >&2; exit 14; }
if ! "$7" -dcq < "$p" > "$t"; then rm -f -- "$t" "$p"; echo "$7 -d failed" >&2; exit 15; fi
rm -f -- "$p"
s=$(sum "$t")
if [ -n "$s" ] && [ "$s" != "$6" ]; then
  rm -f -- "$t"; echo "sha256 of the decompressed upload is $s, not $6" >&2; exit 16
fi
chmod 700 -- "$t" && mv -f -- "$t" "$d/$2" || { rm -f -- "$t"; exit 17; }
echo "installed ${s:-unverified}""#;

/// The most the probe may print before its end marker.
const PROBE_OUTPUT_CAP: usize = 1 << 20;

/// What the probe does once it has reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Run<'a> {
    /// Nothing else, and it changes nothing on the host (no verification record either).
    Dry,
    /// Nothing else.
    Probe,
    /// `exec` the agent it found with these arguments (after the program and the store
    /// options), under `sudo -n` when it must and may.
    Start(&'a [String]),
}

impl Run<'_> {
    /// The probe's `$6`.
    fn arg(self) -> &'static str {
        match self {
            Run::Dry => "dry",
            Run::Probe => "probe",
            Run::Start(_) => "start",
        }
    }
}

/// Where `line` (ending in a newline) starts a line of `text`.
fn line_at(text: &[u8], line: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].windows(line.len()).position(|w| w == line) {
        let at = from + i;
        if at == 0 || text[at - 1] == b'\n' {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// What the probe reported.
#[derive(Debug, Default)]
struct Probe {
    uid: Option<u32>,
    home: Option<String>,
    arch: String,
    sudo: Option<String>,
    decompressors: Vec<String>,
    found: Option<String>,
    /// Partial uploads: extension and size.
    partial: Vec<(String, u64)>,
}

impl Probe {
    fn parse(text: &str) -> Probe {
        let mut p = Probe::default();
        for line in text.lines() {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "uid" => p.uid = rest.trim().parse().ok(),
                "home" => p.home = Some(rest.to_owned()),
                "arch" => p.arch = rest.trim().to_owned(),
                "sudo" => p.sudo = Some(rest.trim().to_owned()),
                "decompress" => p.decompressors.push(rest.trim().to_owned()),
                "found" => p.found = Some(rest.to_owned()),
                "partial" => {
                    if let Some((ext, n)) = rest.split_once(' ') {
                        if let Ok(n) = n.trim().parse() {
                            p.partial.push((ext.to_owned(), n));
                        }
                    }
                }
                _ => {}
            }
        }
        p
    }
}

/// One upload at a time per host and user in this process (several machines of a deployment
/// may be one host): the second finds the first's result.
fn upload_lock(key: String) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let locks = LOCKS.get_or_init(Default::default);
    locks.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
}

impl SshTransport {
    /// The program to upload (`None` for [`AgentSource::HostPath`]).
    fn local_agent(&self) -> Result<Option<Arc<LocalAgent>>, TransportError> {
        let Some(path) = self.local_agent_path()? else { return Ok(None) };
        LocalAgent::load(&path)
            .map(Some)
            .map_err(|e| other(format!("cannot read the agent program {}: {e}", path.display())))
    }

    fn local_agent_path(&self) -> Result<Option<PathBuf>, TransportError> {
        Ok(Some(match &self.agent {
            AgentSource::HostPath => return Ok(None),
            AgentSource::File(p) => p.clone(),
            AgentSource::ThisExecutable => std::env::current_exe().map_err(|e| {
                other(format!("cannot find the running executable to upload it: {e}"))
            })?,
        }))
    }

    /// Read and hash the program the probe will name, on a blocking thread, while the session
    /// connects (when the bootstrap is still to come; errors are the bootstrap's to report).
    pub(super) fn preload_agent(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.program.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return None;
        }
        let path = self.local_agent_path().ok().flatten()?;
        Some(tokio::task::spawn_blocking(move || drop(LocalAgent::load(&path))))
    }

    /// Start `ferry ARGS...` as the agent is started, on `session`: on first use the probe
    /// itself becomes the agent when the host has it (one exec), else the agent is uploaded
    /// (without progress) and started on a channel of its own.
    pub(super) async fn start_agent(
        &self,
        session: &SshSession,
        args: &[String],
    ) -> Result<RemoteProcess, TransportError> {
        let known = self.program.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let program = match known {
            Some(p) => p,
            None => {
                let (_, started) =
                    self.ensure_agent(session, Run::Start(args), &crate::push::NoProgress).await?;
                if let Some(process) = started {
                    return Ok(process);
                }
                let program = self.program.lock().unwrap_or_else(|p| p.into_inner()).clone();
                program
                    .ok_or_else(|| other("the agent program is not known after the bootstrap"))?
            }
        };
        session.exec(&self.argv_for(&program, args)).await.map_err(other)
    }

    /// Find the host's agent or upload it (module doc), reporting the upload to `progress`;
    /// with `dry_run`, only find out (nothing changes on the host). The SSH session is opened
    /// here when it is not yet.
    pub fn prepare_agent(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<AgentReady, TransportError> {
        self.runtime().block_on(async {
            let session = self.session().await?;
            let run = if dry_run { Run::Dry } else { Run::Probe };
            self.ensure_agent(&session, run, progress).await.map(|(ready, _)| ready)
        })
    }

    /// The bootstrap: probe, then upload when needed (not for [`Run::Dry`]). With
    /// [`Run::Start`], the agent process when the probe started it.
    pub(super) async fn ensure_agent(
        &self,
        session: &SshSession,
        run: Run<'_>,
        progress: &dyn Progress,
    ) -> Result<(AgentReady, Option<RemoteProcess>), TransportError> {
        if let Some(p) = self.program.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok((AgentReady::Present(p.path), None));
        }
        let local = self.local_agent()?;
        let target = self.config.target();
        let lock = upload_lock(format!("{}@{target}", self.config.user));
        let _one_at_a_time = lock.lock().await;
        let (text, started) = self.probe(session, local.as_deref(), run).await?;
        let probe = Probe::parse(&text);
        let uid = probe.uid.ok_or_else(|| {
            other(format!(
                "{target}: the host's probe did not report the user's uid: {:?}",
                text.trim()
            ))
        })?;
        let sudo = self.store.use_sudo(uid);
        if sudo {
            let refused = |detail: String| TransportError::SudoRefused {
                host: target.clone(),
                user: self.config.user.clone(),
                detail,
            };
            match probe.sudo.as_deref() {
                Some("ok") => {}
                Some("missing") => return Err(refused("sudo is not installed".to_owned())),
                Some(r) => {
                    let said = r.strip_prefix("refused").unwrap_or(r).trim();
                    return Err(refused(format!("sudo -n said: {said}")));
                }
                None => return Err(refused("the probe did not report on sudo".to_owned())),
            }
        }
        let remember = |path: String, uploaded: bool| {
            *self.program.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(AgentProgram { path, sudo, uploaded });
        };
        if let Some(found) = probe.found.clone() {
            remember(found.clone(), false);
            return Ok((AgentReady::Present(found), started));
        }
        let Some(local) = local else {
            return Err(other(format!(
                "{target}: the machine says `agent = \"PATH\"`, but the host has no `ferry` on \
                 its PATH; install ferry {} there, or remove `agent` to have it uploaded",
                env!("CARGO_PKG_VERSION")
            )));
        };
        self.check_arch(&local, &probe.arch)?;
        if run == Run::Dry {
            return Ok((AgentReady::WouldUpload { bytes: local.bytes.len() as u64 }, None));
        }
        let home =
            probe.home.as_deref().filter(|h| h.starts_with('/')).ok_or_else(|| {
                other(format!("{target}: the remote $HOME is not an absolute path"))
            })?;
        // A cached file that is not this agent (the probe said `cached`) is replaced.
        let (path, sent) = self.upload_agent(session, &local, &probe, home, progress).await?;
        remember(path.clone(), true);
        Ok((AgentReady::Uploaded { path, sent }, None))
    }

    /// Run the probe script; its output up to its end marker, and with [`Run::Start`] the
    /// agent's process when the probe went on to start it (its stdout from the agent's first
    /// byte). The marker is random, so nothing the probe prints (file names) can pass for it.
    async fn probe(
        &self,
        session: &SshSession,
        local: Option<&LocalAgent>,
        run: Run<'_>,
    ) -> Result<(String, Option<RemoteProcess>), TransportError> {
        let target = self.config.target();
        let wants_sudo = if self.store.wants_sudo() { "1" } else { "0" };
        let (name, sha, size) = local.map_or_else(Default::default, |l| {
            (l.name.clone(), l.sha256.clone(), l.bytes.len().to_string())
        });
        let mode = if local.is_none() { "path" } else { "upload" };
        let end = format!("ferry-probe-end-{:016x}", rand::random::<u64>());
        let mut argv: Vec<String> = ["sh", "-c", &format!("{SH_FUNCTIONS}{PROBE}"), "sh"]
            .into_iter()
            .chain([wants_sudo, &name, &sha, &size, mode, run.arg(), &end])
            .map(str::to_owned)
            .collect();
        if let Run::Start(args) = run {
            argv.extend(self.agent_args(args));
        }
        let (mut stdin, mut stdout, exit) = session.exec(&argv).await.map_err(other)?.split();
        if !matches!(run, Run::Start(_)) {
            let _ = stdin.shutdown().await;
        }
        let marker = format!("{end}\n");
        let mut out = Vec::new();
        let mut chunk = vec![0; 16 << 10];
        let at = loop {
            if let Some(at) = line_at(&out, marker.as_bytes()) {
                break Some(at);
            }
            if out.len() > PROBE_OUTPUT_CAP {
                return Err(other(format!(
                    "{target}: the host's probe printed more than {PROBE_OUTPUT_CAP} bytes"
                )));
            }
            match stdout.read(&mut chunk).await {
                Ok(0) => break None,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(other(format!("{target}: reading the probe's output: {e}"))),
            }
        };
        let text = String::from_utf8_lossy(&out[..at.unwrap_or(out.len())]).into_owned();
        if let Some(at) = at {
            if text.lines().any(|l| l == "start") {
                stdout.unread(Bytes::copy_from_slice(&out[at + marker.len()..]));
                return Ok((text, Some(RemoteProcess { stdin, stdout, exit })));
            }
        }
        drop(stdin);
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest).await;
        exit.wait_checked().await.map_err(other)?;
        Ok((text, None))
    }

    /// The host's architecture must be the program's.
    fn check_arch(&self, local: &LocalAgent, host_arch: &str) -> Result<(), TransportError> {
        let ours = match &self.agent {
            AgentSource::File(_) => match local.elf_arch() {
                Some(a) => a,
                None => return Ok(()),
            },
            _ => local_arch(),
        };
        if host_arch == ours || (ours == "armv7l" && host_arch.starts_with("armv")) {
            return Ok(());
        }
        let target = self.config.target();
        let what = match &self.agent {
            AgentSource::File(p) => format!("the agent {} is built for {ours}", p.display()),
            _ => format!("this ferry is built for {ours}"),
        };
        Err(TransportError::Other(format!(
            "{target}: the host is {host_arch} (uname -m) and {what}: build ferry for \
             {host_arch} (e.g. `cargo build --release --target {host_arch}-unknown-linux-gnu`) \
             and name it in the machine's [machine.configuration] as `agent = \"PATH/TO/ferry\"` \
             (or install ferry {} on the host's PATH and set `agent = \"PATH\"`)",
            env!("CARGO_PKG_VERSION")
        )))
    }

    /// Upload `local` compressed with the best codec the host has, resuming a partial upload;
    /// the agent's path on the host and the compressed bytes sent.
    async fn upload_agent(
        &self,
        session: &SshSession,
        local: &LocalAgent,
        probe: &Probe,
        home: &str,
        progress: &dyn Progress,
    ) -> Result<(String, u64), TransportError> {
        let target = self.config.target();
        let codec = Codec::ALL
            .into_iter()
            .find(|c| probe.decompressors.iter().any(|d| d == c.program()))
            .ok_or_else(|| {
                other(format!(
                    "{target}: the host has neither zstd nor gzip to decompress the agent with"
                ))
            })?;
        let data = local
            .compressed(codec)
            .map_err(|e| other(format!("compressing the agent with {}: {e}", codec.program())))?;
        let total = data.len() as u64;
        let mut offset = probe
            .partial
            .iter()
            .find(|(ext, _)| ext == codec.ext())
            .map_or(0, |(_, n)| *n)
            .min(total);
        let dir = format!("{home}/{AGENT_DIR}");
        let stop_after: Option<u64> =
            std::env::var(UPLOAD_STOP_ENV).ok().and_then(|v| v.trim().parse().ok());
        let host = self.describe_host();
        loop {
            let args = [
                "sh".to_owned(),
                "-c".to_owned(),
                format!("{SH_FUNCTIONS}{UPLOAD}"),
                "sh".to_owned(),
                dir.clone(),
                local.name.clone(),
                codec.ext().to_owned(),
                offset.to_string(),
                total.to_string(),
                local.sha256.clone(),
                codec.program().to_owned(),
            ];
            let (mut stdin, _stdout, exit) = session.exec(&args).await.map_err(other)?.split();
            let mut sent = offset;
            progress
                .event(&host, &ProgressEvent::AgentUpload { sent, total, codec: codec.program() });
            let mut stopped = false;
            let written: std::io::Result<()> = async {
                for chunk in data[offset as usize..].chunks(256 << 10) {
                    let chunk = match stop_after {
                        Some(stop) if sent - offset + chunk.len() as u64 >= stop => {
                            stopped = true;
                            &chunk[..(stop - (sent - offset)) as usize]
                        }
                        _ => chunk,
                    };
                    stdin.write_all(chunk).await?;
                    sent += chunk.len() as u64;
                    progress.event(
                        &host,
                        &ProgressEvent::AgentUpload { sent, total, codec: codec.program() },
                    );
                    if stopped {
                        break;
                    }
                }
                stdin.shutdown().await
            }
            .await;
            let (status, stderr) = exit.wait_with_stderr().await.map_err(other)?;
            let failed = |why: String| {
                other(format!("{target}: uploading the agent to {dir}/{}: {why}", local.name))
            };
            if stopped {
                return Err(failed(format!(
                    "stopped after {} bytes ({UPLOAD_STOP_ENV})",
                    sent - offset
                )));
            }
            match status.code {
                Some(0) => return Ok((format!("{dir}/{}", local.name), sent - offset)),
                // The partial file was not what the probe saw, or did not decompress to this
                // agent: start over, once.
                Some(12 | 15 | 16) if offset > 0 => offset = 0,
                _ => {
                    let why = match written {
                        Err(e) => format!("{e}; {status}"),
                        Ok(()) => status.to_string(),
                    };
                    let said = stderr.trim();
                    return Err(failed(if said.is_empty() {
                        why
                    } else {
                        format!("{said} ({why})")
                    }));
                }
            }
        }
    }

    /// `[sudo -n --] FERRY [--root R] [--store-dir D] [--state-dir S] ARGS...`.
    pub(super) fn argv_for(&self, program: &AgentProgram, args: &[String]) -> Vec<String> {
        let mut argv = Vec::new();
        if program.sudo {
            argv.extend(["sudo".to_owned(), "-n".to_owned(), "--".to_owned()]);
        }
        argv.push(program.path.clone());
        argv.extend(self.agent_args(args));
        argv
    }

    /// `[--root R] [--store-dir D] [--state-dir S] ARGS...`: the agent's arguments after its
    /// program.
    fn agent_args(&self, args: &[String]) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(root) = &self.store.root {
            argv.extend(["--root".to_owned(), root.display().to_string()]);
        }
        if let Some(d) = &self.store.store_dir {
            argv.extend(["--store-dir".to_owned(), d.clone()]);
        }
        if let Some(d) = &self.store.state_dir {
            argv.extend(["--state-dir".to_owned(), d.display().to_string()]);
        }
        if let Some(kind) = &self.store.store {
            argv.extend(["--store".to_owned(), kind.clone()]);
        }
        argv.extend(args.iter().cloned());
        argv
    }

    /// The host as progress events name it (the transport's description).
    fn describe_host(&self) -> String {
        crate::transport::Transport::describe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_marker_counts_only_as_a_whole_line() {
        let end = b"ferry-probe-end-00ff\n";
        assert_eq!(line_at(b"uid 0\nferry-probe-end-00ff\n\x00\x01", end), Some(6));
        assert_eq!(line_at(b"ferry-probe-end-00ff\n", end), Some(0));
        // Inside a line (a file name holding it), or without its newline yet: not the end.
        assert_eq!(line_at(b"found /x/ferry-probe-end-00ff\n", end), None);
        assert_eq!(line_at(b"uid 0\nferry-probe-end-00ff", end), None);
        assert_eq!(line_at(b"a ferry-probe-end-00ff\nferry-probe-end-00ff\n", end), Some(23));
    }

    #[test]
    fn the_probe_report_is_parsed_line_by_line() {
        let p = Probe::parse(
            "uid 1000\nhome /home/u\narch x86_64\nsudo ok\ndecompress zstd\nfound /usr/bin/ferry\n\
             start\npartial zst 42\n",
        );
        assert_eq!(p.uid, Some(1000));
        assert_eq!(p.home.as_deref(), Some("/home/u"));
        assert_eq!(p.sudo.as_deref(), Some("ok"));
        assert_eq!(p.found.as_deref(), Some("/usr/bin/ferry"));
        assert_eq!(p.partial, vec![("zst".to_owned(), 42)]);
    }
}
