//! Reference scanning (guix-spec §6.4, `nix/libstore/references.cc`).
//!
//! A store item refers to another when the other's 32-character hash part occurs anywhere in
//! its NAR serialization: file contents, entry names, symlink targets. Only *candidates* can be
//! found (for `store add`, the paths already valid in the store); the name is not searched.
//!
//! The search is Boyer-Moore-like. A match needs 32 consecutive nix-base32 characters, so the
//! scanner looks at the last byte of the 32-byte window first and, on any byte that is not
//! nix-base32, jumps past it; inside a run of nix-base32 bytes it slides one byte at a time and
//! tests each window against a 2^20-bit prefilter on its first four characters (kept rolling)
//! before the hash set. Every byte is looked at O(1) times, and binary data is mostly skipped 32 bytes at a time.
//!
//! [`RefScanner`] is streaming (it implements [`std::io::Write`]): it keeps the last 31 bytes of
//! each buffer so matches across buffer boundaries are found. [`scan_tree`] scans a file, a
//! symlink or a directory tree with rayon: one task per file, and files larger than
//! [`SEGMENT`] split into segments that overlap by 31 bytes. Scanning entry names, symlink
//! targets and file contents separately finds exactly what scanning the NAR would: NAR framing
//! (lengths, padding, tokens in parentheses) always puts a non-base32 byte between them.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nar_core::store_path::{StorePath, HASH_PART_LEN};
use rayon::prelude::*;

use crate::graph::DigestHasher;

/// Files larger than this are scanned as several parallel segments.
pub const SEGMENT: u64 = 8 << 20;
const BUF: usize = 256 << 10;
const W: usize = HASH_PART_LEN;
/// The prefilter is a bitset over the first four characters of each candidate (20 bits,
/// 128 KiB): with 10,000 candidates about 1 % of windows reach the hash table.
const PREFIX_CHARS: usize = 4;
const PREFILTER_WORDS: usize = (1 << (5 * PREFIX_CHARS)) / 64;

/// nix-base32 digit value of each byte, or 0xff.
static VALUE: [u8; 256] = {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[inline(always)]
fn is_b32(b: u8) -> bool {
    VALUE[b as usize] != 0xff
}

/// Errors while scanning files.
#[derive(Debug, thiserror::Error)]
#[error("cannot scan {path:?} for references: {source}")]
pub struct ScanError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed.
    pub source: io::Error,
}

/// The store paths that may be found, indexed by hash part.
#[derive(Debug, Clone)]
pub struct Candidates {
    paths: Vec<StorePath>,
    by_hash: HashMap<[u8; W], u32, BuildHasherDefault<DigestHasher>>,
    prefilter: Box<[u64; PREFILTER_WORDS]>,
}

impl Candidates {
    /// Index `paths` (duplicates by hash part keep the first).
    pub fn new(paths: impl IntoIterator<Item = StorePath>) -> Self {
        let mut c = Candidates {
            paths: Vec::new(),
            by_hash: HashMap::default(),
            prefilter: vec![0u64; PREFILTER_WORDS].into_boxed_slice().try_into().expect("size"),
        };
        for p in paths {
            let mut key = [0u8; W];
            key.copy_from_slice(p.hash_part().as_bytes());
            if c.by_hash.contains_key(&key) {
                continue;
            }
            let bit = prefix(&key);
            c.prefilter[bit >> 6] |= 1 << (bit & 63);
            c.by_hash.insert(key, c.paths.len() as u32);
            c.paths.push(p);
        }
        c
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// No candidates.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The candidate with index `i`.
    pub fn get(&self, i: usize) -> &StorePath {
        &self.paths[i]
    }

    #[inline(always)]
    fn test(&self, prefix: usize, window: &[u8], found: &mut Found) {
        if self.prefilter[prefix >> 6] & (1 << (prefix & 63)) == 0 {
            return;
        }
        let key: &[u8; W] = window.try_into().expect("window is 32 bytes");
        if let Some(&i) = self.by_hash.get(key) {
            found.insert(i);
        }
    }

    /// Scan one complete block (no carry) and record matches.
    fn scan_block(&self, data: &[u8], found: &mut Found) {
        if self.paths.is_empty() {
            return;
        }
        let n = data.len();
        let mut i = 0;
        while i + W <= n {
            // Check the window from its end: any non-base32 byte lets us jump past it.
            let window = &data[i..i + W];
            if let Some(j) = window.iter().rposition(|&b| !is_b32(b)) {
                i += j + 1;
                continue;
            }
            // A run of at least 32 base32 bytes starts at i: slide through it, keeping the
            // prefilter index of the window's first four characters rolling.
            let mut pre = prefix(window);
            loop {
                self.test(pre, &data[i..i + W], found);
                if i + W >= n || !is_b32(data[i + W]) {
                    break;
                }
                pre = ((pre << 5) | VALUE[data[i + PREFIX_CHARS] as usize] as usize)
                    & (PREFILTER_WORDS * 64 - 1);
                i += 1;
            }
            i += W + 1;
        }
    }

    fn resolve(&self, found: &Found) -> BTreeSet<StorePath> {
        found.0.iter().map(|&i| self.paths[i as usize].clone()).collect()
    }
}

#[inline(always)]
fn prefix(window: &[u8]) -> usize {
    window[..PREFIX_CHARS].iter().fold(0, |acc, &b| (acc << 5) | (VALUE[b as usize] as usize & 31))
}

/// Indexes of candidates found.
#[derive(Debug, Default, Clone)]
struct Found(BTreeSet<u32>);

impl Found {
    #[inline]
    fn insert(&mut self, i: u32) {
        self.0.insert(i);
    }
    fn merge(mut self, other: Found) -> Found {
        self.0.extend(other.0);
        self
    }
}

/// A streaming scanner: feed bytes with [`RefScanner::update`] or `Write`, then
/// [`RefScanner::finish`].
#[derive(Debug)]
pub struct RefScanner<'c> {
    candidates: &'c Candidates,
    found: Found,
    tail: Vec<u8>,
    junction: Vec<u8>,
}

impl<'c> RefScanner<'c> {
    /// A scanner for `candidates`.
    pub fn new(candidates: &'c Candidates) -> Self {
        RefScanner {
            candidates,
            found: Found::default(),
            tail: Vec::with_capacity(W),
            junction: Vec::with_capacity(2 * W),
        }
    }

    /// Feed the next bytes of the stream.
    pub fn update(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // Windows that start in the tail end within the first 31 bytes of `data`.
            self.junction.clear();
            self.junction.extend_from_slice(&self.tail);
            self.junction.extend_from_slice(&data[..data.len().min(W - 1)]);
            self.candidates.scan_block(&self.junction, &mut self.found);
        }
        self.candidates.scan_block(data, &mut self.found);
        // Keep the last 31 bytes of tail + data.
        if data.len() >= W - 1 {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - (W - 1)..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(W - 1);
            self.tail.drain(..excess);
        }
    }

    /// Scan a separate string (an entry name, a symlink target): no carry into or out of it.
    pub fn update_separate(&mut self, data: &[u8]) {
        self.candidates.scan_block(data, &mut self.found);
    }

    /// The candidates found so far.
    pub fn found(&self) -> BTreeSet<StorePath> {
        self.candidates.resolve(&self.found)
    }

    /// The candidates found.
    pub fn finish(self) -> BTreeSet<StorePath> {
        self.found()
    }
}

impl Write for RefScanner<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Scan bytes in memory.
pub fn scan_bytes(data: &[u8], candidates: &Candidates) -> BTreeSet<StorePath> {
    let mut found = Found::default();
    candidates.scan_block(data, &mut found);
    candidates.resolve(&found)
}

/// A piece of work for the parallel scan.
enum Job {
    /// Bytes scanned on their own (names, symlink targets).
    Bytes(Vec<u8>),
    /// `len` bytes of a file from `offset` (the segment includes its 31-byte overlap).
    Segment { path: PathBuf, offset: u64, len: u64 },
}

/// Scan a file, symlink or directory tree (the way its NAR would be scanned) in parallel.
pub fn scan_tree(root: &Path, candidates: &Candidates) -> Result<BTreeSet<StorePath>, ScanError> {
    let mut jobs = Vec::new();
    collect(root, &mut jobs)?;
    if candidates.is_empty() {
        return Ok(BTreeSet::new());
    }
    let found = jobs
        .into_par_iter()
        .map(|job| scan_job(job, candidates))
        .try_reduce(Found::default, |a, b| Ok(a.merge(b)))?;
    Ok(candidates.resolve(&found))
}

fn collect(path: &Path, jobs: &mut Vec<Job>) -> Result<(), ScanError> {
    let err = |source| ScanError { path: path.to_owned(), source };
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(err)?;
        jobs.push(Job::Bytes(target.as_os_str().as_bytes().to_vec()));
    } else if ft.is_dir() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path).map_err(err)? {
            let entry = entry.map_err(err)?;
            names.push(entry.file_name());
        }
        names.sort();
        let mut joined = Vec::new();
        for name in names {
            // Each name is a separate NAR string: separate them with a non-base32 byte.
            joined.extend_from_slice(name.as_bytes());
            joined.push(b'/');
            collect(&path.join(&name), jobs)?;
        }
        if !joined.is_empty() {
            jobs.push(Job::Bytes(joined));
        }
    } else if ft.is_file() {
        let len = meta.len();
        let mut offset = 0;
        while offset < len {
            let seg = (len - offset).min(SEGMENT);
            let with_overlap = (seg + (W as u64 - 1)).min(len - offset);
            jobs.push(Job::Segment { path: path.to_owned(), offset, len: with_overlap });
            offset += seg;
        }
    }
    Ok(())
}

fn scan_job(job: Job, candidates: &Candidates) -> Result<Found, ScanError> {
    let mut found = Found::default();
    match job {
        Job::Bytes(bytes) => candidates.scan_block(&bytes, &mut found),
        Job::Segment { path, offset, len } => {
            let err = |source| ScanError { path: path.clone(), source };
            let file = File::open(&path).map_err(err)?;
            let mut scanner = RefScanner::new(candidates);
            let mut buf = vec![0u8; BUF.min(len as usize)];
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                let want = (end - pos).min(buf.len() as u64) as usize;
                let n = file.read_at(&mut buf[..want], pos).map_err(err)?;
                if n == 0 {
                    break; // The file shrank while we scanned it: scan what there is.
                }
                scanner.update(&buf[..n]);
                pos += n as u64;
            }
            found = scanner.found;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sp(seed: u8, name: &str) -> StorePath {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 7);
        }
        StorePath::from_parts(d, name).unwrap()
    }

    /// The obvious scan: every window, every candidate.
    fn naive(data: &[u8], cands: &[StorePath]) -> BTreeSet<StorePath> {
        cands
            .iter()
            .filter(|c| {
                let h = c.hash_part();
                data.windows(W).any(|w| w == h.as_bytes())
            })
            .cloned()
            .collect()
    }

    #[test]
    fn finds_hash_parts_anywhere() {
        let (a, b, c) = (sp(1, "a"), sp(2, "b"), sp(3, "c"));
        let cands = Candidates::new([a.clone(), b.clone(), c.clone()]);
        let text = format!(
            "\0\0/gnu/store/{}-a/bin\nxx{}{}zz",
            a.hash_part(),
            "0".repeat(40),
            b.hash_part()
        );
        let found = scan_bytes(text.as_bytes(), &cands);
        assert_eq!(found, [a.clone(), b.clone()].into_iter().collect());
        // Every split point of a stream gives the same answer.
        for split in 0..text.len() {
            let mut s = RefScanner::new(&cands);
            s.update(&text.as_bytes()[..split]);
            s.update(&text.as_bytes()[split..]);
            assert_eq!(s.finish(), found, "split at {split}");
        }
        // Byte by byte.
        let mut s = RefScanner::new(&cands);
        for byte in text.as_bytes() {
            s.write_all(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(s.finish(), found);
    }

    #[test]
    fn tree_scan_covers_contents_names_and_link_targets() {
        let (a, b, c, d) = (sp(1, "a"), sp(2, "b"), sp(3, "c"), sp(4, "d"));
        let cands = Candidates::new([a.clone(), b.clone(), c.clone(), d.clone()]);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("item");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        // A large file with a match straddling a segment boundary.
        let mut big = vec![0u8; (SEGMENT as usize) * 2 + 100];
        let at = SEGMENT as usize - 10;
        big[at..at + W].copy_from_slice(a.hash_part().as_bytes());
        std::fs::write(root.join("sub/big"), &big).unwrap();
        std::fs::write(root.join(format!("{}-name", b.hash_part())), b"x").unwrap();
        std::os::unix::fs::symlink(format!("/gnu/store/{}-c/x", c.hash_part()), root.join("l"))
            .unwrap();
        let found = scan_tree(&root, &cands).unwrap();
        assert_eq!(found, [a, b, c].into_iter().collect());
    }

    proptest! {
        #[test]
        fn matches_naive(
            chunks in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    proptest::collection::vec(prop_oneof![Just(b'0'), Just(b'a'), Just(b'z')], 0..80),
                    (0u8..4).prop_map(|i| sp(i, "x").hash_part().into_bytes()),
                ],
                0..12,
            ),
            split in any::<prop::sample::Index>(),
        ) {
            let data: Vec<u8> = chunks.concat();
            let cands: Vec<StorePath> = (0..3).map(|i| sp(i, "x")).collect();
            let index = Candidates::new(cands.clone());
            let expected = naive(&data, &cands);
            prop_assert_eq!(&scan_bytes(&data, &index), &expected);
            let k = if data.is_empty() { 0 } else { split.index(data.len()) };
            let mut s = RefScanner::new(&index);
            s.update(&data[..k]);
            s.update(&data[k..]);
            prop_assert_eq!(s.finish(), expected);
        }
    }
}
