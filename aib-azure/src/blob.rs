//! Blob URIs and storage credentials: parsing a VHD target's URI, the environment's storage
//! credentials, and SAS signatures kept out of every message.

use crate::error::BACKEND;
use aib_core::{Error, Result};
use azure_storage::{CloudLocation, StorageCredentials};

pub(crate) fn invalid(m: String) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: "uri".into(), message: m }
}

/// A URL or message with every SAS signature (`sig=…`) replaced.
pub(crate) fn redact(s: &str) -> String {
    aib_core::redact::signatures(s)
}

/// Splits a blob URI into its location, container and blob.
pub fn parse_blob_uri(uri_with_sas: &str) -> Result<(CloudLocation, String, String, String)> {
    // Errors quote the URI without its signature.
    let shown = redact(uri_with_sas);
    let uri = shown.as_str();
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| invalid(format!("`{uri}` is not a URI")))?;
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (host, path) = rest.split_once('/').ok_or_else(|| invalid(format!("`{uri}` names no container")))?;
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(invalid(format!("`{uri}` has `.` or `..` segments")));
    }
    if let Some(account) = host.strip_suffix(".blob.core.windows.net") {
        if scheme != "https" {
            return Err(invalid("Azure storage needs https".into()));
        }
        let [container, blob @ ..] = segs.as_slice() else { return Err(invalid(format!("`{uri}` names no container"))) };
        if blob.is_empty() {
            return Err(invalid(format!("`{uri}` names no blob (give CONTAINER/NAME.vhd)")));
        }
        return Ok((CloudLocation::Public { account: account.to_string() }, account.to_string(), container.to_string(), blob.join("/")));
    }
    // Path-style endpoints (emulators): /ACCOUNT/CONTAINER/BLOB.
    let [account, container, blob @ ..] = segs.as_slice() else {
        return Err(invalid(format!("`{uri}` is not …/ACCOUNT/CONTAINER/BLOB")));
    };
    if blob.is_empty() {
        return Err(invalid(format!("`{uri}` names no blob")));
    }
    let endpoint = format!("{scheme}://{host}/{account}");
    Ok((CloudLocation::Custom { account: account.to_string(), uri: endpoint }, account.to_string(), container.to_string(), blob.join("/")))
}

/// Whether the environment's storage credentials may go to `uri`, a template's blob URI: only
/// to Azure Storage itself over https (`https://ACCOUNT.blob.core.windows.net/…`), or to an
/// endpoint the operator configured (`operator_endpoint`, such as an emulator). A template
/// never chooses the host the operator's credentials are sent to.
pub(crate) fn check_template_target(field: &str, uri: &str, operator_endpoint: Option<&str>) -> Result<()> {
    let clean = uri.split(['?', '#']).next().unwrap_or(uri);
    let azure = clean
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.strip_suffix(".blob.core.windows.net"))
        .is_some_and(|acct| !acct.is_empty() && acct.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let operator = operator_endpoint.map(|e| e.trim_end_matches('/')).is_some_and(|e| clean.starts_with(&format!("{e}/")));
    if azure || operator {
        return Ok(());
    }
    Err(Error::outside_boundary(
        field,
        format!("`{}` is not Azure Storage over https: the builder's storage credentials are never sent there", redact(clean)),
        "use https://ACCOUNT.blob.core.windows.net/CONTAINER/NAME.vhd; an emulator or another endpoint is the operator's to configure (`--storage-endpoint`)",
    ))
}

/// Storage credentials for `account` from `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`,
/// `None` when neither is set.
pub(crate) fn env_credentials_if_set(account: &str) -> Result<Option<StorageCredentials>> {
    match (std::env::var("AZURE_STORAGE_KEY"), std::env::var("AZURE_STORAGE_SAS_TOKEN")) {
        (Ok(key), _) => Ok(Some(StorageCredentials::access_key(account.to_string(), azure_core::auth::Secret::new(key)))),
        (_, Ok(sas)) => StorageCredentials::sas_token(sas).map(Some).map_err(|e| invalid(format!("AZURE_STORAGE_SAS_TOKEN: {e}"))),
        _ => Ok(None),
    }
}

/// Storage credentials for `account` from `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`.
pub(crate) fn env_credentials(account: &str) -> Result<StorageCredentials> {
    env_credentials_if_set(account)?.ok_or_else(|| Error::Unauthenticated {
        backend: BACKEND,
        source: "set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN for the VHD blob".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_uris() {
        let (loc, acct, c, b) = parse_blob_uri("https://myacct.blob.core.windows.net/vhds/images/x.vhd?sv=1").unwrap();
        assert!(matches!(loc, CloudLocation::Public { .. }));
        assert_eq!((acct.as_str(), c.as_str(), b.as_str()), ("myacct", "vhds", "images/x.vhd"));
        let (loc, acct, c, b) = parse_blob_uri("http://127.0.0.1:10000/devstoreaccount1/vhds/x.vhd").unwrap();
        assert!(matches!(loc, CloudLocation::Custom { ref uri, .. } if uri == "http://127.0.0.1:10000/devstoreaccount1"));
        assert_eq!((acct.as_str(), c.as_str(), b.as_str()), ("devstoreaccount1", "vhds", "x.vhd"));
        assert!(parse_blob_uri("http://myacct.blob.core.windows.net/vhds/x.vhd").is_err(), "https only for Azure");
        assert!(parse_blob_uri("https://myacct.blob.core.windows.net/vhds").is_err());
        assert!(parse_blob_uri("http://127.0.0.1:1/a/../b/c").is_err());
    }
}
