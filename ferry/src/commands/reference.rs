//! `ferry completions SHELL` and `ferry man`: what the shell and `man` need, and the
//! command-line reference `docs/cli.md`, all generated from the clap definitions so they cannot
//! drift from the binary (a test compares `docs/cli.md` with `ferry man --markdown`).

use std::io::Write;
use std::process::ExitCode;

use clap::Command;

/// `ferry completions` arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh or fish (e.g. `ferry completions bash > /etc/bash_completion.d/ferry`).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells completions are made for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `ferry man` arguments.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The page of this subcommand (e.g. `deploy`, `store add`) instead of ferry(1).
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
    /// The whole command-line reference as Markdown (docs/cli.md) instead of roff.
    #[arg(long, conflicts_with = "command")]
    pub markdown: bool,
}

/// Print the completions of `shell`.
pub fn completions(mut cli: Command, args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cli, "ferry", &mut out);
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Print a man page, or the Markdown reference.
pub fn man(mut cli: Command, args: ManArgs) -> anyhow::Result<ExitCode> {
    cli.build();
    let mut out = std::io::stdout().lock();
    if args.markdown {
        out.write_all(markdown(&cli).as_bytes())?;
    } else {
        let mut page = &cli;
        let mut name = "ferry".to_owned();
        for word in &args.command {
            page = page.find_subcommand(word).ok_or_else(|| {
                anyhow::anyhow!("no command `{name} {word}` (see `{name} --help`)")
            })?;
            name = format!("{name}-{word}");
        }
        let source = format!("ferry {}", cli.get_version().unwrap_or_default());
        clap_mangen::Man::new(page.clone()).title(name).source(source).render(&mut out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// docs/cli.md: every command's `--help`, visible commands only, depth first.
pub fn markdown(cli: &Command) -> String {
    let mut text = String::from(
        "# ferry command-line reference\n\n\
         <!-- Generated from the clap definitions: do not edit. Regenerate with\n     \
         cargo run -p ferry -- man --markdown > docs/cli.md\n     \
         (the test `cli_reference_is_current` fails while this file differs; with\n     \
         INSTA_UPDATE=always it rewrites it). -->\n\n\
         Every command's `--help`, as the binary prints it. Global options (`--root`, \
         `--store-dir`, `--state-dir`, `--store`, `-v`, `-q`, `--color`) apply to every command. \
         Exit codes: [exit-codes.md](exit-codes.md); the deployment file: \
         [deployment.md](deployment.md).\n",
    );
    section(&mut text, cli, "ferry");
    text
}

fn section(text: &mut String, cmd: &Command, path: &str) {
    let help = if uses_long_help(cmd) {
        cmd.clone().render_long_help()
    } else {
        cmd.clone().render_help()
    };
    let help = help.to_string();
    text.push_str(&format!("\n## `{path}`\n\n```text\n{}\n```\n", help.trim_end()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        section(text, sub, &format!("{path} {}", sub.get_name()));
    }
}

/// Whether `--help` prints the long form (clap's own rule, `Command::use_long_help`, which is
/// not public): a long about, or an argument with a long help or possible values with help.
fn uses_long_help(cmd: &Command) -> bool {
    let long = |arg: &clap::Arg| {
        !arg.is_hide_set()
            && (arg.get_long_help().is_some()
                || arg.is_hide_long_help_set()
                || arg.is_hide_short_help_set()
                || (!arg.is_hide_possible_values_set()
                    && arg
                        .get_possible_values()
                        .iter()
                        .any(|v| !v.is_hide_set() && v.get_help().is_some())))
    };
    cmd.get_long_about().is_some()
        || cmd.get_before_long_help().is_some()
        || cmd.get_after_long_help().is_some()
        || cmd.get_arguments().any(long)
}
