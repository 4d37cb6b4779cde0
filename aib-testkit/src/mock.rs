//! `mockall` mocks of every core trait (feature `mock`), for tests that script calls one by
//! one and check their order.
//!
//! ```
//! use aib_testkit::mock::MockSource;
//! use aib_core::{ResolvedImage, Source};
//! let mut s = MockSource::new();
//! s.expect_resolve().returning(|_, _| Ok(ResolvedImage::new("PlatformImage", "a", "b")));
//! s.expect_fmt().returning(|f| f.write_str("MockSource"));
//! # let _: &dyn Source = &s;
//! ```

#![allow(missing_docs, missing_debug_implementations, unused_parens)]

use aib_core::{
    Artifact, BuildVm, CapturedImage, Communicator, DistributeRequest, ExecRequest, ExitStatus, OutputSink, Platform, ProvisionRequest,
    ReconnectOptions, ResolveRequest, ResolvedImage, ResourceRecord, Result, StepContext, UploadRequest,
};
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;

mockall::mock! {
    pub Source {}
    #[async_trait]
    impl aib_core::Source for Source {
        async fn resolve(&self, req: &ResolveRequest, ctx: &StepContext) -> Result<ResolvedImage>;
    }
    impl fmt::Display for Source {
        fn fmt<'a>(&self, f: &mut fmt::Formatter<'a>) -> fmt::Result;
    }
}

mockall::mock! {
    pub Provisioner {}
    #[async_trait]
    impl aib_core::Reclaim for Provisioner {
        fn backend(&self) -> &'static str;
        async fn delete(&self, record: &ResourceRecord) -> Result<()>;
    }
    #[async_trait]
    impl aib_core::Provisioner for Provisioner {
        async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> Result<BuildVm>;
        async fn connect(&self, vm: &BuildVm, ctx: &StepContext) -> Result<Arc<dyn Communicator>>;
        async fn generalize(&self, vm: &BuildVm, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()>;
        async fn capture(&self, vm: &BuildVm, ctx: &StepContext) -> Result<CapturedImage>;
    }
    impl fmt::Display for Provisioner {
        fn fmt<'a>(&self, f: &mut fmt::Formatter<'a>) -> fmt::Result;
    }
}

mockall::mock! {
    pub Communicator {}
    #[async_trait]
    impl aib_core::Communicator for Communicator {
        fn platform(&self) -> Platform;
        async fn execute(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus>;
        async fn upload(&self, req: &UploadRequest) -> Result<u64>;
        async fn reconnect(&self, opts: &ReconnectOptions) -> Result<()>;
    }
    impl fmt::Display for Communicator {
        fn fmt<'a>(&self, f: &mut fmt::Formatter<'a>) -> fmt::Result;
    }
}

mockall::mock! {
    pub Customizer {}
    #[async_trait]
    impl aib_core::Customizer for Customizer {
        async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()>;
    }
    impl fmt::Display for Customizer {
        fn fmt<'a>(&self, f: &mut fmt::Formatter<'a>) -> fmt::Result;
    }
}

mockall::mock! {
    pub Distributor {}
    #[async_trait]
    impl aib_core::Distributor for Distributor {
        async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact>;
    }
    impl fmt::Display for Distributor {
        fn fmt<'a>(&self, f: &mut fmt::Formatter<'a>) -> fmt::Result;
    }
}

macro_rules! debug_mock {
    ($($t:ident),*) => { $(impl fmt::Debug for $t {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(stringify!($t)) }
    })* };
}
debug_mock!(MockSource, MockProvisioner, MockCommunicator, MockCustomizer, MockDistributor);
