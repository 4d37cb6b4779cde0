//! The fakes pass the conformance suite every backend passes, rule by rule.

use aib_core::template::{ImageSource, ManagedImageSource};
use aib_core::{CapturedImage, DistributeRequest, Distributor, ProvisionRequest, ResolveRequest};
use aib_testkit::conformance::{self, Capabilities};
use aib_testkit::{FakeBackend, FakeCommunicator, Fault};

#[tokio::test]
async fn fake_communicator() {
    conformance::communicator(&FakeCommunicator::default(), &Capabilities::fake()).await;
}

#[tokio::test]
async fn fake_source() {
    let fakes = FakeBackend::new();
    conformance::source(&fakes.source(), &ResolveRequest::new(conformance::debian_spec())).await;
    let managed = ImageSource::ManagedImage(ManagedImageSource {
        image_id: "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/i".into(),
    });
    conformance::source(&fakes.source(), &ResolveRequest::new(managed)).await;
}

#[tokio::test]
async fn fake_provisioner() {
    let fakes = FakeBackend::new();
    conformance::provisioner(&fakes.provisioner(), &ProvisionRequest::new(conformance::fake_image()), &Capabilities::fake()).await;
    assert!(fakes.live_resources().is_empty());
    // With resume points.
    let fakes = FakeBackend::new().with_step_cache();
    conformance::provisioner(&fakes.provisioner(), &ProvisionRequest::new(conformance::fake_image()), &Capabilities::fake()).await;
    assert_eq!(fakes.resume_points().len(), 1);
    assert!(fakes.live_resources().is_empty());
}

#[tokio::test]
async fn fake_distributors() {
    let fakes = FakeBackend::new();
    let image = DistributeRequest::new(CapturedImage::new("img", "vhd", "fake://img", conformance::fake_image()));
    for (t, name) in [("VHD", "disk"), ("ManagedImage", "mi"), ("SharedImage", "sig")] {
        let d: Box<dyn Distributor> = Box::new(fakes.distributor(t, name));
        conformance::distributor(&*d, &image).await;
    }
    assert_eq!(fakes.artifacts().len(), 3);
}

#[tokio::test]
async fn fake_customizers() {
    let fakes = FakeBackend::new();
    let failing = fakes.customizer(&["echo before", "exit 5"]);
    let printing = fakes.customizer(&["echo conformance-marker"]);
    conformance::customizer(&failing, &printing, "conformance-marker", &FakeCommunicator::default()).await;
}

/// The suite is not a rubber stamp: a communicator that loses exit codes fails it.
#[tokio::test]
#[should_panic(expected = "[exit_code_is_a_status] exit code must come back")]
async fn suite_catches_a_communicator_that_loses_exit_codes() {
    let c = FakeCommunicator::default();
    c.faults().inject_at("exec", 0, Fault::ExitCode(0));
    conformance::exit_code_is_a_status(&c, &Capabilities::fake()).await;
}

/// … nor is the timeout rule: a command that hangs past its timeout without one fails it.
#[tokio::test(start_paused = true)]
#[should_panic(expected = "[exec_timeout_is_error_timeout]")]
async fn suite_catches_a_communicator_that_ignores_timeouts() {
    #[derive(Debug)]
    struct NoTimeout(FakeCommunicator);
    impl std::fmt::Display for NoTimeout {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("NoTimeout")
        }
    }
    #[async_trait::async_trait]
    impl aib_core::Communicator for NoTimeout {
        fn platform(&self) -> aib_core::Platform {
            self.0.platform()
        }
        async fn execute(
            &self,
            req: &aib_core::ExecRequest,
            out: &(dyn aib_core::OutputSink + 'static),
        ) -> aib_core::Result<aib_core::ExitStatus> {
            let mut r = req.clone();
            r.timeout = None;
            self.0.execute(&r, out).await
        }
        async fn upload(&self, req: &aib_core::UploadRequest) -> aib_core::Result<u64> {
            self.0.upload(req).await
        }
        async fn reconnect(&self, opts: &aib_core::ReconnectOptions) -> aib_core::Result<()> {
            self.0.reconnect(opts).await
        }
    }
    conformance::exec_timeout_is_error_timeout(&NoTimeout(FakeCommunicator::default()), &Capabilities::fake()).await;
}

/// … nor is the distributor rule: a publish that leaves its temporary record fails it.
#[tokio::test]
#[should_panic(expected = "[distribute_keeps_only_the_artifact]")]
async fn suite_catches_a_distributor_that_leaks() {
    #[derive(Debug)]
    struct Leaky;
    impl std::fmt::Display for Leaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Leaky")
        }
    }
    #[async_trait::async_trait]
    impl Distributor for Leaky {
        async fn distribute(&self, _req: &DistributeRequest, ctx: &aib_core::StepContext) -> aib_core::Result<aib_core::Artifact> {
            ctx.record(aib_core::ResourceRecord::new("fake", "file", "/tmp/leak", aib_core::Scope::Run))?;
            Ok(aib_core::Artifact::with_uri("fake://x"))
        }
    }
    conformance::distributor(&Leaky, &DistributeRequest::default()).await;
}

#[tokio::test]
async fn communicator_faults() {
    use aib_core::{Communicator, Error, ExecRequest, NullSink, ReconnectOptions};
    let c = FakeCommunicator::default();
    c.faults().inject_at("exec", 0, Fault::Disconnect);
    let err = c.execute(&ExecRequest::new("echo x"), &NullSink).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }) && err.is_retryable());
    // An expected disconnect (a restart), then a reconnect.
    let st = c.execute(&ExecRequest::new("reboot"), &NullSink).await.unwrap();
    assert!(st.disconnected && st.success());
    assert!(c.execute(&ExecRequest::new("echo x"), &NullSink).await.is_err(), "down until reconnected");
    c.reconnect(&ReconnectOptions::default()).await.unwrap();
    assert_eq!(c.reboots(), 1);
    assert!(c.execute(&ExecRequest::new("echo x"), &NullSink).await.unwrap().success());
    c.faults().inject("exec", Fault::Hang);
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        c.execute(&ExecRequest::new("x").with_timeout(std::time::Duration::from_millis(20)), &NullSink),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}
