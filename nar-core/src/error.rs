//! Errors of the NAR decoder: what was wrong and at which byte offset.

/// A NAR that breaks the format, with the offset of the offending bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NAR at byte {offset}: {kind}")]
pub struct DecodeError {
    /// Offset from the start of the archive.
    pub offset: u64,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// What was wrong with a NAR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    #[error("not a NAR: expected the magic `nix-archive-1`, found {found:?}")]
    BadMagic { found: String },
    #[error("expected {expected}, found {found:?}")]
    UnexpectedToken { expected: &'static str, found: String },
    #[error("non-zero padding")]
    NonZeroPadding,
    #[error("string length {0} does not fit in 32 bits")]
    IntegerTooLarge(u64),
    #[error("entry name of {len} bytes, longer than the limit of 255")]
    NameTooLong { len: u64 },
    #[error("symlink target of {len} bytes, longer than the limit of 4095")]
    TargetTooLong { len: u64 },
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid symlink: {reason}")]
    InvalidTarget { reason: &'static str },
    #[error("directory entries not sorted: {name:?} after {previous:?}")]
    Unsorted { previous: String, name: String },
    #[error("duplicate directory entry {name:?}")]
    DuplicateEntry { name: String },
    #[error("directories nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("archive truncated: expected {expected}")]
    Truncated { expected: &'static str },
    #[error("trailing bytes after the end of the archive")]
    TrailingData,
}
