//! One integration-test binary for `nar-core` (one link step; modules share helpers).
//!
//! NAR round trips and restore rejections.

mod restore_rejects;
mod roundtrip;
