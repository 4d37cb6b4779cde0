//! A small HTTP/1.1 server on 127.0.0.1 for tests (keep-alive, `Content-Length` bodies), and
//! a static file server built on it.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Close the connection without answering (a machine going down).
    pub drop_connection: bool,
}

impl Response {
    /// A response with a body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: Vec::new(), body: body.into(), drop_connection: false }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    /// No answer: the connection is closed.
    pub fn dropped() -> Self {
        Response { status: 0, headers: Vec::new(), body: Vec::new(), drop_connection: true }
    }
}

type Handler = Arc<dyn Fn(Request) -> futures::future::BoxFuture<'static, Response> + Send + Sync>;

/// A running server; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    requests: Arc<AtomicUsize>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer").field("addr", &self.addr).finish()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MAX_BODY: usize = 64 << 20;

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if len > MAX_BODY {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Request { method, path, headers, body })
}

impl HttpServer {
    /// Serves `handler` on a free port of 127.0.0.1.
    pub async fn start<F, Fut>(handler: F) -> std::io::Result<Self>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response> + Send + 'static,
    {
        Self::start_on(0, handler).await
    }

    /// Serves `handler` on 127.0.0.1:`port` (0 = a free port).
    pub async fn start_on<F, Fut>(port: u16, handler: F) -> std::io::Result<Self>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = stream.into_split();
                    let mut rd = BufReader::new(rd);
                    while let Some(req) = read_request(&mut rd).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let close = req.headers.get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
                        let head = req.method == "HEAD";
                        let resp = handler(req).await;
                        if resp.drop_connection {
                            return;
                        }
                        // The length is the body's; an answer to `HEAD` has no body and states
                        // the length a `GET` would have (the handler's `Content-Length`).
                        let given = resp.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length"));
                        let len = match given {
                            Some((_, v)) if head => v.clone(),
                            _ => resp.body.len().to_string(),
                        };
                        let mut out = format!("HTTP/1.1 {} {}\r\nContent-Length: {len}\r\n", resp.status, reason(resp.status));
                        for (k, v) in resp.headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-length")) {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        let body: &[u8] = if head { &[] } else { &resp.body };
                        if wr.write_all(out.as_bytes()).await.is_err() || wr.write_all(body).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Ok(HttpServer { addr, task, requests })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The network the test servers listen on (`127.0.0.1`): what a backend or fetcher must allow
/// (`allow_source_network`, `Fetcher::with_allowed_network`) for templates to fetch from them,
/// since template sources come from public addresses only by default.
pub fn loopback() -> aib_core::boundary::IpNet {
    aib_core::boundary::IpNet::new(std::net::Ipv4Addr::LOCALHOST.into(), 32).expect("a /32 is a network")
}

/// Serves files from memory: `GET /name` answers the bytes put under `name`.
#[derive(Debug)]
pub struct StaticServer {
    server: HttpServer,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl StaticServer {
    /// An empty file server.
    pub async fn start() -> std::io::Result<Self> {
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let f = files.clone();
        let server = HttpServer::start(move |req| {
            // A query (a SAS token) does not change which file is served, as with blob storage.
            let name = req.path.split('?').next().unwrap_or_default().trim_start_matches('/').to_string();
            let body = f.lock().ok().and_then(|m| m.get(&name).cloned());
            async move {
                match (req.method.as_str(), body) {
                    ("GET", Some(b)) => Response::new(200, b),
                    _ => Response::new(404, "not found"),
                }
            }
        })
        .await?;
        Ok(StaticServer { server, files })
    }

    /// Serves `bytes` at `/name`; returns its URL.
    pub fn put(&self, name: &str, bytes: impl Into<Vec<u8>>) -> String {
        if let Ok(mut m) = self.files.lock() {
            m.insert(name.to_string(), bytes.into());
        }
        format!("{}/{name}", self.server.url())
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.server.requests()
    }
}
