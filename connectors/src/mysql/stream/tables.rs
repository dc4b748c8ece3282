//! Knowing the mapped tables: a TABLE_MAP event checked against the table's catalog (with the
//! columns a TABLE_MAP written before an ALTER may lack, or name differently), and the catalog
//! read from information_schema.

use std::sync::Arc;

use mysql_async::Conn;
use mysql_async::binlog::events::{Event, OptionalMetadataField, TableMapEvent};
use mysql_async::prelude::Queryable;

use crate::apply::is_positions_table;
use crate::mysql::types::{ColumnDecoder, ColumnInfo};
use crate::mysql::{MysqlError, MysqlStreamError, connect, describe_table};
use crate::{ShapeColumn, TableName, TableShape};

use super::{MysqlStream, TableCatalog, TableDecoder, decode_error, decode_error_io};

impl MysqlStream {
    /// Builds (or reuses) the decoder for a TABLE_MAP's table id.
    pub(super) async fn table_map(&mut self, event: &Event) -> Result<(), MysqlStreamError> {
        let tme: TableMapEvent<'_> = event
            .read_event()
            .map_err(|e| decode_error_io("TABLE_MAP", e))?;
        let table_id = tme.table_id();
        if let Some(Some(decoder)) = self.decoders.get(&table_id)
            && decoder.table_map == event.data()
        {
            return Ok(());
        }
        let table = TableName::new(tme.database_name(), tme.table_name());
        if !self.tables.contains(&table) {
            self.decoders.insert(table_id, None);
            return Ok(());
        }
        let mut layout = Vec::with_capacity(tme.columns_count() as usize);
        for i in 0..tme.columns_count() as usize {
            let column_type = tme
                .get_raw_column_type(i)
                .map_err(|e| decode_error("TABLE_MAP", &format!("column {i}: {e}")))?
                .ok_or_else(|| decode_error("TABLE_MAP", "column type missing"))?;
            let meta = tme.get_column_metadata(i).unwrap_or_default().to_vec();
            layout.push((column_type as u8, meta));
        }
        let names = full_metadata_names(&tme);
        let catalog = match self.catalogs.get(&table) {
            Some(catalog) if fits(catalog, &layout, names.as_deref()) => catalog.clone(),
            _ => {
                let fresh = Arc::new(self.reload_catalog(&table).await?);
                if let Some(older) = names
                    .as_deref()
                    .and_then(|names| leading_columns(&fresh, names))
                {
                    // Rows written before columns were added at the end (the catalog is
                    // newer than this part of the binlog): decoded by the columns they have.
                    Arc::new(older)
                } else if let Some(renamed) = names.as_deref().and_then(|names| {
                    renamed_columns(&fresh, &layout, names, full_metadata_signedness(&tme))
                }) {
                    // The same columns (by position, binlog type and signedness) under the
                    // names they had when these rows were written: decoded by the log's own
                    // names, so the shape they announce shows the rename to the caller.
                    Arc::new(renamed)
                } else if !fits(&fresh, &layout, names.as_deref()) {
                    return Err(MysqlStreamError::SchemaMismatch {
                        table,
                        detail: format!(
                            "{} columns{} in the binlog, {} in information_schema",
                            layout.len(),
                            names
                                .map(|n| format!(" ({})", n.join(", ")))
                                .unwrap_or_default(),
                            fresh.columns.len()
                        ),
                    });
                } else {
                    fresh
                }
            }
        };
        let columns = catalog
            .columns
            .iter()
            .zip(&layout)
            .map(|(info, (code, meta))| ColumnDecoder::new(&table, info, *code, meta))
            .collect::<Result<Vec<_>, _>>()?;
        let key = catalog
            .primary_key
            .iter()
            .filter_map(|k| columns.iter().find(|c| &**c.name() == k))
            .map(|c| c.name().clone())
            .collect();
        if self.shapes && !is_positions_table(&table) {
            // The columns as this TABLE_MAP has them: its types, and with
            // `binlog_row_metadata=FULL` its names, were checked against the catalog above.
            let shape = TableShape {
                table: table.clone(),
                columns: catalog
                    .columns
                    .iter()
                    .map(|c| ShapeColumn {
                        name: c.name.clone(),
                        type_name: if c.unsigned {
                            format!("{} unsigned", c.data_type)
                        } else {
                            c.data_type.clone()
                        },
                    })
                    .collect(),
            };
            if self.announced.get(&table) != Some(&shape) {
                self.announced.insert(table.clone(), shape.clone());
                self.shapes_ready.push_back(shape);
            }
        }
        self.catalogs.insert(table.clone(), catalog);
        self.decoders.insert(
            table_id,
            Some(Arc::new(TableDecoder {
                table,
                table_map: event.data().to_vec(),
                columns,
                key,
            })),
        );
        Ok(())
    }

    /// Reads a mapped table's definition again, on a new catalog connection: on MariaDB 10.11 a
    /// prepared information_schema statement cached on the old connection, executed again
    /// after DDL changed the table, failed every time ("can't parse: buf doesn't have enough
    /// data").
    pub(super) async fn reload_catalog(
        &mut self,
        table: &TableName,
    ) -> Result<TableCatalog, MysqlStreamError> {
        let mut conn = connect(&self.url, self.password.as_deref()).await?;
        let catalog = load_catalog(&mut conn, table).await?;
        let old = std::mem::replace(&mut self.catalog_conn, conn);
        tokio::spawn(async move {
            let _ = old.disconnect().await;
        });
        Ok(catalog)
    }
}

/// Whether a catalog fits a TABLE_MAP's column count and (with FULL metadata) names.
pub(super) fn fits(
    catalog: &TableCatalog,
    layout: &[(u8, Vec<u8>)],
    names: Option<&[String]>,
) -> bool {
    catalog.columns.len() == layout.len()
        && names.is_none_or(|names| {
            names.len() == catalog.columns.len()
                && names
                    .iter()
                    .zip(&catalog.columns)
                    .all(|(n, c)| *n == c.name)
        })
}

/// The catalog cut to a TABLE_MAP's columns when those (by their names from
/// `binlog_row_metadata=FULL`) are exactly its leading columns, fewer than all, and hold the
/// primary key: the TABLE_MAP was written before the others were added. The caller still
/// checks each column's type against the TABLE_MAP's.
pub(super) fn leading_columns(catalog: &TableCatalog, names: &[String]) -> Option<TableCatalog> {
    let n = names.len();
    if n == 0 || n >= catalog.columns.len() {
        return None;
    }
    let leading = &catalog.columns[..n];
    if !names.iter().zip(leading).all(|(name, c)| *name == c.name) {
        return None;
    }
    if !catalog
        .primary_key
        .iter()
        .all(|k| leading.iter().any(|c| c.name == *k))
    {
        return None;
    }
    Some(TableCatalog {
        columns: leading.to_vec(),
        primary_key: catalog.primary_key.clone(),
    })
}

/// The catalog under the TABLE_MAP's column names, when those differ from today's but the
/// columns are otherwise the same: as many, each of the binlog type the catalog's type is
/// written as (checked again by the column decoders) and, where FULL metadata gives it, of the
/// same signedness. The rows were written before columns were renamed (or after, by a reader
/// whose catalog is older): their bytes decode by the types, which the log itself carries, and
/// the names are the log's, so the shape announced for them shows the rename and the caller
/// judges it. The primary key is named by position.
pub(super) fn renamed_columns(
    catalog: &TableCatalog,
    layout: &[(u8, Vec<u8>)],
    names: &[String],
    signedness: Option<Vec<bool>>,
) -> Option<TableCatalog> {
    if names.len() != catalog.columns.len() || layout.len() != names.len() {
        return None;
    }
    if let Some(signedness) = signedness {
        let numeric: Vec<&ColumnInfo> = catalog
            .columns
            .iter()
            .zip(layout)
            .filter(|(_, (code, _))| is_numeric_code(*code))
            .map(|(c, _)| c)
            .collect();
        // One bit per numeric column, padded to whole bytes.
        if signedness.len() < numeric.len()
            || signedness.len() >= numeric.len() + 8
            || numeric
                .iter()
                .zip(&signedness)
                .any(|(c, unsigned)| c.unsigned != *unsigned)
        {
            return None;
        }
    }
    let columns: Vec<ColumnInfo> = catalog
        .columns
        .iter()
        .zip(names)
        .map(|(c, name)| ColumnInfo {
            name: name.clone(),
            ..c.clone()
        })
        .collect();
    let primary_key = catalog
        .primary_key
        .iter()
        .map(|k| {
            let i = catalog.columns.iter().position(|c| c.name == *k)?;
            Some(names[i].clone())
        })
        .collect::<Option<Vec<_>>>()?;
    Some(TableCatalog {
        columns,
        primary_key,
    })
}

/// The binlog column types FULL metadata's signedness bits are given for, in column order.
pub(super) fn is_numeric_code(code: u8) -> bool {
    use crate::mysql::types::code;
    matches!(
        code,
        code::TINY
            | code::SHORT
            | code::INT24
            | code::LONG
            | code::LONGLONG
            | code::FLOAT
            | code::DOUBLE
            | code::NEWDECIMAL
    )
}

/// Per numeric column, whether it is UNSIGNED, from the TABLE_MAP's optional metadata.
pub(super) fn full_metadata_signedness(tme: &TableMapEvent<'_>) -> Option<Vec<bool>> {
    tme.iter_optional_meta().find_map(|field| match field {
        Ok(OptionalMetadataField::Signedness(bits)) => Some(bits.iter().map(|b| *b).collect()),
        _ => None,
    })
}

/// Column names from the TABLE_MAP's optional metadata (`binlog_row_metadata=FULL`).
pub(super) fn full_metadata_names(tme: &TableMapEvent<'_>) -> Option<Vec<String>> {
    tme.iter_optional_meta().find_map(|field| match field {
        Ok(OptionalMetadataField::ColumnName(names)) => Some(
            names
                .iter_names()
                .filter_map(Result::ok)
                .map(|n| n.name().into_owned())
                .collect(),
        ),
        _ => None,
    })
}

/// Reads a mapped table's columns (with character sets) and primary key.
pub(super) async fn load_catalog(
    conn: &mut Conn,
    table: &TableName,
) -> Result<TableCatalog, MysqlStreamError> {
    let info = describe_table(conn, table)
        .await?
        .ok_or_else(|| MysqlStreamError::TableNotFound(table.clone()))?;
    let charsets: Vec<(String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await
        .map_err(MysqlError::query("reading a mapped table's character sets"))?;
    // MariaDB's JSON is LONGTEXT with a `json_valid(`col`)` CHECK constraint; MySQL has a
    // real JSON type and no TABLE_NAME in CHECK_CONSTRAINTS (the query fails: nothing to mark).
    let checks: Vec<String> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.schema, &table.name),
        )
        .await
        .unwrap_or_default();
    let columns = info
        .schema
        .columns
        .into_iter()
        .map(|c| {
            let charset = charsets
                .iter()
                .find(|(name, _)| *name == c.name)
                .and_then(|(_, cs)| cs.clone());
            let unsigned = c.type_name.ends_with(" unsigned");
            let json_check = format!("json_valid({})", crate::mysql::quote_ident(&c.name));
            let data_type = if c.type_name == "longtext" && checks.contains(&json_check) {
                "json"
            } else {
                c.type_name.trim_end_matches(" unsigned")
            };
            ColumnInfo {
                data_type: data_type.to_owned(),
                name: c.name,
                column_type: c.declared,
                unsigned,
                charset,
                nullable: c.nullable,
            }
        })
        .collect();
    Ok(TableCatalog {
        columns,
        primary_key: info.schema.primary_key,
    })
}
