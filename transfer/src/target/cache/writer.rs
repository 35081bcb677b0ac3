//! [`CacheWriter`]: store paths into a binary cache over any [`Backend`] (the steps, the order
//! and the crash safety are in the [parent module](super)'s docs).

use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use closure::PathInfo;
use nar_core::dump::dump;
use nar_core::hash::{HashingWriter, NarDigest, NarHasher};
use nar_core::pipe::chunk_pipe;
use nar_core::store_path::{StoreDir, StorePath};
use signing::nix::SigningKey;
use store::Store;

use super::backend::temp_name;
use super::{
    io_err, locate, narinfo_key, Backend, CacheError, CacheInfo, CacheReport, FileBackend, NarInfo,
    CACHE_INFO_FILE, CHUNK, DEFAULT_PRIORITY, DEFAULT_ZSTD_LEVEL, NAR_DIR,
};

/// Chunks in flight between walker and compressor.
const CHUNKS_IN_FLIGHT: usize = 8;

/// How a cache is written.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// zstd level (1–19).
    pub zstd_level: i32,
    /// zstd worker threads in all, shared by the [`CacheOptions::jobs`] (each path gets
    /// `zstd_workers / jobs`; 0 compresses on the path's own thread, whose job then is the
    /// parallelism): compression memory stays that of about this many zstd contexts.
    pub zstd_workers: u32,
    /// `Priority:` written to a new `nix-cache-info`.
    pub priority: u32,
    /// fsync NARs, narinfos and the directories of a `file://` cache (crash safety); off only
    /// for throwaway caches.
    pub fsync: bool,
    /// Paths prepared (compressed and uploaded) at once; 0 is the backend's default (1 for a
    /// directory, a few for a remote cache, where requests wait on the network).
    pub jobs: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            zstd_level: DEFAULT_ZSTD_LEVEL,
            zstd_workers: 2,
            priority: DEFAULT_PRIORITY,
            fsync: true,
            jobs: 0,
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

/// Writes store paths into a binary cache.
#[derive(Debug)]
pub struct CacheWriter {
    backend: Box<dyn Backend>,
    store_dir: StoreDir,
    key: Option<SigningKey>,
    options: CacheOptions,
}

impl CacheWriter {
    /// Open (creating it and `nix-cache-info` if needed) the cache directory `dir`; see
    /// [`CacheWriter::with_backend`].
    pub fn open(
        dir: &Path,
        store_dir: StoreDir,
        key: Option<SigningKey>,
        options: CacheOptions,
    ) -> Result<CacheWriter, CacheError> {
        let nar_dir = dir.join(NAR_DIR);
        fs::create_dir_all(&nar_dir).map_err(io_err("create", &nar_dir))?;
        let backend = Box::new(FileBackend::new(dir, options.fsync));
        CacheWriter::with_backend(backend, store_dir, key, options)
    }

    /// Open the cache on `backend` for paths of `store_dir`, signing new narinfos with `key`
    /// when given; `nix-cache-info` is written when missing. An existing cache must have the
    /// same `StoreDir`.
    pub fn with_backend(
        backend: Box<dyn Backend>,
        store_dir: StoreDir,
        key: Option<SigningKey>,
        options: CacheOptions,
    ) -> Result<CacheWriter, CacheError> {
        if !backend.writable() {
            return Err(CacheError::ReadOnly(backend.locate("")));
        }
        match CacheInfo::read(backend.as_ref())? {
            Some(info) if info.store_dir != store_dir.as_str() => {
                return Err(CacheError::StoreDirMismatch {
                    dir: locate(backend.as_ref(), ""),
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
                backend.put(CACHE_INFO_FILE, info.to_text().as_bytes())?;
            }
        }
        Ok(CacheWriter { backend, store_dir, key, options })
    }

    /// The storage written to.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Whether the cache has a narinfo for `path`.
    pub fn contains(&self, path: &StorePath) -> Result<bool, CacheError> {
        Ok(self.backend.exists(&[narinfo_key(path)])?[0])
    }

    /// Write one path whose files are at `source` (its physical location) and whose store
    /// record is `info`. Its references should already be in the cache (see
    /// [`CacheWriter::write_paths`]).
    pub fn write_path(&self, info: &PathInfo, source: &Path) -> Result<WriteOutcome, CacheError> {
        if self.contains(&info.path)? {
            return Ok(WriteOutcome::Skipped);
        }
        let narinfo = self.put_nar(info, source, self.options.zstd_workers)?;
        self.put_narinfo(&narinfo)?;
        Ok(WriteOutcome::Written(Box::new(narinfo)))
    }

    /// Write the closure of `roots` from `store`, references first, skipping paths the cache
    /// has.
    pub fn write_closure(
        &self,
        store: &Store,
        roots: &[StorePath],
    ) -> Result<CacheReport, CacheError> {
        let closure = store.closure(roots)?;
        let paths: Vec<(&PathInfo, PathBuf)> =
            closure.iter().map(|i| (i, store.physical_path(&i.path))).collect();
        self.write_paths(&paths, &mut |_| {})
    }

    /// Write `paths` (store records and where their files are), in topological order
    /// (references first): the narinfos the cache has are found first (existence checks only),
    /// the NARs of the others are prepared by [`CacheOptions::jobs`] threads at once, and each
    /// narinfo is written once its NAR is complete and every earlier path's narinfo is written.
    /// `written` sees each narinfo written. The first error stops the writing (narinfos
    /// written until then stay: each is complete).
    pub fn write_paths(
        &self,
        paths: &[(&PathInfo, PathBuf)],
        written: &mut dyn FnMut(&NarInfo),
    ) -> Result<CacheReport, CacheError> {
        let keys: Vec<String> = paths.iter().map(|(i, _)| narinfo_key(&i.path)).collect();
        let present = self.backend.exists(&keys)?;
        let todo: Vec<&(&PathInfo, PathBuf)> =
            paths.iter().zip(&present).filter(|(_, p)| !**p).map(|(x, _)| x).collect();
        let mut report =
            CacheReport { paths_skipped: paths.len() - todo.len(), ..CacheReport::default() };
        let jobs = match self.options.jobs {
            0 => self.backend.default_jobs(),
            n => n,
        }
        .clamp(1, todo.len().max(1));
        let zstd_workers = self.options.zstd_workers / jobs as u32;
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<(usize, Result<NarInfo, CacheError>)>();
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                let tx = tx.clone();
                let (next, stop, todo) = (&next, &stop, &todo);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= todo.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (info, source) = todo[i];
                    if tx.send((i, self.put_nar(info, source, zstd_workers))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            // Narinfos in order: the one of path i only after those of 0..i.
            let mut ready: Vec<Option<NarInfo>> = vec![None; todo.len()];
            let mut committed = 0;
            for (i, result) in rx {
                match result {
                    Ok(narinfo) => ready[i] = Some(narinfo),
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                while let Some(narinfo) = ready.get_mut(committed).and_then(Option::take) {
                    if let Err(e) = self.put_narinfo(&narinfo) {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    report.paths_done += 1;
                    report.nar_bytes += narinfo.nar_size;
                    report.file_bytes += narinfo.file_size.unwrap_or(0);
                    written(&narinfo);
                    committed += 1;
                }
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// The NAR of one path as a complete object; returns its (signed) narinfo, not yet written.
    fn put_nar(
        &self,
        info: &PathInfo,
        source: &Path,
        zstd_workers: u32,
    ) -> Result<NarInfo, CacheError> {
        let abs = info.path.to_absolute(&self.store_dir);
        // Never signed unvalidated: the fields no signature covers must have their grammar.
        crate::trust::check_metadata(info.ca.as_deref(), info.deriver.as_ref())
            .map_err(|reason| CacheError::BadMetadata { path: abs.clone(), reason })?;
        let temp = self.backend.spool_dir()?.join(temp_name(".nar.zst"));
        let (nar, file) = match self.compress(source, &temp, &abs, zstd_workers) {
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
        self.backend.put_file(&url, &temp, file.size)?;
        let mut narinfo = NarInfo::from_path_info(info, url, "zstd", file);
        if let Some(key) = &self.key {
            narinfo.sign(&self.store_dir, key);
        }
        Ok(narinfo)
    }

    fn put_narinfo(&self, narinfo: &NarInfo) -> Result<(), CacheError> {
        self.backend.put(&narinfo_key(&narinfo.path), narinfo.to_text(&self.store_dir).as_bytes())
    }

    /// Dump `source`, hash the NAR, compress into `temp`; returns the NAR and file digests.
    fn compress(
        &self,
        source: &Path,
        temp: &Path,
        abs: &str,
        zstd_workers: u32,
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
        if zstd_workers > 0 {
            encoder.multithread(zstd_workers).map_err(io_err("start zstd for", temp))?;
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
        inner.into_inner().map_err(|e| io_err("write", temp)(e.into_error()))?;
        Ok((nar, file_digest))
    }
}
