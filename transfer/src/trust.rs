//! What a path's signature covers, signing on the coordinator, checking on the agent, and the
//! local signing key.
//!
//! A path travels with a Guix signature (an S-expression, guix-spec §3.4) over the SHA-256 of
//! its Nix narinfo fingerprint `1;<abs path>;sha256:<nix32>;<size>;<abs refs sorted>`: the
//! path, its NAR hash and size and its references are all covered. The agent accepts a path
//! only when a key in its ACL (`<state>/acl`) made the signature (the Guix rule: a signature is
//! required, even for root), checked in Guix's order (signing::acl). The NAR hash itself is
//! checked while the NAR is restored.
//!
//! **Unsigned metadata.** A `PathStart` also carries fields the signature does not cover. Those
//! that steer decoding are bounded by what is signed: `encoding` only chooses how bytes become
//! the NAR, whose output stops at the signed size and must hash to the signed hash; `offset`
//! only names bytes this host already holds (checked against its partial file, and a resumed
//! path whose result does not match is sent again in full). Those that are stored and later
//! written into narinfos, `ca` and `deriver`, are checked against their grammar
//! ([`check_metadata`]) by the agent before the path is accepted and by the binary-cache writer
//! before a narinfo is signed: a `ca` is one line of Nix's content-address syntax
//! (`text:sha256:H`, `fixed:[r:|git:]ALGO:H`), a deriver a store path whose name ends in `.drv`.

use std::path::{Path, PathBuf};

use nar_core::hash::Sha256Hash;
use nar_core::store_path::{StoreDir, StorePath};
use signing::acl::{Acl, SignatureError};
use signing::guix::{Signature, SigningKey};

use proto::frame::{PathStart, RejectReason};

/// Problems with the local signing key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error(transparent)]
    KeyFile(#[from] signing::keyfile::KeyFileError),
    #[error("cannot create {0:?}: {1}")]
    CreateDir(PathBuf, std::io::Error),
    #[error("cannot write {0:?}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The digest a path's signature covers.
pub fn path_digest(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> [u8; 32] {
    let fp = signing::nix::fingerprint(store_dir, path, nar_hash, nar_size, references);
    Sha256Hash::of(fp.as_bytes()).0
}

/// Sign a path: the Guix signature text to put in its `PathStart`.
pub fn sign_path(
    key: &SigningKey,
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> Vec<u8> {
    key.sign(&path_digest(store_dir, path, nar_hash, nar_size, references)).to_text()
}

/// Check a received path's signature against the ACL; the reason and message on refusal.
pub fn check_path(
    acl: &Acl,
    store_dir: &StoreDir,
    start: &PathStart,
) -> Result<(), (RejectReason, String)> {
    if start.signature.is_empty() {
        return Err((
            RejectReason::Unsigned,
            "the path is not signed, and a signature by an authorized key is required".into(),
        ));
    }
    let sig = Signature::parse(&start.signature)
        .map_err(|e| (RejectReason::BadSignature, format!("unreadable signature: {e}")))?;
    let digest =
        path_digest(store_dir, &start.path, &start.nar_hash, start.nar_size, &start.references);
    // S-expressions in the messages are multi-line; keep each message on one line.
    let one_line =
        |e: SignatureError| e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    match acl.check_signature(&sig, &digest) {
        Ok(_) => Ok(()),
        Err(e @ SignatureError::Unauthorized { .. }) => {
            Err((RejectReason::Unauthorized, one_line(e)))
        }
        Err(e) => Err((RejectReason::BadSignature, one_line(e))),
    }
}

/// Check the metadata of a path that no signature covers (`ca`, `deriver`; see the module
/// docs): the message names the field and what is wrong.
pub fn check_metadata(ca: Option<&str>, deriver: Option<&StorePath>) -> Result<(), String> {
    if let Some(ca) = ca {
        check_ca(ca).map_err(|why| {
            format!(
                "its ca {:?} is not a Nix content address: {why}",
                proto::text::peer_text(ca, 200)
            )
        })?;
    }
    if let Some(d) = deriver {
        if !d.name().ends_with(".drv") {
            return Err(format!("its deriver {d} is not a derivation (no .drv)"));
        }
    }
    Ok(())
}

/// One line of Nix's content-address syntax: `text:sha256:H` or `fixed:[r:|git:]ALGO:H`, with
/// `H` the digest of `ALGO` in base 16, nix-base32 or base64.
fn check_ca(ca: &str) -> Result<(), &'static str> {
    let (algo_hash, text) = if let Some(rest) = ca.strip_prefix("text:") {
        (rest, true)
    } else if let Some(rest) = ca.strip_prefix("fixed:") {
        let rest = rest.strip_prefix("r:").or_else(|| rest.strip_prefix("git:")).unwrap_or(rest);
        (rest, false)
    } else {
        return Err("it starts with neither `text:` nor `fixed:`");
    };
    let (algo, hash) = algo_hash.split_once(':').ok_or("no `ALGO:HASH`")?;
    let bytes = match algo {
        "sha256" => 32,
        "md5" if !text => 16,
        "sha1" if !text => 20,
        "sha512" if !text => 64,
        _ => return Err("unknown hash algorithm"),
    };
    let is = |alphabet: &dyn Fn(u8) -> bool| hash.bytes().all(alphabet);
    let base16 = hash.len() == bytes * 2 && is(&|b| b.is_ascii_hexdigit());
    let nix32 = hash.len() == (bytes * 8).div_ceil(5)
        && is(&|b| b"0123456789abcdfghijklmnpqrsvwxyz".contains(&b));
    let base64 = hash.len() == bytes.div_ceil(3) * 4
        && is(&|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if base16 || nix32 || base64 {
        Ok(())
    } else {
        Err("the digest is not base 16, nix-base32 or base64 of the algorithm's size")
    }
}

/// The local signing key `<state>/signing-key.sec`, generated on first use; the second value
/// is the directory where a new key pair was written.
pub fn load_or_generate_key(state_dir: &Path) -> Result<(SigningKey, Option<PathBuf>), KeyError> {
    let sec = state_dir.join("signing-key.sec");
    if sec.symlink_metadata().is_ok() {
        return Ok((signing::keyfile::load_guix_signing_key(&sec)?, None));
    }
    std::fs::create_dir_all(state_dir).map_err(|e| KeyError::CreateDir(state_dir.to_owned(), e))?;
    let key = signing::keyfile::generate_guix_key_pair(state_dir, &mut rand::thread_rng())?;
    Ok((key, Some(state_dir.to_owned())))
}

/// The local Nix signing key `<state>/nix-signing-key.sec` (for binary caches), generated on
/// first use with the name `default_name` (and its `.pub`); the second value is the directory
/// where a new key pair was written.
pub fn load_or_generate_nix_key(
    state_dir: &Path,
    default_name: &str,
) -> Result<(signing::nix::SigningKey, Option<PathBuf>), KeyError> {
    let sec = state_dir.join("nix-signing-key.sec");
    if sec.symlink_metadata().is_ok() {
        return Ok((signing::keyfile::load_nix_signing_key(&sec)?, None));
    }
    std::fs::create_dir_all(state_dir).map_err(|e| KeyError::CreateDir(state_dir.to_owned(), e))?;
    let key = signing::nix::SigningKey::generate(default_name, &mut rand::thread_rng());
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e| KeyError::Write(path, e)
    };
    signing::keyfile::write_atomically_with_mode(&sec, key.to_keyfile_string().as_bytes(), 0o400)
        .map_err(io(&sec))?;
    let public = state_dir.join("nix-signing-key.pub");
    signing::keyfile::write_atomically_with_mode(
        &public,
        key.verifying_key().to_string().as_bytes(),
        0o444,
    )
    .map_err(io(&public))?;
    Ok((key, Some(state_dir.to_owned())))
}

/// The Nix keys a machine trusts for binary caches: `<state>/trusted-public-keys` (one
/// `name:base64` per line, what `ferry archive --authorize` writes for Nix keys) and the
/// machine's own `<state>/nix-signing-key.pub` (the key its own cache writes sign with, as the
/// ACL holds the machine's own Guix key). Missing files are no keys; unreadable lines are
/// skipped.
pub fn nix_trusted_keys(state_dir: &Path) -> Vec<signing::nix::VerifyingKey> {
    let mut keys = Vec::new();
    for file in ["trusted-public-keys", "nix-signing-key.pub"] {
        let Ok(text) = std::fs::read_to_string(state_dir.join(file)) else { continue };
        keys.extend(text.lines().filter_map(|l| signing::nix::VerifyingKey::parse(l.trim()).ok()));
    }
    keys
}

/// The Nix signatures among `sigs` (sent with `info`, feature `nix-sigs`) that one of `keys`
/// made over `info`'s fingerprint. The others are dropped, never stored: a peer's signatures are
/// claims, and only the host's own trusted keys turn them into facts.
pub fn trusted_nix_sigs(
    keys: &[signing::nix::VerifyingKey],
    store_dir: &StoreDir,
    info: &closure::PathInfo,
    sigs: &[String],
) -> Vec<String> {
    if keys.is_empty() || sigs.is_empty() {
        return Vec::new();
    }
    let refs: Vec<StorePath> = info.references.iter().cloned().collect();
    let fp = signing::nix::fingerprint(store_dir, &info.path, &info.nar_hash, info.nar_size, &refs);
    sigs.iter()
        .filter(|text| {
            signing::nix::Signature::parse(text)
                .is_ok_and(|sig| keys.iter().any(|k| k.verify(&fp, &sig)))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::frame::Encoding;

    #[test]
    fn sign_and_check() {
        let dir = StoreDir::guix();
        let key = SigningKey::generate(&mut rand::thread_rng());
        let path = StorePath::from_parts([3; 20], "x").unwrap();
        let r = StorePath::from_parts([4; 20], "r").unwrap();
        let hash = Sha256Hash::of(b"nar");
        let mut start = PathStart {
            path: path.clone(),
            nar_hash: hash,
            nar_size: 3,
            references: vec![r.clone()],
            deriver: None,
            ca: None,
            signature: sign_path(&key, &dir, &path, &hash, 3, std::slice::from_ref(&r)),
            encoding: Encoding::Zstd,
            offset: 0,
            nix_sigs: Vec::new(),
        };
        let mut acl = Acl::new();
        assert_eq!(check_path(&acl, &dir, &start).unwrap_err().0, RejectReason::Unauthorized);
        acl.authorize(key.verifying_key().to_sexp()).unwrap();
        check_path(&acl, &dir, &start).unwrap();
        start.nar_size = 4;
        assert_eq!(check_path(&acl, &dir, &start).unwrap_err().0, RejectReason::BadSignature);
        start.nar_size = 3;
        start.references.clear();
        assert_eq!(check_path(&acl, &dir, &start).unwrap_err().0, RejectReason::BadSignature);
        start.signature.clear();
        assert_eq!(check_path(&acl, &dir, &start).unwrap_err().0, RejectReason::Unsigned);
        start.signature = b"(garbage".to_vec();
        assert_eq!(check_path(&acl, &dir, &start).unwrap_err().0, RejectReason::BadSignature);
    }

    #[test]
    fn metadata_grammar() {
        let h = Sha256Hash::of(b"x");
        for ok in [
            format!("fixed:r:{}", h.to_typed_nix32()),
            format!("text:{}", h.to_typed_nix32()),
            format!("fixed:sha256:{}", h.to_hex()),
            "fixed:sha1:0123456789abcdef0123456789abcdef01234567".to_owned(),
        ] {
            check_metadata(Some(&ok), None).unwrap();
        }
        for bad in [
            format!("fixed:r:{}\nURL: evil\nReferences: x", h.to_typed_nix32()),
            "fixed:r:sha256:short".to_owned(),
            "text:md5:0123456789abcdef0123456789abcdef".to_owned(),
            "nonsense".to_owned(),
            String::new(),
        ] {
            assert!(check_metadata(Some(&bad), None).is_err(), "{bad:?}");
        }
        let drv = StorePath::from_parts([5; 20], "x.drv").unwrap();
        check_metadata(None, Some(&drv)).unwrap();
        let not = StorePath::from_parts([5; 20], "x").unwrap();
        assert!(check_metadata(None, Some(&not)).unwrap_err().contains("deriver"));
    }
}
