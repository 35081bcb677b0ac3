//! Nix binary cache directories (`file:///DIR`): writing ones that `nix copy --from file:///DIR`
//! accepts, and reading them back into a ferry store.
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
//! # Writing ([`CacheWriter`])
//!
//! Each path is streamed: the NAR is produced by [`nar_core::dump::dump`] on a walker thread and
//! handed over in bounded chunks (memory stays a few MiB whatever the path's size) to the calling
//! thread, which hashes it and feeds a (multi-threaded) zstd encoder writing a temp file in
//! `nar/`; the compressed bytes are hashed on the way to the file. Crash safety: the NAR is
//! fsynced and renamed to its final name first, the narinfo is written to a temp file, fsynced
//! and renamed last, and paths are written in topological order (references first), so after a
//! crash every narinfo in the directory points at a complete NAR and its references' narinfos
//! exist. A path whose narinfo exists is skipped. A path whose files no longer hash to what the
//! store recorded is refused (the narinfo would lie), and so is a path whose `CA` or `Deriver`
//! breaks its grammar ([`crate::trust::check_metadata`]: no signature covers them, so they are
//! never written, signed, or read back unchecked).
//!
//! # Reading ([`CacheReader`])
//!
//! Narinfos are parsed strictly, a path must carry a `Sig` by one of the trusted keys (unless
//! signatures are not required), its NAR is decompressed (zstd or none) and imported with
//! [`store::Store::import_nar`], which checks the NAR hash and size before the path becomes
//! valid. Closures are fetched references first.

use nar_core::pipe::chunk_pipe;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use closure::PathInfo;

use nar_core::dump::{dump, DumpError};
use nar_core::hash::{HashingReader, HashingWriter, NarDigest, NarHasher, Sha256Hash};
use nar_core::store_path::{StoreDir, StorePath, StorePathError};
use signing::nix::{fingerprint, Signature, SigningKey, VerifyingKey};
use store::{Store, StoreError};

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
/// Chunks in flight between walker and compressor.
const CHUNKS_IN_FLIGHT: usize = 8;

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

// ---------------------------------------------------------------------------------------------
// narinfo

/// One narinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The store path.
    pub path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root.
    pub url: String,
    /// `zstd`, `xz`, `bzip2`, `none`, ...
    pub compression: String,
    /// SHA-256 of the compressed file.
    pub file_hash: Option<Sha256Hash>,
    /// Size of the compressed file.
    pub file_size: Option<u64>,
    /// SHA-256 of the NAR.
    pub nar_hash: Sha256Hash,
    /// Size of the NAR.
    pub nar_size: u64,
    /// References (may include the path itself).
    pub references: BTreeSet<StorePath>,
    /// The derivation that built it.
    pub deriver: Option<StorePath>,
    /// `System:` (rarely written).
    pub system: Option<String>,
    /// `Sig:` values, in file order.
    pub sigs: Vec<String>,
    /// `CA:` value.
    pub ca: Option<String>,
}

impl NarInfo {
    /// The narinfo of a store path whose compressed NAR is at `url`.
    pub fn from_path_info(
        info: &PathInfo,
        url: String,
        compression: &str,
        file: NarDigest,
    ) -> NarInfo {
        NarInfo {
            path: info.path.clone(),
            url,
            compression: compression.to_owned(),
            file_hash: Some(file.hash),
            file_size: Some(file.size),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            system: None,
            sigs: info.sigs.clone(),
            ca: info.ca.clone(),
        }
    }

    /// What a store records for this path (registration time 0, not ultimate).
    pub fn to_path_info(&self) -> PathInfo {
        let digest = NarDigest { hash: self.nar_hash, size: self.nar_size };
        let mut info = PathInfo::new(self.path.clone(), digest, self.references.clone());
        info.deriver = self.deriver.clone();
        info.sigs = self.sigs.clone();
        info.ca = self.ca.clone();
        info
    }

    /// The fingerprint its signatures sign.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        let refs: Vec<StorePath> = self.references.iter().cloned().collect();
        fingerprint(store_dir, &self.path, &self.nar_hash, self.nar_size, &refs)
    }

    /// Add a signature by `key` (kept once if already there).
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SigningKey) {
        let sig = key.sign(&self.fingerprint(store_dir)).to_string();
        if !self.sigs.contains(&sig) {
            self.sigs.push(sig);
        }
    }

    /// Whether a signature by one of `keys` is valid.
    pub fn verify(&self, store_dir: &StoreDir, keys: &[VerifyingKey]) -> bool {
        let fp = self.fingerprint(store_dir);
        let sigs: Vec<Signature> =
            self.sigs.iter().filter_map(|s| Signature::parse(s).ok()).collect();
        signing::nix::verify_any(keys, &fp, &sigs)
    }

    /// The file's text, byte for byte as Nix writes it.
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        let mut out = String::with_capacity(512);
        out.push_str(&format!("StorePath: {}\n", self.path.to_absolute(store_dir)));
        out.push_str(&format!("URL: {}\n", self.url));
        out.push_str(&format!("Compression: {}\n", self.compression));
        if let Some(h) = &self.file_hash {
            out.push_str(&format!("FileHash: {}\n", h.to_typed_nix32()));
        }
        if let Some(s) = self.file_size {
            out.push_str(&format!("FileSize: {s}\n"));
        }
        out.push_str(&format!("NarHash: {}\n", self.nar_hash.to_typed_nix32()));
        out.push_str(&format!("NarSize: {}\n", self.nar_size));
        // Nix sorts references by their printed base name (`StorePath::operator<`), not by
        // digest bytes.
        let mut refs: Vec<String> = self.references.iter().map(|r| r.base_name()).collect();
        refs.sort();
        out.push_str(&format!("References: {}\n", refs.join(" ")));
        if let Some(d) = &self.deriver {
            out.push_str(&format!("Deriver: {}\n", d.base_name()));
        }
        if let Some(s) = &self.system {
            out.push_str(&format!("System: {s}\n"));
        }
        for s in &self.sigs {
            out.push_str(&format!("Sig: {s}\n"));
        }
        if let Some(ca) = &self.ca {
            out.push_str(&format!("CA: {ca}\n"));
        }
        out
    }

    /// Parse a narinfo; `file` only names it in errors. Unknown keys are ignored (as Nix does);
    /// `StorePath`, `URL`, `NarHash` and `NarSize` are required.
    pub fn parse(text: &str, store_dir: &StoreDir, file: &Path) -> Result<NarInfo, CacheError> {
        let err = |reason: String| CacheError::Parse { file: file.to_owned(), reason };
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        let mut sigs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.split_once(':').map(|(k, v)| (k, v.trim_start())))
                .ok_or_else(|| err(format!("line {}: expected `Key: value`", n + 1)))?;
            if key == "Sig" {
                sigs.push(value.to_owned());
            } else if fields.insert(key, value).is_some() {
                return Err(err(format!("line {}: duplicate key {key}", n + 1)));
            }
        }
        let get = |key: &str| fields.get(key).copied().ok_or_else(|| err(format!("no {key} line")));
        let path =
            store_dir.parse_path(get("StorePath")?).map_err(|e| err(format!("StorePath: {e}")))?;
        let hash =
            |key: &str, v: &str| Sha256Hash::parse(v).map_err(|e| err(format!("{key}: {e}")));
        let size = |key: &str, v: &str| {
            v.parse::<u64>().map_err(|_| err(format!("{key}: {v:?} is not a number")))
        };
        let base = |key: &str, v: &str| {
            StorePath::from_base_name(v).map_err(|e: StorePathError| err(format!("{key}: {e}")))
        };
        let references = match fields.get("References") {
            Some(v) => v
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(|r| base("References", r))
                .collect::<Result<_, _>>()?,
            None => BTreeSet::new(),
        };
        let deriver = match fields.get("Deriver") {
            Some(v) if !v.is_empty() && *v != "unknown-deriver" => Some(base("Deriver", v)?),
            _ => None,
        };
        let ca = fields.get("CA").filter(|s| !s.is_empty()).map(|s| (*s).to_owned());
        crate::trust::check_metadata(ca.as_deref(), deriver.as_ref()).map_err(err)?;
        Ok(NarInfo {
            path,
            url: get("URL")?.to_owned(),
            compression: fields.get("Compression").copied().unwrap_or("bzip2").to_owned(),
            file_hash: fields.get("FileHash").map(|v| hash("FileHash", v)).transpose()?,
            file_size: fields.get("FileSize").map(|v| size("FileSize", v)).transpose()?,
            nar_hash: hash("NarHash", get("NarHash")?)?,
            nar_size: size("NarSize", get("NarSize")?)?,
            references,
            deriver,
            system: fields.get("System").map(|s| (*s).to_owned()),
            sigs,
            ca,
        })
    }
}

/// The contents of `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// `StoreDir:`.
    pub store_dir: String,
    /// `WantMassQuery:`.
    pub want_mass_query: bool,
    /// `Priority:`.
    pub priority: Option<u32>,
}

impl CacheInfo {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("StoreDir: {}\n", self.store_dir);
        if self.want_mass_query {
            s.push_str("WantMassQuery: 1\n");
        }
        if let Some(p) = self.priority {
            s.push_str(&format!("Priority: {p}\n"));
        }
        s
    }

    /// Parse `nix-cache-info` (a missing `StoreDir` means `/nix/store`, as in Nix).
    pub fn parse(text: &str, file: &Path) -> Result<CacheInfo, CacheError> {
        let mut info = CacheInfo {
            store_dir: StoreDir::NIX.to_owned(),
            want_mass_query: false,
            priority: None,
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match key {
                "StoreDir" => info.store_dir = value.to_owned(),
                "WantMassQuery" => info.want_mass_query = value == "1",
                "Priority" => {
                    info.priority = Some(value.parse().map_err(|_| CacheError::Parse {
                        file: file.to_owned(),
                        reason: format!("Priority {value:?} is not a number"),
                    })?)
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

fn read_cache_info(dir: &Path) -> Result<Option<CacheInfo>, CacheError> {
    let file = dir.join(CACHE_INFO_FILE);
    match fs::read_to_string(&file) {
        Ok(text) => Ok(Some(CacheInfo::parse(&text, &file)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &file)(e)),
    }
}

fn narinfo_file(dir: &Path, path: &StorePath) -> PathBuf {
    dir.join(format!("{}.narinfo", path.hash_part()))
}

fn temp_name(suffix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{TEMP_PREFIX}{}-{}-{nanos:08x}{suffix}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory", dir))
}

/// Write `bytes` to `target` through a synced temp file and a rename.
fn write_file_atomically(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let temp = dir.join(temp_name(".tmp"));
    let result = (|| {
        let mut f = File::create(&temp).map_err(io_err("create", &temp))?;
        f.write_all(bytes).map_err(io_err("write", &temp))?;
        f.sync_all().map_err(io_err("sync", &temp))?;
        fs::rename(&temp, target).map_err(io_err("rename into place", target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// writer

/// How a cache is written.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// zstd level (1–19).
    pub zstd_level: i32,
    /// zstd worker threads; 0 compresses on the calling thread.
    pub zstd_workers: u32,
    /// `Priority:` written to a new `nix-cache-info`.
    pub priority: u32,
    /// fsync NARs, narinfos and the directories (crash safety); off only for throwaway caches.
    pub fsync: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            zstd_level: DEFAULT_ZSTD_LEVEL,
            zstd_workers: 2,
            priority: DEFAULT_PRIORITY,
            fsync: true,
        }
    }
}

/// What happened to one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; the narinfo as written.
    Written(Box<NarInfo>),
    /// Its narinfo existed already.
    Skipped,
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

/// Writes store paths into a binary cache directory.
#[derive(Debug)]
pub struct CacheWriter {
    dir: PathBuf,
    store_dir: StoreDir,
    key: Option<SigningKey>,
    options: CacheOptions,
}

impl CacheWriter {
    /// Open (creating it and `nix-cache-info` if needed) the cache at `dir` for paths of
    /// `store_dir`, signing new narinfos with `key` when given. An existing cache must have the
    /// same `StoreDir`.
    pub fn open(
        dir: &Path,
        store_dir: StoreDir,
        key: Option<SigningKey>,
        options: CacheOptions,
    ) -> Result<CacheWriter, CacheError> {
        let nar_dir = dir.join(NAR_DIR);
        fs::create_dir_all(&nar_dir).map_err(io_err("create", &nar_dir))?;
        match read_cache_info(dir)? {
            Some(info) if info.store_dir != store_dir.as_str() => {
                return Err(CacheError::StoreDirMismatch {
                    dir: dir.to_owned(),
                    cache: info.store_dir,
                    ours: store_dir.to_string(),
                })
            }
            Some(_) => {}
            None => {
                let info = CacheInfo {
                    store_dir: store_dir.to_string(),
                    want_mass_query: true,
                    priority: Some(options.priority),
                };
                write_file_atomically(dir, &dir.join(CACHE_INFO_FILE), info.to_text().as_bytes())?;
            }
        }
        Ok(CacheWriter { dir: dir.to_owned(), store_dir, key, options })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the cache has a narinfo for `path`.
    pub fn contains(&self, path: &StorePath) -> bool {
        narinfo_file(&self.dir, path).exists()
    }

    /// Write one path whose files are at `source` (its physical location) and whose store
    /// record is `info`. Its references should already be in the cache (see
    /// [`CacheWriter::write_closure`]).
    pub fn write_path(&self, info: &PathInfo, source: &Path) -> Result<WriteOutcome, CacheError> {
        let narinfo_path = narinfo_file(&self.dir, &info.path);
        if narinfo_path.exists() {
            return Ok(WriteOutcome::Skipped);
        }
        let abs = info.path.to_absolute(&self.store_dir);
        // Never signed unvalidated: the fields no signature covers must have their grammar.
        crate::trust::check_metadata(info.ca.as_deref(), info.deriver.as_ref())
            .map_err(|reason| CacheError::BadMetadata { path: abs.clone(), reason })?;
        let nar_dir = self.dir.join(NAR_DIR);
        let temp = nar_dir.join(temp_name(".nar.zst"));
        let (nar, file) = match self.compress(source, &temp, &abs) {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        if nar != info.nar_digest() {
            let _ = fs::remove_file(&temp);
            return Err(CacheError::Changed {
                path: abs,
                expected: info.nar_hash,
                expected_size: info.nar_size,
                actual: nar.hash,
                actual_size: nar.size,
            });
        }
        let url = format!("{NAR_DIR}/{}.nar.zst", file.hash.to_nix32());
        let final_nar = self.dir.join(&url);
        // Same compressed bytes already there (another path, or an interrupted earlier run):
        // renaming over it is harmless.
        fs::rename(&temp, &final_nar).map_err(io_err("rename into place", &final_nar))?;
        if self.options.fsync {
            sync_dir(&nar_dir)?;
        }
        let mut narinfo = NarInfo::from_path_info(info, url, "zstd", file);
        if let Some(key) = &self.key {
            narinfo.sign(&self.store_dir, key);
        }
        let text = narinfo.to_text(&self.store_dir);
        if self.options.fsync {
            write_file_atomically(&self.dir, &narinfo_path, text.as_bytes())?;
            sync_dir(&self.dir)?;
        } else {
            let temp = self.dir.join(temp_name(".narinfo"));
            fs::write(&temp, text).map_err(io_err("write", &temp))?;
            fs::rename(&temp, &narinfo_path).map_err(io_err("rename into place", &narinfo_path))?;
        }
        Ok(WriteOutcome::Written(Box::new(narinfo)))
    }

    /// Dump `source`, hash the NAR, compress into `temp`; returns the NAR and file digests.
    fn compress(
        &self,
        source: &Path,
        temp: &Path,
        abs: &str,
    ) -> Result<(NarDigest, NarDigest), CacheError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(io_err("create", temp))?;
        // Hashes the compressed bytes on their way to the file.
        let hashing = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
        let mut encoder = zstd::stream::write::Encoder::new(hashing, self.options.zstd_level)
            .map_err(io_err("start zstd for", temp))?;
        if self.options.zstd_workers > 0 {
            encoder
                .multithread(self.options.zstd_workers)
                .map_err(io_err("start zstd for", temp))?;
        }
        let (writer, receiver) = chunk_pipe(CHUNKS_IN_FLIGHT);
        let (nar, encoder) = std::thread::scope(|scope| {
            let walker = scope.spawn(move || dump(source, BufWriter::with_capacity(CHUNK, writer)));
            let mut hasher = NarHasher::new();
            let mut write_result = Ok(());
            while let Some(chunk) = receiver.recv() {
                hasher.update(&chunk);
                if let Err(e) = encoder.write_all(&chunk) {
                    write_result = Err(e);
                    break; // dropping the receiver stops the walker
                }
                receiver.recycle(chunk);
            }
            drop(receiver);
            let dumped = walker.join().expect("the NAR walker thread panicked");
            write_result.map_err(io_err("write", temp))?;
            dumped.map_err(|source| CacheError::Dump { path: abs.to_owned(), source })?;
            Ok::<_, CacheError>((hasher.finish(), encoder))
        })?;
        let hashing = encoder.finish().map_err(io_err("write", temp))?;
        let (inner, file_digest) = hashing.finish();
        let file = inner.into_inner().map_err(|e| io_err("write", temp)(e.into_error()))?;
        if self.options.fsync {
            file.sync_all().map_err(io_err("sync", temp))?;
        }
        Ok((nar, file_digest))
    }

    /// Write the closure of `roots` from `store`, references first, skipping paths the cache
    /// has.
    pub fn write_closure(
        &self,
        store: &Store,
        roots: &[StorePath],
    ) -> Result<CacheReport, CacheError> {
        let closure = store.closure(roots)?;
        let mut report = CacheReport::default();
        for info in closure.iter() {
            match self.write_path(info, &store.physical_path(&info.path))? {
                WriteOutcome::Written(n) => {
                    report.paths_done += 1;
                    report.nar_bytes += n.nar_size;
                    report.file_bytes += n.file_size.unwrap_or(0);
                }
                WriteOutcome::Skipped => report.paths_skipped += 1,
            }
        }
        Ok(report)
    }
}

// ---------------------------------------------------------------------------------------------
// reader

/// Reads a binary cache directory into a ferry store.
#[derive(Debug)]
pub struct CacheReader {
    dir: PathBuf,
    store_dir: StoreDir,
    trusted: Vec<VerifyingKey>,
    require_sigs: bool,
}

impl CacheReader {
    /// Open the cache at `dir`; paths must be signed by one of `trusted` keys. Its `StoreDir`
    /// must be `store_dir`.
    pub fn open(
        dir: &Path,
        store_dir: StoreDir,
        trusted: Vec<VerifyingKey>,
    ) -> Result<CacheReader, CacheError> {
        let info = read_cache_info(dir)?.ok_or_else(|| CacheError::Parse {
            file: dir.join(CACHE_INFO_FILE),
            reason: "missing: not a binary cache".into(),
        })?;
        if info.store_dir != store_dir.as_str() {
            return Err(CacheError::StoreDirMismatch {
                dir: dir.to_owned(),
                cache: info.store_dir,
                ours: store_dir.to_string(),
            });
        }
        Ok(CacheReader { dir: dir.to_owned(), store_dir, trusted, require_sigs: true })
    }

    /// Accept unsigned paths (`--no-check-sigs`).
    pub fn set_require_sigs(&mut self, require: bool) {
        self.require_sigs = require;
    }

    /// The narinfo of `path`, if the cache has one.
    pub fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, CacheError> {
        let file = narinfo_file(&self.dir, path);
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &file)(e)),
        };
        let info = NarInfo::parse(&text, &self.store_dir, &file)?;
        if info.path != *path {
            return Err(CacheError::Parse {
                file,
                reason: format!(
                    "StorePath is {}, expected {}",
                    info.path.to_absolute(&self.store_dir),
                    path.to_absolute(&self.store_dir)
                ),
            });
        }
        Ok(Some(info))
    }

    /// The narinfos of the closure of `roots`, references first.
    pub fn closure(&self, roots: &[StorePath]) -> Result<Vec<NarInfo>, CacheError> {
        let mut infos: BTreeMap<StorePath, NarInfo> = BTreeMap::new();
        let mut todo: Vec<StorePath> = roots.to_vec();
        while let Some(p) = todo.pop() {
            if infos.contains_key(&p) {
                continue;
            }
            let info = self.narinfo(&p)?.ok_or_else(|| CacheError::NotInCache {
                dir: self.dir.clone(),
                path: p.to_absolute(&self.store_dir),
            })?;
            todo.extend(info.references.iter().filter(|r| !infos.contains_key(*r)).cloned());
            infos.insert(p, info);
        }
        let closure = closure::ValidatedClosure::from_infos(
            infos.values().map(NarInfo::to_path_info).collect::<Vec<_>>(),
        )
        .map_err(StoreError::from)?;
        Ok(closure.paths().map(|p| infos.remove(p).expect("member")).collect())
    }

    /// Check the signature of one narinfo against the trusted keys.
    pub fn check_trusted(&self, info: &NarInfo) -> Result<(), CacheError> {
        if !self.require_sigs || info.verify(&self.store_dir, &self.trusted) {
            return Ok(());
        }
        Err(CacheError::Untrusted {
            path: info.path.to_absolute(&self.store_dir),
            sigs: info.sigs.clone(),
            trusted: self.trusted.iter().map(|k| k.to_string()).collect(),
        })
    }

    /// Import one path (its references must be valid in `store`): signature, decompression,
    /// NAR hash (by the store), and the compressed file's hash and size.
    pub fn import_path(&self, info: &NarInfo, store: &mut Store) -> Result<(), CacheError> {
        let abs = info.path.to_absolute(&self.store_dir);
        self.check_trusted(info)?;
        let file_path = self.dir.join(&info.url);
        let file = File::open(&file_path).map_err(io_err("open", &file_path))?;
        let mut file_reader = BufReader::with_capacity(CHUNK, HashingReader::new(file));
        let path_info = info.to_path_info();
        let import_err =
            |source| CacheError::Import { path: abs.clone(), source: Box::new(source) };
        match info.compression.as_str() {
            "zstd" => {
                let decoder = zstd::stream::read::Decoder::with_buffer(&mut file_reader)
                    .map_err(io_err("start zstd for", &file_path))?;
                let mut reader = BufReader::with_capacity(CHUNK, decoder);
                store.import_nar(&path_info, &mut reader).map_err(import_err)?;
            }
            "none" => {
                store.import_nar(&path_info, &mut file_reader).map_err(import_err)?;
            }
            other => {
                return Err(CacheError::UnsupportedCompression {
                    path: abs,
                    compression: other.to_owned(),
                })
            }
        }
        // Whatever the decoder had not pulled yet (the end of the frame), for the file hash.
        io::copy(&mut file_reader, &mut io::sink()).map_err(io_err("read", &file_path))?;
        let (_, file_digest) = file_reader.into_inner().finish();
        if let (Some(expected), Some(expected_size)) = (info.file_hash, info.file_size) {
            if file_digest.hash != expected || file_digest.size != expected_size {
                return Err(CacheError::FileHashMismatch {
                    file: file_path,
                    expected,
                    expected_size,
                    actual: file_digest.hash,
                    actual_size: file_digest.size,
                });
            }
        }
        Ok(())
    }

    /// Import the closure of `roots` into `store`, references first, skipping valid paths.
    /// Every path's signature is checked before anything is imported.
    pub fn import_closure(
        &self,
        store: &mut Store,
        roots: &[StorePath],
    ) -> Result<CacheReport, CacheError> {
        let infos = self.closure(roots)?;
        let valid = store.query_valid(infos.iter().map(|i| &i.path))?;
        for info in infos.iter().filter(|i| !valid.contains(&i.path)) {
            self.check_trusted(info)?;
        }
        let mut report = CacheReport::default();
        for info in &infos {
            if valid.contains(&info.path) {
                report.paths_skipped += 1;
                continue;
            }
            self.import_path(info, store)?;
            report.paths_done += 1;
            report.nar_bytes += info.nar_size;
            report.file_bytes += info.file_size.unwrap_or(0);
        }
        Ok(report)
    }
}
