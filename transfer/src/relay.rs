//! A stream relay that adds one-way latency: the latency half of `ferry bench --link kernel`.
//!
//! The kernel here can shape a link's rate (`tc qdisc … tbf`) but has no `netem` to delay
//! packets, so delay is added in user space: [`delay_copy`] reads chunks (up to [`CHUNK`] bytes)
//! from one stream and writes each to the other `latency` after it was read, pipelined (reading
//! goes on while earlier chunks wait), with at most `queue` chunks in flight (then reading stops:
//! backpressure, as a full link buffer). End of stream is forwarded too, `latency` late, as a
//! write shutdown; each direction closes on its own, so a half-closed connection behaves as it
//! would end to end. [`relay`] runs both directions of a connection.
//!
//! [`Relay`] serves listeners on a tokio runtime of its own, with a blocking API for the
//! `ferry` binary: [`Relay::tcp_to_unix`] accepts TCP connections (inside a private network
//! namespace) and dials a Unix socket for each (Unix sockets named by a path cross network
//! namespaces), [`Relay::unix_to_tcp`] does the opposite (outside, towards the real server). The
//! latency is shared by all its connections and may change at any time ([`Relay::set_latency`]):
//! a bench copies what hosts already have before the link is slowed down.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest chunk read (and delayed) at once.
pub const CHUNK: usize = 64 * 1024;

/// Chunks in flight per direction by default: 256 × 64 KiB = 16 MiB at most, more than the
/// bandwidth-delay product of a 1 Gbit/s, 60 ms link.
pub const DEFAULT_QUEUE: usize = 256;

/// A one-way latency shared by relays and changeable while they run.
#[derive(Debug, Clone, Default)]
pub struct SharedLatency(Arc<AtomicU64>);

impl SharedLatency {
    /// A latency starting at `d`.
    pub fn new(d: Duration) -> Self {
        let l = SharedLatency::default();
        l.set(d);
        l
    }

    /// The latency now.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    /// Change it (for chunks read from now on).
    pub fn set(&self, d: Duration) {
        self.0.store(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Copy `from` to `to`, each chunk `latency` after it was read; at end of stream shut `to`
/// down (also `latency` late). Returns the bytes copied. At most `queue` chunks wait.
pub async fn delay_copy<R, W>(
    mut from: R,
    mut to: W,
    latency: &SharedLatency,
    queue: usize,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // An empty chunk stands for the end of the stream.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(queue.max(1));
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            let due = Instant::now() + latency.get();
            if tx.send((due, buf[..n].to_vec())).await.is_err() || n == 0 {
                return io::Result::Ok(());
            }
        }
    };
    let writer = async move {
        let mut copied = 0u64;
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if bytes.is_empty() {
                to.shutdown().await?;
                break;
            }
            to.write_all(&bytes).await?;
            copied += bytes.len() as u64;
        }
        io::Result::Ok(copied)
    };
    tokio::pin!(reader, writer);
    let mut reading = true;
    loop {
        tokio::select! {
            r = &mut reader, if reading => {
                r?;
                reading = false;
            }
            w = &mut writer => return w,
        }
    }
}

/// Relay both directions between `a` and `b` with `latency` each way until both have ended.
/// Returns the bytes copied a → b and b → a.
pub async fn relay<A, B>(
    a: A,
    b: B,
    latency: &SharedLatency,
    queue: usize,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    tokio::try_join!(
        delay_copy(a_read, b_write, latency, queue),
        delay_copy(b_read, a_write, latency, queue)
    )
}

/// Relays served in the background on a runtime of their own; they stop when it is dropped.
#[derive(Debug)]
pub struct Relay {
    runtime: Runtime,
    latency: SharedLatency,
}

impl Relay {
    /// A relay set with `latency` one way.
    pub fn new(latency: Duration) -> io::Result<Relay> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-relay")
            .enable_all()
            .build()?;
        Ok(Relay { runtime, latency: SharedLatency::new(latency) })
    }

    /// Change the latency of every connection, for what is read from now on.
    pub fn set_latency(&self, d: Duration) {
        self.latency.set(d);
    }

    /// Listen on TCP `listen` (bound before this returns; its address is returned) and relay
    /// each connection to a new connection to the Unix socket `target`.
    pub fn tcp_to_unix(&self, listen: SocketAddr, target: PathBuf) -> io::Result<SocketAddr> {
        let listener = self.runtime.block_on(TcpListener::bind(listen))?;
        let bound = listener.local_addr()?;
        let latency = self.latency.clone();
        self.runtime.spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                let (target, latency) = (target.clone(), latency.clone());
                tokio::spawn(async move {
                    if let Ok(outbound) = UnixStream::connect(&target).await {
                        let _ = relay(inbound, outbound, &latency, DEFAULT_QUEUE).await;
                    }
                });
            }
        });
        Ok(bound)
    }

    /// Listen on the Unix socket `listen` (created before this returns) and relay each
    /// connection to a new TCP connection to `target`.
    pub fn unix_to_tcp(&self, listen: PathBuf, target: SocketAddr) -> io::Result<()> {
        let listener = {
            let _guard = self.runtime.enter();
            UnixListener::bind(&listen)?
        };
        let latency = self.latency.clone();
        self.runtime.spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let latency = latency.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = relay(inbound, outbound, &latency, DEFAULT_QUEUE).await;
                    }
                });
            }
        });
        Ok(())
    }
}
