//! A full path's compressed stream as a run of zstd frames, one per segment of
//! [`SEGMENT_BYTES`] NAR bytes, each at the level chosen when it starts.
//!
//! The receiver reads one zstd stream ([`proto::frame::Encoding::Zstd`]); zstd decoders read
//! concatenated frames as one stream, so nothing on the wire or in the agent changes. What it
//! buys: a large path no longer goes at the level chosen before anything was measured. After
//! each segment the [`LevelPolicy`] is told what it cost (NAR and encoded bytes) and picks the
//! next segment's level, so a 500 MiB path that started at level 3 on a link faster than the
//! compressor goes on at zstd's fast levels or uncompressed after the first segment, and one
//! that started fast on a slow link goes up.
//!
//! Level 0 ("no compression") in a later segment is a zstd frame of raw blocks, written here
//! (RFC 8878 §3.1.1): magic `28 B5 2F FD`; frame header descriptor `00` (no content size, no
//! checksum, no dictionary, not single-segment); window descriptor `38` (2^17 bytes, so blocks
//! of up to 128 KiB); then raw blocks, each a 3-byte little-endian header `size << 3 | type 0 <<
//! 1 | last` and its bytes, ended by an empty last block. It costs a copy, not a compressor.
//!
//! Each frame is independent: the ratio lost at a boundary is one window's worth of matches
//! (at most 8 MiB at the highest levels), small against segments of [`SEGMENT_BYTES`].

use std::io::{self, Write};

use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer, ResetDirective};

/// NAR bytes per zstd frame.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// Largest raw block (the window of a raw frame).
const RAW_BLOCK: usize = 128 << 10;

/// Magic number, frame header descriptor and window descriptor of a raw frame.
const RAW_FRAME_HEADER: [u8; 6] = [0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38];

/// Chooses each segment's level and hears what each cost.
pub trait LevelPolicy {
    /// The segment at `level` is done: `nar` bytes in, `encoded` bytes out.
    fn segment_done(&mut self, level: i32, nar: u64, encoded: u64);
    /// The level of the next segment (0: raw blocks).
    fn next_level(&mut self) -> i32;
}

/// How a context is set up for one level.
pub type Configure<'a> = dyn FnMut(&mut CCtx<'static>, i32) -> io::Result<()> + 'a;

/// A [`Write`] that compresses what it is given into `out` as segments (see the module docs).
/// [`SegmentedWriter::finish`] ends the last frame.
pub struct SegmentedWriter<'a, W: Write> {
    out: W,
    cctx: &'a mut CCtx<'static>,
    configure: &'a mut Configure<'a>,
    policy: &'a mut dyn LevelPolicy,
    level: i32,
    /// NAR bytes and encoded bytes of the current segment.
    nar: u64,
    encoded: u64,
    /// Whether the current segment's frame has begun (nothing is written for an empty one).
    open: bool,
    /// Frames ended so far.
    frames: u64,
    buf: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for SegmentedWriter<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentedWriter")
            .field("level", &self.level)
            .field("nar", &self.nar)
            .field("encoded", &self.encoded)
            .finish_non_exhaustive()
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd::zstd_safe::get_error_name(code))
}

impl<'a, W: Write> SegmentedWriter<'a, W> {
    /// A writer whose first segment is at `level` (non-zero: a first segment uncompressed is
    /// [`proto::frame::Encoding::None`], not this).
    pub fn new(
        out: W,
        cctx: &'a mut CCtx<'static>,
        configure: &'a mut Configure<'a>,
        policy: &'a mut dyn LevelPolicy,
        level: i32,
    ) -> io::Result<Self> {
        configure(cctx, level)?;
        let buf = Vec::with_capacity(zstd::zstd_safe::CCtx::out_size());
        Ok(SegmentedWriter {
            out,
            cctx,
            configure,
            policy,
            level,
            nar: 0,
            encoded: 0,
            open: false,
            frames: 0,
            buf,
        })
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.encoded += bytes.len() as u64;
        Ok(())
    }

    /// Encode `input` (within the current segment).
    fn encode(&mut self, input: &[u8]) -> io::Result<()> {
        if self.level == 0 {
            if !self.open {
                self.emit(&RAW_FRAME_HEADER)?;
                self.open = true;
            }
            for block in input.chunks(RAW_BLOCK) {
                let header = (block.len() as u32) << 3;
                self.emit(&header.to_le_bytes()[..3])?;
                self.emit(block)?;
            }
            return Ok(());
        }
        self.open = true;
        let mut input = InBuffer::around(input);
        while input.pos < input.src.len() {
            self.compress(Some(&mut input))?;
        }
        Ok(())
    }

    /// One call of the compressor with `input`, or ending the frame without; returns what it
    /// says is left to flush.
    fn compress(&mut self, input: Option<&mut InBuffer<'_>>) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut output = OutBuffer::around(&mut buf);
        let left = match input {
            Some(input) => self.cctx.compress_stream(&mut output, input),
            None => self.cctx.end_stream(&mut output),
        }
        .map_err(zstd_error);
        let written = output.pos();
        let r = left.and_then(|left| self.emit(&buf[..written]).map(|()| left));
        self.buf = buf;
        r
    }

    /// End the current segment's frame and tell the policy what it cost.
    fn end_segment(&mut self) -> io::Result<()> {
        if self.open {
            if self.level == 0 {
                // An empty raw block that is the last.
                self.emit(&[1, 0, 0])?;
            } else {
                while self.compress(None)? > 0 {}
            }
            self.policy.segment_done(self.level, self.nar, self.encoded);
            self.frames += 1;
        }
        self.open = false;
        self.nar = 0;
        self.encoded = 0;
        Ok(())
    }

    /// Start the next segment at the level the policy picks now.
    fn next_segment(&mut self) -> io::Result<()> {
        self.end_segment()?;
        let level = self.policy.next_level();
        if level != 0 {
            // Parameters too: the previous level's caps must not carry over.
            self.cctx.reset(ResetDirective::SessionAndParameters).map_err(zstd_error)?;
            (self.configure)(self.cctx, level)?;
        }
        self.level = level;
        Ok(())
    }

    /// End the last frame (an empty input still makes one: a zstd stream is at least a
    /// frame); returns `out`.
    pub fn finish(mut self) -> io::Result<W> {
        if self.frames == 0 && self.level != 0 {
            self.open = true;
        }
        self.end_segment()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SegmentedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.nar == SEGMENT_BYTES {
            self.next_segment()?;
        }
        let room = (SEGMENT_BYTES - self.nar).min(buf.len() as u64) as usize;
        self.encode(&buf[..room])?;
        self.nar += room as u64;
        Ok(room)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Set `cctx` for `level`.
pub fn set_level(cctx: &mut CCtx<'static>, level: i32) -> io::Result<()> {
    cctx.set_parameter(CParameter::CompressionLevel(level)).map(|_| ()).map_err(zstd_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Levels in turn, each segment recorded.
    struct Script {
        levels: Vec<i32>,
        done: Vec<(i32, u64, u64)>,
    }

    impl LevelPolicy for Script {
        fn segment_done(&mut self, level: i32, nar: u64, encoded: u64) {
            self.done.push((level, nar, encoded));
        }
        fn next_level(&mut self) -> i32 {
            self.levels.remove(0)
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half text-like, half noise: both compressible and not.
                if i % 2 == 0 {
                    b'a' + (i / 3 % 7) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    /// Segments at a level, uncompressed, a fast level and a high level decode, as one stream,
    /// to the input, whatever the sizes of the writes; the policy hears each segment's sizes.
    #[test]
    fn segments_at_any_level_decode_as_one_stream() {
        let seg = SEGMENT_BYTES as usize;
        let input = sample(3 * seg + 12345);
        for write_size in [1 << 20, 7_777] {
            let mut cctx = CCtx::create();
            let mut configure = |c: &mut CCtx<'static>, l: i32| set_level(c, l);
            let mut policy = Script { levels: vec![0, -5, 19], done: vec![] };
            let mut w = SegmentedWriter::new(Vec::new(), &mut cctx, &mut configure, &mut policy, 3)
                .unwrap();
            for chunk in input.chunks(write_size) {
                w.write_all(chunk).unwrap();
            }
            let out = w.finish().unwrap();
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), input);
            let levels: Vec<i32> = policy.done.iter().map(|d| d.0).collect();
            assert_eq!(levels, [3, 0, -5, 19]);
            let nar: Vec<u64> = policy.done.iter().map(|d| d.1).collect();
            assert_eq!(nar, [SEGMENT_BYTES, SEGMENT_BYTES, SEGMENT_BYTES, 12345]);
            assert_eq!(policy.done.iter().map(|d| d.2).sum::<u64>(), out.len() as u64);
            if write_size % RAW_BLOCK == 0 {
                // The raw segment is its bytes plus headers: one per 128 KiB block, the frame's.
                let raw = policy.done[1].2;
                assert_eq!(raw, SEGMENT_BYTES + 3 * (SEGMENT_BYTES / RAW_BLOCK as u64) + 6 + 3);
            }
        }
    }

    /// An input that ends on a segment boundary leaves no empty frame behind, and an empty
    /// input is one empty frame.
    #[test]
    fn no_empty_frames() {
        for len in [0, SEGMENT_BYTES as usize] {
            let input = sample(len);
            let mut cctx = CCtx::create();
            let mut configure = |c: &mut CCtx<'static>, l: i32| set_level(c, l);
            let mut policy = Script { levels: vec![0], done: vec![] };
            let mut w = SegmentedWriter::new(Vec::new(), &mut cctx, &mut configure, &mut policy, 1)
                .unwrap();
            w.write_all(&input).unwrap();
            let out = w.finish().unwrap();
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), input);
            assert_eq!(policy.done.len(), 1);
        }
    }
}
