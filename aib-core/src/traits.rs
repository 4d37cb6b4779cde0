//! The five backend traits and [`Reclaim`], which cleanup and `gc` need. Each is small,
//! object-safe and `#[async_trait]`; convenience lives on `*Ext` traits.
//!
//! # Implementing
//! Every method that runs as a step of a pipeline gets that step's [`StepContext`]: its name,
//! its output sink (lines become events and the customization log), the run's ledger and
//! cancellation. What a backend needs from the template comes in the request struct
//! ([`ResolveRequest`], [`ProvisionRequest`], [`DistributeRequest`]), so one backend value
//! serves any template. Errors are [`Error`] variants: map a private error enum into it once
//! (`impl From<MyError> for aib_core::Error`), semantic variants first. Run
//! `aib_testkit::conformance` against the implementation.

use crate::context::StepContext;
use crate::events::OutputSink;
use crate::ledger::ResourceRecord;
use crate::types::*;
use crate::{Error, Result};
use async_trait::async_trait;
use std::fmt::{Debug, Display};
use std::sync::Arc;

/// Resolves a template `source` to one exact image.
///
/// # Contract
/// - `resolve` does not create resources; it may download or build a base image into a
///   cache the backend owns.
/// - `latest` versions resolve to the newest version at call time, and the result says which
///   ([`ResolvedImage::exact_version`]).
/// - A source that does not exist is [`Error::NotFound`]; one of the wrong kind
///   (specialized, another region) is [`Error::InvalidConfig`].
#[async_trait]
pub trait Source: Debug + Display + Send + Sync + 'static {
    /// Resolves `req.spec`, in the step `resolve`.
    async fn resolve(&self, req: &ResolveRequest, ctx: &StepContext) -> Result<ResolvedImage>;
}

/// Deletes what a run recorded: all that cleanup and `gc` need from a backend.
///
/// # Contract
/// - `delete` is idempotent: deleting what is already gone succeeds. `gc` calls it for
///   records of crashed runs, possibly from another process and long after the run.
/// - It handles every record whose [`ResourceRecord::backend`] is [`Reclaim::backend`];
///   a record of a kind it does not know is [`Error::Unsupported`].
#[async_trait]
pub trait Reclaim: Debug + Send + Sync + 'static {
    /// The name in [`ResourceRecord::backend`] of the records this reclaimer deletes.
    fn backend(&self) -> &'static str;
    /// Deletes one recorded resource.
    async fn delete(&self, record: &ResourceRecord) -> Result<()>;
}

/// Starts, generalizes and captures build VMs, and deletes what it made ([`Reclaim`]).
///
/// # Contract
/// - Every resource is written to the ledger ([`StepContext::record`]) **before** it is
///   created, with [`crate::ledger::Scope::BuildVm`] for what makes up the VM, and released
///   after it is deleted. The pipeline deletes whatever remains through
///   [`Reclaim::delete`], newest first; `provision` need not clean up after itself on failure.
/// - `connect` waits for the VM to accept connections (a booting VM is normal) until its
///   own deadline, and verifies the VM's host key or certificate.
/// - `generalize` runs the deprovisioning (or the user's override script) and stops the VM.
/// - `capture` turns the stopped VM's disk into a [`CapturedImage`]; resources it creates
///   are in the ledger like any other.
/// - Its records name it ([`Reclaim::backend`]); `delete` follows [`Reclaim`]'s contract.
/// - Resume points (the step cache, optional): a provisioner that keeps them says so in
///   `checkpoints`. `provision` may then start the VM at the longest of
///   [`ProvisionRequest::resume`] it holds (disk and memory as they were after that step) and
///   says how many steps it skipped in [`BuildVm::resumed`]; a VM that resumed goes through
///   `connect` like any other, with this run's keys. `checkpoint` keeps the running VM as the
///   resume point `point` and returns `Ok(false)` when it keeps nothing (another run holds
///   the point, or the VM cannot be kept); it never changes what the build goes on with, and
///   what it keeps is never in the run's ledger once kept. The default keeps nothing.
#[async_trait]
pub trait Provisioner: Reclaim + Display {
    /// Starts a build VM, in the step `provision`.
    async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> Result<BuildVm>;
    /// Connects to it, in the step `connect`.
    async fn connect(&self, vm: &BuildVm, ctx: &StepContext) -> Result<Arc<dyn Communicator>>;
    /// Generalizes it and stops it.
    async fn generalize(&self, vm: &BuildVm, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()>;
    /// Captures its disk.
    async fn capture(&self, vm: &BuildVm, ctx: &StepContext) -> Result<CapturedImage>;
    /// Whether this provisioner keeps resume points for `req` (the step cache).
    fn checkpoints(&self, req: &ProvisionRequest) -> bool {
        let _ = req;
        false
    }
    /// Keeps the running VM as the resume point `point`, in the step after `point.step`.
    async fn checkpoint(&self, vm: &BuildVm, point: &ResumePoint, ctx: &StepContext) -> Result<bool> {
        let _ = (vm, point, ctx);
        Ok(false)
    }
}

/// A connection to a build VM.
///
/// # Contract
/// - `execute` streams every output line to `out` as it arrives and returns the exit
///   status; a non-zero exit is **not** an error (the caller decides). Transport failures
///   are errors: [`Error::Disconnected`] when the connection dropped (unless
///   [`ExecRequest::expect_disconnect`], which yields `ExitStatus { disconnected: true }`),
///   [`Error::Timeout`] past [`ExecRequest::timeout`].
/// - `upload` writes the whole file or fails, and returns the bytes written.
///   `upload_with_progress` does the same and tells `progress` the bytes sent so far (unit
///   `bytes`, never decreasing, the last report the total); the provided one reports once,
///   at the end, so a communicator that can do better overrides it.
/// - `reconnect` waits for the VM to come back after an expected disconnect.
/// - Secrets (passwords, keys) never appear in `Debug`, `Display` or errors.
#[async_trait]
pub trait Communicator: Debug + Display + Send + Sync + 'static {
    /// The guest OS on the other end.
    fn platform(&self) -> Platform;
    /// Runs a command.
    async fn execute(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus>;
    /// Uploads a file.
    async fn upload(&self, req: &UploadRequest) -> Result<u64>;
    /// Uploads a file, reporting its bytes to `progress` as they go.
    async fn upload_with_progress(&self, req: &UploadRequest, progress: &(dyn OutputSink + 'static)) -> Result<u64> {
        let n = self.upload(req).await?;
        progress.progress(n, Some(n), "bytes");
        Ok(n)
    }
    /// Reconnects after an expected disconnect.
    async fn reconnect(&self, opts: &ReconnectOptions) -> Result<()>;
}

/// One customization (or validation) step.
///
/// # Contract
/// - `run` does its work over `comm` only, writes its output to `ctx.output`, and fails with
///   [`Error::StepFailed`] (naming `ctx.name`) when the step fails on the VM.
/// - Downloads are verified against their checksum before anything is uploaded or run.
/// - A step is not retried by the pipeline unless its [`crate::pipeline::StepOptions`] say so.
/// - `fingerprint` (the step cache): a digest of everything the step's effect on the VM
///   depends on (its settings, and the bytes of every file or script it fetches, verified as
///   `run` would), or `None` when that cannot be known; the cache then stops before the step.
///   Two steps with one fingerprint must leave the same VM. The provided one is `None`.
#[async_trait]
pub trait Customizer: Debug + Display + Send + Sync + 'static {
    /// Runs the step.
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()>;
    /// What the step cache keys this step by.
    async fn fingerprint(&self, ctx: &StepContext) -> Result<Option<String>> {
        let _ = ctx;
        Ok(None)
    }
}

/// Publishes a captured image to one target.
///
/// # Contract
/// - What it creates is written to the ledger first, under the [`Reclaim`] that deletes it
///   (its own backend's, or [`crate::reclaim::FileReclaim`] for local files); once the
///   artifact is published and is the user's, its record is released with
///   [`StepContext::keep`]. A failed or cancelled publish leaves only records the pipeline
///   will delete.
/// - Distributors of one run run concurrently; they must not share mutable state without
///   synchronization.
/// - Progress goes to `ctx.output.progress`.
/// - `preflight` runs before the build VM is created, once the source is resolved: it checks
///   what can be known then (a target's region, its existence, a version already taken) and
///   creates nothing. A refusal of the template names the field relative to the target
///   ([`Error::InvalidField`]), which the pipeline locates at `properties.distribute[i]`.
#[async_trait]
pub trait Distributor: Debug + Display + Send + Sync + 'static {
    /// Checks, before the build, that `distribute` can succeed; default: nothing to check.
    async fn preflight(&self, req: &PreflightRequest, ctx: &StepContext) -> Result<()> {
        let _ = (req, ctx);
        Ok(())
    }

    /// Publishes `req.image`.
    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact>;
}

macro_rules! forward {
    ($($ptr:ident),*) => { $(
        #[async_trait]
        impl<T: Source + ?Sized> Source for $ptr<T> {
            async fn resolve(&self, req: &ResolveRequest, ctx: &StepContext) -> Result<ResolvedImage> {
                (**self).resolve(req, ctx).await
            }
        }

        #[async_trait]
        impl<T: Reclaim + ?Sized> Reclaim for $ptr<T> {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            async fn delete(&self, record: &ResourceRecord) -> Result<()> {
                (**self).delete(record).await
            }
        }

        #[async_trait]
        impl<T: Provisioner + ?Sized> Provisioner for $ptr<T> {
            async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> Result<BuildVm> {
                (**self).provision(req, ctx).await
            }
            async fn connect(&self, vm: &BuildVm, ctx: &StepContext) -> Result<Arc<dyn Communicator>> {
                (**self).connect(vm, ctx).await
            }
            async fn generalize(&self, vm: &BuildVm, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
                (**self).generalize(vm, comm, ctx).await
            }
            async fn capture(&self, vm: &BuildVm, ctx: &StepContext) -> Result<CapturedImage> {
                (**self).capture(vm, ctx).await
            }
            fn checkpoints(&self, req: &ProvisionRequest) -> bool {
                (**self).checkpoints(req)
            }
            async fn checkpoint(&self, vm: &BuildVm, point: &ResumePoint, ctx: &StepContext) -> Result<bool> {
                (**self).checkpoint(vm, point, ctx).await
            }
        }

        #[async_trait]
        impl<T: Communicator + ?Sized> Communicator for $ptr<T> {
            fn platform(&self) -> Platform {
                (**self).platform()
            }
            async fn execute(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus> {
                (**self).execute(req, out).await
            }
            async fn upload(&self, req: &UploadRequest) -> Result<u64> {
                (**self).upload(req).await
            }
            async fn upload_with_progress(&self, req: &UploadRequest, progress: &(dyn OutputSink + 'static)) -> Result<u64> {
                (**self).upload_with_progress(req, progress).await
            }
            async fn reconnect(&self, opts: &ReconnectOptions) -> Result<()> {
                (**self).reconnect(opts).await
            }
        }

        #[async_trait]
        impl<T: Customizer + ?Sized> Customizer for $ptr<T> {
            async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
                (**self).run(comm, ctx).await
            }
            async fn fingerprint(&self, ctx: &StepContext) -> Result<Option<String>> {
                (**self).fingerprint(ctx).await
            }
        }

        #[async_trait]
        impl<T: Distributor + ?Sized> Distributor for $ptr<T> {
            async fn preflight(&self, req: &PreflightRequest, ctx: &StepContext) -> Result<()> {
                (**self).preflight(req, ctx).await
            }

            async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
                (**self).distribute(req, ctx).await
            }
        }
    )* };
}
forward!(Arc, Box);

/// `dyn Source`.
pub type DynSource = dyn Source;
/// `dyn Reclaim`.
pub type DynReclaim = dyn Reclaim;
/// `dyn Provisioner`.
pub type DynProvisioner = dyn Provisioner;
/// `dyn Communicator`.
pub type DynCommunicator = dyn Communicator;
/// `dyn Customizer`.
pub type DynCustomizer = dyn Customizer;
/// `dyn Distributor`.
pub type DynDistributor = dyn Distributor;

/// Conveniences over any [`Communicator`]. Do not implement this trait yourself.
pub trait CommunicatorExt: Communicator {
    /// Runs `req`; a non-zero exit is [`Error::StepFailed`] for `step`, with the exit code.
    fn run_checked(&self, step: &str, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> impl Future<Output = Result<()>> + Send {
        async move {
            let status = self.execute(req, out).await?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::StepFailed {
                    step: step.to_string(),
                    exit_code: status.code,
                    message: format!("`{}` ended with {status}", req.command),
                })
            }
        }
    }
}

impl<T: Communicator + ?Sized> CommunicatorExt for T {}

#[cfg(test)]
fn _obj_safe(_: &dyn Source, _: &dyn Reclaim, _: &dyn Provisioner, _: &dyn Communicator, _: &dyn Customizer, _: &dyn Distributor) {}
