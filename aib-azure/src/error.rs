//! ARM errors: the one place where HTTP statuses and ARM error codes become aib errors.

use aib_core::Error;
use std::fmt;
use std::time::Duration;

pub(crate) const BACKEND: &str = "azure";

/// An error as ARM reported it: status, `error.code`, `error.message`, the nested
/// `error.details[]` (where ARM puts the reason an OS provisioning or a deployment failed) and
/// the ids a support ticket asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ArmError {
    /// HTTP status (0 for a failed long-running operation reported in a body).
    pub status: u16,
    /// ARM's code (`AllocationFailed`, `SkuNotAvailable`, `RequestDisallowedByPolicy`…).
    pub code: String,
    /// ARM's message, unchanged.
    pub message: String,
    /// `error.details[]`, flattened depth first: `(code, message)`.
    pub details: Vec<(String, String)>,
    /// The request, `METHOD path`.
    pub request: String,
    /// `x-ms-request-id` of the answer, when ARM sent one.
    pub request_id: Option<String>,
    /// `x-ms-correlation-request-id` of the answer, when ARM sent one.
    pub correlation_id: Option<String>,
}

impl ArmError {
    /// An error with `code` and `message` for the request `request` (`METHOD path`).
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>, request: impl Into<String>) -> Self {
        ArmError { status, code: code.into(), message: message.into(), request: request.into(), ..Default::default() }
    }

    /// Reads ARM's error body (`{error:{code,message,details}}` or the bare pre-2021 form).
    pub(crate) fn from_body(status: u16, body: &[u8], request: impl Into<String>) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let mut e = Self::from_value(status, &v, request);
        if e.message.is_empty() && !v.is_object() {
            e.message = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
        }
        if e.code.is_empty() {
            e.code = format!("HTTP{status}");
        }
        e
    }

    /// Reads an error object (a body, or a failed operation's status body).
    pub(crate) fn from_value(status: u16, v: &serde_json::Value, request: impl Into<String>) -> Self {
        let e = if v["error"].is_object() { &v["error"] } else { v };
        let mut details = Vec::new();
        collect_details(&e["details"], &mut details);
        ArmError {
            status,
            code: e["code"].as_str().unwrap_or_default().to_string(),
            message: e["message"].as_str().unwrap_or_default().to_string(),
            details,
            request: request.into(),
            ..Default::default()
        }
    }

    /// Keeps the support ids of the answer's headers.
    pub(crate) fn with_ids(mut self, request_id: Option<String>, correlation_id: Option<String>) -> Self {
        self.request_id = request_id;
        self.correlation_id = correlation_id;
        self
    }

    /// Whether ARM said the request may simply be sent again: a 409 for an operation still
    /// in progress on the same resource (`AnotherOperationInProgress`, the network provider's
    /// `RetryableError`, a preempted operation).
    pub fn is_transient_conflict(&self) -> bool {
        self.status == 409 && TRANSIENT_CONFLICTS.iter().any(|c| self.code.eq_ignore_ascii_case(c))
    }
}

/// The 409 codes ARM uses for "another operation is in progress; try again".
const TRANSIENT_CONFLICTS: &[&str] =
    &["AnotherOperationInProgress", "RetryableError", "OperationPreempted", "ConflictingOperationInProgress"];

fn collect_details(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    for d in v.as_array().into_iter().flatten().take(32) {
        let code = d["code"].as_str().unwrap_or_default().to_string();
        let message = d["message"].as_str().unwrap_or_default().to_string();
        if !(code.is_empty() && message.is_empty()) {
            out.push((code, message));
        }
        collect_details(&d["details"], out);
    }
}

impl fmt::Display for ArmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        for (code, message) in &self.details {
            write!(f, "; {code}: {message}")?;
        }
        write!(f, " ({}", self.request)?;
        if self.status != 0 {
            write!(f, ", HTTP {}", self.status)?;
        }
        if let Some(id) = &self.request_id {
            write!(f, ", x-ms-request-id {id}")?;
        }
        if let Some(id) = &self.correlation_id {
            write!(f, ", x-ms-correlation-request-id {id}")?;
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

/// Whether the call may be tried again.
pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The ARM error an aib error carries (as its source, or further down its chain).
pub(crate) fn arm_error(e: &Error) -> Option<&ArmError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(a) = c.downcast_ref::<ArmError>() {
            return Some(a);
        }
        cur = c.source();
    }
    None
}

/// What to change when ARM refused a build VM of `size` in `location` for want of capacity:
/// a size the region does not offer, a cores quota used up, or no capacity right now.
pub(crate) fn capacity_hint(e: &Error, size: &str, location: &str) -> Option<String> {
    let arm = arm_error(e)?;
    let code = arm.code.as_str();
    let quota = arm.message.to_ascii_lowercase().contains("quota");
    Some(match code {
        "SkuNotAvailable" => format!(
            "{size} is not offered in {location} to this subscription: set properties.vmProfile.vmSize to a size it offers \
             (az vm list-skus --location {location} --resource-type virtualMachines --output table), or build in another region"
        ),
        "OperationNotAllowed" | "QuotaExceeded" if quota => format!(
            "the subscription's cores quota in {location} is used up: ask for more (Azure portal, Quotas), wait for other VMs to \
             go, or choose a smaller properties.vmProfile.vmSize"
        ),
        "AllocationFailed" | "ZonalAllocationFailed" | "OverconstrainedAllocationRequest" => format!(
            "Azure has no capacity for {size} in {location} right now: build again later, or set another \
             properties.vmProfile.vmSize or region"
        ),
        _ => return None,
    })
}

/// Maps an ARM failure to aib's error, semantic variants first.
pub(crate) fn classify(e: ArmError, retry_after: Option<Duration>) -> Error {
    if e.is_transient_conflict() {
        return Error::Generic { backend: BACKEND, retryable: true, source: Box::new(e) };
    }
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
        ArmError::new(status, code, "m", "GET /x")
    }

    #[test]
    fn classification() {
        assert!(matches!(classify(arm(429, "TooManyRequests"), None), Error::Throttled { .. }));
        assert!(matches!(classify(arm(403, "RequestDisallowedByPolicy"), None), Error::PermissionDenied { .. }));
        assert!(matches!(classify(arm(404, "ResourceGroupNotFound"), None), Error::NotFound { .. }));
        let e = classify(arm(0, "AllocationFailed"), None);
        assert!(!e.is_retryable() && e.to_string().contains("AllocationFailed"), "{e}");
        assert!(classify(arm(503, "ServiceUnavailable"), None).is_retryable());
        let e = ArmError::from_body(400, br#"{"error":{"code":"SkuNotAvailable","message":"no"}}"#, "PUT /x");
        assert_eq!((e.code.as_str(), e.message.as_str()), ("SkuNotAvailable", "no"));
        assert_eq!(ArmError::from_body(400, br#"{"code":"Old","message":"bare"}"#, "PUT /x").code, "Old");
        assert_eq!(ArmError::from_body(411, b"<h2>Length Required</h2>", "POST /x").code, "HTTP411");
        assert!(classify(arm(409, "AnotherOperationInProgress"), None).is_retryable());
        assert!(!classify(arm(409, "Conflict"), None).is_retryable());
    }

    #[test]
    fn details_and_support_ids_are_kept() {
        let body = br#"{"error":{"code":"DeploymentFailed","message":"At least one resource deployment operation failed.",
            "details":[{"code":"OSProvisioningTimedOut","message":"OS Provisioning for VM 'vm' did not finish in the allotted time.",
                        "details":[{"code":"Inner","message":"deeper"}]}]}}"#;
        let e = ArmError::from_body(400, body, "PUT /vm").with_ids(Some("req-1".into()), Some("corr-2".into()));
        assert_eq!(e.details.len(), 2);
        let s = e.to_string();
        for part in ["DeploymentFailed", "OSProvisioningTimedOut", "deeper", "x-ms-request-id req-1", "x-ms-correlation-request-id corr-2"]
        {
            assert!(s.contains(part), "{part} missing from {s}");
        }
    }
}
