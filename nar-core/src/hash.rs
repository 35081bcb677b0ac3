//! SHA-256 digests in the forms Nix and Guix print them, and [`NarHasher`], the running
//! SHA-256 and byte count of a NAR stream.
//!
//! Forms: `sha256:<52 nix-base32 chars>` (narinfo `NarHash`, Nix's database), `sha256:<64 hex>`
//! (Guix's database `hash` column), and the bare forms of both. [`NarHasher`] is fed the NAR
//! bytes as they are produced ([`HashingWriter`]) or consumed ([`HashingReader`]), so verifying
//! a stream never needs a second pass.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::base32;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

/// Why a hash string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sha256 hash {text:?}: {reason}")]
pub struct HashParseError {
    /// The text that was given.
    pub text: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl Sha256Hash {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Sha256Hash(Sha256::digest(data).into())
    }

    /// Lowercase base16.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// nix-base32 (52 characters).
    pub fn to_nix32(&self) -> String {
        base32::encode(&self.0)
    }

    /// `sha256:<nix-base32>`, as narinfo files and Nix's database write it.
    pub fn to_typed_nix32(&self) -> String {
        format!("sha256:{}", self.to_nix32())
    }

    /// `sha256:<hex>`, as Guix's database writes it.
    pub fn to_typed_hex(&self) -> String {
        format!("sha256:{}", self.to_hex())
    }

    /// Parse `sha256:<nix32|hex>` or a bare 52-character nix-base32 or 64-character hex digest.
    pub fn parse(text: &str) -> Result<Self, HashParseError> {
        let err = |reason| HashParseError { text: text.to_owned(), reason };
        let bare = match text.split_once(':') {
            Some(("sha256", rest)) => rest,
            Some(_) => return Err(err("only sha256 is supported")),
            None => text,
        };
        match bare.len() {
            52 => base32::decode_array::<32>(bare)
                .map(Sha256Hash)
                .map_err(|_| err("bad nix-base32 digest")),
            64 => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(bare, &mut out).map_err(|_| err("bad hex digest"))?;
                Ok(Sha256Hash(out))
            }
            _ => Err(err("a sha256 digest is 52 nix-base32 or 64 hex characters")),
        }
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Display for Sha256Hash {
    /// The `sha256:<nix-base32>` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl std::str::FromStr for Sha256Hash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The hash and size of a whole NAR: what a store database records for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarDigest {
    /// SHA-256 of the NAR bytes.
    pub hash: Sha256Hash,
    /// Number of NAR bytes.
    pub size: u64,
}

/// Running SHA-256 and byte count over NAR bytes.
///
/// ```
/// use nar_core::hash::NarHasher;
/// let mut h = NarHasher::new();
/// h.update(b"nix-archive-1");
/// assert_eq!(h.size(), 13);
/// let digest = h.finish();
/// assert_eq!(digest.size, 13);
/// ```
#[derive(Clone, Default)]
pub struct NarHasher {
    sha: Sha256,
    size: u64,
}

impl fmt::Debug for NarHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NarHasher").field("size", &self.size).finish_non_exhaustive()
    }
}

impl NarHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of everything fed.
    pub fn finish(self) -> NarDigest {
        NarDigest { hash: Sha256Hash(self.sha.finalize().into()), size: self.size }
    }
}

impl Write for NarHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes everything written through it (a NAR as it is produced, or the
/// compressed NAR on its way to a binary cache file).
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: NarHasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: NarHasher::new() }
    }
    /// The inner writer and the digest of what was written.
    pub fn finish(self) -> (W, NarDigest) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything read through it (while consuming a NAR).
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: NarHasher,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: NarHasher::new() }
    }
    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.hasher.size()
    }
    /// The inner reader and the digest of what was read.
    pub fn finish(self) -> (R, NarDigest) {
        (self.inner, self.hasher.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let hex = "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13";
        let nix = "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw";
        let h = Sha256Hash::parse(hex).unwrap();
        assert_eq!(Sha256Hash::parse(nix).unwrap(), h);
        assert_eq!(Sha256Hash::parse(&format!("sha256:{nix}")).unwrap(), h);
        assert_eq!(Sha256Hash::parse(&format!("sha256:{hex}")).unwrap(), h);
        assert_eq!(h.to_typed_nix32(), format!("sha256:{nix}"));
        assert_eq!(h.to_typed_hex(), format!("sha256:{hex}"));
        assert!(Sha256Hash::parse("md5:abc").is_err());
        assert!(Sha256Hash::parse("sha256:xyz").is_err());
    }
}
