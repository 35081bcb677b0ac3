//! One copy API over every kind of destination: [`copy_to`] and [`copy_from`] a [`Target`].
//!
//! A [`Target`] is built from a URI ([`proto::uri`]) and the SSH settings
//! ([`Target::from_uri`]), or from any [`Transport`] to a ferry agent ([`Target::Agent`]):
//!
//! | URI | [`Target`] | copy to it | copy from it |
//! |---|---|---|---|
//! | `ssh://[user@]host[:port]` | [`Target::Agent`] | the agent protocol ([`crate::push`]) | the agent pushes back ([`crate::pull`]) |
//! | `local:///ROOT` | [`Target::LocalStore`] | `ferry serve` as a subprocess | read directly, served in-process into ours |
//! | `file:///DIR`, `s3://BUCKET?…` | [`Target::Cache`] | narinfos + zstd NARs ([`cache`]) | [`cache::CacheReader`]: signed by a trusted Nix key |
//! | `http(s)://…` | [`Target::Cache`] | refused (read only) | [`cache::CacheReader`]: signed by a trusted Nix key |
//! | `nix+ssh://…` | [`Target::NixHost`] | `nix-store --serve --write` ([`nix_host`]) | `nix-store --serve` |
//!
//! As colmena's `Host` trait does, the kinds share one entry point and the composition is
//! written once: [`copy_to_all`] runs [`copy_to`] per target on threads, sharing encoded
//! frames between agents ([`crate::push::frame_cache`]), and a copy's result is always a
//! [`CopyReport`] in the shape of a push's summary. Callers never look at URI schemes.

pub mod cache;
pub mod nix_host;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use closure::ValidatedClosure;
use nar_core::store_path::{StoreDir, StorePath, StorePathError};
use proto::uri::{StoreParams, UriError};
use signing::guix::SigningKey;
use store::{LayoutError, Store, StoreError, StoreLayout};

use crate::agent::AgentOptions;
use crate::pull::{PullError, PullSummary};
use crate::push::frame_cache::FrameCache;
use crate::push::{push_closure, Phases, Progress, PushError, PushOptions, PushSummary};
use crate::transport::ssh::{SshAuth, SshConfig, SshError, SshTransport};
use crate::transport::{LocalTransport, Transport, TransportError};
use crate::trust::KeyError;

/// Where closures are copied to or from.
#[derive(Debug)]
#[non_exhaustive]
pub enum Target {
    /// A ferry agent behind any transport (`ssh://`; in-process, shaped...).
    Agent(Box<dyn Transport>),
    /// A ferry store on this machine (`local:///ROOT`): copies to it go through `ferry serve`
    /// as a subprocess; copies from it read it directly.
    LocalStore(LocalTransport),
    /// A binary cache (`file:///DIR`, `s3://…`, `http(s)://…`); its backend is made when it
    /// is used ([`cache::backend_for`]).
    Cache { uri: String, location: proto::uri::Target },
    /// A host running Nix, over SSH (`nix+ssh://`).
    NixHost(Box<NixHost>),
}

/// A host running Nix: `nix-store --serve` on an SSH session.
#[derive(Debug)]
pub struct NixHost {
    uri: String,
    ssh: SshTransport,
    store: StoreParams,
}

/// Why a copy failed. Each variant shows its cause as it is (the errors of the layers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    #[error(transparent)]
    Uri(#[from] UriError),
    /// The running executable (run as the local agent) or the SSH runtime.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Push(#[from] PushError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    NixServe(#[from] nix_host::ServeError),
    #[error(transparent)]
    Ssh(Box<SshError>),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    StoreDir(#[from] StorePathError),
    #[error("{0}: not a source")]
    NotASource(String),
}

impl From<SshError> for CopyError {
    fn from(e: SshError) -> Self {
        CopyError::Ssh(Box::new(e))
    }
}

/// What is copied to a target: a closure of a local store, signed with `key` for ferry agents.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The store the paths are read from.
    pub layout: &'a StoreLayout,
    /// The closure to copy.
    pub closure: &'a ValidatedClosure,
    /// The key paths are signed with for ferry agents ([`crate::trust::load_or_generate_key`]).
    pub key: &'a SigningKey,
}

/// What a copy to one target did.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// The push's summary; for a binary cache or a Nix host, the same counts (every path sent
    /// landed; wire bytes are the cache's file bytes, or the NAR bytes).
    pub summary: PushSummary,
    /// A binary cache's Nix signing key pair, when it was made for this copy
    /// (`<state>/nix-signing-key.{sec,pub}`): the directory and the public key.
    pub generated_nix_key: Option<(PathBuf, String)>,
}

/// What a copy from a target brought in.
#[derive(Debug, Clone)]
pub enum Received {
    /// From a store on this machine: pushed into ours by the agent code on a thread.
    Pushed(Box<PushSummary>),
    /// From a ferry agent, which pushed back on the same connection.
    Pulled(PullSummary),
    /// From a Nix host.
    FromNix(nix_host::PullReport),
    /// From a binary cache (the same counts as from a Nix host).
    FromCache(nix_host::PullReport),
}

impl Target {
    /// The target named by `uri`; `auth` applies to SSH hosts. Nothing is connected yet.
    pub fn from_uri(uri: &str, auth: &SshAuth) -> Result<Target, CopyError> {
        use proto::uri::Target as Uri;
        Ok(match Uri::parse(uri)? {
            Uri::Local { store } => {
                let root = store.root.clone().ok_or_else(|| UriError {
                    uri: uri.to_owned(),
                    reason: "local:// needs a root directory".to_owned(),
                })?;
                let mut t = LocalTransport::new(root)?;
                t.store_dir = store.store_dir;
                t.state_dir = store.state_dir;
                t.store = store.store;
                Target::LocalStore(t)
            }
            Uri::Ssh { endpoint, store } => Target::Agent(Box::new(SshTransport::new(
                SshConfig::for_endpoint(&endpoint, auth.clone())?,
                store,
            )?)),
            Uri::NixSsh { endpoint, store } => Target::NixHost(Box::new(NixHost {
                uri: uri.to_owned(),
                ssh: SshTransport::new(
                    SshConfig::for_endpoint(&endpoint, auth.clone())?,
                    store.clone(),
                )?,
                store,
            })),
            location @ (Uri::File { .. } | Uri::S3(_) | Uri::Http { .. }) => {
                Target::Cache { uri: uri.to_owned(), location }
            }
        })
    }

    /// The transport to this target's ferry agent, if it has one (`ssh://`, `local://`).
    pub fn into_transport(self) -> Option<Box<dyn Transport>> {
        match self {
            Target::Agent(t) => Some(t),
            Target::LocalStore(t) => Some(Box::new(t)),
            Target::Cache { .. } | Target::NixHost(_) => None,
        }
    }

    /// The store a copy from this target reads directly, when it is on this machine
    /// (`local:///ROOT`): its store dir is ours unless the URI names one. Store path arguments
    /// may be given as its physical paths.
    pub fn local_store(&self, ours: &StoreLayout) -> Result<Option<StoreLayout>, CopyError> {
        match self {
            Target::LocalStore(t) => Ok(Some(layout_of(t, ours)?)),
            _ => Ok(None),
        }
    }
}

/// The layout of the store `t` serves; its store dir is `ours`'s unless `t` names one.
fn layout_of(t: &LocalTransport, ours: &StoreLayout) -> Result<StoreLayout, CopyError> {
    let store_dir = match &t.store_dir {
        Some(d) => StoreDir::new(d.clone())?,
        None => ours.store_dir().clone(),
    };
    Ok(StoreLayout::new(t.root.clone(), store_dir, t.state_dir.clone())?)
}

/// Copy `source`'s closure to `target`: the paths it lacks, with the agents' protocol
/// (`options`, `progress`), into a binary cache (narinfos signed with the Nix key of
/// `source`'s state dir, made on first use; `options.zstd_level`), or into a Nix host.
pub fn copy_to(
    target: &Target,
    source: &Source<'_>,
    options: &PushOptions,
    progress: &dyn Progress,
) -> Result<CopyReport, CopyError> {
    let push = |transport: &dyn Transport| -> Result<CopyReport, CopyError> {
        let summary =
            push_closure(source.layout, source.closure, transport, source.key, options, progress)?;
        Ok(CopyReport { summary, generated_nix_key: None })
    };
    match target {
        Target::Agent(transport) => push(transport.as_ref()),
        Target::LocalStore(transport) => push(transport),
        Target::Cache { uri, .. } => to_cache(source, uri, options.zstd_level),
        Target::NixHost(host) => host.push(source),
    }
}

/// [`copy_to`] every target at once, one thread each; one target's failure does not stop the
/// others. With several targets, encoded frames are shared between them (compress once) unless
/// `options` brings its own [`FrameCache`].
pub fn copy_to_all(
    targets: &[Target],
    source: &Source<'_>,
    options: &PushOptions,
    progress: &dyn Progress,
) -> Vec<Result<CopyReport, CopyError>> {
    let mut options = options.clone();
    if targets.len() > 1 && options.frame_cache.is_none() {
        // Compress once: a path going to several hosts is encoded once per (base, level).
        options.frame_cache = Some(Arc::new(FrameCache::new(targets.len())));
    }
    let options = &options;
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|target| scope.spawn(move || copy_to(target, source, options, progress)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(CopyError::Io(std::io::Error::other("a copy thread panicked")))
                })
            })
            .collect()
    })
}

/// Copy the closures of `roots` from `target` into the store of `local`. What lands is checked
/// as a host checks it: a ferry store's paths are signed with the local key and trusted for
/// this import (we asked for them); a ferry agent's must be signed by a key in the local ACL; a
/// Nix host's need no signature (its SSH host key authenticates it, as for `nix copy --from`); a
/// binary cache's must be signed by a Nix key the local state trusts
/// ([`crate::trust::nix_trusted_keys`]). NAR hashes are checked on import in every case.
pub fn copy_from(
    target: &Target,
    local: &StoreLayout,
    roots: &[StorePath],
    progress: &dyn Progress,
) -> Result<Received, CopyError> {
    match target {
        Target::LocalStore(transport) => {
            let theirs = layout_of(transport, local)?;
            let t = Instant::now();
            let source = Store::open_read_only(theirs.clone())?;
            let closure = source.closure(roots)?;
            drop(source);
            let (key, _) = crate::trust::load_or_generate_key(local.state_dir())?;
            let options = PushOptions { authorize: true, ..PushOptions::default() };
            let ours = AgentOptions::new(local.clone()).in_process();
            let mut summary = push_closure(&theirs, &closure, &ours, &key, &options, progress)?;
            summary.phases.closure = t.elapsed().saturating_sub(summary.phases.connect);
            Ok(Received::Pushed(Box::new(summary)))
        }
        Target::Agent(transport) => {
            let options = AgentOptions::new(local.clone());
            Ok(Received::Pulled(crate::pull::pull_closure(transport.as_ref(), roots, options)?))
        }
        Target::NixHost(host) => Ok(Received::FromNix(host.pull(local, roots)?)),
        Target::Cache { uri, location } => {
            let backend = cache::backend_for(location, false)?
                .ok_or_else(|| CopyError::NotASource(uri.clone()))?;
            let trusted = crate::trust::nix_trusted_keys(local.state_dir());
            let reader =
                cache::CacheReader::with_backend(backend, local.store_dir().clone(), trusted)?;
            let mut store = Store::open(local.clone())?;
            let report = reader.import_closure(&mut store, roots)?;
            Ok(Received::FromCache(nix_host::PullReport {
                paths_received: report.paths_done,
                paths_present: report.paths_skipped,
                nar_bytes_received: report.nar_bytes,
            }))
        }
    }
}

/// A writer of the binary cache `uri` (`file://`, `s3://`) for the paths of `layout`, narinfos
/// signed with the local Nix key (`<state>/nix-signing-key.sec`, generated on first use: then
/// also its directory and public key), compressed at zstd `level`.
pub fn cache_writer(
    uri: &str,
    layout: &StoreLayout,
    level: i32,
) -> Result<(cache::CacheWriter, Option<(PathBuf, String)>), CopyError> {
    let location = proto::uri::Target::parse(uri)?;
    let (key, generated) = crate::trust::load_or_generate_nix_key(layout.state_dir(), "ferry-1")?;
    let generated = generated.map(|d| (d, key.verifying_key().to_string()));
    let options = cache::CacheOptions { zstd_level: level, ..Default::default() };
    let backend = cache::backend_for(&location, options.fsync)?.ok_or_else(|| UriError {
        uri: uri.to_owned(),
        reason: "not a binary cache (file://, s3://)".to_owned(),
    })?;
    let writer =
        cache::CacheWriter::with_backend(backend, layout.store_dir().clone(), Some(key), options)?;
    Ok((writer, generated))
}

/// Write the closure into a binary cache (`file://`, `s3://`) with [`cache_writer`].
fn to_cache(source: &Source<'_>, uri: &str, level: i32) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    let layout = source.layout;
    let (writer, generated_nix_key) = cache_writer(uri, layout, level)?;
    let mut summary = PushSummary {
        host: uri.to_owned(),
        closure_paths: source.closure.len(),
        diff_round_trips: 1,
        ..Default::default()
    };
    let paths: Vec<_> = source.closure.iter().map(|i| (i, layout.physical_path(&i.path))).collect();
    let report = writer.write_paths(&paths, &mut |_| {})?;
    summary.paths_missing = report.paths_done;
    summary.paths_sent = report.paths_done;
    summary.paths_landed = report.paths_done;
    summary.nar_bytes_sent = report.nar_bytes;
    summary.wire_bytes = report.file_bytes;
    summary.phases.send = started.elapsed();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(CopyReport { summary, generated_nix_key })
}

impl NixHost {
    /// `nix-store [--store ROOT] --serve [--write]`.
    fn serve_argv(&self, write: bool) -> Vec<String> {
        let mut argv: Vec<String> = vec!["nix-store".into()];
        if let Some(root) = &self.store.root {
            argv.extend(["--store".into(), root.display().to_string()]);
        }
        argv.push("--serve".into());
        if write {
            argv.push("--write".into());
        }
        argv
    }

    /// Push into the host through `nix-store --serve --write`.
    fn push(&self, source: &Source<'_>) -> Result<CopyReport, CopyError> {
        let started = Instant::now();
        let argv = self.serve_argv(true);
        let store_dir = source.layout.store_dir().clone();
        let report = self.ssh.runtime().block_on(async {
            let session = self.ssh.session().await?;
            let (stdin, stdout, exit) = session.exec(&argv).await?.split();
            let mut client = nix_host::NixServeClient::handshake(stdout, stdin, store_dir).await?;
            let physical = |p: &StorePath| source.layout.physical_path(p);
            let report = client.push_closure(source.closure, physical).await?;
            client.shutdown().await?;
            drop(client);
            exit.wait_checked().await?;
            Ok::<_, CopyError>(report)
        })?;
        let elapsed = started.elapsed();
        let summary = PushSummary {
            host: self.uri.clone(),
            closure_paths: source.closure.len(),
            paths_missing: report.paths_sent,
            paths_sent: report.paths_sent,
            paths_landed: report.paths_sent,
            nar_bytes_sent: report.nar_bytes_sent,
            wire_bytes: report.nar_bytes_sent,
            diff_round_trips: 1,
            seconds: elapsed.as_secs_f64(),
            phases: Phases { send: elapsed, ..Default::default() },
            ..Default::default()
        };
        Ok(CopyReport { summary, generated_nix_key: None })
    }

    /// Pull the closures of `roots` through `nix-store --serve` into the store of `local`.
    fn pull(
        &self,
        local: &StoreLayout,
        roots: &[StorePath],
    ) -> Result<nix_host::PullReport, CopyError> {
        let mut store = Store::open(local.clone())?;
        let store_dir = store.store_dir().clone();
        let argv = self.serve_argv(false);
        self.ssh.runtime().block_on(async {
            let session = self.ssh.session().await?;
            let (stdin, stdout, exit) = session.exec(&argv).await?.split();
            let mut client = nix_host::NixServeClient::handshake(stdout, stdin, store_dir).await?;
            let report = client.pull_closure(roots, &mut store, None).await?;
            client.shutdown().await?;
            drop(client);
            exit.wait_checked().await?;
            Ok(report)
        })
    }
}
