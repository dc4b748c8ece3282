//! The configuration file: sites (databases) and mappings (which tables replicate where).
//!
//! Parsing is strict (every key duplex does not know is an error, all of them reported at once:
//! a misspelt key is never a silently ignored setting) and [`Config::from_toml`] validates everything it can without connecting: every
//! problem is reported with the field it concerns and the rule it broke, all at once.
//! Passwords come from an environment variable or a file and live in [`Secret`], whose `Debug`
//! and `Display` print `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use duplex_connectors::{SiteKind, TableName};
use indexmap::IndexMap;
use serde::Deserialize;

use crate::column_policy::ColumnPolicy;

mod bus;
mod validate;

pub use bus::BusConfig;

use validate::{slot_names_apart, validate_mapping, validate_site};

/// A secret value (a password). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for handing to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded state store lives.
    pub state_dir: PathBuf,
    /// Databases by name, in file order.
    pub sites: IndexMap<String, Site>,
    /// Table mappings, in file order.
    pub mappings: Vec<Mapping>,
    /// How long the merge engine keeps the version vectors of a row deleted at every site
    /// (`state.deleted_rows_kept_for`); after that they are reclaimed.
    pub deleted_rows_kept_for: std::time::Duration,
    /// `[metrics] listen`: where `/metrics` and `/health` are served (none when absent).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[bus]`: where reader and writer roles meet (none: one process).
    pub bus: Option<BusConfig>,
}

/// One database.
#[derive(Clone)]
pub struct Site {
    /// The site's name in the configuration.
    pub name: String,
    /// PostgreSQL or MySQL/MariaDB.
    pub kind: SiteKind,
    /// Connection URL, possibly with a password in it (see [`Site::redacted_url`]).
    pub url: String,
    /// Password from `password_env` or `password_file`, overriding one in the URL.
    pub password: Option<Secret>,
    /// `stream_timeout`: how long the change stream read from this site may go without any
    /// message (though it asks for one every third of it) before the connection is presumed
    /// dead and the stream reconnects.
    pub stream_timeout: std::time::Duration,
    /// The replication slot names of the other PostgreSQL sites on this site's server.
    pub slot_names_taken: Vec<String>,
}

impl Site {
    /// The URL with any password replaced by `***`, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// How the connectors reach this site.
    pub fn connection(&self) -> duplex_connectors::SiteConnection {
        duplex_connectors::SiteConnection {
            name: self.name.clone(),
            kind: self.kind,
            url: self.url.clone(),
            password: self.password.as_ref().map(|p| p.expose().to_owned()),
            slot_names_taken: self.slot_names_taken.clone(),
        }
    }
}

impl fmt::Debug for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Site")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.redacted_url())
            .field("password", &self.password)
            .field("stream_timeout", &self.stream_timeout)
            .finish()
    }
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Which way changes flow in a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Every site's changes go to every other site.
    Both,
    /// Changes flow from one site to another only.
    OneWay {
        /// Source site.
        from: String,
        /// Target site.
        to: String,
    },
}

/// How a conflict between concurrent changes of one row is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The later commit wins; ties go to the site listed first in the mapping.
    LastWriterWins,
    /// This site's version always wins.
    Prefer(String),
    /// Changes to different columns both survive; same column falls back to last writer wins.
    MergeColumns,
    /// Each site keeps its value and the conflict waits for `duplex conflicts resolve`.
    Hold,
}

/// One replicated table across two or more sites.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Unique name.
    pub name: String,
    /// The table on each site, in file order.
    pub tables: IndexMap<String, TableName>,
    /// Which way changes flow.
    pub direction: Direction,
    /// Conflict policy.
    pub conflict: ConflictPolicy,
    /// Replicated columns by their canonical names; `None` means all columns.
    pub columns: Option<Vec<String>>,
    /// Column-level conflict policies by canonical column name; other columns follow
    /// `conflict`.
    pub column_conflict: IndexMap<String, ColumnPolicy>,
    /// Per site, per canonical column: the site's codes for the column's values.
    pub values: BTreeMap<String, crate::value_map::SiteValues>,
    /// Per site: which rows it receives (two-way mappings).
    pub filters: BTreeMap<String, crate::filter::Filter>,
    /// Per site: canonical column name -> that site's column name.
    pub rename: BTreeMap<String, BTreeMap<String, String>>,
    /// What a change a target refuses does.
    pub on_error: OnError,
    /// A schema-wide mapping (`tables = { store = "public.*", ... }`): which tables it stands
    /// for; `None` for a mapping of one table. Expanded into one mapping per table by
    /// [`crate::expand`] before anything connects to replicate.
    pub pattern: Option<TablePattern>,
}

/// The tables a schema-wide mapping stands for: every table present under the same name in
/// the schema (database) named on each of its sites, whose name matches one of `include` (all
/// when empty) and none of `exclude` (globs: `*`, `?`, `[a-z]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePattern {
    /// Globs a table name must match one of (every name when empty).
    pub include: Vec<String>,
    /// Globs a table name must match none of.
    pub exclude: Vec<String>,
}

impl TablePattern {
    /// Whether the table named `name` is one of the pattern's.
    pub fn matches(&self, name: &str) -> bool {
        let matching = |globs: &[String]| {
            globs
                .iter()
                .filter_map(|g| glob::Pattern::new(g).ok())
                .any(|p| p.matches(name))
        };
        (self.include.is_empty() || matching(&self.include)) && !matching(&self.exclude)
    }
}

/// What a change a target refuses (a constraint, a value that does not fit) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// The link stops at that source transaction, naming the row, the position and the fix.
    #[default]
    Stop,
    /// The refused change is set aside in the state store (with every later change of the same
    /// row, so rows never go out of order) and the link goes on; `duplex dead-letters` lists
    /// them and `duplex dead-letters retry` writes them in order once the cause is fixed.
    DeadLetter,
}

impl Mapping {
    /// The column name a site uses for a canonical column.
    pub fn site_column<'a>(&'a self, site: &str, canonical: &'a str) -> &'a str {
        self.rename
            .get(site)
            .and_then(|r| r.get(canonical))
            .map_or(canonical, String::as_str)
    }

    /// The canonical name of a site's column.
    pub fn canonical_column<'a>(&'a self, site: &str, local: &'a str) -> &'a str {
        self.rename
            .get(site)
            .and_then(|r| r.iter().find(|(_, l)| l.as_str() == local))
            .map_or(local, |(c, _)| c.as_str())
    }

    /// Every (source, target) pair changes flow along.
    pub fn edges(&self) -> Vec<(&str, &str)> {
        match &self.direction {
            Direction::OneWay { from, to } => vec![(from.as_str(), to.as_str())],
            Direction::Both => {
                let sites: Vec<&str> = self.tables.keys().map(String::as_str).collect();
                let mut edges = Vec::new();
                for a in &sites {
                    for b in &sites {
                        if a != b {
                            edges.push((*a, *b));
                        }
                    }
                }
                edges
            }
        }
    }

    /// Whether changes are read from this site.
    pub fn reads_from(&self, site: &str) -> bool {
        self.edges().iter().any(|(from, _)| *from == site)
    }

    /// Whether changes are written into this site.
    pub fn writes_to(&self, site: &str) -> bool {
        self.edges().iter().any(|(_, to)| *to == site)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (unknown key, wrong type, ...).
    #[error("config file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// TOML error, with line and column.
        source: toml::de::Error,
    },
    /// Values break rules; every problem is listed.
    #[error("config file {path} has {} problem(s):\n{}", .problems.len(), list_problems(.problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, field by field.
        problems: Vec<Problem>,
    },
}

/// One broken rule: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, e.g. `mappings[0].tables.wms`.
    pub field: String,
    /// The rule it broke and what to do.
    pub rule: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

fn list_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    sites: IndexMap<String, RawSite>,
    #[serde(default)]
    mappings: Vec<RawMapping>,
    metrics: Option<RawMetrics>,
    bus: Option<bus::RawBus>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize)]
struct RawState {
    #[serde(default = "default_state_dir")]
    dir: PathBuf,
    #[serde(default = "default_deleted_rows_kept_for")]
    deleted_rows_kept_for: String,
}

impl Default for RawState {
    fn default() -> RawState {
        RawState {
            dir: default_state_dir(),
            deleted_rows_kept_for: default_deleted_rows_kept_for(),
        }
    }
}

fn default_deleted_rows_kept_for() -> String {
    "7d".to_owned()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("duplex-state")
}

#[derive(Deserialize)]
struct RawSite {
    kind: String,
    url: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    stream_timeout: Option<String>,
}

#[derive(Deserialize)]
struct RawMapping {
    name: String,
    tables: IndexMap<String, String>,
    direction: String,
    #[serde(default = "default_conflict")]
    conflict: String,
    columns: Option<Vec<String>>,
    #[serde(default)]
    column_conflict: IndexMap<String, toml::Value>,
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, IndexMap<String, String>>>,
    #[serde(default)]
    filter: BTreeMap<String, String>,
    #[serde(default)]
    rename: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default = "default_on_error")]
    on_error: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

fn default_on_error() -> String {
    "stop".to_owned()
}

fn default_conflict() -> String {
    "last-writer-wins".to_owned()
}

impl Config {
    /// The first SQL Server site of `mapping`, for the commands not built for SQL Server sites
    /// yet (backfill, verify) to refuse it up front.
    pub fn sql_server_site<'a>(&self, mapping: &'a Mapping) -> Option<&'a str> {
        self.sql_server_site_except(mapping, None)
    }

    /// The same, leaving out site `except` (a backfill's source, say).
    pub fn sql_server_site_except<'a>(
        &self,
        mapping: &'a Mapping,
        except: Option<&str>,
    ) -> Option<&'a str> {
        mapping
            .tables
            .keys()
            .find(|site| {
                Some(site.as_str()) != except
                    && self
                        .sites
                        .get(*site)
                        .is_some_and(|s| s.kind == SiteKind::Mssql)
            })
            .map(String::as_str)
    }

    /// Reads and validates a config file. Relative `state.dir` and `password_file` paths are
    /// taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, path, base)
    }

    /// Parses and validates configuration text; `path` is only used in messages, `base` is
    /// the directory relative paths are resolved against.
    pub fn from_toml(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let parse_error = |source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        };
        // Every key duplex does not know is collected (not only the first), and reported with
        // the other problems: a misspelt key never silently does nothing.
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(
            toml::Deserializer::parse(text).map_err(parse_error)?,
            |key| unknown.push(key.to_string()),
        )
        .map_err(parse_error)?;
        let mut problems = Vec::new();
        let mut report = |field: String, rule: String| problems.push(Problem { field, rule });
        for key in unknown {
            // `mappings.0.x` as the other problems name a mapping: `mappings[0] (orders).x`.
            let key = match key
                .strip_prefix("mappings.")
                .and_then(|rest| rest.split_once('.'))
            {
                Some((index, rest)) => match index
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| raw.mappings.get(i))
                {
                    Some(mapping) => format!("mappings[{index}] ({}).{rest}", mapping.name),
                    None => key,
                },
                None => key,
            };
            report(
                key,
                "unknown key: duplex has no such setting here (see the configuration reference in README.md; check the spelling and the section)".into(),
            );
        }

        if raw.sites.is_empty() {
            report(
                "sites".into(),
                "no sites are defined: add a [sites.<name>] table per database".into(),
            );
        }
        let mut sites = IndexMap::new();
        for (name, raw_site) in &raw.sites {
            if let Some(site) = validate_site(name, raw_site, base, &mut report) {
                sites.insert(name.clone(), site);
            }
        }
        slot_names_apart(&mut sites, &mut report);
        if raw.mappings.is_empty() {
            report(
                "mappings".into(),
                "no mappings are defined: add a [[mappings]] table per replicated table".into(),
            );
        }
        let mut mappings: Vec<Mapping> = Vec::new();
        for (index, raw_mapping) in raw.mappings.iter().enumerate() {
            let field = format!("mappings[{index}] ({})", raw_mapping.name);
            if mappings.iter().any(|m| m.name == raw_mapping.name) {
                report(
                    format!("{field}.name"),
                    format!(
                        "mapping name {:?} is used twice: names must be unique",
                        raw_mapping.name
                    ),
                );
            }
            if let Some(mapping) = validate_mapping(&field, raw_mapping, &raw.sites, &mut report) {
                mappings.push(mapping);
            }
        }
        for two_way in mappings.iter().filter(|m| m.direction == Direction::Both) {
            for one_way in &mappings {
                if let Direction::OneWay { from, .. } = &one_way.direction
                    && two_way.tables.contains_key(from)
                {
                    report(
                        format!("mappings ({}).direction", one_way.name),
                        format!(
                            "site {from} is in two-way mapping {} and the source of one-way mapping {}: duplex cannot yet read one site for both kinds; make {} two-way or read it from another site",
                            two_way.name, one_way.name, one_way.name
                        ),
                    );
                }
            }
        }
        let deleted_rows_kept_for = match humantime::parse_duration(
            &raw.state.deleted_rows_kept_for,
        ) {
            Ok(duration) => Some(duration),
            Err(error) => {
                report(
                    "state.deleted_rows_kept_for".into(),
                    format!(
                        "{:?} is not a duration ({error}): write e.g. \"7d\", \"12h\" or \"30min\"",
                        raw.state.deleted_rows_kept_for
                    ),
                );
                None
            }
        };
        let metrics_listen = match &raw.metrics {
            None => None,
            Some(metrics) => match metrics.listen.parse::<std::net::SocketAddr>() {
                Ok(listen) => Some(listen),
                Err(error) => {
                    report(
                        "metrics.listen".into(),
                        format!(
                            "{:?} is not an address and port ({error}): write e.g. \"127.0.0.1:9464\"",
                            metrics.listen
                        ),
                    );
                    None
                }
            },
        };
        let bus = raw
            .bus
            .as_ref()
            .and_then(|raw_bus| bus::validate_bus(raw_bus, base, &mut report));
        if raw.bus.is_some() {
            bus::validate_site_names(raw.sites.keys(), &mut report);
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(Config {
            state_dir: base.join(raw.state.dir),
            sites,
            mappings,
            deleted_rows_kept_for: deleted_rows_kept_for.unwrap_or_default(),
            metrics_listen,
            bus,
        })
    }
}
