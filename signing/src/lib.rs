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
//!
//! # Example: sign a bundle as `guix archive --export` does, and import it with an ACL
//! ```
//! use nar_core::store_path::StoreDir;
//! use signing::acl::Acl;
//! use signing::bundle::{BundleReader, BundleWriter, ItemMeta};
//! use signing::guix::SigningKey;
//!
//! let key = SigningKey::generate(&mut rand::thread_rng());
//! let dir = StoreDir::guix();
//! let meta = ItemMeta {
//!     path: dir.parse_path("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt").unwrap(),
//!     references: vec![],
//!     deriver: None,
//! };
//! let mut writer = BundleWriter::new(Vec::new(), dir.clone());
//! writer.write_signed(&meta, &mut &nar_core::testdata::hello_nar()[..], &key).unwrap();
//! let bundle = writer.finish().unwrap();
//!
//! let mut acl = Acl::new();
//! acl.authorize(key.verifying_key().to_sexp()).unwrap();
//! let mut reader = BundleReader::new(&bundle[..], dir.clone());
//! let (item, nar) = reader.next_item().unwrap().unwrap();
//! let verified = item.verify(&acl, &dir).unwrap(); // signature, ACL, hash, crypto
//! assert_eq!(verified.info.path, meta.path);
//! assert_eq!(nar, nar_core::testdata::hello_nar());
//! assert!(reader.next_item().unwrap().is_none());
//! ```

pub mod acl;
pub mod bundle;
pub mod ecdsa;
pub mod guix;
pub mod keyfile;
pub mod nix;
pub mod sexp;

pub use sexp::Sexp;
