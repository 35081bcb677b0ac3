//! # proto
//!
//! The ferry protocol without IO: what the coordinator and a host's agent say to each other,
//! as bytes and as state machines. Nothing here opens a file, a socket or a process; the
//! `transfer` crate drives these types over its transports, and the fuzz targets drive them
//! with arbitrary bytes.
//!
//! | module | what |
//! |---|---|
//! | [`frame`] | the frame grammar (the table of frames and the conversation), [`frame::Frame`] encoding, the incremental [`frame::FrameDecoder`] that takes a peer's untrusted bytes |
//! | [`peer`] | [`peer::CoordinatorState`] and [`peer::AgentState`]: which frame is allowed when; version negotiation |
//! | [`io`] | blocking adapters over any `Read`/`Write`: frame reader and writer, one path's data as a stream, byte counters |
//! | [`uri`] | copy targets as URIs: `ssh://`, `local://`, `nix+ssh://`, `file://` |
//! | [`text`] | [`text::peer_text`]: a peer's messages and stderr, length-capped and with control characters escaped, before anything shows them |
//! | [`session`] | the `ferry host …` line protocol of a deploy: facts, copy, activate, confirm, roll back, generations, exec |
//! | [`nix_serve`] | Nix's legacy serve protocol (`nix-store --serve --write`): handshake, op codes, integers and strings, the AddToStoreNar request |
//!
//! A conversation, sans IO:
//! ```
//! use proto::frame::{Frame, FrameDecoder, Hello};
//!
//! let mut wire = Vec::new();
//! Frame::Hello(Hello::ours()).encode(&mut wire);
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&wire);
//! assert!(matches!(decoder.next_frame(), Ok(Some(Frame::Hello(_)))));
//! ```

pub mod frame;
pub mod io;
pub mod nix_serve;
pub mod peer;
pub mod session;
pub mod text;
pub mod uri;
