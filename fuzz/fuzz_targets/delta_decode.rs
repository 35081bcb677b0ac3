//! Delta frames (`transfer::delta`, the stream a host applies to a base it holds): arbitrary
//! bytes as a delta stream against an arbitrary base.
//!
//! Input: `base_len:u16le base[base_len] stream...`. The stream's base size and hash (header
//! bytes 8..48) are overwritten with the base's own when the stream is long enough, so that
//! mutations reach the segments instead of stopping at `BaseMismatch`.
//!
//! Invariants: no panic; a stream that decodes returns the digest of exactly the bytes written.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use nar_core::hash::{NarDigest, NarHasher};
use transfer::delta::stream::{decode, VerifiedBase};

/// Hashes what the decoder writes, keeping none of it.
struct Sink(NarHasher);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn digest_of(bytes: &[u8]) -> NarDigest {
    let mut h = NarHasher::new();
    h.update(bytes);
    h.finish()
}

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else { return };
    let base_len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
    let (base, stream) = rest.split_at(base_len);
    let digest = digest_of(base);
    let base = VerifiedBase::from_nar(base.to_vec(), &digest).expect("the base's own digest");
    let mut stream = stream.to_vec();
    if stream.len() >= 48 {
        stream[8..16].copy_from_slice(&digest.size.to_le_bytes());
        stream[16..48].copy_from_slice(&digest.hash.0);
    }
    let mut sink = Sink(NarHasher::new());
    if let Ok(got) = decode(&base, &stream[..], &mut sink) {
        assert_eq!(got, sink.0.finish(), "the digest is not that of the bytes written");
    }
});
