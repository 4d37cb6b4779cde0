//! The mockall mocks script a pipeline call by call (feature `mock`): where the order of
//! calls is the contract (cleanup newest first, nothing after a failed provision), a
//! `Sequence` says so exactly.
#![cfg(feature = "mock")]

use aib_core::template::ImageSource;
use aib_core::{
    AccessInfo, Artifact, BuildVm, CapturedImage, Communicator, Error, Pipeline, ResolvedImage, ResourceRecord, RunState, RunSubState,
    Scope,
};
use aib_testkit::FakeCommunicator;
use aib_testkit::mock::{MockCustomizer, MockDistributor, MockProvisioner, MockSource};
use mockall::Sequence;
use std::sync::Arc;

fn source(times: usize) -> MockSource {
    let mut source = MockSource::new();
    source.expect_resolve().times(times).returning(|_, _| Ok(ResolvedImage::new("PlatformImage", "a", "a:1")));
    source.expect_fmt().returning(|f| f.write_str("MockSource"));
    source
}

#[tokio::test]
async fn a_pipeline_over_mocks_fails_cleanly_where_the_mock_says() {
    let mut prov = MockProvisioner::new();
    prov.expect_backend().return_const("mock");
    prov.expect_provision().times(1).returning(|_, _| Err(Error::generic("mock", "AllocationFailed")));
    prov.expect_connect().never();
    prov.expect_fmt().returning(|f| f.write_str("MockProvisioner"));
    let mut dist = MockDistributor::new();
    dist.expect_distribute().never();
    dist.expect_fmt().returning(|f| f.write_str("MockDistributor"));
    let report = Pipeline::builder()
        .source(Arc::new(source(1)), ImageSource::default())
        .provisioner(Arc::new(prov))
        .target("out", "VHD", Arc::new(dist))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.run_state, RunState::Failed);
    let e = report.error.expect("the run's error");
    assert_eq!((e.step.as_str(), e.phase, e.attempts), ("provision", RunSubState::Building, 1));
    assert!(matches!(*e.source, Error::Generic { backend: "mock", .. }), "{:?}", e.source);
    assert!(report.message.contains("step `provision` failed") && report.message.contains("AllocationFailed"), "{}", report.message);
}

#[tokio::test]
async fn every_backend_call_comes_in_aib_order_and_cleanup_deletes_newest_first() {
    let mut seq = Sequence::new();
    let mut prov = MockProvisioner::new();
    let mut step = MockCustomizer::new();
    let mut dist = MockDistributor::new();
    prov.expect_backend().return_const("mock");
    prov.expect_fmt().returning(|f| f.write_str("MockProvisioner"));
    step.expect_fmt().returning(|f| f.write_str("MockCustomizer"));
    dist.expect_fmt().returning(|f| f.write_str("MockDistributor"));
    prov.expect_provision().times(1).in_sequence(&mut seq).returning(|req, ctx| {
        assert_eq!(ctx.name, "provision");
        let id = ctx.record(ResourceRecord::new("mock", "vm", "vm-1", Scope::BuildVm))?;
        Ok(BuildVm::new("vm-1", id, req.image.platform, AccessInfo::default()))
    });
    prov.expect_connect().times(1).in_sequence(&mut seq).returning(|_, ctx| {
        assert_eq!(ctx.name, "connect");
        Ok(Arc::new(FakeCommunicator::default()) as Arc<dyn Communicator>)
    });
    step.expect_run().times(1).in_sequence(&mut seq).returning(|_, ctx| {
        assert_eq!(ctx.name, "customize[0] MockCustomizer");
        Ok(())
    });
    prov.expect_generalize().times(1).in_sequence(&mut seq).returning(|_, _, _| Ok(()));
    prov.expect_capture().times(1).in_sequence(&mut seq).returning(|vm, ctx| {
        ctx.record(ResourceRecord::new("mock", "disk", "disk-1", Scope::Run))?;
        Ok(CapturedImage::new("disk-1", "vhd", "mock://disk-1", ResolvedImage::default()).tap_platform(vm))
    });
    dist.expect_distribute().times(1).in_sequence(&mut seq).returning(|req, ctx| {
        assert_eq!((req.run_output_name.as_str(), req.template_name.as_str(), req.location.as_str()), ("out", "web", "westus"));
        assert_eq!(req.tags.get("aibRunId").map(String::as_str), Some(ctx.run_id()));
        Ok(Artifact::with_uri("mock://out.vhd"))
    });
    // Cleanup: the capture's disk, then the VM.
    prov.expect_delete().withf(|r| r.name == "disk-1").times(1).in_sequence(&mut seq).returning(|_| Ok(()));
    prov.expect_delete().withf(|r| r.name == "vm-1").times(1).in_sequence(&mut seq).returning(|_| Ok(()));
    let report = Pipeline::builder()
        .name("web")
        .location("westus")
        .source(Arc::new(source(1)), ImageSource::default())
        .provisioner(Arc::new(prov))
        .customizer(Arc::new(step))
        .target("out", "VHD", Arc::new(dist))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);
    assert!(report.error.is_none() && report.leftover_resources.is_empty());
}

trait TapPlatform {
    fn tap_platform(self, vm: &BuildVm) -> Self;
}

impl TapPlatform for CapturedImage {
    fn tap_platform(mut self, vm: &BuildVm) -> Self {
        self.platform = vm.platform;
        self
    }
}
