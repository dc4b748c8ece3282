//! TLS settings of a MySQL/MariaDB URL, read once for every connection duplex makes (catalog,
//! snapshots, appliers and the binlog dump connection all go through [`super::connect`] or the
//! applier's own setup, both built from [`split_url`]).
//!
//! The parameters are the MySQL client's: `ssl-mode` (`DISABLED`, `PREFERRED`, `REQUIRED`,
//! `VERIFY_CA`, `VERIFY_IDENTITY`, case-insensitive; the client's default `PREFERRED` when
//! absent), `ssl-ca` (a PEM file of CA certificates; without it the Mozilla roots of
//! `webpki-roots`), `ssl-cert` and `ssl-key` (a client certificate and its key, both or
//! neither). mysql_async rejects unknown URL parameters, so they are taken out of the URL.
//!
//! What each mode promises: `DISABLED` never encrypts; `PREFERRED` encrypts whenever the server
//! offers TLS in its handshake and connects in plaintext only when it does not; `REQUIRED`
//! encrypts or fails, without checking the certificate; `VERIFY_CA` also checks the chain;
//! `VERIFY_IDENTITY` also checks that the certificate names the host of the URL. A URL with
//! mysql_async's own `require_ssl=true` and no `ssl-mode` keeps the driver's meaning.

use std::path::PathBuf;

use mysql_async::{ClientIdentity, OptsBuilder, SslOpts};

use super::MysqlError;

/// The accepted values of `ssl-mode`, for messages.
const MODES: &str = "DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY";

/// The MySQL client's `ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlSslMode {
    /// Never encrypt.
    Disabled,
    /// Encrypt when the server offers TLS.
    Preferred,
    /// Encrypt, without verifying the certificate.
    Required,
    /// Encrypt and verify the certificate chain.
    VerifyCa,
    /// Encrypt, verify the chain and that the certificate names the host.
    VerifyIdentity,
}

/// The TLS settings of one MySQL/MariaDB URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlTls {
    /// `ssl-mode`; `None` when the URL does not say (then `PREFERRED`, unless the URL uses
    /// mysql_async's own `require_ssl`).
    pub mode: Option<MysqlSslMode>,
    /// `ssl-ca`.
    pub ca: Option<PathBuf>,
    /// `ssl-cert` and `ssl-key`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Splits `url` into the URL mysql_async is given (without the TLS parameters) and its TLS
/// settings.
pub fn split_url(url: &str) -> Result<(String, MysqlTls), MysqlError> {
    let mut tls = MysqlTls {
        mode: None,
        ca: None,
        client_cert: None,
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        // mysql_async reports what is wrong with it.
        return Ok((url.to_owned(), tls));
    };
    let mut kept = Vec::new();
    let (mut cert, mut key) = (None, None);
    for (name, value) in parsed.query_pairs() {
        match name.as_ref() {
            "ssl-mode" => {
                tls.mode = Some(match value.to_ascii_uppercase().as_str() {
                    "DISABLED" => MysqlSslMode::Disabled,
                    "PREFERRED" => MysqlSslMode::Preferred,
                    "REQUIRED" => MysqlSslMode::Required,
                    "VERIFY_CA" => MysqlSslMode::VerifyCa,
                    "VERIFY_IDENTITY" => MysqlSslMode::VerifyIdentity,
                    _ => {
                        return Err(MysqlError::Tls(format!(
                            "the URL parameter ssl-mode={value} is not one of {MODES}"
                        )));
                    }
                })
            }
            "ssl-ca" => tls.ca = Some(PathBuf::from(value.as_ref())),
            "ssl-cert" => cert = Some(PathBuf::from(value.as_ref())),
            "ssl-key" => key = Some(PathBuf::from(value.as_ref())),
            _ => kept.push((name.into_owned(), value.into_owned())),
        }
    }
    tls.client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(MysqlError::Tls(
                "the URL gives only one of ssl-cert and ssl-key: give both (the client \
                 certificate and its private key) or neither"
                    .into(),
            ));
        }
    };
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), tls))
}

impl MysqlTls {
    /// Whether a server without TLS is connected to in plaintext (`PREFERRED`, the default),
    /// given the driver options of the stripped URL (mysql_async's own `require_ssl=true`
    /// without `ssl-mode` requires TLS).
    pub(super) fn preferred(&self, url_opts: &mysql_async::Opts) -> bool {
        match self.mode {
            Some(mode) => mode == MysqlSslMode::Preferred,
            None => url_opts.ssl_opts().is_none(),
        }
    }

    /// Sets the driver's TLS options on `builder` (built from the stripped URL).
    pub(super) fn apply(&self, builder: OptsBuilder) -> OptsBuilder {
        let mode = match self.mode {
            Some(mode) => mode,
            // mysql_async's own require_ssl / verify_ca / verify_identity parameters decide.
            None if mysql_async::Opts::from(builder.clone())
                .ssl_opts()
                .is_some() =>
            {
                return builder;
            }
            None => MysqlSslMode::Preferred,
        };
        if mode == MysqlSslMode::Disabled {
            return builder.ssl_opts(None::<SslOpts>);
        }
        let verify_chain = matches!(mode, MysqlSslMode::VerifyCa | MysqlSslMode::VerifyIdentity);
        let mut ssl = SslOpts::default()
            .with_danger_accept_invalid_certs(!verify_chain)
            .with_danger_skip_domain_validation(mode != MysqlSslMode::VerifyIdentity);
        if let Some(ca) = &self.ca {
            ssl = ssl
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            ssl = ssl.with_client_identity(Some(ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        builder.ssl_opts(ssl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_taken_out_of_the_url() {
        let (url, tls) = split_url(
            "mysql://u@db:3307/shop?ssl-mode=verify_identity&ssl-ca=/ca.pem&prefer_socket=false",
        )
        .unwrap();
        assert_eq!(url, "mysql://u@db:3307/shop?prefer_socket=false");
        assert_eq!(tls.mode, Some(MysqlSslMode::VerifyIdentity));
        assert_eq!(tls.ca, Some(PathBuf::from("/ca.pem")));
        let (url, tls) = split_url("mysql://u@db/shop").unwrap();
        assert_eq!(url, "mysql://u@db/shop");
        assert!(tls.preferred(&mysql_async::Opts::from_url(&url).unwrap()));
        let (url, tls) = split_url("mysql://u@db/shop?require_ssl=true").unwrap();
        assert!(!tls.preferred(&mysql_async::Opts::from_url(&url).unwrap()));
    }

    #[test]
    fn invalid_values_name_the_parameter_and_the_accepted_values() {
        let error = split_url("mysql://u@db/shop?ssl-mode=VERIFY")
            .unwrap_err()
            .to_string();
        assert!(error.contains("ssl-mode=VERIFY"), "{error}");
        assert!(error.contains(MODES), "{error}");
        let error = split_url("mysql://u@db/shop?ssl-key=/k.pem")
            .unwrap_err()
            .to_string();
        assert!(error.contains("ssl-cert"), "{error}");
    }
}
