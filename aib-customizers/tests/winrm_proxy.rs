//! With a system proxy set, WinRM over plain HTTP (the pinned-certificate tunnel, or an
//! explicit `Http` transport) is refused before any request: the proxy would see the Basic
//! credentials and every script. One test in its own binary: it sets process environment.

use aib_customizers::winrm::{WinRmAuth, WinRmCommunicator, WinRmConfig, WinRmTransport};
use aib_testkit::windows::FakeWindows;
use aib_testkit::winrm::WinRmServer;
use std::time::Duration;

#[tokio::test]
async fn a_system_proxy_never_sees_winrm_credentials() {
    let m = FakeWindows::new();
    let s = WinRmServer::start("packer", "P@ss'w0rd", m.handler()).await.unwrap();
    let proxy_hits = aib_testkit::http::HttpServer::start(|_req| async { aib_testkit::http::Response::new(502, "proxy") }).await.unwrap();
    let cfg = || {
        WinRmConfig::builder()
            .host("127.0.0.1")
            .port(s.port())
            .credentials("packer", "P@ss'w0rd")
            .transport(WinRmTransport::Http)
            .auth(WinRmAuth::Basic)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    // SAFETY: the only test of this binary; no other thread reads the environment meanwhile.
    unsafe {
        std::env::set_var("HTTP_PROXY", proxy_hits.url());
        std::env::set_var("NO_PROXY", "localhost");
    }
    let e = WinRmCommunicator::connect(cfg()).await.unwrap_err();
    assert!(matches!(&e, aib_core::Error::InvalidConfig { key, .. } if key == "HTTP_PROXY"), "{e}");
    assert!(e.to_string().contains("NO_PROXY"), "{e}");
    assert_eq!(proxy_hits.requests(), 0, "nothing reached the proxy");
    assert!(s.commands().is_empty(), "nothing reached the machine either");
    // Exempted, it connects directly.
    // SAFETY: as above.
    unsafe { std::env::set_var("NO_PROXY", "localhost,127.0.0.1") };
    WinRmCommunicator::connect(cfg()).await.unwrap();
    assert_eq!(proxy_hits.requests(), 0);
}
