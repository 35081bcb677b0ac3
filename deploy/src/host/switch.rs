//! Activating a system built by Nix or Guix: its own switch command instead of ferry's
//! `activate`.
//!
//! - The command of each generation is recorded when the generation is made, in
//!   `<root>/var/ferry/switch/<profile>-N.json` (the profile's path without its leading `/`,
//!   e.g. `var/ferry/switch/nix/var/nix/profiles/system-3.json`): a rollback runs the *previous*
//!   generation's own command, from the previous system. A generation ferry did not make (by
//!   `nixos-rebuild`, say) has no record: the command given now is used for it.
//! - The command runs with the program relative to the system (or absolute), `FERRY_ROOT` set
//!   (as for `activate`), its stdout and stderr lines streamed.
//! - When the live `switch` exits non-zero and a `boot-switch` is given, that runs instead;
//!   its success counts as activated (for the next boot), which [`Switcher::next_boot`] tells.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use proto::session::SwitchSpec;

use super::driver::{run_streaming, HostOutput};
use super::HostCommandError;
use crate::generations::Profiles;

/// The switch commands of one activation (or `--roll-back`) on a Nix or Guix profile.
#[derive(Debug)]
pub struct Switcher {
    /// The commands given now (for generations without a record).
    pub spec: SwitchSpec,
    /// The profile on this host root.
    pub profiles: Profiles,
    /// The generation last activated with `boot-switch` after its `switch` failed.
    next_boot: Cell<Option<u64>>,
}

impl Switcher {
    /// The switcher of `spec` on the host whose root is `root`.
    pub fn new(root: &Path, spec: SwitchSpec) -> Switcher {
        let profiles = Profiles::at(root, Path::new(&spec.profile));
        Switcher { spec, profiles, next_boot: Cell::new(None) }
    }

    /// Where generation `n`'s commands are recorded.
    fn record_path(&self, n: u64) -> PathBuf {
        let profile = self.spec.profile.trim_start_matches('/');
        self.profiles.root().join("var/ferry/switch").join(format!("{profile}-{n}.json"))
    }

    /// Record the commands given now as generation `n`'s.
    pub fn record(&self, n: u64) -> Result<(), HostCommandError> {
        let path = self.record_path(n);
        let write = |path: &Path| {
            fs::create_dir_all(path.parent().expect("has a parent"))?;
            fs::write(path, serde_json::to_vec(&self.spec).expect("serializable"))
        };
        write(&path)
            .map_err(|source| HostCommandError::Write { path: path.display().to_string(), source })
    }

    /// Generation `n`'s commands: its record, else those given now.
    fn commands_of(&self, n: u64) -> SwitchSpec {
        fs::read(self.record_path(n))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| self.spec.clone())
    }

    /// Was generation `n` activated for the next boot only (its live switch failed)?
    pub fn next_boot(&self, n: u64) -> bool {
        self.next_boot.get() == Some(n)
    }

    /// Switch to generation `n` (whose system is `system`, as seen here) with its own command;
    /// when that fails, with its `boot-switch`. The exit code of the command that counts.
    pub fn activate(
        &self,
        n: u64,
        system: &Path,
        output: &mut dyn FnMut(HostOutput<'_>),
    ) -> Option<i32> {
        let commands = self.commands_of(n);
        let code = self.run(system, &commands.switch, &mut |l| output(HostOutput::Line(l)));
        let Some(boot) = commands.boot_switch.filter(|_| code != Some(0)) else { return code };
        let how = code.map_or("was killed or could not run".into(), |c| format!("exited with {c}"));
        output(HostOutput::Warning(format!(
            "`{}` {how}: activating generation {n} for the next boot with `{}`",
            commands.switch.join(" "),
            boot.join(" ")
        )));
        let boot_code = self.run(system, &boot, &mut |l| output(HostOutput::Line(l)));
        if boot_code == Some(0) {
            self.next_boot.set(Some(n));
        }
        boot_code
    }

    fn run(&self, system: &Path, command: &[String], line: &mut dyn FnMut(&str)) -> Option<i32> {
        let (program, args) = command.split_first()?;
        let program = if program.starts_with('/') {
            self.profiles.on_host(Path::new(program))
        } else {
            system.join(program)
        };
        let mut cmd = Command::new(&program);
        cmd.args(args).env("FERRY_ROOT", self.profiles.root());
        run_streaming(cmd, &program, line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(root: &Path, name: &str, script: &str) -> PathBuf {
        let dir = root.join("nix/store").join(name);
        fs::create_dir_all(dir.join("bin")).unwrap();
        let program = dir.join("bin/switch-to-configuration");
        fs::write(&program, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn spec(boot: bool) -> SwitchSpec {
        let cmd = |a: &str| vec!["bin/switch-to-configuration".to_owned(), a.to_owned()];
        SwitchSpec {
            profile: "/nix/var/nix/profiles/system".into(),
            switch: cmd("switch"),
            boot_switch: boot.then(|| cmd("boot")),
        }
    }

    #[test]
    fn a_failed_switch_falls_back_to_boot_switch_and_records_are_per_generation() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("log");
        let script = format!(
            "echo \"$1 $0\" >> {}; test \"$1\" = boot || {{ echo inhibited >&2; exit 4; }}",
            log.display()
        );
        let a = system(t.path(), "a", &script);
        let s = Switcher::new(t.path(), spec(true));
        let mut lines = Vec::new();
        let code = s.activate(1, &a, &mut |o| match o {
            HostOutput::Line(l) => lines.push(l.to_owned()),
            HostOutput::Warning(w) => lines.push(w),
            HostOutput::Event(_) => {}
        });
        assert_eq!(code, Some(0));
        assert!(s.next_boot(1) && !s.next_boot(2));
        let program = a.join("bin/switch-to-configuration").display().to_string();
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            format!("switch {program}\nboot {program}\n")
        );
        assert!(lines.iter().any(|l| l == "inhibited"), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("for the next boot")), "{lines:?}");

        // Generation 1 recorded without a boot-switch: its own command is used for it.
        Switcher::new(t.path(), spec(false)).record(1).unwrap();
        assert!(t.path().join("var/ferry/switch/nix/var/nix/profiles/system-1.json").exists());
        fs::remove_file(&log).unwrap();
        assert_eq!(s.activate(1, &a, &mut |_| {}), Some(4));
        assert_eq!(fs::read_to_string(&log).unwrap(), format!("switch {program}\n"));
    }
}
