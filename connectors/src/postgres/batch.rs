//! Updates and deletes on PostgreSQL targets, several rows per statement.
//!
//! A run of updates and deletes (between two inserts of a batch) used to be one statement per
//! change, pipelined. The server's cost per statement (bind, plan, executor start and end)
//! then dominated: a shop's transaction updating 30 stock rows ran 30 statements. Now each
//! group of consecutive changes that can share a statement is one statement over arrays:
//!
//! ```sql
//! UPDATE t AS t SET a = v.c0, b = v.c1 FROM unnest($1::int8[], $2::int4[], $3::text[])
//!   AS v(k0, c0, c1) WHERE t.id = v.k0
//! DELETE FROM t AS t USING unnest($1::int8[], $2::int4[]) AS v(k0, k1)
//!   WHERE t.a = v.k0 AND t.b = v.k1
//! ```
//!
//! # Why one statement writes what the changes one by one would
//!
//! A group is consecutive changes of one table with the same operation, and for updates the
//! same columns carried (a TOAST value left unchanged is not written, as before), where:
//!
//! - **no two changes have the same key**: the statement touches each target row at most once
//!   and the rows are distinct, so the order in which the server visits them cannot matter;
//!   a key seen again ends the group, and the later change goes after it, in order;
//! - **no update changes its key**: a key moving onto another row's key could collide or not
//!   depending on the server's visiting order; such an update goes alone, as before;
//! - **every column is bound as a plain binary value** (no `text` cast: arrays, bit strings,
//!   `inet` and the like go one by one), and the array's element type is the column's base
//!   type, so each value reaches the column by the same assignment as the single-row
//!   statement's parameter (domain checks, `varchar(n)` length, `numeric` scale);
//! - **the row count must equal the group's size**: fewer means some key's row is missing on
//!   the target, which fails the write like the single-row statement's count of 0 does. The
//!   link then locates the change by writing them one at a time (`locate_refusal`), where
//!   each goes alone and the exact key is named.
//!
//! Groups (and the single statements between them) are pipelined in order, one round trip
//! for the run; the server runs them one after the other.

use std::collections::HashSet;
use std::error::Error;
use std::hash::{Hash, Hasher};

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::apply::{ApplyError, expect_one, key_value, refuse_key_change};
use crate::{ChangeEvent, Op, Value};

use super::apply::{PgKind, PgRoute, Writer, pipelined, write_error};
use super::param::{PgParam, to_param};
use super::sql::{SqlOf, change_sql};

/// Fewest changes that go as one statement (below, one statement each costs no more).
const GROUP_MIN: usize = 4;

/// A bound parameter: one value, or one array of a group's values.
#[derive(Debug)]
pub(super) enum Bound<'a> {
    One(PgParam<'a>),
    Many(Vec<PgParam<'a>>),
}

impl ToSql for Bound<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Bound::One(param) => param.to_sql(ty, out),
            Bound::Many(params) => params.to_sql(ty, out),
        }
    }

    /// As [`PgParam`]: the encoding was decided from the target schema.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One statement of a run: the changes it writes, in order.
pub(super) struct Step<'r, 'e> {
    route: &'r PgRoute,
    events: Vec<&'e ChangeEvent>,
    sql: String,
    params: Vec<Bound<'e>>,
}

impl<'r> Writer<'r> {
    /// Writes a run of updates and deletes, grouped where they can share a statement (see the
    /// module docs), the statements pipelined.
    pub(super) async fn change_run(&mut self, events: &[&ChangeEvent]) -> Result<(), ApplyError> {
        let mut steps = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let route = self
                .routes
                .get(&events[i].table)
                .ok_or_else(|| ApplyError::NoRoute(events[i].table.clone()))?;
            let end = group_end(route, events, i)?;
            if end - i >= GROUP_MIN {
                steps.push(group_step(route, &events[i..end])?);
                i = end;
            } else {
                steps.push(single_step(route, events[i], change_sql)?);
                i += 1;
            }
        }
        for (step, n) in self.run_steps(steps).await? {
            if let [event] = step.events[..] {
                expect_one(&step.route.target, event, n)?;
            } else if n != step.events.len() as u64 {
                return Err(ApplyError::RowMissing {
                    table: step.route.target.clone(),
                    op: step.events[0].op,
                    key: format!(
                        "one of the {} keys written together ({n} rows found; the changes are \
                         written one by one to name it)",
                        step.events.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Runs one statement per event (built by `sql_of`), pipelined; each event's row count.
    pub(super) async fn pipeline<'e>(
        &mut self,
        events: &[&'e ChangeEvent],
        sql_of: SqlOf,
    ) -> Result<Vec<(&'r PgRoute, &'e ChangeEvent, u64)>, ApplyError> {
        let mut steps = Vec::with_capacity(events.len());
        for event in events {
            let route = self
                .routes
                .get(&event.table)
                .ok_or_else(|| ApplyError::NoRoute(event.table.clone()))?;
            steps.push(single_step(route, event, sql_of)?);
        }
        Ok(self
            .run_steps(steps)
            .await?
            .into_iter()
            .map(|(step, n)| (step.route, step.events[0], n))
            .collect())
    }

    /// Prepares every step's statement, then runs them pipelined: every statement is sent
    /// before the first answer is awaited. The server still runs them one after the other,
    /// in order, and the first failure is the one returned. Returns each step's row count.
    async fn run_steps<'e>(
        &mut self,
        steps: Vec<Step<'r, 'e>>,
    ) -> Result<Vec<(Step<'r, 'e>, u64)>, ApplyError> {
        let mut statements = Vec::with_capacity(steps.len());
        for step in &steps {
            statements.push(
                self.statement(step.sql.clone())
                    .await
                    .map_err(|source| write_error(step.route, step.events[0].op, source))?,
            );
        }
        let refs: Vec<Vec<&(dyn ToSql + Sync)>> = steps
            .iter()
            .map(|step| step.params.iter().map(|p| p as _).collect())
            .collect();
        let session = self.session;
        let results = pipelined(
            statements
                .iter()
                .zip(&refs)
                .map(|(statement, refs)| session.execute(statement, refs))
                .collect(),
        )
        .await;
        let mut counts = Vec::with_capacity(steps.len());
        for (step, result) in steps.into_iter().zip(results) {
            let n = result.map_err(|source| write_error(step.route, step.events[0].op, source))?;
            counts.push((step, n));
        }
        Ok(counts)
    }
}

/// One event's own statement.
fn single_step<'r, 'e>(
    route: &'r PgRoute,
    event: &'e ChangeEvent,
    sql_of: SqlOf,
) -> Result<Step<'r, 'e>, ApplyError> {
    let (sql, params) = sql_of(route, event)?;
    Ok(Step {
        route,
        events: vec![event],
        sql,
        params: params.into_iter().map(Bound::One).collect(),
    })
}

/// The route columns an update of `event` writes (those its after-image carries), or `None`
/// when the event cannot go in a group: a delete writes none; an update that changes its key,
/// or any key or written column bound as text, goes alone.
fn group_columns(route: &PgRoute, event: &ChangeEvent) -> Result<Option<Vec<usize>>, ApplyError> {
    let plain = |c: usize| plain_type(route.columns[c].kind, &route.columns[c].declared).is_some();
    if !route.key.iter().all(|&k| plain(k)) {
        return Ok(None);
    }
    if event.op == Op::Delete {
        return Ok(Some(Vec::new()));
    }
    let keys = route.key.iter().map(|&k| route.columns[k].source.as_str());
    if refuse_key_change(event, keys).is_err() {
        return Ok(None);
    }
    let Some(after) = &event.after else {
        return Ok(None);
    };
    // A GENERATED ALWAYS identity column is a key column whose value the update keeps (the
    // key change was refused above): it is matched, never set.
    let columns: Vec<usize> = (0..route.columns.len())
        .filter(|&c| {
            !route.columns[c].identity_always
                && !matches!(
                    after.get(&route.columns[c].source),
                    None | Some(Value::Unchanged)
                )
        })
        .collect();
    Ok((!columns.is_empty() && columns.iter().all(|&c| plain(c))).then_some(columns))
}

/// The end of the group starting at `events[start]`: the changes after it with the same table,
/// operation and written columns, and no key seen before in the group (see the module docs).
fn group_end<'e>(
    route: &PgRoute,
    events: &[&'e ChangeEvent],
    start: usize,
) -> Result<usize, ApplyError> {
    let first = events[start];
    // Two updates of distinct rows can collide on another unique index in one order and not
    // in the other: only where the key is the one unique index are they one statement.
    if first.op == Op::Update && !route.keyed {
        return Ok(start + 1);
    }
    let Some(columns) = group_columns(route, first)? else {
        return Ok(start + 1);
    };
    let key_of = |event: &'e ChangeEvent| -> Result<KeyValues<'e>, ApplyError> {
        route
            .key
            .iter()
            .map(|&k| key_value(event, &route.columns[k].source))
            .collect::<Result<_, _>>()
            .map(KeyValues)
    };
    // A set, not a list: a group may hold a whole batch (20,000 updates of one table), and
    // looking each key up in a list of the ones before took 0.6 s of CPU for such a batch.
    let mut keys = HashSet::from([key_of(first)?]);
    let mut end = start + 1;
    while end < events.len() {
        let event = events[end];
        if event.table != first.table
            || event.op != first.op
            || group_columns(route, event)?.as_ref() != Some(&columns)
        {
            break;
        }
        if !keys.insert(key_of(event)?) {
            break;
        }
        end += 1;
    }
    Ok(end)
}

/// A change's key values, equal when the [`Value`]s are equal, hashed consistently with that
/// equality. A key holding a float NaN equals no key, itself included, as `Value` compares;
/// so it never ends a group, as it never did when the keys were compared one by one.
#[derive(PartialEq)]
struct KeyValues<'e>(Vec<&'e Value>);

impl Eq for KeyValues<'_> {}

impl Hash for KeyValues<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for value in &self.0 {
            hash_value(value, state);
        }
    }
}

/// Hashes `value` so that values equal as [`Value`]s hash alike.
fn hash_value<H: Hasher>(value: &Value, state: &mut H) {
    std::mem::discriminant(value).hash(state);
    match value {
        Value::Null | Value::Unchanged => {}
        Value::Bool(v) => v.hash(state),
        Value::Int(v) | Value::Time(v) => v.hash(state),
        Value::UInt(v) => v.hash(state),
        // 0.0 == -0.0 with different bits; NaN equals nothing and needs no care.
        Value::Float(v) => (if *v == 0.0 { 0 } else { v.to_bits() }).hash(state),
        Value::Decimal(v) => v.hash(state),
        Value::Text(v) | Value::Json(v) => v.hash(state),
        Value::Bytes(v) => v.hash(state),
        Value::Date(v) => v.hash(state),
        Value::Timestamp(v) => v.hash(state),
        Value::TimestampTz(v) => v.hash(state),
        Value::Uuid(v) => v.hash(state),
        Value::Bits(v) => v.hash(state),
        Value::Interval(v) => v.hash(state),
        Value::Array(values) => {
            values.len().hash(state);
            for element in values {
                hash_value(element, state);
            }
        }
    }
}

/// The statement writing `events` (a group, see [`group_end`]) over arrays.
fn group_step<'r, 'e>(
    route: &'r PgRoute,
    events: &[&'e ChangeEvent],
) -> Result<Step<'r, 'e>, ApplyError> {
    let first = events[0];
    let columns = group_columns(route, first)?.unwrap_or_default();
    let mut arrays: Vec<Vec<PgParam<'e>>> =
        vec![Vec::with_capacity(events.len()); route.key.len() + columns.len()];
    for event in events {
        for (array, &k) in arrays.iter_mut().zip(&route.key) {
            let column = &route.columns[k];
            array.push(to_param(
                key_value(event, &column.source)?,
                column,
                &route.target,
            )?);
        }
        if let Some(after) = &event.after {
            for (array, &c) in arrays[route.key.len()..].iter_mut().zip(&columns) {
                let column = &route.columns[c];
                let value = after.get(&column.source).unwrap_or(&Value::Null);
                array.push(to_param(value, column, &route.target)?);
            }
        }
    }
    let mut unnest = Vec::new();
    let mut names = Vec::new();
    let typed = |c: usize| {
        let column = &route.columns[c];
        plain_type(column.kind, &column.declared).unwrap_or("text")
    };
    for (i, &k) in route.key.iter().enumerate() {
        unnest.push(format!("${}::{}[]", unnest.len() + 1, typed(k)));
        names.push(format!("k{i}"));
    }
    for (i, &c) in columns.iter().enumerate() {
        unnest.push(format!("${}::{}[]", unnest.len() + 1, typed(c)));
        names.push(format!("c{i}"));
    }
    let matched = route
        .key
        .iter()
        .enumerate()
        .map(|(i, &k)| format!("t.{} = v.k{i}", route.columns[k].quoted))
        .collect::<Vec<_>>()
        .join(" AND ");
    let rows = format!("unnest({}) AS v({})", unnest.join(", "), names.join(", "));
    let sql = match first.op {
        Op::Delete => format!(
            "DELETE FROM {} AS t USING {rows} WHERE {matched}",
            route.quoted
        ),
        _ => {
            let set = columns
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("{} = v.c{i}", route.columns[c].quoted))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "UPDATE {} AS t SET {set} FROM {rows} WHERE {matched}",
                route.quoted
            )
        }
    };
    Ok(Step {
        route,
        events: events.to_vec(),
        sql,
        params: arrays.into_iter().map(Bound::Many).collect(),
    })
}

/// The base type a column's values are bound as, for an array of them; `None` for a column
/// bound as text with a cast (arrays, bit strings, `inet`, ...) or an enum, which go alone.
fn plain_type(kind: PgKind, declared: &str) -> Option<&'static str> {
    Some(match kind {
        PgKind::Bool => "bool",
        PgKind::Int2 => "int2",
        PgKind::Int4 => "int4",
        PgKind::Int8 => "int8",
        PgKind::Numeric => "numeric",
        PgKind::Float4 => "float4",
        PgKind::Float8 => "float8",
        // The text kinds whose declared type names a base type (text, varchar(20),
        // character(3)); an enum's or a domain's name does not, and goes alone.
        PgKind::Text if declared == "text" => "text",
        PgKind::Text if declared.starts_with("character varying") => "varchar",
        PgKind::Text if declared.starts_with("character") => "bpchar",
        PgKind::Text => return None,
        PgKind::Bytea => "bytea",
        PgKind::Date => "date",
        PgKind::Time => "time",
        PgKind::Interval => "interval",
        PgKind::Timestamp => "timestamp",
        PgKind::TimestampTz => "timestamptz",
        PgKind::Uuid => "uuid",
        PgKind::Json => "json",
        PgKind::Jsonb => "jsonb",
        PgKind::Bits { .. } | PgKind::Array | PgKind::Cast => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Row, TableName};

    use super::super::apply::PgColumn;

    fn column(name: &str, kind: PgKind, declared: &str) -> PgColumn {
        PgColumn {
            source: name.into(),
            target: name.into(),
            quoted: format!("\"{name}\""),
            declared: declared.into(),
            kind,
            scale: None,
            identity_always: false,
        }
    }

    fn route() -> PgRoute {
        PgRoute {
            target: TableName::new("public", "stock"),
            quoted: "public.stock".into(),
            columns: vec![
                column("id", PgKind::Int8, "bigint"),
                column("qty", PgKind::Int4, "integer"),
                column("note", PgKind::Text, "text"),
            ],
            key: vec![0],
            keyed: true,
        }
    }

    fn row(values: &[(&str, Value)]) -> Row {
        let mut row = Row::new();
        for (name, value) in values {
            row.push(*name, value.clone());
        }
        row
    }

    fn update(id: i64, new_id: i64, note: Value) -> ChangeEvent {
        ChangeEvent {
            table: TableName::new("public", "stock"),
            op: Op::Update,
            key: row(&[("id", Value::Int(id))]),
            before: None,
            after: Some(row(&[
                ("id", Value::Int(new_id)),
                ("qty", Value::Int(1)),
                ("note", note),
            ])),
        }
    }

    fn delete(id: i64) -> ChangeEvent {
        ChangeEvent {
            table: TableName::new("public", "stock"),
            op: Op::Delete,
            key: row(&[("id", Value::Int(id))]),
            before: None,
            after: None,
        }
    }

    fn ends(events: &[ChangeEvent]) -> Vec<usize> {
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let route = route();
        let mut out = Vec::new();
        let mut i = 0;
        while i < refs.len() {
            i = group_end(&route, &refs, i).unwrap();
            out.push(i);
        }
        out
    }

    #[test]
    fn a_group_ends_at_a_repeated_key_a_key_change_another_column_set_or_operation() {
        let text = || Value::Text("x".into());
        let events: Vec<ChangeEvent> = vec![
            update(1, 1, text()),
            update(2, 2, text()),
            update(3, 3, text()),
            update(1, 1, text()), // key 1 again: a new group
            update(4, 4, text()),
            update(5, 50, text()),          // changes its key: alone
            update(6, 6, Value::Unchanged), // another column set
            update(7, 7, Value::Unchanged),
            delete(8),
            delete(9),
        ];
        assert_eq!(ends(&events), vec![3, 5, 6, 8, 10]);
    }

    #[test]
    fn a_whole_batch_of_distinct_keys_is_one_group_and_a_repeated_key_still_ends_it() {
        let text = || Value::Text("x".into());
        let mut events: Vec<ChangeEvent> = (0..20_000).map(|i| update(i, i, text())).collect();
        assert_eq!(ends(&events), vec![20_000]);
        events.push(update(19_999, 19_999, text()));
        events.push(update(20_000, 20_000, text()));
        assert_eq!(ends(&events), vec![20_000, 20_002]);
    }

    #[test]
    fn key_values_equal_as_values_hash_alike() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |values: &[Value]| {
            let mut state = DefaultHasher::new();
            KeyValues(values.iter().collect()).hash(&mut state);
            state.finish()
        };
        let pairs = [
            (vec![Value::Float(0.0)], vec![Value::Float(-0.0)]),
            (
                vec![Value::Int(7), Value::Text("a".into())],
                vec![Value::Int(7), Value::Text("a".into())],
            ),
            (
                vec![Value::Array(vec![Value::Int(1), Value::Null])],
                vec![Value::Array(vec![Value::Int(1), Value::Null])],
            ),
        ];
        for (a, b) in &pairs {
            assert_eq!(a, b);
            assert_eq!(hash(a), hash(b), "{a:?}");
        }
        assert_ne!(hash(&[Value::Int(1)]), hash(&[Value::Time(1)]));
        assert_ne!(hash(&[Value::Int(1)]), hash(&[Value::Int(2)]));
    }

    #[test]
    fn updates_go_one_by_one_where_another_unique_index_may_collide_and_deletes_still_group() {
        let text = || Value::Text("x".into());
        let events = [
            update(1, 1, text()),
            update(2, 2, text()),
            update(3, 3, text()),
            delete(8),
            delete(9),
        ];
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let mut route = route();
        route.keyed = false;
        let mut ends = Vec::new();
        let mut i = 0;
        while i < refs.len() {
            i = group_end(&route, &refs, i).unwrap();
            ends.push(i);
        }
        assert_eq!(ends, vec![1, 2, 3, 5]);
    }

    #[test]
    fn a_group_is_one_statement_over_arrays_of_base_types() {
        let events = [
            update(1, 1, Value::Text("a".into())),
            update(2, 2, Value::Null),
        ];
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let route = route();
        let step = group_step(&route, &refs).unwrap();
        assert_eq!(
            step.sql,
            "UPDATE public.stock AS t SET \"id\" = v.c0, \"qty\" = v.c1, \"note\" = v.c2 FROM \
             unnest($1::int8[], $2::int8[], $3::int4[], $4::text[]) AS v(k0, c0, c1, c2) \
             WHERE t.\"id\" = v.k0"
        );
        assert!(matches!(&step.params[3], Bound::Many(values) if values.len() == 2));
        let deletes = [delete(1), delete(2)];
        let refs: Vec<&ChangeEvent> = deletes.iter().collect();
        assert_eq!(
            group_step(&route, &refs).unwrap().sql,
            "DELETE FROM public.stock AS t USING unnest($1::int8[]) AS v(k0) WHERE t.\"id\" = v.k0"
        );
    }

    #[test]
    fn enums_domains_and_text_cast_columns_go_alone() {
        assert_eq!(plain_type(PgKind::Text, "mood"), None);
        assert_eq!(
            plain_type(PgKind::Text, "character varying(20)"),
            Some("varchar")
        );
        assert_eq!(plain_type(PgKind::Text, "character(3)"), Some("bpchar"));
        assert_eq!(plain_type(PgKind::Array, "integer[]"), None);
        assert_eq!(plain_type(PgKind::Cast, "inet"), None);
    }
}
