use super::super::pgoutput::TupleValue;
use super::*;
use crate::postgres::pgoutput::DecodeError;
use pgwire_replication::PgWireError;

fn config() -> PgStreamConfig {
    PgStreamConfig::new(
        "shop",
        "postgres://duplex:secret@127.0.0.1:5999/db",
        "duplex_slot",
        "duplex_pub",
        vec![TableName::new("public", "t")],
    )
}

#[test]
fn names_that_replication_commands_cannot_quote_are_refused() {
    assert!(config().validate().is_ok());
    for bad in ["", "Slot", "a-b", "a b", "a'b", &"x".repeat(64)] {
        let mut c = config();
        c.slot = bad.to_owned();
        assert!(
            matches!(
                c.validate(),
                Err(PgStreamError::Config { field: "slot", .. })
            ),
            "{bad:?}"
        );
        let mut c = config();
        c.publication = bad.to_owned();
        assert!(
            matches!(
                c.validate(),
                Err(PgStreamError::Config {
                    field: "publication",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    let mut c = config();
    c.tables.clear();
    assert!(c.validate().is_err());
}

#[test]
fn echo_marker_refuses_parts() {
    let mut c = config();
    c.echo_marker = true;
    assert!(c.validate().is_ok());
    c.part_events = Some(crate::stream::DEFAULT_PART_EVENTS);
    let error = c.validate().unwrap_err();
    assert!(
        matches!(
            error,
            PgStreamError::Config {
                field: "echo_marker",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("part_events"), "{error}");
}

#[test]
fn debug_output_hides_passwords() {
    let mut c = config();
    c.password = Some("hunter2".into());
    let text = format!("{c:?}");
    assert!(
        !text.contains("secret") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.contains("duplex@127.0.0.1:5999/db"), "{text}");
}

#[test]
fn replication_settings_come_from_the_url() {
    let c = config();
    let r = replication_config(&c, Lsn(0x10_0000_0020), Lsn(0x10_0000_0010)).unwrap();
    assert_eq!(
        (
            r.host.as_str(),
            r.port,
            r.user.as_str(),
            r.password.as_str()
        ),
        ("127.0.0.1", 5999, "duplex", "secret")
    );
    assert_eq!(r.database, "db");
    assert_eq!(r.start_lsn, pgwire_replication::Lsn(0x10_0000_0020));
    assert_eq!(r.ack_lsn, Some(pgwire_replication::Lsn(0x10_0000_0010)));
    assert_eq!(r.options.as_deref(), Some(types::SESSION_OPTIONS));
    let mut c = config();
    c.password = Some("other".into());
    assert_eq!(
        replication_config(&c, Lsn(0), Lsn(0)).unwrap().password,
        "other"
    );
}

#[test]
fn transient_and_definite_errors() {
    let server = |m: &str| PgStreamError::Replication(PgWireError::Server(m.into()));
    assert!(
        server("terminating connection due to administrator command (SQLSTATE 57P01)")
            .is_transient()
    );
    assert!(server("replication slot \"s\" is active for PID 7 (SQLSTATE 55006)").is_transient());
    assert!(!server("replication slot \"s\" does not exist (SQLSTATE 42704)").is_transient());
    assert!(server("replication slot \"s\" does not exist (SQLSTATE 42704)").is_position_lost());
    assert!(!server("canceling statement (SQLSTATE 57014)").is_position_lost());
    assert!(!server("canceling statement (SQLSTATE 57014)").is_transient());
    assert!(
        PgStreamError::Replication(PgWireError::Io(Arc::new(std::io::Error::other("reset"))))
            .is_transient()
    );
    assert!(PgStreamError::Ended.is_transient());
    assert!(!PgStreamError::TableMissing(TableName::new("a", "b")).is_transient());
    assert!(!PgStreamError::Decode(DecodeError::Empty).is_transient());
}

#[test]
fn update_before_image_and_key_rules() {
    let rel = RelationEntry {
        table: TableName::new("public", "t"),
        columns: vec![Arc::from("id"), Arc::from("body")],
        types: vec![
            types::builtin_type(23).unwrap(),
            types::builtin_type(25).unwrap(),
        ],
        identity: vec![true, false],
        key: vec![0],
    };
    let text = |s: &'static str| TupleValue::Text(bytes::Bytes::from_static(s.as_bytes()));
    let full = rel
        .row(&vec![text("1"), TupleValue::UnchangedToast], false)
        .unwrap();
    assert_eq!(full.get("body"), Some(&Value::Unchanged));
    let key_only = rel.row(&vec![text("1"), TupleValue::Null], true).unwrap();
    assert_eq!(key_only.len(), 1);
    assert_eq!(
        rel.key_row(&key_only).unwrap().get("id"),
        Some(&Value::Int(1))
    );
    let no_key = rel.row(&vec![TupleValue::Null, text("x")], false).unwrap();
    assert!(matches!(
        rel.key_row(&no_key),
        Err(PgStreamError::KeyNotCarried { .. })
    ));
    assert!(matches!(
        rel.row(&vec![text("1")], false),
        Err(PgStreamError::Protocol(_))
    ));
}
