//! # nar-core
//!
//! The nix-archive-1 format (NAR) shared by Nix and Guix, and the store-path arithmetic around it.
//! Placeholder while the encoder and decoder land.

pub mod base32;
pub mod hash;
pub mod store_path;
