//! Output policy, in one place (as uv's `printer.rs`): what goes to stdout, what to stderr,
//! whether progress is drawn, and how numbers are written.
//!
//! - **stdout** carries a command's results only: the lines a script reads, or with `--json`
//!   one JSON document and nothing else.
//! - **stderr** carries everything for the person watching: notes, warnings, errors, progress.
//!   Progress is drawn as bars that redraw in place only when stderr is a terminal
//!   ([`Printer::draws_bars`]); otherwise it is plain lines.
//! - **Bytes** are written in one unit system, IEC (`KiB`, `MiB`, as indicatif prints them):
//!   [`format_bytes`].
//!
//! [`Printer`] is made once in `main` ([`Printer::detect`]) and handed to every command; a
//! command with a `--json` flag switches it with [`Printer::with_json`].

use std::io::{self, IsTerminal, Write};

pub mod deploy;
pub mod progress;

/// How a command's output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// stderr is a terminal: progress bars, redrawn in place.
    Terminal,
    /// stderr is a file or a pipe: progress as plain lines.
    Plain,
    /// `--json`: stdout is one JSON document; stderr as in `Plain` or `Terminal`.
    Json {
        /// Whether stderr is a terminal.
        terminal: bool,
    },
}

/// Where output goes (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    mode: Mode,
}

impl Printer {
    /// The printer for this process: bars when stderr is a terminal.
    pub fn detect() -> Printer {
        let mode = if io::stderr().is_terminal() { Mode::Terminal } else { Mode::Plain };
        Printer { mode }
    }

    /// The same printer with `--json` on or off.
    pub fn with_json(self, json: bool) -> Printer {
        let terminal = self.terminal();
        let mode = match (json, terminal) {
            (true, _) => Mode::Json { terminal },
            (false, true) => Mode::Terminal,
            (false, false) => Mode::Plain,
        };
        Printer { mode }
    }

    /// Whether stdout carries JSON.
    pub fn is_json(&self) -> bool {
        matches!(self.mode, Mode::Json { .. })
    }

    fn terminal(&self) -> bool {
        matches!(self.mode, Mode::Terminal | Mode::Json { terminal: true })
    }

    /// Whether progress is drawn as bars redrawn in place (stderr is a terminal).
    pub fn draws_bars(&self) -> bool {
        self.terminal() && !crate::settings::quiet()
    }

    /// stdout for result lines, buffered; flush it (or drop it) before exiting.
    pub fn stdout(&self) -> io::BufWriter<io::StdoutLock<'static>> {
        io::BufWriter::new(io::stdout().lock())
    }

    /// One JSON document on stdout, on one line.
    pub fn json(&self, value: &impl serde::Serialize) -> io::Result<()> {
        let mut out = self.stdout();
        serde_json::to_writer(&mut out, value)?;
        writeln!(out)?;
        out.flush()
    }
}

/// A byte count in IEC units: `512 B`, `1.5 KiB`, `22.2 MiB`, `3.9 GiB`, `1.2 TiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_iec_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(22_210_000), "21.2 MiB");
        assert_eq!(format_bytes(5 << 30), "5.0 GiB");
        assert_eq!(format_bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn json_keeps_whether_stderr_is_a_terminal() {
        let terminal = Printer { mode: Mode::Terminal };
        assert!(terminal.with_json(true).draws_bars());
        assert!(terminal.with_json(true).is_json());
        assert!(!terminal.with_json(true).with_json(false).is_json());
        let plain = Printer { mode: Mode::Plain };
        assert!(!plain.with_json(true).draws_bars());
    }
}
