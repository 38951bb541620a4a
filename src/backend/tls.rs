//! Upstream TLS: a rustls client config (ring provider) for each `upstream.tls` mode.
//! prefer/require encrypt without checking the certificate, as libpq does; verify-ca checks the
//! chain against `ca_file` (or the bundled web roots) but not the name; verify-full checks both.

use crate::config::{UpstreamConfig, UpstreamTls};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};
use std::sync::Arc;

pub use crate::crypto::tls_provider as provider;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read upstream.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("upstream TLS setup: {0}")]
    Rustls(#[from] Error),
}

/// The client config for `mode` (with `cfg`'s CA file), or None for `disable`.
pub fn client_config(
    cfg: &UpstreamConfig,
    mode: UpstreamTls,
) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match mode {
        UpstreamTls::Disable => return Ok(None),
        UpstreamTls::Prefer | UpstreamTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertCheck(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        UpstreamTls::VerifyCa => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(cfg)?), provider)
                    .build()
                    .map_err(|e| Error::General(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        UpstreamTls::VerifyFull => builder
            .with_root_certificates(roots(cfg)?)
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

fn roots(cfg: &UpstreamConfig) -> Result<RootCertStore, TlsConfigError> {
    let mut store = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let err = |reason: String| TlsConfigError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate found".into()));
            }
            for c in certs {
                store.add(c)?;
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// The name rustls checks the server certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| TlsConfigError::Rustls(Error::General(e.to_string())))
}

/// prefer/require: encryption without authentication of the server (libpq's semantics).
#[derive(Debug)]
struct NoCertCheck(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// verify-ca: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
