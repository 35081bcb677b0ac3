//! Copy targets as URIs.
//!
//! ```text
//! ssh://[user@]host[:port][?root=DIR&store-dir=DIR&state-dir=DIR&store=KIND&sudo=1|0]
//!                                                                    a ferry agent over SSH
//! local:///ROOT[?store-dir=DIR&state-dir=DIR&store=KIND]             a ferry agent, local subprocess
//! nix+ssh://[user@]host[:port][?root=DIR]                            nix-store --serve --write
//! file:///DIR                                                        a binary cache directory
//! s3://BUCKET[/PREFIX][?endpoint=URL&region=R&profile=P&scheme=http|https]
//!                                                                    a binary cache in an S3 bucket
//! http://HOST[:PORT]/PATH, https://…                                 a binary cache over HTTP (read only)
//! ```
//! Query values are taken literally except `%XX` escapes.
//!
//! `s3://` parameters are Nix's: `endpoint` is an S3-compatible server (`host[:port]`, or a whole
//! `http(s)://host[:port]` URL; AWS when absent), `scheme` the scheme put in front of an endpoint
//! given without one (`https` by default), `region` the signing region, `profile` the section of
//! `~/.aws/credentials` (else `AWS_PROFILE`). No credential is ever part of a URI.
//!
//! `store` (`ferry`, `nix`, `guix`) says whose store the agent fills, as its `--store` option:
//! ferry's own (the default), or the host's Nix or Guix store, whose daemon then registers each
//! verified path (`nix-store --serve --write`, `guix archive --import`).
//!
//! `sudo` (ssh:// only) says whether the agent runs under `sudo -n` when the login user is not
//! root: by default it does exactly when no `root=` is given (the host's own store is root's);
//! `sudo=1` also with a `root=` (a root-owned store elsewhere), `sudo=0` never. A root login
//! never uses sudo.

use std::path::PathBuf;

/// A URI that is not one of the forms above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target {uri:?}: {reason} (expected ssh://[user@]host[:port], local:///ROOT, nix+ssh://[user@]host[:port], file:///DIR, s3://BUCKET or http(s)://…)")]
pub struct UriError {
    pub uri: String,
    pub reason: String,
}

/// Which store on the host (query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreParams {
    pub root: Option<PathBuf>,
    pub store_dir: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// `store=ferry|nix|guix`: the agent's `--store` (`None`: ferry's own store).
    pub store: Option<String>,
    /// `sudo=1|0`: `None` chooses by `root` (see the module doc).
    pub sudo: Option<bool>,
}

impl StoreParams {
    /// Whether a login user other than root runs the agent under `sudo -n`.
    pub fn wants_sudo(&self) -> bool {
        self.sudo.unwrap_or(self.root.is_none())
    }

    /// Whether a login user whose uid is `uid` runs the agent under `sudo -n`.
    pub fn use_sudo(&self, uid: u32) -> bool {
        uid != 0 && self.wants_sudo()
    }
}

/// An SSH endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshEndpoint {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `ssh://`.
    Ssh { endpoint: SshEndpoint, store: StoreParams },
    /// `local:///ROOT`.
    Local { store: StoreParams },
    /// `nix+ssh://`.
    NixSsh { endpoint: SshEndpoint, store: StoreParams },
    /// `file:///DIR`.
    File { dir: PathBuf },
    /// `s3://BUCKET[/PREFIX]`.
    S3(S3Location),
    /// `http(s)://…`: the whole URI, without a trailing slash.
    Http { url: String },
}

/// A binary cache in an S3 bucket (see the module doc for the parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing slash (may be empty).
    pub prefix: String,
    /// The server's base URL (`http(s)://host[:port]`); `None` is AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
}

impl S3Location {
    /// Parse the part after `s3://`: `BUCKET[/PREFIX][?QUERY]`.
    fn parse(rest: &str) -> Result<S3Location, String> {
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err("no bucket".into());
        }
        let mut loc = S3Location {
            bucket: bucket.to_owned(),
            prefix: unescape(prefix.trim_matches('/'))?,
            ..S3Location::default()
        };
        let mut scheme = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or("query parameter without '='")?;
            let v = unescape(v)?;
            match k {
                "endpoint" => loc.endpoint = Some(v),
                "region" => loc.region = Some(v),
                "profile" => loc.profile = Some(v),
                "scheme" if v == "http" || v == "https" => scheme = Some(v),
                "scheme" => return Err(format!("scheme={v:?}: expected http or https")),
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?} (known: endpoint, region, profile, scheme)"
                    ))
                }
            }
        }
        if let Some(e) = &loc.endpoint {
            let e = e.trim_end_matches('/');
            loc.endpoint = Some(if e.starts_with("http://") || e.starts_with("https://") {
                e.to_owned()
            } else {
                format!("{}://{e}", scheme.as_deref().unwrap_or("https"))
            });
        }
        Ok(loc)
    }
}

fn unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after unescaping".to_owned())
}

impl Target {
    /// Parse a target URI.
    pub fn parse(uri: &str) -> Result<Target, UriError> {
        let err = |reason: &str| UriError { uri: uri.to_owned(), reason: reason.to_owned() };
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| err("no scheme"))?;
        match scheme {
            "s3" => return Ok(Target::S3(S3Location::parse(rest).map_err(|r| err(&r))?)),
            "http" | "https" => {
                let host = rest.split(['/', '?']).next().unwrap_or("");
                if host.is_empty() {
                    return Err(err("no host"));
                }
                return Ok(Target::Http { url: uri.trim_end_matches('/').to_owned() });
            }
            _ => {}
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let mut store = StoreParams::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| err("query parameter without '='"))?;
            let v = unescape(v).map_err(|r| err(&r))?;
            match k {
                "root" => store.root = Some(PathBuf::from(v)),
                "store-dir" => store.store_dir = Some(v),
                "state-dir" => store.state_dir = Some(PathBuf::from(v)),
                "store" => {
                    if !matches!(v.as_str(), "ferry" | "nix" | "guix") {
                        return Err(err(&format!("store={v:?}: expected ferry, nix or guix")));
                    }
                    store.store = Some(v);
                }
                "sudo" => {
                    store.sudo = Some(match v.as_str() {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => return Err(err(&format!("sudo={v:?}: expected 1 or 0"))),
                    })
                }
                _ => {
                    return Err(err(&format!(
                        "unknown parameter {k:?} (known: root, store-dir, state-dir, store, sudo)"
                    )))
                }
            }
        }
        let endpoint = |authority: &str| -> Result<SshEndpoint, UriError> {
            let authority = authority.trim_end_matches('/');
            let (user, hostport) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(unescape(u).map_err(|r| err(&r))?), h),
                None => (None, authority),
            };
            let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
                let (h, after) = rest.split_once(']').ok_or_else(|| err("unclosed '['"))?;
                (h.to_owned(), after.strip_prefix(':'))
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h.to_owned(), Some(p)),
                    None => (hostport.to_owned(), None),
                }
            };
            if host.is_empty() {
                return Err(err("no host"));
            }
            let port = port.map(|p| p.parse::<u16>().map_err(|_| err("bad port"))).transpose()?;
            Ok(SshEndpoint { user, host, port })
        };
        if store.sudo.is_some() && scheme != "ssh" {
            return Err(err("sudo= is for ssh:// targets only"));
        }
        match scheme {
            "ssh" => Ok(Target::Ssh { endpoint: endpoint(rest)?, store }),
            "nix+ssh" => Ok(Target::NixSsh { endpoint: endpoint(rest)?, store }),
            "local" | "file" => {
                let path = rest
                    .strip_prefix('/')
                    .ok_or_else(|| err("expected three slashes: local:///ROOT"))?;
                let path = PathBuf::from(format!("/{}", unescape(path).map_err(|r| err(&r))?));
                if scheme == "local" {
                    if store.root.is_some() {
                        return Err(err("the root is the path of a local:// URI"));
                    }
                    store.root = Some(path);
                    Ok(Target::Local { store })
                } else {
                    if store != StoreParams::default() {
                        return Err(err("file:// takes no parameters"));
                    }
                    Ok(Target::File { dir: path })
                }
            }
            other => Err(err(&format!("unknown scheme {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Target::parse("ssh://root@web1:2222?root=/tmp/h&store-dir=/nix/store").unwrap(),
            Target::Ssh {
                endpoint: SshEndpoint {
                    user: Some("root".into()),
                    host: "web1".into(),
                    port: Some(2222)
                },
                store: StoreParams {
                    root: Some("/tmp/h".into()),
                    store_dir: Some("/nix/store".into()),
                    state_dir: None,
                    store: None,
                    sudo: None,
                },
            }
        );
        assert_eq!(
            Target::parse("ssh://[::1]:22").unwrap(),
            Target::Ssh {
                endpoint: SshEndpoint { user: None, host: "::1".into(), port: Some(22) },
                store: StoreParams::default()
            }
        );
        assert_eq!(
            Target::parse("local:///tmp/a%20b?state-dir=/s").unwrap(),
            Target::Local {
                store: StoreParams {
                    root: Some("/tmp/a b".into()),
                    store_dir: None,
                    state_dir: Some("/s".into()),
                    store: None,
                    sudo: None,
                }
            }
        );
        assert_eq!(
            Target::parse("file:///tmp/cache").unwrap(),
            Target::File { dir: "/tmp/cache".into() }
        );
        assert!(matches!(Target::parse("nix+ssh://h").unwrap(), Target::NixSsh { .. }));
        assert_eq!(
            Target::parse("s3://b/some/prefix/?endpoint=127.0.0.1:9000&scheme=http&region=eu-1")
                .unwrap(),
            Target::S3(S3Location {
                bucket: "b".into(),
                prefix: "some/prefix".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-1".into()),
                profile: None,
            })
        );
        assert_eq!(
            Target::parse("s3://b?endpoint=http://h:1/&profile=p").unwrap(),
            Target::S3(S3Location {
                bucket: "b".into(),
                endpoint: Some("http://h:1".into()),
                profile: Some("p".into()),
                ..S3Location::default()
            })
        );
        assert_eq!(
            Target::parse("http://127.0.0.1:8/bucket/").unwrap(),
            Target::Http { url: "http://127.0.0.1:8/bucket".into() }
        );
        let Target::Ssh { store, .. } = Target::parse("ssh://u@h?root=/r&sudo=1").unwrap() else {
            panic!("not ssh")
        };
        assert_eq!(store.sudo, Some(true));
        assert!(store.use_sudo(1000) && !store.use_sudo(0));
        for bad in [
            "web1",
            "ftp://x",
            "local://relative",
            "ssh://",
            "ssh://h:port",
            "local:///x?bogus=1",
            "ssh://h?sudo=maybe",
            "local:///x?sudo=1",
            "nix+ssh://h?sudo=1",
            "s3://",
            "s3:///x",
            "s3://b?secret=1",
            "s3://b?scheme=ftp",
            "http:///x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sudo_by_default_only_for_the_hosts_own_store() {
        let own = StoreParams::default();
        let elsewhere = StoreParams { root: Some("/srv/r".into()), ..StoreParams::default() };
        assert!(own.use_sudo(1000) && !own.use_sudo(0));
        assert!(!elsewhere.use_sudo(1000));
        let never = StoreParams { sudo: Some(false), ..StoreParams::default() };
        assert!(!never.use_sudo(1000));
    }
}
