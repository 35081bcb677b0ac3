//! What the deploy coordinator and `ferry host ...` (run on the host by the agent program, over
//! SSH or as a local subprocess) say to each other. Sans-IO: types, encoding and parsing only.
//!
//! Every exchange is one command run on the host: a JSON request on its stdin (closed after
//! it), then its stdout.
//!
//! - `ferry host facts`: request [`FactsRequest`]; stdout is one JSON line, [`Facts`]: the
//!   system type, the current generation and system, the current system's `provenance`, the
//!   safety-check (device probe) errors and which of the closure's paths the host's store
//!   lacks. Everything the checks before the copy need, in one round trip.
//! - `ferry host activate`: request [`ActivateRequest`]; stdout is a stream of lines, each
//!   `KIND TEXT` ([`HostLine`]):
//!   - `generation N`: generation N was registered for the system;
//!   - `line TEXT`: a line printed by `activate`;
//!   - `warning TEXT`, `event TEXT`: things to show the operator;
//!   - `confirm SECONDS TOKEN`: activation and the host's health checks passed; the host waits
//!     up to SECONDS for `ferry host confirm TOKEN` (or `--reject REASON`) run over a **new**
//!     connection, then rolls back by itself;
//!   - `result JSON`: the [`HostResult`], last.
//!     The host keeps going when its stdout is gone (the first connection dropped): it ignores
//!     write errors, and the confirmation deadline still applies.
//! - `ferry host session`: the whole deploy of one host in one command (one process, one SSH
//!   channel). Requests ([`SessionRequest`]) come on stdin one at a time, each a line `VERB
//!   [JSON]`; the next one is sent only after the answer to the previous one was read:
//!   - `facts JSON` ([`FactsRequest`]): answered by one JSON line, [`Facts`];
//!   - `copy`: the agent (`ferry serve`) runs on the same stdin and stdout, from the
//!     coordinator's `Hello` to the agent's `Bye`; then the next request;
//!   - `activate JSON` ([`ActivateRequest`]): answered as `ferry host activate` (lines, the
//!     `result` last); the session ends with it (exit code 1 when the activation failed);
//!   - end of stdin ends the session (exit code 0).
//!
//!   A failing request ends the session with a non-zero exit code and the error on stderr.
//! - `ferry host confirm TOKEN [--reject REASON]`: no request; writes the answer marker
//!   `<root>/var/ferry/confirm/TOKEN` ([`encode_answer`]) that the waiting activation polls.
//!   It fails when no activation waits for TOKEN (`TOKEN.waiting` is there only while one
//!   does): a confirmation after the deadline is an error, not a file left behind.
//! - `ferry host roll-back [--profile PATH --switch ARG...]`: no request; `line`/`result` lines
//!   as for `activate`. With `--profile`, the profile of a system built by Nix or Guix, whose
//!   generations are switched to with their own switch command (`--switch`: the program and
//!   arguments, for generations ferry did not record one for).
//! - `ferry host generations --json [--profile PATH]`: one JSON line, a list of
//!   [`GenerationInfo`].
//! - `ferry host exec -- CMD ARGS...`: runs the command in the root with `FERRY_ROOT` set and
//!   the current system's `profile/bin` first on `PATH`; its stdout and stderr both go to
//!   stdout; the exit code is the command's.

use serde::{Deserialize, Serialize};

/// A file system to look for on the host (the safety checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// A path, `LABEL=…` or `UUID=…`.
    pub device: String,
    pub mount_point: String,
}

/// `ferry host facts` request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FactsRequest {
    /// The system about to be deployed (logical store path): is the host on it already?
    pub system: Option<String>,
    /// Devices to probe (empty: no safety checks).
    pub devices: Vec<DeviceSpec>,
    /// Store paths (logical) whose presence in the host's store to report.
    pub paths: Vec<String>,
    /// The profile whose generations to report (a system built by Nix or Guix; `None`:
    /// ferry's own profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The host's store to use, for these facts and the session's copy: `nix` (the host's
    /// own Nix store under the root), `ferry`, or `auto` (Nix when the root has Nix's database
    /// and `nix-store` is on PATH). `None`: ferry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_store: Option<String>,
}

/// `ferry host facts` answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Facts {
    /// The host's system type (`x86_64-linux`).
    pub system_type: String,
    /// The current generation.
    pub generation: Option<u64>,
    /// The current generation's system (as a path on the host).
    pub current_system: Option<String>,
    /// True when the current generation is the requested system.
    pub on_this_system: bool,
    /// The current system's `provenance` file.
    pub provenance: Option<String>,
    /// Failed device checks, one message each (Guix's texts).
    pub safety_errors: Vec<String>,
    /// The requested paths the host's store lacks.
    pub missing: Vec<String>,
    /// The host's store used (`nix` or `ferry`), when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// A health-check command for the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCheck {
    pub command: String,
    pub timeout_ms: u64,
}

/// `ferry host activate` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateRequest {
    /// The system to activate (logical store path; in the host's store already).
    pub system: String,
    /// How long to wait for confirmation (`None`: no confirmation round).
    pub confirm_timeout_ms: Option<u64>,
    /// The `command` health checks.
    pub health_checks: Vec<HostCheck>,
    /// The confirmation token (letters, digits, `-`).
    pub token: String,
    /// A system built by Nix or Guix: its profile and switch commands (`None`: a system built
    /// by ferry, activated by its `activate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchSpec>,
}

/// How a system built by Nix or Guix is activated on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchSpec {
    /// The profile (absolute path on the host): generations are `PROFILE-N-link` beside it.
    pub profile: String,
    /// Program (relative to the system, or absolute) and arguments that switch to it.
    pub switch: Vec<String>,
    /// The same for the next boot only, run when `switch` fails.
    pub boot_switch: Option<Vec<String>>,
}

/// How a host command ended (the last line of `activate` and `roll-back`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResult {
    pub success: bool,
    /// The generation the host is on now.
    pub generation: Option<u64>,
    /// What happened, for the operator.
    pub detail: String,
}

/// One generation in `ferry host generations --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub number: u64,
    /// Seconds since the epoch.
    pub time: u64,
    pub system: String,
    pub current: bool,
    /// Why its activation failed, when the host recorded it (absent from older hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// A line of `activate` or `roll-back` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostLine {
    Generation(u64),
    Line(String),
    Warning(String),
    Event(String),
    Confirm { seconds: u64, token: String },
    Result(HostResult),
}

impl HostLine {
    /// The line, without newline (texts with newlines are cut into several `Line`s by the
    /// sender; here a newline is replaced by a space).
    pub fn encode(&self) -> String {
        let flat = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            HostLine::Generation(n) => format!("generation {n}"),
            HostLine::Line(l) => format!("line {}", flat(l)),
            HostLine::Warning(w) => format!("warning {}", flat(w)),
            HostLine::Event(e) => format!("event {}", flat(e)),
            HostLine::Confirm { seconds, token } => format!("confirm {seconds} {token}"),
            HostLine::Result(r) => {
                format!("result {}", serde_json::to_string(r).expect("serializable"))
            }
        }
    }

    /// Parse a line; `None` for anything else (printed as is by the coordinator).
    pub fn parse(line: &str) -> Option<HostLine> {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match kind {
            "generation" => HostLine::Generation(rest.parse().ok()?),
            "line" => HostLine::Line(rest.to_owned()),
            "warning" => HostLine::Warning(rest.to_owned()),
            "event" => HostLine::Event(rest.to_owned()),
            "confirm" => {
                let (seconds, token) = rest.split_once(' ')?;
                if !valid_token(token) {
                    return None;
                }
                HostLine::Confirm { seconds: seconds.parse().ok()?, token: token.to_owned() }
            }
            "result" => HostLine::Result(serde_json::from_str(rest).ok()?),
            _ => return None,
        })
    }
}

/// A request of `ferry host session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRequest {
    Facts(FactsRequest),
    Copy,
    Activate(ActivateRequest),
}

impl SessionRequest {
    /// The request line, with its newline.
    pub fn encode(&self) -> String {
        match self {
            SessionRequest::Facts(f) => format!("facts {}\n", compact(f)),
            SessionRequest::Copy => "copy\n".to_owned(),
            SessionRequest::Activate(a) => format!("activate {}\n", compact(a)),
        }
    }

    /// Parse a request line (without its newline).
    pub fn parse(line: &str) -> Result<SessionRequest, String> {
        let (verb, body) = line.split_once(' ').unwrap_or((line, ""));
        let bad = |e: serde_json::Error| format!("session request {verb:?}: {e}");
        match verb {
            "facts" => serde_json::from_str(body).map(SessionRequest::Facts).map_err(bad),
            "copy" if body.is_empty() => Ok(SessionRequest::Copy),
            "activate" => serde_json::from_str(body).map(SessionRequest::Activate).map_err(bad),
            _ => Err(format!("unknown session request {:?}", truncate(line, 40))),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// JSON on one line (serde_json's compact form escapes every newline).
fn compact<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializable")
}

/// A confirmation token is 1 to 64 ASCII letters, digits or `-` (it names a file).
pub fn valid_token(token: &str) -> bool {
    (1..=64).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The confirmation marker's content: `confirm`, or `reject REASON`.
pub fn encode_answer(rejection: Option<&str>) -> String {
    match rejection {
        None => "confirm\n".to_owned(),
        Some(why) => format!("reject {}\n", why.replace('\n', " ")),
    }
}

/// Read a marker: `Ok(())` confirmed, `Err(reason)` rejected; `None` when not understood.
pub fn parse_answer(text: &str) -> Option<Result<(), String>> {
    let text = text.trim_end();
    if text == "confirm" {
        Some(Ok(()))
    } else {
        text.strip_prefix("reject ").map(|why| Err(why.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let lines = [
            HostLine::Generation(7),
            HostLine::Line("activate: starting service web".into()),
            HostLine::Warning("w".into()),
            HostLine::Event("rolling back".into()),
            HostLine::Confirm { seconds: 30, token: "ab-12".into() },
            HostLine::Result(HostResult {
                success: false,
                generation: Some(3),
                detail: "activate exited with code 1; rolled back".into(),
            }),
        ];
        for l in lines {
            assert_eq!(HostLine::parse(&l.encode()), Some(l));
        }
        assert_eq!(HostLine::parse("line a\nb"), Some(HostLine::Line("a\nb".into())));
        assert_eq!(HostLine::Line("a\nb".into()).encode(), "line a b");
        assert_eq!(HostLine::parse("hello"), None);
        assert_eq!(HostLine::parse("confirm 3 ../x"), None);
        assert_eq!(HostLine::parse("generation x"), None);
    }

    #[test]
    fn session_requests_round_trip() {
        let requests = [
            SessionRequest::Facts(FactsRequest {
                system: Some("/gnu/store/aaa-system".into()),
                devices: vec![DeviceSpec { device: "LABEL=root".into(), mount_point: "/".into() }],
                paths: vec!["/gnu/store/bbb-x\nwith newline".into()],
                profile: None,
                host_store: Some("auto".into()),
            }),
            SessionRequest::Copy,
            SessionRequest::Activate(ActivateRequest {
                system: "/gnu/store/aaa-system".into(),
                confirm_timeout_ms: Some(30_000),
                health_checks: vec![HostCheck { command: "true".into(), timeout_ms: 5 }],
                token: "ab-1".into(),
                switch: None,
            }),
            SessionRequest::Activate(ActivateRequest {
                system: "/nix/store/aaa-nixos-system".into(),
                confirm_timeout_ms: None,
                health_checks: vec![],
                token: "ab-2".into(),
                switch: Some(SwitchSpec {
                    profile: "/nix/var/nix/profiles/system".into(),
                    switch: vec!["bin/switch-to-configuration".into(), "switch".into()],
                    boot_switch: Some(vec!["bin/switch-to-configuration".into(), "boot".into()]),
                }),
            }),
        ];
        for r in requests {
            let line = r.encode();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(SessionRequest::parse(line.trim_end_matches('\n')), Ok(r));
        }
        assert!(SessionRequest::parse("copy now").is_err());
        assert!(SessionRequest::parse("facts {").unwrap_err().contains("\"facts\""));
        assert!(SessionRequest::parse("reboot").unwrap_err().contains("unknown"));
    }

    #[test]
    fn answers_and_tokens() {
        assert_eq!(parse_answer(&encode_answer(None)), Some(Ok(())));
        assert_eq!(
            parse_answer(&encode_answer(Some("tcp :80\nrefused"))),
            Some(Err("tcp :80 refused".into()))
        );
        assert_eq!(parse_answer("maybe"), None);
        assert!(valid_token("a1-B"));
        assert!(!valid_token(""));
        assert!(!valid_token("a/b"));
        assert!(!valid_token(&"a".repeat(65)));
    }
}
