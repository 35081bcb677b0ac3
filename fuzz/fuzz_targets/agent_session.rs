//! The agent's frame handling as a whole: arbitrary coordinator bytes (after a `Hello`) served
//! by `transfer::agent::serve` on a fresh store whose ACL trusts one fixed key, then the store
//! effects checked (clean verify, no temp entry left, only valid keys in the ACL, partial files
//! bounded by the declared sizes and the budget, the agent's output well framed). The session
//! and the checks are `transfer/tests/it/agent_session_check.rs`, which the integration tests
//! also run over this target's seeds (`fuzz/corpus/agent_session/seed-*`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../transfer/tests/it/agent_session_check.rs"]
mod agent_session_check;

fuzz_target!(|data: &[u8]| {
    agent_session_check::run_session(data);
});
