//! `ferry host ...` (hidden): the host side of `ferry deploy`, run on a host by the agent
//! program (over SSH, or as a local subprocess for a `local` machine). The host root is the
//! global `--root` (`/` when not given); the store under it is chosen as for `ferry serve`.
//! The requests and answers are described in [`proto::session`]; the work is
//! [`deploy::host`]'s: this module reads the arguments and stdin, and prints.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::{ExitCode, Stdio};

use anyhow::Context;

use crate::settings::GlobalOpts;
use deploy::host::HostRoot;
use proto::session::{HostLine, HostResult, SwitchSpec};

/// `ferry host` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HostCommand {
    /// Report what the checks before a copy need (request as JSON on stdin).
    Facts,
    /// One session for a whole deploy: facts, copy, activate, as requests on stdin (see
    /// `host_protocol`).
    Session,
    /// Register a generation for a system and activate it (request as JSON on stdin).
    Activate,
    /// Answer a waiting activation: confirm it, or reject it with a reason.
    Confirm {
        token: String,
        #[arg(long, value_name = "REASON")]
        reject: Option<String>,
    },
    /// Return to the previous generation (profile, activate, services).
    RollBack {
        #[command(flatten)]
        switch: SwitchArgs,
    },
    /// List the generations.
    Generations {
        #[arg(long)]
        json: bool,
        /// A Nix or Guix profile instead of ferry's.
        #[arg(long, value_name = "PATH")]
        profile: Option<String>,
    },
    /// Run a command in the root with the current system's profile on PATH.
    Exec {
        /// The command's stderr to this process's stderr (default: with its stdout, one stream
        /// of lines); `ferry deploy -x --json` keeps them apart.
        #[arg(long)]
        split_stderr: bool,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

/// A system built by Nix or Guix: its profile and switch commands (for generations whose own
/// were not recorded).
#[derive(Debug, clap::Args)]
pub struct SwitchArgs {
    /// The Nix or Guix profile instead of ferry's.
    #[arg(long, value_name = "PATH", requires = "switch")]
    profile: Option<String>,
    /// The switch command, one argument per `--switch`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true, requires = "profile")]
    switch: Vec<String>,
    /// The boot-switch command, one argument per `--boot-switch`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true, requires = "profile")]
    boot_switch: Vec<String>,
}

impl SwitchArgs {
    fn spec(self) -> Option<SwitchSpec> {
        Some(SwitchSpec {
            profile: self.profile?,
            switch: self.switch,
            boot_switch: (!self.boot_switch.is_empty()).then_some(self.boot_switch),
        })
    }
}

/// Print one protocol line; a vanished reader is ignored (the work goes on).
fn emit(line: &HostLine) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", line.encode());
    let _ = out.flush();
}

fn read_request<T: serde::de::DeserializeOwned>() -> anyhow::Result<T> {
    let mut text = String::new();
    io::stdin().read_to_string(&mut text).context("reading the request on stdin")?;
    serde_json::from_str(&text).context("the request on stdin is not what this ferry expects")
}

/// Print a result line; exit code 1 when it failed.
fn ended(result: HostResult) -> ExitCode {
    let success = result.success;
    emit(&HostLine::Result(result));
    exit_code(success)
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub fn run(global: &GlobalOpts, command: HostCommand) -> anyhow::Result<ExitCode> {
    let host = HostRoot::new(crate::settings::layout_options(global));
    match command {
        HostCommand::Facts => {
            let facts = host.facts(&read_request()?)?;
            println!("{}", serde_json::to_string(&facts)?);
        }
        HostCommand::Session => {
            let (input, out) = super::serve::std_streams()?;
            return Ok(exit_code(host.session(io::BufReader::new(input), out)?));
        }
        HostCommand::Activate => return Ok(ended(host.activate(&read_request()?, &mut emit)?)),
        HostCommand::Confirm { token, reject } => host.confirm(&token, reject.as_deref())?,
        HostCommand::RollBack { switch } => {
            return Ok(ended(host.roll_back(switch.spec(), &mut emit)?))
        }
        HostCommand::Generations { json, profile } => {
            let list = host.generations(profile.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for g in list {
                    let current = if g.current { "  (current)" } else { "" };
                    let failed =
                        g.failed.map(|why| format!("  (failed: {why})")).unwrap_or_default();
                    println!("{:>4}  {}{current}{failed}", g.number, g.system);
                }
            }
        }
        HostCommand::Exec { split_stderr, command } => {
            // The command's stdout and stderr both go to our stdout (one stream of lines),
            // unless asked to keep them apart.
            let err = if split_stderr {
                Stdio::inherit()
            } else {
                Stdio::from(io::stdout().as_fd().try_clone_to_owned()?)
            };
            let status = host.exec(&command, err)?;
            return Ok(match status.code() {
                Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
                None => {
                    eprintln!("{} was killed by a signal", command[0]);
                    ExitCode::from(128)
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
