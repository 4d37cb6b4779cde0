//! What the Azure tests share: the subscription, a client of the ARM test server, and the
//! checks for leaks.

#![allow(dead_code)]

use aib_azure::{ArmClient, AzureProvisioner, Credential, RetryConfig};
use aib_core::{ProvisionRequest, Provisioner, RunContext};
use aib_testkit::arm::ArmServer;
use serde_json::json;
use std::sync::Arc;
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

/// The conformance suite asks with a bare request; a template would give the region.
#[derive(Debug)]
pub(crate) struct Located(pub(crate) AzureProvisioner, pub(crate) &'static str);

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait::async_trait]
impl Provisioner for Located {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    async fn provision(&self, req: &ProvisionRequest, ctx: &RunContext) -> aib_core::Result<aib_core::BuildVm> {
        let mut r = req.clone();
        r.location = self.1.into();
        r.template_name = "image".into();
        self.0.provision(&r, ctx).await
    }
    async fn connect(&self, vm: &aib_core::BuildVm, ctx: &RunContext) -> aib_core::Result<Arc<dyn aib_core::Communicator>> {
        self.0.connect(vm, ctx).await
    }
    async fn generalize(
        &self,
        vm: &aib_core::BuildVm,
        comm: &(dyn aib_core::Communicator + 'static),
        ctx: &aib_core::StepContext,
    ) -> aib_core::Result<()> {
        self.0.generalize(vm, comm, ctx).await
    }
    async fn capture(&self, vm: &aib_core::BuildVm, ctx: &aib_core::StepContext) -> aib_core::Result<aib_core::CapturedImage> {
        self.0.capture(vm, ctx).await
    }
    async fn delete(&self, record: &aib_core::ResourceRecord) -> aib_core::Result<()> {
        self.0.delete(record).await
    }
}
