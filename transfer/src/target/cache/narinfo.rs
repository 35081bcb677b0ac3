//! The two text files of a binary cache: a path's `.narinfo` ([`NarInfo`]) and the cache's
//! `nix-cache-info` ([`CacheInfo`]), byte for byte as Nix writes them and parsed strictly (the
//! formats are described in the [parent module](super)).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use closure::PathInfo;
use nar_core::hash::{NarDigest, Sha256Hash};
use nar_core::store_path::{StoreDir, StorePath, StorePathError};
use signing::nix::{fingerprint, Signature, SigningKey, VerifyingKey};

use std::io::Read;
use std::path::PathBuf;

use super::{io_err, Backend, CacheError, CACHE_INFO_FILE};

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
        let url = get("URL")?;
        // A key under the cache's root, whatever the backend: never outside it.
        if url.is_empty()
            || url.starts_with('/')
            || url.contains('\\')
            || url.contains('?')
            || url.contains('#')
            || url.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            || url.chars().any(|c| c.is_control())
        {
            return Err(err(format!(
                "URL {:?} is not a relative key inside the cache",
                proto::text::peer_text(url, 200)
            )));
        }
        Ok(NarInfo {
            path,
            url: url.to_owned(),
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

    /// The cache's `nix-cache-info`, `None` when it has none.
    pub fn read(backend: &dyn Backend) -> Result<Option<CacheInfo>, CacheError> {
        let Some(mut reader) = backend.get(CACHE_INFO_FILE)? else { return Ok(None) };
        let file = PathBuf::from(backend.locate(CACHE_INFO_FILE));
        let mut text = String::new();
        // A few lines; more than 64 KiB is not a nix-cache-info.
        (&mut reader).take(64 << 10).read_to_string(&mut text).map_err(io_err("read", &file))?;
        Ok(Some(CacheInfo::parse(&text, &file)?))
    }
}
