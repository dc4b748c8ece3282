//! The `[bus]` section: the NATS JetStream server readers publish to and writers consume from
//! (see `crate::bus`). Without it duplex runs in one process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Secret;
use super::validate::read_password;

/// Where duplex's bus roles meet: a NATS JetStream server (`[bus]`).
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// `url`: the NATS server (`nats://host:4222`; `tls://` requires TLS).
    pub url: String,
    /// `user`, with `password_env` / `password_file`.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// `creds_file`: a NATS credentials file (JWT and seed).
    pub creds_file: Option<PathBuf>,
    /// `tls_ca_file`: the CA that signed the server's certificate (TLS required when set).
    pub tls_ca_file: Option<PathBuf>,
    /// `stream_prefix`: streams are `<prefix>_<site>`, the lease bucket `<prefix>_leases`.
    pub stream_prefix: String,
    /// `max_age`: JetStream drops messages older than this (none when absent).
    pub max_age: Option<Duration>,
    /// `max_bytes`: JetStream drops the oldest messages past this size (none when absent).
    pub max_bytes: Option<i64>,
    /// `lease_ttl`: a writer that stops renewing its lease for this long loses it.
    pub lease_ttl: Duration,
}

impl BusConfig {
    /// The deployment the targets' `duplex.positions` rows of this bus are recorded under
    /// (`<site>@bus-<stream_prefix>`): the bus's, not one process's state directory, so any
    /// writer on any machine, and a backfill, read and write the same rows.
    pub fn deployment(&self) -> String {
        format!("bus-{}", self.stream_prefix)
    }
}

/// `[bus]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBus {
    kind: String,
    url: String,
    user: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    creds_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    #[serde(default = "default_prefix")]
    stream_prefix: String,
    max_age: Option<String>,
    max_bytes: Option<i64>,
    lease_ttl: Option<String>,
}

fn default_prefix() -> String {
    "duplex".into()
}

/// Checks `[bus]`, reporting each problem with the field it concerns.
/// With a bus, a site's name is part of JetStream stream names and subjects: only letters,
/// digits, '_' and '-', as for the prefix. A `.` would add a token to its subjects (`shop.a.b`
/// for site `a.b`), which could then equal another stream's subject; `*`, `>` and spaces are
/// not allowed in them at all.
pub(super) fn validate_site_names<'a>(
    sites: impl Iterator<Item = &'a String>,
    report: &mut impl FnMut(String, String),
) {
    for site in sites {
        if !valid_name(site) {
            report(
                format!("sites.{site}"),
                "with a [bus], a site's name names JetStream streams and subjects: use only \
                 letters, digits, '_' and '-' (rename the site in the configuration)"
                    .into(),
            );
        }
    }
}

/// A name JetStream takes in stream names and subject tokens alike.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn validate_bus(
    raw: &RawBus,
    base: &Path,
    report: &mut impl FnMut(String, String),
) -> Option<BusConfig> {
    let mut ok = true;
    if raw.kind != "nats" {
        report(
            "bus.kind".into(),
            format!(
                "{:?} is not a bus duplex knows: write kind = \"nats\"",
                raw.kind
            ),
        );
        ok = false;
    }
    if !["nats://", "tls://"].iter().any(|s| raw.url.starts_with(s)) {
        report(
            "bus.url".into(),
            "must start with nats:// or tls:// (e.g. \"nats://127.0.0.1:4222\")".into(),
        );
        ok = false;
    }
    if !valid_name(&raw.stream_prefix) {
        report(
            "bus.stream_prefix".into(),
            "use only letters, digits, '_' and '-' (it names JetStream streams)".into(),
        );
        ok = false;
    }
    let password = read_password(
        "bus",
        raw.password_env.as_deref(),
        raw.password_file.as_deref(),
        base,
        report,
    );
    if password.is_some() != raw.user.is_some() {
        report(
            "bus.user".into(),
            "give user together with password_env or password_file".into(),
        );
        ok = false;
    }
    if raw.user.is_some() && raw.creds_file.is_some() {
        report(
            "bus.creds_file".into(),
            "set user/password or creds_file, not both".into(),
        );
        ok = false;
    }
    let mut duration = |field: &str, text: Option<&str>, default: Option<Duration>| match text
        .map(humantime::parse_duration)
    {
        None => Some(default),
        Some(Ok(d)) if d >= Duration::from_secs(1) => Some(Some(d)),
        Some(Ok(_)) => {
            report(format!("bus.{field}"), "must be at least 1s".into());
            None
        }
        Some(Err(error)) => {
            report(
                format!("bus.{field}"),
                format!("not a duration ({error}): write e.g. \"7d\" or \"10s\""),
            );
            None
        }
    };
    let max_age = duration("max_age", raw.max_age.as_deref(), None);
    let lease_ttl = duration(
        "lease_ttl",
        raw.lease_ttl.as_deref(),
        Some(Duration::from_secs(10)),
    );
    if raw.max_bytes.is_some_and(|b| b <= 0) {
        report("bus.max_bytes".into(), "must be positive".into());
        ok = false;
    }
    let (Some(max_age), Some(Some(lease_ttl))) = (max_age, lease_ttl) else {
        return None;
    };
    ok.then(|| BusConfig {
        url: raw.url.clone(),
        user: raw.user.clone(),
        password,
        creds_file: raw.creds_file.as_ref().map(|f| base.join(f)),
        tls_ca_file: raw.tls_ca_file.as_ref().map(|f| base.join(f)),
        stream_prefix: raw.stream_prefix.clone(),
        max_age,
        max_bytes: raw.max_bytes,
        lease_ttl,
    })
}
