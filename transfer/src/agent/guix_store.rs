//! The host's own Guix store as the agent's destination ([`super::daemon::DaemonStore::Guix`]):
//! each verified path goes to `guix archive --import` as a Guix-signed export bundle
//! ([`signing::bundle`], Guix form: the format `guix archive --export` writes and the libgcrypt
//! tests pin), which the Guix daemon checks against its ACL (`/etc/guix/acl`) and registers.
//!
//! **Signature.** The bundle item is signed by the host's ferry Guix key
//! (`<state>/signing-key.sec`, ferry's state dir; generated on first use): the host's ferry
//! signs what it accepted, after checking the coordinator's signature against its own ACL.
//! Guix imports it only when that key is in Guix's ACL (`guix archive --authorize <
//! <state>/signing-key.pub` once, on the host).
//!
//! **Checked before Guix has it all.** The NAR streams into the bundle as it arrives, read
//! through [`super::daemon::Checked`]: a NAR that does not match its signed hash and size fails
//! before the item's trailer (store path, references, signature) is written, and the import
//! process is killed; Guix never saw a signed item, so it registers nothing.
//!
//! **One import per path.** `guix archive --import` answers nothing per item, only its exit
//! status at the end; so each path gets its own process (the item and the end marker), and the
//! path is answered once that process exited successfully. That costs one `guix` start per
//! path (a deploy update sends few); a pipelined import acknowledged through the daemon's
//! database is left for later.
//!
//! No Guix runs on the machines this was written on: it is tested against a stand-in `guix`
//! (`transfer/tests/it/guix-standin`) that checks each item's signature with libgcrypt through
//! guile-gcrypt and registers it, not against Guix itself.

use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use closure::PathInfo;
use nar_core::store_path::StoreDir;
use signing::bundle::{BundleWriteError, BundleWriter, ItemMeta};
use store::{ImportOutcome, StoreError};

use super::daemon::Checked;

/// The most stderr of `guix archive` kept for messages.
const MAX_STDERR: usize = 16 << 10;

/// How the agent reaches the host's Guix store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuixOptions {
    /// The program (`guix`, found on PATH).
    pub program: PathBuf,
    /// Environment variables set for it (on top of the agent's own).
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Default for GuixOptions {
    fn default() -> Self {
        GuixOptions { program: "guix".into(), env: Vec::new() }
    }
}

/// The session's imports into Guix: the host's ferry Guix key.
pub(crate) struct GuixSink {
    options: GuixOptions,
    store_dir: StoreDir,
    key: signing::guix::SigningKey,
}

impl std::fmt::Debug for GuixSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuixSink").field("options", &self.options).finish_non_exhaustive()
    }
}

impl GuixSink {
    /// The sink for `options`, signing with the key in `state_dir` (made on first use).
    pub(crate) fn new(
        options: GuixOptions,
        store_dir: StoreDir,
        state_dir: &Path,
    ) -> Result<Self, crate::trust::KeyError> {
        let (key, _) = crate::trust::load_or_generate_key(state_dir)?;
        Ok(GuixSink { options, store_dir, key })
    }

    /// Import the NAR read from `nar` as `info` with one `guix archive --import` (see the
    /// module docs); the references were checked by the caller.
    pub(crate) fn add(
        &mut self,
        info: &PathInfo,
        nar: &mut dyn Read,
    ) -> Result<ImportOutcome, StoreError> {
        let abs = info.path.to_absolute(&self.store_dir);
        let fail = |why: String| StoreError::Io {
            op: "guix archive --import",
            path: abs.clone().into(),
            error: io::Error::other(why),
        };
        let mut child = Command::new(&self.options.program)
            .args(["archive", "--import"])
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", self.options.program.display())))?;
        let stderr = child.stderr.take().map(|e| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let _ = e.take(MAX_STDERR as u64).read_to_end(&mut kept);
                proto::text::peer_text(&String::from_utf8_lossy(&kept), MAX_STDERR)
            })
        });
        let stdin = BufWriter::with_capacity(256 << 10, child.stdin.take().expect("piped"));
        let meta = ItemMeta {
            path: info.path.clone(),
            references: info.references.iter().cloned().collect(),
            deriver: info.deriver.clone(),
        };
        let mut checked = Checked::new(nar, info.nar_digest());
        let mut writer = BundleWriter::new(stdin, self.store_dir.clone());
        let written = writer
            .write_signed(&meta, &mut checked, &self.key)
            .and_then(|_| writer.finish().map(drop).map_err(BundleWriteError::from));
        if written.is_err() {
            // An unsigned, unfinished item: Guix registers nothing of it.
            let _ = child.kill();
        }
        let status = child.wait();
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if let Some(actual) = checked.mismatch {
            return Err(StoreError::HashMismatch {
                path: abs,
                expected: info.nar_hash,
                expected_size: info.nar_size,
                actual: actual.hash,
                actual_size: actual.size,
            });
        }
        match (written, status) {
            (Ok(()), Ok(status)) if status.success() => Ok(ImportOutcome::Imported),
            (Err(BundleWriteError::Io(e)), _) if e.kind() != io::ErrorKind::BrokenPipe => {
                Err(StoreError::Io { op: "receiving the NAR of", path: abs.into(), error: e })
            }
            (Err(e), _) => Err(fail(format!("{e}; {}", stderr.trim()))),
            (Ok(()), Ok(status)) => Err(fail(format!("{status}: {}", stderr.trim()))),
            (Ok(()), Err(e)) => Err(fail(e.to_string())),
        }
    }
}
