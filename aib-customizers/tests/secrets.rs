//! A SAS token in a template's `sourceUri`/`scriptUri` never reaches the run's events, its
//! customization log, its report or its errors, on success and on failure.

use aib_core::template::ImageTemplate;
use aib_core::{Backend, Event, Pipeline};
use aib_testkit::FakeBackend;
use aib_testkit::http::StaticServer;
use futures::StreamExt;
use std::sync::Arc;

const SIG: &str = "s3cr3t-Signature%2Bvalue";

async fn run(t: &serde_json::Value, backend: &Backend, logs: &std::path::Path) -> (String, aib_core::RunReport) {
    let t = ImageTemplate::from_json(&t.to_string()).unwrap().template;
    let mut run = Pipeline::from_template(&t, backend).unwrap().log_dir(logs).build().unwrap().start();
    let events: Vec<Event> = run.events().collect().await;
    let report = run.wait().await;
    let log = std::fs::read_to_string(report.customization_log.as_ref().unwrap()).unwrap();
    let all = format!("{events:?}\n{report:?}\n{}\n{log}", serde_json::to_string(&report).unwrap());
    (all, report)
}

#[tokio::test]
async fn a_sas_signature_is_never_shown() {
    let web = StaticServer::start().await.unwrap();
    let url = web.put("c/app.txt", "hello");
    let fakes = FakeBackend::new();
    let backend = Backend::new(
        Arc::new(fakes.provisioner()),
        fakes.backend().registry.merge(aib_customizers::registry_with(
            aib_customizers::fetch::Fetcher::new().with_allowed_network(aib_testkit::http::loopback()),
        )),
    );
    let logs = tempfile::tempdir().unwrap();
    let template = |uri: String| {
        serde_json::json!({"location": "westus", "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
            "customize": [{"type": "File", "name": "app", "sourceUri": uri, "destination": "/tmp/app.txt"}],
            "distribute": [{"type": "VHD", "runOutputName": "disk"}]}})
    };
    // Success: the copy is reported, without the query.
    let (all, report) = run(&template(format!("{url}?sv=2024-01-01&sr=b&sig={SIG}")), &backend, logs.path()).await;
    assert!(report.succeeded(), "{}", report.message);
    assert!(all.contains("copied") && all.contains("/c/app.txt?…"), "the copy is shown without its query");
    assert!(!all.contains(SIG), "the signature leaked on success");
    // Failure: a missing blob fails the step; the error names the blob, not the signature.
    let (all, report) =
        run(&template(format!("{}/c/missing.txt?sv=1&sig={SIG}", web.put("x", "").rsplit_once('/').unwrap().0)), &backend, logs.path())
            .await;
    assert!(!report.succeeded());
    assert!(matches!(report.error.as_ref().map(|e| &*e.source), Some(aib_core::Error::NotFound { .. })), "{:?}", report.error);
    assert!(!all.contains(SIG), "the signature leaked on failure: {all}");
}
