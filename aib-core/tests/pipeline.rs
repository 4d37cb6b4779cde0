//! Pipeline behaviour on the fakes: states in AIB's order, events, logs, secrets, step
//! options, validation policies, builder checks.

use aib_core::template::{ErrorAction, ImageTemplate};
use aib_core::{Event, Ledger, OutputState, Pipeline, RunState, RunSubState, StepOptions};
use aib_testkit::{Call, FakeBackend, Fault, Reply};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

fn template(extra: serde_json::Value) -> ImageTemplate {
    let mut v = serde_json::json!({
        "location": "westus",
        "name": "web",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
            "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hello world", "echo oops >&2"]}],
            "validate": {"inVMValidations": [{"type": "Shell", "name": "check", "inline": ["echo checked"]}]},
            "distribute": [{"type": "VHD", "runOutputName": "disk"}, {"type": "ManagedImage", "runOutputName": "mi",
                "imageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/web", "location": "westus"}]
        }
    });
    if let serde_json::Value::Object(m) = extra {
        for (k, val) in m {
            v["properties"][k] = val;
        }
    }
    ImageTemplate::from_json(&v.to_string()).unwrap().template
}

#[tokio::test]
async fn a_successful_run_follows_aib_states_and_streams_everything() {
    let fakes = FakeBackend::new();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::from_template(&template(serde_json::json!({})), &fakes.backend())
        .unwrap()
        .ledger(Ledger::open(dir.path().join("ledger")).unwrap())
        .log_dir(dir.path().join("runs"))
        .build()
        .unwrap();
    let mut run = pipeline.start();
    let events: Vec<Event> = run.events().collect().await;
    let report = run.wait().await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);

    let subs: Vec<_> = report.history.iter().map(|h| (h.run_state, h.run_sub_state)).collect();
    use RunState::*;
    use RunSubState::*;
    assert_eq!(
        subs,
        vec![
            (Running, Some(Queued)),
            (Running, Some(Building)),
            (Running, Some(Customizing)),
            (Running, Some(Validating)),
            (Running, Some(Distributing)),
            (Succeeded, Some(Distributing))
        ]
    );

    let steps: Vec<_> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        &steps[..8],
        &["resolve", "preflight", "provision", "connect", "customize[0] hello", "validate[0] check", "generalize", "capture"]
    );
    assert_eq!(steps.len(), 10);
    assert_eq!(report.source.as_ref().unwrap().exact_version.as_deref(), Some("12.20250101.0"));
    assert_eq!(report.output("disk").unwrap().provisioning_state, OutputState::Succeeded);
    assert_eq!(
        report.output("mi").unwrap().artifact_id.as_deref(),
        Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/web")
    );

    let lines: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { step, line, .. } => Some((step.clone(), line.clone())),
            _ => None,
        })
        .collect();
    assert!(lines.contains(&("customize[0] hello".into(), "hello world".into())), "{lines:?}");
    assert!(lines.contains(&("customize[0] hello".into(), "oops".into())));
    let created = events.iter().filter(|e| matches!(e, Event::ResourceCreated { .. })).count();
    let deleted = events.iter().filter(|e| matches!(e, Event::ResourceDeleted { .. })).count();
    assert_eq!(created, 5, "vm, disk, image, two artifacts");
    assert_eq!(deleted, 3, "artifacts are kept, the rest deleted");
    assert!(events.iter().any(|e| matches!(e, Event::Progress { unit, .. } if unit == "bytes")));
    // Every StepStarted has its StepFinished.
    let started = events.iter().filter(|e| matches!(e, Event::StepStarted { .. })).count();
    let finished = events.iter().filter(|e| matches!(e, Event::StepFinished { .. })).count();
    assert_eq!(started, finished);

    let log = std::fs::read_to_string(report.customization_log.as_ref().unwrap()).unwrap();
    assert!(log.contains("[customize[0] hello] hello world"));
    assert!(log.contains("starting step generalize"));
    assert!(report.log_tail.iter().any(|l| l.contains("hello world")));
    assert!(fakes.live_resources().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("ledger")).unwrap().count(), 0);
    // The fakes were asked in order; the generalization ran on the build VM.
    let j = fakes.journal();
    let pos = |f: &dyn Fn(&Call) -> bool| j.iter().position(f).unwrap_or_else(|| panic!("not in {j:?}"));
    let order = [
        pos(&|c| matches!(c, Call::Resolve { type_name, location } if type_name == "PlatformImage" && location == "westus")),
        pos(&|c| matches!(c, Call::Provision { .. })),
        pos(&|c| matches!(c, Call::Connect { .. })),
        pos(&|c| c.step() == Some("customize[0] hello")),
        pos(&|c| c.step() == Some("validate[0] check")),
        pos(&|c| matches!(c, Call::Generalize { .. })),
        pos(&|c| matches!(c, Call::Capture { .. })),
        pos(&|c| matches!(c, Call::Distribute { .. })),
    ];
    assert!(order.is_sorted(), "calls out of order: {order:?} in {j:?}");
    assert!(j.iter().filter_map(Call::command).any(|c| c.contains("waagent -force -deprovision+user")));
    // The report serializes as JSON with AIB's names.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["runState"], "Succeeded");
    assert_eq!(json["runOutputs"][0]["provisioningState"], "Succeeded");
}

#[tokio::test]
async fn secrets_are_masked_in_events_logs_and_errors() {
    let fakes = FakeBackend::new();
    let t = template(serde_json::json!({"customize": [{"type": "Shell", "name": "s", "inline": ["echo token=hunter2", "exit 4"]}]}));
    let p = Pipeline::from_template(&t, &fakes.backend()).unwrap().secret("hunter2").build().unwrap();
    let mut run = p.start();
    let events: Vec<Event> = run.events().collect().await;
    let report = run.wait().await;
    let all = format!("{events:?} {report:?}");
    assert!(!all.contains("hunter2"), "secret leaked");
    assert!(all.contains("token=***"));
    assert_eq!(report.run_state, RunState::Failed);
    assert!(report.message.contains("exit code 4"), "{}", report.message);
}

#[tokio::test]
async fn validation_failure_policies() {
    // Default: no distribution, Failed.
    let fakes = FakeBackend::new();
    fakes.faults().inject("validate[0] check", Fault::Fail);
    let r = Pipeline::from_template(&template(serde_json::json!({})), &fakes.backend()).unwrap().build().unwrap().run().await;
    assert_eq!(r.run_state, RunState::Failed);
    assert!(r.message.starts_with("validation failed"));
    assert!(r.run_outputs.is_empty() && fakes.artifacts().is_empty());

    // continueDistributeOnFailure: distributed, still Failed.
    let fakes = FakeBackend::new();
    fakes.faults().inject("validate[0] check", Fault::Fail);
    let t = template(
        serde_json::json!({"validate": {"continueDistributeOnFailure": true, "inVMValidations": [{"type": "Shell", "name": "check", "inline": ["x"]}]}}),
    );
    let r = Pipeline::from_template(&t, &fakes.backend()).unwrap().build().unwrap().run().await;
    assert_eq!(r.run_state, RunState::Failed);
    assert_eq!(fakes.artifacts().len(), 2);
    assert!(r.message.contains("distributed anyway"));

    // sourceValidationOnly: no customizers run.
    let fakes = FakeBackend::new();
    let t = template(
        serde_json::json!({"customize": [], "validate": {"sourceValidationOnly": true, "inVMValidations": [{"type": "Shell", "name": "check", "inline": ["x"]}]}}),
    );
    let r = Pipeline::from_template(&t, &fakes.backend()).unwrap().build().unwrap().run().await;
    assert_eq!(r.run_state, RunState::Succeeded, "{}", r.message);
    assert!(!fakes.journal().iter().filter_map(Call::step).any(|s| s.starts_with("customize")));
}

#[tokio::test(start_paused = true)]
async fn step_options_retry_and_time_out() {
    let fakes = FakeBackend::new();
    fakes.faults().inject_times("customize[0] flaky", Fault::FailRetryable, 2);
    let p = Pipeline::builder()
        .source(Arc::new(fakes.source()), aib_testkit::conformance::debian_spec())
        .provisioner(Arc::new(fakes.provisioner()))
        .customizer_named(
            "customize[0] flaky",
            Arc::new(fakes.customizer(&["echo hi"])),
            StepOptions::default().with_retries(2, Duration::from_secs(1)),
        )
        .customizer_named(
            "customize[1] slow",
            Arc::new(fakes.customizer(&["echo hi"])),
            StepOptions::default().with_timeout(Duration::from_secs(10)).with_pause_before(Duration::from_secs(1)),
        )
        .target("disk", "VHD", Arc::new(fakes.distributor("VHD", "disk")))
        .build()
        .unwrap();
    let r = p.run().await;
    assert_eq!(r.run_state, RunState::Succeeded, "{}", r.message);
    assert_eq!(r.step("customize[0] flaky").unwrap().attempts, 3);

    fakes.faults().inject("customize[1] slow", Fault::Slow(Duration::from_secs(60)));
    let r = p.run().await;
    assert_eq!(r.run_state, RunState::Failed);
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.step, "customize[1] slow");
    assert!(matches!(*e.source, aib_core::Error::Timeout { after, .. } if after == Duration::from_secs(10)), "{:?}", e.source);
    assert!(r.message.contains("customize[1] slow") && r.message.contains("timed out after 10s"), "{}", r.message);
    assert!(fakes.live_resources().is_empty());
}

#[tokio::test(start_paused = true)]
async fn step_retries_cover_retryable_errors_unless_told_otherwise() {
    let run = |options: StepOptions| async move {
        let fakes = FakeBackend::new();
        fakes.faults().inject_times("customize[0] script", Fault::Fail, 1);
        Pipeline::builder()
            .source(Arc::new(fakes.source()), aib_testkit::conformance::debian_spec())
            .provisioner(Arc::new(fakes.provisioner()))
            .customizer_named("customize[0] script", Arc::new(fakes.customizer(&["echo hi"])), options)
            .target("disk", "VHD", Arc::new(fakes.distributor("VHD", "disk")))
            .build()
            .unwrap()
            .run()
            .await
    };
    // A failed script is not a reason to run it again.
    let r = run(StepOptions::default().with_retries(3, Duration::from_secs(1))).await;
    assert_eq!(r.run_state, RunState::Failed);
    let e = r.error.as_ref().unwrap();
    assert_eq!((e.step.as_str(), e.attempts), ("customize[0] script", 1));
    assert!(!e.source.is_retryable());
    // Unless the caller says any failure may be retried.
    let r = run(StepOptions::default().with_retries(3, Duration::from_secs(1)).with_retry_on_any_error()).await;
    assert_eq!(r.run_state, RunState::Succeeded, "{}", r.message);
    assert_eq!(r.step("customize[0] script").unwrap().attempts, 2);
}

#[tokio::test]
async fn a_reader_that_never_reads_loses_lines_not_states() {
    let fakes = FakeBackend::new();
    let lines: Vec<String> = (0..50).map(|i| format!("echo line-{i}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let p = Pipeline::builder()
        .source(Arc::new(fakes.source()), aib_testkit::conformance::debian_spec())
        .provisioner(Arc::new(fakes.provisioner()))
        .customizer_named("customize[0] chatty", Arc::new(fakes.customizer(&lines)), StepOptions::default())
        .target("disk", "VHD", Arc::new(fakes.distributor("VHD", "disk")))
        .event_capacity(8)
        .build()
        .unwrap();
    let mut run = p.start();
    let events = run.events();
    // Nothing reads until the run is over.
    let report = run.wait().await;
    assert!(report.succeeded(), "{}", report.message);
    let events: Vec<Event> = events.collect().await;
    let output = events.iter().filter(|e| matches!(e, Event::Output { .. })).count();
    let dropped: u64 = events.iter().filter_map(|e| if let Event::Lagged { dropped } = e { Some(*dropped) } else { None }).sum();
    assert!(output <= 8, "at most the capacity is held: {output}");
    let progress = events.iter().filter(|e| matches!(e, Event::Progress { .. })).count();
    // 50 lines and the distribution's 2 progress events: each one delivered or counted.
    assert_eq!((output + progress) as u64 + dropped, 52, "every line is delivered or counted");
    let states = events.iter().filter(|e| matches!(e, Event::State { .. })).count();
    assert_eq!(states, report.history.len(), "no state event is ever dropped");
    let finished = events.iter().filter(|e| matches!(e, Event::StepFinished { .. })).count();
    assert_eq!(finished, report.steps.len());
}

#[tokio::test]
async fn scripted_replies_drive_a_step() {
    let fakes = FakeBackend::new();
    let p = Pipeline::from_template(&template(serde_json::json!({})), &fakes.backend())
        .unwrap()
        .on_customizer_error(ErrorAction::Cleanup)
        .build()
        .unwrap();
    // A communicator only exists once connected: script the reply through the fault table.
    fakes.faults().inject_at("exec", 0, Fault::ExitCode(100));
    let r = p.run().await;
    assert_eq!(r.run_state, RunState::Failed);
    assert!(r.message.contains("exit code 100"));
    let c = aib_testkit::FakeCommunicator::default();
    c.reply("apt-get", Reply { stdout: vec!["installed".into()], stderr: vec![], code: 0 });
    let sink = aib_core::MemorySink::new();
    use aib_core::Communicator;
    c.execute(&aib_core::ExecRequest::new("apt-get install -y nginx"), &sink).await.unwrap();
    assert_eq!(sink.lines()[0].1, "installed");
}

#[test]
fn builder_checks_everything_in_build() {
    let fakes = FakeBackend::new();
    let e = Pipeline::builder().build().unwrap_err();
    assert!(e.to_string().contains("source"), "{e}");
    let base = || {
        Pipeline::builder()
            .source(Arc::new(fakes.source()), aib_testkit::conformance::debian_spec())
            .provisioner(Arc::new(fakes.provisioner()))
    };
    assert!(base().build().unwrap_err().to_string().contains("distribute"));
    let d = || Arc::new(fakes.distributor("VHD", "x"));
    assert!(base().target("a b", "VHD", d()).build().unwrap_err().to_string().contains("runOutputName"));
    assert!(base().target("a", "VHD", d()).target("a", "VHD", d()).build().unwrap_err().to_string().contains("twice"));
    assert!(base().target("a", "VHD", d()).timeout(Duration::ZERO).build().is_err());
    assert!(base().target("a", "VHD", d()).secret("").build().is_err());
    assert!(base().target("a", "VHD", d()).build().is_ok());
}

#[test]
fn templates_with_unresolved_expressions_do_not_build() {
    let fakes = FakeBackend::new();
    let mut t = template(serde_json::json!({}));
    t.properties.build_timeout_in_minutes = Some(aib_core::template::Expr::Expression("[parameters('t')]".into()));
    let e = Pipeline::from_template(&t, &fakes.backend()).unwrap_err();
    assert!(e.to_string().contains("properties.buildTimeoutInMinutes"), "{e}");
    // A plugin type unknown to the backend is rejected with AIB's code.
    let mut t = template(serde_json::json!({}));
    t.properties.customize.push(aib_core::template::CustomizerSpec::Custom(aib_core::template::CustomSpec {
        type_name: "Ansible".into(),
        ..Default::default()
    }));
    let e = Pipeline::from_template(&t, &fakes.backend()).unwrap_err();
    assert!(e.to_string().contains("BadCustomizerType"), "{e}");
}

#[tokio::test]
async fn a_panicking_step_still_ends_in_cleanup() {
    #[derive(Debug)]
    struct Panics;
    impl std::fmt::Display for Panics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Panics")
        }
    }
    #[async_trait::async_trait]
    impl aib_core::Customizer for Panics {
        async fn run(&self, _: &(dyn aib_core::Communicator + 'static), _: &aib_core::StepContext) -> aib_core::Result<()> {
            panic!("a plugin bug")
        }
    }
    let fakes = FakeBackend::new();
    let report = Pipeline::builder()
        .source(Arc::new(fakes.source()), aib_testkit::conformance::debian_spec())
        .provisioner(Arc::new(fakes.provisioner()))
        .customizer(Arc::new(Panics))
        .target("disk", "VHD", Arc::new(fakes.distributor("VHD", "disk")))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.run_state, RunState::Failed);
    let e = report.error.as_ref().unwrap();
    assert_eq!(e.step, "customize[0] Panics");
    assert!(e.message().contains("a plugin bug"), "{e}");
    assert!(report.leftover_resources.is_empty() && fakes.live_resources().is_empty(), "the build VM was deleted after the panic");
}

/// The test template on fakes, writing its customization log under `logs`.
fn logged(logs: &std::path::Path) -> Pipeline {
    Pipeline::from_template(&template(serde_json::json!({})), &FakeBackend::new().backend()).unwrap().log_dir(logs).build().unwrap()
}

#[tokio::test]
async fn a_run_id_cannot_place_the_log_outside_the_log_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = logged(&dir.path().join("logs"));
    let report = p.run_with(aib_core::RunOptions::default().with_run_id("../../escaped")).await;
    assert_eq!(report.run_state, RunState::Failed);
    assert!(matches!(report.error.as_ref().map(|e| &*e.source), Some(aib_core::Error::InvalidConfig { .. })), "{:?}", report.error);
    assert!(!dir.path().join("escaped").exists() && !dir.path().join("logs").exists(), "nothing was created from the bad id");
    assert!(report.customization_log.is_none());
}

#[tokio::test]
async fn the_customization_log_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = logged(&dir.path().join("logs"));
    let report = p.run().await;
    let log = report.customization_log.unwrap();
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(log.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn targets_get_the_templates_digest_when_they_ask() {
    #[derive(Debug, Default)]
    struct Asks(std::sync::Mutex<Option<String>>);
    impl std::fmt::Display for Asks {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Asks")
        }
    }
    #[async_trait::async_trait]
    impl aib_core::Distributor for Asks {
        async fn distribute(&self, req: &aib_core::DistributeRequest, _: &aib_core::StepContext) -> aib_core::Result<aib_core::Artifact> {
            *self.0.lock().unwrap() = req.template_digest.get().map(str::to_string);
            Ok(aib_core::Artifact::with_uri("fake://asked"))
        }
    }
    let fakes = FakeBackend::new();
    let t = template(serde_json::json!({}));
    let asks = Arc::new(Asks::default());
    let mut b = Pipeline::from_template(&t, &fakes.backend()).unwrap();
    b = b.target("asks", "VHD", asks.clone());
    assert!(b.build().unwrap().run().await.succeeded());
    assert_eq!(asks.0.lock().unwrap().as_deref(), Some(t.digest().as_str()));
    assert_eq!(t.digest().len(), 64);
}
