//! A loopback tunnel to a TLS server whose certificate is pinned by its SHA-256 fingerprint:
//! clients speak plain TCP to `127.0.0.1:PORT`, the tunnel speaks TLS to the server and accepts
//! only the pinned certificate (the handshake's signature is still checked against it). This
//! is how a WinRM client without certificate pinning reaches a build VM's self-signed HTTPS
//! listener without trusting whoever answers.

const BACKEND: &str = "winrm";
use aib_core::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

/// The SHA-256 fingerprint of a DER certificate, as lowercase hex.
pub fn fingerprint_hex(der: &[u8]) -> String {
    pin_hex(&sha2::Sha256::digest(der).into())
}

/// A SHA-256 fingerprint as lowercase hex (what [`parse_fingerprint`] reads back).
pub fn pin_hex(sha256: &[u8; 32]) -> String {
    sha256.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a SHA-256 fingerprint written as hex, with or without `:` separators.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Set when a server showed another certificate: that will not change by retrying.
    refused: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            let why = format!("the server's certificate (SHA-256 {}) is not the pinned one ({})", pin_hex(&got), pin_hex(&self.sha256));
            if let Ok(mut r) = self.refused.lock() {
                *r = Some(why.clone());
            }
            Err(rustls::Error::General(why))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A running tunnel; stops when dropped.
pub struct PinnedTlsTunnel {
    port: u16,
    last_error: Arc<Mutex<Option<String>>>,
    refused: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for PinnedTlsTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTlsTunnel").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Drop for PinnedTlsTunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PinnedTlsTunnel {
    /// Listens on a free port of 127.0.0.1; each connection is carried over TLS to
    /// `host:port`, whose certificate must have the SHA-256 fingerprint `sha256`.
    pub async fn start(host: &str, port: u16, sha256: [u8; 32]) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let refused: Arc<Mutex<Option<String>>> = Arc::default();
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::generic(BACKEND, format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { sha256, provider, refused: refused.clone() }))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(host.to_string()).map_err(|e| Error::InvalidConfig {
            backend: BACKEND,
            key: "host".into(),
            message: format!("`{host}` is not a host name or address: {e}"),
        })?;
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::generic(BACKEND, format!("tunnel: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::generic(BACKEND, format!("tunnel: {e}")))?.port();
        let last_error: Arc<Mutex<Option<String>>> = Arc::default();
        let (errors, upstream) = (last_error.clone(), format!("{host}:{port}"));
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (connector, name, upstream, errors) = (connector.clone(), name.clone(), upstream.clone(), errors.clone());
                tokio::spawn(async move {
                    let tls = match TcpStream::connect(&upstream).await {
                        Ok(tcp) => connector.connect(name, tcp).await.map_err(|e| format!("TLS to {upstream}: {e}")),
                        Err(e) => Err(format!("connecting to {upstream}: {e}")),
                    };
                    match tls {
                        Ok(mut tls) => {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut tls).await;
                        }
                        Err(e) => {
                            if let Ok(mut l) = errors.lock() {
                                *l = Some(e);
                            }
                        }
                    }
                });
            }
        });
        Ok(PinnedTlsTunnel { port: local, last_error, refused, task })
    }

    /// The loopback port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Why the last connection could not be carried (a refused certificate names both
    /// fingerprints).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// Why the server's certificate was refused, once one was: it is not the pinned one, and
    /// waiting will not make it so.
    pub fn refused_certificate(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let a = super::parse_fingerprint(hex).unwrap();
        let colons: Vec<String> = hex.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_string()).collect();
        assert_eq!(super::parse_fingerprint(&colons.join(":")), Some(a));
        assert_eq!(a[15], 0xff);
        assert!(super::parse_fingerprint("abc").is_none() && super::parse_fingerprint(&"zz".repeat(32)).is_none());
    }
}
