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
//!
//! **A named store** ([`LayoutOptions::store`], `--store nix|guix|ferry`) replaces the probing:
//! `nix` is `/nix/store` with Nix's database `<root>/nix/var/nix/db` (root `/` unless given, as
//! for Nix's chroot stores `nix-store --store ROOT`), `guix` is `/gnu/store` with
//! `<root>/var/guix/db`, both read in place and never written; `ferry` is ferry's own database
//! only. ferry's own state (its signing key, its database) stays in ferry's state dir: when no
//! root is given for a Nix or Guix store, the state dir is the one ferry would use without
//! `--store`. A state dir that is Nix's or Guix's own (`<root>/nix/var/nix`, `<root>/var/guix`)
//! is refused: ferry never writes there.

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
    #[error(
        "state dir {state:?} is {kind}'s own state directory, and ferry never writes there: to \
         read {kind}'s store in place, use the store `{name}` (`--store {name}`, or \
         `store = \"{name}\"` in a deployment file) and leave the state dir to ferry"
    )]
    ForeignStateDir { state: PathBuf, kind: DbKind, name: &'static str },
    #[error("the {kind} store keeps its paths in {expected}, not in the store dir {given} given")]
    StoreDirMismatch { kind: DbKind, expected: &'static str, given: String },
    #[error("unknown store {0:?}: one of nix, guix, ferry")]
    UnknownStore(String),
}

/// Which kind of database a layout points at; also the store a layout is told to read
/// ([`LayoutOptions::store`]: `nix`, `guix`, `ferry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// ferry's own database (read-write).
    Ferry,
    /// A Nix database (schema 10), opened read-only.
    Nix,
    /// A Guix database (schema 7), opened read-only.
    Guix,
}

impl DbKind {
    /// The name in options and deployment files: `ferry`, `nix`, `guix`.
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Ferry => "ferry",
            DbKind::Nix => "nix",
            DbKind::Guix => "guix",
        }
    }

    /// The store dir of this kind of store: Nix's `/nix/store`, Guix's `/gnu/store`; for ferry
    /// its default, `/gnu/store` (ferry's store dir can be chosen).
    pub fn default_store_dir(self) -> &'static str {
        match self {
            DbKind::Nix => StoreDir::NIX,
            DbKind::Guix | DbKind::Ferry => StoreDir::GUIX,
        }
    }

    /// Where this kind keeps its state under a root: `nix/var/nix`, `var/guix` (`None` for
    /// ferry, whose state dir is chosen).
    fn foreign_state_dir(self, root: &Path) -> Option<PathBuf> {
        match self {
            DbKind::Nix => Some(root.join("nix/var/nix")),
            DbKind::Guix => Some(root.join("var/guix")),
            DbKind::Ferry => None,
        }
    }
}

impl std::fmt::Display for DbKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DbKind::Ferry => "ferry",
            DbKind::Nix => "Nix",
            DbKind::Guix => "Guix",
        })
    }
}

impl std::str::FromStr for DbKind {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<DbKind, LayoutError> {
        match s {
            "ferry" => Ok(DbKind::Ferry),
            "nix" => Ok(DbKind::Nix),
            "guix" => Ok(DbKind::Guix),
            other => Err(LayoutError::UnknownStore(other.to_owned())),
        }
    }
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
    /// The store to read: Nix's or Guix's in place, or ferry's own only (`None`: ferry's, or a
    /// Nix or Guix database found under a chroot root; see the module docs).
    pub store: Option<DbKind>,
}

/// A resolved store layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    root: PathBuf,
    store_dir: StoreDir,
    state_dir: PathBuf,
    store_dir_explicit: bool,
    /// The store named by [`LayoutOptions::store`].
    kind: Option<DbKind>,
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
        Ok(StoreLayout { root, store_dir, state_dir, store_dir_explicit: true, kind: None })
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
        let ferry_root = || -> Result<PathBuf, LayoutError> {
            if euid_is_root {
                return Ok(PathBuf::from("/"));
            }
            let data = nonempty("XDG_DATA_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .ok_or(LayoutError::NoHome)?;
            Ok(data.join("ferry"))
        };
        let foreign = options.store.filter(|k| *k != DbKind::Ferry);
        let explicit_root = options.root.clone().or_else(|| nonempty(ENV_ROOT).map(PathBuf::from));
        // A Nix or Guix store read in place is the machine's own (root `/`) unless a root is
        // given; ferry's own state then stays where it would be without `--store`.
        let root = match (&explicit_root, foreign) {
            (Some(root), _) => root.clone(),
            (None, Some(_)) => PathBuf::from("/"),
            (None, None) => ferry_root()?,
        };
        if !root.is_absolute() {
            return Err(LayoutError::RelativeRoot(root));
        }
        let explicit_store = options
            .store_dir
            .clone()
            .or_else(|| nonempty(ENV_STORE_DIR).map(|v| v.to_string_lossy().into_owned()));
        let state_dir = match options
            .state_dir
            .clone()
            .or_else(|| nonempty(ENV_STATE_DIR).map(PathBuf::from))
        {
            Some(dir) => dir,
            None if explicit_root.is_some() || foreign.is_none() => root.join("var/ferry"),
            None => ferry_root()?.join("var/ferry"),
        };
        if !state_dir.is_absolute() {
            return Err(LayoutError::RelativeStateDir(state_dir));
        }
        for kind in [DbKind::Nix, DbKind::Guix] {
            let theirs = kind.foreign_state_dir(&root).expect("a foreign kind");
            if same_dir(&state_dir, &theirs) {
                return Err(LayoutError::ForeignStateDir {
                    state: state_dir,
                    kind,
                    name: kind.name(),
                });
            }
        }
        let mut layout = StoreLayout {
            root,
            store_dir: StoreDir::guix(),
            state_dir,
            store_dir_explicit: explicit_store.is_some(),
            kind: options.store,
        };
        match (explicit_store, options.store) {
            (Some(dir), Some(kind)) if kind != DbKind::Ferry => {
                if dir.trim_end_matches('/') != kind.default_store_dir() {
                    return Err(LayoutError::StoreDirMismatch {
                        kind,
                        expected: kind.default_store_dir(),
                        given: dir,
                    });
                }
                layout.store_dir = StoreDir::new(dir)?;
            }
            (Some(dir), _) => layout.store_dir = StoreDir::new(dir)?,
            (None, Some(kind)) => layout.store_dir = StoreDir::new(kind.default_store_dir())?,
            (None, None) => match layout.database().0 {
                DbKind::Nix => layout.store_dir = StoreDir::nix(),
                DbKind::Guix | DbKind::Ferry => {}
            },
        }
        Ok(layout)
    }

    /// The store named by [`LayoutOptions::store`], if one was.
    pub fn store_kind(&self) -> Option<DbKind> {
        self.kind
    }

    /// True when this layout reads a Nix or Guix store in place (named, or found under a chroot
    /// root): it is never written.
    pub fn is_foreign(&self) -> bool {
        self.database().0 != DbKind::Ferry
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
        match self.kind {
            Some(DbKind::Nix) => return (DbKind::Nix, self.nix_db_path()),
            Some(DbKind::Guix) => return (DbKind::Guix, self.guix_db_path()),
            Some(DbKind::Ferry) => return (DbKind::Ferry, self.ferry_db_path()),
            None => {}
        }
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

/// The same directory: equal paths, or the same inode when both exist.
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let norm = |p: &Path| p.components().collect::<PathBuf>();
    if norm(a) == norm(b) {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
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

    #[test]
    fn a_named_store_is_read_in_place_and_state_stays_ferrys() {
        let nix = LayoutOptions { store: Some(DbKind::Nix), ..Default::default() };
        // No root: the machine's own Nix store; ferry's state where it is without --store.
        let l = StoreLayout::resolve_with(&nix, env(&[("HOME", "/home/u")]), false).unwrap();
        assert_eq!(l.root(), Path::new("/"));
        assert_eq!(l.store_dir().as_str(), "/nix/store");
        assert_eq!(l.state_dir(), Path::new("/home/u/.local/share/ferry/var/ferry"));
        assert_eq!(l.database(), (DbKind::Nix, PathBuf::from("/nix/var/nix/db/db.sqlite")));
        assert!(l.is_foreign());
        let l = StoreLayout::resolve_with(&nix, env(&[]), true).unwrap();
        assert_eq!(l.state_dir(), Path::new("/var/ferry"));
        // A root: Nix's chroot store there, ferry's state under it too.
        let at = LayoutOptions { root: Some("/r".into()), ..nix.clone() };
        let l = StoreLayout::resolve_with(&at, env(&[]), false).unwrap();
        assert_eq!(l.database(), (DbKind::Nix, PathBuf::from("/r/nix/var/nix/db/db.sqlite")));
        assert_eq!(l.state_dir(), Path::new("/r/var/ferry"));
        let guix = LayoutOptions { store: Some(DbKind::Guix), ..at.clone() };
        let l = StoreLayout::resolve_with(&guix, env(&[]), false).unwrap();
        assert_eq!(l.store_dir().as_str(), "/gnu/store");
        assert_eq!(l.database(), (DbKind::Guix, PathBuf::from("/r/var/guix/db/db.sqlite")));
        // `ferry`: ferry's own database, even when a Nix one is under the root.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("nix/var/nix/db")).unwrap();
        std::fs::write(dir.path().join("nix/var/nix/db/db.sqlite"), b"").unwrap();
        let ferry = LayoutOptions {
            root: Some(dir.path().to_owned()),
            store: Some(DbKind::Ferry),
            ..Default::default()
        };
        let l = StoreLayout::resolve_with(&ferry, env(&[]), false).unwrap();
        assert_eq!((l.database().0, l.store_dir().as_str()), (DbKind::Ferry, "/gnu/store"));
        assert_eq!("nix".parse::<DbKind>().unwrap(), DbKind::Nix);
        assert!("lix".parse::<DbKind>().is_err());
    }

    #[test]
    fn nix_state_dir_and_wrong_store_dir_are_refused() {
        let opts = LayoutOptions {
            root: Some("/r".into()),
            store_dir: Some("/nix/store".into()),
            state_dir: Some("/r/nix/var/nix".into()),
            ..Default::default()
        };
        let err = StoreLayout::resolve_with(&opts, env(&[]), true).unwrap_err();
        assert!(matches!(err, LayoutError::ForeignStateDir { kind: DbKind::Nix, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("--store nix") && msg.contains("/r/nix/var/nix"), "{msg}");
        let opts = LayoutOptions { state_dir: Some("/var/guix/".into()), ..Default::default() };
        let err = StoreLayout::resolve_with(&opts, env(&[]), true).unwrap_err();
        assert!(matches!(err, LayoutError::ForeignStateDir { kind: DbKind::Guix, .. }), "{err}");
        let opts = LayoutOptions {
            store: Some(DbKind::Nix),
            store_dir: Some("/gnu/store".into()),
            ..Default::default()
        };
        let err = StoreLayout::resolve_with(&opts, env(&[]), true).unwrap_err().to_string();
        assert_eq!(
            err,
            "the Nix store keeps its paths in /nix/store, not in the store dir /gnu/store given"
        );
    }
}
