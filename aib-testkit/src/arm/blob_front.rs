//! The blob endpoints of the ARM test server's storage accounts: each account ARM creates is
//! an Azurite account of its own (one of [`crate::azurite::POOL`]), served through this front
//! at `http://127.0.0.1:PORT/ACCOUNT/`. Requests go on to Azurite unchanged, so Azurite still
//! checks every Shared Key and SAS signature; the front adds the account rules Azurite lacks:
//!
//! | rule | evidence |
//! |---|---|
//! | a deleted account's endpoint no longer answers, and its blobs are gone (deleting a group deletes its accounts) | Resource Groups - Delete: "all of its resources are also deleted" (resources.json); an account's blob endpoint is a DNS name of the account |
//! | an account with `allowSharedKeyAccess: false` refuses Shared Key requests with `KeyBasedAuthenticationNotPermitted`, and takes Entra ID bearer tokens (`x-ms-version` 2017-11-09 or later) | `allowSharedKeyAccess` in storage.json ("If false, then all requests, including shared access signatures, must be authorized with Azure Active Directory"); Authorize with Microsoft Entra ID, Blob REST docs |
//! | a server-side copy stays `pending` for a while, its progress growing, before `success` | Copy Blob: "x-ms-copy-status: pending … use Get Blob Properties to check the status"; Azurite completes copies at once |
//!
//! A bearer request is passed on with an account SAS of its Azurite account in place of the
//! token (Azurite takes tokens only over https): the token itself is checked only for being
//! there, as the ARM test server checks its own.

use super::storage::StorageStats;
use crate::http::{HttpServer, Request, Response};
use azure_core::auth::Secret;
use azure_storage::shared_access_signature::SasToken;
use azure_storage::shared_access_signature::account_sas::{
    AccountSasPermissions, AccountSasResource, AccountSasResourceType, AccountSharedAccessSignature,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An Azurite account handed to one ARM storage account.
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    key: String,
    shared_key: bool,
    deleted: bool,
}

#[derive(Debug, Default)]
struct FrontState {
    /// ARM id (lowercased) → slot.
    accounts: HashMap<String, Slot>,
    /// Pool accounts not handed out yet (never handed out twice).
    free: Vec<(String, String)>,
    /// Blob path → status reads left that see its copy pending.
    copies: HashMap<String, u32>,
    copy_reads: u32,
    refuse_shared_key: bool,
    shared_key_refused: usize,
    bearer_requests: usize,
    /// Deleted accounts whose containers could not be removed.
    cleanup_failures: Vec<String>,
}

/// The front: accounts, and the server answering their blob endpoints.
#[derive(Debug)]
pub(super) struct BlobFront {
    server: HttpServer,
    state: Arc<Mutex<FrontState>>,
    upstream: String,
}

fn lock(s: &Mutex<FrontState>) -> std::sync::MutexGuard<'_, FrontState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A storage service error as Blob storage answers it: `x-ms-error-code` and an XML body.
fn storage_error(status: u16, code: &str, message: &str) -> Response {
    Response::new(
        status,
        format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"),
    )
    .header("Content-Type", "application/xml")
    .header("x-ms-error-code", code)
}

/// An account SAS over every blob permission, for the resource type `path_and_query` asks for.
fn account_sas(slot: &Slot, path_and_query: &str) -> Result<String, String> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let resource_type = if path.trim_matches('/').split('/').count() < 2 {
        AccountSasResourceType::Service
    } else if query.split('&').any(|p| p.eq_ignore_ascii_case("restype=container")) {
        AccountSasResourceType::Container
    } else {
        AccountSasResourceType::Object
    };
    let all =
        AccountSasPermissions { read: true, write: true, delete: true, list: true, add: true, create: true, update: true, process: true };
    AccountSharedAccessSignature::new(
        slot.name.clone(),
        Secret::new(slot.key.clone()),
        AccountSasResource::Blob,
        resource_type,
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        all,
    )
    .token()
    .map_err(|e| e.to_string())
}

impl BlobFront {
    /// A front for the Azurite at `upstream` (`http://127.0.0.1:PORT`) whose pool accounts are
    /// `pool`; copies stay pending for `copy_reads` status reads.
    pub(super) async fn start(upstream: String, pool: Vec<(String, String)>, copy_reads: u32) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(FrontState { free: pool.into_iter().rev().collect(), copy_reads, ..FrontState::default() }));
        let http = reqwest::Client::builder().no_proxy().build().map_err(std::io::Error::other)?;
        let (st, up) = (state.clone(), upstream.clone());
        let server = HttpServer::start(move |req| forward(st.clone(), http.clone(), up.clone(), req)).await?;
        Ok(BlobFront { server, state, upstream })
    }

    /// Hands an Azurite account to the ARM account `id`; its blob endpoint and whether it takes
    /// Shared Key requests.
    pub(super) fn create(&self, id: &str, shared_key: bool) -> Result<(String, bool), String> {
        let mut s = lock(&self.state);
        let id = id.to_ascii_lowercase();
        let shared_key = shared_key && !s.refuse_shared_key;
        if let Some(slot) = s.accounts.get_mut(&id) {
            // A PUT of an existing account updates it.
            slot.shared_key = shared_key;
            return Ok((format!("{}/{}/", self.server.url(), slot.name), shared_key));
        }
        let (name, key) = s.free.pop().ok_or("every Azurite account of the test server's pool is in use")?;
        s.accounts.insert(id, Slot { name: name.clone(), key, shared_key, deleted: false });
        Ok((format!("{}/{name}/", self.server.url()), shared_key))
    }

    /// The ARM account `id` is deleted: its endpoint stops answering and its containers go.
    pub(super) fn delete(&self, id: &str) {
        let slot = {
            let mut s = lock(&self.state);
            let Some(slot) = s.accounts.get_mut(&id.to_ascii_lowercase()) else { return };
            slot.deleted = true;
            slot.clone()
        };
        let (upstream, state) = (self.upstream.clone(), self.state.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = delete_containers(&upstream, &slot).await {
                    lock(&state).cleanup_failures.push(format!("{}: {e}", slot.name));
                }
            });
        }
    }

    /// Every account takes only Entra ID tokens, as an Azure Policy forcing
    /// `allowSharedKeyAccess: false` makes it.
    pub(super) fn refuse_shared_key(&self) {
        lock(&self.state).refuse_shared_key = true;
    }

    /// What the accounts' endpoints saw.
    pub(super) fn stats(&self) -> StorageStats {
        let s = lock(&self.state);
        StorageStats {
            shared_key_refused: s.shared_key_refused,
            bearer_requests: s.bearer_requests,
            cleanup_failures: s.cleanup_failures.clone(),
        }
    }

    /// The Azurite account behind the ARM account `id`: its name and key.
    pub(super) fn azurite_account(&self, id: &str) -> Option<(String, String)> {
        lock(&self.state).accounts.get(&id.to_ascii_lowercase()).map(|s| (s.name.clone(), s.key.clone()))
    }
}

async fn delete_containers(upstream: &str, slot: &Slot) -> Result<(), String> {
    use azure_storage::{CloudLocation, StorageCredentials};
    use azure_storage_blobs::prelude::ClientBuilder;
    use futures::StreamExt;
    let creds = StorageCredentials::access_key(slot.name.clone(), Secret::new(slot.key.clone()));
    let location = CloudLocation::Custom { account: slot.name.clone(), uri: format!("{upstream}/{}", slot.name) };
    let service = ClientBuilder::with_location(location, creds).blob_service_client();
    let mut pages = service.list_containers().into_stream();
    let mut names = Vec::new();
    while let Some(page) = pages.next().await {
        names.extend(page.map_err(|e| e.to_string())?.containers.into_iter().map(|c| c.name));
    }
    for n in names {
        service.container_client(n).delete().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Headers not passed on: the hop's own (a response's `Content-Length` is kept: the server
/// states it for a `HEAD`).
fn hop_header(name: &str) -> bool {
    matches!(name, "host" | "connection" | "transfer-encoding" | "keep-alive")
}

async fn forward(state: Arc<Mutex<FrontState>>, http: reqwest::Client, upstream: String, req: Request) -> Response {
    let account = req.path.trim_start_matches('/').split(['/', '?']).next().unwrap_or_default().to_string();
    let blob_path = req.path.split('?').next().unwrap_or_default().to_string();
    let auth = req.headers.get("authorization").cloned().unwrap_or_default();
    let mut url = format!("{upstream}{}", req.path);
    let mut bearer = false;
    {
        let mut s = lock(&state);
        let Some(slot) = s.accounts.values().find(|a| a.name == account).cloned() else { return Response::dropped() };
        if slot.deleted {
            // The account's DNS name is gone with it.
            return Response::dropped();
        }
        if auth.starts_with("SharedKey ") && !slot.shared_key {
            s.shared_key_refused += 1;
            return storage_error(
                403,
                "KeyBasedAuthenticationNotPermitted",
                "Key based authentication is not permitted on this storage account.",
            );
        }
        if let Some(token) = auth.strip_prefix("Bearer ") {
            let version = req.headers.get("x-ms-version").cloned().unwrap_or_default();
            if token.trim().is_empty() || version.as_str() < "2017-11-09" {
                return storage_error(
                    401,
                    "InvalidAuthenticationInfo",
                    "Authentication information is not given in the correct format, or x-ms-version is older than 2017-11-09.",
                );
            }
            s.bearer_requests += 1;
            bearer = true;
            match account_sas(&slot, &req.path) {
                Ok(sas) => url.push_str(&format!("{}{sas}", if url.contains('?') { '&' } else { '?' })),
                Err(e) => return storage_error(500, "InternalError", &e),
            }
        }
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut out = http.request(method, &url);
    for (k, v) in &req.headers {
        if !hop_header(k) && k != "content-length" && !(bearer && k == "authorization") {
            out = out.header(k, v);
        }
    }
    let copying = req.method == "PUT" && req.headers.contains_key("x-ms-copy-source");
    let reply = match out.body(req.body).send().await {
        Ok(r) => r,
        Err(e) => return storage_error(502, "InternalError", &format!("Azurite did not answer: {}", e.without_url())),
    };
    let status = reply.status().as_u16();
    let headers: Vec<(String, String)> = reply
        .headers()
        .iter()
        .filter(|(k, _)| !hop_header(k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = reply.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    let mut resp = Response::new(status, body);
    resp.headers = headers;
    let mut s = lock(&state);
    if copying && (200..300).contains(&status) && s.copy_reads > 0 {
        // Azurite has finished: the copy is shown pending for the next status reads.
        let rounds = s.copy_reads;
        s.copies.insert(blob_path, rounds);
        set_header(&mut resp, "x-ms-copy-status", "pending".into());
    } else if req.method == "HEAD" && (200..300).contains(&status) {
        let rounds = s.copy_reads;
        // The blob's size, as the finished copy left it: the total a pending copy reports.
        let total: u64 = resp.headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        match s.copies.get_mut(&blob_path) {
            Some(0) => {
                s.copies.remove(&blob_path);
            }
            Some(left) => {
                let done = total * u64::from(rounds - *left + 1) / u64::from(rounds + 1);
                *left -= 1;
                set_header(&mut resp, "x-ms-copy-status", "pending".into());
                set_header(&mut resp, "x-ms-copy-progress", format!("{done}/{total}"));
            }
            None => {}
        }
    }
    resp
}

fn set_header(resp: &mut Response, name: &str, value: String) {
    resp.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    resp.headers.push((name.to_string(), value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sas_names_the_resource_type_asked_for() {
        let slot = Slot { name: "aibpool00".into(), key: crate::azurite::KEY.into(), shared_key: true, deleted: false };
        assert!(account_sas(&slot, "/aibpool00?comp=list").unwrap().contains("srt=s"));
        assert!(account_sas(&slot, "/aibpool00/vhds?restype=container").unwrap().contains("srt=c"));
        assert!(account_sas(&slot, "/aibpool00/vhds/x.vhd").unwrap().contains("srt=o"));
    }
}
