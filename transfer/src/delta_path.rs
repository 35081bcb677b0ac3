//! Delta frames in the live protocol: which bases the host offers, which one the coordinator
//! uses, how the coordinator encodes a path against it and how the agent applies it.
//!
//! The format of the data is [`crate::delta`]'s stream; the protocol side (feature `delta`,
//! [`Encoding::ZstdDelta`](crate::protocol::Encoding::ZstdDelta), `Have.bases`,
//! [`RejectReason::DeltaFailed`](crate::protocol::RejectReason::DeltaFailed), the full re-send
//! in the same session) is in [`crate::protocol`]'s module docs.
//!
//! # Base candidates (agent)
//! For each missing path, [`host_candidates`] offers up to [`MAX_CANDIDATES`] valid paths of the
//! host's store with the same name apart from hash and version ([`delta::parse_name_version`]),
//! ranked by [`delta::rank_bases`]: paths in the closure of the host's current system
//! generation (`<profiles>/system`) first, then the closest older version, NAR sizes within 4x.
//! Renamed items are not offered: the agent sees the new closure's paths but not its reference
//! graph, which [`delta::closure_counterparts`] would need.
//!
//! # Base choice and encoding (coordinator)
//! [`LocalBases::pick`] takes the first candidate valid in the local store; before `PathStart`
//! is sent, [`LocalBases::load`] rebuilds its NAR from disk and checks it against the local
//! database (a corrupt local base means a full transfer, decided before any byte goes out).
//! [`encode_path`] dumps the new path into [`delta::encode`] on a second thread.
//!
//! # Applying (agent)
//! [`apply`] looks the base up in the host's database, rebuilds and checks its NAR
//! ([`delta::VerifiedBase::rebuild`]), then decodes the stream on this thread into a bounded pipe
//! that [`closure::Store::import_nar`] restores on another thread, so the new NAR is hashed and
//! checked like any path's. Memory: the base NAR (≤ [`delta::MAX_BASE_NAR`]) plus zstd's window
//! (≤ [`delta::SEGMENT_MAX`] once segmented) plus the pipe (8 chunks).

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use closure::{ImportOutcome, PathInfo, Store, StoreError, StoreLayout};
use nar_core::hash::NarDigest;
use nar_core::store_path::StorePath;

use crate::delta::{self, DeltaError, EncodeParams, HeldPath, VerifiedBase};
use crate::protocol::QueryEntry;

/// Bases offered per missing path.
pub const MAX_CANDIDATES: usize = 3;

/// The store path the host's current system generation points to (`<profiles>/system`,
/// followed through the generation link), if any.
pub fn current_generation_root(store: &Store) -> Option<StorePath> {
    let layout = store.layout();
    let mut link: PathBuf = layout.profiles_dir().join("system");
    for _ in 0..8 {
        let target = std::fs::read_link(&link).ok()?;
        let text = target.to_string_lossy();
        if let Ok(p) = store.parse_path(&text) {
            return Some(p);
        }
        link = if target.is_absolute() {
            layout.under_root(&text)
        } else {
            link.parent()?.join(target)
        };
    }
    None
}

/// The bases the host offers for each of `missing` (see the module docs); paths without any
/// candidate are left out.
pub fn host_candidates(
    store: &Store,
    missing: &[&QueryEntry],
) -> Result<Vec<(StorePath, Vec<StorePath>)>, StoreError> {
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let current: BTreeSet<StorePath> = match current_generation_root(store) {
        Some(root) => {
            store.closure(&[root]).map(|c| c.paths().cloned().collect()).unwrap_or_default()
        }
        None => BTreeSet::new(),
    };
    let mut by_name: HashMap<String, Vec<HeldPath>> = HashMap::new();
    let mut ids: HashMap<String, StorePath> = HashMap::new();
    for info in store.db().all_path_infos()? {
        let name = info.path.name().to_owned();
        let id = info.path.base_name();
        by_name.entry(delta::parse_name_version(&name).0.to_owned()).or_default().push(HeldPath {
            name,
            id: id.clone(),
            nar_size: Some(info.nar_size),
            same_place: current.contains(&info.path),
        });
        ids.insert(id, info.path);
    }
    let mut out = Vec::new();
    for entry in missing {
        let name = entry.path.name();
        let Some(held) = by_name.get(delta::parse_name_version(name).0) else { continue };
        let ranked = delta::rank_bases(name, Some(entry.nar_size), held);
        let bases: Vec<StorePath> = ranked
            .into_iter()
            .filter_map(|r| ids.get(&r.id).cloned())
            .filter(|p| *p != entry.path)
            .take(MAX_CANDIDATES)
            .collect();
        if !bases.is_empty() {
            out.push((entry.path.clone(), bases));
        }
    }
    Ok(out)
}

/// The coordinator's view of its own store, for bases.
#[derive(Debug)]
pub struct LocalBases {
    layout: StoreLayout,
    store: Option<Store>,
}

impl LocalBases {
    /// Bases from the store at `layout` (opened read-only; without a database, no bases).
    pub fn open(layout: &StoreLayout) -> Self {
        LocalBases { layout: layout.clone(), store: Store::open_read_only(layout.clone()).ok() }
    }

    /// The first of `candidates` valid in the local store, with its NAR digest.
    pub fn pick(&self, candidates: &[StorePath]) -> Option<(StorePath, NarDigest)> {
        let store = self.store.as_ref()?;
        candidates.iter().find_map(|c| {
            let info = store.query_path_info(c).ok()??;
            (info.nar_size <= delta::MAX_BASE_NAR).then(|| (c.clone(), info.nar_digest()))
        })
    }

    /// Rebuild the base's NAR from the local store and check it against `digest`.
    pub fn load(&self, base: &StorePath, digest: &NarDigest) -> Result<VerifiedBase, DeltaError> {
        VerifiedBase::rebuild(&self.layout.physical_path(base), digest)
    }
}

/// Encode the path at `new_path` (`new_size` NAR bytes) against `base`, segment `i` at zstd level
/// `level_for(i, done)` ([`delta::encode_with_levels`]), writing the delta stream to `out`. The NAR is dumped on a second thread into a bounded pipe.
pub fn encode_path<W: Write>(
    base: &VerifiedBase,
    new_path: &std::path::Path,
    new_size: u64,
    level_for: &mut dyn FnMut(usize, &delta::EncodeStats) -> i32,
    out: W,
) -> Result<delta::EncodeStats, DeltaError> {
    let (writer, receiver) = nar_core::pipe::chunk_pipe(8);
    std::thread::scope(|scope| {
        let dumper = scope.spawn(move || {
            let mut w = BufWriter::with_capacity(256 << 10, writer);
            nar_core::dump::dump(new_path, &mut w).map(|_| ())?;
            w.flush().map_err(nar_core::dump::DumpError::Write)
        });
        let mut reader = receiver.into_reader();
        let stats = delta::encode_with_levels(
            base.nar(),
            base.digest(),
            &mut reader,
            new_size,
            &EncodeParams::default(),
            out,
            level_for,
        );
        drop(reader);
        let dumped = dumper.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        match (stats, dumped) {
            (Ok(s), Ok(())) => Ok(s),
            // The dump's own error explains a short or broken stream better.
            (Err(_), Err(e)) | (Ok(_), Err(e)) => Err(DeltaError::Io(io::Error::other(format!(
                "dumping {}: {e}",
                new_path.display()
            )))),
            (Err(e), Ok(())) => Err(e),
        }
    })
}

/// Why [`apply`] did not import the path.
#[derive(Debug)]
pub enum ApplyError {
    /// The delta failed (base missing or corrupt, bad stream, wrong result): send in full.
    Delta(String),
    /// The store refused the path as it would a full transfer (reference missing, IO).
    Store(StoreError),
}

/// Apply the delta stream read from `data` to the host's `base` and import the result as
/// `info`. The caller drains what is left of `data`.
pub fn apply<R: Read>(
    store: &mut Store,
    info: &PathInfo,
    base: &StorePath,
    data: &mut R,
) -> Result<ImportOutcome, ApplyError> {
    let abs = base.to_absolute(store.store_dir());
    let base_info = match store.query_path_info(base) {
        Ok(Some(i)) => i,
        Ok(None) => return Err(ApplyError::Delta(format!("delta base {abs} is not valid here"))),
        Err(e) => return Err(ApplyError::Store(e)),
    };
    let verified = VerifiedBase::rebuild(&store.physical_path(base), &base_info.nar_digest())
        .map_err(|e| ApplyError::Delta(e.to_string()))?;
    // References first, as a full transfer would: no point decoding for a path that cannot land.
    for r in info.references_except_self() {
        if !store.is_valid(r).map_err(ApplyError::Store)? {
            return Err(ApplyError::Store(StoreError::ReferenceNotValid {
                path: info.path.to_absolute(store.store_dir()),
                reference: r.to_absolute(store.store_dir()),
            }));
        }
    }
    let (writer, receiver) = nar_core::pipe::chunk_pipe(8);
    let expected = info.nar_digest();
    let (decoded, imported) = std::thread::scope(|scope| {
        let importer = scope.spawn(move || {
            let mut reader = receiver.into_reader();
            store.import_nar(info, &mut reader)
        });
        let mut w = BufWriter::with_capacity(256 << 10, writer);
        let decoded = delta::decode_verified(&verified, &mut *data, &mut w, &expected)
            .and_then(|d| w.flush().map(|()| d).map_err(DeltaError::Io));
        drop(w);
        let imported = importer.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (decoded, imported)
    });
    match (decoded, imported) {
        (Ok(_), Ok(outcome)) => Ok(outcome),
        (_, Err(e @ StoreError::ReferenceNotValid { .. })) => Err(ApplyError::Store(e)),
        // The importer stopped reading: its error is the cause.
        (Err(DeltaError::Io(_)), Err(e)) => Err(ApplyError::Store(e)),
        (Err(e), _) => Err(ApplyError::Delta(format!("applying the delta against {abs}: {e}"))),
        (Ok(_), Err(e)) => Err(ApplyError::Store(e)),
    }
}
