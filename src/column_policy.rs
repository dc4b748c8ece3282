//! Column-level conflict policies (`[mappings.column_conflict]`): how the merge engine decides
//! one column of a conflict whatever the mapping's row policy says (README, "Column
//! policies").
//!
//! This module reads them from the configuration and judges them against the sites' column
//! types for `duplex check`; the decisions themselves are made by
//! [`crate::engine::column_merge`].

use duplex_connectors::preflight::Finding;
use duplex_connectors::{TableSchema, Value};
use indexmap::IndexMap;

use crate::config::Mapping;

/// How one column of a conflict is decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnPolicy {
    /// A number: the common ancestor's value plus each side's change relative to it.
    Delta,
    /// The value ranked later in the list wins; a value not in the list leaves the column to
    /// the row policy.
    Precedence(Vec<Value>),
    /// The greater value wins.
    Max,
    /// The smaller value wins.
    Min,
}

impl ColumnPolicy {
    /// The policy as the configuration spells it, short: `delta`, `precedence`, `max`, `min`.
    pub fn name(&self) -> &'static str {
        match self {
            ColumnPolicy::Delta => "delta",
            ColumnPolicy::Precedence(_) => "precedence",
            ColumnPolicy::Max => "max",
            ColumnPolicy::Min => "min",
        }
    }
}

/// Reads `[mappings.column_conflict]` of the mapping at `field`. `columns` is the mapping's
/// column list when it has one; `two_way` whether its direction is `both`. Problems go to
/// `report` (field, message); `None` when there was one.
pub(crate) fn parse(
    field: &str,
    raw: &IndexMap<String, toml::Value>,
    columns: Option<&[String]>,
    two_way: bool,
    report: &mut dyn FnMut(String, String),
) -> Option<IndexMap<String, ColumnPolicy>> {
    let mut ok = true;
    if !raw.is_empty() && !two_way {
        report(
            format!("{field}.column_conflict"),
            "column policies decide conflicts between sites, and a one-way mapping has none: remove [mappings.column_conflict] or make the mapping direction = \"both\"".into(),
        );
        ok = false;
    }
    let mut policies = IndexMap::new();
    for (column, value) in raw {
        let at = format!("{field}.column_conflict.{column}");
        if let Some(columns) = columns
            && !columns.contains(column)
        {
            report(
                at.clone(),
                format!("column {column:?} is not in this mapping's columns list"),
            );
            ok = false;
        }
        match parse_one(value) {
            Ok(policy) => {
                policies.insert(column.clone(), policy);
            }
            Err(message) => {
                report(at, message);
                ok = false;
            }
        }
    }
    ok.then_some(policies)
}

fn parse_one(value: &toml::Value) -> Result<ColumnPolicy, String> {
    const USE: &str =
        "use \"delta\", \"max\", \"min\" or { precedence = [\"first\", \"second\", ...] }";
    match value {
        toml::Value::String(name) => match name.as_str() {
            "delta" => Ok(ColumnPolicy::Delta),
            "max" => Ok(ColumnPolicy::Max),
            "min" => Ok(ColumnPolicy::Min),
            other => Err(format!("{other:?} is not a column policy: {USE}")),
        },
        toml::Value::Table(table) => {
            if let Some(other) = table.keys().find(|k| *k != "precedence") {
                return Err(format!("{other:?} is not a column policy: {USE}"));
            }
            let Some(toml::Value::Array(list)) = table.get("precedence") else {
                return Err(format!("precedence takes a list of values: {USE}"));
            };
            if list.is_empty() {
                return Err(
                    "an empty precedence list ranks nothing: list the values, first to last".into(),
                );
            }
            let mut values: Vec<Value> = Vec::with_capacity(list.len());
            for item in list {
                let value = match item {
                    toml::Value::String(s) => Value::Text(s.clone()),
                    toml::Value::Integer(i) => Value::Int(*i),
                    other => {
                        return Err(format!(
                            "precedence values are strings or integers, not {other}"
                        ));
                    }
                };
                if values.contains(&value) {
                    return Err(format!("{item} is listed twice in the precedence list"));
                }
                values.push(value);
            }
            Ok(ColumnPolicy::Precedence(values))
        }
        other => Err(format!("{other} is not a column policy: {USE}")),
    }
}

/// Whether a column of this base type (PostgreSQL `pg_type` name or MySQL `DATA_TYPE`, see
/// [`duplex_connectors::Column::type_name`]) holds numbers `delta` can add.
pub(crate) fn numeric(type_name: &str) -> bool {
    let base = type_name.strip_suffix(" unsigned").unwrap_or(type_name);
    matches!(
        base,
        "int2"
            | "int4"
            | "int8"
            | "numeric"
            | "float4"
            | "float8"
            | "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "bigint"
            | "decimal"
            | "float"
            | "double"
    )
}

/// Why a column of this type cannot hold `value` of a precedence list, if it cannot.
pub(crate) fn refuses(schema_column: &duplex_connectors::Column, value: &Value) -> Option<String> {
    let type_name = schema_column.type_name.as_str();
    let declared = schema_column.declared.as_str();
    match value {
        Value::Int(_) if numeric(type_name) => None,
        Value::Int(i) => Some(format!("{i} is a number and the column is {declared}")),
        Value::Text(text) => {
            if numeric(type_name) {
                return Some(format!(
                    "{text:?} is text and the column is {declared}: list numbers"
                ));
            }
            match type_name {
                "enum" if declared.starts_with("enum(") => {
                    let labels = &declared["enum(".len()..declared.len() - 1];
                    let quoted = format!("'{}'", text.replace('\'', "''"));
                    (!labels.split(',').any(|label| label == quoted))
                        .then(|| format!("{text:?} is not one of the column's values {declared}"))
                }
                "text" | "varchar" | "bpchar" | "char" | "enum" | "tinytext" | "mediumtext"
                | "longtext" | "citext" | "name" => {
                    let limit = declared
                        .split_once('(')
                        .and_then(|(_, rest)| rest.trim_end_matches(')').parse::<usize>().ok());
                    match limit {
                        Some(limit) if text.chars().count() > limit => {
                            Some(format!("{text:?} is longer than the column's {declared}"))
                        }
                        _ => None,
                    }
                }
                _ => Some(format!(
                    "the column is {declared}: precedence ranks text or integer values"
                )),
            }
        }
        _ => None,
    }
}

/// `duplex check`'s findings on a mapping's column policies, given each site's table: `delta`
/// needs a numeric column and every precedence value must fit the column, on every site.
pub fn check(mapping: &Mapping, tables: &[(&str, &TableSchema)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let name = &mapping.name;
    for (canonical, policy) in &mapping.column_conflict {
        for (site, schema) in tables {
            let local = mapping.site_column(site, canonical);
            let Some(column) = schema.column(local) else {
                if mapping.pattern.is_none() {
                    findings.push(Finding::fail(
                        format!(
                            "column policy {canonical} = {}: {site}:{} has no column {local}",
                            policy.name(),
                            schema.name.name
                        ),
                        format!(
                            "name a replicated column in [mappings.column_conflict] of mapping {name}"
                        ),
                    ));
                }
                continue;
            };
            let what = format!(
                "column policy {canonical} = {}: {site}:{}.{} is {}",
                policy.name(),
                schema.name.name,
                column.name,
                column.declared
            );
            match policy {
                ColumnPolicy::Delta if !numeric(&column.type_name) => {
                    findings.push(Finding::fail(
                        what,
                        format!(
                            "delta adds numbers: use it on a numeric column, or give {canonical} another policy in [mappings.column_conflict] of mapping {name}"
                        ),
                    ));
                }
                ColumnPolicy::Precedence(values) => {
                    let refused: Vec<String> =
                        values.iter().filter_map(|v| refuses(column, v)).collect();
                    if !refused.is_empty() {
                        findings.push(Finding::fail(
                            what,
                            format!(
                                "{}: fix the precedence list of {canonical} in mapping {name}",
                                refused.join("; ")
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(type_name: &str, declared: &str) -> duplex_connectors::Column {
        duplex_connectors::Column {
            name: "c".into(),
            type_name: type_name.into(),
            declared: declared.into(),
            nullable: true,
        }
    }

    #[test]
    fn policies_parse_and_bad_ones_are_named() {
        let raw: IndexMap<String, toml::Value> = toml::from_str(
            r#"
            on_hand = "delta"
            status = { precedence = ["new", "paid", "shipped"] }
            updated_at = "max"
            level = { precedence = [1, 2] }
            "#,
        )
        .unwrap();
        let mut problems = Vec::new();
        let parsed = parse("m", &raw, None, true, &mut |f, m| problems.push((f, m))).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(parsed["on_hand"], ColumnPolicy::Delta);
        assert_eq!(parsed["updated_at"], ColumnPolicy::Max);
        assert_eq!(
            parsed["level"],
            ColumnPolicy::Precedence(vec![Value::Int(1), Value::Int(2)])
        );
        let raw: IndexMap<String, toml::Value> =
            toml::from_str("a = \"sum\"\nb = { precedence = [] }\nc = { order = [1] }").unwrap();
        let columns = vec!["a".to_owned(), "b".to_owned()];
        assert!(
            parse("m", &raw, Some(&columns), false, &mut |f, m| problems
                .push((f, m)))
            .is_none()
        );
        let text = format!("{problems:?}");
        for expected in [
            "a one-way mapping has none",
            "\\\"sum\\\" is not a column policy",
            "an empty precedence list",
            "\\\"order\\\" is not a column policy",
            "column \\\"c\\\" is not in this mapping's columns list",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
    }

    #[test]
    fn types_that_cannot_hold_the_policy_are_refused() {
        assert!(numeric("int4") && numeric("bigint unsigned") && numeric("numeric"));
        assert!(!numeric("text") && !numeric("varchar") && !numeric("timestamptz"));
        let status = column("enum", "enum('new','paid')");
        assert_eq!(refuses(&status, &Value::Text("paid".into())), None);
        assert!(refuses(&status, &Value::Text("lost".into())).is_some());
        let short = column("varchar", "character varying(4)");
        assert!(refuses(&short, &Value::Text("shipped".into())).is_some());
        assert_eq!(refuses(&short, &Value::Text("paid".into())), None);
        assert!(refuses(&column("int4", "integer"), &Value::Text("x".into())).is_some());
        assert!(refuses(&column("text", "text"), &Value::Int(3)).is_some());
        assert!(refuses(&column("jsonb", "jsonb"), &Value::Text("x".into())).is_some());
    }
}
