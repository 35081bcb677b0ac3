//! Bases for deltas: how they are ranked (pure: [`rank_bases`], [`closure_counterparts`]), which
//! ones the host offers, which one the coordinator uses, how the coordinator encodes a path against it and how the agent applies it.
//!
//! The format of the data is [`super::stream`]; the protocol side (feature `delta`,
//! [`Encoding::ZstdDelta`](proto::frame::Encoding::ZstdDelta), `Have.bases`,
//! [`RejectReason::DeltaFailed`](proto::frame::RejectReason::DeltaFailed), the full re-send
//! in the same session) is in [`proto::frame`]'s module docs.
//!
//! # Base candidates (agent)
//! For each missing path, [`host_candidates`] offers up to [`MAX_CANDIDATES`] valid paths of the
//! host's store, ranked by [`rank_bases`]:
//! 1. the path at the **same place** in the closure of the host's current system generation
//!    (`<profiles>/system`), whatever its name — found only when the `Query` carries the
//!    reference graph (feature `graph`);
//! 2. paths with the same name apart from hash and version ([`parse_name_version`]) in
//!    that closure;
//! 3. other paths with the same name.
//!
//! Within a class the closest older version wins, then the closest newer one; NAR sizes more
//! than 4x apart drop a candidate (so a wrong pairing costs little).
//!
//! *Same place*: the queried closure and the generation's closure are walked together from
//! their roots ([`closure_counterparts`]): the queried closure's roots (entries that no
//! other entry references) hang under a virtual root paired with a virtual root above the
//! generation, so one queried root pairs with the generation whatever its name. Below a
//! matched pair, references pair by name apart from version (a name occurring once on each
//! side), then a single reference left unmatched on each side pairs with the other: a renamed
//! package (`libfoo-1.0` → `libbar-1.1`) in the same position. The graph costs the `Query`
//! 4 bytes per reference and 4 per path; without it (older coordinator, `--no-delta`) only
//! classes 2 and 3 are offered.

//! # Base choice and encoding (coordinator)
//! [`LocalBases::pick`] takes the first candidate valid in the local store; before `PathStart`
//! is sent, [`LocalBases::load`] rebuilds its NAR from disk and checks it against the local
//! database (a corrupt local base means a full transfer, decided before any byte goes out).
//! [`encode_path`] dumps the new path into [`stream::encode`] on a second thread.
//!
//! # Applying (agent)
//! [`apply`] looks the base up in the host's database ([`prepare`]), rebuilds and checks its NAR
//! ([`stream::VerifiedBase::rebuild`]), then decodes the stream on this thread into a bounded pipe
//! that [`store::Store::import_nar`] restores on another thread ([`apply_verified`]), so the new
//! NAR is hashed and checked like any path's. For a host whose store is Nix's
//! ([`crate::agent::nix_store`]) the bases are Nix's own paths, read in place and checked
//! against the NAR hash in Nix's database (opened read only); a base modified in place fails
//! that check, and the path is sent again in full. The new NAR goes to `nix-store --serve`
//! instead of the ferry store. Memory: the base NAR (≤ [`stream::MAX_BASE_NAR`]) plus zstd's window
//! (≤ [`stream::SEGMENT_MAX`] once segmented) plus the pipe (8 chunks).

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use store::{ImportOutcome, Store, StoreError, StoreLayout};

use closure::{PathInfo, ValidatedClosure};
use nar_core::hash::NarDigest;
use nar_core::store_path::StorePath;

use super::stream::{self, DeltaError, EncodeParams, VerifiedBase};
use proto::frame::QueryEntry;

/// Bases offered per missing path.
pub const MAX_CANDIDATES: usize = 3;

/// The store path the host's current system generation points to (`<profiles>/system`,
/// followed through the generation link), if any. For a Nix store read in place, the profile
/// is Nix's (`<root>/nix/var/nix/profiles/system`, where NixOS and ferry's deploy of a Nix
/// system keep it).
pub fn current_generation_root(store: &Store) -> Option<StorePath> {
    let layout = store.layout();
    let profiles = match layout.database().0 {
        store::DbKind::Nix => layout.under_root("/nix/var/nix/profiles"),
        _ => layout.profiles_dir(),
    };
    let mut link: PathBuf = profiles.join("system");
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

/// The bases the host offers for each path of the `Query` `entries` that is not in `valid`
/// (see the module docs); paths without any candidate are left out.
pub fn host_candidates(
    store: &Store,
    entries: &[QueryEntry],
    valid: &BTreeSet<StorePath>,
) -> Result<Vec<(StorePath, Vec<StorePath>)>, StoreError> {
    if entries.iter().all(|e| valid.contains(&e.path)) {
        return Ok(Vec::new());
    }
    let generation = current_generation_root(store)
        .and_then(|root| Some((store.closure(std::slice::from_ref(&root)).ok()?, root)));
    let current: BTreeSet<&StorePath> =
        generation.as_ref().map(|(c, _)| c.paths().collect()).unwrap_or_default();
    let counterparts = match &generation {
        Some((closure, root)) if entries.iter().any(|e| !e.references.is_empty()) => {
            same_place(entries, closure, root)
        }
        _ => HashMap::new(),
    };
    let mut by_name: HashMap<String, Vec<HeldPath>> = HashMap::new();
    let mut ids: HashMap<String, (StorePath, u64)> = HashMap::new();
    for info in store.db().all_path_infos()? {
        let name = info.path.name().to_owned();
        let id = info.path.base_name();
        by_name.entry(parse_name_version(&name).0.to_owned()).or_default().push(HeldPath {
            name,
            id: id.clone(),
            nar_size: Some(info.nar_size),
            same_place: false,
            in_generation: current.contains(&info.path),
        });
        ids.insert(id, (info.path, info.nar_size));
    }
    let mut out = Vec::new();
    for entry in entries.iter().filter(|e| !valid.contains(&e.path)) {
        let name = entry.path.name();
        let mut held: Vec<HeldPath> =
            by_name.get(parse_name_version(name).0).cloned().unwrap_or_default();
        if let Some(counterpart) = counterparts.get(&entry.path) {
            let id = counterpart.base_name();
            match held.iter_mut().find(|h| h.id == id) {
                Some(h) => h.same_place = true,
                None => held.push(HeldPath {
                    name: counterpart.name().to_owned(),
                    nar_size: ids.get(&id).map(|(_, size)| *size),
                    id,
                    same_place: true,
                    in_generation: true,
                }),
            }
        }
        let ranked = rank_bases(name, Some(entry.nar_size), &held);
        let bases: Vec<StorePath> = ranked
            .into_iter()
            .filter_map(|r| ids.get(&r.id).map(|(p, _)| p.clone()))
            .filter(|p| *p != entry.path)
            .take(MAX_CANDIDATES)
            .collect();
        if !bases.is_empty() {
            out.push((entry.path.clone(), bases));
        }
    }
    Ok(out)
}

/// Pair each path of the queried closure with the path at the same place in `generation` (the
/// closure of the host's current generation, rooted at `root`), by
/// [`closure_counterparts`]. The queried closure's roots (entries no other entry
/// references) hang under a virtual root paired with one above `root`, so a single root pairs
/// with `root` whatever its name, and several roots pair by name.
fn same_place(
    entries: &[QueryEntry],
    generation: &ValidatedClosure,
    root: &StorePath,
) -> HashMap<StorePath, StorePath> {
    const TOP: &str = "";
    let ids: Vec<String> = entries.iter().map(|e| e.path.base_name()).collect();
    let mut referenced = vec![false; entries.len()];
    let mut new_refs: HashMap<String, Vec<String>> = HashMap::with_capacity(entries.len() + 1);
    for (id, e) in ids.iter().zip(entries) {
        let refs = e.references.iter().filter_map(|&i| ids.get(i as usize)).cloned().collect();
        for &i in &e.references {
            if let Some(r) = referenced.get_mut(i as usize) {
                *r = true;
            }
        }
        new_refs.insert(id.clone(), refs);
    }
    let roots = ids.iter().zip(&referenced).filter(|(_, r)| !**r).map(|(id, _)| id.clone());
    new_refs.insert(TOP.to_owned(), roots.collect());
    let mut old_refs: HashMap<String, Vec<String>> = generation
        .iter()
        .map(|i| (i.path.base_name(), i.references_except_self().map(|r| r.base_name()).collect()))
        .collect();
    old_refs.insert(TOP.to_owned(), vec![root.base_name()]);
    fn name_of(id: &str) -> &str {
        id.split_once('-').map_or("", |(_, name)| name)
    }
    let pairs = closure_counterparts(TOP, &old_refs, TOP, &new_refs, name_of);
    let old_paths: HashMap<String, &StorePath> =
        generation.paths().map(|p| (p.base_name(), p)).collect();
    let new_paths: HashMap<&str, &StorePath> =
        ids.iter().map(String::as_str).zip(entries.iter().map(|e| &e.path)).collect();
    pairs
        .into_iter()
        .filter_map(|(n, o)| Some(((*new_paths.get(n)?).clone(), (*old_paths.get(o)?).clone())))
        .collect()
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
            (info.nar_size <= stream::MAX_BASE_NAR).then(|| (c.clone(), info.nar_digest()))
        })
    }

    /// Rebuild the base's NAR from the local store and check it against `digest`.
    pub fn load(&self, base: &StorePath, digest: &NarDigest) -> Result<VerifiedBase, DeltaError> {
        VerifiedBase::rebuild(&self.layout.physical_path(base), digest)
    }
}

/// Encode the path at `new_path` (`new_size` NAR bytes) against `base`, segment `i` at zstd level
/// `level_for(i, done)` ([`stream::encode_with_levels`]), writing the delta stream to `out`. The NAR is dumped on a second thread into a bounded pipe.
pub fn encode_path<W: Write>(
    base: &VerifiedBase,
    new_path: &std::path::Path,
    new_size: u64,
    level_for: &mut dyn FnMut(usize, &stream::EncodeStats) -> i32,
    out: W,
) -> Result<stream::EncodeStats, DeltaError> {
    let (writer, receiver) = nar_core::pipe::chunk_pipe(8);
    std::thread::scope(|scope| {
        let dumper = scope.spawn(move || {
            let mut w = BufWriter::with_capacity(256 << 10, writer);
            nar_core::dump::dump(new_path, &mut w).map(|_| ())?;
            w.flush().map_err(nar_core::dump::DumpError::Write)
        });
        let mut reader = receiver.into_reader();
        let stats = stream::encode_with_levels(
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
/// `info` into `store`. The caller drains what is left of `data`.
pub fn apply<R: Read>(
    store: &mut Store,
    info: &PathInfo,
    base: &StorePath,
    data: &mut R,
) -> Result<ImportOutcome, ApplyError> {
    let verified = prepare(store, info, base)?;
    let abs = base.to_absolute(store.store_dir());
    apply_verified(&verified, &abs, info, data, |reader| store.import_nar(info, reader))
}

/// The host's `base` for the delta of `info`: looked up in `store`'s database (a Nix host's
/// own database, read only, for the agent that hands paths to Nix), its NAR rebuilt from the
/// files in place and checked against the hash recorded there; and `info`'s references, which
/// must be valid before anything is decoded (as for a full transfer).
pub fn prepare(
    store: &Store,
    info: &PathInfo,
    base: &StorePath,
) -> Result<VerifiedBase, ApplyError> {
    let abs = base.to_absolute(store.store_dir());
    let base_info = match store.query_path_info(base) {
        Ok(Some(i)) => i,
        Ok(None) => return Err(ApplyError::Delta(format!("delta base {abs} is not valid here"))),
        Err(e) => return Err(ApplyError::Store(e)),
    };
    let verified = VerifiedBase::rebuild(&store.physical_path(base), &base_info.nar_digest())
        .map_err(|e| ApplyError::Delta(e.to_string()))?;
    references_valid(store, info).map_err(ApplyError::Store)?;
    Ok(verified)
}

/// `Ok` when every reference of `info` (but itself) is valid in `store`.
pub fn references_valid(store: &Store, info: &PathInfo) -> Result<(), StoreError> {
    for r in info.references_except_self() {
        if !store.is_valid(r)? {
            return Err(StoreError::ReferenceNotValid {
                path: info.path.to_absolute(store.store_dir()),
                reference: r.to_absolute(store.store_dir()),
            });
        }
    }
    Ok(())
}

/// Decode the delta stream read from `data` against `verified` (the base `base_name`) on this
/// thread, into a bounded pipe that `import` reads on another thread: it lands the new NAR
/// (and checks it against `info`, as any path's).
pub fn apply_verified<R: Read>(
    verified: &VerifiedBase,
    base_name: &str,
    info: &PathInfo,
    data: &mut R,
    import: impl FnOnce(&mut dyn io::BufRead) -> Result<ImportOutcome, StoreError> + Send,
) -> Result<ImportOutcome, ApplyError> {
    let (writer, receiver) = nar_core::pipe::chunk_pipe(8);
    let expected = info.nar_digest();
    let (decoded, imported) = std::thread::scope(|scope| {
        let importer = scope.spawn(move || {
            let mut reader = receiver.into_reader();
            import(&mut reader)
        });
        let mut w = BufWriter::with_capacity(256 << 10, writer);
        let decoded = stream::decode_verified(verified, &mut *data, &mut w, &expected)
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
        (Err(e), _) => {
            Err(ApplyError::Delta(format!("applying the delta against {base_name}: {e}")))
        }
        (Ok(_), Err(e)) => Err(ApplyError::Store(e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Base selection (pure).

/// Split a store path name into name and version as Nix's `parseDrvName` does: the version
/// starts after the first `-` that is followed by a character that is not a letter.
/// `"foo-1.2.3"` → `("foo", "1.2.3")`; `"foo-bar-2"` → `("foo-bar", "2")`; `"foo"` → `("foo", "")`.
pub fn parse_name_version(full: &str) -> (&str, &str) {
    let b = full.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'-' && i + 1 < b.len() && !b[i + 1].is_ascii_alphabetic() {
            return (&full[..i], &full[i + 1..]);
        }
    }
    (full, "")
}

/// Nix's `compareVersions`: components split at `.`/`-`, numbers compare numerically, `pre`
/// sorts before anything, a number sorts after a string, the empty component before a number.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn next(s: &str) -> (&str, &str) {
        let s = s.trim_start_matches(['.', '-']);
        if s.is_empty() {
            return ("", "");
        }
        let digit = s.as_bytes()[0].is_ascii_digit();
        let end = s
            .find(|c: char| c == '.' || c == '-' || c.is_ascii_digit() != digit)
            .unwrap_or(s.len());
        (&s[..end], &s[end..])
    }
    fn lt(c1: &str, c2: &str) -> bool {
        let n1 = c1.parse::<u128>().ok().filter(|_| !c1.is_empty());
        let n2 = c2.parse::<u128>().ok().filter(|_| !c2.is_empty());
        match (n1, n2) {
            (Some(x), Some(y)) => x < y,
            _ if c1.is_empty() && n2.is_some() => true,
            _ if c1 == "pre" && c2 != "pre" => true,
            _ if c2 == "pre" => false,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => c1 < c2,
        }
    }
    let (mut x, mut y) = (a, b);
    while !x.is_empty() || !y.is_empty() {
        let (c1, r1) = next(x);
        let (c2, r2) = next(y);
        if lt(c1, c2) {
            return Ordering::Less;
        }
        if lt(c2, c1) {
            return Ordering::Greater;
        }
        x = r1;
        y = r2;
    }
    Ordering::Equal
}

/// A path the host holds, offered as a possible base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPath {
    /// The store path name (after the hash part), e.g. `libreoffice-core-7.4.7`.
    pub name: String,
    /// An identifier the caller uses for it (base name or full path).
    pub id: String,
    /// Its NAR size, if known.
    pub nar_size: Option<u64>,
    /// It sits at the same place in the closure of the host's current generation as the missing
    /// path does in the new one (see [`closure_counterparts`]).
    pub same_place: bool,
    /// It is in the closure of the host's current generation.
    pub in_generation: bool,
}

/// Why a candidate was ranked where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BaseReason {
    /// Same place in the current generation's closure and same name.
    SamePlaceSameName,
    /// Same place in the current generation's closure, another name (a rename).
    SamePlace,
    /// Same name apart from hash and version, in the current generation's closure.
    SameNameInGeneration,
    /// Same name apart from hash and version, elsewhere in the store.
    SameName,
}

/// A ranked base candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedBase {
    /// [`HeldPath::id`].
    pub id: String,
    /// Why it is a candidate.
    pub reason: BaseReason,
}

/// Rank the host's held paths as delta bases for the missing path named `missing_name` (the
/// part after the hash), best first. Candidates are: the same name apart from hash and version,
/// and whatever sits at the same place in the closure of the host's current generation. Classes
/// rank in [`BaseReason`]'s order: the same-place counterpart first (same name, then renamed),
/// then same-name paths of the current generation, then other same-name paths. Within a class
/// the closest older version wins, then the closest newer one; NAR sizes
/// (when both known) off by more than 4x drop a candidate, and sizes closer to the missing one
/// break ties. Identical names (same version, other hash: a rebuild) rank first of their class.
pub fn rank_bases(
    missing_name: &str,
    missing_nar_size: Option<u64>,
    held: &[HeldPath],
) -> Vec<RankedBase> {
    use std::cmp::Ordering;
    let (name, version) = parse_name_version(missing_name);
    let mut c: Vec<(BaseReason, u8, &str, u64, &HeldPath)> = Vec::new();
    for h in held {
        if let (Some(a), Some(b)) = (missing_nar_size, h.nar_size) {
            let (lo, hi) = (a.min(b), a.max(b));
            if hi > lo.saturating_mul(4).max(4096) {
                continue;
            }
        }
        let (hn, hv) = parse_name_version(&h.name);
        let same_name = hn == name;
        let reason = match (h.same_place, same_name, h.in_generation) {
            (true, true, _) => BaseReason::SamePlaceSameName,
            (true, false, _) => BaseReason::SamePlace,
            (false, true, true) => BaseReason::SameNameInGeneration,
            (false, true, false) => BaseReason::SameName,
            (false, false, _) => continue,
        };
        // 0: same version (rebuild), 1: older, 2: newer.
        let side = match compare_versions(hv, version) {
            Ordering::Equal => 0,
            Ordering::Less => 1,
            Ordering::Greater => 2,
        };
        let size_gap = match (missing_nar_size, h.nar_size) {
            (Some(a), Some(b)) => a.abs_diff(b),
            _ => u64::MAX,
        };
        c.push((reason, side, hv, size_gap, h));
    }
    c.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then_with(|| match a.1 {
                // older: the newest of the older ones first; newer: the oldest first.
                1 => compare_versions(b.2, a.2),
                2 => compare_versions(a.2, b.2),
                _ => Ordering::Equal,
            })
            .then(a.3.cmp(&b.3))
            .then(a.4.id.cmp(&b.4.id))
    });
    c.into_iter().map(|(reason, _, _, _, h)| RankedBase { id: h.id.clone(), reason }).collect()
}

/// Pair the paths of a new closure with the paths at the same place in an old closure.
///
/// Both closures are given as `path → references` with a root. Starting from the roots, a
/// matched pair's references are paired by name without version (when that name occurs once on
/// each side) and, failing that, a single unmatched reference left on each side is paired.
/// Returns `new path → old path` for every pair found (the roots included). Paths are any
/// identifiers; names are read with `name_of`.
pub fn closure_counterparts<'a>(
    old_root: &'a str,
    old_refs: &'a HashMap<String, Vec<String>>,
    new_root: &'a str,
    new_refs: &'a HashMap<String, Vec<String>>,
    name_of: impl Fn(&str) -> &str,
) -> HashMap<&'a str, &'a str> {
    let mut pairs: HashMap<&str, &str> = HashMap::new();
    let mut queue = vec![(new_root, old_root)];
    pairs.insert(new_root, old_root);
    static EMPTY: Vec<String> = Vec::new();
    while let Some((n, o)) = queue.pop() {
        let nr = new_refs.get(n).unwrap_or(&EMPTY);
        let or = old_refs.get(o).unwrap_or(&EMPTY);
        let key = |p: &str| parse_name_version(name_of(p)).0.to_owned();
        let mut by_name: HashMap<String, Vec<&str>> = HashMap::new();
        for r in or.iter().filter(|r| r.as_str() != o) {
            by_name.entry(key(r)).or_default().push(r);
        }
        let mut new_by_name: HashMap<String, usize> = HashMap::new();
        for r in nr.iter().filter(|r| r.as_str() != n) {
            *new_by_name.entry(key(r)).or_default() += 1;
        }
        let mut unmatched_new = Vec::new();
        let mut used_old: std::collections::HashSet<&str> = Default::default();
        for r in nr.iter().filter(|r| r.as_str() != n) {
            if pairs.contains_key(r.as_str()) {
                continue;
            }
            let k = key(r);
            match by_name.get(&k) {
                Some(v) if v.len() == 1 && new_by_name[&k] == 1 => {
                    pairs.insert(r, v[0]);
                    used_old.insert(v[0]);
                    queue.push((r, v[0]));
                }
                _ => unmatched_new.push(r.as_str()),
            }
        }
        let unmatched_old: Vec<&str> = or
            .iter()
            .map(String::as_str)
            .filter(|r| *r != o && !used_old.contains(r) && by_name[&key(r)].len() == 1)
            .filter(|r| !new_by_name.contains_key(&key(r)))
            .collect();
        if unmatched_new.len() == 1 && unmatched_old.len() == 1 {
            pairs.insert(unmatched_new[0], unmatched_old[0]);
            queue.push((unmatched_new[0], unmatched_old[0]));
        }
    }
    pairs
}
