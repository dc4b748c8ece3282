//! Table routes: where each mapped source table's rows go on a target, built from the
//! mappings and the source tables' schemas.

use std::collections::HashMap;

use duplex_connectors::TableName;
use duplex_connectors::apply::TableRoute;

/// Builds the per-target routes of a source from the mappings, given the source tables'
/// schemas.
pub fn routes_for(
    mappings: &[crate::config::Mapping],
    source: &str,
    target: &str,
    schemas: &HashMap<TableName, duplex_connectors::TableSchema>,
) -> Vec<TableRoute> {
    let mut routes = Vec::new();
    for mapping in mappings {
        if !mapping.edges().contains(&(source, target)) {
            continue;
        }
        let (Some(from), Some(to)) = (mapping.tables.get(source), mapping.tables.get(target))
        else {
            continue;
        };
        let Some(schema) = schemas.get(from) else {
            continue;
        };
        let canonical: Vec<String> = match &mapping.columns {
            Some(columns) => columns.clone(),
            None => schema
                .columns
                .iter()
                .map(|c| mapping.canonical_column(source, &c.name).to_owned())
                .collect(),
        };
        routes.push(TableRoute {
            source: from.clone(),
            target: to.clone(),
            columns: canonical
                .iter()
                .map(|c| {
                    (
                        mapping.site_column(source, c).to_owned(),
                        mapping.site_column(target, c).to_owned(),
                    )
                })
                .collect(),
            key: schema.primary_key.clone(),
        });
    }
    routes
}
