//! The host's own Nix store as the destination (`store = "nix"` or `"auto"` in a machine's
//! configuration): the paths the host lacks are those Nix's database lacks; the agent receives
//! into a ferry staging store under the root (`<root>/var/ferry/nix-staging`, store dir
//! `/nix/store`; each NAR rebuilt and hash-checked there, as always, and kept as a base for
//! the next deltas), then hands what Nix lacks to `nix-store --import`
//! ([`transfer::agent::nix_import`]), with `--store ROOT` for a root other than `/`, as
//! Nix's chroot stores are named.

use std::io::{Read, Write};
use std::path::Path;

use nar_core::store_path::StoreDir;
use store::{DbKind, LayoutOptions, Store, StoreLayout};
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

    /// The ferry store the agent receives into before Nix imports.
    fn staging_layout(&self) -> Result<StoreLayout, HostCommandError> {
        Ok(StoreLayout::resolve(&LayoutOptions {
            root: Some(self.root().join("var/ferry/nix-staging")),
            store_dir: Some(StoreDir::NIX.to_owned()),
            store: Some(DbKind::Ferry),
            state_dir: None,
        })?)
    }

    /// The session's copy into the host's Nix store: the agent on `input` and `out`, then the
    /// import of what Nix lacks.
    pub(crate) fn copy_into_nix<R: Read, W: Write + Send>(
        &self,
        input: R,
        out: W,
    ) -> Result<(), HostCommandError> {
        let nix = self.nix_store()?;
        let staging = self.staging_layout()?;
        transfer::agent::serve(AgentOptions::new(staging.clone()), input, out)
            .map_err(HostCommandError::Agent)?;
        let staged = Store::open(staging)?;
        transfer::agent::nix_import::import_into_nix(&staged, &nix, Some(self.root()))
            .map_err(HostCommandError::NixImport)?;
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
