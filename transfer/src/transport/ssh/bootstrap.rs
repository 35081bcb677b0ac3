//! Agent bootstrap: before the first agent starts, one probe command reports the remote uid and
//! `$HOME`, and which `ferry` of **this** version the host has (`ferry` on `PATH`, or
//! `~/.cache/ferry/ferry-<version>`, each checked with `--version`). When there is none, the
//! host's architecture must equal this build's ([`local_arch`]); then the running executable is
//! uploaded to `~/.cache/ferry/ferry-<version>` and run from there. When the agent will run
//! under `sudo -n`, the probe also checks the user may.

use super::transport::other;
use super::{SshSession, SshTransport};
use crate::transport::TransportError;

/// What the probe found.
#[derive(Debug, Clone)]
pub(super) struct AgentProgram {
    pub(super) path: String,
    pub(super) sudo: bool,
    pub(super) uploaded: bool,
}

/// The remote architecture name (`uname -m`) of this build.
pub fn local_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        arch => arch,
    }
}

impl SshTransport {
    pub(super) async fn agent_program(
        &self,
        session: &SshSession,
    ) -> Result<AgentProgram, TransportError> {
        if let Some(p) = self.program.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(p);
        }
        let version = env!("CARGO_PKG_VERSION");
        // $2 = 1: the agent is to run under `sudo -n` if the user is not root; check it can.
        let script = r#"v="$1"
uid=$(id -u)
echo "uid $uid"
echo "home $HOME"
if [ "$2" = 1 ] && [ "$uid" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then echo "sudo missing"
  elif out=$(sudo -n true 2>&1 </dev/null); then echo "sudo ok"
  else echo "sudo refused $(printf '%s' "$out" | tr '\n' ' ')"; fi
fi
for f in "$(command -v ferry 2>/dev/null)" "$HOME/.cache/ferry/ferry-$v"; do
  if [ -n "$f" ] && [ -x "$f" ] && [ "$("$f" --version 2>/dev/null)" = "ferry $v" ]; then
    echo "found $f"; exit 0
  fi
done
echo "arch $(uname -m)""#;
        let wants_sudo = if self.store.wants_sudo() { "1" } else { "0" };
        let out =
            session.run(&["sh", "-c", script, "sh", version, wants_sudo]).await.map_err(other)?;
        let text = String::from_utf8_lossy(&out);
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        };
        let uid: u32 = field("uid").and_then(|u| u.trim().parse().ok()).ok_or_else(|| {
            other(format!(
                "{}: the host's probe did not report the user's uid: {:?}",
                self.config.target(),
                text.trim()
            ))
        })?;
        let sudo = self.store.use_sudo(uid);
        if sudo {
            let refused = |detail: String| TransportError::SudoRefused {
                host: self.config.target(),
                user: self.config.user.clone(),
                detail,
            };
            match field("sudo").map(str::trim) {
                Some("ok") => {}
                Some("missing") => return Err(refused("sudo is not installed".to_owned())),
                Some(r) => {
                    let said = r.strip_prefix("refused").unwrap_or(r).trim();
                    return Err(refused(format!("sudo -n said: {said}")));
                }
                None => return Err(refused("the probe did not report on sudo".to_owned())),
            }
        }
        let program = if let Some(found) = field("found") {
            AgentProgram { path: found.to_owned(), sudo, uploaded: false }
        } else {
            let arch = field("arch").unwrap_or("unknown");
            if arch != local_arch() {
                return Err(TransportError::Other(format!(
                    "{}: the host has no ferry {version} and is {arch}, while this ferry is \
                     built for {}; install ferry {version} on the host",
                    self.config.target(),
                    local_arch()
                )));
            }
            let home = field("home").filter(|h| h.starts_with('/')).ok_or_else(|| {
                other(format!("{}: the remote $HOME is not an absolute path", self.config.target()))
            })?;
            let local = self.local_executable.clone().ok_or_else(|| {
                other("cannot find the running executable to upload it to the host")
            })?;
            let remote = format!("{home}/.cache/ferry/ferry-{version}");
            session.upload(&local, &remote, 0o755).await.map_err(other)?;
            AgentProgram { path: remote, sudo, uploaded: true }
        };
        *self.program.lock().unwrap_or_else(|p| p.into_inner()) = Some(program.clone());
        Ok(program)
    }

    /// `[sudo -n --] FERRY [--root R] [--store-dir D] [--state-dir S] ARGS...`.
    pub(super) fn argv_for(&self, program: &AgentProgram, args: &[String]) -> Vec<String> {
        let mut argv = Vec::new();
        if program.sudo {
            argv.extend(["sudo".to_owned(), "-n".to_owned(), "--".to_owned()]);
        }
        argv.push(program.path.clone());
        if let Some(root) = &self.store.root {
            argv.extend(["--root".to_owned(), root.display().to_string()]);
        }
        if let Some(d) = &self.store.store_dir {
            argv.extend(["--store-dir".to_owned(), d.clone()]);
        }
        if let Some(d) = &self.store.state_dir {
            argv.extend(["--state-dir".to_owned(), d.display().to_string()]);
        }
        argv.extend(args.iter().cloned());
        argv
    }
}
