//! `facts`: everything the checks before a copy need, in one answer ([`Facts`]).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use proto::session::{Facts, FactsRequest};
use store::Store;

use super::nix_store::HostStore;
use super::{HostCommandError, HostRoot};
use crate::checks::{self, Device, DeviceCheck};

impl HostRoot {
    /// The system type, the current generation and its system and provenance, the device
    /// probe's errors, and which of the requested paths the store lacks.
    pub fn facts(&self, req: &FactsRequest) -> Result<Facts, HostCommandError> {
        let profiles = &self.profiles_of(req.profile.as_deref());
        let host_store = self.host_store(req.host_store.as_deref())?;
        let generation = profiles.current()?;
        let current_system = match generation {
            Some(g) => Some(profiles.generation(g)?.system),
            None => None,
        };
        let on_this_system = match (&req.system, &current_system) {
            (Some(s), Some(cur)) => profiles.on_host(Path::new(s)) == *cur,
            _ => false,
        };
        let provenance =
            current_system.as_ref().and_then(|s| fs::read_to_string(s.join("provenance")).ok());
        let mut safety_errors = Vec::new();
        if !req.devices.is_empty() {
            let device_checks: Vec<DeviceCheck> = req
                .devices
                .iter()
                .map(|d| DeviceCheck {
                    device: Device::parse(&d.device),
                    mount_point: d.mount_point.clone(),
                })
                .collect();
            let out = Command::new("sh")
                .arg("-c")
                .arg(checks::probe_script(&device_checks))
                .env("FERRY_ROOT", profiles.root())
                .stdin(Stdio::null())
                .output()
                .map_err(HostCommandError::SafetyChecks)?;
            safety_errors = checks::evaluate(&device_checks, &String::from_utf8_lossy(&out.stdout))
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        Ok(Facts {
            system_type: crate::deployment::this_system(),
            generation,
            current_system: current_system.map(|s| s.display().to_string()),
            on_this_system,
            provenance,
            safety_errors,
            missing: self.missing(&req.paths, host_store)?,
            store: req.host_store.as_ref().map(|_| host_store.name().to_owned()),
        })
    }

    /// Of `paths` (logical store paths), those the store lacks (all of them without a store).
    fn missing(
        &self,
        paths: &[String],
        host_store: HostStore,
    ) -> Result<Vec<String>, HostCommandError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let store = if host_store != HostStore::Ferry {
            self.daemon_store(host_store)?
        } else {
            let layout = self.layout()?;
            if !layout.database().1.exists() {
                return Ok(paths.to_vec());
            }
            Store::open_read_only(layout)?
        };
        let parsed = paths
            .iter()
            .map(|p| {
                store.parse_path(p).map_err(|source| HostCommandError::RequestPath {
                    path: p.clone(),
                    source: Box::new(source),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let valid = store.query_valid(&parsed)?;
        Ok(paths
            .iter()
            .zip(&parsed)
            .filter(|(_, p)| !valid.contains(p))
            .map(|(text, _)| text.clone())
            .collect())
    }
}
