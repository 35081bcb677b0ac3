//! The two peers' state machines: which frame each side may send or receive at each point of
//! the conversation described in [`crate::frame`], and the version negotiation.

use std::collections::BTreeSet;

use nar_core::store_path::StorePath;

use crate::frame::*;
/// The protocol version both sides speak, or the mismatch error.
pub fn negotiate(
    our_min: u32,
    our_max: u32,
    peer_min: u32,
    peer_max: u32,
    peer_ferry: &str,
) -> Result<u32, ProtocolError> {
    let v = our_max.min(peer_max);
    if v >= our_min.max(peer_min) {
        Ok(v)
    } else {
        Err(ProtocolError::VersionMismatch {
            our_min,
            our_max,
            our_ferry: env!("CARGO_PKG_VERSION").to_owned(),
            peer_min,
            peer_max,
            peer_ferry: crate::text::peer_text(peer_ferry, 64),
        })
    }
}

/// Where the coordinator is in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorPhase {
    /// Nothing sent yet.
    Start,
    /// `Hello` sent, waiting for `Welcome`.
    AwaitWelcome,
    /// Handshake done.
    Ready,
    /// `Authorize` sent.
    AwaitAuthorized,
    /// `Authorize` and then `Query` sent without waiting in between: the host answers them in
    /// order, so the authorization costs no round trip of its own.
    AwaitAuthorizedThenHave,
    /// `Query` sent.
    AwaitHave,
    /// Sending paths (between paths).
    Sending,
    /// Inside a path's data.
    InPath,
    /// `Done` sent, waiting for the remaining answers and `Bye`.
    Draining,
    /// `Bye` received (or an error): the session is over.
    Closed,
}

/// The coordinator's side of the conversation: checks each frame sent and received.
#[derive(Debug)]
pub struct CoordinatorState {
    phase: CoordinatorPhase,
    version: Option<u32>,
    /// The version range our `Hello` offered.
    ours: (u32, u32),
    /// Paths sent (or being sent) and not yet answered.
    in_flight: BTreeSet<StorePath>,
    current: Option<StorePath>,
}

impl Default for CoordinatorState {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorState {
    /// A new session.
    pub fn new() -> Self {
        CoordinatorState {
            phase: CoordinatorPhase::Start,
            version: None,
            ours: (MIN_VERSION, VERSION),
            in_flight: BTreeSet::new(),
            current: None,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> CoordinatorPhase {
        self.phase
    }

    /// The negotiated version, after `Welcome`.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// Paths sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Check and record a frame about to be sent.
    pub fn on_send(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        use CoordinatorPhase as P;
        let next = match (self.phase, frame) {
            (P::Start, Frame::Hello(h)) => {
                self.ours = (h.min_version, h.max_version);
                P::AwaitWelcome
            }
            (P::Ready, Frame::Authorize { .. }) => P::AwaitAuthorized,
            // A relay's orders, before the Query (feature `forward`).
            (P::Ready, Frame::Forward(_)) => P::Ready,
            (P::AwaitAuthorized, Frame::Forward(_)) => P::AwaitAuthorized,
            (P::Ready, Frame::Query(_)) => P::AwaitHave,
            (P::AwaitAuthorized, Frame::Query(_)) => P::AwaitAuthorizedThenHave,
            (P::Sending, Frame::PathStart(p)) => {
                self.in_flight.insert(p.path.clone());
                self.current = Some(p.path.clone());
                P::InPath
            }
            (P::InPath, Frame::Data(_)) => P::InPath,
            (P::InPath, Frame::PathEnd) => {
                self.current = None;
                P::Sending
            }
            (P::Sending | P::Ready, Frame::Done) => P::Draining,
            // Pull: from here on the peers swap roles (a new session in the other direction).
            (P::Ready, Frame::SendClosure { .. }) => P::Closed,
            (_, Frame::Error(_)) => P::Closed,
            (phase, f) => {
                return Err(ProtocolError::Unexpected {
                    frame: f.name(),
                    state: coordinator_state_name(phase),
                })
            }
        };
        self.phase = next;
        Ok(())
    }

    /// Note that a `Data` frame is being sent, without building the [`Frame`].
    pub fn on_send_data(&mut self) -> Result<(), ProtocolError> {
        if self.phase == CoordinatorPhase::InPath {
            Ok(())
        } else {
            Err(ProtocolError::Unexpected {
                frame: "Data",
                state: coordinator_state_name(self.phase),
            })
        }
    }

    /// Check and record a received frame.
    pub fn on_receive(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        use CoordinatorPhase as P;
        if let Frame::Error(message) = frame {
            self.phase = P::Closed;
            return Err(ProtocolError::Peer(message.clone()));
        }
        let next = match (self.phase, frame) {
            (P::AwaitWelcome, Frame::Welcome(w)) => {
                self.version = Some(negotiate(
                    self.ours.0,
                    self.ours.1,
                    w.min_version,
                    w.max_version,
                    &w.ferry_version,
                )?);
                P::Ready
            }
            (P::AwaitAuthorized, Frame::Authorized { .. }) => P::Ready,
            (P::AwaitAuthorizedThenHave, Frame::Authorized { .. }) => P::AwaitHave,
            (P::AwaitHave, Frame::Have { .. }) => P::Sending,
            (P::Sending | P::InPath | P::Draining, Frame::Received { .. }) => self.phase,
            (
                P::Sending | P::InPath | P::Draining,
                Frame::Ack { path, .. } | Frame::Reject { path, .. },
            ) => {
                if !self.in_flight.remove(path) {
                    return Err(ProtocolError::UnknownPath { path: path.to_string() });
                }
                self.phase
            }
            // Every path sent is accounted for: `Bye` with paths unanswered is an error.
            (P::Draining, Frame::Bye { .. }) if !self.in_flight.is_empty() => {
                let count = self.in_flight.len();
                let mut paths: Vec<String> =
                    self.in_flight.iter().take(10).map(|p| p.to_string()).collect();
                if count > paths.len() {
                    paths.push(format!("and {} more", count - paths.len()));
                }
                self.phase = P::Closed;
                return Err(ProtocolError::Unanswered { count, paths: paths.join(", ") });
            }
            (P::Draining, Frame::Bye { .. }) => P::Closed,
            (P::Draining, Frame::Forwarded(_)) => P::Draining,
            (phase, f) => {
                return Err(ProtocolError::Unexpected {
                    frame: f.name(),
                    state: coordinator_state_name(phase),
                })
            }
        };
        self.phase = next;
        Ok(())
    }

    /// The connection ended: fine only once closed.
    pub fn on_eof(&mut self) -> Result<(), ProtocolError> {
        if self.phase == CoordinatorPhase::Closed {
            Ok(())
        } else {
            let state = coordinator_state_name(self.phase);
            self.phase = CoordinatorPhase::Closed;
            Err(ProtocolError::Eof { state })
        }
    }
}

fn coordinator_state_name(phase: CoordinatorPhase) -> &'static str {
    match phase {
        CoordinatorPhase::Start => "before Hello",
        CoordinatorPhase::AwaitWelcome => "while waiting for Welcome",
        CoordinatorPhase::Ready => "after the handshake",
        CoordinatorPhase::AwaitAuthorized | CoordinatorPhase::AwaitAuthorizedThenHave => {
            "while waiting for Authorized"
        }
        CoordinatorPhase::AwaitHave => "while waiting for Have",
        CoordinatorPhase::Sending => "between paths",
        CoordinatorPhase::InPath => "inside a path's data",
        CoordinatorPhase::Draining => "after Done",
        CoordinatorPhase::Closed => "after the session ended",
    }
}

/// Where the agent is in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentPhase {
    /// Waiting for `Hello`.
    AwaitHello,
    /// `Hello` received, `Welcome` not sent yet.
    Greeting,
    /// Handshake done, waiting for `Authorize` or `Query`.
    Ready,
    /// `Authorize` received, reply not sent.
    Authorizing,
    /// `Query` received, `Have` not sent.
    Answering,
    /// Receiving paths (between paths).
    Receiving,
    /// Inside a path's data.
    InPath,
    /// `Done` received, `Bye` not sent.
    Finishing,
    /// Over.
    Closed,
}

/// The agent's side of the conversation.
#[derive(Debug)]
pub struct AgentState {
    phase: AgentPhase,
    version: Option<u32>,
    /// Paths received and not yet answered.
    unanswered: BTreeSet<StorePath>,
}

impl Default for AgentState {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentState {
    /// A new session.
    pub fn new() -> Self {
        AgentState { phase: AgentPhase::AwaitHello, version: None, unanswered: BTreeSet::new() }
    }

    /// The current phase.
    pub fn phase(&self) -> AgentPhase {
        self.phase
    }

    /// The negotiated version.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// Check and record a received frame. On `Hello`, negotiates the version (a mismatch is
    /// an error the agent reports in an `Error` frame after its `Welcome`).
    pub fn on_receive(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        use AgentPhase as P;
        if let Frame::Error(message) = frame {
            self.phase = P::Closed;
            return Err(ProtocolError::Peer(message.clone()));
        }
        let next = match (self.phase, frame) {
            (P::AwaitHello, Frame::Hello(h)) => {
                self.phase = P::Greeting;
                self.version = Some(negotiate(
                    MIN_VERSION,
                    VERSION,
                    h.min_version,
                    h.max_version,
                    &h.ferry_version,
                )?);
                P::Greeting
            }
            (P::Ready, Frame::Authorize { .. }) => P::Authorizing,
            (P::Ready, Frame::Forward(_)) => P::Ready,
            (P::Ready, Frame::Query(_)) => P::Answering,
            (P::Ready | P::Receiving, Frame::Done) => P::Finishing,
            // Pull: the agent now coordinates a push the other way (a new session).
            (P::Ready, Frame::SendClosure { .. }) => P::Closed,
            (P::Receiving, Frame::PathStart(p)) => {
                self.unanswered.insert(p.path.clone());
                P::InPath
            }
            (P::InPath, Frame::Data(_)) => P::InPath,
            (P::InPath, Frame::PathEnd) => P::Receiving,
            (phase, f) => {
                return Err(ProtocolError::Unexpected {
                    frame: f.name(),
                    state: agent_state_name(phase),
                })
            }
        };
        self.phase = next;
        Ok(())
    }

    /// Check and record a frame about to be sent.
    pub fn on_send(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        use AgentPhase as P;
        let next = match (self.phase, frame) {
            (P::Greeting, Frame::Welcome(_)) => P::Ready,
            (P::Authorizing, Frame::Authorized { .. }) => P::Ready,
            (P::Answering, Frame::Have { .. }) => P::Receiving,
            (P::Receiving | P::InPath | P::Finishing, Frame::Received { .. }) => self.phase,
            (
                P::Receiving | P::InPath | P::Finishing,
                Frame::Ack { path, .. } | Frame::Reject { path, .. },
            ) => {
                if !self.unanswered.remove(path) {
                    return Err(ProtocolError::UnknownPath { path: path.to_string() });
                }
                self.phase
            }
            (P::Finishing, Frame::Forwarded(_)) => P::Finishing,
            (P::Finishing, Frame::Bye { .. }) => P::Closed,
            (_, Frame::Error(_)) => P::Closed,
            (phase, f) => {
                return Err(ProtocolError::Unexpected {
                    frame: f.name(),
                    state: agent_state_name(phase),
                })
            }
        };
        self.phase = next;
        Ok(())
    }
}

fn agent_state_name(phase: AgentPhase) -> &'static str {
    match phase {
        AgentPhase::AwaitHello => "before Hello",
        AgentPhase::Greeting => "before Welcome was sent",
        AgentPhase::Ready => "after the handshake",
        AgentPhase::Authorizing => "while authorizing",
        AgentPhase::Answering => "while answering the query",
        AgentPhase::Receiving => "between paths",
        AgentPhase::InPath => "inside a path's data",
        AgentPhase::Finishing => "after Done",
        AgentPhase::Closed => "after the session ended",
    }
}

#[cfg(test)]
mod tests {
    use nar_core::hash::Sha256Hash;

    use super::*;

    fn sp(i: u8) -> StorePath {
        StorePath::from_parts([i; 20], &format!("p{i}")).unwrap()
    }

    fn welcome() -> Welcome {
        Welcome {
            min_version: 1,
            max_version: 1,
            ferry_version: "0.1.0".into(),
            features: vec!["zstd".into()],
            store_dir: "/gnu/store".into(),
            system: "x86_64-linux".into(),
            free_bytes: 1 << 40,
            generation: Some("system-3-link".into()),
        }
    }

    fn start(i: u8) -> Frame {
        Frame::PathStart(Box::new(PathStart {
            path: sp(i),
            nar_hash: Sha256Hash::of(&[i]),
            nar_size: 1000 + u64::from(i),
            references: vec![sp(1), sp(2)],
            deriver: Some(sp(9)),
            ca: None,
            signature: b"(signature)".to_vec(),
            encoding: Encoding::Zstd,
            offset: 17,
            nix_sigs: Vec::new(),
        }))
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello::ours()),
            Frame::Hello(Hello { public_key: Some(b"(public-key)".to_vec()), ..Hello::ours() }),
            Frame::Welcome(welcome()),
            Frame::Authorize { public_key: b"(public-key)".to_vec() },
            Frame::Authorized { added: true },
            Frame::Query(vec![QueryEntry {
                path: sp(1),
                nar_hash: Sha256Hash::of(b"x"),
                nar_size: 5,
                references: vec![],
            }]),
            Frame::Query(vec![
                QueryEntry {
                    path: sp(1),
                    nar_hash: Sha256Hash::of(b"x"),
                    nar_size: 5,
                    references: vec![1, 2],
                },
                QueryEntry {
                    path: sp(2),
                    nar_hash: Sha256Hash::of(b"y"),
                    nar_size: 6,
                    references: vec![],
                },
                QueryEntry {
                    path: sp(3),
                    nar_hash: Sha256Hash::of(b"z"),
                    nar_size: 7,
                    references: vec![1],
                },
            ]),
            Frame::Have {
                missing: vec![MissingEntry { path: sp(1), resume_from: 4096 }],
                bases: vec![(sp(1), vec![sp(3)])],
                trusted: None,
            },
            Frame::Have { missing: vec![], bases: vec![], trusted: Some(false) },
            Frame::Have { missing: vec![], bases: vec![], trusted: Some(true) },
            start(1),
            Frame::PathStart(Box::new(PathStart {
                encoding: Encoding::ZstdDelta { base: sp(5) },
                offset: 0,
                nix_sigs: vec!["cache.example.org-1:c2ln".into()],
                ..match start(2) {
                    Frame::PathStart(p) => *p,
                    _ => unreachable!(),
                }
            })),
            Frame::Data(vec![1, 2, 3]),
            Frame::Data(vec![]),
            Frame::PathEnd,
            Frame::Ack { path: sp(1), outcome: AckOutcome::AlreadyValid },
            Frame::Reject { path: sp(2), reason: RejectReason::Unauthorized, message: "no".into() },
            Frame::Reject { path: sp(2), reason: RejectReason::DeltaFailed, message: "b".into() },
            Frame::Received { nar_bytes: 1 << 40 },
            Frame::Done,
            Frame::Bye { imported: 3, rejected: 1 },
            Frame::SendClosure { roots: vec![sp(1), sp(2)] },
            Frame::Forward(Box::new(Forward {
                own: Some(vec![0, 2]),
                children: vec![ForwardChild {
                    name: "web2".into(),
                    uri: "ssh://root@10.0.0.2:22?root=/srv".into(),
                    host_key: "ssh-ed25519 AAAA".into(),
                    identity: Some("/root/.ssh/id_ed25519".into()),
                    wants: vec![1],
                    children: vec![ForwardChild {
                        name: "web3".into(),
                        uri: "ssh://10.0.0.3".into(),
                        host_key: "ssh-ed25519 BBBB".into(),
                        identity: None,
                        wants: vec![],
                        children: vec![],
                    }],
                }],
            })),
            Frame::Forward(Box::new(Forward { own: None, children: vec![] })),
            Frame::Forwarded(vec![
                ForwardOutcome { name: "web2".into(), ok: true, detail: String::new() },
                ForwardOutcome { name: "web3".into(), ok: false, detail: "gone".into() },
            ]),
            Frame::Error("boom".into()),
        ]
    }

    #[test]
    fn every_frame_round_trips_through_every_split() {
        let frames = all_frames();
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            let mut d = FrameDecoder::new();
            d.set_peer("test".into());
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "chunk size {step}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn trust_and_progress_keep_older_peers_working() {
        // An older agent's decoder ignored what follows `features` in a Hello; an older
        // coordinator's Have has no trust byte and decodes to `trusted: None`.
        let mut wire = Vec::new();
        Frame::Have { missing: vec![], bases: vec![], trusted: None }.encode(&mut wire);
        let mut d = FrameDecoder::new();
        d.set_peer("test".into());
        d.push(&wire);
        assert!(matches!(d.next_frame().unwrap(), Some(Frame::Have { trusted: None, .. })));
        // Received is allowed only where answers are.
        let mut c = CoordinatorState::new();
        c.on_send(&Frame::Hello(Hello::ours())).unwrap();
        c.on_receive(&Frame::Welcome(welcome())).unwrap();
        assert!(c.on_receive(&Frame::Received { nar_bytes: 1 }).is_err());
        let mut c = CoordinatorState::new();
        c.on_send(&Frame::Hello(Hello::ours())).unwrap();
        c.on_receive(&Frame::Welcome(welcome())).unwrap();
        c.on_send(&Frame::Query(vec![])).unwrap();
        c.on_receive(&Frame::Have { missing: vec![], bases: vec![], trusted: Some(true) }).unwrap();
        c.on_receive(&Frame::Received { nar_bytes: 1 }).unwrap();
    }

    #[test]
    fn unknown_frame_names_type_and_versions() {
        let mut d = FrameDecoder::new();
        d.set_peer("1..=1 (ferry 0.1.0)".into());
        d.push(&[1, 0, 0, 0, 0x55]);
        let e = d.next_frame().unwrap_err();
        assert!(matches!(e, ProtocolError::UnknownFrame { kind: 0x55, .. }));
        let text = e.to_string();
        assert!(
            text.contains("0x55") && text.contains("ferry 0.1.0") && text.contains("1..=1"),
            "{text}"
        );
    }

    #[test]
    fn garbage_first_bytes_are_not_ferry() {
        let mut d = FrameDecoder::new();
        d.push(b"bash: ferry: command not found\n");
        let e = d.next_frame().unwrap_err();
        assert!(matches!(e, ProtocolError::NotFerry { .. }), "{e}");
        assert!(e.to_string().contains("command not found"));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut bytes = Vec::new();
        Frame::Ack { path: sp(1), outcome: AckOutcome::Imported }.encode(&mut bytes);
        // Truncate the payload but keep a consistent length: drop the outcome byte.
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) - 1;
        bytes.truncate(bytes.len() - 1);
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        let mut d = FrameDecoder::new();
        d.set_peer("x".into());
        d.push(&bytes);
        assert!(matches!(d.next_frame(), Err(ProtocolError::Malformed { frame: "Ack", .. })));
        // A list count larger than the payload.
        let mut d = FrameDecoder::new();
        d.set_peer("x".into());
        d.push(&[5, 0, 0, 0, kind::QUERY, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(d.next_frame(), Err(ProtocolError::Malformed { frame: "Query", .. })));
        let mut d = FrameDecoder::new();
        d.set_peer("x".into());
        d.push(&(MAX_FRAME + 1).to_le_bytes());
        d.push(&[kind::DATA]);
        assert!(matches!(d.next_frame(), Err(ProtocolError::TooLarge { .. })));
    }

    /// A `Forward` nests children at most [`MAX_FORWARD_DEPTH`] levels deep.
    #[test]
    fn forward_nesting_is_bounded() {
        let nest = |levels: usize| {
            let mut children = Vec::new();
            for i in 0..levels {
                children = vec![ForwardChild {
                    name: format!("h{i}"),
                    uri: "ssh://h".into(),
                    host_key: "k".into(),
                    identity: None,
                    wants: vec![],
                    children,
                }];
            }
            let mut bytes = Vec::new();
            Frame::Forward(Box::new(Forward { own: None, children })).encode(&mut bytes);
            let mut d = FrameDecoder::new();
            d.set_peer("x".into());
            d.push(&bytes);
            d.next_frame()
        };
        assert!(matches!(nest(MAX_FORWARD_DEPTH), Ok(Some(Frame::Forward(_)))));
        assert!(matches!(
            nest(MAX_FORWARD_DEPTH + 1),
            Err(ProtocolError::Malformed { frame: "Forward", .. })
        ));
    }

    /// Without references the `Query` has exactly the layout older peers read; the graph
    /// section is checked against the entries.
    #[test]
    fn query_graph_section_is_optional_and_checked() {
        let entry = |i: u8, references: Vec<u32>| QueryEntry {
            path: sp(i),
            nar_hash: Sha256Hash::of(&[i]),
            nar_size: u64::from(i),
            references,
        };
        let plain = Frame::Query(vec![entry(1, vec![]), entry(2, vec![])]);
        let mut bytes = Vec::new();
        plain.encode(&mut bytes);
        let old_layout: usize =
            5 + 4 + [sp(1), sp(2)].iter().map(|p| 4 + p.to_string().len() + 32 + 8).sum::<usize>();
        assert_eq!(bytes.len(), old_layout);
        let graph = Frame::Query(vec![entry(1, vec![1]), entry(2, vec![])]);
        let mut with = Vec::new();
        graph.encode(&mut with);
        // count + (count + 1 index) + (count).
        assert_eq!(with.len(), old_layout + 4 + 8 + 4);
        let decode = |entries: Vec<QueryEntry>| {
            let mut b = Vec::new();
            Frame::Query(entries).encode(&mut b);
            Frame::decode(b[4], &b[5..])
        };
        for bad in [vec![entry(1, vec![2]), entry(2, vec![])], vec![entry(1, vec![0])]] {
            let e = decode(bad).unwrap_err();
            let DecodeFailure::Malformed { frame: "Query", reason } = e else { panic!("{e:?}") };
            assert!(reason.contains("entry 0") && reason.contains("p1"), "{reason}");
        }
        // A graph section for fewer entries than the list.
        let mut b = Vec::new();
        plain.encode(&mut b);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        let e = Frame::decode(b[4], &b[5..]).unwrap_err();
        assert!(format!("{e:?}").contains("1 entries for 2 paths"), "{e:?}");
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate(1, 3, 2, 5, "x"), Ok(3));
        assert_eq!(negotiate(1, 1, 1, 1, "x"), Ok(1));
        let e = negotiate(1, 1, 2, 3, "9.9.9").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("2..=3") && text.contains("9.9.9") && text.contains("1..=1"),
            "{text}"
        );
        let mut c = CoordinatorState::new();
        c.on_send(&Frame::Hello(Hello::ours())).unwrap();
        let mut w = welcome();
        w.min_version = 7;
        w.max_version = 8;
        assert!(matches!(
            c.on_receive(&Frame::Welcome(w)),
            Err(ProtocolError::VersionMismatch { .. })
        ));
        let mut a = AgentState::new();
        let mut h = Hello::ours();
        h.min_version = 5;
        h.max_version = 6;
        assert!(matches!(
            a.on_receive(&Frame::Hello(h)),
            Err(ProtocolError::VersionMismatch { .. })
        ));
        // The agent can still send its Welcome and an Error.
        a.on_send(&Frame::Welcome(welcome())).unwrap();
        a.on_send(&Frame::Error("version".into())).unwrap();
        assert_eq!(a.phase(), AgentPhase::Closed);
    }

    /// The coordinator sends `Authorize`, `Forward` and `Query` without waiting in between;
    /// the agent, reading them in turn, answers `Authorized` then `Have`.
    #[test]
    fn authorize_rides_with_the_query() {
        let authorize = Frame::Authorize { public_key: vec![] };
        let forward = Frame::Forward(Box::new(Forward { own: None, children: vec![] }));
        let query = Frame::Query(vec![]);
        let have = Frame::Have { missing: vec![], bases: vec![], trusted: None };
        let sent_all = || {
            let mut c = CoordinatorState::new();
            c.on_send(&Frame::Hello(Hello::ours())).unwrap();
            c.on_receive(&Frame::Welcome(welcome())).unwrap();
            for f in [&authorize, &forward, &query] {
                c.on_send(f).unwrap();
            }
            c
        };
        // A Have before the Authorized is out of order.
        assert!(sent_all().on_receive(&have).is_err());
        let mut c = sent_all();
        let mut a = AgentState::new();
        a.on_receive(&Frame::Hello(Hello::ours())).unwrap();
        a.on_send(&Frame::Welcome(welcome())).unwrap();
        a.on_receive(&authorize).unwrap();
        a.on_send(&Frame::Authorized { added: true }).unwrap();
        c.on_receive(&Frame::Authorized { added: true }).unwrap();
        for f in [&forward, &query] {
            a.on_receive(f).unwrap();
        }
        a.on_send(&have).unwrap();
        c.on_receive(&have).unwrap();
    }

    /// Both state machines stepped through a whole pipelined session, frame by frame, as
    /// each peer sends and the other receives.
    #[test]
    fn whole_session_pipelined() {
        let mut c = CoordinatorState::new();
        let mut a = AgentState::new();
        let exchange =
            |from_coordinator: bool, f: Frame, c: &mut CoordinatorState, a: &mut AgentState| {
                if from_coordinator {
                    c.on_send(&f).unwrap();
                    a.on_receive(&f).unwrap();
                } else {
                    a.on_send(&f).unwrap();
                    c.on_receive(&f).unwrap();
                }
            };
        exchange(true, Frame::Hello(Hello::ours()), &mut c, &mut a);
        exchange(false, Frame::Welcome(welcome()), &mut c, &mut a);
        assert_eq!(c.version(), Some(1));
        exchange(true, Frame::Authorize { public_key: vec![] }, &mut c, &mut a);
        exchange(false, Frame::Authorized { added: false }, &mut c, &mut a);
        let forward = Frame::Forward(Box::new(Forward { own: None, children: vec![] }));
        exchange(true, forward, &mut c, &mut a);
        exchange(true, Frame::Query(vec![]), &mut c, &mut a);
        exchange(
            false,
            Frame::Have { missing: vec![], bases: vec![], trusted: None },
            &mut c,
            &mut a,
        );
        // Three paths in flight before the first answer.
        for i in 1..=3 {
            exchange(true, start(i), &mut c, &mut a);
            exchange(true, Frame::Data(vec![i]), &mut c, &mut a);
            exchange(true, Frame::PathEnd, &mut c, &mut a);
        }
        assert_eq!(c.in_flight(), 3);
        exchange(false, Frame::Ack { path: sp(1), outcome: AckOutcome::Imported }, &mut c, &mut a);
        exchange(true, start(4), &mut c, &mut a);
        // An answer may arrive while the coordinator is inside a path.
        exchange(
            false,
            Frame::Reject { path: sp(2), reason: RejectReason::HashMismatch, message: "x".into() },
            &mut c,
            &mut a,
        );
        exchange(true, Frame::PathEnd, &mut c, &mut a);
        exchange(true, Frame::Done, &mut c, &mut a);
        exchange(false, Frame::Ack { path: sp(3), outcome: AckOutcome::Imported }, &mut c, &mut a);
        exchange(false, Frame::Ack { path: sp(4), outcome: AckOutcome::Imported }, &mut c, &mut a);
        // A relay reports the hosts below it between its last answer and `Bye`.
        exchange(false, Frame::Forwarded(vec![]), &mut c, &mut a);
        exchange(false, Frame::Bye { imported: 3, rejected: 1 }, &mut c, &mut a);
        assert_eq!(c.phase(), CoordinatorPhase::Closed);
        assert_eq!(a.phase(), AgentPhase::Closed);
        assert!(c.on_eof().is_ok());
    }

    /// Pull: `SendClosure` right after the handshake ends this session on both sides (the
    /// roles swap for a new one); anywhere else it is refused.
    #[test]
    fn send_closure_swaps_roles_only_after_the_handshake() {
        let mut c = CoordinatorState::new();
        let mut a = AgentState::new();
        let ask = Frame::SendClosure { roots: vec![sp(1)] };
        assert!(c.on_send(&ask).is_err(), "before Hello");
        assert!(a.on_receive(&ask).is_err(), "before Hello");
        c.on_send(&Frame::Hello(Hello::ours())).unwrap();
        a.on_receive(&Frame::Hello(Hello::ours())).unwrap();
        a.on_send(&Frame::Welcome(welcome())).unwrap();
        c.on_receive(&Frame::Welcome(welcome())).unwrap();
        c.on_send(&ask).unwrap();
        a.on_receive(&ask).unwrap();
        assert_eq!(c.phase(), CoordinatorPhase::Closed);
        assert_eq!(a.phase(), AgentPhase::Closed);
        // Not in the middle of a push.
        let mut c = CoordinatorState::new();
        c.on_send(&Frame::Hello(Hello::ours())).unwrap();
        c.on_receive(&Frame::Welcome(welcome())).unwrap();
        c.on_send(&Frame::Query(vec![])).unwrap();
        c.on_receive(&Frame::Have { missing: vec![], bases: vec![], trusted: None }).unwrap();
        assert!(c.on_send(&ask).is_err());
    }

    #[test]
    fn out_of_order_frames_are_refused() {
        let mut c = CoordinatorState::new();
        assert!(matches!(
            c.on_send(&Frame::Query(vec![])),
            Err(ProtocolError::Unexpected { frame: "Query", .. })
        ));
        c.on_send(&Frame::Hello(Hello::ours())).unwrap();
        assert!(c
            .on_receive(&Frame::Have { missing: vec![], bases: vec![], trusted: None })
            .is_err());
        let mut c = CoordinatorState::new();
        c.on_send(&Frame::Hello(Hello::ours())).unwrap();
        c.on_receive(&Frame::Welcome(welcome())).unwrap();
        c.on_send(&Frame::Query(vec![])).unwrap();
        c.on_receive(&Frame::Have { missing: vec![], bases: vec![], trusted: None }).unwrap();
        // An answer about a path never sent.
        assert!(matches!(
            c.on_receive(&Frame::Ack { path: sp(7), outcome: AckOutcome::Imported }),
            Err(ProtocolError::UnknownPath { .. })
        ));
        let mut c2 = CoordinatorState::new();
        c2.on_send(&Frame::Hello(Hello::ours())).unwrap();
        assert!(matches!(c2.on_eof(), Err(ProtocolError::Eof { .. })));
        assert!(matches!(c2.on_receive(&Frame::Error("x".into())), Err(ProtocolError::Peer(_))));

        let mut a = AgentState::new();
        assert!(a.on_receive(&Frame::Query(vec![])).is_err());
        let mut a = AgentState::new();
        a.on_receive(&Frame::Hello(Hello::ours())).unwrap();
        a.on_send(&Frame::Welcome(welcome())).unwrap();
        assert!(a.on_receive(&Frame::Data(vec![])).is_err());
        assert!(
            a.on_receive(&Frame::PathStart(Box::new(match start(1) {
                Frame::PathStart(p) => *p,
                _ => unreachable!(),
            })))
            .is_err(),
            "PathStart before Query/Have"
        );
    }
}
