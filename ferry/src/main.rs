//! `ferry`: build systems, copy their closures to hosts, activate them.
//!
//! The binary is a thin layer: argument parsing (clap), output policy and exit codes. Each
//! subcommand lives in its own module under `cmd/` and calls into the library crates.
//! Exit codes: 0 success, 1 error, 2 usage error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod output;
mod settings;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Store and archive transfer engine with a deploy front end"
)]
struct Cli {
    #[command(flatten)]
    global: settings::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with NAR archives (nix-archive-1).
    #[command(subcommand)]
    Nar(commands::nar::NarCommand),
    /// Work with the store.
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
    /// Collect garbage, or query closures (--requisites) and referrers.
    Gc(commands::gc::GcArgs),
    /// Export and import store items (bundles), generate keys, authorize keys (as guix archive).
    Archive(commands::archive::ArchiveArgs),
    /// Copy closures to hosts (local://, ssh://, nix+ssh://, file://), sending only what each lacks.
    Copy(commands::copy::CopyArgs),
    /// Measure archive transfer to hosts over an emulated link (rate, latency), full, zstd or
    /// delta.
    Bench(commands::bench::BenchArgs),
    /// The host agent: the ferry protocol on stdin/stdout (started by `ferry copy` and deploy).
    Serve(commands::serve::ServeArgs),
    /// Deploy the machines of a deployment file (local roots and SSH hosts), list their
    /// generations, roll them back, or run a command on them.
    Deploy(commands::deploy::DeployArgs),
    /// The host side of `ferry deploy` (run on hosts by the agent program).
    #[command(subcommand, hide = true)]
    Host(commands::host::HostCommand),
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
    let printer = output::Printer::detect();
    let result = match cli.command {
        Command::Nar(command) => commands::nar::run(&cli.global, command),
        Command::Store(command) => commands::store::run(&cli.global, command),
        Command::Gc(args) => commands::gc::run(&cli.global, args),
        Command::Archive(args) => commands::archive::run(&cli.global, args),
        Command::Copy(args) => commands::copy::run(&cli.global, printer, args),
        Command::Bench(args) => commands::bench::run(&cli.global, args),
        Command::Serve(args) => commands::serve::run(&cli.global, args),
        Command::Deploy(args) => commands::deploy::run(&cli.global, printer, args),
        Command::Host(command) => commands::host::run(&cli.global, command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if commands::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ferry: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
