//! One integration-test binary for `transfer` (one link step; modules share helpers).
//!
//! The transfer engine as a library: the agent (also into a host's own Nix store), deltas, adaptive levels, binary caches, the Nix serve client, link shaping
//! (`relay` and `shaping` need the `bench` feature: `cargo test -p transfer --all-features`).

mod adaptive;
mod agent;
mod agent_guix;
mod agent_nix;
mod agent_session;
mod agent_session_check;
mod cache;
mod delta;
mod delta_protocol;
mod lying_peer;
mod nix_fixture;
mod nix_serve;
#[cfg(feature = "bench")]
mod relay;
#[cfg(feature = "bench")]
mod shaping;
