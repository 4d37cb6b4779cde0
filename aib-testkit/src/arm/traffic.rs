//! The ARM test server's exchanges written as `oav validate-traffic` payloads: one JSON file
//! per exchange, `{liveRequest:{headers,method,url,body}, liveResponse:{statusCode,headers,body}}`,
//! so that Microsoft's own validator judges the traffic beside the server's checks.

use super::spec::{Matched, Specs};
use crate::http::Response;
use serde_json::{Map, Value, json};
use std::path::Path;

fn body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
    }
}

/// Writes exchange number `n` under `dir` (best effort: a failed write is logged, not fatal).
pub(super) fn record(dir: &Path, base: &str, n: usize, m: &Matched, specs: &Specs, req: (&str, &str, &[u8]), resp: &Response) {
    let (method, path, req_body) = req;
    let mut headers: Map<String, Value> = resp.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    // oav takes an answer without a content type for octet-stream, even an empty one.
    if resp.body.is_empty() && !headers.keys().any(|k| k.eq_ignore_ascii_case("content-type")) {
        headers.insert("Content-Type".into(), "application/json".into());
    }
    let payload = json!({
        "liveRequest": {
            "headers": {"Content-Type": "application/json"},
            "method": method,
            "url": format!("{base}{path}"),
            "body": body(req_body),
        },
        "liveResponse": {
            "statusCode": resp.status.to_string(),
            "headers": headers,
            "body": body(&resp.body),
        },
        "aib": {"operationId": m.operation_id, "spec": specs.file_of(m).strip_prefix(specs.root()).unwrap_or(specs.file_of(m))},
    });
    let name = format!("{}-{n:05}-{}.json", std::process::id(), uuid::Uuid::new_v4().simple());
    let r = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(dir.join(name), payload.to_string()));
    if let Err(e) = r {
        eprintln!("aib-testkit: recording ARM traffic in {} failed: {e}", dir.display());
    }
}
