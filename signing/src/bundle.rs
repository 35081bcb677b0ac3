//! The export bundle: what `nix-store --export` and `guix archive --export` write and
//! `--import` reads (guix-spec §2.1–§2.5).
//!
//! # Framing
//! All integers are `u64` little-endian; `str(b)` is `u64(len) ‖ b ‖ zero padding to 8`.
//! ```text
//! bundle := { u64(1) item }* u64(0)
//! item   := nar                      ; a whole nix-archive-1
//!           u64(0x4558494e)          ; "NIXE"
//!           str(store path)
//!           u64(nrefs) str(ref)*     ; sorted byte-wise
//!           str(deriver)             ; "" if unknown
//!           u64(has-sig)             ; Guix: 1; Nix: 0
//!           [str(signature)]         ; Guix signature S-expression (advanced text)
//! ```
//! The **export hash** Guix signs is SHA-256 over the item from the first NAR byte through the
//! end of the deriver string (the has-sig flag and the signature are excluded). The reader
//! computes it while reading, so the bytes are read once.
//!
//! # Reading
//! [`BundleReader::next_item_with`] streams the NAR through `nar_core`'s decoder to a visitor
//! (which can restore it into a staging directory, as Guix's daemon does), then reads the
//! trailer and returns an [`UnverifiedItem`]. Nothing from the item may be trusted until
//! [`UnverifiedItem::verify`] (Guix: signature required, ACL, hash, crypto — guix-spec §3.6) or
//! [`UnverifiedItem::trust_unsigned`] (Nix form, trust from the transport) turns it into a
//! [`VerifiedItem`]. [`BundleReader::next_item`] collects the NAR bytes in memory instead.
//! The reader never panics and bounds every allocation (names, reference count, signature).
//!
//! # Writing
//! [`BundleWriter`] writes items in Guix form (signed with a [`crate::guix::SigningKey`]) or Nix
//! form (has-sig 0), checking the NAR with `nar_core`'s decoder as it copies it, and the end
//! marker on [`BundleWriter::finish`].

use std::io::{self, BufRead, Read, Write};

use nar_core::decode::Decoder;
use nar_core::error::{DecodeError, DecodeErrorKind};
use nar_core::hash::{NarDigest, Sha256Hash};
use nar_core::read::NarEvent;
use nar_core::store_path::{StoreDir, StorePath, StorePathError};
use sha2::{Digest, Sha256};

use crate::acl::{Acl, SignatureError};
use crate::guix::{Signature, SigningKey};
use crate::sexp::Sexp;

/// `"NIXE"` as a little-endian u64.
pub const EXPORT_MAGIC: u64 = 0x4558_494e;
/// Longest store path string accepted.
pub const MAX_PATH_LEN: u64 = 4096;
/// Most references accepted for one item.
pub const MAX_REFERENCES: u64 = 1 << 20;
/// Longest signature accepted.
pub const MAX_SIGNATURE_LEN: u64 = 1 << 16;

/// What went wrong reading or verifying a bundle. Variants that Guix also reports carry Guix's
/// exact message (guix-spec §2.5); the others say what was wrong and at which byte.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading failed.
    #[error("reading the bundle at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    /// The input ended early.
    #[error("bundle truncated at byte {offset}: expected {expected}")]
    Truncated { offset: u64, expected: &'static str },
    /// An item marker other than 0 or 1.
    #[error("input doesn't look like something created by `nix-store --export'")]
    BadMarker { offset: u64, value: u64 },
    /// The `NIXE` magic is missing after the NAR.
    #[error("normalized archive cannot be imported; wrong format")]
    BadMagic { offset: u64, value: u64 },
    /// The NAR is malformed (its offset is relative to the NAR; `item_offset` is where it starts).
    #[error("invalid NAR in the item starting at byte {item_offset}: {source}")]
    Nar { item_offset: u64, source: DecodeError },
    /// A path that is not a store path.
    #[error("path `{path}' is not in the store")]
    NotInStore { path: String, source: StorePathError },
    /// A framing string is malformed.
    #[error("bad {what} at byte {offset}: {reason}")]
    BadString { offset: u64, what: &'static str, reason: &'static str },
    /// Too many references.
    #[error("item at byte {offset} claims {count} references (limit {MAX_REFERENCES})")]
    TooManyReferences { offset: u64, count: u64 },
    /// A has-sig flag other than 0 or 1.
    #[error("bad signature flag {value} at byte {offset}")]
    BadSignatureFlag { offset: u64, value: u64 },
    /// Guix requires a signature.
    #[error("imported archive of `{path}' lacks a signature")]
    MissingSignature { path: String },
    /// The signature was not accepted.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The NAR visitor failed.
    #[error("while consuming the NAR of the item at byte {item_offset}: {source}")]
    Visitor { item_offset: u64, source: Box<dyn std::error::Error + Send + Sync> },
}

/// Reads bytes from `R` through its own buffer, hashing (and optionally capturing) what is
/// consumed.
struct Tap<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Bytes consumed since the start of the bundle.
    offset: u64,
    hasher: Option<Sha256>,
    capture: Option<Vec<u8>>,
}

impl<R: Read> Tap<R> {
    fn read_u64(&mut self, expected: &'static str) -> Result<u64, BundleError> {
        let mut b = [0u8; 8];
        self.read_exact_or(&mut b, expected)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_exact_or(&mut self, out: &mut [u8], expected: &'static str) -> Result<(), BundleError> {
        let mut filled = 0;
        while filled < out.len() {
            let offset = self.offset;
            let avail = self.fill_buf().map_err(|source| BundleError::Io { offset, source })?;
            if avail.is_empty() {
                return Err(BundleError::Truncated { offset: self.offset, expected });
            }
            let n = avail.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&avail[..n]);
            self.consume(n);
            filled += n;
        }
        Ok(())
    }

    /// `str(b)` with length at most `max`.
    fn read_str(&mut self, what: &'static str, max: u64) -> Result<Vec<u8>, BundleError> {
        let start = self.offset;
        let len = self.read_u64(what)?;
        if len > max {
            return Err(BundleError::BadString { offset: start, what, reason: "too long" });
        }
        let len = len as usize; // ≤ max, which fits
        let padded = len.div_ceil(8) * 8;
        let mut v = vec![0u8; padded];
        self.read_exact_or(&mut v, what)?;
        if v[len..].iter().any(|&b| b != 0) {
            return Err(BundleError::BadString { offset: start, what, reason: "non-zero padding" });
        }
        v.truncate(len);
        Ok(v)
    }

    fn read_store_path(
        &mut self,
        what: &'static str,
        dir: &StoreDir,
    ) -> Result<StorePath, BundleError> {
        let offset = self.offset;
        let bytes = self.read_str(what, MAX_PATH_LEN)?;
        let text = String::from_utf8(bytes).map_err(|_| BundleError::BadString {
            offset,
            what,
            reason: "not UTF-8",
        })?;
        dir.parse_path(&text).map_err(|source| BundleError::NotInStore { path: text, source })
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Tap<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.end - self.pos);
        let bytes = &self.buf[self.pos..self.pos + amt];
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        if let Some(c) = &mut self.capture {
            c.extend_from_slice(bytes);
        }
        self.pos += amt;
        self.offset += amt as u64;
    }
}

/// An item as read, before its signature was checked. Do not act on it (for example register
/// its path) before [`UnverifiedItem::verify`].
#[derive(Debug, Clone)]
pub struct UnverifiedItem {
    item: ItemInfo,
    signature: Option<Vec<u8>>,
}

/// The metadata of one bundle item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemInfo {
    /// The store path.
    pub path: StorePath,
    /// Its references (as in the bundle: sorted byte-wise by absolute path).
    pub references: Vec<StorePath>,
    /// The deriver, if known.
    pub deriver: Option<StorePath>,
    /// SHA-256 and size of the NAR alone (what a store database records).
    pub nar: NarDigest,
    /// The export hash: SHA-256 of NAR, magic, path, references and deriver (what Guix signs).
    pub export_hash: Sha256Hash,
    /// Byte offset of the item's NAR in the bundle.
    pub offset: u64,
}

impl ItemInfo {
    /// The Nix narinfo fingerprint of this item (see [`crate::nix::fingerprint`]), to sign or
    /// check a Nix `Sig` for it.
    pub fn nix_fingerprint(&self, store_dir: &StoreDir) -> String {
        crate::nix::fingerprint(
            store_dir,
            &self.path,
            &self.nar.hash,
            self.nar.size,
            &self.references,
        )
    }
}

/// An item whose signature was checked (or that the caller chose to trust unsigned).
#[derive(Debug, Clone)]
pub struct VerifiedItem {
    /// The item.
    pub info: ItemInfo,
    /// The signer's `(public-key …)`, for Guix-form items.
    pub signer: Option<Sexp>,
}

impl UnverifiedItem {
    /// The metadata (untrusted until verified).
    pub fn info(&self) -> &ItemInfo {
        &self.item
    }

    /// The raw signature text, if the item carries one.
    pub fn signature_text(&self) -> Option<&[u8]> {
        self.signature.as_deref()
    }

    /// Guix's check (guix-spec §2.5, §3.6): a signature must be present, its key must be in
    /// `acl`, its hash must equal the export hash, and it must verify.
    pub fn verify(self, acl: &Acl, store_dir: &StoreDir) -> Result<VerifiedItem, BundleError> {
        let Some(text) = &self.signature else {
            return Err(BundleError::MissingSignature {
                path: self.item.path.to_absolute(store_dir),
            });
        };
        let sig = match Signature::parse(text) {
            Ok(sig) => sig,
            Err(_) => {
                return Err(SignatureError::Corrupt {
                    sexp: String::from_utf8_lossy(text).into_owned(),
                }
                .into())
            }
        };
        let signer = acl.check_signature(&sig, &self.item.export_hash.0)?.clone();
        Ok(VerifiedItem { info: self.item, signer: Some(signer) })
    }

    /// Accept the item without a signature (Nix form: trust comes from the transport, as with
    /// Nix's `trusted-users`).
    pub fn trust_unsigned(self) -> VerifiedItem {
        VerifiedItem { info: self.item, signer: None }
    }
}

/// Reads a bundle item by item.
#[derive(Debug)]
pub struct BundleReader<R> {
    tap: Tap<R>,
    store_dir: StoreDir,
    done: bool,
}

impl<R> std::fmt::Debug for Tap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("offset", &self.offset).finish_non_exhaustive()
    }
}

impl<R: Read> BundleReader<R> {
    /// Read a bundle whose paths are in `store_dir`.
    pub fn new(reader: R, store_dir: StoreDir) -> Self {
        BundleReader {
            tap: Tap {
                inner: reader,
                buf: vec![0u8; 64 * 1024],
                pos: 0,
                end: 0,
                offset: 0,
                hasher: None,
                capture: None,
            },
            store_dir,
            done: false,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.tap.offset
    }

    /// The next item, with its NAR collected in memory; `None` after the end marker.
    pub fn next_item(&mut self) -> Result<Option<(UnverifiedItem, Vec<u8>)>, BundleError> {
        let mut nar = Vec::new();
        let item = self.read_item(|_, _| Ok(()), Some(&mut nar))?;
        Ok(item.map(|item| (item, nar)))
    }

    /// The next item, streaming its NAR events to `visit` (with the offset inside the NAR
    /// after each event); `None` after the end marker. Once `None` or an error was returned,
    /// further calls return `None`.
    pub fn next_item_with<F>(&mut self, visit: F) -> Result<Option<UnverifiedItem>, BundleError>
    where
        F: FnMut(NarEvent<'_>, u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    {
        self.read_item(visit, None)
    }

    fn read_item<F>(
        &mut self,
        mut visit: F,
        capture: Option<&mut Vec<u8>>,
    ) -> Result<Option<UnverifiedItem>, BundleError>
    where
        F: FnMut(NarEvent<'_>, u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.done {
            return Ok(None);
        }
        self.done = true; // until this item is read completely
        let marker_at = self.tap.offset;
        match self.tap.read_u64("an item marker (0 or 1)")? {
            0 => return Ok(None),
            1 => {}
            value => return Err(BundleError::BadMarker { offset: marker_at, value }),
        }
        let item_offset = self.tap.offset;
        self.tap.hasher = Some(Sha256::new());
        let capturing = capture.is_some();
        if capturing {
            self.tap.capture = Some(Vec::new());
        }
        let nar = read_nar(&mut self.tap, item_offset, &mut visit);
        if let (Some(out), Some(bytes)) = (capture, self.tap.capture.take()) {
            *out = bytes;
        }
        let nar = nar?;

        let magic_at = self.tap.offset;
        let magic = self.tap.read_u64("the NIXE magic")?;
        if magic != EXPORT_MAGIC {
            return Err(BundleError::BadMagic { offset: magic_at, value: magic });
        }
        let path = self.tap.read_store_path("store path", &self.store_dir)?;
        let refs_at = self.tap.offset;
        let count = self.tap.read_u64("the reference count")?;
        if count > MAX_REFERENCES {
            return Err(BundleError::TooManyReferences { offset: refs_at, count });
        }
        let mut references = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            references.push(self.tap.read_store_path("reference", &self.store_dir)?);
        }
        let deriver_at = self.tap.offset;
        let deriver = self.tap.read_str("deriver", MAX_PATH_LEN)?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            let text = String::from_utf8(deriver).map_err(|_| BundleError::BadString {
                offset: deriver_at,
                what: "deriver",
                reason: "not UTF-8",
            })?;
            Some(
                self.store_dir
                    .parse_path(&text)
                    .map_err(|source| BundleError::NotInStore { path: text, source })?,
            )
        };
        let export_hash =
            Sha256Hash(self.tap.hasher.take().map(|h| h.finalize().into()).unwrap_or_default());

        let flag_at = self.tap.offset;
        let signature = match self.tap.read_u64("the signature flag")? {
            0 => None,
            1 => Some(self.tap.read_str("signature", MAX_SIGNATURE_LEN)?),
            value => return Err(BundleError::BadSignatureFlag { offset: flag_at, value }),
        };
        self.done = false;
        Ok(Some(UnverifiedItem {
            item: ItemInfo { path, references, deriver, nar, export_hash, offset: item_offset },
            signature,
        }))
    }
}

/// Run the NAR decoder over the tap, reporting events.
fn read_nar<R: Read, F>(
    tap: &mut Tap<R>,
    item_offset: u64,
    visit: &mut F,
) -> Result<NarDigest, BundleError>
where
    F: FnMut(NarEvent<'_>, u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    enum E {
        Decode(DecodeError),
        Io(io::Error),
        Visitor(Box<dyn std::error::Error + Send + Sync>),
    }
    impl From<DecodeError> for E {
        fn from(e: DecodeError) -> Self {
            E::Decode(e)
        }
    }
    impl From<io::Error> for E {
        fn from(e: io::Error) -> Self {
            E::Io(e)
        }
    }
    let r = nar_core::read::read_nar(tap, |ev, off| visit(ev, off).map_err(E::Visitor));
    match r {
        Ok(d) => Ok(d),
        Err(E::Decode(e)) => match e.kind {
            DecodeErrorKind::Truncated { expected } => {
                Err(BundleError::Truncated { offset: item_offset + e.offset, expected })
            }
            _ => Err(BundleError::Nar { item_offset, source: e }),
        },
        Err(E::Io(source)) => Err(BundleError::Io { offset: tap.offset, source }),
        Err(E::Visitor(source)) => Err(BundleError::Visitor { item_offset, source }),
    }
}

/// Why an item could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleWriteError {
    /// Writing (or reading the NAR) failed.
    #[error("writing the bundle: {0}")]
    Io(#[from] io::Error),
    /// The NAR given is malformed or incomplete.
    #[error("the NAR of `{path}' is invalid: {source}")]
    Nar { path: String, source: DecodeError },
}

/// What to write for one item, besides its NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemMeta {
    /// The store path.
    pub path: StorePath,
    /// Its references (sorted on output).
    pub references: Vec<StorePath>,
    /// The deriver, if known.
    pub deriver: Option<StorePath>,
}

/// Writes a bundle. After an error the output holds a partial item and must be discarded
/// (an importer would reject it).
#[derive(Debug)]
pub struct BundleWriter<W> {
    out: W,
    store_dir: StoreDir,
}

fn str_bytes(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + b.len() + 7);
    v.extend_from_slice(&(b.len() as u64).to_le_bytes());
    v.extend_from_slice(b);
    v.resize(8 + b.len().div_ceil(8) * 8, 0);
    v
}

impl<W: Write> BundleWriter<W> {
    /// Write to `out`; paths are printed under `store_dir`.
    pub fn new(out: W, store_dir: StoreDir) -> Self {
        BundleWriter { out, store_dir }
    }

    /// Guix form: the item signed by `key` (has-sig 1). Returns the item's metadata.
    pub fn write_signed(
        &mut self,
        meta: &ItemMeta,
        nar: &mut dyn Read,
        key: &SigningKey,
    ) -> Result<ItemInfo, BundleWriteError> {
        self.write_item(meta, nar, Some(key))
    }

    /// Nix form: no signature (has-sig 0).
    pub fn write_unsigned(
        &mut self,
        meta: &ItemMeta,
        nar: &mut dyn Read,
    ) -> Result<ItemInfo, BundleWriteError> {
        self.write_item(meta, nar, None)
    }

    fn write_item(
        &mut self,
        meta: &ItemMeta,
        nar: &mut dyn Read,
        key: Option<&SigningKey>,
    ) -> Result<ItemInfo, BundleWriteError> {
        let path = meta.path.to_absolute(&self.store_dir);
        self.out.write_all(&1u64.to_le_bytes())?;
        let mut export = Sha256::new();
        let mut nar_hash = Sha256::new();
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        let nar_err = |source| BundleWriteError::Nar { path: path.clone(), source };
        loop {
            let n = match nar.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                decoder.finish().map_err(nar_err)?;
                break;
            }
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                if decoder.is_done() {
                    return Err(nar_err(DecodeError {
                        offset: decoder.offset(),
                        kind: DecodeErrorKind::TrailingData,
                    }));
                }
                let step = decoder.step(chunk).map_err(nar_err)?;
                chunk = &chunk[step.consumed..];
            }
            export.update(&buf[..n]);
            nar_hash.update(&buf[..n]);
            size += n as u64;
            self.out.write_all(&buf[..n])?;
        }
        let mut refs: Vec<(String, &StorePath)> =
            meta.references.iter().map(|r| (r.to_absolute(&self.store_dir), r)).collect();
        refs.sort_by(|a, b| a.0.cmp(&b.0));
        refs.dedup_by(|a, b| a.0 == b.0);
        let mut trailer = Vec::new();
        trailer.extend_from_slice(&EXPORT_MAGIC.to_le_bytes());
        trailer.extend_from_slice(&str_bytes(path.as_bytes()));
        trailer.extend_from_slice(&(refs.len() as u64).to_le_bytes());
        for (r, _) in &refs {
            trailer.extend_from_slice(&str_bytes(r.as_bytes()));
        }
        let deriver =
            meta.deriver.as_ref().map(|d| d.to_absolute(&self.store_dir)).unwrap_or_default();
        trailer.extend_from_slice(&str_bytes(deriver.as_bytes()));
        export.update(&trailer);
        let export_hash: [u8; 32] = export.finalize().into();
        match key {
            Some(key) => {
                trailer.extend_from_slice(&1u64.to_le_bytes());
                trailer.extend_from_slice(&str_bytes(&key.sign(&export_hash).to_text()));
            }
            None => trailer.extend_from_slice(&0u64.to_le_bytes()),
        }
        self.out.write_all(&trailer)?;
        Ok(ItemInfo {
            path: meta.path.clone(),
            references: refs.into_iter().map(|(_, r)| r.clone()).collect(),
            deriver: meta.deriver.clone(),
            nar: NarDigest { hash: Sha256Hash(nar_hash.finalize().into()), size },
            export_hash: Sha256Hash(export_hash),
            offset: 0,
        })
    }

    /// Write the end marker and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&0u64.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello_meta(dir: &StoreDir) -> ItemMeta {
        ItemMeta {
            path: dir.parse_path("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt").unwrap(),
            references: vec![],
            deriver: None,
        }
    }

    #[test]
    fn streaming_visitor_and_its_errors() {
        let dir = StoreDir::nix();
        let meta = ItemMeta {
            path: dir.parse_path("/nix/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt").unwrap(),
            references: vec![],
            deriver: None,
        };
        let mut w = BundleWriter::new(Vec::new(), dir.clone());
        let nar = nar_core::testdata::hello_nar();
        w.write_unsigned(&meta, &mut &nar[..]).unwrap();
        w.write_unsigned(&meta, &mut &nar[..]).unwrap();
        let bytes = w.finish().unwrap();

        let mut r = BundleReader::new(&bytes[..], dir.clone());
        let mut contents = Vec::new();
        let item = r
            .next_item_with(|ev, _| {
                if let NarEvent::Data(d) = ev {
                    contents.extend_from_slice(d);
                }
                Ok(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(contents, b"hello\n");
        let info = item.trust_unsigned().info;
        assert_eq!(info.nar.hash, Sha256Hash::of(&nar));
        assert_eq!(
            info.nix_fingerprint(&dir),
            format!(
                "1;{};{};120;",
                meta.path.to_absolute(&dir),
                Sha256Hash::of(&nar).to_typed_nix32()
            )
        );
        let e = r.next_item_with(|_, _| Err("disk full".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "while consuming the NAR of the item at byte {}: disk full",
                info.offset + 8 + 120 + 8 + 64 + 8 + 8 + 8
            )
        );
        assert!(r.next_item().unwrap().is_none(), "a reader that failed stays finished");

        // A NAR with trailing garbage or cut short is refused by the writer.
        let mut w = BundleWriter::new(Vec::new(), dir.clone());
        let mut long = nar.clone();
        long.push(0);
        assert!(matches!(
            w.write_unsigned(&meta, &mut &long[..]),
            Err(BundleWriteError::Nar { .. })
        ));
        assert!(matches!(
            w.write_unsigned(&meta, &mut &nar[..100]),
            Err(BundleWriteError::Nar { .. })
        ));
    }

    /// guix-spec §2.3: the 672-byte signed bundle, reproduced byte for byte.
    #[test]
    fn spec_bundle_bit_for_bit() {
        let dir = StoreDir::guix();
        let key = SigningKey::from_ecdsa_bytes(
            &hex::decode("6252ED96A8F1776EF45369E58C2C26A2212669D4B6ECDBF7C92C83EE1AC03A08")
                .unwrap(),
        )
        .unwrap();
        let nar = nar_core::testdata::hello_nar();
        let mut w = BundleWriter::new(Vec::new(), dir.clone());
        let info = w.write_signed(&hello_meta(&dir), &mut &nar[..], &key).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len(), 672);
        assert_eq!(
            info.export_hash.to_hex(),
            "dd7e17074e601c245a0c5e8b1ed2b3c2914d16b96fe846c93537edba46ec5f25"
        );
        assert_eq!(&bytes[232..232 + 430], crate::guix::tests::SIG_TEXT.as_bytes());

        let mut acl = Acl::new();
        acl.authorize(key.verifying_key().to_sexp()).unwrap();
        let mut r = BundleReader::new(&bytes[..], dir.clone());
        let (item, got_nar) = r.next_item().unwrap().unwrap();
        assert_eq!(got_nar, nar);
        assert_eq!(item.info().export_hash, info.export_hash);
        let v = item.verify(&acl, &dir).unwrap();
        assert_eq!(v.info.path, hello_meta(&dir).path);
        assert!(r.next_item().unwrap().is_none());
        assert_eq!(r.offset(), 672);
    }
}
