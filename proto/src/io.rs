//! Blocking IO adapters over the sans-IO protocol core: [`FrameReader`] pulls frames from any
//! [`Read`], [`FrameWriter`] writes them to any [`Write`], and [`DataReader`] presents one
//! path's `Data` frames as a byte stream ending at its `PathEnd`.
//!
//! Both ends count the bytes they move (the "wire bytes" of the summaries).

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::frame::{encode_data, Frame, FrameDecoder, ProtocolError, DATA_CHUNK};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FramedError {
    /// The byte stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The bytes break the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    bytes_read: u64,
}

impl<R: Read> FrameReader<R> {
    /// A reader at the start of a session.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, decoder: FrameDecoder::new(), buf: vec![0; 256 << 10], bytes_read: 0 }
    }

    /// Bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The stream; bytes read from it and not yet returned as frames are dropped (check
    /// [`FrameDecoder::buffered`] first).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Whether the next frame is already buffered (reading it cannot block).
    pub fn has_frame(&self) -> bool {
        self.decoder.has_frame()
    }

    /// The decoder (to record the peer's version after the handshake).
    pub fn decoder_mut(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    /// The next frame; `None` when the stream ended cleanly between frames.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FramedError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let n = match self.inner.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if self.decoder.buffered() == 0 {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the connection ended inside a frame ({} bytes of it received)",
                        self.decoder.buffered()
                    ),
                )
                .into());
            }
            self.bytes_read += n as u64;
            self.decoder.push(&self.buf[..n]);
        }
    }
}

/// Writes frames to a byte stream, buffering up to one chunk.
#[derive(Debug)]
pub struct FrameWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    written: Arc<AtomicU64>,
}

impl<W: Write> FrameWriter<W> {
    /// A writer; `written` counts the bytes handed to `inner`.
    pub fn new(inner: W, written: Arc<AtomicU64>) -> Self {
        FrameWriter { inner, buf: Vec::with_capacity(2 * DATA_CHUNK), written }
    }

    /// Queue a frame (written out once the buffer holds a chunk, or on [`Self::flush`]).
    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        frame.encode(&mut self.buf);
        self.maybe_write()
    }

    /// Queue a `Data` frame.
    pub fn send_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        encode_data(&mut self.buf, bytes);
        self.maybe_write()
    }

    fn maybe_write(&mut self) -> io::Result<()> {
        if self.buf.len() >= DATA_CHUNK {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.written.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
            self.buf.clear();
        }
        Ok(())
    }

    /// Write out everything queued and flush the stream.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.inner.flush()
    }

    /// The stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// One path's data as a byte stream: the payloads of its `Data` frames, then end of stream at
/// its `PathEnd`. Any other frame, or the connection ending, is an IO error here and is kept
/// in [`DataReader::fatal`] so the caller can tell a broken session from bad data.
#[derive(Debug)]
pub struct DataReader<'a, R> {
    frames: &'a mut FrameReader<R>,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
    fatal: Option<FramedError>,
    /// Encoded bytes delivered (the `Data` payloads).
    pub encoded_bytes: u64,
}

impl<'a, R: Read> DataReader<'a, R> {
    /// Read the data following a `PathStart` just received from `frames`.
    pub fn new(frames: &'a mut FrameReader<R>) -> Self {
        DataReader {
            frames,
            current: Vec::new(),
            pos: 0,
            ended: false,
            fatal: None,
            encoded_bytes: 0,
        }
    }

    /// Whether the `PathEnd` was reached.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The session-ending error met while reading, if any.
    pub fn take_fatal(&mut self) -> Option<FramedError> {
        self.fatal.take()
    }

    /// Skip the rest of the data up to the `PathEnd`.
    pub fn drain(&mut self) -> Result<(), FramedError> {
        let mut sink = [0u8; 8192];
        while !self.ended {
            if self.read(&mut sink).is_err() {
                break;
            }
        }
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<R: Read> DataReader<'_, R> {
    /// Make sure unread bytes of the current `Data` frame are held, reading frames as needed;
    /// false at the `PathEnd`.
    fn refill(&mut self) -> io::Result<bool> {
        if self.fatal.is_some() {
            return Err(io::Error::other("the session already failed"));
        }
        while self.pos == self.current.len() {
            if self.ended {
                return Ok(false);
            }
            match self.frames.read_frame() {
                Ok(Some(Frame::Data(bytes))) => {
                    self.encoded_bytes += bytes.len() as u64;
                    self.current = bytes;
                    self.pos = 0;
                }
                Ok(Some(Frame::PathEnd)) => {
                    self.ended = true;
                    return Ok(false);
                }
                Ok(Some(other)) => {
                    let e = ProtocolError::Unexpected {
                        frame: other.name(),
                        state: "inside a path's data",
                    };
                    self.fatal = Some(e.clone().into());
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Ok(None) => {
                    let e = ProtocolError::Eof { state: "inside a path's data" };
                    self.fatal = Some(e.clone().into());
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
                }
                Err(e) => {
                    let text = e.to_string();
                    self.fatal = Some(e);
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, text));
                }
            }
        }
        Ok(true)
    }
}

impl<R: Read> Read for DataReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The `Data` payloads are the buffer: a decoder reading through [`BufRead`] takes them without
/// another copy.
impl<R: Read> BufRead for DataReader<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.refill()?;
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.current.len());
    }
}

/// A [`Write`] that turns everything written into `Data` frames of at most [`DATA_CHUNK`]
/// bytes on a [`FrameWriter`], calling `on_chunk` with each chunk's size.
#[derive(Debug)]
pub struct DataWriter<'a, W: Write> {
    frames: &'a mut FrameWriter<W>,
    chunk: Vec<u8>,
    /// Bytes written into frames so far.
    pub bytes: u64,
}

impl<'a, W: Write> DataWriter<'a, W> {
    /// Frame data onto `frames`.
    pub fn new(frames: &'a mut FrameWriter<W>) -> Self {
        DataWriter { frames, chunk: Vec::with_capacity(DATA_CHUNK), bytes: 0 }
    }

    /// Send what is buffered.
    pub fn finish(mut self) -> io::Result<u64> {
        self.emit()?;
        Ok(self.bytes)
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.chunk.is_empty() {
            self.frames.send_data(&self.chunk)?;
            self.bytes += self.chunk.len() as u64;
            self.chunk.clear();
        }
        Ok(())
    }
}

impl<W: Write> Write for DataWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(DATA_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == DATA_CHUNK {
            self.emit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
