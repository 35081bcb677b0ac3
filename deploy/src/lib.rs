//! # deploy
//!
//! The deploy engine as a library (the `ferry deploy` and `ferry host` commands are glue
//! around it): the deployment file, the system builder, the run over many machines (plan,
//! copy, activate, confirm, roll back), generations, safety checks, and the host side.
//!
//! A run ([`orchestrate::deploy`]) takes a parsed [`deployment::Deployment`] and a selection
//! of its machines; it builds each machine's system into the local store, then, per machine
//! and in parallel, makes a [`plan::HostPlan`] from the host's facts and the checks and
//! executes it (copy through the transfer engine, activation with confirmation over a new
//! connection). `--dry-run` is [`orchestrate::dry_run`]: the same plans, nothing executed.
//! Results come back per machine; progress goes to a [`progress::DeployProgress`] (the
//! library renders nothing). Each machine is reached through a [`link::Link`], whose other
//! end is [`host::HostRoot`] (run there as `ferry host …`; the line protocol is
//! [`proto::session`]). Errors are typed (`thiserror`) and name the step.
//!
//! | module | what |
//! |---|---|
//! | [`deployment`] | the deployment file: machines, operating systems, environments, validation at line and column |
//! | [`system`] | the system builder: one store item per operating-system declaration |
//! | [`error`] | [`error::DeployError`]: why a machine's pipeline failed, naming the step |
//! | [`orchestrate`] | a run over the selected machines, in parallel: deploy, dry run, roll back, `-x`, generations; per-machine results and errors |
//! | [`fanout`] | deploying through relays (`via`, `--fan-out`): the machines meet once planned, the trees copy, each machine then copies directly what its relay did not deliver |
//! | [`plan`] | one machine's plan: the host's facts, the checks, the paths to copy and their bytes |
//! | `apply` (private) | executing a plan: the copy, activation, the confirmation over a new connection |
//! | [`probes`] | the coordinator's `tcp` and `http` health checks |
//! | [`rollout`] | staged rollouts (pure): the waves of `--rollout 1,25%,100%`, which wave stops the run |
//! | [`progress`] | the [`progress::DeployProgress`] trait a front end renders, and [`progress::NoProgress`] |
//! | [`checks`] | safety checks (file systems, devices) and the downgrade check |
//! | [`activation`] | the activation/rollback state machine (pure: time is a parameter) |
//! | [`generations`] | a host's profile: `system-N-link` generations (ferry's, or a Nix/Guix profile's `PROFILE-N-link`), the atomic switch |
//! | [`host`] | the host side (`ferry host …`): facts, the session, activation and confirmation, roll back, generations, exec; [`host::driver`] drives the state machine; a Nix/Guix system's own switch command |
//! | [`link`] | reaching a machine's host: local subprocess or SSH, running `ferry host …` there |

pub mod activation;
mod apply;
pub mod checks;
pub mod deployment;
pub mod error;
pub mod fanout;
pub mod generations;
pub mod host;
pub mod link;
pub mod orchestrate;
pub mod plan;
pub mod probes;
pub mod progress;
pub mod rollout;
pub mod system;
