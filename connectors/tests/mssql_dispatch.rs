//! The per-kind dispatch for SQL Server sites. Where nothing is built yet, each answers with
//! an error naming what is not supported and what to do, before connecting; what is built goes
//! as far as connecting (the site's URL names a port nothing listens on).

use std::collections::BTreeSet;
use std::error::Error;

use duplex_connectors::head::HeadReader;
use duplex_connectors::stream::{AnyStream, StreamOptions};
use duplex_connectors::{
    AnySnapshot, NotSupported, SiteConnection, SiteKind, SourceSnapshot, TableName,
};

fn site() -> SiteConnection {
    SiteConnection {
        name: "erp".into(),
        kind: SiteKind::Mssql,
        url: "mssql://duplex@127.0.0.1:9/erp?encrypt=none".into(),
        password: None,
        slot_names_taken: Vec::new(),
    }
}

/// Every message of `error` and its sources.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn assert_not_supported(error: &dyn Error, what: &str) {
    let text = chain(error);
    assert!(
        text.contains(&format!(
            "{what} is not supported for SQL Server sites yet: "
        )),
        "{text}"
    );
}

fn orders() -> TableName {
    TableName::new("dbo", "orders")
}

#[tokio::test]
async fn schema_listing_is_refused_two_way_streams_and_snapshots_connect() {
    // Two-way streams of a SQL Server site are built: starting one goes as far as connecting.
    let tables = BTreeSet::from([orders()]);
    let Err(error) = AnyStream::start(&site(), StreamOptions::merge(tables, None)).await else {
        panic!("a merge stream of a SQL Server site started");
    };
    let text = chain(&error);
    assert!(
        text.contains("cannot reach SQL Server at 127.0.0.1:9"),
        "{text}"
    );

    // Snapshots of a SQL Server source are built: taking one and opening a reader go as far
    // as connecting (to nothing here).
    let Err(error) = SourceSnapshot::take(&site(), &[orders()], None, None, "me").await else {
        panic!("a SQL Server snapshot was taken");
    };
    let text = chain(&error);
    assert!(
        text.contains("cannot reach SQL Server at 127.0.0.1:9"),
        "{text}"
    );
    let Err(error) = AnySnapshot::open(&site()).await else {
        panic!("a SQL Server snapshot reader opened");
    };
    let text = chain(&error);
    assert!(
        text.contains("cannot reach SQL Server at 127.0.0.1:9"),
        "{text}"
    );

    let error = duplex_connectors::table_names(&site(), "dbo")
        .await
        .unwrap_err();
    assert_not_supported(&error, "a schema-wide mapping (schema.*)");
}

#[tokio::test]
async fn log_heads_are_refused_verify_and_the_backfill_target_side_connect() {
    let site = site();
    // The target side of a backfill into SQL Server is built: against no server it fails
    // connecting, saying what it was doing.
    let built = [
        (
            duplex_connectors::load::table_is_empty(&site, &orders())
                .await
                .map(|_| ())
                .unwrap_err(),
            "checking that a target table is empty",
        ),
        (
            duplex_connectors::load::delete_positions_like(&site, "backfill:%")
                .await
                .unwrap_err(),
            "deleting backfill markers",
        ),
        (
            duplex_connectors::foreign_keys::target_foreign_keys(&site, &[orders()])
                .await
                .map(|_| ())
                .unwrap_err(),
            "reading the foreign keys of the target tables",
        ),
    ];
    for (error, doing) in built {
        assert!(chain(&error).contains(doing), "{}", chain(&error));
        assert!(error.source.downcast_ref::<NotSupported>().is_none());
    }
    // So is verify's read of a target's position.
    let error = duplex_connectors::verify::recorded_position(&site, "store")
        .await
        .unwrap_err();
    assert!(
        chain(&error).contains("reading the position a target recorded"),
        "{}",
        chain(&error)
    );
    assert!(error.source.downcast_ref::<NotSupported>().is_none());
    assert_eq!(
        duplex_connectors::verify::confirmed_position(&site)
            .await
            .unwrap(),
        None
    );
    // Teardown is built: against no server it fails connecting, saying what it was doing.
    let error = duplex_connectors::teardown::find(&site, "me")
        .await
        .unwrap_err();
    assert!(
        chain(&error).contains("looking for what duplex created on a SQL Server site"),
        "{}",
        chain(&error)
    );
    assert!(error.source.downcast_ref::<NotSupported>().is_none());
    assert!(duplex_connectors::teardown::slot_names(&site).is_empty());
    assert!(
        duplex_connectors::teardown::slots(&site)
            .await
            .unwrap()
            .is_empty()
    );
    let error = HeadReader::new(site.clone()).read().await.unwrap_err();
    assert_not_supported(&error, "the lag in bytes (the log head)");
    let _: &NotSupported = error
        .source
        .downcast_ref()
        .expect("the source is the NotSupported error");
}
