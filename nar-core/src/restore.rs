//! Unpacking a NAR into a new directory entry (`nix-store --restore`), strictly.
//!
//! The archive is checked by the decoder as it streams (order, names, padding, limits, depth,
//! truncation, trailing bytes; see [`crate::decode`]), and the file system is written so that
//! nothing escapes the target:
//! - the target must not exist; its parent must;
//! - every name was validated (no `/`, `.`, `..`, NUL) and appears once per directory, and files
//!   are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, directories with `mkdir` and symlinks with
//!   `symlink`, none of which follows a symlink, so a symlink in the archive is never
//!   written through;
//! - restored files are mode 0444 (0555 when executable), directories 0555, and every file,
//!   directory and symlink has mtime and atime 1 (one second after the Epoch), as Guix's
//!   `restore-file` and the daemon's canonicalization leave them;
//! - on any error everything written is removed, so the target does not exist afterwards.
//!
//! With [`RestoreOptions::fsync`], files and directories are synced before the call returns, as
//! an atomic store import needs before it renames the result into place.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::DecodeError;
use crate::hash::NarDigest;
use crate::read::{expect_eof, read_nar, NarEvent, ReadError};

/// Size of the read buffer of [`restore`].
const READ_BUFFER: usize = 256 * 1024;

/// Why a NAR could not be restored. Whatever the cause, the target does not exist afterwards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The archive breaks the format.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The target already exists.
    #[error("cannot restore to {}: it already exists", .0.display())]
    TargetExists(PathBuf),
    /// Creating or writing a file failed.
    #[error("cannot write {} (at NAR byte {offset}): {source}", path.display())]
    Write { path: PathBuf, offset: u64, source: io::Error },
    /// Reading the archive failed.
    #[error("reading the NAR: {0}")]
    Read(#[from] io::Error),
}

impl RestoreError {
    /// The offset in the archive where the error was found, when it is about the archive.
    pub fn offset(&self) -> Option<u64> {
        match self {
            RestoreError::Decode(e) => Some(e.offset),
            RestoreError::Write { offset, .. } => Some(*offset),
            _ => None,
        }
    }
}

impl From<ReadError> for RestoreError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Decode(e) => RestoreError::Decode(e),
            ReadError::Io(e) => RestoreError::Read(e),
        }
    }
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Sync every file and directory to disk before returning.
    pub fsync: bool,
    /// Without `fsync`: start writing each regular file of at least [`WRITEBACK_MIN`] bytes
    /// back to disk as soon as it is closed (`posix_fadvise(DONTNEED)`, which starts
    /// asynchronous writeback of the file's dirty pages), so that a later sync of the whole
    /// file system has little left to wait for. Durability still comes from that later sync.
    pub start_writeback: bool,
}

/// Files smaller than this are left to the later sync as they are.
pub const WRITEBACK_MIN: u64 = 256 << 10;

/// Restore the standalone NAR read from `input` to `target`; returns the archive's digest.
pub fn restore<R: Read>(input: R, target: &Path) -> Result<NarDigest, RestoreError> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, input);
    restore_with(&mut reader, target, &RestoreOptions::default(), true)
}

/// Restore one NAR from `reader` to `target`. With `standalone`, bytes after the archive are an
/// error; without, the reader is left right after the archive (for NARs inside a larger stream).
pub fn restore_with<R: BufRead + ?Sized>(
    reader: &mut R,
    target: &Path,
    options: &RestoreOptions,
    standalone: bool,
) -> Result<NarDigest, RestoreError> {
    match fs::symlink_metadata(target) {
        Ok(_) => return Err(RestoreError::TargetExists(target.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RestoreError::Write { path: target.to_owned(), offset: 0, source })
        }
    }
    let mut restorer = Restorer {
        path: target.to_path_buf(),
        depth: 0,
        file: None,
        written: 0,
        executable: false,
        options,
    };
    let result =
        read_nar(reader, |event, offset| restorer.on_event(event, offset)).and_then(|digest| {
            if standalone {
                expect_eof(reader, digest.size)?;
            }
            if options.fsync {
                if let Some(parent) = target.parent() {
                    sync_dir(parent).map_err(|source| RestoreError::Write {
                        path: parent.to_owned(),
                        offset: digest.size,
                        source,
                    })?;
                }
            }
            Ok(digest)
        });
    if result.is_err() {
        drop(restorer);
        let _ = remove_tree(target);
    }
    result
}

struct Restorer<'o> {
    /// The node being written.
    path: PathBuf,
    /// Entries below the target of the current node.
    depth: usize,
    file: Option<File>,
    /// Bytes written to the current file.
    written: u64,
    /// Whether the current file is executable.
    executable: bool,
    options: &'o RestoreOptions,
}

/// mtime and atime of restored files: one second after the Epoch.
fn epoch_plus_one() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1)
}

impl Restorer<'_> {
    fn on_event(&mut self, event: NarEvent<'_>, offset: u64) -> Result<(), RestoreError> {
        let write_error =
            |path: &Path, source| RestoreError::Write { path: path.to_owned(), offset, source };
        match event {
            NarEvent::Directory => {
                fs::create_dir(&self.path).map_err(|e| write_error(&self.path, e))?;
            }
            NarEvent::Entry { name } => {
                self.path.push(std::ffi::OsStr::from_bytes(name));
                self.depth += 1;
            }
            NarEvent::File { executable, .. } => {
                self.executable = executable;
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&self.path)
                    .map_err(|e| write_error(&self.path, e))?;
                self.file = Some(file);
                self.written = 0;
            }
            NarEvent::Data(bytes) => {
                let file = self.file.as_mut().expect("data inside a file");
                file.write_all(bytes).map_err(|e| write_error(&self.path, e))?;
                self.written += bytes.len() as u64;
            }
            NarEvent::FileEnd => {
                let file = self.file.take().expect("end of a file");
                let mode = if self.executable { 0o555 } else { 0o444 };
                let times = fs::FileTimes::new()
                    .set_accessed(epoch_plus_one())
                    .set_modified(epoch_plus_one());
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .and_then(|()| file.set_times(times))
                    .and_then(|()| if self.options.fsync { file.sync_all() } else { Ok(()) })
                    .map_err(|e| write_error(&self.path, e))?;
                if self.options.start_writeback
                    && !self.options.fsync
                    && self.written >= WRITEBACK_MIN
                {
                    start_writeback(&file);
                }
                self.node_done();
            }
            NarEvent::Symlink { target } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &self.path)
                    .map_err(|e| write_error(&self.path, e))?;
                let one = filetime::FileTime::from_unix_time(1, 0);
                filetime::set_symlink_file_times(&self.path, one, one)
                    .map_err(|e| write_error(&self.path, e))?;
                self.node_done();
            }
            NarEvent::DirectoryEnd => {
                let one = filetime::FileTime::from_unix_time(1, 0);
                filetime::set_file_times(&self.path, one, one)
                    .and_then(|()| if self.options.fsync { sync_dir(&self.path) } else { Ok(()) })
                    .and_then(|()| {
                        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o555))
                    })
                    .map_err(|e| write_error(&self.path, e))?;
                self.node_done();
            }
            NarEvent::End => {}
        }
        Ok(())
    }

    fn node_done(&mut self) {
        if self.depth > 0 {
            self.path.pop();
            self.depth -= 1;
        }
    }
}

/// Start asynchronous writeback of `file`'s dirty pages (a hint: failure changes nothing, as
/// durability comes from a later sync).
pub fn start_writeback(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Remove a tree that may contain read-only directories (as restored ones are).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        make_writable(path)?;
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn make_writable(dir: &Path) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}
