//! The deployment file parser (`deploy::deployment::Deployment::parse`): arbitrary text as a
//! deployment file, in an environment where only `HOME` is set (the examples, the seeds, then
//! parse all the way).
//!
//! Invariants: no panic (TOML errors, unknown fields, bad values and references all become
//! `DeploymentError`s), and every error formats.
#![no_main]

use std::path::Path;

use deploy::deployment::Deployment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |var: &str| (var == "HOME").then(|| "/home/fuzz".into());
    if let Err(e) = Deployment::parse(Path::new("/fuzz/deploy.toml"), text, &env) {
        let _ = e.to_string();
    }
});
