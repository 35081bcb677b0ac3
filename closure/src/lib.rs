//! # closure
//!
//! The local store and closures.
//!
//! | module | what |
//! |---|---|
//! | [`layout`] | [`StoreLayout`]: root, logical store dir, state dir, physical paths |
//! | [`db`] | [`Database`]: SQLite with the Guix/Nix schema; ferry's read-write, Nix/Guix read-only |
//! | [`path_info`] | [`PathInfo`]: one valid path's hash, size, references, deriver, sigs, ca |
//! | [`scan`] | reference scanner: streaming, skip-ahead, parallel over files |
//! | [`graph`] | [`ClosureBuilder`] → [`ValidatedClosure`]: closed, acyclic, references first |
//! | [`store`] | [`Store`]: atomic, crash-safe add and NAR import (also staged: NAR first, metadata after), signatures, queries, verify, delete, GC |
//! | [`hashing`] | NAR hashes of many paths in parallel |
//! | [`mod@diff`] | missing paths in topological order and their NAR size, from one remote answer |
//!
//! What the transfer layer calls: [`Store::open`] / [`Store::open_read_only`];
//! [`Store::closure`] (validated, references first); [`Store::query_valid`] (the agent's one
//! batch answer) and [`diff()`]; [`Store::import_nar`] (metadata first) or [`Store::stage`] +
//! [`Store::commit_staged`] (NAR first); [`hashing::hash_paths`] for parallel NAR hashes.
//!
//! ```
//! use closure::{diff, RemoteAnswer, Store, StoreLayout};
//! use nar_core::store_path::StoreDir;
//!
//! let root = tempfile::tempdir().unwrap();
//! let files = tempfile::tempdir().unwrap();
//! let mut store = Store::open(StoreLayout::new(root.path(), StoreDir::guix(), None).unwrap()).unwrap();
//!
//! std::fs::write(files.path().join("lib"), "a library").unwrap();
//! let lib = store.add_path(&files.path().join("lib"), None).unwrap();
//! // `app` mentions lib's store path, so lib becomes a reference.
//! let text = format!("#!/bin/sh\nexec {}\n", lib.path.to_absolute(store.store_dir()));
//! std::fs::write(files.path().join("app"), text).unwrap();
//! let app = store.add_path(&files.path().join("app"), None).unwrap();
//! assert!(app.references.contains(&lib.path));
//!
//! let closure = store.closure(&[app.path.clone()]).unwrap();
//! assert_eq!(closure.paths().collect::<Vec<_>>(), [&lib.path, &app.path]);
//! // A remote that already has lib needs only app.
//! let have = RemoteAnswer::Present([lib.path.clone()].into_iter().collect());
//! let missing = diff(&closure, &have).unwrap();
//! assert_eq!(missing.nar_size, app.nar_size);
//! ```

pub mod db;
pub mod diff;
pub mod graph;
pub mod hashing;
pub mod layout;
pub mod path_info;
pub mod scan;
pub mod store;

pub use db::{Database, DbError};
pub use diff::{diff, DiffError, Missing, RemoteAnswer};
pub use graph::{ClosureBuilder, ClosureError, ValidatedClosure};
pub use layout::{DbKind, LayoutError, LayoutOptions, StoreLayout};
pub use path_info::PathInfo;
pub use scan::{scan_bytes, scan_tree, Candidates, RefScanner, ScanError};
pub use store::{
    BatchOutcome, GcReport, ImportBatch, ImportOutcome, StagedNar, Store, StoreError,
    VerifyProblem, VerifyReport,
};
