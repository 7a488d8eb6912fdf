//! TLS for the status listener (cargo feature `tls`): a certificate chain and a private key from
//! PEM files, read at start (an error stops drover before anything runs) and again on reload (an
//! error keeps the certificate being served, and the reload fails as a whole). Without the
//! feature, configuring TLS is an error that says how to get it.

use std::path::Path;

#[cfg(feature = "tls")]
mod imp {
    use std::path::Path;
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    pub type ServerConfig = Arc<rustls::ServerConfig>;
    pub type Stream<S> = tokio_rustls::server::TlsStream<S>;

    pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("supervisor.tls_cert {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "supervisor.tls_cert {}: no PEM certificate in it",
                cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("supervisor.tls_key {}: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("supervisor.tls_cert {} and tls_key: {e}", cert.display()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    pub async fn accept<S>(cfg: ServerConfig, s: S) -> Option<Stream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(cfg).accept(s).await.ok()
    }
}

#[cfg(not(feature = "tls"))]
mod imp {
    use std::path::Path;

    /// Never constructed without the `tls` feature.
    #[derive(Clone, Debug)]
    pub enum ServerConfig {}
    pub type Stream<S> = S;

    pub fn load(cert: &Path, _key: &Path) -> Result<ServerConfig, String> {
        Err(format!(
            "supervisor.tls_cert {}: this drover was built without TLS; build it with `cargo build --release --features tls`, or terminate TLS in front of it",
            cert.display()
        ))
    }

    pub async fn accept<S>(cfg: ServerConfig, _s: S) -> Option<Stream<S>> {
        match cfg {}
    }
}

/// The TLS configuration shared by the status listener's connections.
pub use imp::ServerConfig;
/// A TLS connection over `S` (`S` itself without the feature; never made then).
pub use imp::Stream;

/// The server configuration for `cert` (PEM, leaf first) and `key` (PEM: PKCS#8, PKCS#1 or SEC1).
pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    imp::load(cert, key)
}

/// The TLS handshake on an accepted connection (a TCP stream, or one wrapped to count what it
/// reads); None if it fails.
pub async fn accept<S>(cfg: ServerConfig, s: S) -> Option<Stream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    imp::accept(cfg, s).await
}
