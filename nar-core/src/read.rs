//! Reading a NAR from a byte stream: the `std::io` adapter over [`crate::decode::Decoder`]
//! (and, with the `tokio` feature, the async one).
//!
//! [`read_nar`] pulls bytes from a [`BufRead`], feeds them to the decoder, hashes them and
//! hands each [`NarEvent`] to a visitor, borrowing names, targets and contents straight from the
//! buffers. It consumes exactly the archive and nothing after it, so it can read a NAR embedded
//! in a larger stream; [`expect_eof`] checks that a standalone NAR has no trailing bytes.

use std::io::{self, BufRead};

use crate::decode::{Decoder, Event, Step};
use crate::error::{DecodeError, DecodeErrorKind};
use crate::hash::{NarDigest, NarHasher};

/// An event of the archive, with its borrowed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarEvent<'a> {
    /// A directory begins.
    Directory,
    /// An entry of the current directory; its node follows.
    Entry { name: &'a [u8] },
    /// The current directory ends.
    DirectoryEnd,
    /// A regular file begins.
    File { executable: bool, size: u64 },
    /// A piece of the current file's contents.
    Data(&'a [u8]),
    /// The current file ends.
    FileEnd,
    /// A symlink.
    Symlink { target: &'a [u8] },
    /// The archive is complete.
    End,
}

/// Errors of [`read_nar`] when the visitor adds none of its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes break the format.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Reading failed.
    #[error("reading the NAR: {0}")]
    Io(#[from] io::Error),
}

impl<'a> NarEvent<'a> {
    fn from_step(event: Event, decoder: &'a Decoder, input: &'a [u8], step: &Step) -> Self {
        match event {
            Event::Directory => NarEvent::Directory,
            Event::Entry => NarEvent::Entry { name: decoder.name() },
            Event::DirectoryEnd => NarEvent::DirectoryEnd,
            Event::File { executable, size } => NarEvent::File { executable, size },
            Event::Data { len } => NarEvent::Data(&input[step.consumed - len..step.consumed]),
            Event::FileEnd => NarEvent::FileEnd,
            Event::Symlink => NarEvent::Symlink { target: decoder.symlink_target() },
            Event::End => NarEvent::End,
        }
    }
}

/// Read one archive from `reader`, calling `visit` with each event and the offset after it;
/// returns the archive's hash and size. Stops right after the archive.
pub fn read_nar<R, E, F>(reader: &mut R, mut visit: F) -> Result<NarDigest, E>
where
    R: BufRead + ?Sized,
    E: From<DecodeError> + From<io::Error>,
    F: FnMut(NarEvent<'_>, u64) -> Result<(), E>,
{
    let mut decoder = Decoder::new();
    let mut hasher = NarHasher::new();
    while !decoder.is_done() {
        let input = loop {
            match reader.fill_buf() {
                Ok(input) => break input,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let at_eof = input.is_empty();
        let step = decoder.step(input)?;
        hasher.update(&input[..step.consumed]);
        if let Some(event) = step.event {
            visit(NarEvent::from_step(event, &decoder, input, &step), decoder.offset())?;
        } else if at_eof {
            return Err(decoder.truncated().into());
        }
        reader.consume(step.consumed);
    }
    Ok(hasher.finish())
}

/// Check that nothing follows an archive that ended at `offset`.
pub fn expect_eof<R: BufRead + ?Sized>(reader: &mut R, offset: u64) -> Result<(), ReadError> {
    if reader.fill_buf()?.is_empty() {
        Ok(())
    } else {
        Err(DecodeError { offset, kind: DecodeErrorKind::TrailingData }.into())
    }
}

/// Check a whole standalone NAR (format, no trailing bytes) and return its digest.
pub fn validate<R: BufRead + ?Sized>(reader: &mut R) -> Result<NarDigest, ReadError> {
    let digest = read_nar(reader, |_, _| Ok::<(), ReadError>(()))?;
    expect_eof(reader, digest.size)?;
    Ok(digest)
}

/// The async (tokio) adapter: the same decoder over an [`tokio::io::AsyncBufRead`].
#[cfg(feature = "tokio")]
pub mod tokio_io {
    use super::*;
    use tokio::io::{AsyncBufRead, AsyncBufReadExt};

    /// Async [`read_nar`]: read one archive, calling `visit` with each event.
    pub async fn read_nar_async<R, E, F>(reader: &mut R, mut visit: F) -> Result<NarDigest, E>
    where
        R: AsyncBufRead + Unpin + ?Sized,
        E: From<DecodeError> + From<io::Error>,
        F: FnMut(NarEvent<'_>, u64) -> Result<(), E>,
    {
        let mut decoder = Decoder::new();
        let mut hasher = NarHasher::new();
        while !decoder.is_done() {
            let input = reader.fill_buf().await?;
            let at_eof = input.is_empty();
            let step = decoder.step(input)?;
            hasher.update(&input[..step.consumed]);
            if let Some(event) = step.event {
                visit(NarEvent::from_step(event, &decoder, input, &step), decoder.offset())?;
            } else if at_eof {
                return Err(decoder.truncated().into());
            }
            reader.consume(step.consumed);
        }
        Ok(hasher.finish())
    }
}
