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

/// A statement as the server executes it: the content of executable comments (`/*!100000
/// ... */`, `/*M!100000 ... */`, `/*! ... */`) kept, other comments dropped.
pub(super) fn executed_text(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len());
    let mut rest = statement;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("*/") else {
            rest = "";
            break;
        };
        let body = &after[..end];
        let executable = body.strip_prefix("M!").or_else(|| body.strip_prefix('!'));
        if let Some(body) = executable {
            out.push(' ');
            out.push_str(body.trim_start_matches(|c: char| c.is_ascii_digit()));
            out.push(' ');
        } else {
            out.push(' ');
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Whether `text` names `table`: its name as a whole word (case-insensitive, quoted or
/// not), qualified with the table's database, or unqualified in a statement whose default
/// database (`schema`, from the query event) is the table's. Deliberately loose otherwise: a
/// statement that might touch a mapped table is looked at, never one that does touch it
/// overlooked.
pub(super) fn mentions(text: &str, table: &TableName, schema: &str) -> bool {
    let haystack = text.to_lowercase();
    let needle = table.name.to_lowercase();
    if needle.is_empty() {
        return false;
    }
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let word = |c: Option<char>| c.is_some_and(is_word);
    let mut from = 0;
    while let Some(found) = haystack[from..].find(&needle) {
        let start = from + found;
        let end = start + needle.len();
        from = end;
        if word(haystack[..start].chars().next_back()) || word(haystack[end..].chars().next()) {
            continue;
        }
        // The qualifier before it, if any: `db`.`name`, db.name, db . name.
        let before = haystack[..start].trim_end_matches('`').trim_end();
        let qualifier = before.strip_suffix('.').map(|q| {
            let q = q.trim_end().trim_end_matches('`');
            let begin = q
                .char_indices()
                .rev()
                .take_while(|(_, c)| is_word(*c))
                .last()
                .map_or(q.len(), |(i, _)| i);
            &q[begin..]
        });
        let database = match qualifier {
            Some(q) => q.to_owned(),
            None => schema.to_lowercase(),
        };
        if database.is_empty() || database == table.schema.to_lowercase() {
            return true;
        }
    }
    false
}

/// Whether a statement (from [`executed_text`]) is partition maintenance that removes or
/// moves rows without logging them as row events.
pub(super) fn drops_partition_rows(text: &str) -> bool {
    let normal = text
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    [
        "truncate partition",
        "drop partition",
        "exchange partition",
        "discard partition",
        "import partition",
        "discard tablespace",
        "import tablespace",
    ]
    .iter()
    .any(|op| normal.contains(op))
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
