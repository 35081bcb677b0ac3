//! Nix's legacy serve protocol, sans IO: what `nix-store --serve --write` speaks on its
//! stdin/stdout (over SSH for `nix copy --to ssh://`). Two users drive it over their own IO:
//! the `nix+ssh://` copy target (`transfer::target::nix_host`, async, as a client of a remote
//! Nix) and a host's agent handing verified NARs to its own Nix (`transfer::agent::nix_store`,
//! blocking, with `nix-store --serve --write` as its subprocess).
//!
//! # Protocol (Nix 2.8, checked byte for byte against `nix-store --serve --write`)
//!
//! Every integer is a u64, little-endian. A string is its length (u64), its bytes, and zero
//! bytes up to a multiple of 8. A list of strings (a path set) is a count and the strings.
//!
//! Handshake: the client sends [`SERVE_MAGIC_1`] and its version ([`CLIENT_VERSION`]); the
//! server answers [`SERVE_MAGIC_2`] and its version (`0x207` for Nix 2.8; any `0x2xx` is
//! accepted, [`check_handshake`]). Then commands, each a u64 op code and its arguments; the
//! server flushes its answer after each.
//!
//! | op | request | answer |
//! |---|---|---|
//! | `1` QueryValidPaths | lock (0/1), substitute (0/1), paths | the valid subset |
//! | `2` QueryPathInfos | paths | per valid path: path, deriver (`""` if none), references, download size, NAR size, NAR hash (`sha256:<nix32>`), ca (`""`), sigs; then `""` |
//! | `3` DumpStorePath | path | the raw NAR |
//! | `9` AddToStoreNar (server minor version ≥ 5) | path, deriver, NAR hash (bare hex), references, registration time, NAR size (> 0), ultimate (0/1), sigs, ca, then exactly NAR-size bytes of NAR ([`AddToStoreNar`]) | `1` |
//!
//! For AddToStoreNar the server reads exactly NAR-size bytes, restores them as it reads
//! (into the path's place, not yet valid), checks the NAR hash and size, and only then
//! registers the path with the signatures given; it does not check signatures (`NoCheckSigs`).
//! On any error the server prints it on its stderr and exits: the client only sees the stream
//! end. A client that stops before the NAR's last byte (closing the stream or killing the
//! server) leaves nothing registered.

/// First word of the handshake, client to server.
pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
/// First word of the answer, server to client.
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// The protocol version ferry's clients speak.
pub const CLIENT_VERSION: u64 = 0x206;
/// The oldest server version with AddToStoreNar (2.5).
pub const MIN_ADD_TO_STORE_NAR: u64 = 0x205;

/// Operation codes.
pub mod op {
    /// QueryValidPaths.
    pub const QUERY_VALID_PATHS: u64 = 1;
    /// QueryPathInfos.
    pub const QUERY_PATH_INFOS: u64 = 2;
    /// DumpStorePath.
    pub const DUMP_STORE_PATH: u64 = 3;
    /// AddToStoreNar.
    pub const ADD_TO_STORE_NAR: u64 = 9;
}

/// Encoding of the protocol's integers, strings and lists (they fill a `Vec<u8>`).
pub mod wire {
    /// Append a u64, little-endian.
    pub fn put_u64(out: &mut Vec<u8>, n: u64) {
        out.extend_from_slice(&n.to_le_bytes());
    }

    /// Append a string: length, bytes, zero padding to 8.
    pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
        put_u64(out, s.len() as u64);
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }

    /// Append a list of strings: count, then each string.
    pub fn put_strs<S: AsRef<[u8]>>(out: &mut Vec<u8>, items: &[S]) {
        put_u64(out, items.len() as u64);
        for s in items {
            put_str(out, s.as_ref());
        }
    }

    /// Padding after a string of `len` bytes.
    pub fn padding(len: u64) -> usize {
        ((8 - len % 8) % 8) as usize
    }
}

/// The client's handshake: magic and version.
pub fn handshake_request() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16);
    wire::put_u64(&mut buf, SERVE_MAGIC_1);
    wire::put_u64(&mut buf, CLIENT_VERSION);
    buf
}

/// Why a server's handshake answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a serve protocol server.
    #[error("protocol mismatch: expected magic {SERVE_MAGIC_2:#x}, got {0:#x}")]
    BadMagic(u64),
    /// A serve protocol version other than 2.x.
    #[error("unsupported protocol version {0:#x} (this client speaks 2.x)")]
    UnsupportedVersion(u64),
}

/// Check the server's answer to the handshake (magic, then version); its version.
pub fn check_handshake(magic: u64, version: u64) -> Result<u64, HandshakeError> {
    if magic != SERVE_MAGIC_2 {
        return Err(HandshakeError::BadMagic(magic));
    }
    if version >> 8 != 0x2 {
        return Err(HandshakeError::UnsupportedVersion(version));
    }
    Ok(version)
}

/// The request of an AddToStoreNar, before its NAR bytes. Paths are absolute
/// (`/nix/store/…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddToStoreNar {
    /// The path to add.
    pub path: String,
    /// Its deriver (`""`: none).
    pub deriver: String,
    /// The NAR's SHA-256, in base 16.
    pub nar_hash_hex: String,
    /// Its references.
    pub references: Vec<String>,
    /// Seconds since the epoch.
    pub registration_time: u64,
    /// The NAR's size in bytes (the server refuses 0).
    pub nar_size: u64,
    /// Built on this machine.
    pub ultimate: bool,
    /// Signatures, `name:base64` (sorted and deduplicated when encoded).
    pub sigs: Vec<String>,
    /// Content address (`""`: none).
    pub ca: String,
}

impl AddToStoreNar {
    /// Append the op code and the request; the NAR's bytes follow.
    pub fn encode(&self, out: &mut Vec<u8>) {
        wire::put_u64(out, op::ADD_TO_STORE_NAR);
        wire::put_str(out, self.path.as_bytes());
        wire::put_str(out, self.deriver.as_bytes());
        wire::put_str(out, self.nar_hash_hex.as_bytes());
        wire::put_strs(out, &self.references);
        wire::put_u64(out, self.registration_time);
        wire::put_u64(out, self.nar_size);
        wire::put_u64(out, self.ultimate as u64);
        let mut sigs = self.sigs.clone();
        sigs.sort();
        sigs.dedup();
        wire::put_strs(out, &sigs);
        wire::put_str(out, self.ca.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_padded_to_eight() {
        let mut out = Vec::new();
        wire::put_str(&mut out, b"abc");
        assert_eq!(out, [3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        wire::put_str(&mut out, b"");
        assert_eq!(out, [0; 8]);
        assert_eq!(wire::padding(8), 0);
        assert_eq!(wire::padding(9), 7);
    }

    #[test]
    fn add_to_store_nar_layout() {
        let request = AddToStoreNar {
            path: "/nix/store/p".into(),
            nar_hash_hex: "ab".into(),
            references: vec!["/nix/store/r".into()],
            registration_time: 7,
            nar_size: 112,
            sigs: vec!["k:s".into(), "k:s".into()],
            ..AddToStoreNar::default()
        };
        let mut out = Vec::new();
        request.encode(&mut out);
        let mut want = Vec::new();
        wire::put_u64(&mut want, 9);
        wire::put_str(&mut want, b"/nix/store/p");
        wire::put_str(&mut want, b"");
        wire::put_str(&mut want, b"ab");
        wire::put_strs(&mut want, &["/nix/store/r"]);
        for n in [7, 112, 0] {
            wire::put_u64(&mut want, n);
        }
        wire::put_strs(&mut want, &["k:s"]);
        wire::put_str(&mut want, b"");
        assert_eq!(out, want);
    }

    #[test]
    fn handshake() {
        assert_eq!(handshake_request()[..8], SERVE_MAGIC_1.to_le_bytes());
        assert_eq!(check_handshake(SERVE_MAGIC_2, 0x207), Ok(0x207));
        assert_eq!(check_handshake(1, 0x207), Err(HandshakeError::BadMagic(1)));
        assert_eq!(
            check_handshake(SERVE_MAGIC_2, 0x300),
            Err(HandshakeError::UnsupportedVersion(0x300))
        );
    }
}
