//! The Azure provisioner: a staging resource group with AIB's naming and rules, a network (a
//! new VNet, NSG and public IP, or the template's subnet), a build VM, and generalization
//! (deprovisioning, then deallocate and generalize through ARM). A Linux VM's SSH host key is
//! chosen here and handed over in `customData`, so the first connection is verified; a
//! Windows VM gets a generated password and WinRM over HTTPS to a certificate learnt through
//! Run Command (see [`crate::windows`]). Everything is tagged with the run and recorded in the
//! ledger before it is created.

use crate::api::{COMPUTE_API, DISK_API, RESOURCES_API, api_version_for};
use crate::client::ArmClient;
use crate::error::BACKEND;
use crate::naming::{CREATED_AT_TAG, CREATED_BY, RUN_TAG, group_id, region, run_group_name, staging_account_name, staging_group_name};
use crate::network;
use crate::windows;
use aib_core::retry::Backoff;
use aib_core::{
    AccessInfo, BuildVm, BuildVmTable, CapturedImage, Communicator, Error, ExecRequest, OutputStream, Platform, ProvisionRequest,
    Provisioner, Reclaim, ResourceRecord, Result, Scope, StepContext,
};
use aib_customizers::Generalizer;
use aib_customizers::ssh::{HostKeyCheck, PrivateKey, SshCommunicator, SshConfig, ephemeral_key, private_key_openssh, public_key_line};
use aib_customizers::winrm::{WinRmAuth, WinRmCommunicator, WinRmConfig, WinRmTransport};
use async_trait::async_trait;
use base64::Engine;
use serde_json::{Map, Value, json};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

fn invalid(key: &str, message: impl Into<String>) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: key.into(), message: message.into() }
}

/// AIB's default build VM size by the source's Hyper-V generation.
pub fn default_vm_size(hyper_v_generation: Option<&str>) -> &'static str {
    match hyper_v_generation {
        Some(g) if g.eq_ignore_ascii_case("V1") => "Standard_D1_v2",
        _ => "Standard_D2ds_v4",
    }
}

/// The default build VM size for `image`: an Arm64 size (Ampere Altra, `Standard_D2ps_v5`)
/// for an Arm64 source, else [`default_vm_size`] by generation.
pub fn default_vm_size_for(image: &aib_core::ResolvedImage) -> &'static str {
    match image.architecture.as_deref() {
        Some(a) if a.eq_ignore_ascii_case("Arm64") => "Standard_D2ps_v5",
        _ => default_vm_size(image.hyper_v_generation.as_deref()),
    }
}

/// The build VM's `securityProfile` for the source's security type: Trusted Launch (secure
/// boot and vTPM) for an image that only boots so; none for `TrustedLaunchSupported` and
/// standard images (the default of api-version 2024-07-01). Confidential VMs need sizes and
/// disk encryption aib does not choose yet: refused with the reason.
pub(crate) fn security_profile(image: &aib_core::ResolvedImage) -> Result<Option<Value>> {
    let Some(t) = image.security_type.as_deref() else { return Ok(None) };
    if t.eq_ignore_ascii_case("TrustedLaunch") {
        return Ok(Some(json!({"securityType": "TrustedLaunch", "uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true}})));
    }
    if t.to_ascii_lowercase().starts_with("confidentialvm") && !t.eq_ignore_ascii_case("ConfidentialVmSupported") {
        return Err(Error::Unsupported {
            operation: format!("building from `{}`, whose security type is {t} (a Confidential VM image)", image.exact),
            backend: BACKEND,
        });
    }
    Ok(None)
}

/// How the provisioner logs in to a build VM.
enum Login {
    Ssh {
        key: Box<PrivateKey>,
        host_public: String,
    },
    /// The password never leaves this process except in the VM's create request.
    WinRm {
        password: String,
    },
}

struct Vm {
    login: Login,
    address: String,
    port: u16,
    user: String,
    image: aib_core::ResolvedImage,
}

/// Builds [`AzureProvisioner`]s; `build()` checks the settings.
#[derive(Debug, Default)]
#[must_use]
pub struct AzureProvisionerBuilder {
    arm: Option<ArmClient>,
    subscription: Option<String>,
    resource_group: Option<String>,
    admin_user: Option<String>,
    port: Option<u16>,
    winrm_port: Option<u16>,
    allowed_source: Option<String>,
    connect_timeout: Option<Duration>,
    settle_timeout: Option<Duration>,
    keep_staging: Option<bool>,
}

impl AzureProvisionerBuilder {
    /// The ARM client (required).
    pub fn arm(mut self, arm: ArmClient) -> Self {
        self.arm = Some(arm);
        self
    }

    /// The subscription to build in (required).
    pub fn subscription(mut self, s: impl Into<String>) -> Self {
        self.subscription = Some(s.into());
        self
    }

    /// The template's resource group (required): it names the staging group and is tagged
    /// `imageTemplateResourceGroupName`.
    pub fn resource_group(mut self, rg: impl Into<String>) -> Self {
        self.resource_group = Some(rg.into());
        self
    }

    /// The build VM's admin user (default `aib`; ARM refuses `root`, `admin` and a few more).
    pub fn admin_user(mut self, u: impl Into<String>) -> Self {
        self.admin_user = Some(u.into());
        self
    }

    /// The port SSH listens on in the image (default 22).
    pub fn ssh_port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }

    /// The port of the WinRM HTTPS listener a Windows build VM gets (default 5986).
    pub fn winrm_port(mut self, p: u16) -> Self {
        self.winrm_port = Some(p);
        self
    }

    /// The address prefix the build VM's NSG admits to its SSH or WinRM port: this machine's
    /// egress address (`203.0.113.7/32`), or `*` for any (key-only SSH login, a 192-bit WinRM
    /// password). Required for builds whose VM gets a public address (no
    /// `vmProfile.vnetConfig.subnetId`): there is no default that opens the port to the internet.
    pub fn allowed_source(mut self, prefix: impl Into<String>) -> Self {
        self.allowed_source = Some(prefix.into());
        self
    }

    /// How long to wait for SSH or WinRM on the new VM (default 20 minutes).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = Some(t);
        self
    }

    /// How long a delete that ARM refuses because a just-deleted NIC or VM still holds the
    /// resource (`InUseSubnetCannotBeDeleted` and its family) is tried again (default 5 minutes).
    pub fn settle_timeout(mut self, t: Duration) -> Self {
        self.settle_timeout = Some(t);
        self
    }

    /// Keep a staging group created by the run when the run ends (default: true, as AIB keeps
    /// it until the template is deleted). A pre-existing `stagingResourceGroup` always stays.
    pub fn keep_staging_group(mut self, yes: bool) -> Self {
        self.keep_staging = Some(yes);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<AzureProvisioner> {
        let arm = self.arm.ok_or_else(|| invalid("arm", "an ARM client is required: call .arm(..)"))?;
        let subscription = self
            .subscription
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("subscription", "a subscription id is required (AZURE_SUBSCRIPTION_ID)"))?;
        let resource_group = self
            .resource_group
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("resourceGroup", "the template's resource group is required"))?;
        let admin_user = self.admin_user.unwrap_or_else(|| "aib".into());
        if admin_user.is_empty()
            || admin_user.len() > 32
            || !admin_user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
        {
            return Err(invalid("adminUser", format!("`{admin_user}` is not a valid user name (lowercase letters, digits, `_`, `-`)")));
        }
        Ok(AzureProvisioner {
            arm,
            subscription,
            resource_group,
            admin_user,
            port: self.port,
            winrm_port: self.winrm_port.unwrap_or(5986),
            allowed_source: self.allowed_source.filter(|s| !s.trim().is_empty()),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(20 * 60)),
            settle_timeout: self.settle_timeout.unwrap_or(NETWORK_SETTLE),
            keep_staging: self.keep_staging.unwrap_or(true),
            vms: BuildVmTable::default(),
        })
    }
}

/// Build VMs in Azure. Cheap to clone; one provisioner serves any number of runs.
#[derive(Clone)]
pub struct AzureProvisioner {
    arm: ArmClient,
    subscription: String,
    resource_group: String,
    admin_user: String,
    port: Option<u16>,
    winrm_port: u16,
    allowed_source: Option<String>,
    connect_timeout: Duration,
    settle_timeout: Duration,
    keep_staging: bool,
    vms: BuildVmTable<Vm>,
}

impl fmt::Debug for AzureProvisioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureProvisioner")
            .field("subscription", &self.subscription)
            .field("resource_group", &self.resource_group)
            .field("admin_user", &self.admin_user)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AzureProvisioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AzureProvisioner({}/{})", self.subscription, self.resource_group)
    }
}

fn cloud_config(host_private: &str, host_public: &str) -> String {
    let indent = host_private.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "#cloud-config\nssh_pwauth: false\ndisable_root: true\nssh_deletekeys: true\nssh_genkeytypes: []\n\
         ssh_keys:\n  ed25519_private: |\n{indent}\n  ed25519_public: {host_public}\n"
    )
}

/// `imageReference` (and `plan`) for the resolved source.
fn image_reference(image: &aib_core::ResolvedImage) -> Result<(Value, Option<Value>)> {
    let attr = |k: &str| image.attributes.get(k).and_then(Value::as_str).map(str::to_string);
    match image.source_type.as_str() {
        "PlatformImage" => {
            let p: Vec<&str> = image.exact.split(':').collect();
            if p.len() != 4 {
                return Err(invalid("source", format!("`{}` is not publisher:offer:sku:version", image.exact)));
            }
            let plan = attr("planName").map(|n| {
                json!({"name": n, "product": attr("planProduct").unwrap_or_else(|| p[1].into()), "publisher": attr("planPublisher").unwrap_or_else(|| p[0].into())})
            });
            Ok((json!({"publisher": p[0], "offer": p[1], "sku": p[2], "version": p[3]}), plan))
        }
        "ManagedImage" | "SharedImageVersion" => Ok((json!({"id": image.exact}), None)),
        other => Err(Error::Unsupported { operation: format!("source type `{other}` on Azure"), backend: BACKEND }),
    }
}

impl AzureProvisioner {
    /// A builder.
    pub fn builder() -> AzureProvisionerBuilder {
        AzureProvisionerBuilder::default()
    }

    /// The ARM client.
    pub fn arm(&self) -> &ArmClient {
        &self.arm
    }

    /// The address prefix the NSG admits, when the operator gave one.
    pub(crate) fn allowed_source(&self) -> Option<&str> {
        self.allowed_source.as_deref()
    }

    /// How long deletes of resources still in use are tried again.
    pub(crate) fn settle_timeout(&self) -> Duration {
        self.settle_timeout
    }

    /// The subscription.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The resource group of the template (the image template's own group, AIB's
    /// `imageTemplateResourceGroupName`).
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    fn vm(&self, id: &str) -> Result<Arc<Vm>> {
        self.vms.get(id, BACKEND)
    }

    fn tags(&self, req: &ProvisionRequest) -> Map<String, Value> {
        let mut t: Map<String, Value> = req.tags.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
        t.insert("createdBy".into(), CREATED_BY.into());
        t.insert("imageTemplateName".into(), req.template_name.clone().into());
        t.insert("imageTemplateResourceGroupName".into(), self.resource_group.clone().into());
        let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        t.insert(CREATED_AT_TAG.into(), now.into());
        t
    }

    /// Creates or checks the staging group; returns its id.
    async fn staging_group(&self, req: &ProvisionRequest, location: &str, tags: &Map<String, Value>, ctx: &StepContext) -> Result<String> {
        let (id, named) = match &req.staging_resource_group {
            Some(id) => {
                let p: Vec<&str> = id.trim_matches('/').split('/').collect();
                if p.len() != 4 || !p[0].eq_ignore_ascii_case("subscriptions") || !p[2].eq_ignore_ascii_case("resourceGroups") {
                    return Err(invalid(
                        "stagingResourceGroup",
                        format!("`{id}` is not a resource group id (/subscriptions/<id>/resourceGroups/<name>)"),
                    ));
                }
                (id.clone(), true)
            }
            // A kept group is the template's, shared by its runs; one the run deletes is its own.
            None if self.keep_staging => {
                (group_id(&self.subscription, &staging_group_name(&self.subscription, &self.resource_group, &req.template_name)), false)
            }
            None => (group_id(&self.subscription, &run_group_name(&self.resource_group, &req.template_name)), false),
        };
        match self.arm.get(&id, RESOURCES_API).await {
            Ok(existing) => {
                let loc = region(existing["location"].as_str().unwrap_or_default());
                if loc != location {
                    return Err(invalid(
                        "stagingResourceGroup",
                        format!("{id} is in {loc}; it must be in the template's region {location}"),
                    ));
                }
                if named {
                    // AIB's rules for a group the user brought: empty, and not another template's.
                    let used_by = existing["tags"]["usedBy"].as_str().unwrap_or_default();
                    if !used_by.is_empty() && used_by != req.template_name {
                        return Err(invalid("stagingResourceGroup", format!("{id} is used by the template `{used_by}`")));
                    }
                    let inside = self.arm.list(&format!("{id}/resources"), RESOURCES_API).await?;
                    // aib's own resources (tagged, or the OS disks and storage account it names)
                    // do not count.
                    let ours = |r: &Value| {
                        let name = r["name"].as_str().unwrap_or_default();
                        r["tags"]["createdBy"] == CREATED_BY || name.starts_with("aib-osdisk-") || name == staging_account_name(&id)
                    };
                    let foreign: Vec<&str> = inside.iter().filter(|r| !ours(r)).filter_map(|r| r["id"].as_str()).collect();
                    if !foreign.is_empty() {
                        return Err(invalid(
                            "stagingResourceGroup",
                            format!("{id} must be empty; it holds {} resource(s), e.g. {}", foreign.len(), foreign[0]),
                        ));
                    }
                    let mut t = existing["tags"].as_object().cloned().unwrap_or_default();
                    t.insert("usedBy".into(), req.template_name.clone().into());
                    t.insert("imageTemplateName".into(), req.template_name.clone().into());
                    t.insert("imageTemplateResourceGroupName".into(), self.resource_group.clone().into());
                    self.arm.put(&id, RESOURCES_API, &json!({"location": location, "tags": t})).await?;
                }
                ctx.notice(format!("staging resource group {id} (exists)"));
            }
            Err(Error::NotFound { .. }) => {
                let mut t = tags.clone();
                t.remove(RUN_TAG);
                t.remove(CREATED_AT_TAG);
                if named {
                    t.insert("usedBy".into(), req.template_name.clone().into());
                }
                let keep = self.keep_staging;
                if !keep {
                    ctx.record(ResourceRecord::new(BACKEND, "resourceGroup", &id, Scope::Run))?;
                }
                self.arm.put(&id, RESOURCES_API, &json!({"location": location, "tags": t})).await?;
                ctx.notice(format!("staging resource group {id} created{}", if keep { " (kept after the run)" } else { "" }));
            }
            Err(e) => return Err(e),
        }
        Ok(id)
    }

    /// WinRM over HTTPS: Run Command sets up the listener and tells its certificate, which the
    /// client then pins.
    async fn connect_winrm(&self, vm: &BuildVm, state: &Vm, password: &str, ctx: &StepContext) -> Result<Arc<dyn Communicator>> {
        ctx.notice(format!("setting up WinRM over HTTPS on {} through Run Command", vm.id));
        let out = windows::run_command(&self.arm, &vm.id, &windows::setup_script(state.port), self.connect_timeout).await?;
        let pin = windows::certificate_pin(&out)?;
        let cfg = WinRmConfig::builder()
            .host(&state.address)
            .port(state.port)
            .credentials(&state.user, password)
            .transport(WinRmTransport::HttpsPinnedCertificate(pin))
            .auth(WinRmAuth::Basic)
            .connect_timeout(self.connect_timeout)
            .build()?;
        let started = std::time::Instant::now();
        let comm = WinRmCommunicator::connect(cfg).await?;
        ctx.notice(format!(
            "connected to {}:{} over WinRM/HTTPS after {:.1} s (certificate SHA-256 {} pinned)",
            state.address,
            state.port,
            started.elapsed().as_secs_f64(),
            aib_customizers::tls_pin::pin_hex(&pin)
        ));
        Ok(Arc::new(comm))
    }

    /// Windows: through Run Command, remove what WinRM needed, then run the generalizer
    /// (Sysprep) as LocalSystem; its output goes to the step's log.
    async fn generalize_windows(&self, vm: &BuildVm, generalizer: &str, ctx: &StepContext) -> Result<()> {
        ctx.output.line(OutputStream::Stdout, "aib: removing the WinRM HTTPS listener and running Sysprep through Run Command");
        let out = windows::run_command(&self.arm, &vm.id, &windows::generalize_script(generalizer), Duration::from_secs(1800)).await?;
        for l in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
            ctx.output.line(OutputStream::Stdout, l);
        }
        for l in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
            ctx.output.line(OutputStream::Stderr, l);
        }
        if !windows::cleaned_up(&out) {
            return Err(Error::generic(BACKEND, format!("removing the WinRM HTTPS listener from {} did not finish", vm.id)));
        }
        match windows::generalize_exit(&out) {
            Some(0) => Ok(()),
            code => Err(Error::StepFailed {
                step: ctx.name.clone(),
                exit_code: code,
                message: "generalization (Sysprep) failed; see the step's log".into(),
            }),
        }
    }

    /// Records, then creates (PUT, waiting for the operation).
    /// Returns the ledger record's id.
    async fn create(&self, ctx: &StepContext, kind: &str, id: &str, body: &Value) -> Result<String> {
        crate::staging::create(&self.arm, ctx, kind, id, body).await
    }
}

/// Why a build VM with a public address is not created without `allowed_source`.
pub(crate) const NO_ALLOWED_SOURCE: &str = "the build VM gets a public address and nobody said who may reach its SSH/WinRM port: give this machine's egress address (`aib build --allowed-source 203.0.113.7/32`, API: `AzureProvisionerBuilder::allowed_source`), `*` for any, or build in your own subnet (`vmProfile.vnetConfig.subnetId`)";

#[async_trait]
impl Provisioner for AzureProvisioner {
    async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> Result<BuildVm> {
        let is_windows = req.image.platform == Platform::Windows;
        if is_windows && !windows::valid_admin_user(&self.admin_user) {
            return Err(invalid("adminUser", format!("`{}` is not allowed as a Windows admin name", self.admin_user)));
        }
        let location = region(&req.location);
        if location.is_empty() {
            return Err(invalid("location", "the template has no `location`"));
        }
        let vnet_cfg = req.vm_profile.vnet_config.as_ref().and_then(|v| v.subnet_id.clone()).filter(|s| !s.is_empty());
        let allowed_source = match (&self.allowed_source, &vnet_cfg) {
            (Some(a), _) => a.as_str(),
            (None, Some(_)) => "VirtualNetwork",
            (None, None) => return Err(invalid("allowedSource", NO_ALLOWED_SOURCE)),
        };
        let tags = self.tags(req);
        let tags_v = Value::Object(tags.clone());
        let group = self.staging_group(req, &location, &tags, ctx).await?;
        let short = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let port = if is_windows { self.winrm_port } else { self.port.unwrap_or(22) };

        let net = network::Plan { group: &group, short: &short, location: &location, tags: &tags_v, port, allowed_source };
        let nic = match &vnet_cfg {
            Some(subnet) => network::existing_subnet(&self.arm, ctx, &net, subnet).await?,
            None => network::new_network(&self.arm, ctx, &net).await?,
        };

        let user = &self.admin_user;
        let (os_profile, login) = if is_windows {
            let password = windows::generate_password(user);
            // Whatever prints it (an error record quoting a script line) shows `***`.
            ctx.add_secret(&password);
            let profile = json!({"computerName": format!("aib-{short}"), "adminUsername": user, "adminPassword": password,
                                 "windowsConfiguration": {"provisionVMAgent": true}});
            (profile, Login::WinRm { password })
        } else {
            let key = ephemeral_key()?;
            let host_key = ephemeral_key()?;
            let host_public = public_key_line(&host_key, "aib-build-host")?;
            let custom_data =
                base64::engine::general_purpose::STANDARD.encode(cloud_config(&private_key_openssh(&host_key)?, &host_public));
            let profile = json!({
                "computerName": format!("aib-{short}"),
                "adminUsername": user,
                "customData": custom_data,
                "linuxConfiguration": {"disablePasswordAuthentication": true, "provisionVMAgent": true,
                    "ssh": {"publicKeys": [{"path": format!("/home/{user}/.ssh/authorized_keys"), "keyData": public_key_line(&key, "aib-build")?}]}}
            });
            (profile, Login::Ssh { key: Box::new(key), host_public })
        };
        let generation = req.image.hyper_v_generation.clone();
        let size = req.vm_profile.vm_size.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| default_vm_size_for(&req.image).into());
        let security = security_profile(&req.image)?;
        let (image_ref, plan) = image_reference(&req.image)?;
        let vm_name = format!("aib-vm-{short}");
        let vm_id = format!("{group}/providers/Microsoft.Compute/virtualMachines/{vm_name}");
        let disk_name = format!("aib-osdisk-{short}");
        let disk_id = format!("{group}/providers/Microsoft.Compute/disks/{disk_name}");
        let mut os_disk = json!({"name": disk_name, "createOption": "FromImage", "deleteOption": "Delete", "caching": "ReadWrite",
                                 "managedDisk": {"storageAccountType": "Standard_LRS"}});
        if let Some(gb) = req.vm_profile.os_disk_size_gb.as_ref().and_then(|e| e.value()).copied().filter(|g| *g > 0) {
            os_disk["diskSizeGB"] = gb.into();
        }
        let data_disks: Vec<Value> = req
            .data_disks_gb
            .iter()
            .enumerate()
            .map(|(i, gb)| json!({"lun": i, "createOption": "Empty", "diskSizeGB": gb, "deleteOption": "Delete"}))
            .collect();
        let mut body = json!({
            "location": location,
            "tags": tags_v,
            "properties": {
                "hardwareProfile": {"vmSize": size},
                "storageProfile": {"imageReference": image_ref, "osDisk": os_disk, "dataDisks": data_disks},
                "osProfile": os_profile,
                "networkProfile": {"networkInterfaces": [{"id": nic.id, "properties": {"primary": true, "deleteOption": "Delete"}}]},
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}}
            }
        });
        if let Some(plan) = plan {
            body["plan"] = plan;
        }
        if let Some(sp) = security {
            body["properties"]["securityProfile"] = sp;
        }
        if let Some(ids) = req.vm_profile.user_assigned_identities.as_ref().and_then(|e| e.value()).filter(|v| !v.is_empty()) {
            body["identity"] = json!({"type": "UserAssigned", "userAssignedIdentities": ids.iter().map(|i| (i.clone(), json!({}))).collect::<Map<_, _>>()});
        }
        // The disk is recorded before the VM so that cleanup (newest first) deletes the VM first.
        ctx.record(ResourceRecord::new(BACKEND, "disk", &disk_id, Scope::BuildVm))?;
        ctx.notice(format!("creating build VM {vm_name} ({size}) in {group}"));
        let record = match self.create(ctx, "virtualMachine", &vm_id, &body).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(hint) = crate::error::capacity_hint(&e, &size, &location) {
                    ctx.notice(hint);
                }
                return Err(e);
            }
        };
        // A VM's tags are not given to its OS disk: tagged here, an orphan disk is found by `gc`.
        if let Err(e) = self.arm.patch(&disk_id, DISK_API, &json!({"tags": tags_v})).await {
            ctx.notice(format!("tagging the OS disk {disk_id} failed ({e}); the run's ledger still holds it"));
        }
        let address = nic.address(&self.arm).await?;
        // The run's key and password stay in this process: to log in to a kept VM, set your own.
        let rg_name = group.rsplit('/').next().unwrap_or_default();
        let access = match &login {
            Login::Ssh { host_public, .. } => AccessInfo::new(
                "ssh",
                &address,
                port,
                user,
                format!(
                    "ssh -p {port} {user}@{address}  # first add your key: az vm user update -g {rg_name} -n {vm_name} -u {user} --ssh-key-value ~/.ssh/id_ed25519.pub; host key: {host_public}"
                ),
            ),
            Login::WinRm { .. } => AccessInfo::new(
                "winrm",
                &address,
                port,
                user,
                format!(
                    "Enter-PSSession -ComputerName {address} -Port {port} -UseSSL -Credential {user} -SessionOption (New-PSSessionOption -SkipCACheck -SkipCNCheck)  # first set a password: az vm user update -g {rg_name} -n {vm_name} -u {user} -p '<new password>'"
                ),
            ),
        };
        let mut vm = BuildVm::new(&vm_id, record, req.image.platform, access);
        vm.attributes.insert("stagingResourceGroup".into(), group.clone().into());
        vm.attributes.insert("location".into(), location.clone().into());
        vm.attributes.insert("osDiskId".into(), disk_id.into());
        vm.attributes.insert("vmSize".into(), size.into());
        if let Some(g) = generation {
            vm.attributes.insert("hyperVGeneration".into(), g.into());
        }
        let state = Vm { login, address, port, user: user.clone(), image: req.image.clone() };
        self.vms.insert(vm.id.clone(), state);
        Ok(vm)
    }

    async fn connect(&self, vm: &BuildVm, ctx: &StepContext) -> Result<Arc<dyn Communicator>> {
        let state = self.vm(&vm.id)?;
        let (key, host_public) = match &state.login {
            Login::Ssh { key, host_public } => (key, host_public),
            Login::WinRm { password } => return self.connect_winrm(vm, &state, password, ctx).await,
        };
        let cfg = SshConfig::builder()
            .host(&state.address)
            .port(state.port)
            .user(&state.user)
            .key((**key).clone())
            .host_key(HostKeyCheck::PublicKey(host_public.clone()))
            .connect_timeout(self.connect_timeout)
            .retry_backoff(Duration::from_millis(500), Duration::from_secs(5))
            .build()?;
        let comm = SshCommunicator::connect(cfg).await?;
        ctx.notice(format!(
            "connected to {}:{} over SSH after {:.1} s (host key verified)",
            state.address,
            state.port,
            comm.last_connect_time().as_secs_f64()
        ));
        let sink = ctx.output.clone();
        let st = comm
            .execute(
                &ExecRequest::new(
                    "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null; s=$?; cloud-init status --long; exit $s; fi",
                )
                .with_timeout(Duration::from_secs(900)),
                &*sink,
            )
            .await?;
        if !matches!(st.code, Some(0) | Some(2)) {
            return Err(Error::generic(BACKEND, format!("cloud-init on the build VM ended with {st}")));
        }
        Ok(Arc::new(comm))
    }

    async fn generalize(&self, vm: &BuildVm, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        let state = self.vm(&vm.id)?;
        let cmd = Generalizer::new(vm.platform).with_build_user(&state.user).command();
        if let Login::WinRm { .. } = state.login {
            self.generalize_windows(vm, &cmd, ctx).await?;
        } else {
            ctx.output.line(OutputStream::Stdout, "aib: deprovisioning the build VM");
            let st = comm.execute(&ExecRequest::new(cmd).with_timeout(Duration::from_secs(1200)), &*ctx.output).await?;
            if !st.success() {
                return Err(Error::StepFailed { step: ctx.name.clone(), exit_code: st.code, message: "deprovisioning failed".into() });
            }
        }
        ctx.output.line(OutputStream::Stdout, &format!("aib: deallocating {}", vm.id));
        self.arm.post(&format!("{}/deallocate", vm.id), COMPUTE_API, None).await?;
        ctx.output.line(OutputStream::Stdout, &format!("aib: generalizing {}", vm.id));
        self.arm.post(&format!("{}/generalize", vm.id), COMPUTE_API, None).await?;
        Ok(())
    }

    async fn capture(&self, vm: &BuildVm, _ctx: &StepContext) -> Result<CapturedImage> {
        let view = self.arm.get(&format!("{}/instanceView", vm.id), COMPUTE_API).await?;
        let generalized = view["statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["code"].as_str().is_some_and(|c| c.eq_ignore_ascii_case("OSState/generalized")));
        if !generalized {
            return Err(Error::generic(BACKEND, format!("{} is not generalized; capture needs a generalized VM", vm.id)));
        }
        let location = vm.attributes.get("location").and_then(Value::as_str).unwrap_or_default().to_string();
        let source = self.vm(&vm.id)?.image.clone();
        let mut image = CapturedImage::new(&vm.id, "AzureVm", location, source);
        for k in ["osDiskId", "stagingResourceGroup", "hyperVGeneration"] {
            if let Some(v) = vm.attributes.get(k) {
                image.attributes.insert(k.into(), v.clone());
            }
        }
        if let Some(id) = vm.attributes.get("osDiskId").and_then(Value::as_str)
            && let Ok(d) = self.arm.get(id, DISK_API).await
        {
            image.size_bytes = d["properties"]["diskSizeGB"].as_u64().map(|g| g << 30);
        }
        Ok(image)
    }
}

#[async_trait]
impl Reclaim for AzureProvisioner {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<()> {
        // A disk's read SAS is "deleted" by revoking it.
        if record.kind == "diskAccess" {
            return match self.arm.post(&format!("{}/endGetAccess", record.name), crate::DISK_API, None).await {
                Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let r = delete_settling(&self.arm, &record.name, self.settle_timeout).await;
        if r.is_ok() {
            self.vms.remove(&record.name);
        }
        r
    }
}

/// How long a network resource still "in use" by a just-deleted NIC is tried again.
const NETWORK_SETTLE: Duration = Duration::from_secs(300);

/// ARM's codes for a network resource still held by a NIC (or a NIC by a VM) that is going.
const IN_USE: &[&str] = &[
    "InUseSubnetCannotBeDeleted",
    "PublicIPAddressCannotBeDeleted",
    "InUseNetworkSecurityGroupCannotBeDeleted",
    "NicInUse",
    "NicReservedForAnotherVm",
    "InUseNetworkInterfaceCannotBeDeleted",
];

fn in_use(e: &Error) -> bool {
    matches!(e, Error::Generic { .. }) && crate::error::arm_error(e).is_some_and(|a| IN_USE.iter().any(|c| a.code.eq_ignore_ascii_case(c)))
}

/// Deletes `id`: a failure is tried again (three times, or for `settle` while ARM says a
/// just-deleted NIC still holds it); credentials that cannot delete fail at once.
pub(crate) async fn delete_settling(arm: &ArmClient, id: &str, settle: Duration) -> Result<()> {
    let api = api_version_for(id);
    let deadline = std::time::Instant::now() + settle;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let mut failures = 0;
    loop {
        let e = match arm.delete(id, api).await {
            Ok(()) | Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => e,
        };
        if matches!(e, Error::PermissionDenied { .. } | Error::Unauthenticated { .. } | Error::InvalidConfig { .. }) {
            return Err(e);
        }
        let settling = in_use(&e);
        failures += usize::from(!settling);
        if failures >= 3 || (settling && std::time::Instant::now() >= deadline) {
            tracing::warn!(resource = %id, error = %e, "delete failed");
            return Err(e);
        }
        tracing::debug!(resource = %id, error = %e, "delete failed; trying again");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_fit_and_are_stable() {
        let a = staging_group_name("sub", "my-rg", "ubuntu-template");
        assert!(a.starts_with("IT_my-rg_ubuntu-template_") && a.len() == "IT_my-rg_ubuntu-template_".len() + 36, "{a}");
        assert_eq!(a, staging_group_name("sub", "my-rg", "ubuntu-template"));
        assert_ne!(a, staging_group_name("sub", "my-rg", "other"));
        let long = staging_group_name("sub", &"r".repeat(90), &"t".repeat(64));
        assert_eq!(long.len(), 90, "{long}");
        let guid = &long[long.len() - 36..];
        assert!(guid.chars().filter(|c| *c == '-').count() == 4 && long.ends_with(&format!("_{guid}")), "the GUID is never cut: {long}");
    }

    #[test]
    fn vm_size_defaults_follow_the_generation() {
        assert_eq!(default_vm_size(Some("V1")), "Standard_D1_v2");
        assert_eq!(default_vm_size(Some("V2")), "Standard_D2ds_v4");
        assert_eq!(default_vm_size(None), "Standard_D2ds_v4");
        let arm = aib_core::ResolvedImage::default().with_architecture("Arm64").with_hyper_v_generation("V2");
        assert_eq!(default_vm_size_for(&arm), "Standard_D2ps_v5");
        assert_eq!(default_vm_size_for(&aib_core::ResolvedImage::default().with_hyper_v_generation("V1")), "Standard_D1_v2");
    }

    #[test]
    fn security_profiles_follow_the_source() {
        let tl = aib_core::ResolvedImage::default().with_security_type("TrustedLaunch");
        assert_eq!(security_profile(&tl).unwrap().unwrap()["securityType"], "TrustedLaunch");
        assert!(security_profile(&aib_core::ResolvedImage::default().with_security_type("TrustedLaunchSupported")).unwrap().is_none());
        assert!(security_profile(&aib_core::ResolvedImage::default()).unwrap().is_none());
        assert!(security_profile(&aib_core::ResolvedImage::default().with_security_type("ConfidentialVM")).is_err());
    }
}
