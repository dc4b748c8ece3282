//! Which duplex deployment a slot and its publication belong to.
//!
//! A slot keeps one reader's position and a publication one reader's table list: two duplex
//! deployments (two state directories) that derive the same names, e.g. from the same site
//! name on the same database, would share them, and the second would rewrite the first's
//! table list and move its position, losing rows without a word. So a deployment records its
//! identity (the state store's [deployment id]) as the publication's comment,
//! `duplex deployment <uuid>`, and before it changes or reads anything it checks that the
//! comment names no other deployment. The slot and the publication share one name, so the
//! publication's claim covers the slot.
//!
//! A publication without a duplex comment (made by an earlier release of duplex, or by a DBA)
//! is adopted. Recording the claim needs ownership of the publication, as creating or altering
//! it does; a DBA who created it as another role is told the statement to run.
//!
//! [deployment id]: https://docs.rs/duplex-state

use tokio_postgres::Client;

use super::{PgError, quote_ident};
use crate::postgres::PgStreamError;

/// The comment prefix that marks a duplex claim.
const PREFIX: &str = "duplex deployment ";

/// The deployment recorded on `publication`, if it exists and carries a duplex claim.
pub(super) async fn recorded(
    client: &Client,
    publication: &str,
) -> Result<Option<String>, PgError> {
    let row = client
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(PgError::query("reading the publication's comment"))?;
    Ok(row
        .and_then(|row| row.get::<_, Option<String>>(0))
        .and_then(|comment| comment.strip_prefix(PREFIX).map(str::to_owned)))
}

/// Fails if `publication` (and its slot) belongs to another deployment than `deployment`.
pub async fn check(
    client: &Client,
    publication: &str,
    deployment: &str,
) -> Result<(), PgStreamError> {
    match recorded(client, publication).await? {
        Some(owner) if owner != deployment => Err(PgStreamError::ClaimedByOther {
            publication: publication.to_owned(),
            owner,
            deployment: deployment.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Moves the claim on `publication` from deployment `from` to `deployment` (`duplex run
/// --take-over-from`); a publication that `from` does not own is left as it is.
pub async fn take_over(
    client: &Client,
    publication: &str,
    deployment: &str,
    from: &str,
) -> Result<(), PgStreamError> {
    if recorded(client, publication).await?.as_deref() != Some(from) {
        return Ok(());
    }
    let sql = format!(
        "COMMENT ON PUBLICATION {} IS '{PREFIX}{deployment}'",
        quote_ident(publication)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(PgError::query("taking over the publication's claim"))?;
    tracing::info!(%publication, previous = %from, "took over the publication and its slot");
    Ok(())
}

/// Records `deployment` as the owner of `publication` (which must exist) unless it already
/// is. A role that may not comment on it gets a warning with the statement to run.
pub async fn record(
    client: &Client,
    publication: &str,
    deployment: &str,
) -> Result<(), PgStreamError> {
    if recorded(client, publication).await?.as_deref() == Some(deployment) {
        return Ok(());
    }
    check(client, publication, deployment).await?;
    let sql = format!(
        "COMMENT ON PUBLICATION {} IS '{PREFIX}{deployment}'",
        quote_ident(publication)
    );
    if let Err(error) = client.batch_execute(&sql).await {
        tracing::warn!(
            %publication,
            error = %error,
            "cannot record this deployment on the publication (not its owner?): a second duplex \
             deployment using it would not be noticed; run as its owner: {sql}"
        );
    }
    Ok(())
}
