//! Small golden archives from guix-spec §1.4, for doc examples and tests.

/// The NAR of a regular file containing `hello\n` (120 bytes).
pub fn hello_nar() -> Vec<u8> {
    let mut out = Vec::new();
    for token in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents"] {
        crate::wire::write_str(&mut out, token);
    }
    crate::wire::write_str(&mut out, b"hello\n");
    crate::wire::write_str(&mut out, b")");
    out
}
