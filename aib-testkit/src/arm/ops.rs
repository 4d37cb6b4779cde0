//! The test server's long-running operations: how they are made, polled and ended
//! (`Azure-AsyncOperation` status bodies, `Location` answers).

use super::{State, compute, error, ok};
use crate::http::Response;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// The result of work that goes on beside the server (a disk export, a Run Command): the
/// operation's output, or an ARM error code and message.
pub(super) type Pending = Arc<Mutex<Option<Result<Value, (String, String)>>>>;

#[derive(Debug, Clone)]
pub(super) enum OpKind {
    Create(String),
    Delete(String),
    Action {
        result: Option<Value>,
    },
    /// Work going on beside the server (a disk export, a Run Command): done once it ends.
    Pending(Pending),
}

#[derive(Debug, Clone)]
pub(super) struct Op {
    pub(super) polls_left: u32,
    pub(super) kind: OpKind,
    pub(super) error: Option<(String, String)>,
}

/// A new operation; its `Azure-AsyncOperation` and `Location` URLs.
pub(super) fn new_op(s: &mut State, base: &str, sub: &str, kind: OpKind, error: Option<(String, String)>) -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    s.ops.insert(id.clone(), Op { polls_left: s.polls, kind, error });
    let async_url = format!("{base}/subscriptions/{sub}/providers/Microsoft.Testkit/operations/{id}?api-version=2024-07-01");
    let location = format!("{base}/subscriptions/{sub}/providers/Microsoft.Testkit/operationResults/{id}?api-version=2024-07-01");
    (async_url, location)
}

/// What an ended operation leaves: a created resource's state, a deleted one gone with its
/// children (a group with its resources).
pub(super) fn finish(s: &mut State, op: &Op) {
    match &op.kind {
        OpKind::Create(id) => {
            s.capturing.remove(id);
            if let Some(r) = s.resources.get_mut(id) {
                r["properties"]["provisioningState"] = if op.error.is_some() { "Failed" } else { "Succeeded" }.into();
                if op.error.is_none() {
                    compute::created(r);
                }
            }
        }
        OpKind::Delete(_) if op.error.is_some() => {}
        OpKind::Delete(id) => {
            if let Some(r) = s.resources.remove(id) {
                compute::deleted(s, &r, id);
            }
            // Child resources (a VNet's subnets, a gallery's images) go with their parent, and
            // a group's resources with the group.
            s.groups.remove(id);
            {
                let prefix = format!("{id}/");
                let gone: Vec<String> = s.resources.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                for k in gone {
                    if let Some(r) = s.resources.remove(&k) {
                        compute::deleted(s, &r, &k);
                    }
                }
            }
        }
        OpKind::Action { .. } | OpKind::Pending(_) => {}
    }
}

fn in_progress(kind: &str, name: &str) -> Response {
    if kind == "operations" {
        ok(200, &json!({"name": name, "status": "InProgress"}))
    } else {
        Response::new(202, "").header("Retry-After", "0")
    }
}

/// A poll of the operation `id` at its `kind` URL (`operations`: the status body;
/// `operationResults`: 202 until done, then the result).
pub(super) fn status(s: &mut State, kind: &str, id: &str) -> Response {
    let Some(mut op) = s.ops.get_mut(id).cloned() else { return error(404, "OperationNotFound", "no such operation") };
    if let OpKind::Pending(p) = &op.kind {
        let Some(ended) = p.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return in_progress(kind, id);
        };
        match ended {
            Ok(v) => op.kind = OpKind::Action { result: Some(v) },
            Err(e) => op.error = Some(e),
        }
    }
    let done = op.polls_left <= 1;
    if let Some(o) = s.ops.get_mut(id) {
        o.polls_left = o.polls_left.saturating_sub(1);
    }
    if done {
        finish(s, &op);
    }
    let status = match (done, &op.error) {
        (false, _) => "InProgress",
        (true, None) => "Succeeded",
        (true, Some(_)) => "Failed",
    };
    if kind == "operations" {
        let mut body = json!({"name": id, "status": status});
        if let (true, Some((code, msg))) = (done, &op.error) {
            body["error"] = json!({"code": code, "message": msg});
        }
        // ARM leaves a status body's `properties` to the provider; the result of an
        // operation is at its `Location`, unless the server was asked to mimic the
        // Compute provider's undocumented copy of it here.
        if let (true, OpKind::Action { result: Some(r) }, true) = (done, &op.kind, s.results_in_status) {
            body["properties"] = json!({"output": r});
        }
        return ok(200, &body);
    }
    match (done, &op.error, &op.kind) {
        (false, _, _) => Response::new(202, "").header("Retry-After", "0"),
        (true, Some((code, msg)), _) => error(409, code, msg),
        (true, None, OpKind::Action { result: Some(r) }) => ok(200, r),
        (true, None, _) => Response::new(204, ""),
    }
}
