//! The step cache on the fakes: resume points kept after slow steps, the longest one used,
//! hits and misses in the report, the opt-outs.

use aib_core::template::ImageTemplate;
use aib_core::{Pipeline, RESUME_POINT_MIN_STEP, RunReport, RunState, StepOptions};
use aib_testkit::{Call, FakeBackend, Fault};
use std::sync::Arc;
use std::time::Duration;

fn template(last: &str, second: &str) -> ImageTemplate {
    let v = serde_json::json!({
        "location": "westus",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
            "customize": [
                {"type": "Shell", "name": "one", "inline": ["echo one"]},
                {"type": "Shell", "name": "two", "inline": [second]},
                {"type": "Shell", "name": "three", "inline": [last]}
            ],
            "distribute": [{"type": "VHD", "runOutputName": "disk"}]
        }
    });
    ImageTemplate::from_json(&v.to_string()).unwrap().template
}

/// Steps one and two are slow enough to be worth a resume point; three is not.
fn slow_fakes() -> FakeBackend {
    let fakes = FakeBackend::new().with_step_cache();
    let slow = RESUME_POINT_MIN_STEP + Duration::from_secs(1);
    fakes.faults().inject("customize[0] one", Fault::Slow(slow));
    fakes.faults().inject("customize[1] two", Fault::Slow(slow));
    fakes
}

async fn build(fakes: &FakeBackend, t: &ImageTemplate) -> RunReport {
    let r = Pipeline::from_template(t, &fakes.backend()).unwrap().build().unwrap().run().await;
    assert_eq!(r.run_state, RunState::Succeeded, "{}", r.message);
    r
}

/// The customizers that ran in `fakes` since `from` journal entries.
fn ran(fakes: &FakeBackend, from: usize) -> Vec<String> {
    fakes.journal()[from..].iter().filter_map(Call::step).filter(|s| s.starts_with("customize")).map(str::to_string).collect()
}

#[tokio::test(start_paused = true)]
async fn a_rebuild_starts_at_the_longest_resume_point_and_runs_only_the_rest() {
    let fakes = slow_fakes();
    let r = build(&fakes, &template("echo three", "echo two")).await;
    let c = r.cache.as_ref().expect("the cache took part");
    assert_eq!(c.points.len(), 3);
    assert!(c.hits.is_empty());
    assert!(c.miss.as_deref().unwrap().starts_with("customize[0] one: "), "{:?}", c.miss);
    assert_eq!(c.kept, ["customize[0] one", "customize[1] two"], "a point after each slow step, none after the quick one");
    assert_eq!(fakes.resume_points().len(), 2);

    // The last step changed: the VM starts after `two`; only `three` runs.
    let n = fakes.journal().len();
    let r = build(&fakes, &template("echo changed", "echo two")).await;
    assert_eq!(ran(&fakes, n), ["customize[2] three"]);
    let c = r.cache.as_ref().unwrap();
    assert_eq!(c.hits, ["customize[0] one", "customize[1] two"]);
    assert!(c.miss.as_deref().unwrap().starts_with("customize[2] three: "), "{:?}", c.miss);
    assert!(r.step("customize[1] two").unwrap().cached && !r.step("customize[2] three").unwrap().cached);
    assert!(r.log_tail.iter().any(|l| l.contains("taken from the cache")), "{:?}", r.log_tail);

    // A change in the middle: the points after it do not serve (their keys chain through it).
    let n = fakes.journal().len();
    let r = build(&fakes, &template("echo changed", "echo two, changed")).await;
    assert_eq!(ran(&fakes, n), ["customize[1] two", "customize[2] three"]);
    assert_eq!(r.cache.as_ref().unwrap().hits, ["customize[0] one"]);
}

#[tokio::test(start_paused = true)]
async fn the_cache_can_be_turned_off_per_pipeline_and_per_step() {
    let fakes = slow_fakes();
    let t = template("echo three", "echo two");
    build(&fakes, &t).await;
    // Off for the pipeline: every step runs, no point is kept or used.
    let n = fakes.journal().len();
    let r = Pipeline::from_template(&t, &fakes.backend()).unwrap().cache(false).build().unwrap().run().await;
    assert!(r.succeeded() && r.cache.is_none());
    assert_eq!(ran(&fakes, n).len(), 3);

    // A step that opts out ends the chain: it and every step after it run.
    let p = Pipeline::builder()
        .source(Arc::new(fakes.source()), aib_testkit::conformance::debian_spec())
        .provisioner(Arc::new(fakes.provisioner()))
        .customizer_named("customize[0] one", Arc::new(fakes.customizer(&["echo one"])), StepOptions::default())
        .customizer_named("customize[1] two", Arc::new(fakes.customizer(&["echo two"])), StepOptions::default().without_cache())
        .customizer_named("customize[2] three", Arc::new(fakes.customizer(&["echo three"])), StepOptions::default())
        .target("disk", "VHD", Arc::new(fakes.distributor("VHD", "disk")))
        .build()
        .unwrap();
    for _ in 0..2 {
        let n = fakes.journal().len();
        let r = p.run().await;
        assert!(r.succeeded(), "{}", r.message);
        let c = r.cache.as_ref().unwrap();
        assert_eq!(c.points.len(), 1, "only the step before the opt-out is cacheable");
        assert!(c.uncached_from.as_deref().unwrap().starts_with("customize[1] two: its options opt out"), "{:?}", c.uncached_from);
        assert!(ran(&fakes, n).ends_with(&["customize[1] two".to_string(), "customize[2] three".to_string()]));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_fingerprint_or_keep_never_fails_the_build() {
    let fakes = slow_fakes();
    // The second customizer's fingerprint fails (the step `fingerprint` takes them in order).
    fakes.faults().inject_at("fingerprint", 1, Fault::Fail);
    fakes.faults().inject("checkpoint", Fault::Fail);
    let r = build(&fakes, &template("echo three", "echo two")).await;
    let c = r.cache.as_ref().unwrap();
    assert_eq!(c.points.len(), 1);
    assert!(c.uncached_from.as_deref().unwrap().contains("its fingerprint failed"), "{:?}", c.uncached_from);
    assert!(c.kept.is_empty(), "the keep failed");
    assert!(r.log_tail.iter().any(|l| l.contains("was not kept")), "{:?}", r.log_tail);
    assert!(fakes.live_resources().is_empty());
}
