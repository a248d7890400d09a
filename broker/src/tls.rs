//! MQTT over TLS (rustls): the server's certificate and key, optional client certificates
//! verified against the operator's CA, and the principal a client certificate names.

use std::sync::Arc;

use kenko_config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {why}")]
    Pem {
        what: &'static str,
        path: String,
        why: String,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            what,
            path: shown.clone(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// The CA certificates of the PEM file `ca`, as trust anchors.
fn roots(ca: &std::path::Path, what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, what)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Rustls(format!("{what} {}: {e}", ca.display())))?;
    }
    Ok(roots)
}

/// A client's TLS configuration that trusts the CA certificates of the PEM file `ca` (a
/// `kenko worker` connecting to an external broker over `mqtts://`). A bundle (the
/// system's) may hold certificates rustls cannot use: those are skipped, as long as one is
/// left.
pub fn client_config(ca: &std::path::Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _skipped) = roots.add_parsable_certificates(certificates(ca, "the broker's CA")?);
    if added == 0 {
        return Err(TlsError::NoCertificate {
            path: ca.display().to_string(),
        });
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The acceptor for `config`.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(&config.cert, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsError::Pem {
        what: "the server's private key",
        path: config.key.display().to_string(),
        why: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let roots = roots(ca, "the client CA")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if config.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("server certificate and key: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The principal a verified client certificate names: its subject's common name.
pub(crate) fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_names_the_principal() {
        let mut params = rcgen::CertificateParams::new(vec!["bed-001".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bed-001");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(principal_of(cert.der()).as_deref(), Some("bed-001"));
        assert_eq!(principal_of(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
