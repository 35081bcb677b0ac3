//! The system builder: an operating-system declaration → one store item, the *system*.
//!
//! # The system item (`/gnu/store/<hash>-system`)
//!
//! ```text
//! activate                 POSIX sh program (below), executable
//! parameters               JSON: version, host-name, timezone, locale, bootloader, kernel,
//!                          kernel-arguments, initrd-modules (recorded, not acted on)
//! provenance               JSON: ferry-version, deployment-file (relative to the repository
//!                          top, else its file name), commit, dirty, declaration
//! etc/NAME                 the declaration's files, plus hostname, timezone, locale.conf
//! profile/…                union of the packages: relative symlinks to ../../<pkg>/… (directories
//!                          present in several packages are merged; a file in two is an error)
//! services/NAME/start      one directory per service: start and stop (sh), requirements
//! services/NAME/stop       (one name a line)
//! services/NAME/requirements
//! services/.order          service names in start order (requirements first)
//! ```
//!
//! **Reproducible:** nothing depends on time, the machine or where the deployment file lives
//! (paths are relative to the repository); JSON keys are sorted; so the same declaration gives
//! the same store path. Packages given as local directories are added to the store first; the
//! system refers to each package through the profile links, and the store's reference scanner
//! records those references.
//!
//! # `activate`
//!
//! Run by the agent (or the local driver) after the profile and `current-system` were switched,
//! with `FERRY_ROOT` (the host root, `/` on a real host) and `FERRY_PREVIOUS_SYSTEM` (the
//! system that was active before, empty if none). It:
//! 1. links each `etc` file of the new system at `$FERRY_ROOT/etc/NAME` (atomically; a file that
//!    is not a symlink is kept as `NAME.ferry-orig`) and removes links to files the previous
//!    system had and the new one does not;
//! 2. stops services the new system does not have and those whose definition changed (in the
//!    previous system's reverse start order, with the previous stop command);
//! 3. starts new and changed services in start order (each `start` must exit 0, else activation
//!    fails and the driver rolls back). Unchanged services are left alone.
//!
//! There is no service supervisor: `start` must return (start a daemon, or do a one-shot job)
//! and `stop` undoes it. Service commands run with `sh` in `$FERRY_ROOT` (or `/`), with the system's `profile/bin`
//! first on `PATH`, `FERRY_ROOT` set to the root without its trailing slash (empty on a real
//! host, so `"$FERRY_ROOT/var/x"` is `/var/x`) and `FERRY_SYSTEM` to the system. Every step is
//! printed on stdout.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nar_core::store_path::{make_source_path, StorePath};
use serde::Serialize;
use store::{Store, StoreError};

use crate::deployment::{service_order, BootParameters, EtcFile, OperatingSystem, PrebuiltSystem};

/// Store name of system items.
pub const SYSTEM_NAME: &str = "system";

/// Errors while building a system.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SystemError {
    #[error("package {path}: {source}")]
    AddPackage { path: String, source: Box<StoreError> },
    #[error(
        "package {0} is not in the local store (add it with `ferry store add`, or give the \
         local directory instead)"
    )]
    PackageMissing(String),
    #[error("package {0}: neither a store path nor an existing directory")]
    PackageNotFound(String),
    #[error("profile: both {first} and {second} provide {name}")]
    ProfileConflict { name: String, first: String, second: String },
    #[error("etc file '{0}' is generated from the declaration (host-name, timezone, locale)")]
    ReservedEtcFile(String),
    #[error("cannot read etc file source {path}: {source}")]
    EtcSource { path: String, source: io::Error },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: io::Error },
    #[error("cannot add the system to the store: {0}")]
    Store(#[source] Box<StoreError>),
    #[error("{0}")]
    Services(String),
    #[error("system {path} is not valid in the local {kind} store ({db}): build it there first")]
    SystemMissing { path: String, kind: store::DbKind, db: String },
    #[error("system {path}: {source}")]
    Prebuilt { path: String, source: Box<StoreError> },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> SystemError + 'p {
    move |source| SystemError::Io { op, path: path.display().to_string(), source }
}

/// Where the declaration came from, recorded in the system's `provenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Provenance {
    /// The git commit of the repository holding the deployment file.
    pub commit: Option<String>,
    /// The named declaration the machine uses, if any.
    pub declaration: Option<String>,
    /// The deployment file, relative to the repository top (or just its file name).
    pub deployment_file: Option<String>,
    /// True when `git status --porcelain` listed changes.
    pub dirty: bool,
    pub ferry_version: String,
}

impl Provenance {
    /// Provenance of a deployment file: runs `git -C DIR rev-parse HEAD`, `--show-toplevel`
    /// and `git status --porcelain`; outside a repository (or without git) there is no commit.
    pub fn of_file(file: &Path, declaration: Option<&str>) -> Provenance {
        let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let dir = abs.parent().unwrap_or(Path::new("/")).to_owned();
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let commit = git(&["rev-parse", "--verify", "HEAD"]);
        let top = commit.as_ref().and_then(|_| git(&["rev-parse", "--show-toplevel"]));
        let deployment_file = match top.as_deref().and_then(|t| abs.strip_prefix(t).ok()) {
            Some(rel) => Some(rel.display().to_string()),
            None => abs.file_name().map(|n| n.to_string_lossy().into_owned()),
        };
        let dirty =
            commit.is_some() && git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        Provenance {
            commit,
            declaration: declaration.map(str::to_owned),
            deployment_file,
            dirty,
            ferry_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Parse a system's `provenance` file (for the downgrade check).
    pub fn parse(text: &str) -> Option<Provenance> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        struct P {
            commit: Option<String>,
            declaration: Option<String>,
            deployment_file: Option<String>,
            #[serde(default)]
            dirty: bool,
            ferry_version: String,
        }
        let p: P = serde_json::from_str(text).ok()?;
        Some(Provenance {
            commit: p.commit,
            declaration: p.declaration,
            deployment_file: p.deployment_file,
            dirty: p.dirty,
            ferry_version: p.ferry_version,
        })
    }
}

/// `parameters`: boot-related fields, recorded and not acted on.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Parameters<'a> {
    bootloader: &'a Option<crate::deployment::Bootloader>,
    host_name: &'a str,
    initrd_modules: &'a [String],
    kernel: &'a Option<String>,
    kernel_arguments: &'a [String],
    locale: &'a str,
    timezone: &'a str,
    version: u32,
}

/// A built system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltSystem {
    /// The system item.
    pub path: StorePath,
    /// Its absolute (logical) path, `/gnu/store/…-system`.
    pub absolute: String,
    /// The packages, in declaration order.
    pub packages: Vec<StorePath>,
}

/// Files generated from the declaration, which `files` may not name.
pub const GENERATED_ETC: [&str; 3] = ["hostname", "timezone", "locale.conf"];

/// Build `os` into the store: add local package directories, lay the system out in a temporary
/// directory, add it. Same inputs, same path.
#[cfg(test)] // deploy uses build_with
pub fn build(
    store: &mut Store,
    os: &OperatingSystem,
    provenance: &Provenance,
) -> Result<BuiltSystem, SystemError> {
    build_with(store, os, provenance, &mut AddedPackages::default())
}

/// Local package directories already added during this run, with their store paths: many
/// machines sharing a declaration share its packages, which are then hashed once.
pub type AddedPackages = std::collections::BTreeMap<PathBuf, StorePath>;

/// `build`, adding each local package directory at most once per `added`.
pub fn build_with(
    store: &mut Store,
    os: &OperatingSystem,
    provenance: &Provenance,
    added: &mut AddedPackages,
) -> Result<BuiltSystem, SystemError> {
    let packages = add_packages(store, &os.packages, added)?;
    let tmp = tempfile::Builder::new()
        .prefix("ferry-system-")
        .tempdir()
        .map_err(io_err("cannot create a temporary directory in", &std::env::temp_dir()))?;
    let out = tmp.path().join(SYSTEM_NAME);
    lay_out(store, os, provenance, &packages, &out)?;
    let path =
        add_source(store, &out, Some(SYSTEM_NAME)).map_err(|e| SystemError::Store(Box::new(e)))?;
    let absolute = path.to_absolute(store.store_dir());
    Ok(BuiltSystem { path, absolute, packages })
}

/// A system built elsewhere (`system = "/nix/store/…"`), as the local store (opened read-only:
/// a Nix or Guix store is never written) holds it: nothing is built.
pub fn prebuilt(store: &Store, system: &PrebuiltSystem) -> Result<BuiltSystem, SystemError> {
    let err =
        |e: StoreError| SystemError::Prebuilt { path: system.path.clone(), source: Box::new(e) };
    let path = store.parse_path(&system.path).map_err(err)?;
    if !store.is_valid(&path).map_err(err)? {
        return Err(SystemError::SystemMissing {
            path: system.path.clone(),
            kind: store.db().kind(),
            db: store.db().path().display().to_string(),
        });
    }
    Ok(BuiltSystem { path, absolute: system.path.clone(), packages: Vec::new() })
}

/// `store.add_path(source, name)`, unless the store holds that path already: a source item's
/// path follows from its name and NAR hash, so hashing the tree (reading it) tells, without
/// the copy into the store, its fsyncs and the reference scan that `add_path` makes first.
/// (Every deploy rebuilds every machine's system and re-adds local package directories: on
/// a redeploy they are all there.)
fn add_source(
    store: &mut Store,
    source: &Path,
    name: Option<&str>,
) -> Result<StorePath, StoreError> {
    let name = name
        .map(str::to_owned)
        .or_else(|| source.file_name().map(|n| n.to_string_lossy().into_owned()));
    // Anything unusual (no name, unreadable files) is for add_path to report.
    let known = name.as_deref().and_then(|name| {
        let digest = nar_core::dump::hash_path(source).ok()?;
        let path = make_source_path(store.store_dir(), name, &digest.hash).ok()?;
        store.is_valid(&path).ok()?.then_some(path)
    });
    match known {
        Some(path) => Ok(path),
        None => store.add_path(source, name.as_deref()).map(|info| info.path),
    }
}

/// Packages as store paths: store paths must be valid; directories are added (unless `added`
/// has them already).
pub fn add_packages(
    store: &mut Store,
    packages: &[PathBuf],
    added: &mut AddedPackages,
) -> Result<Vec<StorePath>, SystemError> {
    let mut out = Vec::new();
    for p in packages {
        let text = p.to_string_lossy();
        if let Ok((item, _)) = store.store_dir().split_path(&text) {
            let valid = store.is_valid(&item).map_err(|e| SystemError::AddPackage {
                path: text.to_string(),
                source: Box::new(e),
            })?;
            if !valid {
                return Err(SystemError::PackageMissing(text.into_owned()));
            }
            out.push(item);
        } else if let Some(path) = added.get(p) {
            out.push(path.clone());
        } else if p.is_dir() {
            let path = add_source(store, p, None).map_err(|e| SystemError::AddPackage {
                path: text.to_string(),
                source: Box::new(e),
            })?;
            added.insert(p.clone(), path.clone());
            out.push(path);
        } else {
            return Err(SystemError::PackageNotFound(text.into_owned()));
        }
    }
    Ok(out)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), SystemError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
    }
    fs::write(path, contents).map_err(io_err("cannot write", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot chmod", path))
}

/// Write the system tree at `out` (which must not exist).
pub fn lay_out(
    store: &Store,
    os: &OperatingSystem,
    provenance: &Provenance,
    packages: &[StorePath],
    out: &Path,
) -> Result<(), SystemError> {
    fs::create_dir(out).map_err(io_err("cannot create", out))?;
    write_file(&out.join("activate"), ACTIVATE.as_bytes(), 0o555)?;
    let boot: &BootParameters = &os.boot;
    let parameters = Parameters {
        bootloader: &boot.bootloader,
        host_name: &os.host_name,
        initrd_modules: &boot.initrd_modules,
        kernel: &boot.kernel,
        kernel_arguments: &boot.kernel_arguments,
        locale: &os.locale,
        timezone: &os.timezone,
        version: 0,
    };
    let json = |v: &dyn erased::Json| v.to_json();
    write_file(&out.join("parameters"), json(&parameters).as_bytes(), 0o444)?;
    write_file(&out.join("provenance"), json(provenance).as_bytes(), 0o444)?;

    // etc
    let etc = out.join("etc");
    fs::create_dir(&etc).map_err(io_err("cannot create", &etc))?;
    for name in GENERATED_ETC {
        if os.files.contains_key(name) {
            return Err(SystemError::ReservedEtcFile(name.to_owned()));
        }
    }
    write_file(&etc.join("hostname"), format!("{}\n", os.host_name).as_bytes(), 0o444)?;
    write_file(&etc.join("timezone"), format!("{}\n", os.timezone).as_bytes(), 0o444)?;
    write_file(&etc.join("locale.conf"), format!("LANG={}\n", os.locale).as_bytes(), 0o444)?;
    for (name, file) in &os.files {
        let contents = match file {
            EtcFile::Text(t) => t.clone().into_bytes(),
            EtcFile::Source(p) => fs::read(p).map_err(|source| SystemError::EtcSource {
                path: p.display().to_string(),
                source,
            })?,
        };
        write_file(&etc.join(name), &contents, 0o444)?;
    }

    // profile
    let profile = out.join("profile");
    fs::create_dir(&profile).map_err(io_err("cannot create", &profile))?;
    let sources: Vec<(PathBuf, String)> =
        packages.iter().map(|p| (store.physical_path(p), p.base_name())).collect();
    union(&profile, &sources, "")?;

    // services
    let services = out.join("services");
    fs::create_dir(&services).map_err(io_err("cannot create", &services))?;
    let order = service_order(&os.services).map_err(SystemError::Services)?;
    let mut order_text = String::new();
    for s in order {
        let dir = services.join(&s.name);
        write_file(&dir.join("start"), format!("{}\n", s.start).as_bytes(), 0o444)?;
        let stop = s.stop.as_deref().map(|c| format!("{c}\n")).unwrap_or_default();
        write_file(&dir.join("stop"), stop.as_bytes(), 0o444)?;
        let reqs: String = s.requirements.iter().map(|r| format!("{r}\n")).collect();
        write_file(&dir.join("requirements"), reqs.as_bytes(), 0o444)?;
        order_text.push_str(&s.name);
        order_text.push('\n');
    }
    write_file(&services.join(".order"), order_text.as_bytes(), 0o444)?;
    Ok(())
}

mod erased {
    /// Pretty JSON with a final newline (object keys in field order, which is sorted).
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            let mut s = serde_json::to_string_pretty(self).expect("plain data serializes");
            s.push('\n');
            s
        }
    }
}

/// Merge the trees `sources` (physical path, path relative to the store dir) into `out` (the
/// system's `profile/` + `rel`): an entry present in one source becomes a symlink to it;
/// directories present in several are created and merged; anything else present in several is
/// a conflict. Links are relative (`../../<hash>-hello/bin/hello` from `profile/bin`), so they
/// resolve on a host whose store lives under a root other than `/`; they still contain the
/// package's hash, which is how the reference scanner finds it.
fn union(out: &Path, sources: &[(PathBuf, String)], rel: &str) -> Result<(), SystemError> {
    let mut entries: BTreeMap<String, Vec<&(PathBuf, String)>> = BTreeMap::new();
    for src in sources {
        let meta = fs::symlink_metadata(&src.0).map_err(io_err("cannot stat", &src.0))?;
        if !meta.is_dir() {
            // A package that is a single file: linked under its name at the top level.
            if rel.is_empty() {
                let name = src.1.rsplit('/').next().unwrap_or_default();
                let name = name.split_once('-').map_or(name, |(_, n)| n).to_owned();
                entries.entry(name).or_default().push(src);
            }
            continue;
        }
        let mut names: Vec<String> = fs::read_dir(&src.0)
            .map_err(io_err("cannot list", &src.0))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io_err("cannot list", &src.0))?;
        names.sort();
        for name in names {
            entries.entry(name).or_default().push(src);
        }
    }
    for (name, from) in entries {
        let target = out.join(&name);
        let child = |s: &(PathBuf, String)| -> (PathBuf, String) {
            if fs::symlink_metadata(&s.0).is_ok_and(|m| m.is_dir()) {
                (s.0.join(&name), format!("{}/{}", s.1, name))
            } else {
                s.clone()
            }
        };
        let children: Vec<(PathBuf, String)> = from.iter().map(|s| child(s)).collect();
        if children.len() == 1 {
            // From <system>/profile/<rel><name>: up to <system>/profile, <system>, the store.
            let ups = rel.matches('/').count() + 2;
            let link = format!("{}{}", "../".repeat(ups), children[0].1);
            std::os::unix::fs::symlink(&link, &target).map_err(io_err("cannot link", &target))?;
            continue;
        }
        let all_dirs = children.iter().all(|c| fs::metadata(&c.0).is_ok_and(|m| m.is_dir()));
        if !all_dirs {
            return Err(SystemError::ProfileConflict {
                name: format!("{rel}{name}"),
                first: children[0].1.clone(),
                second: children[1].1.clone(),
            });
        }
        fs::create_dir(&target).map_err(io_err("cannot create", &target))?;
        union(&target, &children, &format!("{rel}{name}/"))?;
    }
    Ok(())
}

/// The activation program (static: everything it needs is read from the system).
pub const ACTIVATE: &str = r#"#!/bin/sh
# ferry activation program. Environment: FERRY_ROOT (host root, default /),
# FERRY_PREVIOUS_SYSTEM (the system active before, empty if none).
# Shell built-ins where they do (it runs on every host of every deploy): an external
# program only to read or make a link, to list files, or to compare service definitions.
set -eu
say() { printf 'activate: %s\n' "$*"; }
root=${FERRY_ROOT:-/}
root=${root%/}
case $0 in */*) dir=${0%/*} ;; *) dir=. ;; esac
system=$(cd "$dir" && pwd -P)
prev=${FERRY_PREVIOUS_SYSTEM:-}
if [ -n "$prev" ]; then
  if [ -d "$prev" ]; then prev=$(cd "$prev" && pwd -P); else say "previous system $prev is gone"; prev=; fi
fi
say "activating $system"
[ -d "$root/etc" ] && [ -d "$root/var/ferry" ] || mkdir -p "$root/etc" "$root/var/ferry"

etc_files() { [ -d "$1/etc" ] && (cd "$1/etc" && find . -type f | sed 's|^\./||' | sort); return 0; }
points() { [ -L "$1" ] && [ "$(readlink "$1" 2>/dev/null || true)" = "$2" ]; } # points LINK TARGET
link() {
  if points "$2" "$1"; then return 0; fi
  [ -d "${2%/*}" ] || mkdir -p "${2%/*}"
  if [ -e "$2" ] && [ ! -L "$2" ]; then
    mv "$2" "$2.ferry-orig"; say "kept the original $2 as $2.ferry-orig"
  fi
  if [ -e "$2.ferry-new" ] || [ -L "$2.ferry-new" ]; then rm -f "$2.ferry-new"; fi
  ln -s "$1" "$2.ferry-new"
  mv -f "$2.ferry-new" "$2"
  say "linked $2"
}
for f in $(etc_files "$system"); do link "$system/etc/$f" "$root/etc/$f"; done
if [ -n "$prev" ]; then
  for f in $(etc_files "$prev"); do
    if [ ! -e "$system/etc/$f" ] && points "$root/etc/$f" "$prev/etc/$f"; then
      rm -f "$root/etc/$f"; say "removed $root/etc/$f"
      if [ -e "$root/etc/$f.ferry-orig" ]; then mv "$root/etc/$f.ferry-orig" "$root/etc/$f"; say "restored $root/etc/$f"; fi
    fi
  done
fi

run() { # run SYSTEM SERVICE start|stop
  (cd "${root:-/}" && FERRY_ROOT=$root FERRY_SYSTEM=$1 PATH="$1/profile/bin:$PATH" \
     sh "$1/services/$2/$3")
}
same() { # same SERVICE: the definition did not change
  for part in start stop requirements; do
    cmp -s "$prev/services/$1/$part" "$system/services/$1/$part" || return 1
  done
}
order() { # one service name a line
  if [ -f "$1/services/.order" ]; then while IFS= read -r s; do echo "$s"; done < "$1/services/.order"; fi
  return 0
}
reversed() { order "$1" | sed -n '1!G;h;$p'; }

if [ -n "$prev" ]; then
  for s in $(reversed "$prev"); do
    if [ ! -d "$system/services/$s" ]; then
      say "stopping service $s (removed)"
      run "$prev" "$s" stop || say "warning: stopping $s failed"
    elif ! same "$s"; then
      say "stopping service $s (changed)"
      run "$prev" "$s" stop || say "warning: stopping $s failed"
    fi
  done
fi
for s in $(order "$system"); do
  if [ -n "$prev" ] && [ -d "$prev/services/$s" ]; then
    if same "$s"; then continue; fi
    say "restarting service $s"
  else
    say "starting service $s"
  fi
  if ! run "$system" "$s" start; then say "service $s failed to start"; exit 1; fi
done
say "done"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{Deployment, Service};
    use nar_core::store_path::StoreDir;
    use store::StoreLayout;

    fn store(root: &Path) -> Store {
        Store::open(StoreLayout::new(root, StoreDir::guix(), None).unwrap()).unwrap()
    }

    #[test]
    fn adding_a_known_source_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let pkg = package(dir.path(), "pkg", &[("bin/x", "hi")]);
        let (first, layout) = {
            let mut s = store(&root);
            (add_source(&mut s, &pkg, None).unwrap(), s.layout().clone())
        };
        // Known: answered from the hash, without add_path (which a read-only store refuses).
        let mut read_only = Store::open_read_only(layout).unwrap();
        assert_eq!(add_source(&mut read_only, &pkg, None).unwrap(), first);
        fs::write(pkg.join("bin/x"), "changed").unwrap();
        assert!(add_source(&mut read_only, &pkg, None).is_err());
        assert_ne!(add_source(&mut store(&root), &pkg, None).unwrap(), first);
    }

    fn provenance() -> Provenance {
        Provenance {
            commit: Some("0123".into()),
            declaration: Some("base".into()),
            deployment_file: Some("examples/demo.toml".into()),
            dirty: false,
            ferry_version: "0.1.0".into(),
        }
    }

    fn package(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let p = dir.join(name);
        for (f, text) in files {
            write_file(&p.join(f), text.as_bytes(), 0o555).unwrap();
        }
        p
    }

    fn os(dir: &Path, extra: &str) -> OperatingSystem {
        let text = format!(
            "[operating-system.base]\nhost-name = \"h\"\npackages = [\"./hello\", \"./tools\"]\n\
             files = {{ motd = \"hi\\n\" }}\n\
             services = [{{ name = \"b\", start = \"echo b\", requirements = [\"a\"] }},\n\
                         {{ name = \"a\", start = \"echo a\", stop = \"echo stop a\" }}]\n{extra}\n\
             [[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"base\"\n"
        );
        let file = dir.join("d.toml");
        Deployment::parse(&file, &text, &|_| Some("/nowhere".into())).unwrap().machines[0]
            .os
            .clone()
    }

    #[test]
    fn same_declaration_same_path_and_references() {
        let t = tempfile::tempdir().unwrap();
        package(t.path(), "hello", &[("bin/hello", "#!/bin/sh\necho hello\n")]);
        package(t.path(), "tools", &[("bin/tool", "x"), ("share/doc/tool", "y")]);
        let mut s = store(&t.path().join("store"));
        let a = build(&mut s, &os(t.path(), ""), &provenance()).unwrap();
        let b = build(&mut s, &os(t.path(), ""), &provenance()).unwrap();
        assert_eq!(a, b);
        // A second store, a different checkout: same path.
        let t2 = tempfile::tempdir().unwrap();
        package(t2.path(), "hello", &[("bin/hello", "#!/bin/sh\necho hello\n")]);
        package(t2.path(), "tools", &[("bin/tool", "x"), ("share/doc/tool", "y")]);
        let mut s2 = store(&t2.path().join("store"));
        assert_eq!(build(&mut s2, &os(t2.path(), ""), &provenance()).unwrap().path, a.path);
        // References: the packages.
        let info = s.path_info(&a.path).unwrap();
        let refs: Vec<&StorePath> = info.references.iter().collect();
        assert_eq!(refs.len(), 2, "{refs:?}");
        assert!(a.packages.iter().all(|p| info.references.contains(p)));
        // Layout.
        let phys = s.physical_path(&a.path);
        let hello = a.packages[0].base_name();
        assert_eq!(
            fs::read_link(phys.join("profile/bin/hello")).unwrap(),
            PathBuf::from(format!("../../../{hello}/bin/hello"))
        );
        assert_eq!(
            fs::read_to_string(phys.join("profile/bin/hello")).unwrap(),
            "#!/bin/sh\necho hello\n"
        );
        let tools = a.packages[1].base_name();
        assert_eq!(
            fs::read_link(phys.join("profile/share")).unwrap(),
            PathBuf::from(format!("../../{tools}/share"))
        );
        assert!(phys.join("profile/share/doc/tool").exists());
        assert_eq!(fs::read_to_string(phys.join("etc/hostname")).unwrap(), "h\n");
        assert_eq!(fs::read_to_string(phys.join("etc/motd")).unwrap(), "hi\n");
        assert_eq!(fs::read_to_string(phys.join("services/.order")).unwrap(), "a\nb\n");
        assert_eq!(fs::read_to_string(phys.join("services/a/stop")).unwrap(), "echo stop a\n");
        let params = fs::read_to_string(phys.join("parameters")).unwrap();
        assert!(params.contains("\"host-name\": \"h\""), "{params}");
        assert_eq!(
            Provenance::parse(&fs::read_to_string(phys.join("provenance")).unwrap()),
            Some(provenance())
        );
        assert!(fs::metadata(phys.join("activate")).unwrap().permissions().mode() & 0o111 != 0);
        // A change in the declaration changes the path.
        let c = build(&mut s, &os(t.path(), "timezone = \"Europe/Paris\""), &provenance()).unwrap();
        assert_ne!(c.path, a.path);
    }

    #[test]
    fn conflicts_and_missing_packages() {
        let t = tempfile::tempdir().unwrap();
        package(t.path(), "hello", &[("bin/x", "1")]);
        package(t.path(), "tools", &[("bin/x", "2")]);
        let mut s = store(&t.path().join("store"));
        let e = build(&mut s, &os(t.path(), ""), &provenance()).unwrap_err();
        assert!(matches!(&e, SystemError::ProfileConflict { name, .. } if name == "bin/x"), "{e}");
        let mut o = os(t.path(), "");
        o.packages = vec![PathBuf::from("/gnu/store/00000000000000000000000000000000-gone")];
        assert!(matches!(build(&mut s, &o, &provenance()), Err(SystemError::PackageMissing(_))));
        o.packages = vec![t.path().join("nope")];
        assert!(matches!(build(&mut s, &o, &provenance()), Err(SystemError::PackageNotFound(_))));
        o.packages = vec![];
        o.files.insert("hostname".into(), EtcFile::Text("x".into()));
        assert!(matches!(build(&mut s, &o, &provenance()), Err(SystemError::ReservedEtcFile(_))));
    }

    /// Run a system's activate on a host root, as the driver would.
    fn activate(system: &Path, root: &Path, prev: Option<&Path>) -> (bool, String) {
        let out = Command::new(system.join("activate"))
            .env("FERRY_ROOT", root)
            .env("FERRY_PREVIOUS_SYSTEM", prev.map(Path::as_os_str).unwrap_or_default())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn with_services(mut os: OperatingSystem, services: &[(&str, &str, &str)]) -> OperatingSystem {
        os.services = services
            .iter()
            .map(|(n, start, stop)| Service {
                name: (*n).into(),
                start: (*start).into(),
                stop: Some((*stop).into()),
                requirements: vec![],
            })
            .collect();
        os
    }

    #[test]
    fn activate_links_etc_and_diffs_services() {
        let t = tempfile::tempdir().unwrap();
        package(t.path(), "hello", &[("bin/hello", "#!/bin/sh\necho hello from the profile\n")]);
        package(t.path(), "tools", &[("bin/tool", "x")]);
        let mut s = store(&t.path().join("store"));
        let host = t.path().join("host");
        fs::create_dir_all(host.join("etc")).unwrap();
        fs::write(host.join("etc/motd"), "original\n").unwrap();
        let log = |name: &str| format!("echo {name} >> \"$FERRY_ROOT/log\"");
        let base = os(t.path(), "");
        let v1 = with_services(
            base.clone(),
            &[
                ("keep", &log("start keep"), &log("stop keep")),
                ("change", &log("start change v1"), &log("stop change v1")),
                (
                    "remove",
                    &(log("start remove") + "; hello > \"$FERRY_ROOT/hello.txt\""),
                    &log("stop remove"),
                ),
            ],
        );
        let mut v2 = with_services(
            base.clone(),
            &[
                ("keep", &log("start keep"), &log("stop keep")),
                ("change", &log("start change v2"), &log("stop change v2")),
                ("new", &log("start new"), &log("stop new")),
            ],
        );
        v2.files.clear();
        v2.files.insert("app/conf".into(), EtcFile::Text("v2\n".into()));
        let b1 = build(&mut s, &v1, &provenance()).unwrap();
        let b2 = build(&mut s, &v2, &provenance()).unwrap();
        let (p1, p2) = (s.physical_path(&b1.path), s.physical_path(&b2.path));

        let (ok, out) = activate(&p1, &host, None);
        assert!(ok, "{out}");
        assert_eq!(fs::read_link(host.join("etc/motd")).unwrap(), p1.join("etc/motd"));
        assert_eq!(fs::read_to_string(host.join("etc/motd.ferry-orig")).unwrap(), "original\n");
        assert_eq!(fs::read_to_string(host.join("hello.txt")).unwrap(), "hello from the profile\n");
        assert_eq!(
            fs::read_to_string(host.join("log")).unwrap(),
            "start keep\nstart change v1\nstart remove\n"
        );

        fs::remove_file(host.join("log")).unwrap();
        let (ok, out) = activate(&p2, &host, Some(&p1));
        assert!(ok, "{out}");
        assert_eq!(
            fs::read_to_string(host.join("log")).unwrap(),
            "stop remove\nstop change v1\nstart change v2\nstart new\n"
        );
        assert!(out.contains("activate: stopping service remove (removed)"), "{out}");
        assert!(out.contains("activate: restarting service change"), "{out}");
        assert!(out.contains("activate: starting service new"), "{out}");
        // motd was only in v1: removed, and the original restored.
        assert_eq!(fs::read_to_string(host.join("etc/motd")).unwrap(), "original\n");
        assert_eq!(fs::read_link(host.join("etc/app/conf")).unwrap(), p2.join("etc/app/conf"));
        assert_eq!(fs::read_link(host.join("etc/hostname")).unwrap(), p2.join("etc/hostname"));

        // Rolling back: v1's activate with v2 as the previous system.
        fs::remove_file(host.join("log")).unwrap();
        let (ok, out) = activate(&p1, &host, Some(&p2));
        assert!(ok, "{out}");
        assert_eq!(
            fs::read_to_string(host.join("log")).unwrap(),
            "stop new\nstop change v2\nstart change v1\nstart remove\n"
        );
        assert!(!host.join("etc/app/conf").exists());
        // Same system again: nothing to do.
        fs::remove_file(host.join("log")).unwrap();
        let (ok, _) = activate(&p1, &host, Some(&p1));
        assert!(ok);
        assert!(!host.join("log").exists());
    }

    #[test]
    fn failing_service_fails_activation() {
        let t = tempfile::tempdir().unwrap();
        package(t.path(), "hello", &[("bin/hello", "x")]);
        package(t.path(), "tools", &[("bin/tool", "x")]);
        let mut s = store(&t.path().join("store"));
        let o = with_services(os(t.path(), ""), &[("bad", "exit 3", "true")]);
        let b = build(&mut s, &o, &provenance()).unwrap();
        let (ok, out) = activate(&s.physical_path(&b.path), &t.path().join("host"), None);
        assert!(!ok);
        assert!(out.contains("service bad failed to start"), "{out}");
    }

    #[test]
    fn provenance_outside_git_has_no_commit() {
        let t = tempfile::tempdir().unwrap();
        let p = Provenance::of_file(&t.path().join("d.toml"), None);
        assert_eq!(p.commit, None);
        assert_eq!(p.deployment_file.as_deref(), Some("d.toml"));
        assert!(!p.dirty);
    }
}
