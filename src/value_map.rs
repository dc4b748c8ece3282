//! Value maps per site (`[mappings.values.<site>]`): a column whose values a site spells with
//! its own codes (`paid` in the mapping, `P` in the ERP). The merge engine works on canonical
//! values; each site's values are translated when read from its log and when written to it.

use std::collections::BTreeMap;

use duplex_connectors::preflight::Finding;
use duplex_connectors::{Row, TableSchema, Value};
use indexmap::IndexMap;

use crate::column_policy::refuses;
use crate::config::Mapping;

/// One column's codes at one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueMap {
    /// Canonical value -> the site's code, in configuration order; no code appears twice.
    pub codes: Vec<(String, String)>,
    /// The code written for a canonical value the map does not list (one of `codes`' codes);
    /// `None`: such a value stops the engine.
    pub default: Option<String>,
}

/// A site's maps by canonical column name.
pub type SiteValues = BTreeMap<String, ValueMap>;

/// Reads `[mappings.values]` of the mapping at `field`: per site, per column, a table of
/// canonical value = code (strings) and an optional `default` code.
pub(crate) fn parse(
    field: &str,
    raw: &BTreeMap<String, BTreeMap<String, IndexMap<String, String>>>,
    sites: &[&String],
    columns: Option<&[String]>,
    two_way: bool,
    report: &mut dyn FnMut(String, String),
) -> Option<BTreeMap<String, SiteValues>> {
    let mut ok = true;
    if !raw.is_empty() && !two_way {
        report(
            format!("{field}.values"),
            "value maps are supported on two-way mappings only (direction = \"both\")".into(),
        );
        ok = false;
    }
    let mut all = BTreeMap::new();
    for (site, maps) in raw {
        if !sites.contains(&site) {
            report(
                format!("{field}.values.{site}"),
                format!("site {site:?} has no table in this mapping"),
            );
            ok = false;
        }
        let mut site_maps = SiteValues::new();
        for (column, entries) in maps {
            let at = format!("{field}.values.{site}.{column}");
            if let Some(columns) = columns
                && !columns.contains(column)
            {
                report(
                    at.clone(),
                    format!("column {column:?} is not in this mapping's columns list"),
                );
                ok = false;
            }
            let mut map = ValueMap {
                codes: Vec::new(),
                default: None,
            };
            for (canonical, code) in entries {
                if canonical == "default" {
                    map.default = Some(code.clone());
                } else if map.codes.iter().any(|(_, c)| c == code) {
                    report(
                        at.clone(),
                        format!(
                            "code {code:?} stands for two values: a value read back from {site} must name one"
                        ),
                    );
                    ok = false;
                } else {
                    map.codes.push((canonical.clone(), code.clone()));
                }
            }
            if let Some(default) = &map.default
                && !map.codes.iter().any(|(_, c)| c == default)
            {
                report(
                    at.clone(),
                    format!(
                        "default {default:?} is not one of the codes: list which value it stands for when read back (e.g. other = {default:?})"
                    ),
                );
                ok = false;
            }
            site_maps.insert(column.clone(), map);
        }
        all.insert(site.clone(), site_maps);
    }
    ok.then_some(all)
}

/// `duplex check`'s findings on a mapping's value maps, given each site's table: every code
/// must fit the site's column.
pub fn check(mapping: &Mapping, tables: &[(&str, &TableSchema)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (site, schema) in tables {
        let Some(maps) = mapping.values.get(*site) else {
            continue;
        };
        for (canonical, map) in maps {
            let local = mapping.site_column(site, canonical);
            let Some(column) = schema.column(local) else {
                continue;
            };
            let refused: Vec<String> = map
                .codes
                .iter()
                .filter_map(|(_, code)| refuses(column, &Value::Text(code.clone())))
                .collect();
            if !refused.is_empty() {
                findings.push(Finding::fail(
                    format!(
                        "value map of {canonical}: {site}:{}.{} is {}",
                        schema.name.name, column.name, column.declared
                    ),
                    format!(
                        "{}: fix [mappings.values.{site}] {canonical} of mapping {}",
                        refused.join("; "),
                        mapping.name
                    ),
                ));
            }
        }
    }
    findings
}

/// `row` (canonical values) with `site`'s codes; an error naming the value that has none.
pub fn to_site(site: &str, maps: &SiteValues, row: &Row) -> Result<Row, String> {
    translate(row, maps, |column, map, text| {
        map.codes
            .iter()
            .find(|(canonical, _)| canonical == text)
            .map(|(_, code)| code.clone())
            .or_else(|| map.default.clone())
            .ok_or_else(|| {
                format!(
                    "value {text:?} of column {column} has no code at site {site}: add it to [mappings.values.{site}] {column} (or a default)"
                )
            })
    })
}

/// `row` as read from `site` with canonical values; an error naming a code the map lacks.
pub fn from_site(site: &str, maps: &SiteValues, row: &Row) -> Result<Row, String> {
    translate(row, maps, |column, map, text| {
        map.codes
            .iter()
            .find(|(_, code)| code == text)
            .map(|(canonical, _)| canonical.clone())
            .ok_or_else(|| {
                format!(
                    "site {site} wrote {text:?} in column {column}, a code [mappings.values.{site}] {column} does not list: add which value it stands for"
                )
            })
    })
}

fn translate(
    row: &Row,
    maps: &SiteValues,
    one: impl Fn(&str, &ValueMap, &str) -> Result<String, String>,
) -> Result<Row, String> {
    if maps.is_empty() {
        return Ok(row.clone());
    }
    row.iter()
        .map(|(column, value)| {
            let value = match (maps.get(column), value) {
                (Some(map), Value::Text(text)) => Value::Text(one(column, map, text)?),
                _ => value.clone(),
            };
            Ok((column.to_owned(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> SiteValues {
        let raw: BTreeMap<String, BTreeMap<String, IndexMap<String, String>>> = toml::from_str(
            "[erp]\nstatus = { paid = \"P\", shipped = \"S\", other = \"X\", default = \"X\" }",
        )
        .unwrap();
        let erp = "erp".to_owned();
        let mut all = parse("m", &raw, &[&erp], None, true, &mut |f, m| {
            panic!("{f}: {m}")
        })
        .unwrap();
        all.remove("erp").unwrap()
    }

    fn row(status: &str) -> Row {
        [
            ("id", Value::Int(1)),
            ("status", Value::Text(status.into())),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn values_translate_both_ways_and_unknown_codes_are_named() {
        let maps = maps();
        assert_eq!(to_site("erp", &maps, &row("paid")), Ok(row("P")));
        assert_eq!(to_site("erp", &maps, &row("refunded")), Ok(row("X")));
        assert_eq!(from_site("erp", &maps, &row("S")), Ok(row("shipped")));
        let error = from_site("erp", &maps, &row("Q")).unwrap_err();
        assert!(
            error.contains("site erp wrote \"Q\" in column status"),
            "{error}"
        );
        let null: Row = [("id", Value::Int(1)), ("status", Value::Null)]
            .into_iter()
            .collect();
        assert_eq!(from_site("erp", &maps, &null), Ok(null.clone()));
    }

    #[test]
    fn ambiguous_codes_and_a_default_outside_them_are_refused() {
        let raw: BTreeMap<String, BTreeMap<String, IndexMap<String, String>>> = toml::from_str(
            "[erp]\nstatus = { paid = \"P\", picked = \"P\", default = \"Z\" }\n[wms]\nx = { a = \"b\" }",
        )
        .unwrap();
        let erp = "erp".to_owned();
        let mut problems = Vec::new();
        assert!(
            parse("m", &raw, &[&erp], None, false, &mut |f, m| problems
                .push(format!("{f}: {m}")))
            .is_none()
        );
        let text = problems.join("\n");
        for expected in [
            "two-way mappings only",
            "code \"P\" stands for two values",
            "default \"Z\" is not one of the codes",
            "m.values.wms: site \"wms\" has no table",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
    }
}
