//! Templates as ARM's own tooling accepts them: deployment templates with comments and
//! trailing commas, `languageVersion` 2.0 resources keyed by symbolic name, imageTemplates
//! inside nested inline deployments, and string-written scalars in lenient API versions.
//! Each is accepted with the warnings that say where the AIB service would be stricter, and
//! parses to the same template as its plain form.

use aib_core::template::{Code, Document, ImageTemplate};
use serde_json::{Value, json};

/// The image template every case below holds, as a plain resource.
fn plain() -> Value {
    json!({
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2022-07-01",
        "name": "web-image",
        "location": "westeurope",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/img/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
        "properties": {
            "buildTimeoutInMinutes": 60,
            "source": {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter-azure-edition", "version": "latest"},
            "customize": [
                {"type": "PowerShell", "name": "web-server", "inline": ["Install-WindowsFeature Web-Server"]},
                {"type": "PowerShell", "name": "settings", "inline": ["Write-Output 1"], "runElevated": false, "validExitCodes": [0, 3010]}
            ],
            "distribute": [{"type": "ManagedImage", "runOutputName": "web",
                "imageId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/img/providers/Microsoft.Compute/images/web",
                "location": "westeurope"}]
        }
    })
}

fn template_of(doc: &Document) -> ImageTemplate {
    let t: Vec<_> = doc.templates().collect();
    assert_eq!(t.len(), 1, "one template: {:?}", doc.diagnostics);
    t[0].template.clone().unwrap()
}

fn expected() -> ImageTemplate {
    let doc = Document::parse(&plain().to_string());
    assert!(!doc.diagnostics.has_errors(), "{}", doc.diagnostics);
    template_of(&doc)
}

fn codes(doc: &Document) -> Vec<(String, Code)> {
    doc.diagnostics.iter().map(|d| (d.path.clone(), d.code)).collect()
}

fn assert_same(doc: &Document) {
    assert!(!doc.diagnostics.has_errors(), "{}", doc.diagnostics);
    let (got, want) = (template_of(doc).normalized(), expected().normalized());
    assert_eq!(got.to_json_value(), want.to_json_value());
}

#[test]
fn a_deployment_template_with_comments_and_trailing_commas() {
    let resource = serde_json::to_string_pretty(&plain()).unwrap();
    let text = format!(
        "{{\n  // Written by hand, as ARM allows.\n  \"$schema\": \"https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#\",\n  \
         \"contentVersion\": \"1.0.0.0\", /* the image */\n  \"resources\": [\n{resource},\n  ],\n}}\n"
    );
    let doc = Document::parse(&text);
    assert_same(&doc);
    let ext: Vec<_> = doc.diagnostics.iter().filter(|d| d.code == Code::JsonExtension).collect();
    assert_eq!(ext.len(), 1, "{}", doc.diagnostics);
    assert!(ext[0].message.contains("comments (first at line 2, column 3)") && ext[0].message.contains("trailing commas"), "{}", ext[0]);
    assert!(!ext[0].is_error());
}

#[test]
fn a_request_body_with_comments_is_refused_saying_why() {
    let text = format!("// a note\n{}", plain());
    let doc = Document::parse(&text);
    let e: Vec<_> = doc.diagnostics.errors().collect();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].code, Code::InvalidJson);
    assert!(e[0].message.contains("comments") && e[0].message.contains("only ARM deployment templates"), "{}", e[0]);
    // Broken JSON stays broken, whatever it contains.
    let doc = Document::parse("{\"resources\": [ // a note\n {\"type\": }]}");
    assert_eq!(doc.diagnostics.errors().next().map(|d| d.code), Some(Code::InvalidJson));
}

#[test]
fn a_bicep_language_version_2_template_with_symbolic_names() {
    // What `bicep build` emits for resources declared by symbolic name (as Azure Verified
    // Modules are): `resources` is an object, each key the name in the Bicep file.
    let text = json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "languageVersion": "2.0",
        "contentVersion": "1.0.0.0",
        "resources": {
            "identityRef": {"existing": true, "type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31", "name": "builder"},
            "imageTemplate": plain()
        }
    });
    let doc = Document::parse(&text.to_string());
    assert_same(&doc);
    assert_eq!(doc.templates().next().unwrap().path, "resources.imageTemplate");
    // A finding inside it names the symbolic path.
    let mut broken = text.clone();
    broken["resources"]["imageTemplate"]["properties"]["distribute"][0]["runOutputName"] = json!("bad name!");
    let doc = Document::parse(&broken.to_string());
    let paths: Vec<_> = doc.diagnostics.errors().map(|d| d.path.clone()).collect();
    assert_eq!(paths, ["resources.imageTemplate.properties.distribute[0].runOutputName"]);
}

#[test]
fn an_image_template_inside_nested_inline_deployments() {
    let mut inner_resource = plain();
    inner_resource["apiVersion"] = json!("[parameters('aibApiVersion')]");
    let text = json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"aibApiVersion": {"type": "string", "defaultValue": "2025-10-01"}},
        "resources": [
            {"type": "Microsoft.Resources/resourceGroups", "apiVersion": "2022-09-01", "name": "img", "location": "westeurope"},
            {"type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01", "name": "images",
             "properties": {"mode": "Incremental", "expressionEvaluationOptions": {"scope": "inner"},
                "template": {
                    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                    "contentVersion": "1.0.0.0",
                    "parameters": {"aibApiVersion": {"type": "string", "defaultValue": "2022-07-01"}},
                    "resources": [
                        {"type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01", "name": "deeper",
                         "properties": {"mode": "Incremental", "template": {"resources": [inner_resource]}}}
                    ]}}}
        ]
    });
    let doc = Document::parse(&text.to_string());
    assert_same(&doc);
    let item = doc.templates().next().unwrap();
    assert_eq!(item.path, "resources[1].properties.template.resources[0].properties.template.resources[0]");
    // Inner scope: the nested template's own parameter, not the outer one (the outer default
    // is a strict version, which would refuse nothing here but says which was read).
    assert_eq!(item.api_version.map(|v| v.to_string()).as_deref(), Some("2022-07-01"));
}

#[test]
fn string_scalars_are_coerced_in_lenient_versions_only() {
    let mut old = plain();
    old["properties"]["customize"][1]["runElevated"] = json!("False");
    old["properties"]["customize"][1]["validExitCodes"] = json!(["0", "3010"]);
    old["properties"]["buildTimeoutInMinutes"] = json!("60");
    let doc = Document::parse(&old.to_string());
    assert_same(&doc);
    let mut coerced: Vec<_> = codes(&doc).into_iter().filter(|(_, c)| *c == Code::StringScalar).map(|(p, _)| p).collect();
    coerced.sort();
    assert_eq!(
        coerced,
        [
            "properties.buildTimeoutInMinutes",
            "properties.customize[1].runElevated",
            "properties.customize[1].validExitCodes[0]",
            "properties.customize[1].validExitCodes[1]"
        ]
    );
    let w = doc.diagnostics.iter().find(|d| d.code == Code::StringScalar).unwrap();
    assert!(w.message.contains("2022-07-01") && w.message.contains("2024-02-01"), "{w}");
    // From 2024-02-01 the service is strict, and so is aib.
    let mut strict = old.clone();
    strict["apiVersion"] = json!("2024-02-01");
    let doc = Document::parse(&strict.to_string());
    let errors: Vec<_> = doc.diagnostics.errors().map(|d| (d.path.clone(), d.code)).collect();
    assert!(errors.contains(&("properties.customize[1].runElevated".into(), Code::WrongType)), "{errors:?}");
    assert!(errors.contains(&("properties.customize[1].validExitCodes[0]".into(), Code::WrongType)), "{errors:?}");
    // A string that is no scalar is wrong at any version.
    let mut bad = plain();
    bad["properties"]["customize"][1]["runElevated"] = json!("yes");
    let doc = Document::parse(&bad.to_string());
    assert_eq!(doc.diagnostics.errors().map(|d| d.code).collect::<Vec<_>>(), [Code::WrongType]);
}

/// A deployment template written with parameters, variables, a copy loop and the functions
/// AIB templates use; with its parameter file it is the template below.
fn parameterized() -> Value {
    json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "imageName": {"type": "string"},
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
            "identityName": {"type": "string", "defaultValue": "builder"},
            "timeout": {"type": "int", "defaultValue": 90, "allowedValues": [60, 90, 120]},
            "features": {"type": "array", "defaultValue": ["Web-Server"]},
            "withGallery": {"type": "bool", "defaultValue": true},
            "stamp": {"type": "string", "defaultValue": "[utcNow()]"}
        },
        "variables": {
            "identityId": "[resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', parameters('identityName'))]",
            "imageId": "[resourceId('Microsoft.Compute/galleries/images', 'gallery', toLower(parameters('imageName')))]",
            "runOutput": "[format('{0}-{1}', parameters('imageName'), 'sig')]"
        },
        "resources": [
            {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31", "name": "[parameters('identityName')]", "location": "[parameters('location')]"},
            {
                "type": "Microsoft.VirtualMachineImages/imageTemplates",
                "apiVersion": "2024-02-01",
                "name": "[parameters('imageName')]",
                "location": "[parameters('location')]",
                "dependsOn": ["[variables('identityId')]"],
                "tags": {"stamp": "[parameters('stamp')]"},
                "identity": {"type": "UserAssigned", "userAssignedIdentities": {"[variables('identityId')]": {}}},
                "properties": {
                    "buildTimeoutInMinutes": "[parameters('timeout')]",
                    "vmProfile": {"vmSize": "[if(greater(parameters('timeout'), 100), 'Standard_D4s_v3', 'Standard_D2s_v3')]"},
                    "source": {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter-azure-edition", "version": "latest"},
                    "copy": [{"name": "customize", "count": "[length(parameters('features'))]",
                        "input": {"type": "PowerShell", "name": "[concat('feature-', copyIndex('customize'))]",
                                  "inline": ["[format('Install-WindowsFeature {0}', parameters('features')[copyIndex('customize')])]"]}}],
                    "distribute": "[if(parameters('withGallery'), createArray(createObject('type', 'SharedImage', 'galleryImageId', variables('imageId'), 'runOutputName', variables('runOutput'), 'replicationRegions', createArray(parameters('location')))), createArray())]"
                }
            }
        ]
    })
}

#[test]
fn parameters_and_expressions_evaluate_to_the_template() {
    use aib_core::template::Params;
    let text = parameterized().to_string();
    let doc = Document::parse(&text);
    assert!(doc.has_expressions());
    let file = json!({"$schema": "https://schema.management.azure.com/schemas/2015-01-01/deploymentParameters.json#", "contentVersion": "1.0.0.0",
        "parameters": {"imageName": {"value": "Web"}, "features": {"value": ["Web-Server", "Web-Asp-Net45"]}}});
    let params = Params::new()
        .with_file(&file.to_string())
        .unwrap()
        .set_text("timeout", "120")
        .subscription("00000000-0000-0000-0000-0000000000aa")
        .resource_group("images", "northeurope")
        .utc_now("20261202T000000Z");
    let evaluated = doc.evaluate(&params).unwrap();
    assert!(!evaluated.diagnostics.has_errors(), "{}", evaluated.diagnostics);
    assert!(evaluated.diagnostics.iter().all(|d| d.code != Code::ArmExpression), "nothing is left unevaluated: {}", evaluated.diagnostics);
    let item = evaluated.templates().next().unwrap();
    assert_eq!(item.path, "resources[1]");
    let sub = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/images/providers";
    let want = json!({
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2024-02-01", "name": "Web", "location": "northeurope",
        "tags": {"stamp": "20261202T000000Z"},
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {format!("{sub}/Microsoft.ManagedIdentity/userAssignedIdentities/builder"): {}}},
        "properties": {
            "buildTimeoutInMinutes": 120,
            "vmProfile": {"vmSize": "Standard_D4s_v3"},
            "source": {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter-azure-edition", "version": "latest"},
            "customize": [
                {"type": "PowerShell", "name": "feature-0", "inline": ["Install-WindowsFeature Web-Server"]},
                {"type": "PowerShell", "name": "feature-1", "inline": ["Install-WindowsFeature Web-Asp-Net45"]}
            ],
            "distribute": [{"type": "SharedImage", "galleryImageId": format!("{sub}/Microsoft.Compute/galleries/gallery/images/web"),
                "runOutputName": "Web-sig", "replicationRegions": ["northeurope"]}]
        }
    });
    let want = template_of(&Document::parse(&want.to_string()));
    assert_eq!(item.template.clone().unwrap().normalized().to_json_value(), want.normalized().to_json_value());

    // The other parameter-file form (just the `parameters` object) reads the same.
    let bare = json!({"imageName": {"value": "Web"}, "features": {"value": ["Web-Server", "Web-Asp-Net45"]}, "timeout": {"value": 120}});
    let p2 = Params::new()
        .with_file(&bare.to_string())
        .unwrap()
        .subscription("00000000-0000-0000-0000-0000000000aa")
        .resource_group("images", "northeurope")
        .utc_now("20261202T000000Z");
    assert_eq!(doc.evaluate(&p2).unwrap().templates().next().unwrap().template, item.template);
    // `{"parameters": {…}}` without `$schema` is the full form, as az reads it.
    let wrapped = json!({ "parameters": bare });
    let p3 = Params::new()
        .with_file(&wrapped.to_string())
        .unwrap()
        .subscription("00000000-0000-0000-0000-0000000000aa")
        .resource_group("images", "northeurope")
        .utc_now("20261202T000000Z");
    assert_eq!(doc.evaluate(&p3).unwrap().templates().next().unwrap().template, item.template);
}

#[test]
fn what_does_not_evaluate_is_a_located_error() {
    use aib_core::template::Params;
    let doc = Document::parse(&parameterized().to_string());
    let err = |p: Params| match doc.evaluate(&p) {
        Err(aib_core::Error::InvalidTemplate { diagnostics }) => {
            diagnostics.iter().next().map(|d| (d.path.clone(), d.message.clone())).unwrap()
        }
        other => panic!("expected an error, got {other:?}"),
    };
    let (path, msg) = err(Params::new().resource_group("images", "northeurope"));
    assert_eq!(path, "parameters.imageName");
    assert!(msg.contains("-p imageName=VALUE"), "{msg}");
    let (path, msg) = err(Params::new().set("imageName", json!("web")));
    assert_eq!(path, "parameters.location.defaultValue");
    assert!(msg.contains("resourceGroup()") && msg.contains("--resource-group"), "{msg}");
    let (path, msg) = err(Params::new().set("imageName", json!("web")).set("location", json!("x")).set_text("timeout", "45"));
    assert_eq!(path, "parameters.timeout");
    assert!(msg.contains("allowedValues"), "{msg}");
    let (_, msg) = err(Params::new().set("nope", json!(1)));
    assert!(msg.contains("no parameter `nope`"), "{msg}");
    // A function whose value only Azure knows.
    let mut t = parameterized();
    t["resources"][1]["properties"]["vmProfile"]["vmSize"] = json!("[reference('x').sku]");
    let doc = Document::parse(&t.to_string());
    let p = Params::new().set("imageName", json!("web")).resource_group("images", "northeurope").subscription("s");
    match doc.evaluate(&p) {
        Err(aib_core::Error::InvalidTemplate { diagnostics }) => {
            let d = diagnostics.iter().next().unwrap();
            assert_eq!(d.path, "resources[1].properties.vmProfile.vmSize");
            assert!(d.message.contains("`reference()`"), "{}", d.message);
        }
        other => panic!("{other:?}"),
    }
    // Key Vault references in a parameter file are refused, naming the parameter.
    let kv = json!({"parameters": {"imageName": {"reference": {"keyVault": {"id": "x"}, "secretName": "s"}}}, "contentVersion": "1.0.0.0"});
    let e = Params::new().with_file(&kv.to_string()).unwrap_err().to_string();
    assert!(e.contains("imageName") && e.contains("Key Vault"), "{e}");
}
