//! Deltas: a new path sent as zstd with an older path the host already has as reference.
//!
//! | module | what |
//! |---|---|
//! | [`stream`] | the delta stream format: zstd frames with a base NAR as reference prefix, segmented, memory-bounded, checked |
//! | [`bases`] | which bases: ranking (name, version, place in the host's generation), the host's offer, the coordinator's choice, encoding and applying in the protocol |

pub mod bases;
pub mod stream;
