//! The fakes pass the conformance suite every backend passes.

use aib_core::template::{ImageSource, ManagedImageSource};
use aib_core::{CapturedImage, Distributor};
use aib_testkit::conformance::{self, Capabilities};
use aib_testkit::{FakeBackend, FakeCommunicator, Fault};

#[tokio::test]
async fn fake_communicator() {
    conformance::communicator(&FakeCommunicator::default(), &Capabilities::fake()).await;
}

#[tokio::test]
async fn fake_source() {
    let fakes = FakeBackend::new();
    conformance::source(&fakes.source(), &conformance::debian_spec()).await;
    let managed = ImageSource::ManagedImage(ManagedImageSource {
        image_id: "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/i".into(),
    });
    conformance::source(&fakes.source(), &managed).await;
}

#[tokio::test]
async fn fake_provisioner() {
    let fakes = FakeBackend::new();
    conformance::provisioner(&fakes.provisioner(), conformance::fake_image(), &Capabilities::fake()).await;
    assert!(fakes.live_resources().is_empty());
}

#[tokio::test]
async fn fake_distributors() {
    let fakes = FakeBackend::new();
    let image = CapturedImage::new("img", "vhd", "fake://img", conformance::fake_image());
    for (t, name) in [("VHD", "disk"), ("ManagedImage", "mi"), ("SharedImage", "sig")] {
        let d: Box<dyn Distributor> = Box::new(fakes.distributor(t, name));
        conformance::distributor(&*d, &image).await;
    }
    assert_eq!(fakes.artifacts().len(), 3);
}

/// The suite is not a rubber stamp: a communicator that loses exit codes fails it.
#[tokio::test]
#[should_panic(expected = "exit code must come back")]
async fn suite_catches_a_broken_communicator() {
    let c = FakeCommunicator::default();
    c.faults().inject_at("exec", 1, Fault::ExitCode(0));
    conformance::communicator(&c, &Capabilities::fake()).await;
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
