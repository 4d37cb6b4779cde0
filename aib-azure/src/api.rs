//! The api-version of each resource provider aib calls, and the one mapping from a resource
//! id to its version (for deletes of anything aib recorded or tagged).

/// Compute: VMs, images, marketplace image lists.
pub const COMPUTE_API: &str = "2024-07-01";
/// Managed disks (their own provider's versions).
pub const DISK_API: &str = "2024-03-02";
/// Galleries, image definitions and versions (their own provider's versions).
pub const GALLERY_API: &str = "2024-03-03";
/// Network.
pub const NETWORK_API: &str = "2023-09-01";
/// Resource groups and resource lists.
pub const RESOURCES_API: &str = "2021-04-01";
/// Storage accounts.
pub const STORAGE_API: &str = "2023-01-01";
/// Marketplace agreements.
pub(crate) const MARKETPLACE_API: &str = "2021-01-01";

/// The api-version for the resource `id` (an ARM resource or resource group id).
pub fn api_version_for(id: &str) -> &'static str {
    let l = id.to_ascii_lowercase();
    if !l.contains("/providers/") {
        RESOURCES_API
    } else if l.contains("/microsoft.compute/disks/") {
        DISK_API
    } else if l.contains("/microsoft.compute/galleries/") {
        GALLERY_API
    } else if l.contains("/microsoft.compute/") {
        COMPUTE_API
    } else if l.contains("/microsoft.storage/") {
        STORAGE_API
    } else {
        NETWORK_API
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_provider() {
        let rg = "/subscriptions/s/resourceGroups/g";
        assert_eq!(api_version_for(rg), RESOURCES_API);
        assert_eq!(api_version_for(&format!("{rg}/providers/Microsoft.Compute/disks/d")), DISK_API);
        assert_eq!(api_version_for(&format!("{rg}/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0")), GALLERY_API);
        assert_eq!(api_version_for(&format!("{rg}/providers/Microsoft.Compute/virtualMachines/v")), COMPUTE_API);
        assert_eq!(api_version_for(&format!("{rg}/providers/Microsoft.Storage/storageAccounts/a")), STORAGE_API);
        assert_eq!(api_version_for(&format!("{rg}/providers/Microsoft.Network/networkInterfaces/n")), NETWORK_API);
    }
}
