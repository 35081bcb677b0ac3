//! OpenSSH client configuration files (`~/.ssh/config`, or the file `ssh -F` would take), read
//! the way `ssh` reads them, for the keywords ferry acts on: `Host` (patterns with `*`, `?`,
//! `!negation`, several per line), `HostName`, `User`, `Port`, `IdentityFile`, `IdentitiesOnly`,
//! `UserKnownHostsFile`, `ProxyJump`, `ConnectTimeout`, and `Include` (relative to `~/.ssh`,
//! with `*`/`?` in file names, 16 levels at most). Pure: [`ConfigFile::parse`] takes the text and
//! a loader for included files; [`ConfigFile::settings`] answers for one host.
//!
//! - **First obtained value wins**, as in OpenSSH: the first matching block that sets a keyword
//!   decides it; `IdentityFile` accumulates (every one is tried, in order).
//! - **Host** patterns are matched against the name given (the alias), never the `HostName`.
//!   Options before the first `Host` apply to every host.
//! - **Match**: only `Match all` applies; a block with any other criterion is skipped as a
//!   whole (ferry does not evaluate `exec`, `user`, `localuser`…), so none of its settings is
//!   used on a guess.
//! - **Strict** where it matters: a keyword ferry uses with a missing or malformed value, an
//!   unterminated quote, a `Host` without patterns or an `Include` loop is an error at
//!   `file:line`. Keywords ferry does not use are skipped (OpenSSH has about a hundred).
//! - `%h %p %r %n %u %d %%` tokens and a leading `~` are expanded by [`expand`], by the caller,
//!   once the values they stand for are known.
//!
//! Written here rather than taken from a crate: `ssh2-config` (the maintained parser) needs
//! Rust 1.88 and edition 2024 from 0.6 on, above this workspace's rust-version 1.85, and keeps
//! neither `IdentitiesOnly` nor `UserKnownHostsFile`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Included files nested deeper than this are refused (a loop, most likely).
const MAX_INCLUDE_DEPTH: usize = 16;

/// A malformed line of a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The keywords ferry acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    HostName,
    User,
    Port,
    IdentityFile,
    IdentitiesOnly,
    UserKnownHostsFile,
    ProxyJump,
    ConnectTimeout,
}

impl Keyword {
    fn from_name(name: &str) -> Option<Keyword> {
        Some(match name.to_ascii_lowercase().as_str() {
            "hostname" => Keyword::HostName,
            "user" => Keyword::User,
            "port" => Keyword::Port,
            "identityfile" => Keyword::IdentityFile,
            "identitiesonly" => Keyword::IdentitiesOnly,
            "userknownhostsfile" => Keyword::UserKnownHostsFile,
            "proxyjump" => Keyword::ProxyJump,
            "connecttimeout" => Keyword::ConnectTimeout,
            _ => return None,
        })
    }
}

/// When a block's options apply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    /// Before any `Host`, or `Match all`.
    Always,
    /// `Host` patterns: `(negated, pattern)`.
    Hosts(Vec<(bool, String)>),
    /// A `Match` ferry does not evaluate.
    Never,
}

impl Condition {
    fn applies_to(&self, host: &str) -> bool {
        match self {
            Condition::Always => true,
            Condition::Never => false,
            Condition::Hosts(patterns) => {
                let mut matched = false;
                for (negated, pattern) in patterns {
                    if glob(pattern.as_bytes(), host.as_bytes()) {
                        if *negated {
                            return false;
                        }
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Setting {
    keyword: Keyword,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    Text(String),
    List(Vec<String>),
    Flag(bool),
    Port(u16),
    Seconds(u64),
}

#[derive(Debug, Clone)]
struct Block {
    condition: Condition,
    settings: Vec<Setting>,
}

/// A parsed config file (with its includes), ready for [`ConfigFile::settings`].
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    blocks: Vec<Block>,
}

/// What a config file says about one host; `None`: not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// `HostName` (tokens not expanded).
    pub host_name: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// Every `IdentityFile`, in order (tokens and `~` not expanded).
    pub identity_files: Vec<String>,
    /// `IdentitiesOnly`.
    pub identities_only: Option<bool>,
    /// `UserKnownHostsFile` (its files, not expanded).
    pub user_known_hosts_files: Option<Vec<String>>,
    /// `ProxyJump`, as written (`none` included).
    pub proxy_jump: Option<String>,
    /// `ConnectTimeout`.
    pub connect_timeout: Option<Duration>,
}

/// Reads an included file: `Ok(None)` when it does not exist.
pub type Loader<'a> = &'a dyn Fn(&Path) -> std::io::Result<Option<String>>;

/// Lists the files of a directory (for `Include` with wildcards), sorted.
pub type Lister<'a> = &'a dyn Fn(&Path) -> Vec<PathBuf>;

struct Parser<'a> {
    load: Loader<'a>,
    list: Lister<'a>,
    /// `~/.ssh`, where relative `Include` paths start.
    ssh_dir: PathBuf,
    home: Option<PathBuf>,
    blocks: Vec<Block>,
}

impl ConfigFile {
    /// Parse `text` (the file `path`); `Include`d files are read with `load` and directories
    /// listed with `list`; relative includes are under `home/.ssh`.
    pub fn parse(
        path: &Path,
        text: &str,
        home: Option<&Path>,
        load: Loader<'_>,
        list: Lister<'_>,
    ) -> Result<ConfigFile, ConfigError> {
        let mut parser = Parser {
            load,
            list,
            ssh_dir: home.map_or_else(|| PathBuf::from(".ssh"), |h| h.join(".ssh")),
            home: home.map(Path::to_owned),
            blocks: vec![Block { condition: Condition::Always, settings: Vec::new() }],
        };
        parser.file(path, text, 0)?;
        Ok(ConfigFile { blocks: parser.blocks })
    }

    /// What the file says about `host` (the name as given): the first value of each keyword
    /// among the blocks that apply, every `IdentityFile`.
    pub fn settings(&self, host: &str) -> HostSettings {
        let mut s = HostSettings::default();
        for block in self.blocks.iter().filter(|b| b.condition.applies_to(host)) {
            for setting in &block.settings {
                match (setting.keyword, &setting.value) {
                    (Keyword::HostName, Value::Text(v)) => {
                        s.host_name.get_or_insert_with(|| v.clone());
                    }
                    (Keyword::User, Value::Text(v)) => {
                        s.user.get_or_insert_with(|| v.clone());
                    }
                    (Keyword::ProxyJump, Value::Text(v)) => {
                        s.proxy_jump.get_or_insert_with(|| v.clone());
                    }
                    (Keyword::Port, Value::Port(p)) => {
                        s.port.get_or_insert(*p);
                    }
                    (Keyword::IdentityFile, Value::Text(v)) => s.identity_files.push(v.clone()),
                    (Keyword::IdentitiesOnly, Value::Flag(f)) => {
                        s.identities_only.get_or_insert(*f);
                    }
                    (Keyword::UserKnownHostsFile, Value::List(v)) => {
                        s.user_known_hosts_files.get_or_insert_with(|| v.clone());
                    }
                    (Keyword::ConnectTimeout, Value::Seconds(t)) => {
                        s.connect_timeout.get_or_insert(Duration::from_secs(*t));
                    }
                    _ => {}
                }
            }
        }
        s
    }
}

impl Parser<'_> {
    fn file(&mut self, path: &Path, text: &str, depth: usize) -> Result<(), ConfigError> {
        let file = path.display().to_string();
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| ConfigError { file: file.clone(), line: i + 1, message };
            let words = split_words(raw).map_err(err)?;
            let Some((keyword, args)) = words.split_first() else { continue };
            let lower = keyword.to_ascii_lowercase();
            match lower.as_str() {
                "host" => {
                    if args.is_empty() {
                        return Err(err("`Host` needs at least one pattern".into()));
                    }
                    let patterns = args
                        .iter()
                        .map(|p| match p.strip_prefix('!') {
                            Some(n) => (true, n.to_owned()),
                            None => (false, p.clone()),
                        })
                        .collect();
                    self.start(Condition::Hosts(patterns));
                }
                "match" => {
                    let all = args.len() == 1 && args[0].eq_ignore_ascii_case("all");
                    self.start(if all { Condition::Always } else { Condition::Never });
                }
                "include" => {
                    if args.is_empty() {
                        return Err(err("`Include` needs a file".into()));
                    }
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(err(format!(
                            "`Include` nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)"
                        )));
                    }
                    let enclosing = self.current().condition.clone();
                    for arg in args {
                        for included in self.include_paths(arg) {
                            let text = (self.load)(&included).map_err(|e| {
                                err(format!("cannot read {}: {e}", included.display()))
                            })?;
                            if let Some(text) = text {
                                self.file(&included, &text, depth + 1)?;
                            }
                        }
                    }
                    // Lines after the Include belong to the block it appeared in.
                    self.start(enclosing);
                }
                _ => {
                    let Some(keyword) = Keyword::from_name(keyword) else { continue };
                    let value = value(keyword, args).map_err(err)?;
                    self.current().settings.push(Setting { keyword, value });
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, condition: Condition) {
        self.blocks.push(Block { condition, settings: Vec::new() });
    }

    fn current(&mut self) -> &mut Block {
        self.blocks.last_mut().expect("the first block is made in parse")
    }

    /// The files an `Include` argument names: `~` expanded, relative ones under `~/.ssh`,
    /// wildcards in the file name matched against the directory's entries.
    fn include_paths(&self, arg: &str) -> Vec<PathBuf> {
        let path = match (arg.strip_prefix("~/"), &self.home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ if Path::new(arg).is_absolute() => PathBuf::from(arg),
            _ => self.ssh_dir.join(arg),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.contains(['*', '?']) {
            return vec![path];
        }
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        (self.list)(&dir)
            .into_iter()
            .filter(|p| {
                p.file_name().is_some_and(|n| glob(name.as_bytes(), n.to_string_lossy().as_bytes()))
            })
            .collect()
    }
}

/// The value of one of ferry's keywords, checked.
fn value(keyword: Keyword, args: &[String]) -> Result<Value, String> {
    let name = format!("{keyword:?}");
    let one = || match args {
        [v] => Ok(v.clone()),
        [] => Err(format!("`{name}` needs a value")),
        _ => Err(format!("`{name}` takes one value, not {}", args.len())),
    };
    Ok(match keyword {
        Keyword::HostName | Keyword::User | Keyword::IdentityFile => Value::Text(one()?),
        Keyword::ProxyJump => {
            let v = one()?;
            if !v.eq_ignore_ascii_case("none") {
                for hop in v.split(',') {
                    parse_jump(hop).map_err(|e| format!("`ProxyJump {v}`: {e}"))?;
                }
            }
            Value::Text(v)
        }
        Keyword::Port => {
            let v = one()?;
            Value::Port(
                v.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`Port {v}`: not a port number"))?,
            )
        }
        Keyword::ConnectTimeout => {
            let v = one()?;
            Value::Seconds(
                v.parse::<u64>()
                    .map_err(|_| format!("`ConnectTimeout {v}`: not a number of seconds"))?,
            )
        }
        Keyword::IdentitiesOnly => {
            let v = one()?;
            Value::Flag(match v.to_ascii_lowercase().as_str() {
                "yes" | "true" => true,
                "no" | "false" => false,
                _ => return Err(format!("`IdentitiesOnly {v}`: yes or no")),
            })
        }
        Keyword::UserKnownHostsFile => {
            if args.is_empty() {
                return Err(format!("`{name}` needs a file"));
            }
            Value::List(args.to_vec())
        }
    })
}

/// The words of a line: `Keyword value...` or `Keyword=value`, double quotes grouping, `#`
/// starting a comment outside quotes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    let mut first_done = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            '#' if word.is_none() => break,
            // The first `=` (with spaces around it or not) separates keyword and value.
            '=' if !first_done && (words.is_empty() || (words.len() == 1 && word.is_none())) => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
                first_done = true;
            }
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

/// Glob match with `*` and `?` (OpenSSH `match_pattern`), ASCII case-insensitive.
pub(super) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => {
            text.first().is_some_and(|t| t.eq_ignore_ascii_case(c)) && glob(rest, &text[1..])
        }
    }
}

/// One hop of `ProxyJump`: `[user@]host[:port]`, `[user@][v6]:port`, or `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// The user, when given.
    pub user: Option<String>,
    /// The host (an alias looked up in the config file too).
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
}

/// Parse one `ProxyJump` hop.
pub fn parse_jump(spec: &str) -> Result<Jump, String> {
    let spec = spec.trim();
    let rest = spec.strip_prefix("ssh://").unwrap_or(spec).trim_end_matches('/');
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_owned()), h),
        Some(_) => return Err(format!("{spec:?}: empty user")),
        None => (None, rest),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or_else(|| format!("{spec:?}: unclosed '['"))?;
        match after {
            "" => (h, None),
            _ => (h, Some(after.strip_prefix(':').ok_or_else(|| format!("{spec:?}: bad port"))?)),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{spec:?}: no host"));
    }
    let port = port
        .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0))
        .map(|p| p.ok_or_else(|| format!("{spec:?}: bad port")))
        .transpose()?;
    Ok(Jump { user, host: host.to_owned(), port })
}

/// The values `%` tokens stand for.
#[derive(Debug, Clone, Default)]
pub struct Tokens<'a> {
    /// `%h`: the host name (after `HostName`).
    pub host: &'a str,
    /// `%n`: the name as given.
    pub alias: &'a str,
    /// `%p`.
    pub port: u16,
    /// `%r`: the remote user.
    pub user: &'a str,
    /// `%u`: the local user.
    pub local_user: &'a str,
    /// `%d`: the home directory, also for a leading `~`.
    pub home: Option<&'a Path>,
}

/// `text` with `%h %n %p %r %u %d %%` replaced and a leading `~/` made the home directory.
/// An unknown token is an error.
pub fn expand(text: &str, t: &Tokens<'_>) -> Result<String, String> {
    let home = t.home.map(|h| h.display().to_string());
    let mut out = String::new();
    let text = match (text.strip_prefix("~/"), &home) {
        (Some(rest), Some(h)) => {
            out.push_str(h.trim_end_matches('/'));
            out.push('/');
            rest
        }
        _ => text,
    };
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(t.host),
            Some('n') => out.push_str(t.alias),
            Some('p') => out.push_str(&t.port.to_string()),
            Some('r') => out.push_str(t.user),
            Some('u') => out.push_str(t.local_user),
            Some('d') => out.push_str(home.as_deref().unwrap_or("~")),
            Some(other) => return Err(format!("{text:?}: unknown token %{other}")),
            None => return Err(format!("{text:?}: '%' at the end")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse_with(text: &str, files: &[(&str, &str)]) -> Result<ConfigFile, ConfigError> {
        let files: BTreeMap<PathBuf, String> =
            files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        let load = |p: &Path| Ok(files.get(p).cloned());
        let list = |d: &Path| files.keys().filter(|p| p.parent() == Some(d)).cloned().collect();
        ConfigFile::parse(Path::new("/h/.ssh/config"), text, Some(Path::new("/h")), &load, &list)
    }

    fn parse(text: &str) -> ConfigFile {
        parse_with(text, &[]).unwrap()
    }

    #[test]
    fn host_patterns_negation_and_first_wins() {
        let c = parse(
            "# comment\nUser everyone\n\nHost web? !web9 *.lan\n  HostName 10.0.0.%h\n  Port 2222\n\
             Host *\n  Port 22\n  User ignored\n  IdentityFile ~/.ssh/a\nHost web1\n  IdentityFile b\n",
        );
        let web1 = c.settings("web1");
        assert_eq!(web1.host_name.as_deref(), Some("10.0.0.%h"));
        assert_eq!(web1.port, Some(2222));
        assert_eq!(web1.user.as_deref(), Some("everyone"));
        assert_eq!(web1.identity_files, vec!["~/.ssh/a", "b"]);
        let web9 = c.settings("web9");
        assert_eq!((web9.host_name, web9.port), (None, Some(22)));
        assert_eq!(c.settings("db.LAN").port, Some(2222), "patterns are case-insensitive");
        assert_eq!(c.settings("web10").port, Some(22), "? is one character");
    }

    #[test]
    fn keyword_forms_and_values() {
        let c = parse(
            "Host a\n  hostname=\"x y\"\n  PORT = 23\n  IdentitiesOnly yes\n  ConnectTimeout 7 # c\n\
             \tUserKnownHostsFile ~/kh /etc/kh\n  ProxyJump u@b1:2200,[::1]:22,ssh://c\n  \
             SendEnv LANG\n",
        );
        let a = c.settings("a");
        assert_eq!(a.host_name.as_deref(), Some("x y"));
        assert_eq!(a.port, Some(23));
        assert_eq!(a.identities_only, Some(true));
        assert_eq!(a.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(a.user_known_hosts_files, Some(vec!["~/kh".into(), "/etc/kh".into()]));
        assert_eq!(a.proxy_jump.as_deref(), Some("u@b1:2200,[::1]:22,ssh://c"));
    }

    #[test]
    fn match_blocks() {
        let c = parse("Match exec true\n  User no\nMatch all\n  User yes\n");
        assert_eq!(c.settings("any").user.as_deref(), Some("yes"));
    }

    #[test]
    fn errors_at_their_line() {
        let line = |text: &str| parse_with(text, &[]).unwrap_err().line;
        assert_eq!(line("Host a\n  Port x\n"), 2);
        assert_eq!(line("\n\nHost\n"), 3);
        assert_eq!(line("ConnectTimeout soon\n"), 1);
        assert_eq!(line("Host a\nIdentitiesOnly maybe\n"), 2);
        assert_eq!(line("User \"unterminated\n"), 1);
        assert_eq!(line("ProxyJump a:0\n"), 1);
        assert_eq!(line("HostName\n"), 1);
        let e = parse_with("Host a\n Port 99999\n", &[]).unwrap_err();
        assert_eq!(e.to_string(), "/h/.ssh/config:2: `Port 99999`: not a port number");
    }

    #[test]
    fn include_relative_wildcard_conditional_and_loops() {
        let c = parse_with(
            "Include conf.d/*.conf\nHost b\n  Include extra\n  Port 3\n",
            &[
                ("/h/.ssh/conf.d/1.conf", "Host a\n  User one\n"),
                ("/h/.ssh/conf.d/2.conf", "Host a\n  User two\n  Port 1\n"),
                ("/h/.ssh/conf.d/skip.txt", "Host a\n  User no\n"),
                ("/h/.ssh/extra", "User bee\nHost c\n  User cee\n"),
            ],
        )
        .unwrap();
        assert_eq!(c.settings("a").user.as_deref(), Some("one"));
        assert_eq!(c.settings("a").port, Some(1));
        assert_eq!(c.settings("b").user.as_deref(), Some("bee"));
        assert_eq!(c.settings("b").port, Some(3), "lines after an Include stay in their block");
        assert_eq!(c.settings("c").user.as_deref(), Some("cee"));
        assert_eq!(c.settings("c").port, None);
        let looped = parse_with("Include /h/x\n", &[("/h/x", "Include /h/x\n")]).unwrap_err();
        assert!(looped.message.contains("nested"), "{looped}");
        assert!(parse_with("Include /missing\n", &[]).is_ok());
    }

    #[test]
    fn jumps() {
        let j = |s: &str| parse_jump(s).unwrap();
        assert_eq!(j("b"), Jump { user: None, host: "b".into(), port: None });
        assert_eq!(
            j("u@b:2200"),
            Jump { user: Some("u".into()), host: "b".into(), port: Some(2200) }
        );
        assert_eq!(j("[fe80::1]:22").host, "fe80::1");
        assert_eq!(j("fe80::1").port, None);
        assert_eq!(j("ssh://u@h:23").port, Some(23));
        assert!(parse_jump("u@").is_err());
        assert!(parse_jump("h:x").is_err());
        assert!(parse_jump("@h").is_err());
    }

    #[test]
    fn token_expansion() {
        let t = Tokens {
            host: "10.0.0.1",
            alias: "web",
            port: 2222,
            user: "deploy",
            local_user: "me",
            home: Some(Path::new("/home/me")),
        };
        assert_eq!(
            expand("~/.ssh/id_%r@%h:%p", &t).unwrap(),
            "/home/me/.ssh/id_deploy@10.0.0.1:2222"
        );
        assert_eq!(expand("%d/%n-%u-100%%", &t).unwrap(), "/home/me/web-me-100%");
        assert!(expand("%x", &t).is_err());
    }
}
