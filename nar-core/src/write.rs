//! Writing a NAR to a byte stream: the `std::io` adapter over [`crate::encode::Encoder`].
//!
//! [`NarWriter`] buffers only the framing; file contents go from the caller's reader to the
//! output with [`std::io::copy`], which on Linux moves large files with `copy_file_range`,
//! `sendfile` or `splice` when the output is a file, a pipe or stdout (no copy through user
//! space).

use std::io::{self, Read, Write};

use crate::encode::{EncodeError, Encoder};

/// Below this size, file contents are read into the framing buffer (one write per batch of
/// small files); above it they are copied by the kernel where possible.
const SMALL_FILE: u64 = 64 * 1024;
/// The framing buffer is written out when it grows past this.
const FLUSH_AT: usize = 256 * 1024;

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
}

impl<W: Write> NarWriter<W> {
    /// A writer for a new archive on `out`.
    pub fn new(out: W) -> Self {
        NarWriter {
            out,
            encoder: Encoder::new(),
            buf: Vec::with_capacity(FLUSH_AT + SMALL_FILE as usize),
            written: 0,
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
            let copied = io::copy(&mut contents.take(size), &mut self.out)?;
            self.written += copied;
            copied
        };
        if copied != size {
            return Err(WriteError::SizeMismatch { expected: size, actual: copied });
        }
        self.encoder.file_end(&mut self.buf)?;
        Ok(self.maybe_flush()?)
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

    /// Check the archive is complete, write out what is buffered, and return the output and
    /// the archive's size.
    pub fn finish(mut self) -> Result<(W, u64), WriteError> {
        self.encoder.finish()?;
        self.flush_buf()?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}
