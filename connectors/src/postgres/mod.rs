//! PostgreSQL: positions, catalog reading and preflight checks (the change stream, snapshot and
//! applier build on these).

mod apply;
mod batch;
mod bulk;
mod catalog;
pub mod claim;
mod copy;
mod digest;
mod error;
pub(crate) mod head;
mod load;
mod param;
pub mod pgoutput;
mod position;
mod positions;
mod preflight;
mod reorder;
mod slot;
mod snapshot;
mod sql;
mod stream;
pub mod teardown;
mod tls;
pub mod types;
mod verify;

pub use apply::{PgApplier, PgSession};
pub use catalog::{ReplicaIdentity, TableInfo, collations, describe_table, table_names};
pub use error::PgError;
pub use load::{
    delete_position, delete_positions_like, position_sources, rename_position, table_is_empty,
    target_foreign_keys,
};
pub use position::{Lsn, LsnParseError};
pub use positions::{CLAIMS_DDL, POSITIONS_DDL};
pub use preflight::{check_encryption, check_server, check_table};
pub use slot::{choose_slot_name, ensure_publication};
pub(crate) use snapshot::backfill_snapshot;
pub use snapshot::{PgExportedSnapshot, PgSnapshotError, PgSnapshotReader};
pub use stream::{PgStream, PgStreamConfig, PgStreamError};
pub use tls::{PgSslMode, PgTls, split_url};
pub use verify::{confirmed_position, recorded_position};

use std::time::Duration;

use tokio_postgres::Client;

/// Connects as an ordinary (non-replication) session. `password`, when given, overrides any
/// password in the URL. The connection task runs on the current tokio runtime.
pub async fn connect(url: &str, password: Option<&str>) -> Result<Client, PgError> {
    let (url, tls) = split_url(url)?;
    let mut config: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
    config.ssl_mode(tls.driver_mode());
    if let Some(password) = password {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // A peer gone silently (a partition, a host powered off) is noticed by TCP keepalives
    // within about a minute instead of the kernel's two hours, unless the URL chose its own
    // (keepalives_idle=...). Only the peer's kernel answers them, so a long statement or COPY
    // is never cut short.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
    }
    config.application_name("duplex");
    let target = describe_target(&config);
    let (client, connection) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
            tls.rustls_config()?,
        ))
        .await
        .map_err(|source| PgError::Connect {
            target: target.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%target, %error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// `user@host:port/dbname` for messages (never the password).
fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// The replication slot and publication names duplex uses for a PostgreSQL site.
///
/// Slot names are global to a PostgreSQL server and may hold only lower-case letters, digits
/// and `_`, at most 63 characters, while site and database names may hold anything. The name is
/// `duplex_<database>_<site>` when both are already made of lower-case letters, digits and `_`
/// and it fits: existing slots of such sites keep their names. Otherwise every other character is
/// written as `_`, the result is cut to leave room, and `_` plus 8 hex digits of a stable hash
/// (64-bit FNV-1a, [`name_hash`]) of the original database and site names are appended, so sites
/// `a-b` and `a_b` (or `Shop` and `shop`, or two long names alike in their first 63 characters)
/// get different names. A clean name cannot end in such a suffix by accident unless the site is
/// named so; two sites of one configuration that still meet on one server are refused by the
/// configuration check. The database keeps two deployments reading different databases apart.
///
/// Earlier releases wrote the escaped name without the hash ([`legacy_slot_name`]); a stream
/// keeps using a slot of that name when its publication is claimed by its deployment (see
/// [`choose_slot_name`]).
pub fn slot_name(site: &crate::SiteConnection) -> String {
    let database = site.database();
    let (clean_db, db_changed) = clean(&database);
    let (clean_site, site_changed) = clean(&site.name);
    let name = format!("duplex_{clean_db}_{clean_site}");
    if !db_changed && !site_changed && name.len() <= MAX_NAME {
        return name;
    }
    let suffix = format!("_{:08x}", name_hash(&database, &site.name) as u32);
    let mut name = name;
    name.truncate(MAX_NAME - suffix.len());
    name.push_str(&suffix);
    name
}

/// The name earlier releases of duplex gave the slot of `site` when it differs from
/// [`slot_name`]: every character that is not a lower-case letter or digit written as `_`, cut
/// at 63 characters.
pub fn legacy_slot_name(site: &crate::SiteConnection) -> Option<String> {
    let legacy = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("duplex_{}_{}", legacy(&site.database()), legacy(&site.name));
    name.truncate(MAX_NAME);
    (name != slot_name(site)).then_some(name)
}

/// `text` with every character but lower-case letters, digits and `_` written as `_`, and
/// whether any was.
fn clean(text: &str) -> (String, bool) {
    let mut changed = false;
    let cleaned = text
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                changed = true;
                '_'
            }
        })
        .collect();
    (cleaned, changed)
}

/// 64-bit FNV-1a of the database and site names (with a separator no name holds): stable
/// across releases and platforms, unlike `std`'s hasher.
pub fn name_hash(database: &str, site: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in database.bytes().chain([0]).chain(site.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Quotes an identifier for PostgreSQL (`"a""b"`).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::{legacy_slot_name, slot_name};
    use crate::{SiteConnection, SiteKind};

    fn site(name: &str, database: &str) -> SiteConnection {
        SiteConnection {
            name: name.to_owned(),
            kind: SiteKind::Postgres,
            url: format!("postgres://duplex@localhost:5432/{database}"),
            password: None,
            slot_names_taken: Vec::new(),
        }
    }

    fn plain(name: &str) -> bool {
        name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(super::quote_ident(r#"we"ird"#), r#""we""ird""#);
    }

    #[test]
    fn clean_names_keep_the_name_earlier_releases_gave_them() {
        assert_eq!(slot_name(&site("store", "shop")), "duplex_shop_store");
        assert_eq!(slot_name(&site("a_b", "shop")), "duplex_shop_a_b");
        assert_eq!(legacy_slot_name(&site("a_b", "shop")), None);
    }

    #[test]
    fn names_that_needed_escaping_get_a_stable_hash() {
        let dashed = slot_name(&site("a-b", "shop"));
        assert_eq!(dashed, "duplex_shop_a_b_8f2a33b1");
        assert_ne!(dashed, slot_name(&site("a_b", "shop")));
        assert_eq!(
            legacy_slot_name(&site("a-b", "shop")).as_deref(),
            Some("duplex_shop_a_b")
        );
        assert_ne!(
            slot_name(&site("Store", "shop")),
            slot_name(&site("store", "shop"))
        );
        assert_ne!(
            slot_name(&site("store", "Shop")),
            slot_name(&site("store", "shop"))
        );
        assert!(plain(&dashed));
        assert!(plain(&slot_name(&site("Ünïcode site", "shop"))));
    }

    #[test]
    fn long_names_are_cut_and_told_apart_by_the_hash() {
        let long = "x".repeat(80);
        let a = slot_name(&site(&format!("{long}a"), "shop"));
        let b = slot_name(&site(&format!("{long}b"), "shop"));
        assert_eq!(a.len(), 63);
        assert_eq!(b.len(), 63);
        assert_ne!(a, b);
        assert!(plain(&a) && plain(&b));
    }

    #[test]
    fn the_name_is_injective_over_many_similar_names() {
        let mut seen = std::collections::HashMap::new();
        let alphabet = ["a", "A", "-", "_", ".", " ", "b", "é"];
        for x in alphabet {
            for y in alphabet {
                for z in alphabet {
                    let name = format!("{x}{y}{z}");
                    let slot = slot_name(&site(&name, "db"));
                    assert!(plain(&slot), "{slot}");
                    if let Some(other) = seen.insert(slot.clone(), name.clone()) {
                        panic!("{other:?} and {name:?} both map to {slot}");
                    }
                }
            }
        }
    }
}
