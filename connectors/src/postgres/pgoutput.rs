//! Decoder for the messages of PostgreSQL's built-in `pgoutput` logical decoding plugin,
//! protocol version 1 (PostgreSQL 10 and newer; see "Logical Replication Message Formats" in
//! the PostgreSQL manual).
//!
//! Every `XLogData` payload of a logical replication stream is exactly one message: a one-byte
//! tag followed by big-endian fields. A transaction arrives as `Begin`, then (optionally)
//! `Origin`, then any number of `Relation` / `Type` / change messages, then `Commit`. Before the
//! first change of a table in a session (and again after its definition changed) the server
//! sends a `Relation` message describing its columns; change messages refer to it by relation
//! id and carry their rows as [`TupleData`] in that column order.
//!
//! Protocol version 1 never streams in-progress transactions, so every change message belongs
//! to the transaction opened by the latest `Begin`. Column values are sent in text format
//! unless the `binary` option was requested; both are decoded here, the interpretation of the
//! bytes belongs to [`super::types`].
//!
//! [`decode`] is a pure function over one message: it never panics on malformed input and
//! reports truncation, unknown tags and trailing garbage as [`DecodeError`]s.

use bytes::Bytes;

/// One decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: the transaction commits.
    Commit(Commit),
    /// `O`: the transaction was replayed from another origin (it was written by a
    /// replication apply process with a replication origin set).
    Origin(OriginMessage),
    /// `R`: the columns of a table, sent before its first change and after it changed.
    Relation(Relation),
    /// `Y`: a non-builtin type used by a following `Relation`.
    Type(TypeMessage),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
}

/// `Begin` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `Commit` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// LSN just past the commit record: the position to resume from and to acknowledge.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// `Origin` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginMessage {
    /// Commit LSN on the origin server.
    pub commit_lsn: u64,
    /// Origin name.
    pub name: String,
}

/// `Relation` message: a table's identity and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation id (the table's oid) used by change messages.
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in table order (dropped columns omitted).
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// True when the column is part of the replica identity (the key the old tuple carries).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type oid.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// `Type` message: the name of a non-builtin type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// Type oid.
    pub oid: u32,
    /// Schema name.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// `Insert` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Relation id.
    pub relation: u32,
    /// The new row.
    pub new: TupleData,
}

/// Which old row an `Update` or `Delete` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are meaningful (the others are null).
    Key(TupleData),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `Update` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Relation id.
    pub relation: u32,
    /// The old row, when the replica identity requires it (key changed, or identity FULL).
    pub old: Option<OldTuple>,
    /// The new row.
    pub new: TupleData,
}

/// `Delete` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Relation id.
    pub relation: u32,
    /// The deleted row (key or full).
    pub old: OldTuple,
}

/// `Truncate` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: `CASCADE`; bit 2: `RESTART IDENTITY`.
    pub options: u8,
    /// Relation ids of the truncated tables.
    pub relations: Vec<u32>,
}

/// `Message` message (`pg_logical_emit_message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// True when the message was emitted inside a transaction (and so commits with it).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: u64,
    /// Application-chosen prefix.
    pub prefix: String,
    /// Content.
    pub content: Bytes,
}

/// The column values of one row, in the relation's column order.
pub type TupleData = Vec<TupleValue>;

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value the WAL did not carry.
    UnchangedToast,
    /// `t`: the value's text output.
    Text(Bytes),
    /// `b`: the value's binary send format.
    Binary(Bytes),
}

/// A `pgoutput` message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is empty.
    #[error("empty pgoutput message")]
    Empty,
    /// The message ended inside a field.
    #[error("truncated pgoutput {message} message: needed {needed} more bytes for {field}")]
    Truncated {
        /// Message kind.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// The first byte is not a protocol version 1 message tag.
    #[error("unknown pgoutput message tag {tag:?} (0x{byte:02x})", tag = char::from(*.0), byte = .0)]
    UnknownTag(u8),
    /// A tuple column has an unknown kind byte.
    #[error("unknown tuple column kind {kind:?} in a pgoutput {message} message", kind = char::from(*.kind))]
    UnknownColumnKind {
        /// Message kind.
        message: &'static str,
        /// The byte found.
        kind: u8,
    },
    /// A byte where `N`, `K` or `O` was expected.
    #[error("unexpected tuple marker {marker:?} in a pgoutput {message} message", marker = char::from(*.marker))]
    UnexpectedTupleMarker {
        /// Message kind.
        message: &'static str,
        /// The byte found.
        marker: u8,
    },
    /// A name is not valid UTF-8 (the stream is requested in UTF8 client encoding).
    #[error("pgoutput {message} message: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Message kind.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A negative count or length.
    #[error("pgoutput {message} message: negative {field}")]
    Negative {
        /// Message kind.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Bytes remain after the message.
    #[error("pgoutput {message} message has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Message kind.
        message: &'static str,
        /// How many.
        extra: usize,
    },
}

/// Decodes one `pgoutput` protocol version 1 message (one `XLogData` payload).
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => return Err(DecodeError::UnknownTag(other)),
    };
    let mut r = Reader {
        data,
        pos: 1,
        message,
    };
    let decoded = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit time")?,
        }),
        b'O' => Message::Origin(OriginMessage {
            commit_lsn: r.u64("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.string("namespace")?;
            let name = r.string("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let count = r.count16("column count")?;
            let mut columns = Vec::with_capacity(count);
            for _ in 0..count {
                columns.push(RelationColumn {
                    key: r.u8("column flags")? & 1 == 1,
                    name: r.string("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type(TypeMessage {
            oid: r.u32("type oid")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation = r.u32("relation id")?;
            match r.u8("tuple marker")? {
                b'N' => Message::Insert(Insert {
                    relation,
                    new: r.tuple()?,
                }),
                marker => return Err(DecodeError::UnexpectedTupleMarker { message, marker }),
            }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let (old, marker) = match r.u8("tuple marker")? {
                b'K' => (Some(OldTuple::Key(r.tuple()?)), r.u8("tuple marker")?),
                b'O' => (Some(OldTuple::Full(r.tuple()?)), r.u8("tuple marker")?),
                marker => (None, marker),
            };
            if marker != b'N' {
                return Err(DecodeError::UnexpectedTupleMarker { message, marker });
            }
            Message::Update(Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                marker => return Err(DecodeError::UnexpectedTupleMarker { message, marker }),
            };
            Message::Delete(Delete { relation, old })
        }
        b'T' => {
            let count = r.count32("relation count")?;
            let options = r.u8("options")?;
            let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relations.push(r.u32("relation id")?);
            }
            Message::Truncate(Truncate { options, relations })
        }
        _ => {
            let transactional = r.u8("flags")? & 1 == 1;
            let lsn = r.u64("message LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.count32("content length")?;
            Message::Message(LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len, "content")?,
            })
        }
    };
    match r.remaining() {
        0 => Ok(decoded),
        extra => Err(DecodeError::TrailingBytes { message, extra }),
    }
}

/// A cursor over one message.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.pos + N;
        let Some(bytes) = self.data.get(self.pos..end) else {
            return Err(self.truncated(field, N));
        };
        self.pos = end;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn truncated(&self, field: &'static str, len: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            field,
            needed: len - self.remaining(),
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.take(field).map(u32::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.take(field).map(i32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.take(field).map(u64::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.take(field).map(i64::from_be_bytes)
    }

    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = i16::from_be_bytes(self.take(field)?);
        usize::try_from(n).map_err(|_| DecodeError::Negative {
            message: self.message,
            field,
        })
    }

    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(field)?;
        usize::try_from(n).map_err(|_| DecodeError::Negative {
            message: self.message,
            field,
        })
    }

    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(self.truncated(field, len));
        }
        let out = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// A NUL-terminated string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
                needed: 1,
            });
        };
        let text = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
        })?;
        self.pos += len + 1;
        Ok(text.to_owned())
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count = self.count16("tuple column count")?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(match self.u8("tuple column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.count32("text value length")?;
                    TupleValue::Text(self.bytes(len, "text value")?)
                }
                b'b' => {
                    let len = self.count32("binary value length")?;
                    TupleValue::Binary(self.bytes(len, "binary value")?)
                }
                kind => {
                    return Err(DecodeError::UnknownColumnKind {
                        message: self.message,
                        kind,
                    });
                }
            });
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests;
