//! Progress of a deploy run: one line per host (phase, bytes, rate, ETA) with indicatif bars
//! on a terminal, plain `HOST: ...` lines otherwise (phase changes, and the copy's bytes at
//! most every two seconds). Host output (activate lines, warnings) is printed above the bars.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use transfer::push::{Progress, ProgressEvent};

/// All hosts' progress.
pub struct Board {
    multi: Option<MultiProgress>,
}

impl Board {
    /// Bars when stderr is a terminal.
    pub fn new() -> Board {
        Board { multi: std::io::stderr().is_terminal().then(MultiProgress::new) }
    }

    /// The line of one host.
    pub fn host(&self, name: &str) -> HostBar {
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
            multi: self.multi.clone(),
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
pub struct HostBar {
    name: String,
    bar: Option<ProgressBar>,
    multi: Option<MultiProgress>,
    copy: Mutex<Copy>,
}

impl HostBar {
    /// The host entered a phase (connect, check, copy, activate, confirm...).
    pub fn phase(&self, phase: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(phase.to_owned()),
            None => eprintln!("{}: {phase}", self.name),
        }
    }

    /// A line about this host (host output, warnings), above the bars.
    pub fn say(&self, text: &str) {
        let line = format!("{}: {text}", self.name);
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// The host is done: its line shows the result.
    pub fn finish(&self, result: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(result.to_owned());
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl Progress for HostBar {
    fn event(&self, _host: &str, event: &ProgressEvent<'_>) {
        let mut copy = self.copy.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            ProgressEvent::Plan { closure_paths, missing_paths, nar_bytes, .. } => {
                *copy = Copy {
                    total: *nar_bytes,
                    sent: 0,
                    started: Instant::now(),
                    last: Instant::now(),
                };
                match &self.bar {
                    Some(bar) => {
                        bar.set_length(*nar_bytes);
                        bar.set_message(format!("copy {missing_paths}/{closure_paths}"));
                    }
                    None => eprintln!(
                        "{}: copying {missing_paths} of {closure_paths} paths, {}",
                        self.name,
                        mib(*nar_bytes)
                    ),
                }
            }
            ProgressEvent::Sent { nar_bytes } => {
                copy.sent += nar_bytes;
                match &self.bar {
                    Some(bar) => bar.inc(*nar_bytes),
                    None if copy.last.elapsed() >= Duration::from_secs(2) => {
                        copy.last = Instant::now();
                        let secs = copy.started.elapsed().as_secs_f64().max(1e-3);
                        let rate = copy.sent as f64 / secs;
                        let eta = (copy.total.saturating_sub(copy.sent)) as f64 / rate.max(1.0);
                        eprintln!(
                            "{}: copy {} of {}, {}/s, ETA {eta:.0}s",
                            self.name,
                            mib(copy.sent),
                            mib(copy.total),
                            mib(rate as u64)
                        );
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
}
