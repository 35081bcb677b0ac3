//! One test per rejection rule of `restore`: each asserts the reason and the byte offset in the
//! error, and that the target does not exist afterwards (everything written was removed).

use std::path::Path;

use nar_core::error::DecodeErrorKind;
use nar_core::restore::{restore, RestoreError};

/// Builds raw archives token by token, remembering offsets, so tests can break any rule.
#[derive(Default)]
struct Raw {
    bytes: Vec<u8>,
}

impl Raw {
    fn new() -> Self {
        Raw::default().s(b"nix-archive-1")
    }
    /// Append `str(token)`.
    fn s(mut self, token: &[u8]) -> Self {
        nar_core::wire::write_str(&mut self.bytes, token);
        self
    }
    fn tokens(mut self, tokens: &[&str]) -> Self {
        for t in tokens {
            self = self.s(t.as_bytes());
        }
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }
    fn at(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// A directory entry holding an empty regular file.
    fn file_entry(self, name: &[u8]) -> Self {
        self.tokens(&["entry", "(", "name"])
            .s(name)
            .tokens(&["node", "(", "type", "regular", "contents"])
            .raw(&0u64.to_le_bytes())
            .tokens(&[")", ")"])
    }
    fn dir(self) -> Self {
        self.tokens(&["(", "type", "directory"])
    }
}

fn expect_reject(nar: &[u8], offset: u64, check: impl Fn(&DecodeErrorKind) -> bool) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let err = restore(nar, &target).expect_err("restore must fail");
    match &err {
        RestoreError::Decode(e) => {
            assert!(check(&e.kind), "unexpected reason: {err}");
            assert_eq!(e.offset, offset, "offset in {err}");
        }
        other => panic!("expected a decode error, got {other}"),
    }
    assert!(!target.exists(), "target left behind after: {err}");
    assert_no_leftovers(tmp.path());
}

fn assert_no_leftovers(dir: &Path) {
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "something was left in {}",
        dir.display()
    );
}

#[test]
fn unsorted_entries() {
    let nar = Raw::new().dir().file_entry(b"b");
    let at = nar.at() + 3 * 16;
    let nar = nar.file_entry(b"a").s(b")");
    expect_reject(
        &nar.bytes,
        at,
        |k| matches!(k, DecodeErrorKind::Unsorted { previous, name } if previous == "b" && name == "a"),
    );
}

#[test]
fn uppercase_sorts_before_lowercase() {
    // `B` < `a` bytewise: this order is valid, the reverse is not.
    let ok = Raw::new().dir().file_entry(b"B").file_entry(b"a").s(b")");
    let tmp = tempfile::tempdir().unwrap();
    restore(&ok.bytes[..], &tmp.path().join("out")).unwrap();
    let nar = Raw::new().dir().file_entry(b"a");
    let at = nar.at() + 48;
    let bad = nar.file_entry(b"B").s(b")");
    expect_reject(&bad.bytes, at, |k| matches!(k, DecodeErrorKind::Unsorted { .. }));
}

#[test]
fn duplicate_entries() {
    let nar = Raw::new().dir().file_entry(b"a");
    let at = nar.at() + 48;
    let nar = nar.file_entry(b"a").s(b")");
    expect_reject(
        &nar.bytes,
        at,
        |k| matches!(k, DecodeErrorKind::DuplicateEntry { name } if name == "a"),
    );
}

#[test]
fn invalid_names() {
    for (name, reason) in [
        (&b""[..], "empty name"),
        (b".", "`.` and `..` are not entries"),
        (b"..", "`.` and `..` are not entries"),
        (b"a/b", "name contains `/`"),
        (b"../escape", "name contains `/`"),
        (b"a\0b", "name contains NUL"),
    ] {
        let nar = Raw::new().dir();
        let at = nar.at() + 48;
        let nar = nar.file_entry(name).s(b")");
        expect_reject(
            &nar.bytes,
            at,
            |k| matches!(k, DecodeErrorKind::InvalidName { reason: r, .. } if *r == reason),
        );
    }
}

#[test]
fn name_longer_than_255_bytes() {
    let nar = Raw::new().dir();
    let at = nar.at() + 48;
    let nar = nar.file_entry(&[b'x'; 256]).s(b")");
    expect_reject(&nar.bytes, at, |k| matches!(k, DecodeErrorKind::NameTooLong { len: 256 }));
    // 255 is fine.
    let ok = Raw::new().dir().file_entry(&[b'x'; 255]).s(b")");
    let tmp = tempfile::tempdir().unwrap();
    restore(&ok.bytes[..], &tmp.path().join("out")).unwrap();
}

#[test]
fn symlink_target_longer_than_4095_bytes() {
    let nar = Raw::new().tokens(&["(", "type", "symlink", "target"]);
    let at = nar.at();
    let nar = nar.s(&[b'x'; 4096]).s(b")");
    expect_reject(&nar.bytes, at, |k| matches!(k, DecodeErrorKind::TargetTooLong { len: 4096 }));
}

#[test]
fn empty_symlink_target() {
    let nar = Raw::new().tokens(&["(", "type", "symlink", "target"]);
    let at = nar.at();
    let nar = nar.s(b"").s(b")");
    expect_reject(&nar.bytes, at, |k| matches!(k, DecodeErrorKind::InvalidTarget { .. }));
}

#[test]
fn non_zero_padding_in_token() {
    let mut nar =
        Raw::new().tokens(&["(", "type", "regular", "contents"]).raw(&0u64.to_le_bytes()).s(b")");
    // The `(` token starts at 24: 8 length bytes, `(`, then padding from 33.
    nar.bytes[24 + 8 + 3] = 1;
    expect_reject(&nar.bytes, 24 + 8 + 3, |k| matches!(k, DecodeErrorKind::NonZeroPadding));
}

#[test]
fn non_zero_padding_after_contents() {
    let nar = Raw::new().tokens(&["(", "type", "regular", "contents"]).raw(&3u64.to_le_bytes());
    let at = nar.at() + 3;
    let nar = nar.raw(b"abc\0\0\x01\0\0").s(b")");
    expect_reject(&nar.bytes, at + 2, |k| matches!(k, DecodeErrorKind::NonZeroPadding));
}

#[test]
fn unknown_tokens() {
    let nar = Raw::new().tokens(&["(", "type"]);
    let at = nar.at();
    let nar = nar.s(b"fifo").s(b")");
    expect_reject(
        &nar.bytes,
        at,
        |k| matches!(k, DecodeErrorKind::UnexpectedToken { found, .. } if found == "fifo"),
    );
    // A wrong executable marker value.
    let nar = Raw::new().tokens(&["(", "type", "regular", "executable"]);
    let at = nar.at();
    let nar = nar.s(b"yes").s(b"contents");
    expect_reject(&nar.bytes, at, |k| matches!(k, DecodeErrorKind::UnexpectedToken { .. }));
    // A long string where a keyword belongs is rejected before it is buffered.
    let nar = Raw::new().tokens(&["(", "type"]);
    let at = nar.at();
    let nar = nar.s(&[b'y'; 1000]);
    expect_reject(&nar.bytes, at, |k| matches!(k, DecodeErrorKind::UnexpectedToken { .. }));
}

#[test]
fn bad_magic() {
    let nar =
        Raw::default().s(b"nix-archive-2").tokens(&["(", "type", "symlink", "target", "x", ")"]);
    expect_reject(&nar.bytes, 0, |k| matches!(k, DecodeErrorKind::BadMagic { .. }));
}

#[test]
fn length_beyond_32_bits() {
    let nar = Raw::new();
    let at = nar.at();
    let nar = nar.raw(&(1u64 << 40).to_le_bytes());
    expect_reject(&nar.bytes, at, |k| matches!(k, DecodeErrorKind::IntegerTooLarge(_)));
}

#[test]
fn truncated_anywhere() {
    let full = Raw::new()
        .dir()
        .file_entry(b"a")
        .tokens(&["entry", "(", "name", "b", "node", "(", "type", "regular", "contents"])
        .raw(&5u64.to_le_bytes())
        .raw(b"hello\0\0\0")
        .tokens(&[")", ")", ")"]);
    let tmp = tempfile::tempdir().unwrap();
    restore(&full.bytes[..], &tmp.path().join("whole")).unwrap();
    for cut in 0..full.bytes.len() {
        expect_reject(&full.bytes[..cut], cut as u64, |k| {
            matches!(k, DecodeErrorKind::Truncated { .. })
        });
    }
}

#[test]
fn trailing_bytes() {
    let mut nar = nar_core::testdata::hello_nar();
    nar.extend_from_slice(&[0; 8]);
    expect_reject(&nar, 120, |k| matches!(k, DecodeErrorKind::TrailingData));
}

#[test]
fn nesting_deeper_than_the_bound() {
    let depth = nar_core::wire::MAX_DEPTH;
    let mut nar = Raw::new();
    for _ in 0..depth {
        nar = nar.dir().tokens(&["entry", "(", "name", "d", "node"]);
    }
    let at = nar.at() + 32;
    let nar = nar.dir().s(b")");
    expect_reject(&nar.bytes, at, |k| matches!(k, DecodeErrorKind::TooDeep { .. }));
}

#[test]
fn target_must_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    std::fs::write(&target, b"keep me").unwrap();
    let err = restore(&nar_core::testdata::hello_nar()[..], &target).unwrap_err();
    assert!(matches!(err, RestoreError::TargetExists(_)), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}

#[test]
fn errors_say_what_and_where() {
    let nar = Raw::new().dir().file_entry(b"b").file_entry(b"a").s(b")");
    let tmp = tempfile::tempdir().unwrap();
    let err = restore(&nar.bytes[..], &tmp.path().join("out")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid NAR at byte 312: directory entries not sorted: \"a\" after \"b\""
    );
}
