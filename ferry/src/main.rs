//! `ferry`: build systems, copy their closures to hosts, activate them.
//!
//! The binary is a thin layer: argument parsing (clap), output policy and exit codes. Each
//! subcommand lives in its own module under `commands/` and calls into the library crates.
//! Exit codes (docs/exit-codes.md): 0 success, 1 error, 2 usage error (clap's, and the checks
//! clap cannot declare, as `DeployArgs::usage_error`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// `eprintln!` for notes to people (what was written, summaries): nothing with `-q`. Warnings
/// and errors use `eprintln!`.
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::settings::quiet() {
            eprintln!($($arg)*);
        }
    };
}

mod commands;
mod output;
mod settings;

/// `ferry --version`: the crate's version and, in a git checkout, the commit (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("FERRY_VERSION_COMMIT"));

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version = VERSION,
    about = "Store and archive transfer engine with a deploy front end",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error. Reference: docs/ in the \
                  sources, `ferry man`."
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
    /// Print shell completions for bash, zsh or fish.
    Completions(commands::reference::CompletionsArgs),
    /// Print the man page (roff), or the command-line reference (Markdown, docs/cli.md).
    Man(commands::reference::ManArgs),
    /// The host side of `ferry deploy` (run on hosts by the agent program).
    #[command(subcommand, hide = true)]
    Host(commands::host::HostCommand),
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = Cli::command().color(color_choice(&args));
    let parsed =
        command.try_get_matches_from_mut(&args).and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => return usage_exit(with_hint(err.with_cmd(&command), &args)),
    };
    // Usage errors clap's declarations cannot say (exit 2, as clap's own).
    if let Command::Deploy(args) = &cli.command {
        if let Some((kind, message)) = args.usage_error() {
            let deploy = command.find_subcommand_mut("deploy").expect("a subcommand");
            return usage_exit(deploy.error(kind, message));
        }
    }
    cli.global.init_diagnostics();
    tracing::debug!("ferry {VERSION}");
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
        Command::Completions(args) => commands::reference::completions(command, args),
        Command::Man(args) => commands::reference::man(command, args),
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

/// Print a usage error (or help, or the version) and exit as clap would: 2 for errors, 0 for
/// `--help` and `--version`.
fn usage_exit(err: clap::Error) -> ExitCode {
    let code = if err.use_stderr() { 2 } else { 0 };
    let _ = err.print();
    ExitCode::from(code)
}

/// `ferry deploy FILE -x uname -a`: the command must come after `--`; say so with the command
/// line that works.
fn with_hint(mut err: clap::Error, args: &[OsString]) -> clap::Error {
    let words: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let is_deploy = words.iter().any(|w| w == "deploy");
    let execute = words.iter().position(|w| w == "-x" || w == "--execute");
    let has_separator = words.iter().any(|w| w == "--");
    if err.kind() != ErrorKind::UnknownArgument || !is_deploy || has_separator {
        return err;
    }
    let Some(x) = execute else { return err };
    let mut fixed = vec!["ferry".to_owned()];
    fixed.extend(words[1..=x].iter().cloned());
    fixed.push("--".to_owned());
    fixed.extend(words[x + 1..].iter().cloned());
    let tip = format!("put the command after --: {}", fixed.join(" "));
    err.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec![tip.into()]));
    err
}

/// `--color WHEN` from the raw arguments (before `--`), so usage errors are colored as asked
/// too; `auto` (a terminal, and no `NO_COLOR`) when not given or not valid.
fn color_choice(args: &[OsString]) -> clap::ColorChoice {
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy()).take_while(|w| w != "--");
    let mut value = None;
    while let Some(word) = words.next() {
        if let Some(v) = word.strip_prefix("--color=") {
            value = Some(v.to_owned());
        } else if word == "--color" {
            value = words.next().map(|v| v.into_owned());
        }
    }
    value
        .and_then(|v| clap::ColorChoice::from_str(&v, true).ok())
        .unwrap_or(clap::ColorChoice::Auto)
}
