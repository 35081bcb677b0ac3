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
//! System calls per node, as few as those guarantees allow (file creation dominates a restore
//! of many small files): every node is created relative to an open descriptor of its
//! directory (`openat`, `mkdirat`, `symlinkat`), so no path is resolved twice; a regular file
//! is created with its final mode (`O_CREAT` with 0444 still returns a writable descriptor;
//! `fchmod` only when the process umask would clear one of its bits), written, given its times
//! with `futimens` and closed: `openat`, `write`s, `futimens`, `close`. A directory is made
//! with `mkdirat` 0755, opened, and given 0555 and its times (`fchmod`, `futimens`) once its
//! last entry is written. A symlink: `symlinkat`, `utimensat(AT_SYMLINK_NOFOLLOW)`.
//!
//! With [`RestoreOptions::fsync`], files and directories are synced before the call returns, as
//! an atomic store import needs before it renames the result into place.
//!
//! **Bounds.** A NAR received from a peer is restored under limits the receiver knows before
//! the first byte: [`RestoreOptions::max_size`] (the signed NAR size) stops the restore at the
//! first event that would go past it, before anything of it is written, and
//! [`RestoreOptions::max_nodes`] caps the files, directories and symlinks created. So a stream
//! that decompresses to far more than it declared writes at most its declared size (and no
//! more than the cap of inodes) before it is refused and removed.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

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
    /// The archive goes on past [`RestoreOptions::max_size`].
    #[error("the NAR goes past its declared size of {declared} bytes (at NAR byte {offset})")]
    TooLarge { declared: u64, offset: u64 },
    /// The archive holds more nodes than [`RestoreOptions::max_nodes`].
    #[error(
        "the NAR holds more than {max} files, directories and symlinks, the limit for one path \
         (at NAR byte {offset})"
    )]
    TooManyNodes { max: u64, offset: u64 },
}

impl RestoreError {
    /// The offset in the archive where the error was found, when it is about the archive.
    pub fn offset(&self) -> Option<u64> {
        match self {
            RestoreError::Decode(e) => Some(e.offset),
            RestoreError::Write { offset, .. }
            | RestoreError::TooLarge { offset, .. }
            | RestoreError::TooManyNodes { offset, .. } => Some(*offset),
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
    /// Stop with [`RestoreError::TooLarge`] at the first event ending past this NAR byte.
    pub max_size: Option<u64>,
    /// Stop with [`RestoreError::TooManyNodes`] before creating more nodes than this.
    pub max_nodes: Option<u64>,
}

/// The default cap of nodes (files, directories, symlinks) of one received path: far above
/// any real package (the largest hold a few hundred thousand files).
pub const MAX_NODES: u64 = 2_000_000;

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
    let parent = match (target.parent(), target.file_name()) {
        (Some(p), Some(_)) if p.as_os_str().is_empty() => Path::new("."),
        (Some(p), Some(_)) => p,
        _ => {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "not a name to create");
            return Err(RestoreError::Write { path: target.to_owned(), offset: 0, source });
        }
    };
    let parent_fd = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RestoreError::Write {
        path: parent.to_owned(),
        offset: 0,
        source: e.into(),
    })?;
    let mut restorer = Restorer {
        path: target.to_path_buf(),
        depth: 0,
        dirs: vec![parent_fd],
        file: None,
        written: 0,
        executable: false,
        nodes: 0,
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
    /// The node being written (for error messages; its last component is the name created).
    path: PathBuf,
    /// Entries below the target of the current node.
    depth: usize,
    /// Open directories: the target's parent, then each directory being filled. Every node is
    /// created relative to the last one (`*at` calls), so no path is looked up twice.
    dirs: Vec<OwnedFd>,
    file: Option<File>,
    /// Bytes written to the current file.
    written: u64,
    /// Whether the current file is executable.
    executable: bool,
    /// Nodes created so far.
    nodes: u64,
    options: &'o RestoreOptions,
}

/// mtime and atime of restored nodes: one second after the Epoch.
const EPOCH_PLUS_ONE: Timestamps = Timestamps {
    last_access: Timespec { tv_sec: 1, tv_nsec: 0 },
    last_modification: Timespec { tv_sec: 1, tv_nsec: 0 },
};

/// The process's umask, read once from `/proc/self/status` (`None` when it cannot be read).
/// Reading it with `umask(2)` would change it for a moment under other threads.
fn process_umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Does creating a file with `mode` give it exactly `mode` (the umask clears none of its bits)?
fn create_mode_is_exact(mode: u32) -> bool {
    process_umask().is_some_and(|umask| umask & mode == 0)
}

impl Restorer<'_> {
    /// The directory the current node goes in, and the node's name.
    fn place(&self) -> (BorrowedFd<'_>, &OsStr) {
        let dir = self.dirs.last().expect("the target's parent stays open").as_fd();
        (dir, self.path.file_name().expect("checked before the first node"))
    }

    fn on_event(&mut self, event: NarEvent<'_>, offset: u64) -> Result<(), RestoreError> {
        let write_error = |path: &Path, source: io::Error| RestoreError::Write {
            path: path.to_owned(),
            offset,
            source,
        };
        if let Some(declared) = self.options.max_size.filter(|&m| offset > m) {
            return Err(RestoreError::TooLarge { declared, offset });
        }
        if matches!(event, NarEvent::Directory | NarEvent::File { .. } | NarEvent::Symlink { .. }) {
            self.nodes += 1;
            if let Some(max) = self.options.max_nodes.filter(|&m| self.nodes > m) {
                return Err(RestoreError::TooManyNodes { max, offset });
            }
        }
        match event {
            NarEvent::Directory => {
                let (dir, name) = self.place();
                // Writable while it is filled; 0555 at its end.
                let fd = rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                    .and_then(|()| {
                        rustix::fs::openat(
                            dir,
                            name,
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                    })
                    .map_err(|e| write_error(&self.path, e.into()))?;
                self.dirs.push(fd);
            }
            NarEvent::Entry { name } => {
                self.path.push(OsStr::from_bytes(name));
                self.depth += 1;
            }
            NarEvent::File { executable, .. } => {
                self.executable = executable;
                let (dir, name) = self.place();
                // Created with its final mode: the descriptor is writable all the same.
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(file_mode(executable)),
                )
                .map_err(|e| write_error(&self.path, e.into()))?;
                self.file = Some(File::from(fd));
                self.written = 0;
            }
            NarEvent::Data(bytes) => {
                let file = self.file.as_mut().expect("data inside a file");
                file.write_all(bytes).map_err(|e| write_error(&self.path, e))?;
                self.written += bytes.len() as u64;
            }
            NarEvent::FileEnd => {
                let file = self.file.take().expect("end of a file");
                let mode = file_mode(self.executable);
                let chmod = || {
                    if create_mode_is_exact(mode) {
                        Ok(())
                    } else {
                        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    }
                };
                chmod()
                    .and_then(|()| rustix::fs::futimens(&file, &EPOCH_PLUS_ONE))
                    .map_err(io::Error::from)
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
                let (dir, name) = self.place();
                rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name)
                    .and_then(|()| {
                        rustix::fs::utimensat(dir, name, &EPOCH_PLUS_ONE, AtFlags::SYMLINK_NOFOLLOW)
                    })
                    .map_err(|e| write_error(&self.path, e.into()))?;
                self.node_done();
            }
            NarEvent::DirectoryEnd => {
                let fd = self.dirs.pop().expect("a directory is open");
                // Mode first: the times are set last, as nothing changes them after.
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o555))
                    .and_then(|()| rustix::fs::futimens(&fd, &EPOCH_PLUS_ONE))
                    .and_then(|()| if self.options.fsync { rustix::fs::fsync(&fd) } else { Ok(()) })
                    .map_err(|e| write_error(&self.path, e.into()))?;
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

/// The mode of a restored regular file.
fn file_mode(executable: bool) -> u32 {
    if executable {
        0o555
    } else {
        0o444
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
