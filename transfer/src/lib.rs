//! # transfer
//!
//! Copying store paths between stores: the ferry wire protocol, the host agent, transports,
//! and the push pipeline.
//!
//! | module | what |
//! |---|---|
//! | [`agent`] | `ferry serve`: verify, restore, register, acknowledge; partial files for resume |
//! | [`transport`] | the [`transport::Transport`] trait: local subprocess, in-process |
//! | [`ssh_transport`] | the agent over SSH (russh), with bootstrap by upload |
//! | [`pull`] | `--from`: the agent pushes back on the same stream, served by the local agent code |
//! | [`push`] | the copy pipeline: one-round-trip diff, pipelined signed zstd streams, summary |
//! | [`trust`] | what a path's signature covers; the local signing key |
//! | [`delta`] | delta frames (zstd with the base NAR as prefix), base selection |
//! | [`delta_path`] | deltas in the protocol: bases the host offers, encoding, applying |
//! | [`encode`] | per-path encoding on the coordinator: level, delta or full, link metering |
//! | [`frame_cache`] | compress once: encoded streams shared by the sessions of a push |
//! | [`adaptive`] | zstd level and delta on/off from the measured link and compressor |
//! | [`shaping`] | emulated link rate and latency inside a transport (`ferry bench`) |
//! | [`relay`] | TCP/Unix relay adding one-way latency (`ferry bench --link kernel`) |
//!
//! # Example: push a closure to an agent on a thread
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use store::{Store, StoreLayout};
//! use transfer::agent::AgentOptions;
//! use transfer::push::{push_closure, NoProgress, PushOptions};
//! use transfer::transport::InProcessTransport;
//!
//! let local = Store::open(StoreLayout::at_root("/tmp/here")?)?;
//! let roots = local.all_valid_paths()?;
//! let closure = local.closure(&roots)?;
//! let (key, _) = transfer::trust::load_or_generate_key(local.layout().state_dir())?;
//! let host = InProcessTransport { options: AgentOptions::new(StoreLayout::at_root("/tmp/there")?) };
//! let summary =
//!     push_closure(local.layout(), &closure, &host, &key, &PushOptions::default(), &NoProgress)?;
//! println!("{} paths, {} NAR bytes sent", summary.paths_sent, summary.nar_bytes_sent);
//! # Ok(()) }
//! ```

pub mod adaptive;
pub mod agent;
pub mod cache;
pub mod delta;
pub mod delta_path;
pub mod encode;
pub mod frame_cache;
pub mod nix_serve;
pub mod pull;
pub mod push;
pub mod relay;
pub mod shaping;
pub mod ssh;
pub mod ssh_transport;
pub mod transport;
pub mod trust;
