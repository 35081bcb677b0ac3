//! Settings: the global options every command accepts, and opening the store they name.
//!
//! The store is found from `--store`, `--root`, `--store-dir` and `--state-dir` (or
//! `FERRY_STORE`, `FERRY_ROOT`, `FERRY_STORE_DIR`, `FERRY_STATE_DIR`), resolved by
//! `store::StoreLayout::resolve`: `--store nix` (or `guix`) reads the machine's Nix (Guix)
//! store in place, under `--root` when given as for Nix's chroot stores, and never writes to
//! it; ferry's key and state stay in ferry's state dir.

use anyhow::Context;
use nar_core::store_path::StorePath;
use store::{DbKind, LayoutOptions, Store, StoreLayout};

/// Options every subcommand accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Root directory the store lives under (env FERRY_ROOT).
    #[arg(long, global = true, env = "FERRY_ROOT")]
    pub root: Option<std::path::PathBuf>,
    /// Logical store directory (env FERRY_STORE_DIR; default /gnu/store).
    #[arg(long, global = true, env = "FERRY_STORE_DIR")]
    pub store_dir: Option<String>,
    /// State directory (env FERRY_STATE_DIR; default /var/ferry under the root).
    #[arg(long, global = true, env = "FERRY_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// The local store: nix (/nix/store and Nix's database, read in place), guix (/gnu/store,
    /// /var/guix/db) or ferry (ferry's own; env FERRY_STORE; default: ferry's, or a Nix or
    /// Guix database found under --root).
    #[arg(long, global = true, env = "FERRY_STORE", value_name = "nix|guix|ferry",
          value_parser = parse_store_kind)]
    pub store: Option<DbKind>,
}

fn parse_store_kind(text: &str) -> Result<DbKind, String> {
    text.parse().map_err(|e: store::LayoutError| e.to_string())
}

/// The global options' choices of store (the environment and defaults still to apply).
pub fn layout_options(global: &GlobalOpts) -> LayoutOptions {
    LayoutOptions {
        root: global.root.clone(),
        store_dir: global.store_dir.clone(),
        state_dir: global.state_dir.clone(),
        store: global.store,
    }
}

/// The layout from the global options, the environment and the defaults.
pub fn layout(global: &GlobalOpts) -> anyhow::Result<StoreLayout> {
    Ok(StoreLayout::resolve(&layout_options(global))?)
}

/// Open the store for reading (ferry's database, or a Nix/Guix one under the root).
pub fn open_read_only(global: &GlobalOpts) -> anyhow::Result<Store> {
    Ok(Store::open_read_only(layout(global)?)?)
}

/// Open the store for writing.
pub fn open_writable(global: &GlobalOpts) -> anyhow::Result<Store> {
    Ok(Store::open(layout(global)?)?)
}

/// A command-line store path: logical (`/gnu/store/…`, sub-paths allowed) or physical
/// (`<root>/gnu/store/…`).
pub fn parse_store_arg(store: &Store, text: &str) -> anyhow::Result<StorePath> {
    let dir = store.store_dir();
    if let Ok((item, _)) = dir.split_path(text) {
        return Ok(item);
    }
    let phys = store.layout().physical_store_dir();
    if let Ok(rest) = std::path::Path::new(text).strip_prefix(&phys) {
        let logical = format!("{dir}/{}", rest.to_string_lossy());
        if let Ok((item, _)) = dir.split_path(&logical) {
            return Ok(item);
        }
    }
    dir.parse_path(text).with_context(|| format!("{text:?} is not a store path"))
}
