//! Not built yet: see the issue that introduces this crate.
