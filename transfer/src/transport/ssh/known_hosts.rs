//! Host-key checking: the key a host offers must equal the pinned [`SshConfig::host_key`] or an
//! entry for the host in `known_hosts` (plain, `[host]:port`, hashed `|1|salt|hash`, wildcard and
//! negated patterns, `@revoked` lines). Keys are never trusted on first use: an unknown or
//! changed key is an [`SshError`] with the expected and offered keys and the `ssh-keyscan` line
//! to record it after checking it out of band.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use russh::keys::ssh_key::{HashAlg, PublicKey};
use russh::keys::Algorithm;

use super::config::glob;
use super::{OfferedKey, SshConfig, SshError};

fn key_line(key: &PublicKey) -> String {
    let text = key.to_openssh().unwrap_or_default();
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The key types a host key can have, as OpenSSH names them.
const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// A pinned host key as written: the bare key (`TYPE BASE64 [COMMENT]`), or a line that
/// `ssh-keyscan` prints or known_hosts holds (`HOSTS TYPE BASE64 [COMMENT]`); `#` lines and
/// blank lines around it are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyLine {
    /// `TYPE BASE64`, the key alone.
    pub key: String,
    /// The host field of a keyscan or known_hosts line (`[host]:port`, `host`), if there was one.
    pub hosts: Option<String>,
}

/// Why a pinned host key was refused: the message, and the byte offset in the text it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyLineError {
    /// Byte offset of the offending part of the text.
    pub offset: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Parse a pinned host key (see [`HostKeyLine`]): the key must decode and be of a known type.
pub fn parse_host_key(text: &str) -> Result<HostKeyLine, HostKeyLineError> {
    let err = |offset: usize, message: String| HostKeyLineError { offset, message };
    let expected = "expected the key as ssh-keyscan prints it (\"[host]:port ssh-ed25519 AAAA…\" \
                    or \"host ssh-ed25519 AAAA…\") or the bare key (\"ssh-ed25519 AAAA…\")";
    let mut lines = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            lines.push((start, line));
        }
        start += line.len();
    }
    let (line_start, line) = match lines.as_slice() {
        [] => return Err(err(0, format!("no key: {expected}"))),
        [one] => *one,
        [_, (second, _), ..] => {
            return Err(err(
                *second,
                "several keys: pin one of them (one line, the ssh-ed25519 one if there is one)"
                    .to_owned(),
            ))
        }
    };
    // The words of the line with their offsets in `text`.
    let mut words: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for word in line.split_whitespace() {
        let pos = line[at..].find(word).map_or(at, |p| at + p);
        words.push((line_start + pos, word));
        at = pos + word.len();
    }
    let is_type = |w: &str| KEY_TYPES.contains(&w);
    let (hosts, kind, data) = match words.as_slice() {
        [(o, w), ..] if w.starts_with('@') => {
            return Err(err(
                *o,
                format!("a known_hosts marker ({w}) is not a host key; {expected}"),
            ))
        }
        [(_, t), rest @ ..] if is_type(t) => (None, words[0], rest.first().copied()),
        [(o, h), (_, t), rest @ ..] if is_type(t) => {
            (Some((*o, *h)), words[1], rest.first().copied())
        }
        [_, (o, t), ..] if t.contains("ssh") || t.contains("ecdsa") => {
            return Err(err(
                *o,
                format!("unknown key type {t:?} (known: {})", KEY_TYPES.join(", ")),
            ))
        }
        [(o, t)] | [(o, t), ..] => {
            return Err(err(*o, format!("{t:?} is not a key type; {expected}")))
        }
        [] => unreachable!("a line with a non-blank character has a word"),
    };
    let Some((data_at, data)) = data else {
        return Err(err(
            kind.0 + kind.1.len(),
            format!("the key data is missing after {}", kind.1),
        ));
    };
    let key = format!("{} {data}", kind.1);
    PublicKey::from_openssh(&key).map_err(|e| {
        err(data_at, format!("not a valid {} key ({e}): cut short or mistyped?", kind.1))
    })?;
    Ok(HostKeyLine { key, hosts: hosts.map(|(_, h)| h.to_owned()) })
}

/// One known_hosts line that applies to the host.
#[derive(Debug)]
pub(super) struct KnownEntry {
    line: usize,
    revoked: bool,
    key: PublicKey,
}

fn hashed_match(entry: &str, name: &str) -> bool {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut parts = entry.trim_start_matches("|1|").split('|');
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else { return false };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else { return false };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else { return false };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// Whether the host field of a known_hosts line names `name`, honouring `!negations`.
fn hosts_field_matches(field: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in field.split(',') {
        if let Some(neg) = pattern.strip_prefix('!') {
            if glob(neg.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if pattern.starts_with("|1|") {
            matched |= hashed_match(pattern, name);
        } else {
            matched |= glob(pattern.as_bytes(), name.as_bytes());
        }
    }
    matched
}

/// The entries of a known_hosts text that apply to `name` (`host` or `[host]:port`).
fn known_entries(text: &str, name: &str) -> Vec<KnownEntry> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace().peekable();
        let mut revoked = false;
        match fields.peek() {
            Some(&"@revoked") => {
                revoked = true;
                fields.next();
            }
            // Host certificates are not used: this client does not advertise them.
            Some(m) if m.starts_with('@') => continue,
            _ => {}
        }
        let (Some(hosts), Some(kind), Some(data)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !hosts_field_matches(hosts, name) {
            continue;
        }
        if let Ok(key) = PublicKey::from_openssh(&format!("{kind} {data}")) {
            out.push(KnownEntry { line: i + 1, revoked, key });
        }
    }
    out
}

/// What the client expects of the host key.
#[derive(Debug, Clone)]
pub(super) enum Expectation {
    Pinned(PublicKey),
    KnownHosts { path: String, entries: Arc<Vec<KnownEntry>> },
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

pub(super) fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    let rsa = |x: &Algorithm| matches!(x, Algorithm::Rsa { .. });
    (rsa(a) && rsa(b)) || a == b
}

impl Expectation {
    /// What `cfg` expects: its pinned key, or the host's entries in its known_hosts file (none
    /// when the file does not exist).
    pub(super) fn for_config(cfg: &SshConfig) -> Result<Expectation, SshError> {
        let target = cfg.target();
        Ok(match &cfg.host_key {
            Some(text) => {
                let bad = |reason: String| SshError::BadPinnedKey {
                    target: target.clone(),
                    key: text.clone(),
                    reason,
                };
                let line = parse_host_key(text).map_err(|e| bad(e.message))?;
                Expectation::Pinned(
                    PublicKey::from_openssh(&line.key).map_err(|e| bad(e.to_string()))?,
                )
            }
            None => {
                let path =
                    cfg.known_hosts_path().unwrap_or_else(|| PathBuf::from("~/.ssh/known_hosts"));
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                    Err(source) => {
                        return Err(SshError::KnownHosts {
                            target,
                            path: path.display().to_string(),
                            source,
                        })
                    }
                };
                Expectation::KnownHosts {
                    path: path.display().to_string(),
                    entries: Arc::new(known_entries(&text, &cfg.known_hosts_name())),
                }
            }
        })
    }

    pub(super) fn keys(&self) -> Vec<&PublicKey> {
        match self {
            Expectation::Pinned(k) => vec![k],
            Expectation::KnownHosts { entries, .. } => {
                entries.iter().filter(|e| !e.revoked).map(|e| &e.key).collect()
            }
        }
    }

    pub(super) fn check(&self, cfg: &SshConfig, offered: &PublicKey) -> Result<(), SshError> {
        let target = cfg.target();
        let offered_key = || {
            Box::new(OfferedKey {
                key: key_line(offered),
                fingerprint: offered.fingerprint(HashAlg::Sha256).to_string(),
                keyscan: cfg.keyscan_command(),
            })
        };
        match self {
            Expectation::Pinned(pinned) if same_key(pinned, offered) => Ok(()),
            Expectation::Pinned(pinned) => Err(SshError::HostKeyMismatch {
                target,
                origin: cfg.source.pinned().to_owned(),
                expected: vec![key_line(pinned)],
                offered: offered_key(),
            }),
            Expectation::KnownHosts { path, entries } => {
                if entries.iter().any(|e| e.revoked && same_key(&e.key, offered)) {
                    return Err(SshError::HostKeyRevoked {
                        target,
                        offered: key_line(offered),
                        known_hosts: path.clone(),
                    });
                }
                let valid: Vec<&KnownEntry> = entries.iter().filter(|e| !e.revoked).collect();
                if valid.iter().any(|e| same_key(&e.key, offered)) {
                    return Ok(());
                }
                if valid.is_empty() {
                    return Err(SshError::HostKeyUnknown {
                        target,
                        pin: cfg.source.pin_hint(&key_line(offered)),
                        name: cfg.known_hosts_name(),
                        known_hosts: path.clone(),
                        offered: offered_key(),
                    });
                }
                let lines: Vec<String> = valid.iter().map(|e| e.line.to_string()).collect();
                Err(SshError::HostKeyMismatch {
                    target,
                    origin: format!("{path} line {}", lines.join(", ")),
                    expected: valid.iter().map(|e| key_line(&e.key)).collect(),
                    offered: offered_key(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_patterns() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        // |1|salt|hash for "[127.0.0.1]:2222", made with HMAC-SHA1.
        let hashed = {
            use base64::Engine as _;
            use hmac::{Hmac, Mac};
            let salt = [7u8; 20];
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
            mac.update(b"[127.0.0.1]:2222");
            let b64 = base64::engine::general_purpose::STANDARD;
            format!("|1|{}|{}", b64.encode(salt), b64.encode(mac.finalize().into_bytes()))
        };
        let text = format!(
            "# comment\n\nexample.org,10.0.0.1 {key}\n{hashed} {key}\n*.lan,!bad.lan {key} c\n@revoked [x]:23 {key}\n@cert-authority * {key}\n"
        );
        let lines = |name: &str| {
            known_entries(&text, name).iter().map(|e| (e.line, e.revoked)).collect::<Vec<_>>()
        };
        assert_eq!(lines("example.org"), vec![(3, false)]);
        assert_eq!(lines("10.0.0.1"), vec![(3, false)]);
        assert_eq!(lines("[127.0.0.1]:2222"), vec![(4, false)]);
        assert_eq!(lines("[127.0.0.1]:2223"), vec![]);
        assert_eq!(lines("good.lan"), vec![(5, false)]);
        assert_eq!(lines("bad.lan"), vec![]);
        assert_eq!(lines("[x]:23"), vec![(6, true)]);
    }

    #[test]
    fn pinned_key_lines() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        let ok = |text: &str| parse_host_key(text).unwrap();
        assert_eq!(ok(key), HostKeyLine { key: key.into(), hosts: None });
        assert_eq!(ok(&format!("  {key} root@web\n")).key, key);
        let scan = ok(&format!("[10.0.0.2]:2222 {key}"));
        assert_eq!((scan.key.as_str(), scan.hosts.as_deref()), (key, Some("[10.0.0.2]:2222")));
        assert_eq!(ok(&format!("# 10.0.0.2:22 SSH-2.0-OpenSSH_9.2\nweb {key}\n")).key, key);

        let err = |text: &str| parse_host_key(text).unwrap_err();
        // The offset points at what is wrong.
        let cut = format!("web {}", &key[..60]);
        assert_eq!(err(&cut).offset, 4 + "ssh-ed25519 ".len(), "{:?}", err(&cut));
        assert!(err(&cut).message.contains("not a valid ssh-ed25519 key"));
        assert_eq!(err("web ssh-ed25519").offset, 15);
        assert!(err("ssh-foo AAAA").message.contains("not a key type"));
        assert!(err("h ssh-ed448 AAAA").message.contains("unknown key type"));
        assert_eq!(err("").offset, 0);
        assert!(err(&format!("@revoked h {key}")).message.contains("marker"));
        let two = format!("h {key}\nh {key}\n");
        assert_eq!(err(&two).offset, two.find('\n').unwrap() + 1);
        // The data must be of the type the line says.
        let rsa_named = key.replace("ssh-ed25519", "ssh-rsa");
        assert!(err(&rsa_named).message.contains("not a valid ssh-rsa key"));
    }
}
