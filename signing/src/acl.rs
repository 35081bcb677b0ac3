//! Guix's access-control list (`/etc/guix/acl`) and the full signature check (guix-spec §3.5,
//! §3.6).
//!
//! # Format
//! ```text
//! (acl (entry (public-key …) (tag (guix import))) …)
//! ```
//! written in libgcrypt's advanced layout; the empty ACL is `(acl)`. Any other shape is
//! `invalid access-control list`, as in Guix's `acl->public-keys`.
//!
//! # Matching
//! A key is authorized when its `(public-key …)` S-expression is **structurally equal** to an
//! entry's (atoms compared byte for byte, layout ignored). There is no fingerprint: a key with
//! extra elements such as `(flags …)` is a different key.
//!
//! # Verification order ([`Acl::check_signature`], Guix `%signature-status`)
//! 1. `data` and `public-key` present, else `corrupt signature data: …`;
//! 2. key in the ACL, else `unauthorized public key: …`;
//! 3. signed hash equals the actual hash, else the "Trojan horse" message;
//! 4. cryptographic check, else `invalid signature: …`.

use crate::guix::Signature;
use crate::sexp::Sexp;

/// Why ACL text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// Not an S-expression.
    #[error("invalid access-control list: {0}")]
    Sexp(#[from] crate::sexp::SexpError),
    /// Not `(acl (entry KEY (tag (guix import))) …)`.
    #[error("invalid access-control list")]
    Shape,
    /// [`Acl::authorize`] was given something that is not `(public-key …)`.
    #[error("s-expression does not denote a public key")]
    NotAPublicKey,
}

/// Why a Guix signature was not accepted, in the order Guix checks (messages as Guix prints
/// them, guix-spec §2.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The `data` or `public-key` part is missing.
    #[error("corrupt signature data: {sexp}")]
    Corrupt {
        /// The signature, in advanced form.
        sexp: String,
    },
    /// The signing key is not in the ACL.
    #[error("unauthorized public key: {key}")]
    Unauthorized {
        /// The key, in advanced form.
        key: String,
    },
    /// The signed hash is not the hash of what was received.
    #[error(
        "signed hash doesn't match actual contents of imported archive; archive could be corrupt, or someone is trying to import a Trojan horse"
    )]
    HashMismatch,
    /// The cryptographic check failed.
    #[error("invalid signature: {sexp}")]
    Invalid {
        /// The signature, in advanced form.
        sexp: String,
    },
}

fn tag_guix_import() -> Sexp {
    Sexp::list(vec![Sexp::atom("tag"), Sexp::list(vec![Sexp::atom("guix"), Sexp::atom("import")])])
}

/// The set of public keys trusted for import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    keys: Vec<Sexp>,
}

impl Acl {
    /// The empty ACL `(acl)`: every import is refused.
    pub fn new() -> Self {
        Acl::default()
    }

    /// Parse ACL text (any S-expression form).
    pub fn parse(text: &[u8]) -> Result<Self, AclError> {
        Self::from_sexp(&Sexp::parse(text)?)
    }

    /// From a parsed S-expression.
    pub fn from_sexp(sexp: &Sexp) -> Result<Self, AclError> {
        let items = sexp.as_list().ok_or(AclError::Shape)?;
        if items.first().and_then(Sexp::as_atom) != Some(b"acl") {
            return Err(AclError::Shape);
        }
        let tag = tag_guix_import();
        let mut keys = Vec::new();
        for entry in &items[1..] {
            match entry.as_list() {
                Some([head, key, t]) if head.as_atom() == Some(b"entry") && *t == tag => {
                    keys.push(key.clone())
                }
                _ => return Err(AclError::Shape),
            }
        }
        Ok(Acl { keys })
    }

    /// The authorized keys' S-expressions.
    pub fn keys(&self) -> &[Sexp] {
        &self.keys
    }

    /// Whether `public_key` (a `(public-key …)` S-expression) is structurally equal to an entry.
    pub fn is_authorized(&self, public_key: &Sexp) -> bool {
        self.keys.iter().any(|k| k == public_key)
    }

    /// Add a key (as `guix archive --authorize` does: it must be a `(public-key …)` list;
    /// duplicates are not added). Returns whether the ACL changed.
    pub fn authorize(&mut self, public_key: Sexp) -> Result<bool, AclError> {
        if public_key.head() != Some(b"public-key") {
            return Err(AclError::NotAPublicKey);
        }
        if self.is_authorized(&public_key) {
            return Ok(false);
        }
        self.keys.push(public_key);
        Ok(true)
    }

    /// Remove a key; returns whether it was there.
    pub fn revoke(&mut self, public_key: &Sexp) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k != public_key);
        before != self.keys.len()
    }

    /// `(acl (entry KEY (tag (guix import))) …)`.
    pub fn to_sexp(&self) -> Sexp {
        let mut items = vec![Sexp::atom("acl")];
        for k in &self.keys {
            items.push(Sexp::list(vec![Sexp::atom("entry"), k.clone(), tag_guix_import()]));
        }
        Sexp::List(items)
    }

    /// The file text in libgcrypt's advanced layout, as Guix writes `/etc/guix/acl`.
    pub fn to_text(&self) -> Vec<u8> {
        self.to_sexp().to_advanced()
    }

    /// Check a Guix signature over `actual_digest` in Guix's order (module docs). On success,
    /// returns the signer's `(public-key …)` S-expression.
    pub fn check_signature<'s>(
        &self,
        signature: &'s Signature,
        actual_digest: &[u8; 32],
    ) -> Result<&'s Sexp, SignatureError> {
        let sexp_text = || signature.to_string();
        let (Some(_), Some(key)) = (signature.data_sexp(), signature.public_key_sexp()) else {
            return Err(SignatureError::Corrupt { sexp: sexp_text() });
        };
        if !self.is_authorized(key) {
            return Err(SignatureError::Unauthorized { key: key.to_string() });
        }
        if signature.digest().as_ref() != Some(actual_digest) {
            return Err(SignatureError::HashMismatch);
        }
        if !signature.verify() {
            return Err(SignatureError::Invalid { sexp: sexp_text() });
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guix::SigningKey;

    #[test]
    fn parse_authorize_check() {
        assert_eq!(Acl::parse(b"(acl)").unwrap(), Acl::new());
        assert_eq!(
            Acl::parse(b"(acl (entry (public-key) (tag (guix export))))"),
            Err(AclError::Shape)
        );
        assert_eq!(Acl::parse(b"(lca)"), Err(AclError::Shape));
        let mut rng = rand::thread_rng();
        let key = SigningKey::generate(&mut rng);
        let other = SigningKey::generate(&mut rng);
        let mut acl = Acl::new();
        assert_eq!(
            acl.authorize(Sexp::parse(b"(private-key)").unwrap()),
            Err(AclError::NotAPublicKey)
        );
        assert!(acl.authorize(key.verifying_key().to_sexp()).unwrap());
        assert!(!acl.authorize(key.verifying_key().to_sexp()).unwrap());
        let text = acl.to_text();
        assert!(
            text.starts_with(b"(acl \n (entry \n  (public-key \n   (ecc \n    (curve Ed25519)\n")
        );
        assert!(text.ends_with(b"  (tag \n   (guix import)\n   )\n  )\n )\n"));
        let acl = Acl::parse(&text).unwrap();
        assert_eq!(acl.keys().len(), 1);

        let digest = [7u8; 32];
        let sig = key.sign(&digest);
        assert!(acl.check_signature(&sig, &digest).is_ok());
        assert_eq!(acl.check_signature(&sig, &[8u8; 32]), Err(SignatureError::HashMismatch));
        let bad = other.sign(&digest);
        let e = acl.check_signature(&bad, &digest).unwrap_err();
        assert!(e.to_string().starts_with("unauthorized public key: (public-key \n"), "{e}");
        let no_data = Signature::from_sexp(Sexp::list(vec![
            Sexp::atom("signature"),
            key.verifying_key().to_sexp(),
        ]));
        assert!(acl
            .check_signature(&no_data, &digest)
            .unwrap_err()
            .to_string()
            .starts_with("corrupt signature data: "));
        // A signature from `key` but whose value is another key's (authorized key, bad sig).
        let bad_sv = bad.as_sexp().find_token("sig-val").unwrap().clone();
        let mut items = sig.as_sexp().as_list().unwrap().to_vec();
        items[2] = bad_sv;
        let forged = Sexp::List(items).to_advanced();
        let forged = Signature::parse(&forged).unwrap();
        assert!(matches!(
            acl.check_signature(&forged, &digest),
            Err(SignatureError::Invalid { .. })
        ));
    }
}
