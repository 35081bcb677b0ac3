//! Deployment files: which machines get which operating system, and how to reach them.
//!
//! The reference for users, key by key with the Guix record each comes from, is
//! `docs/deployment.md` (a test fails when a key of a record here has no row there).
//!
//! # Format (TOML, kebab-case keys, unknown keys are errors)
//!
//! ```toml
//! store = "ferry"                  # the local store systems come from: "ferry" (default), or
//!                                  # "nix" / "guix": the machine's own, read in place
//! rollout = [1, "25%", "100%"]     # deploy in waves (see crate::rollout); --rollout wins
//!
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
//! [operating-system.web]           # a system built by Nix or Guix, with its own switch command
//! system = "/nix/store/…-nixos-system-web1-24.11"        # in the deployment's store
//! switch = ["bin/switch-to-configuration", "switch"]    # run on the host, relative to the system
//! boot-switch = ["bin/switch-to-configuration", "boot"] # optional: when `switch` fails
//! profile = "/nix/var/nix/profiles/system"              # generations system-N-link beside it
//! health-checks = [{ tcp = 22 }]                         # (packages, files, services… are the
//!                                                        # builder's: not with `system`)
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
//! port = 22                        # default: the SSH config's Port, else 22
//! user = "root"                    # default: the SSH config's User, else root
//! identity = "~/.ssh/id_ed25519"   # the private key; default: the SSH config's IdentityFile,
//!                                  # ssh-agent, ~/.ssh/id_*
//! host-key = "ssh-ed25519 AAAA…"   # or the line ssh-keyscan prints: "[host]:port ssh-ed25519 AAAA…"
//! ssh-config = "~/.ssh/config"     # read instead of ~/.ssh/config (as `ssh -F`)
//! root = "/"                       # where the host's store and state live
//! sudo = true                      # a non-root user runs the host's commands with `sudo -n`;
//!                                  # default: only when root = "/" (see proto::uri)
//! confirm-timeout = 30             # seconds; `false` switches confirmation off
//! store = "auto"                   # the host's store: "ferry", "nix" (the host's own Nix
//!                                  # store under `root`), or "auto" (default: Nix's when the
//!                                  # host has one and the deployment's store dir is /nix/store)
//! agent = "build/aarch64/ferry"    # a ferry built for the host, uploaded instead of this one;
//!                                  # "PATH": the host's own `ferry` on its PATH, as is
//! substitute-from = ["s3://cache?endpoint=…", "https://cache.example.org"]
//!                                  # binary caches the host fetches missing paths from itself
//!                                  # (a real run; signed by a key of the host's
//!                                  # trusted-public-keys), before the coordinator sends the rest
//! via = "web0"                     # copy through machine web0 or [relay.web0] (a relay:
//!                                  # transfer::fanout); this machine needs `host-key`, the
//!                                  # relay reaches it with its own SSH client
//! relay-identity = "/root/.ssh/id_relay"  # when this machine relays: the key file on it
//!                                  # it logs in to its children with (never copied there)
//!
//! [relay.gw]                       # a relay-only host: forwards copies to machines with
//! host-name = "198.51.100.4"       # via = "gw", keeps nothing, is not deployed; port, user,
//! host-key = "ssh-ed25519 AAAA…"   # identity as for a machine; host-key required
//! root = "/var/lib/ferry-relay"    # its agent's (empty) store (default)
//! relay-identity = "/root/.ssh/id_relay"
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
//! - **Store paths** (`packages` that are absolute, `system`) must be in the deployment's store
//!   dir (`/nix/store` for `store = "nix"`, `/gnu/store` for `"guix"`, ferry's store dir for
//!   `"ferry"`); one in another store's dir is an error naming both. A Nix or Guix store is only
//!   read: its systems are given with `system`, ferry's builder writes to ferry's store only.
//! - **`system`** (with `switch`, required; `boot-switch`; `profile`, default
//!   `/nix/var/nix/profiles/system` or `/var/guix/profiles/system` by the deployment's store,
//!   ferry's profile for `"ferry"`) deploys that store path as it is: generations are
//!   `PROFILE-N-link` as Nix and Guix name them, and activating one runs its `switch` command
//!   (the program relative to the system) instead of ferry's `activate`.
//! - **SSH**: `host-name` may be an alias of the SSH config (`~/.ssh/config`, or `ssh-config`):
//!   its `HostName`, `User`, `Port`, `IdentityFile`, `IdentitiesOnly`, `UserKnownHostsFile`,
//!   `ProxyJump` and `ConnectTimeout` apply; `port`, `user` and `identity` given here win (see
//!   `transfer::transport::ssh`). `host-key` pins the host's key, given bare or as the line
//!   `ssh-keyscan` prints; it is checked when the file is loaded.
//! - **Errors** name the file, line and column: wrong types and unknown keys (from the TOML
//!   parser), and semantic errors (unknown declaration, inheritance cycle, duplicate machine,
//!   missing SSH host name, bad names) at the offending value; so do local paths that do not
//!   exist ([`Deployment::load`] checks them, [`Deployment::parse`] reads no file system).
//! - **Warnings** ([`Deployment::warnings`]): two `managed-host` machines with the same host,
//!   port and root (both deploy there, the last one wins).
//! - **`--on`** ([`Deployment::select`]): names, `@tags` and globs on names (`*`, `?`); one
//!   that selects nothing is an error listing what exists and the closest name.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nar_core::store_path::StoreDir;
use serde::Deserialize;
use store::DbKind;
use transfer::transport::ssh::AgentSource;

mod parse;
#[cfg(test)]
mod tests;

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

/// Errors of `--on` selection. Each lists what the file has, and the closest name when one is
/// near (edit distance).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    #[error("no machine named '{name}' in the deployment file{}", hint(.suggestion, "", .known, "machines"))]
    UnknownName { name: String, suggestion: Option<String>, known: Vec<String> },
    #[error("no machine has the tag '{tag}'{}", hint(.suggestion, "@", .known, "tags"))]
    UnknownTag { tag: String, suggestion: Option<String>, known: Vec<String> },
    #[error("no machine matches '{pattern}'{}", hint(&None, "", .known, "machines"))]
    NoMatch { pattern: String, known: Vec<String> },
    #[error("empty machine selection")]
    Empty,
}

/// `; did you mean 'x'? (machines: a, b)`.
fn hint(suggestion: &Option<String>, prefix: &str, known: &[String], what: &str) -> String {
    let mean =
        suggestion.as_ref().map_or_else(String::new, |s| format!("; did you mean '{prefix}{s}'?"));
    let list = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
    format!("{mean} ({what}: {list})")
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
    /// The local store systems come from: the file's `store`, else the command line's (`None`:
    /// neither said, ferry's as resolved today).
    pub store: Option<DbKind>,
    /// The store dir of that store: every store path in the file is in it.
    pub store_dir: StoreDir,
    /// The machines, in file order.
    pub machines: Vec<Machine>,
    /// Things that are allowed but probably wrong (two machines that are one host), each as
    /// `file:line:column: text`, for the caller to show.
    pub warnings: Vec<String>,
    /// The local paths the file names, for [`Deployment::check_local_paths`].
    pub local_paths: Vec<LocalPath>,
    /// `rollout = [...]`: deploy in waves (`--rollout` replaces it).
    pub rollout: Option<crate::rollout::Rollout>,
    /// `[relay.NAME]`: hosts that only forward copies (`via = "NAME"`).
    pub relays: Vec<RelayHost>,
}

/// Where a relay-only host keeps its agent's (empty) store by default.
pub const DEFAULT_RELAY_ROOT: &str = "/var/lib/ferry-relay";

/// `[relay.NAME]`: a host that is not deployed and keeps nothing; machines with
/// `via = "NAME"` get their copies through it (`transfer::fanout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHost {
    pub name: String,
    /// SSH host (the coordinator connects to it).
    pub host_name: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// The private key file the coordinator logs in with.
    pub identity: Option<PathBuf>,
    /// Its pinned host key (required).
    pub host_key: String,
    /// Where its agent keeps its store on the host (`/var/lib/ferry-relay`).
    pub root: PathBuf,
    /// The key file on it to log in to its children with.
    pub relay_identity: Option<String>,
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
    /// `None`: the SSH config's, else 22.
    pub port: Option<u16>,
    /// `None`: the SSH config's, else root.
    pub user: Option<String>,
    /// The private key file (`None`: the SSH config's, ssh-agent, `~/.ssh/id_*`).
    pub identity: Option<PathBuf>,
    /// The pinned host key, `TYPE BASE64` (from a bare key or an `ssh-keyscan` line).
    pub host_key: Option<String>,
    /// The SSH config file read instead of `~/.ssh/config`.
    pub ssh_config: Option<PathBuf>,
    /// Where the host's store and state live (on the host for `managed-host`).
    pub root: PathBuf,
    /// `None` when confirmation is switched off.
    pub confirm_timeout: Option<Duration>,
    /// Whether a `user` other than root runs the host's commands with `sudo -n`; `None`: only
    /// when `root` is `/` (the host's own store).
    pub sudo: Option<bool>,
    /// The store dir of the host's store: the deployment's (a path is the same on both ends).
    pub store_dir: StoreDir,
    /// The host's store: ferry's, the host's own Nix store, or detected (`store = …`).
    pub host_store: HostStoreKind,
    /// The agent program for a `managed-host`: this executable (default), `agent = "FILE"`
    /// (a ferry built for the host, uploaded instead), or `agent = "PATH"` (the host's `ferry`
    /// on its PATH, as is).
    pub agent: AgentSource,
    /// `substitute-from`: binary caches (`s3://`, `file://`, `http(s)://`) the host fetches
    /// missing paths from itself before the coordinator sends the rest.
    pub substitute_from: Vec<String>,
    /// `via = "NAME"`: the machine whose agent relays the copy to this one
    /// (`transfer::fanout`).
    pub via: Option<String>,
    /// `relay-identity`: when this machine relays, the private key file *on it* it logs in to
    /// its children with (`None`: its user's default keys).
    pub relay_identity: Option<String>,
}

/// `store` in `[machine.configuration]`: where the host keeps what is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostStoreKind {
    /// ferry's store under the host's root.
    Ferry,
    /// The host's own Nix store (under the root, as `nix-store --store ROOT` sees it).
    Nix,
    /// The host's own Guix store (its daemon's database under the root; paths go through
    /// `guix archive --import`).
    Guix,
    /// Nix's when the host has Nix's database under the root and `nix-store`, and the
    /// deployment's store dir is `/nix/store`; Guix's when it has Guix's database and `guix`,
    /// and the store dir is `/gnu/store`; else ferry's.
    #[default]
    Auto,
}

impl HostStoreKind {
    /// The name in the file (and in the facts request).
    pub fn name(self) -> &'static str {
        match self {
            HostStoreKind::Ferry => "ferry",
            HostStoreKind::Nix => "nix",
            HostStoreKind::Guix => "guix",
            HostStoreKind::Auto => "auto",
        }
    }
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
    /// A system built elsewhere (`system = "/nix/store/…"`), deployed as it is; `None`: ferry's
    /// builder makes the system from the fields above.
    pub prebuilt: Option<PrebuiltSystem>,
}

/// `system`, `switch`, `boot-switch`, `profile`: a system built by Nix or Guix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrebuiltSystem {
    /// The absolute store path (in the deployment's store dir).
    pub path: String,
    /// Program (relative to the system, or absolute) and arguments that switch to it.
    pub switch: Vec<String>,
    /// The same for the next boot only, run when `switch` fails.
    pub boot_switch: Option<Vec<String>>,
    /// The profile on the host (a path under the host's root): generations are
    /// `PROFILE-N-link` next to it.
    pub profile: String,
}

/// Where the deployment's store comes from when the file does not say (`store = …`): the
/// command line's `--store`, and the store dir of ferry's own store as resolved there.
#[derive(Debug, Clone)]
pub struct StoreChoice {
    /// `--store`, if given.
    pub kind: Option<DbKind>,
    /// ferry's store dir (`--store-dir`, default `/gnu/store`).
    pub ferry_store_dir: StoreDir,
}

impl Default for StoreChoice {
    fn default() -> Self {
        StoreChoice { kind: None, ferry_store_dir: StoreDir::guix() }
    }
}

impl StoreChoice {
    /// The store dir of the store `kind` (`None`: ferry's).
    pub fn store_dir(&self, kind: Option<DbKind>) -> StoreDir {
        match kind {
            Some(k @ (DbKind::Nix | DbKind::Guix)) => {
                StoreDir::new(k.default_store_dir()).expect("a valid store dir")
            }
            Some(DbKind::Ferry) | None => self.ferry_store_dir.clone(),
        }
    }
}

/// The default profile of a system given as a store path, by the deployment's store.
pub fn default_profile(kind: Option<DbKind>) -> &'static str {
    match kind {
        Some(DbKind::Nix) => "/nix/var/nix/profiles/system",
        Some(DbKind::Guix) => "/var/guix/profiles/system",
        Some(DbKind::Ferry) | None => "/var/ferry/profiles/system",
    }
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
    /// Read and validate a deployment file, with the process environment; the local paths it
    /// names must exist ([`check_local_paths`](Self::check_local_paths)).
    pub fn load(path: &Path) -> Result<Deployment, DeploymentError> {
        Self::load_with(path, &StoreChoice::default())
    }

    /// [`load`](Self::load) with the command line's choice of store.
    pub fn load_with(path: &Path, store: &StoreChoice) -> Result<Deployment, DeploymentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeploymentError::Read { path: path.display().to_string(), source })?;
        let deployment = Self::parse_with(path, &text, &process_env, store)?;
        deployment.check_local_paths()?;
        Ok(deployment)
    }

    /// Validate a deployment file's text; `path` names it in errors and gives the folder
    /// relative paths resolve against.
    pub fn parse(
        path: &Path,
        text: &str,
        env: EnvLookup<'_>,
    ) -> Result<Deployment, DeploymentError> {
        Self::parse_with(path, text, env, &StoreChoice::default())
    }

    /// [`parse`](Self::parse) with the command line's choice of store.
    pub fn parse_with(
        path: &Path,
        text: &str,
        env: EnvLookup<'_>,
        store: &StoreChoice,
    ) -> Result<Deployment, DeploymentError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let parsed = parse::machines(path, text, &dir, env, store)?;
        Ok(Deployment {
            file: path.to_owned(),
            dir,
            store: parsed.store,
            store_dir: parsed.store_dir,
            machines: parsed.machines,
            warnings: parsed.warnings,
            local_paths: parsed.local_paths,
            rollout: parsed.rollout,
            relays: parsed.relays,
        })
    }

    /// The machines selected by `--on` (`NAME|@TAG|GLOB,...`; a glob has `*` or `?` and
    /// matches names), in file order; all with `None`. A name, tag or glob that selects nothing
    /// is an error.
    pub fn select(&self, on: Option<&str>) -> Result<Vec<&Machine>, SelectError> {
        let Some(spec) = on else { return Ok(self.machines.iter().collect()) };
        let names: Vec<String> = self.machines.iter().map(|m| m.name.clone()).collect();
        let tags: BTreeSet<&str> =
            self.machines.iter().flat_map(|m| m.tags.iter().map(String::as_str)).collect();
        let mut chosen = vec![false; self.machines.len()];
        let mut any = false;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            any = true;
            let hits: Vec<usize> = if let Some(tag) = item.strip_prefix('@') {
                let hits = self.indices(|m| m.tags.iter().any(|t| t == tag));
                if hits.is_empty() {
                    let known: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
                    return Err(SelectError::UnknownTag {
                        tag: tag.to_owned(),
                        suggestion: closest(tag, &known),
                        known,
                    });
                }
                hits
            } else if item.contains(['*', '?']) {
                let hits = self.indices(|m| glob_match(item, &m.name));
                if hits.is_empty() {
                    return Err(SelectError::NoMatch { pattern: item.to_owned(), known: names });
                }
                hits
            } else {
                let hits = self.indices(|m| m.name == item);
                if hits.is_empty() {
                    return Err(SelectError::UnknownName {
                        name: item.to_owned(),
                        suggestion: closest(item, &names),
                        known: names,
                    });
                }
                hits
            };
            for i in hits {
                chosen[i] = true;
            }
        }
        if !any {
            return Err(SelectError::Empty);
        }
        Ok(self.machines.iter().zip(chosen).filter(|(_, c)| *c).map(|(m, _)| m).collect())
    }

    fn indices(&self, pick: impl Fn(&Machine) -> bool) -> Vec<usize> {
        self.machines.iter().enumerate().filter(|(_, m)| pick(m)).map(|(i, _)| i).collect()
    }

    /// Every local path the file names that must exist on this machine (package directories,
    /// etc file sources) does, or the error at its line and column. [`load`](Self::load) checks
    /// this; [`parse`](Self::parse) does not (it reads no file system).
    pub fn check_local_paths(&self) -> Result<(), DeploymentError> {
        for local in &self.local_paths {
            let exists = if local.directory { local.path.is_dir() } else { local.path.is_file() };
            if !exists {
                return Err(DeploymentError::At {
                    file: self.file.display().to_string(),
                    line: local.line,
                    column: local.column,
                    message: format!(
                        "{}: no {} {}",
                        local.key,
                        if local.directory { "directory" } else { "file" },
                        local.path.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A local path named in the file, where it is named (see [`Deployment::check_local_paths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPath {
    pub path: PathBuf,
    /// A directory (a package) or a file (an etc file's `source`).
    pub directory: bool,
    /// The key, as `packages`.
    pub key: &'static str,
    pub line: usize,
    pub column: usize,
}

/// `*` (any run of characters, also none) and `?` (one character) in `pattern`, against all of
/// `name`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The name of `known` closest to `word` (case-insensitive Levenshtein distance), when it is
/// close: at most a third of the word's length, at least 1.
pub fn closest(word: &str, known: &[String]) -> Option<String> {
    let limit = (word.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(&word.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

/// Edit distance in characters: insertions, deletions, substitutions and transpositions of
/// neighbours (`wbe` → `web` is 1), each costing 1 (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
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
