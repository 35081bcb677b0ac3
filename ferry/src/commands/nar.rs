//! `ferry nar ...`: dump, restore, hash and list NAR archives.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use nar_core::read::{expect_eof, read_nar, NarEvent, ReadError};

use crate::settings::GlobalOpts;

/// NAR subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum NarCommand {
    /// Write the NAR of a file, directory or symlink to stdout (as `nix-store --dump`).
    Dump {
        /// File, directory or symlink to serialize.
        path: PathBuf,
    },
    /// Unpack a NAR read from stdin into DIR, which must not exist (as `nix-store --restore`).
    Restore {
        /// Where to unpack.
        dir: PathBuf,
    },
    /// Print the SHA-256 of the NAR of each PATH, one per line (as `nix-hash --type sha256 --base32`).
    Hash {
        /// Print base16 instead of nix-base32.
        #[arg(long)]
        base16: bool,
        /// Print one JSON array: per PATH its path, hash and NAR size.
        #[arg(long)]
        json: bool,
        /// Files, directories or symlinks.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the entries of a NAR read from stdin: type, size, executable flag, path, target.
    Ls,
}

/// Stdout as a `File`, so large file contents move with `sendfile`, not through buffers. When
/// stdout is a pipe, it is widened to 1 MiB so each `sendfile` and each read of the consumer
/// moves more than the default 64 KiB (best effort: the kernel may refuse).
fn stdout_file() -> io::Result<File> {
    let file = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    if file.metadata().is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type())) {
        let _ = rustix::pipe::fcntl_setpipe_size(&file, 1 << 20);
    }
    Ok(file)
}

fn stdin_file() -> io::Result<File> {
    Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
}

pub fn run(_global: &GlobalOpts, command: NarCommand) -> anyhow::Result<ExitCode> {
    match command {
        NarCommand::Dump { path } => {
            nar_core::dump::dump_to_fd(&path, stdout_file()?)?;
        }
        NarCommand::Restore { dir } => {
            nar_core::restore::restore(stdin_file()?, &dir)
                .with_context(|| format!("restoring into {}", dir.display()))?;
        }
        NarCommand::Hash { base16, json, paths } => {
            let mut rows = Vec::new();
            for path in paths {
                let digest = nar_core::dump::hash_path(&path)?;
                let text = if base16 { digest.hash.to_hex() } else { digest.hash.to_nix32() };
                if json {
                    rows.push(serde_json::json!({
                        "path": path, "hash": format!("sha256:{text}"), "nar_size": digest.size,
                    }));
                } else {
                    writeln!(io::stdout(), "{text}")?;
                }
            }
            if json {
                let mut out = io::stdout().lock();
                serde_json::to_writer(&mut out, &rows)?;
                writeln!(out)?;
            }
        }
        NarCommand::Ls => list(stdin_file()?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per node: `TYPE<TAB>SIZE<TAB>X<TAB>PATH[ -> TARGET]`.
fn list(input: File) -> Result<(), ReadError> {
    let mut reader = BufReader::with_capacity(256 * 1024, input);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut path: Vec<u8> = Vec::new();
    let mut depth_names: Vec<usize> = Vec::new();
    let shown = |path: &[u8]| {
        if path.is_empty() {
            "/".to_owned()
        } else {
            String::from_utf8_lossy(path).into_owned()
        }
    };
    let pop = |path: &mut Vec<u8>, lens: &mut Vec<usize>| {
        if let Some(len) = lens.pop() {
            path.truncate(len);
        }
    };
    let digest = read_nar(&mut reader, |event, _| {
        match event {
            NarEvent::Directory => writeln!(out, "directory\t-\t-\t{}", shown(&path))?,
            NarEvent::Entry { name } => {
                depth_names.push(path.len());
                path.push(b'/');
                path.extend_from_slice(name);
            }
            NarEvent::File { executable, size } => {
                let x = if executable { "x" } else { "-" };
                writeln!(out, "regular\t{size}\t{x}\t{}", shown(&path))?;
            }
            NarEvent::Symlink { target } => {
                writeln!(
                    out,
                    "symlink\t-\t-\t{} -> {}",
                    shown(&path),
                    String::from_utf8_lossy(target)
                )?;
                pop(&mut path, &mut depth_names);
            }
            NarEvent::FileEnd | NarEvent::DirectoryEnd => pop(&mut path, &mut depth_names),
            NarEvent::Data(_) | NarEvent::End => {}
        }
        Ok::<(), ReadError>(())
    })?;
    expect_eof(&mut reader, digest.size)?;
    out.flush()?;
    Ok(())
}

//END
