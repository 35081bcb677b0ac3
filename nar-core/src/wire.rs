//! The nix-archive-1 wire format: grammar, primitives, tokens and the limits ferry enforces.
//!
//! ## Primitives
//! - Every integer is 8 bytes little-endian (`u64`). Lengths of strings must fit in 32 bits
//!   (the high four bytes are zero, as Nix's C++ reader requires); file sizes are full `u64`s.
//! - `str(b)` is `u64(len(b))`, the bytes, then zero padding up to a multiple of 8. The padding
//!   must be zero.
//!
//! ## Grammar (every quoted token is a `str`)
//! ```text
//! nar   := "nix-archive-1" node
//! node  := "(" "type" body ")"
//! body  := "regular" ["executable" ""] "contents" u64(size) bytes[size] pad8
//!        | "symlink" "target" str(target)
//!        | "directory" { "entry" "(" "name" str(name) "node" node ")" }*
//! ```
//! Directory entries are sorted by bytewise comparison of their names, each name at most once;
//! names are never `""`, `.` or `..` and contain neither `/` nor NUL. Only the owner-execute bit of
//! a regular file is recorded; nothing else about the file (times, owner, other mode bits).
//!
//! ## Limits (ferry's; Nix and Guix set none or larger ones)
//! | what | limit |
//! |---|---|
//! | name length | [`MAX_NAME_LEN`] = 255 bytes (the file-name limit of Linux file systems) |
//! | symlink target | [`MAX_TARGET_LEN`] = 4095 bytes (Linux `PATH_MAX` - 1) |
//! | nesting | [`MAX_DEPTH`] = 256 directory levels |
//! | other tokens | [`MAX_TOKEN_LEN`] = 16 bytes (the longest token is `nix-archive-1`) |

/// The magic string at the start of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";
/// Opening parenthesis of a node or entry.
pub const OPEN: &[u8] = b"(";
/// Closing parenthesis of a node or entry.
pub const CLOSE: &[u8] = b")";
/// `type` keyword.
pub const TYPE: &[u8] = b"type";
/// Regular-file node type.
pub const REGULAR: &[u8] = b"regular";
/// Executable marker (followed by the empty string).
pub const EXECUTABLE: &[u8] = b"executable";
/// `contents` keyword.
pub const CONTENTS: &[u8] = b"contents";
/// Symlink node type.
pub const SYMLINK: &[u8] = b"symlink";
/// `target` keyword.
pub const TARGET: &[u8] = b"target";
/// Directory node type.
pub const DIRECTORY: &[u8] = b"directory";
/// `entry` keyword.
pub const ENTRY: &[u8] = b"entry";
/// `name` keyword.
pub const NAME: &[u8] = b"name";
/// `node` keyword.
pub const NODE: &[u8] = b"node";

/// Longest entry name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target accepted.
pub const MAX_TARGET_LEN: usize = 4095;
/// Deepest directory nesting accepted (the root node is depth 0).
pub const MAX_DEPTH: usize = 256;
/// Longest keyword token.
pub const MAX_TOKEN_LEN: usize = 16;

/// Zero bytes needed after `len` bytes to reach a multiple of 8.
#[inline]
pub const fn padding(len: u64) -> usize {
    (len.wrapping_neg() % 8) as usize
}

/// Eight zero bytes, for writing padding.
pub const ZEROS: [u8; 8] = [0; 8];

/// Append `str(bytes)` to `out`.
pub fn write_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(&ZEROS[..padding(bytes.len() as u64)]);
}

/// Why a name cannot be a directory entry, or `None` when it can.
pub fn invalid_name_reason(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name == b"." || name == b".." {
        Some("`.` and `..` are not entries")
    } else if name.contains(&b'/') {
        Some("name contains `/`")
    } else if name.contains(&0) {
        Some("name contains NUL")
    } else if name.len() > MAX_NAME_LEN {
        Some("name longer than 255 bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token encodes as `str` with the documented length and padding.
    #[test]
    fn tokens_encode() {
        let mut out = Vec::new();
        write_str(&mut out, MAGIC);
        assert_eq!(out.len(), 24);
        assert_eq!(&out[..8], &13u64.to_le_bytes());
        assert_eq!(&out[21..], &[0, 0, 0]);
        for token in [
            OPEN, CLOSE, TYPE, REGULAR, EXECUTABLE, CONTENTS, SYMLINK, TARGET, DIRECTORY, ENTRY,
            NAME, NODE,
        ] {
            let mut out = Vec::new();
            write_str(&mut out, token);
            assert_eq!(out.len() % 8, 0);
            assert!(token.len() <= MAX_TOKEN_LEN);
        }
        let mut empty = Vec::new();
        write_str(&mut empty, b"");
        assert_eq!(empty, 0u64.to_le_bytes());
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 7);
        assert_eq!(padding(8), 0);
        assert_eq!(padding(u64::MAX), 1);
    }
}
