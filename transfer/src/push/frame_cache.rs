//! Compress once: when one push goes to several hosts, the encoded data of a path (its zstd
//! stream or delta stream, keyed by path, base and level) is produced by the first session that
//! needs it and shared with the others.
//!
//! The first session to [`FrameCache::claim`] a key gets a [`Producer`]: it encodes as usual and
//! tees the encoded bytes into the entry. A later session gets a [`Follower`], which copies the
//! entry's bytes to its own connection as they are produced (a tee, not a wait for the end), so
//! the hosts' transfers overlap. Entries live in an unnamed temp file (memory stays bounded
//! whatever the size; the page cache serves the followers), and are dropped once `hosts`
//! sessions claimed them, or with the cache.
//!
//! A producer dropped without [`Producer::finish`] (its session failed) marks the entry failed:
//! followers already copying see an error, later claims produce it again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use nar_core::store_path::StorePath;

/// What an encoded stream is: the path, the base of a delta (`None`: full), and the level.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub path: StorePath,
    pub base: Option<StorePath>,
    pub level: i32,
}

#[derive(Debug, Default)]
struct Progress {
    len: u64,
    done: bool,
    failed: bool,
    claims: usize,
}

#[derive(Debug)]
struct Entry {
    file: File,
    progress: Mutex<Progress>,
    grew: Condvar,
}

/// Encoded streams shared between the sessions of one push.
#[derive(Debug)]
pub struct FrameCache {
    hosts: usize,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    /// Streams produced, and bytes of them (for summaries and the compress-once bench).
    stats: Mutex<CacheStats>,
}

/// How much the cache saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Streams encoded.
    pub produced: u64,
    /// Streams copied from the cache instead of being encoded again.
    pub shared: u64,
    /// Encoded bytes copied from the cache.
    pub shared_bytes: u64,
}

/// The first claimant's handle: write the encoded bytes here as they are produced.
#[derive(Debug)]
pub struct Producer {
    entry: Arc<Entry>,
    finished: bool,
}

/// A later claimant's handle: copies what the producer writes.
#[derive(Debug)]
pub struct Follower {
    entry: Arc<Entry>,
}

/// The answer to [`FrameCache::claim`].
#[derive(Debug)]
pub enum Claim {
    /// Encode, and tee into this.
    Produce(Producer),
    /// Copy from this.
    Follow(Follower),
}

impl FrameCache {
    /// A cache for a push to `hosts` hosts.
    pub fn new(hosts: usize) -> Self {
        FrameCache { hosts, entries: Mutex::default(), stats: Mutex::default() }
    }

    /// How much was shared so far.
    pub fn stats(&self) -> CacheStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Produce or follow the stream for `key`. `None` when no temp file can be made (the caller
    /// encodes without the cache).
    pub fn claim(&self, key: &Key) -> Option<Claim> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(key).cloned() {
            let mut p = entry.progress.lock().unwrap_or_else(|p| p.into_inner());
            if !p.failed {
                p.claims += 1;
                if p.claims >= self.hosts {
                    entries.remove(key);
                }
                drop(p);
                self.stats.lock().unwrap_or_else(|p| p.into_inner()).shared += 1;
                return Some(Claim::Follow(Follower { entry }));
            }
        }
        let file = tempfile::tempfile().ok()?;
        let entry = Arc::new(Entry {
            file,
            progress: Mutex::new(Progress { claims: 1, ..Progress::default() }),
            grew: Condvar::new(),
        });
        if self.hosts > 1 {
            entries.insert(key.clone(), entry.clone());
        }
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).produced += 1;
        Some(Claim::Produce(Producer { entry, finished: false }))
    }

    /// Note bytes a follower copied.
    pub fn note_shared_bytes(&self, n: u64) {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).shared_bytes += n;
    }
}

impl Producer {
    /// The stream is complete.
    pub fn finish(mut self) {
        self.finished = true;
        let mut p = self.entry.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.done = true;
        self.entry.grew.notify_all();
    }
}

impl Write for Producer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let at = self.entry.progress.lock().unwrap_or_else(|p| p.into_inner()).len;
        self.entry.file.write_all_at(buf, at)?;
        let mut p = self.entry.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.len += buf.len() as u64;
        self.entry.grew.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.finished {
            let mut p = self.entry.progress.lock().unwrap_or_else(|p| p.into_inner());
            p.failed = true;
            self.entry.grew.notify_all();
        }
    }
}

impl Follower {
    /// Copy the whole stream to `out` as it is produced; the bytes copied.
    pub fn copy_to<W: Write>(&self, mut out: W) -> io::Result<u64> {
        let mut buf = vec![0u8; 256 << 10];
        let mut at = 0u64;
        loop {
            let (len, done) = {
                let mut p = self.entry.progress.lock().unwrap_or_else(|p| p.into_inner());
                while p.len == at && !p.done && !p.failed {
                    p = self.entry.grew.wait(p).unwrap_or_else(|p| p.into_inner());
                }
                if p.failed {
                    return Err(io::Error::other(
                        "the session encoding this path for all hosts failed",
                    ));
                }
                (p.len, p.done)
            };
            while at < len {
                let n = ((len - at) as usize).min(buf.len());
                self.entry.file.read_exact_at(&mut buf[..n], at)?;
                out.write_all(&buf[..n])?;
                at += n as u64;
            }
            if done && at == len {
                return Ok(at);
            }
        }
    }
}
