//! The SQL of the writes into a MySQL/MariaDB target, one event at a time: the SET list and
//! key filter of an UPDATE, the expected-value filter of the conditional writes of two-way
//! mappings (see [`super::apply`]), and multi-row INSERTs. Values travel as `?` parameters.

use crate::apply::{ApplyError, expected_values, key_value, malformed};
use crate::{ChangeEvent, Value};

use super::apply::{MyKind, MyRoute};
use super::param::to_param;

/// The SET list and key filter of an UPDATE, with their parameters appended to `params`.
pub(super) fn update_parts(
    route: &MyRoute,
    event: &ChangeEvent,
    params: &mut Vec<mysql_async::Value>,
) -> Result<(String, String), ApplyError> {
    let Some(after) = &event.after else {
        return Err(malformed(event, "an update without an after-image"));
    };
    let mut set = Vec::new();
    for column in &route.columns {
        match after.get(&column.source) {
            None | Some(Value::Unchanged) => {}
            Some(value) => {
                params.push(to_param(value, column, &route.target)?);
                set.push(format!("{} = ?", column.quoted));
            }
        }
    }
    if set.is_empty() {
        let k = &route.columns[route.key[0]].quoted;
        set.push(format!("{k} = {k}"));
    }
    let filter = key_filter(route, event, params)?;
    Ok((set.join(", "), filter))
}

/// `AND <column> <=> <expected> ...` for the event's expected values (its before-image),
/// appended to `params`; empty without a before-image. See the module docs for the forms.
pub(super) fn expected_filter(
    route: &MyRoute,
    event: &ChangeEvent,
    params: &mut Vec<mysql_async::Value>,
) -> Result<String, ApplyError> {
    let sources = route.columns.iter().map(|c| c.source.as_str());
    let mut filter = String::new();
    for (i, value) in expected_values(sources, &route.key, event) {
        let column = &route.columns[i];
        params.push(to_param(value, column, &route.target)?);
        let q = &column.quoted;
        let declared = column.declared.to_ascii_lowercase();
        let parens = declared
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(inner, _)| inner.trim());
        filter.push_str(&match column.kind {
            MyKind::Text if declared == "json" => format!(" AND {q} <=> CAST(? AS JSON)"),
            MyKind::Text => {
                format!(" AND CAST(CONVERT({q} USING utf8mb4) AS BINARY) <=> CAST(? AS BINARY)")
            }
            MyKind::Decimal { .. } => {
                format!(
                    " AND {q} <=> CAST(? AS DECIMAL({}))",
                    parens.unwrap_or("10")
                )
            }
            MyKind::Bytes if declared.starts_with("binary") => {
                format!(" AND {q} <=> CAST(? AS BINARY({}))", parens.unwrap_or("1"))
            }
            _ => format!(" AND {q} <=> ?"),
        });
    }
    Ok(filter)
}

/// `k1 = ? AND k2 = ?` with the event's old key values appended to `params`.
pub(super) fn key_filter(
    route: &MyRoute,
    event: &ChangeEvent,
    params: &mut Vec<mysql_async::Value>,
) -> Result<String, ApplyError> {
    let mut parts = Vec::with_capacity(route.key.len());
    for &k in &route.key {
        let column = &route.columns[k];
        let value = key_value(event, &column.source)?;
        params.push(to_param(value, column, &route.target)?);
        parts.push(format!("{} = ?", column.quoted));
    }
    Ok(parts.join(" AND "))
}

/// The values of the columns `columns` of an insert's after-image, as parameters.
pub(super) fn insert_params(
    route: &MyRoute,
    columns: &[usize],
    event: &ChangeEvent,
) -> Result<Vec<mysql_async::Value>, ApplyError> {
    let after = event.after.as_ref().expect("insert_columns checked it");
    let mut params = Vec::with_capacity(columns.len());
    for &c in columns {
        let column = &route.columns[c];
        let value = after
            .get(&column.source)
            .expect("insert_columns checked it");
        params.push(to_param(value, column, &route.target)?);
    }
    Ok(params)
}

pub(super) fn insert_sql(route: &MyRoute, columns: &[usize], rows: usize) -> String {
    let names: Vec<&str> = columns
        .iter()
        .map(|&c| route.columns[c].quoted.as_str())
        .collect();
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        route.quoted,
        names.join(", "),
        vec![row.as_str(); rows].join(", ")
    )
}
