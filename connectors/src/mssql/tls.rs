//! A SQL Server site's URL and its TLS settings, read once for every connection duplex makes.
//!
//! `mssql://user:password@host:1433/database?encrypt=...&trust-server-certificate=...&ca=...`:
//! - `encrypt`: `required` (the default: encrypt everything or fail), `login` (TDS's `Off`:
//!   only the login packet is encrypted) or `none` (nothing is, not even the password: only
//!   for a loopback server).
//! - `trust-server-certificate=true` accepts any certificate (encrypted, not verified);
//!   `ca=<PEM file>` verifies against that CA instead of the system's roots.
//!
//! Unknown parameters are refused rather than ignored, so a misspelt `encrypt` never falls
//! back to something weaker than written. The password may be percent-encoded in the URL; a
//! site's separate `password` overrides it.

use std::fmt;

use tiberius::{AuthMethod, Config, EncryptionLevel};

/// The accepted `encrypt` values, for messages.
const ENCRYPT_VALUES: &str = "required, login, none";

/// How much of a connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MssqlEncrypt {
    /// Everything, or no connection.
    Required,
    /// The login only.
    Login,
    /// Nothing.
    None,
}

/// A SQL Server URL, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct MssqlUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port (1433 unless given).
    pub port: u16,
    /// The database.
    pub database: String,
    /// The login.
    pub user: String,
    /// The password (percent-decoded), if any.
    pub password: Option<String>,
    /// `encrypt`.
    pub encrypt: MssqlEncrypt,
    /// `trust-server-certificate=true`.
    pub trust_server_certificate: bool,
    /// `ca`.
    pub ca: Option<String>,
}

/// A URL duplex cannot connect with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "SQL Server URL: {0}; write it like \
     mssql://user@host:1433/database?encrypt=required"
)]
pub struct MssqlUrlError(pub String);

impl fmt::Debug for MssqlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MssqlUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("encrypt", &self.encrypt)
            .field("trust_server_certificate", &self.trust_server_certificate)
            .field("ca", &self.ca)
            .finish()
    }
}

impl MssqlUrl {
    /// Parses `url`; `password`, when given, overrides any password in it.
    pub fn parse(url: &str, password: Option<&str>) -> Result<MssqlUrl, MssqlUrlError> {
        let bad = |what: String| MssqlUrlError(what);
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "mssql" | "sqlserver") {
            return Err(bad(format!(
                "the scheme must be mssql:// (found {}://)",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .to_owned();
        let database = parsed.path().trim_start_matches('/').to_owned();
        if database.is_empty() || database.contains('/') {
            return Err(bad("name exactly one database as the path".into()));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = decode(parsed.username());
        if user.is_empty() {
            return Err(bad("no user: SQL Server logins are required".into()));
        }
        let mut out = MssqlUrl {
            host,
            port: parsed.port().unwrap_or(1433),
            database: decode(&database),
            user,
            password: password
                .map(str::to_owned)
                .or_else(|| parsed.password().map(decode)),
            encrypt: MssqlEncrypt::Required,
            trust_server_certificate: false,
            ca: None,
        };
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "encrypt" => {
                    out.encrypt = match value.to_ascii_lowercase().as_str() {
                        "required" | "true" | "strict" => MssqlEncrypt::Required,
                        "login" => MssqlEncrypt::Login,
                        "none" | "false" => MssqlEncrypt::None,
                        other => {
                            return Err(bad(format!(
                                "encrypt={other} is not one of {ENCRYPT_VALUES}"
                            )));
                        }
                    }
                }
                "trust-server-certificate" => {
                    out.trust_server_certificate = match value.as_ref() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(bad(format!(
                                "trust-server-certificate={other} is not true or false"
                            )));
                        }
                    }
                }
                "ca" => out.ca = Some(value.into_owned()),
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (known: encrypt, trust-server-certificate, ca)"
                    )));
                }
            }
        }
        if out.trust_server_certificate && out.ca.is_some() {
            return Err(bad(
                "give ca or trust-server-certificate=true, not both".into()
            ));
        }
        Ok(out)
    }

    /// The tiberius configuration of this URL.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config.host(&self.host);
        config.port(self.port);
        config.database(&self.database);
        config.application_name("duplex");
        config.authentication(AuthMethod::sql_server(
            &self.user,
            self.password.as_deref().unwrap_or_default(),
        ));
        config.encryption(match self.encrypt {
            MssqlEncrypt::Required => EncryptionLevel::Required,
            MssqlEncrypt::Login => EncryptionLevel::Off,
            MssqlEncrypt::None => EncryptionLevel::NotSupported,
        });
        if self.trust_server_certificate {
            config.trust_cert();
        }
        if let Some(ca) = &self.ca {
            config.trust_cert_ca(ca);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gives_host_port_database_login_and_strict_encryption_by_default() {
        let url = MssqlUrl::parse("mssql://duplex:p%40ss@db.example:14330/erp", None).unwrap();
        assert_eq!(
            (
                url.host.as_str(),
                url.port,
                url.database.as_str(),
                url.user.as_str()
            ),
            ("db.example", 14330, "erp", "duplex")
        );
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.encrypt, MssqlEncrypt::Required);
        assert!(!format!("{url:?}").contains("p@ss"));
        assert_eq!(url.config().get_addr(), "db.example:14330");
        let over = MssqlUrl::parse("mssql://duplex:old@db/erp", Some("new")).unwrap();
        assert_eq!(over.password.as_deref(), Some("new"));
        assert_eq!(over.port, 1433);
    }

    #[test]
    fn tls_parameters_are_read_and_unknown_ones_refused() {
        let url = MssqlUrl::parse(
            "mssql://u@h/d?encrypt=login&trust-server-certificate=true",
            None,
        )
        .unwrap();
        assert_eq!(url.encrypt, MssqlEncrypt::Login);
        assert!(url.trust_server_certificate);
        let ca = MssqlUrl::parse("mssql://u@h/d?ca=/etc/ca.pem&encrypt=none", None).unwrap();
        assert_eq!(ca.ca.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(ca.encrypt, MssqlEncrypt::None);
        for (bad, says) in [
            ("mssql://u@h/d?encrypt=maybe", "encrypt=maybe"),
            (
                "mssql://u@h/d?encrpyt=required",
                "unknown parameter \"encrpyt\"",
            ),
            (
                "mssql://u@h/d?trust-server-certificate=yes",
                "not true or false",
            ),
            (
                "mssql://u@h/d?ca=x&trust-server-certificate=true",
                "not both",
            ),
            ("mssql://u@h/", "one database"),
            ("mssql://h/d", "no user"),
            ("postgres://u@h/d", "scheme"),
            ("not a url", "not a URL"),
        ] {
            let error = MssqlUrl::parse(bad, None).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(error.contains("mssql://user@host:1433/database"), "{bad}");
        }
    }
}
