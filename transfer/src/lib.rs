//! Not built yet: see the issue that introduces this crate.
pub mod cache;
pub mod nix_serve;
pub mod ssh;
