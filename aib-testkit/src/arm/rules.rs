//! ARM's rules that OpenAPI cannot express, each with the evidence it comes from. The test
//! server applies them to every PUT, after the spec check of the request's shape.
//!
//! | rule | evidence |
//! |---|---|
//! | a managed image is created from a VM in its own region | a maintainer on Azure/azure-cli#3809: "The Images need to be created from sources in the same Azure region" |
//! | a gallery image version is created from a source in its own region | MicrosoftDocs/azure-docs#28793, #122646 |
//! | a version's `targetRegions` contain its own region | ARM's refusal quoted in hashicorp/packer#8895 |
//!
//! Still modelled elsewhere: generalized sources (`compute.rs`), resources in use that cannot
//! be deleted (`compute.rs`), a group's deletion taking its resources along (`mod.rs`).

use super::{State, error};
use crate::http::Response;
use serde_json::Value;

fn region(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase()
}

/// The location of the resource `id`, if the server has it.
fn location_of<'a>(s: &'a State, id: &str) -> Option<&'a str> {
    s.resources.get(&id.to_ascii_lowercase())?["location"].as_str()
}

/// Applies the rules to a PUT of `rtype` (lowercased) with `body`.
pub(super) fn check_put(s: &State, rtype: &str, body: &Value) -> Result<(), Response> {
    let location = body["location"].as_str().unwrap_or_default();
    match rtype {
        "microsoft.compute/images" => {
            if let Some(vm) = body["properties"]["sourceVirtualMachine"]["id"].as_str()
                && let Some(at) = location_of(s, vm)
                && region(at) != region(location)
            {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "The Images need to be created from sources in the same Azure region: source {vm} is in '{at}', the image in '{location}'."
                    ),
                ));
            }
        }
        "microsoft.compute/galleries/images/versions" => {
            let source = &body["properties"]["storageProfile"]["source"];
            let src = source["virtualMachineId"].as_str().or_else(|| source["id"].as_str());
            if let Some(src) = src
                && let Some(at) = location_of(s, src)
                && region(at) != region(location)
            {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "The source '{src}' of the gallery image version must be in the same region as the version ('{location}'), not in '{at}'."
                    ),
                ));
            }
            let regions: Vec<&str> = body["properties"]["publishingProfile"]["targetRegions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["name"].as_str())
                .collect();
            if !regions.is_empty() && !regions.iter().any(|r| region(r) == region(location)) {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "Gallery image version publishing profile regions '{}' must contain the location of image version '{location}'.",
                        regions.join(", ")
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}
