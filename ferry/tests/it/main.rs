//! One integration-test binary for `ferry` (one link step; modules share helpers).
//!
//! The `ferry` binary, run as a user runs it: every command against real stores, real sshd hosts, Debian's Nix and libgcrypt.
//! Every module builds its `ferry` commands with [`util`].

mod agent_upload;
mod archive_cli;
mod bench_cli;
mod bench_compare;
mod bench_kernel;
mod cli_reference;
mod copy_local;
mod copy_nix;
mod copy_pull;
mod copy_s3;
mod copy_ssh;
mod copy_sudo;
mod copy_trust;
mod delta_rename;
mod deploy_fanout;
mod deploy_fanout_netns;
mod deploy_nix_system;
mod deploy_rollout;
mod deploy_ssh;
mod deploy_substitute;
mod deployment_file;
mod interrupt;
mod json_shapes;
mod nar_cli;
mod nix_interop;
mod nix_source_store;
mod ssh_config;
mod store_cli;
mod store_crash;
mod terminal;
mod util;
