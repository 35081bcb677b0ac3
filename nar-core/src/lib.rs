//! # nar-core
//!
//! The nix-archive-1 format (NAR) shared by Nix and Guix, and the store-path arithmetic around it.

pub mod base32;
pub mod decode;
pub mod dump;
pub mod encode;
pub mod error;
pub mod hash;
pub mod pipe;
pub mod read;
pub mod restore;
pub mod store_path;
#[doc(hidden)]
pub mod testdata;
pub mod wire;
pub mod write;
