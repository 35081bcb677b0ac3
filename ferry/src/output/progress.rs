//! Progress rendering, for the two commands that have progress:
//! - [`Board`] renders a deploy run (`deploy::progress::DeployProgress`);
//! - [`CopyBars`] renders `ferry copy`'s transfer events (`transfer::push::Progress`).
//!
//! Both draw through [`Lines`]: one line per host. On a terminal (indicatif's
//! `MultiProgress`) each line is redrawn in place and fits the terminal's width: a phase without
//! bytes (build, connect, check, activate, confirm) is its name and nothing else; a copy or an
//! agent upload is a bar; a finished copy collapses to a one-line summary kept at the front of
//! the line; a finished host shows its result. Lines about a host (activate's output,
//! warnings) are printed above the bars. When stderr is not a terminal, plain `HOST: ...` lines:
//! phase changes, and a copy's bytes at most every two seconds.
//!
//! The copy's numbers are facts from the host: bytes the host reported receiving, or the sizes
//! of the paths it acknowledged (`ProgressEvent::Received`), never bytes merely handed to the
//! connection. Rates count from the host's first received byte, so time spent waiting for a
//! build or for another host's compression does not lower them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploy::error::{error_chain, DeployError};
use deploy::progress::{DeployProgress, Phase};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use transfer::push::{Progress, ProgressEvent};

use super::{format_bytes, Printer};

/// Plain lines about a copy come at most this often per host.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// A copy (or an agent upload) under way on one host.
#[derive(Debug, Clone)]
struct Transfer {
    /// `copy` or `agent`.
    what: &'static str,
    /// Paths to send, and paths of the closure.
    paths: (usize, usize),
    total: u64,
    /// Bytes the host has.
    done: u64,
    /// When the host's first byte arrived (the rate counts from there).
    first: Option<(Instant, u64)>,
    /// When the last plain line was printed.
    said: Option<Instant>,
}

impl Transfer {
    fn new(what: &'static str, paths: (usize, usize), total: u64) -> Transfer {
        Transfer { what, paths, total, done: 0, first: None, said: None }
    }

    /// Record that the host has `done` bytes.
    fn advance(&mut self, done: u64) {
        let done = done.min(self.total);
        if self.first.is_none() && done > self.done {
            self.first = Some((Instant::now(), self.done));
        }
        self.done = self.done.max(done);
    }

    /// Bytes per second since the host's first byte (`None` until there is a rate).
    fn rate(&self) -> Option<f64> {
        let (at, from) = self.first?;
        let secs = at.elapsed().as_secs_f64();
        (secs >= 0.2).then(|| (self.done - from) as f64 / secs)
    }

    /// `1.2 MiB/22.2 MiB, 512.0 KiB/s, ETA 40 s`.
    fn figures(&self) -> String {
        let mut text = format!("{}/{}", format_bytes(self.done), format_bytes(self.total));
        if let Some(rate) = self.rate().filter(|r| *r > 0.0) {
            text.push_str(&format!(", {}/s", format_bytes(rate as u64)));
            if self.done < self.total {
                text.push_str(&format!(", ETA {:.0} s", (self.total - self.done) as f64 / rate));
            }
        }
        text
    }

    /// The words before the bar: `copy 3/12 paths` or `agent`.
    fn label(&self) -> String {
        match self.what {
            "copy" => format!("copy {}/{} paths", self.paths.0, self.paths.1),
            other => other.to_owned(),
        }
    }

    /// The one-line summary of a finished copy.
    fn summary(&self) -> String {
        let secs = self.first.map_or(0.0, |(at, _)| at.elapsed().as_secs_f64());
        let bytes = format_bytes(self.total);
        match self.what {
            "copy" => format!("copied {} path(s), {bytes} in {secs:.1} s", self.paths.0),
            other => format!("{other}: {bytes} in {secs:.1} s"),
        }
    }
}

/// One host's line.
#[derive(Debug)]
struct HostLine {
    bar: Option<ProgressBar>,
    /// The phase shown (or the result once done).
    phase: String,
    transfer: Option<Transfer>,
    /// Summaries of finished transfers, shown before the phase.
    done: Vec<String>,
    /// When the host rolls back by itself unless confirmed.
    rolls_back_at: Option<Instant>,
    finished: bool,
}

/// Every host's line (see the module docs).
#[derive(Debug)]
pub struct Lines {
    multi: Option<MultiProgress>,
    hosts: Mutex<BTreeMap<String, HostLine>>,
    /// The widest host name yet (names are padded to it).
    width: Mutex<usize>,
}

impl Lines {
    /// Bars when the printer draws them, plain lines otherwise.
    pub fn new(printer: Printer) -> Lines {
        let multi = printer
            .draws_bars()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        Lines { multi, hosts: Mutex::default(), width: Mutex::new(0) }
    }

    fn text_style() -> ProgressStyle {
        ProgressStyle::with_template("{prefix} {wide_msg}").expect("valid template")
    }

    fn bar_style() -> ProgressStyle {
        ProgressStyle::with_template("{prefix} {msg} [{wide_bar}]")
            .expect("valid template")
            .progress_chars("=> ")
    }

    /// Run `f` on host `name`'s line (made on first use), then redraw it.
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut HostLine) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let width = {
            let mut w = self.width.lock().unwrap_or_else(|p| p.into_inner());
            *w = (*w).max(name.chars().count());
            *w
        };
        let line = hosts.entry(name.to_owned()).or_insert_with(|| HostLine {
            bar: self.multi.as_ref().map(|m| {
                let bar = m.add(ProgressBar::new(0));
                bar.set_style(Self::text_style());
                bar
            }),
            phase: "waiting".into(),
            transfer: None,
            done: Vec::new(),
            rolls_back_at: None,
            finished: false,
        });
        let out = f(line);
        if let Some(bar) = &line.bar {
            bar.set_prefix(format!("{name:<width$}"));
            let mut words = line.done.join("; ");
            match &line.transfer {
                Some(t) if !line.finished => {
                    bar.set_style(Self::bar_style());
                    bar.set_length(t.total.max(1));
                    bar.set_position(t.done);
                    if !words.is_empty() {
                        words.push_str("; ");
                    }
                    bar.set_message(format!("{words}{} {}", t.label(), t.figures()));
                }
                _ => {
                    bar.set_style(Self::text_style());
                    let phase = &line.phase;
                    let text =
                        if words.is_empty() { phase.clone() } else { format!("{phase} ({words})") };
                    if line.finished {
                        bar.finish_with_message(text);
                    } else {
                        bar.set_message(text);
                    }
                }
            }
        }
        out
    }

    /// A line about host `name`, above the bars.
    pub fn say(&self, name: &str, text: &str) {
        self.note(&format!("{name}: {text}"));
    }

    /// A line for the person watching, above the bars.
    pub fn note(&self, text: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Host `name` entered `phase`.
    fn phase(&self, name: &str, phase: &str) {
        let plain = self.with(name, |l| {
            l.phase = phase.to_owned();
            l.rolls_back_at = None;
            l.bar.is_none()
        });
        if plain {
            note!("{name}: {phase}");
        }
    }

    /// A transfer starts on host `name`; nothing is drawn for one of zero bytes.
    fn start(&self, name: &str, transfer: Transfer) {
        let plain = self.with(name, |l| {
            let plain = l.bar.is_none();
            l.transfer = (transfer.total > 0).then(|| transfer.clone());
            plain
        });
        if plain && transfer.total > 0 && transfer.what == "copy" {
            note!(
                "{name}: copying {} of {} paths, {} of NAR",
                transfer.paths.0,
                transfer.paths.1,
                format_bytes(transfer.total)
            );
        }
    }

    /// Host `name` has `done` bytes of its transfer; a complete transfer collapses to its
    /// summary.
    fn advance(&self, name: &str, done: u64) {
        let plain = self.with(name, |l| {
            let t = l.transfer.as_mut()?;
            t.advance(done);
            let complete = t.done >= t.total;
            let due = t.said.is_none_or(|s| s.elapsed() >= PLAIN_EVERY) || complete;
            let line = (l.bar.is_none() && due).then(|| {
                t.said = Some(Instant::now());
                if complete {
                    t.summary()
                } else {
                    format!("{} {}", t.label(), t.figures())
                }
            });
            if complete {
                l.done.push(t.summary());
                l.transfer = None;
            }
            line
        });
        if let Some(line) = plain {
            note!("{name}: {line}");
        }
    }

    /// Host `name` rolls back by itself after `after` unless confirmed.
    fn rolls_back(&self, name: &str, after: Duration) {
        self.with(name, |l| l.rolls_back_at = Some(Instant::now() + after));
    }

    /// Host `name` is done: its line shows `result`.
    fn finish(&self, name: &str, result: &str) {
        self.with(name, |l| {
            l.finished = true;
            l.transfer = None;
            l.phase = result.to_owned();
        });
    }

    /// Every line drawn is finished as it stands (the summary follows).
    pub fn finish_all(&self) {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        for line in hosts.values() {
            if let Some(bar) = &line.bar {
                bar.abandon();
            }
        }
    }

    /// Each host's state, one line each (for an interrupt): what it is doing and what happens
    /// to it now.
    pub fn states(&self) -> Vec<String> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .iter()
            .map(|(name, l)| {
                let state = if l.finished {
                    format!("done: {}", l.phase)
                } else if let Some(at) = l.rolls_back_at {
                    let left = at.saturating_duration_since(Instant::now()).as_secs();
                    format!("activated, not confirmed: it rolls back by itself in {left} s")
                } else if let Some(t) = &l.transfer {
                    format!(
                        "{} under way ({}): it ends, nothing is activated",
                        t.label(),
                        t.figures()
                    )
                } else {
                    match l.phase.as_str() {
                        "activate" => "activating: it is not confirmed, and rolls back by itself \
                                       if it asks for confirmation"
                            .to_owned(),
                        phase => format!("{phase}: stops before changing anything"),
                    }
                };
                format!("{name}: {state}")
            })
            .collect()
    }
}

/// All hosts' progress of a deploy run.
#[derive(Debug)]
pub struct Board {
    lines: Arc<Lines>,
    /// What a host's line says when it succeeded (`ok`, `rolled back`).
    success: &'static str,
}

impl Board {
    /// Bars when the printer draws them; `success` is the word for a host that succeeded.
    pub fn new(printer: Printer, success: &'static str) -> Board {
        Board { lines: Arc::new(Lines::new(printer)), success }
    }

    /// The lines, shared with an interrupt handler.
    pub fn lines(&self) -> Arc<Lines> {
        self.lines.clone()
    }
}

impl DeployProgress for Board {
    fn start(&self, host: &str) {
        // The line, drawn as `waiting` until its first phase (no plain line).
        self.lines.with(host, |_| ());
    }
    fn phase(&self, host: &str, phase: Phase) {
        self.lines.phase(host, &phase.to_string());
    }
    fn line(&self, host: &str, text: &str) {
        // `-q`: the host's log lines go, its warnings stay.
        if !crate::settings::quiet() || text.starts_with("warning") {
            self.lines.say(host, text);
        }
    }
    fn copy_plan(&self, host: &str, missing: usize, closure: usize, nar_bytes: u64) {
        self.lines.start(host, Transfer::new("copy", (missing, closure), nar_bytes));
    }
    fn copy_received(&self, host: &str, nar_bytes: u64) {
        self.lines.advance(host, nar_bytes);
    }
    fn confirm_asked(&self, host: &str, rolls_back_in: Duration) {
        self.lines.rolls_back(host, rolls_back_in);
    }
    fn agent_upload(&self, host: &str, sent: u64, total: u64, codec: &str) {
        agent_upload(&self.lines, host, sent, total, codec);
    }
    fn error(&self, host: &str, error: &DeployError) {
        self.lines.say(host, &format!("error: {}", error_chain(error)));
    }
    fn done(&self, host: &str, success: bool) {
        self.lines.finish(host, if success { self.success } else { "FAILED" });
    }
    fn built(&self, systems: usize, elapsed: Duration) {
        if !crate::settings::quiet() {
            let line = format!("built {systems} system(s) in {:.1}s", elapsed.as_secs_f64());
            self.lines.note(&line);
        }
    }
}

/// The agent upload's progress (its bytes are written to the host's disk as they arrive).
fn agent_upload(lines: &Lines, host: &str, sent: u64, total: u64, codec: &str) {
    let fresh = lines.with(host, |l| l.transfer.as_ref().is_none_or(|t| t.what != "agent"));
    if fresh {
        // A resumed upload starts from the bytes the host holds (not counted in the rate).
        let transfer = Transfer { done: sent, ..Transfer::new("agent", (1, 1), total) };
        lines.start(host, transfer);
        if lines.multi.is_none() {
            let (sent, total) = (format_bytes(sent), format_bytes(total));
            note!("{host}: uploading agent {sent}/{total} ({codec})");
        }
    }
    lines.advance(host, sent);
}

/// The progress of `ferry copy`: one line per host.
#[derive(Debug)]
pub struct CopyBars {
    lines: Lines,
}

impl CopyBars {
    /// Bars when the printer draws them, plain lines otherwise.
    pub fn new(printer: Printer) -> Self {
        CopyBars { lines: Lines::new(printer) }
    }

    /// Finish every line (the summary follows).
    pub fn finish(&self) {
        self.lines.finish_all();
    }
}

impl Progress for CopyBars {
    fn event(&self, host: &str, event: &ProgressEvent<'_>) {
        match event {
            ProgressEvent::Plan { closure_paths, missing_paths, nar_bytes, resumed_bytes } => {
                if *resumed_bytes > 0 {
                    let resumed = format_bytes(*resumed_bytes);
                    self.lines.say(host, &format!("resuming: the host holds {resumed} already"));
                }
                let paths = (*missing_paths, *closure_paths);
                self.lines.start(host, Transfer::new("copy", paths, *nar_bytes));
            }
            ProgressEvent::Received { nar_bytes } => self.lines.advance(host, *nar_bytes),
            ProgressEvent::AgentUpload { sent, total, codec } => {
                agent_upload(&self.lines, host, *sent, *total, codec)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_says_what_the_host_has() {
        let mut t = Transfer::new("copy", (3, 12), 4 << 20);
        assert_eq!(t.label(), "copy 3/12 paths");
        assert_eq!(t.figures(), "0 B/4.0 MiB");
        t.advance(1 << 20);
        t.advance(512);
        assert_eq!(t.done, 1 << 20, "a host's count never goes back");
        t.advance(9 << 20);
        assert_eq!(t.done, 4 << 20, "nor past the total");
        assert!(t.summary().starts_with("copied 3 path(s), 4.0 MiB in "), "{}", t.summary());
    }

    #[test]
    fn interrupt_states() {
        let lines = Lines::new(Printer::detect().with_json(false));
        let lines = Lines { multi: None, ..lines };
        lines.with("a", |l| l.phase = "connect".into());
        lines.with("b", |l| l.rolls_back_at = Some(Instant::now() + Duration::from_secs(27)));
        lines.finish("c", "ok");
        let states = lines.states();
        assert_eq!(states[0], "a: connect: stops before changing anything");
        assert!(
            states[1].starts_with("b: activated, not confirmed: it rolls back by itself in 2"),
            "{}",
            states[1]
        );
        assert_eq!(states[2], "c: done: ok");
    }
}
