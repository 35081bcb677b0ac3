//! # closure
//!
//! Closures, without a store: the vocabulary of a valid path ([`PathInfo`]), finding which
//! store paths a tree refers to ([`scan`]), the reference graph validated into topological
//! order ([`ValidatedClosure`]), and the diff of a closure against a remote's one answer
//! ([`diff()`]). The `store` crate builds closures from its database with these types; the
//! transfer engine diffs them against a host.
//!
//! | module | what |
//! |---|---|
//! | [`path_info`] | [`PathInfo`]: one valid path's hash, size, references, deriver, sigs, ca |
//! | [`scan`] | reference scanner: streaming, skip-ahead, parallel over files |
//! | [`graph`] | [`ClosureBuilder`] / [`IndexedGraph`] → [`ValidatedClosure`]: closed, acyclic, references first |
//! | [`mod@diff`] | missing paths in topological order and their NAR size, from one remote answer |
//!
//! ```
//! use std::collections::BTreeSet;
//!
//! use closure::{diff, ClosureBuilder, PathInfo, RemoteAnswer};
//! use nar_core::hash::{NarDigest, Sha256Hash};
//! use nar_core::store_path::StorePath;
//!
//! let path = |i: u8, name: &str| StorePath::from_parts([i; 20], name).unwrap();
//! let (lib, app) = (path(1, "lib"), path(2, "app"));
//! let nar = NarDigest { hash: Sha256Hash([0; 32]), size: 100 };
//! let mut builder = ClosureBuilder::new();
//! builder.add(PathInfo::new(lib.clone(), nar, BTreeSet::new())).unwrap();
//! builder.add(PathInfo::new(app.clone(), nar, BTreeSet::from([lib.clone()]))).unwrap();
//! builder.add_root(app.clone());
//! let closure = builder.build().unwrap();
//! // References first.
//! assert_eq!(closure.paths().collect::<Vec<_>>(), [&lib, &app]);
//! // A remote that already has lib needs only app.
//! let have = RemoteAnswer::Present(BTreeSet::from([lib.clone()]));
//! assert_eq!(diff(&closure, &have).unwrap().nar_size, 100);
//! ```

pub mod diff;
pub mod graph;
pub mod path_info;
pub mod scan;

pub use diff::{diff, DiffError, Missing, RemoteAnswer};
pub use graph::{ClosureBuilder, ClosureError, IndexedGraph, ValidatedClosure};
pub use path_info::PathInfo;
pub use scan::{scan_bytes, scan_tree, Candidates, RefScanner, ScanError};
