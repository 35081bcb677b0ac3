//! Store paths: `<store dir>/<hash part>-<name>`, parsed, validated and computed as Guix and Nix do.
//!
//! - The **store dir** is the logical prefix (`/gnu/store`, `/nix/store`, or any absolute path):
//!   [`StoreDir`]. A [`StorePath`] does not carry it; it is the 20-byte digest and the name, and
//!   is joined with a store dir to print (`StorePath::to_absolute`).
//! - The **hash part** is 32 nix-base32 characters encoding 20 bytes.
//! - The **name** (guix-spec §6.1, C++ `checkStoreName`): characters `[A-Za-z0-9+\-._?=]` only,
//!   not empty, not starting with `.`. Guix sets no length limit; the file system does (a file
//!   name is at most 255 bytes), so the name is at most 222 bytes.
//!
//! Computing the hash part (guix-spec §6.2, `makeStorePath`):
//! 1. `fingerprint = TYPE ":sha256:" HEX(inner) ":" STOREDIR ":" NAME`,
//! 2. `h = SHA-256(fingerprint)`,
//! 3. fold to 20 bytes: `out[i mod 20] ^= h[i]` for `i` in `0..32`,
//! 4. hash part = nix-base32(out).
//!
//! | kind | TYPE | inner |
//! |---|---|---|
//! | source (`nix-store --add`, `guix` `local-file`) | `source` | SHA-256 of the NAR |
//! | text (`.drv`, `builtins.toFile`) | `text` + `:REF` per reference, sorted | SHA-256 of the contents |
//! | fixed output, recursive sha256 | `source` | SHA-256 of the NAR |
//! | other fixed output | `output:out` | SHA-256 of `fixed:out:[r:]ALGO:HEX(hash):` |
//!
//! ```
//! use nar_core::store_path::{StoreDir, make_text_path};
//! use nar_core::hash::Sha256Hash;
//! let dir = StoreDir::new("/gnu/store").unwrap();
//! let path = make_text_path(&dir, "hello.txt", &Sha256Hash::of(b"hello\n"), &[]).unwrap();
//! assert_eq!(path.to_absolute(&dir), "/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt");
//! ```

use std::fmt;

use sha2::{Digest, Sha256};

use crate::base32;
use crate::hash::Sha256Hash;

/// Length of the hash part in characters.
pub const HASH_PART_LEN: usize = 32;
/// Length of the hash part in bytes.
pub const DIGEST_LEN: usize = 20;
/// Longest name that still gives a file name of at most 255 bytes.
pub const MAX_NAME_LEN: usize = 255 - HASH_PART_LEN - 1;

/// What is wrong with a store path, a store dir or a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorePathError {
    #[error("store dir {0:?} must be an absolute path without a trailing slash, `.` or `..`")]
    BadStoreDir(String),
    #[error("{path:?} is not in the store {store_dir:?}")]
    NotInStore { path: String, store_dir: String },
    #[error(
        "{0:?} is too short to be a store path (needs a 32-character hash part, `-` and a name)"
    )]
    TooShort(String),
    #[error("invalid hash part {hash_part:?} in {path:?}")]
    BadHashPart { path: String, hash_part: String },
    #[error("missing `-` after the hash part in {0:?}")]
    MissingDash(String),
    #[error("invalid name {0:?}: empty")]
    EmptyName(String),
    #[error("invalid name {0:?}: can't begin with dot")]
    LeadingDot(String),
    #[error("invalid character {char:?} in name {name:?}")]
    BadNameChar { name: String, char: char },
    #[error("invalid name {name:?}: {len} bytes, longer than {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("{0:?} is inside a store item, not a store item itself")]
    SubPath(String),
}

/// The logical store directory, such as `/gnu/store`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreDir(String);

impl StoreDir {
    /// Guix's default.
    pub const GUIX: &'static str = "/gnu/store";
    /// Nix's default.
    pub const NIX: &'static str = "/nix/store";

    /// Validate an absolute store dir.
    pub fn new(dir: impl Into<String>) -> Result<Self, StorePathError> {
        let dir = dir.into();
        let ok = dir.starts_with('/')
            && (dir.len() == 1 || !dir.ends_with('/'))
            && !dir.contains('\0')
            && dir.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != "..");
        if ok && dir != "/" {
            Ok(StoreDir(dir))
        } else {
            Err(StorePathError::BadStoreDir(dir))
        }
    }

    /// `/gnu/store`.
    pub fn guix() -> Self {
        StoreDir(Self::GUIX.to_owned())
    }

    /// `/nix/store`.
    pub fn nix() -> Self {
        StoreDir(Self::NIX.to_owned())
    }

    /// The directory as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse an absolute path that must be a store item (no sub-path).
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        let (item, rest) = self.split_path(path)?;
        if rest.is_empty() {
            Ok(item)
        } else {
            Err(StorePathError::SubPath(path.to_owned()))
        }
    }

    /// Split an absolute path into the store item and the rest (`""` or `/sub/path`).
    pub fn split_path<'p>(&self, path: &'p str) -> Result<(StorePath, &'p str), StorePathError> {
        let not_in_store =
            || StorePathError::NotInStore { path: path.to_owned(), store_dir: self.0.clone() };
        let rest = path.strip_prefix(self.0.as_str()).ok_or_else(not_in_store)?;
        let rest = rest.strip_prefix('/').ok_or_else(not_in_store)?;
        let (base, sub) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let sub = sub.trim_end_matches('/');
        Ok((StorePath::from_base_name(base)?, sub))
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir::guix()
    }
}

/// A store item: its 20-byte digest and its name, independent of the store dir.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: String,
}

impl StorePath {
    /// Build from parts, validating the name.
    pub fn from_parts(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        Ok(StorePath { digest, name: name.to_owned() })
    }

    /// Parse the base name `<hash part>-<name>`.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        if base.len() < HASH_PART_LEN + 2 {
            if base.len() == HASH_PART_LEN + 1 && base.ends_with('-') {
                return Err(StorePathError::EmptyName(String::new()));
            }
            return Err(StorePathError::TooShort(base.to_owned()));
        }
        // A peer's bytes may put a multi-byte character across the end of the hash part.
        if !base.is_char_boundary(HASH_PART_LEN) {
            let cut = (0..=HASH_PART_LEN).rev().find(|&i| base.is_char_boundary(i)).unwrap_or(0);
            return Err(StorePathError::BadHashPart {
                path: base.to_owned(),
                hash_part: base[..cut].to_owned(),
            });
        }
        let (hash_part, rest) = base.split_at(HASH_PART_LEN);
        let digest = parse_hash_part(hash_part).ok_or_else(|| StorePathError::BadHashPart {
            path: base.to_owned(),
            hash_part: hash_part.to_owned(),
        })?;
        let name =
            rest.strip_prefix('-').ok_or_else(|| StorePathError::MissingDash(base.to_owned()))?;
        Self::from_parts(digest, name)
    }

    /// The 20 bytes the hash part encodes.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> String {
        base32::encode(&self.digest)
    }

    /// The name after the hash part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash part>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }

    /// `<store dir>/<hash part>-<name>`.
    pub fn to_absolute(&self, store_dir: &StoreDir) -> String {
        format!("{}/{}", store_dir.as_str(), self.base_name())
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.base_name())
    }
}

impl fmt::Display for StorePath {
    /// The base name; join with a [`StoreDir`] for the absolute path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part(), self.name)
    }
}

/// Decode a 32-character hash part; `None` when it is not nix-base32.
pub fn parse_hash_part(text: &str) -> Option<[u8; DIGEST_LEN]> {
    base32::decode_array::<DIGEST_LEN>(text).ok()
}

/// Check a store-item name against the rules of guix-spec §6.1.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(name.to_owned()));
    }
    if name.starts_with('.') {
        return Err(StorePathError::LeadingDot(name.to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong { name: name.to_owned(), len: name.len() });
    }
    if let Some(bad) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(StorePathError::BadNameChar { name: name.to_owned(), char: bad });
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

/// The store path for `TYPE`, an inner hash and a name (`makeStorePath`).
pub fn make_store_path(
    store_dir: &StoreDir,
    path_type: &str,
    inner: &Sha256Hash,
    name: &str,
) -> Result<StorePath, StorePathError> {
    validate_name(name)?;
    let fingerprint =
        format!("{path_type}:sha256:{}:{}:{name}", inner.to_hex(), store_dir.as_str());
    let full: [u8; 32] = Sha256::digest(fingerprint.as_bytes()).into();
    Ok(StorePath { digest: fold_digest(&full), name: name.to_owned() })
}

/// XOR-fold a 32-byte digest into 20 bytes (`compressHash`).
pub fn fold_digest(full: &[u8; 32]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    for (i, byte) in full.iter().enumerate() {
        out[i % DIGEST_LEN] ^= byte;
    }
    out
}

/// The path of a source item (`nix-store --add`, recursive sha256): TYPE `source`, inner = NAR hash.
pub fn make_source_path(
    store_dir: &StoreDir,
    name: &str,
    nar_hash: &Sha256Hash,
) -> Result<StorePath, StorePathError> {
    make_store_path(store_dir, "source", nar_hash, name)
}

/// The path of a text item (`add-text-to-store`, `.drv` files): TYPE `text:REF...`.
pub fn make_text_path(
    store_dir: &StoreDir,
    name: &str,
    content_hash: &Sha256Hash,
    references: &[StorePath],
) -> Result<StorePath, StorePathError> {
    let mut refs: Vec<String> = references.iter().map(|r| r.to_absolute(store_dir)).collect();
    refs.sort();
    let mut path_type = String::from("text");
    for r in &refs {
        path_type.push(':');
        path_type.push_str(r);
    }
    make_store_path(store_dir, &path_type, content_hash, name)
}

/// How a fixed-output item's hash was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileIngestion {
    /// Hash of the file's bytes.
    Flat,
    /// Hash of the NAR serialization.
    Recursive,
}

/// The path of a fixed-output item (`makeFixedOutputPath`), for output `out`.
///
/// `algo` is the hash algorithm's name (`sha256`, `sha1`, `md5`, `sha512`) and `hash` its raw digest.
pub fn make_fixed_output_path(
    store_dir: &StoreDir,
    name: &str,
    ingestion: FileIngestion,
    algo: &str,
    hash: &[u8],
) -> Result<StorePath, StorePathError> {
    if ingestion == FileIngestion::Recursive && algo == "sha256" && hash.len() == 32 {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(hash);
        return make_source_path(store_dir, name, &Sha256Hash(digest));
    }
    let recursive = if ingestion == FileIngestion::Recursive { "r:" } else { "" };
    let tag = format!("fixed:out:{recursive}{algo}:{}:", hex::encode(hash));
    make_store_path(store_dir, "output:out", &Sha256Hash::of(tag.as_bytes()), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guix_spec_vectors() {
        let dir = StoreDir::guix();
        let content = Sha256Hash::of(b"hello\n");
        let text = make_text_path(&dir, "hello.txt", &content, &[]).unwrap();
        assert_eq!(text.to_absolute(&dir), "/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt");
        let nar =
            Sha256Hash::parse("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13")
                .unwrap();
        let source = make_source_path(&dir, "hello.txt", &nar).unwrap();
        assert_eq!(
            source.to_absolute(&dir),
            "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt"
        );
        let fixed =
            make_fixed_output_path(&dir, "hello.txt", FileIngestion::Recursive, "sha256", &nar.0)
                .unwrap();
        assert_eq!(fixed, source);
    }

    #[test]
    fn parse_and_print() {
        let dir = StoreDir::nix();
        let abs = "/nix/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt";
        let p = dir.parse_path(abs).unwrap();
        assert_eq!(p.name(), "hello.txt");
        assert_eq!(p.hash_part(), "k9pad896kygyvpxli7f20bkl9813p9y4");
        assert_eq!(p.to_absolute(&dir), abs);
        let sub_path = format!("{abs}/bin/hello");
        let (item, sub) = dir.split_path(&sub_path).unwrap();
        assert_eq!((item, sub), (p, "/bin/hello"));
        assert!(matches!(dir.parse_path(&format!("{abs}/x")), Err(StorePathError::SubPath(_))));
    }

    #[test]
    fn rejections() {
        let dir = StoreDir::guix();
        let h = "k9pad896kygyvpxli7f20bkl9813p9y4";
        type Check = fn(&StorePathError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("/nix/store/x", |e| matches!(e, StorePathError::NotInStore { .. })),
            ("/gnu/store/short", |e| matches!(e, StorePathError::TooShort(_))),
            ("/gnu/store/e9pad896kygyvpxli7f20bkl9813p9y4-x", |e| {
                matches!(e, StorePathError::BadHashPart { .. })
            }),
            ("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4_x", |e| {
                matches!(e, StorePathError::MissingDash(_))
            }),
            ("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-.x", |e| {
                matches!(e, StorePathError::LeadingDot(_))
            }),
            ("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-a b", |e| {
                matches!(e, StorePathError::BadNameChar { char: ' ', .. })
            }),
            ("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-", |e| {
                matches!(e, StorePathError::EmptyName(_))
            }),
        ];
        for (text, check) in cases {
            let err = dir.parse_path(text).unwrap_err();
            assert!(check(&err), "{text}: {err}");
        }
        let long = format!("/gnu/store/{h}-{}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(matches!(dir.parse_path(&long), Err(StorePathError::NameTooLong { .. })));
        assert!(StoreDir::new("relative").is_err());
        assert!(StoreDir::new("/gnu/store/").is_err());
        assert!(StoreDir::new("/gnu/../store").is_err());
    }

    #[test]
    fn multibyte_character_across_the_hash_part_is_an_error() {
        // Byte 32 falls inside "é" (found by the frame_decoder fuzz target).
        let base = format!("{}é-name", "a".repeat(31));
        assert!(matches!(
            StorePath::from_base_name(&base),
            Err(StorePathError::BadHashPart { .. })
        ));
    }
}
