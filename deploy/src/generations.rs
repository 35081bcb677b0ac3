//! System generations on a host root (used by the agent on the host and by `local` machines).
//!
//! # Layout (under the host's root `R`)
//!
//! ```text
//! R/var/ferry/profiles/system-1-link  -> /gnu/store/…-system     (one per generation)
//! R/var/ferry/profiles/system-2-link  -> /gnu/store/…-system
//! R/var/ferry/profiles/system         -> system-2-link            (the current generation)
//! R/var/ferry/current-system          -> /gnu/store/…-system     (the activated system)
//! R/var/ferry/failed/var_ferry_profiles_system-2-link             (why 2 failed, and its target)
//! ```
//!
//! A system built by Nix or Guix has its generations in the profile the deployment names
//! ([`Profiles::at`], e.g. `R/nix/var/nix/profiles/system` with `system-N-link` beside it, as
//! Nix and Guix name them); there is no `current-system` link: its switch command does that.
//!
//! - A new generation gets N = **highest existing + 1**, never current + 1, so a generation is
//!   never overwritten after a rollback (unlike Guix, guix-spec §5 and §8 item 6). The link is
//!   created with `symlink(2)`, which fails rather than replaces: two writers cannot take the same
//!   number.
//! - `system` and `current-system` are switched **atomically**: a symlink is made at a temporary
//!   name in the same folder, then `rename(2)`d over the old one.
//! - Generation links point at the store item *as seen on the host*: the logical path
//!   (`/gnu/store/…`) when the root is `/`, else the physical path under the root, so links can be
//!   followed on a test root. Readers accept absolute logical, absolute physical and relative
//!   targets, for both the generation links and `system` (Guix writes `system` absolute after a
//!   deploy and relative after a rollback).
//! - A generation's time is the modification time of its link.
//! - A generation whose activation failed (and was rolled back, or could not be) is **marked
//!   failed**: a file `.system-N-link.failed` beside its link holds the reason, one line
//!   ([`Profiles::mark_failed`]; hidden, so neither Nix nor Guix take it for a generation).
//!   `--list-generations` shows the mark, and a rollback never returns to a failed generation
//!   ([`previous_generation`]).

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Name of ferry's profile inside its profiles folder.
pub const PROFILE_NAME: &str = "system";

/// Errors of generation operations, each naming the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerationError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: io::Error },
    #[error("generation {0} does not exist")]
    NoSuchGeneration(u64),
    #[error("cannot roll back: there is no generation before generation {0}")]
    NoPrevious(u64),
    #[error("cannot roll back: no current generation (nothing was deployed to this host)")]
    NoCurrent,
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> GenerationError + 'p {
    move |source| GenerationError::Io { op, path: path.display().to_string(), source }
}

/// One generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub number: u64,
    /// `R/var/ferry/profiles/system-N-link`.
    pub link: PathBuf,
    /// The system it points at, as a path that can be followed on this machine.
    pub system: PathBuf,
    /// Modification time of the link.
    pub time: SystemTime,
    /// True for the generation `system` points at.
    pub current: bool,
    /// Why its activation failed, when it did (see [`Profiles::mark_failed`]).
    pub failed: Option<String>,
}

/// The system profile of one host root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profiles {
    root: PathBuf,
    /// The folder holding the profile and its generation links (under the root).
    dir: PathBuf,
    /// The profile's name: `NAME` and `NAME-N-link`.
    name: String,
    /// ferry's own profile (which has a `current-system` link).
    ferry: bool,
}

impl Profiles {
    /// ferry's profile of the host whose root is `root` (`/` on a real host).
    pub fn new(root: impl Into<PathBuf>) -> Profiles {
        let root = root.into();
        let dir = root.join("var/ferry/profiles");
        Profiles { root, dir, name: PROFILE_NAME.to_owned(), ferry: true }
    }

    /// The profile `profile` (an absolute path on the host, as `/nix/var/nix/profiles/system`)
    /// of the host whose root is `root`: generations `PROFILE-N-link` beside it, no
    /// `current-system` link.
    pub fn at(root: impl Into<PathBuf>, profile: &Path) -> Profiles {
        let mut p = Profiles::new(root);
        let on_host = p.on_host(profile);
        p.dir = on_host.parent().map_or_else(|| p.root.clone(), Path::to_owned);
        p.name = profile.file_name().map_or_else(String::new, |n| n.to_string_lossy().into());
        p.ferry = false;
        p
    }

    /// The host root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `R/var/ferry/profiles` (the profile's folder).
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// `R/var/ferry/profiles/system` (the profile).
    pub fn profile_link(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// `R/var/ferry/current-system` (`None` for a Nix or Guix profile).
    pub fn current_system_link(&self) -> Option<PathBuf> {
        self.ferry.then(|| self.root.join("var/ferry/current-system"))
    }

    /// `R/var/ferry/profiles/system-N-link`.
    pub fn generation_link(&self, n: u64) -> PathBuf {
        self.dir.join(self.link_name(n))
    }

    fn link_name(&self, n: u64) -> String {
        format!("{}-{n}-link", self.name)
    }

    /// `R/var/ferry/failed/<the link's path under the root, `_` for `/`>`: the mark of a failed
    /// generation, in ferry's own state and never beside the links (Nix reads any
    /// `NAME-N-link…` name in a profile directory as a generation).
    fn failed_mark(&self, n: u64) -> PathBuf {
        let link = self.generation_link(n);
        let under_root = link.strip_prefix(&self.root).unwrap_or(&link);
        let name = under_root.to_string_lossy().trim_start_matches('/').replace('/', "_");
        self.root.join("var/ferry/failed").join(name)
    }

    /// Mark generation `n` failed: the reason (its lines joined) and the link's target. Listings
    /// show it, and a rollback skips it.
    pub fn mark_failed(&self, n: u64, reason: &str) -> Result<(), GenerationError> {
        let mark = self.failed_mark(n);
        if let Some(dir) = mark.parent() {
            fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        }
        let link = self.generation_link(n);
        let target = fs::read_link(&link).map_err(io_err("cannot read link", &link))?;
        let line = reason.lines().collect::<Vec<_>>().join(" ");
        fs::write(&mark, format!("{line}\n{}\n", target.display()))
            .map_err(io_err("cannot write", &mark))
    }

    /// The reason generation `n` failed, if it is marked. The mark names the link's target: a
    /// mark left by a removed generation of the same number does not apply.
    fn failure(&self, n: u64) -> Option<String> {
        let text = fs::read_to_string(self.failed_mark(n)).ok()?;
        let target = fs::read_link(self.generation_link(n)).ok()?;
        let (reason, marked) = text.trim_end().split_once('\n')?;
        (Path::new(marked) == target).then(|| reason.to_owned())
    }

    /// A logical absolute path (`/gnu/store/…`) as seen on this machine: under the root.
    pub fn on_host(&self, logical: &Path) -> PathBuf {
        if self.root == Path::new("/") {
            return logical.to_owned();
        }
        match logical.strip_prefix("/") {
            Ok(rest) if !logical.starts_with(&self.root) => self.root.join(rest),
            _ => logical.to_owned(),
        }
    }

    /// Resolve a link's target read from `link` (absolute logical, absolute physical, or
    /// relative to the link's folder).
    fn resolve_target(&self, link: &Path, target: &Path) -> PathBuf {
        if target.is_absolute() {
            self.on_host(target)
        } else {
            let base = link.parent().unwrap_or(Path::new("/"));
            normalize(&base.join(target))
        }
    }

    /// Generation numbers present, sorted.
    pub fn numbers(&self) -> Result<Vec<u64>, GenerationError> {
        let dir = self.dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot list", &dir)(e)),
        };
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            if let Some(n) = parse_link_name(&self.name, &entry.file_name().to_string_lossy()) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The current generation number (from `system`'s target), if any.
    pub fn current(&self) -> Result<Option<u64>, GenerationError> {
        let link = self.profile_link();
        match fs::read_link(&link) {
            Ok(target) => Ok(target
                .file_name()
                .and_then(|n| parse_link_name(&self.name, &n.to_string_lossy()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read link", &link)(e)),
        }
    }

    /// One generation.
    pub fn generation(&self, n: u64) -> Result<Generation, GenerationError> {
        let link = self.generation_link(n);
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(GenerationError::NoSuchGeneration(n))
            }
            Err(e) => return Err(io_err("cannot read link", &link)(e)),
        };
        let time = fs::symlink_metadata(&link)
            .and_then(|m| m.modified())
            .map_err(io_err("cannot stat", &link))?;
        let system = self.resolve_target(&link, &target);
        let current = self.current()? == Some(n);
        Ok(Generation { number: n, link, system, time, current, failed: self.failure(n) })
    }

    /// Every generation, oldest first.
    pub fn list(&self) -> Result<Vec<Generation>, GenerationError> {
        let current = self.current()?;
        let mut out = Vec::new();
        for n in self.numbers()? {
            match self.generation(n) {
                Ok(mut g) => {
                    g.current = current == Some(n);
                    out.push(g);
                }
                // Removed between listing and reading: skip.
                Err(GenerationError::NoSuchGeneration(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The generation before `n` among those present that did not fail (holes and failed
    /// generations are skipped).
    pub fn previous_of(&self, n: u64) -> Result<Option<u64>, GenerationError> {
        let numbers = self.numbers()?;
        Ok(previous_generation(n, numbers.into_iter().map(|m| (m, self.failure(m).is_some()))))
    }

    /// The generation before the current one.
    #[cfg(test)] // the tests' view of the profile
    pub fn previous(&self) -> Result<Option<Generation>, GenerationError> {
        let Some(cur) = self.current()? else { return Ok(None) };
        match self.previous_of(cur)? {
            Some(p) => Ok(Some(self.generation(p)?)),
            None => Ok(None),
        }
    }

    /// Create `system-N-link` → `system` with N = highest + 1 (the profile is not switched).
    /// `system` is written as given: pass the path as seen on the host (see [`Self::on_host`]).
    pub fn add(&self, system: &Path) -> Result<u64, GenerationError> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let mut n = self.numbers()?.last().copied().unwrap_or(0) + 1;
        loop {
            let link = self.generation_link(n);
            match std::os::unix::fs::symlink(system, &link) {
                Ok(()) => {
                    sync_dir(&dir)?;
                    return Ok(n);
                }
                // Taken by a concurrent writer: take the next one, never overwrite.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io_err("cannot create", &link)(e)),
            }
        }
    }

    /// Point `system` at generation `n` (relative target `system-N-link`), atomically.
    pub fn switch_to(&self, n: u64) -> Result<(), GenerationError> {
        let link = self.generation_link(n);
        if fs::symlink_metadata(&link).is_err() {
            return Err(GenerationError::NoSuchGeneration(n));
        }
        switch_symlink(Path::new(&self.link_name(n)), &self.profile_link())
    }

    /// The activated system (`current-system`'s target, resolved), if any.
    #[cfg(test)] // the tests' view of the profile
    pub fn current_system(&self) -> Result<Option<PathBuf>, GenerationError> {
        let Some(link) = self.current_system_link() else { return Ok(None) };
        match fs::read_link(&link) {
            Ok(t) => Ok(Some(self.resolve_target(&link, &t))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read link", &link)(e)),
        }
    }

    /// Point `current-system` at `system` (as seen on the host), atomically (nothing for a Nix
    /// or Guix profile).
    pub fn set_current_system(&self, system: &Path) -> Result<(), GenerationError> {
        let Some(link) = self.current_system_link() else { return Ok(()) };
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        switch_symlink(system, &link)
    }

    /// Remove the `system` and `current-system` links (after a failed first deployment):
    /// no generation is current. The generation links stay.
    pub fn clear(&self) -> Result<(), GenerationError> {
        for link in std::iter::once(self.profile_link()).chain(self.current_system_link()) {
            match fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot remove", &link)(e)),
            }
        }
        Ok(())
    }

    /// Switch `system` to the generation before the current one; returns `(from, to)`. The
    /// caller then runs the previous system's `activate` (see `activation`).
    pub fn roll_back(&self) -> Result<(u64, u64), GenerationError> {
        let cur = self.current()?.ok_or(GenerationError::NoCurrent)?;
        let prev = self.previous_of(cur)?.ok_or(GenerationError::NoPrevious(cur))?;
        self.switch_to(prev)?;
        Ok((cur, prev))
    }
}

/// The generation a rollback from `current` returns to: the highest number below it that is
/// not marked failed. `generations`: `(number, failed)`.
pub fn previous_generation(
    current: u64,
    generations: impl IntoIterator<Item = (u64, bool)>,
) -> Option<u64> {
    generations.into_iter().filter(|&(n, failed)| n < current && !failed).map(|(n, _)| n).max()
}

/// What `--roll-back` would do given a host's generations `(number, current, failed)`:
/// `(from, to)`, or why it cannot (the same errors as [`Profiles::roll_back`]).
pub fn roll_back_target(
    generations: impl IntoIterator<Item = (u64, bool, bool)>,
) -> Result<(u64, u64), GenerationError> {
    let all: Vec<(u64, bool, bool)> = generations.into_iter().collect();
    let cur = all.iter().find(|g| g.1).map(|g| g.0).ok_or(GenerationError::NoCurrent)?;
    let prev = previous_generation(cur, all.iter().map(|&(n, _, failed)| (n, failed)));
    Ok((cur, prev.ok_or(GenerationError::NoPrevious(cur))?))
}

/// `system-N-link` → N.
pub fn parse_generation_name(name: &str) -> Option<u64> {
    parse_link_name(PROFILE_NAME, name)
}

/// `PROFILE-N-link` → N.
fn parse_link_name(profile: &str, name: &str) -> Option<u64> {
    let n = name.strip_prefix(profile)?.strip_prefix('-')?.strip_suffix("-link")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok()
}

/// Make `link` point at `target` atomically: a symlink at a temporary name, then `rename`.
pub fn switch_symlink(target: &Path, link: &Path) -> Result<(), GenerationError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = link.parent().unwrap_or(Path::new("."));
    let base = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(
        ".{base}.new-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    match std::os::unix::fs::symlink(target, &tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).map_err(io_err("cannot remove stale", &tmp))?;
            std::os::unix::fs::symlink(target, &tmp).map_err(io_err("cannot create", &tmp))?;
        }
        Err(e) => return Err(io_err("cannot create", &tmp)(e)),
    }
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("cannot rename over", link)(e));
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), GenerationError> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err("cannot sync", dir))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(root: &Path, name: &str) -> PathBuf {
        let p = root.join("gnu/store").join(format!("{name}-system"));
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn a_failed_generation_is_marked_until_its_number_is_reused() {
        let t = tempfile::tempdir().unwrap();
        let p = Profiles::new(t.path());
        p.add(&system(t.path(), "aaaa")).unwrap();
        p.add(&system(t.path(), "bbbb")).unwrap();
        p.mark_failed(2, "activate exited with code 1\nmore").unwrap();
        let failed: Vec<_> = p.list().unwrap().into_iter().map(|g| g.failed).collect();
        assert_eq!(failed, [None, Some("activate exited with code 1 more".to_owned())]);
        // Nothing beside the links that Nix could take for a generation.
        assert_eq!(p.numbers().unwrap(), [1, 2]);
        assert_eq!(fs::read_dir(p.dir()).unwrap().count(), 2);
        // Generation 2 removed and made again for another system: the mark does not apply.
        fs::remove_file(p.generation_link(2)).unwrap();
        assert_eq!(p.add(&system(t.path(), "cccc")).unwrap(), 2);
        assert_eq!(p.generation(2).unwrap().failed, None);
    }

    #[test]
    fn generations_count_up_and_never_overwrite() {
        let t = tempfile::tempdir().unwrap();
        let p = Profiles::new(t.path());
        assert_eq!(p.list().unwrap(), []);
        assert_eq!(p.current().unwrap(), None);
        let a = system(t.path(), "aaaa");
        let b = system(t.path(), "bbbb");
        let c = system(t.path(), "cccc");
        assert_eq!(p.add(&a).unwrap(), 1);
        p.switch_to(1).unwrap();
        assert_eq!(p.add(&b).unwrap(), 2);
        p.switch_to(2).unwrap();
        assert_eq!(p.roll_back().unwrap(), (2, 1));
        assert_eq!(p.current().unwrap(), Some(1));
        // After a rollback the next generation is 3, not 2 (Guix would overwrite 2).
        assert_eq!(p.add(&c).unwrap(), 3);
        assert_eq!(p.generation(2).unwrap().system, b);
        let list = p.list().unwrap();
        assert_eq!(
            list.iter().map(|g| (g.number, g.current)).collect::<Vec<_>>(),
            [(1, true), (2, false), (3, false)]
        );
        assert_eq!(fs::read_link(p.profile_link()).unwrap(), PathBuf::from("system-1-link"));
        // No temporary names left behind.
        let names: Vec<String> = fs::read_dir(p.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn failed_generations_are_marked_and_skipped_by_rollbacks() {
        let t = tempfile::tempdir().unwrap();
        let p = Profiles::new(t.path());
        for name in ["a", "b", "c"] {
            let n = p.add(&system(t.path(), name)).unwrap();
            p.switch_to(n).unwrap();
        }
        p.mark_failed(2, "health checks failed:\n`x` exited with code 1").unwrap();
        let list = p.list().unwrap();
        let failed: Vec<Option<&str>> = list.iter().map(|g| g.failed.as_deref()).collect();
        assert_eq!(failed, [None, Some("health checks failed: `x` exited with code 1"), None]);
        assert_eq!(p.numbers().unwrap(), [1, 2, 3], "the mark is not a generation");
        assert_eq!(p.previous_of(3).unwrap(), Some(1));
        let listed = list.iter().map(|g| (g.number, g.current, g.failed.is_some()));
        assert_eq!(roll_back_target(listed).unwrap(), (3, 1));
        assert_eq!(p.roll_back().unwrap(), (3, 1));
        assert!(matches!(
            roll_back_target([(1, true, false), (2, false, true)]),
            Err(GenerationError::NoPrevious(1))
        ));
        assert!(matches!(roll_back_target([(1, false, false)]), Err(GenerationError::NoCurrent)));
    }

    #[test]
    fn previous_skips_holes_and_roll_back_needs_two() {
        let t = tempfile::tempdir().unwrap();
        let p = Profiles::new(t.path());
        assert!(matches!(p.roll_back(), Err(GenerationError::NoCurrent)));
        let a = system(t.path(), "a");
        p.add(&a).unwrap();
        p.switch_to(1).unwrap();
        p.set_current_system(&a).unwrap();
        p.clear().unwrap();
        assert_eq!((p.current().unwrap(), p.current_system().unwrap()), (None, None));
        assert_eq!(p.numbers().unwrap(), [1]);
        fs::remove_file(p.generation_link(1)).unwrap();
        for _ in 0..4 {
            p.add(&a).unwrap();
        }
        fs::remove_file(p.generation_link(3)).unwrap();
        p.switch_to(4).unwrap();
        assert_eq!(p.previous().unwrap().unwrap().number, 2);
        p.switch_to(1).unwrap();
        assert!(matches!(p.roll_back(), Err(GenerationError::NoPrevious(1))));
        assert!(matches!(p.switch_to(3), Err(GenerationError::NoSuchGeneration(3))));
    }

    #[test]
    fn reads_absolute_logical_physical_and_relative_targets() {
        let t = tempfile::tempdir().unwrap();
        let p = Profiles::new(t.path());
        let a = system(t.path(), "a");
        fs::create_dir_all(p.dir()).unwrap();
        // Guix style: generation link to the logical store path, profile link absolute.
        std::os::unix::fs::symlink("/gnu/store/a-system", p.generation_link(1)).unwrap();
        std::os::unix::fs::symlink("/var/ferry/profiles/system-1-link", p.profile_link()).unwrap();
        // Relative target.
        std::os::unix::fs::symlink("../../../gnu/store/a-system", p.generation_link(2)).unwrap();
        // Physical target.
        std::os::unix::fs::symlink(&a, p.generation_link(3)).unwrap();
        assert_eq!(p.current().unwrap(), Some(1));
        for n in 1..=3 {
            assert_eq!(p.generation(n).unwrap().system, a, "generation {n}");
        }
        p.set_current_system(Path::new("/gnu/store/a-system")).unwrap();
        assert_eq!(p.current_system().unwrap(), Some(a.clone()));
        p.set_current_system(&a).unwrap();
        assert_eq!(p.current_system().unwrap(), Some(a));
    }

    #[test]
    fn generation_names() {
        assert_eq!(parse_generation_name("system-12-link"), Some(12));
        for bad in ["system-link", "system--link", "system-01-link", "system-1", "other-1-link"] {
            assert_eq!(parse_generation_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_nix_profile_has_its_own_folder_and_name() {
        let t = tempfile::tempdir().unwrap();
        let p = Profiles::at(t.path(), Path::new("/nix/var/nix/profiles/web"));
        let a = system(t.path(), "a");
        assert_eq!(p.add(&a).unwrap(), 1);
        p.switch_to(1).unwrap();
        p.set_current_system(&a).unwrap();
        let dir = t.path().join("nix/var/nix/profiles");
        assert_eq!(fs::read_link(dir.join("web")).unwrap(), PathBuf::from("web-1-link"));
        assert_eq!(fs::read_link(dir.join("web-1-link")).unwrap(), a);
        assert_eq!((p.current().unwrap(), p.current_system().unwrap()), (Some(1), None));
        assert!(!t.path().join("var/ferry").exists());
        // Another profile's links in the same folder are not this one's generations.
        std::os::unix::fs::symlink(&a, dir.join("system-7-link")).unwrap();
        assert_eq!(p.numbers().unwrap(), [1]);
    }

    #[test]
    fn on_host_maps_logical_paths_under_the_root() {
        let p = Profiles::new("/tmp/host");
        assert_eq!(p.on_host(Path::new("/gnu/store/x")), PathBuf::from("/tmp/host/gnu/store/x"));
        assert_eq!(
            p.on_host(Path::new("/tmp/host/gnu/store/x")),
            PathBuf::from("/tmp/host/gnu/store/x")
        );
        assert_eq!(
            Profiles::new("/").on_host(Path::new("/gnu/store/x")),
            PathBuf::from("/gnu/store/x")
        );
    }
}
