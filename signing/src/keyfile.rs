//! Key files on disk: reading secret keys safely, and writing files atomically.
//!
//! - A secret key file must have no group or other permission bits (mode `& 0o077 == 0`), as
//!   Guix's daemon demands of `signing-key.sec` (guix-spec §2.4 step 4); otherwise reading fails
//!   with Guix's message plus the mode. Nix keys go through the same check here.
//! - [`write_atomically`]: temporary file in the same directory, `fsync`, `rename` over the
//!   target, `fsync` of the directory. Readers see the old or the new file, never a mix.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Why a key file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// IO error on the file.
    #[error("reading key file `{path}': {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Group or others may access the file.
    #[error(
        "file `{path}' should be secret (inaccessible to everybody else)! (its mode is {mode:04o})"
    )]
    NotSecret { path: PathBuf, mode: u32 },
    /// `generate_guix_key_pair` found an existing key.
    #[error("key pair exists under '{}'; remove it first", dir.display())]
    Exists { dir: PathBuf },
    /// The contents are not a Guix key.
    #[error("key file `{path}': {source}")]
    Guix { path: PathBuf, source: crate::guix::KeyError },
    /// The contents are not a Nix key.
    #[error("key file `{path}': {source}")]
    Nix { path: PathBuf, source: crate::nix::NixKeyError },
}

/// Read a secret key file after checking that only its owner can access it.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let io_err = |source| KeyFileError::Io { path: path.to_owned(), source };
    let mut file = fs::File::open(path).map_err(io_err)?;
    // Check the opened file (not the path), so a swap between check and read is harmless.
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::NotSecret { path: path.to_owned(), mode });
    }
    let mut buf = Zeroizing::new(Vec::new());
    file.read_to_end(&mut buf).map_err(io_err)?;
    Ok(buf)
}

/// Load a Guix secret key file (`signing-key.sec`).
pub fn load_guix_signing_key(path: &Path) -> Result<crate::guix::SigningKey, KeyFileError> {
    let bytes = read_secret_file(path)?;
    crate::guix::SigningKey::from_text(&bytes)
        .map_err(|source| KeyFileError::Guix { path: path.to_owned(), source })
}

/// Load a Guix public key file (`signing-key.pub`; no mode check).
pub fn load_guix_verifying_key(path: &Path) -> Result<crate::guix::VerifyingKey, KeyFileError> {
    let bytes =
        fs::read(path).map_err(|source| KeyFileError::Io { path: path.to_owned(), source })?;
    crate::guix::VerifyingKey::from_text(&bytes)
        .map_err(|source| KeyFileError::Guix { path: path.to_owned(), source })
}

/// Load a Nix secret key file (`name:base64`).
pub fn load_nix_signing_key(path: &Path) -> Result<crate::nix::SigningKey, KeyFileError> {
    let bytes = read_secret_file(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| KeyFileError::Nix {
        path: path.to_owned(),
        source: crate::nix::NixKeyError::Format { what: "secret key" },
    })?;
    crate::nix::SigningKey::parse(text)
        .map_err(|source| KeyFileError::Nix { path: path.to_owned(), source })
}

/// Create `signing-key.sec` (mode 0400) and `signing-key.pub` (mode 0444) in `dir`, as
/// `guix archive --generate-key` does with its default parameters. Refuses if either exists.
pub fn generate_guix_key_pair<R: rand::RngCore + rand::CryptoRng>(
    dir: &Path,
    rng: &mut R,
) -> Result<crate::guix::SigningKey, KeyFileError> {
    let sec = dir.join("signing-key.sec");
    let public = dir.join("signing-key.pub");
    if sec.symlink_metadata().is_ok() || public.symlink_metadata().is_ok() {
        return Err(KeyFileError::Exists { dir: dir.to_owned() });
    }
    let key = crate::guix::SigningKey::generate(rng);
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyFileError::Io { path, source }
    };
    write_atomically_with_mode(&sec, &key.to_key_file(), 0o400).map_err(io_err(&sec))?;
    write_atomically_with_mode(&public, &key.verifying_key().to_key_file(), 0o444)
        .map_err(io_err(&public))?;
    Ok(key)
}

/// What [`authorize_key_in_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizeOutcome {
    /// The key was added (false: it was already there and the file was not rewritten).
    pub added: bool,
    /// The ACL was a symbolic link and was replaced by a regular file (Guix warns
    /// `replacing symbolic link … with a regular file`).
    pub replaced_symlink: bool,
}

/// Why an ACL file could not be updated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AclFileError {
    /// IO error on the file.
    #[error("ACL `{path}': {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file is not a valid ACL, or the key is not a public key.
    #[error("ACL `{path}': {source}")]
    Acl { path: PathBuf, source: crate::acl::AclError },
}

/// Read the ACL at `path` (a missing file is the empty ACL, as for `guix archive --authorize`).
pub fn read_acl(path: &Path) -> Result<crate::acl::Acl, AclFileError> {
    match fs::read(path) {
        Ok(bytes) => crate::acl::Acl::parse(&bytes)
            .map_err(|source| AclFileError::Acl { path: path.to_owned(), source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(crate::acl::Acl::new()),
        Err(source) => Err(AclFileError::Io { path: path.to_owned(), source }),
    }
}

/// `guix archive --authorize`: add `public_key` to the ACL file at `path`, rewriting it
/// atomically only if the key is new.
pub fn authorize_key_in_file(
    path: &Path,
    public_key: crate::sexp::Sexp,
) -> Result<AuthorizeOutcome, AclFileError> {
    let mut acl = read_acl(path)?;
    let acl_err = |source| AclFileError::Acl { path: path.to_owned(), source };
    if !acl.authorize(public_key).map_err(acl_err)? {
        return Ok(AuthorizeOutcome { added: false, replaced_symlink: false });
    }
    let replaced_symlink = path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
    let mode = if replaced_symlink {
        0o644
    } else {
        fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777)
    };
    write_atomically_with_mode(path, &acl.to_text(), mode)
        .map_err(|source| AclFileError::Io { path: path.to_owned(), source })?;
    Ok(AuthorizeOutcome { added: true, replaced_symlink })
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, `fsync`,
/// `rename` over `path`, then `fsync` of the directory. The file keeps the permissions of the
/// file it replaces, or gets `0644` if there was none (an ACL, a public key); use
/// [`write_atomically_with_mode`] for secrets.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mode = match fs::metadata(path) {
        Ok(m) if m.is_file() => m.permissions().mode() & 0o7777,
        _ => 0o644,
    };
    write_atomically_with_mode(path, bytes, mode)
}

/// [`write_atomically`] with an explicit permission `mode` (for example `0o400` for a secret
/// key: the temporary file never has wider permissions than `mode`).
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{}: no file name", path.display()))
    })?;
    let mut n = 0u32;
    let (tmp, mut file) = loop {
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = dir.join(name);
        match fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        // `mode` at creation is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pair_and_acl_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::thread_rng();
        let key = generate_guix_key_pair(dir.path(), &mut rng).unwrap();
        let sec = dir.path().join("signing-key.sec");
        assert_eq!(fs::metadata(&sec).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(load_guix_signing_key(&sec).unwrap().verifying_key(), key.verifying_key());
        let public = load_guix_verifying_key(&dir.path().join("signing-key.pub")).unwrap();
        assert_eq!(&public, key.verifying_key());
        let e = generate_guix_key_pair(dir.path(), &mut rng).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("key pair exists under '{}'; remove it first", dir.path().display())
        );

        // ACL: missing file = empty; add; add again = no rewrite; a symlink is replaced.
        let acl_path = dir.path().join("acl");
        assert_eq!(read_acl(&acl_path).unwrap(), crate::acl::Acl::new());
        let out = authorize_key_in_file(&acl_path, public.to_sexp()).unwrap();
        assert_eq!(out, AuthorizeOutcome { added: true, replaced_symlink: false });
        let out = authorize_key_in_file(&acl_path, public.to_sexp()).unwrap();
        assert!(!out.added);
        assert!(read_acl(&acl_path).unwrap().is_authorized(&public.to_sexp()));
        let store_acl = dir.path().join("store-acl");
        fs::rename(&acl_path, &store_acl).unwrap();
        std::os::unix::fs::symlink(&store_acl, &acl_path).unwrap();
        let other = crate::guix::SigningKey::generate(&mut rng);
        let out = authorize_key_in_file(&acl_path, other.verifying_key().to_sexp()).unwrap();
        assert_eq!(out, AuthorizeOutcome { added: true, replaced_symlink: true });
        assert!(!fs::symlink_metadata(&acl_path).unwrap().file_type().is_symlink());
        assert_eq!(read_acl(&acl_path).unwrap().keys().len(), 2);
        assert_eq!(read_acl(&store_acl).unwrap().keys().len(), 1, "the link target is untouched");
    }

    #[test]
    fn atomic_write_and_mode_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("signing-key.sec");
        let mut rng = rand::thread_rng();
        let key = crate::guix::SigningKey::generate(&mut rng);
        write_atomically_with_mode(&p, &key.to_key_file(), 0o400).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o400);
        let loaded = load_guix_signing_key(&p).unwrap();
        assert_eq!(loaded.verifying_key(), key.verifying_key());
        // Overwrite in place, world-readable: refused by name and mode.
        write_atomically_with_mode(&p, &key.to_key_file(), 0o644).unwrap();
        let err = load_guix_signing_key(&p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("should be secret (inaccessible to everybody else)!"), "{msg}");
        assert!(msg.contains(&p.display().to_string()) && msg.contains("0644"), "{msg}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read_secret_file(&p), Err(KeyFileError::NotSecret { mode: 0o640, .. })));
        write_atomically(&p, b"x").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        // No stray temporary files.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
