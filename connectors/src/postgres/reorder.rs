//! A large batch written table by table, each table's changes in rounds of distinct rows.
//!
//! A backlog batch holds hundreds of source transactions, each touching several tables: a
//! shop's transaction inserts orders and their lines, updates stock and orders, deletes lines
//! and inserts shipments. Written in the source's order, every transaction's run of each table
//! is a statement of its own (a dozen or so rows), and the target's cost per statement (parse,
//! bind, plan, executor start and end, one round trip each) is most of the time. Written table
//! by table, in rounds, the same batch is a few statements per table: one COPY of every new
//! order, one `UPDATE ... FROM unnest(...)` of every stock row, and so on.
//!
//! # Why the target ends on the same rows
//!
//! The batch is one target transaction: nobody sees its intermediate states, only its end. The
//! order is changed only where the end cannot depend on it:
//!
//! - **Across tables**, only when the session has foreign-key checks off
//!   (`session_replication_role = replica`, see [`crate::foreign_keys`]) and no trigger or rule
//!   fires in such a session on any of the batch's tables (`ENABLE ALWAYS` / `ENABLE REPLICA`):
//!   then a write to one table reads nothing of another.
//! - **Within a table**, the changes of one row keep their order; changes of different rows
//!   are written in rounds: round `n` holds every row's `n`-th change of the batch, so the rows
//!   of a round are distinct, and within a round inserts, then updates, then deletes. Two
//!   changes of different rows can only interact through a unique constraint or an exclusion
//!   constraint, so a table is written in rounds only when its one unique index is the key
//!   duplex writes by (the primary key: no other unique index, no exclusion constraint), no
//!   update in the batch changes a row's key, and the key's values identify a row by their
//!   bits (integers and UUIDs; a text key may be equal to another under its collation, so a
//!   table with one keeps the source's order within itself).
//! - A table that is partitioned or has inheritance children (a write may land in another
//!   table) keeps the source's order within itself too.
//!
//! The catalog is read inside the target transaction after `LOCK TABLE ... IN ROW EXCLUSIVE
//! MODE` (the lock the writes take anyway): a trigger, rule or index created or enabled
//! meanwhile waits for the transaction's end, so what was read holds for the writes. A change
//! that fails (a missing row, a refused value) fails the batch as before, and the link writes
//! the batch's transactions one at a time, in the source's order, to name it.
//!
//! Each row's own changes still succeed or fail exactly as in the source's order: a write to
//! a row depends only on that row's earlier changes, which stay before it.
//!
//! `DUPLEX_APPLY_REORDER=off` writes every batch in the source's order (for measuring).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use crate::apply::ApplyError;
use crate::{ChangeEvent, Op, TableName, Value};

use super::apply::PgRoute;
use super::error::PgError;

/// Fewest changes in a batch for which the catalog is read and the batch reordered: below,
/// the extra round trip costs more than the statements saved.
pub(super) const REORDER_MIN: usize = 256;

/// Whether large batches are reordered: yes, unless `DUPLEX_APPLY_REORDER=off` (to measure
/// the difference, see docs/performance.md).
pub(super) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("DUPLEX_APPLY_REORDER").as_deref() != Ok("off"))
}

/// What the catalog says of the batch's target tables (by target table).
#[derive(Debug, Default)]
pub(super) struct Catalog {
    /// Some table of the batch has a trigger or rule that fires in a replica session.
    pub(super) fires: bool,
    /// Tables whose only unique index is the route's key, with no exclusion constraint,
    /// neither partitioned nor with inheritance children.
    pub(super) keyed: HashSet<TableName>,
    /// The tables read.
    pub(super) read: HashSet<TableName>,
}

/// Reads [`Catalog`] for the target tables of `routes`; with `lock`, in the open transaction
/// after locking them in ROW EXCLUSIVE mode, so that it holds until the transaction ends.
pub(super) async fn read_catalog(
    client: &Client,
    routes: &[&PgRoute],
    lock: bool,
) -> Result<Catalog, ApplyError> {
    if routes.is_empty() {
        return Ok(Catalog::default());
    }
    if lock {
        let tables: Vec<&str> = routes.iter().map(|r| r.quoted.as_str()).collect();
        client
            .batch_execute(&format!(
                "LOCK TABLE {} IN ROW EXCLUSIVE MODE",
                tables.join(", ")
            ))
            .await
            .map_err(|source| catalog_error("locking the batch's tables", source))?;
    }
    let schemas: Vec<&str> = routes.iter().map(|r| r.target.schema.as_str()).collect();
    let names: Vec<&str> = routes.iter().map(|r| r.target.name.as_str()).collect();
    let rows = client
        .query(CATALOG_SQL, &[&schemas, &names])
        .await
        .map_err(|source| catalog_error("reading the batch's tables' constraints", source))?;
    let mut catalog = Catalog::default();
    for row in rows {
        let schema: String = row.get(0);
        let name: String = row.get(1);
        let fires: bool = row.get(2);
        let plain: bool = row.get(3);
        let unique: Vec<Vec<String>> = row
            .get::<_, Vec<String>>(4)
            .into_iter()
            .map(|columns| columns.split(',').map(str::to_owned).collect())
            .collect();
        catalog.fires |= fires;
        let Some(route) = routes
            .iter()
            .find(|r| r.target.schema == schema && r.target.name == name)
        else {
            continue;
        };
        let mut key: Vec<String> = route
            .key
            .iter()
            .map(|&k| route.columns[k].target.clone())
            .collect();
        key.sort();
        catalog.read.insert(route.target.clone());
        if plain && unique.len() == 1 && unique[0] == key {
            catalog.keyed.insert(route.target.clone());
        }
    }
    Ok(catalog)
}

/// Per table: whether a non-internal trigger or a rule fires in a replica session; whether it
/// is an ordinary table without children and without exclusion constraints; every unique
/// index's key columns, sorted and comma-joined (an expression is an empty name, so an index
/// with one never equals a key).
const CATALOG_SQL: &str = "\
SELECT n.nspname::text, c.relname::text,
  EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
          AND t.tgenabled IN ('A', 'R'))
  OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type <> '1'
          AND r.ev_enabled IN ('A', 'R')),
  c.relkind = 'r'
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhparent = c.oid)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conrelid = c.oid AND x.contype = 'x'),
  ARRAY(SELECT (SELECT string_agg(coalesce(a.attname::text, ''), ','
                                  ORDER BY coalesce(a.attname::text, ''))
                FROM generate_series(0, i.indnkeyatts - 1) AS g(n)
                LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[g.n])
        FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN unnest($1::text[], $2::text[]) AS w(schema, name)
  ON n.nspname = w.schema AND c.relname = w.name";

fn catalog_error(doing: &'static str, source: tokio_postgres::Error) -> ApplyError {
    ApplyError::from(PgError::query(doing)(source))
}

/// A key value that identifies a row by its bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyPart {
    Int(i128),
    Uuid(u128),
}

fn key_part(value: &Value) -> Option<KeyPart> {
    match value {
        Value::Int(v) => Some(KeyPart::Int(i128::from(*v))),
        Value::UInt(v) => Some(KeyPart::Int(i128::from(*v))),
        Value::Uuid(v) => Some(KeyPart::Uuid(v.as_u128())),
        _ => None,
    }
}

/// The row's key, or `None` when a key value is not one that identifies a row by its bits.
fn key_of(route: &PgRoute, row: &crate::Row) -> Option<Vec<KeyPart>> {
    route
        .key
        .iter()
        .map(|&k| row.get(&route.columns[k].source).and_then(key_part))
        .collect()
}

/// `events` in the order to write them (see the module doc): with `catalog.fires` the source's
/// order; otherwise table by table, in order of first appearance, each table in rounds where it
/// may be (`catalog.keyed`), else in the source's order.
pub(super) fn order<'e>(
    events: &[&'e ChangeEvent],
    routes: &HashMap<TableName, PgRoute>,
    catalog: &Catalog,
) -> Vec<&'e ChangeEvent> {
    if catalog.fires {
        return events.to_vec();
    }
    let mut tables: Vec<(&TableName, Vec<&'e ChangeEvent>)> = Vec::new();
    let mut index: HashMap<&TableName, usize> = HashMap::new();
    for event in events {
        let i = *index.entry(&event.table).or_insert_with(|| {
            tables.push((&event.table, Vec::new()));
            tables.len() - 1
        });
        tables[i].1.push(event);
    }
    let mut ordered = Vec::with_capacity(events.len());
    for (table, changes) in tables {
        match routes.get(table) {
            Some(route) if catalog.keyed.contains(&route.target) => {
                ordered.extend(rounds(route, &changes).unwrap_or(changes))
            }
            _ => ordered.extend(changes),
        }
    }
    ordered
}

/// One table's changes in rounds, or `None` when a key is not bitwise or an update changes a
/// row's key.
fn rounds<'e>(route: &PgRoute, changes: &[&'e ChangeEvent]) -> Option<Vec<&'e ChangeEvent>> {
    let mut seen: HashMap<Vec<KeyPart>, usize> = HashMap::with_capacity(changes.len());
    // Per round: inserts, updates, deletes.
    let mut by_round: Vec<[Vec<&'e ChangeEvent>; 3]> = Vec::new();
    for event in changes {
        let key = key_of(route, &event.key)?;
        if event.op == Op::Update
            && let Some(after) = &event.after
            && route.key.iter().any(|&k| {
                let column = &route.columns[k].source;
                match after.get(column) {
                    None | Some(Value::Unchanged) => false,
                    Some(value) => Some(value) != event.key.get(column),
                }
            })
        {
            return None;
        }
        let round = seen.entry(key).or_insert(0);
        if by_round.len() <= *round {
            by_round.push(Default::default());
        }
        let slot = match event.op {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
        };
        by_round[*round][slot].push(event);
        *round += 1;
    }
    Some(by_round.into_iter().flatten().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Row;
    use crate::postgres::apply::{PgColumn, PgKind};

    fn route(table: &str) -> PgRoute {
        let column = |name: &str, kind| PgColumn {
            source: name.into(),
            target: name.into(),
            quoted: name.into(),
            declared: "bigint".into(),
            kind,
            scale: None,
            identity_always: false,
        };
        PgRoute {
            target: TableName::new("public", table),
            quoted: format!("public.{table}"),
            columns: vec![column("id", PgKind::Int8), column("v", PgKind::Int8)],
            key: vec![0],
            keyed: true,
        }
    }

    fn row(id: i64, v: Option<i64>) -> Row {
        let mut row: Row = [("id", Value::Int(id))].into_iter().collect();
        if let Some(v) = v {
            row.push("v", Value::Int(v));
        }
        row
    }

    fn change(table: &str, op: Op, id: i64, v: i64) -> ChangeEvent {
        ChangeEvent {
            table: TableName::new("public", table),
            op,
            key: row(id, None),
            before: None,
            after: (op != Op::Delete).then(|| row(id, Some(v))),
        }
    }

    fn routes() -> HashMap<TableName, PgRoute> {
        ["a", "b"]
            .into_iter()
            .map(|t| (TableName::new("public", t), route(t)))
            .collect()
    }

    fn keyed(tables: &[&str]) -> Catalog {
        Catalog {
            fires: false,
            keyed: tables
                .iter()
                .map(|t| TableName::new("public", *t))
                .collect(),
            read: HashSet::new(),
        }
    }

    fn show(events: &[&ChangeEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let id = match e.key.get("id") {
                    Some(Value::Int(id)) => *id,
                    _ => unreachable!(),
                };
                format!("{}{:?}{id}", e.table.name, e.op)
            })
            .collect()
    }

    #[test]
    fn tables_are_written_one_after_the_other_and_each_rows_changes_keep_their_order() {
        let events = [
            change("a", Op::Insert, 1, 0),
            change("b", Op::Insert, 1, 0),
            change("a", Op::Update, 1, 1),
            change("a", Op::Insert, 2, 0),
            change("b", Op::Update, 7, 0),
            change("a", Op::Delete, 1, 0),
            change("a", Op::Insert, 1, 5),
            change("a", Op::Update, 3, 0),
            change("b", Op::Insert, 2, 0),
        ];
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let ordered = order(&refs, &routes(), &keyed(&["a", "b"]));
        assert_eq!(
            show(&ordered),
            [
                // a, round 0: inserts 1 and 2, update 3; round 1: update 1; round 2: delete 1;
                // round 3: insert 1.
                "aInsert1", "aInsert2", "aUpdate3", "aUpdate1", "aDelete1", "aInsert1",
                // b, round 0.
                "bInsert1", "bInsert2", "bUpdate7",
            ]
        );
        assert_eq!(ordered.len(), events.len());
    }

    #[test]
    fn a_table_not_keyed_keeps_its_order_and_a_firing_trigger_keeps_the_batchs() {
        let events = [
            change("a", Op::Update, 1, 1),
            change("b", Op::Insert, 1, 0),
            change("a", Op::Insert, 2, 0),
        ];
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        assert_eq!(
            show(&order(&refs, &routes(), &keyed(&["b"]))),
            ["aUpdate1", "aInsert2", "bInsert1"]
        );
        let mut fires = keyed(&["a", "b"]);
        fires.fires = true;
        assert_eq!(
            show(&order(&refs, &routes(), &fires)),
            ["aUpdate1", "bInsert1", "aInsert2"]
        );
    }

    #[test]
    fn a_key_change_or_a_key_not_bitwise_keeps_the_tables_order() {
        let mut moved = change("a", Op::Update, 1, 1);
        moved.after = Some(row(9, Some(1)));
        let events = [
            change("a", Op::Update, 2, 1),
            moved,
            change("a", Op::Insert, 3, 0),
        ];
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        assert_eq!(
            show(&order(&refs, &routes(), &keyed(&["a"]))),
            ["aUpdate2", "aUpdate1", "aInsert3"]
        );
        let text = ChangeEvent {
            key: [("id", Value::Text("x".into()))].into_iter().collect(),
            ..change("a", Op::Delete, 0, 0)
        };
        let events = [change("a", Op::Update, 2, 1), text];
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let ordered = order(&refs, &routes(), &keyed(&["a"]));
        assert_eq!(ordered[0].op, Op::Update);
        assert_eq!(ordered[1].op, Op::Delete);
    }
}
