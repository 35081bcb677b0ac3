//! One module per subcommand, and what they share.

pub mod archive;
pub mod bench;
pub mod copy;
pub mod deploy;
pub mod gc;
pub mod host;
pub mod nar;
pub mod reference;
pub mod serve;
pub mod store;

/// True when the error is a broken pipe on output (`ferry nar dump x | head`): not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
