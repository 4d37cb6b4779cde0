//! ARM errors: the one place where HTTP statuses and ARM error codes become aib errors.

use aib_core::Error;
use std::fmt;
use std::time::Duration;

pub(crate) const BACKEND: &str = "azure";

/// An error as ARM reported it: status, `error.code`, `error.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmError {
    /// HTTP status (0 for a failed long-running operation reported in a body).
    pub status: u16,
    /// ARM's code (`AllocationFailed`, `SkuNotAvailable`, `RequestDisallowedByPolicy`…).
    pub code: String,
    /// ARM's message, unchanged.
    pub message: String,
    /// The request, `METHOD path`.
    pub request: String,
}

impl fmt::Display for ArmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({}", self.code, self.message, self.request)?;
        if self.status != 0 {
            write!(f, ", HTTP {}", self.status)?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ArmError {}

/// Errors of the Azure backend outside ARM's own (which are [`ArmError`]): Blob storage
/// calls, mapped once into [`aib_core::Error`] by their HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzureError {
    /// A Blob storage call failed.
    #[error("{what}")]
    Blob {
        /// What was being done (`writing the page at 512`, `creating container vhds in acct`).
        what: String,
        /// The SDK's error.
        #[source]
        source: azure_core::Error,
    },
}

impl AzureError {
    /// A Blob storage failure while doing `what`.
    pub fn blob(what: impl Into<String>, source: azure_core::Error) -> Self {
        AzureError::Blob { what: what.into(), source }
    }
}

/// The HTTP status of a storage SDK error, when the service answered.
pub(crate) fn blob_status(e: &azure_core::Error) -> Option<u16> {
    e.as_http_error().map(|h| u16::from(h.status()))
}

/// True when `e` is the service's 409 with error code `code` (`ContainerAlreadyExists`).
pub(crate) fn is_conflict(e: &azure_core::Error, code: &str) -> bool {
    e.as_http_error().is_some_and(|h| u16::from(h.status()) == 409 && h.error_code() == Some(code))
}

impl From<AzureError> for Error {
    fn from(e: AzureError) -> Self {
        let AzureError::Blob { source, .. } = &e;
        match blob_status(source) {
            Some(401) => Error::Unauthenticated { backend: BACKEND, source: Box::new(e) },
            Some(403) => Error::PermissionDenied { backend: BACKEND, source: Box::new(e) },
            Some(404) => Error::NotFound { backend: BACKEND, what: aib_core::report::error_chain(&e) },
            Some(429) => Error::Throttled { backend: BACKEND, retry_after: None },
            // No answer at all (a dropped connection, a timeout) may work the next time.
            status => Error::Generic { backend: BACKEND, retryable: status.is_none_or(retryable_status), source: Box::new(e) },
        }
    }
}

/// Reads `{error:{code,message}}` (or the bare pre-2021 `{code,message}`).
pub(crate) fn parse_body(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let e = if v["error"].is_object() { &v["error"] } else { &v };
    let code = e["code"].as_str().unwrap_or_default().to_string();
    let message =
        e["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned());
    (code, message)
}

/// Whether the call may be tried again.
pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Maps an ARM failure to aib's error, semantic variants first.
pub(crate) fn classify(e: ArmError, retry_after: Option<Duration>) -> Error {
    match (e.status, e.code.as_str()) {
        (429, _) => Error::Throttled { backend: BACKEND, retry_after },
        (401, _) => Error::Unauthenticated { backend: BACKEND, source: Box::new(e) },
        (403, _) | (_, "RequestDisallowedByPolicy") | (_, "AuthorizationFailed") | (_, "LinkedAuthorizationFailed") => {
            Error::PermissionDenied { backend: BACKEND, source: Box::new(e) }
        }
        (404, _) | (_, "ResourceNotFound") | (_, "ResourceGroupNotFound") | (_, "NotFound") => {
            Error::NotFound { backend: BACKEND, what: e.to_string() }
        }
        (s, _) => Error::Generic { backend: BACKEND, retryable: retryable_status(s), source: Box::new(e) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(status: u16, code: &str) -> ArmError {
        ArmError { status, code: code.into(), message: "m".into(), request: "GET /x".into() }
    }

    #[test]
    fn classification() {
        assert!(matches!(classify(arm(429, "TooManyRequests"), None), Error::Throttled { .. }));
        assert!(matches!(classify(arm(403, "RequestDisallowedByPolicy"), None), Error::PermissionDenied { .. }));
        assert!(matches!(classify(arm(404, "ResourceGroupNotFound"), None), Error::NotFound { .. }));
        let e = classify(arm(0, "AllocationFailed"), None);
        assert!(!e.is_retryable() && e.to_string().contains("AllocationFailed"), "{e}");
        assert!(classify(arm(503, "ServiceUnavailable"), None).is_retryable());
        assert_eq!(parse_body(br#"{"error":{"code":"SkuNotAvailable","message":"no"}}"#), ("SkuNotAvailable".into(), "no".into()));
        assert_eq!(parse_body(br#"{"code":"Old","message":"bare"}"#).0, "Old");
    }
}
