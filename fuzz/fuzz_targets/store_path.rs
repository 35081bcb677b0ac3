//! Arbitrary strings as store paths: no panic, and whatever parses prints back identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nar_core::store_path::StoreDir;

fuzz_target!(|text: &str| {
    for dir in [StoreDir::guix(), StoreDir::nix()] {
        if let Ok(path) = dir.parse_path(text) {
            assert_eq!(path.to_absolute(&dir), text.trim_end_matches('/'));
            assert_eq!(path.hash_part().len(), 32);
        }
        if let Ok((item, rest)) = dir.split_path(text) {
            assert!(text.starts_with(&item.to_absolute(&dir)));
            assert!(rest.is_empty() || rest.starts_with('/'));
        }
    }
    let _ = nar_core::base32::decode(text);
    let _ = nar_core::hash::Sha256Hash::parse(text);
});
