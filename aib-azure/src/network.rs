//! The build VM's network: a new VNet, subnet, NSG (the communicator's port open to the
//! allowed source only) and public IP, or a NIC in the template's existing subnet (no public
//! IP; this machine must reach the subnet, e.g. over a VPN or peering).

use crate::api::NETWORK_API;
use crate::client::ArmClient;
use crate::error::BACKEND;
use crate::naming::region;
use crate::staging::create;
use aib_core::{Error, Result, StepContext};
use serde_json::{Value, json};

pub(crate) struct Plan<'a> {
    pub(crate) group: &'a str,
    pub(crate) short: &'a str,
    pub(crate) location: &'a str,
    pub(crate) tags: &'a Value,
    pub(crate) port: u16,
    pub(crate) allowed_source: &'a str,
}

pub(crate) struct Nic {
    pub(crate) id: String,
    public_ip: Option<String>,
}

impl Nic {
    /// The address the builder connects to: the public IP, else the NIC's private one.
    pub(crate) async fn address(&self, arm: &ArmClient) -> Result<String> {
        let (id, pointer) = match &self.public_ip {
            Some(p) => (p, "/properties/ipAddress"),
            None => (&self.id, "/properties/ipConfigurations/0/properties/privateIPAddress"),
        };
        let v = arm.get(id, NETWORK_API).await?;
        v.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Error::generic(BACKEND, format!("{id} has no IP address")))
    }
}

fn net_id(p: &Plan<'_>, kind: &str, name: &str) -> String {
    format!("{}/providers/Microsoft.Network/{kind}/{name}", p.group)
}

pub(crate) async fn new_network(arm: &ArmClient, ctx: &StepContext, p: &Plan<'_>) -> Result<Nic> {
    let nsg = net_id(p, "networkSecurityGroups", &format!("aib-nsg-{}", p.short));
    create(
        arm,
        ctx,
        "networkSecurityGroup",
        &nsg,
        &json!({"location": p.location, "tags": p.tags, "properties": {"securityRules": [{
            "name": "aib-communicator", "properties": {"priority": 100, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
            "sourceAddressPrefix": p.allowed_source, "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": p.port.to_string()}}]}}),
    )
    .await?;
    let vnet = net_id(p, "virtualNetworks", &format!("aib-vnet-{}", p.short));
    create(
        arm,
        ctx,
        "virtualNetwork",
        &vnet,
        &json!({"location": p.location, "tags": p.tags, "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                "subnets": [{"name": "default", "properties": {"addressPrefix": "10.0.0.0/24", "networkSecurityGroup": {"id": nsg}}}]}}),
    )
    .await?;
    let pip = net_id(p, "publicIPAddresses", &format!("aib-pip-{}", p.short));
    create(
        arm,
        ctx,
        "publicIPAddress",
        &pip,
        &json!({"location": p.location, "tags": p.tags, "sku": {"name": "Standard"},
                "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}}),
    )
    .await?;
    let subnet = format!("{vnet}/subnets/default");
    nic(arm, ctx, p, json!({"subnet": {"id": subnet}, "publicIPAddress": {"id": pip}, "privateIPAllocationMethod": "Dynamic"}), Some(pip))
        .await
}

/// The build VM's NIC with one IP configuration.
async fn nic(arm: &ArmClient, ctx: &StepContext, p: &Plan<'_>, ip: Value, public_ip: Option<String>) -> Result<Nic> {
    let id = net_id(p, "networkInterfaces", &format!("aib-nic-{}", p.short));
    let body =
        json!({"location": p.location, "tags": p.tags, "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": ip}]}});
    create(arm, ctx, "networkInterface", &id, &body).await?;
    Ok(Nic { id, public_ip })
}

pub(crate) async fn existing_subnet(arm: &ArmClient, ctx: &StepContext, p: &Plan<'_>, subnet: &str) -> Result<Nic> {
    let Some((vnet, _)) = subnet.rsplit_once("/subnets/") else {
        return Err(Error::InvalidConfig {
            backend: BACKEND,
            key: "vmProfile.vnetConfig.subnetId".into(),
            message: format!("`{subnet}` is not a subnet id (…/virtualNetworks/<vnet>/subnets/<subnet>)"),
        });
    };
    let v = arm.get(vnet, NETWORK_API).await?;
    let loc = region(v["location"].as_str().unwrap_or_default());
    if loc != p.location {
        return Err(Error::InvalidConfig {
            backend: BACKEND,
            key: "vmProfile.vnetConfig.subnetId".into(),
            message: format!("the virtual network {vnet} is in {loc}; it must be in the template's region {}", p.location),
        });
    }
    arm.get(subnet, NETWORK_API).await?;
    nic(arm, ctx, p, json!({"subnet": {"id": subnet}, "privateIPAllocationMethod": "Dynamic"}), None).await
}
