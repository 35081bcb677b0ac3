//! `ferry serve`: the host agent, speaking the ferry protocol on stdin and stdout.
//!
//! The store is chosen with the global `--root`, `--store-dir`, `--state-dir` and `--store`.
//! With `--store nix` or `--store guix` the agent reads that daemon's database in place and hands
//! each verified path to the daemon's own import (`transfer::agent::daemon`); ferry's state
//! (ACL, keys, partial files) stays in ferry's state dir. Paths must be signed by a key in
//! `<state>/acl`. The coordinator (`ferry copy`, `ferry deploy`) starts it
//! over SSH or as a local subprocess; it is not meant to be run by hand.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::process::ExitCode;

use store::DbKind;
use transfer::agent::daemon::DaemonStore;
use transfer::agent::guix_store::GuixOptions;
use transfer::agent::nix_store::NixOptions;
use transfer::agent::{serve, AgentOptions};

use crate::settings::GlobalOpts;

/// Test hook: the agent exits abruptly (as if killed) once it has read this many bytes.
pub const DIE_AFTER_ENV: &str = "FERRY_TEST_AGENT_DIE_AFTER";

/// `ferry serve` arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Keep partially received paths of at least this many NAR bytes for resume.
    #[arg(long, default_value_t = 1 << 20, hide = true)]
    pub partial_min: u64,
}

/// Exits the process once `left` bytes have been read.
struct DieAfter<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for DieAfter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            std::process::exit(137);
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Unbuffered handles on fds 0 and 1 (std's stdout is line-buffered), with the
/// [`DIE_AFTER_ENV`] hook on the input.
pub fn std_streams() -> io::Result<(Box<dyn Read + Send>, File)> {
    let stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let input: Box<dyn Read + Send> =
        match std::env::var(DIE_AFTER_ENV).ok().and_then(|v| v.parse().ok()) {
            Some(left) => Box::new(DieAfter { inner: stdin, left }),
            None => Box::new(stdin),
        };
    Ok((input, stdout))
}

pub fn run(global: &GlobalOpts, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let layout = crate::settings::layout(global)?;
    let daemon = match layout.database().0 {
        DbKind::Nix => Some(DaemonStore::Nix(NixOptions::new(layout.root()))),
        DbKind::Guix => Some(DaemonStore::Guix(GuixOptions::default())),
        DbKind::Ferry => None,
    };
    let mut options = AgentOptions::new(layout);
    options.daemon = daemon;
    options.partial_min = args.partial_min;
    let (input, stdout) = std_streams()?;
    match serve(options, input, stdout) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("ferry serve: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
