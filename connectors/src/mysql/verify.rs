//! What `duplex verify` reads on MySQL/MariaDB besides rows (see [`crate::verify`]): what a
//! target committed of a source.

use mysql_async::prelude::Queryable;

use crate::load::AdminError;
use crate::{Position, SiteConnection};

use super::connect;

const POSITION: &str = "reading duplex.positions";

/// The position `site`'s `duplex.positions` records for `source` (none without the table or
/// the row).
pub async fn recorded_position(
    site: &SiteConnection,
    source: &str,
) -> Result<Option<Position>, AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(POSITION))?;
    let exists: Option<i64> = conn
        .query_first(
            "SELECT 1 FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'duplex' AND TABLE_NAME = 'positions'",
        )
        .await
        .map_err(AdminError::doing(POSITION))?;
    let text: Option<String> = match exists {
        None => None,
        Some(_) => conn
            .exec_first(
                "SELECT position FROM duplex.positions WHERE source = ?",
                (source,),
            )
            .await
            .map_err(AdminError::doing(POSITION))?,
    };
    let _ = conn.disconnect().await;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}
