//! A TLS front: terminates TLS with a fresh self-signed certificate (made with the `openssl`
//! command) at an address of this machine and forwards the plain bytes to a local port. It
//! puts a test server (the WS-Management one) behind HTTPS, as a Windows build VM's WinRM
//! listener is; the certificate's SHA-256 is what a client pins.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use std::fmt;
use std::process::Command;
use std::sync::Arc;
use tokio::task::{JoinHandle, JoinSet};

/// How to install what the TLS front needs.
pub const OPENSSL_HINT: &str = "the `openssl` command is needed for test certificates: apt-get install -y openssl";

/// A running TLS front; stops (with every connection through it) when dropped.
pub struct TlsFront {
    address: String,
    port: u16,
    fingerprint: [u8; 32],
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFront").field("address", &self.address).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn other(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl TlsFront {
    /// Listens at `address:port` (port 0: a free one) and forwards to `127.0.0.1:backend_port`.
    pub async fn start(address: &str, port: u16, backend_port: u16) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (key_path, cert_path) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=aib-build",
            ])
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .output()
            .map_err(|e| other(format!("openssl: {e}; {OPENSSL_HINT}")))?;
        if !out.status.success() {
            return Err(other(format!("openssl req: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(other)?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(other)?;
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(&sha2::Sha256::digest(cert.as_ref()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((address, port)).await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            // The connections live in the set: aborting the front aborts them all.
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await
                        && let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(TlsFront { address: address.into(), port, fingerprint, task: Some(task), _dir: dir })
    }

    /// Stops listening and drops every connection; returns once the port is free again.
    pub async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificate's SHA-256 (of its DER encoding).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The fingerprint as upper-case hex, as Windows prints it.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint.iter().map(|b| format!("{b:02X}")).collect()
    }
}
