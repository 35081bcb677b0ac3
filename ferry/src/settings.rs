//! Settings: the global options every command accepts, and opening the store they name.
//!
//! The store is found from `--store`, `--root`, `--store-dir` and `--state-dir` (or
//! `FERRY_STORE`, `FERRY_ROOT`, `FERRY_STORE_DIR`, `FERRY_STATE_DIR`), resolved by
//! `store::StoreLayout::resolve`: `--store nix` (or `guix`) reads the machine's Nix (Guix)
//! store in place, under `--root` when given as for Nix's chroot stores, and never writes to
//! it; ferry's key and state stay in ferry's state dir.
//!
//! The other global options say how much is said: `-v` (repeatable) raises the level of the
//! diagnostics written to stderr (`tracing`), `-q` keeps only warnings and errors
//! there (no notes: [`quiet`], which `note!` follows); results on stdout never change. `--color` (and `NO_COLOR`) choose
//! whether help and usage errors are colored.

use anyhow::Context;
use nar_core::store_path::StorePath;
use store::{DbKind, LayoutOptions, Store, StoreLayout};

/// The help heading of the global options (in every command's help).
const GLOBAL: &str = "Global options";

/// Options every subcommand accepts. (`hide_env_values`: help names the variable, never the
/// value it has in the caller's environment.)
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Root directory the store lives under (default: / as root, else ~/.local/share/ferry).
    #[arg(long, global = true, help_heading = GLOBAL, env = "FERRY_ROOT",
          hide_env_values = true)]
    pub root: Option<std::path::PathBuf>,
    /// Logical store directory (default /gnu/store).
    #[arg(long, global = true, help_heading = GLOBAL, env = "FERRY_STORE_DIR",
          hide_env_values = true)]
    pub store_dir: Option<String>,
    /// State directory (default /var/ferry under the root).
    #[arg(long, global = true, help_heading = GLOBAL, env = "FERRY_STATE_DIR",
          hide_env_values = true)]
    pub state_dir: Option<std::path::PathBuf>,
    /// The local store: nix (/nix/store and Nix's database, read in place), guix (/gnu/store,
    /// /var/guix/db) or ferry (ferry's own; default: ferry's, or a Nix or Guix database found
    /// under --root).
    #[arg(long, global = true, help_heading = GLOBAL, env = "FERRY_STORE", hide_env_values = true,
          value_name = "nix|guix|ferry", value_parser = parse_store_kind)]
    pub store: Option<DbKind>,
    /// More diagnostics on stderr (-v: debug, -vv: trace); results on stdout are the same.
    #[arg(short, long, global = true, help_heading = GLOBAL, action = clap::ArgAction::Count,
          conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only warnings and errors on stderr (no notes or summaries); results on stdout are the
    /// same.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// Color in help and usage errors: auto (a terminal, unless NO_COLOR is set), always,
    /// never.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "WHEN",
          default_value = "auto")]
    pub color: clap::ColorChoice,
}

static QUIET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

impl GlobalOpts {
    /// Apply `-v`/`-q` to this process: the diagnostics level on stderr and [`quiet`]. Called
    /// once, by `main`.
    pub fn init_diagnostics(&self) {
        use tracing_subscriber::filter::LevelFilter;
        let _ = QUIET.set(self.quiet);
        let level = match (self.quiet, self.verbose) {
            (true, _) | (false, 0) => LevelFilter::WARN,
            (false, 1) => LevelFilter::DEBUG,
            (false, _) => LevelFilter::TRACE,
        };
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .try_init();
    }
}

/// Whether `-q` was given: notes for people are not written (warnings, errors and results
/// are). Progress drawing should follow it too.
pub fn quiet() -> bool {
    QUIET.get().copied().unwrap_or(false)
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
