//! `aib build --backend azure` and `aib gc --backend azure`.

use crate::build::{Boundary, CliResult};
#[cfg(feature = "azure")]
use crate::build::{gc_summary, parse, run};
#[cfg(feature = "azure")]
use std::collections::HashSet;
use std::path::PathBuf;
#[cfg(feature = "azure")]
use std::process::ExitCode;

/// Where and how to build in Azure (credentials and subscription from the usual `AZURE_*`).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct AzureArgs {
    /// The template's resource group (names the staging group `IT_<rg>_<template>_<guid>`).
    #[arg(long)]
    pub resource_group: Option<String>,
    /// Subscription id (default: `AZURE_SUBSCRIPTION_ID`).
    #[arg(long)]
    pub subscription: Option<String>,
    /// ARM endpoint (sovereign clouds, the ARM test server); default `AIB_AZURE_ARM_ENDPOINT` or public Azure.
    #[arg(long)]
    pub arm_endpoint: Option<String>,
    /// Blob endpoint of the staging storage account for VHD outputs (sovereign clouds, Azurite);
    /// default: the one ARM reports.
    #[arg(long)]
    pub storage_endpoint: Option<String>,
    /// The port SSH listens on in the image (default 22).
    #[arg(long)]
    pub ssh_port: Option<u16>,
    /// The port of a Windows build VM's WinRM HTTPS listener (default 5986).
    #[arg(long)]
    pub winrm_port: Option<u16>,
    /// The build VM's admin user (default `aib`).
    #[arg(long)]
    pub admin_user: Option<String>,
    /// Address prefix the build VM's NSG admits to SSH/WinRM: this machine's egress address
    /// (203.0.113.7/32), or `*` for any. Required unless the template builds in its own subnet.
    #[arg(long)]
    pub allowed_source: Option<String>,
    /// Let templates' ARM ids name SCOPE (/subscriptions/ID or
    /// /subscriptions/ID/resourceGroups/NAME); by default only the build's subscription.
    /// Repeatable.
    #[arg(long = "allow-scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
}

#[cfg(feature = "azure")]
fn backend(args: &AzureArgs, boundary: &Boundary) -> Result<aib::azure::AzureBackend, Box<dyn std::error::Error>> {
    use aib::azure::{AzureBackend, AzureProvisioner};
    let mut client = aib::azure::ArmClientBuilder::from_env()?;
    if let Some(e) = &args.arm_endpoint {
        client = client.endpoint(e);
    }
    let subscription = args
        .subscription
        .clone()
        .or_else(|| std::env::var("AZURE_SUBSCRIPTION_ID").ok())
        .ok_or("no subscription: set AZURE_SUBSCRIPTION_ID or pass --subscription")?;
    let rg = args.resource_group.clone().ok_or("--resource-group is required with --backend azure")?;
    let mut p = AzureProvisioner::builder().arm(client.build()?).subscription(subscription).resource_group(rg);
    if let Some(port) = args.ssh_port {
        p = p.ssh_port(port);
    }
    if let Some(port) = args.winrm_port {
        p = p.winrm_port(port);
    }
    if let Some(u) = &args.admin_user {
        p = p.admin_user(u);
    }
    if let Some(a) = &args.allowed_source {
        p = p.allowed_source(a);
    }
    let mut b = AzureBackend::builder().provisioner(p);
    for d in &boundary.file_roots {
        b = b.allow_file_root(d);
    }
    for n in &boundary.source_nets {
        b = b.allow_source_network(*n);
    }
    for s in &args.scopes {
        b = b.allow_scope(s);
    }
    if let Some(e) = &args.storage_endpoint {
        b = b.storage_endpoint(e);
    }
    Ok(b.build()?)
}

#[cfg(feature = "azure")]
fn state(state_dir: Option<PathBuf>) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let d = match state_dir {
        Some(d) => d,
        None => aib::local::default_state_dir()?.with_file_name("azure"),
    };
    for sub in ["ledger", "logs"] {
        std::fs::create_dir_all(d.join(sub)).map_err(|e| format!("{}: {e}", d.join(sub).display()))?;
    }
    Ok(d)
}

#[cfg(feature = "azure")]
pub(crate) async fn build(
    template: PathBuf,
    args: AzureArgs,
    boundary: Boundary,
    arm: crate::build::ArmContext,
    state_dir: Option<PathBuf>,
    out: crate::build::Output,
) -> CliResult {
    // One backend: its types check the template, then it builds it in the template's region.
    let azure = backend(&args, &boundary)?;
    // `subscription()` and `resourceGroup()` (its location from ARM) as this build sees them.
    let arm = crate::build::ArmContext { context: Some(azure.deployment_params().await?), ..arm };
    let (_, t) = match parse(&template, azure.backend().registry.type_names(), &arm, out) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let dir = state(state_dir)?;
    let pipeline = aib::Pipeline::from_template(&t, &azure.backend())?
        .ledger(aib::Ledger::open(dir.join("ledger"))?)
        .log_dir(dir.join("logs"))
        .build()?;
    run(pipeline, out).await
}

#[cfg(feature = "azure")]
pub(crate) async fn gc(args: AzureArgs, state_dir: Option<PathBuf>, min_age: Option<u64>) -> CliResult {
    let dir = state(state_dir)?;
    let ledger = aib::Ledger::open(dir.join("ledger"))?;
    // Deleting needs no template resource group: what to delete comes from the ledger and tags.
    let args = AzureArgs { resource_group: args.resource_group.clone().or_else(|| Some("gc".into())), ..args };
    let azure = backend(&args, &Boundary::default())?;
    let provisioner = azure.provisioner();
    let p: &dyn aib::Provisioner = &*provisioner;
    let report = ledger.gc(&[p], std::time::Duration::from_secs(min_age.unwrap_or(0))).await?;
    let mut code = gc_summary(&report);
    // What no ledger here knows of: found by the run tags, never a live run's.
    let live: HashSet<String> = ledger.live_runs()?.into_iter().collect();
    // Tags cannot tell another machine's live build from a dead one: only old resources go.
    let tagged = azure.gc_tagged(&live, std::time::Duration::from_secs(min_age.unwrap_or(24 * 3600))).await?;
    for id in &tagged.deleted {
        println!("deleted (by tag) {id}");
    }
    for (id, e) in &tagged.failed {
        println!("FAILED {id}: {e}");
    }
    println!("gc by tags: {} deleted, {} left alone (live or younger than the threshold)", tagged.deleted.len(), tagged.skipped.len());
    if !tagged.failed.is_empty() {
        code = ExitCode::from(1);
    }
    Ok(code)
}

#[cfg(not(feature = "azure"))]
pub(crate) async fn build(
    _: PathBuf,
    _: AzureArgs,
    _: Boundary,
    _: crate::build::ArmContext,
    _: Option<PathBuf>,
    _: crate::build::Output,
) -> CliResult {
    Err("this aib was built without the Azure backend: install it with `cargo install aib --features cli,azure`".into())
}

#[cfg(not(feature = "azure"))]
pub(crate) async fn gc(_: AzureArgs, _: Option<PathBuf>, _: Option<u64>) -> CliResult {
    Err("this aib was built without the Azure backend: install it with `cargo install aib --features cli,azure`".into())
}
