//! The head of a DDL statement from a query event: which kind of DDL (ALTER / DROP / RENAME /
//! TRUNCATE TABLE) and which tables it names, so the binlog reader knows which mapped tables
//! to look at again in the catalog.

use crate::TableName;

/// DDL statements that concern the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DdlKind {
    Alter,
    Drop,
    Rename,
    Truncate,
}

/// The kind of DDL and the tables it names, for ALTER/DROP/RENAME/TRUNCATE TABLE. `schema` is
/// the query event's default database.
pub(super) fn ddl_targets(statement: &str, schema: &str) -> Option<(DdlKind, Vec<TableName>)> {
    let mut words = Words::new(statement);
    let first = words.keyword()?;
    let kind = match first.as_str() {
        "alter" => DdlKind::Alter,
        "drop" => DdlKind::Drop,
        "rename" => DdlKind::Rename,
        "truncate" => DdlKind::Truncate,
        _ => return None,
    };
    loop {
        let word = words.keyword()?;
        match word.as_str() {
            "online" | "offline" | "ignore" | "temporary" => continue,
            "table" | "tables" => break,
            _ if kind == DdlKind::Truncate => {
                words = Words::new(statement);
                words.keyword();
                break;
            }
            _ => return None,
        }
    }
    let mut targets = Vec::new();
    loop {
        words.skip_keywords(&["if", "exists", "wait", "nowait"]);
        let table = words.table_name(schema)?;
        targets.push(table);
        if kind == DdlKind::Rename {
            words.skip_keywords(&["to"]);
            words.table_name(schema)?;
        }
        if kind == DdlKind::Alter || !words.comma() {
            break;
        }
    }
    Some((kind, targets))
}

/// A tiny tokenizer for the head of a DDL statement.
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        Words { rest: text }
    }

    fn skip_space(&mut self) {
        loop {
            self.rest = self.rest.trim_start();
            if let Some(after) = self.rest.strip_prefix("/*") {
                self.rest = after.split_once("*/").map_or("", |(_, r)| r);
            } else {
                return;
            }
        }
    }

    fn keyword(&mut self) -> Option<String> {
        self.skip_space();
        let end = self
            .rest
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(word.to_ascii_lowercase())
    }

    fn skip_keywords(&mut self, keywords: &[&str]) {
        loop {
            let saved = self.rest;
            match self.keyword() {
                Some(w) if keywords.contains(&w.as_str()) => {}
                _ => {
                    self.rest = saved;
                    return;
                }
            }
        }
    }

    fn comma(&mut self) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(',') {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn identifier(&mut self) -> Option<String> {
        self.skip_space();
        if let Some(quoted) = self.rest.strip_prefix('`') {
            let mut name = String::new();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '`' {
                    if quoted[i + 1..].starts_with('`') {
                        chars.next();
                        name.push('`');
                    } else {
                        self.rest = &quoted[i + 1..];
                        return Some(name);
                    }
                } else {
                    name.push(c);
                }
            }
            None
        } else {
            let end = self
                .rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(self.rest.len());
            if end == 0 {
                return None;
            }
            let (name, rest) = self.rest.split_at(end);
            self.rest = rest;
            Some(name.to_owned())
        }
    }

    fn table_name(&mut self, schema: &str) -> Option<TableName> {
        let first = self.identifier()?;
        if let Some(rest) = self.rest.strip_prefix('.') {
            self.rest = rest;
            let name = self.identifier()?;
            Some(TableName::new(first, name))
        } else {
            Some(TableName::new(schema, first))
        }
    }
}
