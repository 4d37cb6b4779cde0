//! Every published Microsoft template in `tests/corpus/` parses without errors, and every
//! template in it survives a round trip through serialization.

use aib_core::template::{Document, ParseOptions};
use std::path::Path;

fn check(rel: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = Document::parse(&text);
    let errors: Vec<String> = doc.diagnostics.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{rel}:\n{}", errors.join("\n"));
    assert!(!doc.items.is_empty(), "{rel}: nothing recognised");
    for item in &doc.items {
        let Some(t) = &item.template else { continue };
        // Round trip: serialize, parse again at the same API version, compare.
        let json = t.to_json_pretty();
        let mut opts = ParseOptions::default();
        if let Some(v) = item.api_version {
            opts = opts.with_api_version(v);
        }
        let again = Document::parse_with(&json, &opts);
        let back = again
            .items
            .iter()
            .find_map(|i| i.template.clone())
            .unwrap_or_else(|| panic!("{rel} {}: re-parse found no template:\n{json}", item.path));
        // Example responses may hold what a request may not (their findings are warnings).
        if !item.response {
            assert!(!again.diagnostics.has_errors(), "{rel} {}: re-parse errors: {}", item.path, again.diagnostics);
        }
        assert_eq!(&back, t, "{rel} {}: round trip changed the template", item.path);
        assert_eq!(back.normalized(), t.normalized(), "{rel} {}", item.path);
        assert_eq!(back.normalized().normalized(), back.normalized(), "normalization is idempotent");
    }
}

macro_rules! corpus {
    ($($name:ident => $file:literal),* $(,)?) => {
        $( #[test] fn $name() { check($file); } )*

        #[test]
        fn corpus_is_complete() {
            let listed = [$($file),*];
            let mut on_disk = Vec::new();
            for dir in ["quickstarts", "rest-api-examples"] {
                for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir)).unwrap() {
                    on_disk.push(format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()));
                }
            }
            on_disk.sort();
            let mut listed: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
            listed.sort();
            assert_eq!(listed, on_disk, "every corpus file has its own test");
            assert_eq!(listed.len(), 44);
        }
    };
}
corpus! {
    qs_azuredeploy => "quickstarts/azure-quickstart-templates__demos__imagebuilder-windowsbaseline__azuredeploy.json",
    old_helloimagetemplatelinux => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__0_Creating_a_Custom_Linux_Managed_Image__helloImageTemplateLinux.json",
    old_helloimagetemplatewin => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__0_Creating_a_Custom_Windows_Managed_Image__helloImageTemplateWin.json",
    old_helloimagetemplatewin01 => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__0_Creating_a_Custom_Windows_Managed_Image__helloImageTemplateWin01.json",
    old_helloimagetemplateforsig => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__1_Creating_a_Custom_Linux_Shared_Image_Gallery_Image__helloImageTemplateforSIG.json",
    old_existingvnetwindowsaccessstor => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__1b_Creating_a_Custom_Win_Image_on_Existing_VNET_Access_Storage__existingVNETWindowsAccessStor.json",
    old_helloimagetemplateforsigfromsig => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__2_Creating_a_Custom_Linux_Shared_Image_Gallery_Image_from_SIG__helloImageTemplateforSIGfromSIG.json",
    old_helloimagetemplateforrecustomization => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__3_Customize_a_Managed_Image_and_Import_into_SIG__helloImageTemplateforReCustomization.json",
    old_helloimagetemplatevhd => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__4_Creating_a_Custom_Linux_Image_to_VHD__helloImageTemplateVHD.json",
    old_helloimagetemplatemsi => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__7_Creating_Custom_Image_using_MSI_to_Access_Storage__helloImageTemplateMsi.json",
    old_helloimagetemplateversion => "quickstarts/azvmimagebuilder__deprecated__quickquickstarts__9_Updating_Image_Builder_Templates__helloImageTemplateVersion.json",
    qs_helloimagetemplatelinux => "quickstarts/azvmimagebuilder__quickquickstarts__0_Creating_a_Custom_Linux_Managed_Image__helloImageTemplateLinux.json",
    qs_helloimagetemplatewin => "quickstarts/azvmimagebuilder__quickquickstarts__0_Creating_a_Custom_Windows_Managed_Image__helloImageTemplateWin.json",
    qs_helloimagetemplateforsig => "quickstarts/azvmimagebuilder__quickquickstarts__1_Creating_a_Custom_Linux_Shared_Image_Gallery_Image__helloImageTemplateforSIG.json",
    qs_armtemplatewinsig => "quickstarts/azvmimagebuilder__quickquickstarts__1_Creating_a_Custom_Win_Shared_Image_Gallery_Image__armTemplateWinSIG.json",
    qs_existingvnetlinux => "quickstarts/azvmimagebuilder__quickquickstarts__1a_Creating_a_Custom_Linux_Image_on_Existing_VNET__existingVNETLinux.json",
    qs_existingvnetwindows => "quickstarts/azvmimagebuilder__quickquickstarts__1a_Creating_a_Custom_Win_Image_on_Existing_VNET__existingVNETWindows.json",
    qs_helloimagetemplateforsigfromsig => "quickstarts/azvmimagebuilder__quickquickstarts__2_Creating_a_Custom_Linux_Shared_Image_Gallery_Image_from_SIG__helloImageTemplateforSIGfromSIG.json",
    qs_helloimagetemplateforsigfromwinsig => "quickstarts/azvmimagebuilder__quickquickstarts__2_Creating_a_Custom_Win_Shared_Image_Gallery_Image_from_SIG__helloImageTemplateforSIGfromWinSIG.json",
    qs_helloimagetemplateforrecustomization => "quickstarts/azvmimagebuilder__quickquickstarts__3_Customize_a_Managed_Image_and_Import_into_SIG__helloImageTemplateforReCustomization.json",
    qs_helloimagetemplatevhd => "quickstarts/azvmimagebuilder__quickquickstarts__4_Creating_a_Custom_Linux_Image_to_VHD__helloImageTemplateVHD.json",
    qs_helloimagetemplatemsi => "quickstarts/azvmimagebuilder__quickquickstarts__7_Creating_Custom_Image_using_MSI_to_Access_Storage__helloImageTemplateMsi.json",
    qs_helloimagetemplate => "quickstarts/azvmimagebuilder__quickquickstarts__9_Setting_up_a_Trigger_with_a_Custom_Linux_Image__helloImageTemplate.json",
    qs_trigger => "quickstarts/azvmimagebuilder__quickquickstarts__9_Setting_up_a_Trigger_with_a_Custom_Linux_Image__trigger.json",
    qs_armtemplatewvd => "quickstarts/azvmimagebuilder__solutions__14_Building_Images_WVD__armTemplateWVD.json",
    qs_devopsenvtemplate => "quickstarts/azvmimagebuilder__solutions__4_Using_ENV_Variables__devOpsEnvTemplate.json",
    rest_cancelimagebuild => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__CancelImageBuild.json",
    rest_createimagetemplatelinux => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__CreateImageTemplateLinux.json",
    rest_createimagetemplatewindows => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__CreateImageTemplateWindows.json",
    rest_createsourceimagetrigger => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__CreateSourceImageTrigger.json",
    rest_deleteimagetemplate => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__DeleteImageTemplate.json",
    rest_deletetrigger => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__DeleteTrigger.json",
    rest_getimagetemplate => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__GetImageTemplate.json",
    rest_getrunoutput => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__GetRunOutput.json",
    rest_gettrigger => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__GetTrigger.json",
    rest_listimagetemplates => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__ListImageTemplates.json",
    rest_listimagetemplatesbyrg => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__ListImageTemplatesByRg.json",
    rest_listrunoutputs => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__ListRunOutputs.json",
    rest_listtriggers => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__ListTriggers.json",
    rest_operationslist => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__OperationsList.json",
    rest_runimagetemplate => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__RunImageTemplate.json",
    rest_updateimagetemplatetags => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__UpdateImageTemplateTags.json",
    rest_updateimagetemplatetoremoveidentities => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__UpdateImageTemplateToRemoveIdentities.json",
    rest_updateimagetemplatevmprofile => "rest-api-examples/azure-rest-api-specs__stable_2025-10-01__UpdateImageTemplateVmProfile.json",
}
