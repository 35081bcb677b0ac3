//! Deployment files: which machines get which operating system, and how to reach them.
//!
//! # Format (TOML, kebab-case keys, unknown keys are errors)
//!
//! ```toml
//! [operating-system.base]          # a named declaration; machines share and override it
//! host-name = "web"                # default: the machine's name
//! timezone = "Etc/UTC"             # default "Etc/UTC"
//! locale = "en_US.utf8"            # default "en_US.utf8"
//! packages = ["./pkgs/hello", "/gnu/store/…-coreutils"]   # local directories or store paths
//! files = { "motd" = "Welcome\n", "app/config" = { source = "./app.conf" } }  # etc files
//! services = [{ name = "hello", start = "hello > /tmp/x", stop = "rm -f /tmp/x",
//!               requirements = [] }]
//! file-systems = [{ device = "/dev/vda1", mount-point = "/", type = "ext4" }]
//! health-checks = [{ command = "test -e /etc/motd" }, { tcp = 22 }, { http = "http://{host}/" }]
//! bootloader = { name = "grub-efi", targets = ["/boot/efi"] }   # recorded, not acted on
//! kernel = "linux-libre"
//! kernel-arguments = ["quiet"]
//! initrd-modules = ["virtio_blk"]
//!
//! [operating-system.db]
//! inherit = "base"                 # chains are allowed; cycles are errors
//! host-name = "db"
//!
//! [[machine]]
//! name = "web1"                    # unique; used by `--on web1`
//! tags = ["web"]                   # used by `--on @web`
//! operating-system = { inherit = "base", host-name = "web1" }   # or just "base"
//! environment = "managed-host"     # (default) over SSH; or "local": a root directory here
//! [machine.configuration]
//! host-name = "203.0.113.7"        # SSH host; required for managed-host
//! system = "x86_64-linux"          # default: this machine's system
//! build-locally = true
//! authorize = true
//! allow-downgrades = false
//! safety-checks = true
//! port = 22
//! user = "root"
//! identity = "~/.ssh/id_ed25519"
//! host-key = "ssh-ed25519 AAAA…"
//! root = "/"                       # where the host's store and state live
//! sudo = true                      # a non-root user runs the host's commands with `sudo -n`;
//!                                  # default: only when root = "/" (see proto::uri)
//! confirm-timeout = 30             # seconds; `false` switches confirmation off
//! ```
//!
//! # Rules
//!
//! - **Inheritance** (`inherit = "NAME"`, in a named declaration or in a machine's inline one):
//!   every field that is set replaces the inherited one as a whole (lists and tables are not
//!   merged), as Guix's `(operating-system (inherit %system) …)` does.
//! - **Paths** in the file (`packages` that are not store paths, `files.*.source`, `identity`,
//!   a `local` machine's `root`) are resolved against the folder of the deployment file; a
//!   leading `~/` is the home directory. A `managed-host`'s `root` is a path on that host and must
//!   be absolute.
//! - **`local` root default**: `$XDG_DATA_HOME/ferry/hosts/<name>` (or
//!   `~/.local/share/ferry/hosts/<name>`), so a deployment needs no set-up and no privileges.
//! - **Services and `command` health checks** run on the host with `sh`, in the host root,
//!   with `FERRY_ROOT` set to the root without its trailing slash (empty on a real host) and,
//!   for services, the system's `profile/bin` first on `PATH` (see `system`). `tcp` and `http`
//!   checks run on the coordinator as part of confirmation.
//! - **Errors** name the file, line and column: wrong types and unknown keys (from the TOML
//!   parser), and semantic errors (unknown declaration, inheritance cycle, duplicate machine,
//!   missing SSH host name, bad names) at the offending value.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// Default confirmation deadline after activation.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Default timeout of one health check.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors while loading a deployment file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeploymentError {
    /// The file cannot be read.
    #[error("cannot read deployment file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// A syntax, type or semantic error at a place in the file.
    #[error("{file}:{line}:{column}: {message}")]
    At { file: String, line: usize, column: usize, message: String },
    /// An error about the file as a whole.
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// Errors of `--on` selection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    #[error("no machine named '{0}' in the deployment file")]
    UnknownName(String),
    #[error("no machine has the tag '{0}'")]
    UnknownTag(String),
    #[error("empty machine selection")]
    Empty,
}

/// How a machine is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Environment {
    /// Over SSH (Guix's `managed-host-environment-type`).
    #[default]
    ManagedHost,
    /// A root directory on this machine.
    Local,
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Environment::ManagedHost => "managed-host",
            Environment::Local => "local",
        })
    }
}

/// A loaded, validated deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The deployment file as given.
    pub file: PathBuf,
    /// The folder relative paths were resolved against.
    pub dir: PathBuf,
    /// The machines, in file order.
    pub machines: Vec<Machine>,
}

/// One machine with its resolved operating system and configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub name: String,
    pub tags: Vec<String>,
    /// The named declaration the machine's system comes from (`None` for an inline one with no
    /// `inherit`).
    pub declaration: Option<String>,
    pub os: OperatingSystem,
    pub environment: Environment,
    pub configuration: Configuration,
}

/// `[machine.configuration]` with the defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    /// SSH host (required for `managed-host`).
    pub host_name: Option<String>,
    pub system: String,
    pub build_locally: bool,
    pub authorize: bool,
    pub allow_downgrades: bool,
    pub safety_checks: bool,
    pub port: u16,
    pub user: String,
    pub identity: Option<PathBuf>,
    pub host_key: Option<String>,
    /// Where the host's store and state live (on the host for `managed-host`).
    pub root: PathBuf,
    /// `None` when confirmation is switched off.
    pub confirm_timeout: Option<Duration>,
    /// Whether a `user` other than root runs the host's commands with `sudo -n`; `None`: only
    /// when `root` is `/` (the host's own store).
    pub sudo: Option<bool>,
}

/// A resolved operating-system declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatingSystem {
    pub host_name: String,
    pub timezone: String,
    pub locale: String,
    /// Absolute paths: store paths or local directories (the builder tells them apart).
    pub packages: Vec<PathBuf>,
    /// etc files by relative name.
    pub files: BTreeMap<String, EtcFile>,
    pub file_systems: Vec<FileSystem>,
    pub services: Vec<Service>,
    pub health_checks: Vec<HealthCheck>,
    pub boot: BootParameters,
}

/// The contents of one etc file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcFile {
    /// Literal text.
    Text(String),
    /// A local file, copied in (absolute after resolution).
    Source(PathBuf),
}

/// A file system of the declaration (used by the safety checks).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSystem {
    /// A path (`/dev/vda1`), `LABEL=…` or `UUID=…`.
    pub device: String,
    pub mount_point: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    #[serde(default)]
    pub options: Option<String>,
    /// False for a file system that is declared but not mounted (not checked).
    #[serde(default = "yes")]
    pub mount: bool,
}

/// A service: shell commands run by the activation program.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Service {
    pub name: String,
    pub start: String,
    #[serde(default)]
    pub stop: Option<String>,
    #[serde(default)]
    pub requirements: Vec<String>,
}

/// A health check run after activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// A shell command run on the host; exit 0 means healthy.
    Command { command: String, timeout: Duration },
    /// A TCP connect from the coordinator to `host:port` (host: the machine's SSH host name).
    Tcp { host: Option<String>, port: u16, timeout: Duration },
    /// An HTTP GET from the coordinator; `{host}` in the URL is the machine's SSH host name.
    Http { url: String, status: u16, timeout: Duration },
}

impl HealthCheck {
    /// True when the check runs on the host (by the agent), false when on the coordinator.
    pub fn runs_on_host(&self) -> bool {
        matches!(self, HealthCheck::Command { .. })
    }
}

/// Bootloader and kernel fields: recorded in the system's `parameters`, not acted on.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BootParameters {
    pub bootloader: Option<Bootloader>,
    pub kernel: Option<String>,
    pub kernel_arguments: Vec<String>,
    pub initrd_modules: Vec<String>,
}

/// `bootloader = { name = "grub-efi", targets = ["/boot/efi"] }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Bootloader {
    pub name: String,
    #[serde(default)]
    pub targets: Vec<String>,
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) records.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    #[serde(default)]
    operating_system: BTreeMap<String, Spanned<RawOs>>,
    #[serde(default)]
    machine: Vec<Spanned<RawMachine>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOs {
    inherit: Option<Spanned<String>>,
    host_name: Option<String>,
    timezone: Option<String>,
    locale: Option<String>,
    packages: Option<Vec<Spanned<String>>>,
    files: Option<BTreeMap<String, Spanned<RawEtcFile>>>,
    file_systems: Option<Vec<FileSystem>>,
    services: Option<Vec<Spanned<Service>>>,
    health_checks: Option<Vec<Spanned<RawHealthCheck>>>,
    bootloader: Option<Bootloader>,
    kernel: Option<String>,
    kernel_arguments: Option<Vec<String>>,
    initrd_modules: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
enum RawEtcFile {
    Text(String),
    Source(String),
}

impl<'de> Deserialize<'de> for RawEtcFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEtcFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (the file's text) or a table { source = \"./file\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEtcFile, E> {
                Ok(RawEtcFile::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEtcFile, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Source {
                    source: String,
                }
                let s = Source::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawEtcFile::Source(s.source))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealthCheck {
    command: Option<String>,
    tcp: Option<u16>,
    host: Option<String>,
    http: Option<String>,
    status: Option<u16>,
    /// Seconds.
    timeout: Option<u64>,
}

#[derive(Debug, Clone)]
enum RawOsRef {
    Named(String),
    Inline(Box<RawOs>),
}

impl<'de> Deserialize<'de> for RawOsRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawOsRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "the name of an [operating-system.NAME] declaration, or a table \
                     { inherit = \"NAME\", … }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawOsRef, E> {
                Ok(RawOsRef::Named(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawOsRef, A::Error> {
                Ok(RawOsRef::Inline(Box::new(RawOs::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMachine {
    name: Spanned<String>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    operating_system: Spanned<RawOsRef>,
    #[serde(default)]
    environment: Environment,
    #[serde(default)]
    configuration: Option<Spanned<RawConfiguration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfiguration {
    host_name: Option<String>,
    system: Option<String>,
    build_locally: Option<bool>,
    authorize: Option<bool>,
    allow_downgrades: Option<bool>,
    safety_checks: Option<bool>,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<Spanned<String>>,
    host_key: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    confirm_timeout: Option<ConfirmTimeout>,
    sudo: Option<bool>,
}

#[derive(Debug, Clone, Copy)]
struct ConfirmTimeout(Option<Duration>);

impl<'de> Deserialize<'de> for ConfirmTimeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfirmTimeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds, or false to switch confirmation off")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConfirmTimeout, E> {
                Ok(ConfirmTimeout(v.then_some(DEFAULT_CONFIRM_TIMEOUT)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfirmTimeout, E> {
                u64::try_from(v)
                    .map(|s| ConfirmTimeout(Some(Duration::from_secs(s))))
                    .map_err(|_| E::custom("the confirm timeout must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfirmTimeout, E> {
                Ok(ConfirmTimeout(Some(Duration::from_secs(v))))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Looks up environment variables (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// The system type of this machine, as Guix spells it (`x86_64-linux`).
pub fn this_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

impl Deployment {
    /// Read and validate a deployment file, with the process environment.
    pub fn load(path: &Path) -> Result<Deployment, DeploymentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeploymentError::Read { path: path.display().to_string(), source })?;
        Self::parse(path, &text, &process_env)
    }

    /// Validate a deployment file's text; `path` names it in errors and gives the folder
    /// relative paths resolve against.
    pub fn parse(
        path: &Path,
        text: &str,
        env: EnvLookup<'_>,
    ) -> Result<Deployment, DeploymentError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let cx = Cx { file: path.display().to_string(), text, dir: dir.clone(), env };
        let raw: RawFile = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => cx.at(span, e.message().to_owned()),
            None => {
                DeploymentError::File { file: cx.file.clone(), message: e.message().to_owned() }
            }
        })?;
        let machines = cx.resolve(&raw)?;
        Ok(Deployment { file: path.to_owned(), dir, machines })
    }

    /// The machines selected by `--on` (`NAME|@TAG,...`), in file order; all with `None`.
    pub fn select(&self, on: Option<&str>) -> Result<Vec<&Machine>, SelectError> {
        let Some(spec) = on else { return Ok(self.machines.iter().collect()) };
        let mut names = BTreeSet::new();
        let mut tags = BTreeSet::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(tag) = item.strip_prefix('@') {
                if !self.machines.iter().any(|m| m.tags.iter().any(|t| t == tag)) {
                    return Err(SelectError::UnknownTag(tag.to_owned()));
                }
                tags.insert(tag);
            } else {
                if !self.machines.iter().any(|m| m.name == item) {
                    return Err(SelectError::UnknownName(item.to_owned()));
                }
                names.insert(item);
            }
        }
        if names.is_empty() && tags.is_empty() {
            return Err(SelectError::Empty);
        }
        Ok(self
            .machines
            .iter()
            .filter(|m| {
                names.contains(m.name.as_str()) || m.tags.iter().any(|t| tags.contains(t.as_str()))
            })
            .collect())
    }
}

struct Cx<'a> {
    file: String,
    text: &'a str,
    dir: PathBuf,
    env: EnvLookup<'a>,
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Cx<'_> {
    fn at(&self, span: Range<usize>, message: String) -> DeploymentError {
        let (line, column) = line_column(self.text, span.start);
        DeploymentError::At { file: self.file.clone(), line, column, message }
    }

    fn home(&self) -> Option<PathBuf> {
        (self.env)("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
    }

    /// `~/x` → home, relative → against the file's folder.
    fn local_path(&self, value: &Spanned<String>) -> Result<PathBuf, DeploymentError> {
        let s = value.get_ref();
        let path = if s == "~" || s.starts_with("~/") {
            let home = self.home().ok_or_else(|| {
                self.at(value.span(), format!("cannot expand '{s}': HOME is not set"))
            })?;
            home.join(s.trim_start_matches('~').trim_start_matches('/'))
        } else if s.is_empty() {
            return Err(self.at(value.span(), "empty path".into()));
        } else {
            self.dir.join(s)
        };
        Ok(normalize(&path))
    }

    fn data_dir(&self) -> Option<PathBuf> {
        (self.env)("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| self.home().map(|h| h.join(".local/share")))
    }

    fn resolve(&self, raw: &RawFile) -> Result<Vec<Machine>, DeploymentError> {
        for (name, decl) in &raw.operating_system {
            if !valid_name(name) {
                return Err(self.at(
                    decl.span(),
                    format!("invalid declaration name '{name}' (letters, digits, '-', '_', '.')"),
                ));
            }
        }
        if raw.machine.is_empty() {
            return Err(DeploymentError::File {
                file: self.file.clone(),
                message: "no [[machine]] in the deployment file".into(),
            });
        }
        let mut seen = BTreeSet::new();
        let mut machines = Vec::new();
        for m in &raw.machine {
            let m_span = m.span();
            let m = m.get_ref();
            let name = m.name.get_ref();
            if !valid_name(name) {
                return Err(self.at(
                    m.name.span(),
                    format!("invalid machine name '{name}' (letters, digits, '-', '_', '.')"),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(self.at(m.name.span(), format!("duplicate machine name '{name}'")));
            }
            let mut tags = Vec::new();
            for t in &m.tags {
                if !valid_name(t.get_ref()) {
                    return Err(self.at(t.span(), format!("invalid tag '{}'", t.get_ref())));
                }
                tags.push(t.get_ref().clone());
            }
            let (declaration, merged) = match m.operating_system.get_ref() {
                RawOsRef::Named(decl) => {
                    let inherit = Spanned::new(m.operating_system.span(), decl.clone());
                    let stub = RawOs { inherit: Some(inherit), ..RawOs::default() };
                    (Some(decl.clone()), self.flatten(raw, stub, &mut Vec::new())?)
                }
                RawOsRef::Inline(os) => (
                    os.inherit.as_ref().map(|s| s.get_ref().clone()),
                    self.flatten(raw, (**os).clone(), &mut Vec::new())?,
                ),
            };
            let os = self.finish_os(name, merged)?;
            let configuration = self.configuration(name, m, m_span.clone())?;
            if m.environment == Environment::Local {
                let same_root = machines.iter().find(|o: &&Machine| {
                    o.environment == Environment::Local
                        && o.configuration.root == configuration.root
                });
                if let Some(other) = same_root {
                    return Err(self.at(
                        m_span,
                        format!(
                            "machines '{}' and '{name}' are both local with the root {}: each \
                             needs its own",
                            other.name,
                            configuration.root.display()
                        ),
                    ));
                }
            }
            machines.push(Machine {
                name: name.clone(),
                tags,
                declaration,
                os,
                environment: m.environment,
                configuration,
            });
        }
        Ok(machines)
    }

    /// Apply the `inherit` chain: fields of `os` override those of its parent.
    fn flatten(
        &self,
        raw: &RawFile,
        os: RawOs,
        chain: &mut Vec<String>,
    ) -> Result<RawOs, DeploymentError> {
        let Some(parent_name) = os.inherit.clone() else { return Ok(os) };
        let name = parent_name.get_ref();
        if chain.contains(name) {
            chain.push(name.clone());
            return Err(self.at(
                parent_name.span(),
                format!("operating-system inheritance cycle: {}", chain.join(" -> ")),
            ));
        }
        let Some(parent) = raw.operating_system.get(name) else {
            let known: Vec<&str> = raw.operating_system.keys().map(String::as_str).collect();
            return Err(self.at(
                parent_name.span(),
                format!(
                    "no [operating-system.{name}] declaration (declared: {})",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            ));
        };
        chain.push(name.clone());
        let parent = self.flatten(raw, parent.get_ref().clone(), chain)?;
        chain.pop();
        Ok(RawOs {
            inherit: None,
            host_name: os.host_name.or(parent.host_name),
            timezone: os.timezone.or(parent.timezone),
            locale: os.locale.or(parent.locale),
            packages: os.packages.or(parent.packages),
            files: os.files.or(parent.files),
            file_systems: os.file_systems.or(parent.file_systems),
            services: os.services.or(parent.services),
            health_checks: os.health_checks.or(parent.health_checks),
            bootloader: os.bootloader.or(parent.bootloader),
            kernel: os.kernel.or(parent.kernel),
            kernel_arguments: os.kernel_arguments.or(parent.kernel_arguments),
            initrd_modules: os.initrd_modules.or(parent.initrd_modules),
        })
    }

    fn finish_os(&self, machine: &str, os: RawOs) -> Result<OperatingSystem, DeploymentError> {
        let mut packages = Vec::new();
        for p in os.packages.unwrap_or_default() {
            packages.push(if p.get_ref().starts_with('/') {
                PathBuf::from(p.get_ref())
            } else {
                self.local_path(&p)?
            });
        }
        let mut files = BTreeMap::new();
        for (name, f) in os.files.unwrap_or_default() {
            if !valid_etc_name(&name) {
                return Err(self.at(
                    f.span(),
                    format!(
                        "invalid etc file name '{name}': a relative path of letters, digits and \
                         '._-+@', without '.', '..' or empty components"
                    ),
                ));
            }
            let file = match f.get_ref() {
                RawEtcFile::Text(t) => EtcFile::Text(t.clone()),
                RawEtcFile::Source(s) => {
                    EtcFile::Source(self.local_path(&Spanned::new(f.span(), s.clone()))?)
                }
            };
            files.insert(name, file);
        }
        let mut services: Vec<Service> = Vec::new();
        let all: Vec<Spanned<Service>> = os.services.unwrap_or_default();
        for s in &all {
            let svc = s.get_ref();
            if !valid_name(&svc.name) {
                return Err(self.at(s.span(), format!("invalid service name '{}'", svc.name)));
            }
            if services.iter().any(|o| o.name == svc.name) {
                return Err(self.at(s.span(), format!("duplicate service '{}'", svc.name)));
            }
            for r in &svc.requirements {
                if !all.iter().any(|o| &o.get_ref().name == r) {
                    return Err(self.at(
                        s.span(),
                        format!("service '{}' requires '{r}', which is not declared", svc.name),
                    ));
                }
            }
            services.push(svc.clone());
        }
        if let Err(cycle) = service_order(&services) {
            return Err(DeploymentError::File {
                file: self.file.clone(),
                message: format!("machine '{machine}': {cycle}"),
            });
        }
        let mut health_checks = Vec::new();
        for h in os.health_checks.unwrap_or_default() {
            health_checks.push(self.health_check(&h)?);
        }
        Ok(OperatingSystem {
            host_name: os.host_name.unwrap_or_else(|| machine.to_owned()),
            timezone: os.timezone.unwrap_or_else(|| "Etc/UTC".into()),
            locale: os.locale.unwrap_or_else(|| "en_US.utf8".into()),
            packages,
            files,
            file_systems: os.file_systems.unwrap_or_default(),
            services,
            health_checks,
            boot: BootParameters {
                bootloader: os.bootloader,
                kernel: os.kernel,
                kernel_arguments: os.kernel_arguments.unwrap_or_default(),
                initrd_modules: os.initrd_modules.unwrap_or_default(),
            },
        })
    }

    fn health_check(&self, h: &Spanned<RawHealthCheck>) -> Result<HealthCheck, DeploymentError> {
        let r = h.get_ref();
        let timeout = r.timeout.map_or(DEFAULT_HEALTH_CHECK_TIMEOUT, Duration::from_secs);
        let kinds = usize::from(r.command.is_some())
            + usize::from(r.tcp.is_some())
            + usize::from(r.http.is_some());
        let err = |m: &str| Err(self.at(h.span(), m.to_owned()));
        if kinds != 1 {
            return err(
                "a health check has exactly one of `command`, `tcp` (a port) or `http` (a URL)",
            );
        }
        if let Some(command) = &r.command {
            if r.host.is_some() || r.status.is_some() {
                return err("`host` and `status` do not apply to a `command` health check");
            }
            Ok(HealthCheck::Command { command: command.clone(), timeout })
        } else if let Some(port) = r.tcp {
            if r.status.is_some() {
                return err("`status` does not apply to a `tcp` health check");
            }
            Ok(HealthCheck::Tcp { host: r.host.clone(), port, timeout })
        } else {
            if r.host.is_some() {
                return err("`host` does not apply to an `http` health check (put it in the URL)");
            }
            let url = r.http.clone().unwrap_or_default();
            if !url.starts_with("http://") {
                return err("the `http` health check needs an http:// URL");
            }
            Ok(HealthCheck::Http { url, status: r.status.unwrap_or(200), timeout })
        }
    }

    fn configuration(
        &self,
        name: &str,
        m: &RawMachine,
        m_span: Range<usize>,
    ) -> Result<Configuration, DeploymentError> {
        let empty = RawConfiguration::default();
        let (c, c_span) = match &m.configuration {
            Some(c) => (c.get_ref(), c.span()),
            None => (&empty, m_span),
        };
        let root = match (&c.root, m.environment) {
            (Some(r), Environment::Local) => self.local_path(r)?,
            (Some(r), Environment::ManagedHost) => {
                if !r.get_ref().starts_with('/') {
                    return Err(self.at(
                        r.span(),
                        format!(
                            "the root of a managed host is a path on that host and must be \
                             absolute, not '{}'",
                            r.get_ref()
                        ),
                    ));
                }
                PathBuf::from(r.get_ref())
            }
            (None, Environment::Local) => self
                .data_dir()
                .ok_or_else(|| {
                    self.at(
                        c_span.clone(),
                        format!(
                            "machine '{name}': no `root` given and neither XDG_DATA_HOME nor \
                             HOME is set"
                        ),
                    )
                })?
                .join("ferry/hosts")
                .join(name),
            (None, Environment::ManagedHost) => PathBuf::from("/"),
        };
        if m.environment == Environment::ManagedHost && c.host_name.is_none() {
            return Err(self.at(
                c_span,
                format!(
                    "machine '{name}' (managed-host) needs `host-name` in [machine.configuration]: \
                     the SSH host to connect to"
                ),
            ));
        }
        if let Some(key) = &c.host_key {
            let n = key.get_ref().split_whitespace().count();
            if !(2..=3).contains(&n) {
                return Err(self.at(
                    key.span(),
                    "host-key must be 'TYPE BASE64 [COMMENT]', as in known_hosts or the output \
                     of ssh-keyscan"
                        .into(),
                ));
            }
        }
        let identity = c.identity.as_ref().map(|i| self.local_path(i)).transpose()?;
        Ok(Configuration {
            host_name: c.host_name.clone(),
            system: c.system.clone().unwrap_or_else(this_system),
            build_locally: c.build_locally.unwrap_or(true),
            authorize: c.authorize.unwrap_or(true),
            allow_downgrades: c.allow_downgrades.unwrap_or(false),
            safety_checks: c.safety_checks.unwrap_or(true),
            port: c.port.unwrap_or(22),
            user: c.user.clone().unwrap_or_else(|| "root".into()),
            identity,
            host_key: c.host_key.as_ref().map(|k| k.get_ref().clone()),
            root,
            confirm_timeout: c.confirm_timeout.map_or(Some(DEFAULT_CONFIRM_TIMEOUT), |t| t.0),
            sudo: c.sudo,
        })
    }
}

fn valid_etc_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@' | '/'))
}

/// Lexically remove `.` and `..` components (no file-system access).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Services in start order (requirements first; ties by declaration order), or the cycle.
pub fn service_order(services: &[Service]) -> Result<Vec<&Service>, String> {
    let mut order: Vec<&Service> = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
    fn visit<'s>(
        s: &'s Service,
        all: &'s [Service],
        state: &mut BTreeMap<&'s str, u8>,
        order: &mut Vec<&'s Service>,
        path: &mut Vec<&'s str>,
    ) -> Result<(), String> {
        match state.get(s.name.as_str()) {
            Some(2) => return Ok(()),
            Some(_) => {
                path.push(&s.name);
                let start = path.iter().position(|n| *n == s.name).unwrap_or(0);
                return Err(format!("service requirement cycle: {}", path[start..].join(" -> ")));
            }
            None => {}
        }
        state.insert(&s.name, 1);
        path.push(&s.name);
        for r in &s.requirements {
            if let Some(dep) = all.iter().find(|o| &o.name == r) {
                visit(dep, all, state, order, path)?;
            }
        }
        path.pop();
        state.insert(&s.name, 2);
        order.push(s);
        Ok(())
    }
    for s in services {
        visit(s, services, &mut state, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "HOME" => Some("/home/u".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Deployment, DeploymentError> {
        Deployment::parse(Path::new("/srv/deploy/fleet.toml"), text, &env)
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should fail").to_string()
    }

    const ISSUE_SHAPE: &str = r#"
[operating-system.base]              # named declarations, shared by machines
host-name = "web"
timezone = "Etc/UTC"
packages = ["./pkgs/hello"]
files = { "motd" = "Welcome\n" }
services = [{ name = "hello", start = "...", stop = "..." }]
file-systems = [{ device = "/dev/vda1", mount-point = "/", type = "ext4" }]

[[machine]]
name = "web1"
tags = ["web"]
operating-system = { inherit = "base", host-name = "web1" }   # or just "base"
environment = "managed-host"         # or "local"
[machine.configuration]
host-name = "203.0.113.7"
port = 22
user = "root"
identity = "~/.ssh/id_ed25519"
host-key = "ssh-ed25519 AAAA..."
root = "/"                           # where the host's store and state live (a directory for tests)
"#;

    #[test]
    fn the_issue_shape_parses_with_defaults() {
        let d = parse(ISSUE_SHAPE).unwrap();
        assert_eq!(d.machines.len(), 1);
        let m = &d.machines[0];
        assert_eq!(m.name, "web1");
        assert_eq!(m.tags, ["web"]);
        assert_eq!(m.declaration.as_deref(), Some("base"));
        assert_eq!(m.environment, Environment::ManagedHost);
        assert_eq!(m.os.host_name, "web1");
        assert_eq!(m.os.timezone, "Etc/UTC");
        assert_eq!(m.os.locale, "en_US.utf8");
        assert_eq!(m.os.packages, [PathBuf::from("/srv/deploy/pkgs/hello")]);
        assert_eq!(m.os.files["motd"], EtcFile::Text("Welcome\n".into()));
        assert_eq!(m.os.services[0].stop.as_deref(), Some("..."));
        assert_eq!(m.os.file_systems[0].fs_type, "ext4");
        assert!(m.os.file_systems[0].mount);
        let c = &m.configuration;
        assert_eq!(c.host_name.as_deref(), Some("203.0.113.7"));
        assert_eq!(c.system, this_system());
        assert!(c.build_locally && c.authorize && c.safety_checks && !c.allow_downgrades);
        assert_eq!((c.port, c.user.as_str()), (22, "root"));
        assert_eq!(c.identity.as_deref(), Some(Path::new("/home/u/.ssh/id_ed25519")));
        assert_eq!(c.root, PathBuf::from("/"));
        assert_eq!(c.confirm_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let text = "[[machine]]\nname = \"a\"\noperating-system = \"x\"\nenviroment = \"local\"\n";
        let e = err(text);
        assert!(e.starts_with("/srv/deploy/fleet.toml:4:1: unknown field `enviroment`"), "{e}");
    }

    #[test]
    fn wrong_type_has_line_and_column() {
        let text = "[operating-system.b]\nhost-name = \"h\"\n[[machine]]\nname = \"a\"\n\
                    operating-system = \"b\"\nenvironment = \"local\"\n[machine.configuration]\n\
                    port = \"22\"\n";
        let e = err(text);
        assert!(e.starts_with("/srv/deploy/fleet.toml:8:8: invalid type: string"), "{e}");
    }

    #[test]
    fn unknown_key_inside_inline_os_has_position() {
        let text = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n\
                    operating-system = { host-nam = \"x\" }\n";
        let e = err(text);
        assert!(e.starts_with("/srv/deploy/fleet.toml:4:"), "{e}");
        assert!(e.contains("unknown field `host-nam`"), "{e}");
    }

    #[test]
    fn unknown_declaration_and_cycles() {
        let e = err(
            "[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = \"nope\"\n",
        );
        assert!(e.starts_with("/srv/deploy/fleet.toml:4:20: no [operating-system.nope]"), "{e}");
        let text = "[operating-system.a]\ninherit = \"b\"\n[operating-system.b]\ninherit = \"c\"\n\
                    [operating-system.c]\ninherit = \"a\"\n\
                    [[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"a\"\n";
        let e = err(text);
        assert!(e.contains("operating-system inheritance cycle: a -> b -> c -> a"), "{e}");
        assert!(e.starts_with("/srv/deploy/fleet.toml:6:11:"), "{e}");
    }

    #[test]
    fn inheritance_chain_overrides_fields_whole() {
        let text = r#"
[operating-system.base]
timezone = "Europe/Paris"
packages = ["/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-coreutils"]
files = { motd = "base\n", issue = "x" }
[operating-system.web]
inherit = "base"
files = { motd = "web\n" }
[[machine]]
name = "w1"
environment = "local"
operating-system = { inherit = "web", locale = "fr_FR.utf8" }
"#;
        let d = parse(text).unwrap();
        let os = &d.machines[0].os;
        assert_eq!(os.host_name, "w1");
        assert_eq!(os.timezone, "Europe/Paris");
        assert_eq!(os.locale, "fr_FR.utf8");
        assert_eq!(os.files.len(), 1);
        assert_eq!(
            os.packages[0],
            PathBuf::from("/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-coreutils")
        );
        assert_eq!(
            d.machines[0].configuration.root,
            PathBuf::from("/home/u/.local/share/ferry/hosts/w1")
        );
    }

    #[test]
    fn local_root_defaults_and_resolution() {
        let text = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                    [machine.configuration]\nroot = \"../hosts/a\"\n";
        let d = parse(text).unwrap();
        assert_eq!(d.machines[0].configuration.root, PathBuf::from("/srv/hosts/a"));
        let xdg = |n: &str| match n {
            "XDG_DATA_HOME" => Some(OsString::from("/data")),
            _ => None,
        };
        let text = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n";
        let d = Deployment::parse(Path::new("f.toml"), text, &xdg).unwrap();
        assert_eq!(d.machines[0].configuration.root, PathBuf::from("/data/ferry/hosts/a"));
    }

    #[test]
    fn managed_host_needs_host_name_and_absolute_root() {
        let e = err("[[machine]]\nname = \"a\"\noperating-system = {}\n");
        assert!(e.contains("needs `host-name`"), "{e}");
        let e = err("[[machine]]\nname = \"a\"\noperating-system = {}\n[machine.configuration]\n\
                     host-name = \"h\"\nroot = \"relative\"\n");
        assert!(e.starts_with("/srv/deploy/fleet.toml:6:8:"), "{e}");
    }

    #[test]
    fn confirm_timeout_forms() {
        let base = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                    [machine.configuration]\n";
        let get = |v: &str| {
            parse(&format!("{base}confirm-timeout = {v}\n"))
                .map(|d| d.machines[0].configuration.confirm_timeout)
        };
        assert_eq!(get("false").unwrap(), None);
        assert_eq!(get("true").unwrap(), Some(DEFAULT_CONFIRM_TIMEOUT));
        assert_eq!(get("5").unwrap(), Some(Duration::from_secs(5)));
        assert!(get("-1").is_err());
        assert!(get("\"x\"").unwrap_err().to_string().contains("false to switch confirmation off"));
    }

    #[test]
    fn etc_files_services_health_checks() {
        let text = r#"
[[machine]]
name = "a"
environment = "local"
[machine.operating-system]
files = { "ssh/sshd_config" = { source = "files/sshd" }, motd = "hi" }
services = [{ name = "b", start = "x", requirements = ["a"] }, { name = "a", start = "y" }]
health-checks = [{ command = "true" }, { tcp = 22, timeout = 2 }, { http = "http://{host}/", status = 204 }]
"#;
        let d = parse(text).unwrap();
        let os = &d.machines[0].os;
        assert_eq!(
            os.files["ssh/sshd_config"],
            EtcFile::Source(PathBuf::from("/srv/deploy/files/sshd"))
        );
        let order: Vec<&str> =
            service_order(&os.services).unwrap().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["a", "b"]);
        assert_eq!(os.health_checks.len(), 3);
        assert!(os.health_checks[0].runs_on_host());
        assert_eq!(
            os.health_checks[1],
            HealthCheck::Tcp { host: None, port: 22, timeout: Duration::from_secs(2) }
        );
        let bad =
            "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
                   files = { \"../x\" = \"no\" }\n";
        assert!(err(bad).contains("invalid etc file name"));
        let bad =
            "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
                   health-checks = [{ command = \"x\", tcp = 1 }]\n";
        assert!(err(bad).starts_with("/srv/deploy/fleet.toml:5:18:"), "{}", err(bad));
        let bad =
            "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
                   services = [{ name = \"a\", start = \"x\", requirements = [\"a\"] }]\n";
        assert!(err(bad).contains("service requirement cycle: a -> a"), "{}", err(bad));
        let bad =
            "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
                   services = [{ name = \"a\", start = \"x\", requirements = [\"zz\"] }]\n";
        assert!(err(bad).contains("requires 'zz', which is not declared"));
    }

    #[test]
    fn duplicate_machines_and_selection() {
        let e = err("[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                     [[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n");
        assert!(e.starts_with("/srv/deploy/fleet.toml:6:8: duplicate machine name 'a'"), "{e}");
        let text = "[[machine]]\nname = \"a\"\ntags=[\"web\"]\nenvironment = \"local\"\noperating-system = {}\n\
                    [[machine]]\nname = \"b\"\nenvironment = \"local\"\noperating-system = {}\n\
                    [[machine]]\nname = \"c\"\ntags=[\"web\", \"eu\"]\nenvironment = \"local\"\noperating-system = {}\n";
        let d = parse(text).unwrap();
        let names = |on: Option<&str>| -> Vec<String> {
            d.select(on).unwrap().iter().map(|m| m.name.clone()).collect()
        };
        assert_eq!(names(None), ["a", "b", "c"]);
        assert_eq!(names(Some("@web")), ["a", "c"]);
        assert_eq!(names(Some("c,b")), ["b", "c"]);
        assert_eq!(names(Some("@eu,a")), ["a", "c"]);
        assert_eq!(d.select(Some("zz")).unwrap_err(), SelectError::UnknownName("zz".into()));
        assert_eq!(d.select(Some("@db")).unwrap_err(), SelectError::UnknownTag("db".into()));
        assert_eq!(d.select(Some(",")).unwrap_err(), SelectError::Empty);
    }

    #[test]
    fn the_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let demo = Deployment::parse(
            &dir.join("demo.toml"),
            include_str!("../../examples/demo.toml"),
            &env,
        )
        .unwrap();
        assert_eq!(demo.machines.len(), 2);
        for m in &demo.machines {
            assert_eq!(m.environment, Environment::Local);
            assert_eq!(m.declaration.as_deref(), Some("demo"));
            assert_eq!(m.os.host_name, m.name);
            assert_eq!(m.configuration.confirm_timeout, None);
            assert_eq!(
                m.configuration.root,
                PathBuf::from(format!("/home/u/.local/share/ferry/hosts/{}", m.name))
            );
        }
        let ssh =
            Deployment::parse(&dir.join("ssh.toml"), include_str!("../../examples/ssh.toml"), &env)
                .unwrap();
        let names: Vec<&str> =
            ssh.select(Some("@web")).unwrap().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["web1", "web2"]);
        let db1 = &ssh.machines[2];
        assert!(db1.configuration.allow_downgrades);
        assert_eq!(db1.configuration.user, "deploy");
        assert_eq!(db1.os.file_systems.len(), 2);
        assert_eq!(ssh.machines[1].configuration.port, 2222);
        assert_eq!(ssh.machines[0].os.health_checks.len(), 3);
    }

    #[test]
    fn local_machines_need_their_own_roots() {
        let e = err("[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                     [machine.configuration]\nroot = \"/r\"\n\
                     [[machine]]\nname = \"b\"\nenvironment = \"local\"\noperating-system = {}\n\
                     [machine.configuration]\nroot = \"/r/\"\n");
        assert!(e.contains("machines 'a' and 'b' are both local with the root /r"), "{e}");
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncdé\nf", 0), (1, 1));
        assert_eq!(line_column("ab\ncdé\nf", 3), (2, 1));
        assert_eq!(line_column("ab\ncdé\nf", 8), (3, 1));
        assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
    }
}
