//! Arbitrary bytes as an export bundle (`nix-store --export` / `guix archive --export`).
//! Invariants: no panic, and no item verifies against an empty ACL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nar_core::store_path::StoreDir;
use signing::acl::Acl;
use signing::bundle::BundleReader;

fuzz_target!(|data: &[u8]| {
    let dir = StoreDir::guix();
    let acl = Acl::new();
    let mut reader = BundleReader::new(data, dir.clone());
    while let Ok(Some((item, _nar))) = reader.next_item() {
        assert!(item.verify(&acl, &dir).is_err(), "an item verified with no authorized key");
    }
});
