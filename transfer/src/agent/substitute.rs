//! A host fetching the paths it lacks from binary caches itself (a machine's
//! `substitute-from`), before the coordinator sends the rest.
//!
//! A cache is as untrusted as any peer: each path goes through the one cache reader
//! ([`crate::target::cache::CacheReader`]): its narinfo must be signed by a Nix key this host
//! trusts ([`crate::trust::nix_trusted_keys`]: `<state>/trusted-public-keys` and its own
//! `nix-signing-key.pub`), its NAR must hash to the signed hash and size, and its references
//! must be valid here already (paths are tried references first, so a closure comes in
//! order). Anything wrong with a path (no narinfo, a bad signature, a tampered NAR, a cache
//! that cannot be reached) only means that path is not substituted: it stays missing and the
//! coordinator sends it; the reason is reported. Caches are tried in their order, each for
//! the paths the earlier ones did not give.

use std::collections::BTreeSet;

use nar_core::store_path::StorePath;
use proto::session::Substituted;
use store::{Store, StoreLayout};

use crate::target::cache::{backend_for, CacheError, CacheReader};

/// The most reasons kept per cache (the rest are counted in the last one).
const MAX_REASONS: usize = 20;

/// Fetch what can be had of `wanted` (paths the store at `layout` lacks, references first)
/// from `caches`, in order. Returns what came from each cache and the paths now valid.
pub fn substitute(
    layout: &StoreLayout,
    wanted: &[StorePath],
    caches: &[String],
) -> (Vec<Substituted>, BTreeSet<StorePath>) {
    let mut reports: Vec<Substituted> =
        caches.iter().map(|c| Substituted { cache: c.clone(), ..Substituted::default() }).collect();
    let mut got = BTreeSet::new();
    let mut store = match Store::open(layout.clone()) {
        Ok(s) => s,
        Err(e) => {
            for r in &mut reports {
                r.refused.push(format!("cannot open the host's store: {e}"));
            }
            return (reports, got);
        }
    };
    let trusted = crate::trust::nix_trusted_keys(layout.state_dir());
    let mut remaining: Vec<StorePath> = wanted.to_vec();
    for report in &mut reports {
        if remaining.is_empty() {
            break;
        }
        let reader = proto::uri::Target::parse(&report.cache)
            .map_err(|e| e.to_string())
            .and_then(|uri| backend_for(&uri, false).map_err(|e| e.to_string()))
            .and_then(|b| b.ok_or_else(|| "not a binary cache".to_owned()))
            .and_then(|b| {
                CacheReader::with_backend(b, layout.store_dir().clone(), trusted.clone())
                    .map_err(|e| e.to_string())
            });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                report.refused.push(e);
                continue;
            }
        };
        let mut still = Vec::new();
        for path in remaining {
            match fetch(&reader, &mut store, &path) {
                Ok(Some((nar, file))) => {
                    report.paths += 1;
                    report.nar_bytes += nar;
                    report.file_bytes += file;
                    got.insert(path);
                }
                Ok(None) => still.push(path),
                Err(e) => {
                    refuse(report, e.to_string());
                    still.push(path);
                }
            }
        }
        remaining = still;
    }
    (reports, got)
}

/// One path from one cache: `None` when the cache lacks it or a reference is not valid here.
fn fetch(
    reader: &CacheReader,
    store: &mut Store,
    path: &StorePath,
) -> Result<Option<(u64, u64)>, CacheError> {
    let Some(info) = reader.narinfo(path)? else { return Ok(None) };
    let others: Vec<&StorePath> = info.references.iter().filter(|r| *r != path).collect();
    let valid = store.query_valid(others.iter().copied())?;
    if valid.len() != others.len() {
        return Ok(None);
    }
    reader.import_path(&info, store)?;
    Ok(Some((info.nar_size, info.file_size.unwrap_or(0))))
}

fn refuse(report: &mut Substituted, reason: String) {
    match report.refused.len() {
        n if n < MAX_REASONS => report.refused.push(reason),
        n if n == MAX_REASONS => report.refused.push("… more paths refused".into()),
        _ => {}
    }
}
