//! Outputs and the local gallery on small real disk images (qemu-img; no VM): formats, the
//! VHD footer, versioning, atomic and concurrent publishing, and the conformance suite.

use aib_core::template::{Expr, ImageSource, SharedImageTarget, SharedImageVersionSource, TargetRegion, Versioning};
use aib_core::{CapturedImage, DistributeRequest, Distributor, Error, ResolveRequest, ResolvedImage, RunContext, Source, StepContext};
use aib_local::Gallery;
use aib_local::outputs::{DiskFormat, FileDistributor, GalleryDistributor, check_vhd};
use std::path::Path;
use std::sync::Arc;

const DEF: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/web";

async fn tiny_image(dir: &Path, version: &str) -> CapturedImage {
    let p = dir.join("disk.qcow2");
    let st = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("3M")
        .status()
        .await
        .expect("qemu-img (apt-get install qemu-utils)");
    assert!(st.success());
    let src = ResolvedImage::new("PlatformImage", "Debian:debian-12:12-gen2:latest", "Debian:debian-12:12-gen2:12.1.0")
        .with_exact_version(version);
    CapturedImage::new(p.display().to_string(), "qcow2", p.display().to_string(), src)
}

fn target(versioning: Option<Versioning>, id: &str) -> SharedImageTarget {
    SharedImageTarget {
        run_output_name: "sig".into(),
        gallery_image_id: id.into(),
        target_regions: Some(Expr::Value(vec![TargetRegion {
            name: "westeurope".into(),
            replica_count: Some(Expr::Value(2)),
            storage_account_type: None,
        }])),
        versioning,
        ..Default::default()
    }
}

#[tokio::test]
async fn file_outputs_and_a_vhd_azure_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_image(dir.path(), "1.0.0").await;
    let ctx = RunContext::detached("outputs").unwrap();
    for (format, ext) in
        [(DiskFormat::VhdFixed, "vhd"), (DiskFormat::Qcow2Zstd, "qcow2"), (DiskFormat::Qcow2Zlib, "qcow2"), (DiskFormat::Raw, "raw")]
    {
        let dest = dir.path().join(format!("out-{format:?}.{ext}"));
        let d = FileDistributor::new(format, Some(dest.clone()), dir.path().join("outputs"), "x");
        let a = d.distribute(&DistributeRequest::new(image.clone()), &ctx.step("distribute x")).await.unwrap();
        assert_eq!(a.artifact_uri.as_deref(), Some(format!("file://{}", dest.display()).as_str()));
        assert!(dest.exists());
        assert!(ctx.ledger().outstanding().is_empty(), "the temp file is not a leftover");
    }
    assert_eq!(check_vhd(&dir.path().join("out-VhdFixed.vhd")).unwrap(), 3 << 20);
    // A broken footer is refused.
    let bad = dir.path().join("bad.vhd");
    std::fs::write(&bad, vec![0u8; 4096]).unwrap();
    assert!(check_vhd(&bad).unwrap_err().to_string().contains("conectix"));
}

/// A step of run `run`.
fn ctx(run: impl AsRef<str>) -> StepContext {
    RunContext::detached(run.as_ref()).unwrap().step("distribute")
}

#[tokio::test]
async fn gallery_versions_follow_aib_and_publish_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_image(dir.path(), "12.20261129.0").await;
    let g = Gallery::new(dir.path().join("gallery"));
    let (m, path) = g.publish(&image, &target(None, DEF), &ctx("run1"), Some("abc")).await.unwrap();
    assert_eq!(m.version, "1.0.0");
    assert_eq!(m.template_digest.as_deref(), Some("abc"));
    assert!(path.join("regions/westeurope/replica-1.qcow2").exists());
    let (m, _) =
        g.publish(&image, &target(Some(Versioning::Latest { major: Some(Expr::Value(3)) }), DEF), &ctx("run2"), None).await.unwrap();
    assert_eq!(m.version, "3.0.0");
    let (m, _) = g.publish(&image, &target(Some(Versioning::Latest { major: None }), DEF), &ctx("run3"), None).await.unwrap();
    assert_eq!(m.version, "3.0.1");
    let (m, _) = g.publish(&image, &target(Some(Versioning::Source), DEF), &ctx("run4"), None).await.unwrap();
    assert_eq!(m.version, "12.20261129.0");
    let explicit = format!("{DEF}/versions/2.0.0");
    g.publish(&image, &target(None, &explicit), &ctx("run5"), None).await.unwrap();
    let err = g.publish(&image, &target(None, &explicit), &ctx("run6"), None).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    // excludeFromLatest keeps a version out of `latest`.
    let mut t = target(None, &format!("{DEF}/versions/99.0.0"));
    t.exclude_from_latest = Some(Expr::Value(true));
    g.publish(&image, &t, &ctx("run7"), None).await.unwrap();
    let latest = g.resolve_version(&format!("{DEF}/versions/latest")).await.unwrap();
    assert_eq!(latest.exact_version.as_deref(), Some("12.20261129.0"));
    let pinned = g.resolve_version(&format!("{DEF}/versions/99.0.0")).await.unwrap();
    assert!(Path::new(pinned.attributes["disk"].as_str().unwrap()).exists());
    // No half-written version anywhere.
    let vdir = dir.path().join("gallery/s/rg/galleries/g/images/web/versions");
    assert!(std::fs::read_dir(&vdir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));
    // A gallery version is a source like any other.
    let src = aib_local::LocalBackend::builder().state_dir(dir.path()).build().unwrap();
    let spec = ImageSource::SharedImageVersion(SharedImageVersionSource { image_version_id: format!("{DEF}/versions/latest") });
    let req = ResolveRequest::new(spec.clone());
    let r = src.backend().registry.source(&spec).unwrap().resolve(&req, &StepContext::detached("resolve").unwrap()).await.unwrap();
    assert_eq!(r.exact_version.as_deref(), Some("12.20261129.0"));
}

#[tokio::test]
async fn a_publish_leaves_nothing_behind_and_a_torn_version_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_image(dir.path(), "1.0.0").await;
    let g = Gallery::new(dir.path().join("gallery"));
    let vdir = dir.path().join("gallery/s/rg/galleries/g/images/web/versions");
    // A power loss after the rename left 1.0.0 with an empty manifest: it stays taken, and the
    // next publish takes 1.0.1 instead of failing on it for ever.
    std::fs::create_dir_all(vdir.join("1.0.0")).unwrap();
    std::fs::write(vdir.join("1.0.0/manifest.json"), "").unwrap();
    let run = ctx("run1");
    let (m, _) = g.publish(&image, &target(None, DEF), &run, None).await.unwrap();
    assert_eq!(m.version, "1.0.1");
    assert!(run.run.ledger().outstanding().is_empty(), "the staging directory is out of the ledger once in place");
    // Azure's spelling of a region is normalised as Azure does.
    let mut spaced = target(None, DEF);
    spaced.target_regions =
        Some(Expr::Value(vec![TargetRegion { name: "West US 2".into(), replica_count: None, storage_account_type: None }]));
    let (m, path) = g.publish(&image, &spaced, &ctx("run2"), None).await.unwrap();
    assert!(m.regions.contains_key("westus2") && path.join("regions/westus2/replica-0.qcow2").exists(), "{:?}", m.regions);
    // A failure after the disk was written (a `Source` version that is no version) leaves no
    // temporary directory and no ledger entry.
    let run = ctx("run3");
    let mut odd = image.clone();
    odd.source.exact_version = Some("v-odd".into());
    g.publish(&odd, &target(Some(Versioning::Source), DEF), &run, None).await.unwrap_err();
    assert!(std::fs::read_dir(&vdir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));
    assert!(run.run.ledger().outstanding().is_empty());
    // A managed image is replaced in one step; the old one's directory is gone afterwards.
    let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/web";
    let (_, first) = g.put_managed_image(&image, id, &ctx("run4"), Default::default()).await.unwrap();
    let (m, second) = g.put_managed_image(&image, id, &ctx("run5"), Default::default()).await.unwrap();
    assert_eq!((first.clone(), m.run_id.as_str()), (second, "run5"));
    let parent = first.parent().unwrap();
    assert_eq!(
        std::fs::read_dir(parent).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with('.')).count(),
        1,
        "only the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_distinct_versions() {
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(tiny_image(dir.path(), "1.0.0").await);
    let g = Gallery::new(dir.path().join("gallery"));
    let jobs: Vec<_> = (0..8)
        .map(|i| {
            let (g, image) = (g.clone(), image.clone());
            tokio::spawn(async move {
                g.publish(&image, &target(Some(Versioning::Latest { major: Some(Expr::Value(1)) }), DEF), &ctx(format!("run{i}")), None)
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for j in jobs {
        versions.push(j.await.unwrap().unwrap().0.version);
    }
    versions.sort();
    let want: Vec<String> = (0..8).map(|i| format!("1.0.{i}")).collect();
    assert_eq!(versions, want);
}

#[tokio::test]
async fn local_distributors_pass_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let image = DistributeRequest::new(tiny_image(dir.path(), "1.0.0").await).with_template_digest("abc");
    let vhd = FileDistributor::new(DiskFormat::VhdFixed, None, dir.path().join("outputs"), "disk");
    aib_testkit::conformance::distributor(&vhd, &image).await;
    let spec = aib_core::template::DistributorSpec::SharedImage(target(None, DEF));
    let sig = GalleryDistributor::from_spec(&spec, Gallery::new(dir.path().join("gallery"))).unwrap();
    aib_testkit::conformance::distributor(&sig, &image).await;
    let managed = aib_core::template::DistributorSpec::ManagedImage(aib_core::template::ManagedImageTarget {
        run_output_name: "mi".into(),
        image_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/web".into(),
        location: "westeurope".into(),
        artifact_tags: None,
    });
    let mi = GalleryDistributor::from_spec(&managed, Gallery::new(dir.path().join("gallery"))).unwrap();
    aib_testkit::conformance::distributor(&mi, &image).await;
    // Replacing a managed image keeps one.
    aib_testkit::conformance::distributor(&mi, &image).await;
    let g = Gallery::new(dir.path().join("gallery"));
    let r = g.resolve_managed("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/web").await.unwrap();
    assert!(Path::new(r.attributes["disk"].as_str().unwrap()).exists());
}
