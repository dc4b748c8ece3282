//! The applier conformance suite: every behaviour of the [`duplex_connectors::apply`] contract,
//! written once against [`duplex_connectors::AnyApplier`] and run against every kind of target.
//!
//! A kind takes part through one fixture implementing [`target::Target`] (a fresh database on
//! the shared test server with the `items` table, its own SQL for reading rows back as
//! canonical values, its positions and its server errors) and one line in the list below;
//! nextest then shows each test once per kind (`postgres::…`, `mysql::…`, `mssql::…`). What
//! only one kind has (its own column types, session settings, binlog flags) is tested in that
//! kind's own file, `apply_pg.rs` / `apply_mysql.rs` / `mssql.rs`. No SQL Server runs on our
//! machines: the `mssql` tests run only when `DUPLEX_TEST_MSSQL_URL` names one, and otherwise
//! say they are skipped and pass.

#[path = "../events/mod.rs"]
mod events;
mod suite;
mod target;

/// One `#[tokio::test]` per suite test for the kind `$kind`, run against a fresh `$fixture`.
macro_rules! suite_for {
    ($kind:ident, $fixture:ty, [$($test:ident),* $(,)?]) => {
        mod $kind {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(target) = <$fixture as crate::target::Target>::create().await else {
                        return;
                    };
                    crate::suite::$test(target).await;
                }
            )*
        }
    };
}

/// The suite for every kind: `kinds` names each kind's module and fixture, `tests` the suite.
macro_rules! conformance {
    (kinds: [$($kind:ident => $fixture:ty),* $(,)?], tests: $tests:tt) => {
        $( suite_for!($kind, $fixture, $tests); )*
    };
}

conformance! {
    kinds: [
        postgres => crate::target::postgres::Postgres,
        mysql => crate::target::mysql::Mysql,
        mssql => crate::target::mssql::Mssql,
    ],
    tests: [
        every_common_type_round_trips_value_by_value,
        many_inserts_go_through_multi_row_statements,
        updates_keep_unchanged_columns_and_follow_key_changes,
        a_batch_applied_twice_is_skipped_by_position,
        positions_are_kept_per_source,
        a_failing_transaction_leaves_nothing_of_its_batch,
        values_the_column_cannot_hold_are_refused_by_name,
        inserting_an_existing_row_fails_unless_upserting,
        upserts_match_rows_by_primary_key_only,
        updates_and_deletes_of_missing_rows_are_errors,
        routes_are_checked_against_the_target_table,
        a_lost_connection_is_transient_and_the_applier_reconnects,
        a_failure_inside_a_run_of_writes_is_reported_as_itself,
        two_appliers_racing_on_a_new_source_do_not_both_apply,
        conditional_insert_skips_an_existing_key_and_reports_it,
        conditional_update_applies_only_over_the_expected_row,
        conditional_delete_applies_only_over_the_expected_row,
        conditional_batch_applies_the_rest_and_records_the_position,
        conditional_refuses_key_changes_and_upserts,
    ]
}
