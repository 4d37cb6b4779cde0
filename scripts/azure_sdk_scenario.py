"""Microsoft's Azure SDK for Python as a client of aib's ARM test server.

Drives the operations aib's Azure backend uses -- a resource group, a network, a Windows VM,
Run Command, deallocate and generalize, a gallery image version from the VM, disk access
granted and revoked, deletes -- through the SDK's own clients and long-running-operation
pollers, exactly as they would run against Azure. Any call that does not complete as the SDK
expects raises, and the script exits non-zero.

Usage: azure_sdk_scenario.py http://127.0.0.1:PORT
The server must back Windows VMs with guests (`aib testkit arm-server --windows-guests`).
"""

import sys
import time

from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

SUBSCRIPTION = "00000000-0000-0000-0000-00000000a1b2"
GROUP = "aib-sdk-scenario"
REGION = "westus2"


class StaticToken:
    """A credential: the test server accepts any bearer token."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken("sdk-scenario", int(time.time()) + 3600)


class Bearer(SansIOHTTPPolicy):
    """The SDK refuses bearer tokens over plain http; the test server is on loopback only."""

    def on_request(self, request):
        request.http_request.headers["Authorization"] = "Bearer sdk-scenario"


def step(what):
    print("sdk scenario:", what, flush=True)


def main(base):
    common = dict(base_url=base, authentication_policy=Bearer(), polling_interval=0, retry_total=0)
    cred = StaticToken()
    resources = ResourceManagementClient(cred, SUBSCRIPTION, api_version="2021-04-01", **common)
    network = NetworkManagementClient(cred, SUBSCRIPTION, **common)
    compute = ComputeManagementClient(cred, SUBSCRIPTION, **common)

    step("resource group")
    rg = resources.resource_groups.create_or_update(GROUP, {"location": REGION, "tags": {"createdBy": "sdk-scenario"}})
    assert rg.location == REGION, rg

    step("network security group, virtual network, network interface")
    nsg = network.network_security_groups.begin_create_or_update(GROUP, "nsg", {"location": REGION}).result()
    vnet = network.virtual_networks.begin_create_or_update(
        GROUP,
        "vnet",
        {
            "location": REGION,
            "address_space": {"address_prefixes": ["10.1.0.0/16"]},
            "subnets": [{"name": "default", "address_prefix": "10.1.0.0/24", "network_security_group": {"id": nsg.id}}],
        },
    ).result()
    subnet = vnet.subnets[0]
    nic = network.network_interfaces.begin_create_or_update(
        GROUP,
        "nic",
        {"location": REGION, "ip_configurations": [{"name": "ipconfig1", "subnet": {"id": subnet.id}, "private_ip_allocation_method": "Dynamic"}]},
    ).result()
    assert nic.provisioning_state == "Succeeded", nic.provisioning_state

    step("Windows VM")
    vm = compute.virtual_machines.begin_create_or_update(
        GROUP,
        "vm",
        {
            "location": REGION,
            "hardware_profile": {"vm_size": "Standard_D2ds_v4"},
            "storage_profile": {
                "image_reference": {"publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter-g2", "version": "latest"},
                "os_disk": {"name": "vm-osdisk", "create_option": "FromImage", "delete_option": "Delete", "managed_disk": {"storage_account_type": "Standard_LRS"}},
            },
            "os_profile": {
                "computer_name": "sdkvm",
                "admin_username": "aibadmin",
                "admin_password": "Sdk-Scenario-Pw-2026!",
                "windows_configuration": {"provision_vm_agent": True},
            },
            "network_profile": {"network_interfaces": [{"id": nic.id, "primary": True, "delete_option": "Delete"}]},
        },
    ).result()
    assert vm.provisioning_state == "Succeeded", vm.provisioning_state

    step("Run Command (final-state-via: location)")
    out = compute.virtual_machines.begin_run_command(
        GROUP, "vm", {"command_id": "RunPowerShellScript", "script": ["Write-Output 'hello from the SDK'"]}
    ).result()
    stdout = [s.message for s in out.value if "StdOut" in (s.code or "")]
    assert stdout and "hello from the SDK" in stdout[0], out.as_dict()

    step("deallocate, generalize, instance view")
    compute.virtual_machines.begin_deallocate(GROUP, "vm").result()
    compute.virtual_machines.generalize(GROUP, "vm")
    view = compute.virtual_machines.instance_view(GROUP, "vm")
    assert any((s.code or "").lower() == "osstate/generalized" for s in view.statuses), view.as_dict()

    step("gallery, image definition, image version from the VM")
    compute.galleries.begin_create_or_update(GROUP, "gallery", {"location": REGION}).result()
    compute.gallery_images.begin_create_or_update(
        GROUP,
        "gallery",
        "windows",
        {
            "location": REGION,
            "os_type": "Windows",
            "os_state": "Generalized",
            "hyper_v_generation": "V2",
            "identifier": {"publisher": "contoso", "offer": "windows", "sku": "2022"},
        },
    ).result()
    version = compute.gallery_image_versions.begin_create_or_update(
        GROUP,
        "gallery",
        "windows",
        "1.0.0",
        {
            "location": REGION,
            "publishing_profile": {"target_regions": [{"name": REGION, "regional_replica_count": 1}]},
            "storage_profile": {"source": {"virtual_machine_id": vm.id}},
        },
    ).result()
    assert version.provisioning_state == "Succeeded", version.provisioning_state

    step("grant and revoke disk access (final-state-via: location)")
    access = compute.disks.begin_grant_access(GROUP, "vm-osdisk", {"access": "Read", "duration_in_seconds": 3600}).result()
    assert access.access_sas and "sig=" in access.access_sas, access
    compute.disks.begin_revoke_access(GROUP, "vm-osdisk").result()

    step("delete the VM and the group")
    compute.virtual_machines.begin_delete(GROUP, "vm").result()
    resources.resource_groups.begin_delete(GROUP).result()
    assert not resources.resource_groups.check_existence(GROUP)
    print("sdk scenario: every call completed as against Azure", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
