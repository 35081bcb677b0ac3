//! Serializing a file, directory or symlink as a NAR (`nix-store --dump`), and hashing it.
//!
//! The walk visits directory entries in bytewise order of their names, records a regular file's
//! contents and owner-execute bit, a symlink's target verbatim, and nothing else. A socket, FIFO
//! or device is an error naming the file. Files are opened with `O_NOFOLLOW | O_NONBLOCK`, so a
//! file swapped for a symlink or a FIFO during the walk is an error rather than a hang or an
//! escape from the tree.
//!
//! [`hash_path`] overlaps the walk and the reads (one thread) with SHA-256 (the calling thread):
//! a NAR's hash is inherently serial, so its speed is one core's SHA-256, and everything else is
//! kept off that core.

use std::fs::{self, File, FileType};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::encode::EncodeError;
use crate::hash::{NarDigest, NarHasher};
use crate::pipe::chunk_pipe;
use crate::write::{NarWriter, WriteError};

/// Why a tree could not be serialized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// Reading a file or directory failed.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A file type the format cannot hold.
    #[error("file {} has an unsupported type ({kind}): a NAR holds only regular files, directories and symlinks", path.display())]
    Unsupported { path: PathBuf, kind: &'static str },
    /// The file changed while it was being read.
    #[error("{} changed while being read: {detail}", path.display())]
    Changed { path: PathBuf, detail: String },
    /// A name or symlink target the format cannot hold.
    #[error("cannot serialize {}: {source}", path.display())]
    Encode { path: PathBuf, source: EncodeError },
    /// Writing the archive failed.
    #[error("writing the NAR: {0}")]
    Write(#[source] io::Error),
}

fn unsupported_kind(file_type: &FileType) -> &'static str {
    if file_type.is_socket() {
        "socket"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "unknown"
    }
}

/// Write the NAR of `path` to `out`; returns the number of bytes written.
pub fn dump<W: Write>(path: &Path, out: W) -> Result<u64, DumpError> {
    dump_with(path, NarWriter::new(out))
}

/// Write the NAR of `path` to a file descriptor (stdout, a pipe, a file); large files move with
/// `sendfile(2)`, without passing through user space. Returns the number of bytes written.
pub fn dump_to_fd<W: Write + AsFd>(path: &Path, out: W) -> Result<u64, DumpError> {
    dump_with(path, NarWriter::new(out).with_kernel_copy())
}

fn dump_with<W: Write>(path: &Path, mut writer: NarWriter<W>) -> Result<u64, DumpError> {
    let file_type = fs::symlink_metadata(path)
        .map_err(|source| DumpError::Read { path: path.to_owned(), source })?
        .file_type();
    let mut path_buf = path.to_path_buf();
    dump_node(&mut writer, &mut path_buf, file_type)?;
    let (_, size) = writer.finish().map_err(|e| map_write_error(e, path))?;
    Ok(size)
}

/// Write the NAR of `path` to `out` and return its hash and size (one pass).
pub fn dump_hashed<W: Write>(path: &Path, out: W) -> Result<NarDigest, DumpError> {
    let mut hashing = crate::hash::HashingWriter::new(out);
    dump(path, &mut hashing)?;
    Ok(hashing.finish().1)
}

fn map_write_error(err: WriteError, path: &Path) -> DumpError {
    match err {
        WriteError::Encode(source) => DumpError::Encode { path: path.to_owned(), source },
        WriteError::SizeMismatch { expected, actual } => DumpError::Changed {
            path: path.to_owned(),
            detail: format!("{actual} bytes read, {expected} expected"),
        },
        WriteError::Io(source) => DumpError::Write(source),
    }
}

fn dump_node<W: Write>(
    writer: &mut NarWriter<W>,
    path: &mut PathBuf,
    file_type: FileType,
) -> Result<(), DumpError> {
    let read_error = |path: &Path, source| DumpError::Read { path: path.to_owned(), source };
    if file_type.is_file() {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&*path)
            .map_err(|e| read_error(path, e))?;
        let meta = file.metadata().map_err(|e| read_error(path, e))?;
        if !meta.is_file() {
            return Err(DumpError::Changed {
                path: path.clone(),
                detail: "no longer a regular file".into(),
            });
        }
        let executable = meta.permissions().mode() & 0o100 != 0;
        return copy_file(writer, path, &file, executable, meta.len());
    }
    if file_type.is_symlink() {
        let target = fs::read_link(&*path).map_err(|e| read_error(path, e))?;
        return writer.symlink(target.as_os_str().as_bytes()).map_err(|e| map_write_error(e, path));
    }
    if !file_type.is_dir() {
        return Err(DumpError::Unsupported {
            path: path.clone(),
            kind: unsupported_kind(&file_type),
        });
    }
    let mut entries = Vec::new();
    for entry in fs::read_dir(&*path).map_err(|e| read_error(path, e))? {
        let entry = entry.map_err(|e| read_error(path, e))?;
        let file_type = entry.file_type().map_err(|e| read_error(&entry.path(), e))?;
        entries.push((entry.file_name(), file_type));
    }
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    writer.directory().map_err(|e| map_write_error(e, path))?;
    for (name, file_type) in entries {
        writer.entry(name.as_bytes()).map_err(|e| map_write_error(e, path))?;
        path.push(&name);
        dump_node(writer, path, file_type)?;
        path.pop();
    }
    writer.directory_end().map_err(|e| map_write_error(e, path))
}

fn copy_file<W: Write>(
    writer: &mut NarWriter<W>,
    path: &Path,
    file: &File,
    executable: bool,
    size: u64,
) -> Result<(), DumpError> {
    writer.file_from_disk(executable, size, file).map_err(|err| match err {
        // Copying mixes read and write errors; a read error names the file.
        WriteError::Io(source) if source.kind() != io::ErrorKind::BrokenPipe => {
            DumpError::Read { path: path.to_owned(), source }
        }
        other => map_write_error(other, path),
    })
}

/// Size of the chunks handed from the walking thread to the hashing thread.
const HASH_CHUNK: usize = 1 << 20;
/// Chunks in flight between the threads (bounds memory to about 18 MiB).
const HASH_CHUNKS_IN_FLIGHT: usize = 16;

/// The NAR hash and size of `path` (what `nix-hash --type sha256` prints), without writing
/// the archive anywhere. The walk and reads run on a second thread, overlapped with hashing.
pub fn hash_path(path: &Path) -> Result<NarDigest, DumpError> {
    let (writer, receiver) = chunk_pipe(HASH_CHUNKS_IN_FLIGHT);
    std::thread::scope(|scope| {
        let producer =
            scope.spawn(move || dump(path, BufWriter::with_capacity(HASH_CHUNK, writer)));
        let mut hasher = NarHasher::new();
        while let Some(chunk) = receiver.recv() {
            hasher.update(&chunk);
            receiver.recycle(chunk);
        }
        let size = producer.join().expect("the NAR walker thread panicked")?;
        debug_assert_eq!(size, hasher.size());
        Ok(hasher.finish())
    })
}
