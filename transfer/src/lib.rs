//! # transfer
//!
//! Copying store paths between stores: the copy API over every kind of destination, the ferry
//! agent and the coordinator's push pipeline, pulls, deltas, and the transports to agents.
//!
//! Start at [`target`]: [`target::copy_to`] / [`target::copy_from`] a [`target::Target`] (a
//! ferry agent over any transport, a binary-cache directory, a Nix host), built from a URI.
//! The wire format and the peers' state machines are in the `proto` crate; this crate does the
//! I/O (files, SQLite through `store`, zstd, russh and tokio for SSH).
//!
//! | module | what |
//! |---|---|
//! | [`target`] | ONE copy API: `copy_to` / `copy_from` a `Target`, from a URI and SSH settings |
//! | [`target::cache`] | binary-cache directories (`file://`): narinfos, zstd NARs, signed (write and read) |
//! | [`target::nix_host`] | a client of `nix-store --serve [--write]` (`nix+ssh://`) |
//! | [`push`] | the coordinator's session: one-round-trip diff, pipelined signed zstd streams, summary |
//! | [`push::encode`] | per-path encoding: level, delta or full, link metering |
//! | [`push::frame_cache`] | compress once: encoded streams shared by the sessions of a push |
//! | [`push::adaptive`] | zstd level and delta on/off from the measured link and compressor |
//! | [`agent`] | `ferry serve`: verify, restore, register, acknowledge; partial files for resume; its half of a pull |
//! | [`pull`] | `--from` a ferry agent: the agent pushes back on the same stream, served by the local agent code |
//! | [`delta`] | deltas: [`delta::stream`] (the format: zstd with the base NAR as prefix), [`delta::bases`] (ranking, offer, choice, encoding, applying) |
//! | [`transport`] | the [`transport::Transport`] trait to an agent: local subprocess, in-process |
//! | [`transport::ssh`] | the agent over SSH: russh client, known_hosts, bootstrap by upload, [`transport::ssh::SshConfig`] built in one place |
//! | [`fanout`] | relays: a host feeds other hosts the frames it gets (`via`, `--fan-out`), each host checking them itself; the tree, pure |
//! | [`trust`] | what a path's signature covers, the grammar of the unsigned metadata; the local signing keys |
//! | [`deadline`] | every wait for a peer ends: per-phase deadlines extended by bytes moved at a floor rate |
//! | `shaping` | emulated link rate and latency inside a transport (`ferry bench`; feature `bench`) |
//! | `relay` | TCP/Unix relay adding one-way latency (`ferry bench --link kernel`; feature `bench`) |
//!
//! Modules depend one way: `target` → `pull` → `agent` → `push` → `transport`, with `delta`
//! and `trust` below them all (the agent pushes back on a pull with the push session; the
//! in-process transport runs whatever serve function the agent hands it).
//!
//! # Example: push a closure to an agent on a thread
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use store::{Store, StoreLayout};
//! use transfer::agent::AgentOptions;
//! use transfer::push::{NoProgress, PushOptions};
//! use transfer::target::{copy_to, Source, Target};
//!
//! let local = Store::open(StoreLayout::at_root("/tmp/here")?)?;
//! let roots = local.all_valid_paths()?;
//! let closure = local.closure(&roots)?;
//! let (key, _) = transfer::trust::load_or_generate_key(local.layout().state_dir())?;
//! let host = AgentOptions::new(StoreLayout::at_root("/tmp/there")?).in_process();
//! let source = Source { layout: local.layout(), closure: &closure, key: &key };
//! let report =
//!     copy_to(&Target::Agent(Box::new(host)), &source, &PushOptions::default(), &NoProgress)?;
//! println!("{} paths, {} NAR bytes sent", report.summary.paths_sent, report.summary.nar_bytes_sent);
//! # Ok(()) }
//! ```

pub mod agent;
pub mod deadline;
pub mod delta;
pub mod fanout;
pub mod pull;
pub mod push;
pub mod target;
pub mod transport;
pub mod trust;

#[cfg(feature = "bench")]
pub mod relay;
#[cfg(feature = "bench")]
pub mod shaping;
