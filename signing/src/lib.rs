//! # signing
//!
//! Keys, signatures and trust for ferry, for both ecosystems:
//!
//! - [`nix`]: Nix binary-cache keys (`name:base64`), narinfo fingerprints and `Sig:` lines,
//!   Ed25519 with strict verification.
//! - [`sexp`]: libgcrypt S-expressions (every form libgcrypt reads; canonical and "advanced"
//!   writers).
//! - [`ecdsa`] and [`guix`]: Guix keys and signatures — ECDSA over edwards25519 with RFC 6979
//!   nonces (guix-spec §3.4), plus `(flags eddsa)` keys.
//! - [`acl`]: `/etc/guix/acl`, authorization, and the verification order of guix-spec §3.6.
//! - [`keyfile`]: reading secret key files (refusing group/world-accessible ones) and
//!   `write_atomically`.
//! - [`bundle`]: the `nix-store --export` / `guix archive --export` framing, with the hash Guix
//!   signs computed while reading.
//!
//! The crate does no IO of its own except reading key files and the atomic-write helper;
//! everything else takes bytes or `Read`/`Write`.

pub mod acl;
pub mod bundle;
pub mod ecdsa;
pub mod guix;
pub mod keyfile;
pub mod nix;
pub mod sexp;

pub use sexp::Sexp;
