//! The fault matrix: for every step × {error, hang past the build timeout, cancel}, the run
//! ends in the right state with a message naming the step, and nothing is left behind (or,
//! under `abort`, exactly the build VM, which `gc` then removes).

use aib_core::template::ImageTemplate;
use aib_core::{Error, Event, Ledger, Pipeline, RunReport, RunState, Scope};
use aib_testkit::{FakeBackend, Fault};
use futures::StreamExt;
use std::time::Duration;

const TEMPLATE: &str = r#"{
  "location": "westus",
  "properties": {
    "buildTimeoutInMinutes": 30,
    "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
    "customize": [
      {"type": "Shell", "name": "first", "inline": ["echo one"]},
      {"type": "File", "name": "second", "sourceUri": "https://example.com/f", "destination": "/tmp/f"}
    ],
    "validate": {"inVMValidations": [{"type": "Shell", "name": "check", "inline": ["echo ok"]}]},
    "distribute": [
      {"type": "VHD", "runOutputName": "disk"},
      {"type": "SharedImage", "runOutputName": "gallery",
       "galleryImageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d"}
    ]
  }
}"#;

const STEPS: &[&str] = &[
    "resolve",
    "preflight",
    "provision",
    "connect",
    "customize[0] first",
    "customize[1] second",
    "validate[0] check",
    "generalize",
    "capture",
    "distribute disk",
    "distribute gallery",
];

fn template(error_handling: Option<&str>) -> ImageTemplate {
    let mut v: serde_json::Value = serde_json::from_str(TEMPLATE).unwrap();
    if let Some(a) = error_handling {
        v["properties"]["errorHandling"] = serde_json::json!({"onCustomizerError": a, "onValidationError": a});
        v["apiVersion"] = "2025-10-01".into();
    }
    ImageTemplate::from_json(&v.to_string()).unwrap().template
}

fn pipeline(fakes: &FakeBackend, t: &ImageTemplate, ledger: &Ledger) -> Pipeline {
    Pipeline::from_template(t, &fakes.backend()).unwrap().ledger(ledger.clone()).build().unwrap()
}

fn is_distribution(step: &str) -> bool {
    step.starts_with("distribute")
}

fn assert_clean(step: &str, mode: &str, fakes: &FakeBackend, report: &RunReport, ledger: &Ledger) {
    assert!(report.leftover_resources.is_empty(), "{step}/{mode}: ledger still holds {:?}", report.leftover_resources);
    assert!(report.cleanup_errors.is_empty(), "{step}/{mode}: {:?}", report.cleanup_errors);
    assert!(fakes.live_resources().is_empty(), "{step}/{mode}: left {:?}", fakes.live_resources());
    assert!(ledger.abandoned().unwrap().is_empty(), "{step}/{mode}: abandoned runs in the ledger");
}

#[tokio::test(start_paused = true)]
async fn error_at_every_step() {
    for step in STEPS {
        let fakes = FakeBackend::new();
        fakes.faults().inject(step, Fault::Fail);
        let ledger = Ledger::in_memory();
        let report = pipeline(&fakes, &template(None), &ledger).run().await;
        let expected = if is_distribution(step) { RunState::PartiallySucceeded } else { RunState::Failed };
        assert_eq!(report.run_state, expected, "{step}: {}", report.message);
        let e = report.error.as_ref().unwrap_or_else(|| panic!("{step}: a failed run has an error"));
        assert_eq!(e.step, *step, "{step}: the error names the step");
        assert!(matches!(*e.source, Error::Generic { backend: "fake", retryable: false, .. }), "{step}: the cause is kept: {:?}", e.source);
        assert!(report.message.contains(step), "{step}: the message renders the error: {}", report.message);
        let failed: Vec<_> = report.steps.iter().filter(|s| s.error.is_some()).map(|s| s.name.as_str()).collect();
        assert_eq!(failed, vec![*step], "{step}: only that step fails");
        assert_clean(step, "error", &fakes, &report, &ledger);
    }
}

#[tokio::test(start_paused = true)]
async fn every_distributor_failing_fails_the_run() {
    let fakes = FakeBackend::new();
    fakes.faults().inject("distribute disk", Fault::Fail);
    fakes.faults().inject("distribute gallery", Fault::Fail);
    let ledger = Ledger::in_memory();
    let report = pipeline(&fakes, &template(None), &ledger).run().await;
    assert_eq!(report.run_state, RunState::Failed);
    let failed: Vec<&str> = report.run_outputs.iter().filter_map(|o| o.error.as_ref()).map(|e| e.step.as_str()).collect();
    assert_eq!(failed, ["distribute disk", "distribute gallery"]);
    assert_eq!(report.error.as_ref().map(|e| e.step.as_str()), Some("distribute disk"), "the first failed target");
    assert!(report.message.contains("distribute disk") && report.message.contains("distribute gallery"));
    assert_clean("distribute", "all", &fakes, &report, &ledger);
}

#[tokio::test(start_paused = true)]
async fn hang_past_the_build_timeout_at_every_step() {
    for step in STEPS {
        let fakes = FakeBackend::new();
        fakes.faults().inject(step, Fault::Hang);
        let ledger = Ledger::in_memory();
        let report = pipeline(&fakes, &template(None), &ledger).run().await;
        assert_eq!(report.run_state, RunState::Failed, "{step}");
        let e = report.error.as_ref().unwrap_or_else(|| panic!("{step}: a timed-out run has an error"));
        assert!(matches!(*e.source, Error::Timeout { after, .. } if after == Duration::from_secs(30 * 60)), "{step}: {:?}", e.source);
        assert_eq!(e.step, *step, "{step}: the step that was running");
        assert!(report.step(step).is_some_and(|s| s.error.is_some()), "{step}: the interrupted step is in the report");
        assert!(report.message.contains("timed out after 30m") && report.message.contains(step), "{step}: {}", report.message);
        assert_clean(step, "hang", &fakes, &report, &ledger);
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_at_every_step() {
    for step in STEPS {
        let fakes = FakeBackend::new();
        fakes.faults().inject(step, Fault::Hang);
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut run = pipeline(&fakes, &template(None), &ledger).start();
        let mut events = run.events();
        let mut states = Vec::new();
        while let Some(e) = events.next().await {
            match e {
                Event::StepStarted { step: s } if s == *step => run.cancel(),
                Event::State { state, .. } => states.push(state),
                _ => {}
            }
        }
        let report = run.wait().await;
        assert_eq!(report.run_state, RunState::Canceled, "{step}: {}", report.message);
        let e = report.error.as_ref().unwrap_or_else(|| panic!("{step}: a cancelled run has an error"));
        assert!(matches!(*e.source, Error::Cancelled) && e.step == *step, "{step}: {e:?}");
        assert!(report.message.contains(step), "{step}: {}", report.message);
        assert!(states.ends_with(&[RunState::Canceling, RunState::Canceled]), "{step}: {states:?}");
        assert_clean(step, "cancel", &fakes, &report, &ledger);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{step}: the run's ledger file is removed once empty");
    }
}

#[tokio::test(start_paused = true)]
async fn abort_keeps_exactly_the_vm_and_gc_removes_it() {
    for step in ["customize[1] second", "validate[0] check"] {
        let fakes = FakeBackend::new();
        fakes.faults().inject(step, Fault::Fail);
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let report = pipeline(&fakes, &template(Some("abort")), &ledger).run().await;
        assert_eq!(report.run_state, RunState::Failed, "{step}");
        let kept = report.kept_vm.as_ref().unwrap_or_else(|| panic!("{step}: the report must say how to reach the VM"));
        assert!(report.message.contains(&kept.command) && report.message.contains("aib gc"), "{}", report.message);
        assert!(!report.leftover_resources.is_empty());
        assert!(
            report.leftover_resources.iter().all(|r| r.scope == Scope::BuildVm),
            "{step}: only the VM stays: {:?}",
            report.leftover_resources
        );
        let mut live = fakes.live_resources();
        live.sort();
        assert_eq!(live.len(), 2, "{step}: vm and its disk: {live:?}");
        assert!(live.iter().all(|l| l.starts_with("vm ") || l.starts_with("disk ")), "{live:?}");

        let abandoned = ledger.abandoned().unwrap();
        assert_eq!(abandoned.len(), 1);
        let provisioner = fakes.provisioner();
        let gc = ledger.gc(&[&provisioner], std::time::Duration::ZERO).await.unwrap();
        assert_eq!(gc.deleted.len(), 2, "{step}: {gc:?}");
        assert!(gc.failed.is_empty());
        assert!(fakes.live_resources().is_empty());
        assert!(ledger.abandoned().unwrap().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn abort_does_not_apply_to_other_steps() {
    let fakes = FakeBackend::new();
    fakes.faults().inject("capture", Fault::Fail);
    let ledger = Ledger::in_memory();
    let report = pipeline(&fakes, &template(Some("abort")), &ledger).run().await;
    assert_eq!(report.run_state, RunState::Failed);
    assert!(report.kept_vm.is_none());
    assert_clean("capture", "abort", &fakes, &report, &ledger);
}

#[tokio::test(start_paused = true)]
async fn failed_cleanup_is_reported_and_left_for_gc() {
    let fakes = FakeBackend::new();
    fakes.faults().inject("customize[0] first", Fault::Fail);
    fakes.faults().inject_times("delete", Fault::Fail, 1);
    let ledger = Ledger::in_memory();
    let report = pipeline(&fakes, &template(None), &ledger).run().await;
    assert_eq!(report.run_state, RunState::Failed);
    assert_eq!(report.cleanup_errors.len(), 1, "{:?}", report.cleanup_errors);
    assert!(report.message.contains("aib gc"));
    assert_eq!(report.leftover_resources.len(), 1);
    let gc = ledger.gc(&[&fakes.provisioner()], std::time::Duration::ZERO).await.unwrap();
    assert_eq!(gc.deleted.len(), 1);
    assert!(fakes.live_resources().is_empty());
}
