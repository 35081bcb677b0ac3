//! Where a binary cache's objects live: the [`Backend`] trait (the few operations the writer and
//! the reader need: existence, size, streaming get, whole put, and a spool file made an object)
//! and its directory implementation, [`FileBackend`] (`file:///DIR`). Keys are relative,
//! `/`-separated (`nix-cache-info`, `<hash>.narinfo`, `nar/<file hash>.nar.zst`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{io_err, CacheError, NAR_DIR, TEMP_PREFIX};

/// The storage under a binary cache. Every operation blocks; implementations are shared by the
/// writer's worker threads.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where `key` is, for messages: a path or a URL, never a credential.
    fn locate(&self, key: &str) -> String;
    /// Whether each of `keys` exists, in order (many checks at once where that is cheaper).
    fn exists(&self, keys: &[String]) -> Result<Vec<bool>, CacheError>;
    /// The object's size, `None` when it does not exist.
    fn size(&self, key: &str) -> Result<Option<u64>, CacheError>;
    /// A streaming reader of the object, `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>, CacheError>;
    /// Write a small object whole (a narinfo, `nix-cache-info`); readers see the old object or
    /// the new one, never a part.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), CacheError>;
    /// The directory a large object is prepared in before [`Backend::put_file`].
    fn spool_dir(&self) -> Result<PathBuf, CacheError>;
    /// Make the complete file `file` (`size` bytes, in [`Backend::spool_dir`]) the object `key`,
    /// in one step as readers see it; `file` is gone afterwards, whatever the result. Objects are
    /// content-addressed: one that exists with this size is kept.
    fn put_file(&self, key: &str, file: &Path, size: u64) -> Result<(), CacheError>;
    /// Whether the cache can be written (`http(s)://` cannot).
    fn writable(&self) -> bool;
    /// How many paths the writer prepares at once by default.
    fn default_jobs(&self) -> usize;
}

/// A binary cache directory (`file:///DIR`).
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
    fsync: bool,
}

impl FileBackend {
    /// The cache at `dir`; `fsync` makes every object durable before it is visible (crash
    /// safety; off only for throwaway caches).
    pub fn new(dir: &Path, fsync: bool) -> FileBackend {
        FileBackend { dir: dir.to_owned(), fsync }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The directory holding `target`.
    fn parent_of<'a>(&'a self, target: &'a Path) -> &'a Path {
        target.parent().unwrap_or(&self.dir)
    }
}

impl Backend for FileBackend {
    fn locate(&self, key: &str) -> String {
        self.file(key).display().to_string()
    }

    fn exists(&self, keys: &[String]) -> Result<Vec<bool>, CacheError> {
        Ok(keys.iter().map(|k| self.file(k).exists()).collect())
    }

    fn size(&self, key: &str) -> Result<Option<u64>, CacheError> {
        let file = self.file(key);
        match fs::metadata(&file) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &file)(e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>, CacheError> {
        let file = self.file(key);
        match File::open(&file) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("open", &file)(e)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), CacheError> {
        let target = self.file(key);
        let dir = self.parent_of(&target);
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let temp = dir.join(temp_name(".tmp"));
        let result = (|| {
            let mut f = File::create(&temp).map_err(io_err("create", &temp))?;
            f.write_all(bytes).map_err(io_err("write", &temp))?;
            if self.fsync {
                f.sync_all().map_err(io_err("sync", &temp))?;
            }
            fs::rename(&temp, &target).map_err(io_err("rename into place", &target))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result?;
        if self.fsync {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn spool_dir(&self) -> Result<PathBuf, CacheError> {
        let nar_dir = self.dir.join(NAR_DIR);
        fs::create_dir_all(&nar_dir).map_err(io_err("create", &nar_dir))?;
        Ok(nar_dir)
    }

    fn put_file(&self, key: &str, file: &Path, _size: u64) -> Result<(), CacheError> {
        let target = self.file(key);
        let result = (|| {
            if self.fsync {
                File::open(file).and_then(|f| f.sync_all()).map_err(io_err("sync", file))?;
            }
            // Same compressed bytes already there (another path, or an interrupted earlier
            // run): renaming over them is harmless.
            fs::rename(file, &target).map_err(io_err("rename into place", &target))
        })();
        if result.is_err() {
            let _ = fs::remove_file(file);
        }
        result?;
        if self.fsync {
            sync_dir(self.parent_of(&target))?;
        }
        Ok(())
    }

    fn writable(&self) -> bool {
        true
    }

    fn default_jobs(&self) -> usize {
        1
    }
}

/// A fresh temp file name (`.tmp-<pid>-<n>-<nanos><suffix>`).
pub(super) fn temp_name(suffix: &str) -> String {
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
