//! Creating a build VM's resources in the staging group: recorded in the ledger before the
//! request, scoped to the build VM.

use crate::api::api_version_for;
use crate::client::ArmClient;
use crate::error::BACKEND;
use aib_core::{ResourceRecord, Result, Scope, StepContext};
use serde_json::Value;

/// Records `id` (of `kind`) and then creates it with `body`; returns the ledger id.
pub(crate) async fn create(arm: &ArmClient, ctx: &StepContext, kind: &str, id: &str, body: &Value) -> Result<String> {
    let record = ctx.record(ResourceRecord::new(BACKEND, kind, id, Scope::BuildVm))?;
    arm.put(id, api_version_for(id), body).await?;
    Ok(record)
}
