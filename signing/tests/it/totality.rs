//! The S-expression parser and the bundle reader are total: any input gives `Ok` or `Err`,
//! never a panic; and what the writers produce reads back unchanged.

use nar_core::store_path::StoreDir;
use proptest::prelude::*;
use signing::acl::Acl;
use signing::bundle::{BundleReader, BundleWriter, ItemMeta};
use signing::guix::{Signature, SigningKey, VerifyingKey};
use signing::Sexp;

fn sexp_strategy() -> impl Strategy<Value = Sexp> {
    let atom = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[a-z][a-z0-9-]{0,10}".prop_map(String::into_bytes),
        "[ -~]{0,20}".prop_map(String::into_bytes),
    ]
    .prop_map(Sexp::Atom);
    atom.prop_recursive(6, 64, 8, |inner| {
        proptest::collection::vec(inner, 0..8).prop_map(Sexp::List)
    })
}

fn read_all(bytes: &[u8]) {
    let dir = StoreDir::guix();
    let mut r = BundleReader::new(bytes, dir.clone());
    let acl = Acl::new();
    for _ in 0..64 {
        match r.next_item() {
            Ok(Some((item, _))) => {
                let _ = item.verify(&acl, &dir);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

fn signed_bundle() -> (Vec<u8>, SigningKey) {
    let key = SigningKey::from_ecdsa_bytes(&[0x42; 32]).unwrap();
    let dir = StoreDir::guix();
    let mut w = BundleWriter::new(Vec::new(), dir.clone());
    let meta = ItemMeta {
        path: dir.parse_path("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt").unwrap(),
        references: vec![],
        deriver: None,
    };
    w.write_signed(&meta, &mut &nar_core::testdata::hello_nar()[..], &key).unwrap();
    (w.finish().unwrap(), key)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn sexp_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(s) = Sexp::parse(&bytes) {
            prop_assert_eq!(Sexp::parse(&s.to_canonical()).unwrap(), s.clone());
            prop_assert_eq!(Sexp::parse(&s.to_advanced()).unwrap(), s);
        }
    }

    #[test]
    fn sexp_text_like_inputs(text in "[()#|\"\\\\a-z0-9: \\[\\]\n]{0,80}") {
        let _ = Sexp::parse(text.as_bytes());
        let _ = VerifyingKey::from_text(text.as_bytes());
        let _ = SigningKey::from_text(text.as_bytes());
        let _ = Acl::parse(text.as_bytes());
        if let Ok(sig) = Signature::parse(text.as_bytes()) {
            let _ = sig.verify();
        }
    }

    #[test]
    fn sexp_writers_round_trip(s in sexp_strategy()) {
        prop_assert_eq!(Sexp::parse(&s.to_canonical()).unwrap(), s.clone());
        prop_assert_eq!(Sexp::parse(&s.to_advanced()).unwrap(), s);
    }

    #[test]
    fn bundle_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        read_all(&bytes);
    }
}

type Good = (Vec<u8>, Acl, signing::bundle::VerifiedItem, Vec<u8>);

static GOOD: std::sync::LazyLock<Good> = std::sync::LazyLock::new(|| {
    let (good, key) = signed_bundle();
    let mut acl = Acl::new();
    acl.authorize(key.verifying_key().to_sexp()).unwrap();
    let dir = StoreDir::guix();
    let mut original = BundleReader::new(&good[..], dir.clone());
    let (item, nar) = original.next_item().unwrap().unwrap();
    let verified = item.verify(&acl, &dir).unwrap();
    (good, acl, verified, nar)
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Any single corrupted byte of a signed bundle: no panic, and if it still verifies, it
    /// describes the same item with the same contents.
    #[test]
    fn mutated_bundle_never_verifies_as_something_else(at in 0usize..672, value in any::<u8>()) {
        let (good, acl, orig, orig_nar) = &*GOOD;
        let dir = StoreDir::guix();

        let mut bad = good.clone();
        bad[at] = value;
        let mut r = BundleReader::new(&bad[..], dir.clone());
        if let Ok(Some((item, nar))) = r.next_item() {
            if let Ok(v) = item.verify(acl, &dir) {
                prop_assert_eq!(&v.info.path, &orig.info.path);
                prop_assert_eq!(&v.info.references, &orig.info.references);
                prop_assert_eq!(&v.info.deriver, &orig.info.deriver);
                prop_assert_eq!(&nar, orig_nar);
            }
        }
    }
}
