//! nix-base32, the base-32 encoding Nix and Guix use for hashes in store paths and narinfos.
//!
//! Alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no `e`, `o`, `t`, `u`). The byte string is read as
//! a little-endian integer and its base-32 digits are written most significant first, keeping
//! leading zero digits, so the encoded length is `ceil(8 * len / 5)`: 32 characters for the
//! 20-byte hash part of a store path, 52 for a SHA-256 digest. This is *not* RFC 4648 base32.
//!
//! ```
//! use nar_core::base32;
//! let empty_sha256 = hex::decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
//! assert_eq!(base32::encode(&empty_sha256), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
//! assert_eq!(base32::decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").unwrap(), empty_sha256);
//! ```

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Value of each ASCII byte as a digit, or `0xff` when it is not one.
const DIGIT_VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a string is not valid nix-base32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Base32Error {
    /// A character outside the alphabet.
    #[error("invalid nix-base32 character {char:?} at position {position}")]
    InvalidChar { char: char, position: usize },
    /// The string has a length no byte string encodes to.
    #[error("invalid nix-base32 length {0}")]
    InvalidLength(usize),
    /// The top digit carries bits beyond the decoded length.
    #[error("nix-base32 string has non-zero bits beyond the encoded value")]
    ExcessBits,
}

/// Number of characters `encode` produces for `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// Number of bytes a valid encoded string of `len` characters decodes to, if any.
pub const fn decoded_len(len: usize) -> Option<usize> {
    let bytes = len * 5 / 8;
    if encoded_len(bytes) == len {
        Some(bytes)
    } else {
        None
    }
}

/// True when `byte` is a nix-base32 digit.
#[inline]
pub fn is_digit(byte: u8) -> bool {
    DIGIT_VALUE[byte as usize] != 0xff
}

/// Encode bytes as nix-base32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for k in 0..len {
        let bit = 5 * (len - 1 - k);
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] as u16 >> j;
        let high = bytes.get(i + 1).map_or(0, |&b| (b as u16) << (8 - j));
        out.push(ALPHABET[((low | high) & 31) as usize] as char);
    }
    out
}

/// Decode a nix-base32 string.
pub fn decode(text: &str) -> Result<Vec<u8>, Base32Error> {
    let bytes_len = decoded_len(text.len()).ok_or(Base32Error::InvalidLength(text.len()))?;
    let mut out = vec![0u8; bytes_len];
    decode_into(text.as_bytes(), &mut out)?;
    Ok(out)
}

/// Decode into a fixed-size array (for example a 32-byte digest or a 20-byte hash part).
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], Base32Error> {
    if text.len() != encoded_len(N) {
        return Err(Base32Error::InvalidLength(text.len()));
    }
    let mut out = [0u8; N];
    decode_into(text.as_bytes(), &mut out)?;
    Ok(out)
}

fn decode_into(text: &[u8], out: &mut [u8]) -> Result<(), Base32Error> {
    let len = text.len();
    for (k, &c) in text.iter().enumerate() {
        let digit = DIGIT_VALUE[c as usize];
        if digit == 0xff {
            return Err(Base32Error::InvalidChar { char: c as char, position: k });
        }
        let bit = 5 * (len - 1 - k);
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = (digit as u16) >> (8 - j);
        if carry != 0 {
            match out.get_mut(i + 1) {
                Some(next) => *next |= carry as u8,
                None => return Err(Base32Error::ExcessBits),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
        // The SHA-256 of the "hello\n" NAR (guix-spec §1.4).
        let digest =
            hex::decode("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13")
                .unwrap();
        assert_eq!(encode(&digest), "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode("0e"), Err(Base32Error::InvalidChar { char: 'e', position: 1 }));
        assert_eq!(decode("000"), Err(Base32Error::InvalidLength(3)));
        assert_eq!(decode("z0"), Err(Base32Error::ExcessBits));
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&text).unwrap(), bytes);
        }
    }
}
