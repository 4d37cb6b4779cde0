//! The one error type of aib.

use crate::template::Diagnostics;
use std::path::PathBuf;
use std::time::Duration;

/// A boxed error, as carried in `source` fields.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in aib. Backends keep private error enums and map them
/// here, to semantic variants first and to [`Error::Generic`] otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The template has errors; every one is in `diagnostics`.
    #[error("invalid template:\n{diagnostics}")]
    InvalidTemplate {
        /// What is wrong, with JSON paths.
        diagnostics: Diagnostics,
    },
    /// A builder or backend setting is wrong.
    #[error("{backend}: invalid configuration `{key}`: {message}")]
    InvalidConfig {
        /// Who rejected it.
        backend: &'static str,
        /// The setting.
        key: String,
        /// Why.
        message: String,
    },
    /// Something the run needs does not exist.
    #[error("{backend}: not found: {what}")]
    NotFound {
        /// Who looked.
        backend: &'static str,
        /// What was missing.
        what: String,
    },
    /// Something the run would create exists already.
    #[error("{backend}: already exists: {what}")]
    AlreadyExists {
        /// Who tried.
        backend: &'static str,
        /// What exists.
        what: String,
    },
    /// The backend cannot do this.
    #[error("{backend}: `{operation}` is not supported")]
    Unsupported {
        /// The operation.
        operation: String,
        /// The backend.
        backend: &'static str,
    },
    /// Credentials are missing or were refused.
    #[error("{backend}: not authenticated")]
    Unauthenticated {
        /// The backend.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Authenticated, but not allowed.
    #[error("{backend}: permission denied")]
    PermissionDenied {
        /// The backend.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// An operation ran out of time.
    #[error("`{operation}` timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// What timed out.
        operation: String,
        /// After how long.
        after: Duration,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A step ran and failed (a non-zero exit, a failed check).
    #[error("step `{step}` failed{}: {message}", exit_code.map(|c| format!(" with exit code {c}")).unwrap_or_default())]
    StepFailed {
        /// The step.
        step: String,
        /// The exit code, when a command failed.
        exit_code: Option<i32>,
        /// What happened (the last lines of output for commands).
        message: String,
    },
    /// A downloaded file does not match its `sha256Checksum`; nothing was run.
    #[error("checksum mismatch for {what}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The file.
        what: String,
        /// From the template.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The connection to the build VM dropped.
    #[error("{backend}: disconnected")]
    Disconnected {
        /// The communicator.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The service asked to slow down.
    #[error("{backend}: throttled{}", retry_after.map(|d| format!(", retry after {}", humantime::format_duration(d))).unwrap_or_default())]
    Throttled {
        /// The backend.
        backend: &'static str,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A file-system error.
    #[error("I/O error{}", path.as_ref().map(|p| format!(" on {}", p.display())).unwrap_or_default())]
    Io {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Any other backend failure.
    #[error("{backend}: {source}")]
    Generic {
        /// The backend.
        backend: &'static str,
        /// True when trying again may succeed.
        retryable: bool,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// True when the same call may succeed if tried again: a dropped connection,
    /// throttling, or a backend error marked as such.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Disconnected { .. } | Error::Throttled { .. } => true,
            Error::Generic { retryable, .. } => *retryable,
            Error::Io { source, .. } => {
                matches!(source.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
            }
            _ => false,
        }
    }

    /// A [`Error::Generic`] from any error.
    pub fn generic(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Generic { backend, retryable: false, source: source.into() }
    }

    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: Some(path.into()), source }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { path: None, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(Error::Throttled { backend: "x", retry_after: None }.is_retryable());
        assert!(!Error::Cancelled.is_retryable());
        assert!(Error::Generic { backend: "x", retryable: true, source: "boom".into() }.is_retryable());
        let e = Error::StepFailed { step: "s".into(), exit_code: Some(2), message: "m".into() };
        assert_eq!(e.to_string(), "step `s` failed with exit code 2: m");
    }
}
