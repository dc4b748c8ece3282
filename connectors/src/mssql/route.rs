//! What the dispatch of the other kinds needs from a SQL Server site: a mapped table's
//! [`TableSchema`] from the catalog facts `check` reads ([`super::preflight::probe_table`]),
//! the applier's routes resolved against the target table ([`resolve`]), and the CDC reader's
//! capture instances ([`capture_instance`]).
//!
//! The catalog's `sys.types` name is a column's [`crate::Column::type_name`], so the type
//! mapping (`crate::typemap`) keys SQL Server columns by the names `check` reports.

use super::preflight::{TableFacts, probe_table};
use super::stream::{CaptureInstance, Large};
use super::write::{MssqlRoute, RouteColumn};
use super::{MssqlClient, MssqlError, MssqlType};
use crate::apply::{ApplyError, TableRoute};
use crate::catalog::ColumnCollation;
use crate::mssql::sql::Compare;
use crate::{Column, TableName, TableSchema};

/// The schema of a table whose facts were read: columns in table order with their
/// `sys.types` names, and the primary key.
pub fn schema_of(facts: &TableFacts) -> TableSchema {
    TableSchema {
        name: facts.table.clone(),
        columns: facts
            .columns
            .iter()
            .map(|(name, type_name, _)| Column {
                name: name.clone(),
                type_name: type_name.clone(),
                declared: type_name.clone(),
                // The probe does not read nullability; the applier and the type mapping do
                // not decide by it.
                nullable: true,
            })
            .collect(),
        primary_key: facts.primary_key.clone(),
    }
}

/// Reads the schema of `table`; `None` when it does not exist.
pub async fn describe_table(
    client: &mut MssqlClient,
    table: &TableName,
) -> Result<Option<TableSchema>, MssqlError> {
    Ok(probe_table(client, table).await?.map(|f| schema_of(&f)))
}

/// The collated columns of table `@P1`: name and collation.
pub const COLLATIONS_QUERY: &str = "SELECT c.name, c.collation_name FROM sys.columns c \
     WHERE c.object_id = OBJECT_ID(@P1) AND c.collation_name IS NOT NULL ORDER BY c.column_id";

/// How a column with SQL Server collation `collation` compares: `_CI` collations ignore
/// letter case, and SQL Server compares strings padded with trailing spaces under every
/// collation (`'b' = 'b '`).
pub fn collation_of(column: &str, collation: &str) -> ColumnCollation {
    ColumnCollation {
        column: column.to_owned(),
        collation: collation.to_owned(),
        case_insensitive: collation.to_ascii_uppercase().contains("_CI"),
        pads: true,
    }
}

/// The collations of `table`'s text columns, in table order.
pub async fn collations(
    client: &mut MssqlClient,
    table: &TableName,
) -> Result<Vec<ColumnCollation>, MssqlError> {
    let doing = "reading a table's collations";
    let name = format!(
        "{}.{}",
        super::stream::quote(&table.schema),
        super::stream::quote(&table.name)
    );
    let rows = client
        .query(COLLATIONS_QUERY, &[&name.as_str()])
        .await
        .map_err(MssqlError::query(doing))?
        .into_first_result()
        .await
        .map_err(MssqlError::query(doing))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some(collation_of(r.get::<&str, _>(0)?, r.get::<&str, _>(1)?)))
        .collect())
}

/// How a conditional write compares values of a column of type `ty` (`sys.types` name).
/// `image` and `xml` have no equality (and cannot be in an `INTERSECT`), so they are compared
/// as bytes too: an `image` as `varbinary(max)`, an `xml` value as the server serializes it,
/// the expected value parsed as `xml` first.
fn compare(ty: MssqlType, type_name: &str) -> Compare {
    match (ty, type_name) {
        (MssqlType::Text, "varchar" | "nvarchar") => Compare::Text(format!("{type_name}(max)")),
        (MssqlType::Text, "text") => Compare::Text("varchar(max)".into()),
        (MssqlType::Text, "ntext") => Compare::Text("nvarchar(max)".into()),
        (MssqlType::Text, other) => Compare::Text(other.to_owned()),
        (MssqlType::Binary, "image") => Compare::Text("varbinary(max)".into()),
        (MssqlType::Xml, _) => Compare::Text("xml".into()),
        _ => Compare::Value,
    }
}

/// Checks `route` against the target table's facts (`None`: the table does not exist).
pub fn resolve(route: &TableRoute, facts: Option<&TableFacts>) -> Result<MssqlRoute, ApplyError> {
    let fail = |reason: String| ApplyError::Route {
        source_table: route.source.clone(),
        target: route.target.clone(),
        reason,
    };
    let Some(facts) = facts else {
        return Err(fail("the target table does not exist".into()));
    };
    let mut columns = Vec::with_capacity(route.columns.len());
    for (source, target) in &route.columns {
        let Some((_, type_name, scale)) = facts.columns.iter().find(|(name, ..)| name == target)
        else {
            return Err(fail(format!("the target table has no column {target:?}")));
        };
        let ty = MssqlType::from_name(type_name).map_err(|error| {
            fail(format!(
                "column {target:?}: {error}; leave it out of the mapping"
            ))
        })?;
        columns.push(RouteColumn {
            source: source.clone(),
            target: target.clone(),
            ty,
            scale: *scale,
            compare: compare(ty, type_name),
        });
    }
    if route.key.is_empty() {
        return Err(fail("the route has no key columns".into()));
    }
    let mut key = Vec::with_capacity(route.key.len());
    for k in &route.key {
        match columns.iter().position(|c| &c.source == k) {
            Some(i) => key.push(i),
            None => return Err(fail(format!("key column {k:?} is not in the column list"))),
        }
    }
    // SQL Server writes an IDENTITY column's value only on insert, with IDENTITY_INSERT on;
    // it never updates one. A key never changes on a one-way update (a key change is refused
    // by the write), so a written IDENTITY column must be a key column.
    let identity = match &facts.identity {
        Some(name) => match columns.iter().position(|c| &c.target == name) {
            Some(i) if key.contains(&i) => Some(i),
            Some(_) => {
                return Err(fail(format!(
                    "column {name:?} is an IDENTITY column but not the key, and SQL Server \
                     does not update IDENTITY values: leave it out of the mapping"
                )));
            }
            None => None,
        },
        None => None,
    };
    Ok(MssqlRoute {
        target: route.target.clone(),
        columns,
        key,
        identity,
    })
}

/// Resolves `routes` against the target tables `client` reads, keyed by source table.
pub async fn resolve_routes(
    client: &mut MssqlClient,
    routes: &[TableRoute],
) -> Result<Vec<(TableName, MssqlRoute)>, ApplyError> {
    let mut out = Vec::with_capacity(routes.len());
    for route in routes {
        let facts = probe_table(client, &route.target).await?;
        out.push((route.source.clone(), resolve(route, facts.as_ref())?));
    }
    Ok(out)
}

/// Why a mapped source table cannot be read through CDC.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InstanceError {
    /// The table does not exist.
    #[error("table {0} does not exist on the SQL Server source: create it or correct the mapping")]
    Missing(TableName),
    /// No capture instance, or two (CDC keeps two while a table's capture is being changed).
    #[error(
        "table {table} has {count} capture instances; duplex reads tables with exactly one: \
         {fix} (duplex check shows the details)"
    )]
    Instances {
        /// The table.
        table: TableName,
        /// How many it has.
        count: usize,
        /// The statement that fixes it.
        fix: &'static str,
    },
    /// A captured column of a type the reader does not decode.
    #[error("table {table}, column {column}: {source}")]
    Type {
        /// The table.
        table: TableName,
        /// The column.
        column: String,
        /// Why.
        #[source]
        source: super::TypeError,
    },
    /// No primary key.
    #[error("table {0} has no primary key: duplex identifies rows by primary key")]
    NoPrimaryKey(TableName),
}

/// The capture instance the reader reads for a table whose facts were read: its only
/// instance, with the captured columns in column order and their types.
pub fn capture_instance(facts: &TableFacts) -> Result<CaptureInstance, InstanceError> {
    let [(name, _, _)] = &facts.instances[..] else {
        return Err(InstanceError::Instances {
            table: facts.table.clone(),
            count: facts.instances.len(),
            fix: if facts.instances.is_empty() {
                "enable CDC on it with EXEC sys.sp_cdc_enable_table"
            } else {
                "disable the older one with EXEC sys.sp_cdc_disable_table"
            },
        });
    };
    if facts.primary_key.is_empty() {
        return Err(InstanceError::NoPrimaryKey(facts.table.clone()));
    }
    let mut columns = Vec::with_capacity(facts.captured.len());
    let mut large = Vec::new();
    for captured in &facts.captured {
        let type_name = facts
            .columns
            .iter()
            .find(|(name, ..)| name == captured)
            .map_or("", |(_, ty, _)| ty.as_str());
        let ty = MssqlType::from_name(type_name).map_err(|source| InstanceError::Type {
            table: facts.table.clone(),
            column: captured.clone(),
            source,
        })?;
        if let Some(kind) = Large::of(type_name, facts.unbounded.contains(captured)) {
            large.push((captured.clone(), kind));
        }
        columns.push((captured.clone(), ty));
    }
    Ok(CaptureInstance {
        name: name.clone(),
        table: facts.table.clone(),
        columns,
        key: facts.primary_key.clone(),
        large,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TableFacts {
        TableFacts {
            table: TableName::new("dbo", "orders"),
            columns: vec![
                ("id".into(), "int".into(), 0),
                ("note".into(), "nvarchar".into(), 0),
                ("shape".into(), "geography".into(), 0),
            ],
            primary_key: vec!["id".into()],
            instances: vec![("dbo_orders".into(), None, true)],
            captured: vec!["id".into(), "note".into()],
            identity: None,
            unbounded: vec![],
        }
    }

    #[test]
    fn a_route_resolves_column_types_and_key_against_the_target_table() {
        let route = TableRoute::same_names(
            TableName::new("public", "orders"),
            TableName::new("dbo", "orders"),
            &["id", "note"],
            &["id"],
        );
        let resolved = resolve(&route, Some(&facts())).unwrap();
        assert_eq!(resolved.key, vec![0]);
        assert_eq!(resolved.columns[0].ty, MssqlType::Int);
        assert_eq!(resolved.columns[0].compare, Compare::Value);
        assert_eq!(
            resolved.columns[1].compare,
            Compare::Text("nvarchar(max)".into())
        );
    }

    #[test]
    fn an_identity_column_is_known_to_the_route_when_it_is_written_and_must_be_a_key() {
        let route = |columns: &[&str], key: &[&str]| {
            TableRoute::same_names(
                TableName::new("public", "orders"),
                TableName::new("dbo", "orders"),
                columns,
                key,
            )
        };
        let keyed = TableFacts {
            identity: Some("id".into()),
            ..facts()
        };
        let resolved = resolve(&route(&["note", "id"], &["id"]), Some(&keyed)).unwrap();
        assert_eq!(resolved.identity, Some(1));
        assert_eq!(
            resolve(&route(&["id"], &["id"]), Some(&facts()))
                .unwrap()
                .identity,
            None
        );
        let not_key = TableFacts {
            identity: Some("note".into()),
            ..facts()
        };
        match resolve(&route(&["id", "note"], &["id"]), Some(&not_key)) {
            Err(ApplyError::Route { reason, .. }) => {
                assert!(
                    reason.contains("IDENTITY column but not the key"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Not written: the server numbers the rows.
        let resolved = resolve(&route(&["id"], &["id"]), Some(&not_key)).unwrap();
        assert_eq!(resolved.identity, None);
    }

    #[test]
    fn a_route_that_does_not_fit_the_target_is_refused_with_the_reason() {
        let route = |columns: &[&str]| {
            TableRoute::same_names(
                TableName::new("public", "orders"),
                TableName::new("dbo", "orders"),
                columns,
                &["id"],
            )
        };
        let reason = |result: Result<MssqlRoute, ApplyError>| match result {
            Err(ApplyError::Route { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(resolve(&route(&["id"]), None)),
            "the target table does not exist"
        );
        assert_eq!(
            reason(resolve(&route(&["id", "gone"]), Some(&facts()))),
            "the target table has no column \"gone\""
        );
        assert!(reason(resolve(&route(&["id", "shape"]), Some(&facts()))).contains("geography"));
    }

    #[test]
    fn sql_server_collations_pad_and_ci_ones_ignore_case() {
        let ci = collation_of("code", "SQL_Latin1_General_CP1_CI_AS");
        assert!(ci.case_insensitive && ci.pads);
        assert_eq!(ci.ignores(), Some("letter case and trailing spaces"));
        let bin = collation_of("code", "Latin1_General_100_BIN2");
        assert_eq!(bin.ignores(), Some("trailing spaces"));
    }

    #[test]
    fn columns_without_equality_are_compared_as_bytes() {
        let text = |t: &str| Compare::Text(t.into());
        assert_eq!(compare(MssqlType::Binary, "image"), text("varbinary(max)"));
        assert_eq!(compare(MssqlType::Xml, "xml"), text("xml"));
        assert_eq!(compare(MssqlType::Text, "ntext"), text("nvarchar(max)"));
        assert_eq!(compare(MssqlType::Binary, "varbinary"), Compare::Value);
    }

    #[test]
    fn the_capture_instance_carries_the_captured_columns_typed_and_the_key() {
        let instance = capture_instance(&facts()).unwrap();
        assert_eq!(instance.name, "dbo_orders");
        assert_eq!(
            instance.columns,
            vec![
                ("id".to_owned(), MssqlType::Int),
                ("note".to_owned(), MssqlType::Text)
            ]
        );
        assert_eq!(instance.key, vec!["id".to_owned()]);
        assert_eq!(instance.large, vec![]);
        let unbounded = TableFacts {
            unbounded: vec!["note".into()],
            ..facts()
        };
        assert_eq!(
            capture_instance(&unbounded).unwrap().large,
            vec![("note".to_owned(), Large::Max)]
        );
        let mut none = facts();
        none.instances.clear();
        assert!(
            capture_instance(&none)
                .unwrap_err()
                .to_string()
                .contains("sp_cdc_enable_table")
        );
    }
}
