//! One change event as one SQL Server statement with its parameters, strict or conditional
//! (see [`crate::apply`] for what each must do, and [`super::sql`] for the statement forms).
//! Values are bound through [`to_param`] for the target column's type; a value the column
//! cannot hold is refused ([`ApplyError::Value`]), never rounded. [`super::MssqlSession`] runs
//! the statements and checks their row counts.

use super::sql::{
    Compare, WriteColumn, conditional_insert_sql, delete_sql, insert_sql, quote_table,
    rows_per_insert, update_sql,
};
use super::{MssqlType, Param, to_param};
use crate::apply::{
    ApplyError, expected_values, insert_columns, key_value, malformed, refuse_identity_change,
    refuse_key_change,
};
use crate::{ChangeEvent, Op, TableName, Value};

/// A target column a route writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteColumn {
    /// Its name in the source's events.
    pub source: String,
    /// Its name on the target.
    pub target: String,
    /// Its type on the target.
    pub ty: MssqlType,
    /// Its declared scale (`sys.columns.scale`: the decimal places of a `decimal`, `numeric`,
    /// `money` or `smallmoney` column).
    pub scale: u8,
    /// How a conditional write compares an expected value with it.
    pub compare: Compare,
}

/// Where one source table's events are written on SQL Server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MssqlRoute {
    /// The target table.
    pub target: TableName,
    /// The written columns.
    pub columns: Vec<RouteColumn>,
    /// Indexes into `columns` of the key.
    pub key: Vec<usize>,
    /// Index into `columns` of the target table's `IDENTITY` column, when the route writes
    /// it (always a key column): inserts name it with `IDENTITY_INSERT` on, updates never
    /// set it.
    pub identity: Option<usize>,
}

/// A statement and the values it binds, in `@P1, @P2, ...` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<Param>,
}

impl MssqlRoute {
    fn sources(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.source.as_str())
    }

    fn param(&self, column: &RouteColumn, value: &Value) -> Result<Param, ApplyError> {
        let refuse = |reason: String| {
            ApplyError::refuse(
                &self.target,
                &column.target,
                value,
                column.ty.name(),
                reason,
            )
        };
        // SQL Server rounds a decimal to the column's scale without a word: refused instead.
        if let Value::Decimal(d) = value
            && column.ty.has_scale()
            && d.normalized().scale() > usize::from(column.scale)
        {
            return Err(refuse(format!(
                "{d} has more than {} decimal places and would be rounded",
                column.scale
            )));
        }
        to_param(column.ty, value)
            .map(Param)
            .map_err(|e| refuse(e.to_string()))
    }

    /// The key's target names and old values, as parameters.
    fn key(&self, event: &ChangeEvent) -> Result<(Vec<&str>, Vec<Param>), ApplyError> {
        let mut names = Vec::new();
        let mut params = Vec::new();
        for &k in &self.key {
            let column = &self.columns[k];
            names.push(column.target.as_str());
            params.push(self.param(column, key_value(event, &column.source)?)?);
        }
        Ok((names, params))
    }

    /// The conditional write's expected columns and values (none for a strict write).
    fn expected(
        &self,
        event: &ChangeEvent,
        conditional: bool,
    ) -> Result<(Vec<WriteColumn>, Vec<Param>), ApplyError> {
        let mut columns = Vec::new();
        let mut params = Vec::new();
        if conditional {
            for (i, value) in expected_values(self.sources(), &self.key, event) {
                let column = &self.columns[i];
                columns.push(WriteColumn {
                    name: column.target.clone(),
                    compare: column.compare.clone(),
                });
                params.push(self.param(column, value)?);
            }
        }
        Ok((columns, params))
    }

    /// The statement that writes `event`; `conditional` for the merge engine's writes.
    pub fn statement(
        &self,
        event: &ChangeEvent,
        conditional: bool,
    ) -> Result<Statement, ApplyError> {
        match event.op {
            Op::Insert => self.insert(event, conditional),
            Op::Update => {
                if conditional {
                    refuse_key_change(event, self.key.iter().map(|&k| &*self.columns[k].source))?;
                }
                let after = event
                    .after
                    .as_ref()
                    .ok_or_else(|| malformed(event, "an update without an after-image"))?;
                let mut set = Vec::new();
                let mut params = Vec::new();
                for (i, column) in self.columns.iter().enumerate() {
                    match after.get(&column.source) {
                        None | Some(Value::Unchanged) => {}
                        Some(value) if self.identity == Some(i) => refuse_identity_change(
                            event,
                            &column.source,
                            value,
                            &self.target,
                            &column.target,
                            column.ty.name(),
                            "an IDENTITY column, and SQL Server does not update IDENTITY values: \
                             delete the row and insert it again on the source instead",
                        )?,
                        Some(value) => {
                            set.push(column.target.as_str());
                            params.push(self.param(column, value)?);
                        }
                    }
                }
                let (key, key_params) = self.key(event)?;
                if set.is_empty() {
                    // Nothing changes: the row is still touched, so that its count proves it
                    // is there. An IDENTITY column cannot be set, even to itself.
                    match self.key.iter().position(|&k| self.identity != Some(k)) {
                        Some(k) => {
                            set.push(key[k]);
                            params.push(key_params[k].clone());
                        }
                        None => {
                            let column = &self.columns[self.key[0]];
                            return Err(ApplyError::refuse(
                                &self.target,
                                &column.target,
                                key_value(event, &column.source)?,
                                column.ty.name(),
                                "an update that changes no column of a table keyed by its \
                                 IDENTITY column alone cannot be written on SQL Server",
                            ));
                        }
                    }
                }
                let (expected, expected_params) = self.expected(event, conditional)?;
                params.extend(key_params);
                params.extend(expected_params);
                Ok(Statement {
                    sql: update_sql(&self.target, &set, &key, &expected),
                    params,
                })
            }
            Op::Delete => {
                let (key, mut params) = self.key(event)?;
                let (expected, expected_params) = self.expected(event, conditional)?;
                params.extend(expected_params);
                Ok(Statement {
                    sql: delete_sql(&self.target, &key, &expected),
                    params,
                })
            }
        }
    }

    /// `sql`, an insert, with `IDENTITY_INSERT` on around it when it names the table's
    /// IDENTITY column. The setting lasts only as long as the batch that sets it (the
    /// statement runs through `sp_executesql`), so it is set in the same batch, and turned
    /// off again at once for any later statement of that batch.
    fn identity_insert(&self, sql: String, names: &[&str]) -> String {
        match self.identity.map(|i| self.columns[i].target.as_str()) {
            Some(identity) if names.contains(&identity) => {
                let table = quote_table(&self.target);
                format!("SET IDENTITY_INSERT {table} ON; {sql}; SET IDENTITY_INSERT {table} OFF")
            }
            _ => sql,
        }
    }

    /// The target columns an insert writes and their values, in the same order.
    pub fn insert_values(
        &self,
        event: &ChangeEvent,
    ) -> Result<(Vec<&str>, Vec<Param>), ApplyError> {
        let columns = insert_columns(self.sources(), event)?;
        let after = event
            .after
            .as_ref()
            .ok_or_else(|| malformed(event, "an insert without an after-image"))?;
        let mut names = Vec::new();
        let mut params = Vec::new();
        for &i in &columns {
            let column = &self.columns[i];
            let value = after
                .get(&column.source)
                .ok_or_else(|| malformed(event, "an insert column without a value"))?;
            names.push(column.target.as_str());
            params.push(self.param(column, value)?);
        }
        Ok((names, params))
    }

    fn insert(&self, event: &ChangeEvent, conditional: bool) -> Result<Statement, ApplyError> {
        let (names, params) = self.insert_values(event)?;
        let sql = if conditional {
            let key: Vec<&str> = self
                .key
                .iter()
                .map(|&k| self.columns[k].target.as_str())
                .collect();
            conditional_insert_sql(&self.target, &names, &key)
                .ok_or_else(|| malformed(event, "an insert without every key column"))?
        } else {
            insert_sql(&self.target, &names, 1)
        };
        Ok(Statement {
            sql: self.identity_insert(sql, &names),
            params,
        })
    }

    /// One multi-row INSERT of the strict inserts at the head of `events` that go to this
    /// route's table with the same columns, within SQL Server's limits ([`rows_per_insert`]):
    /// the statement and how many events it writes (at least one; the first must be an insert
    /// of this route).
    pub fn insert_run(&self, events: &[&ChangeEvent]) -> Result<(Statement, usize), ApplyError> {
        let (names, mut params) = self.insert_values(events[0])?;
        let limit = rows_per_insert(names.len());
        let mut rows = 1;
        for event in &events[1..] {
            if rows == limit || event.op != Op::Insert || event.table != events[0].table {
                break;
            }
            let (more, values) = self.insert_values(event)?;
            if more != names {
                break;
            }
            params.extend(values);
            rows += 1;
        }
        let sql = self.identity_insert(insert_sql(&self.target, &names, rows), &names);
        Ok((Statement { sql, params }, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Row;
    use tiberius::ColumnData;

    fn route() -> MssqlRoute {
        let column = |source: &str, target: &str, ty, compare| RouteColumn {
            source: source.into(),
            target: target.into(),
            ty,
            scale: 0,
            compare,
        };
        MssqlRoute {
            target: TableName::new("dbo", "orders"),
            columns: vec![
                column("id", "Id", MssqlType::Int, Compare::Value),
                column(
                    "note",
                    "Note",
                    MssqlType::Text,
                    Compare::Text("nvarchar(20)".into()),
                ),
                column("qty", "Qty", MssqlType::SmallInt, Compare::Value),
            ],
            key: vec![0],
            identity: None,
        }
    }

    /// The same table keyed by an IDENTITY column.
    fn identity_route() -> MssqlRoute {
        MssqlRoute {
            identity: Some(0),
            ..route()
        }
    }

    fn row(values: &[(&str, Value)]) -> Row {
        values.iter().cloned().collect()
    }

    fn event(op: Op, before: Option<Row>, after: Option<Row>) -> ChangeEvent {
        ChangeEvent {
            table: TableName::new("public", "orders"),
            op,
            key: row(&[("id", Value::Int(7))]),
            before,
            after,
        }
    }

    fn ints(statement: &Statement) -> Vec<Option<i64>> {
        statement
            .params
            .iter()
            .map(|p| match &p.0 {
                ColumnData::I32(v) => v.map(i64::from),
                ColumnData::I16(v) => v.map(i64::from),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_decimal_the_column_would_round_is_refused_by_name() {
        let mut route = route();
        route.columns.push(RouteColumn {
            source: "price".into(),
            target: "Price".into(),
            ty: MssqlType::Decimal,
            scale: 2,
            compare: Compare::Value,
        });
        let insert = |price: &str| {
            let after = row(&[
                ("id", Value::Int(7)),
                ("note", Value::Null),
                ("qty", Value::Null),
                ("price", Value::Decimal(price.parse().unwrap())),
            ]);
            route.statement(&event(Op::Insert, None, Some(after)), false)
        };
        // Trailing zeros are not decimal places that round.
        assert!(insert("12.30").is_ok());
        assert!(insert("12.3400").is_ok());
        let err = insert("12.345").unwrap_err();
        let ApplyError::Value(refusal) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(refusal.column, "Price");
        assert!(
            refusal
                .reason
                .contains("more than 2 decimal places and would be rounded"),
            "{err}"
        );
    }

    #[test]
    fn inserts_bind_the_after_image_by_target_name() {
        let after = row(&[
            ("id", Value::Int(7)),
            ("note", Value::Text("x".into())),
            ("qty", Value::Int(3)),
        ]);
        let insert = event(Op::Insert, None, Some(after));
        let strict = route().statement(&insert, false).unwrap();
        assert_eq!(
            strict.sql,
            "INSERT INTO [dbo].[orders] ([Id], [Note], [Qty]) VALUES (@P1, @P2, @P3)"
        );
        assert_eq!(ints(&strict), vec![Some(7), None, Some(3)]);
        let conditional = route().statement(&insert, true).unwrap();
        assert!(
            conditional.sql.ends_with("WHERE [Id] = @P1)"),
            "{}",
            conditional.sql
        );
        assert_eq!(conditional.params, strict.params);
    }

    #[test]
    fn updates_skip_unchanged_columns_and_bind_set_key_then_expected() {
        let before = row(&[("id", Value::Int(7)), ("qty", Value::Int(2))]);
        let after = row(&[
            ("id", Value::Int(7)),
            ("note", Value::Unchanged),
            ("qty", Value::Int(3)),
        ]);
        let update = event(Op::Update, Some(before), Some(after));
        let strict = route().statement(&update, false).unwrap();
        assert_eq!(
            strict.sql,
            "UPDATE [dbo].[orders] SET [Id] = @P1, [Qty] = @P2 WHERE [Id] = @P3"
        );
        assert_eq!(ints(&strict), vec![Some(7), Some(3), Some(7)]);
        let conditional = route().statement(&update, true).unwrap();
        assert_eq!(
            conditional.sql,
            "UPDATE [dbo].[orders] SET [Id] = @P1, [Qty] = @P2 WHERE [Id] = @P3 \
             AND EXISTS (SELECT [Qty] INTERSECT SELECT @P4)"
        );
        assert_eq!(ints(&conditional), vec![Some(7), Some(3), Some(7), Some(2)]);
    }

    #[test]
    fn inserts_into_an_identity_key_set_identity_insert_in_their_own_batch() {
        let after = |id| {
            row(&[
                ("id", Value::Int(id)),
                ("note", Value::Text("x".into())),
                ("qty", Value::Int(3)),
            ])
        };
        let first = event(Op::Insert, None, Some(after(7)));
        let second = event(Op::Insert, None, Some(after(8)));
        let strict = identity_route().statement(&first, false).unwrap();
        assert_eq!(
            strict.sql,
            "SET IDENTITY_INSERT [dbo].[orders] ON; \
             INSERT INTO [dbo].[orders] ([Id], [Note], [Qty]) VALUES (@P1, @P2, @P3); \
             SET IDENTITY_INSERT [dbo].[orders] OFF"
        );
        assert_eq!(ints(&strict), vec![Some(7), None, Some(3)]);
        let conditional = identity_route().statement(&first, true).unwrap();
        assert!(
            conditional
                .sql
                .starts_with("SET IDENTITY_INSERT [dbo].[orders] ON; INSERT INTO [dbo].[orders]")
                && conditional
                    .sql
                    .ends_with("; SET IDENTITY_INSERT [dbo].[orders] OFF"),
            "{}",
            conditional.sql
        );
        let (run, rows) = identity_route().insert_run(&[&first, &second]).unwrap();
        assert_eq!(rows, 2);
        assert_eq!(
            run.sql,
            "SET IDENTITY_INSERT [dbo].[orders] ON; \
             INSERT INTO [dbo].[orders] ([Id], [Note], [Qty]) VALUES (@P1, @P2, @P3), (@P4, @P5, @P6); \
             SET IDENTITY_INSERT [dbo].[orders] OFF"
        );
        // Without an IDENTITY column, or when the insert leaves it to the server, nothing is
        // set.
        assert!(
            !route()
                .statement(&first, false)
                .unwrap()
                .sql
                .contains("IDENTITY")
        );
    }

    #[test]
    fn updates_never_set_an_identity_key_and_refuse_to_change_it() {
        let update = |after| event(Op::Update, Some(row(&[("id", Value::Int(7))])), Some(after));
        let changed = update(row(&[("id", Value::Int(7)), ("qty", Value::Int(3))]));
        let strict = identity_route().statement(&changed, false).unwrap();
        assert_eq!(
            strict.sql,
            "UPDATE [dbo].[orders] SET [Qty] = @P1 WHERE [Id] = @P2"
        );
        assert_eq!(ints(&strict), vec![Some(3), Some(7)]);
        // Nothing but the key in the after-image: the row is touched through another column
        // (here the key alone is the IDENTITY column: refused with the reason).
        let touch = update(row(&[("id", Value::Int(7)), ("note", Value::Unchanged)]));
        match identity_route().statement(&touch, false) {
            Err(ApplyError::Value(refusal)) => {
                assert_eq!(refusal.column, "Id");
                assert!(refusal.reason.contains("IDENTITY"), "{}", refusal.reason);
            }
            other => panic!("{other:?}"),
        }
        let mut composite = identity_route();
        composite.key = vec![0, 2];
        let touch = ChangeEvent {
            key: row(&[("id", Value::Int(7)), ("qty", Value::Int(3))]),
            ..update(row(&[("id", Value::Int(7)), ("note", Value::Unchanged)]))
        };
        let statement = composite.statement(&touch, false).unwrap();
        assert_eq!(
            statement.sql,
            "UPDATE [dbo].[orders] SET [Qty] = @P1 WHERE [Id] = @P2 AND [Qty] = @P3"
        );
        assert_eq!(ints(&statement), vec![Some(3), Some(7), Some(3)]);
        let moved = update(row(&[("id", Value::Int(8)), ("qty", Value::Int(3))]));
        match identity_route().statement(&moved, false) {
            Err(ApplyError::Value(refusal)) => {
                assert_eq!(refusal.column, "Id");
                assert!(refusal.reason.contains("IDENTITY"), "{}", refusal.reason);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deletes_compare_the_before_image_only_when_conditional() {
        let before = row(&[("id", Value::Int(7)), ("note", Value::Null)]);
        let delete = event(Op::Delete, Some(before), None);
        assert_eq!(
            route().statement(&delete, false).unwrap().sql,
            "DELETE FROM [dbo].[orders] WHERE [Id] = @P1"
        );
        let conditional = route().statement(&delete, true).unwrap();
        assert!(
            conditional
                .sql
                .contains("CAST(CAST(@P2 AS nvarchar(20)) AS varbinary(max))")
        );
        assert_eq!(conditional.params.len(), 2);
    }

    #[test]
    fn a_value_the_column_cannot_hold_and_a_key_change_are_refused() {
        let after = row(&[("id", Value::Int(7)), ("qty", Value::Int(70_000))]);
        match route().statement(&event(Op::Insert, None, Some(after)), false) {
            Err(ApplyError::Value(refusal)) => {
                assert_eq!(refusal.column, "Qty");
                assert_eq!(refusal.column_type, "smallint");
            }
            other => panic!("{other:?}"),
        }
        let moved = event(
            Op::Update,
            Some(row(&[("id", Value::Int(7))])),
            Some(row(&[("id", Value::Int(8))])),
        );
        assert!(route().statement(&moved, false).is_ok());
        assert!(matches!(
            route().statement(&moved, true),
            Err(ApplyError::KeyChange { .. })
        ));
        let no_after = event(Op::Update, None, None);
        assert!(matches!(
            route().statement(&no_after, false),
            Err(ApplyError::Malformed { .. })
        ));
    }

    #[test]
    fn a_run_of_inserts_with_the_same_columns_becomes_one_statement() {
        let insert = |id: i64, note: Option<&str>| {
            let mut after = row(&[("id", Value::Int(id))]);
            if let Some(note) = note {
                after.push("note", Value::Text(note.into()));
            }
            event(Op::Insert, None, Some(after))
        };
        let (a, b, c) = (insert(1, Some("a")), insert(2, Some("b")), insert(3, None));
        let delete = event(Op::Delete, Some(row(&[("id", Value::Int(7))])), None);
        let (statement, rows) = route().insert_run(&[&a, &b, &c]).unwrap();
        assert_eq!(rows, 2, "the third has other columns");
        assert_eq!(
            statement.sql,
            "INSERT INTO [dbo].[orders] ([Id], [Note]) VALUES (@P1, @P2), (@P3, @P4)"
        );
        assert_eq!(ints(&statement), vec![Some(1), None, Some(2), None]);
        assert_eq!(route().insert_run(&[&c, &delete, &a]).unwrap().1, 1);
        let many: Vec<ChangeEvent> = (0..1500).map(|i| insert(i, Some("n"))).collect();
        let refs: Vec<&ChangeEvent> = many.iter().collect();
        let (statement, rows) = route().insert_run(&refs).unwrap();
        assert_eq!(rows, 1000);
        assert_eq!(statement.params.len(), 2000);
    }
}
