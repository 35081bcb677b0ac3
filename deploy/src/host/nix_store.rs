//! The host's own Nix store as the destination (`store = "nix"` or `"auto"` in a machine's
//! configuration): the paths the host lacks are those Nix's database lacks; the agent reads
//! Nix's database in place (read only; delta bases are Nix's own paths, checked against the NAR
//! hashes recorded there) and hands each verified NAR, as it arrives, to `nix-store --serve
//! --write` ([`transfer::agent::nix_store`]), with `--store ROOT` for a root other than `/`,
//! as Nix's chroot stores are named. Nix registers each path with the host's ferry Nix
//! signature; nothing is written twice.

use std::io::{Read, Write};
use std::path::Path;

use nar_core::store_path::StoreDir;
use store::{DbKind, LayoutOptions, Store, StoreLayout};
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
}

impl HostStore {
    pub(crate) fn name(self) -> &'static str {
        match self {
            HostStore::Ferry => "ferry",
            HostStore::Nix => "nix",
        }
    }
}

impl HostRoot {
    /// The store `asked` names (`nix`, `ferry`, `auto`: Nix's for a `/nix/store` deployment
    /// when the root has Nix's database and `nix-store` is on PATH; `None`: ferry's).
    pub(crate) fn host_store(&self, asked: Option<&str>) -> Result<HostStore, HostCommandError> {
        Ok(match asked {
            None | Some("ferry") => HostStore::Ferry,
            Some("nix") => HostStore::Nix,
            Some("auto")
                if self.store.store_dir.as_deref() == Some(StoreDir::NIX)
                    && self.nix_db().exists()
                    && on_path("nix-store") =>
            {
                HostStore::Nix
            }
            Some("auto") => HostStore::Ferry,
            Some(other) => {
                return Err(HostCommandError::BadRequest(format!(
                    "unknown host store {other:?} (nix, ferry or auto)"
                )))
            }
        })
    }

    fn nix_db(&self) -> std::path::PathBuf {
        self.root().join("nix/var/nix/db/db.sqlite")
    }

    /// The host's Nix store (read only: Nix writes it).
    pub(crate) fn nix_store(&self) -> Result<Store, HostCommandError> {
        let layout = StoreLayout::resolve(&LayoutOptions {
            root: Some(self.root().to_owned()),
            store: Some(DbKind::Nix),
            ..LayoutOptions::default()
        })?;
        if !layout.database().1.exists() {
            return Err(HostCommandError::NoNixStore(layout.database().1.display().to_string()));
        }
        Ok(Store::open_read_only(layout)?)
    }

    /// The session's copy into the host's Nix store: the agent on `input` and `out`, reading
    /// Nix's database in place and handing each verified path to `nix-store --serve --write`
    /// ([`transfer::agent::nix_store`]); ferry's state (ACL, partial files, the host's Nix key)
    /// stays in ferry's state dir under the root.
    pub(crate) fn copy_into_nix<R: Read, W: Write + Send>(
        &self,
        input: R,
        out: W,
    ) -> Result<(), HostCommandError> {
        let layout = self.nix_store()?.layout().clone();
        let mut options = AgentOptions::new(layout);
        options.nix = Some(NixOptions::new(self.root()));
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
