//! Test certificates: a throwaway CA and a server certificate for `localhost`/`127.0.0.1`,
//! written to a per-process directory so the gateway loads them the way it would in
//! production, from PEM files.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;

pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    /// The CA as PEM, for programs that verify the gateway with it (the proxies).
    pub ca_pem_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    /// One CA per test process.
    pub fn shared() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| Pki::generate(super::temp_dir("pki")))
    }

    fn generate(dir: PathBuf) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(params, ca_key);
        let (cert_pem, key_pem) = Self::leaf(&ca, "test server");
        let ca_pem_path = dir.join("ca.crt");
        std::fs::write(&ca_pem_path, ca_cert.pem()).unwrap();
        let cert_path = dir.join("server.crt");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, cert_pem).unwrap();
        std::fs::write(&key_path, key_pem).unwrap();
        Pki {
            ca_der: ca_cert.der().clone(),
            ca_pem_path,
            cert_path,
            key_path,
            ca,
        }
    }

    fn leaf(ca: &Issuer<'static, KeyPair>, common_name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A fresh server certificate with the given common name, signed by the test CA, as PEM
    /// (certificate, key).
    pub fn issue(&self, common_name: &str) -> (String, String) {
        Self::leaf(&self.ca, common_name)
    }

    /// A rustls client configuration trusting the test CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Arc::new(config)
    }
}
