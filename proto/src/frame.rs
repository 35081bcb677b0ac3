//! The ferry wire protocol, sans IO: frames, their encoding, and the two peers' state machines.
//!
//! Nothing here reads or writes a socket. [`FrameDecoder`] takes bytes as they arrive and yields
//! [`Frame`]s; [`Frame::encode`] appends a frame's bytes to a buffer; [`CoordinatorState`] and
//! [`AgentState`] check that each frame sent or received is allowed at that point of the
//! conversation. The IO adapters live in [`crate::io`].
//!
//! # Framing
//! ```text
//! frame   = length:u32le  type:u8  payload        ; length = 1 + |payload|, at most MAX_FRAME
//! u8, u32, u64                                    ; little-endian
//! bytes   = len:u32le  byte{len}
//! string  = bytes (UTF-8)
//! list<T> = count:u32le  T{count}
//! opt<T>  = 0:u8 | 1:u8 T
//! hash    = byte{32}                              ; SHA-256 of the NAR
//! path    = string                                ; base name `<hash part>-<name>`; the store
//!                                                 ; dir is agreed in the handshake
//! ```
//!
//! # Frames
//! | type | frame | from | payload |
//! |---|---|---|---|
//! | 0x01 | `Hello` | coordinator | magic:bytes, min_version:u32, max_version:u32, ferry_version:string, features:list<string>, [public_key:bytes — feature `trust`, see below] |
//! | 0x02 | `Welcome` | agent | magic, min_version, max_version, ferry_version, features, store_dir:string, system:string, free_bytes:u64, generation:opt<string> |
//! | 0x03 | `Authorize` | coordinator | public_key:bytes (Guix `(public-key …)` text) |
//! | 0x04 | `Authorized` | agent | added:u8 |
//! | 0x10 | `Query` | coordinator | list<path, hash, nar_size:u64> — the whole closure, at most [`MAX_QUERY_ENTRIES`] (200,000) entries; [graph:list<list<u32>> — feature `graph`, see below] |
//! | 0x11 | `Have` | agent | missing:list<path, resume_from:u64>, bases:list<path, list<path>>, [trusted:u8 — feature `trust`] |
//! | 0x20 | `PathStart` | coordinator | path, hash, nar_size:u64, references:list<path>, deriver:opt<path>, ca:opt<string>, signature:bytes, encoding:u8, offset:u64, [base:path when encoding = 2], [nix_sigs:list<string> — feature `nix-sigs`, when not empty] |
//! | 0x21 | `Data` | coordinator | the rest of the frame: the next bytes of the encoded NAR |
//! | 0x22 | `PathEnd` | coordinator | (empty) |
//! | 0x30 | `Ack` | agent | path, outcome:u8 (0 imported, 1 was valid already) |
//! | 0x31 | `Reject` | agent | path, reason:u8, message:string (cut to [`MAX_PEER_MESSAGE`] bytes and escaped on receipt, [`crate::text`]) |
//! | 0x32 | `Received` | agent | nar_bytes:u64 — feature `progress`, see below |
//! | 0x40 | `Done` | coordinator | (empty): no more paths |
//! | 0x41 | `Bye` | agent | imported:u64, rejected:u64 |
//! | 0x50 | `SendClosure` | coordinator | roots:list<path> — pull: the agent sends their closure |
//! | 0x60 | `Forward` | coordinator | own:opt<list<u32>>, children:list<child> — feature `forward`, see below; child = name:string, uri:string, host_key:string, identity:opt<string>, wants:list<u32>, children:list<child> (at most [`MAX_FORWARD_DEPTH`] levels) |
//! | 0x61 | `Forwarded` | agent | list<name:string, ok:u8, detail:string> — after `Done`, before `Bye`: each host below the relay, reached or not |
//! | 0x7f | `Error` | either | message:string (cut and escaped like `Reject`'s); the sender closes the session |
//!
//! # Conversation
//! ```text
//! coordinator                                agent
//!   Hello                               ──►
//!                                       ◄──  Welcome            (or Error: version mismatch)
//!   [Authorize                          ──►
//!                                       ◄──  Authorized]
//!   Query{whole closure}                ──►
//!                                       ◄──  Have{missing, resume offsets, bases}
//!   (PathStart Data* PathEnd)*          ──►  pipelined: no wait per path
//!                                       ◄──  Ack | Reject        (as each path lands)
//!   Done                                ──►
//!                                       ◄──  Bye
//! ```
//! **Pull** (`ferry copy --from`, agents offering the feature `send`): right after the handshake
//! the coordinator sends `SendClosure{roots}` instead of `Query`. The roles then swap on the same
//! stream: the agent becomes the coordinator of a push of the roots' closure from its store,
//! starting with its own `Hello`, and the side that asked serves it exactly as an agent does
//! (the diff against its store, signatures checked against its ACL, NAR hashes, batched
//! registration, `Ack`/`Reject`, `Bye`). The paths are signed with the sending host's key
//! (`<state>/signing-key.sec` there), which the receiving side must have authorized.
//! ```text
//!   Hello ──► ◄── Welcome   SendClosure{roots} ──►
//!   ◄── Hello   Welcome ──►   ◄── Query   Have ──►   ◄── (PathStart Data* PathEnd)*   Ack ──► …
//! ```
//!
//! The diff is one round trip. Path data is pipelined; the agent acknowledges each path once it
//! is registered, or rejects it with a [`RejectReason`] and goes on with the next.
//!
//! `PathStart.encoding` is [`Encoding::Zstd`] (one zstd stream per path), [`Encoding::None`], or
//! [`Encoding::ZstdDelta`] (2, followed by the base path): the data is a delta stream
//! ([`crate::delta`]: zstd frames with the base's NAR as reference prefix).
//!
//! # Deltas (feature `delta`)
//! When both peers announce `delta`, the agent's `Have.bases` names, for each missing path, the
//! valid paths of its store it offers as delta bases, best first ([`crate::delta_path`]). The
//! coordinator may then send a missing path as [`Encoding::ZstdDelta`] against one of them that
//! it can also read locally (only with `offset` 0). The agent rebuilds the base's NAR from its
//! store, checks it against the NAR hash its database records, applies the delta and checks
//! the new NAR's hash as for any path. Any failure of the delta (base missing or corrupt on the
//! host, bad stream) is a `Reject` with [`RejectReason::DeltaFailed`]; the coordinator then waits
//! for all answers, sends those paths in full (with the paths refused for a missing reference
//! meanwhile) and only then `Done`. Peers without `delta` send empty `bases` and never see
//! encoding 2 or reason 8.
//!
//! # Reference graph (feature `graph`)
//! When the agent announces `graph` and the coordinator offers deltas, the `Query` carries the
//! closure's reference graph after its list of entries: one `list<u32>` per entry, in the same
//! order, holding the indexes (into the entry list) of that entry's references other than itself.
//! The section is present exactly when some entry has a reference; a decoder seeing bytes after
//! the entries reads it, and refuses a count other than the entry count, an index out of range
//! or an entry naming itself ([`ProtocolError::Malformed`]). With it the agent pairs the new
//! closure with the closure of its current generation and offers, in `Have.bases`, the path at
//! the same place as a base even when it was renamed ([`crate::delta_path`]). Indexes, not
//! paths, keep the section small: 4 bytes per edge plus 4 per entry. Peers without `graph` send
//! and receive the `Query` exactly as before (a coordinator never sends the section to an agent
//! that did not announce `graph`: older decoders refuse trailing bytes).
//! `PathStart.offset` is the number of NAR bytes the agent already holds for that path (the
//! `resume_from` it announced in `Have`); the data then carries the NAR from that byte on.
//! `signature` is a Guix signature S-expression over SHA-256 of the path's Nix narinfo
//! fingerprint (`1;<abs path>;sha256:<nix32>;<size>;<abs refs>`), so it covers the path, its NAR
//! hash and size, and its references.
//!
//! # Trust (feature `trust`)
//! A coordinator offering `trust` appends its public key (Guix `(public-key …)` text) to its
//! `Hello`. An agent that offers `trust` too and sees the key appends one byte to its `Have`:
//! 1 when its ACL holds that key, 0 when not (after any `Authorize` of the session). A
//! coordinator told 0 knows before sending any path data that every path would be refused as
//! `unauthorized-key`: it sends `Done` at once and tells its user how to authorize the key. An
//! older agent ignores the appended key (the `Hello` layout after `features` is open) and sends
//! `Have` as before; an older coordinator sends no key and gets no byte.
//!
//! # Progress (feature `progress`)
//! When the coordinator's `Hello` offers `progress`, the agent tells as path data arrives how
//! much it has: `Received{nar_bytes}`, the NAR bytes of this session's paths it has read and
//! decoded so far (cumulative), at most every [`RECEIVED_EVERY`] bytes or so, between or inside
//! paths. It is a number to show, not a promise: a path is the host's only when acknowledged.
//! Without the feature the coordinator counts the acknowledged paths' sizes instead.
//!
//! # Relays (feature `forward`)
//! An agent announcing `forward` can be a relay (`transfer::fanout`). Right after the handshake
//! (and `Authorize`, which is for the relay's own store only and never travels further), the
//! coordinator sends `Forward`: the hosts the relay feeds (`children`, each with the SSH URI the
//! relay reaches it at, its pinned host key, the identity file *on the relay* to log in with,
//! and its own children), and which entries of the coming `Query` each needs (`wants`: indexes
//! into it; `own`: the relay's own store's, absent for a relay that only forwards). The relay
//! then speaks this protocol as a coordinator to each child, forwarding the coordinator's frames
//! unchanged (`PathStart` with the coordinator's signature, the `Data` as sent): its `Have` is
//! the union of its own and its children's (no resume offsets, no delta bases, so paths come in
//! full), a path's `Ack`/`Reject` is its own store's (a forwarding-only relay acks once every
//! child answered), and after `Done` it reports every host below it in `Forwarded`. Each child
//! checks signatures and hashes itself: a relay can drop or spoil data, never make a host accept
//! it. `Forward` is only sent to an agent that announced `forward`.
//!
//! # Versions
//! Each side sends the range of protocol versions it speaks; the session uses the highest
//! version both speak, and fails with [`ProtocolError::VersionMismatch`] (naming both ranges and
//! both ferry versions) when there is none. The `Hello` and `Welcome` layouts up to
//! `ferry_version` never change. An unknown frame type is an error naming the type and both
//! peers' versions.

use std::fmt;

use nar_core::hash::Sha256Hash;
use nar_core::store_path::StorePath;

use crate::text::{peer_text, MAX_PEER_MESSAGE};

/// Magic in `Hello` and `Welcome`.
pub const MAGIC: &[u8] = b"ferry-protocol";
/// Oldest protocol version this build speaks.
pub const MIN_VERSION: u32 = 1;
/// Newest protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Largest frame (type byte + payload) accepted.
pub const MAX_FRAME: u32 = 64 << 20;
/// Largest first frame accepted before the handshake is done (a peer that is not ferry is
/// caught quickly, with its first bytes shown).
pub const MAX_HANDSHAKE_FRAME: u32 = 64 << 10;
/// Most entries a `Query` may hold: a closure of more paths is refused by the coordinator
/// before it is sent and by the agent's decoder (a hostile `Query` cannot make the agent hold
/// more than this many paths, whatever the frame size allows).
pub const MAX_QUERY_ENTRIES: u32 = 200_000;
/// Size of the `Data` chunks the coordinator sends.
pub const DATA_CHUNK: usize = 128 << 10;
/// Features this build offers: `zstd` (path data may be zstd-compressed), `resume` (partial
/// paths are kept and resumed), `delta` (paths may be sent as delta frames against a base the
/// agent offers in `Have`), `send` (the agent answers `SendClosure`), `graph` (the agent reads
/// the reference graph in `Query` to offer bases at the same place in its current generation).
/// `trust` (the coordinator's key in `Hello`, whether the agent trusts it in `Have`), `progress`
/// (the agent reports the bytes it received: `Received`), `forward` (the agent relays to other
/// hosts, `Forward`/`Forwarded`), `nix-sigs` (`PathStart` carries the sender's Nix signatures).
pub const FEATURES: &[&str] = &[
    "zstd",
    "resume",
    FEATURE_DELTA,
    FEATURE_SEND,
    FEATURE_GRAPH,
    FEATURE_TRUST,
    FEATURE_PROGRESS,
    FEATURE_FORWARD,
    FEATURE_NIX_SIGS,
];
/// The feature name of `PathStart.nix_sigs`.
pub const FEATURE_NIX_SIGS: &str = "nix-sigs";
/// Most Nix signatures a `PathStart` may carry.
pub const MAX_NIX_SIGS: usize = 16;
/// The feature name of the trust answer in `Have`.
pub const FEATURE_TRUST: &str = "trust";
/// The feature name of `Received`.
pub const FEATURE_PROGRESS: &str = "progress";
/// About how many NAR bytes an agent receives between two `Received` frames.
pub const RECEIVED_EVERY: u64 = 256 << 10;
/// The feature name of relays (`Forward`, `Forwarded`).
pub const FEATURE_FORWARD: &str = "forward";
/// Most levels of children a `Forward` may nest (a relay tree below the coordinator is at most
/// this deep).
pub const MAX_FORWARD_DEPTH: usize = 3;
/// The feature name of delta frames.
pub const FEATURE_DELTA: &str = "delta";
/// The feature name of the reference graph in `Query`.
pub const FEATURE_GRAPH: &str = "graph";
/// The feature name of the agent's send mode (`SendClosure`, used by `ferry copy --from`).
pub const FEATURE_SEND: &str = "send";

/// Frame type bytes.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const AUTHORIZE: u8 = 0x03;
    pub const AUTHORIZED: u8 = 0x04;
    pub const QUERY: u8 = 0x10;
    pub const HAVE: u8 = 0x11;
    pub const PATH_START: u8 = 0x20;
    pub const DATA: u8 = 0x21;
    pub const PATH_END: u8 = 0x22;
    pub const ACK: u8 = 0x30;
    pub const REJECT: u8 = 0x31;
    pub const RECEIVED: u8 = 0x32;
    pub const DONE: u8 = 0x40;
    pub const BYE: u8 = 0x41;
    pub const SEND_CLOSURE: u8 = 0x50;
    pub const FORWARD: u8 = 0x60;
    pub const FORWARDED: u8 = 0x61;
    pub const ERROR: u8 = 0x7f;
}

/// Protocol errors: malformed frames, frames out of order, version mismatch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error(
        "the peer speaks ferry protocol versions {peer_min}..={peer_max} (ferry {peer_ferry}), \
         this ferry {our_ferry} speaks {our_min}..={our_max}; install the same ferry version on \
         both sides"
    )]
    VersionMismatch {
        our_min: u32,
        our_max: u32,
        our_ferry: String,
        peer_min: u32,
        peer_max: u32,
        peer_ferry: String,
    },
    #[error(
        "unknown frame type 0x{kind:02x} from the peer (we speak protocol {ours}, the peer {peer})"
    )]
    UnknownFrame { kind: u8, ours: String, peer: String },
    #[error("the peer is not a ferry agent or coordinator: it sent {first_bytes:?}")]
    NotFerry { first_bytes: String },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed {frame} frame: {reason}")]
    Malformed { frame: &'static str, reason: String },
    #[error("{frame} frame not allowed {state}")]
    Unexpected { frame: &'static str, state: &'static str },
    #[error("the peer answered about {path}, which was not asked about or is not in flight")]
    UnknownPath { path: String },
    #[error("the peer ended the session without answering {count} paths it was sent: {paths}")]
    Unanswered { count: usize, paths: String },
    #[error("the peer reported an error: {0}")]
    Peer(String),
    #[error("the connection ended {state}")]
    Eof { state: &'static str },
}

/// How a path's NAR bytes are encoded in its `Data` frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// The NAR bytes as they are.
    None,
    /// One zstd stream.
    Zstd,
    /// A delta stream ([`crate::delta`]) against the NAR of `base`, a path valid on the host
    /// (feature `delta`).
    ZstdDelta { base: StorePath },
}

impl Encoding {
    fn to_u8(&self) -> u8 {
        match self {
            Encoding::None => 0,
            Encoding::Zstd => 1,
            Encoding::ZstdDelta { .. } => 2,
        }
    }
}

/// Why the agent refused a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// No signature came with the path (a signature is required, even for root).
    Unsigned,
    /// The signature is malformed or cryptographically invalid, or signs other contents.
    BadSignature,
    /// The signing key is not in the agent's ACL.
    Unauthorized,
    /// The NAR received does not have the announced hash and size.
    HashMismatch,
    /// A reference of the path is not valid on the host.
    MissingReference,
    /// The data is not a valid NAR or not a valid zstd stream.
    CorruptData,
    /// The host's store failed (disk full, IO error).
    Store,
    /// A delta could not be applied (base missing or corrupt on the host, bad delta stream),
    /// or a resumed path did not match (the bytes the host held were not the path's): send the
    /// path in full.
    DeltaFailed,
}

impl RejectReason {
    fn to_u8(self) -> u8 {
        match self {
            RejectReason::Unsigned => 1,
            RejectReason::BadSignature => 2,
            RejectReason::Unauthorized => 3,
            RejectReason::HashMismatch => 4,
            RejectReason::MissingReference => 5,
            RejectReason::CorruptData => 6,
            RejectReason::Store => 7,
            RejectReason::DeltaFailed => 8,
        }
    }
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => RejectReason::Unsigned,
            2 => RejectReason::BadSignature,
            3 => RejectReason::Unauthorized,
            4 => RejectReason::HashMismatch,
            5 => RejectReason::MissingReference,
            6 => RejectReason::CorruptData,
            7 => RejectReason::Store,
            8 => RejectReason::DeltaFailed,
            _ => return None,
        })
    }
    /// A short stable name (`unsigned`, `bad-signature`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unsigned => "unsigned",
            RejectReason::BadSignature => "bad-signature",
            RejectReason::Unauthorized => "unauthorized-key",
            RejectReason::HashMismatch => "hash-mismatch",
            RejectReason::MissingReference => "missing-reference",
            RejectReason::CorruptData => "corrupt-data",
            RejectReason::Store => "store-error",
            RejectReason::DeltaFailed => "delta-failed",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The coordinator's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u32,
    pub max_version: u32,
    pub ferry_version: String,
    pub features: Vec<String>,
    /// The coordinator's public key (feature `trust`), whose trust the agent tells in `Have`.
    pub public_key: Option<Vec<u8>>,
}

impl Hello {
    /// This build's greeting.
    pub fn ours() -> Self {
        Hello {
            min_version: MIN_VERSION,
            max_version: VERSION,
            ferry_version: env!("CARGO_PKG_VERSION").to_owned(),
            features: FEATURES.iter().map(|s| (*s).to_owned()).collect(),
            public_key: None,
        }
    }

    /// Whether the peer offers `feature`.
    pub fn offers(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// The agent's answer to `Hello`: who it is and what its host looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub min_version: u32,
    pub max_version: u32,
    pub ferry_version: String,
    pub features: Vec<String>,
    /// The host's logical store dir.
    pub store_dir: String,
    /// The host's system type (`x86_64-linux`).
    pub system: String,
    /// Free bytes on the host's store file system.
    pub free_bytes: u64,
    /// The host's current system generation, when it has one.
    pub generation: Option<String>,
}

/// One member of the closure in a `Query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryEntry {
    pub path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// Indexes into the same `Query` of this path's references other than itself (feature
    /// `graph`; empty without it).
    pub references: Vec<u32>,
}

/// A missing path in `Have`, with the NAR bytes the agent already holds of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingEntry {
    pub path: StorePath,
    pub resume_from: u64,
}

/// The header of one path's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStart {
    pub path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub ca: Option<String>,
    /// Guix signature text (empty: unsigned).
    pub signature: Vec<u8>,
    pub encoding: Encoding,
    /// NAR bytes the agent already holds; the data starts at this NAR offset.
    pub offset: u64,
    /// Nix signatures (`name:base64`) the sender's store holds for the path (feature
    /// `nix-sigs`; empty otherwise). Claims, not trust: a host keeps those a key of its own
    /// `trusted-public-keys` made, and drops the rest.
    pub nix_sigs: Vec<String>,
}

/// Outcome carried by `Ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The path was registered now.
    Imported,
    /// It was valid already.
    AlreadyValid,
}

/// A host a relay feeds (`Forward`, see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardChild {
    /// The host's name, as the coordinator calls it (in `Forwarded`).
    pub name: String,
    /// `ssh://[user@]host[:port][?root=…]`: where the relay reaches it.
    pub uri: String,
    /// Its pinned host key (`TYPE BASE64`): the relay never trusts a key on first use.
    pub host_key: String,
    /// The private key file on the relay to log in with (`None`: the relay's defaults).
    pub identity: Option<String>,
    /// Indexes into the relay's `Query` of the paths this host needs.
    pub wants: Vec<u32>,
    /// The hosts it feeds in turn.
    pub children: Vec<ForwardChild>,
}

/// `Forward`: what a relay keeps and whom it feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Indexes into the `Query` of the paths the relay's own store needs (`None`: it only
    /// forwards).
    pub own: Option<Vec<u32>>,
    pub children: Vec<ForwardChild>,
}

/// One host's outcome in `Forwarded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardOutcome {
    pub name: String,
    /// Every path it needed landed there.
    pub ok: bool,
    /// Why not (peer text, cut and escaped on receipt).
    pub detail: String,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Authorize {
        public_key: Vec<u8>,
    },
    Authorized {
        added: bool,
    },
    Query(Vec<QueryEntry>),
    /// `trusted`: whether the agent's ACL holds the key of the coordinator's `Hello` (feature
    /// `trust`; `None` without it).
    Have {
        missing: Vec<MissingEntry>,
        bases: Vec<(StorePath, Vec<StorePath>)>,
        trusted: Option<bool>,
    },
    PathStart(Box<PathStart>),
    Data(Vec<u8>),
    PathEnd,
    Ack {
        path: StorePath,
        outcome: AckOutcome,
    },
    Reject {
        path: StorePath,
        reason: RejectReason,
        message: String,
    },
    /// NAR bytes of this session's paths the agent has received so far (feature `progress`).
    Received {
        nar_bytes: u64,
    },
    Done,
    Bye {
        imported: u64,
        rejected: u64,
    },
    SendClosure {
        roots: Vec<StorePath>,
    },
    Forward(Box<Forward>),
    Forwarded(Vec<ForwardOutcome>),
    Error(String),
}

impl Frame {
    /// The frame's name, for errors.
    pub fn name(&self) -> &'static str {
        name_of(self.kind())
    }

    /// The type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Authorize { .. } => kind::AUTHORIZE,
            Frame::Authorized { .. } => kind::AUTHORIZED,
            Frame::Query(_) => kind::QUERY,
            Frame::Have { .. } => kind::HAVE,
            Frame::PathStart(_) => kind::PATH_START,
            Frame::Data(_) => kind::DATA,
            Frame::PathEnd => kind::PATH_END,
            Frame::Ack { .. } => kind::ACK,
            Frame::Reject { .. } => kind::REJECT,
            Frame::Received { .. } => kind::RECEIVED,
            Frame::Done => kind::DONE,
            Frame::Bye { .. } => kind::BYE,
            Frame::SendClosure { .. } => kind::SEND_CLOSURE,
            Frame::Forward(_) => kind::FORWARD,
            Frame::Forwarded(_) => kind::FORWARDED,
            Frame::Error(_) => kind::ERROR,
        }
    }

    /// Append the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Frame::Data(bytes) = self {
            encode_data(out, bytes);
            return;
        }
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, self.kind()]);
        let mut w = Writer(out);
        match self {
            Frame::Hello(h) => {
                w.bytes(MAGIC);
                w.u32(h.min_version);
                w.u32(h.max_version);
                w.str(&h.ferry_version);
                w.list(&h.features, |w, f| w.str(f));
                if let Some(key) = &h.public_key {
                    w.bytes(key);
                }
            }
            Frame::Welcome(h) => {
                w.bytes(MAGIC);
                w.u32(h.min_version);
                w.u32(h.max_version);
                w.str(&h.ferry_version);
                w.list(&h.features, |w, f| w.str(f));
                w.str(&h.store_dir);
                w.str(&h.system);
                w.u64(h.free_bytes);
                w.opt(h.generation.as_ref(), |w, g| w.str(g));
            }
            Frame::Authorize { public_key } => w.bytes(public_key),
            Frame::Authorized { added } => w.u8(u8::from(*added)),
            Frame::Query(entries) => {
                w.list(entries, |w, e| {
                    w.path(&e.path);
                    w.hash(&e.nar_hash);
                    w.u64(e.nar_size);
                });
                if entries.iter().any(|e| !e.references.is_empty()) {
                    w.list(entries, |w, e| w.list(&e.references, |w, i| w.u32(*i)));
                }
            }
            Frame::Have { missing, bases, trusted } => {
                w.list(missing, |w, m| {
                    w.path(&m.path);
                    w.u64(m.resume_from);
                });
                w.list(bases, |w, (p, held)| {
                    w.path(p);
                    w.list(held, |w, h| w.path(h));
                });
                if let Some(trusted) = trusted {
                    w.u8(u8::from(*trusted));
                }
            }
            Frame::PathStart(p) => {
                w.path(&p.path);
                w.hash(&p.nar_hash);
                w.u64(p.nar_size);
                w.list(&p.references, |w, r| w.path(r));
                w.opt(p.deriver.as_ref(), |w, d| w.path(d));
                w.opt(p.ca.as_ref(), |w, c| w.str(c));
                w.bytes(&p.signature);
                w.u8(p.encoding.to_u8());
                w.u64(p.offset);
                if let Encoding::ZstdDelta { base } = &p.encoding {
                    w.path(base);
                }
                // Only to agents that announced `nix-sigs` (older decoders refuse trailing
                // bytes): the sender leaves the list empty for them.
                if !p.nix_sigs.is_empty() {
                    w.list(&p.nix_sigs, |w, sig| w.str(sig));
                }
            }
            Frame::Data(_) => unreachable!("handled above"),
            Frame::PathEnd | Frame::Done => {}
            Frame::SendClosure { roots } => w.list(roots, |w, r| w.path(r)),
            Frame::Forward(f) => {
                w.opt(f.own.as_ref(), |w, own| w.list(own, |w, i| w.u32(*i)));
                w.list(&f.children, Writer::child);
            }
            Frame::Forwarded(outcomes) => w.list(outcomes, |w, o| {
                w.str(&o.name);
                w.u8(u8::from(o.ok));
                w.str(&o.detail);
            }),
            Frame::Ack { path, outcome } => {
                w.path(path);
                w.u8(match outcome {
                    AckOutcome::Imported => 0,
                    AckOutcome::AlreadyValid => 1,
                });
            }
            Frame::Reject { path, reason, message } => {
                w.path(path);
                w.u8(reason.to_u8());
                w.str(message);
            }
            Frame::Received { nar_bytes } => w.u64(*nar_bytes),
            Frame::Bye { imported, rejected } => {
                w.u64(*imported);
                w.u64(*rejected);
            }
            Frame::Error(message) => w.str(message),
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decode one frame from its type byte and payload.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Frame, DecodeFailure> {
        let name = name_of(kind);
        if name == "unknown" {
            return Err(DecodeFailure::UnknownKind(kind));
        }
        let malformed = |reason: String| DecodeFailure::Malformed { frame: name, reason };
        let mut r = Reader { buf: payload, pos: 0 };
        let frame = (|| -> Result<Frame, String> {
            Ok(match kind {
                kind::HELLO | kind::WELCOME => {
                    let magic = r.bytes()?;
                    if magic != MAGIC {
                        return Err(format!("bad magic {:?}", String::from_utf8_lossy(magic)));
                    }
                    let min_version = r.u32()?;
                    let max_version = r.u32()?;
                    let ferry_version = r.string()?;
                    let features = r.list(|r| r.string())?;
                    if kind == kind::HELLO {
                        // The key of feature `trust`, then what later versions may append:
                        // ignored.
                        let public_key =
                            if r.pos < r.buf.len() { Some(r.bytes()?.to_vec()) } else { None };
                        r.pos = r.buf.len();
                        Frame::Hello(Hello {
                            min_version,
                            max_version,
                            ferry_version,
                            features,
                            public_key,
                        })
                    } else {
                        let welcome = Welcome {
                            min_version,
                            max_version,
                            ferry_version,
                            features,
                            store_dir: r.string()?,
                            system: r.string()?,
                            free_bytes: r.u64()?,
                            generation: r.opt(|r| r.string())?,
                        };
                        r.pos = r.buf.len();
                        Frame::Welcome(welcome)
                    }
                }
                kind::AUTHORIZE => Frame::Authorize { public_key: r.bytes()?.to_vec() },
                kind::AUTHORIZED => Frame::Authorized { added: r.u8()? != 0 },
                kind::QUERY => {
                    let count = r.peek_u32()?;
                    if count > MAX_QUERY_ENTRIES {
                        return Err(format!(
                            "{count} entries, more than the {MAX_QUERY_ENTRIES} a Query may hold"
                        ));
                    }
                    let mut entries = r.list(|r| {
                        Ok(QueryEntry {
                            path: r.path()?,
                            nar_hash: r.hash()?,
                            nar_size: r.u64()?,
                            references: Vec::new(),
                        })
                    })?;
                    if r.pos < r.buf.len() {
                        read_query_graph(&mut r, &mut entries)?;
                    }
                    Frame::Query(entries)
                }
                kind::HAVE => Frame::Have {
                    missing: r
                        .list(|r| Ok(MissingEntry { path: r.path()?, resume_from: r.u64()? }))?,
                    bases: r.list(|r| Ok((r.path()?, r.list(|r| r.path())?)))?,
                    trusted: if r.pos < r.buf.len() {
                        match r.u8()? {
                            0 => Some(false),
                            1 => Some(true),
                            b => return Err(format!("bad trust byte {b}")),
                        }
                    } else {
                        None
                    },
                },
                kind::PATH_START => {
                    let path = r.path()?;
                    let nar_hash = r.hash()?;
                    let nar_size = r.u64()?;
                    let references = r.list(|r| r.path())?;
                    let deriver = r.opt(|r| r.path())?;
                    let ca = r.opt(|r| r.string())?;
                    let signature = r.bytes()?.to_vec();
                    let code = r.u8()?;
                    let offset = r.u64()?;
                    let encoding = match code {
                        0 => Encoding::None,
                        1 => Encoding::Zstd,
                        2 => Encoding::ZstdDelta { base: r.path()? },
                        b => return Err(format!("unknown encoding {b}")),
                    };
                    let nix_sigs =
                        if r.pos < r.buf.len() { r.list(|r| r.string())? } else { Vec::new() };
                    if nix_sigs.len() > MAX_NIX_SIGS {
                        return Err(format!(
                            "{} Nix signatures (at most {MAX_NIX_SIGS})",
                            nix_sigs.len()
                        ));
                    }
                    Frame::PathStart(Box::new(PathStart {
                        path,
                        nar_hash,
                        nar_size,
                        references,
                        deriver,
                        ca,
                        signature,
                        encoding,
                        offset,
                        nix_sigs,
                    }))
                }
                kind::DATA => {
                    r.pos = payload.len();
                    Frame::Data(payload.to_vec())
                }
                kind::PATH_END => Frame::PathEnd,
                kind::ACK => Frame::Ack {
                    path: r.path()?,
                    outcome: match r.u8()? {
                        0 => AckOutcome::Imported,
                        1 => AckOutcome::AlreadyValid,
                        b => return Err(format!("unknown outcome {b}")),
                    },
                },
                // A peer's text is data: cut and escaped as it arrives (crate::text).
                kind::REJECT => Frame::Reject {
                    path: r.path()?,
                    reason: {
                        let b = r.u8()?;
                        RejectReason::from_u8(b).ok_or_else(|| format!("unknown reason {b}"))?
                    },
                    message: peer_text(&r.string()?, MAX_PEER_MESSAGE),
                },
                kind::RECEIVED => Frame::Received { nar_bytes: r.u64()? },
                kind::DONE => Frame::Done,
                kind::BYE => Frame::Bye { imported: r.u64()?, rejected: r.u64()? },
                kind::SEND_CLOSURE => Frame::SendClosure { roots: r.list(|r| r.path())? },
                kind::FORWARD => Frame::Forward(Box::new(Forward {
                    own: r.opt(|r| r.list(|r| r.u32()))?,
                    children: r.list(|r| r.child(1))?,
                })),
                kind::FORWARDED => Frame::Forwarded(r.list(|r| {
                    Ok(ForwardOutcome {
                        name: peer_text(&r.string()?, MAX_PEER_MESSAGE),
                        ok: r.u8()? != 0,
                        detail: peer_text(&r.string()?, MAX_PEER_MESSAGE),
                    })
                })?),
                kind::ERROR => Frame::Error(peer_text(&r.string()?, MAX_PEER_MESSAGE)),
                _ => unreachable!("unknown kinds are caught above"),
            })
        })()
        .map_err(malformed)?;
        if r.pos != payload.len() {
            return Err(DecodeFailure::Malformed {
                frame: name,
                reason: format!("{} trailing bytes", payload.len() - r.pos),
            });
        }
        Ok(frame)
    }
}

/// Read the `graph` section of a `Query` into `entries` (see the module docs).
fn read_query_graph(r: &mut Reader<'_>, entries: &mut [QueryEntry]) -> Result<(), String> {
    let graph = r.list(|r| r.list(|r| r.u32()))?;
    if graph.len() != entries.len() {
        return Err(format!(
            "the reference graph has {} entries for {} paths",
            graph.len(),
            entries.len()
        ));
    }
    let n = entries.len();
    for (i, refs) in graph.into_iter().enumerate() {
        if let Some(bad) = refs.iter().find(|&&x| x as usize >= n || x as usize == i) {
            return Err(format!(
                "entry {i} ({}) names reference index {bad}, not another of the {n} entries",
                entries[i].path
            ));
        }
        entries[i].references = refs;
    }
    Ok(())
}

/// Append a `Data` frame carrying `bytes` (without building a [`Frame`]).
pub fn encode_data(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32 + 1).to_le_bytes());
    out.push(kind::DATA);
    out.extend_from_slice(bytes);
}

/// Why [`Frame::decode`] failed (turned into a [`ProtocolError`] by the state machines, which
/// know the peer's version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeFailure {
    UnknownKind(u8),
    Malformed { frame: &'static str, reason: String },
}

fn name_of(kind: u8) -> &'static str {
    match kind {
        kind::HELLO => "Hello",
        kind::WELCOME => "Welcome",
        kind::AUTHORIZE => "Authorize",
        kind::AUTHORIZED => "Authorized",
        kind::QUERY => "Query",
        kind::HAVE => "Have",
        kind::PATH_START => "PathStart",
        kind::DATA => "Data",
        kind::PATH_END => "PathEnd",
        kind::ACK => "Ack",
        kind::REJECT => "Reject",
        kind::RECEIVED => "Received",
        kind::DONE => "Done",
        kind::BYE => "Bye",
        kind::SEND_CLOSURE => "SendClosure",
        kind::FORWARD => "Forward",
        kind::FORWARDED => "Forwarded",
        kind::ERROR => "Error",
        _ => "unknown",
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn hash(&mut self, h: &Sha256Hash) {
        self.0.extend_from_slice(&h.0);
    }
    fn path(&mut self, p: &StorePath) {
        self.str(&p.base_name());
    }
    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.u32(items.len() as u32);
        for item in items {
            each(self, item);
        }
    }
    fn child(&mut self, c: &ForwardChild) {
        self.str(&c.name);
        self.str(&c.uri);
        self.str(&c.host_key);
        self.opt(c.identity.as_ref(), |w, i| w.str(i));
        self.list(&c.wants, |w, i| w.u32(*i));
        self.list(&c.children, Writer::child);
    }
    fn opt<T>(&mut self, v: Option<T>, each: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                each(self, v);
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!("truncated at byte {} (wanted {n} more)", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn peek_u32(&self) -> Result<u32, String> {
        let at = self.buf.get(self.pos..self.pos + 4).ok_or("truncated before a count")?;
        Ok(u32::from_le_bytes(at.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, String> {
        let at = self.pos;
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| format!("string at byte {at} is not UTF-8"))
    }
    fn hash(&mut self) -> Result<Sha256Hash, String> {
        Ok(Sha256Hash(self.take(32)?.try_into().expect("32 bytes")))
    }
    fn path(&mut self) -> Result<StorePath, String> {
        let s = self.string()?;
        StorePath::from_base_name(&s).map_err(|e| format!("bad store path {s:?}: {e}"))
    }
    fn list<T>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let n = self.u32()? as usize;
        // Every item takes at least one byte: a count larger than the rest is malformed.
        if n > self.buf.len() - self.pos {
            return Err(format!("list of {n} items in {} bytes", self.buf.len() - self.pos));
        }
        (0..n).map(|_| each(self)).collect()
    }
    /// A `Forward` child at nesting `depth` (1 for the relay's own children).
    fn child(&mut self, depth: usize) -> Result<ForwardChild, String> {
        if depth > MAX_FORWARD_DEPTH {
            return Err(format!("relay children nested deeper than {MAX_FORWARD_DEPTH} levels"));
        }
        Ok(ForwardChild {
            name: self.string()?,
            uri: self.string()?,
            host_key: self.string()?,
            identity: self.opt(|r| r.string())?,
            wants: self.list(|r| r.u32())?,
            children: self.list(|r| r.child(depth + 1))?,
        })
    }
    fn opt<T>(
        &mut self,
        each: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(each(self)?)),
            b => Err(format!("bad option tag {b}")),
        }
    }
}

/// Splits a byte stream into frames: push bytes as they arrive, pull complete frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    handshake_done: bool,
    peer_version: Option<String>,
}

impl FrameDecoder {
    /// A decoder expecting the first frame of a session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether a complete frame is buffered (the next [`Self::next_frame`] needs no more
    /// bytes).
    pub fn has_frame(&self) -> bool {
        let avail = &self.buf[self.start..];
        avail.len() >= 4
            && avail.len()
                >= 4 + u32::from_le_bytes(avail[..4].try_into().expect("4 bytes")) as usize
    }

    /// Record that the handshake is done (larger frames are allowed) and the peer's version,
    /// named in later errors.
    pub fn set_peer(&mut self, description: String) {
        self.handshake_done = true;
        self.peer_version = Some(description);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 5 {
            if !self.handshake_done && avail.len() >= 4 {
                self.check_first(avail)?;
            }
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[..4].try_into().expect("4 bytes"));
        if !self.handshake_done {
            self.check_first(avail)?;
        }
        if len == 0 {
            return Err(ProtocolError::Malformed { frame: "frame", reason: "length 0".into() });
        }
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLarge { len, max: MAX_FRAME });
        }
        let total = 4 + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let kind = avail[4];
        let result = Frame::decode(kind, &avail[5..total]);
        self.start += total;
        if self.start > (1 << 20) && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        match result {
            Ok(frame) => {
                if let Frame::Hello(Hello { min_version, max_version, ferry_version, .. })
                | Frame::Welcome(Welcome { min_version, max_version, ferry_version, .. }) =
                    &frame
                {
                    self.set_peer(format!("{min_version}..={max_version} (ferry {ferry_version})"));
                }
                Ok(Some(frame))
            }
            Err(DecodeFailure::UnknownKind(kind)) => Err(ProtocolError::UnknownFrame {
                kind,
                ours: format!("{MIN_VERSION}..={VERSION} (ferry {})", env!("CARGO_PKG_VERSION")),
                peer: self
                    .peer_version
                    .clone()
                    .unwrap_or_else(|| "unknown (before the handshake)".into()),
            }),
            Err(DecodeFailure::Malformed { frame, reason }) => {
                Err(ProtocolError::Malformed { frame, reason })
            }
        }
    }

    fn check_first(&self, avail: &[u8]) -> Result<(), ProtocolError> {
        let len = u32::from_le_bytes(avail[..4].try_into().expect("4 bytes"));
        let kind_ok =
            avail.len() < 5 || matches!(avail[4], kind::HELLO | kind::WELCOME | kind::ERROR);
        if len > MAX_HANDSHAKE_FRAME || len == 0 || !kind_ok {
            let shown = &avail[..avail.len().min(80)];
            return Err(ProtocolError::NotFerry {
                first_bytes: peer_text(&String::from_utf8_lossy(shown), 80),
            });
        }
        Ok(())
    }
}
