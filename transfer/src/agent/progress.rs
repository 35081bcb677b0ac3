//! Feature `progress` on the host's side: the NAR bytes received in a session, counted as
//! each path's NAR is decoded (up to its declared size), and told to the coordinator in
//! `Received` frames every [`RECEIVED_EVERY`] bytes and before each batch of acks, so the
//! coordinator's progress advances on what the host has, not on what was handed to the sender.

use std::io::{self, Read, Write};

use proto::frame::{Frame, RECEIVED_EVERY};
use proto::io::FrameWriter;
use proto::peer::AgentState;

/// The count of feature `progress` (see [`proto::frame`]).
#[derive(Debug, Default)]
pub(super) struct Received {
    pub(super) wanted: bool,
    pub(super) bytes: u64,
    told: u64,
}

impl Received {
    /// Tell the coordinator the count if it asked and the count changed by `at_least` bytes.
    /// A failed write is left to the next frame sent (the session fails there).
    pub(super) fn tell<W: Write>(
        &mut self,
        at_least: u64,
        state: &mut AgentState,
        out: &mut FrameWriter<W>,
    ) {
        if !self.wanted || self.bytes == self.told || self.bytes - self.told < at_least {
            return;
        }
        self.told = self.bytes;
        let frame = Frame::Received { nar_bytes: self.bytes };
        if state.on_send(&frame).is_ok() && out.send(&frame).is_ok() {
            let _ = out.flush();
        }
    }
}

/// A path's NAR as it is decoded, counted for feature `progress` up to its declared size
/// (`left`): every [`RECEIVED_EVERY`] bytes the coordinator is told.
pub(super) struct Counted<'a, R, W: Write> {
    pub(super) inner: R,
    pub(super) left: u64,
    pub(super) received: &'a mut Received,
    pub(super) state: &'a mut AgentState,
    pub(super) out: &'a mut FrameWriter<W>,
}

impl<R: Read, W: Write> Read for Counted<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let counted = (n as u64).min(self.left);
        self.left -= counted;
        self.received.bytes += counted;
        self.received.tell(RECEIVED_EVERY, self.state, self.out);
        Ok(n)
    }
}
