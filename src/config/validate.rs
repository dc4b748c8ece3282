//! Validating the parsed configuration: each site and each mapping, every problem reported
//! with its field (see [`super::Config::from_toml`]).

use std::path::Path;

use duplex_connectors::{SiteKind, TableName};
use indexmap::IndexMap;

use super::{
    ConflictPolicy, Direction, Mapping, OnError, RawMapping, RawSite, Secret, Site, TablePattern,
    redact_url,
};

/// Reports two PostgreSQL sites on one server (host and port as their URLs say) whose
/// replication slots would have one name: they would read each other's changes.
/// Also records on each such site the slot names of the others on its server.
pub(super) fn slot_names_apart(
    sites: &mut IndexMap<String, Site>,
    report: &mut impl FnMut(String, String),
) {
    let server = |site: &Site| {
        url::Url::parse(&site.url).ok().map(|url| {
            (
                url.host_str().unwrap_or_default().to_owned(),
                url.port().unwrap_or(5432),
            )
        })
    };
    // (site, server, slot name)
    type Server = Option<(String, u16)>;
    let slots: Vec<(String, Server, String)> = sites
        .values()
        .filter(|s| s.kind == SiteKind::Postgres)
        .map(|s| {
            let slot = duplex_connectors::postgres::slot_name(&s.connection());
            (s.name.clone(), server(s), slot)
        })
        .collect();
    for (name, at, _) in &slots {
        let taken = slots
            .iter()
            .filter(|(other, other_at, _)| other != name && other_at == at)
            .map(|(_, _, slot)| slot.clone())
            .collect();
        sites[name].slot_names_taken = taken;
    }
    let mut seen: std::collections::HashMap<(String, u16, String), &str> = Default::default();
    for (name, at, slot) in &slots {
        let Some(at) = at else {
            continue;
        };
        if let Some(other) = seen.insert((at.0.clone(), at.1, slot.clone()), name) {
            report(
                format!("sites.{name}"),
                format!(
                    "sites {other} and {name} on one PostgreSQL server would use one replication slot \
                     and publication, {slot}: rename one of them"
                ),
            );
        }
    }
}

pub(super) fn validate_site(
    name: &str,
    raw: &RawSite,
    base: &Path,
    report: &mut impl FnMut(String, String),
) -> Option<Site> {
    let field = format!("sites.{name}");
    let kind = match raw.kind.as_str() {
        "postgres" | "postgresql" => Some(SiteKind::Postgres),
        "mysql" | "mariadb" => Some(SiteKind::Mysql),
        "mssql" | "sqlserver" => Some(SiteKind::Mssql),
        other => {
            report(
                format!("{field}.kind"),
                format!(
                    "unknown kind {other:?}: use \"postgres\", \"mysql\" (for MySQL and MariaDB) \
                     or \"mssql\" (SQL Server)"
                ),
            );
            None
        }
    };
    let url_ok = match (kind, url::Url::parse(&raw.url)) {
        // The SQL Server URL parser names every problem itself (scheme, host, user, database,
        // encryption parameters).
        (Some(SiteKind::Mssql), _) => {
            match duplex_connectors::mssql::MssqlUrl::parse(&raw.url, None) {
                Ok(_) => true,
                Err(error) => {
                    report(format!("{field}.url"), error.to_string());
                    false
                }
            }
        }
        (_, Err(e)) => {
            report(
                format!("{field}.url"),
                format!(
                    "{} is not a URL ({e}): write it like postgres://user@host:5432/dbname or mysql://user@host:3306/dbname",
                    redact_url(&raw.url)
                ),
            );
            false
        }
        (Some(kind), Ok(url)) => {
            let schemes: &[&str] = match kind {
                SiteKind::Postgres => &["postgres", "postgresql"],
                SiteKind::Mysql => &["mysql"],
                SiteKind::Mssql => &["mssql", "sqlserver"],
            };
            let mut ok = true;
            if !schemes.contains(&url.scheme()) {
                report(
                    format!("{field}.url"),
                    format!(
                        "a {kind} site's URL must start with {}:// (found {}://)",
                        schemes[0],
                        url.scheme()
                    ),
                );
                ok = false;
            }
            if url.host_str().is_none_or(str::is_empty) {
                report(
                    format!("{field}.url"),
                    "the URL names no host: write it like postgres://user@host:port/dbname".into(),
                );
                ok = false;
            }
            if kind == SiteKind::Postgres && url.path().trim_start_matches('/').is_empty() {
                report(format!("{field}.url"), "the URL names no database: add it as the path, e.g. postgres://user@host:5432/shop".into());
                ok = false;
            }
            if url.username().is_empty() {
                report(
                    format!("{field}.url"),
                    "the URL names no user: write it like postgres://user@host:port/dbname".into(),
                );
                ok = false;
            }
            let tls = match kind {
                SiteKind::Postgres => duplex_connectors::postgres::split_url(&raw.url)
                    .err()
                    .map(|e| e.to_string()),
                SiteKind::Mysql => duplex_connectors::mysql::split_url(&raw.url)
                    .err()
                    .map(|e| e.to_string()),
                SiteKind::Mssql => None,
            };
            if let Some(message) = tls {
                report(format!("{field}.url"), message);
                ok = false;
            }
            ok
        }
        (None, Ok(_)) => false,
    };
    let password = read_password(
        &field,
        raw.password_env.as_deref(),
        raw.password_file.as_deref(),
        base,
        report,
    );
    let stream_timeout = match raw.stream_timeout.as_deref().map(humantime::parse_duration) {
        None => Some(duplex_connectors::stream::DEFAULT_STREAM_TIMEOUT),
        Some(Ok(timeout)) if timeout >= std::time::Duration::from_secs(1) => Some(timeout),
        Some(Ok(_)) => {
            report(
                format!("{field}.stream_timeout"),
                "must be at least 1s (default 15s)".into(),
            );
            None
        }
        Some(Err(error)) => {
            report(
                format!("{field}.stream_timeout"),
                format!("not a duration ({error}): write e.g. \"15s\" or \"1min\""),
            );
            None
        }
    };
    Some(Site {
        name: name.to_owned(),
        kind: kind?,
        url: raw.url.clone(),
        password,
        stream_timeout: stream_timeout?,
        slot_names_taken: Vec::new(),
    })
    .filter(|_| url_ok)
}

pub(super) fn validate_mapping(
    field: &str,
    raw: &RawMapping,
    sites: &IndexMap<String, RawSite>,
    report: &mut impl FnMut(String, String),
) -> Option<Mapping> {
    let mut valid = true;
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        report(
            format!("{field}.name"),
            "a mapping name must be non-empty and use only letters, digits, '_' and '-'".into(),
        );
        valid = false;
    }
    if raw.tables.len() < 2 {
        report(
            format!("{field}.tables"),
            format!(
                "a mapping needs tables on 2 or more sites, found {}",
                raw.tables.len()
            ),
        );
        valid = false;
    }
    let mut tables = IndexMap::new();
    for (site, table) in &raw.tables {
        if !sites.contains_key(site) {
            report(
                format!("{field}.tables.{site}"),
                format!(
                    "site {site:?} is not defined: add [sites.{site}] or correct the name (defined: {})",
                    names(sites.keys())
                ),
            );
            valid = false;
        }
        match table.parse::<TableName>() {
            Ok(name) => {
                tables.insert(site.clone(), name);
            }
            Err(e) => {
                report(format!("{field}.tables.{site}"), e.to_string());
                valid = false;
            }
        }
    }
    let direction = if raw.direction == "both" {
        Some(Direction::Both)
    } else if let Some((from, to)) = raw.direction.split_once("->") {
        let (from, to) = (from.trim().to_owned(), to.trim().to_owned());
        let mut ok = true;
        for site in [&from, &to] {
            if !raw.tables.contains_key(site) {
                report(
                    format!("{field}.direction"),
                    format!(
                        "site {site:?} has no table in this mapping (tables are on: {})",
                        names(raw.tables.keys())
                    ),
                );
                ok = false;
            }
        }
        if from == to {
            report(
                format!("{field}.direction"),
                "source and target are the same site".into(),
            );
            ok = false;
        }
        if ok && raw.tables.len() > 2 {
            report(
                format!("{field}.direction"),
                "a one-way mapping has tables on exactly two sites: split it, or use \"both\""
                    .into(),
            );
            ok = false;
        }
        ok.then_some(Direction::OneWay { from, to })
    } else {
        report(
            format!("{field}.direction"),
            format!(
                "{:?} is not a direction: use \"both\" or \"<site>-><site>\"",
                raw.direction
            ),
        );
        None
    };
    let conflict = match raw.conflict.as_str() {
        "last-writer-wins" => Some(ConflictPolicy::LastWriterWins),
        "merge-columns" => Some(ConflictPolicy::MergeColumns),
        "hold" => Some(ConflictPolicy::Hold),
        other => match other.strip_prefix("prefer:") {
            Some(site) if raw.tables.contains_key(site) => {
                Some(ConflictPolicy::Prefer(site.to_owned()))
            }
            Some(site) => {
                report(
                    format!("{field}.conflict"),
                    format!(
                        "prefer:{site} names a site without a table in this mapping (tables are on: {})",
                        names(raw.tables.keys())
                    ),
                );
                None
            }
            None => {
                report(
                    format!("{field}.conflict"),
                    format!(
                        "{other:?} is not a policy: use last-writer-wins, prefer:<site>, merge-columns or hold"
                    ),
                );
                None
            }
        },
    };
    if let Some(columns) = &raw.columns {
        if columns.is_empty() {
            report(
                format!("{field}.columns"),
                "an empty column list replicates nothing: list columns or remove the key".into(),
            );
            valid = false;
        }
        let mut seen = std::collections::HashSet::new();
        for column in columns {
            if !seen.insert(column) {
                report(
                    format!("{field}.columns"),
                    format!("column {column:?} is listed twice"),
                );
                valid = false;
            }
        }
    }
    for (site, renames) in &raw.rename {
        if !raw.tables.contains_key(site) {
            report(
                format!("{field}.rename.{site}"),
                format!(
                    "site {site:?} has no table in this mapping (tables are on: {})",
                    names(raw.tables.keys())
                ),
            );
            valid = false;
        }
        let mut locals = std::collections::HashSet::new();
        for (canonical, local) in renames {
            if let Some(columns) = &raw.columns
                && !columns.contains(canonical)
            {
                report(
                    format!("{field}.rename.{site}.{canonical}"),
                    format!("column {canonical:?} is not in this mapping's columns list"),
                );
                valid = false;
            }
            if !locals.insert(local) {
                report(
                    format!("{field}.rename.{site}.{canonical}"),
                    format!("two columns are renamed to {local:?}"),
                );
                valid = false;
            }
        }
    }
    let on_error = match raw.on_error.as_str() {
        "stop" => Some(OnError::Stop),
        "dead-letter" if raw.direction == "both" => {
            report(
                format!("{field}.on_error"),
                "\"dead-letter\" is for one-way mappings; a two-way mapping stops on a refused row (the merge engine must keep every site's version in step)".into(),
            );
            None
        }
        "dead-letter" => Some(OnError::DeadLetter),
        other => {
            report(
                format!("{field}.on_error"),
                format!("{other:?} is not a choice: use \"stop\" or \"dead-letter\""),
            );
            None
        }
    };
    let wildcard = tables
        .values()
        .filter(|t: &&TableName| t.name == "*")
        .count();
    let pattern = if wildcard == 0 {
        if !raw.include.is_empty() || !raw.exclude.is_empty() {
            report(
                format!("{field}.include"),
                "include / exclude are for schema-wide mappings (tables = { site = \"schema.*\", ... })".into(),
            );
            valid = false;
        }
        None
    } else {
        if wildcard != tables.len() {
            report(
                format!("{field}.tables"),
                "a schema-wide mapping names \"schema.*\" on every site (or a table on every site)"
                    .into(),
            );
            valid = false;
        }
        if raw.columns.is_some() {
            report(
                format!("{field}.columns"),
                "a schema-wide mapping replicates every column of each table: remove `columns`, or map the table on its own".into(),
            );
            valid = false;
        }
        for (key, globs) in [("include", &raw.include), ("exclude", &raw.exclude)] {
            for glob in globs {
                if let Err(error) = glob::Pattern::new(glob) {
                    report(
                        format!("{field}.{key}"),
                        format!("{glob:?} is not a table-name glob: {error}"),
                    );
                    valid = false;
                }
            }
        }
        Some(TablePattern {
            include: raw.include.clone(),
            exclude: raw.exclude.clone(),
        })
    };
    let column_conflict = crate::column_policy::parse(
        field,
        &raw.column_conflict,
        raw.columns.as_deref(),
        raw.direction == "both",
        &mut |at, message| report(at, message),
    );
    let values = crate::value_map::parse(
        field,
        &raw.values,
        &raw.tables.keys().collect::<Vec<_>>(),
        raw.columns.as_deref(),
        raw.direction == "both",
        &mut |at, message| report(at, message),
    );
    let filters = crate::filter::parse_all(
        field,
        &raw.filter,
        &raw.tables.keys().collect::<Vec<_>>(),
        raw.columns.as_deref(),
        raw.direction == "both",
        &mut |at, message| report(at, message),
    );
    if !sql_server_fits(field, raw, sites, wildcard > 0, report) {
        valid = false;
    }
    let (direction, conflict, on_error) = (direction?, conflict?, on_error?);
    let (column_conflict, values, filters) = (column_conflict?, values?, filters?);
    valid.then(|| Mapping {
        name: raw.name.clone(),
        tables,
        direction,
        conflict,
        columns: raw.columns.clone(),
        column_conflict,
        values,
        filters,
        rename: raw.rename.clone(),
        on_error,
        pattern,
    })
}

/// Refuses what a mapping with a SQL Server site asks that is not built for SQL Server yet:
/// two-way replication (the merge engine reads echo markers and writes conditionally, neither
/// wired for SQL Server), schema-wide mappings (listing a schema's tables), and mappings with
/// MySQL/MariaDB sites (no type mapping between them). True when nothing was refused.
fn sql_server_fits(
    field: &str,
    raw: &RawMapping,
    sites: &IndexMap<String, RawSite>,
    schema_wide: bool,
    report: &mut impl FnMut(String, String),
) -> bool {
    let kind_of = |site: &String| sites.get(site).map(|s| s.kind.as_str());
    let is_mssql = |site: &&String| matches!(kind_of(site), Some("mssql" | "sqlserver"));
    let Some(mssql) = raw.tables.keys().find(is_mssql) else {
        return true;
    };
    let mut fits = true;
    if schema_wide {
        report(
            format!("{field}.tables"),
            format!(
                "a schema-wide mapping (\"schema.*\") is not supported for SQL Server sites yet \
                 ({mssql} is one): name each table in a mapping of its own"
            ),
        );
        fits = false;
    }
    if let Some(mysql) = raw
        .tables
        .keys()
        .find(|s| matches!(kind_of(s), Some("mysql" | "mariadb")))
    {
        report(
            format!("{field}.tables"),
            format!(
                "a mapping between a SQL Server site ({mssql}) and a MySQL/MariaDB site ({mysql}) \
                 is not supported yet (no type mapping between them is built): map SQL Server \
                 tables with PostgreSQL sites"
            ),
        );
        fits = false;
    }
    fits
}

fn names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// The secret `{field}.password_env` or `{field}.password_file` names (at most one of them).
pub(super) fn read_password(
    field: &str,
    env: Option<&str>,
    file: Option<&std::path::Path>,
    base: &std::path::Path,
    report: &mut impl FnMut(String, String),
) -> Option<Secret> {
    match (env, file) {
        (Some(_), Some(_)) => {
            report(
                field.to_owned(),
                "set password_env or password_file, not both".into(),
            );
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(value) => Some(Secret(value)),
            Err(_) => {
                report(
                    format!("{field}.password_env"),
                    format!(
                        "environment variable {var} is not set (or not UTF-8): export it before starting duplex"
                    ),
                );
                None
            }
        },
        (None, Some(file)) => {
            let file = base.join(file);
            match std::fs::read_to_string(&file) {
                Ok(value) => Some(Secret(value.trim_end_matches(['\n', '\r']).to_owned())),
                Err(e) => {
                    report(
                        format!("{field}.password_file"),
                        format!("cannot read {}: {e}", file.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}
