//! `aib build`, `aib gc`, `aib images`, `aib warm`: the local backend from the command line, with a
//! live progress display on a terminal and plain lines otherwise.

use crate::validate::{line, read};
use aib::local::LocalBackend;
use aib::template::{ImageTemplate, ParseOptions};
use aib::{Pipeline, Provisioner, RunReport, RunState};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// How a build reports: the format of stdout, and whether stderr shows progress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub format: crate::Format,
    pub quiet: bool,
}

impl Output {
    fn machine(&self) -> bool {
        self.format != crate::Format::Text
    }
}

pub(crate) fn runtime(f: impl std::future::Future<Output = CliResult>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aib: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain: "I/O error on DIR: Permission denied (os error 13)".
            let mut shown = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                let c_shown = c.to_string();
                if !shown.contains(&c_shown) {
                    shown = format!("{shown}: {c_shown}");
                }
                cause = c.source();
            }
            eprintln!("aib: {shown}");
            ExitCode::from(2)
        }
    }
}

/// What the operator lets a template reach on this machine; a template can never widen it.
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct Boundary {
    /// Let templates read `file://` scripts and files under DIR (off by default). Repeatable.
    #[arg(long = "allow-file-root", value_name = "DIR")]
    pub file_roots: Vec<PathBuf>,
    /// Let templates' scriptUri/sourceUri come from internal addresses (loopback, link-local,
    /// private ranges) inside CIDR; by default sources come from public addresses only.
    /// Repeatable.
    #[arg(long = "allow-source-net", value_name = "CIDR")]
    pub source_nets: Vec<aib::boundary::IpNet>,
    /// Let templates write file outputs (a VHD `uri`, a LocalFile `path`) under DIR, besides
    /// the state directory's `outputs/`. Repeatable.
    #[arg(long = "allow-output-root", value_name = "DIR")]
    pub output_roots: Vec<PathBuf>,
    /// Give local build VMs outbound network (package mirrors, the internet) through passt,
    /// still without this machine's loopback services; by default a build VM reaches nothing.
    #[arg(long = "guest-outbound")]
    pub guest_outbound: bool,
    /// Boot the build VM instead of restoring a saved VM state of its base and shape (kept in
    /// the state directory's `warm/`, made by the first build; `aib warm ls|prune`).
    #[arg(long)]
    pub cold: bool,
    /// Run every customizer: neither start at a resume point of the step cache nor keep one
    /// (kept in the state directory's `cache/`; `aib cache ls|prune`).
    #[arg(long)]
    pub no_cache: bool,
}

fn backend(state_dir: Option<PathBuf>, boundary: &Boundary) -> Result<LocalBackend, aib::Error> {
    let mut b = LocalBackend::builder();
    if let Some(d) = state_dir {
        b = b.state_dir(d);
    }
    for d in &boundary.file_roots {
        b = b.allow_file_root(d);
    }
    for n in &boundary.source_nets {
        b = b.allow_source_network(*n);
    }
    for d in &boundary.output_roots {
        b = b.allow_output_root(d);
    }
    if boundary.guest_outbound {
        b = b.guest_network(aib_local::GuestNetwork::Outbound);
    }
    b.cold_boot(boundary.cold).no_step_cache(boundary.no_cache).build()
}

/// A deployment template's parameters and the deployment's subscription and resource group.
#[derive(Debug, Default, Clone)]
pub(crate) struct ArmContext {
    pub params: crate::validate::TemplateParams,
    pub subscription: Option<String>,
    pub resource_group: Option<String>,
    /// What the backend says `subscription()` and `resourceGroup()` are (Azure).
    pub context: Option<aib::template::Params>,
}

/// Reads, evaluates (a deployment template with parameters or expressions) and parses a
/// template for `types`; `Err(Ok(code))` when it is invalid (printed).
pub(crate) fn parse(
    template: &Path,
    types: aib::template::TypeNames,
    arm: &ArmContext,
    out: Output,
) -> Result<(String, ImageTemplate), CliResult> {
    let json = out.machine() || out.quiet;
    let text = read(&template.to_path_buf()).map_err(|e| Err(format!("{}: {e}", template.display()).into()))?;
    let doc = aib::template::Document::parse_with(&text, &ParseOptions::default().with_types(types));
    let doc = arm
        .params
        .evaluate(doc, arm.context.as_ref(), arm.subscription.as_deref(), arm.resource_group.as_deref(), true)
        .map_err(|e| Err(format!("{}: {e}", template.display()).into()))?;
    let parsed = match ImageTemplate::from_document(doc) {
        Ok(p) => p,
        Err(aib::Error::InvalidTemplate { diagnostics }) => {
            for d in diagnostics.iter() {
                eprintln!("{}: {}", template.display(), line(d));
            }
            return Err(Ok(ExitCode::from(1)));
        }
        Err(e) => return Err(Err(e.into())),
    };
    for w in parsed.warnings.iter() {
        if !json {
            eprintln!("{}: {}", template.display(), line(w));
        }
    }
    Ok((text, parsed.template))
}

pub(crate) async fn build(template: PathBuf, state_dir: Option<PathBuf>, boundary: Boundary, arm: ArmContext, out: Output) -> CliResult {
    // One backend: its types check the template, then it builds it.
    let local = backend(state_dir, &boundary)?;
    let (text, parsed) = match parse(&template, local.backend().registry.type_names(), &arm, out) {
        Ok(p) => p,
        Err(r) => return r,
    };
    aib::local::tools::check()?;
    let pipeline = Pipeline::from_template(&parsed, &local.backend())?
        // The gallery manifest names the template file by its bytes.
        .template_digest(aib::customizers::fetch::sha256_hex(text.as_bytes()))
        .ledger(local.ledger()?)
        .log_dir(local.log_dir())
        .build()?;
    run(pipeline, out).await
}

/// Runs a pipeline with progress (or JSON, or a JSON line per event) and Ctrl-C cancellation.
pub(crate) async fn run(pipeline: Pipeline, out: Output) -> CliResult {
    let mut run = pipeline.start();
    let cancel = run.cancellation();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\naib: cancelling (cleaning up; press Ctrl-C again to stop waiting)");
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let quiet = out.quiet || out.machine();
    let mut display = crate::display::Display::new(quiet);
    let mut events = run.events();
    while let Some(e) = events.next().await {
        if out.format == crate::Format::Jsonl {
            // Each event names itself: `{"event": "stepStarted", "step": …}`.
            println!("{}", serde_json::to_string(&e).unwrap_or_default());
        }
        display.event(&e);
    }
    display.finish_all();
    let report = run.wait().await;
    match out.format {
        crate::Format::Json => println!("{}", serde_json::to_string_pretty(&machine_report(&report)).unwrap_or_default()),
        crate::Format::Jsonl => println!("{}", serde_json::json!({ "report": machine_report(&report) })),
        crate::Format::Text => summary(&report),
    }
    Ok(match report.run_state {
        RunState::Succeeded => ExitCode::SUCCESS,
        RunState::PartiallySucceeded => ExitCode::from(3),
        _ => ExitCode::from(1),
    })
}

fn summary(r: &RunReport) {
    println!("{}: {}", r.run_state, r.message);
    if let Some(s) = &r.source {
        println!("source: {}", s.exact);
    }
    for o in &r.run_outputs {
        let what = o.artifact_uri.as_deref().or(o.artifact_id.as_deref()).unwrap_or("-");
        match &o.error {
            None => println!("output {} ({}): {what}", o.name, o.kind),
            Some(e) => println!("output {} ({}): FAILED: {e}", o.name, o.kind),
        }
        if let (Some(id), Some(uri)) = (&o.artifact_id, &o.artifact_uri) {
            println!("    id {id}\n    at {uri}");
        }
    }
    if let Some(c) = &r.cache {
        if !c.hits.is_empty() {
            println!("cache: {} step(s) taken from the step cache: {}", c.hits.len(), c.hits.join(", "));
        }
        if let Some(m) = &c.miss {
            println!("cache: miss at {m}");
        }
        if !c.kept.is_empty() {
            println!("cache: resume points kept after {}", c.kept.join(", "));
        }
        if let Some(u) = &c.uncached_from {
            println!("cache: never cached from {u}");
        }
    }
    // A kept VM's `ssh …` command is among the next steps.
    for n in r.next_steps() {
        println!("next: {n}");
    }
    if let Some(log) = &r.customization_log {
        println!("customization log: {}", log.display());
    }
    let total: Duration = r.steps.iter().map(|s| s.duration).sum();
    println!("steps: {} in {:.1}s", r.steps.len(), total.as_secs_f64());
}

/// The report as `--output json|jsonl` prints it: the library's report with the sentences of
/// [`RunReport::next_steps`] as `nextSteps` (empty on success), so a CI system can show them.
fn machine_report(r: &RunReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("nextSteps".into(), serde_json::json!(r.next_steps()));
    }
    v
}

pub(crate) async fn gc(state_dir: Option<PathBuf>, min_age: u64) -> CliResult {
    let local = backend(state_dir, &Boundary::default())?;
    let provisioner = local.provisioner();
    let p: &dyn Provisioner = &*provisioner;
    let report = local.ledger()?.gc(&[p], Duration::from_secs(min_age)).await?;
    if let Some(store) = provisioner.warm_states() {
        for s in store.prune(false).await? {
            println!("deleted expired warm state {} ({} MiB)", s.key, s.bytes >> 20);
        }
    }
    // After the warm states: resume points over a state just deleted go too.
    if let Some(cache) = provisioner.step_cache() {
        for e in cache.prune(false).await? {
            println!("deleted resume point {} after `{}` ({} MiB)", e.key, e.step, e.bytes >> 20);
        }
    }
    Ok(gc_summary(&report))
}

/// `aib cache ls` and `aib cache prune [--all]`.
pub(crate) async fn cache(state_dir: Option<PathBuf>, prune: Option<bool>) -> CliResult {
    let local = backend(state_dir, &Boundary::default())?;
    let cache = local.provisioner().step_cache().cloned().ok_or("the step cache is off")?;
    if let Some(all) = prune {
        let removed = cache.prune(all).await?;
        let bytes: u64 = removed.iter().map(|e| e.bytes).sum();
        for e in &removed {
            println!("deleted {}  after `{}`", e.key, e.step);
        }
        println!("cache: {} resume point(s) deleted, {} MiB freed", removed.len(), bytes >> 20);
        return Ok(ExitCode::SUCCESS);
    }
    let entries = cache.list().await?;
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    println!(
        "resume points ({}, {} MiB of {} MiB, least recently used first):",
        cache.dir().display(),
        total >> 20,
        cache.max_bytes() >> 20
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    for e in entries {
        let ago = now.saturating_sub(e.used_unix);
        let used = if ago < 3600 { format!("{} min", ago / 60) } else { format!("{} h", ago / 3600) };
        println!("  {}  after `{}`  {} MiB  used {used} ago", e.key, e.step, e.bytes >> 20);
    }
    Ok(ExitCode::SUCCESS)
}

/// `aib warm ls` and `aib warm prune [--all]`.
pub(crate) async fn warm(state_dir: Option<PathBuf>, prune: Option<bool>) -> CliResult {
    let local = backend(state_dir, &Boundary::default())?;
    let store = local.provisioner().warm_states().cloned().ok_or("warm states are off")?;
    if let Some(all) = prune {
        let removed = store.prune(all).await?;
        let bytes: u64 = removed.iter().map(|s| s.bytes).sum();
        for s in &removed {
            println!("deleted {}  {}  {}", s.key, s.source, s.created);
        }
        println!("warm: {} state(s) deleted, {} MiB freed", removed.len(), bytes >> 20);
        return Ok(ExitCode::SUCCESS);
    }
    println!("warm states ({}, expire after {} h):", store.dir().display(), store.max_age().as_secs() / 3600);
    for s in store.list().await? {
        let expired = if s.age() > store.max_age() { " (expired)" } else { "" };
        println!("  {}  {}  {} MiB  {}{expired}", s.key, s.source, s.bytes >> 20, s.created);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a ledger gc did; exit 1 if anything could not be deleted.
pub(crate) fn gc_summary(report: &aib::GcReport) -> ExitCode {
    for r in &report.deleted {
        println!("deleted {r}");
    }
    for (r, e) in &report.failed {
        println!("FAILED {r}: {e}");
    }
    println!(
        "gc: {} run(s) swept, {} resource(s) deleted, {} failed, {} live run(s) left alone",
        report.runs,
        report.deleted.len(),
        report.failed.len(),
        report.live_runs
    );
    if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

pub(crate) async fn images(state_dir: Option<PathBuf>, import: Option<(String, String, String, bool)>, quiet: bool) -> CliResult {
    let local = backend(state_dir, &Boundary::default())?;
    if let Some((urn, source, sha, windows)) = import {
        let progress = crate::display::transfer(&format!("download {urn}"), quiet);
        let e = local.catalog().import_reporting(&urn, &source, &sha, windows, &progress).await?;
        println!("imported {} ({} MiB, sha256 {})", e.urn, e.size >> 20, e.sha256);
        return Ok(ExitCode::SUCCESS);
    }
    println!("catalog ({}):", local.state_dir().join("catalog").display());
    for e in local.catalog().list().await? {
        println!("  {}  {} MiB  {}  {}", e.urn, e.size >> 20, e.origin, e.created);
    }
    println!("gallery ({}):", local.state_dir().join("gallery").display());
    for m in local.gallery().list().await {
        let latest = if m.exclude_from_latest { " (excluded from latest)" } else { "" };
        println!("  {}  {} MiB  from {}  {}{latest}", m.id, m.size >> 20, m.source_image, m.created);
    }
    Ok(ExitCode::SUCCESS)
}
