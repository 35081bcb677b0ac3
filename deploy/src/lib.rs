//! # deploy
//!
//! The deploy engine as a library: the deployment file, the system builder, activation and
//! rollback, generations, safety checks, the host side of a deploy, and the link to a host.
//!
//! | module | what |
//! |---|---|
//! | [`deployment`] | the deployment file: machines, operating systems, environments, validation at line and column |
//! | [`system`] | the system builder: one store item per operating-system declaration |
//! | [`checks`] | safety checks (file systems, devices) and the downgrade check |
//! | [`activation`] | the activation/rollback state machine (pure: time is a parameter) |
//! | [`generations`] | a host's profile: `system-N-link` generations, the atomic switch |
//! | [`host`] | the host side: driving an activation on a host root |
//! | [`link`] | reaching a machine's host: local subprocess or SSH, running `ferry host …` there |

pub mod activation;
mod apply;
pub mod checks;
pub mod deployment;
pub mod generations;
pub mod host;
pub mod link;
pub mod orchestrate;
pub mod plan;
pub mod probes;
pub mod progress;
pub mod system;
