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
    /// One field of a template step or target has a value the backend refuses (the operator's
    /// settings, a backend rule). `field` is relative to the step (`scriptUri`, `path`);
    /// [`crate::PipelineBuilder::from_template`] turns it into
    /// [`Error::InvalidTemplate`] at the field's JSON path.
    #[error("{field}: {code}: {message} ({hint})")]
    InvalidField {
        /// The field, relative to its step or target.
        field: String,
        /// Why, as a diagnostic code.
        code: crate::template::Code,
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
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

    /// The same error with every secret `mask` hides replaced, in its text fields and its
    /// causes. A cause whose text holds a secret is replaced by its masked text (its type is
    /// lost, its meaning kept); the variant always stays, so callers still `match` on it.
    pub(crate) fn masked(self, mask: &dyn Fn(&str) -> String) -> Self {
        let source = |b: BoxError| -> BoxError {
            let text = error_chain(&*b);
            let m = mask(&text);
            if m == text { b } else { m.into() }
        };
        match self {
            Error::InvalidConfig { backend, key, message } => Error::InvalidConfig { backend, key, message: mask(&message) },
            Error::InvalidField { field, code, message, hint } => Error::InvalidField { field, code, message: mask(&message), hint },
            Error::NotFound { backend, what } => Error::NotFound { backend, what: mask(&what) },
            Error::AlreadyExists { backend, what } => Error::AlreadyExists { backend, what: mask(&what) },
            Error::Unsupported { operation, backend } => Error::Unsupported { operation: mask(&operation), backend },
            Error::Unauthenticated { backend, source: s } => Error::Unauthenticated { backend, source: source(s) },
            Error::PermissionDenied { backend, source: s } => Error::PermissionDenied { backend, source: source(s) },
            Error::Timeout { operation, after } => Error::Timeout { operation: mask(&operation), after },
            Error::StepFailed { step, exit_code, message } => Error::StepFailed { step: mask(&step), exit_code, message: mask(&message) },
            Error::ChecksumMismatch { what, expected, actual } => Error::ChecksumMismatch { what: mask(&what), expected, actual },
            Error::Disconnected { backend, source: s } => Error::Disconnected { backend, source: source(s) },
            Error::Generic { backend, retryable, source: s } => Error::Generic { backend, retryable, source: source(s) },
            Error::Io { path, source: s } => {
                let text = s.to_string();
                let m = mask(&text);
                Error::Io { path, source: if m == text { s } else { std::io::Error::new(s.kind(), m) } }
            }
            e @ (Error::InvalidTemplate { .. } | Error::Cancelled | Error::Throttled { .. }) => e,
        }
    }

    /// An [`Error::InvalidField`] with code [`crate::template::Code::OutsideBoundary`].
    pub fn outside_boundary(field: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            code: crate::template::Code::OutsideBoundary,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// This error as a template diagnostic at `path` (the step or target the field belongs
    /// to), when it is an [`Error::InvalidField`]; other errors are returned unchanged.
    pub fn at(self, path: &str) -> Self {
        match self {
            Error::InvalidField { field, code, message, hint } => {
                let d = crate::template::Diagnostic::error(format!("{path}.{field}"), code, message).with_hint(hint);
                Error::InvalidTemplate { diagnostics: Diagnostics(vec![d]) }
            }
            e => e,
        }
    }

    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: Some(path.into()), source }
    }
}

/// An error with its `source` chain, on one line (causes already in the text are skipped).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
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

    #[test]
    fn masking_keeps_the_variant_and_hides_the_secret_everywhere() {
        let mask = |s: &str| s.replace("hunter2", "***");
        let e = Error::StepFailed { step: "s".into(), exit_code: Some(4), message: "token=hunter2".into() }.masked(&mask);
        assert!(matches!(&e, Error::StepFailed { exit_code: Some(4), message, .. } if message == "token=***"));
        let e = Error::Generic { backend: "x", retryable: true, source: "bad key hunter2".into() }.masked(&mask);
        assert!(e.is_retryable() && !format!("{e:?} {e}").contains("hunter2"), "{e:?}");
        let clean: BoxError = Box::new(std::fmt::Error);
        let e = Error::Generic { backend: "x", retryable: false, source: clean }.masked(&mask);
        let Error::Generic { source, .. } = &e else { unreachable!() };
        assert!(source.downcast_ref::<std::fmt::Error>().is_some(), "a cause without secrets keeps its type");
    }
}
