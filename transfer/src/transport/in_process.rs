//! [`InProcessTransport`]: an agent on a thread of this process, over a socket pair. `ferry copy
//! --from local:///ROOT` serves the local store this way (the other store is read directly),
//! and tests use it to run a whole push without a subprocess.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{AgentHandle, Connection, Transport, TransportError};

/// What runs on the agent's thread: serve the protocol on the input and write to the output
/// (both ends of one socket); an error is the agent's message.
pub type ServeFn = dyn Fn(UnixStream, &UnixStream) -> Result<(), String> + Send + Sync;

/// An agent on a thread of this process, over a socket pair: each connection runs `serve` on a
/// new thread.
#[derive(Clone)]
pub struct InProcessTransport {
    name: String,
    serve: Arc<ServeFn>,
}

impl fmt::Debug for InProcessTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessTransport").field("name", &self.name).finish_non_exhaustive()
    }
}

impl InProcessTransport {
    /// A transport named `name` (as [`Transport::describe`] shows it) running `serve` per
    /// connection.
    pub fn new(
        name: impl Into<String>,
        serve: impl Fn(UnixStream, &UnixStream) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        InProcessTransport { name: name.into(), serve: Arc::new(serve) }
    }
}

#[derive(Debug)]
struct ThreadAgent {
    thread: Option<JoinHandle<Result<(), String>>>,
    error: Arc<Mutex<String>>,
    socket: UnixStream,
}

impl AgentHandle for ThreadAgent {
    fn wait(&mut self) -> Result<(), TransportError> {
        let Some(t) = self.thread.take() else { return Ok(()) };
        match t.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = e.clone();
                Err(TransportError::AgentFailed {
                    host: "in-process".into(),
                    status: "error".into(),
                    stderr: e,
                })
            }
            Err(_) => Err(TransportError::Other("the in-process agent panicked".into())),
        }
    }
    fn stderr(&self) -> String {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn kill(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Transport for InProcessTransport {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn connect(&self) -> Result<Connection, TransportError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| TransportError::Other(format!("socketpair: {e}")))?;
        let serve = self.serve.clone();
        let agent_in = theirs.try_clone().map_err(|e| TransportError::Other(e.to_string()))?;
        let kill_handle = theirs.try_clone().map_err(|e| TransportError::Other(e.to_string()))?;
        let thread = std::thread::spawn(move || {
            let result = serve(agent_in, &theirs);
            let _ = theirs.shutdown(std::net::Shutdown::Both);
            result
        });
        let reader = ours.try_clone().map_err(|e| TransportError::Other(e.to_string()))?;
        Ok(Connection {
            reader: Box::new(reader),
            writer: Box::new(HalfCloseOnDrop(ours)),
            agent: Box::new(ThreadAgent {
                thread: Some(thread),
                error: Arc::default(),
                socket: kill_handle,
            }),
        })
    }
}

/// Shuts down the write half when dropped, so the peer sees end of stream even while a clone
/// of the socket is still reading.
#[derive(Debug)]
struct HalfCloseOnDrop(UnixStream);

impl Write for HalfCloseOnDrop {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for HalfCloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}
