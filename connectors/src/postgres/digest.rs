//! Range digests on PostgreSQL ([`crate::digest`]): the range's rows stream in as text, in the
//! reader session's fixed formats (ISO dates, UTC times, hex bytes, see
//! [`PgSnapshotReader::open`]), and duplex forms each column's token straight from that text,
//! hashes and sums the rows as they arrive, without holding the range or building values.
//! (The server forming tokens and MD5s itself takes about twice the server time of sending
//! the rows.)

use futures_util::{StreamExt, pin_mut};
use tokio_postgres::SimpleQueryMessage;

use super::snapshot::{condition, qualified};
use super::{PgError, PgSnapshotError, PgSnapshotReader, quote_ident};
use crate::digest::{RangeDigest, push_text};
use crate::{Column, KeyRange, TableName};

/// How a column's text output becomes its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// The text is the token: integers, numeric (scale kept), ISO dates, timestamps.
    AsIs,
    /// `t` / `f` as `1` / `0`.
    Bool,
    /// Length in characters, `:`, the text (text, varchar, uuid; not bpchar, whose blank
    /// padding the output keeps).
    Text,
    /// `\x` hex as `0x` hex.
    Bytes,
    /// A UTC timestamp with time zone: the text without its `+00`.
    Utc,
}

fn token(column: &Column) -> Option<Token> {
    Some(match column.type_name.as_str() {
        "int2" | "int4" | "int8" | "numeric" | "date" | "timestamp" => Token::AsIs,
        "bool" => Token::Bool,
        "text" | "varchar" | "uuid" => Token::Text,
        "bytea" => Token::Bytes,
        "timestamptz" => Token::Utc,
        _ => return None,
    })
}

/// Appends the token of `text`, a value printed by PostgreSQL, by `rule`.
fn push(out: &mut Vec<u8>, rule: Token, text: &str) {
    match rule {
        Token::AsIs => out.extend_from_slice(text.as_bytes()),
        Token::Bool => out.push(if text == "t" { b'1' } else { b'0' }),
        Token::Text => push_text(out, text),
        Token::Bytes => {
            out.extend_from_slice(b"0x");
            out.extend_from_slice(text.strip_prefix("\\x").unwrap_or(text).as_bytes());
        }
        Token::Utc => out.extend_from_slice(text.strip_suffix("+00").unwrap_or(text).as_bytes()),
    }
}

impl PgSnapshotReader {
    /// Whether every one of `columns` has a type the digest covers.
    pub fn digestible(columns: &[Column]) -> bool {
        !columns.is_empty() && columns.iter().all(|c| token(c).is_some())
    }

    /// The digest of `range` of `table` over `columns` (in this order).
    pub async fn range_digest(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<RangeDigest, PgSnapshotError> {
        const DOING: &str = "reading a key range for its digest";
        let rules = columns
            .iter()
            .map(|c| {
                token(c).ok_or_else(|| {
                    PgSnapshotError::Digest(format!(
                        "column {} of {table}: type {} has none",
                        c.name, c.type_name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let list = columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {list} FROM {} WHERE {}",
            qualified(table),
            condition(range)?
        );
        let stream = self
            .client
            .simple_query_raw(&sql)
            .await
            .map_err(PgError::query(DOING))?;
        pin_mut!(stream);
        let mut digest = RangeDigest::default();
        let mut text = Vec::new();
        while let Some(message) = stream.next().await {
            let SimpleQueryMessage::Row(row) = message.map_err(PgError::query(DOING))? else {
                continue;
            };
            text.clear();
            for (i, rule) in rules.iter().enumerate() {
                if i > 0 {
                    text.push(b'|');
                }
                if let Some(value) = row.try_get(i).map_err(PgError::query(DOING))? {
                    push(&mut text, *rule, value);
                }
            }
            digest.add(&text);
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_of(rule: Token, text: &str) -> String {
        let mut out = Vec::new();
        push(&mut out, rule, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tokens_come_from_the_text_output() {
        assert_eq!(token_of(Token::AsIs, "-10.50"), "-10.50");
        assert_eq!(token_of(Token::Bool, "t"), "1");
        assert_eq!(token_of(Token::Bool, "f"), "0");
        assert_eq!(token_of(Token::Text, "a|€"), "3:a|€");
        assert_eq!(token_of(Token::Bytes, "\\x00ff"), "0x00ff");
        assert_eq!(token_of(Token::Bytes, "\\x"), "0x");
        assert_eq!(
            token_of(Token::Utc, "2026-12-04 14:22:27.5+00"),
            "2026-12-04 14:22:27.5"
        );
    }
}
