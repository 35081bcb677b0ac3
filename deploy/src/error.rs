//! [`DeployError`]: why a machine's pipeline (or the whole run) failed, its text naming the
//! step; [`error_chain`] prints an error with its sources as the front end does.

use store::StoreError;
use transfer::push::PushError;

use crate::link::LinkError;
use crate::system::SystemError;

/// Why a machine's pipeline (or the whole run) failed; the text names the step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error("cannot open the local store")]
    LocalStore(#[source] Box<StoreError>),
    #[error("build: building the system of {machine}")]
    Build { machine: String, source: SystemError },
    #[error("build: the build stopped before this machine's system")]
    BuildStopped,
    #[error("closure of the system in the local store")]
    Closure(#[source] Box<StoreError>),
    #[error("connect")]
    Connect(#[source] LinkError),
    #[error("connect and facts")]
    Facts(#[source] LinkError),
    #[error("system type check: {0}")]
    SystemType(String),
    #[error("safety checks failed: {} (set `safety-checks = false` to skip them)", .0.join("; "))]
    Safety(Vec<String>),
    #[error("downgrade check: {0}")]
    Downgrade(String),
    /// Ending a dry run's session.
    #[error("facts")]
    EndSession(#[source] LinkError),
    #[error("copy")]
    CopySession(#[source] LinkError),
    #[error("copy")]
    Push(#[source] Box<PushError>),
    /// `--push-to`: putting the closure into the binary cache failed.
    #[error("push to the binary cache")]
    PushTo(#[source] Box<transfer::target::CopyError>),
    #[error(
        "copy: the host refused {} path(s): {}{}",
        list.len(),
        list.join("; "),
        if *authorize { "" } else {
            " (set `authorize = true` to add this machine's signing key to its ACL)"
        }
    )]
    Refused { list: Vec<String>, authorize: bool },
    /// Activation broke off; the text says what state the host is left in.
    #[error("activate: {0}")]
    Activate(String),
    #[error("roll back")]
    RollBack(#[source] LinkError),
    #[error("roll back: {0}")]
    RollBackEnded(String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("skipped: an earlier machine failed (--fail-fast)")]
    Skipped,
    /// The run was interrupted (Ctrl-C) before this step: `{0}` says what was not done.
    #[error("interrupted: {0}")]
    Interrupted(&'static str),
    /// A staged rollout stopped before this machine's wave ([`crate::rollout`]).
    #[error("not started: wave {wave} stopped the run")]
    NotStarted { wave: usize },
}

/// `error` and its sources, `: `-separated (as the front end prints errors).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
