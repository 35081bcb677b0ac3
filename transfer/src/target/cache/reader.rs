//! [`CacheReader`]: a binary cache over any [`Backend`] read into a ferry store, every object
//! checked (the checks are listed in the [parent module](super)'s docs).

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::path::Path;

use nar_core::hash::HashingReader;
use nar_core::store_path::{StoreDir, StorePath};
use signing::nix::VerifyingKey;
use store::{Store, StoreError};

use super::{
    io_err, locate, narinfo_key, Backend, CacheError, CacheInfo, CacheReport, FileBackend, NarInfo,
    CACHE_INFO_FILE, CHUNK,
};

/// The largest narinfo read (Nix's are well under 4 KiB; a path with thousands of references
/// is still far below this).
const MAX_NARINFO: u64 = 4 << 20;

/// Reads a binary cache into a ferry store.
#[derive(Debug)]
pub struct CacheReader {
    backend: Box<dyn Backend>,
    store_dir: StoreDir,
    trusted: Vec<VerifyingKey>,
    require_sigs: bool,
}

impl CacheReader {
    /// Open the cache directory `dir`; see [`CacheReader::with_backend`].
    pub fn open(
        dir: &Path,
        store_dir: StoreDir,
        trusted: Vec<VerifyingKey>,
    ) -> Result<CacheReader, CacheError> {
        CacheReader::with_backend(Box::new(FileBackend::new(dir, false)), store_dir, trusted)
    }

    /// Open the cache on `backend`; paths must be signed by one of `trusted` keys. Its
    /// `StoreDir` must be `store_dir`.
    pub fn with_backend(
        backend: Box<dyn Backend>,
        store_dir: StoreDir,
        trusted: Vec<VerifyingKey>,
    ) -> Result<CacheReader, CacheError> {
        let info = CacheInfo::read(backend.as_ref())?.ok_or_else(|| CacheError::Parse {
            file: locate(backend.as_ref(), CACHE_INFO_FILE),
            reason: "missing: not a binary cache".into(),
        })?;
        if info.store_dir != store_dir.as_str() {
            return Err(CacheError::StoreDirMismatch {
                dir: locate(backend.as_ref(), ""),
                cache: info.store_dir,
                ours: store_dir.to_string(),
            });
        }
        Ok(CacheReader { backend, store_dir, trusted, require_sigs: true })
    }

    /// Accept unsigned paths (`--no-check-sigs`).
    pub fn set_require_sigs(&mut self, require: bool) {
        self.require_sigs = require;
    }

    /// The storage read from.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The narinfo of `path`, if the cache has one.
    pub fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, CacheError> {
        let key = narinfo_key(path);
        let file = locate(self.backend.as_ref(), &key);
        let Some(reader) = self.backend.get(&key)? else { return Ok(None) };
        let mut bytes = Vec::new();
        reader.take(MAX_NARINFO + 1).read_to_end(&mut bytes).map_err(io_err("read", &file))?;
        if bytes.len() as u64 > MAX_NARINFO {
            return Err(CacheError::Parse { file, reason: "larger than 4 MiB".into() });
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| CacheError::Parse { file: file.clone(), reason: "not UTF-8".into() })?;
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
                dir: locate(self.backend.as_ref(), ""),
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
            sigs: info.sigs.iter().map(|s| proto::text::peer_text(s, 200)).collect(),
            trusted: self.trusted.iter().map(|k| k.to_string()).collect(),
        })
    }

    /// Import one path (its references must be valid in `store`): signature, decompression,
    /// NAR hash (by the store), and the compressed file's hash and size.
    pub fn import_path(&self, info: &NarInfo, store: &mut Store) -> Result<(), CacheError> {
        let abs = info.path.to_absolute(&self.store_dir);
        self.check_trusted(info)?;
        let file_path = locate(self.backend.as_ref(), &info.url);
        let file = self.backend.get(&info.url)?.ok_or_else(|| CacheError::Io {
            op: "open",
            path: file_path.clone(),
            source: io::ErrorKind::NotFound.into(),
        })?;
        // No more than the narinfo announced is read (a cache cannot make us read forever).
        let limit = info.file_size.map_or(u64::MAX, |s| s.saturating_add(1));
        let mut file_reader = BufReader::with_capacity(CHUNK, HashingReader::new(file.take(limit)));
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
                    compression: proto::text::peer_text(other, 100),
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
