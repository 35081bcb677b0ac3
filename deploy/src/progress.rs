//! [`DeployProgress`]: what a deploy run reports while it works, per machine (its phase,
//! lines to show, the copy's bytes as the host acknowledges them, the confirmation deadline,
//! its end), for a front end to render; [`NoProgress`] ignores it all. The library never
//! renders anything itself.

use std::fmt;
use std::time::Duration;

use transfer::push::{Progress, ProgressEvent};

use crate::error::DeployError;

/// A step of one machine's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for its system to be built.
    Build,
    /// Reaching the host and asking for its facts.
    Connect,
    /// The system-type, safety and downgrade checks.
    Check,
    /// Copying the missing paths.
    Copy,
    /// The host activates the system.
    Activate,
    /// The host waits for this side's confirmation.
    Confirm,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Build => "build",
            Phase::Connect => "connect",
            Phase::Check => "check",
            Phase::Copy => "copy",
            Phase::Activate => "activate",
            Phase::Confirm => "confirm",
        })
    }
}

/// A receiver of a deploy run's progress; called from the machines' threads. Every method
/// does nothing by default.
pub trait DeployProgress: Sync {
    /// Machine `host`'s pipeline started.
    fn start(&self, _host: &str) {}
    /// It entered `phase`.
    fn phase(&self, _host: &str, _phase: Phase) {}
    /// A line about it to show (host output, warnings, the system built for it).
    fn line(&self, _host: &str, _text: &str) {}
    /// The copy is known: `missing` of `closure` paths, `nar_bytes` to send.
    fn copy_plan(&self, _host: &str, _missing: usize, _closure: usize, _nar_bytes: u64) {}
    /// The agent program is being uploaded to the host before its session starts: `sent` of
    /// `total` compressed bytes (`codec`: `zstd`, `gzip`).
    fn agent_upload(&self, _host: &str, _sent: u64, _total: u64, _codec: &str) {}
    /// The host has `nar_bytes` of the copy's NAR bytes (cumulative: what it reported
    /// receiving, or the sizes of the paths it acknowledged; see
    /// [`ProgressEvent::Received`]).
    fn copy_received(&self, _host: &str, _nar_bytes: u64) {}
    /// The host activated the system and waits for confirmation; without it, it rolls back by
    /// itself after `rolls_back_in`.
    fn confirm_asked(&self, _host: &str, _rolls_back_in: Duration) {}
    /// Its pipeline failed with `error` (also in its result).
    fn error(&self, _host: &str, _error: &DeployError) {}
    /// It is done.
    fn done(&self, _host: &str, _success: bool) {}
    /// The builder is done: `systems` of the selected machines' systems were built (a failed
    /// build is not counted: it is that machine's error).
    fn built(&self, _systems: usize, _elapsed: Duration) {}
}

/// Ignores progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl DeployProgress for NoProgress {}

/// The transfer engine's progress of one machine's copy, passed on.
pub(crate) struct CopyProgress<'a> {
    pub host: &'a str,
    pub progress: &'a dyn DeployProgress,
}

impl Progress for CopyProgress<'_> {
    fn event(&self, _: &str, event: &ProgressEvent<'_>) {
        match event {
            ProgressEvent::Plan { closure_paths, missing_paths, nar_bytes, .. } => {
                self.progress.copy_plan(self.host, *missing_paths, *closure_paths, *nar_bytes)
            }
            ProgressEvent::Received { nar_bytes } => {
                self.progress.copy_received(self.host, *nar_bytes)
            }
            ProgressEvent::AgentUpload { sent, total, codec } => {
                self.progress.agent_upload(self.host, *sent, *total, codec)
            }
            _ => {}
        }
    }
}
