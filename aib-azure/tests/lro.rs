//! The ARM client against the contract of ARM's async API reference and HTTP.sys, where the
//! ARM test server (or a bare HTTP server playing a misbehaving ARM) shows it.

use aib_azure::{ArmClient, COMPUTE_API, Credential, DEFAULT_POLL_INTERVAL, DISK_API, RESOURCES_API, RetryConfig};
use aib_core::Error;
use aib_testkit::arm::{ArmFault, ArmServer};
use aib_testkit::http::{HttpServer, Response};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUB: &str = "00000000-0000-0000-0000-0000000000b2";

fn client(url: &str) -> ArmClient {
    ArmClient::builder()
        .endpoint(url)
        .credential(Credential::static_token("t"))
        .retry(RetryConfig::fixed(4, Duration::from_millis(5)))
        .poll_interval(Duration::from_millis(5))
        .build()
        .unwrap()
}

async fn vm(s: &ArmServer, c: &ArmClient) -> String {
    c.put(&format!("/subscriptions/{SUB}/resourceGroups/rg"), RESOURCES_API, &json!({"location": "westus"})).await.unwrap();
    let id = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm");
    s.put_resource(&id, json!({"type": "Microsoft.Compute/virtualMachines", "location": "westus", "properties": {}}));
    id
}

#[tokio::test]
async fn a_post_without_a_body_carries_content_length_zero() {
    let s = ArmServer::start().await.unwrap();
    // The server answers as HTTP.sys does to a POST that has no length.
    let mut raw = tokio::net::TcpStream::connect(s.url().trim_start_matches("http://")).await.unwrap();
    raw.write_all(b"POST /subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/deallocate?api-version=2024-07-01 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    // The client's bodiless POSTs (deallocate, generalize, listKeys, endGetAccess) get through.
    let c = client(&s.url());
    let id = vm(&s, &c).await;
    c.post(&format!("{id}/deallocate"), COMPUTE_API, None).await.unwrap();
    c.post(&format!("{id}/generalize"), COMPUTE_API, None).await.unwrap();
}

#[tokio::test]
async fn an_action_result_is_read_from_location_where_the_spec_puts_it() {
    // The test server keeps results out of status bodies unless asked: Run Command's output
    // is found at the operation's Location (final-state-via: location).
    let s = ArmServer::start().await.unwrap();
    let c = client(&s.url());
    let disk = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/d");
    vm(&s, &c).await;
    s.put_resource(&disk, json!({"type": "Microsoft.Compute/disks", "location": "westus", "properties": {"diskSizeGB": 1}}));
    let out = c
        .post_for_location(&format!("{disk}/beginGetAccess"), DISK_API, Some(&json!({"access": "Read", "durationInSeconds": 60})))
        .await
        .unwrap();
    assert!(out["accessSAS"].as_str().is_some_and(|s| s.contains("sig=")), "{out}");
}

/// A bare server playing ARM: `answer(method, path)`.
async fn fake(answer: impl Fn(&str, &str) -> Response + Send + Sync + 'static) -> (HttpServer, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let answer = Arc::new(answer);
    let server = HttpServer::start(move |req| {
        log.lock().unwrap().push(format!("{} {}", req.method, req.path.split('?').next().unwrap_or_default()));
        let r = answer(&req.method, &req.path);
        async move { r }
    })
    .await
    .unwrap();
    (server, seen)
}

fn json_reply(status: u16, v: serde_json::Value) -> Response {
    Response::new(status, v.to_string()).header("Content-Type", "application/json")
}

#[tokio::test]
async fn a_synchronous_answer_with_provisioning_state_failed_is_a_failure() {
    let (srv, _) = fake(|_, _| {
        json_reply(
            200,
            json!({"id": "x", "properties": {"provisioningState": "Failed"}, "error": {"code": "QuotaExceeded", "message": "over quota"}}),
        )
    })
    .await;
    let err = client(&srv.url())
        .put("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/i", COMPUTE_API, &json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("QuotaExceeded"), "{err}");
}

#[tokio::test]
async fn a_status_poll_that_fails_is_not_taken_for_a_finished_delete() {
    let url = Arc::new(Mutex::new(String::new()));
    let u = url.clone();
    let (srv, seen) = fake(move |method, path| match method {
        "DELETE" => Response::new(202, "")
            .header("Azure-AsyncOperation", &format!("{}/operations/op1", u.lock().unwrap()))
            .header("Retry-After", "0"),
        _ if path.starts_with("/operations/") => json_reply(404, json!({"error": {"code": "NotFound", "message": "no such operation"}})),
        _ => json_reply(404, json!({})),
    })
    .await;
    *url.lock().unwrap() = srv.url();
    let err = client(&srv.url())
        .delete("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/n", "2023-09-01")
        .await
        .unwrap_err();
    assert!(!matches!(err, Error::NotFound { .. }), "a 404 reading the status says nothing of the resource: {err:?}");
    assert!(err.to_string().contains("status"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn transient_conflicts_are_retried_other_conflicts_are_not() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s.url());
    s.inject(ArmFault::Conflict, 2);
    c.put(&format!("/subscriptions/{SUB}/resourceGroups/rg"), RESOURCES_API, &json!({"location": "westus"})).await.unwrap();
    assert_eq!(s.pending_faults(), 0);
    let (srv, seen) = fake(|_, _| json_reply(409, json!({"error": {"code": "Conflict", "message": "the name is taken"}}))).await;
    let err =
        client(&srv.url()).put("/subscriptions/s/resourceGroups/rg", RESOURCES_API, &json!({"location": "westus"})).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn errors_keep_their_details_and_support_ids() {
    let (srv, _) = fake(|_, _| {
        json_reply(400, json!({"error": {"code": "InvalidParameter", "message": "bad", "details": [{"code": "SecurityTypeMismatch", "message": "the image needs Trusted Launch"}]}}))
            .header("x-ms-request-id", "11111111-2222")
            .header("x-ms-correlation-request-id", "33333333-4444")
    })
    .await;
    let err = client(&srv.url()).get("/subscriptions/s/resourceGroups/rg", RESOURCES_API).await.unwrap_err();
    let s = format!("{err}");
    for part in ["SecurityTypeMismatch", "Trusted Launch", "11111111-2222", "33333333-4444"] {
        assert!(s.contains(part), "{part} missing: {s}");
    }
}

#[tokio::test]
async fn retry_after_is_seconds_and_the_default_interval_is_the_documented_one() {
    assert_eq!(DEFAULT_POLL_INTERVAL, Duration::from_secs(60));
    // An HTTP date is not ARM's form: the client's own interval is used, not the date.
    let n = Arc::new(Mutex::new(0));
    let k = n.clone();
    let (srv, _) = fake(move |_, _| {
        let mut n = k.lock().unwrap();
        *n += 1;
        if *n == 1 {
            json_reply(429, json!({"error": {"code": "TooManyRequests", "message": "slow down"}}))
                .header("Retry-After", "Wed, 21 Oct 2099 07:28:00 GMT")
        } else {
            json_reply(200, json!({"id": "g"}))
        }
    })
    .await;
    let t = std::time::Instant::now();
    client(&srv.url()).get("/subscriptions/s/resourceGroups/rg", RESOURCES_API).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[tokio::test]
async fn the_token_goes_only_to_the_arm_endpoint() {
    // Another server that would collect tokens: named by an id, a nextLink or an operation URL.
    let (thief, seen) = fake(|_, _| json_reply(200, json!({"value": []}))).await;
    let (srv, _) = {
        let thief_url = thief.url();
        fake(move |method, _| match method {
            "DELETE" => Response::new(202, "").header("Azure-AsyncOperation", &format!("{thief_url}/op")).header("Retry-After", "0"),
            _ => json_reply(200, json!({"value": [], "nextLink": format!("{thief_url}/next")})),
        })
        .await
    };
    let c = client(&srv.url());
    for err in [
        c.get(&format!("{}/subscriptions/s/resourceGroups/rg", thief.url()), RESOURCES_API).await.unwrap_err(),
        c.list("/subscriptions/s/resourceGroups", RESOURCES_API).await.unwrap_err(),
        c.delete("/subscriptions/s/resourceGroups/rg", RESOURCES_API).await.unwrap_err(),
    ] {
        assert!(err.to_string().contains("not on the ARM endpoint"), "{err}");
    }
    assert!(seen.lock().unwrap().is_empty(), "no request reached the other server: {:?}", seen.lock().unwrap());
    // A URL that merely starts like the endpoint is another host.
    let err = c.get(&format!("{}0/x", srv.url()), RESOURCES_API).await.unwrap_err();
    assert!(err.to_string().contains("not on the ARM endpoint"), "{err}");
}
