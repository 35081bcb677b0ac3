//! One integration-test binary for `tests` (one link step; modules share helpers).
//!
//! The harness itself against real peers: NARs against Debian's Nix, the SSH transport against the loopback sshd.

mod nar_nix;
mod ssh;
