//! # store
//!
//! The store on disk: where it lives ([`StoreLayout`]: root, logical store dir, state dir, for
//! ferry's own layout and for Nix's and Guix's), its SQLite database with the Guix/Nix schema
//! ([`Database`]), and [`Store`]: atomic, crash-safe add and NAR import (one path, a batch, or
//! staged: NAR first, metadata after), signatures on paths, queries, closures, verify, delete
//! and garbage collection. Closures and their graph types come from the `closure` crate.
//!
//! | module | what |
//! |---|---|
//! | [`layout`] | [`StoreLayout`]: root, logical store dir, state dir, physical paths |
//! | [`db`] | [`Database`]: SQLite with the Guix/Nix schema; ferry's read-write, Nix/Guix read-only |
//! | [`mod@store`] | [`Store`]: add, import (single, [`ImportBatch`], staged), signatures, queries, verify, delete, GC |
//! | [`hashing`] | NAR hashes of many paths in parallel |
//!
//! What the transfer layer calls: [`Store::open`] / [`Store::open_read_only`];
//! [`Store::closure`] (validated, references first); [`Store::query_valid`] (the agent's one
//! batch answer) and `closure::diff`; [`Store::import_nar`] (metadata first) or
//! [`Store::stage`] + [`Store::commit_staged`] (NAR first); [`hashing::hash_paths`] for parallel
//! NAR hashes.
//!
//! ```
//! use closure::{diff, RemoteAnswer};
//! use nar_core::store_path::StoreDir;
//! use store::{Store, StoreLayout};
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
pub mod hashing;
pub mod layout;
pub mod store;

pub use db::{Database, DbError};
pub use layout::{DbKind, LayoutError, LayoutOptions, StoreLayout};
pub use store::{
    BatchOutcome, GcReport, ImportBatch, ImportOutcome, StagedNar, Store, StoreError,
    VerifyProblem, VerifyReport,
};
