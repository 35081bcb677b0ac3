//! Nix binary caches: writing ones that `nix copy --from` accepts, and reading them (ours or
//! Nix's) back into a ferry store. One writer ([`CacheWriter`]) and one reader ([`CacheReader`])
//! hold the layout and every check; where the objects live is a [`Backend`]:
//!
//! | URI | backend | |
//! |---|---|---|
//! | `file:///DIR` | [`FileBackend`] (`backend.rs`) | read and write |
//! | `s3://BUCKET[/PREFIX]?endpoint=…&region=…` | [`ObjectBackend`] (`object.rs`, `object_store`'s S3 client) | read and write |
//! | `http(s)://…` | [`ObjectBackend`] (`object_store`'s HTTP client) | read only |
//!
//! # Layout (what Nix 2.8's `nix copy --to file://DIR?compression=zstd` writes)
//!
//! ```text
//! DIR/nix-cache-info            StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n
//! DIR/<hash part>.narinfo       one per store path (below)
//! DIR/nar/<file hash>.nar.zst   the path's NAR, zstd-compressed; <file hash> is the nix-base32
//!                               SHA-256 of the compressed file
//! ```
//!
//! A narinfo is `Key: value` lines, in this order (Nix's `NarInfo::to_string`):
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>
//! URL: nar/<file hash>.nar.zst
//! Compression: zstd
//! FileHash: sha256:<nix32 of the compressed file>
//! FileSize: <bytes of the compressed file>
//! NarHash: sha256:<nix32 of the NAR>
//! NarSize: <bytes of the NAR>
//! References: <base name> <base name> ...      (sorted as strings; the line is present, maybe empty)
//! Deriver: <base name>                          (only when known)
//! Sig: <key name>:<base64>                      (one line per signature)
//! CA: fixed:r:sha256:<nix32>                    (only for content-addressed paths)
//! ```
//!
//! A `Sig` signs the fingerprint `1;<abs path>;sha256:<nix32>;<NAR size>;<abs refs, comma
//! separated, sorted>` ([`signing::nix::fingerprint`]).
//!
//! # Writing ([`CacheWriter`], `writer.rs`)
//!
//! What the cache has is asked first, without downloading anything: one existence check
//! (`HEAD`, or `stat`) per narinfo of the closure, many at once; a path whose narinfo exists is
//! skipped. The others are written by a few worker threads at once ([`CacheOptions::jobs`]),
//! each path streamed: the NAR is produced by [`nar_core::dump::dump`] on a walker thread and
//! handed over in bounded chunks (memory stays a few MiB whatever the path's size) to the
//! worker, which hashes it and feeds a zstd encoder writing a spool file (in `nar/` for a
//! directory, in the temp dir for a remote cache); the compressed bytes are hashed on the way.
//! The spool file then becomes the object `nar/<file hash>.nar.zst` ([`Backend::put_file`]: a
//! rename, or an upload, in parts for large files, with a few parts in flight). Crash safety:
//! a narinfo is written only after its NAR is complete, and narinfos are written in
//! topological order (references first), so after a crash or a kill every narinfo points at a
//! complete NAR and its references' narinfos exist; a rerun resumes (narinfos present are
//! skipped, a NAR object already complete is not sent again, an interrupted multipart upload
//! never became an object and is redone). A path whose files no longer hash to what the
//! store recorded is refused (the narinfo would lie), and so is a path whose `CA` or `Deriver`
//! breaks its grammar ([`crate::trust::check_metadata`]: no signature covers them, so they are
//! never written, signed, or read back unchecked).
//!
//! # Reading ([`CacheReader`], `reader.rs`)
//!
//! A cache is as untrusted as any peer. Narinfos are parsed strictly (a `URL` must be a plain
//! relative key: no `..`, no absolute path), a path must carry a `Sig` by one of the trusted
//! keys (unless signatures are not required), its NAR is streamed, decompressed (zstd or none)
//! and imported with [`store::Store::import_nar`], which checks the NAR hash and size before
//! the path becomes valid. Closures are fetched references first.

mod backend;
mod narinfo;
mod object;
mod reader;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use nar_core::dump::DumpError;
use nar_core::hash::Sha256Hash;
use nar_core::store_path::StorePath;
use store::StoreError;

pub use backend::{Backend, FileBackend};
pub use narinfo::{CacheInfo, NarInfo};
pub use object::ObjectBackend;
pub use reader::CacheReader;
pub use writer::{CacheOptions, CacheWriter, WriteOutcome};

/// Name of the cache description file.
pub const CACHE_INFO_FILE: &str = "nix-cache-info";
/// Subdirectory of compressed NARs.
pub const NAR_DIR: &str = "nar";
/// Default `Priority:` of a cache written by ferry (lower is preferred; cache.nixos.org is 40).
pub const DEFAULT_PRIORITY: u32 = 40;
/// Default zstd level (`nix copy ?compression=zstd` sizes match level 3).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Prefix of temporary files in the cache directory and in `nar/`.
const TEMP_PREFIX: &str = ".tmp-";
/// Size of the chunks handed from the NAR walker to the compressor.
const CHUNK: usize = 256 * 1024;

/// Errors of the binary cache writer and reader; each names the file or store path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A file system operation on the cache failed.
    #[error("binary cache: cannot {op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    /// The path's files could not be serialized.
    #[error("binary cache: cannot serialize {path}: {source}")]
    Dump { path: String, source: DumpError },
    /// The path's files no longer match what the store recorded.
    #[error(
        "binary cache: {path} has NAR hash {actual} ({actual_size} bytes) on disk but the store \
         recorded {expected} ({expected_size} bytes); not written"
    )]
    Changed {
        path: String,
        expected: Sha256Hash,
        expected_size: u64,
        actual: Sha256Hash,
        actual_size: u64,
    },
    /// The cache was made for another store dir.
    #[error("binary cache {}: its StoreDir is {cache}, but the store's is {ours}", dir.display())]
    StoreDirMismatch { dir: PathBuf, cache: String, ours: String },
    /// A narinfo or `nix-cache-info` file is malformed.
    #[error("binary cache: {}: {reason}", file.display())]
    Parse { file: PathBuf, reason: String },
    /// No narinfo for a path.
    #[error("binary cache {}: no narinfo for {path}", dir.display())]
    NotInCache { dir: PathBuf, path: String },
    /// No signature by a trusted key.
    #[error(
        "binary cache: {path} lacks a valid signature by a trusted key (signatures: {sigs:?}; \
         trusted: {trusted:?})"
    )]
    Untrusted { path: String, sigs: Vec<String>, trusted: Vec<String> },
    /// A compression ferry cannot read.
    #[error("binary cache: {path} uses compression {compression:?}; only zstd and none are read")]
    UnsupportedCompression { path: String, compression: String },
    /// The compressed file does not match the narinfo's `FileHash`/`FileSize`.
    #[error(
        "binary cache: {} has sha256 {actual} and {actual_size} bytes, the narinfo says {expected} \
         and {expected_size} bytes",
        file.display()
    )]
    FileHashMismatch {
        file: PathBuf,
        expected: Sha256Hash,
        expected_size: u64,
        actual: Sha256Hash,
        actual_size: u64,
    },
    /// The store refused the path (hash mismatch, missing reference, ...).
    #[error("binary cache: importing {path}: {source}")]
    Import { path: String, source: Box<StoreError> },
    /// Another store error.
    #[error(transparent)]
    Store(Box<StoreError>),
    /// A remote cache's request failed (the message never holds credentials: they travel in
    /// request headers, and the client's messages name the URL only).
    #[error("binary cache: cannot {op} {location}: {message}")]
    Remote { op: &'static str, location: String, message: String },
    /// A cache that is read only (`http(s)://`) was given as a destination.
    #[error("binary cache {0}: read only (write with s3:// or file://)")]
    ReadOnly(String),
    /// The S3 credentials file could not be read or has no such profile.
    #[error("S3 credentials: {0}")]
    Credentials(String),
    /// A path's unsigned metadata (`CA`, `Deriver`) breaks its grammar: no narinfo is written
    /// (and signed) with it.
    #[error("binary cache: {path}: {reason}; not written")]
    BadMetadata { path: String, reason: String },
}

impl From<StoreError> for CacheError {
    fn from(e: StoreError) -> Self {
        CacheError::Store(Box::new(e))
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io { op, path: path.to_owned(), source }
}

/// Totals of a closure write or fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// Paths written (or imported).
    pub paths_done: usize,
    /// Paths skipped because the cache (or store) had them.
    pub paths_skipped: usize,
    /// NAR bytes of the paths done.
    pub nar_bytes: u64,
    /// Compressed bytes of the paths done.
    pub file_bytes: u64,
}

/// The key of a path's narinfo.
fn narinfo_key(path: &StorePath) -> String {
    format!("{}.narinfo", path.hash_part())
}

/// The backend a cache URI names (`file://`, `s3://`, `http(s)://`); `None` for other URIs.
/// `fsync` applies to directories.
pub fn backend_for(
    target: &proto::uri::Target,
    fsync: bool,
) -> Result<Option<Box<dyn Backend>>, CacheError> {
    use proto::uri::Target as Uri;
    Ok(Some(match target {
        Uri::File { dir } => Box::new(FileBackend::new(dir, fsync)),
        Uri::S3(location) => Box::new(ObjectBackend::s3(location)?),
        Uri::Http { url } => Box::new(ObjectBackend::http(url)?),
        _ => return Ok(None),
    }))
}

/// Where an object is, for messages.
fn locate(backend: &dyn Backend, key: &str) -> PathBuf {
    PathBuf::from(backend.locate(key))
}
