//! The agent program on this side: the file uploaded to hosts ([`LocalAgent`]), named by its
//! content (`ferry-<version>-<sha256>`), and its compressed forms ([`Codec`]), each made once
//! per process and shared by every host of a run.
//!
//! The upload is compressed with zstd, or gzip for hosts without `zstd` (every base system has
//! gzip). xz is not offered: its maintained Rust encoders bind the C liblzma (one more C
//! library built into every static binary), and zstd's high levels come within a few percent of
//! xz's ratio on this binary while decompressing several times faster.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

/// The zstd level of an agent up to [`SMALL_AGENT`] bytes (a release build): 5.4 MB of the
/// 14.5 MB release binary in half a second here; level 19 saves 0.3 MB more for 18 s.
const ZSTD_LEVEL_SMALL: i32 = 9;
/// The zstd level of a bigger one (a debug build with debug info, as tests upload).
const ZSTD_LEVEL_BIG: i32 = 3;
/// Up to this size an agent is compressed hard.
const SMALL_AGENT: usize = 48 << 20;

/// A program to upload as the agent.
#[derive(Debug)]
pub(super) struct LocalAgent {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Their SHA-256, lowercase hex.
    pub sha256: String,
    /// Its name on hosts: `ferry-<version>-<sha256>`.
    pub name: String,
    /// Its compressed forms, made on first use.
    compressed: Mutex<HashMap<Codec, Arc<Compressed>>>,
}

/// One compressed form, made once.
type Compressed = OnceLock<Arc<Vec<u8>>>;

/// A compression the host can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Codec {
    Zstd,
    Gzip,
}

impl Codec {
    /// Best first.
    pub const ALL: [Codec; 2] = [Codec::Zstd, Codec::Gzip];

    /// The host program that decompresses it (`PROGRAM -dcq`), as the probe reports it.
    pub fn program(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    /// The partial file's extension.
    pub fn ext(self) -> &'static str {
        match self {
            Codec::Zstd => "zst",
            Codec::Gzip => "gz",
        }
    }

    fn compress(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Codec::Zstd => {
                let level =
                    if data.len() <= SMALL_AGENT { ZSTD_LEVEL_SMALL } else { ZSTD_LEVEL_BIG };
                // One thread: the same bytes every time, so a partial upload can be resumed.
                zstd::bulk::Compressor::new(level)?.compress(data)
            }
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::best(),
                );
                e.write_all(data)?;
                e.finish()
            }
        }
    }
}

/// SHA-256 of `data`, lowercase hex.
pub(super) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalAgent {
    /// The agent at `path`, read and hashed once per process.
    pub fn load(path: &Path) -> std::io::Result<Arc<LocalAgent>> {
        static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<LocalAgent>>>> = OnceLock::new();
        let loaded = LOADED.get_or_init(Default::default);
        if let Some(a) = loaded.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Ok(a.clone());
        }
        let bytes = std::fs::read(path)?;
        let sha256 = sha256_hex(&bytes);
        let name = format!("ferry-{}-{sha256}", env!("CARGO_PKG_VERSION"));
        let agent =
            Arc::new(LocalAgent { bytes, sha256, name, compressed: Mutex::new(HashMap::new()) });
        let mut loaded = loaded.lock().unwrap_or_else(|p| p.into_inner());
        Ok(loaded.entry(path.to_owned()).or_insert(agent).clone())
    }

    /// Its bytes compressed with `codec` (made by the first caller; the others wait for it).
    pub fn compressed(&self, codec: Codec) -> std::io::Result<Arc<Vec<u8>>> {
        let cell = self
            .compressed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(codec)
            .or_default()
            .clone();
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        let mut failed = None;
        let c = cell.get_or_init(|| match codec.compress(&self.bytes) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                failed = Some(e);
                Arc::new(Vec::new())
            }
        });
        match failed {
            Some(e) => {
                // Not kept: the next caller tries again.
                self.compressed.lock().unwrap_or_else(|p| p.into_inner()).remove(&codec);
                Err(e)
            }
            None => Ok(c.clone()),
        }
    }

    /// The machine architecture its ELF header names, as `uname -m` spells it (`None`: not an
    /// ELF file, or a machine not listed here).
    pub fn elf_arch(&self) -> Option<&'static str> {
        elf_arch(&self.bytes)
    }
}

/// The `uname -m` name of an ELF file's machine (`e_machine`).
pub(super) fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match bytes[5] {
        1 => u16::from_le_bytes([bytes[18], bytes[19]]),
        2 => u16::from_be_bytes([bytes[18], bytes[19]]),
        _ => return None,
    };
    Some(match (machine, bytes[4]) {
        (62, _) => "x86_64",
        (3, _) => "i686",
        (183, _) => "aarch64",
        (40, _) => "armv7l",
        (243, 2) => "riscv64",
        (22, _) => "s390x",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_executable_names_its_own_architecture() {
        let me = LocalAgent::load(&std::env::current_exe().unwrap()).unwrap();
        assert_eq!(me.elf_arch(), Some(super::super::local_arch()));
        assert_eq!(me.name.len(), "ferry-".len() + env!("CARGO_PKG_VERSION").len() + 1 + 64);
        assert!(elf_arch(b"#!/bin/sh\n").is_none());
    }

    #[test]
    fn both_codecs_round_trip() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let z = Codec::Zstd.compress(&data).unwrap();
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), data);
        let g = Codec::Gzip.compress(&data).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&g[..]), &mut out).unwrap();
        assert_eq!(out, data);
    }
}
