//! Snapshots of what people read: the `--help` of every command, the main error messages, and
//! the generated reference `docs/cli.md`. A change of wording shows up as a snapshot diff to
//! review.
//!
//! Bless (accept) changed snapshots after reviewing them:
//!
//! ```sh
//! INSTA_UPDATE=always cargo test -p ferry --test integration cli_reference
//! ```
//!
//! (or `cargo insta review` with cargo-insta installed). The same command rewrites
//! `docs/cli.md` (else: `cargo run -p ferry -- man --markdown > docs/cli.md`). Snapshots hold
//! no paths or times: the
//! commands run in a temp directory with relative file names, and the temp directory is
//! replaced by `[DIR]`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::util;

/// `ferry` with colors left to the test (`CLICOLOR_FORCE` in the caller's environment would
/// color help and errors).
fn ferry() -> Command {
    let mut c = util::ferry();
    c.env_remove("CLICOLOR_FORCE").env_remove("CLICOLOR").env_remove("NO_COLOR");
    c
}

/// `exit: N`, then stdout and stderr, with `dir` replaced by `[DIR]`.
fn transcript(out: &Output, dir: Option<&Path>) -> String {
    let text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().map_or("signal".to_owned(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match dir {
        Some(d) => text.replace(&d.display().to_string(), "[DIR]"),
        None => text,
    }
}

/// The commands of the reference: `ferry`, `ferry deploy`, `ferry store add`, …
fn commands(markdown: &str) -> Vec<Vec<String>> {
    markdown
        .lines()
        .filter_map(|l| l.strip_prefix("## `")?.strip_suffix('`'))
        .map(|c| c.split(' ').skip(1).map(str::to_owned).collect())
        .collect()
}

fn markdown() -> String {
    let out = ferry().args(["man", "--markdown"]).output().unwrap();
    assert!(out.status.success(), "{}", transcript(&out, None));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    let committed = fs::read_to_string(&path).unwrap_or_default();
    let generated = markdown();
    if committed != generated && std::env::var("INSTA_UPDATE").is_ok_and(|v| v == "always") {
        fs::write(&path, &generated).unwrap();
        return;
    }
    assert!(
        committed == generated,
        "docs/cli.md differs from what the binary generates: regenerate it with\n    \
         cargo run -p ferry -- man --markdown > docs/cli.md\n(or INSTA_UPDATE=always cargo \
         test -p ferry --test integration cli_reference) and review the diff"
    );
}

#[test]
fn help_of_every_command() {
    let markdown = markdown();
    let commands = commands(&markdown);
    assert!(commands.len() > 20, "{commands:?}");
    for words in commands {
        let out = ferry().args(&words).arg("--help").output().unwrap();
        assert!(out.status.success(), "{}", transcript(&out, None));
        let help = String::from_utf8(out.stdout).unwrap();
        // The reference shows exactly what `--help` prints.
        let title = format!(
            "## `{}`",
            ["ferry".to_owned()].iter().chain(&words).cloned().collect::<Vec<_>>().join(" ")
        );
        let section = markdown.split(&title).nth(1).expect("a section");
        assert!(section.starts_with(&format!("\n\n```text\n{}\n```", help.trim_end())), "{title}");
        let name = ["help".to_owned()].iter().chain(&words).cloned().collect::<Vec<_>>().join("_");
        insta::assert_snapshot!(name, help);
    }
}

/// A temp directory with `fleet.toml` (`text`); `ferry ARGS` run there.
fn deploy_error(text: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("fleet.toml"), text).unwrap();
    fs::create_dir(dir.path().join("home")).unwrap();
    let out = ferry()
        .current_dir(dir.path())
        .env("HOME", dir.path().join("home"))
        .env("FERRY_ROOT", dir.path().join("coordinator"))
        .args(args)
        .output()
        .unwrap();
    transcript(&out, Some(dir.path()))
}

const FLEET: &str = "\
[operating-system.base]
timezone = \"Etc/UTC\"

[[machine]]
name = \"web1\"
tags = [\"web\"]
operating-system = \"base\"
[machine.configuration]
host-name = \"203.0.113.7\"

[[machine]]
name = \"web2\"
tags = [\"web\"]
operating-system = \"base\"
[machine.configuration]
host-name = \"203.0.113.8\"
";

#[test]
fn error_messages() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown_key",
            FLEET.replace("host-name = \"203.0.113.8\"", "hostname = \"203.0.113.8\""),
            &["deploy", "fleet.toml"],
        ),
        (
            "bad_value",
            FLEET.replace("tags = [\"web\"]\noperating", "tags = \"web\"\noperating"),
            &["deploy", "fleet.toml"],
        ),
        ("bad_port", format!("{FLEET}port = \"22\"\n"), &["deploy", "fleet.toml"]),
        ("unknown_machine", FLEET.to_owned(), &["deploy", "fleet.toml", "--on", "web3"]),
        ("unknown_tag", FLEET.to_owned(), &["deploy", "fleet.toml", "--on", "@webs"]),
        ("glob_matches_nothing", FLEET.to_owned(), &["deploy", "fleet.toml", "--on", "db*"]),
        ("execute_without_command", FLEET.to_owned(), &["deploy", "fleet.toml", "-x"]),
        (
            "execute_without_separator",
            FLEET.to_owned(),
            &["deploy", "fleet.toml", "-x", "uname", "-a"],
        ),
        ("separator_without_execute", FLEET.to_owned(), &["deploy", "fleet.toml", "--", "uname"]),
        (
            "missing_package_directory",
            FLEET.replace("timezone = \"Etc/UTC\"", "packages = [\"./pkgs/nope\"]"),
            &["deploy", "fleet.toml", "--on", "web1"],
        ),
        (
            "same_host_twice",
            FLEET.replace("203.0.113.8", "203.0.113.7"),
            &["deploy", "fleet.toml", "--on", "nothing"],
        ),
        ("unknown_option", FLEET.to_owned(), &["deploy", "fleet.toml", "--rollback"]),
    ];
    for (name, text, args) in cases {
        insta::assert_snapshot!(format!("error_{name}"), deploy_error(text, args));
    }
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let code = |text: &str, args: &[&str]| -> String {
        deploy_error(text, args).lines().next().unwrap().to_owned()
    };
    assert_eq!(code(FLEET, &["deploy", "fleet.toml", "-x"]), "exit: 2");
    assert_eq!(code(FLEET, &["deploy", "fleet.toml", "--bogus"]), "exit: 2");
    assert_eq!(code(FLEET, &["deploy", "fleet.toml", "--on", "zz"]), "exit: 1");
    assert_eq!(code("[[machine]]\nbogus = 1\n", &["deploy", "fleet.toml"]), "exit: 1");
}

#[test]
fn version_names_the_commit() {
    let out = ferry().arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(version.starts_with(&format!("ferry {}", env!("CARGO_PKG_VERSION"))), "{version}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match head {
        Ok(h) if h.status.success() => {
            let commit = String::from_utf8(h.stdout).unwrap();
            assert_eq!(
                version.trim(),
                format!("ferry {} ({})", env!("CARGO_PKG_VERSION"), commit.trim())
            );
        }
        // Built outside git: the version alone.
        _ => assert_eq!(version.trim(), format!("ferry {}", env!("CARGO_PKG_VERSION"))),
    }
}

#[test]
fn completions_and_man_pages() {
    let run = |args: &[&str]| {
        let out = ferry().args(args).output().unwrap();
        assert!(out.status.success(), "{}", transcript(&out, None));
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("_ferry()") && bash.contains("deploy"), "{bash}");
    assert!(run(&["completions", "zsh"]).starts_with("#compdef ferry"));
    assert!(run(&["completions", "fish"]).contains("complete -c ferry"));
    let man = run(&["man"]);
    assert!(man.contains(".TH ferry 1") && man.contains("deploy"), "{man}");
    assert!(run(&["man", "store", "add"]).contains(".TH ferry-store-add 1"));
    let out = ferry().args(["man", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn color_is_asked_for_or_off() {
    let err = |extra: &[&str], no_color: bool| {
        let mut c = ferry();
        c.args(extra).arg("--bogus");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(err(&["--color", "always"], false).contains('\x1b'));
    assert!(err(&["--color=always"], true).contains('\x1b'), "always wins over NO_COLOR");
    assert!(!err(&["--color", "never"], false).contains('\x1b'));
    assert!(!err(&[], true).contains('\x1b'));
}

#[test]
fn quiet_keeps_results_and_drops_notes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = ferry().arg("--root").arg(dir.path()).args(args).output().unwrap();
        assert!(out.status.success(), "{}", transcript(&out, Some(dir.path())));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (out, err) = run(&["store", "verify"]);
    assert!(err.contains("checked 0 valid paths"), "{err}");
    let (quiet_out, quiet_err) = run(&["-q", "store", "verify"]);
    assert_eq!((quiet_out, quiet_err.as_str()), (out, ""));
    let (_, verbose_err) = run(&["-v", "store", "verify"]);
    assert!(verbose_err.contains("ferry 0.") && verbose_err.contains("DEBUG"), "{verbose_err}");
    let out = ferry().args(["-q", "-v", "store", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "-q and -v conflict");
}

#[test]
fn compression_is_one_option() {
    let copy = |args: &[&str]| {
        let out = ferry().args(["copy", "--to", "local:///nowhere"]).args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, err) = copy(&["--compress", "zstd", "/gnu/store/x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("expected auto, max, none or 0..=19"), "{err}");
    // The old spellings stay as hidden aliases, and conflict with the new one.
    let (code, err) = copy(&["--no-compress", "--compress", "3", "/gnu/store/x"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = copy(&["--compression-level", "3", "--compress", "3", "/gnu/store/x"]);
    assert_eq!(code, Some(2), "{err}");
    let help = ferry().args(["copy", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(!help.contains("--no-compress") && !help.contains("--compression-level"), "{help}");
}
