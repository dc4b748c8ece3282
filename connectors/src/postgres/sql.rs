//! The SQL of the writes into a PostgreSQL target, one event at a time: plain UPDATE and
//! DELETE by key, the conditional forms of two-way mappings (a write that touches no row when
//! the target's row is not the expected before-image, see [`super::apply`]), and multi-row
//! INSERTs. Values travel as parameters (`$n`, cast where the column needs it).

use crate::apply::{
    ApplyError, expected_values, key_value, malformed, refuse_identity_change, refuse_key_change,
};
use crate::{ChangeEvent, Op, Value};

use super::apply::{PgKind, PgRoute, insert_columns};
use super::param::{PgParam, to_param};

/// Builds the statement of one event and its parameters.
pub(super) type SqlOf =
    for<'e> fn(&PgRoute, &'e ChangeEvent) -> Result<(String, Vec<PgParam<'e>>), ApplyError>;

/// The UPDATE or DELETE statement for one event and its parameters.
pub(super) fn change_sql<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
) -> Result<(String, Vec<PgParam<'e>>), ApplyError> {
    let mut params = Vec::new();
    if event.op == Op::Delete {
        let filter = key_filter(route, event, &mut params)?;
        return Ok((
            format!("DELETE FROM {} WHERE {filter}", route.quoted),
            params,
        ));
    }
    let (set, filter) = update_parts(route, event, &mut params)?;
    Ok((
        format!("UPDATE {} SET {set} WHERE {filter}", route.quoted),
        params,
    ))
}

/// The statement of one event written conditionally (see the module docs) and its parameters;
/// it touches no row when the write is to be skipped.
pub(super) fn conditional_sql<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
) -> Result<(String, Vec<PgParam<'e>>), ApplyError> {
    let mut params = Vec::new();
    let sql = match event.op {
        Op::Insert => {
            let columns = insert_columns(route, event)?;
            let after = event.after.as_ref().expect("insert_columns checked it");
            for &c in &columns {
                let column = &route.columns[c];
                let value = after
                    .get(&column.source)
                    .expect("insert_columns checked it");
                params.push(to_param(value, column, &route.target)?);
            }
            let key: Vec<&str> = route
                .key
                .iter()
                .map(|&k| route.columns[k].quoted.as_str())
                .collect();
            format!(
                "{} ON CONFLICT ({}) DO NOTHING",
                insert_sql(route, &columns, 1, false),
                key.join(", ")
            )
        }
        Op::Update => {
            refuse_key_change(
                event,
                route.key.iter().map(|&k| route.columns[k].source.as_str()),
            )?;
            let (set, filter) = update_parts(route, event, &mut params)?;
            let expected = expected_filter(route, event, &mut params)?;
            format!("UPDATE {} SET {set} WHERE {filter}{expected}", route.quoted)
        }
        Op::Delete => {
            let filter = key_filter(route, event, &mut params)?;
            let expected = expected_filter(route, event, &mut params)?;
            format!("DELETE FROM {} WHERE {filter}{expected}", route.quoted)
        }
    };
    Ok((sql, params))
}

/// `AND <column> IS NOT DISTINCT FROM $n ...` for the event's expected values (its
/// before-image), appended to `params`; empty without a before-image.
fn expected_filter<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
    params: &mut Vec<PgParam<'e>>,
) -> Result<String, ApplyError> {
    let sources = route.columns.iter().map(|c| c.source.as_str());
    let mut filter = String::new();
    for (i, value) in expected_values(sources, &route.key, event) {
        let column = &route.columns[i];
        params.push(to_param(value, column, &route.target)?);
        let n = params.len();
        let q = &column.quoted;
        filter.push_str(&match column.kind {
            PgKind::Json => format!(" AND {q}::text IS NOT DISTINCT FROM ${n}::text"),
            PgKind::Cast => format!(
                " AND {q}::text IS NOT DISTINCT FROM ({})::text",
                column.placeholder(n)
            ),
            // json has no equality operator; other arrays and bit strings compare typed
            // (numeric elements 1.5 and 1.50 are equal).
            PgKind::Array if column.declared.starts_with("json[") => format!(
                " AND {q}::text IS NOT DISTINCT FROM ({})::text",
                column.placeholder(n)
            ),
            _ => format!(" AND {q} IS NOT DISTINCT FROM {}", column.placeholder(n)),
        });
    }
    Ok(filter)
}

/// The SET list and key filter of an UPDATE, with their parameters appended to `params`.
fn update_parts<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
    params: &mut Vec<PgParam<'e>>,
) -> Result<(String, String), ApplyError> {
    let Some(after) = &event.after else {
        return Err(malformed(event, "an update without an after-image"));
    };
    let mut set = Vec::new();
    for column in &route.columns {
        match after.get(&column.source) {
            None | Some(Value::Unchanged) => {}
            // A GENERATED ALWAYS identity column is a key column (see `apply::resolve`):
            // kept as it is, or the update is refused by name.
            Some(value) if column.identity_always => refuse_identity_change(
                event,
                &column.source,
                value,
                &route.target,
                &column.target,
                &column.declared,
                "a GENERATED ALWAYS AS IDENTITY column, which PostgreSQL does not let an update \
                 set: make it GENERATED BY DEFAULT on this target (ALTER TABLE ... ALTER COLUMN \
                 ... SET GENERATED BY DEFAULT), or delete the row and insert it again on the \
                 source",
            )?,
            Some(value) => {
                params.push(to_param(value, column, &route.target)?);
                set.push(format!(
                    "{} = {}",
                    column.quoted,
                    column.placeholder(params.len())
                ));
            }
        }
    }
    if set.is_empty() {
        // Nothing changes: the row is still touched, so that its count proves it is there,
        // through a column an UPDATE may set (a GENERATED ALWAYS identity column may not).
        let Some(column) = route.columns.iter().find(|c| !c.identity_always) else {
            let column = &route.columns[route.key[0]];
            return Err(ApplyError::refuse(
                &route.target,
                &column.target,
                key_value(event, &column.source)?,
                &column.declared,
                "an update that changes no column of a table whose mapped columns are only its \
                 GENERATED ALWAYS AS IDENTITY key cannot be written",
            ));
        };
        let q = &column.quoted;
        set.push(format!("{q} = {q}"));
    }
    let filter = key_filter(route, event, params)?;
    Ok((set.join(", "), filter))
}

/// `k1 = $i AND k2 = $j` with the event's old key values appended to `params`.
fn key_filter<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
    params: &mut Vec<PgParam<'e>>,
) -> Result<String, ApplyError> {
    let mut parts = Vec::with_capacity(route.key.len());
    for &k in &route.key {
        let column = &route.columns[k];
        let value = key_value(event, &column.source)?;
        params.push(to_param(value, column, &route.target)?);
        parts.push(format!(
            "{} = {}",
            column.quoted,
            column.placeholder(params.len())
        ));
    }
    Ok(parts.join(" AND "))
}

pub(super) fn insert_sql(route: &PgRoute, columns: &[usize], rows: usize, upsert: bool) -> String {
    let names: Vec<&str> = columns
        .iter()
        .map(|&c| route.columns[c].quoted.as_str())
        .collect();
    // A GENERATED ALWAYS identity column takes the source's value only when the INSERT says
    // so (COPY always writes it).
    let overriding = if columns.iter().any(|&c| route.columns[c].identity_always) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let mut sql = format!(
        "INSERT INTO {} ({}){overriding} VALUES ",
        route.quoted,
        names.join(", ")
    );
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (i, &c) in columns.iter().enumerate() {
            n += 1;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&route.columns[c].placeholder(n));
        }
        sql.push(')');
    }
    if upsert {
        let key: Vec<&str> = route
            .key
            .iter()
            .map(|&k| route.columns[k].quoted.as_str())
            .collect();
        let set: Vec<String> = columns
            .iter()
            .filter(|c| !route.key.contains(c))
            .map(|&c| {
                let q = &route.columns[c].quoted;
                format!("{q} = EXCLUDED.{q}")
            })
            .collect();
        sql.push_str(&format!(" ON CONFLICT ({}) ", key.join(", ")));
        if set.is_empty() {
            sql.push_str("DO NOTHING");
        } else {
            sql.push_str(&format!("DO UPDATE SET {}", set.join(", ")));
        }
    }
    sql
}
