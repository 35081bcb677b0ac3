//! `ferry store ...`.

use std::process::ExitCode;

use super::GlobalOpts;

/// Store subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Print the store path a file or tree would get when added as a source item.
    Path {
        /// Name of the item (default: the file name of PATH).
        #[arg(long)]
        name: Option<String>,
        /// File or tree.
        path: std::path::PathBuf,
    },
}

pub fn run(global: &GlobalOpts, command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Path { name, path } => {
            super::nar::print_source_path(global, name.as_deref(), &path)
        }
    }
}
