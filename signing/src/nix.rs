//! Nix binary-cache signatures: Ed25519 keys and narinfo `Sig:` lines.
//!
//! # Formats
//! - **Secret key** (`nix-store --generate-binary-cache-key NAME SK PK` writes it, no newline):
//!   `NAME:base64(seed ‖ public)`, 64 bytes before base64.
//! - **Public key**: `NAME:base64(public)`, 32 bytes.
//! - **Signature** (a narinfo `Sig:` value, `nix path-info --sigs`): `NAME:base64(sig)`, 64 bytes.
//! - **Fingerprint** (what is signed, Nix `ValidPathInfo::fingerprint`):
//!   `1;<abs path>;sha256:<nix32 NAR hash>;<NAR size>;<abs ref>,<abs ref>,…` with the references
//!   sorted as strings.
//!
//! Verification uses `ed25519-dalek`'s `verify_strict` (no malleable or small-order signatures);
//! a signature only counts if its key name matches the key's.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use ed25519_dalek::Signer as _;
use nar_core::hash::Sha256Hash;
use nar_core::store_path::{StoreDir, StorePath};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a key or signature string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NixKeyError {
    /// No `:` separator, or an empty name.
    #[error("{what}: expected `name:base64`")]
    Format { what: &'static str },
    /// The payload is not base64.
    #[error("{what} {name:?}: payload is not valid base64")]
    Base64 { what: &'static str, name: String },
    /// The payload has the wrong length.
    #[error("{what} {name:?}: payload is {actual} bytes, expected {expected}")]
    Length { what: &'static str, name: String, expected: usize, actual: usize },
    /// The public half of a secret key does not match its seed.
    #[error("secret key {name:?}: public half does not match the seed")]
    Mismatch { name: String },
    /// Not a valid Ed25519 public key.
    #[error("public key {name:?}: not a valid Ed25519 point")]
    BadPoint { name: String },
}

fn split<'a>(s: &'a str, what: &'static str) -> Result<(&'a str, &'a str), NixKeyError> {
    let (name, payload) = s.trim().split_once(':').ok_or(NixKeyError::Format { what })?;
    if name.is_empty() {
        return Err(NixKeyError::Format { what });
    }
    Ok((name, payload))
}

fn decode<const N: usize>(
    name: &str,
    payload: &str,
    what: &'static str,
) -> Result<zeroize::Zeroizing<[u8; N]>, NixKeyError> {
    let bytes = zeroize::Zeroizing::new(
        B64.decode(payload).map_err(|_| NixKeyError::Base64 { what, name: name.to_owned() })?,
    );
    let arr: [u8; N] = bytes.as_slice().try_into().map_err(|_| NixKeyError::Length {
        what,
        name: name.to_owned(),
        expected: N,
        actual: bytes.len(),
    })?;
    Ok(zeroize::Zeroizing::new(arr))
}

/// A Nix secret key. `Debug` shows only the name and public key; the secret is zeroized on drop
/// (by `ed25519-dalek`).
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Avoids printing the secret.
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("public", &self.verifying_key().to_string())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key.
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(name: &str, rng: &mut R) -> Self {
        SigningKey { name: name.to_owned(), key: ed25519_dalek::SigningKey::generate(rng) }
    }

    /// Parse `name:base64(seed ‖ public)` (the file `nix-store --generate-binary-cache-key`
    /// writes; surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self, NixKeyError> {
        let what = "secret key";
        let (name, payload) = split(text, what)?;
        let bytes = decode::<64>(name, payload, what)?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| NixKeyError::Mismatch { name: name.to_owned() })?;
        Ok(SigningKey { name: name.to_owned(), key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// The secret-key file text `name:base64(seed ‖ public)` (no newline, as Nix writes it).
    pub fn to_keyfile_string(&self) -> zeroize::Zeroizing<String> {
        let bytes = zeroize::Zeroizing::new(self.key.to_keypair_bytes());
        zeroize::Zeroizing::new(format!("{}:{}", self.name, B64.encode(*bytes)))
    }

    /// Sign a fingerprint (see [`fingerprint`]).
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature { name: self.name.clone(), sig: self.key.sign(fingerprint.as_bytes()) }
    }
}

impl ed25519_dalek::Signer<ed25519_dalek::Signature> for SigningKey {
    fn try_sign(
        &self,
        msg: &[u8],
    ) -> Result<ed25519_dalek::Signature, ed25519_dalek::SignatureError> {
        self.key.try_sign(msg)
    }
}

/// A Nix public key `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifyingKey {
    /// Parse `name:base64(public)`.
    pub fn parse(text: &str) -> Result<Self, NixKeyError> {
        let what = "public key";
        let (name, payload) = split(text, what)?;
        let bytes = decode::<32>(name, payload, what)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| NixKeyError::BadPoint { name: name.to_owned() })?;
        Ok(VerifyingKey { name: name.to_owned(), key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Whether `sig` is this key's valid signature of `fingerprint`: the names must match and
    /// the signature must pass `verify_strict`.
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        sig.name == self.name && self.key.verify_strict(fingerprint.as_bytes(), &sig.sig).is_ok()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

impl FromStr for VerifyingKey {
    type Err = NixKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A narinfo signature `name:base64(64 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    name: String,
    sig: ed25519_dalek::Signature,
}

impl Signature {
    /// Parse `name:base64(sig)`.
    pub fn parse(text: &str) -> Result<Self, NixKeyError> {
        let what = "signature";
        let (name, payload) = split(text, what)?;
        let bytes = decode::<64>(name, payload, what)?;
        Ok(Signature { name: name.to_owned(), sig: ed25519_dalek::Signature::from_bytes(&bytes) })
    }

    /// The name of the key that made it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.sig.to_bytes()
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.sig.to_bytes()))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = NixKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The narinfo fingerprint Nix signs:
/// `1;<abs path>;sha256:<nix32>;<size>;<comma-separated abs refs, sorted>`.
pub fn fingerprint(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<String> = references.iter().map(|r| r.to_absolute(store_dir)).collect();
    refs.sort();
    refs.dedup();
    format!(
        "1;{};{};{};{}",
        path.to_absolute(store_dir),
        nar_hash.to_typed_nix32(),
        nar_size,
        refs.join(",")
    )
}

/// Sign `fingerprint` with any Ed25519 signer (an agent or HSM standing in for a key file),
/// naming the signature `key_name`.
pub fn sign_with<S>(
    key_name: &str,
    signer: &S,
    fingerprint: &str,
) -> Result<Signature, ed25519_dalek::SignatureError>
where
    S: ed25519_dalek::Signer<ed25519_dalek::Signature> + ?Sized,
{
    Ok(Signature { name: key_name.to_owned(), sig: signer.try_sign(fingerprint.as_bytes())? })
}

/// Whether any of `sigs` is a valid signature of `fingerprint` by any of `keys` (Nix's
/// `checkSignatures` with one signature needed).
pub fn verify_any(keys: &[VerifyingKey], fingerprint: &str, sigs: &[Signature]) -> bool {
    sigs.iter().any(|s| keys.iter().any(|k| k.verify(fingerprint, s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reject() {
        let mut rng = rand::thread_rng();
        let sk = SigningKey::generate("cache.example-1", &mut rng);
        let sk2 = SigningKey::parse(&sk.to_keyfile_string()).unwrap();
        let pk = VerifyingKey::parse(&sk.verifying_key().to_string()).unwrap();
        assert_eq!(sk2.verifying_key(), pk);
        let dir = StoreDir::nix();
        let path = dir.parse_path("/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-hello").unwrap();
        let r1 = dir.parse_path("/nix/store/zzdqa9w1p6cmli6976v4wi0sw9r4p5pr-b").unwrap();
        let r2 = dir.parse_path("/nix/store/11dqa9w1p6cmli6976v4wi0sw9r4p5pr-a").unwrap();
        let fp = fingerprint(&dir, &path, &Sha256Hash::of(b""), 120, &[r1, r2]);
        assert_eq!(
            fp,
            "1;/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-hello;sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;120;/nix/store/11dqa9w1p6cmli6976v4wi0sw9r4p5pr-a,/nix/store/zzdqa9w1p6cmli6976v4wi0sw9r4p5pr-b"
        );
        let sig = sk.sign(&fp);
        assert_eq!(sign_with(sk.name(), &sk, &fp).unwrap(), sig);
        let sig = Signature::parse(&sig.to_string()).unwrap();
        assert!(pk.verify(&fp, &sig));
        assert!(!pk.verify(&format!("{fp}x"), &sig));
        let other = VerifyingKey::parse(&format!(
            "other:{}",
            sk.verifying_key().to_string().split_once(':').unwrap().1
        ))
        .unwrap();
        assert!(!other.verify(&fp, &sig), "name must match");
        assert!(!format!("{sk:?}").contains(sk.to_keyfile_string().split_once(':').unwrap().1));
        assert!(SigningKey::parse("nocolon").is_err());
        assert!(VerifyingKey::parse("x:AAAA").is_err());
    }
}
