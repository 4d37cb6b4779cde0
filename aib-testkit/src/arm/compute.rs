//! What the ARM test server does for particular resource types, beyond storing them:
//! addresses for public IPs and NICs, subnets of virtual networks, an OS disk and a guest for
//! every VM, VM power states, generalization, images from generalized VMs, and the
//! references that keep a resource in use (a NIC used by a VM cannot be deleted).

use super::{Pending, State, error};
use crate::guest::{GuestSpec, decode_custom_data};
use crate::http::Response;
use serde_json::{Value, json};
use std::sync::Arc;

pub(super) const VM: &str = "microsoft.compute/virtualmachines";
const NIC: &str = "microsoft.network/networkinterfaces";
const PIP: &str = "microsoft.network/publicipaddresses";
const VNET: &str = "microsoft.network/virtualnetworks";
const NSG: &str = "microsoft.network/networksecuritygroups";
const DISK: &str = "microsoft.compute/disks";
const IMAGE: &str = "microsoft.compute/images";
const STORAGE: &str = "microsoft.storage/storageaccounts";
const VERSION: &str = "microsoft.compute/galleries/images/versions";

fn lower(v: &Value) -> Option<String> {
    v.as_str().map(str::to_ascii_lowercase)
}

/// The group's id prefix of a resource id (`/subscriptions/s/resourcegroups/g`).
fn group_of(key: &str) -> String {
    key.split('/').take(5).collect::<Vec<_>>().join("/")
}

fn alloc_ip(s: &mut State) -> String {
    s.next_ip += 1;
    format!("127.0.{}.{}", 10 + s.next_ip / 250, 1 + s.next_ip % 250)
}

/// Resource types served by their own resource provider with their own api-versions: a
/// request with another provider's version is refused as ARM refuses it.
pub(super) fn check_api_version(key: &str, api: &str) -> Option<Response> {
    let (kind, versions): (&str, &[&str]) = if key.contains("/providers/microsoft.compute/disks/") {
        ("disks", &["2022-07-02", "2023-01-02", "2023-04-02", "2023-10-02", "2024-03-02"])
    } else if key.contains("/providers/microsoft.compute/galleries/") {
        ("galleries", &["2022-03-03", "2022-08-03", "2023-07-03", "2024-03-03"])
    } else {
        return None;
    };
    (!versions.contains(&api)).then(|| {
        error(
            400,
            "NoRegisteredProviderFound",
            &format!(
                "No registered resource provider found for API version '{api}' and type '{kind}'. The supported api-versions are '{}'.",
                versions.join(", ")
            ),
        )
    })
}

/// Adjusts a body before it is stored; an error response refuses the PUT.
pub(super) fn on_put(s: &mut State, rtype: &str, key: &str, path: &str, body: &mut Value) -> Result<(), Response> {
    match rtype {
        PIP => {
            body["properties"]["ipAddress"] = alloc_ip(s).into();
        }
        VNET => {
            let subnets = body["properties"]["subnets"].as_array().cloned().unwrap_or_default();
            let mut out = Vec::new();
            for mut sn in subnets {
                let name = sn["name"].as_str().unwrap_or("default").to_string();
                let id = format!("{path}/subnets/{name}");
                sn["id"] = id.clone().into();
                if let Some(nsg) = lower(&sn["properties"]["networkSecurityGroup"]["id"])
                    && !s.resources.contains_key(&nsg)
                {
                    return Err(error(
                        400,
                        "InvalidResourceReference",
                        &format!("Resource {nsg} referenced by subnet {name} was not found."),
                    ));
                }
                s.resources.insert(id.to_ascii_lowercase(), json!({"id": id, "name": name, "type": "Microsoft.Network/virtualNetworks/subnets", "properties": sn["properties"].clone()}));
                out.push(sn);
            }
            body["properties"]["subnets"] = Value::Array(out);
        }
        NIC => {
            let configs = body["properties"]["ipConfigurations"].as_array().cloned().unwrap_or_default();
            if configs.is_empty() {
                return Err(error(400, "InvalidRequestFormat", "ipConfigurations: at least one IP configuration is required."));
            }
            let mut out = Vec::new();
            for mut c in configs {
                for r in ["subnet", "publicIPAddress"] {
                    if let Some(id) = lower(&c["properties"][r]["id"])
                        && !s.resources.contains_key(&id)
                    {
                        return Err(error(
                            400,
                            "InvalidResourceReference",
                            &format!("Resource {id} referenced by resource {path} was not found."),
                        ));
                    }
                }
                c["properties"]["privateIPAddress"] = alloc_ip(s).into();
                out.push(c);
            }
            body["properties"]["ipConfigurations"] = Value::Array(out);
        }
        VM => vm_put(s, key, path, body)?,
        STORAGE => {
            if let Some(d) = &s.disks {
                let asked = body["properties"]["allowSharedKeyAccess"].as_bool() != Some(false);
                let (endpoint, shared_key) =
                    d.create_account(key, asked).map_err(|e| error(409, "StorageAccountCountExceeded", &format!("{path}: {e}")))?;
                body["properties"]["primaryEndpoints"] = json!({"blob": endpoint});
                if !shared_key {
                    body["properties"]["allowSharedKeyAccess"] = false.into();
                }
            }
            body["properties"]["statusOfPrimary"] = "available".into();
        }
        IMAGE => {
            if let Some(vm) = lower(&body["properties"]["sourceVirtualMachine"]["id"]) {
                let size = source_vm(s, &vm)?;
                body["properties"]["storageProfile"]["osDisk"] = json!({"osType": "Linux", "osState": "Generalized", "diskSizeGB": size});
            }
        }
        VERSION => {
            let src = &body["properties"]["storageProfile"]["source"];
            if let Some(vm) = lower(&src["virtualMachineId"]) {
                source_vm(s, &vm)?;
            } else if let Some(id) = lower(&src["id"])
                && !s.resources.contains_key(&id)
            {
                return Err(error(404, "NotFound", &format!("The source {id} of the image version was not found.")));
            }
            let regions = body["properties"]["publishingProfile"]["targetRegions"].as_array().cloned().unwrap_or_default();
            body["properties"]["replicationStatus"] = json!({
                "aggregatedState": "InProgress",
                "summary": regions.iter().map(|r| json!({"region": r["name"], "state": "Replicating", "progress": 0})).collect::<Vec<_>>()
            });
        }
        _ => {}
    }
    Ok(())
}

/// A generalized VM's OS disk size, or the error ARM gives for any other VM.
fn source_vm(s: &State, vm: &str) -> Result<u64, Response> {
    let Some(v) = s.resources.get(vm) else {
        return Err(error(404, "NotFound", &format!("The source virtual machine {vm} was not found.")));
    };
    if !s.generalized.contains(vm) {
        return Err(error(
            409,
            "OperationNotAllowed",
            &format!("The source virtual machine {vm} must be generalized (deallocate it and call generalize first)."),
        ));
    }
    Ok(v["properties"]["storageProfile"]["osDisk"]["diskSizeGB"].as_u64().unwrap_or(30))
}

fn vm_put(s: &mut State, key: &str, path: &str, body: &mut Value) -> Result<(), Response> {
    let props = body["properties"].clone();
    if props["hardwareProfile"]["vmSize"].as_str().is_none_or(str::is_empty) {
        return Err(error(400, "InvalidParameter", "Required parameter 'hardwareProfile.vmSize' is missing (null)."));
    }
    let nics: Vec<String> =
        props["networkProfile"]["networkInterfaces"].as_array().into_iter().flatten().filter_map(|n| lower(&n["id"])).collect();
    if nics.is_empty() {
        return Err(error(400, "InvalidParameter", "Required parameter 'networkProfile' is missing (null)."));
    }
    for n in &nics {
        if !s.resources.contains_key(n) {
            return Err(error(400, "InvalidResourceReference", &format!("Resource {n} referenced by resource {path} was not found.")));
        }
    }
    let user = props["osProfile"]["adminUsername"].as_str().unwrap_or_default().to_string();
    if user.is_empty() {
        return Err(error(400, "InvalidParameter", "Required parameter 'osProfile.adminUsername' is missing (null)."));
    }
    if ["root", "admin", "administrator", "guest"].contains(&user.to_ascii_lowercase().as_str()) {
        return Err(error(400, "InvalidParameter", &format!("The Admin Username specified is not allowed: {user}.")));
    }
    let windows = props["storageProfile"]["osDisk"]["osType"].as_str().is_some_and(|o| o.eq_ignore_ascii_case("windows"))
        || props["osProfile"]["windowsConfiguration"].is_object();
    let password = props["osProfile"]["adminPassword"].as_str().map(str::to_string);
    if windows {
        // ARM's rule: 12 to 123 characters, three of lower, upper, digit and special.
        let p = password.as_deref().unwrap_or_default();
        let classes = [
            p.chars().any(|c| c.is_ascii_lowercase()),
            p.chars().any(|c| c.is_ascii_uppercase()),
            p.chars().any(|c| c.is_ascii_digit()),
            p.chars().any(|c| !c.is_ascii_alphanumeric()),
        ];
        if !(12..=123).contains(&p.chars().count()) || classes.iter().filter(|c| **c).count() < 3 {
            return Err(error(
                400,
                "InvalidParameter",
                "The supplied password must be between 12-123 characters long and must satisfy at least 3 of password complexity requirements from the following: 1) Contains an uppercase character 2) Contains a lowercase character 3) Contains a numeric digit 4) Contains a special character 5) Control characters are not allowed",
            ));
        }
    }
    // The OS disk, a resource of its own.
    let group = group_of(path);
    let vm_name = path.rsplit('/').next().unwrap_or("vm").to_string();
    let disk_name = props["storageProfile"]["osDisk"]["name"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{vm_name}_OsDisk_1_{}", uuid::Uuid::new_v4().simple()));
    let disk_id = format!("{group}/providers/Microsoft.Compute/disks/{disk_name}");
    let size = props["storageProfile"]["osDisk"]["diskSizeGB"].as_u64().unwrap_or(30);
    let location = body["location"].clone();
    s.resources.insert(
        disk_id.to_ascii_lowercase(),
        json!({"id": disk_id, "name": disk_name, "type": "Microsoft.Compute/disks", "location": location, "managedBy": path,
               "properties": {"diskSizeGB": size, "osType": if windows { "Windows" } else { "Linux" }, "creationData": {"createOption": "FromImage"}, "diskState": "Attached", "provisioningState": "Succeeded"}}),
    );
    body["properties"]["storageProfile"]["osDisk"]["name"] = disk_name.into();
    body["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"] = disk_id.into();
    body["properties"]["storageProfile"]["osDisk"]["diskSizeGB"] = size.into();
    body["properties"]["vmId"] = uuid::Uuid::new_v4().to_string().into();
    // ARM never returns the password or the custom data.
    if let Some(os) = body["properties"]["osProfile"].as_object_mut() {
        os.remove("adminPassword");
        os.remove("customData");
    }
    s.power.insert(key.to_string(), "running");
    s.generalized.remove(key);
    // The guest: at the first NIC's public address, or its private one.
    let nic = &s.resources[&nics[0]];
    let ipc = &nic["properties"]["ipConfigurations"][0]["properties"];
    let address = lower(&ipc["publicIPAddress"]["id"])
        .and_then(|p| s.resources.get(&p))
        .and_then(|p| p["properties"]["ipAddress"].as_str().map(str::to_string))
        .or_else(|| ipc["privateIPAddress"].as_str().map(str::to_string))
        .unwrap_or_default();
    let host = if windows { s.windows_guests.clone() } else { s.guests.clone() };
    if let Some(host) = host
        && !s.create_failures.contains_key(VM)
    {
        let spec = GuestSpec {
            vm_id: path.to_string(),
            address,
            admin_user: user,
            computer_name: props["osProfile"]["computerName"].as_str().unwrap_or(&vm_name).to_string(),
            authorized_keys: props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["keyData"].as_str().map(str::to_string))
                .collect(),
            custom_data: props["osProfile"]["customData"].as_str().and_then(decode_custom_data),
            windows,
            admin_password: password,
        };
        let guest =
            host.start(&spec).map_err(|e| error(409, "OSProvisioningClientError", &format!("the VM's guest did not start: {e}")))?;
        s.running.insert(key.to_string(), guest);
    }
    Ok(())
}

/// Refuses deleting a resource another one still uses, as ARM does.
pub(super) fn on_delete(s: &State, rtype: &str, key: &str) -> Result<(), Response> {
    let (code, users): (&str, &[&str]) = match rtype {
        NIC => ("NicInUse", &[VM]),
        PIP => ("PublicIPAddressCannotBeDeleted", &[NIC]),
        VNET => ("InUseSubnetCannotBeDeleted", &[NIC]),
        NSG => ("InUseNetworkSecurityGroupCannotBeDeleted", &[VNET, NIC]),
        DISK => ("OperationNotAllowed", &[VM]),
        _ => return Ok(()),
    };
    // A NIC just deleted still holds its subnet, address and NSG for a moment.
    if s.settling.get(key).is_some_and(|until| std::time::Instant::now() < *until) {
        return Err(error(400, code, &format!("Resource {key} is in use by a network interface that is being deleted; retry shortly.")));
    }
    let needle = format!("{key}/");
    for (k, v) in &s.resources {
        let t = v["type"].as_str().unwrap_or_default().to_ascii_lowercase();
        if k == key || !users.contains(&t.as_str()) {
            continue;
        }
        let text = v.to_string().to_ascii_lowercase();
        if text.contains(&format!("\"{key}\"")) || text.contains(&needle) {
            return Err(error(400, code, &format!("Resource {key} is in use by {} and cannot be deleted.", v["id"].as_str().unwrap_or(k))));
        }
    }
    Ok(())
}

/// After a resource was deleted: a VM's guest stops and its disk goes with it when asked.
pub(super) fn deleted(s: &mut State, removed: &Value, key: &str) {
    if removed["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(STORAGE))
        && let Some(d) = &s.disks
    {
        d.delete_account(key);
    }
    if removed["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(NIC)) && !s.settle.is_zero() {
        let until = std::time::Instant::now() + s.settle;
        let mut held = Vec::new();
        for c in removed["properties"]["ipConfigurations"].as_array().into_iter().flatten() {
            if let Some(subnet) = lower(&c["properties"]["subnet"]["id"]) {
                held.push(subnet.split("/subnets/").next().unwrap_or_default().to_string());
            }
            held.extend(lower(&c["properties"]["publicIPAddress"]["id"]));
        }
        held.extend(lower(&removed["properties"]["networkSecurityGroup"]["id"]));
        for h in held {
            s.settling.insert(h, until);
        }
    }
    if removed["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(VM)) {
        s.running.remove(key);
        s.power.remove(key);
        s.generalized.remove(key);
        let os = &removed["properties"]["storageProfile"]["osDisk"];
        if let Some(disk) = lower(&os["managedDisk"]["id"]) {
            if os["deleteOption"].as_str().is_some_and(|o| o.eq_ignore_ascii_case("delete")) {
                s.resources.remove(&disk);
            } else if let Some(d) = s.resources.get_mut(&disk) {
                d["managedBy"] = Value::Null;
                d["properties"]["diskState"] = "Unattached".into();
            }
        }
    }
}

/// `POST …/virtualMachines/{vm}/{action}`; an error response refuses it.
pub(super) fn vm_action(s: &mut State, vm: &str, action: &str) -> Result<(), Response> {
    match action {
        "deallocate" | "poweroff" => {
            s.running.remove(vm);
            s.power.insert(vm.to_string(), if action == "deallocate" { "deallocated" } else { "stopped" });
        }
        "generalize" => {
            if s.power.get(vm).copied() == Some("running") {
                return Err(error(
                    409,
                    "OperationNotAllowed",
                    "Operation 'generalize' is not allowed on VM since the VM is running. Deallocate the VM first.",
                ));
            }
            s.generalized.insert(vm.to_string());
        }
        "start" | "restart" => {
            return Err(error(409, "OperationNotAllowed", "The test server does not restart guests."));
        }
        _ => {}
    }
    Ok(())
}

/// `POST …/virtualMachines/{vm}/runCommand`: the script starts on the guest through its
/// agent and the operation ends when it does, with the shape ARM gives a Windows VM's result
/// (`ComponentStatus/StdOut/succeeded`).
pub(super) fn run_command(s: &State, vm: &str, body: &Value) -> Result<Pending, Response> {
    let windows = s.resources[vm]["properties"]["osProfile"]["windowsConfiguration"].is_object();
    let want = if windows { "RunPowerShellScript" } else { "RunShellScript" };
    let id = body["commandId"].as_str().unwrap_or_default();
    if !id.eq_ignore_ascii_case(want) {
        return Err(error(400, "InvalidParameter", &format!("The command '{id}' is not supported for this VM's OS type; use '{want}'.")));
    }
    if s.power.get(vm).copied() != Some("running") {
        return Err(error(409, "OperationNotAllowed", "Run command is not allowed when the VM is not running."));
    }
    let script: Vec<&str> = body["script"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(guest) = s.running.get(vm) else {
        return Err(error(409, "VMAgentStatusCommunicationError", "The VM has no guest agent to run the command."));
    };
    let job = guest
        .run_command(&script.join("\n"))
        .map_err(|e| error(409, "VMExtensionProvisioningError", &format!("Run command failed on the VM: {e}")))?;
    let slot: Pending = Arc::default();
    let out = slot.clone();
    tokio::task::spawn_blocking(move || {
        let status = |stream: &str, message: &str| json!({"code": format!("ComponentStatus/{stream}/succeeded"), "level": "Info", "displayStatus": "Provisioning succeeded", "message": message});
        let r = job()
            .map(|o| json!({"value": [status("StdOut", &o.stdout), status("StdErr", &o.stderr)]}))
            .map_err(|e| ("VMExtensionProvisioningError".to_string(), format!("Run command failed on the VM: {e}")));
        *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    });
    Ok(slot)
}

/// `GET …/virtualMachines/{vm}/instanceView`.
pub(super) fn instance_view(s: &State, vm: &str) -> Option<Value> {
    let v = s.resources.get(vm)?;
    let mut statuses = vec![
        json!({"code": format!("ProvisioningState/{}", v["properties"]["provisioningState"].as_str().unwrap_or("succeeded").to_ascii_lowercase()), "level": "Info"}),
        json!({"code": format!("PowerState/{}", s.power.get(vm).copied().unwrap_or("running")), "level": "Info"}),
    ];
    if s.generalized.contains(vm) {
        statuses.push(json!({"code": "OSState/generalized", "level": "Info", "displayStatus": "VM generalized"}));
    }
    Some(json!({"computerName": v["properties"]["osProfile"]["computerName"], "statuses": statuses}))
}

/// A read: the resource, whose replication (of gallery image versions) moves on with every read.
pub(super) fn on_get<'a>(s: &'a mut State, key: &str) -> Option<&'a Value> {
    let v = s.resources.get_mut(key)?;
    if v["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(VERSION)) {
        advance(v);
    }
    Some(v)
}

/// A create finished: a gallery image version is replicated everywhere by then.
pub(super) fn created(v: &mut Value) {
    if v["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(VERSION)) {
        for _ in 0..2 {
            advance(v);
        }
    }
}

fn advance(v: &mut Value) {
    let Some(summary) = v["properties"]["replicationStatus"]["summary"].as_array_mut() else { return };
    let mut all = true;
    for r in summary.iter_mut() {
        let p = (r["progress"].as_u64().unwrap_or(0) + 50).min(100);
        r["progress"] = p.into();
        r["state"] = if p == 100 { "Completed" } else { "Replicating" }.into();
        all &= p == 100;
    }
    v["properties"]["replicationStatus"]["aggregatedState"] = if all { "Completed" } else { "InProgress" }.into();
}
