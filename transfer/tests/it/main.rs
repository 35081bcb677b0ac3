//! One integration-test binary for `transfer` (one link step; modules share helpers).
//!
//! The transfer engine as a library: the agent, deltas, adaptive levels, binary caches, the Nix serve client, link shaping.

mod adaptive;
mod agent;
mod cache;
mod delta;
mod delta_protocol;
mod nix_fixture;
mod nix_serve;
mod relay;
mod shaping;
