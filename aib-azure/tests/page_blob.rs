//! Uploading a local fixed VHD to a page blob in Azurite: only allocated, non-zero pages go.

use aib_azure::upload::{BlobTarget, data_ranges, upload_page_blob};
use aib_core::MemorySink;
use aib_testkit::azurite::{ACCOUNT, Azurite, KEY};
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::prelude::ClientBuilder;
use futures::StreamExt;
use std::io::{Seek, SeekFrom, Write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_vhd_uploads_only_its_data() {
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    // A 64 MiB disk with data in three places, as a fixed VHD.
    let raw = dir.path().join("disk.raw");
    let mut f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 << 20).unwrap();
    for (at, len) in [(0u64, 8192usize), (20 << 20, 5 << 20), (60 << 20, 4096)] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&(0..len).map(|i| (i % 251) as u8 + 1).collect::<Vec<_>>()).unwrap();
    }
    drop(f);
    let vhd = dir.path().join("disk.vhd");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on"])
        .arg(&raw)
        .arg(&vhd)
        .status()
        .unwrap();
    assert!(st.success());
    let size = std::fs::metadata(&vhd).unwrap().len();
    assert_eq!(size, (64 << 20) + 512);
    assert!(data_ranges(&vhd).await.unwrap().iter().map(|r| r.1).sum::<u64>() < 16 << 20, "the VHD is sparse");

    let target = BlobTarget {
        location: CloudLocation::Custom { account: ACCOUNT.into(), uri: azurite.endpoint() },
        credentials: StorageCredentials::access_key(ACCOUNT, azure_core::auth::Secret::new(KEY)),
        container: "vhds".into(),
        blob: "disk.vhd".into(),
    };
    let sink = MemorySink::new();
    let stats = upload_page_blob(&vhd, &target, 4, &sink).await.unwrap();
    assert_eq!(stats.size, size);
    assert!(stats.sent >= (5 << 20) + 8192 + 4096 + 512, "{stats:?}");
    assert!(stats.sent < 8 << 20, "holes are not sent: {stats:?}");

    // What Azure holds is the disk, byte for byte.
    let blob = ClientBuilder::with_location(target.location.clone(), target.credentials.clone()).blob_client("vhds", "disk.vhd");
    let props = blob.get_properties().await.unwrap();
    assert_eq!(props.blob.properties.content_length, size);
    let mut got = Vec::new();
    let mut stream = blob.get().into_stream();
    while let Some(chunk) = stream.next().await {
        got.extend(chunk.unwrap().data.collect().await.unwrap());
    }
    assert_eq!(got.len() as u64, size);
    assert!(got == std::fs::read(&vhd).unwrap(), "content differs");
    let ranges = blob.get_page_ranges().await.unwrap().page_list.ranges;
    assert!(!ranges.is_empty());

    // A disk of no whole number of MiB would upload and then make no Azure disk: refused first.
    let odd = dir.path().join("odd.vhd");
    std::fs::File::create(&odd).unwrap().set_len((1 << 20) + 4096 + 512).unwrap();
    let err = upload_page_blob(&odd, &BlobTarget { blob: "odd.vhd".into(), ..target.clone() }, 4, &sink).await.unwrap_err();
    assert!(err.to_string().contains("whole number of MiB") && err.to_string().contains("qemu-img resize"), "{err}");
    // Into the container that now exists: its create answers ContainerAlreadyExists, which is fine.
    assert!(upload_page_blob(&vhd, &BlobTarget { blob: "again.vhd".into(), ..target }, 4, &sink).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_captured_disk_can_be_published_as_a_vhd_blob() {
    use aib_azure::BlobVhdDistributor;
    use aib_core::{CapturedImage, Distributor, ResolvedImage};
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("captured.qcow2");
    assert!(std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("16M").status().unwrap().success());
    let image = CapturedImage::new(disk.display().to_string(), "qcow2", disk.display().to_string(), ResolvedImage::default());
    let uri = format!("{}/vhds/from-local.vhd", azurite.endpoint());
    let scratch = dir.path().join("scratch");
    let d = BlobVhdDistributor::new(&uri, StorageCredentials::access_key(ACCOUNT, azure_core::auth::Secret::new(KEY)), &scratch).unwrap();
    // The conformance suite: an artifact, and nothing left in the ledger.
    let req = aib_core::DistributeRequest::new(image);
    aib_testkit::conformance::distributor(&d, &req).await;
    let (step, sink) = aib_core::StepContext::capturing("distribute vhd").unwrap();
    let a = d.distribute(&req, &step).await.unwrap();
    assert_eq!(a.artifact_uri.as_deref(), Some(uri.as_str()));
    assert!(step.run.ledger().outstanding().is_empty(), "the staged VHD was recorded and released");
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none(), "the staged VHD is removed");
    assert!(sink.stdout().iter().any(|l| l.contains("uploaded")));
    let blob = ClientBuilder::with_location(
        CloudLocation::Custom { account: ACCOUNT.into(), uri: azurite.endpoint() },
        StorageCredentials::access_key(ACCOUNT, azure_core::auth::Secret::new(KEY)),
    )
    .blob_client("vhds", "from-local.vhd");
    assert_eq!(blob.get_properties().await.unwrap().blob.properties.content_length, (16 << 20) + 512);
    // Without credentials in the environment, from_spec says which variables to set.
    let spec = aib_core::template::DistributorSpec::Vhd(aib_core::template::VhdTarget {
        run_output_name: "v".into(),
        artifact_tags: None,
        uri: Some("https://acct.blob.core.windows.net/vhds/from-local.vhd".into()),
    });
    if std::env::var_os("AZURE_STORAGE_KEY").is_none() && std::env::var_os("AZURE_STORAGE_SAS_TOKEN").is_none() {
        let e = BlobVhdDistributor::from_spec(&spec, &scratch).unwrap_err();
        assert!(e.to_string().contains("not authenticated") || format!("{e:?}").contains("AZURE_STORAGE_KEY"), "{e:?}");
    }
}

/// The environment's storage credentials go only to Azure Storage over https, or to an
/// endpoint the operator configured: a template naming another host is refused at its `uri`.
#[test]
fn a_template_cannot_send_the_storage_credentials_to_a_host_it_chooses() {
    use aib_core::template::{Code, DistributorSpec, VhdTarget};
    let spec = |uri: &str| DistributorSpec::Vhd(VhdTarget { run_output_name: "v".into(), artifact_tags: None, uri: Some(uri.into()) });
    let arm = aib_azure::ArmClient::builder()
        .endpoint("http://127.0.0.1:9")
        .credential(aib_azure::Credential::static_token("t"))
        .build()
        .unwrap();
    for uri in
        ["http://evil.example/acct/vhds/x.vhd", "https://evil.example/acct/vhds/x.vhd", "http://acct.blob.core.windows.net/vhds/x.vhd"]
    {
        for e in [
            aib_azure::BlobVhdDistributor::from_spec(&spec(uri), "/tmp").unwrap_err(),
            aib_azure::DiskVhdDistributor::from_spec(arm.clone(), &spec(uri), None).unwrap_err(),
        ] {
            assert!(matches!(&e, aib_core::Error::InvalidField { field, code: Code::OutsideBoundary, .. } if field == "uri"), "{uri}: {e}");
        }
    }
    // The operator's emulator is the operator's to configure.
    let emulator = "http://127.0.0.1:10000/devstoreaccount1";
    aib_azure::DiskVhdDistributor::from_spec(arm.clone(), &spec(&format!("{emulator}/vhds/x.vhd")), Some(emulator.into())).unwrap();
    assert!(aib_azure::DiskVhdDistributor::from_spec(arm, &spec(&format!("{emulator}/vhds/x.vhd")), None).is_err());
}
