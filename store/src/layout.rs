//! Where a store lives on disk: the root, the logical store dir, the state dir.
//!
//! - The **store dir** is logical (`/gnu/store`, `/nix/store`): it is what store paths print as and
//!   what their hashes are computed with. Physically it is `<root>/<store dir>`.
//! - The **root** is `/` for the machine's own store and any directory for a chroot-style store
//!   (tests, several hosts on one machine, Nix's `local?root=`).
//! - The **state dir** holds `db/db.sqlite`, `lock`, `pending/`, `profiles/`, `gcroots/`. It is a
//!   physical path; by default `<root>/var/ferry`.
//!
//! Resolution, for each of the three: the explicit option, then the environment (`FERRY_ROOT`,
//! `FERRY_STORE_DIR`, `FERRY_STATE_DIR`), then the default: root `/` when the effective uid is 0,
//! else `$XDG_DATA_HOME/ferry` (or `~/.local/share/ferry`), with the logical store dir unchanged
//! (`/gnu/store`).
//!
//! **Foreign databases.** When no ferry database exists at `<state>/db/db.sqlite` but a Nix
//! database exists at `<root>/nix/var/nix/db/db.sqlite` (or a Guix one at
//! `<root>/var/guix/db/db.sqlite`), [`StoreLayout::database`] returns that one, to be opened
//! read-only. When the store dir was given explicitly, only a database for that store dir
//! (`/nix/store` → Nix, `/gnu/store` → Guix) is used; when it was not, it is probed only for a
//! root other than `/` and the store dir then follows the database found (`/nix/store` for Nix),
//! so the machine's own Nix never changes the default `/gnu/store`. So `ferry --root /tmp/s1 gc --requisites /nix/store/…` reads the chroot Nix
//! store `nix-store --store /tmp/s1` made, without writing to it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nar_core::store_path::{StoreDir, StorePath, StorePathError};

/// Environment variable for the root.
pub const ENV_ROOT: &str = "FERRY_ROOT";
/// Environment variable for the logical store dir.
pub const ENV_STORE_DIR: &str = "FERRY_STORE_DIR";
/// Environment variable for the state dir.
pub const ENV_STATE_DIR: &str = "FERRY_STATE_DIR";

/// Errors while resolving a layout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("invalid store dir: {0}")]
    StoreDir(#[from] StorePathError),
    #[error("root {0:?} must be an absolute path")]
    RelativeRoot(PathBuf),
    #[error("state dir {0:?} must be an absolute path")]
    RelativeStateDir(PathBuf),
    #[error(
        "no root given and no home directory: set FERRY_ROOT, XDG_DATA_HOME or HOME (not root, so \
         the default root / is not used)"
    )]
    NoHome,
}

/// Which kind of database a layout points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// ferry's own database (read-write).
    Ferry,
    /// A Nix database (schema 10), opened read-only.
    Nix,
    /// A Guix database (schema 7), opened read-only.
    Guix,
}

/// Explicit choices, each overriding the environment and the defaults.
#[derive(Debug, Clone, Default)]
pub struct LayoutOptions {
    /// Root directory.
    pub root: Option<PathBuf>,
    /// Logical store dir.
    pub store_dir: Option<String>,
    /// Physical state dir.
    pub state_dir: Option<PathBuf>,
}

/// A resolved store layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    root: PathBuf,
    store_dir: StoreDir,
    state_dir: PathBuf,
    store_dir_explicit: bool,
}

impl StoreLayout {
    /// A layout from explicit parts, ignoring the environment: the usual constructor in tests.
    pub fn new(
        root: impl Into<PathBuf>,
        store_dir: StoreDir,
        state_dir: Option<PathBuf>,
    ) -> Result<Self, LayoutError> {
        let root = root.into();
        if !root.is_absolute() {
            return Err(LayoutError::RelativeRoot(root));
        }
        let state_dir = state_dir.unwrap_or_else(|| root.join("var/ferry"));
        if !state_dir.is_absolute() {
            return Err(LayoutError::RelativeStateDir(state_dir));
        }
        Ok(StoreLayout { root, store_dir, state_dir, store_dir_explicit: true })
    }

    /// A layout rooted at `root` with the store dir chosen by the database found there (see the
    /// module docs) and the default state dir.
    pub fn at_root(root: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        Self::resolve_with(
            &LayoutOptions { root: Some(root.into()), ..Default::default() },
            |_| None,
            false,
        )
    }

    /// Resolve from options, then the process environment, then the defaults.
    pub fn resolve(options: &LayoutOptions) -> Result<Self, LayoutError> {
        let is_root = rustix::process::geteuid().is_root();
        Self::resolve_with(options, |name| std::env::var_os(name), is_root)
    }

    /// Resolve with an explicit environment lookup and uid (testable without touching the
    /// process environment).
    pub fn resolve_with(
        options: &LayoutOptions,
        env: impl Fn(&str) -> Option<OsString>,
        euid_is_root: bool,
    ) -> Result<Self, LayoutError> {
        let nonempty = |name: &str| env(name).filter(|v| !v.is_empty());
        let root = match options.root.clone().or_else(|| nonempty(ENV_ROOT).map(PathBuf::from)) {
            Some(root) => root,
            None if euid_is_root => PathBuf::from("/"),
            None => {
                let data = nonempty("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                    .ok_or(LayoutError::NoHome)?;
                data.join("ferry")
            }
        };
        if !root.is_absolute() {
            return Err(LayoutError::RelativeRoot(root));
        }
        let explicit_store = options
            .store_dir
            .clone()
            .or_else(|| nonempty(ENV_STORE_DIR).map(|v| v.to_string_lossy().into_owned()));
        let state_dir = options
            .state_dir
            .clone()
            .or_else(|| nonempty(ENV_STATE_DIR).map(PathBuf::from))
            .unwrap_or_else(|| root.join("var/ferry"));
        if !state_dir.is_absolute() {
            return Err(LayoutError::RelativeStateDir(state_dir));
        }
        let mut layout = StoreLayout {
            root,
            store_dir: StoreDir::guix(),
            state_dir,
            store_dir_explicit: explicit_store.is_some(),
        };
        match explicit_store {
            Some(dir) => layout.store_dir = StoreDir::new(dir)?,
            None => match layout.database().0 {
                DbKind::Nix => layout.store_dir = StoreDir::nix(),
                DbKind::Guix | DbKind::Ferry => {}
            },
        }
        Ok(layout)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The logical store dir.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The state dir (physical).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The store dir on disk: `<root>/<store dir>`.
    pub fn physical_store_dir(&self) -> PathBuf {
        self.under_root(self.store_dir.as_str())
    }

    /// Where a store item lives on disk.
    pub fn physical_path(&self, path: &StorePath) -> PathBuf {
        let mut p = self.physical_store_dir();
        p.push(path.base_name());
        p
    }

    /// A logical absolute path mapped under the root.
    pub fn under_root(&self, logical: &str) -> PathBuf {
        self.root.join(logical.trim_start_matches('/'))
    }

    /// ferry's database file: `<state>/db/db.sqlite`.
    pub fn ferry_db_path(&self) -> PathBuf {
        self.state_dir.join("db/db.sqlite")
    }

    /// A Nix database under the root: `<root>/nix/var/nix/db/db.sqlite`.
    pub fn nix_db_path(&self) -> PathBuf {
        self.root.join("nix/var/nix/db/db.sqlite")
    }

    /// A Guix database under the root: `<root>/var/guix/db/db.sqlite`.
    pub fn guix_db_path(&self) -> PathBuf {
        self.root.join("var/guix/db/db.sqlite")
    }

    /// The lock file writers hold: `<state>/lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    /// Intent records for renames and deletions in progress: `<state>/pending`.
    pub fn pending_dir(&self) -> PathBuf {
        self.state_dir.join("pending")
    }

    /// Extra GC roots (symlinks into the store): `<state>/gcroots`.
    pub fn gcroots_dir(&self) -> PathBuf {
        self.state_dir.join("gcroots")
    }

    /// Profiles (generation links, also GC roots): `<state>/profiles`.
    pub fn profiles_dir(&self) -> PathBuf {
        self.state_dir.join("profiles")
    }

    /// The database to read: ferry's when it exists; otherwise a Nix or Guix database under the
    /// root when one exists (and, when the store dir was given explicitly, matches it); otherwise
    /// ferry's (to be created).
    pub fn database(&self) -> (DbKind, PathBuf) {
        let ferry = self.ferry_db_path();
        if ferry.exists() {
            return (DbKind::Ferry, ferry);
        }
        // With an implicit store dir, only a chroot-style root is probed: the machine's own
        // Nix must not silently turn ferry's default /gnu/store into /nix/store.
        let implicit_ok = !self.store_dir_explicit && self.root != Path::new("/");
        let nix = self.nix_db_path();
        if nix.exists() && (implicit_ok || self.store_dir.as_str() == StoreDir::NIX) {
            return (DbKind::Nix, nix);
        }
        let guix = self.guix_db_path();
        if guix.exists() && (implicit_ok || self.store_dir.as_str() == StoreDir::GUIX) {
            return (DbKind::Guix, guix);
        }
        (DbKind::Ferry, ferry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn explicit_beats_env_beats_default() {
        let opts = LayoutOptions { root: Some("/r".into()), ..Default::default() };
        let l = StoreLayout::resolve_with(&opts, env(&[("FERRY_ROOT", "/e")]), false).unwrap();
        assert_eq!(l.root(), Path::new("/r"));
        assert_eq!(l.state_dir(), Path::new("/r/var/ferry"));
        assert_eq!(l.store_dir().as_str(), "/gnu/store");
        assert_eq!(l.physical_store_dir(), Path::new("/r/gnu/store"));

        let l = StoreLayout::resolve_with(
            &LayoutOptions::default(),
            env(&[
                ("FERRY_ROOT", "/e"),
                ("FERRY_STORE_DIR", "/nix/store"),
                ("FERRY_STATE_DIR", "/s"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(l.root(), Path::new("/e"));
        assert_eq!(l.store_dir().as_str(), "/nix/store");
        assert_eq!(l.state_dir(), Path::new("/s"));
        assert_eq!(l.physical_store_dir(), Path::new("/e/nix/store"));
    }

    #[test]
    fn defaults_by_uid() {
        let l = StoreLayout::resolve_with(&LayoutOptions::default(), env(&[]), true).unwrap();
        assert_eq!(l.root(), Path::new("/"));
        assert_eq!(l.state_dir(), Path::new("/var/ferry"));
        assert_eq!(l.physical_store_dir(), Path::new("/gnu/store"));

        let l = StoreLayout::resolve_with(
            &LayoutOptions::default(),
            env(&[("HOME", "/home/u")]),
            false,
        )
        .unwrap();
        assert_eq!(l.root(), Path::new("/home/u/.local/share/ferry"));
        assert_eq!(l.store_dir().as_str(), "/gnu/store");

        let l = StoreLayout::resolve_with(
            &LayoutOptions::default(),
            env(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/x")]),
            false,
        )
        .unwrap();
        assert_eq!(l.root(), Path::new("/x/ferry"));

        assert!(matches!(
            StoreLayout::resolve_with(&LayoutOptions::default(), env(&[]), false),
            Err(LayoutError::NoHome)
        ));
        let bad = LayoutOptions {
            store_dir: Some("rel".into()),
            root: Some("/r".into()),
            ..Default::default()
        };
        assert!(matches!(
            StoreLayout::resolve_with(&bad, env(&[]), true),
            Err(LayoutError::StoreDir(_))
        ));
    }

    #[test]
    fn nix_db_detected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("nix/var/nix/db")).unwrap();
        std::fs::write(dir.path().join("nix/var/nix/db/db.sqlite"), b"").unwrap();
        let l = StoreLayout::at_root(dir.path()).unwrap();
        assert_eq!(l.store_dir().as_str(), "/nix/store");
        assert_eq!(l.database().0, DbKind::Nix);
        // An explicit, different store dir means ferry's own database.
        let l = StoreLayout::new(dir.path(), StoreDir::guix(), None).unwrap();
        assert_eq!(l.database().0, DbKind::Ferry);
    }
}
