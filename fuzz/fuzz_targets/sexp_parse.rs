//! Arbitrary bytes into the libgcrypt S-expression parser. Invariants: no panic; whatever parses
//! re-parses from both of its written forms (canonical and advanced) to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signing::Sexp;

fuzz_target!(|data: &[u8]| {
    if let Ok(sexp) = Sexp::parse(data) {
        assert_eq!(Sexp::parse(&sexp.to_canonical()).expect("canonical form re-parses"), sexp);
        assert_eq!(Sexp::parse(&sexp.to_advanced()).expect("advanced form re-parses"), sexp);
    }
});
