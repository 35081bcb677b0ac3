//! The `ferry host` line protocol (`proto::session`): arbitrary text as host output lines
//! (`HostLine`), session request lines (`SessionRequest`) and confirmation markers.
//!
//! Input: UTF-8 text (other bytes are replaced), cut into lines at `\n`; each line goes through
//! every parser. Invariants: no panic; whatever parses encodes to one line (the request line
//! with exactly its final newline) that parses back to the same value, and the encoding of a
//! parsed host line is stable; a parsed confirmation marker round-trips through
//! `encode_answer`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::session::{encode_answer, parse_answer, valid_token, HostLine, SessionRequest};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if let Some(parsed) = HostLine::parse(line) {
            let encoded = parsed.encode();
            assert!(!encoded.contains('\n'), "host line encodes to several lines: {encoded:?}");
            let again = HostLine::parse(&encoded).expect("an encoded host line parses");
            assert_eq!(again.encode(), encoded, "host line encoding is not stable");
            if let HostLine::Confirm { token, .. } = &again {
                assert!(valid_token(token));
            }
        }
        if let Ok(request) = SessionRequest::parse(line) {
            let encoded = request.encode();
            assert_eq!(encoded.matches('\n').count(), 1, "{encoded:?}");
            let body = encoded.strip_suffix('\n').expect("the request line ends in a newline");
            assert_eq!(SessionRequest::parse(body), Ok(request));
        }
    }
    match parse_answer(&text) {
        Some(Ok(())) => assert_eq!(parse_answer(&encode_answer(None)), Some(Ok(()))),
        Some(Err(why)) => {
            assert_eq!(parse_answer(&encode_answer(Some(&why))), Some(Err(why.replace('\n', " "))))
        }
        None => {}
    }
});
