//! Which subscriptions and resource groups a template's ARM ids may name.
//!
//! aib acts with the operator's credential, not the template author's: without a rule, a
//! template could make the builder create VMs in any subscription the credential reaches,
//! replace images there or attach identities its author has no right to (a confused deputy).
//! So every ARM id a template holds must lie in a scope the operator allows: by default the
//! subscription the backend builds in ([`crate::AzureBackendBuilder::allow_scope`] widens or
//! narrows it). A refusal is a diagnostic at the field, before anything starts.

use aib_core::template::{Code, Diagnostic, DistributorSpec, Expr, ImageSource, ImageTemplate};
use aib_core::{Error, Result};

/// How a template id outside the allowed scopes is fixed.
pub const SCOPE_HINT: &str = "the operator allows more with `aib build --allow-scope /subscriptions/ID[/resourceGroups/NAME]` (API: `AzureBackendBuilder::allow_scope`)";

/// A subscription, or a resource group in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    subscription: String,
    group: Option<String>,
}

impl Scope {
    /// `/subscriptions/ID` or `/subscriptions/ID/resourceGroups/NAME`.
    pub(crate) fn parse(s: &str) -> Result<Scope> {
        let p: Vec<&str> = s.trim_matches('/').split('/').collect();
        let bad = || Error::InvalidConfig {
            backend: crate::error::BACKEND,
            key: "allow_scope".into(),
            message: format!("`{s}` is not /subscriptions/ID or /subscriptions/ID/resourceGroups/NAME"),
        };
        match p.as_slice() {
            [k, sub] if k.eq_ignore_ascii_case("subscriptions") && !sub.is_empty() => {
                Ok(Scope { subscription: sub.to_string(), group: None })
            }
            [k, sub, g, rg]
                if k.eq_ignore_ascii_case("subscriptions")
                    && g.eq_ignore_ascii_case("resourceGroups")
                    && !sub.is_empty()
                    && !rg.is_empty() =>
            {
                Ok(Scope { subscription: sub.to_string(), group: Some(rg.to_string()) })
            }
            _ => Err(bad()),
        }
    }

    /// The whole subscription `id`.
    pub(crate) fn subscription(id: &str) -> Scope {
        Scope { subscription: id.to_string(), group: None }
    }

    fn contains(&self, id: &str) -> bool {
        let p: Vec<&str> = id.trim_start_matches('/').split('/').collect();
        let sub_ok = p.len() >= 2 && p[0].eq_ignore_ascii_case("subscriptions") && p[1].eq_ignore_ascii_case(&self.subscription);
        sub_ok
            && match &self.group {
                None => true,
                Some(g) => p.len() >= 4 && p[2].eq_ignore_ascii_case("resourceGroups") && p[3].eq_ignore_ascii_case(g),
            }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            Some(g) => write!(f, "/subscriptions/{}/resourceGroups/{g}", self.subscription),
            None => write!(f, "/subscriptions/{}", self.subscription),
        }
    }
}

/// The ARM ids of `t`, each with its JSON path.
fn ids(t: &ImageTemplate) -> Vec<(String, String)> {
    let p = &t.properties;
    let mut out = Vec::new();
    match &p.source {
        ImageSource::ManagedImage(s) => out.push(("properties.source.imageId".to_string(), s.image_id.clone())),
        ImageSource::SharedImageVersion(s) => out.push(("properties.source.imageVersionId".to_string(), s.image_version_id.clone())),
        _ => {}
    }
    if let Some(rg) = &p.staging_resource_group {
        out.push(("properties.stagingResourceGroup".into(), rg.clone()));
    }
    if let Some(vm) = &p.vm_profile {
        if let Some(Expr::Value(list)) = &vm.user_assigned_identities {
            for (i, id) in list.iter().enumerate() {
                out.push((format!("properties.vmProfile.userAssignedIdentities[{i}]"), id.clone()));
            }
        }
        if let Some(v) = &vm.vnet_config {
            for (field, id) in [("subnetId", &v.subnet_id), ("containerInstanceSubnetId", &v.container_instance_subnet_id)] {
                if let Some(id) = id {
                    out.push((format!("properties.vmProfile.vnetConfig.{field}"), id.clone()));
                }
            }
        }
    }
    for (i, d) in p.distribute.iter().enumerate() {
        match d {
            DistributorSpec::ManagedImage(m) => out.push((format!("properties.distribute[{i}].imageId"), m.image_id.clone())),
            DistributorSpec::SharedImage(g) => out.push((format!("properties.distribute[{i}].galleryImageId"), g.gallery_image_id.clone())),
            _ => {}
        }
    }
    if let Some(Expr::Value(map)) = t.identity.as_ref().and_then(|i| i.user_assigned_identities.as_ref()) {
        for id in map.keys() {
            out.push(("identity.userAssignedIdentities".into(), id.clone()));
        }
    }
    out.retain(|(_, id)| !id.is_empty() && !id.starts_with('['));
    out
}

/// The diagnostics of every id of `t` outside `allowed`.
pub(crate) fn check(t: &ImageTemplate, allowed: &[Scope]) -> Vec<Diagnostic> {
    let list = allowed.iter().map(Scope::to_string).collect::<Vec<_>>().join(", ");
    ids(t)
        .into_iter()
        .filter(|(_, id)| !allowed.iter().any(|s| s.contains(id)))
        .map(|(path, id)| {
            Diagnostic::error(path, Code::OutsideBoundary, format!("`{id}` is outside the scopes this builder may touch ({list})"))
                .with_hint(SCOPE_HINT)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_contain_ids_case_blind() {
        let sub = Scope::parse("/subscriptions/S1").unwrap();
        let rg = Scope::parse("/subscriptions/s1/resourceGroups/Images/").unwrap();
        let id = "/subscriptions/s1/resourceGroups/images/providers/Microsoft.Compute/images/x";
        assert!(sub.contains(id) && rg.contains(id));
        assert!(!rg.contains("/subscriptions/s1/resourceGroups/other/providers/Microsoft.Compute/images/x"));
        assert!(!sub.contains("/subscriptions/s2/resourceGroups/images"));
        assert!(!sub.contains("/subscriptions/s10/resourceGroups/images"), "a prefix of the id is not its subscription");
        for bad in ["", "/subscriptions", "/subscriptions/s/resourceGroups", "/tenants/t", "/subscriptions/s/x/y"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(rg.to_string(), "/subscriptions/s1/resourceGroups/Images");
    }
}
