//! Activation, confirmation and rollback on one host, as a pure state machine (sans-IO).
//!
//! The machine never touches the file system, processes, the network or the clock. The driver
//! (the agent on a host, or the coordinator for a `local` machine) feeds it the results of the
//! steps it ran ([`Input`]) and the current time, and carries out the [`Action`]s it asks for,
//! in the manner of quinn-proto's `poll_transmit`/`poll_timeout`/`handle_timeout`:
//!
//! ```text
//! loop {
//!     while let Some(action) = m.poll_action() { do it; m.handle(now, result)? }
//!     if let Some(outcome) = m.outcome() { break }
//!     wait for an input (confirmation) or until m.poll_timeout(); then m.handle_timeout(now)
//! }
//! ```
//!
//! # States
//!
//! ```text
//!             SwitchProfile(new)          RunActivate(new)        RunHealthChecks(new)
//!  start ──────────────────────> switching ───────────> activating ──────────> checking
//!                                   │ failed (host unchanged)   │ exit ≠ 0             │ failed
//!                                   ▼                           ▼                      ▼
//!                               Failed              ┌──── rolling back ◄────────────────┤
//!                                                   │  SwitchProfile(prev),             │ passed
//!                                                   │  RunActivate(prev)                ▼
//!                                                   ▼                     awaiting confirmation
//!                                   RolledBack / RollbackFailed     (ArmConfirmDeadline at T)
//!                                   (Failed + ClearProfile when      │ Confirmed   │ now ≥ T or
//!                                    there is no previous one)       ▼             │ Rejected
//!                                                                 Deployed        └──► rolling back
//! ```
//!
//! - Health checks are skipped when the host has none; confirmation is skipped when the
//!   deadline is switched off (then the machine ends `Deployed` right after the checks).
//! - Rolling back switches the profile to the previous generation and runs *its* `activate`
//!   with the failed generation as the previous one, so services of the failed system are
//!   stopped, changed ones restarted and the old ones started again.
//! - A rollback that itself fails ends in [`Outcome::RollbackFailed`]: the report says the
//!   host needs attention.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Point the profile (`system`) at this generation; answer [`Input::ProfileSwitched`].
    SwitchProfile { generation: u64 },
    /// Point `current-system` at this generation's system and run its `activate` with the
    /// given previous generation's system as the previous system; answer
    /// [`Input::ActivateExited`].
    RunActivate { generation: u64, previous: Option<u64> },
    /// Run the host's health-check commands; answer [`Input::HealthChecks`].
    RunHealthChecks { generation: u64 },
    /// Tell the coordinator the deadline; wait for [`Input::Confirmed`] until `at`.
    ArmConfirmDeadline { at: Instant },
    /// There is no generation to return to: remove the profile (`system`) and
    /// `current-system` links, so the host shows no generation as current and the next deploy
    /// does not take the failed one for deployed. No answer is expected.
    ClearProfile,
    /// Something to show the operator.
    Report(Event),
}

/// Progress to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Activating { generation: u64 },
    Activated { generation: u64 },
    HealthChecksPassed { generation: u64 },
    AwaitingConfirmation { deadline: Instant },
    Confirmed { generation: u64 },
    RollingBack { from: u64, to: u64, reason: Failure },
    CannotRollBack { generation: u64, reason: Failure },
}

/// The result of a step, fed back to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Result of [`Action::SwitchProfile`] (the error text on failure).
    ProfileSwitched(Result<(), String>),
    /// Exit code of `activate` (`None`: killed by a signal, or could not run).
    ActivateExited(Option<i32>),
    /// Result of [`Action::RunHealthChecks`]: the failures, one line each.
    HealthChecks(Result<(), Vec<String>>),
    /// The coordinator confirmed over a new connection.
    Confirmed,
    /// The coordinator's own checks (TCP/HTTP probes) failed: roll back.
    Rejected(String),
}

/// Why a deployment did not stick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    ProfileSwitch(String),
    Activate(Option<i32>),
    HealthChecks(Vec<String>),
    ConfirmTimeout(Duration),
    Rejected(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::ProfileSwitch(e) => write!(f, "cannot switch the system profile: {e}"),
            Failure::Activate(Some(code)) => write!(f, "activate exited with code {code}"),
            Failure::Activate(None) => f.write_str("activate was killed or could not run"),
            Failure::HealthChecks(errors) => {
                write!(f, "health checks failed: {}", errors.join("; "))
            }
            Failure::ConfirmTimeout(d) => write!(
                f,
                "no confirmation from the coordinator within {}s (the host may be unreachable \
                 after activation)",
                d.as_secs()
            ),
            Failure::Rejected(why) => write!(f, "the coordinator's checks failed: {why}"),
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new generation is active (and confirmed, when confirmation is on).
    Deployed { generation: u64 },
    /// It failed and the host is back on `to`.
    RolledBack { from: u64, to: u64, reason: Failure },
    /// It failed and the host could not be returned (no previous generation, or the new
    /// profile was never switched to).
    Failed { generation: u64, reason: Failure },
    /// It failed, and so did the rollback: the host needs attention.
    RollbackFailed { from: u64, to: u64, reason: Failure, rollback_error: Failure },
}

/// Settings for one activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// `None`: confirmation is off.
    pub confirm_timeout: Option<Duration>,
    /// Whether the host has health-check commands to run.
    pub host_health_checks: bool,
}

/// An input that the current state does not expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected {input:?} while {state}")]
pub struct UnexpectedInput {
    pub input: Input,
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    SwitchingProfile,
    Activating,
    Checking,
    AwaitingConfirmation { deadline: Instant },
    RollbackSwitching { reason: Failure },
    RollbackActivating { reason: Failure },
    Done(Outcome),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::SwitchingProfile => "switching the profile",
            State::Activating => "activating",
            State::Checking => "running health checks",
            State::AwaitingConfirmation { .. } => "awaiting confirmation",
            State::RollbackSwitching { .. } => "rolling back the profile",
            State::RollbackActivating { .. } => "activating the previous generation",
            State::Done(_) => "done",
        }
    }
}

/// The activation of generation `new` on one host, with `previous` to return to.
#[derive(Debug, Clone)]
pub struct Activation {
    new: u64,
    previous: Option<u64>,
    config: Config,
    state: State,
    actions: VecDeque<Action>,
}

impl Activation {
    /// Start activating `new` (already added as a generation); `previous` is the generation the
    /// profile points at now, if any.
    pub fn new(new: u64, previous: Option<u64>, config: Config) -> Activation {
        let mut actions = VecDeque::new();
        actions.push_back(Action::SwitchProfile { generation: new });
        Activation { new, previous, config, state: State::SwitchingProfile, actions }
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next, if a deadline is armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingConfirmation { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// The final outcome, once reached.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// Feed the time: past the confirmation deadline, roll back.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::AwaitingConfirmation { deadline } = self.state {
            if now >= deadline {
                let timeout = self.config.confirm_timeout.unwrap_or_default();
                self.roll_back(Failure::ConfirmTimeout(timeout));
            }
        }
    }

    /// Feed a step's result.
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), UnexpectedInput> {
        // A deadline that passed before this input arrived wins.
        self.handle_timeout(now);
        match (self.state.clone(), input) {
            (State::SwitchingProfile, Input::ProfileSwitched(Ok(()))) => {
                self.state = State::Activating;
                self.report(Event::Activating { generation: self.new });
                self.actions.push_back(Action::RunActivate {
                    generation: self.new,
                    previous: self.previous,
                });
            }
            (State::SwitchingProfile, Input::ProfileSwitched(Err(e))) => {
                // Nothing changed on the host.
                self.state = State::Done(Outcome::Failed {
                    generation: self.new,
                    reason: Failure::ProfileSwitch(e),
                });
            }
            (State::Activating, Input::ActivateExited(Some(0))) => {
                self.report(Event::Activated { generation: self.new });
                if self.config.host_health_checks {
                    self.state = State::Checking;
                    self.actions.push_back(Action::RunHealthChecks { generation: self.new });
                } else {
                    self.after_checks(now);
                }
            }
            (State::Activating, Input::ActivateExited(code)) => {
                self.roll_back(Failure::Activate(code));
            }
            (State::Checking, Input::HealthChecks(Ok(()))) => {
                self.report(Event::HealthChecksPassed { generation: self.new });
                self.after_checks(now);
            }
            (State::Checking, Input::HealthChecks(Err(errors))) => {
                self.roll_back(Failure::HealthChecks(errors));
            }
            (State::AwaitingConfirmation { .. }, Input::Confirmed) => {
                self.report(Event::Confirmed { generation: self.new });
                self.state = State::Done(Outcome::Deployed { generation: self.new });
            }
            (State::AwaitingConfirmation { .. } | State::Checking, Input::Rejected(why)) => {
                self.roll_back(Failure::Rejected(why));
            }
            (State::RollbackSwitching { reason }, Input::ProfileSwitched(Ok(()))) => {
                let to = self.previous.expect("rolling back needs a previous generation");
                self.state = State::RollbackActivating { reason };
                self.actions
                    .push_back(Action::RunActivate { generation: to, previous: Some(self.new) });
            }
            (State::RollbackSwitching { reason }, Input::ProfileSwitched(Err(e))) => {
                self.state = State::Done(Outcome::RollbackFailed {
                    from: self.new,
                    to: self.previous.unwrap_or_default(),
                    reason,
                    rollback_error: Failure::ProfileSwitch(e),
                });
            }
            (State::RollbackActivating { reason }, Input::ActivateExited(code)) => {
                let to = self.previous.unwrap_or_default();
                self.state = State::Done(if code == Some(0) {
                    Outcome::RolledBack { from: self.new, to, reason }
                } else {
                    Outcome::RollbackFailed {
                        from: self.new,
                        to,
                        reason,
                        rollback_error: Failure::Activate(code),
                    }
                });
            }
            (state, input) => return Err(UnexpectedInput { input, state: state.name() }),
        }
        Ok(())
    }

    fn report(&mut self, event: Event) {
        self.actions.push_back(Action::Report(event));
    }

    fn after_checks(&mut self, now: Instant) {
        match self.config.confirm_timeout {
            Some(timeout) => {
                let deadline = now + timeout;
                self.state = State::AwaitingConfirmation { deadline };
                self.actions.push_back(Action::ArmConfirmDeadline { at: deadline });
                self.report(Event::AwaitingConfirmation { deadline });
            }
            None => self.state = State::Done(Outcome::Deployed { generation: self.new }),
        }
    }

    fn roll_back(&mut self, reason: Failure) {
        match self.previous {
            Some(to) => {
                self.report(Event::RollingBack { from: self.new, to, reason: reason.clone() });
                self.state = State::RollbackSwitching { reason };
                self.actions.push_back(Action::SwitchProfile { generation: to });
            }
            None => {
                self.report(Event::CannotRollBack { generation: self.new, reason: reason.clone() });
                self.actions.push_back(Action::ClearProfile);
                self.state = State::Done(Outcome::Failed { generation: self.new, reason });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated host: answers actions from a script, in simulated time (no sleeps).
    struct Sim {
        now: Instant,
        /// Exit code of `activate` per generation.
        activate: fn(u64) -> Option<i32>,
        health: Result<(), Vec<String>>,
        /// Simulated time each step takes.
        step: Duration,
        /// When the coordinator confirms (None: never).
        confirm_at: Option<Duration>,
        log: Vec<Action>,
        profile: Option<u64>,
    }

    impl Sim {
        fn new(activate: fn(u64) -> Option<i32>) -> Sim {
            Sim {
                now: Instant::now(),
                activate,
                health: Ok(()),
                step: Duration::from_millis(100),
                confirm_at: Some(Duration::from_secs(2)),
                log: Vec::new(),
                profile: Some(1),
            }
        }

        fn run(&mut self, m: &mut Activation) -> Outcome {
            let start = self.now;
            for _ in 0..100 {
                while let Some(action) = m.poll_action() {
                    self.log.push(action.clone());
                    if !matches!(action, Action::ArmConfirmDeadline { .. } | Action::Report(_)) {
                        self.now += self.step;
                    }
                    let input = match action {
                        Action::SwitchProfile { generation } => {
                            self.profile = Some(generation);
                            Input::ProfileSwitched(Ok(()))
                        }
                        Action::RunActivate { generation, .. } => {
                            Input::ActivateExited((self.activate)(generation))
                        }
                        Action::RunHealthChecks { .. } => Input::HealthChecks(self.health.clone()),
                        Action::ClearProfile => {
                            self.profile = None;
                            continue;
                        }
                        Action::ArmConfirmDeadline { .. } | Action::Report(_) => continue,
                    };
                    m.handle(self.now, input).unwrap();
                }
                if let Some(o) = m.outcome() {
                    return o.clone();
                }
                // Wait for whichever comes first: the confirmation or the deadline.
                let deadline = m.poll_timeout().expect("waiting needs a deadline");
                match self.confirm_at.map(|d| start + d) {
                    Some(c) if c < deadline => {
                        self.now = self.now.max(c);
                        m.handle(self.now, Input::Confirmed).unwrap();
                    }
                    _ => {
                        self.now = deadline;
                        m.handle_timeout(self.now);
                    }
                }
            }
            panic!("no outcome")
        }

        fn steps(&self) -> Vec<String> {
            self.log
                .iter()
                .filter_map(|a| match a {
                    Action::SwitchProfile { generation } => Some(format!("switch {generation}")),
                    Action::RunActivate { generation, previous } => {
                        Some(format!("activate {generation} (prev {previous:?})"))
                    }
                    Action::RunHealthChecks { generation } => Some(format!("check {generation}")),
                    Action::ArmConfirmDeadline { .. } => Some("arm".into()),
                    Action::ClearProfile => Some("clear".into()),
                    Action::Report(_) => None,
                })
                .collect()
        }
    }

    const CONFIRM: Config =
        Config { confirm_timeout: Some(Duration::from_secs(30)), host_health_checks: true };

    #[test]
    fn confirmed_deploy() {
        let mut sim = Sim::new(|_| Some(0));
        let out = sim.run(&mut Activation::new(2, Some(1), CONFIRM));
        assert_eq!(out, Outcome::Deployed { generation: 2 });
        assert_eq!(sim.steps(), ["switch 2", "activate 2 (prev Some(1))", "check 2", "arm"]);
        assert_eq!(sim.profile, Some(2));
    }

    #[test]
    fn activation_failure_rolls_back() {
        let mut sim = Sim::new(|g| Some(if g == 2 { 3 } else { 0 }));
        let out = sim.run(&mut Activation::new(2, Some(1), CONFIRM));
        assert_eq!(out, Outcome::RolledBack { from: 2, to: 1, reason: Failure::Activate(Some(3)) });
        assert_eq!(
            sim.steps(),
            ["switch 2", "activate 2 (prev Some(1))", "switch 1", "activate 1 (prev Some(2))"]
        );
        assert_eq!(sim.profile, Some(1));
    }

    #[test]
    fn health_check_failure_rolls_back() {
        let mut sim = Sim::new(|_| Some(0));
        sim.health = Err(vec!["curl localhost: exit 7".into()]);
        let out = sim.run(&mut Activation::new(5, Some(3), CONFIRM));
        assert_eq!(
            out,
            Outcome::RolledBack {
                from: 5,
                to: 3,
                reason: Failure::HealthChecks(vec!["curl localhost: exit 7".into()])
            }
        );
        assert_eq!(sim.profile, Some(3));
    }

    #[test]
    fn confirmation_deadline_rolls_back_in_simulated_time() {
        let mut sim = Sim::new(|_| Some(0));
        sim.confirm_at = None;
        let begin = sim.now;
        let out = sim.run(&mut Activation::new(2, Some(1), CONFIRM));
        assert_eq!(
            out,
            Outcome::RolledBack {
                from: 2,
                to: 1,
                reason: Failure::ConfirmTimeout(Duration::from_secs(30))
            }
        );
        // 3 steps of 100 ms, 30 s of waiting, 2 steps of rollback: no real time passed.
        assert_eq!(sim.now - begin, Duration::from_millis(300 + 30_000 + 200));
        assert!(sim.steps().ends_with(&[
            "arm".into(),
            "switch 1".into(),
            "activate 1 (prev Some(2))".into()
        ]));
    }

    #[test]
    fn late_confirmation_loses_to_the_deadline() {
        let mut m = Activation::new(2, Some(1), CONFIRM);
        let t0 = Instant::now();
        while m.poll_action().is_some() {}
        m.handle(t0, Input::ProfileSwitched(Ok(()))).unwrap();
        m.handle(t0, Input::ActivateExited(Some(0))).unwrap();
        m.handle(t0, Input::HealthChecks(Ok(()))).unwrap();
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        // The confirmation arrives one tick after the deadline: it is refused.
        let err = m.handle(t0 + Duration::from_secs(31), Input::Confirmed).unwrap_err();
        assert_eq!(err.state, "rolling back the profile");
        let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
        assert!(actions.contains(&Action::SwitchProfile { generation: 1 }));
    }

    #[test]
    fn deadline_switched_off_ends_after_checks() {
        let mut sim = Sim::new(|_| Some(0));
        sim.confirm_at = None;
        let config = Config { confirm_timeout: None, host_health_checks: false };
        let out = sim.run(&mut Activation::new(2, Some(1), config));
        assert_eq!(out, Outcome::Deployed { generation: 2 });
        assert_eq!(sim.steps(), ["switch 2", "activate 2 (prev Some(1))"]);
    }

    #[test]
    fn first_deploy_cannot_roll_back() {
        let mut sim = Sim::new(|_| Some(1));
        sim.profile = None;
        let out = sim.run(&mut Activation::new(1, None, CONFIRM));
        assert_eq!(out, Outcome::Failed { generation: 1, reason: Failure::Activate(Some(1)) });
        assert_eq!(sim.steps(), ["switch 1", "activate 1 (prev None)", "clear"]);
        assert_eq!(sim.profile, None);
    }

    #[test]
    fn failed_rollback_is_reported() {
        let mut sim = Sim::new(|_| Some(2));
        let out = sim.run(&mut Activation::new(2, Some(1), CONFIRM));
        assert_eq!(
            out,
            Outcome::RollbackFailed {
                from: 2,
                to: 1,
                reason: Failure::Activate(Some(2)),
                rollback_error: Failure::Activate(Some(2)),
            }
        );
    }

    #[test]
    fn profile_switch_failure_leaves_the_host_unchanged() {
        let mut m = Activation::new(2, Some(1), CONFIRM);
        assert_eq!(m.poll_action(), Some(Action::SwitchProfile { generation: 2 }));
        m.handle(Instant::now(), Input::ProfileSwitched(Err("EACCES".into()))).unwrap();
        assert_eq!(
            m.outcome(),
            Some(&Outcome::Failed {
                generation: 2,
                reason: Failure::ProfileSwitch("EACCES".into())
            })
        );
        assert_eq!(m.poll_action(), None);
    }

    #[test]
    fn coordinator_rejection_rolls_back_and_stray_inputs_are_errors() {
        let mut m = Activation::new(2, Some(1), CONFIRM);
        let t = Instant::now();
        assert!(m.handle(t, Input::Confirmed).is_err());
        m.handle(t, Input::ProfileSwitched(Ok(()))).unwrap();
        m.handle(t, Input::ActivateExited(Some(0))).unwrap();
        m.handle(t, Input::HealthChecks(Ok(()))).unwrap();
        m.handle(t, Input::Rejected("http://web1/: 502".into())).unwrap();
        m.handle(t, Input::ProfileSwitched(Ok(()))).unwrap();
        m.handle(t, Input::ActivateExited(Some(0))).unwrap();
        assert_eq!(
            m.outcome(),
            Some(&Outcome::RolledBack {
                from: 2,
                to: 1,
                reason: Failure::Rejected("http://web1/: 502".into())
            })
        );
        assert_eq!(
            Failure::ConfirmTimeout(Duration::from_secs(30)).to_string(),
            "no confirmation from the coordinator within 30s (the host may be unreachable after \
             activation)"
        );
    }
}
