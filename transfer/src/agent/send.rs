//! The agent's half of a pull ([`crate::pull`]): after `SendClosure` this side pushes the closure
//! of the roots from its store, with the coordinator's session ([`crate::push`]).

use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use nar_core::store_path::StorePath;
use proto::frame::{Frame, ProtocolError};
use proto::io::{FrameReader, FrameWriter};
use store::Store;

use super::{AgentError, ServeSummary};
use crate::push::{NoProgress, PushOptions};

/// The agent's half of a pull: push the closure of `roots` from `store` to the peer, signed
/// with this host's key (`<state>/signing-key.sec`, made on first use).
pub(super) fn send_closure<R: Read, W: Write + Send>(
    store: &Store,
    roots: &[StorePath],
    frames: &mut FrameReader<R>,
    out: FrameWriter<W>,
) -> Result<ServeSummary, AgentError> {
    let fail = |message: String| AgentError::Protocol(ProtocolError::Peer(message));
    let layout = store.layout().clone();
    let closure = match store.closure(roots) {
        Ok(c) => c,
        Err(e) => return Err(report(out, fail(format!("cannot send the closure: {e}")))),
    };
    let key = match crate::trust::load_or_generate_key(layout.state_dir()) {
        Ok((key, _)) => key,
        Err(e) => {
            return Err(report(out, fail(format!("cannot load this host's signing key: {e}"))))
        }
    };
    // The agent's writer is not metered: the adaptive level starts from its defaults.
    let wire = Arc::new(AtomicU64::new(0));
    let meter = Arc::new(crate::push::encode::LinkMeter::default());
    let summary = crate::push::session(
        &layout,
        &closure,
        "the pulling side",
        &key,
        // Refusals are reported by the pulling side, path by path.
        &PushOptions { trust_check: false, ..PushOptions::default() },
        &NoProgress,
        frames,
        out,
        (&wire, &meter),
        Instant::now(),
        &crate::deadline::Watch::none(),
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(ServeSummary {
        imported: summary.paths_landed as u64,
        rejected: summary.rejected.len() as u64,
        ..ServeSummary::default()
    })
}

/// Tell the peer why the session ends (an `Error` frame), then return the error.
fn report<W: Write>(mut out: FrameWriter<W>, err: AgentError) -> AgentError {
    let _ = out.send(&Frame::Error(err.to_string()));
    let _ = out.flush();
    err
}
