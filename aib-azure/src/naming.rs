//! Names and tags aib gives what it creates in Azure: AIB's staging group naming, the run
//! tags `gc` finds resources by, the staging storage account, regions as ARM compares them.

/// The tag value AIB puts in `createdBy`.
pub const CREATED_BY: &str = "AzureVMImageBuilder";
/// The tag naming the run that created a resource.
pub const RUN_TAG: &str = "aibRunId";
/// The tag with the creation time (RFC 3339), for `gc`'s age threshold.
pub const CREATED_AT_TAG: &str = "aibCreatedAt";

pub(crate) fn region(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase()
}

/// `IT_<resourceGroup>_<template>_<guid>`, cut to ARM's 90 characters by shortening the names,
/// never the GUID. The GUID is derived from subscription, group and template, so the runs of
/// one template share their staging group as AIB's do.
pub fn staging_group_name(subscription: &str, resource_group: &str, template: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{subscription}/{resource_group}/{template}").to_ascii_lowercase());
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&h[..16]);
    group_name(resource_group, template, uuid::Uuid::from_bytes(guid))
}

/// A run's own staging group: the same shape, a fresh GUID.
pub(crate) fn run_group_name(resource_group: &str, template: &str) -> String {
    group_name(resource_group, template, uuid::Uuid::new_v4())
}

pub(crate) fn group_name(resource_group: &str, template: &str, guid: uuid::Uuid) -> String {
    let guid = guid.hyphenated().to_string();
    let clean = |s: &str| s.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.()".contains(*c)).collect::<String>();
    let (mut rg, mut t) = (clean(resource_group), clean(template));
    let fixed = "IT___".len() + guid.len();
    while fixed + rg.len() + t.len() > 90 {
        if rg.len() >= t.len() {
            rg.pop()
        } else {
            t.pop()
        };
    }
    format!("IT_{rg}_{t}_{guid}")
}

pub(crate) fn group_id(subscription: &str, name: &str) -> String {
    format!("/subscriptions/{subscription}/resourceGroups/{name}")
}

/// The staging account's name: `aib` and 21 hex digits of the group's id (3–24 lowercase).
pub fn staging_account_name(group_id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(group_id.to_ascii_lowercase());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("aib{}", &hex[..21])
}
