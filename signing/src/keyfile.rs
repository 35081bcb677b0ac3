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
