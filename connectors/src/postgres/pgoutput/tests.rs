use super::*;

/// Builds messages the way `pgoutput` writes them.
#[derive(Default)]
struct Buf(Vec<u8>);

impl Buf {
    fn tag(t: u8) -> Buf {
        Buf(vec![t])
    }
    fn u8(mut self, v: u8) -> Buf {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Buf {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Buf {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Buf {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Buf {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Buf {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn str(mut self, s: &str) -> Buf {
        self.0.extend(s.as_bytes());
        self.0.push(0);
        self
    }
    fn text(self, v: &[u8]) -> Buf {
        let mut b = self.u8(b't').i32(v.len() as i32);
        b.0.extend(v);
        b
    }
    fn bytes(&self) -> Bytes {
        Bytes::from(self.0.clone())
    }
}

fn text(v: &[u8]) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(v))
}

#[test]
fn begin_and_commit() {
    let begin = Buf::tag(b'B')
        .u64(0x16_B374_D848)
        .i64(-5)
        .u32(u32::MAX)
        .bytes();
    assert_eq!(
        decode(&begin),
        Ok(Message::Begin(Begin {
            final_lsn: 0x16_B374_D848,
            commit_time: -5,
            xid: u32::MAX
        }))
    );
    let commit = Buf::tag(b'C').u8(0).u64(10).u64(20).i64(30).bytes();
    assert_eq!(
        decode(&commit),
        Ok(Message::Commit(Commit {
            flags: 0,
            commit_lsn: 10,
            end_lsn: 20,
            commit_time: 30
        }))
    );
}

#[test]
fn origin_and_type() {
    let origin = Buf::tag(b'O').u64(7).str("pg_1").bytes();
    assert_eq!(
        decode(&origin),
        Ok(Message::Origin(OriginMessage {
            commit_lsn: 7,
            name: "pg_1".into()
        }))
    );
    let ty = Buf::tag(b'Y').u32(16_400).str("public").str("mood").bytes();
    assert_eq!(
        decode(&ty),
        Ok(Message::Type(TypeMessage {
            oid: 16_400,
            namespace: "public".into(),
            name: "mood".into()
        }))
    );
}

#[test]
fn relation_with_key_flags_and_unicode_names() {
    let rel = Buf::tag(b'R')
        .u32(16_385)
        .str("sales")
        .str("örders 🙂")
        .u8(b'd')
        .i16(2)
        .u8(1)
        .str("id")
        .u32(20)
        .i32(-1)
        .u8(0)
        .str("amount")
        .u32(1700)
        .i32(786_438)
        .bytes();
    assert_eq!(
        decode(&rel),
        Ok(Message::Relation(Relation {
            id: 16_385,
            namespace: "sales".into(),
            name: "örders 🙂".into(),
            replica_identity: b'd',
            columns: vec![
                RelationColumn {
                    key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1
                },
                RelationColumn {
                    key: false,
                    name: "amount".into(),
                    type_oid: 1700,
                    type_modifier: 786_438
                },
            ],
        }))
    );
}

#[test]
fn insert_with_every_column_kind() {
    let msg = Buf::tag(b'I')
        .u32(1)
        .u8(b'N')
        .i16(5)
        .u8(b'n')
        .u8(b'u')
        .text(b"42")
        .text(b"")
        .u8(b'b')
        .i32(3)
        .u8(0)
        .u8(0xff)
        .u8(0)
        .bytes();
    assert_eq!(
        decode(&msg),
        Ok(Message::Insert(Insert {
            relation: 1,
            new: vec![
                TupleValue::Null,
                TupleValue::UnchangedToast,
                text(b"42"),
                text(b""),
                TupleValue::Binary(Bytes::from_static(&[0, 0xff, 0])),
            ],
        }))
    );
}

#[test]
fn update_without_key_and_with_key_and_full_old_rows() {
    let plain = Buf::tag(b'U').u32(9).u8(b'N').i16(1).text(b"a").bytes();
    assert_eq!(
        decode(&plain),
        Ok(Message::Update(Update {
            relation: 9,
            old: None,
            new: vec![text(b"a")]
        }))
    );
    let keyed = Buf::tag(b'U')
        .u32(9)
        .u8(b'K')
        .i16(2)
        .text(b"1")
        .u8(b'n')
        .u8(b'N')
        .i16(2)
        .text(b"2")
        .u8(b'u')
        .bytes();
    assert_eq!(
        decode(&keyed),
        Ok(Message::Update(Update {
            relation: 9,
            old: Some(OldTuple::Key(vec![text(b"1"), TupleValue::Null])),
            new: vec![text(b"2"), TupleValue::UnchangedToast],
        }))
    );
    let full = Buf::tag(b'U')
        .u32(9)
        .u8(b'O')
        .i16(1)
        .text(b"x")
        .u8(b'N')
        .i16(1)
        .text(b"y")
        .bytes();
    let Ok(Message::Update(update)) = decode(&full) else {
        panic!("not an update");
    };
    assert_eq!(update.old, Some(OldTuple::Full(vec![text(b"x")])));
    assert_eq!(update.old.unwrap().tuple(), &vec![text(b"x")]);
}

#[test]
fn delete_key_and_full() {
    let key = Buf::tag(b'D').u32(3).u8(b'K').i16(1).text(b"7").bytes();
    assert_eq!(
        decode(&key),
        Ok(Message::Delete(Delete {
            relation: 3,
            old: OldTuple::Key(vec![text(b"7")])
        }))
    );
    let full = Buf::tag(b'D').u32(3).u8(b'O').i16(1).u8(b'n').bytes();
    assert_eq!(
        decode(&full),
        Ok(Message::Delete(Delete {
            relation: 3,
            old: OldTuple::Full(vec![TupleValue::Null])
        }))
    );
}

#[test]
fn truncate_and_message() {
    let t = Buf::tag(b'T').i32(2).u8(3).u32(10).u32(11).bytes();
    assert_eq!(
        decode(&t),
        Ok(Message::Truncate(Truncate {
            options: 3,
            relations: vec![10, 11]
        }))
    );
    let m = Buf::tag(b'M')
        .u8(1)
        .u64(99)
        .str("duplex")
        .i32(3)
        .u8(0)
        .u8(1)
        .u8(2)
        .bytes();
    assert_eq!(
        decode(&m),
        Ok(Message::Message(LogicalMessage {
            transactional: true,
            lsn: 99,
            prefix: "duplex".into(),
            content: Bytes::from_static(&[0, 1, 2]),
        }))
    );
}

#[test]
fn every_truncation_of_a_valid_message_is_an_error() {
    let msg = Buf::tag(b'U')
        .u32(9)
        .u8(b'K')
        .i16(2)
        .text(b"1")
        .u8(b'n')
        .u8(b'N')
        .i16(2)
        .text(b"2")
        .u8(b'u')
        .bytes();
    for len in 0..msg.len() {
        let cut = msg.slice(..len);
        assert!(decode(&cut).is_err(), "prefix of {len} bytes decoded");
    }
    assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
    assert_eq!(
        decode(&Buf::tag(b'B').u64(1).bytes()),
        Err(DecodeError::Truncated {
            message: "Begin",
            field: "commit time",
            needed: 8
        })
    );
    assert_eq!(
        decode(&Buf::tag(b'I').u32(1).u8(b'N').i16(1).i32(5).bytes()),
        Err(DecodeError::UnknownColumnKind {
            message: "Insert",
            kind: 0
        })
    );
    assert_eq!(
        decode(
            &Buf::tag(b'I')
                .u32(1)
                .u8(b'N')
                .i16(1)
                .u8(b't')
                .i32(5)
                .u8(b'a')
                .bytes()
        ),
        Err(DecodeError::Truncated {
            message: "Insert",
            field: "text value",
            needed: 4
        })
    );
}

#[test]
fn malformed_messages_are_refused() {
    assert_eq!(
        decode(&Buf::tag(b'S').bytes()),
        Err(DecodeError::UnknownTag(b'S'))
    );
    assert_eq!(
        decode(&Buf::tag(b'I').u32(1).u8(b'K').i16(0).bytes()),
        Err(DecodeError::UnexpectedTupleMarker {
            message: "Insert",
            marker: b'K'
        })
    );
    assert_eq!(
        decode(&Buf::tag(b'U').u32(1).u8(b'X').bytes()),
        Err(DecodeError::UnexpectedTupleMarker {
            message: "Update",
            marker: b'X'
        })
    );
    assert_eq!(
        decode(&Buf::tag(b'D').u32(1).u8(b'N').i16(0).bytes()),
        Err(DecodeError::UnexpectedTupleMarker {
            message: "Delete",
            marker: b'N'
        })
    );
    assert_eq!(
        decode(&Buf::tag(b'I').u32(1).u8(b'N').i16(-1).bytes()),
        Err(DecodeError::Negative {
            message: "Insert",
            field: "tuple column count"
        })
    );
    assert_eq!(
        decode(&Buf::tag(b'C').u8(0).u64(1).u64(2).i64(3).u8(0).bytes()),
        Err(DecodeError::TrailingBytes {
            message: "Commit",
            extra: 1
        })
    );
    let mut bad_utf8 = Buf::tag(b'O').u64(1);
    bad_utf8.0.extend([0xff, 0xfe, 0]);
    assert_eq!(
        decode(&bad_utf8.bytes()),
        Err(DecodeError::InvalidUtf8 {
            message: "Origin",
            field: "origin name"
        })
    );
    assert_eq!(
        decode(&Buf::tag(b'T').i32(1_000_000).u8(0).bytes()),
        Err(DecodeError::Truncated {
            message: "Truncate",
            field: "relation id",
            needed: 4
        })
    );
}

#[test]
fn the_error_messages_name_the_problem() {
    assert_eq!(
        DecodeError::UnknownTag(b'S').to_string(),
        "unknown pgoutput message tag 'S' (0x53)"
    );
    assert_eq!(
        DecodeError::UnknownColumnKind {
            message: "Insert",
            kind: b'x'
        }
        .to_string(),
        "unknown tuple column kind 'x' in a pgoutput Insert message"
    );
}
