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
//! | [`diff`] | missing paths in topological order and their NAR size, from one remote answer |

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
    GcReport, ImportOutcome, StagedNar, Store, StoreError, VerifyProblem, VerifyReport,
};
