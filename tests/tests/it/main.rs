//! One integration-test binary for `tests` (one link step; modules share helpers).
//!
//! The harness itself against real peers: NARs against Debian's Nix, the SSH transport against the loopback sshd,
//! the hermetic Nix configuration (locally and on a loopback host); and the fuzz targets' seeds.

mod fuzz_seeds;
mod nar_nix;
mod nix_env;
mod ssh;
