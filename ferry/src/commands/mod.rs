//! One module per subcommand, and what they share.

pub mod archive;
pub mod bench;
pub mod board;
pub mod copy;
pub mod deploy;
pub mod gc;
pub mod host;
pub mod nar;
pub mod serve;
pub mod store;

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
}

/// True when the error is a broken pipe on output (`ferry nar dump x | head`): not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
