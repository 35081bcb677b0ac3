//! Link shaping: emulate a link's rate and one-way latency inside the transport, so that
//! `ferry bench` measures slow links on any machine (no `tc netem` needed).
//!
//! - [`DelayLine`] is the pure accounting: bytes handed to the link at time `t` are serialized
//!   at `rate` after whatever is still on the wire (a token bucket with `burst` bytes of credit)
//!   and arrive `latency` after their last byte left. Time is a [`Duration`] since any epoch:
//!   tests drive it with numbers.
//! - [`Shaped`] wraps an `AsyncRead (+ AsyncWrite)` stream and applies a delay line to what is
//!   *read*: each chunk read from the inner stream is released to the caller at its arrival
//!   time, like the receiving end of the emulated link. Writes pass through. To shape both
//!   directions of a connection, wrap both ends (each shapes what it receives):
//!   [`shaped_duplex`] does this for an in-process pair. It uses `tokio::time`, so a test with
//!   paused time (`#[tokio::test(start_paused = true)]`) runs in simulated time.
//! - [`Qdisc`]: the same link in the kernel instead, as `tc qdisc add … ARGS` (netem, or tbf
//!   with the delay left to the userspace relay, `crate::relay`).
//! - Memory: at most [`LinkSpec::queue_limit`] bytes are held per direction (about twice the
//!   bandwidth-delay product); beyond it the wrapper stops reading the inner stream, so the
//!   sender sees backpressure as on a real link.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::time::{Instant, Sleep};

/// One direction of an emulated link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// Bytes per second; `f64::INFINITY` for no rate limit.
    pub rate: f64,
    /// One-way latency.
    pub latency: Duration,
    /// Bytes that may leave at once before the rate applies (token bucket depth).
    pub burst: u64,
}

impl LinkSpec {
    /// `mbit` megabits per second (10^6), `latency_ms` one way, 16 KiB burst.
    pub fn mbit(mbit: f64, latency_ms: u64) -> Self {
        LinkSpec {
            rate: mbit * 1e6 / 8.0,
            latency: Duration::from_millis(latency_ms),
            burst: 16 * 1024,
        }
    }

    /// No shaping at all.
    pub fn unlimited() -> Self {
        LinkSpec { rate: f64::INFINITY, latency: Duration::ZERO, burst: 0 }
    }

    /// Bytes held by the receiving wrapper at most: twice the bandwidth-delay product, at least
    /// 256 KiB, at most 64 MiB.
    pub fn queue_limit(&self) -> usize {
        let bdp = if self.rate.is_finite() { self.rate * self.latency.as_secs_f64() } else { 0.0 };
        (2.0 * bdp).clamp(256.0 * 1024.0, 64.0 * 1024.0 * 1024.0) as usize
    }

    /// Largest chunk released at once: 5 ms worth of rate, between 1 KiB and 64 KiB.
    pub fn chunk_limit(&self) -> usize {
        if self.rate.is_finite() {
            (self.rate * 0.005).clamp(1024.0, 65536.0) as usize
        } else {
            65536
        }
    }
}

/// The pure accounting of one direction: when do bytes arrive.
#[derive(Debug, Clone)]
pub struct DelayLine {
    spec: LinkSpec,
    busy_until: Duration,
    sent: u64,
}

impl DelayLine {
    /// An idle link.
    pub fn new(spec: LinkSpec) -> Self {
        DelayLine { spec, busy_until: Duration::ZERO, sent: 0 }
    }

    /// `len` bytes handed to the link at `now`: the time their last byte arrives.
    pub fn schedule(&mut self, now: Duration, len: u64) -> Duration {
        self.sent += len;
        if !self.spec.rate.is_finite() {
            return now + self.spec.latency;
        }
        let start = self.busy_until.max(now);
        let done = start + Duration::from_secs_f64(len as f64 / self.spec.rate);
        self.busy_until = done;
        let credit = Duration::from_secs_f64(self.spec.burst as f64 / self.spec.rate);
        done.saturating_sub(credit).max(now) + self.spec.latency
    }

    /// Bytes scheduled so far.
    pub fn bytes(&self) -> u64 {
        self.sent
    }

    /// When the link is idle again (last byte serialized), not counting latency.
    pub fn busy_until(&self) -> Duration {
        self.busy_until
    }
}

enum Item {
    Data { due: Instant, bytes: Vec<u8>, pos: usize },
    Eof { due: Instant },
}

/// A stream whose reads go through an emulated link (see the module docs). Writes pass through.
pub struct Shaped<S> {
    inner: S,
    line: DelayLine,
    epoch: Instant,
    queue: VecDeque<Item>,
    queued: usize,
    inner_done: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> std::fmt::Debug for Shaped<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaped")
            .field("spec", &self.line.spec)
            .field("bytes", &self.line.bytes())
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl<S> Shaped<S> {
    /// Wrap `inner`; what is read from it goes through a link with `spec`.
    pub fn new(inner: S, spec: LinkSpec) -> Self {
        Shaped {
            inner,
            line: DelayLine::new(spec),
            epoch: Instant::now(),
            queue: VecDeque::new(),
            queued: 0,
            inner_done: false,
            sleep: None,
        }
    }

    /// The accounting so far.
    pub fn line(&self) -> &DelayLine {
        &self.line
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> Shaped<S> {
    /// Read what the inner stream has, up to the queue limit, and schedule it.
    fn fill(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let limit = self.line.spec.queue_limit();
        let chunk = self.line.spec.chunk_limit();
        while !self.inner_done && self.queued < limit {
            let mut tmp = vec![0u8; chunk];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    let now = Instant::now();
                    let at = now.duration_since(self.epoch);
                    if n == 0 {
                        self.inner_done = true;
                        // EOF arrives after the last byte, one latency after now at least.
                        let last = self.line.busy_until().max(at) + self.line.spec.latency;
                        self.queue.push_back(Item::Eof { due: self.epoch + last });
                    } else {
                        tmp.truncate(n);
                        let due = self.epoch + self.line.schedule(at, n as u64);
                        self.queued += n;
                        self.queue.push_back(Item::Data { due, bytes: tmp, pos: 0 });
                    }
                }
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Shaped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.fill(cx)?;
            let now = Instant::now();
            let due = match this.queue.front() {
                None => return Poll::Pending, // inner registered the waker
                Some(Item::Eof { due }) | Some(Item::Data { due, .. }) => *due,
            };
            if due <= now {
                this.sleep = None;
                match this.queue.front_mut().expect("front exists") {
                    Item::Eof { .. } => return Poll::Ready(Ok(())),
                    Item::Data { bytes, pos, .. } => {
                        let n = (bytes.len() - *pos).min(buf.remaining());
                        buf.put_slice(&bytes[*pos..*pos + n]);
                        *pos += n;
                        this.queued -= n;
                        if *pos == bytes.len() {
                            this.queue.pop_front();
                        }
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            if this.sleep.as_ref().is_none_or(|s| s.deadline() != due) {
                this.sleep = Some(Box::pin(tokio::time::sleep_until(due)));
            }
            let sleep = this.sleep.as_mut().expect("just set");
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shaped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Two connected in-process ends, `a` and `b`: what `a` writes reaches `b` through a link with
/// `a_to_b`, and the other way with `b_to_a`.
pub fn shaped_duplex(
    a_to_b: LinkSpec,
    b_to_a: LinkSpec,
) -> (Shaped<DuplexStream>, Shaped<DuplexStream>) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (Shaped::new(a, b_to_a), Shaped::new(b, a_to_b))
}

// ---------------------------------------------------------------------------------------------
// Blocking shaping of a whole transport (`ferry bench` over `local://` or `ssh://`).

/// A [`Transport`](crate::transport::Transport) whose connection goes through an emulated link:
/// each direction is a relay thread that releases what was written at the arrival time a
/// [`DelayLine`] gives it (rate, then latency). At most [`LinkSpec::queue_limit`] bytes wait per
/// direction; beyond that the writer blocks, as on a real link whose buffers are full.
#[derive(Debug)]
pub struct ShapedTransport {
    /// The transport carrying the bytes.
    pub inner: Box<dyn crate::transport::Transport>,
    /// Coordinator → agent.
    pub up: LinkSpec,
    /// Agent → coordinator.
    pub down: LinkSpec,
}

impl crate::transport::Transport for ShapedTransport {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn connect(&self) -> Result<crate::transport::Connection, crate::transport::TransportError> {
        let c = self.inner.connect()?;
        Ok(crate::transport::Connection {
            reader: Box::new(shaped_reader(c.reader, self.down)),
            writer: Box::new(shaped_writer(c.writer, self.up)),
            agent: c.agent,
        })
    }
}

type Piece = (std::time::Instant, Vec<u8>);

fn channel_for(
    spec: LinkSpec,
) -> (std::sync::mpsc::SyncSender<Piece>, std::sync::mpsc::Receiver<Piece>) {
    let pieces = (spec.queue_limit() / spec.chunk_limit()).max(2);
    std::sync::mpsc::sync_channel(pieces)
}

/// Cuts writes into pieces, stamps each with its arrival time and queues it.
struct Stamper {
    line: DelayLine,
    epoch: std::time::Instant,
    chunk: usize,
}

impl Stamper {
    fn new(spec: LinkSpec) -> Self {
        Stamper {
            line: DelayLine::new(spec),
            epoch: std::time::Instant::now(),
            chunk: spec.chunk_limit(),
        }
    }
    fn stamp(&mut self, len: usize) -> std::time::Instant {
        let due = self.line.schedule(self.epoch.elapsed(), len as u64);
        self.epoch + due
    }
}

fn sleep_until(due: std::time::Instant) {
    let now = std::time::Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// The writing end of a shaped direction.
struct ShapedWriter {
    queue: Option<std::sync::mpsc::SyncSender<Piece>>,
    stamper: Stamper,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn shaped_writer(mut inner: Box<dyn io::Write + Send>, spec: LinkSpec) -> ShapedWriter {
    let (tx, rx) = channel_for(spec);
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = failed.clone();
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            sleep_until(due);
            if inner.write_all(&bytes).and_then(|()| inner.flush()).is_err() {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
        // Dropping `inner` closes the stream: the peer sees the end after the last byte.
    });
    ShapedWriter { queue: Some(tx), stamper: Stamper::new(spec), failed }
}

impl io::Write for ShapedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the shaped link's peer is gone",
            ));
        }
        let n = buf.len().min(self.stamper.chunk);
        let due = self.stamper.stamp(n);
        let queue = self.queue.as_ref().expect("open until dropped");
        queue
            .send((due, buf[..n].to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the shaped link is closed"))?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end of a shaped direction.
struct ShapedReader {
    queue: std::sync::mpsc::Receiver<Piece>,
    current: Vec<u8>,
    pos: usize,
}

fn shaped_reader(mut inner: Box<dyn io::Read + Send>, spec: LinkSpec) -> ShapedReader {
    let (tx, rx) = channel_for(spec);
    std::thread::spawn(move || {
        let mut stamper = Stamper::new(spec);
        let mut buf = vec![0u8; stamper.chunk];
        loop {
            match inner.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = stamper.stamp(n);
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    ShapedReader { queue: rx, current: Vec::new(), pos: 0 }
}

impl io::Read for ShapedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.current.len() {
            match self.queue.recv() {
                Ok((due, bytes)) => {
                    sleep_until(due);
                    self.current = bytes;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The queueing discipline that shapes a kernel link (`lo` in a private namespace, as
/// `ferry bench --link kernel` and the benches do): rate in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qdisc {
    /// Rate and delay in the kernel.
    Netem,
    /// Rate in the kernel, delay by the relay.
    Tbf,
}

impl Qdisc {
    pub fn name(self) -> &'static str {
        match self {
            Qdisc::Netem => "netem",
            Qdisc::Tbf => "tbf",
        }
    }

    /// `tc qdisc add dev lo root` arguments for this link.
    pub fn tc_args(self, rate: f64, latency: Duration) -> Vec<String> {
        let bits = (rate * 8.0).round() as u64;
        let mut args = vec![self.name().to_owned()];
        match self {
            Qdisc::Netem => {
                args.extend(["delay".into(), format!("{}us", latency.as_micros())]);
                if rate.is_finite() {
                    args.extend(["rate".into(), format!("{bits}bit")]);
                }
                args.extend(["limit".into(), "100000".into()]);
            }
            Qdisc::Tbf => args.extend(
                ["rate", &format!("{bits}bit"), "burst", &tbf_burst(rate), "latency", "50ms"]
                    .map(String::from),
            ),
        }
        args
    }
}

/// tbf's bucket: 32 KiB, or 10 ms of the rate when more (the kernel refills the bucket once
/// a timer tick, so a bucket smaller than a tick's worth of bytes caps a fast link below its rate).
pub fn tbf_burst(rate: f64) -> String {
    let bytes = if rate.is_finite() { (rate / 100.0).max(32.0 * 1024.0) } else { 32.0 * 1024.0 };
    format!("{}b", bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_bucket() {
        assert_eq!(tbf_burst(2.5e6), "32768b");
        assert_eq!(tbf_burst(1.25e8), "1250000b");
        let args = Qdisc::Tbf.tc_args(1.25e8, Duration::ZERO);
        assert_eq!(args.join(" "), "tbf rate 1000000000bit burst 1250000b latency 50ms");
    }
}
