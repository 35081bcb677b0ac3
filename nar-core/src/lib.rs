//! # nar-core
//!
//! The nix-archive-1 format (NAR) shared by Nix and Guix, and the store-path arithmetic around
//! it. Everything above it in ferry speaks NAR through this crate: the store restores and dumps
//! paths with it, the transfer engine streams it, signing hashes it.
//!
//! The core is sans IO: [`decode::Decoder`] takes bytes and yields events, [`encode::Encoder`]
//! takes structure and yields bytes. Thin adapters put them on `std::io` ([`read`], [`write`])
//! and on the filesystem ([`dump`]: a tree to a NAR, as `nix-store --dump`; [`restore`]: a NAR
//! to a tree, strictly, as `nix-store --restore`). [`hash`] holds [`hash::NarHasher`], the
//! running SHA-256 and size of a NAR stream that every layer uses to check a path.
//!
//! | module | what | IO |
//! |---|---|---|
//! | [`wire`] | the grammar, tokens and the limits ferry enforces | none |
//! | [`decode`], [`error`] | sans-IO decoder: strict order, padding, names, depth; errors with offsets | none |
//! | [`encode`] | sans-IO encoder | none |
//! | [`read`], [`write`] | `std::io` (and, feature `tokio`, async) adapters | streams |
//! | [`dump`] | a file, directory or symlink as a NAR (`nix-store --dump`), and its hash | reads files |
//! | [`restore`] | a NAR into a new directory entry, hardened (`nix-store --restore`) | writes files |
//! | [`hash`] | SHA-256 in Nix's and Guix's forms; [`hash::NarHasher`] | none |
//! | [`base32`] | nix-base32 | none |
//! | [`store_path`] | store dirs and paths: parse, validate, compute (source, text, fixed output) | none |
//! | [`pipe`] | bounded in-memory chunk pipes between two threads | none |
//!
//! ```
//! use nar_core::hash::NarHasher;
//! use nar_core::read::{read_nar, NarEvent, ReadError};
//!
//! // The NAR of a regular file holding "hello\n" (guix-spec §1.4).
//! let nar = nar_core::testdata::hello_nar();
//! let mut events = Vec::new();
//! let digest = read_nar(&mut &nar[..], |event, _offset| {
//!     if let NarEvent::File { size, .. } = event {
//!         events.push(size);
//!     }
//!     Ok::<(), ReadError>(())
//! })
//! .unwrap();
//! assert_eq!(events, [6]);
//! let mut hasher = NarHasher::new();
//! hasher.update(&nar);
//! assert_eq!(hasher.finish(), digest);
//! ```

pub mod base32;
pub mod decode;
pub mod dump;
pub mod encode;
pub mod error;
pub mod hash;
pub mod pipe;
pub mod read;
pub mod restore;
pub mod store_path;
#[doc(hidden)]
pub mod testdata;
pub mod wire;
pub mod write;
