//! The conditional writes of two-way mappings: an insert, update or delete applies only over
//! the row it expects, the rest of a batch still applies, and key changes and upserts are
//! refused.

use super::*;

pub async fn conditional_insert_skips_an_existing_key_and_reports_it<T: Target>(t: T) {
    let mut applier = applier(&t, CONDITIONAL).await;
    applier
        .apply(&[txn(&t, 10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_item(t.read_item(1).await, stored(&full_row(1)));

    applier
        .apply(&[txn(&t, 20, vec![insert(other_row(1))])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), [skipped(Op::Insert, 1)]);
    assert_eq!(applier.take_skipped(), [], "taking clears");
    assert_item(t.read_item(1).await, stored(&full_row(1)));
    assert_eq!(count(&t).await, 1);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(20))
    );

    // A duplicate on another unique key is still an error, and rolls back the batch.
    t.execute("ALTER TABLE items ADD UNIQUE (vc)").await;
    let err = applier
        .apply(&[txn(&t, 30, vec![insert(null_row(2)), insert(full_row(3))])])
        .await
        .unwrap_err();
    assert_eq!(
        T::write_error(&err),
        Some((&t.table("items"), Op::Insert)),
        "{err:?}"
    );
    assert!(T::is_duplicate_key(&err), "{err:?}");
    assert_eq!(applier.take_skipped(), []);
    assert_eq!(count(&t).await, 1);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(20))
    );
}

pub async fn conditional_update_applies_only_over_the_expected_row<T: Target>(t: T) {
    let mut applier = applier(&t, CONDITIONAL).await;
    applier
        .apply(&[txn(
            &t,
            10,
            vec![
                insert(full_row(1)),
                insert(full_row(2)),
                insert(null_row(3)),
                insert(full_row(4)),
            ],
        )])
        .await
        .unwrap();
    let changed = |id| with(full_row(id), "vc", Value::Text("changed".into()));

    // The whole row as expected (floats bit for bit, decimals, json by its text, times): applied.
    applier
        .apply(&[txn(
            &t,
            20,
            vec![update_from(1, Some(full_row(1)), changed(1))],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_item(t.read_item(1).await, stored(&changed(1)));

    // One column differs from what the target holds: skipped, the row keeps its values. A
    // server's own comparisons would call several of these equal (a decimal against text as
    // doubles, collations that ignore case and trailing spaces, json by its document).
    let differing = [
        ("i4", Value::Int(5)),
        ("f8", Value::Float(f64::from_bits(f64::MAX.to_bits() - 1))),
        ("f4", Value::Float(f64::from(0.2f32))),
        ("n", dec("-123456789012345678901234567890.1234567891")),
        ("j", Value::Json(r#"{"b": 1, "a": [1, "🦀"] }"#.into())),
        ("j", Value::Json(r#"{"b": 1}"#.into())),
        ("vc", Value::Text("VARCHAR".into())),
        ("vc", Value::Text("varchar ".into())),
        ("bs", Value::Bytes(vec![0, 1, 0xff, 0])),
        ("d", date(2024, 3, 1)),
        ("tm", time(23, 59, 59, 999_998)),
        ("ts", ts("1999-12-31T23:59:59.999998")),
        ("tz", tz("2024-06-30T23:59:59.123457+02:00")),
        ("u", uuid("123e4567-e89b-12d3-a456-426614174001")),
        ("label", Value::Null),
    ];
    for (offset, (column, value)) in (30..).zip(differing) {
        let before = with(full_row(2), column, value);
        applier
            .apply(&[txn(
                &t,
                offset,
                vec![update_from(2, Some(before), changed(2))],
            )])
            .await
            .unwrap();
        assert_eq!(applier.take_skipped(), [skipped(Op::Update, 2)], "{column}");
        assert_item(t.read_item(2).await, stored(&full_row(2)));
    }

    // An expected value the column cannot hold is refused like a write of it.
    let before = with(full_row(2), "f4", Value::Float(0.1));
    let err = applier
        .apply(&[txn(&t, 90, vec![update_from(2, Some(before), changed(2))])])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApplyError::Value(r) if r.column == "f4"),
        "{err:?}"
    );
    assert_eq!(applier.take_skipped(), []);

    // NULL expected where the target holds NULL: applied.
    applier
        .apply(&[txn(
            &t,
            100,
            vec![update_from(
                3,
                Some(null_row(3)),
                with(null_row(3), "i2", Value::Int(3)),
            )],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_item(
        t.read_item(3).await,
        setting(stored(&null_row(3)), "i2", Value::Int(3)),
    );

    // An Unchanged expected column is not compared, nor is a column the route does not list.
    t.execute("UPDATE items SET t = 'changed locally' WHERE id = 4")
        .await;
    let mut before = with(full_row(4), "label", Value::Unchanged);
    before.push("not_routed", Value::Int(1));
    applier
        .apply(&[txn(
            &t,
            110,
            vec![update_from(
                4,
                Some(before),
                with(changed(4), "label", Value::Unchanged),
            )],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_item(
        t.read_item(4).await,
        setting(
            stored(&changed(4)),
            "t",
            Value::Text("changed locally".into()),
        ),
    );

    // Without a before-image the key alone decides; a missing row is skipped.
    applier
        .apply(&[txn(
            &t,
            120,
            vec![
                update_from(2, None, changed(2)),
                update_from(9, None, changed(9)),
            ],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), [skipped(Op::Update, 9)]);
    assert_item(t.read_item(2).await, stored(&changed(2)));
    assert_eq!(count(&t).await, 4);
}

pub async fn conditional_delete_applies_only_over_the_expected_row<T: Target>(t: T) {
    let mut applier = applier(&t, CONDITIONAL).await;
    applier
        .apply(&[txn(
            &t,
            10,
            vec![
                insert(full_row(1)),
                insert(other_row(2)),
                insert(full_row(3)),
            ],
        )])
        .await
        .unwrap();
    applier
        .apply(&[txn(
            &t,
            20,
            vec![
                delete_from(1, Some(with(full_row(1), "f4", Value::Float(0.5)))),
                delete_from(2, Some(other_row(2))),
                delete_from(3, None),
                delete_from(7, Some(full_row(7))),
            ],
        )])
        .await
        .unwrap();
    assert_eq!(
        applier.take_skipped(),
        [skipped(Op::Delete, 1), skipped(Op::Delete, 7)]
    );
    assert_item(t.read_item(1).await, stored(&full_row(1)));
    assert_item(t.read_item(2).await, None);
    assert_item(t.read_item(3).await, None);
    assert_eq!(count(&t).await, 1);
}

pub async fn conditional_batch_applies_the_rest_and_records_the_position<T: Target>(t: T) {
    let mut applier = applier(&t, CONDITIONAL).await;
    applier
        .apply(&[txn(&t, 10, vec![insert(full_row(1)), insert(full_row(2))])])
        .await
        .unwrap();
    t.execute("UPDATE items SET i2 = 42 WHERE id = 2").await;
    // Skipped inserts before and after a written one, which stays written.
    let batch = [
        txn(
            &t,
            20,
            vec![
                insert(full_row(1)),
                insert(other_row(3)),
                insert(full_row(2)),
                update_from(
                    2,
                    Some(full_row(2)),
                    with(full_row(2), "vc", Value::Text("x".into())),
                ),
            ],
        ),
        txn(
            &t,
            30,
            vec![
                update_from(
                    1,
                    Some(full_row(1)),
                    with(full_row(1), "vc", Value::Text("y".into())),
                ),
                delete_from(2, Some(full_row(2))),
                insert(null_row(4)),
            ],
        ),
    ];
    applier.apply(&batch).await.unwrap();
    assert_eq!(
        applier.take_skipped(),
        [
            skipped(Op::Insert, 1),
            skipped(Op::Insert, 2),
            skipped(Op::Update, 2),
            skipped(Op::Delete, 2)
        ]
    );
    assert_item(
        t.read_item(1).await,
        setting(stored(&full_row(1)), "vc", Value::Text("y".into())),
    );
    assert_item(
        t.read_item(2).await,
        setting(stored(&full_row(2)), "i2", Value::Int(42)),
    );
    assert_item(t.read_item(3).await, stored(&other_row(3)));
    assert_item(t.read_item(4).await, stored(&null_row(4)));
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(30))
    );

    // Replayed: the position check skips it whole, nothing is reported.
    applier.apply(&batch).await.unwrap();
    assert_eq!(applier.take_skipped(), []);

    // A large transaction whose first part skips a write and whose end fails: rolled back,
    // and no stale skip is reported.
    let part = TransactionPart {
        source: t.source().into(),
        start: t.position(35),
        origin: Origin::Local,
        events: vec![insert(full_row(1)), insert(full_row(5))],
    };
    applier.apply_part(&part).await.unwrap();
    let too_long = with(full_row(5), "vc", Value::Text("x".repeat(21)));
    let err = applier
        .apply(&[txn(&t, 40, vec![update_from(5, None, too_long)])])
        .await
        .unwrap_err();
    assert!(T::write_error(&err).is_some(), "{err:?}");
    assert_eq!(applier.take_skipped(), []);
    assert_item(t.read_item(5).await, None);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(30))
    );
    // Delivered again from its first part, it commits and reports its skip.
    applier.apply_part(&part).await.unwrap();
    applier
        .apply(&[txn(&t, 40, vec![delete_from(5, None)])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), [skipped(Op::Insert, 1)]);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(40))
    );

    // A batch fully applied reports nothing.
    applier
        .apply(&[txn(
            &t,
            50,
            vec![insert(full_row(6)), delete_from(6, Some(full_row(6)))],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
}

pub async fn conditional_refuses_key_changes_and_upserts<T: Target>(t: T) {
    let both = ApplyOptions {
        upsert: true,
        conditional: true,
    };
    let err = AnyApplier::connect(&t.site(), vec![route(&t)], both)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApplyError::Options(_)), "{err:?}");

    let mut applier = applier(&t, CONDITIONAL).await;
    applier
        .apply(&[txn(&t, 10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    let err = applier
        .apply(&[txn(&t, 20, vec![update(1, full_row(2))])])
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::KeyChange { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(10))
    );
    // The same key given as an unsigned value is not a change.
    let same_key = with(with(full_row(1), "id", Value::UInt(1)), "i2", Value::Int(2));
    applier
        .apply(&[txn(&t, 20, vec![update(1, same_key.clone())])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_item(t.read_item(1).await, stored(&same_key));
}
