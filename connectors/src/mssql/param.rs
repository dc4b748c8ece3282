//! Binding canonical values as SQL Server parameters: tiberius binds only what implements its
//! `IntoSql`, so a converted [`ColumnData`] (see [`super::types::to_param`]) is wrapped.

use tiberius::{ColumnData, IntoSql};

/// One converted parameter value.
#[derive(Debug, Clone, PartialEq)]
pub struct Param(pub ColumnData<'static>);

impl<'a> IntoSql<'a> for Param {
    fn into_sql(self) -> ColumnData<'a> {
        self.0
    }
}
