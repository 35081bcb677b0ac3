//! Progress rendering, for the two commands that have progress:
//! - [`CopyBars`] renders `ferry copy`'s transfer events (`transfer::push::Progress`): one bar
//!   per host on a terminal, plain `HOST: ...` lines otherwise (at most every two seconds);
//! - [`Board`] renders a deploy run (`deploy::progress::DeployProgress`):
//!
//! Progress of a deploy run: one line per host (phase, bytes, rate, ETA) with indicatif bars
//! on a terminal, plain `HOST: ...` lines otherwise (phase changes, and the copy's bytes at
//! most every two seconds). Host output (activate lines, warnings) is printed above the bars.
//! [`Board`] renders the deploy library's [`DeployProgress`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploy::error::{error_chain, DeployError};
use deploy::progress::{DeployProgress, Phase};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use transfer::push::{Progress, ProgressEvent};

use super::{format_bytes, Printer};

/// All hosts' progress.
pub struct Board {
    multi: Option<MultiProgress>,
    /// Each host's line, made when its pipeline starts.
    hosts: Mutex<BTreeMap<String, Arc<HostBar>>>,
    /// What a host's line says when it succeeded (`ok`, `rolled back`).
    success: &'static str,
}

impl Board {
    /// Bars when the printer draws them; `success` is the word for a host that succeeded.
    pub fn new(printer: Printer, success: &'static str) -> Board {
        Board {
            multi: printer.draws_bars().then(MultiProgress::new),
            hosts: Mutex::default(),
            success,
        }
    }

    /// Host `name`'s line (made on first use).
    fn bar(&self, name: &str) -> Arc<HostBar> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.entry(name.to_owned()).or_insert_with(|| Arc::new(self.host(name))).clone()
    }

    /// A line about host `name`, above the bars.
    fn say(&self, name: &str, text: &str) {
        let line = format!("{name}: {text}");
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// The line of one host.
    fn host(&self, name: &str) -> HostBar {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:<12} {msg:<12} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(name.to_owned());
            bar.set_message("waiting");
            bar
        });
        HostBar {
            name: name.to_owned(),
            bar,
            copy: Mutex::new(Copy {
                total: 0,
                sent: 0,
                started: Instant::now(),
                last: Instant::now(),
            }),
        }
    }
}

struct Copy {
    total: u64,
    sent: u64,
    started: Instant,
    last: Instant,
}

/// One host's line.
struct HostBar {
    name: String,
    bar: Option<ProgressBar>,
    copy: Mutex<Copy>,
}

impl HostBar {
    /// The host entered a phase (connect, check, copy, activate, confirm...).
    fn phase(&self, phase: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(phase.to_owned()),
            None => eprintln!("{}: {phase}", self.name),
        }
    }

    /// The host is done: its line shows the result.
    fn finish(&self, result: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(result.to_owned());
        }
    }
}

impl HostBar {
    /// The copy is known: `missing_paths` of `closure_paths`, `nar_bytes` to send.
    fn copy_plan(&self, missing_paths: usize, closure_paths: usize, nar_bytes: u64) {
        let mut copy = self.copy.lock().unwrap_or_else(|p| p.into_inner());
        *copy = Copy { total: nar_bytes, sent: 0, started: Instant::now(), last: Instant::now() };
        match &self.bar {
            Some(bar) => {
                bar.set_length(nar_bytes);
                bar.set_message(format!("copy {missing_paths}/{closure_paths}"));
            }
            None => eprintln!(
                "{}: copying {missing_paths} of {closure_paths} paths, {}",
                self.name,
                format_bytes(nar_bytes)
            ),
        }
    }

    /// More NAR bytes went out.
    fn copy_sent(&self, nar_bytes: u64) {
        let mut copy = self.copy.lock().unwrap_or_else(|p| p.into_inner());
        copy.sent += nar_bytes;
        match &self.bar {
            Some(bar) => bar.inc(nar_bytes),
            None if copy.last.elapsed() >= Duration::from_secs(2) => {
                copy.last = Instant::now();
                let secs = copy.started.elapsed().as_secs_f64().max(1e-3);
                let rate = copy.sent as f64 / secs;
                let eta = (copy.total.saturating_sub(copy.sent)) as f64 / rate.max(1.0);
                eprintln!(
                    "{}: copy {} of {}, {}/s, ETA {eta:.0}s",
                    self.name,
                    format_bytes(copy.sent),
                    format_bytes(copy.total),
                    format_bytes(rate as u64)
                );
            }
            None => {}
        }
    }
}

impl DeployProgress for Board {
    fn start(&self, host: &str) {
        self.bar(host);
    }
    fn phase(&self, host: &str, phase: Phase) {
        self.bar(host).phase(&phase.to_string());
    }
    fn line(&self, host: &str, text: &str) {
        self.say(host, text);
    }
    fn copy_plan(&self, host: &str, missing: usize, closure: usize, nar_bytes: u64) {
        self.bar(host).copy_plan(missing, closure, nar_bytes);
    }
    fn copy_sent(&self, host: &str, nar_bytes: u64) {
        self.bar(host).copy_sent(nar_bytes);
    }
    fn error(&self, host: &str, error: &DeployError) {
        self.say(host, &format!("error: {}", error_chain(error)));
    }
    fn done(&self, host: &str, success: bool) {
        self.bar(host).finish(if success { self.success } else { "FAILED" });
    }
    fn built(&self, systems: usize, elapsed: Duration) {
        eprintln!("built {systems} system(s) in {:.1}s", elapsed.as_secs_f64());
    }
}

/// The terminal's bars, one per host.
type Bars = (MultiProgress, Mutex<Vec<(String, ProgressBar)>>);

/// The progress of `ferry copy`: one bar per host on a terminal, plain lines otherwise.
pub struct CopyBars {
    bars: Option<Bars>,
    /// Per host: NAR bytes sent, paths landed, paths missing.
    hosts: Mutex<std::collections::BTreeMap<String, (u64, usize, usize)>>,
    last_line: Mutex<Instant>,
}

impl CopyBars {
    /// Bars when the printer draws them, plain lines otherwise.
    pub fn new(printer: Printer) -> Self {
        let bars = printer.draws_bars().then(|| (MultiProgress::new(), Mutex::new(Vec::new())));
        CopyBars { bars, hosts: Mutex::default(), last_line: Mutex::new(Instant::now()) }
    }

    fn bar(&self, host: &str) -> Option<ProgressBar> {
        let (multi, bars) = self.bars.as_ref()?;
        let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bar)) = bars.iter().find(|(h, _)| h == host) {
            return Some(bar.clone());
        }
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(host.to_owned());
        bars.push((host.to_owned(), bar.clone()));
        Some(bar)
    }

    /// Finish every bar (the summary follows).
    pub fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            for (_, bar) in bars.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                bar.finish();
            }
        }
    }
}

impl Progress for CopyBars {
    fn event(&self, host: &str, event: &ProgressEvent<'_>) {
        let bar = self.bar(host);
        match event {
            ProgressEvent::Plan { closure_paths, missing_paths, nar_bytes, resumed_bytes } => {
                self.hosts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(host.to_owned())
                    .or_default()
                    .2 = *missing_paths;
                if let Some(bar) = bar {
                    bar.set_length(*nar_bytes);
                    bar.set_message(format!("{missing_paths}/{closure_paths} paths"));
                } else {
                    let resumed = if *resumed_bytes > 0 {
                        format!(", {} resumed", format_bytes(*resumed_bytes))
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "{host}: {missing_paths} of {closure_paths} paths missing, {} to send{resumed}",
                        format_bytes(*nar_bytes)
                    );
                }
            }
            ProgressEvent::Sent { .. } | ProgressEvent::Landed { .. } => {
                let (sent, landed, missing) = {
                    let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = hosts.entry(host.to_owned()).or_default();
                    match event {
                        ProgressEvent::Sent { nar_bytes } => entry.0 += nar_bytes,
                        _ => entry.1 += 1,
                    }
                    *entry
                };
                if let Some(bar) = bar {
                    if let ProgressEvent::Sent { nar_bytes } = event {
                        bar.inc(*nar_bytes);
                    }
                    bar.set_message(format!("{landed}/{missing} paths landed"));
                } else {
                    let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                    if last.elapsed() >= Duration::from_secs(2) {
                        *last = Instant::now();
                        eprintln!(
                            "{host}: {} sent, {landed}/{missing} paths landed",
                            format_bytes(sent)
                        );
                    }
                }
            }
            _ => {}
        }
    }
}
