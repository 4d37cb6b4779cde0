//! The mockall mocks script a pipeline call by call (feature `mock`).
#![cfg(feature = "mock")]

use aib_core::template::ImageSource;
use aib_core::{Artifact, CapturedImage, Pipeline, ResolvedImage, RunState};
use aib_testkit::mock::{MockDistributor, MockProvisioner, MockSource};
use std::sync::Arc;

#[tokio::test]
async fn a_pipeline_over_mocks_fails_cleanly_where_the_mock_says() {
    let mut source = MockSource::new();
    source.expect_resolve().times(1).returning(|_, _| Ok(ResolvedImage::new("PlatformImage", "a", "a:1")));
    source.expect_fmt().returning(|f| f.write_str("MockSource"));
    let mut prov = MockProvisioner::new();
    prov.expect_backend().return_const("mock");
    prov.expect_provision().times(1).returning(|_, _| Err(aib_core::Error::generic("mock", "AllocationFailed")));
    prov.expect_connect().never();
    prov.expect_fmt().returning(|f| f.write_str("MockProvisioner"));
    let mut dist = MockDistributor::new();
    dist.expect_distribute().never().returning(|_: &CapturedImage, _| Ok(Artifact::default()));
    dist.expect_fmt().returning(|f| f.write_str("MockDistributor"));
    let report = Pipeline::builder()
        .source(Arc::new(source), ImageSource::default())
        .provisioner(Arc::new(prov))
        .target("out", "VHD", Arc::new(dist))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.run_state, RunState::Failed);
    assert!(report.message.contains("step `provision` failed") && report.message.contains("AllocationFailed"), "{}", report.message);
}
