//! The host's own Nix store as the agent's destination ([`super::daemon::DaemonStore::Nix`]):
//! each verified NAR goes straight to Nix, which registers it, with a ferry Nix signature.
//!
//! The agent then reads Nix's database (read only: which paths are valid, the bases for deltas
//! and their NAR hashes) and hands each path to `nix-store --serve --write` (`nix-store --store
//! ROOT --serve --write` for a chroot store under a root other than `/`), a subprocess it runs
//! for the session, with the serve protocol's AddToStoreNar ([`proto::nix_serve`]; the same
//! command `nix copy --to ssh://` uses). Nix restores the NAR, checks its hash and size and
//! registers the path with the signatures given; nothing is written twice and no ferry store
//! is involved.
//!
//! **Checked before Nix has it all.** The NAR (rebuilt from zstd or a delta against a path
//! of Nix's store) streams into the subprocess as it arrives while ferry hashes it; its last
//! [`HELD_BACK`] bytes are written only once the whole NAR matched the signed hash and size.
//! A NAR that does not match (or that breaks off) never reaches Nix complete: the subprocess
//! is killed before it could register anything, and the next path starts a new one. What Nix
//! restored of it stays an invalid path, which Nix replaces or collects. The references of a
//! path must be valid in Nix's database before any byte of it is sent.
//!
//! **Signatures.** Each path is registered with a Nix signature (`name:base64`, narinfo-style,
//! over the fingerprint `1;path;sha256:<nix32>;size;refs`) made by the host's ferry Nix key
//! `<state>/nix-signing-key.sec` (ferry's state dir, never Nix's; generated on first use, named
//! `<hostname>-ferry-1`): the host's ferry signs what it accepted, after checking the
//! coordinator's signature against its ACL, as Nix signs what it builds with
//! `secret-key-files`. `nix path-info --sigs` shows it; trusting that key elsewhere lets other
//! machines copy the paths from this host.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use closure::PathInfo;
use nar_core::store_path::StoreDir;
use proto::nix_serve::{self, MIN_ADD_TO_STORE_NAR};
use store::{ImportOutcome, StoreError};

use super::daemon::Checked;

/// The last bytes of a NAR that are written to Nix only once the whole NAR is checked (the
/// archive's closing `)` and its padding: without them Nix cannot finish the path).
pub const HELD_BACK: u64 = 16;

/// The most stderr of the subprocess kept for messages.
const MAX_STDERR: usize = 16 << 10;

/// How the agent reaches the host's Nix store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixOptions {
    /// The root of Nix's store: `/` for the machine's own, else a chroot store (`nix-store
    /// --store ROOT`).
    pub root: PathBuf,
    /// The program (`nix-store`, found on PATH).
    pub program: PathBuf,
    /// Environment variables set for it (on top of the agent's own).
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl NixOptions {
    /// The Nix store under `root`, through `nix-store` on PATH.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        NixOptions { root: root.into(), program: "nix-store".into(), env: Vec::new() }
    }
}

/// The session's connection to Nix: the signing key, and `nix-store --serve --write`, started
/// at the first path and again after a path it was killed for.
pub(crate) struct NixSink {
    options: NixOptions,
    store_dir: StoreDir,
    key: signing::nix::SigningKey,
    server: Option<Server>,
}

impl std::fmt::Debug for NixSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NixSink").field("options", &self.options).finish_non_exhaustive()
    }
}

/// The name of the host's ferry Nix key: `<hostname>-ferry-1`.
fn key_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() { "localhost" } else { host };
    format!("{host}-ferry-1")
}

impl NixSink {
    /// The sink for `options`, signing with the key in `state_dir` (made on first use).
    pub(crate) fn new(
        options: NixOptions,
        store_dir: StoreDir,
        state_dir: &Path,
    ) -> Result<Self, crate::trust::KeyError> {
        let (key, _) = crate::trust::load_or_generate_nix_key(state_dir, &key_name())?;
        Ok(NixSink { options, store_dir, key, server: None })
    }

    /// The signatures `info` is registered with: those it carries and ferry's.
    fn signatures(&self, info: &PathInfo) -> Vec<String> {
        let refs: Vec<_> = info.references.iter().cloned().collect();
        let fp = signing::nix::fingerprint(
            &self.store_dir,
            &info.path,
            &info.nar_hash,
            info.nar_size,
            &refs,
        );
        let mut sigs = info.sigs.clone();
        sigs.push(self.key.sign(&fp).to_string());
        sigs
    }

    /// Hand the NAR read from `nar` to Nix as `info` (see the module docs: checked before its
    /// last bytes go out; the references were checked by the caller, [`super::daemon::Sink`]). A mismatch is
    /// [`StoreError::HashMismatch`]; Nix's failures are [`StoreError::Io`] with its stderr.
    pub(crate) fn add(
        &mut self,
        info: &PathInfo,
        nar: &mut dyn Read,
    ) -> Result<ImportOutcome, StoreError> {
        let abs = info.path.to_absolute(&self.store_dir);
        let mut request = crate::target::nix_host::add_request(&self.store_dir, info);
        request.sigs = self.signatures(info);
        request.registration_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = Vec::with_capacity(512);
        request.encode(&mut header);
        if self.server.is_none() {
            let started = Server::start(&self.options).map_err(|e| self.fail(&abs, e))?;
            self.server = Some(started);
        }
        let server = self.server.as_mut().expect("started above");
        let result = server.add(&header, info, nar);
        match result {
            Ok(()) => Ok(ImportOutcome::Imported),
            Err(Failure::Mismatch(actual)) => {
                self.kill();
                Err(StoreError::HashMismatch {
                    path: abs,
                    expected: info.nar_hash,
                    expected_size: info.nar_size,
                    actual: actual.hash,
                    actual_size: actual.size,
                })
            }
            Err(Failure::Source(e)) => {
                self.kill();
                Err(StoreError::Io { op: "receiving the NAR of", path: abs.into(), error: e })
            }
            Err(Failure::Nix(e)) => {
                let stderr = self.kill();
                let why =
                    if stderr.trim().is_empty() { e } else { format!("{e}: {}", stderr.trim()) };
                Err(self.fail(&abs, why))
            }
        }
    }

    fn fail(&self, abs: &str, why: String) -> StoreError {
        let op = "nix-store --serve --write, AddToStoreNar";
        StoreError::Io { op, path: abs.into(), error: io::Error::other(why) }
    }

    /// Kill the subprocess (the NAR in flight stays incomplete); its stderr.
    fn kill(&mut self) -> String {
        self.server.take().map(Server::kill).unwrap_or_default()
    }

    /// End the session's subprocess: end of input, then wait for it.
    pub(crate) fn finish(&mut self) {
        if let Some(server) = self.server.take() {
            server.close();
        }
    }
}

impl Drop for NixSink {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Why [`Server::add`] failed.
enum Failure {
    /// The NAR does not match: its digest so far.
    Mismatch(nar_core::hash::NarDigest),
    /// Reading the NAR failed (the coordinator's stream).
    Source(io::Error),
    /// Nix failed or went away.
    Nix(String),
}

/// A running `nix-store --serve --write`.
struct Server {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(options: &NixOptions) -> Result<Server, String> {
        let mut command = Command::new(&options.program);
        if options.root != Path::new("/") {
            command.arg("--store").arg(&options.root);
        }
        let mut child = command
            .args(["--serve", "--write"])
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", options.program.display()))?;
        let stderr = child.stderr.take().map(|e| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let _ = e.take(MAX_STDERR as u64).read_to_end(&mut kept);
                proto::text::peer_text(&String::from_utf8_lossy(&kept), MAX_STDERR)
            })
        });
        let mut server = Server {
            stdin: child.stdin.take().map(|i| BufWriter::with_capacity(256 << 10, i)),
            stdout: BufReader::new(child.stdout.take().expect("piped")),
            stderr,
            child,
        };
        match server.handshake() {
            Ok(()) => Ok(server),
            Err(e) => {
                let stderr = server.kill();
                Err(format!("{e} {}", stderr.trim()))
            }
        }
    }

    fn stdin(&mut self) -> io::Result<&mut BufWriter<ChildStdin>> {
        self.stdin.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn read_u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.stdout.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn handshake(&mut self) -> Result<(), String> {
        let stdin = self.stdin().map_err(|e| e.to_string())?;
        stdin
            .write_all(&nix_serve::handshake_request())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("handshake: {e}"))?;
        let answer = self.read_u64().and_then(|m| Ok((m, self.read_u64()?)));
        let (magic, version) = answer.map_err(|e| format!("handshake: {e}"))?;
        let version = nix_serve::check_handshake(magic, version).map_err(|e| e.to_string())?;
        if version < MIN_ADD_TO_STORE_NAR {
            return Err(format!(
                "its serve protocol version {version:#x} has no AddToStoreNar (Nix 2.4 or later \
                 needed)"
            ));
        }
        Ok(())
    }

    /// Send `header`, then the NAR from `nar`, holding back its last [`HELD_BACK`] bytes until
    /// it matched `info`; then Nix's answer.
    fn add(&mut self, header: &[u8], info: &PathInfo, nar: &mut dyn Read) -> Result<(), Failure> {
        let to_nix = |e: io::Error| Failure::Nix(format!("writing to it: {e}"));
        self.stdin().and_then(|i| i.write_all(header)).map_err(to_nix)?;
        let held_from = info.nar_size - HELD_BACK.min(info.nar_size);
        let mut held = Vec::with_capacity(HELD_BACK as usize);
        let mut checked = Checked::new(nar, info.nar_digest());
        let mut buf = vec![0u8; 256 << 10];
        let mut sent = 0u64;
        loop {
            let n = match checked.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(match checked.mismatch {
                        Some(digest) => Failure::Mismatch(digest),
                        None => Failure::Source(e),
                    })
                }
            };
            let now = (held_from.saturating_sub(sent) as usize).min(n);
            self.stdin().and_then(|i| i.write_all(&buf[..now])).map_err(to_nix)?;
            held.extend_from_slice(&buf[now..n]);
            sent += n as u64;
        }
        // The reader ended: the NAR matched.
        let stdin = self.stdin().map_err(to_nix)?;
        stdin.write_all(&held).and_then(|()| stdin.flush()).map_err(to_nix)?;
        match self.read_u64() {
            Ok(1) => Ok(()),
            Ok(other) => Err(Failure::Nix(format!("it answered {other} instead of 1"))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(Failure::Nix("it refused the path and exited".into()))
            }
            Err(e) => Err(Failure::Nix(format!("reading its answer: {e}"))),
        }
    }

    /// Kill it and wait; its stderr.
    fn kill(mut self) -> String {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }

    /// Close its input (it exits) and wait.
    fn close(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.wait();
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
    }
}
