//! Writing a NAR to a byte stream: the `std::io` adapter over [`crate::encode::Encoder`].
//!
//! [`NarWriter`] buffers the framing and small files, and writes large files in 1 MiB blocks
//! (one read and one write per block, whatever the output: a pipe, a socket, a hasher). When the
//! output is a file descriptor ([`NarWriter::with_kernel_copy`]: stdout, a file, a pipe), large
//! files from disk move with `sendfile(2)` instead, without passing through user space.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use crate::encode::{EncodeError, Encoder};

/// Below this size, file contents are read into the framing buffer (one write per batch of
/// small files); above it they are copied by the kernel where possible.
const SMALL_FILE: u64 = 64 * 1024;
/// The framing buffer is written out when it grows past this.
const FLUSH_AT: usize = 256 * 1024;
/// Block size for copying large files through user space.
const COPY_BLOCK: usize = 1 << 20;

/// Copies `len` bytes of a file to the output inside the kernel; `Ok(None)` when this output
/// cannot take it (then the caller copies through user space).
type KernelCopy<W> = fn(&W, &File, u64) -> io::Result<Option<u64>>;

/// Errors of [`NarWriter`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The structure would not be a valid archive.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The file's reader gave fewer bytes than announced.
    #[error(
        "file is {actual} bytes, not the {expected} announced (did it change while being read?)"
    )]
    SizeMismatch { expected: u64, actual: u64 },
    /// Reading contents or writing output failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes one archive to `W`.
#[derive(Debug)]
pub struct NarWriter<W: Write> {
    out: W,
    encoder: Encoder,
    buf: Vec<u8>,
    written: u64,
    /// Reused block for copying large files through user space.
    copy_buf: Vec<u8>,
    kernel_copy: Option<KernelCopy<W>>,
}

impl<W: Write> NarWriter<W> {
    /// A writer for a new archive on `out`.
    pub fn new(out: W) -> Self {
        NarWriter {
            out,
            encoder: Encoder::new(),
            buf: Vec::with_capacity(FLUSH_AT + SMALL_FILE as usize),
            written: 0,
            copy_buf: Vec::new(),
            kernel_copy: None,
        }
    }

    /// Bytes of the archive produced so far (written or buffered).
    pub fn position(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.flush_buf()?;
        }
        Ok(())
    }

    /// A regular file of `size` bytes read from `contents`.
    pub fn file<R: Read>(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut R,
    ) -> Result<(), WriteError> {
        self.file_inner(executable, size, contents, None)
    }

    /// A regular file read from an open file on disk: like [`Self::file`], and large files move
    /// inside the kernel when the output allows it.
    pub fn file_from_disk(
        &mut self,
        executable: bool,
        size: u64,
        file: &File,
    ) -> Result<(), WriteError> {
        self.file_inner(executable, size, &mut &*file, Some(file))
    }

    fn file_inner<R: Read>(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut R,
        disk_file: Option<&File>,
    ) -> Result<(), WriteError> {
        self.encoder.file(&mut self.buf, executable, size)?;
        let copied = if size <= SMALL_FILE {
            let start = self.buf.len();
            self.buf.resize(start + size as usize, 0);
            let mut filled = 0;
            while filled < size as usize {
                match contents.read(&mut self.buf[start + filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.buf.truncate(start + filled);
            filled as u64
        } else {
            self.flush_buf()?;
            let in_kernel = match (self.kernel_copy, disk_file) {
                (Some(copy), Some(file)) => copy(&self.out, file, size)?,
                _ => None,
            };
            let copied = match in_kernel {
                Some(copied) => copied,
                None => {
                    self.kernel_copy = None;
                    self.copy_through_user_space(contents, size)?
                }
            };
            self.written += copied;
            copied
        };
        if copied != size {
            return Err(WriteError::SizeMismatch { expected: size, actual: copied });
        }
        self.encoder.file_end(&mut self.buf)?;
        Ok(self.maybe_flush()?)
    }

    /// Copy up to `size` bytes in blocks of [`COPY_BLOCK`]; returns the bytes copied.
    fn copy_through_user_space<R: Read>(&mut self, contents: &mut R, size: u64) -> io::Result<u64> {
        if self.copy_buf.is_empty() {
            self.copy_buf = vec![0; COPY_BLOCK];
        }
        let mut copied = 0u64;
        while copied < size {
            let want = (size - copied).min(COPY_BLOCK as u64) as usize;
            let n = match contents.read(&mut self.copy_buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.out.write_all(&self.copy_buf[..n])?;
            copied += n as u64;
        }
        Ok(copied)
    }

    /// A regular file whose contents are the given bytes.
    pub fn file_bytes(&mut self, executable: bool, contents: &[u8]) -> Result<(), WriteError> {
        self.file(executable, contents.len() as u64, &mut &contents[..])
    }

    /// A symlink.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), WriteError> {
        self.encoder.symlink(&mut self.buf, target)?;
        Ok(self.maybe_flush()?)
    }

    /// Begin a directory.
    pub fn directory(&mut self) -> Result<(), WriteError> {
        Ok(self.encoder.directory(&mut self.buf)?)
    }

    /// Begin an entry of the current directory.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), WriteError> {
        Ok(self.encoder.entry(&mut self.buf, name)?)
    }

    /// End the current directory.
    pub fn directory_end(&mut self) -> Result<(), WriteError> {
        self.encoder.directory_end(&mut self.buf)?;
        Ok(self.maybe_flush()?)
    }

    /// Get the output back without checking the archive is complete (after an error).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Check the archive is complete, write out what is buffered, and return the output and
    /// the archive's size.
    pub fn finish(mut self) -> Result<(W, u64), WriteError> {
        self.encoder.finish()?;
        self.flush_buf()?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

impl<W: Write + AsFd> NarWriter<W> {
    /// Let large files from disk ([`Self::file_from_disk`]) move with `sendfile(2)` straight to
    /// the output descriptor. Falls back to copying through user space for the rest of the
    /// archive when the output refuses (`EINVAL`, `ENOSYS`).
    pub fn with_kernel_copy(mut self) -> Self {
        self.kernel_copy = Some(sendfile_all::<W>);
        self
    }
}

/// `sendfile` until `len` bytes moved or the file ends; `Ok(None)` when the first call shows
/// this pair of descriptors cannot use it.
fn sendfile_all<W: AsFd>(out: &W, file: &File, len: u64) -> io::Result<Option<u64>> {
    let mut moved = 0u64;
    while moved < len {
        let chunk = (len - moved).min(1 << 30) as usize;
        match rustix::fs::sendfile(out, file, None, chunk) {
            Ok(0) => break,
            Ok(n) => moved += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if moved == 0 => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(moved))
}
