//! `ferry archive`: keys, the ACL, and export bundles, as `guix archive` does (guix-spec §2, §3).
//!
//! ```text
//! ferry archive --generate-key[=PARAMS]      key pair in the state dir
//! ferry archive --authorize < KEY            trust a public key (Guix S-expression or Nix name:base64)
//! ferry archive --export [-r] PATH... > B    bundle of PATHs (with -r: their closures), signed
//! ferry archive --import < B                 verify and import a bundle
//! ```
//!
//! # Files (in the state dir, `<root>/var/ferry` by default; `--state-dir` moves it)
//! | file | what |
//! |---|---|
//! | `signing-key.sec` / `signing-key.pub` | Guix key pair (libgcrypt S-expressions, as Guix writes them; `.sec` mode 0400, `.pub` 0444) |
//! | `acl` | Guix ACL `(acl (entry (public-key …) (tag (guix import))) …)`: keys trusted for import |
//! | `nix-signing-key.sec` / `nix-signing-key.pub` | Nix key pair from `--generate-key=nix:NAME` (`name:base64`, as `nix-store --generate-binary-cache-key` writes them; `.sec` mode 0400) |
//! | `trusted-public-keys` | Nix public keys given to `--authorize`, one `name:base64` per line (Nix's `trusted-public-keys`; bundles carry no Nix signatures, so import does not read it) |
//!
//! # Key generation
//! PARAMS is empty (the default), a libgcrypt `genkey` S-expression, or `nix:NAME`:
//! - default, or `(genkey (ecdsa (curve Ed25519) (flags rfc6979)))`: the key Guix makes (ECDSA
//!   over Ed25519), so a Guix host can `guix archive --authorize` a ferry key;
//! - `(genkey (ecc (curve Ed25519) (flags eddsa)))`: an EdDSA key (libgcrypt signs with real
//!   Ed25519);
//! - `nix:NAME`: a Nix key pair named NAME, for `ferry store sign`; the public key is printed.
//!
//! Both refuse to overwrite an existing pair. RSA keys are not supported.
//!
//! # Export
//! Paths are written in topological order (references first; self-references skipped), as
//! `guix archive --export` does; with `-r` the whole closure, else only the paths given. Each
//! NAR is dumped from disk and checked against the database while it is written: if it changed,
//! the export stops inside that item (`hash of path … has changed`), so no importer accepts it.
//! `--format guix` (the default) signs every item with `signing-key.sec` (which must be mode
//! 0600 or stricter); `--format nix` writes Nix's unsigned form (has-sig 0), which
//! `nix-store --import` reads. A Nix or Guix database under `--root` is read in place.
//!
//! # Import
//! Each item's NAR is restored into a temporary entry of the store while it is read; then, in
//! Guix's order (§3.6): signature present, key in `acl`, signed hash equal to the hash of what
//! was read, signature valid; then the NAR hash and size, and every reference must be valid
//! (earlier in the bundle or already in the store). Only then is the item renamed into place
//! and registered, in its own transaction. The first bad item stops the import with Guix's
//! message (guix-spec §2.5) and exit code 1: nothing of it stays, and the items before it stay
//! valid. Imported paths are printed one per line, as `nix-store --import` does. A path that is
//! valid already is checked the same way and left as it is. The deriver is recorded as the
//! bundle states it (as Nix does; Guix's daemon records it only when the `.drv` is valid
//! locally).
//!
//! **Unsigned bundles.** `--format guix` always requires a signature, even for root, as Guix
//! does. `--format nix` checks a signature when an item carries one and refuses unsigned items
//! unless `--no-check-sigs` is given: the explicit statement that the bundle comes from a
//! trusted source, as Nix's `--no-check-sigs` and `trusted-users`. With it, items are imported
//! without any signature check (the NAR hash and references are still checked).
//!
//! When `acl` does not exist but `signing-key.pub` does, import creates the ACL holding this
//! machine's own key first, as Guix's `ensure-acl` does, so a host can import its own exports.

use nar_core::pipe::{chunk_pipe, ChunkWriter};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use closure::PathInfo;
use nar_core::encode::Encoder;
use nar_core::hash::{NarDigest, NarHasher};
use nar_core::read::NarEvent;
use signing::bundle::{
    BundleError, BundleReader, BundleWriter, ItemMeta, UnverifiedItem, VerifiedItem,
};
use signing::keyfile::{self, write_atomically, write_atomically_with_mode};
use signing::Sexp;
use store::{StagedNar, Store, StoreError};

use crate::settings::GlobalOpts;
use crate::settings::{layout, open_read_only, open_writable, parse_store_arg};

/// Guix secret key file name in the state dir.
pub const GUIX_SECRET_KEY: &str = "signing-key.sec";
/// Guix public key file name in the state dir.
pub const GUIX_PUBLIC_KEY: &str = "signing-key.pub";
/// Nix secret key file name in the state dir.
pub const NIX_SECRET_KEY: &str = "nix-signing-key.sec";
/// Nix public key file name in the state dir.
pub const NIX_PUBLIC_KEY: &str = "nix-signing-key.pub";
/// ACL file name in the state dir.
pub const ACL: &str = "acl";
/// Trusted Nix public keys, one per line, in the state dir.
pub const NIX_TRUSTED_KEYS: &str = "trusted-public-keys";

/// Bundle flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `guix archive`: every item signed with the Guix key; import requires signatures.
    Guix,
    /// `nix-store --export`: unsigned items (has-sig 0).
    Nix,
}

/// `ferry archive`: export and import store items, manage keys and the ACL.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("action")
        .required(true)
        .args(["generate_key", "authorize", "export", "import"])
))]
pub struct ArchiveArgs {
    /// Generate a key pair in the state dir. PARAMS: empty (Guix's ECDSA-over-Ed25519 key),
    /// a libgcrypt genkey S-expression, or `nix:NAME` (a Nix key pair).
    #[arg(
        long,
        value_name = "PARAMS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    pub generate_key: Option<String>,
    /// Authorize the public key read from stdin (Guix S-expression, or Nix `name:base64`).
    #[arg(long)]
    pub authorize: bool,
    /// Write a bundle of PATHs to stdout.
    #[arg(long)]
    pub export: bool,
    /// Import a bundle from stdin.
    #[arg(long)]
    pub import: bool,
    /// With --export: the closures of PATHs, not only PATHs.
    #[arg(short, long, requires = "export")]
    pub recursive: bool,
    /// Bundle form: guix (signed) or nix (unsigned, as nix-store --export writes).
    #[arg(long, value_enum, default_value_t = Format::Guix)]
    pub format: Format,
    /// With --import --format nix: accept unsigned items (trust the source of the bundle).
    #[arg(long, requires = "import")]
    pub no_check_sigs: bool,
    /// Store paths to export.
    pub paths: Vec<String>,
}

pub fn run(global: &GlobalOpts, args: ArchiveArgs) -> anyhow::Result<ExitCode> {
    if !args.paths.is_empty() && !args.export {
        return usage("store paths are only taken by --export");
    }
    if args.no_check_sigs && args.format == Format::Guix {
        return usage(
            "--no-check-sigs needs --format nix: Guix bundles are always signed and their \
             signatures always checked",
        );
    }
    let state = layout(global)?.state_dir().to_owned();
    if let Some(params) = &args.generate_key {
        generate_key(&state, params)?;
    } else if args.authorize {
        let mut text = Vec::new();
        io::stdin().lock().read_to_end(&mut text).context("reading the key from stdin")?;
        authorize(&state, &text)?;
    } else if args.export {
        export(global, &state, &args)?;
    } else {
        import(global, &state, &args)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn usage(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("ferry: error: {message}");
    Ok(ExitCode::from(2))
}

fn create_state_dir(state: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(state)
        .with_context(|| format!("cannot create the state dir {}", state.display()))
}

// ---------------------------------------------------------------------------------------------
// Keys and the ACL

/// What `--generate-key=PARAMS` asks for.
#[derive(Debug, PartialEq, Eq)]
enum KeyParams {
    GuixEcdsa,
    GuixEddsa,
    Nix(String),
}

fn parse_key_params(params: &str) -> anyhow::Result<KeyParams> {
    const SUPPORTED: &str = "supported: no PARAMS (Guix's default, ECDSA over Ed25519), \
        (genkey (ecdsa (curve Ed25519) (flags rfc6979))), \
        (genkey (ecc (curve Ed25519) (flags eddsa))), or nix:NAME";
    let params = params.trim();
    if params.is_empty() {
        return Ok(KeyParams::GuixEcdsa);
    }
    if let Some(name) = params.strip_prefix("nix:") {
        if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
            bail!("invalid Nix key name {name:?} in --generate-key=nix:NAME (non-empty, no ':' or spaces), e.g. nix:cache.example.org-1");
        }
        return Ok(KeyParams::Nix(name.to_owned()));
    }
    let sexp = Sexp::parse(params.as_bytes()).map_err(|e| {
        anyhow::anyhow!("--generate-key={params}: not an S-expression: {e}; {SUPPORTED}")
    })?;
    let algo = sexp.nth(1).filter(|_| sexp.head() == Some(b"genkey"));
    let algo_name = algo.and_then(Sexp::head).unwrap_or_default();
    let curve = algo
        .and_then(|a| a.find_token("curve"))
        .and_then(|c| c.nth(1))
        .and_then(Sexp::as_atom)
        .unwrap_or_default();
    let eddsa = algo
        .and_then(|a| a.find_token("flags"))
        .and_then(Sexp::as_list)
        .is_some_and(|f| f[1..].iter().any(|x| x.as_atom() == Some(b"eddsa")));
    match (algo_name, curve.eq_ignore_ascii_case(b"ed25519"), eddsa) {
        (b"ecdsa" | b"ecc", true, false) => Ok(KeyParams::GuixEcdsa),
        (b"ecc" | b"eddsa", true, true) | (b"eddsa", true, false) => Ok(KeyParams::GuixEddsa),
        _ => bail!("unsupported key parameters {params}; {SUPPORTED}"),
    }
}

fn generate_key(state: &Path, params: &str) -> anyhow::Result<()> {
    let params = parse_key_params(params)?;
    create_state_dir(state)?;
    let mut rng = rand::rngs::OsRng;
    match params {
        KeyParams::GuixEcdsa => {
            keyfile::generate_guix_key_pair(state, &mut rng)?;
        }
        KeyParams::GuixEddsa => {
            let (sec, public) = (state.join(GUIX_SECRET_KEY), state.join(GUIX_PUBLIC_KEY));
            refuse_existing(&sec, &public, "key pair", state)?;
            let key = signing::guix::SigningKey::generate_eddsa(&mut rng);
            write_new(&sec, &key.to_key_file(), 0o400)?;
            write_new(&public, &key.verifying_key().to_key_file(), 0o444)?;
        }
        KeyParams::Nix(name) => {
            let (sec, public) = (state.join(NIX_SECRET_KEY), state.join(NIX_PUBLIC_KEY));
            refuse_existing(&sec, &public, "Nix key pair", state)?;
            let key = signing::nix::SigningKey::generate(&name, &mut rng);
            write_new(&sec, key.to_keyfile_string().as_bytes(), 0o400)?;
            let public_text = key.verifying_key().to_string();
            write_new(&public, public_text.as_bytes(), 0o444)?;
            println!("{public_text}");
            note!("ferry: Nix key pair written to {} and {}", sec.display(), public.display());
            return Ok(());
        }
    }
    note!(
        "ferry: key pair written to {} and {}",
        state.join(GUIX_SECRET_KEY).display(),
        state.join(GUIX_PUBLIC_KEY).display()
    );
    Ok(())
}

fn refuse_existing(sec: &Path, public: &Path, what: &str, state: &Path) -> anyhow::Result<()> {
    if sec.symlink_metadata().is_ok() || public.symlink_metadata().is_ok() {
        bail!("{what} exists under '{}'; remove it first", state.display());
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    write_atomically_with_mode(path, bytes, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn authorize(state: &Path, text: &[u8]) -> anyhow::Result<()> {
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        bail!("--authorize reads a public key on stdin, and stdin was empty");
    }
    create_state_dir(state)?;
    // An S-expression starts with '(' (any libgcrypt form); a Nix key is `name:base64`.
    if trimmed.starts_with(b"(") {
        let sexp = Sexp::parse(trimmed).context("the key on stdin is not an S-expression")?;
        if sexp.head() != Some(b"public-key") {
            bail!("s-expression does not denote a public key (give the `(public-key …)` file, e.g. signing-key.pub)");
        }
        let acl = state.join(ACL);
        let outcome = keyfile::authorize_key_in_file(&acl, sexp)?;
        if outcome.replaced_symlink {
            eprintln!(
                "ferry: warning: replacing symbolic link {} with a regular file",
                acl.display()
            );
        }
        return Ok(());
    }
    let text = std::str::from_utf8(trimmed)
        .context("the key on stdin is neither an S-expression nor a Nix name:base64 key")?;
    let key = signing::nix::VerifyingKey::parse(text).with_context(|| {
        "the key on stdin is neither an S-expression nor a Nix public key (name:base64)"
    })?;
    let path = state.join(NIX_TRUSTED_KEYS);
    let existing = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let line = key.to_string();
    if existing.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    let mut updated = existing;
    if !updated.is_empty() && !updated.ends_with('\n') {
        updated.push('\n');
    }
    updated.push_str(&line);
    updated.push('\n');
    write_atomically(&path, updated.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The ACL for import; created with this machine's own key when missing (Guix `ensure-acl`).
fn load_acl(state: &Path) -> anyhow::Result<signing::acl::Acl> {
    let path = state.join(ACL);
    let own = state.join(GUIX_PUBLIC_KEY);
    if path.symlink_metadata().is_err() && own.exists() {
        let key = keyfile::load_guix_verifying_key(&own)?;
        keyfile::authorize_key_in_file(&path, key.to_sexp())?;
        note!("ferry: created {} authorizing this machine's key {}", path.display(), own.display());
    }
    Ok(keyfile::read_acl(&path)?)
}

// ---------------------------------------------------------------------------------------------
// Export

fn export(global: &GlobalOpts, state: &Path, args: &ArchiveArgs) -> anyhow::Result<()> {
    let store = open_read_only(global)?;
    let key = match args.format {
        Format::Guix => {
            let sec = state.join(GUIX_SECRET_KEY);
            if sec.symlink_metadata().is_err() {
                bail!(
                    "no signing key at {}: create one with `ferry archive --generate-key`, or \
                     export unsigned with --format nix",
                    sec.display()
                );
            }
            Some(keyfile::load_guix_signing_key(&sec)?)
        }
        Format::Nix => None,
    };
    let dir = store.store_dir().clone();
    let mut roots = Vec::new();
    for text in &args.paths {
        let path = parse_store_arg(&store, text)?;
        if !store.is_valid(&path)? {
            bail!("path `{}' is not valid", path.to_absolute(&dir));
        }
        if !roots.contains(&path) {
            roots.push(path);
        }
    }
    let out = io::stdout().lock();
    let mut writer = BundleWriter::new(BufWriter::with_capacity(256 << 10, out), dir.clone());
    if roots.is_empty() {
        eprintln!("ferry: warning: no arguments specified; creating an empty archive");
    } else {
        let closure = store.closure(&roots)?;
        for info in closure.iter() {
            if !args.recursive && !roots.contains(&info.path) {
                continue;
            }
            export_item(&store, &mut writer, info, key.as_ref())?;
        }
    }
    writer.finish().context("writing the bundle")?;
    Ok(())
}

fn export_item<W: Write>(
    store: &Store,
    writer: &mut BundleWriter<W>,
    info: &PathInfo,
    key: Option<&signing::guix::SigningKey>,
) -> anyhow::Result<()> {
    let dir = store.store_dir();
    let abs = info.path.to_absolute(dir);
    let meta = ItemMeta {
        path: info.path.clone(),
        references: info.references.iter().cloned().collect(),
        deriver: info.deriver.clone(),
    };
    let physical = store.physical_path(&info.path);
    let (pipe_writer, receiver) = chunk_pipe(16);
    std::thread::scope(|scope| {
        let dumper = scope.spawn(|| nar_core::dump::dump(&physical, pipe_writer));
        let mut nar = CheckedNar {
            inner: receiver.into_reader(),
            hasher: NarHasher::new(),
            expected: info.nar_digest(),
            path: &abs,
        };
        let written = match key {
            Some(key) => writer.write_signed(&meta, &mut nar, key),
            None => writer.write_unsigned(&meta, &mut nar),
        };
        drop(nar); // unblocks the dump if the writer stopped early
        let dumped = dumper.join().expect("the NAR dump thread panicked");
        match (written, dumped) {
            (Ok(_), _) => Ok(()),
            (Err(e), Err(dump_err)) if !is_broken_pipe_io(&e) => Err(anyhow::Error::new(dump_err)
                .context(format!("cannot export `{abs}': reading {}", physical.display()))),
            (Err(e), _) => Err(anyhow::Error::new(e).context(format!("cannot export `{abs}'"))),
        }
    })
}

fn is_broken_pipe_io(e: &signing::bundle::BundleWriteError) -> bool {
    matches!(e, signing::bundle::BundleWriteError::Io(io) if io.kind() == io::ErrorKind::BrokenPipe)
}

/// The NAR as dumped, hashed on the way; at its end, an error if it is not what the database
/// records (guix-spec §2.4 step 2), so the item is never completed.
struct CheckedNar<'a, R> {
    inner: R,
    hasher: NarHasher,
    expected: NarDigest,
    path: &'a str,
}

impl<R: Read> Read for CheckedNar<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        // An all-zero recorded hash means "unknown" (as in Guix's daemon).
        if actual != self.expected && self.expected.hash.0 != [0u8; 32] {
            return Err(io::Error::other(format!(
                "hash of path `{}' has changed from `{}' to `{}'! (size {} recorded, {} on disk; \
                 run `ferry store verify --check-contents`)",
                self.path,
                self.expected.hash.to_typed_nix32(),
                actual.hash.to_typed_nix32(),
                self.expected.size,
                actual.size
            )));
        }
        Ok(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Import

/// Re-encodes the bundle reader's NAR events into archive bytes for the restore thread. The
/// decoder only accepts canonical archives, so the bytes are the ones that were read.
struct NarPipe {
    encoder: Encoder,
    buf: Vec<u8>,
    out: ChunkWriter,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl NarPipe {
    const CHUNK: usize = 256 << 10;

    fn event(&mut self, event: NarEvent<'_>) -> Result<(), BoxError> {
        let out = &mut self.buf;
        match event {
            NarEvent::Directory => self.encoder.directory(out)?,
            NarEvent::Entry { name } => self.encoder.entry(out, name)?,
            NarEvent::DirectoryEnd => self.encoder.directory_end(out)?,
            NarEvent::File { executable, size } => self.encoder.file(out, executable, size)?,
            NarEvent::Data(bytes) => out.extend_from_slice(bytes),
            NarEvent::FileEnd => self.encoder.file_end(out)?,
            NarEvent::Symlink { target } => self.encoder.symlink(out, target)?,
            NarEvent::End => {
                self.encoder.finish()?;
                return self.flush();
            }
        }
        if self.buf.len() >= Self::CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::CHUNK));
            self.out.write_all(&chunk).map_err(|_| "the store stopped unpacking the NAR")?;
        }
        Ok(())
    }
}

/// Read the next item, unpacking its NAR into a staged entry of the store as it streams;
/// `None` at the end of the bundle.
fn read_item<R: Read>(
    store: &Store,
    reader: &mut BundleReader<R>,
    index: usize,
) -> anyhow::Result<Option<(UnverifiedItem, StagedNar)>> {
    let start = reader.offset();
    let mut staged = store.stage()?;
    let (pipe_writer, receiver) = chunk_pipe(16);
    let (read, staged, restored) = std::thread::scope(|scope| {
        let restorer = scope.spawn(move || {
            let mut input = receiver.into_reader();
            let restored = staged.restore(&mut input);
            (staged, restored)
        });
        let mut pipe = NarPipe { encoder: Encoder::new(), buf: Vec::new(), out: pipe_writer };
        let read = reader.next_item_with(|event, _| pipe.event(event));
        drop(pipe); // EOF for the restorer
        let (staged, restored) = restorer.join().expect("the NAR restore thread panicked");
        (read, staged, restored)
    });
    let context = || format!("reading item {index} of the bundle (at byte {start})");
    match read {
        Ok(None) => Ok(None),
        // The restore failed first (disk full, ...): that is the cause.
        Err(BundleError::Visitor { .. }) => match restored {
            Err(e) => Err(anyhow::Error::new(e).context(context())),
            Ok(_) => Err(anyhow::anyhow!("the NAR was cut short")).with_context(context),
        },
        Err(e @ BundleError::NotInStore { .. }) => Err(anyhow::Error::new(e).context(format!(
            "{} (this store's dir is {}; choose another with --store-dir)",
            context(),
            store.store_dir()
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(context())),
        Ok(Some(item)) => {
            restored.with_context(context)?;
            Ok(Some((item, staged)))
        }
    }
}

fn import(global: &GlobalOpts, state: &Path, args: &ArchiveArgs) -> anyhow::Result<()> {
    let mut store = open_writable(global)?;
    let dir = store.store_dir().clone();
    let acl = load_acl(state)?;
    let stdin = io::stdin().lock();
    let mut reader = BundleReader::new(stdin, dir.clone());
    let mut out = io::stdout().lock();
    for index in 1.. {
        let Some((item, staged)) = read_item(&store, &mut reader, index)? else { break };
        let abs = item.info().path.to_absolute(&dir);
        let context = || format!("cannot import `{abs}' (item {index} of the bundle)");
        let verified: VerifiedItem = match args.format {
            Format::Guix => item.verify(&acl, &dir).map_err(anyhow::Error::new),
            Format::Nix if args.no_check_sigs => Ok(item.trust_unsigned()),
            Format::Nix if item.signature_text().is_none() => Err(anyhow::anyhow!(
                "imported archive of `{abs}' lacks a signature (Nix bundles are unsigned: pass \
                 --no-check-sigs to import one from a source you trust, as Nix lets trusted \
                 users do)"
            )),
            Format::Nix => item.verify(&acl, &dir).map_err(anyhow::Error::new),
        }
        .with_context(context)?;
        let v = verified.info;
        let mut info = PathInfo::new(v.path, v.nar, v.references.into_iter().collect());
        info.deriver = v.deriver;
        match store.commit_staged(staged, &info) {
            Ok(_) => {}
            Err(StoreError::ReferenceNotValid { reference, .. }) => {
                return Err(anyhow::anyhow!(
                    "path ‘{reference}’ is not valid (a reference of `{abs}'; import it first, \
                     or export with -r)"
                ))
                .with_context(context);
            }
            Err(e) => return Err(anyhow::Error::new(e).context(context())),
        }
        writeln!(out, "{abs}")?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_params() {
        assert_eq!(parse_key_params("").unwrap(), KeyParams::GuixEcdsa);
        assert_eq!(
            parse_key_params("(genkey (ecdsa (curve Ed25519) (flags rfc6979)))").unwrap(),
            KeyParams::GuixEcdsa
        );
        assert_eq!(
            parse_key_params("(genkey (ecc (curve Ed25519) (flags eddsa)))").unwrap(),
            KeyParams::GuixEddsa
        );
        assert_eq!(parse_key_params("nix:cache-1").unwrap(), KeyParams::Nix("cache-1".into()));
        for bad in ["nix:", "nix:a:b", "(genkey (rsa (nbits 4:4096)))", "(genkey", "rsa"] {
            assert!(parse_key_params(bad).is_err(), "{bad}");
        }
    }
}
