//! One whole run on the fakes — parse → plan → run → report — and 10,000 runs at once.
#![allow(missing_docs)]
//!
//! `cargo bench --bench pipeline`

use aib::template::ImageTemplate;
use aib::{Pipeline, RunState};
use aib_testkit::FakeBackend;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

const TEMPLATE: &str = r#"{
  "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2025-10-01", "location": "westus", "name": "bench",
  "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id": {}}},
  "properties": {
    "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
    "customize": [
      {"type": "Shell", "name": "update", "inline": ["echo apt-get update", "echo apt-get install -y nginx"]},
      {"type": "File", "name": "config", "sourceUri": "https://example.com/nginx.conf", "destination": "/tmp/nginx.conf"}
    ],
    "validate": {"inVMValidations": [{"type": "Shell", "name": "check", "inline": ["echo ok"]}]},
    "distribute": [
      {"type": "VHD", "runOutputName": "disk"},
      {"type": "SharedImage", "runOutputName": "gallery", "galleryImageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d",
       "targetRegions": [{"name": "westus", "replicaCount": 1}]}
    ]
  }
}"#;

async fn whole_run(fakes: &FakeBackend) -> RunState {
    let t = ImageTemplate::from_json(TEMPLATE).unwrap().template;
    let p = Pipeline::from_template(&t, &fakes.backend()).unwrap().build().unwrap();
    p.run().await.run_state
}

fn benches(c: &mut Criterion) {
    c.bench_function("parse+validate template", |b| b.iter(|| ImageTemplate::from_json(black_box(TEMPLATE)).unwrap()));
    let t = ImageTemplate::from_json(TEMPLATE).unwrap().template;
    c.bench_function("template digest", |b| b.iter(|| black_box(&t).digest()));
    let fakes = FakeBackend::new();
    c.bench_function("plan (from_template + build)", |b| {
        b.iter(|| Pipeline::from_template(black_box(&t), &fakes.backend()).unwrap().build().unwrap())
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let fakes = FakeBackend::new();
    c.bench_function("whole run on fakes (parse, plan, run, report)", |b| {
        b.to_async(&rt).iter(|| async { assert_eq!(whole_run(&fakes).await, RunState::Succeeded) })
    });

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut g = c.benchmark_group("concurrency");
    g.sample_size(10);
    g.bench_function("10000 concurrent runs", |b| {
        b.to_async(&rt).iter(|| async {
            let fakes = FakeBackend::new();
            let t = ImageTemplate::from_json(TEMPLATE).unwrap().template;
            let p = Pipeline::from_template(&t, &fakes.backend()).unwrap().build().unwrap();
            let handles: Vec<_> = (0..10_000).map(|_| p.start()).collect();
            for h in handles {
                assert_eq!(h.wait().await.run_state, RunState::Succeeded);
            }
            assert!(fakes.live_resources().is_empty());
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
