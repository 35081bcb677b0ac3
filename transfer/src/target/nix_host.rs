//! A client of Nix's legacy serve protocol: what `nix-store --serve --write` speaks on its
//! stdin/stdout (over SSH for `nix copy --to ssh://`), so ferry can push into and pull from
//! hosts that run Nix (`nix+ssh://`).
//!
//! The protocol (handshake, op codes, framing, the AddToStoreNar request) is
//! [`proto::nix_serve`]'s, shared with the agent's own serve client
//! ([`crate::agent::nix_store`]); this module adds the async IO. On any error the server
//! prints it on its stderr and exits, so the client only sees the stream end:
//! [`ServeError::Closed`] names the operation and path that were in flight, and the transport
//! (subprocess, SSH channel) can add the server's stderr.
//!
//! # This client
//!
//! Generic over any [`AsyncRead`] + [`AsyncWrite`] pair (a child's pipes, an SSH channel's
//! halves). [`NixServeClient::add_paths`] pipelines: all requests and NARs are written while
//! the acknowledgements are read concurrently, so a closure costs one round trip, not one per
//! path. NARs are streamed from [`nar_core::dump::dump`] on a blocking thread through a bounded
//! channel (never whole in memory), hashed on the way, and cut off if they do not match the
//! NAR size announced (the server would otherwise read the next request as NAR bytes). After an
//! error in the middle of a command the client is poisoned: every later call fails.
//!
//! [`NixServeClient::pull_closure`] asks for the closure's path infos, then dumps each missing
//! path in turn; each NAR is restored unsynced and its hash checked as it arrives, and the
//! paths are registered in batches ([`store::ImportBatch`]: up to 1,000 paths or 256 MiB, one
//! sync pass and one transaction each). A path refused or a connection lost mid-way leaves the
//! paths received intact before it registered.
//!

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use closure::{PathInfo, ValidatedClosure};
use nar_core::decode::Decoder;
use nar_core::dump::{dump, DumpError};
use nar_core::hash::{NarDigest, NarHasher, Sha256Hash};
use nar_core::store_path::{StoreDir, StorePath};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};

pub use proto::nix_serve::{op, wire, CLIENT_VERSION, SERVE_MAGIC_1, SERVE_MAGIC_2};

/// Longest string accepted from the server (paths, hashes, signatures, ca).
const MAX_STRING: u64 = 64 * 1024;
/// Most strings accepted in one list from the server.
const MAX_LIST: u64 = 1 << 22;
/// Chunk size of the NAR stream.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the NAR walker and the connection.
const CHUNKS_IN_FLIGHT: usize = 8;

/// Errors of the serve client; each names the operation and, where there is one, the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Reading from or writing to the server failed.
    #[error("nix-store --serve: {op}{}: {source}", fmt_path(.path))]
    Io { op: &'static str, path: Option<String>, source: io::Error },
    /// The server closed the connection (it prints its reason on its stderr).
    #[error(
        "nix-store --serve: the server closed the connection during {op}{} (its stderr has the \
         reason)",
        fmt_path(.path)
    )]
    Closed { op: &'static str, path: Option<String> },
    /// Not a serve protocol server, or a version other than 2.x.
    #[error("nix-store --serve: {0}")]
    Handshake(#[from] proto::nix_serve::HandshakeError),
    /// The server sent something malformed.
    #[error("nix-store --serve: {op}{}: {reason}", fmt_path(.path))]
    Protocol { op: &'static str, path: Option<String>, reason: String },
    /// A path to send could not be serialized.
    #[error("nix-store --serve: AddToStoreNar {path}: cannot serialize it: {source}")]
    Dump { path: String, source: DumpError },
    /// A path's files do not match the NAR hash and size it is sent with.
    #[error(
        "nix-store --serve: AddToStoreNar {path}: its files have NAR hash {actual} ({actual_size} \
         bytes), but it is recorded as {expected} ({expected_size} bytes); connection abandoned"
    )]
    NarMismatch {
        path: String,
        expected: Sha256Hash,
        expected_size: u64,
        actual: Sha256Hash,
        actual_size: u64,
    },
    /// The server answered an AddToStoreNar with something other than `1`.
    #[error("nix-store --serve: AddToStoreNar {path}: server answered {answer} instead of 1")]
    Rejected { path: String, answer: u64 },
    /// A NAR sent by the server is malformed.
    #[error("nix-store --serve: DumpStorePath {path}: {source}")]
    BadNar { path: String, source: nar_core::error::DecodeError },
    /// An earlier error left the connection in an unknown state.
    #[error("nix-store --serve: the connection is unusable after an earlier error")]
    Poisoned,
    /// A path pulled from the server was refused by the local store (hash mismatch, ...).
    #[error("nix-store --serve: importing {path} from the server: {source}")]
    Import { path: String, source: Box<store::StoreError> },
    /// A path pulled from the server has no signature by a trusted key.
    #[error(
        "nix-store --serve: {path} lacks a valid signature by a trusted key (signatures: {sigs:?})"
    )]
    Untrusted { path: String, sigs: Vec<String> },
    /// The server does not have a path asked for, or its closure is not closed.
    #[error("nix-store --serve: the server does not have {0}")]
    Missing(String),
}

fn fmt_path(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(" {p}")).unwrap_or_default()
}

/// What [`NixServeClient::push_closure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Paths the server lacked and received.
    pub paths_sent: usize,
    /// Paths it already had.
    pub paths_present: usize,
    /// NAR bytes sent.
    pub nar_bytes_sent: u64,
}

/// What [`NixServeClient::pull_closure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Paths imported into the local store.
    pub paths_received: usize,
    /// Paths the local store had already.
    pub paths_present: usize,
    /// NAR bytes received.
    pub nar_bytes_received: u64,
}

/// A connection to `nix-store --serve [--write]`.
#[derive(Debug)]
pub struct NixServeClient<R, W> {
    reader: BufReader<R>,
    writer: BufWriter<W>,
    store_dir: StoreDir,
    remote_version: u64,
    poisoned: bool,
}

/// The AddToStoreNar request for `info` (paths printed with `store_dir`), its signatures as
/// recorded in `info`.
pub(crate) fn add_request(
    store_dir: &StoreDir,
    info: &PathInfo,
) -> proto::nix_serve::AddToStoreNar {
    proto::nix_serve::AddToStoreNar {
        path: info.path.to_absolute(store_dir),
        deriver: info.deriver.as_ref().map(|d| d.to_absolute(store_dir)).unwrap_or_default(),
        nar_hash_hex: info.nar_hash.to_hex(),
        references: info.absolute_references(store_dir),
        registration_time: info.registration_time.max(0) as u64,
        nar_size: info.nar_size,
        ultimate: info.ultimate,
        sigs: info.sigs.clone(),
        ca: info.ca.clone().unwrap_or_default(),
    }
}

/// Context of the command being run, for errors.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    op: &'static str,
    path: Option<&'a str>,
}

impl Ctx<'_> {
    fn io(self, source: io::Error) -> ServeError {
        let path = self.path.map(str::to_owned);
        if source.kind() == io::ErrorKind::UnexpectedEof
            || source.kind() == io::ErrorKind::BrokenPipe
        {
            ServeError::Closed { op: self.op, path }
        } else {
            ServeError::Io { op: self.op, path, source }
        }
    }
    fn protocol(self, reason: String) -> ServeError {
        ServeError::Protocol { op: self.op, path: self.path.map(str::to_owned), reason }
    }
}

async fn read_u64<R: AsyncRead + Unpin>(r: &mut R, ctx: Ctx<'_>) -> Result<u64, ServeError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).await.map_err(|e| ctx.io(e))?;
    Ok(u64::from_le_bytes(b))
}

async fn read_string<R: AsyncRead + Unpin>(r: &mut R, ctx: Ctx<'_>) -> Result<String, ServeError> {
    let len = read_u64(r, ctx).await?;
    if len > MAX_STRING {
        return Err(ctx.protocol(format!("string of {len} bytes is longer than {MAX_STRING}")));
    }
    let mut buf = vec![0u8; len as usize + wire::padding(len)];
    r.read_exact(&mut buf).await.map_err(|e| ctx.io(e))?;
    if buf[len as usize..].iter().any(|&b| b != 0) {
        return Err(ctx.protocol("non-zero string padding".into()));
    }
    buf.truncate(len as usize);
    String::from_utf8(buf).map_err(|_| ctx.protocol("string is not UTF-8".into()))
}

async fn read_strings<R: AsyncRead + Unpin>(
    r: &mut R,
    ctx: Ctx<'_>,
) -> Result<Vec<String>, ServeError> {
    let n = read_u64(r, ctx).await?;
    if n > MAX_LIST {
        return Err(ctx.protocol(format!("list of {n} strings is longer than {MAX_LIST}")));
    }
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        out.push(read_string(r, ctx).await?);
    }
    Ok(out)
}

impl<R, W> NixServeClient<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Run the handshake over `reader`/`writer` (e.g. a child's stdout/stdin); paths are
    /// printed with `store_dir` (the server's, normally `/nix/store`).
    pub async fn handshake(reader: R, writer: W, store_dir: StoreDir) -> Result<Self, ServeError> {
        let mut client = NixServeClient {
            reader: BufReader::with_capacity(CHUNK, reader),
            writer: BufWriter::with_capacity(CHUNK, writer),
            store_dir,
            remote_version: 0,
            poisoned: true,
        };
        let ctx = Ctx { op: "handshake", path: None };
        client.send(&proto::nix_serve::handshake_request(), ctx).await?;
        let magic = read_u64(&mut client.reader, ctx).await?;
        let version = read_u64(&mut client.reader, ctx).await?;
        let version = proto::nix_serve::check_handshake(magic, version)?;
        client.remote_version = version;
        client.poisoned = false;
        Ok(client)
    }

    /// The server's protocol version (e.g. `0x207`).
    pub fn remote_version(&self) -> u64 {
        self.remote_version
    }

    /// The store dir paths are printed with.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Give the transport back (after the last command; closing the writer ends the server).
    pub fn into_inner(self) -> (R, W) {
        (self.reader.into_inner(), self.writer.into_inner())
    }

    /// Flush and shut down the writing side. Some writers do not close on shutdown (tokio's
    /// `ChildStdin` only closes when dropped): drop the client afterwards so the server sees
    /// end of input and exits.
    pub async fn shutdown(&mut self) -> Result<(), ServeError> {
        let ctx = Ctx { op: "shutdown", path: None };
        self.writer.shutdown().await.map_err(|e| ctx.io(e))
    }

    fn check(&self) -> Result<(), ServeError> {
        if self.poisoned {
            Err(ServeError::Poisoned)
        } else {
            Ok(())
        }
    }

    async fn send(&mut self, bytes: &[u8], ctx: Ctx<'_>) -> Result<(), ServeError> {
        self.writer.write_all(bytes).await.map_err(|e| ctx.io(e))?;
        self.writer.flush().await.map_err(|e| ctx.io(e))
    }

    fn abs(&self, p: &StorePath) -> String {
        p.to_absolute(&self.store_dir)
    }

    fn parse_path(&self, text: &str, ctx: Ctx<'_>) -> Result<StorePath, ServeError> {
        self.store_dir.parse_path(text).map_err(|e| ctx.protocol(format!("bad store path: {e}")))
    }

    /// QueryValidPaths: the subset of `paths` the server has (one round trip). `lock` asks the
    /// server to hold temp roots on them for the session; `substitute` lets it substitute.
    pub async fn query_valid_paths(
        &mut self,
        paths: &[StorePath],
        lock: bool,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, ServeError> {
        self.check()?;
        self.poisoned = true;
        let ctx = Ctx { op: "QueryValidPaths", path: None };
        let mut buf = Vec::with_capacity(24 + paths.len() * 80);
        wire::put_u64(&mut buf, op::QUERY_VALID_PATHS);
        wire::put_u64(&mut buf, lock as u64);
        wire::put_u64(&mut buf, substitute as u64);
        let abs: Vec<String> = paths.iter().map(|p| self.abs(p)).collect();
        wire::put_strs(&mut buf, &abs);
        self.send(&buf, ctx).await?;
        let answer = read_strings(&mut self.reader, ctx).await?;
        let mut valid = BTreeSet::new();
        for s in answer {
            let p = self.parse_path(&s, ctx)?;
            if !paths.contains(&p) {
                return Err(ctx.protocol(format!("answered {s}, which was not asked about")));
            }
            valid.insert(p);
        }
        self.poisoned = false;
        Ok(valid)
    }

    /// QueryPathInfos: the server's records of those of `paths` it has (invalid ones are left
    /// out). Registration time and `ultimate` are not part of the answer (0 / false).
    pub async fn query_path_infos(
        &mut self,
        paths: &[StorePath],
    ) -> Result<Vec<PathInfo>, ServeError> {
        self.check()?;
        self.poisoned = true;
        let ctx = Ctx { op: "QueryPathInfos", path: None };
        let mut buf = Vec::with_capacity(16 + paths.len() * 80);
        wire::put_u64(&mut buf, op::QUERY_PATH_INFOS);
        let abs: Vec<String> = paths.iter().map(|p| self.abs(p)).collect();
        wire::put_strs(&mut buf, &abs);
        self.send(&buf, ctx).await?;
        let mut infos = Vec::new();
        loop {
            let path = read_string(&mut self.reader, ctx).await?;
            if path.is_empty() {
                break;
            }
            let ctx = Ctx { op: "QueryPathInfos", path: Some(&path) };
            let store_path = self.parse_path(&path, ctx)?;
            let deriver = read_string(&mut self.reader, ctx).await?;
            let refs = read_strings(&mut self.reader, ctx).await?;
            let _download_size = read_u64(&mut self.reader, ctx).await?;
            let nar_size = read_u64(&mut self.reader, ctx).await?;
            let nar_hash = read_string(&mut self.reader, ctx).await?;
            let ca = read_string(&mut self.reader, ctx).await?;
            let sigs = read_strings(&mut self.reader, ctx).await?;
            let hash = Sha256Hash::parse(&nar_hash)
                .map_err(|e| ctx.protocol(format!("bad NAR hash: {e}")))?;
            let references =
                refs.iter().map(|r| self.parse_path(r, ctx)).collect::<Result<BTreeSet<_>, _>>()?;
            let mut info =
                PathInfo::new(store_path, NarDigest { hash, size: nar_size }, references);
            if !deriver.is_empty() {
                info.deriver = Some(self.parse_path(&deriver, ctx)?);
            }
            info.sigs = sigs;
            info.ca = (!ca.is_empty()).then_some(ca);
            infos.push(info);
        }
        self.poisoned = false;
        Ok(infos)
    }

    /// The AddToStoreNar header for `info`.
    fn add_header(&self, info: &PathInfo) -> Vec<u8> {
        let mut buf = Vec::with_capacity(512);
        add_request(&self.store_dir, info).encode(&mut buf);
        buf
    }

    /// AddToStoreNar for one path whose files are at `source`; waits for the server's answer.
    pub async fn add_path(&mut self, info: &PathInfo, source: &Path) -> Result<(), ServeError> {
        self.add_paths(&[(info.clone(), source.to_owned())]).await.map(|_| ())
    }

    /// AddToStoreNar for each `(info, physical path)`, in the given order (references first),
    /// pipelined: requests and NARs go out back to back while the answers are read
    /// concurrently. Returns the NAR bytes sent.
    pub async fn add_paths(&mut self, items: &[(PathInfo, PathBuf)]) -> Result<u64, ServeError> {
        self.check()?;
        if items.is_empty() {
            return Ok(0);
        }
        self.poisoned = true;
        let headers: Vec<Vec<u8>> = items.iter().map(|(info, _)| self.add_header(info)).collect();
        let names: Vec<String> = items.iter().map(|(info, _)| self.abs(&info.path)).collect();
        let NixServeClient { reader, writer, .. } = self;

        let send = async {
            let mut sent = 0u64;
            for (((info, source), header), name) in items.iter().zip(&headers).zip(&names) {
                let ctx = Ctx { op: "AddToStoreNar", path: Some(name) };
                writer.write_all(header).await.map_err(|e| ctx.io(e))?;
                send_nar(writer, info, source, name).await?;
                sent += info.nar_size;
            }
            let ctx = Ctx { op: "AddToStoreNar", path: None };
            writer.flush().await.map_err(|e| ctx.io(e))?;
            Ok::<u64, ServeError>(sent)
        };
        let recv = async {
            for name in &names {
                let ctx = Ctx { op: "AddToStoreNar", path: Some(name) };
                let answer = read_u64(reader, ctx).await?;
                if answer != 1 {
                    return Err(ServeError::Rejected { path: name.clone(), answer });
                }
            }
            Ok::<(), ServeError>(())
        };
        tokio::pin!(send, recv);
        let mut sent = None;
        loop {
            tokio::select! {
                r = &mut send, if sent.is_none() => match r {
                    Ok(n) => sent = Some(n),
                    Err(e) => {
                        // The server's answers say which path it stopped at; prefer that.
                        if matches!(e, ServeError::Closed { .. } | ServeError::Io { .. }) {
                            if let Ok(Err(answer_err)) =
                                tokio::time::timeout(std::time::Duration::from_secs(5), &mut recv).await
                            {
                                return Err(answer_err);
                            }
                        }
                        return Err(e);
                    }
                },
                r = &mut recv => {
                    r?;
                    break;
                }
            }
        }
        // All answers came, so everything was sent.
        let sent = match sent {
            Some(n) => n,
            None => send.await?,
        };
        self.poisoned = false;
        Ok(sent)
    }

    /// Push the members of `closure` (in its topological order) that the server lacks: one
    /// QueryValidPaths for the whole closure, then one pipelined batch of AddToStoreNar.
    /// `physical` maps a store path to where its files are (e.g. `StoreLayout::physical_path`).
    pub async fn push_closure(
        &mut self,
        closure: &ValidatedClosure,
        physical: impl Fn(&StorePath) -> PathBuf,
    ) -> Result<PushReport, ServeError> {
        let paths: Vec<StorePath> = closure.paths().cloned().collect();
        let valid = self.query_valid_paths(&paths, false, false).await?;
        let items: Vec<(PathInfo, PathBuf)> = closure
            .iter()
            .filter(|i| !valid.contains(&i.path))
            .map(|i| (i.clone(), physical(&i.path)))
            .collect();
        let nar_bytes_sent = self.add_paths(&items).await?;
        Ok(PushReport { paths_sent: items.len(), paths_present: valid.len(), nar_bytes_sent })
    }

    /// DumpStorePath: copy the server's NAR of `path` to `out`, exactly the archive's bytes
    /// (the end is found by decoding it); returns its hash and size.
    pub async fn dump_store_path<O: AsyncWrite + Unpin>(
        &mut self,
        path: &StorePath,
        out: &mut O,
    ) -> Result<NarDigest, ServeError> {
        self.check()?;
        self.poisoned = true;
        let name = self.abs(path);
        let ctx = Ctx { op: "DumpStorePath", path: Some(&name) };
        let mut buf = Vec::with_capacity(16 + name.len());
        wire::put_u64(&mut buf, op::DUMP_STORE_PATH);
        wire::put_str(&mut buf, name.as_bytes());
        self.send(&buf, ctx).await?;
        let mut decoder = Decoder::new();
        let mut hasher = NarHasher::new();
        let out_ctx = Ctx { op: "DumpStorePath (writing the NAR out)", path: Some(&name) };
        loop {
            // Events that need no more input (the end of the archive after its last byte)
            // come first: the server sends nothing after the NAR, so waiting for input
            // before them would wait forever.
            while decoder
                .step(&[])
                .map_err(|source| ServeError::BadNar { path: name.clone(), source })?
                .event
                .is_some()
            {}
            if decoder.is_done() {
                break;
            }
            let input = self.reader.fill_buf().await.map_err(|e| ctx.io(e))?;
            if input.is_empty() {
                return Err(ServeError::Closed { op: ctx.op, path: Some(name.clone()) });
            }
            let step = decoder
                .step(input)
                .map_err(|source| ServeError::BadNar { path: name.clone(), source })?;
            let used = &input[..step.consumed];
            hasher.update(used);
            out.write_all(used).await.map_err(|e| out_ctx.io(e))?;
            self.reader.consume(step.consumed);
        }
        out.flush().await.map_err(|e| out_ctx.io(e))?;
        self.poisoned = false;
        Ok(hasher.finish())
    }
}

impl<R, W> NixServeClient<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The server's records of the closure of `roots` (QueryPathInfos, one round trip per
    /// level of references), references first.
    pub async fn query_closure(
        &mut self,
        roots: &[StorePath],
    ) -> Result<ValidatedClosure, ServeError> {
        let mut infos: std::collections::BTreeMap<StorePath, PathInfo> = Default::default();
        let mut todo: Vec<StorePath> = roots.to_vec();
        while !todo.is_empty() {
            todo.sort();
            todo.dedup();
            let answer = self.query_path_infos(&todo).await?;
            for p in &todo {
                if !answer.iter().any(|i| &i.path == p) {
                    return Err(ServeError::Missing(self.abs(p)));
                }
            }
            todo.clear();
            for info in answer {
                todo.extend(info.references.iter().filter(|r| !infos.contains_key(*r)).cloned());
                infos.insert(info.path.clone(), info);
            }
            todo.retain(|p| !infos.contains_key(p));
        }
        ValidatedClosure::from_infos(infos.into_values()).map_err(|e| ServeError::Protocol {
            op: "QueryPathInfos",
            path: None,
            reason: format!("the server's closure is not valid: {e}"),
        })
    }

    /// Pull the closure of `roots` into `store` (`--from nix+ssh://`): the server's path infos,
    /// then for each path the local store lacks, references first, DumpStorePath streamed
    /// straight into [`store::Store::import_nar`] (which checks the NAR hash and size before
    /// the path becomes valid). With `trusted`, every path must carry a signature by one of
    /// those keys; `None` accepts unsigned paths (Nix does so for `nix copy --from ssh://`).
    ///
    /// The store's import is synchronous: it runs in [`tokio::task::block_in_place`], so this
    /// needs tokio's multi-threaded runtime.
    pub async fn pull_closure(
        &mut self,
        roots: &[StorePath],
        store: &mut store::Store,
        trusted: Option<&[signing::nix::VerifyingKey]>,
    ) -> Result<PullReport, ServeError> {
        let closure = self.query_closure(roots).await?;
        let local = store
            .query_valid(closure.paths())
            .map_err(|e| ServeError::Import { path: String::new(), source: Box::new(e) })?;
        let missing: Vec<&PathInfo> = closure.iter().filter(|i| !local.contains(&i.path)).collect();
        if let Some(keys) = trusted {
            for info in &missing {
                let fp = signing::nix::fingerprint(
                    &self.store_dir,
                    &info.path,
                    &info.nar_hash,
                    info.nar_size,
                    &info.references.iter().cloned().collect::<Vec<_>>(),
                );
                let sigs: Vec<signing::nix::Signature> = info
                    .sigs
                    .iter()
                    .filter_map(|s| signing::nix::Signature::parse(s).ok())
                    .collect();
                if !signing::nix::verify_any(keys, &fp, &sigs) {
                    return Err(ServeError::Untrusted {
                        path: self.abs(&info.path),
                        sigs: info.sigs.clone(),
                    });
                }
            }
        }
        let mut report = PullReport { paths_present: local.len(), ..Default::default() };
        let mut batch = store::ImportBatch::new();
        for info in missing {
            self.check()?;
            self.poisoned = true;
            let name = self.abs(&info.path);
            let ctx = Ctx { op: "DumpStorePath", path: Some(&name) };
            let mut buf = Vec::with_capacity(16 + name.len());
            wire::put_u64(&mut buf, op::DUMP_STORE_PATH);
            wire::put_str(&mut buf, name.as_bytes());
            if let Err(e) = self.send(&buf, ctx).await {
                self.commit_pulled(&mut batch, store)?;
                return Err(e);
            }
            let handle = tokio::runtime::Handle::current();
            let reader = &mut self.reader;
            let result = tokio::task::block_in_place(|| {
                let mut bridge = SyncReader { handle, reader, tracker: Decoder::new() };
                batch.restore(store, info, &mut bridge)
            });
            // The restore stops right after the archive, so the stream stays in step; a hash
            // mismatch is reported after the whole NAR was read and leaves nothing behind. What
            // arrived intact before an error is still registered.
            if let Err(e) = result {
                self.commit_pulled(&mut batch, store)?;
                return Err(ServeError::Import { path: name, source: Box::new(e) });
            }
            self.poisoned = false;
            report.paths_received += 1;
            report.nar_bytes_received += info.nar_size;
            if batch.len() >= PULL_BATCH_PATHS || batch.nar_bytes() >= PULL_BATCH_BYTES {
                self.commit_pulled(&mut batch, store)?;
            }
        }
        self.commit_pulled(&mut batch, store)?;
        Ok(report)
    }

    /// Register the pulled paths waiting in `batch` (one sync pass and one transaction for all
    /// of them: [`store::ImportBatch`]); the first member that could not be registered is the
    /// error.
    fn commit_pulled(
        &self,
        batch: &mut store::ImportBatch,
        store: &mut store::Store,
    ) -> Result<(), ServeError> {
        for (path, outcome) in batch.commit(store) {
            outcome
                .map_err(|e| ServeError::Import { path: self.abs(&path), source: Box::new(e) })?;
        }
        Ok(())
    }
}

/// A pull registers its paths in batches of at most this many paths ([`store::ImportBatch`]:
/// one sync pass and one transaction per batch instead of per path, as the agent does)...
const PULL_BATCH_PATHS: usize = 1000;
/// ... or this many NAR bytes, whichever comes first.
const PULL_BATCH_BYTES: u64 = 256 << 20;

/// A blocking [`io::BufRead`] over the connection's async reader, for the store's synchronous
/// import (inside `block_in_place`). It tracks the NAR with its own decoder and reports end of
/// input once the archive's last byte was consumed: the server sends nothing after a NAR, and a
/// reader asking for more there would wait forever.
struct SyncReader<'a, R> {
    handle: tokio::runtime::Handle,
    reader: &'a mut BufReader<R>,
    tracker: Decoder,
}

impl<R: AsyncRead + Unpin> io::Read for SyncReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = io::BufRead::fill_buf(self)?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl<R: AsyncRead + Unpin> io::BufRead for SyncReader<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.tracker.step(&[]).map_err(invalid_data)?.event.is_some() {}
        if self.tracker.is_done() {
            return Ok(&[]);
        }
        let reader = &mut *self.reader;
        self.handle.block_on(reader.fill_buf())
    }
    fn consume(&mut self, amt: usize) {
        let mut consumed = &self.reader.buffer()[..amt];
        // The store's decoder already accepted these bytes, so this one does too.
        while !consumed.is_empty() {
            match self.tracker.step(consumed) {
                Ok(step) if step.consumed > 0 || step.event.is_some() => {
                    consumed = &consumed[step.consumed..]
                }
                _ => break,
            }
        }
        std::pin::Pin::new(&mut *self.reader).consume(amt);
    }
}

fn invalid_data(e: nar_core::error::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Stream the NAR of `source` to `writer`, checking it against `info` as it goes; never writes
/// more than `info.nar_size` bytes.
async fn send_nar<W: AsyncWrite + Unpin>(
    writer: &mut W,
    info: &PathInfo,
    source: &Path,
    name: &str,
) -> Result<(), ServeError> {
    let ctx = Ctx { op: "AddToStoreNar", path: Some(name) };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let source = source.to_owned();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let sender = ChannelWriter { tx };
        // The BufWriter is flushed (into the channel) before `dump` returns.
        let _ = done_tx.send(dump(&source, io::BufWriter::with_capacity(CHUNK, sender)));
    });
    let mut hasher = NarHasher::new();
    let mut overflow = false;
    while let Some(chunk) = rx.recv().await {
        let room = info.nar_size - hasher.size();
        if chunk.len() as u64 > room {
            hasher.update(&chunk);
            overflow = true;
            break;
        }
        hasher.update(&chunk);
        writer.write_all(&chunk).await.map_err(|e| ctx.io(e))?;
    }
    if overflow {
        // Count the rest for the error message, without sending it.
        while let Some(chunk) = rx.recv().await {
            hasher.update(&chunk);
        }
    }
    drop(rx);
    let dumped = done_rx.await.expect("the NAR walker thread panicked");
    let digest = hasher.finish();
    if let Err(source) = dumped {
        return Err(ServeError::Dump { path: name.to_owned(), source });
    }
    if digest != info.nar_digest() {
        return Err(ServeError::NarMismatch {
            path: name.to_owned(),
            expected: info.nar_hash,
            expected_size: info.nar_size,
            actual: digest.hash,
            actual_size: digest.size,
        });
    }
    Ok(())
}

/// Sends each write as a chunk into a bounded async channel, from a blocking thread.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(buf.to_vec())
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
