use super::*;

fn col(name: &str, ty: &str) -> Column {
    Column {
        name: name.into(),
        type_name: ty.into(),
        declared: ty.into(),
        nullable: false,
    }
}

fn table() -> TableName {
    TableName {
        schema: "dbo".into(),
        name: "orders".into(),
    }
}

#[test]
fn a_range_is_a_row_comparison_spelled_out_with_parameters_cast_to_the_key_types() {
    let range = KeyRange {
        columns: vec![col("region", "int"), col("id", "uniqueidentifier")],
        lo: Some(vec![Value::Int(1), Value::Text("a".into())]),
        hi: Some(vec![Value::Int(2), Value::Text("b".into())]),
    };
    let (filter, values) = range_where(&range);
    assert_eq!(
        filter,
        " WHERE ([region] > CAST(@P1 AS int) OR ([region] = CAST(@P1 AS int) AND \
         ([id] > CAST(@P2 AS uniqueidentifier)))) AND ([region] < CAST(@P3 AS int) OR \
         ([region] = CAST(@P3 AS int) AND ([id] <= CAST(@P4 AS uniqueidentifier))))"
    );
    let bound: Vec<Value> = values.into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        bound,
        vec![
            Value::Int(1),
            Value::Text("a".into()),
            Value::Int(2),
            Value::Text("b".into())
        ]
    );
    // One column, open below; and the whole table.
    let range = KeyRange {
        columns: vec![col("id", "bigint")],
        lo: None,
        hi: Some(vec![Value::Int(100)]),
    };
    assert_eq!(
        range_where(&range).0,
        " WHERE ([id] <= CAST(@P1 AS bigint))"
    );
    assert_eq!(range_where(&KeyRange::whole()), (String::new(), Vec::new()));
}

#[test]
fn rows_are_read_with_the_stream_select_list_in_key_order() {
    let range = KeyRange {
        columns: vec![col("id", "int")],
        lo: Some(vec![Value::Int(10)]),
        hi: None,
    };
    let columns = vec![
        ("id".to_owned(), MssqlType::Int),
        ("price".to_owned(), MssqlType::Money),
    ];
    let query = rows_query(&table(), &columns, &range);
    assert_eq!(
        query.sql,
        "SELECT [id], CAST([price] AS decimal(19,4)) AS [price] FROM [dbo].[orders] \
         WHERE ([id] > CAST(@P1 AS int)) ORDER BY [id]"
    );
    assert_eq!(query.values.len(), 1);
    let whole = rows_query(&table(), &columns, &KeyRange::whole());
    assert!(!whole.sql.contains("WHERE") && !whole.sql.contains("ORDER BY"));
}

#[test]
fn integer_cuts_walk_the_key_with_offset_fetch() {
    assert_eq!(
        integer_cut_query(&table(), "id", None, 1000),
        "SELECT CAST([id] AS varchar(40)) AS duplex_cut FROM [dbo].[orders] ORDER BY [id] \
         OFFSET 999 ROWS FETCH NEXT 1 ROWS ONLY"
    );
    assert_eq!(
        integer_cut_query(&table(), "id", Some(-5), 0),
        "SELECT CAST([id] AS varchar(40)) AS duplex_cut FROM [dbo].[orders] WHERE [id] > -5 \
         ORDER BY [id] OFFSET 0 ROWS FETCH NEXT 1 ROWS ONLY"
    );
    assert_eq!(
        integer_tail_query(&table(), "id", Some(42)),
        "SELECT CAST(COUNT_BIG(*) AS varchar(40)) FROM [dbo].[orders] WHERE [id] > 42"
    );
}

#[test]
fn key_cuts_are_numbered_by_the_server() {
    let key = vec![
        ("day".to_owned(), MssqlType::Date),
        ("n".to_owned(), MssqlType::Int),
    ];
    assert_eq!(
        key_cuts_query(&table(), &key, 500),
        "SELECT [day], [n] FROM (SELECT [day], [n], ROW_NUMBER() OVER (ORDER BY [day], [n]) \
         AS duplex_n FROM [dbo].[orders]) AS duplex_k WHERE duplex_n % 500 = 0 ORDER BY \
         duplex_n"
    );
}

#[test]
fn keys_are_classified_against_cuts_typed_by_the_table() {
    let key = vec![col("day", "date"), col("n", "int")];
    assert_eq!(
        range_index_query(&table(), &key, 2),
        "SELECT COUNT_BIG(*) FROM (SELECT TOP (0) [day], [n] FROM [dbo].[orders] UNION ALL \
         SELECT CAST(@P3 AS date), CAST(@P4 AS int) UNION ALL SELECT CAST(@P5 AS date), \
         CAST(@P6 AS int)) AS duplex_c WHERE duplex_c.[day] < CAST(@P1 AS date) OR \
         (duplex_c.[day] = CAST(@P1 AS date) AND (duplex_c.[n] < CAST(@P2 AS int)))"
    );
}

#[test]
fn only_keys_with_an_exact_cast_are_cut() {
    for ty in [
        "int",
        "bigint",
        "tinyint",
        "smallint",
        "date",
        "datetime2",
        "uniqueidentifier",
    ] {
        assert!(MssqlSnapshot::orderable(&col("k", ty)), "{ty}");
    }
    // A cast without a length would truncate text and binary, and round decimals; floats
    // and old date types are not cut either.
    for ty in [
        "nvarchar",
        "varchar",
        "char",
        "varbinary",
        "decimal",
        "float",
        "datetime",
    ] {
        assert!(!MssqlSnapshot::orderable(&col("k", ty)), "{ty}");
    }
}

#[test]
fn the_fence_locks_each_table_and_the_snapshot_starts_on_a_table() {
    assert_eq!(
        fence_sql(&table()),
        "SELECT TOP (1) 1 FROM [dbo].[orders] WITH (TABLOCK, HOLDLOCK)"
    );
    assert!(FENCE_BEGIN.contains("SERIALIZABLE") && FENCE_BEGIN.contains("LOCK_TIMEOUT"));
    assert!(SNAPSHOT_BEGIN.starts_with("SET TRANSACTION ISOLATION LEVEL SNAPSHOT"));
    assert_eq!(start_sql(&table()), "SELECT TOP (1) 1 FROM [dbo].[orders]");
    // The log end's display form is an LSN, and the position delivers after it.
    let end: Lsn = "0000002A:000001B8:0003".parse().unwrap();
    let position = CdcPosition::after_commit(end);
    assert!(!position.delivered(end.next().unwrap(), Lsn::ZERO));
    assert!(position.delivered(end, Lsn::ZERO));
}

#[test]
fn snapshot_isolation_off_says_how_to_turn_it_on() {
    let message = snapshot_off_message("erp");
    assert!(
        message.contains("ALTER DATABASE [erp] SET ALLOW_SNAPSHOT_ISOLATION ON"),
        "{message}"
    );
}
