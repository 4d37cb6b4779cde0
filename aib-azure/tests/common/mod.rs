//! What the Azure tests share: the subscription, a client of the ARM test server, and the
//! checks for leaks.

#![allow(dead_code)]

use aib_azure::{ArmClient, Credential, RetryConfig};
use aib_core::ProvisionRequest;
use aib_testkit::arm::ArmServer;
use serde_json::json;
use std::time::Duration;

pub(crate) const SUB: &str = "00000000-0000-0000-0000-0000000000a1";
pub(crate) const RG: &str = "images";

pub(crate) fn client(s: &ArmServer) -> ArmClient {
    ArmClient::builder()
        .endpoint(s.url())
        .credential(Credential::static_token("t"))
        .retry(RetryConfig::fixed(6, Duration::from_millis(5)))
        .poll_interval(Duration::from_millis(5))
        .build()
        .unwrap()
}

pub(crate) async fn group(c: &ArmClient, name: &str, location: &str) {
    c.put(&format!("/subscriptions/{SUB}/resourceGroups/{name}"), "2021-04-01", &json!({"location": location})).await.unwrap();
}

/// Everything live that is not a template output or pre-existing: what a build leaked.
pub(crate) fn leaked(s: &ArmServer) -> Vec<String> {
    s.resource_ids()
        .into_iter()
        .filter(|id| {
            let l = id.to_ascii_lowercase();
            !l.contains("/galleries/") && !l.contains("/microsoft.compute/images/") && !l.contains("/microsoft.storage/storageaccounts/")
        })
        .collect()
}

/// A build-VM request as a template in `location` makes it.
pub(crate) fn request(image: aib_core::ResolvedImage, location: &str) -> ProvisionRequest {
    ProvisionRequest::new(image).with_location(location).with_template_name("image")
}
