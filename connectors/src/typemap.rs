//! Type mapping between database kinds, as data: one table per direction.
//!
//! Each [`TypeRule`] says, for one source base type (see [`crate::Column::type_name`]), which
//! target column types can hold its values (the first one is what duplex recommends creating)
//! and how faithful the mapping is: [`Fidelity::Exact`] (every value arrives unchanged),
//! [`Fidelity::Converted`] (values arrive in an equivalent form, explained) or
//! [`Fidelity::Refused`] (`duplex check` fails and says what to do). A source type that has no
//! rule is refused too. Between two databases of the same kind a supported type maps to itself
//! (and [`SAME_KIND_ONLY`] lists the types replicated only between databases of one kind).
//! [`MYSQL_TO_POSTGRES_INTO`] lists the conversions that hold only for one target type.
//!
//! `docs/type-mapping.md` is rendered from these tables by [`render_markdown`]; a test keeps it
//! in step.

use crate::{Column, SiteKind};

/// How faithfully values of a source type arrive on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fidelity {
    /// Every value arrives unchanged.
    Exact,
    /// Values arrive in an equivalent form; the text says how, and which values are refused.
    Converted(&'static str),
    /// The type is not replicated; the text says why and what to do.
    Refused(&'static str),
}

/// The mapping of one source base type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeRule {
    /// Source base type name.
    pub source: &'static str,
    /// Target base type names that can hold the values; the first is the recommended one.
    pub targets: &'static [&'static str],
    /// Exact, converted or refused.
    pub fidelity: Fidelity,
}

const fn exact(source: &'static str, targets: &'static [&'static str]) -> TypeRule {
    TypeRule {
        source,
        targets,
        fidelity: Fidelity::Exact,
    }
}

const fn converted(
    source: &'static str,
    targets: &'static [&'static str],
    how: &'static str,
) -> TypeRule {
    TypeRule {
        source,
        targets,
        fidelity: Fidelity::Converted(how),
    }
}

const fn refused(source: &'static str, why: &'static str) -> TypeRule {
    TypeRule {
        source,
        targets: &[],
        fidelity: Fidelity::Refused(why),
    }
}

const MYSQL_TEXT: &[&str] = &[
    "longtext",
    "mediumtext",
    "text",
    "varchar",
    "char",
    "tinytext",
];
const MYSQL_BLOB: &[&str] = &[
    "longblob",
    "mediumblob",
    "blob",
    "varbinary",
    "binary",
    "tinyblob",
];
const PG_TEXT: &[&str] = &["text", "varchar", "bpchar"];

/// PostgreSQL source types and the MySQL/MariaDB columns that take them.
pub const POSTGRES_TO_MYSQL: &[TypeRule] = &[
    converted(
        "bool",
        &["tinyint", "bit"],
        "true/false as 1/0 in TINYINT(1)",
    ),
    exact(
        "int2",
        &["smallint", "mediumint", "int", "bigint", "decimal"],
    ),
    exact("int4", &["int", "bigint", "decimal"]),
    exact("int8", &["bigint", "decimal"]),
    converted(
        "numeric",
        &["decimal"],
        "exact up to DECIMAL(65,30); NaN, ±Infinity and wider values are refused when met",
    ),
    converted(
        "float4",
        &["float", "double"],
        "NaN and ±Infinity are refused when met: MySQL cannot store them",
    ),
    converted(
        "float8",
        &["double"],
        "NaN and ±Infinity are refused when met: MySQL cannot store them",
    ),
    exact("text", MYSQL_TEXT),
    exact("varchar", MYSQL_TEXT),
    converted(
        "bpchar",
        &["char", "varchar"],
        "trailing blanks are not significant on either side",
    ),
    exact("bytea", MYSQL_BLOB),
    converted(
        "date",
        &["date"],
        "BC dates and ±infinity are refused when met (MySQL DATE is 0001-9999)",
    ),
    exact("time", &["time"]),
    converted(
        "timestamp",
        &["datetime"],
        "into DATETIME(6); years outside 1000-9999 and ±infinity are refused when met",
    ),
    converted(
        "timestamptz",
        &["datetime", "timestamp"],
        "normalised to UTC and stored as DATETIME(6) in UTC; the original offset is not kept",
    ),
    exact("uuid", &["uuid", "char", "varchar"]),
    exact("json", &["longtext", "json"]),
    exact("jsonb", &["longtext", "json"]),
    converted(
        "enum",
        &["enum", "varchar", "text"],
        "by label; a target ENUM must list the same labels",
    ),
    converted("inet", &["varchar"], "as its text form"),
    converted("cidr", &["varchar"], "as its text form"),
    converted("macaddr", &["varchar"], "as its text form"),
    converted("xml", &["longtext"], "as its text form"),
    refused(
        "timetz",
        "time with time zone has no MySQL equivalent: change the column to time or timestamptz, or leave it out of the mapping",
    ),
    converted(
        "array",
        &["json", "longtext"],
        "a one-dimensional array as the JSON array of its elements (NULL as null, numbers with \
         every digit, booleans as true/false, JSON as itself, anything else as a string of its \
         PostgreSQL text: dates 2024-01-31, instants 2024-01-31 13:45:07.5+00, bytea \\\\x00ff); \
         NaN and ±Infinity elements, arrays of arrays and lower bounds other than 1 are refused \
         when met (a column declared with more dimensions is refused here)",
    ),
    converted(
        "bit",
        &["bit"],
        "into BIT(n) of the same length n (MySQL BIT holds at most 64 bits); a value of another \
         length is refused when met, never padded or truncated",
    ),
    converted(
        "varbit",
        &["bit"],
        "into BIT(n); a value whose length is not n is refused when met (MySQL BIT has a fixed \
         length)",
    ),
    refused(
        "interval",
        "MySQL has no interval type (PostgreSQL -> PostgreSQL replicates it exactly): \
         leave the column out of the mapping, or store it as numeric seconds (extract(epoch from \
         c)) in another column",
    ),
    refused(
        "money",
        "money's text is printed and read in each session's lc_monetary, so no exact conversion \
         exists: change the column to numeric (ALTER TABLE ... ALTER COLUMN ... TYPE numeric(14,2)) \
         or leave it out of the mapping",
    ),
    refused(
        "composite",
        "composite types are not replicated: leave the column out of the mapping",
    ),
];

/// MySQL/MariaDB source types and the PostgreSQL columns that take them.
pub const MYSQL_TO_POSTGRES: &[TypeRule] = &[
    exact("tinyint", &["int2", "int4", "int8", "numeric", "bool"]),
    exact("tinyint unsigned", &["int2", "int4", "int8", "numeric"]),
    exact("smallint", &["int2", "int4", "int8", "numeric"]),
    exact("smallint unsigned", &["int4", "int8", "numeric"]),
    exact("mediumint", &["int4", "int8", "numeric"]),
    exact("mediumint unsigned", &["int4", "int8", "numeric"]),
    exact("int", &["int4", "int8", "numeric"]),
    exact("int unsigned", &["int8", "numeric"]),
    exact("bigint", &["int8", "numeric"]),
    converted(
        "bigint unsigned",
        &["numeric"],
        "PostgreSQL has no unsigned 64-bit integer: into numeric(20,0)",
    ),
    exact("decimal", &["numeric"]),
    exact("decimal unsigned", &["numeric"]),
    exact("float", &["float4", "float8"]),
    exact("double", &["float8"]),
    converted(
        "date",
        &["date"],
        "zero dates (0000-00-00) are refused when met",
    ),
    converted(
        "datetime",
        &["timestamp", "timestamptz"],
        "into timestamp; into timestamptz read as UTC (how duplex writes timestamptz into \
         DATETIME); zero dates are refused when met",
    ),
    converted(
        "timestamp",
        &["timestamptz", "timestamp"],
        "MySQL TIMESTAMP is an instant: into timestamptz (UTC); zero values are refused when met",
    ),
    converted(
        "time",
        &["time", "interval"],
        "into time only values from 00:00:00 to 24:00:00 (others are refused when met); into interval all",
    ),
    converted("year", &["int2", "int4"], "as the year number"),
    exact("char", PG_TEXT),
    exact("varchar", PG_TEXT),
    exact("tinytext", PG_TEXT),
    exact("text", PG_TEXT),
    exact("mediumtext", PG_TEXT),
    exact("longtext", &["text", "varchar", "jsonb", "json", "array"]),
    exact("json", &["jsonb", "json", "text", "array"]),
    exact("binary", &["bytea"]),
    exact("varbinary", &["bytea"]),
    exact("tinyblob", &["bytea"]),
    exact("blob", &["bytea"]),
    exact("mediumblob", &["bytea"]),
    exact("longblob", &["bytea"]),
    exact("uuid", &["uuid"]),
    converted(
        "enum",
        &["enum", "text", "varchar"],
        "by label; a target enum type must have the same labels",
    ),
    converted("set", &["text", "varchar"], "as its comma-separated labels"),
    converted(
        "bit",
        &["bit", "varbit", "bool"],
        "BIT(n) as a bit string of n bits into bit(n) or bit varying(m >= n); BIT(1) into \
         boolean (1 = true); a value of another length is refused when met",
    ),
    refused(
        "geometry",
        "spatial types are not replicated: leave the column out of the mapping",
    ),
    refused(
        "point",
        "spatial types are not replicated: leave the column out of the mapping",
    ),
    refused(
        "linestring",
        "spatial types are not replicated: leave the column out of the mapping",
    ),
    refused(
        "polygon",
        "spatial types are not replicated: leave the column out of the mapping",
    ),
];

/// Conversions from a MySQL/MariaDB source type into one particular PostgreSQL target type:
/// (source, target, how).
pub const MYSQL_TO_POSTGRES_INTO: &[(&str, &str, &str)] = &[
    ("json", "array", JSON_INTO_ARRAY),
    // MariaDB's JSON is LONGTEXT with a json_valid CHECK; its catalog says longtext.
    ("longtext", "array", JSON_INTO_ARRAY),
];

const JSON_INTO_ARRAY: &str = "a JSON array of scalars into a one-dimensional array, each \
     element read by the array's element type (null as NULL, strings as their text, numbers \
     with every digit); anything else (not an array, nested arrays, elements the type cannot \
     read) is refused when met";

/// Types replicated only between two databases of the same kind, with how.
pub const SAME_KIND_ONLY: &[(SiteKind, &str, &str)] = &[(
    SiteKind::Postgres,
    "interval",
    "exact: months, days and microseconds kept apart",
)];

/// The rule table for one direction between two different kinds.
pub fn rules(from: SiteKind, to: SiteKind) -> Option<&'static [TypeRule]> {
    match (from, to) {
        (SiteKind::Postgres, SiteKind::Mysql) => Some(POSTGRES_TO_MYSQL),
        (SiteKind::Mysql, SiteKind::Postgres) => Some(MYSQL_TO_POSTGRES),
        (SiteKind::Mssql, SiteKind::Postgres) => Some(crate::mssql::typemap::MSSQL_TO_POSTGRES),
        (SiteKind::Postgres, SiteKind::Mssql) => Some(crate::mssql::typemap::POSTGRES_TO_MSSQL),
        _ => None,
    }
}

/// Whether a source kind can read a base type at all (the types its reader decodes).
pub fn readable(kind: SiteKind, type_name: &str) -> bool {
    source_table(kind)
        .iter()
        .any(|r| r.source == type_name && !matches!(r.fidelity, Fidelity::Refused(_)))
        || SAME_KIND_ONLY
            .iter()
            .any(|(k, t, _)| *k == kind && *t == type_name)
}

/// The rules of the types a kind's reader reads, from one of its tables (each lists every
/// source type the reader decodes).
fn source_table(kind: SiteKind) -> &'static [TypeRule] {
    match kind {
        SiteKind::Postgres => POSTGRES_TO_MYSQL,
        SiteKind::Mysql => MYSQL_TO_POSTGRES,
        SiteKind::Mssql => crate::mssql::typemap::MSSQL_TO_POSTGRES,
    }
}

/// A PostgreSQL array column declared with more than one dimension (`int[][]`).
fn multi_dimensional(column: &Column) -> Option<ColumnVerdict> {
    (column.type_name == "array" && column.declared.ends_with("[][]")).then(|| {
        ColumnVerdict::Refused(format!(
            "{}: multi-dimensional arrays are not replicated: store one dimension per column \
             or leave the column out of the mapping",
            column.declared
        ))
    })
}

/// Bit strings whose declared lengths cannot match: every value of a fixed-length source
/// (`bit(n)`, MySQL `BIT(n)`) would be refused by a fixed target of another length, a
/// `varbit(m)` shorter than n, or a boolean unless n is 1.
fn bit_lengths(source: &Column, target: &Column) -> Option<ColumnVerdict> {
    if source.type_name != "bit" {
        return None;
    }
    let n = crate::apply::declared_length(&source.declared)?;
    let fits = match target.type_name.as_str() {
        "bit" => crate::apply::declared_length(&target.declared).is_none_or(|m| m == n),
        "varbit" => crate::apply::declared_length(&target.declared).is_none_or(|m| m >= n),
        "bool" => n == 1,
        _ => return None,
    };
    (!fits).then(|| {
        ColumnVerdict::Refused(format!(
            "{} cannot hold the {n} bits of every {} value: give it the same length",
            target.declared, source.declared
        ))
    })
}

/// An array's element type as declared, without modifiers (`character varying(10)[]` ->
/// `character varying`).
fn element_type(declared: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in declared.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim_end_matches("[]").trim().to_owned()
}

/// The verdict on replicating one source column into one target column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnVerdict {
    /// Values arrive unchanged.
    Exact,
    /// Values arrive converted, as the text says.
    Converted(String),
    /// Not replicable; the text says why and what to do.
    Refused(String),
}

/// Judges replicating `source` (on a `from` database) into `target` (on a `to` database).
pub fn judge(from: SiteKind, source: &Column, to: SiteKind, target: &Column) -> ColumnVerdict {
    if let Some(refusal) = multi_dimensional(source)
        .or_else(|| multi_dimensional(target))
        .or_else(|| bit_lengths(source, target))
    {
        return refusal;
    }
    let Some(table) = rules(from, to) else {
        if from != to {
            return ColumnVerdict::Refused(format!(
                "no type mapping between {from} and {to} is built yet: map SQL Server tables \
                 with PostgreSQL ({} -> {})",
                source.declared, target.declared
            ));
        }
        return judge_same_kind(from, source, target);
    };
    let Some(rule) = table.iter().find(|r| r.source == source.type_name) else {
        return ColumnVerdict::Refused(format!(
            "type {} is not supported for {from} -> {to}: leave the column out of the mapping",
            source.declared
        ));
    };
    let how = match rule.fidelity {
        Fidelity::Refused(why) => {
            return ColumnVerdict::Refused(format!("{}: {why}", source.declared));
        }
        Fidelity::Exact => None,
        Fidelity::Converted(how) => Some(how),
    };
    if !rule.targets.contains(&target.type_name.as_str()) {
        return ColumnVerdict::Refused(format!(
            "{} cannot hold {} values; change it to {} (any of: {})",
            target.declared,
            source.declared,
            rule.targets[0],
            rule.targets.join(", ")
        ));
    }
    let into = match (from, to) {
        (SiteKind::Mysql, SiteKind::Postgres) => MYSQL_TO_POSTGRES_INTO,
        _ => &[],
    };
    if let Some((_, _, how)) = into
        .iter()
        .find(|(s, t, _)| *s == source.type_name && *t == target.type_name)
    {
        return ColumnVerdict::Converted((*how).to_owned());
    }
    match how {
        None => ColumnVerdict::Exact,
        Some(how) => ColumnVerdict::Converted(how.to_owned()),
    }
}

fn judge_same_kind(kind: SiteKind, source: &Column, target: &Column) -> ColumnVerdict {
    if !readable(kind, &source.type_name) {
        let reason = source_table(kind)
            .iter()
            .find_map(|r| match r.fidelity {
                Fidelity::Refused(why) if r.source == source.type_name => Some(why),
                _ => None,
            })
            .unwrap_or("leave the column out of the mapping");
        return ColumnVerdict::Refused(format!(
            "type {} is not supported: {reason}",
            source.declared
        ));
    }
    let same = source.type_name == target.type_name
        && (source.type_name != "array"
            || element_type(&source.declared) == element_type(&target.declared));
    if same {
        ColumnVerdict::Exact
    } else {
        ColumnVerdict::Refused(format!(
            "{} cannot be checked to hold {} values: give both columns the same type",
            target.declared, source.declared
        ))
    }
}

/// Renders both tables as the Markdown of `docs/type-mapping.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Type mapping\n\nGenerated from `connectors/src/typemap.rs` (a test keeps this file in step; \
         regenerate with `DUPLEX_BLESS=1 cargo test -p duplex-connectors typemap`).\n\n\
         Between two databases of the same kind every supported type maps to itself. A source \
         type not listed here is refused by `duplex check`.\n",
    );
    for (title, table) in [
        ("PostgreSQL -> MySQL/MariaDB", POSTGRES_TO_MYSQL),
        ("MySQL/MariaDB -> PostgreSQL", MYSQL_TO_POSTGRES),
        (
            "SQL Server -> PostgreSQL",
            crate::mssql::typemap::MSSQL_TO_POSTGRES,
        ),
        (
            "PostgreSQL -> SQL Server",
            crate::mssql::typemap::POSTGRES_TO_MSSQL,
        ),
    ] {
        out.push_str(&format!(
            "\n## {title}\n\n| source type | target types (first recommended) | fidelity |\n|---|---|---|\n"
        ));
        for rule in table {
            let (fidelity, targets) = match rule.fidelity {
                Fidelity::Exact => ("exact".to_owned(), rule.targets.join(", ")),
                Fidelity::Converted(how) => (format!("converted: {how}"), rule.targets.join(", ")),
                Fidelity::Refused(why) => (format!("**refused**: {why}"), "—".to_owned()),
            };
            out.push_str(&format!("| `{}` | {targets} | {fidelity} |\n", rule.source));
        }
    }
    out.push_str(
        "\n## Into particular target types\n\n| direction | source type | target type | fidelity |\n|---|---|---|---|\n",
    );
    for (source, target, how) in MYSQL_TO_POSTGRES_INTO {
        out.push_str(&format!(
            "| MySQL/MariaDB -> PostgreSQL | `{source}` | `{target}` | converted: {how} |\n"
        ));
    }
    out.push_str(
        "\n## Between databases of the same kind only\n\n| kind | type | fidelity |\n|---|---|---|\n",
    );
    for (kind, type_name, how) in SAME_KIND_ONLY {
        out.push_str(&format!("| {kind} | `{type_name}` | {how} |\n"));
    }
    out.push_str(
        "\nPostgreSQL arrays (one dimension, lower bound 1) of the supported element types \
         replicate to PostgreSQL arrays exactly (NULL elements, empty arrays, any text); arrays \
         declared with more dimensions are refused by `duplex check`, and a value with more \
         dimensions or another lower bound stops the link naming table, column and key.\n",
    );
    out.push_str(
        "\n## SQL Server values\n\nThe conversions `connectors/src/mssql/types.rs` \
         makes (one-way links between SQL Server and PostgreSQL are wired; none of this has run \
         against a real SQL Server yet, and no mapping between SQL Server and MySQL/MariaDB is \
         built).\n\n| SQL Server type | canonical | PostgreSQL | MySQL/MariaDB | fidelity |\n\
         |---|---|---|---|---|\n",
    );
    for (sqlserver, canonical, postgres, mysql, how) in crate::mssql::TYPE_TABLE {
        out.push_str(&format!(
            "| `{sqlserver}` | {canonical} | {postgres} | {mysql} | {how} |\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn col(type_name: &str) -> Column {
        Column {
            name: "c".into(),
            type_name: type_name.into(),
            declared: type_name.into(),
            nullable: true,
        }
    }

    #[test]
    fn every_table_lists_each_source_once_and_has_targets_unless_refused() {
        for table in [POSTGRES_TO_MYSQL, MYSQL_TO_POSTGRES] {
            let mut seen = HashSet::new();
            for rule in table {
                assert!(seen.insert(rule.source), "{} listed twice", rule.source);
                let refused = matches!(rule.fidelity, Fidelity::Refused(_));
                assert_eq!(rule.targets.is_empty(), refused, "{}", rule.source);
            }
        }
    }

    #[test]
    fn every_readable_source_type_of_one_direction_is_a_target_of_the_other() {
        // What one side reads it must also be able to write back (two-way mappings).
        for (table, back) in [
            (POSTGRES_TO_MYSQL, MYSQL_TO_POSTGRES),
            (MYSQL_TO_POSTGRES, POSTGRES_TO_MYSQL),
        ] {
            for rule in table
                .iter()
                .filter(|r| !matches!(r.fidelity, Fidelity::Refused(_)))
            {
                let target = rule.targets[0];
                assert!(
                    back.iter()
                        .any(|b| b.source == target && !matches!(b.fidelity, Fidelity::Refused(_))),
                    "{} maps to {target}, which cannot be read back",
                    rule.source
                );
            }
        }
    }

    #[test]
    fn judging_columns() {
        use ColumnVerdict as V;
        let (pg, my) = (SiteKind::Postgres, SiteKind::Mysql);
        assert_eq!(judge(pg, &col("int4"), my, &col("bigint")), V::Exact);
        assert!(matches!(
            judge(pg, &col("timestamptz"), my, &col("datetime")),
            V::Converted(_)
        ));
        assert!(
            matches!(judge(pg, &col("text"), my, &col("int")), V::Refused(m) if m.contains("change it to longtext"))
        );
        assert!(
            matches!(judge(pg, &col("interval"), my, &col("time")), V::Refused(m) if m.contains("leave the column out"))
        );
        assert!(
            matches!(judge(pg, &col("tsvector"), my, &col("text")), V::Refused(m) if m.contains("not supported"))
        );
        assert!(matches!(
            judge(my, &col("bigint unsigned"), pg, &col("numeric")),
            V::Converted(_)
        ));
        assert!(matches!(
            judge(my, &col("bigint unsigned"), pg, &col("int8")),
            V::Refused(_)
        ));
        assert_eq!(judge(pg, &col("numeric"), pg, &col("numeric")), V::Exact);
        assert_eq!(judge(pg, &col("array"), pg, &col("array")), V::Exact);
        assert_eq!(judge(pg, &col("interval"), pg, &col("interval")), V::Exact);
        assert!(matches!(
            judge(pg, &col("money"), pg, &col("money")),
            V::Refused(m) if m.contains("lc_monetary") && m.contains("numeric")
        ));
        let mut ints = col("array");
        ints.declared = "integer[]".into();
        let mut texts = col("array");
        texts.declared = "text[]".into();
        let mut grid = col("array");
        grid.declared = "integer[][]".into();
        assert!(matches!(judge(pg, &ints, pg, &texts), V::Refused(_)));
        assert!(matches!(
            judge(pg, &grid, pg, &grid),
            V::Refused(m) if m.contains("multi-dimensional")
        ));
        assert!(matches!(
            judge(pg, &grid, my, &col("json")),
            V::Refused(m) if m.contains("multi-dimensional")
        ));
        assert!(matches!(
            judge(pg, &ints, my, &col("json")),
            V::Converted(_)
        ));
        assert!(matches!(
            judge(my, &col("json"), pg, &ints),
            V::Converted(m) if m.contains("JSON array")
        ));
        assert_eq!(judge(my, &col("json"), pg, &col("jsonb")), V::Exact);
        assert!(matches!(
            judge(my, &col("bit"), pg, &col("bool")),
            V::Converted(_)
        ));
        assert!(matches!(
            judge(pg, &col("bit"), my, &col("bit")),
            V::Converted(_)
        ));
        assert_eq!(judge(my, &col("bit"), my, &col("bit")), V::Exact);
        let bits = |type_name: &str, declared: &str| Column {
            declared: declared.into(),
            ..col(type_name)
        };
        assert!(matches!(
            judge(my, &bits("bit", "bit(8)"), pg, &bits("bit", "bit(7)")),
            V::Refused(m) if m.contains("8 bits")
        ));
        assert!(matches!(
            judge(my, &bits("bit", "bit(8)"), pg, &bits("bool", "boolean")),
            V::Refused(_)
        ));
        assert!(matches!(
            judge(my, &bits("bit", "bit(1)"), pg, &bits("bool", "boolean")),
            V::Converted(_)
        ));
        assert!(matches!(
            judge(
                my,
                &bits("bit", "bit(8)"),
                pg,
                &bits("varbit", "bit varying(10)")
            ),
            V::Converted(_)
        ));
        assert!(matches!(
            judge(pg, &bits("bit", "bit(3)"), pg, &bits("bit", "bit(4)")),
            V::Refused(_)
        ));
        assert!(matches!(
            judge(pg, &col("interval"), my, &col("time")),
            V::Refused(m) if m.contains("PostgreSQL -> PostgreSQL")
        ));
        assert!(matches!(
            judge(my, &col("int"), my, &col("bigint")),
            V::Refused(_)
        ));
    }

    #[test]
    fn docs_type_mapping_md_is_rendered_from_the_tables() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/type-mapping.md");
        let rendered = render_markdown();
        if std::env::var_os("DUPLEX_BLESS").is_some() {
            std::fs::write(path, &rendered).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == rendered,
            "docs/type-mapping.md is out of date: run DUPLEX_BLESS=1 cargo test -p duplex-connectors typemap"
        );
    }
}
