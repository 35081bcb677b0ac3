//! One integration-test binary for `signing` (one link step; modules share helpers).
//!
//! Signing against the real implementations: libgcrypt through guile-gcrypt, Debian's Nix, and the bundle and totality properties.

mod bundle_rejections;
mod guile_interop;
mod nix_interop;
mod timing;
mod totality;
