//! TLS termination: the rustls server configuration (ring provider, TLS 1.2/1.3, ALPN `h2` and
//! `http/1.1`), loading PEM files, the self-signed development certificate, and reloading the
//! certificate on `SIGHUP` without touching established connections.
//!
//! Each accepted connection takes the configuration current at that moment, so a reload
//! affects new handshakes only; connections already open keep the certificate they began with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    PrivateKey { path: PathBuf, reason: String },
    #[error("certificate {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("certificate and key do not form a usable TLS identity: {0}")]
    Identity(rustls::Error),
    #[error("cannot generate the development certificate: {0}")]
    Generate(rcgen::Error),
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
enum CertificateSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

/// The TLS acceptor's configuration, swappable at run time.
pub struct ReloadableTls {
    source: CertificateSource,
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableTls {
    /// From PEM files, or — when no paths are configured — a freshly generated self-signed
    /// certificate for `hosts` (the caller logs that it did).
    pub fn new(
        cert_path: Option<&Path>,
        key_path: Option<&Path>,
        hosts: &[String],
    ) -> Result<Self, TlsError> {
        let (source, config) = match (cert_path, key_path) {
            (Some(cert), Some(key)) => {
                let source = CertificateSource::Files {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                };
                (source, load_server_config(cert, key)?)
            }
            _ => {
                let (certs, key) = self_signed(hosts)?;
                (CertificateSource::SelfSigned, server_config(certs, key)?)
            }
        };
        Ok(ReloadableTls {
            source,
            current: RwLock::new(Arc::new(config)),
        })
    }

    pub fn is_self_signed(&self) -> bool {
        matches!(self.source, CertificateSource::SelfSigned)
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Re-reads the certificate files. On error the old certificate stays in use. Returns
    /// whether anything was reloaded (a self-signed certificate has no files to re-read).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let CertificateSource::Files { cert, key } = &self.source else {
            return Ok(false);
        };
        let config = Arc::new(load_server_config(cert, key)?);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(true)
    }
}

fn load_server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Certificate {
            path: cert_path.to_path_buf(),
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| TlsError::PrivateKey {
        path: key_path.to_path_buf(),
        reason: error.to_string(),
    })?;
    server_config(certs, key)
}

/// The gateway's rustls configuration for one certificate chain and key.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Identity)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Early data can be replayed; an authentication gateway must not accept it.
    config.max_early_data_size = 0;
    Ok(config)
}

/// A self-signed certificate and its PKCS#8 key for `hosts` (DNS names or IP literals).
pub fn self_signed(
    hosts: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut names: Vec<String> = hosts.to_vec();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|name| name == default) {
            names.push(default.to_string());
        }
    }
    let generated = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    Ok((
        vec![generated.cert.der().clone()],
        PrivateKeyDer::Pkcs8(key),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_makes_a_server_config_with_alpn() {
        let tls = ReloadableTls::new(None, None, &["gateway.test".to_string()]).unwrap();
        assert!(tls.is_self_signed());
        assert!(!tls.reload().unwrap(), "nothing to reload without files");
        let config = tls.current.read().unwrap().clone();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn missing_files_are_a_clear_error() {
        let error = ReloadableTls::new(
            Some(Path::new("/nonexistent/cert.pem")),
            Some(Path::new("/nonexistent/key.pem")),
            &[],
        )
        .err()
        .unwrap();
        assert!(
            error.to_string().contains("/nonexistent/cert.pem"),
            "{error}"
        );
    }
}
