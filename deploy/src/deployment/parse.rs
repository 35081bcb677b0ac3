//! Reading a deployment file: the raw records as written (serde, with spans), then their
//! resolution into [`Machine`]s: inheritance, defaults, path resolution, and every semantic
//! error at its line and column (see the rules in [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nar_core::store_path::StoreDir;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use store::DbKind;
use toml::Spanned;

use super::*;

mod relay;
use crate::rollout::Rollout;
use relay::{RawRelay, RawStep};

/// Resolve the machines of a deployment file's `text` (`path` names it in errors, `dir` is its
/// folder).
pub(super) fn machines(
    path: &Path,
    text: &str,
    dir: &Path,
    env: EnvLookup<'_>,
    choice: &StoreChoice,
) -> Result<Parsed, DeploymentError> {
    let mut cx = Cx {
        file: path.display().to_string(),
        text,
        dir: dir.to_owned(),
        env,
        store: choice.kind,
        store_dir: choice.store_dir(choice.kind),
        local_paths: std::cell::RefCell::new(Vec::new()),
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => cx.at(span, e.message().to_owned()),
        None => DeploymentError::File { file: cx.file.clone(), message: e.message().to_owned() },
    })?;
    if let Some(key) = &raw.store {
        let kind: DbKind = key.get_ref().parse().map_err(|_| {
            cx.at(key.span(), format!("unknown store '{}': one of nix, guix, ferry", key.get_ref()))
        })?;
        if let Some(given) = choice.kind.filter(|given| *given != kind) {
            return Err(cx.at(
                key.span(),
                format!(
                    "the file says store = \"{}\", the command line --store {}",
                    kind.name(),
                    given.name()
                ),
            ));
        }
        cx.store = Some(kind);
        cx.store_dir = choice.store_dir(Some(kind));
    }
    let (machines, warnings) = cx.resolve(&raw)?;
    cx.check_via(&raw, &machines)?;
    let relays = cx.relays(&raw, &machines)?;
    let rollout = cx.rollout(&raw)?;
    Ok(Parsed {
        store: cx.store,
        store_dir: cx.store_dir,
        machines,
        warnings,
        local_paths: cx.local_paths.into_inner(),
        rollout,
        relays,
    })
}

/// A resolved file: its store, its machines, its warnings and the local paths it names.
pub(super) struct Parsed {
    pub store: Option<DbKind>,
    pub store_dir: StoreDir,
    pub machines: Vec<Machine>,
    pub warnings: Vec<String>,
    pub local_paths: Vec<LocalPath>,
    pub rollout: Option<Rollout>,
    pub relays: Vec<RelayHost>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    store: Option<Spanned<String>>,
    rollout: Option<Spanned<Vec<RawStep>>>,
    #[serde(default)]
    operating_system: BTreeMap<String, Spanned<RawOs>>,
    #[serde(default)]
    machine: Vec<Spanned<RawMachine>>,
    #[serde(default)]
    relay: BTreeMap<String, Spanned<RawRelay>>,
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
    system: Option<Spanned<String>>,
    switch: Option<Spanned<Vec<String>>>,
    boot_switch: Option<Spanned<Vec<String>>>,
    profile: Option<Spanned<String>>,
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
    ssh_config: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    confirm_timeout: Option<ConfirmTimeout>,
    sudo: Option<bool>,
    store: Option<HostStoreKind>,
    agent: Option<Spanned<String>>,
    substitute_from: Option<Vec<Spanned<String>>>,
    via: Option<Spanned<String>>,
    relay_identity: Option<String>,
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

struct Cx<'a> {
    file: String,
    text: &'a str,
    dir: PathBuf,
    env: EnvLookup<'a>,
    /// The deployment's store, and its store dir.
    store: Option<DbKind>,
    store_dir: StoreDir,
    /// The local paths that must exist (packages, etc sources), as they are resolved.
    local_paths: std::cell::RefCell<Vec<LocalPath>>,
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

    /// Record a local path the file names (checked by `Deployment::check_local_paths`).
    fn must_exist(&self, path: &Path, directory: bool, key: &'static str, span: Range<usize>) {
        let (line, column) = line_column(self.text, span.start);
        let local = LocalPath { path: path.to_owned(), directory, key, line, column };
        let mut all = self.local_paths.borrow_mut();
        if !all.contains(&local) {
            all.push(local);
        }
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

    fn resolve(&self, raw: &RawFile) -> Result<(Vec<Machine>, Vec<String>), DeploymentError> {
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
        let mut warnings = Vec::new();
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
            let os = self.finish_os(name, merged, m.operating_system.span())?;
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
            if m.environment == Environment::ManagedHost {
                let same_host = machines.iter().find(|o: &&Machine| {
                    o.environment == Environment::ManagedHost
                        && o.configuration.host_name == configuration.host_name
                        && o.configuration.port == configuration.port
                        && o.configuration.root == configuration.root
                });
                if let Some(other) = same_host {
                    let (line, column) = line_column(self.text, m.name.span().start);
                    warnings.push(format!(
                        "{}:{line}:{column}: warning: machines '{}' and '{name}' are both host \
                         {} with the root {}: both deploy there and the last one wins",
                        self.file,
                        other.name,
                        configuration.host_name.as_deref().unwrap_or_default(),
                        configuration.root.display()
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
        Ok((machines, warnings))
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
            system: os.system.or(parent.system),
            switch: os.switch.or(parent.switch),
            boot_switch: os.boot_switch.or(parent.boot_switch),
            profile: os.profile.or(parent.profile),
        })
    }

    /// An absolute path that names a store item: in the deployment's store dir (`Ok(true)`), a
    /// path elsewhere that is not in any known store dir (`Ok(false)`), or an error naming both
    /// store dirs when it is in another store's.
    fn in_store(&self, value: &Spanned<String>) -> Result<bool, DeploymentError> {
        let text = value.get_ref();
        if self.store_dir.split_path(text).is_ok() {
            return Ok(true);
        }
        for other in [StoreDir::nix(), StoreDir::guix()] {
            if other != self.store_dir && other.split_path(text).is_ok() {
                let fix = match other.as_str() {
                    StoreDir::NIX => " (`store = \"nix\"` deploys from Nix's store)",
                    _ => " (`store = \"guix\"` deploys from Guix's store)",
                };
                return Err(self.at(
                    value.span(),
                    format!(
                        "{text} is in {}, but this deployment's store ({}) keeps its paths in \
                         {}{fix}",
                        other.as_str(),
                        self.store.map_or("ferry", DbKind::name),
                        self.store_dir.as_str()
                    ),
                ));
            }
        }
        Ok(false)
    }

    /// `system`, `switch`, `boot-switch`, `profile`: a system given as a store path.
    fn prebuilt(
        &self,
        os: &RawOs,
        span: Range<usize>,
    ) -> Result<Option<PrebuiltSystem>, DeploymentError> {
        let Some(system) = &os.system else {
            let stray = [
                ("switch", os.switch.as_ref().map(Spanned::span)),
                ("boot-switch", os.boot_switch.as_ref().map(Spanned::span)),
                ("profile", os.profile.as_ref().map(Spanned::span)),
            ];
            if let Some((key, Some(at))) = stray.into_iter().find(|(_, s)| s.is_some()) {
                return Err(
                    self.at(at, format!("`{key}` applies to a `system` given as a store path"))
                );
            }
            if matches!(self.store, Some(DbKind::Nix | DbKind::Guix)) {
                let kind = self.store.map_or("ferry", DbKind::name);
                return Err(self.at(
                    span,
                    format!(
                        "the deployment's store is {kind}'s, which ferry only reads: give the \
                         system built by {kind} as `system = \"{}/…\"` with its `switch` command",
                        self.store_dir.as_str()
                    ),
                ));
            }
            return Ok(None);
        };
        if !system.get_ref().starts_with('/') || !self.in_store(system)? {
            return Err(self.at(
                system.span(),
                format!("`system` must be a store path in {}", self.store_dir.as_str()),
            ));
        }
        if let Ok((_, rest)) = self.store_dir.split_path(system.get_ref()) {
            if !rest.is_empty() {
                return Err(
                    self.at(system.span(), "`system` names a store item, not a file in one".into())
                );
            }
        }
        let builder_keys = [
            ("packages", os.packages.is_some()),
            ("files", os.files.is_some()),
            ("services", os.services.is_some()),
            ("bootloader", os.bootloader.is_some()),
            ("kernel", os.kernel.is_some()),
            ("kernel-arguments", os.kernel_arguments.is_some()),
            ("initrd-modules", os.initrd_modules.is_some()),
        ];
        if let Some((key, _)) = builder_keys.iter().find(|(_, set)| *set) {
            return Err(self.at(
                system.span(),
                format!("`{key}` is for ferry's builder: not with a `system` built elsewhere"),
            ));
        }
        let command = |c: &Spanned<Vec<String>>, key: &str| {
            if c.get_ref().first().is_none_or(|p| p.is_empty()) {
                return Err(self.at(
                    c.span(),
                    format!("`{key}` needs a program (relative to the system, or absolute)"),
                ));
            }
            Ok(c.get_ref().clone())
        };
        let Some(switch) = &os.switch else {
            return Err(self.at(
                system.span(),
                "a `system` needs its `switch` command, as [\"bin/switch-to-configuration\", \"switch\"]".into(),
            ));
        };
        let switch = command(switch, "switch")?;
        let boot_switch = os.boot_switch.as_ref().map(|c| command(c, "boot-switch")).transpose()?;
        let profile = match &os.profile {
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().ends_with('/') => {
                return Err(self.at(
                    p.span(),
                    "`profile` is an absolute path on the host, as /nix/var/nix/profiles/system"
                        .into(),
                ));
            }
            Some(p) => p.get_ref().clone(),
            None => default_profile(self.store).to_owned(),
        };
        Ok(Some(PrebuiltSystem { path: system.get_ref().clone(), switch, boot_switch, profile }))
    }

    fn finish_os(
        &self,
        machine: &str,
        os: RawOs,
        span: Range<usize>,
    ) -> Result<OperatingSystem, DeploymentError> {
        let prebuilt = self.prebuilt(&os, span)?;
        let mut packages = Vec::new();
        for p in os.packages.unwrap_or_default() {
            packages.push(if p.get_ref().starts_with('/') && self.in_store(&p)? {
                PathBuf::from(p.get_ref())
            } else {
                let path = if p.get_ref().starts_with('/') {
                    PathBuf::from(p.get_ref())
                } else {
                    self.local_path(&p)?
                };
                self.must_exist(&path, true, "packages", p.span());
                path
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
                    let path = self.local_path(&Spanned::new(f.span(), s.clone()))?;
                    self.must_exist(&path, false, "files", f.span());
                    EtcFile::Source(path)
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
            prebuilt,
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

    /// Where in the file byte `offset` of a string value is: exact when the value stands in
    /// the file as written (no escapes), else the value's start.
    fn in_value(&self, value: &Spanned<String>, offset: usize) -> Range<usize> {
        let span = value.span();
        let raw = &self.text[span.clone()];
        match raw.find(value.get_ref().as_str()) {
            Some(at) if !value.get_ref().is_empty() => {
                let start = span.start + at + offset;
                start..start
            }
            _ => span,
        }
    }

    /// `host-key`: the bare key or ssh-keyscan's line, as `TYPE BASE64`.
    fn host_key(&self, key: &Spanned<String>) -> Result<String, DeploymentError> {
        match transfer::transport::ssh::parse_host_key(key.get_ref()) {
            Ok(line) => Ok(line.key),
            Err(e) => {
                Err(self.at(self.in_value(key, e.offset), format!("host-key: {}", e.message)))
            }
        }
    }

    /// `identity`: the private key file (a `.pub` is refused: it is the other half).
    fn identity(&self, value: &Spanned<String>) -> Result<PathBuf, DeploymentError> {
        let path = self.local_path(value)?;
        if path.extension().is_some_and(|e| e == "pub") {
            return Err(self.at(
                value.span(),
                format!(
                    "identity = \"{}\" is a public key: give the private key file, \
                     identity = \"{}\"",
                    value.get_ref(),
                    value.get_ref().trim_end_matches(".pub")
                ),
            ));
        }
        Ok(path)
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
        let host_key = c.host_key.as_ref().map(|k| self.host_key(k)).transpose()?;
        let identity = c.identity.as_ref().map(|i| self.identity(i)).transpose()?;
        let ssh_config = c.ssh_config.as_ref().map(|p| self.local_path(p)).transpose()?;
        let agent = match &c.agent {
            None => AgentSource::ThisExecutable,
            Some(a) if a.get_ref() == "PATH" => AgentSource::HostPath,
            Some(a) => {
                let path = self.local_path(a)?;
                if !path.is_file() {
                    return Err(self.at(
                        a.span(),
                        format!(
                            "agent: no file {}: name a ferry built for the host (or \"PATH\" \
                             for the ferry on the host's PATH)",
                            path.display()
                        ),
                    ));
                }
                AgentSource::File(path)
            }
        };
        let mut substitute_from = Vec::new();
        for uri in c.substitute_from.iter().flatten() {
            use proto::uri::Target as Uri;
            match Uri::parse(uri.get_ref()) {
                Ok(Uri::File { .. } | Uri::S3(_) | Uri::Http { .. }) => {
                    substitute_from.push(uri.get_ref().clone())
                }
                Ok(_) => {
                    return Err(self.at(
                        uri.span(),
                        "substitute-from: a binary cache is s3://, file:// or http(s)://".into(),
                    ))
                }
                Err(e) => return Err(self.at(uri.span(), format!("substitute-from: {e}"))),
            }
        }
        Ok(Configuration {
            host_name: c.host_name.clone(),
            system: c.system.clone().unwrap_or_else(this_system),
            build_locally: c.build_locally.unwrap_or(true),
            authorize: c.authorize.unwrap_or(true),
            allow_downgrades: c.allow_downgrades.unwrap_or(false),
            safety_checks: c.safety_checks.unwrap_or(true),
            port: c.port,
            user: c.user.clone(),
            identity,
            host_key,
            ssh_config,
            root,
            confirm_timeout: c.confirm_timeout.map_or(Some(DEFAULT_CONFIRM_TIMEOUT), |t| t.0),
            sudo: c.sudo,
            store_dir: self.store_dir.clone(),
            host_store: c.store.unwrap_or_default(),
            agent,
            substitute_from,
            via: c.via.as_ref().map(|v| v.get_ref().clone()),
            relay_identity: c.relay_identity.clone(),
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
