//! The host's own Nix or Guix store as the destination (`store = "nix"`, `"guix"` or `"auto"`
//! in a machine's configuration). For Nix: the paths the host lacks are those Nix's database
//! lacks; the agent reads
//! Nix's database in place (read only; delta bases are Nix's own paths, checked against the NAR
//! hashes recorded there) and hands each verified NAR, as it arrives, to `nix-store --serve
//! --write` ([`transfer::agent::nix_store`]), with `--store ROOT` for a root other than `/`,
//! as Nix's chroot stores are named. Nix registers each path with the host's ferry Nix
//! signature; nothing is written twice. For Guix the same with Guix's database
//! (`<root>/var/guix/db`) and `guix archive --import` fed a bundle signed by the host's ferry
//! Guix key ([`transfer::agent::guix_store`]; only a stand-in for Guix could be tested).

use std::io::{Read, Write};
use std::path::Path;

use nar_core::store_path::StoreDir;
use store::{DbKind, LayoutOptions, Store, StoreLayout};
use transfer::agent::daemon::DaemonStore;
use transfer::agent::guix_store::GuixOptions;
use transfer::agent::nix_store::NixOptions;
use transfer::agent::AgentOptions;

use super::{HostCommandError, HostRoot};

/// Which store of the host a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum HostStore {
    /// ferry's own store under the root.
    #[default]
    Ferry,
    /// The host's Nix store under the root.
    Nix,
    /// The host's Guix store (its daemon's database under the root).
    Guix,
}

impl HostStore {
    pub(crate) fn name(self) -> &'static str {
        match self {
            HostStore::Ferry => "ferry",
            HostStore::Nix => "nix",
            HostStore::Guix => "guix",
        }
    }

    /// The database kind of a daemon's store (`None`: ferry's).
    fn kind(self) -> Option<DbKind> {
        match self {
            HostStore::Ferry => None,
            HostStore::Nix => Some(DbKind::Nix),
            HostStore::Guix => Some(DbKind::Guix),
        }
    }
}

impl HostRoot {
    /// The store `asked` names (`nix`, `guix`, `ferry`, `auto`: Nix's for a `/nix/store`
    /// deployment when the root has Nix's database and `nix-store` is on PATH, Guix's for a
    /// `/gnu/store` one when it has Guix's database and `guix` is on PATH; `None`: ferry's).
    pub(crate) fn host_store(&self, asked: Option<&str>) -> Result<HostStore, HostCommandError> {
        let store_dir = self.store.store_dir.as_deref();
        Ok(match asked {
            None | Some("ferry") => HostStore::Ferry,
            Some("nix") => HostStore::Nix,
            Some("guix") => HostStore::Guix,
            Some("auto")
                if store_dir == Some(StoreDir::NIX)
                    && self.root().join("nix/var/nix/db/db.sqlite").exists()
                    && on_path("nix-store") =>
            {
                HostStore::Nix
            }
            Some("auto")
                if store_dir.is_none_or(|d| d == StoreDir::GUIX)
                    && self.root().join("var/guix/db/db.sqlite").exists()
                    && on_path("guix") =>
            {
                HostStore::Guix
            }
            Some("auto") => HostStore::Ferry,
            Some(other) => {
                return Err(HostCommandError::BadRequest(format!(
                    "unknown host store {other:?} (nix, guix, ferry or auto)"
                )))
            }
        })
    }

    /// The daemon's store `which` (read only: its daemon writes it).
    pub(crate) fn daemon_store(&self, which: HostStore) -> Result<Store, HostCommandError> {
        let layout = StoreLayout::resolve(&LayoutOptions {
            root: Some(self.root().to_owned()),
            store: which.kind(),
            ..LayoutOptions::default()
        })?;
        if !layout.database().1.exists() {
            return Err(HostCommandError::NoDaemonStore {
                store: which.name(),
                db: layout.database().1.display().to_string(),
            });
        }
        Ok(Store::open_read_only(layout)?)
    }

    /// The session's copy into the daemon's store `which`: the agent on `input` and `out`,
    /// reading the daemon's database in place and handing each verified path to its import
    /// (`nix-store --serve --write`, `guix archive --import`: [`transfer::agent::daemon`]);
    /// ferry's state (ACL, partial files, the host's keys) stays in ferry's state dir under the
    /// root.
    pub(crate) fn copy_into_daemon<R: Read, W: Write + Send>(
        &self,
        which: HostStore,
        input: R,
        out: W,
    ) -> Result<(), HostCommandError> {
        let layout = self.daemon_store(which)?.layout().clone();
        let mut options = AgentOptions::new(layout);
        options.daemon = Some(match which {
            HostStore::Guix => DaemonStore::Guix(GuixOptions::default()),
            _ => DaemonStore::Nix(NixOptions::new(self.root())),
        });
        transfer::agent::serve(options, input, out).map_err(HostCommandError::Agent)?;
        Ok(())
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| is_executable(&d.join(program))))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
