//! The host side of a deploy: what `ferry host …` does on a host root (run there by the agent
//! program, over SSH or as a local subprocess). The requests and answers are
//! [`proto::session`]'s; the binary only reads arguments and stdin and prints.
//!
//! [`HostRoot`] is one host root (its profiles and its store):
//! - [`HostRoot::facts`]: what the checks before a copy need (system type, generation,
//!   provenance, the device probe, the paths the store lacks);
//! - [`HostRoot::session`]: one session for a whole deploy (facts, copy, activate);
//! - [`HostRoot::activate`]: register a generation and drive its activation ([`driver`]),
//!   waiting for the coordinator's confirmation; [`HostRoot::confirm`] answers it;
//! - [`HostRoot::roll_back`], [`HostRoot::generations`], [`HostRoot::exec`].
//!
//! A system built by Nix or Guix has its generations in its own profile and is activated by
//! its switch command ([`switch`]). The host's store is ferry's, or the host's own Nix or Guix
//! store ([`nix_store`]), as the facts request asks.

pub mod driver;

mod activate;
mod facts;
mod nix_store;
mod session;
mod switch;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::SystemTime;

use proto::session::{GenerationInfo, HostLine, HostResult, SwitchSpec};
use store::{LayoutError, LayoutOptions, StoreError, StoreLayout};

use crate::generations::{GenerationError, Profiles};
use driver::{Activator, HostError};
use switch::Switcher;

/// Why a `ferry host` command failed (the host's state is then what the last step left).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostCommandError {
    #[error(transparent)]
    Driver(#[from] HostError),
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("invalid confirmation token {0:?}")]
    InvalidToken(String),
    #[error(
        "no activation on this host waits for confirmation {0}: its deadline passed (it rolled \
         back by itself) or it ended"
    )]
    NotWaiting(String),
    #[error("cannot write {path}")]
    Write { path: String, source: io::Error },
    #[error("{0} is not a system in this host's store (copy it first)")]
    NotASystem(String),
    #[error("running the safety checks")]
    SafetyChecks(#[source] io::Error),
    #[error("{path:?} in the request")]
    RequestPath { path: String, source: Box<StoreError> },
    #[error("{0} does not exist: deploy to it first")]
    NoRoot(String),
    #[error(transparent)]
    Path(#[from] std::env::JoinPathsError),
    #[error("cannot run {program}")]
    Run { program: String, source: io::Error },
    #[error("reading a session request on stdin")]
    ReadRequest(#[source] io::Error),
    /// A session request this ferry does not know.
    #[error("{0}")]
    BadRequest(String),
    #[error("answering facts")]
    AnswerFacts(#[source] io::Error),
    #[error("ferry serve (in the session): {0}")]
    Agent(transfer::agent::AgentError),
    #[error("the host's {store} store has no database at {db} (store = \"{store}\")")]
    NoDaemonStore { store: &'static str, db: String },
}

impl From<StoreError> for HostCommandError {
    fn from(e: StoreError) -> Self {
        HostCommandError::Store(Box::new(e))
    }
}

/// One host root: its generations and its store.
#[derive(Debug, Clone)]
pub struct HostRoot {
    profiles: Profiles,
    /// The store under the root, resolved when a command needs it.
    store: LayoutOptions,
}

impl HostRoot {
    /// The host root `store.root` (`/` when not given).
    pub fn new(store: LayoutOptions) -> HostRoot {
        let root = store.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        HostRoot { profiles: Profiles::new(root), store }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.profiles.root()
    }

    /// The root's generations (ferry's profile).
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// The generations of `profile` (a Nix or Guix profile, as a path on the host), or of
    /// ferry's profile.
    pub fn profiles_of(&self, profile: Option<&str>) -> Profiles {
        match profile {
            Some(p) => Profiles::at(self.root(), Path::new(p)),
            None => self.profiles.clone(),
        }
    }

    fn layout(&self) -> Result<StoreLayout, LayoutError> {
        StoreLayout::resolve(&self.store)
    }

    /// `roll-back`: return to the previous generation (profile, activate, services; or, with
    /// `switch`, a Nix or Guix profile and the generation's own switch command); each line of
    /// its output goes to `emit` as a [`HostLine::Line`].
    pub fn roll_back(
        &self,
        switch: Option<SwitchSpec>,
        emit: &mut dyn FnMut(&HostLine),
    ) -> Result<HostResult, HostCommandError> {
        let switcher = switch.map(|spec| Switcher::new(self.root(), spec));
        let (profiles, activator) = match &switcher {
            Some(s) => (&s.profiles, Activator::Switch(s)),
            None => (&self.profiles, Activator::Ferry),
        };
        let (from, to, code) =
            driver::roll_back(profiles, activator, &mut |l| emit(&HostLine::Line(l.to_owned())))?;
        Ok(match code {
            Some(0) => HostResult {
                success: true,
                generation: Some(to),
                detail: format!("rolled back from generation {from}"),
            },
            code => HostResult {
                success: false,
                generation: Some(to),
                detail: format!(
                    "the profile is on generation {to}, but its activate exited with {code:?} \
                     (needs attention)"
                ),
            },
        })
    }

    /// `generations`: the list of `profile`'s (default: ferry's profile), oldest first.
    pub fn generations(
        &self,
        profile: Option<&str>,
    ) -> Result<Vec<GenerationInfo>, HostCommandError> {
        Ok(self
            .profiles_of(profile)
            .list()?
            .into_iter()
            .map(|g| GenerationInfo {
                number: g.number,
                time: g.time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                system: g.system.display().to_string(),
                current: g.current,
                failed: g.failed,
            })
            .collect())
    }

    /// `exec`: run `command` in the root with `FERRY_ROOT` set and the current system's
    /// `profile/bin` first on `PATH`; its stdout is ours, its stderr goes to `stderr`.
    pub fn exec(&self, command: &[String], stderr: Stdio) -> Result<ExitStatus, HostCommandError> {
        let root = self.root();
        let Some((program, args)) = command.split_first() else {
            return Err(HostCommandError::BadRequest("exec: no command".into()));
        };
        if !root.is_dir() {
            return Err(HostCommandError::NoRoot(root.display().to_string()));
        }
        let bin = self.profiles.root().join("var/ferry/current-system/profile/bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))?;
        Command::new(program)
            .args(args)
            .current_dir(root)
            .env("FERRY_ROOT", root.to_string_lossy().trim_end_matches('/'))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stderr(stderr)
            .status()
            .map_err(|source| HostCommandError::Run { program: program.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::session::FactsRequest;

    fn host(root: &Path) -> HostRoot {
        HostRoot::new(LayoutOptions { root: Some(root.to_owned()), ..LayoutOptions::default() })
    }

    #[test]
    fn a_fresh_root_has_no_generation_and_lacks_every_path() {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        let path = "/gnu/store/00000000000000000000000000000000-x".to_owned();
        let request = FactsRequest { paths: vec![path.clone()], ..FactsRequest::default() };
        let facts = h.facts(&request).unwrap();
        assert_eq!((facts.generation, facts.on_this_system), (None, false));
        assert_eq!(facts.missing, [path]);
        assert!(h.generations(None).unwrap().is_empty());
    }

    #[test]
    fn confirm_needs_a_waiting_activation_and_a_valid_token() {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        let err = h.confirm("late-1", None).unwrap_err().to_string();
        assert!(
            err.starts_with("no activation on this host waits for confirmation late-1"),
            "{err}"
        );
        let err = h.confirm("../x", None).unwrap_err().to_string();
        assert_eq!(err, "invalid confirmation token \"../x\"");
        let err = h.roll_back(None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, HostCommandError::Driver(_)), "{err}");
    }
}
