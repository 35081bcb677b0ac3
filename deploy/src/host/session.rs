//! `session`: one deploy of this host in one command: requests on the input, one at a time,
//! each answered before the next is read (see [`proto::session`]); the copy runs the agent on
//! the same streams (into the host's Nix or Guix store when the facts request asked for it).

use std::io::{BufRead, Write};

use proto::session::{HostLine, SessionRequest};
use transfer::agent::AgentOptions;

use super::nix_store::HostStore;
use super::{HostCommandError, HostRoot};

impl HostRoot {
    /// Answer the session's requests from `input` on `out` until the end of the input
    /// (`Ok(true)`) or an activation, whose lines and result go to `out` (`Ok(success)`).
    pub fn session<R: BufRead, W: Write + Send>(
        &self,
        mut input: R,
        mut out: W,
    ) -> Result<bool, HostCommandError> {
        // The store the last facts request asked for: the copy goes there.
        let mut host_store = HostStore::Ferry;
        loop {
            let mut line = String::new();
            if input.read_line(&mut line).map_err(HostCommandError::ReadRequest)? == 0 {
                return Ok(true);
            }
            let line = line.strip_suffix('\n').unwrap_or(&line);
            match SessionRequest::parse(line).map_err(HostCommandError::BadRequest)? {
                SessionRequest::Facts(request) => {
                    host_store = self.host_store(request.host_store.as_deref())?;
                    let facts = serde_json::to_string(&self.facts(&request)?)?;
                    writeln!(out, "{facts}")
                        .and_then(|()| out.flush())
                        .map_err(HostCommandError::AnswerFacts)?;
                }
                SessionRequest::Copy if host_store != HostStore::Ferry => {
                    self.copy_into_daemon(host_store, &mut input, &mut out)?;
                }
                SessionRequest::Copy => {
                    let options = AgentOptions::new(self.layout()?);
                    transfer::agent::serve(options, &mut input, &mut out)
                        .map_err(HostCommandError::Agent)?;
                }
                SessionRequest::Activate(request) => {
                    // A vanished reader is ignored: the work goes on (see proto::session).
                    let mut emit = |l: &HostLine| {
                        let _ = writeln!(out, "{}", l.encode()).and_then(|()| out.flush());
                    };
                    let result = self.activate(&request, &mut emit)?;
                    let success = result.success;
                    emit(&HostLine::Result(result));
                    return Ok(success);
                }
            }
        }
    }
}
