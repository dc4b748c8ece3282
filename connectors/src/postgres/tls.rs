//! TLS settings of a PostgreSQL URL, read once for every connection duplex makes (ordinary
//! sessions through tokio-postgres, replication sessions through pgwire-replication).
//!
//! The parameters are libpq's: `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`; libpq's default `prefer` when absent), `sslrootcert` (a PEM file of CA
//! certificates; without it the Mozilla roots of `webpki-roots`), `sslcert` and `sslkey` (a
//! client certificate and its key, both or neither). They are taken out of the URL before it
//! reaches tokio-postgres, which knows only the first three modes and none of the files.
//!
//! What each mode promises, as libpq: `disable` never encrypts; `prefer` encrypts whenever the
//! server accepts the SSLRequest and falls back to plaintext only when it refuses (tokio-postgres'
//! own `prefer`); `require` encrypts or fails, without checking the certificate; `verify-ca`
//! also checks the chain against the roots; `verify-full` also checks that the certificate names
//! the host of the URL.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::PgError;

/// The accepted values of `sslmode`, for messages.
const MODES: &str = "disable, prefer, require, verify-ca, verify-full";

/// The URL parameters this module takes out of a PostgreSQL URL.
const PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// Never encrypt.
    Disable,
    /// Encrypt when the server accepts; plaintext only when it refuses.
    Prefer,
    /// Encrypt, without verifying the certificate.
    Require,
    /// Encrypt and verify the certificate chain.
    VerifyCa,
    /// Encrypt, verify the chain and that the certificate names the host.
    VerifyFull,
}

/// The TLS settings of one PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// `sslmode`.
    pub mode: PgSslMode,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Splits `url` into the URL tokio-postgres is given (without the TLS parameters) and its TLS
/// settings. Both URL (`postgres://...?sslmode=require`) and key-value (`host=... sslmode=...`)
/// forms are read.
pub fn split_url(url: &str) -> Result<(String, PgTls), PgError> {
    let mut values: Vec<(String, String)> = Vec::new();
    let stripped = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url::Url::parse(url) {
            Ok(mut parsed) => {
                let mut kept = Vec::new();
                for (key, value) in parsed.query_pairs() {
                    if PARAMETERS.contains(&key.as_ref()) {
                        values.push((key.into_owned(), value.into_owned()));
                    } else {
                        kept.push((key.into_owned(), value.into_owned()));
                    }
                }
                if kept.is_empty() {
                    parsed.set_query(None);
                } else {
                    parsed.query_pairs_mut().clear().extend_pairs(kept);
                }
                parsed.to_string()
            }
            // tokio-postgres reports what is wrong with it.
            Err(_) => url.to_owned(),
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((key, value)) if PARAMETERS.contains(&key.trim()) => {
                    values.push((key.trim().to_owned(), value.trim_matches('\'').to_owned()))
                }
                _ => kept.push(token),
            }
        }
        kept.join(" ")
    };
    let mut tls = PgTls {
        mode: PgSslMode::Prefer,
        root_cert: None,
        client_cert: None,
    };
    let (mut cert, mut key) = (None, None);
    for (name, value) in values {
        match name.as_str() {
            "sslmode" => {
                tls.mode = match value.as_str() {
                    "disable" => PgSslMode::Disable,
                    "prefer" | "allow" => PgSslMode::Prefer,
                    "require" => PgSslMode::Require,
                    "verify-ca" => PgSslMode::VerifyCa,
                    "verify-full" => PgSslMode::VerifyFull,
                    _ => {
                        return Err(PgError::Tls(format!(
                            "the URL parameter sslmode={value} is not one of {MODES}"
                        )));
                    }
                }
            }
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
            "sslcert" => cert = Some(PathBuf::from(value)),
            _ => key = Some(PathBuf::from(value)),
        }
    }
    tls.client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(PgError::Tls(
                "the URL gives sslcert but no sslkey: give both (the client certificate and its \
                 private key) or neither"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(PgError::Tls(
                "the URL gives sslkey but no sslcert: give both (the client certificate and its \
                 private key) or neither"
                    .into(),
            ));
        }
    };
    Ok((stripped, tls))
}

impl PgTls {
    /// The `sslmode` tokio-postgres is given: it negotiates, the rustls config verifies.
    pub(super) fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            PgSslMode::Disable => tokio_postgres::config::SslMode::Disable,
            PgSslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The rustls client configuration for tokio-postgres.
    pub(super) fn rustls_config(&self) -> Result<ClientConfig, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(format!("TLS setup failed: {e}")))?;
        let roots = Arc::new(self.roots()?);
        let builder = match self.mode {
            PgSslMode::VerifyFull => builder.with_root_certificates(roots),
            PgSslMode::VerifyCa => {
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()
                .map_err(|e| PgError::Tls(format!("TLS setup failed: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified { provider })),
        };
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        PgError::Tls(format!(
                            "cannot read the client certificate sslcert={}: {e}",
                            cert.display()
                        ))
                    })?;
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    PgError::Tls(format!(
                        "cannot read the client key sslkey={}: {e}",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| PgError::Tls(format!("the client certificate is not usable: {e}")))
            }
        }
    }

    fn roots(&self) -> Result<RootCertStore, PgError> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        PgError::Tls(format!(
                            "cannot read the CA certificates sslrootcert={}: {e}",
                            path.display()
                        ))
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(PgError::Tls(format!(
                        "sslrootcert={} holds no usable CA certificate",
                        path.display()
                    )));
                }
            }
        }
        Ok(roots)
    }

    /// The pgwire-replication settings for the replication sessions.
    pub(super) fn replication(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::TlsConfig;
        let mut config = match self.mode {
            PgSslMode::Disable => TlsConfig::disabled(),
            PgSslMode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::require()
            },
            PgSslMode::Require => TlsConfig::require(),
            PgSslMode::VerifyCa => TlsConfig::verify_ca(self.root_cert.clone()),
            PgSslMode::VerifyFull => TlsConfig::verify_full(self.root_cert.clone()),
        };
        if let Some((cert, key)) = &self.client_cert {
            config = config.with_client_cert(cert, key);
        }
        config
    }
}

/// `require` and `prefer`: the handshake's signatures are checked, the certificate is not.
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain is verified, a host name mismatch is accepted.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_taken_out_of_the_url() {
        let (url, tls) = split_url(
            "postgres://u@db.example.com:5433/shop?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u@db.example.com:5433/shop?application_name=x"
        );
        assert_eq!(tls.mode, PgSslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/ca.pem")));
        let (url, tls) = split_url("host=h user=u sslmode=require").unwrap();
        assert_eq!(url, "host=h user=u");
        assert_eq!(tls.mode, PgSslMode::Require);
        let (_, tls) = split_url("postgres://u@h/d").unwrap();
        assert_eq!(tls.mode, PgSslMode::Prefer);
    }

    #[test]
    fn invalid_values_name_the_parameter_and_the_accepted_values() {
        let error = split_url("postgres://u@h/d?sslmode=verify_full")
            .unwrap_err()
            .to_string();
        assert!(error.contains("sslmode=verify_full"), "{error}");
        assert!(error.contains(MODES), "{error}");
        let error = split_url("postgres://u@h/d?sslcert=/c.pem")
            .unwrap_err()
            .to_string();
        assert!(error.contains("sslkey"), "{error}");
    }
}
