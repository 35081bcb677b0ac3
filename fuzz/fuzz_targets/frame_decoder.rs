//! The agent's untrusted input: arbitrary bytes through `proto::frame::FrameDecoder`, pushed in
//! arbitrary pieces.
//!
//! Input: `flags:u8 step:u8 stream...`. Bit 0 of `flags` marks the handshake done before the
//! first byte (every frame type allowed, large frames too); otherwise the decoder expects a
//! session's first frame. `step` seeds the sizes of the pieces the stream is pushed in (1 to
//! 64 bytes, or all at once when 0).
//!
//! Invariants: no panic; the frames (and the error, if any) do not depend on how the stream was
//! cut; every decoded frame, re-encoded, decodes to the same frame, and its encoding is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::frame::{Frame, FrameDecoder, ProtocolError};

/// Frames until the decoder needs more bytes or fails, pushing `stream` in pieces of `sizes`.
fn decode(
    stream: &[u8],
    handshake_done: bool,
    sizes: &mut dyn FnMut() -> usize,
) -> (Vec<Frame>, Option<ProtocolError>) {
    let mut decoder = FrameDecoder::new();
    if handshake_done {
        decoder.set_peer("fuzz".into());
    }
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        if rest.is_empty() {
            return (frames, None);
        }
        let n = sizes().clamp(1, rest.len());
        decoder.push(&rest[..n]);
        rest = &rest[n..];
    }
}

/// Errors equal up to what they quote of the stream (`NotFerry` shows the bytes buffered so
/// far, which depends on the pieces).
fn same_error(a: &Option<ProtocolError>, b: &Option<ProtocolError>) -> bool {
    match (a, b) {
        (Some(ProtocolError::NotFerry { .. }), Some(ProtocolError::NotFerry { .. })) => true,
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, step, stream @ ..] = data else { return };
    let handshake_done = flags & 1 == 1;
    let (whole, whole_err) = decode(stream, handshake_done, &mut || usize::MAX);
    let mut x = u64::from(*step) | 0x100;
    let mut pieces = || {
        if *step == 0 {
            return usize::MAX;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 64) as usize + 1
    };
    let (cut, cut_err) = decode(stream, handshake_done, &mut pieces);
    assert_eq!(whole, cut, "frames depend on how the stream was cut");
    assert!(same_error(&whole_err, &cut_err), "{whole_err:?} vs {cut_err:?}");

    for frame in &whole {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        let mut decoder = FrameDecoder::new();
        decoder.set_peer("fuzz".into());
        decoder.push(&bytes);
        let again = decoder.next_frame().expect("re-encoded frame decodes").expect("whole frame");
        assert_eq!(&again, frame, "re-encoded frame decodes differently");
        assert_eq!(decoder.buffered(), 0, "re-encoded frame has trailing bytes");
        let mut twice = Vec::new();
        again.encode(&mut twice);
        assert_eq!(bytes, twice, "encoding is not stable");
    }
});
