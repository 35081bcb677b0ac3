//! Deadlines: every wait of a session for its peer ends, in time proportional to what it waits
//! for, with an error naming the phase and how long it waited.
//!
//! A session names each phase as it enters it ([`Watch::phase`]: the handshake, the diff, the
//! answers, the next frame…) with a base allowance ([`Deadlines::handshake`] for the handshake,
//! [`Deadlines::idle`] for the rest). Every byte that moves on the connection, either way,
//! extends the current deadline by its share at [`Deadlines::floor_rate`]: a frame of N bytes
//! may take N / floor rate on top of the base. A peer that says nothing, or trickles bytes
//! slower than the floor rate (a slow-loris peer), reaches the deadline: a watchdog thread then
//! marks the session expired and calls the `on_expire` hook (the caller kills the connection,
//! which unblocks a pending write), and [`DeadlineReader`] ends the pending read with a
//! [`io::ErrorKind::TimedOut`] error whose text names the phase and the time waited (the
//! session's error adds the host).
//!
//! [`DeadlineReader`] reads the connection on a pump thread, on demand, so a read blocked on a
//! silent peer is given up without the transport's help; [`DeadlineWriter`] counts the bytes
//! written.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long each phase may wait (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From connecting to the peer's greeting (`Welcome`, or `Hello` on a pull).
    pub handshake: Duration,
    /// Any other wait, before bytes moved extend it.
    pub idle: Duration,
    /// Bytes per second: each byte moved extends the current deadline by 1 / this.
    pub floor_rate: u64,
}

impl Default for Deadlines {
    /// 60 s for the handshake (an SSH login, an agent upload), 300 s for any other wait (a
    /// batch of paths synced to a slow disk), extended at 4 KiB/s of bytes moved.
    fn default() -> Self {
        Deadlines {
            handshake: Duration::from_secs(60),
            idle: Duration::from_secs(300),
            floor_rate: 4 << 10,
        }
    }
}

#[derive(Debug)]
struct State {
    phase: &'static str,
    started: Instant,
    base: Duration,
    bytes_at_start: u64,
    expired: Option<String>,
    closed: bool,
}

struct Shared {
    deadlines: Deadlines,
    state: Mutex<State>,
    changed: Condvar,
    bytes: AtomicU64,
    on_expire: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// The deadline of one session (cheap to clone; every clone is the same watch). The watchdog
/// thread ends when the last clone is dropped or [`Watch::close`] is called.
#[derive(Clone)]
pub struct Watch(Option<Arc<Shared>>);

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("armed", &self.0.is_some()).finish()
    }
}

impl Watch {
    /// A watch that never expires (sessions whose peer is trusted to end, e.g. the host
    /// answering its own coordinator).
    pub fn none() -> Self {
        Watch(None)
    }

    /// Start watching with `deadlines`, in the phase `phase` with the handshake allowance;
    /// `on_expire` runs once, on the watchdog thread, when a deadline passes.
    pub fn start(
        deadlines: Deadlines,
        phase: &'static str,
        on_expire: impl FnOnce() + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            deadlines,
            state: Mutex::new(State {
                phase,
                started: Instant::now(),
                base: deadlines.handshake,
                bytes_at_start: 0,
                expired: None,
                closed: false,
            }),
            changed: Condvar::new(),
            bytes: AtomicU64::new(0),
            on_expire: Mutex::new(Some(Box::new(on_expire))),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::spawn(move || watchdog(weak));
        Watch(Some(shared))
    }

    /// Enter `phase`: the deadline is now `idle` (or `handshake` when `handshake`) from now,
    /// extended by the bytes moved from now on.
    pub fn phase(&self, phase: &'static str, handshake: bool) {
        let Some(s) = &self.0 else { return };
        let mut st = lock(&s.state);
        st.phase = phase;
        st.started = Instant::now();
        st.base = if handshake { s.deadlines.handshake } else { s.deadlines.idle };
        st.bytes_at_start = s.bytes.load(Ordering::Relaxed);
        s.changed.notify_all();
    }

    /// Count bytes moved on the connection.
    pub fn moved(&self, n: usize) {
        if let Some(s) = &self.0 {
            s.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// The expiry error, once a deadline passed.
    pub fn expired(&self) -> Option<io::Error> {
        let s = self.0.as_ref()?;
        let st = lock(&s.state);
        st.expired.as_ref().map(|m| io::Error::new(io::ErrorKind::TimedOut, m.clone()))
    }

    /// Stop watching (the session is over). Returns whether it had expired (the caller then
    /// stops the peer itself before waiting for it: the hook may not have run yet).
    pub fn close(&self) -> bool {
        let Some(s) = &self.0 else { return false };
        let mut st = lock(&s.state);
        st.closed = true;
        s.changed.notify_all();
        st.expired.is_some()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn watchdog(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let mut st = lock(&s.state);
        if st.closed {
            return;
        }
        let moved = s.bytes.load(Ordering::Relaxed).saturating_sub(st.bytes_at_start);
        let extra = Duration::from_secs_f64(moved as f64 / s.deadlines.floor_rate.max(1) as f64);
        let deadline = st.started + st.base + extra;
        let now = Instant::now();
        if now >= deadline {
            st.expired = Some(format!(
                "no progress {} for {:.0?} (the deadline: {:.0?}, plus {moved} bytes moved at \
                 {} bytes/s)",
                st.phase,
                now - st.started,
                st.base,
                s.deadlines.floor_rate,
            ));
            drop(st);
            if let Some(hook) = lock(&s.on_expire).take() {
                hook();
            }
            return;
        }
        // Wake at the deadline, or at least every second (bytes moved extend it).
        let wait = (deadline - now).min(Duration::from_secs(1));
        drop(s.changed.wait_timeout(st, wait));
    }
}

/// Reads a connection on a pump thread, giving up when the [`Watch`] expires. The pump reads
/// only when asked (one read per [`Read::read`] call, of at most the caller's buffer), so it
/// never takes bytes the session does not ask for: a stream lent for one session (a deploy's
/// copy inside its host session) goes on intact after it.
#[derive(Debug)]
pub struct DeadlineReader {
    requests: SyncSender<usize>,
    results: Receiver<io::Result<Vec<u8>>>,
    pending: bool,
    watch: Watch,
}

impl DeadlineReader {
    /// Read `inner` on a thread; every byte read counts as moved for `watch`.
    pub fn new(mut inner: impl Read + Send + 'static, watch: Watch) -> Self {
        let (requests, asked) = sync_channel::<usize>(1);
        let (tx, results) = sync_channel(1);
        std::thread::spawn(move || {
            for n in asked {
                let mut buf = vec![0u8; n];
                let result = loop {
                    match inner.read(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => break other,
                    }
                };
                let result = result.map(|got| {
                    buf.truncate(got);
                    buf
                });
                if tx.send(result).is_err() {
                    return;
                }
            }
        });
        DeadlineReader { requests, results, pending: false, watch }
    }
}

impl Read for DeadlineReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if !self.pending {
            if let Some(e) = self.watch.expired() {
                return Err(e);
            }
            let asked = out.len().min(128 << 10);
            self.requests.send(asked).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            self.pending = true;
        }
        loop {
            match self.results.recv_timeout(Duration::from_millis(250)) {
                Ok(result) => {
                    self.pending = false;
                    // The expiry hook may have closed the connection: the deadline is the cause.
                    let bytes = match result {
                        Ok(b) if b.is_empty() => return self.watch.expired().map_or(Ok(0), Err),
                        Ok(b) => b,
                        Err(e) => return Err(self.watch.expired().unwrap_or(e)),
                    };
                    self.watch.moved(bytes.len());
                    out[..bytes.len()].copy_from_slice(&bytes);
                    return Ok(bytes.len());
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(e) = self.watch.expired() {
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self
                        .watch
                        .expired()
                        .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()));
                }
            }
        }
    }
}

/// Counts the bytes written for a [`Watch`], and fails once it expired.
#[derive(Debug)]
pub struct DeadlineWriter<W> {
    inner: W,
    watch: Watch,
}

impl<W> DeadlineWriter<W> {
    /// Count what is written to `inner`.
    pub fn new(inner: W, watch: Watch) -> Self {
        DeadlineWriter { inner, watch }
    }
}

impl<W: Write> Write for DeadlineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.watch.expired() {
            return Err(e);
        }
        let n = self.inner.write(buf)?;
        self.watch.moved(n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_stream_expires_naming_the_phase() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let deadlines = Deadlines {
            handshake: Duration::from_millis(200),
            idle: Duration::from_millis(200),
            floor_rate: 1 << 20,
        };
        let watch = Watch::start(deadlines, "waiting for Welcome", || {});
        let mut r = DeadlineReader::new(a, watch);
        let e = r.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("waiting for Welcome"), "{e}");
    }
}
