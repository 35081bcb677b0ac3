//! Delta frames: a new NAR sent as zstd with an older NAR the host already has as reference.
//!
//! This is what `zstd --patch-from=OLD NEW` does (the base NAR is a *reference prefix* of the
//! frame, long-distance matching on, window sized to cover base and new), made streaming and
//! memory-bounded, with the base's integrity checked before anything is applied.
//!
//! # Stream format (all integers little-endian)
//!
//! ```text
//! header:   "FERRYDL2"            8 bytes, magic + format version
//!           base_nar_size         u64
//!           base_nar_sha256       32 bytes   (the base the encoder used)
//!           new_nar_size          u64
//!           segment_count         u32
//! segment:  base_offset           u64  \ the reference prefix of this frame is
//!           base_len              u64  /   base_nar[base_offset .. base_offset + base_len]
//!           new_len               u64      NAR bytes this frame decodes to
//!           chunk*                one zstd frame (content size and checksum flags set)
//!                                 compressed with that prefix, cut into chunks as the
//!                                 encoder produced it:
//! chunk:    len                   u32 (1 ..= 4 MiB), then len bytes of the frame
//!           0u32                  after the last chunk of the frame
//! ```
//!
//! The frame is streamed (chunks leave as zstd emits blocks), so sending overlaps compressing;
//! version 1 (`FERRYDL1`) announced each frame's length up front, which kept the whole frame in
//! memory before its first byte could leave.
//!
//! The segments' `new_len` add up to `new_nar_size`; the decoded segments, concatenated, are the
//! new NAR. The caller verifies the new NAR's hash (the decoder returns the digest it computed).
//!
//! # Bounds (where memory goes)
//!
//! - **Base in memory, both sides.** zstd needs the reference prefix as one contiguous buffer:
//!   the encoder takes the base NAR as `&[u8]`, the decoder rebuilds it into a `Vec` with
//!   [`VerifiedBase::rebuild`]. A base above [`MAX_BASE_NAR`] (512 MiB) is refused with
//!   [`DeltaError::TooLarge`]: the path goes in full.
//! - **One frame = prefix + segment ≤ [`FRAME_BUDGET`] (512 MiB = the largest window, log 29).**
//!   A new NAR of at most [`SEGMENT_MAX`] (16 MiB) whose pair fits is one frame with the whole
//!   base as prefix (exactly `--patch-from`). Otherwise the new NAR is cut into equal segments of
//!   at most `SEGMENT_MAX`; each segment's prefix is the part of the base aligned with it (found
//!   by content anchors, see below), widened by a margin, capped so that prefix + segment ≤
//!   `FRAME_BUDGET`. Segments keep the first bytes near: the encoder reads and indexes one
//!   segment and its prefix, not the whole pair, before it writes; and each segment takes the
//!   level the link calls for when it starts. Measured at level 3 (`delta_bench encode`): the
//!   LibreOffice pair as one frame 10,419,670 B, 365 MiB peak, first `Data` 0.41 s after its
//!   `PathStart`; in 16 MiB segments 10,361,832 B, 153 MiB, 0.18 s; the kernel pair in 128 MiB
//!   segments 37,051,352 B, 607 MiB; in 16 MiB segments 37,117,609 B (+0.2 %), 431 MiB; the
//!   same encode time in each case.
//! - **Encoder peak** ≈ base + one segment of new (read from the stream) + its prefix's zstd
//!   tables (≈ 120 MiB at level 19 with LDM); the frame is streamed out in chunks of at most
//!   128 KiB (`FERRYDL2`), not held.
//! - **Decoder peak** ≈ base + zstd's window buffer, min(window, segment + prefix): ≤ 512 MiB +
//!   the window for the largest allowed base. The output is written as a stream.
//!
//! # Alignment of segments
//!
//! A gear rolling hash over the base marks content-defined anchors (about one per 4 KiB); each is
//! indexed by its 64-byte-window hash. The anchors of a new segment that are found in the base
//! vote for base offsets; the prefix spans their 2nd to 98th percentile plus [`ALIGN_MARGIN`]. With
//! too few votes the prefix is the proportional position of the segment in the base, plus the
//! margin. Only the encoder aligns; the decoder reads the ranges from the stream.
//!
//! # Failures
//!
//! Every [`DeltaError`] means the same to the protocol: **fall back to a full transfer of this
//! path**. A decode error may come after some output was written: the caller discards what it
//! wrote (as it does for a NAR whose hash does not match).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;

use nar_core::hash::{NarDigest, NarHasher, Sha256Hash};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// Magic and version of the delta stream.
pub const MAGIC: &[u8; 8] = b"FERRYDL2";
/// Largest base NAR held in memory as reference (both sides).
pub const MAX_BASE_NAR: u64 = 512 << 20;
/// Largest prefix + segment in one zstd frame: the window (log 29).
pub const FRAME_BUDGET: u64 = 512 << 20;
/// Largest window log used (covers `FRAME_BUDGET`).
pub const MAX_WINDOW_LOG: u32 = 29;
/// Largest part of the new NAR in one frame.
pub const SEGMENT_MAX: u64 = 16 << 20;
/// Extra base bytes on each side of the aligned range of a segment.
pub const ALIGN_MARGIN: u64 = 16 << 20;
/// Highest zstd level the delta encoder uses (`--compress max`). Ultra levels (20–22) would
/// need several times the table memory for a few percent.
pub const MAX_LEVEL: i32 = 19;

const HEADER_LEN: usize = 8 + 8 + 32 + 8 + 4;
const SEGMENT_HEADER_LEN: usize = 24;
/// Largest chunk of a frame in the stream.
const MAX_CHUNK: u32 = 4 << 20;

/// Why a delta could not be made or applied. Every variant means: send this path in full.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The host does not have the base (or cannot read it).
    #[error("delta base {path} unavailable: {reason}")]
    BaseUnavailable {
        /// The base store path as given.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The base rebuilt from the host's store does not have the expected NAR hash/size.
    #[error("delta base {path} is corrupt: NAR {found} ({found_size} B), expected {expected} ({expected_size} B)")]
    BaseCorrupt {
        /// The base store path.
        path: String,
        /// Hash found.
        found: Sha256Hash,
        /// Size found.
        found_size: u64,
        /// Hash expected.
        expected: Sha256Hash,
        /// Size expected.
        expected_size: u64,
    },
    /// The delta was made against another base than the one the host verified.
    #[error("delta stream is for base {stream} but the host's base is {host}")]
    BaseMismatch {
        /// Base hash named by the stream.
        stream: Sha256Hash,
        /// Base hash verified on the host.
        host: Sha256Hash,
    },
    /// A base or pair beyond the memory bounds of this module.
    #[error("delta refused: {what} is {size} B, bound {bound} B")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The bound.
        bound: u64,
    },
    /// The stream is not a well-formed delta stream.
    #[error("malformed delta stream: {0}")]
    Malformed(String),
    /// zstd refused to compress or decompress.
    #[error("zstd {op}: {message}")]
    Zstd {
        /// compress / decompress / parameter.
        op: &'static str,
        /// zstd's error name.
        message: String,
    },
    /// The decoded NAR does not have the expected hash.
    #[error(
        "delta result is NAR {found} ({found_size} B), expected {expected} ({expected_size} B)"
    )]
    NewHashMismatch {
        /// Hash found.
        found: Sha256Hash,
        /// Size found.
        found_size: u64,
        /// Hash expected.
        expected: Sha256Hash,
        /// Size expected.
        expected_size: u64,
    },
    /// Reading the new NAR, the stream, or writing the output failed.
    #[error("delta I/O: {0}")]
    Io(#[from] io::Error),
}

impl DeltaError {
    /// Always true: the protocol sends the path in full after any delta error. Present so that
    /// call sites read as the decision they make.
    pub fn falls_back_to_full(&self) -> bool {
        true
    }
}

fn zstd_err(op: &'static str, code: usize) -> DeltaError {
    DeltaError::Zstd { op, message: zstd_safe::get_error_name(code).to_owned() }
}

/// A base NAR whose hash has been checked against what the host's store records.
#[derive(Debug)]
pub struct VerifiedBase {
    nar: Vec<u8>,
    digest: NarDigest,
}

impl VerifiedBase {
    /// Rebuild the NAR of `path` (a base store path on the host) and check it against `expected`
    /// before anything is applied. Stops reading as soon as the NAR grows beyond the expected size.
    pub fn rebuild(path: &Path, expected: &NarDigest) -> Result<Self, DeltaError> {
        if expected.size > MAX_BASE_NAR {
            return Err(DeltaError::TooLarge {
                what: "base NAR",
                size: expected.size,
                bound: MAX_BASE_NAR,
            });
        }
        let unavailable = |reason: String| DeltaError::BaseUnavailable {
            path: path.display().to_string(),
            reason,
        };
        if std::fs::symlink_metadata(path).is_err() {
            return Err(unavailable("not in the store".into()));
        }
        let mut buf = BoundedVec {
            data: Vec::with_capacity(expected.size as usize),
            cap: expected.size,
            overflow: false,
        };
        let digest = match nar_core::dump::dump_hashed(path, &mut buf) {
            Ok(d) => d,
            Err(_) if buf.overflow => {
                return Err(DeltaError::BaseCorrupt {
                    path: path.display().to_string(),
                    found: Sha256Hash([0; 32]),
                    found_size: buf.data.len() as u64 + 1,
                    expected: expected.hash,
                    expected_size: expected.size,
                })
            }
            Err(e) => return Err(unavailable(e.to_string())),
        };
        if digest != *expected {
            return Err(DeltaError::BaseCorrupt {
                path: path.display().to_string(),
                found: digest.hash,
                found_size: digest.size,
                expected: expected.hash,
                expected_size: expected.size,
            });
        }
        Ok(VerifiedBase { nar: buf.data, digest })
    }

    /// A base NAR already in memory, checked against `expected` (for callers that hold the NAR).
    pub fn from_nar(nar: Vec<u8>, expected: &NarDigest) -> Result<Self, DeltaError> {
        let digest = digest_of(&nar);
        if digest != *expected {
            return Err(DeltaError::BaseCorrupt {
                path: "(in memory)".into(),
                found: digest.hash,
                found_size: digest.size,
                expected: expected.hash,
                expected_size: expected.size,
            });
        }
        Ok(VerifiedBase { nar, digest })
    }

    /// The NAR bytes.
    pub fn nar(&self) -> &[u8] {
        &self.nar
    }

    /// Its hash and size.
    pub fn digest(&self) -> &NarDigest {
        &self.digest
    }
}

/// A `Write` into a `Vec` that refuses to grow past `cap` (a corrupt, larger base must not make
/// the host allocate without bound).
struct BoundedVec {
    data: Vec<u8>,
    cap: u64,
    overflow: bool,
}

impl Write for BoundedVec {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.data.len() as u64 + buf.len() as u64 > self.cap {
            self.overflow = true;
            return Err(io::Error::other("base NAR larger than expected"));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn digest_of(bytes: &[u8]) -> NarDigest {
    let mut h = NarHasher::new();
    h.update(bytes);
    h.finish()
}

/// How to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeParams {
    /// zstd level, 1..=[`MAX_LEVEL`] (higher is clamped).
    pub level: i32,
    /// Largest part of the new NAR per frame.
    pub segment_max: u64,
    /// Largest prefix + segment per frame.
    pub frame_budget: u64,
}

impl EncodeParams {
    /// Defaults with the given level.
    pub fn level(level: i32) -> Self {
        EncodeParams { level, segment_max: SEGMENT_MAX, frame_budget: FRAME_BUDGET }
    }
}

impl Default for EncodeParams {
    fn default() -> Self {
        Self::level(3)
    }
}

/// What the encoder did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Bytes of the delta stream written.
    pub delta_bytes: u64,
    /// NAR bytes read from the new NAR.
    pub new_bytes: u64,
    /// Digest of the new NAR as read (the caller may compare it with the path's NAR hash).
    pub new_digest: Option<NarDigest>,
    /// The frames: (base offset, base len, new len, frame len).
    pub segments: Vec<(u64, u64, u64, u64)>,
}

/// The plan for a pair: the lengths of the segments of the new NAR.
fn segment_lengths(new_len: u64, p: &EncodeParams) -> Vec<u64> {
    if new_len == 0 {
        return Vec::new();
    }
    let seg_max = p.segment_max.clamp(1, p.frame_budget / 2);
    let count = new_len.div_ceil(seg_max);
    let each = new_len / count;
    let mut v = vec![each; count as usize];
    v[count as usize - 1] += new_len - each * count;
    v
}

/// Encode the new NAR (read as a stream from `new`, `new_size` bytes) against `base` (the base
/// NAR, in memory), writing the delta stream to `out`.
///
/// `base` must be the NAR whose digest the host will verify: pass its digest as `base_digest`
/// (the encoder does not rehash the base). The new NAR is hashed while read; a short read is an
/// error.
pub fn encode<R: Read, W: Write>(
    base: &[u8],
    base_digest: &NarDigest,
    new: R,
    new_size: u64,
    params: &EncodeParams,
    out: W,
) -> Result<EncodeStats, DeltaError> {
    encode_with_levels(base, base_digest, new, new_size, params, out, &mut |_, _| params.level)
}

/// [`encode`], asking `level_for(i, done)` for the zstd level of segment `i` just before
/// compressing it, `done` being the stats of the segments before it (the adaptive controller
/// follows the link and the measured speed between segments); `params.level` is unused.
pub fn encode_with_levels<R: Read, W: Write>(
    base: &[u8],
    base_digest: &NarDigest,
    mut new: R,
    new_size: u64,
    params: &EncodeParams,
    mut out: W,
    level_for: &mut dyn FnMut(usize, &EncodeStats) -> i32,
) -> Result<EncodeStats, DeltaError> {
    if base.len() as u64 > MAX_BASE_NAR {
        return Err(DeltaError::TooLarge {
            what: "base NAR",
            size: base.len() as u64,
            bound: MAX_BASE_NAR,
        });
    }
    if base.len() as u64 != base_digest.size {
        return Err(DeltaError::Malformed(format!(
            "base is {} B but its digest says {} B",
            base.len(),
            base_digest.size
        )));
    }
    let segs = segment_lengths(new_size, params);
    // One segment that fits with the whole base is `--patch-from`; anything else is aligned.
    let whole_base = segs.len() == 1 && base.len() as u64 + new_size <= params.frame_budget;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&base_digest.size.to_le_bytes());
    header.extend_from_slice(&base_digest.hash.0);
    header.extend_from_slice(&new_size.to_le_bytes());
    header.extend_from_slice(&(segs.len() as u32).to_le_bytes());
    out.write_all(&header)?;
    let mut stats = EncodeStats { delta_bytes: HEADER_LEN as u64, ..Default::default() };

    let index = if whole_base { None } else { Some(AnchorIndex::build(base)) };
    let mut hasher = NarHasher::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut done = 0u64;
    for (i, &seg_len) in segs.iter().enumerate() {
        buf.clear();
        buf.reserve_exact(seg_len as usize);
        (&mut new).take(seg_len).read_to_end(&mut buf)?;
        if buf.len() as u64 != seg_len {
            return Err(DeltaError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("new NAR ended after {} of {new_size} B", done + buf.len() as u64),
            )));
        }
        hasher.update(&buf);
        let (b_off, b_len) = match &index {
            None => (0, base.len() as u64),
            Some(ix) => ix.align(
                &buf,
                done,
                new_size,
                base.len() as u64,
                params.frame_budget.saturating_sub(seg_len),
            ),
        };
        let prefix = &base[b_off as usize..(b_off + b_len) as usize];
        let mut sh = [0u8; SEGMENT_HEADER_LEN];
        sh[0..8].copy_from_slice(&b_off.to_le_bytes());
        sh[8..16].copy_from_slice(&b_len.to_le_bytes());
        sh[16..24].copy_from_slice(&seg_len.to_le_bytes());
        out.write_all(&sh)?;
        let level = level_for(i, &stats).clamp(1, MAX_LEVEL);
        let (frame_len, written) = compress_frame(prefix, &buf, level, &mut out)?;
        stats.delta_bytes += SEGMENT_HEADER_LEN as u64 + written;
        stats.segments.push((b_off, b_len, seg_len, frame_len));
        done += seg_len;
    }
    drop(buf);
    // The stream must end where the caller said: one more byte is an error too.
    let mut probe = [0u8; 1];
    if new.read(&mut probe)? != 0 {
        return Err(DeltaError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("new NAR longer than {new_size} B"),
        )));
    }
    out.flush()?;
    stats.new_bytes = done;
    stats.new_digest = Some(hasher.finish());
    Ok(stats)
}

/// Window log covering `n` bytes.
fn window_log_for(n: u64) -> u32 {
    let mut log = 10u32;
    while (1u64 << log) < n && log < MAX_WINDOW_LOG {
        log += 1;
    }
    log
}

/// Compress `src` as one zstd frame with `prefix` as reference, writing it to `out` as chunks
/// (see the stream format) as zstd produces them; returns (frame bytes, stream bytes written).
fn compress_frame<W: Write>(
    prefix: &[u8],
    src: &[u8],
    level: i32,
    out: &mut W,
) -> Result<(u64, u64), DeltaError> {
    let mut cctx = CCtx::create();
    let set =
        |c: &mut CCtx, p| c.set_parameter(p).map(|_| ()).map_err(|e| zstd_err("parameter", e));
    set(&mut cctx, CParameter::CompressionLevel(level))?;
    set(&mut cctx, CParameter::WindowLog(window_log_for(prefix.len() as u64 + src.len() as u64)))?;
    set(&mut cctx, CParameter::EnableLongDistanceMatching(true))?;
    set(&mut cctx, CParameter::ChecksumFlag(true))?;
    set(&mut cctx, CParameter::ContentSizeFlag(true))?;
    cctx.set_pledged_src_size(Some(src.len() as u64)).map_err(|e| zstd_err("parameter", e))?;
    cctx.ref_prefix(prefix).map_err(|e| zstd_err("prefix", e))?;
    let mut chunk = vec![0u8; 4 + zstd_safe::CCtx::out_size()];
    let (mut frame_len, mut written) = (0u64, 0u64);
    let mut emit = |chunk: &mut Vec<u8>, n: usize| -> Result<(), DeltaError> {
        if n > 0 {
            chunk[..4].copy_from_slice(&(n as u32).to_le_bytes());
            out.write_all(&chunk[..4 + n])?;
            frame_len += n as u64;
            written += 4 + n as u64;
        }
        Ok(())
    };
    // Input in 1 MiB steps: output leaves as blocks complete.
    for piece in src.chunks(1 << 20) {
        let mut inb = InBuffer::around(piece);
        while inb.pos < piece.len() {
            let mut outb = OutBuffer::around(&mut chunk[4..]);
            cctx.compress_stream2(
                &mut outb,
                &mut inb,
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue,
            )
            .map_err(|e| zstd_err("compress", e))?;
            let n = outb.pos();
            emit(&mut chunk, n)?;
        }
    }
    loop {
        let mut inb = InBuffer::around(&[]);
        let mut outb = OutBuffer::around(&mut chunk[4..]);
        let left = cctx
            .compress_stream2(
                &mut outb,
                &mut inb,
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
            )
            .map_err(|e| zstd_err("compress", e))?;
        let n = outb.pos();
        emit(&mut chunk, n)?;
        if left == 0 {
            break;
        }
    }
    out.write_all(&0u32.to_le_bytes())?;
    Ok((frame_len, written + 4))
}

/// Apply a delta stream read from `input` to the verified `base`, writing the new NAR to `out`
/// as it is decoded. Returns the digest of what was written; the caller compares it with the
/// path's NAR hash (or use [`decode_verified`]).
pub fn decode<R: Read, W: Write>(
    base: &VerifiedBase,
    mut input: R,
    mut out: W,
) -> Result<NarDigest, DeltaError> {
    let mut header = [0u8; HEADER_LEN];
    input.read_exact(&mut header).map_err(|e| eof_malformed(e, "header"))?;
    if &header[0..8] != MAGIC {
        return Err(DeltaError::Malformed("bad magic".into()));
    }
    let base_size = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let base_hash = Sha256Hash(header[16..48].try_into().expect("32 bytes"));
    let new_size = u64::from_le_bytes(header[48..56].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(header[56..60].try_into().expect("4 bytes"));
    if base_hash != base.digest.hash || base_size != base.digest.size {
        return Err(DeltaError::BaseMismatch { stream: base_hash, host: base.digest.hash });
    }
    let mut hasher = NarHasher::new();
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(|e| zstd_err("parameter", e))?;
    let mut in_buf = vec![0u8; zstd_safe::DCtx::in_size()];
    let mut out_buf = vec![0u8; zstd_safe::DCtx::out_size()];
    let mut total = 0u64;
    for _ in 0..count {
        let mut sh = [0u8; SEGMENT_HEADER_LEN];
        input.read_exact(&mut sh).map_err(|e| eof_malformed(e, "segment header"))?;
        let word = |i: usize| u64::from_le_bytes(sh[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let (b_off, b_len, new_len) = (word(0), word(1), word(2));
        let b_end = b_off
            .checked_add(b_len)
            .filter(|&e| e <= base.nar.len() as u64)
            .ok_or_else(|| DeltaError::Malformed(format!("prefix {b_off}+{b_len} beyond base")))?;
        if b_len.saturating_add(new_len) > FRAME_BUDGET || total + new_len > new_size {
            return Err(DeltaError::Malformed(format!("segment {b_len}+{new_len} out of bounds")));
        }
        dctx.reset(zstd_safe::ResetDirective::SessionOnly).map_err(|e| zstd_err("reset", e))?;
        dctx.ref_prefix(&base.nar[b_off as usize..b_end as usize])
            .map_err(|e| zstd_err("prefix", e))?;
        let mut produced = 0u64;
        let mut frame_done = false;
        let mut feed = |input: &[u8], produced: &mut u64, frame_done: &mut bool| {
            let mut inb = InBuffer::around(input);
            // Also called with no input, to drain what zstd still holds.
            loop {
                if *frame_done {
                    return if inb.pos < input.len() {
                        Err(DeltaError::Malformed("bytes after the zstd frame".into()))
                    } else {
                        Ok(())
                    };
                }
                let mut outb = OutBuffer::around(&mut out_buf[..]);
                let hint = dctx
                    .decompress_stream(&mut outb, &mut inb)
                    .map_err(|e| zstd_err("decompress", e))?;
                let w = outb.pos();
                *produced += w as u64;
                if *produced > new_len {
                    return Err(DeltaError::Malformed(
                        "segment decodes to more than announced".into(),
                    ));
                }
                hasher.update(&out_buf[..w]);
                out.write_all(&out_buf[..w])?;
                *frame_done = hint == 0;
                if inb.pos == input.len() && w < out_buf.len() {
                    return Ok(());
                }
            }
        };
        loop {
            let mut lb = [0u8; 4];
            input.read_exact(&mut lb).map_err(|e| eof_malformed(e, "frame"))?;
            let len = u32::from_le_bytes(lb);
            if len == 0 {
                break;
            }
            if len > MAX_CHUNK {
                return Err(DeltaError::Malformed(format!("frame chunk of {len} B")));
            }
            let mut left = len as usize;
            while left > 0 {
                let n = left.min(in_buf.len());
                input.read_exact(&mut in_buf[..n]).map_err(|e| eof_malformed(e, "frame"))?;
                feed(&in_buf[..n], &mut produced, &mut frame_done)?;
                left -= n;
            }
        }
        if !frame_done {
            feed(&[], &mut produced, &mut frame_done)?;
        }
        if !frame_done {
            return Err(DeltaError::Malformed("zstd frame truncated".into()));
        }
        if produced != new_len {
            return Err(DeltaError::Malformed(format!(
                "segment decoded to {produced} B, announced {new_len} B"
            )));
        }
        total += produced;
    }
    if total != new_size {
        return Err(DeltaError::Malformed(format!("decoded {total} B, announced {new_size} B")));
    }
    out.flush()?;
    Ok(hasher.finish())
}

fn eof_malformed(e: io::Error, what: &str) -> DeltaError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DeltaError::Malformed(format!("stream ends in the {what}"))
    } else {
        DeltaError::Io(e)
    }
}

/// [`decode`], then compare the result with the new path's NAR digest.
pub fn decode_verified<R: Read, W: Write>(
    base: &VerifiedBase,
    input: R,
    out: W,
    expected_new: &NarDigest,
) -> Result<NarDigest, DeltaError> {
    let got = decode(base, input, out)?;
    if got != *expected_new {
        return Err(DeltaError::NewHashMismatch {
            found: got.hash,
            found_size: got.size,
            expected: expected_new.hash,
            expected_size: expected_new.size,
        });
    }
    Ok(got)
}

// ---------------------------------------------------------------------------------------------
// Alignment of segments: content-defined anchors.

const GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 256 {
        // splitmix64
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

/// An anchor every ~4 KiB (12 bits of the gear hash zero), at least 256 B apart.
const ANCHOR_MASK: u64 = (1 << 12) - 1;
const ANCHOR_MIN_GAP: usize = 256;

/// Calls `f(position, hash)` for each anchor of `data`.
fn anchors(data: &[u8], mut f: impl FnMut(usize, u64)) {
    let mut h = 0u64;
    let mut last = 0usize;
    for (i, &b) in data.iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if i >= 64 && (h >> 40) & ANCHOR_MASK == 0 && i - last >= ANCHOR_MIN_GAP {
            last = i;
            f(i, h);
        }
    }
}

/// Anchor hash → base offset (ambiguous hashes dropped).
struct AnchorIndex {
    map: HashMap<u64, u64>,
}

impl AnchorIndex {
    fn build(base: &[u8]) -> Self {
        let mut map: HashMap<u64, u64> = HashMap::new();
        anchors(base, |pos, h| {
            map.entry(h).and_modify(|v| *v = u64::MAX).or_insert(pos as u64);
        });
        map.retain(|_, v| *v != u64::MAX);
        AnchorIndex { map }
    }

    /// The base range to use as prefix for `seg`, which starts at `seg_start` of a new NAR of
    /// `new_len` bytes: at most `cap` bytes.
    fn align(
        &self,
        seg: &[u8],
        seg_start: u64,
        new_len: u64,
        base_len: u64,
        cap: u64,
    ) -> (u64, u64) {
        let mut hits = Vec::new();
        anchors(seg, |_, h| {
            if let Some(&off) = self.map.get(&h) {
                hits.push(off);
            }
        });
        let (lo, hi) = if hits.len() >= 16 {
            hits.sort_unstable();
            let lo = hits[hits.len() * 2 / 100];
            let hi = hits[(hits.len() * 98 / 100).min(hits.len() - 1)];
            (lo.saturating_sub(ALIGN_MARGIN), (hi + ALIGN_MARGIN).min(base_len))
        } else {
            let scale = |x: u64| ((x as u128 * base_len as u128) / new_len.max(1) as u128) as u64;
            let lo = scale(seg_start);
            let hi = scale(seg_start + seg.len() as u64);
            (lo.saturating_sub(ALIGN_MARGIN), (hi + ALIGN_MARGIN).min(base_len))
        };
        let len = hi - lo;
        if len <= cap {
            return (lo, len);
        }
        // Too wide (content spread over the base): keep `cap` bytes centred on the median hit,
        // or on the proportional position.
        let centre = if hits.len() >= 16 { hits[hits.len() / 2] } else { (lo + hi) / 2 };
        let start = centre.saturating_sub(cap / 2).min(base_len.saturating_sub(cap));
        (start, cap.min(base_len))
    }
}
