//! The SQL of the applier's writes into a SQL Server target: text only, values travel as
//! `@Pn` parameters (`duplex.positions` is spelled in [`super::positions`]). The applier
//! session that runs them (a [`crate::apply::TargetSession`]) is not written yet.
//!
//! # Conditional writes
//! The condition and the write are one statement. An INSERT inserts from a `SELECT ... WHERE
//! NOT EXISTS` over the key read with `UPDLOCK, HOLDLOCK`, so no row with the key can appear
//! between the test and the write; an UPDATE or DELETE carries the expected values in its
//! `WHERE`. A statement that changed no row was skipped. Expected values are compared
//! NULL-safely with `EXISTS (SELECT col INTERSECT SELECT @Pn)` (INTERSECT treats two NULLs as
//! the same), and text exactly: both sides as bytes of the column's own type, since `=` under
//! the usual case-insensitive collations holds `'A' = 'a'` and ignores trailing spaces.

use super::stream::quote;
use crate::TableName;

/// The values one statement may bind: SQL Server allows 2100 parameters per procedure call,
/// and tiberius sends a parameterised statement as `sp_executesql`, whose own `@stmt` and
/// `@params` count among them.
pub const MAX_PARAMS: usize = 2098;

/// SQL Server's limit on the rows of one `VALUES` list.
pub const MAX_VALUES_ROWS: usize = 1000;

/// `schema.table` bracketed.
pub fn quote_table(table: &TableName) -> String {
    format!("{}.{}", quote(&table.schema), quote(&table.name))
}

/// How an expected value is compared with a target column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// By the column type's equality, NULL equal to NULL (numbers, dates, binary, GUIDs).
    Value,
    /// Exactly, as bytes of the column's declared type (`nvarchar(50)`, `varchar(max)`, ...).
    Text(String),
}

/// A target column the applier writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteColumn {
    /// Its name.
    pub name: String,
    /// How an expected value is compared with it.
    pub compare: Compare,
}

impl WriteColumn {
    /// A column compared by value.
    pub fn value(name: &str) -> WriteColumn {
        WriteColumn {
            name: name.to_owned(),
            compare: Compare::Value,
        }
    }
}

/// Numbers `@Pn` parameters in the order their values are bound.
#[derive(Debug, Default)]
pub struct Params(usize);

impl Params {
    /// The next parameter's placeholder.
    pub fn bind(&mut self) -> String {
        self.0 += 1;
        format!("@P{}", self.0)
    }

    /// How many were handed out.
    pub fn count(&self) -> usize {
        self.0
    }
}

/// The rows one multi-row INSERT of `columns` columns may carry.
pub fn rows_per_insert(columns: usize) -> usize {
    (MAX_PARAMS / columns.max(1)).clamp(1, MAX_VALUES_ROWS)
}

/// `INSERT INTO t (c...) VALUES (@P1, ...), ...` for `rows` rows, values bound row by row.
pub fn insert_sql(table: &TableName, columns: &[&str], rows: usize) -> String {
    let mut params = Params::default();
    let values: Vec<String> = (0..rows)
        .map(|_| {
            let row: Vec<String> = columns.iter().map(|_| params.bind()).collect();
            format!("({})", row.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        quote_table(table),
        names(columns),
        values.join(", ")
    )
}

/// An INSERT of one row only when no row has its key: the values are bound in `columns`
/// order and the key test reuses the placeholders of the `key` columns; `None` when a key
/// column is not among `columns`.
pub fn conditional_insert_sql(table: &TableName, columns: &[&str], key: &[&str]) -> Option<String> {
    let mut params = Params::default();
    let placeholders: Vec<(&str, String)> = columns.iter().map(|c| (*c, params.bind())).collect();
    let key_test = key
        .iter()
        .map(|k| {
            let (_, p) = placeholders.iter().find(|(c, _)| c == k)?;
            Some(format!("{} = {p}", quote(k)))
        })
        .collect::<Option<Vec<String>>>()?;
    let values: Vec<&str> = placeholders.iter().map(|(_, p)| p.as_str()).collect();
    Some(format!(
        "INSERT INTO {0} ({1}) SELECT {2} WHERE NOT EXISTS \
         (SELECT 1 FROM {0} WITH (UPDLOCK, HOLDLOCK) WHERE {3})",
        quote_table(table),
        names(columns),
        values.join(", "),
        key_test.join(" AND ")
    ))
}

/// `UPDATE t SET s = @P.. WHERE k = @P.. [AND expected...]`: parameters bound SET values,
/// then key values, then expected values.
pub fn update_sql(
    table: &TableName,
    set: &[&str],
    key: &[&str],
    expected: &[WriteColumn],
) -> String {
    let mut params = Params::default();
    let set: Vec<String> = set
        .iter()
        .map(|c| format!("{} = {}", quote(c), params.bind()))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        quote_table(table),
        set.join(", "),
        filter(key, expected, &mut params)
    )
}

/// `DELETE FROM t WHERE k = @P.. [AND expected...]`: key values, then expected values.
pub fn delete_sql(table: &TableName, key: &[&str], expected: &[WriteColumn]) -> String {
    let mut params = Params::default();
    format!(
        "DELETE FROM {} WHERE {}",
        quote_table(table),
        filter(key, expected, &mut params)
    )
}

fn names(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key equalities, then the NULL-safe comparison of each expected column.
fn filter(key: &[&str], expected: &[WriteColumn], params: &mut Params) -> String {
    let mut parts: Vec<String> = key
        .iter()
        .map(|k| format!("{} = {}", quote(k), params.bind()))
        .collect();
    for column in expected {
        let q = quote(&column.name);
        let p = params.bind();
        parts.push(match &column.compare {
            Compare::Value => format!("EXISTS (SELECT {q} INTERSECT SELECT {p})"),
            Compare::Text(declared) => format!(
                "EXISTS (SELECT CAST({q} AS varbinary(max)) \
                 INTERSECT SELECT CAST(CAST({p} AS {declared}) AS varbinary(max)))"
            ),
        });
    }
    parts.join(" AND ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> TableName {
        TableName::new("dbo", "ord]ers")
    }

    #[test]
    fn multi_row_inserts_number_their_parameters_row_by_row_within_the_limits() {
        assert_eq!(
            insert_sql(&orders(), &["id", "n]ote"], 2),
            "INSERT INTO [dbo].[ord]]ers] ([id], [n]]ote]) VALUES (@P1, @P2), (@P3, @P4)"
        );
        assert_eq!(rows_per_insert(1), 1000);
        assert_eq!(rows_per_insert(2), 1000);
        assert_eq!(rows_per_insert(3), 699);
        assert_eq!(rows_per_insert(7), 299);
        assert_eq!(rows_per_insert(5000), 1);
        assert_eq!(rows_per_insert(0), 1000);
        for columns in 1..300 {
            let rows = rows_per_insert(columns);
            assert!(rows * columns <= MAX_PARAMS && rows <= MAX_VALUES_ROWS);
        }
    }

    #[test]
    fn a_conditional_insert_tests_the_key_under_a_range_lock_in_the_same_statement() {
        assert_eq!(
            conditional_insert_sql(&orders(), &["qty", "id", "tenant"], &["tenant", "id"]).unwrap(),
            "INSERT INTO [dbo].[ord]]ers] ([qty], [id], [tenant]) SELECT @P1, @P2, @P3 \
             WHERE NOT EXISTS (SELECT 1 FROM [dbo].[ord]]ers] WITH (UPDLOCK, HOLDLOCK) \
             WHERE [tenant] = @P3 AND [id] = @P2)"
        );
        assert_eq!(conditional_insert_sql(&orders(), &["qty"], &["id"]), None);
    }

    #[test]
    fn updates_and_deletes_bind_set_then_key_then_expected_values() {
        assert_eq!(
            update_sql(&orders(), &["qty", "note"], &["id"], &[]),
            "UPDATE [dbo].[ord]]ers] SET [qty] = @P1, [note] = @P2 WHERE [id] = @P3"
        );
        let expected = [
            WriteColumn::value("qty"),
            WriteColumn {
                name: "note".into(),
                compare: Compare::Text("nvarchar(50)".into()),
            },
        ];
        assert_eq!(
            update_sql(&orders(), &["qty"], &["id"], &expected),
            "UPDATE [dbo].[ord]]ers] SET [qty] = @P1 WHERE [id] = @P2 \
             AND EXISTS (SELECT [qty] INTERSECT SELECT @P3) \
             AND EXISTS (SELECT CAST([note] AS varbinary(max)) \
             INTERSECT SELECT CAST(CAST(@P4 AS nvarchar(50)) AS varbinary(max)))"
        );
        assert_eq!(
            delete_sql(&orders(), &["a", "b"], &[WriteColumn::value("qty")]),
            "DELETE FROM [dbo].[ord]]ers] WHERE [a] = @P1 AND [b] = @P2 \
             AND EXISTS (SELECT [qty] INTERSECT SELECT @P3)"
        );
        let mut params = Params::default();
        params.bind();
        assert_eq!(params.bind(), "@P2");
        assert_eq!(params.count(), 2);
    }
}
