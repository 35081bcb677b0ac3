//! Bounded in-memory byte pipes between two threads.
//!
//! A NAR often flows from the thread that produces it (a [`crate::dump`]) to one that consumes
//! it (a hasher, a compressor, a [`crate::restore`]) without ever being held whole. [`chunk_pipe`]
//! connects them: the [`ChunkWriter`] turns each write into a chunk (put a `BufWriter` in front
//! to make chunks large), at most `chunks_in_flight` chunks wait in the channel, and the
//! consumer either takes chunks ([`ChunkReceiver::recv`], handing them back with
//! [`ChunkReceiver::recycle`] so their buffers are reused) or reads bytes
//! ([`ChunkReceiver::into_reader`], a [`BufRead`]). Dropping the consuming end makes the writer
//! fail with `BrokenPipe`, which stops the producer; dropping the writer is the end of input.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc;

/// A bounded pipe holding at most `chunks_in_flight` chunks in its channel.
pub fn chunk_pipe(chunks_in_flight: usize) -> (ChunkWriter, ChunkReceiver) {
    let (full_tx, full_rx) = mpsc::sync_channel(chunks_in_flight);
    let (empty_tx, empty_rx) = mpsc::channel();
    (
        ChunkWriter { full: full_tx, empty: empty_rx },
        ChunkReceiver { full: full_rx, empty: empty_tx },
    )
}

/// The producing end: each write becomes one chunk.
#[derive(Debug)]
pub struct ChunkWriter {
    full: mpsc::SyncSender<Vec<u8>>,
    empty: mpsc::Receiver<Vec<u8>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut chunk = self.empty.try_recv().unwrap_or_default();
        chunk.clear();
        chunk.extend_from_slice(buf);
        self.full.send(chunk).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The consuming end, chunk by chunk.
#[derive(Debug)]
pub struct ChunkReceiver {
    full: mpsc::Receiver<Vec<u8>>,
    empty: mpsc::Sender<Vec<u8>>,
}

impl ChunkReceiver {
    /// The next chunk; `None` once the writer is gone and every chunk was taken.
    pub fn recv(&self) -> Option<Vec<u8>> {
        self.full.recv().ok()
    }

    /// Hand a consumed chunk back so the writer reuses its buffer.
    pub fn recycle(&self, chunk: Vec<u8>) {
        let _ = self.empty.send(chunk);
    }

    /// Read the pipe as bytes.
    pub fn into_reader(self) -> ChunkReader {
        ChunkReader { receiver: self, current: Vec::new(), pos: 0 }
    }
}

/// The consuming end as a [`BufRead`]; end of input once the writer is gone.
#[derive(Debug)]
pub struct ChunkReader {
    receiver: ChunkReceiver,
    current: Vec<u8>,
    pos: usize,
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.current.len() {
            match self.receiver.recv() {
                Some(chunk) => {
                    let done = std::mem::replace(&mut self.current, chunk);
                    self.receiver.recycle(done);
                    self.pos = 0;
                }
                None => return Ok(&[]),
            }
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.current.len());
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_end_when_the_writer_goes() {
        let (mut writer, receiver) = chunk_pipe(2);
        let producer = std::thread::spawn(move || {
            for i in 0..1000u32 {
                writer.write_all(&i.to_le_bytes()).unwrap();
            }
        });
        let mut all = Vec::new();
        receiver.into_reader().read_to_end(&mut all).unwrap();
        producer.join().unwrap();
        let expected: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_gone_reader_stops_the_writer() {
        let (mut writer, receiver) = chunk_pipe(1);
        drop(receiver);
        let err = writer.write_all(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
