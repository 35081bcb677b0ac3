//! `ferry`: build systems, copy their closures to hosts, activate them.
//!
//! The binary is a thin layer: argument parsing (clap), output policy and exit codes. Each
//! subcommand lives in its own module under `cmd/` and calls into the library crates.
//! Exit codes: 0 success, 1 error, 2 usage error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod activation;
mod checks;
mod cmd;
mod deployment;
mod generations;
mod host;
mod host_protocol;
mod link;
mod system;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Store and archive transfer engine with a deploy front end"
)]
struct Cli {
    #[command(flatten)]
    global: cmd::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with NAR archives (nix-archive-1).
    #[command(subcommand)]
    Nar(cmd::nar::NarCommand),
    /// Work with the store.
    #[command(subcommand)]
    Store(cmd::store::StoreCommand),
    /// Collect garbage, or query closures (--requisites) and referrers.
    Gc(cmd::gc::GcArgs),
    /// Export and import store items (bundles), generate keys, authorize keys (as guix archive).
    Archive(cmd::archive::ArchiveArgs),
    /// Copy closures to hosts (local://, ssh://, nix+ssh://, file://), sending only what each lacks.
    Copy(cmd::copy::CopyArgs),
    /// Measure archive transfer to hosts over an emulated link (rate, latency), full, zstd or
    /// delta.
    Bench(cmd::bench::BenchArgs),
    /// The host agent: the ferry protocol on stdin/stdout (started by `ferry copy` and deploy).
    Serve(cmd::serve::ServeArgs),
    /// Deploy the machines of a deployment file (local roots and SSH hosts), list their
    /// generations, roll them back, or run a command on them.
    Deploy(cmd::deploy::DeployArgs),
    /// The host side of `ferry deploy` (run on hosts by the agent program).
    #[command(subcommand, hide = true)]
    Host(cmd::host::HostCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Nar(command) => cmd::nar::run(&cli.global, command),
        Command::Store(command) => cmd::store::run(&cli.global, command),
        Command::Gc(args) => cmd::gc::run(&cli.global, args),
        Command::Archive(args) => cmd::archive::run(&cli.global, args),
        Command::Copy(args) => cmd::copy::run(&cli.global, args),
        Command::Bench(args) => cmd::bench::run(&cli.global, args),
        Command::Serve(args) => cmd::serve::run(&cli.global, args),
        Command::Deploy(args) => cmd::deploy::run(&cli.global, args),
        Command::Host(command) => cmd::host::run(&cli.global, command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if cmd::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ferry: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
