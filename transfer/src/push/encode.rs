//! How the coordinator encodes each path it sends: full zstd or a delta, at which level, and
//! whether the bytes come from another session's encoding (compress once).
//!
//! [`PathEncoder::prepare`] decides, before the path's `PathStart` goes out (its encoding is part
//! of it): with the adaptive controller ([`crate::push::adaptive::Controller`]) the level and delta on/off
//! follow the measured link; otherwise the fixed level is used, and a delta whenever the host
//! offered a base the local store holds. A base whose local NAR does not check out means a full
//! transfer. [`PathEncoder::write_data`] then encodes on a helper thread, forwards the
//! encoded bytes as `Data` frames into a [`QueuedWriter`] (a thread writing to the connection,
//! up to [`SEND_QUEUE_BYTES`] ahead), and feeds the controller what it measured:
//! - **link rate**, per window of 1 MiB queued: bytes the connection accepted in the window over
//!   its duration when the writing thread spent at least half of it blocked in writes (the link
//!   was the limit); otherwise the link is faster than what was offered, and the estimate is
//!   those bytes over max(blocked time, 1/4 of the window), an upper estimate that moves the
//!   controller towards cheaper levels;
//! - **compressor speed and ratio**: NAR bytes over the helper thread's busy time (the larger
//!   of its CPU time and its wall time not spent blocked on its output: on a loaded machine,
//!   waiting for a core limits it too), and NAR bytes over encoded bytes; for a delta, per segment at the level that segment used. A delta's
//!   segments after the first take the level the controller picks when they start.
//!
//! With a [`FrameCache`] shared by the sessions of a multi-host push, the encoded stream of a
//! (path, base, level) is produced by one session and copied by the others.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use closure::PathInfo;

use nar_core::store_path::StorePath;
use store::StoreLayout;

use crate::delta::bases::LocalBases;
use crate::delta::stream::VerifiedBase;
use crate::push::adaptive::{AdaptiveConfig, Choice, CompressSetting, Controller};
use crate::push::frame_cache::{Claim, Follower, FrameCache, Key, Producer};
use crate::push::segments::{set_level, LevelPolicy, SegmentedWriter};
use proto::frame::Encoding;
use proto::io::{DataWriter, FrameWriter};

/// Bytes written to the connection, and the time spent blocked writing them.
#[derive(Debug, Default)]
pub struct LinkMeter {
    blocked_ns: AtomicU64,
    written: AtomicU64,
}

impl LinkMeter {
    /// Seconds blocked so far.
    pub fn blocked_secs(&self) -> f64 {
        self.blocked_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Bytes the connection accepted so far (not those still queued in a [`QueuedWriter`]).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// A writer that adds the time spent in each write to a [`LinkMeter`].
#[derive(Debug)]
pub struct Metered<W> {
    pub inner: W,
    pub meter: Arc<LinkMeter>,
}

impl<W: Write> Write for Metered<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = Instant::now();
        let r = self.inner.write(buf);
        self.meter.blocked_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Ok(n) = &r {
            self.meter.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        let t = Instant::now();
        let r = self.inner.flush();
        self.meter.blocked_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

/// How paths are encoded for one session.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// `None` sends NARs as they are (no compression, no delta).
    pub compress: bool,
    /// `None`: the fixed `level`; `Some`: the adaptive controller with these overrides.
    pub adaptive: Option<CompressSetting>,
    /// zstd level when not adaptive.
    pub level: i32,
    /// zstd worker threads for full streams (0: on the sender thread).
    pub workers: u32,
    /// Deltas allowed (the peer speaks `delta` and the user did not say `--no-delta`).
    pub delta: bool,
    /// A link rate (wire bytes/s) to start the controller from.
    pub link_rate_hint: Option<f64>,
}

/// What the encoder did in a session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodeStats {
    /// Paths sent as deltas.
    pub paths_delta: usize,
    /// NAR bytes of the paths sent as deltas.
    pub delta_nar_bytes: u64,
    /// Paths whose encoded stream was copied from another session's (compress once).
    pub paths_shared: usize,
    /// (level, segments) used, in order of first use: a full path has a segment per
    /// [`crate::push::segments::SEGMENT_BYTES`] of NAR, a delta its own segments.
    pub levels: Vec<(i32, usize)>,
    /// The controller's last link estimate (wire bytes/s).
    pub link_rate: Option<f64>,
}

enum Job {
    Follow(Follower),
    Full { producer: Option<Producer> },
    Delta { base: VerifiedBase, producer: Option<Producer> },
}

/// The decision for one path, made before its `PathStart`.
pub struct Prepared {
    /// The encoding to announce.
    pub encoding: Encoding,
    level: i32,
    job: Job,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("encoding", &self.encoding)
            .field("level", &self.level)
            .finish()
    }
}

/// Encodes one session's paths.
#[derive(Debug)]
pub struct PathEncoder<'a> {
    layout: &'a StoreLayout,
    options: EncodeOptions,
    controller: Option<Mutex<Controller>>,
    bases: Option<LocalBases>,
    cache: Option<Arc<FrameCache>>,
    meter: Arc<LinkMeter>,
    wire: Arc<AtomicU64>,
    /// Time the encoding helper spent blocked handing its output on (the link was slower).
    out_blocked_ns: AtomicU64,
    /// What was done.
    pub stats: EncodeStats,
    /// One zstd compression context for the session's full-stream paths (made on first use,
    /// reset for each path, which stays its own zstd stream).
    zstd: ZstdContext,
}

/// Copies writes to a second writer (the cache entry).
struct Tee<'a, A, B> {
    a: A,
    b: Option<&'a mut B>,
}

impl<A: Write, B: Write> Write for Tee<'_, A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.a.write(buf)?;
        if let Some(b) = self.b.as_mut() {
            b.write_all(&buf[..n])?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.a.flush()
    }
}

/// Drops the first `skip` bytes written (a resumed path), passes the rest on, and reports
/// progress every MiB.
struct Skip<'r, W> {
    inner: W,
    skip: u64,
    passed: u64,
    unreported: u64,
    report: &'r dyn Fn(u64),
}

impl<W: Write> Write for Skip<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let skipped = buf.len().min(self.skip as usize);
        self.skip -= skipped as u64;
        if skipped < buf.len() {
            self.inner.write_all(&buf[skipped..])?;
            let n = (buf.len() - skipped) as u64;
            self.passed += n;
            self.unreported += n;
            if self.unreported >= 1 << 20 {
                (self.report)(self.unreported);
                self.unreported = 0;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reusable zstd compression context (`None` until first used).
struct ZstdContext(Option<zstd::zstd_safe::CCtx<'static>>);

impl std::fmt::Debug for ZstdContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "ZstdContext(made)" } else { "ZstdContext(none)" })
    }
}

impl<'a> PathEncoder<'a> {
    /// An encoder reading paths from the store at `layout`; `meter` and `wire` observe the
    /// session's connection.
    pub fn new(
        layout: &'a StoreLayout,
        options: EncodeOptions,
        cache: Option<Arc<FrameCache>>,
        meter: Arc<LinkMeter>,
        wire: Arc<AtomicU64>,
    ) -> Self {
        let controller = options.adaptive.map(|compress| {
            let c = Controller::new(AdaptiveConfig { compress, no_delta: !options.delta });
            Mutex::new(match options.link_rate_hint {
                Some(r) => c.with_link_rate(r),
                None => c,
            })
        });
        let bases = (options.delta && options.compress).then(|| LocalBases::open(layout));
        PathEncoder {
            layout,
            options,
            controller,
            bases,
            cache,
            meter,
            wire,
            out_blocked_ns: AtomicU64::new(0),
            stats: EncodeStats::default(),
            zstd: ZstdContext(None),
        }
    }

    fn claim(&self, key: Key) -> Option<Claim> {
        self.cache.as_ref().and_then(|c| c.claim(&key))
    }

    /// Decide how to send `info` (from NAR byte `offset`), given the bases the host offered.
    pub fn prepare(&mut self, info: &PathInfo, offset: u64, candidates: &[StorePath]) -> Prepared {
        if !self.options.compress {
            return Prepared {
                encoding: Encoding::None,
                level: 0,
                job: Job::Full { producer: None },
            };
        }
        let base = match (&self.bases, offset) {
            (Some(b), 0) if !candidates.is_empty() => b.pick(candidates),
            _ => None,
        };
        let choice = match &self.controller {
            Some(c) => lock(c).choose(base.is_some()),
            None => Choice { level: self.options.level, delta: base.is_some() },
        };
        if choice.level == 0 {
            return Prepared {
                encoding: Encoding::None,
                level: 0,
                job: Job::Full { producer: None },
            };
        }
        let level = choice.level;
        if let (true, Some((base_path, digest))) = (choice.delta, base) {
            let encoding = Encoding::ZstdDelta { base: base_path.clone() };
            let key = Key { path: info.path.clone(), base: Some(base_path.clone()), level };
            let producer = match self.claim(key) {
                Some(Claim::Follow(f)) => return Prepared { encoding, level, job: Job::Follow(f) },
                Some(Claim::Produce(p)) => Some(p),
                None => None,
            };
            let loaded = self.bases.as_ref().map(|b| b.load(&base_path, &digest));
            if let Some(Ok(base)) = loaded {
                return Prepared { encoding, level, job: Job::Delta { base, producer } };
            }
            // The local base does not check out: full transfer (the producer, dropped, marks
            // its entry failed so that other sessions encode for themselves).
        }
        let producer = if offset == 0 {
            match self.claim(Key { path: info.path.clone(), base: None, level }) {
                Some(Claim::Follow(f)) => {
                    return Prepared { encoding: Encoding::Zstd, level, job: Job::Follow(f) }
                }
                Some(Claim::Produce(p)) => Some(p),
                None => None,
            }
        } else {
            None
        };
        Prepared { encoding: Encoding::Zstd, level, job: Job::Full { producer } }
    }

    /// Write the `Data` frames of `info` as `prepared` says; returns the NAR bytes sent.
    ///
    /// Encoding runs on a helper thread feeding a bounded pipe (16 chunks of 128 KiB) that this
    /// thread forwards to the connection, so compressing overlaps sending; every MiB forwarded
    /// updates the link estimate, and a delta's later segments take the level the controller
    /// picks then.
    pub fn write_data<W: Write>(
        &mut self,
        prepared: Prepared,
        info: &PathInfo,
        offset: u64,
        out: &mut FrameWriter<W>,
        report: &(dyn Fn(u64) + Sync),
    ) -> io::Result<u64> {
        let t = Instant::now();
        let blocked0 = self.meter.blocked_secs();
        let written0 = self.meter.written();
        let wire0 = self.wire.load(Ordering::Relaxed);
        let phys = self.layout.physical_path(&info.path);
        let level = prepared.level;
        let is_delta = matches!(prepared.encoding, Encoding::ZstdDelta { .. });
        let mut data = DataWriter::new(out);
        let (nar_sent, shared, levels) = match prepared.job {
            Job::Follow(f) => {
                let n = f.copy_to(&mut data)?;
                if let Some(c) = &self.cache {
                    c.note_shared_bytes(n);
                }
                report(info.nar_size - offset);
                (info.nar_size - offset, true, vec![level])
            }
            Job::Delta { base, mut producer } => {
                let mut policy =
                    SegmentPolicy::new(self.controller.as_ref(), &self.out_blocked_ns, level, true);
                let encode = |w: &mut dyn Write| {
                    policy.segment_start = Some(policy.clock.now());
                    let mut level_for = |i: usize, done: &crate::delta::stream::EncodeStats| {
                        if i == 0 {
                            return level;
                        }
                        if let Some(&(_, _, new_len, frame_len)) = done.segments.last() {
                            policy.segment_done(policy.last_level(), new_len, frame_len);
                        }
                        policy.next_level()
                    };
                    let stats = crate::delta::bases::encode_path(
                        &base,
                        &phys,
                        info.nar_size,
                        &mut level_for,
                        w,
                    )
                    .map_err(|e| match e {
                        crate::delta::stream::DeltaError::Io(io) => io,
                        other => io::Error::other(other.to_string()),
                    })?;
                    if let Some(&(_, _, new_len, frame_len)) = stats.segments.last() {
                        policy.segment_done(policy.last_level(), new_len, frame_len);
                    }
                    Ok(info.nar_size)
                };
                let tee = Tee { a: &mut data, b: producer.as_mut() };
                let sent = self.pipelined(encode, tee, t)?;
                drop(base);
                if let Some(p) = producer {
                    p.finish();
                }
                report(info.nar_size);
                (sent, false, policy.levels)
            }
            Job::Full { mut producer } => {
                let workers = self.options.workers;
                let mut cctx = self.zstd.0.take();
                let mut policy = SegmentPolicy::new(
                    self.controller.as_ref(),
                    &self.out_blocked_ns,
                    level,
                    false,
                );
                let encode = |w: &mut dyn Write| {
                    policy.segment_start = Some(policy.clock.now());
                    full_stream(&phys, offset, level, workers, &mut cctx, w, report, &mut policy)
                };
                let tee = Tee { a: &mut data, b: producer.as_mut() };
                let result = self.pipelined(encode, tee, t);
                self.zstd.0 = cctx;
                let sent = result?;
                if let Some(p) = producer {
                    p.finish();
                }
                (sent, false, policy.levels)
            }
        };
        data.finish()?;
        if is_delta {
            self.stats.paths_delta += 1;
            self.stats.delta_nar_bytes += info.nar_size;
        }
        if shared {
            self.stats.paths_shared += 1;
        }
        for l in levels {
            match self.stats.levels.iter_mut().find(|(x, _)| *x == l) {
                Some((_, n)) => *n += 1,
                None => self.stats.levels.push((l, 1)),
            }
        }
        let elapsed = t.elapsed().as_secs_f64();
        let blocked = self.meter.blocked_secs() - blocked0;
        let wire = self.wire.load(Ordering::Relaxed) - wire0;
        if let Some(c) = &self.controller {
            let mut c = lock(c);
            // A path shorter than the windows of `pipelined`: measure it whole.
            if wire < WINDOW_BYTES {
                observe_link(&mut c, self.meter.written() - written0, elapsed, blocked);
            }
            // Compression was recorded per segment, as each ended.
            self.stats.link_rate = c.link_rate();
        }
        Ok(nar_sent)
    }

    /// Run `encode` on a helper thread into a bounded pipe, forwarding what it writes to `out`
    /// on this thread; returns what `encode` returned.
    fn pipelined<E, W>(&self, encode: E, mut out: W, started: Instant) -> io::Result<u64>
    where
        E: FnOnce(&mut dyn Write) -> io::Result<u64> + Send,
        W: Write,
    {
        let (writer, receiver) = nar_core::pipe::chunk_pipe(16);
        std::thread::scope(|scope| {
            let blocked = &self.out_blocked_ns;
            let helper = scope.spawn(move || {
                let timed = Timed { inner: writer, blocked_ns: blocked };
                let mut w = io::BufWriter::with_capacity(128 << 10, timed);
                encode(&mut w).and_then(|n| w.flush().map(|()| n))
            });
            // Windows of WINDOW_BYTES queued; the link is measured by what the connection
            // accepted in them (the queue may hold much more than the link carried).
            let mut window = (
                started,
                self.meter.blocked_secs(),
                self.wire.load(Ordering::Relaxed),
                self.meter.written(),
            );
            let forwarded = (|| -> io::Result<()> {
                while let Some(chunk) = receiver.recv() {
                    out.write_all(&chunk)?;
                    receiver.recycle(chunk);
                    let wire = self.wire.load(Ordering::Relaxed);
                    if wire - window.2 >= WINDOW_BYTES {
                        let written = self.meter.written();
                        if let Some(c) = &self.controller {
                            let blocked = self.meter.blocked_secs();
                            let elapsed = window.0.elapsed().as_secs_f64();
                            observe_link(
                                &mut lock(c),
                                written - window.3,
                                elapsed,
                                blocked - window.1,
                            );
                        }
                        window = (Instant::now(), self.meter.blocked_secs(), wire, written);
                    }
                }
                Ok(())
            })();
            // On a forwarding error the helper sees a broken pipe and stops.
            drop(receiver);
            let encoded = helper.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            forwarded?;
            encoded
        })
    }
}

/// Link windows: wire bytes between two link observations.
const WINDOW_BYTES: u64 = 1 << 20;

/// Feed one window's observation to the controller (rules in the module docs).
fn observe_link(c: &mut Controller, wire: u64, elapsed: f64, blocked: f64) {
    if blocked >= 0.5 * elapsed {
        c.record_link(wire, elapsed);
    } else {
        c.record_link(wire, blocked.max(0.25 * elapsed));
    }
}

/// The segments of a path, full ([`crate::push::segments`]) or delta
/// ([`crate::delta::stream`]): each one's compression is recorded at the level it used with the
/// encoding thread's busy time, and the next takes the level the controller picks then
/// (without a controller, the first level throughout).
struct SegmentPolicy<'a> {
    controller: Option<&'a Mutex<Controller>>,
    delta: bool,
    clock: BusyClock<'a>,
    /// Set on the encoding thread when it starts (busy time is that thread's).
    segment_start: Option<BusyReading>,
    /// Each segment's level so far, the first one's given.
    levels: Vec<i32>,
}

impl<'a> SegmentPolicy<'a> {
    /// `blocked_ns`: the encoding thread's time blocked on its output ([`BusyClock`]).
    fn new(
        controller: Option<&'a Mutex<Controller>>,
        blocked_ns: &'a AtomicU64,
        first: i32,
        delta: bool,
    ) -> Self {
        SegmentPolicy {
            controller,
            delta,
            clock: BusyClock::start(blocked_ns),
            segment_start: None,
            levels: vec![first],
        }
    }

    fn last_level(&self) -> i32 {
        *self.levels.last().expect("the first level is given")
    }
}

impl LevelPolicy for SegmentPolicy<'_> {
    fn segment_done(&mut self, level: i32, nar: u64, encoded: u64) {
        let now = self.clock.now();
        let busy = self.segment_start.map_or(1e-3, |start| now.since(&start));
        self.segment_start = Some(now);
        if let (Some(c), true) = (self.controller, level != 0) {
            lock(c).record_compression(level, self.delta, nar, encoded, busy);
        }
    }

    fn next_level(&mut self) -> i32 {
        let level = match self.controller {
            // A delta has no uncompressed or fast levels.
            Some(c) if self.delta => lock(c).choose(true).level.max(1),
            Some(c) => lock(c).choose(false).level,
            None => self.levels[0],
        };
        self.levels.push(level);
        level
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds the time spent in writes to a counter (the encoding helper's output).
struct Timed<'a, W> {
    inner: W,
    blocked_ns: &'a AtomicU64,
}

impl<W: Write> Write for Timed<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = Instant::now();
        let r = self.inner.write(buf);
        self.blocked_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The encoding helper's time: CPU seconds, and wall seconds not spent blocked on its output.
/// A compressor's speed is measured over the larger of the two: on a busy machine the thread
/// waits for a core, and that wait limits it as much as its own work.
struct BusyClock<'a> {
    wall: Instant,
    blocked_ns: &'a AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct BusyReading {
    cpu: f64,
    unblocked_wall: f64,
}

impl BusyReading {
    /// Busy seconds between `earlier` and this reading (at least 1 ms).
    fn since(&self, earlier: &BusyReading) -> f64 {
        (self.cpu - earlier.cpu).max(self.unblocked_wall - earlier.unblocked_wall).max(1e-3)
    }
}

impl<'a> BusyClock<'a> {
    fn start(blocked_ns: &'a AtomicU64) -> Self {
        BusyClock { wall: Instant::now(), blocked_ns }
    }
    fn now(&self) -> BusyReading {
        let blocked = self.blocked_ns.load(Ordering::Relaxed) as f64 / 1e9;
        BusyReading {
            cpu: thread_cpu_secs(),
            unblocked_wall: self.wall.elapsed().as_secs_f64() - blocked,
        }
    }
}

/// CPU seconds (user + system) of the calling thread (`/proc/thread-self/stat`, 10 ms ticks);
/// 0 where that file does not exist.
fn thread_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else { return 0.0 };
    let Some(close) = stat.rfind(')') else { return 0.0 };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// From this level up, zstd's match tables for large inputs would grow past 2^22 entries (level
/// 19: a 2^24-entry chain table, 64 MiB; with its 2^22 hash table and 8 MiB window a context
/// needs ~90 MiB). Full streams cap both tables at [`MAX_TABLE_LOG`], which bounds a context at
/// about 42 MiB at any level (16 MiB + 16 MiB + the 8 MiB window of levels 17–19) for about 1 %
/// more bytes at those levels; the sender's memory stays under the 100 MiB with the
/// 32 MiB send queue. Deltas have their own bound ([`crate::delta`]).
const CAPPED_FROM_LEVEL: i32 = 14;
/// log2 of the largest hash and chain tables a full stream's context gets.
const MAX_TABLE_LOG: u32 = 22;

/// Dump the NAR at `phys` from byte `offset` on into `out`: as is at level 0, else as zstd
/// frames of [`crate::push::segments::SEGMENT_BYTES`] NAR bytes, the first at `level` and each
/// next one at the level `policy` picks then ([`crate::push::segments`]), with the context in
/// `cctx` (made there on first use); returns the NAR bytes passed on.
// Eight arguments: each is one piece of the path's encoding that its one caller holds apart.
#[allow(clippy::too_many_arguments)]
fn full_stream<W: Write>(
    phys: &std::path::Path,
    offset: u64,
    level: i32,
    workers: u32,
    cctx: &mut Option<zstd::zstd_safe::CCtx<'static>>,
    out: W,
    report: &(dyn Fn(u64) + Sync),
    policy: &mut dyn LevelPolicy,
) -> io::Result<u64> {
    if level == 0 {
        let mut skip = Skip { inner: out, skip: offset, passed: 0, unreported: 0, report };
        dump_into(phys, &mut skip)?;
        report(skip.unreported);
        return Ok(skip.passed);
    }
    use zstd::zstd_safe::CParameter;
    let cctx = cctx.get_or_insert_with(zstd::zstd_safe::CCtx::create);
    let param = |e: usize| io::Error::other(zstd::zstd_safe::get_error_name(e));
    // A stream cut short by an error must not leak into this one, nor the previous path's
    // table caps into this level.
    cctx.reset(zstd::zstd_safe::ResetDirective::SessionAndParameters).map_err(param)?;
    let mut configure = |cctx: &mut zstd::zstd_safe::CCtx<'static>, level: i32| {
        set_level(cctx, level)?;
        cctx.set_parameter(CParameter::NbWorkers(workers)).map_err(param)?;
        if level >= CAPPED_FROM_LEVEL {
            cctx.set_parameter(CParameter::HashLog(MAX_TABLE_LOG)).map_err(param)?;
            cctx.set_parameter(CParameter::ChainLog(MAX_TABLE_LOG)).map_err(param)?;
        }
        Ok(())
    };
    let enc = SegmentedWriter::new(out, cctx, &mut configure, policy, level)?;
    // The dump writes each NAR token on its own: gathered, they make whole raw blocks.
    let mut enc = io::BufWriter::with_capacity(128 << 10, enc);
    let mut skip = Skip { inner: &mut enc, skip: offset, passed: 0, unreported: 0, report };
    dump_into(phys, &mut skip)?;
    report(skip.unreported);
    let passed = skip.passed;
    enc.into_inner().map_err(|e| e.into_error())?.finish()?;
    Ok(passed)
}

fn dump_into<W: Write>(path: &std::path::Path, out: W) -> io::Result<()> {
    nar_core::dump::dump(path, out).map(|_| ()).map_err(|e| match e {
        nar_core::dump::DumpError::Write(io) => io,
        other => io::Error::other(other.to_string()),
    })
}

/// Bytes queued between the sender and the connection: encoding runs ahead of the link by at
/// most this much (≈ 13 s at 20 Mbit/s), so that the pauses between paths (the next base's NAR
/// rebuilt and checked, a delta segment read) do not leave the link idle.
pub const SEND_QUEUE_BYTES: usize = 32 << 20;

enum Queued {
    Data(Vec<u8>),
    Flush(std::sync::mpsc::SyncSender<io::Result<()>>),
}

/// A writer whose bytes a thread of its own writes to the connection (through a
/// [`Metered`] writer there, so blocked time is the link's): writes return once queued, at most
/// [`SEND_QUEUE_BYTES`] wait, `flush` returns once everything before it reached the connection.
/// Dropping it lets the thread write what is queued, then close the connection.
#[derive(Debug)]
pub struct QueuedWriter {
    queue: Option<std::sync::mpsc::SyncSender<Queued>>,
    failed: Arc<Mutex<Option<(io::ErrorKind, String)>>>,
}

impl QueuedWriter {
    /// Start the thread writing to `inner`.
    pub fn spawn<W: Write + Send + 'static>(mut inner: W) -> Self {
        // Frame writes are about 128 KiB each.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Queued>(SEND_QUEUE_BYTES / (128 << 10));
        let failed: Arc<Mutex<Option<(io::ErrorKind, String)>>> = Arc::default();
        let flag = failed.clone();
        std::thread::spawn(move || {
            for msg in rx {
                match msg {
                    Queued::Data(bytes) => {
                        if let Err(e) = inner.write_all(&bytes) {
                            *lock(&flag) = Some((e.kind(), e.to_string()));
                            return;
                        }
                    }
                    Queued::Flush(done) => {
                        let r = inner.flush();
                        if let Err(e) = &r {
                            *lock(&flag) = Some((e.kind(), e.to_string()));
                        }
                        let failed = r.is_err();
                        let _ = done.send(r);
                        if failed {
                            return;
                        }
                    }
                }
            }
        });
        QueuedWriter { queue: Some(tx), failed }
    }

    fn check(&self) -> io::Result<()> {
        match &*lock(&self.failed) {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    fn send(&self, msg: Queued) -> io::Result<()> {
        self.check()?;
        let queue = self.queue.as_ref().expect("open until dropped");
        queue.send(msg).map_err(|_| {
            self.check().err().unwrap_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
        })
    }
}

impl Write for QueuedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.send(Queued::Data(buf.to_vec()))?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Queued::Flush(tx))?;
        match rx.recv() {
            Ok(r) => r,
            Err(_) => Err(self.check().err().unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Level 19's context stays within the documented bound (uncapped it needs ~90 MiB), and a
    /// reused context goes back to a small level with its defaults: every stream decodes to the
    /// NAR.
    #[test]
    fn full_stream_contexts_are_bounded_at_every_level() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let bytes: Vec<u8> = (0..1 << 20)
            .map(|i| {
                if i % 8 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                (x >> (i % 8 * 8)) as u8 % 16
            })
            .collect();
        std::fs::write(&file, &bytes).unwrap();
        let mut nar = Vec::new();
        nar_core::dump::dump(&file, &mut nar).unwrap();
        let mut cctx = None;
        let blocked = AtomicU64::new(0);
        for level in [19, 1, -5, 15] {
            let mut out = Vec::new();
            let mut fixed = SegmentPolicy::new(None, &blocked, level, false);
            let passed =
                full_stream(&file, 0, level, 0, &mut cctx, &mut out, &|_| (), &mut fixed).unwrap();
            assert_eq!(passed, nar.len() as u64);
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), nar, "level {level}");
            let size = cctx.as_ref().unwrap().sizeof();
            assert!(size < 48 << 20, "level {level}: context of {} MiB", size >> 20);
        }
    }
}
