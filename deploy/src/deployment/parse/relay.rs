//! The parts of a deployment file that route copies and pace the run: `[relay.NAME]` hosts,
//! machines' `via`, and `rollout` (see [`crate::fanout`] and [`crate::rollout`]).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::super::{DeploymentError, Environment, Machine, RelayHost, DEFAULT_RELAY_ROOT};
use super::{valid_name, Cx, RawFile};
use crate::rollout::Rollout;

/// A step of `rollout`: a host count, or a string (`"25%"`, `"3"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStep {
    Count(i64),
    Text(String),
}

impl RawStep {
    fn text(&self) -> String {
        match self {
            RawStep::Count(n) => n.to_string(),
            RawStep::Text(t) => t.clone(),
        }
    }
}

/// `[relay.NAME]`: a host that only forwards (see [`RelayHost`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRelay {
    host_name: String,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<Spanned<String>>,
    host_key: Spanned<String>,
    root: Option<Spanned<String>>,
    relay_identity: Option<String>,
}

impl Cx<'_> {
    /// `via` names another managed-host machine or a `[relay.NAME]` of the file (the tree
    /// is checked by the run: `transfer::fanout`).
    pub(super) fn check_via(
        &self,
        raw: &RawFile,
        machines: &[Machine],
    ) -> Result<(), DeploymentError> {
        for m in raw.machine.iter().map(Spanned::get_ref) {
            let Some(via) = m.configuration.as_ref().and_then(|c| c.get_ref().via.as_ref()) else {
                continue;
            };
            let relay = machines.iter().find(|o| &o.name == via.get_ref());
            let machine_relay = relay.is_some_and(|r| r.environment == Environment::ManagedHost)
                && via.get_ref() != m.name.get_ref();
            if !machine_relay && !raw.relay.contains_key(via.get_ref()) {
                return Err(self.at(
                    via.span(),
                    format!(
                        "via = \"{}\": not another managed-host machine nor a [relay.NAME] of \
                         this file",
                        via.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `[relay.NAME]` hosts.
    pub(super) fn relays(
        &self,
        raw: &RawFile,
        machines: &[Machine],
    ) -> Result<Vec<RelayHost>, DeploymentError> {
        let mut relays = Vec::new();
        for (name, r) in &raw.relay {
            let span = r.span();
            let r = r.get_ref();
            if !valid_name(name) || machines.iter().any(|m| &m.name == name) {
                return Err(self.at(
                    span,
                    format!("relay '{name}': an invalid name, or the name of a machine"),
                ));
            }
            let root = match &r.root {
                Some(root) if !root.get_ref().starts_with('/') => {
                    return Err(self.at(root.span(), "a relay's root must be absolute".into()))
                }
                Some(root) => PathBuf::from(root.get_ref()),
                None => PathBuf::from(DEFAULT_RELAY_ROOT),
            };
            relays.push(RelayHost {
                name: name.clone(),
                host_name: r.host_name.clone(),
                port: r.port,
                user: r.user.clone(),
                identity: r.identity.as_ref().map(|i| self.identity(i)).transpose()?,
                host_key: self.host_key(&r.host_key)?,
                root,
                relay_identity: r.relay_identity.clone(),
            });
        }
        Ok(relays)
    }

    /// `rollout = [...]`: the steps as `--rollout` spells them, parsed once.
    pub(super) fn rollout(&self, raw: &RawFile) -> Result<Option<Rollout>, DeploymentError> {
        let Some(steps) = &raw.rollout else { return Ok(None) };
        let text: Vec<String> = steps.get_ref().iter().map(RawStep::text).collect();
        let rollout = text.join(",").parse::<Rollout>();
        rollout.map(Some).map_err(|e| self.at(steps.span(), e.to_string()))
    }
}
