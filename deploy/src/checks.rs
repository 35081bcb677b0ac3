//! Safety checks as data, and the downgrade check.
//!
//! # Device checks (one round trip)
//!
//! [`device_checks`] lists what must exist on the host before switching: the device of every
//! file system the declaration mounts (skipping pseudo file systems, `nfs*`/`cifs`, bind mounts
//! and `mount = false`), as guix-spec §4.5 step 3b does. [`probe_script`] turns the whole list
//! into **one** POSIX sh program, run on the host, which prints one line per check:
//!
//! ```text
//! <index> ok
//! <index> missing <reason>
//! ```
//!
//! Devices are looked up under `$FERRY_ROOT` (the host root, `/` on a real host): a path with
//! `ls -d`, whose error gives the reason; `LABEL=L` at `/dev/disk/by-label/L` (udev-escaped)
//! or with `blkid -L`; `UUID=U` at `/dev/disk/by-uuid/U` (as given and in lower case) or with
//! `blkid -U` (blkid only when the root is `/`). [`evaluate`] reads the answer into errors
//! with Guix's texts: `device 'D' not found: REASON`, `no file system with label 'L'`,
//! `no file system with UUID 'U'`. A check with no answer line is an error too (Guix silently
//! passes a literal device whose remote check raised).
//!
//! # Downgrade check (coordinator side)
//!
//! The host's `current-system/provenance` names the git commit it was deployed from; the new
//! system's provenance names the commit being deployed. [`downgrade_check`] refuses unless the
//! host's commit is the same or an ancestor (`git merge-base --is-ancestor`), or
//! `allow-downgrades` is set, in which case it warns.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::deployment::OperatingSystem;
use crate::system::Provenance;

/// File-system types that have no device to check (Guix's pseudo file systems).
pub const PSEUDO_FILE_SYSTEMS: &[&str] = &[
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "none",
    "overlay",
    "proc",
    "pstore",
    "securityfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// How a file system's device is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Path(String),
    Label(String),
    Uuid(String),
}

impl Device {
    /// Parse `LABEL=…`, `UUID=…` or a path.
    pub fn parse(text: &str) -> Device {
        if let Some(l) = text.strip_prefix("LABEL=") {
            Device::Label(l.to_owned())
        } else if let Some(u) = text.strip_prefix("UUID=") {
            Device::Uuid(u.to_owned())
        } else {
            Device::Path(text.to_owned())
        }
    }
}

/// One check to run on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCheck {
    pub device: Device,
    pub mount_point: String,
}

/// A failed safety check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SafetyError {
    #[error("device '{device}' not found: {reason}")]
    DeviceNotFound { device: String, reason: String },
    #[error("no file system with label '{0}'")]
    NoLabel(String),
    #[error("no file system with UUID '{0}'")]
    NoUuid(String),
    #[error("the host gave no answer for the device of {0} (the check could not run)")]
    NoAnswer(String),
}

/// The device checks for a declaration.
pub fn device_checks(os: &OperatingSystem) -> Vec<DeviceCheck> {
    os.file_systems
        .iter()
        .filter(|fs| fs.mount)
        .filter(|fs| !PSEUDO_FILE_SYSTEMS.contains(&fs.fs_type.as_str()))
        .filter(|fs| !fs.fs_type.starts_with("nfs") && !fs.fs_type.starts_with("cifs"))
        .filter(|fs| {
            !fs.options.as_deref().unwrap_or_default().split(',').any(|o| o.trim() == "bind")
        })
        .map(|fs| DeviceCheck {
            device: Device::parse(&fs.device),
            mount_point: fs.mount_point.clone(),
        })
        .collect()
}

/// Quote a string for POSIX sh (single quotes; `'` as `'\''`).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A label or UUID as udev writes it under `/dev/disk/by-*`: bytes outside
/// `[0-9A-Za-z#+-.:=@_]` (and outside valid multi-byte UTF-8) become `\xNN`.
pub fn udev_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) || !c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
    }
    out
}

/// One sh program that runs every check (see the module docs for its output).
pub fn probe_script(checks: &[DeviceCheck]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# ferry safety checks: one line per check, '<i> ok' or '<i> missing <reason>'.\n\
         r=${FERRY_ROOT:-/}; r=${r%/}\n\
         dev() { [ -e \"$r$1\" ] || { [ -z \"$r\" ] && command -v blkid >/dev/null 2>&1 && blkid \"$2\" \"$3\" >/dev/null 2>&1; }; }\n",
    );
    for (i, c) in checks.iter().enumerate() {
        let line = match &c.device {
            Device::Path(p) => format!(
                "if e=$(ls -d -- \"$r\"{p} 2>&1 >/dev/null); then echo '{i} ok'; \
                 else echo \"{i} missing ${{e##*: }}\"; fi\n",
                p = sh_quote(p)
            ),
            Device::Label(l) => format!(
                "if dev {} -L {}; then echo '{i} ok'; else echo '{i} missing'; fi\n",
                sh_quote(&format!("/dev/disk/by-label/{}", udev_escape(l))),
                sh_quote(l)
            ),
            Device::Uuid(u) => format!(
                "if dev {} -U {} || dev {} -U {}; then echo '{i} ok'; else echo '{i} missing'; fi\n",
                sh_quote(&format!("/dev/disk/by-uuid/{}", udev_escape(u))),
                sh_quote(u),
                sh_quote(&format!("/dev/disk/by-uuid/{}", udev_escape(&u.to_lowercase()))),
                sh_quote(&u.to_lowercase()),
            ),
        };
        s.push_str(&line);
    }
    s
}

/// Read the host's answer to [`probe_script`] into errors (empty: all checks passed).
pub fn evaluate(checks: &[DeviceCheck], answer: &str) -> Vec<SafetyError> {
    let mut results: Vec<Option<Result<(), String>>> = vec![None; checks.len()];
    for line in answer.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(i), Some(status)) = (parts.next(), parts.next()) else { continue };
        let Ok(i) = i.parse::<usize>() else { continue };
        let Some(slot) = results.get_mut(i) else { continue };
        *slot = match status {
            "ok" => Some(Ok(())),
            "missing" => Some(Err(parts.next().unwrap_or("").trim().to_owned())),
            _ => continue,
        };
    }
    checks
        .iter()
        .zip(results)
        .filter_map(|(c, r)| match (r, &c.device) {
            (Some(Ok(())), _) => None,
            (None, _) => Some(SafetyError::NoAnswer(c.mount_point.clone())),
            (Some(Err(reason)), Device::Path(p)) => Some(SafetyError::DeviceNotFound {
                device: p.clone(),
                reason: if reason.is_empty() { "No such file or directory".into() } else { reason },
            }),
            (Some(Err(_)), Device::Label(l)) => Some(SafetyError::NoLabel(l.clone())),
            (Some(Err(_)), Device::Uuid(u)) => Some(SafetyError::NoUuid(u.clone())),
        })
        .collect()
}

/// The system-type check (guix-spec §4.5 step 3a, when building locally): the host must report
/// the declared `system`.
pub fn system_type_check(given: &str, reported: &str) -> Result<(), String> {
    if given == reported {
        Ok(())
    } else {
        Err(format!(
            "incorrect target system ('{given}' was given, while the system reports that it is \
             '{reported}')"
        ))
    }
}

/// How the host's commit relates to the one being deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The host's commit is an ancestor of the new one (an upgrade).
    Ancestor,
    Same,
    /// The host's commit descends from the new one (a downgrade).
    Descendant,
    Unrelated,
    /// The host's commit is not in the local repository.
    UnknownCommit,
}

/// Errors running git.
#[derive(Debug, thiserror::Error)]
#[error("git {args} in {dir}: {message}")]
pub struct GitError {
    pub args: String,
    pub dir: String,
    pub message: String,
}

/// The relation of `old` (the host's commit) to `new`, by `git merge-base --is-ancestor`.
pub fn git_relation(repo: &Path, old: &str, new: &str) -> Result<Relation, GitError> {
    let git = |args: &[&str]| -> Result<(Option<i32>, String), GitError> {
        let out = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| GitError {
                args: args.join(" "),
                dir: repo.display().to_string(),
                message: e.to_string(),
            })?;
        Ok((out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    };
    for commit in [old, new] {
        let spec = format!("{commit}^{{commit}}");
        if git(&["cat-file", "-e", &spec])?.0 != Some(0) {
            if commit == new {
                return Err(GitError {
                    args: format!("cat-file -e {spec}"),
                    dir: repo.display().to_string(),
                    message: "the commit being deployed is not in the repository".into(),
                });
            }
            return Ok(Relation::UnknownCommit);
        }
    }
    let (_, a) = git(&["rev-parse", &format!("{old}^{{commit}}")])?;
    let (_, b) = git(&["rev-parse", &format!("{new}^{{commit}}")])?;
    if a == b {
        return Ok(Relation::Same);
    }
    let is_ancestor = |x: &str, y: &str| -> Result<bool, GitError> {
        match git(&["merge-base", "--is-ancestor", x, y])? {
            (Some(0), _) => Ok(true),
            (Some(1), _) => Ok(false),
            (code, _) => Err(GitError {
                args: format!("merge-base --is-ancestor {x} {y}"),
                dir: repo.display().to_string(),
                message: format!("exit status {code:?}"),
            }),
        }
    };
    if is_ancestor(&a, &b)? {
        Ok(Relation::Ancestor)
    } else if is_ancestor(&b, &a)? {
        Ok(Relation::Descendant)
    } else {
        Ok(Relation::Unrelated)
    }
}

/// The downgrade check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// Proceed, but say this.
    Warn(String),
    /// Do not deploy to this host.
    Refuse(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Proceed => f.write_str("ok"),
            Verdict::Warn(m) => write!(f, "warning: {m}"),
            Verdict::Refuse(m) => f.write_str(m),
        }
    }
}

const DOWNGRADE_HINT: &str =
    "set `allow-downgrades = true` in the machine's [machine.configuration] to force this downgrade";

/// Decide whether deploying `new` over the host's `host` provenance is a downgrade; `relation`
/// computes the relation of the host's commit to the new one (normally [`git_relation`]).
pub fn downgrade_check(
    host: Option<&Provenance>,
    new: &Provenance,
    allow_downgrades: bool,
    relation: impl FnOnce(&str, &str) -> Result<Relation, GitError>,
) -> Verdict {
    let Some(old) = host.and_then(|h| h.commit.as_deref()) else {
        return match host {
            None => Verdict::Warn("cannot determine provenance for current system".into()),
            // Deployed from outside a repository before: nothing to compare.
            Some(_) => Verdict::Proceed,
        };
    };
    let Some(new_commit) = new.commit.as_deref() else {
        return Verdict::Warn(
            "cannot determine provenance of the deployment file (it is not in a git repository)"
                .into(),
        );
    };
    let rel = match relation(old, new_commit) {
        Ok(r) => r,
        Err(e) => {
            return Verdict::Refuse(format!("cannot compare commits {old} and {new_commit}: {e}"))
        }
    };
    match (rel, allow_downgrades) {
        (Relation::Ancestor | Relation::Same, _) => Verdict::Proceed,
        (Relation::Descendant, true) => Verdict::Warn(format!("rolling back from {old} to {new_commit}")),
        (Relation::Unrelated, true) => {
            Verdict::Warn(format!("moving from {old} to unrelated commit {new_commit}"))
        }
        (Relation::UnknownCommit, true) => Verdict::Warn(format!(
            "commit {old} deployed on the host is not in the local repository; deploying {new_commit} anyway"
        )),
        (Relation::Descendant | Relation::Unrelated, false) => Verdict::Refuse(format!(
            "aborting reconfiguration because commit {new_commit} of the deployment file's \
             repository is not a descendant of {old} (the host's commit); {DOWNGRADE_HINT}"
        )),
        (Relation::UnknownCommit, false) => Verdict::Refuse(format!(
            "aborting reconfiguration because commit {old} deployed on the host is not in the \
             local repository, so {new_commit} cannot be shown to descend from it (fetch it, or \
             {DOWNGRADE_HINT})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::FileSystem;

    fn fs(device: &str, mount_point: &str, ty: &str, options: Option<&str>) -> FileSystem {
        FileSystem {
            device: device.into(),
            mount_point: mount_point.into(),
            fs_type: ty.into(),
            options: options.map(Into::into),
            mount: true,
        }
    }

    fn os(file_systems: Vec<FileSystem>) -> OperatingSystem {
        OperatingSystem {
            host_name: "h".into(),
            timezone: "Etc/UTC".into(),
            locale: "C".into(),
            packages: vec![],
            files: Default::default(),
            file_systems,
            services: vec![],
            health_checks: vec![],
            boot: Default::default(),
            prebuilt: None,
        }
    }

    #[test]
    fn candidates_follow_guix() {
        let mut unmounted = fs("/dev/sdz", "/z", "ext4", None);
        unmounted.mount = false;
        let checks = device_checks(&os(vec![
            fs("/dev/vda1", "/", "ext4", None),
            fs("LABEL=data", "/data", "btrfs", None),
            fs("UUID=1234-ABCD", "/boot/efi", "vfat", None),
            fs("none", "/tmp", "tmpfs", None),
            fs("server:/x", "/x", "nfs4", None),
            fs("/srv", "/mnt", "none", Some("bind")),
            fs("/srv", "/mnt2", "ext4", Some("ro,bind")),
            unmounted,
        ]));
        assert_eq!(
            checks.iter().map(|c| c.device.clone()).collect::<Vec<_>>(),
            [
                Device::Path("/dev/vda1".into()),
                Device::Label("data".into()),
                Device::Uuid("1234-ABCD".into()),
            ]
        );
    }

    fn run_probe(script: &str, root: &Path) -> String {
        let out =
            Command::new("sh").arg("-c").arg(script).env("FERRY_ROOT", root).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn probe_on_a_test_root_with_guix_texts() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("dev/disk/by-label")).unwrap();
        std::fs::create_dir_all(root.join("dev/disk/by-uuid")).unwrap();
        std::fs::write(root.join("dev/vda1"), "").unwrap();
        std::fs::write(root.join("dev/disk/by-label/my\\x20data"), "").unwrap();
        std::fs::write(root.join("dev/disk/by-uuid/1234-abcd"), "").unwrap();
        let checks = device_checks(&os(vec![
            fs("/dev/vda1", "/", "ext4", None),
            fs("/dev/it's gone", "/gone", "ext4", None),
            fs("LABEL=my data", "/data", "ext4", None),
            fs("LABEL=nope", "/n", "ext4", None),
            fs("UUID=1234-ABCD", "/boot", "vfat", None),
            fs("UUID=ffff", "/f", "ext4", None),
        ]));
        let answer = run_probe(&probe_script(&checks), root);
        assert_eq!(
            evaluate(&checks, &answer),
            [
                SafetyError::DeviceNotFound {
                    device: "/dev/it's gone".into(),
                    reason: "No such file or directory".into()
                },
                SafetyError::NoLabel("nope".into()),
                SafetyError::NoUuid("ffff".into()),
            ]
        );
        assert_eq!(
            evaluate(&checks, &answer)[0].to_string(),
            "device '/dev/it's gone' not found: No such file or directory"
        );
        assert_eq!(evaluate(&checks, &answer)[1].to_string(), "no file system with label 'nope'");
        assert_eq!(evaluate(&checks, &answer)[2].to_string(), "no file system with UUID 'ffff'");
        // A truncated answer is not a pass.
        assert_eq!(
            evaluate(&checks, "0 ok\n"),
            [
                SafetyError::NoAnswer("/gone".into()),
                SafetyError::NoAnswer("/data".into()),
                SafetyError::NoAnswer("/n".into()),
                SafetyError::NoAnswer("/boot".into()),
                SafetyError::NoAnswer("/f".into()),
            ]
        );
    }

    #[test]
    fn system_type() {
        assert_eq!(system_type_check("x86_64-linux", "x86_64-linux"), Ok(()));
        assert_eq!(
            system_type_check("aarch64-linux", "x86_64-linux").unwrap_err(),
            "incorrect target system ('aarch64-linux' was given, while the system reports that \
             it is 'x86_64-linux')"
        );
    }

    #[test]
    fn quoting_and_escaping() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(udev_escape("my data/x"), r"my\x20data\x2fx");
        assert_eq!(udev_escape("é#1"), "é#1");
    }

    fn prov(commit: Option<&str>) -> Provenance {
        Provenance {
            commit: commit.map(Into::into),
            declaration: None,
            deployment_file: None,
            dirty: false,
            ferry_version: "0.1.0".into(),
        }
    }

    #[test]
    fn downgrade_verdicts() {
        let rel = |r: Relation| move |_: &str, _: &str| Ok(r);
        let (a, b) = (prov(Some("aaa")), prov(Some("bbb")));
        assert_eq!(downgrade_check(Some(&a), &b, false, rel(Relation::Ancestor)), Verdict::Proceed);
        assert_eq!(downgrade_check(Some(&a), &b, false, rel(Relation::Same)), Verdict::Proceed);
        let v = downgrade_check(Some(&a), &b, false, rel(Relation::Descendant));
        assert!(
            matches!(&v, Verdict::Refuse(m) if m.starts_with("aborting reconfiguration because commit bbb") && m.contains("allow-downgrades = true")),
            "{v}"
        );
        assert_eq!(
            downgrade_check(Some(&a), &b, true, rel(Relation::Descendant)),
            Verdict::Warn("rolling back from aaa to bbb".into())
        );
        assert_eq!(
            downgrade_check(Some(&a), &b, true, rel(Relation::Unrelated)),
            Verdict::Warn("moving from aaa to unrelated commit bbb".into())
        );
        assert!(matches!(
            downgrade_check(Some(&a), &b, false, rel(Relation::UnknownCommit)),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            downgrade_check(None, &b, false, rel(Relation::Descendant)),
            Verdict::Warn("cannot determine provenance for current system".into())
        );
        assert!(matches!(
            downgrade_check(Some(&a), &prov(None), false, rel(Relation::Descendant)),
            Verdict::Warn(_)
        ));
    }

    #[test]
    fn git_relations_in_a_real_repository() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path();
        let git = |args: &[&str]| ferry_tests::git(repo, args);
        git(&["init", "-q", "-b", "main"]);
        git(&["commit", "-q", "--allow-empty", "-m", "one"]);
        let one = git(&["rev-parse", "HEAD"]);
        git(&["commit", "-q", "--allow-empty", "-m", "two"]);
        let two = git(&["rev-parse", "HEAD"]);
        git(&["checkout", "-q", "--orphan", "other"]);
        git(&["commit", "-q", "--allow-empty", "-m", "other"]);
        let other = git(&["rev-parse", "HEAD"]);
        assert_eq!(git_relation(repo, &one, &two).unwrap(), Relation::Ancestor);
        assert_eq!(git_relation(repo, &two, &one).unwrap(), Relation::Descendant);
        assert_eq!(git_relation(repo, &two, &two).unwrap(), Relation::Same);
        assert_eq!(git_relation(repo, &one, &other).unwrap(), Relation::Unrelated);
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(git_relation(repo, missing, &two).unwrap(), Relation::UnknownCommit);
        assert!(git_relation(repo, &two, missing).is_err());
        // Through the verdict: deploying `one` on a host at `two` is refused.
        let v = downgrade_check(Some(&prov(Some(&two))), &prov(Some(&one)), false, |o, n| {
            git_relation(repo, o, n)
        });
        assert!(matches!(v, Verdict::Refuse(_)), "{v}");
    }
}
