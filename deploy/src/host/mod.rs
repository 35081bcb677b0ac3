//! The host side of a deploy: what runs on the host (under `ferry host …`) to activate a
//! generation, wait for confirmation and roll back.

pub mod driver;
