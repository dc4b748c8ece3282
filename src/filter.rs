//! Row filters per site (`filter.<site> = "channel = 'web' AND total > 0"`): which rows of a
//! two-way mapping a site receives, as a small expression over the mapping's canonical
//! columns: comparisons (`=`, `<>`, `!=`, `<`, `<=`, `>`, `>=`) of a column with a literal,
//! `IN (...)`, `NOT IN (...)`, `IS NULL`, `IS NOT NULL`, `AND`, `OR`, `NOT` and parentheses.
//! Literals are `'text'` (`''` for a quote), numbers, `TRUE` and `FALSE`. As in SQL, a
//! comparison with NULL is unknown, and a row is received only when the filter is true.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use duplex_connectors::preflight::Finding;
use duplex_connectors::{Row, TableSchema, Value};

use crate::column_policy::numeric;
use crate::config::Mapping;
use crate::engine::column_merge::compare;
use crate::engine::rows::normal;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `a AND b`.
    And(Box<Filter>, Box<Filter>),
    /// `a OR b`.
    Or(Box<Filter>, Box<Filter>),
    /// `NOT a`.
    Not(Box<Filter>),
    /// `column <op> literal`.
    Compare(String, Op, Value),
    /// `column IN (literals)`.
    In(String, Vec<Value>),
    /// `column IS NULL`.
    IsNull(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`.
    Eq,
    /// `<>` or `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(String),
    Symbol(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("a quoted text is not closed".into()),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        s.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(Token::Text(s));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Number(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let symbol = ["<>", "!=", "<=", ">="]
                .into_iter()
                .find(|s| *s == two)
                .or_else(|| {
                    ["=", "<", ">", "(", ")", ","]
                        .into_iter()
                        .find(|s| s.starts_with(c))
                });
            let Some(symbol) = symbol else {
                return Err(format!("{c:?} is not part of a filter"));
            };
            i += symbol.len();
            out.push(Token::Symbol(symbol));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.peek_word(word);
        self.at += usize::from(found);
        found
    }

    fn eat(&mut self, symbol: &str) -> bool {
        let found = matches!(self.tokens.get(self.at), Some(Token::Symbol(s)) if *s == symbol);
        self.at += usize::from(found);
        found
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.eat_word("OR") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.not()?;
        while self.eat_word("AND") {
            left = Filter::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Filter, String> {
        if self.eat_word("NOT") {
            return Ok(Filter::Not(Box::new(self.not()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err("a parenthesis is not closed".into());
            }
            return Ok(inner);
        }
        let column = match self.tokens.get(self.at) {
            Some(Token::Word(w)) => w.clone(),
            other => return Err(format!("expected a column name, found {}", show(other))),
        };
        self.at += 1;
        if self.eat_word("IS") {
            let negated = self.eat_word("NOT");
            if !self.eat_word("NULL") {
                return Err(format!("{column} IS must be followed by NULL or NOT NULL"));
            }
            let test = Filter::IsNull(column);
            return Ok(if negated {
                Filter::Not(Box::new(test))
            } else {
                test
            });
        }
        let negated = self.eat_word("NOT");
        if self.eat_word("IN") {
            if !self.eat("(") {
                return Err(format!(
                    "{column} IN must be followed by a list in parentheses"
                ));
            }
            let mut values = vec![self.literal()?];
            while self.eat(",") {
                values.push(self.literal()?);
            }
            if !self.eat(")") {
                return Err("the IN list is not closed".into());
            }
            let test = Filter::In(column, values);
            return Ok(if negated {
                Filter::Not(Box::new(test))
            } else {
                test
            });
        }
        if negated {
            return Err(format!("{column} NOT must be followed by IN"));
        }
        let op = match self.tokens.get(self.at) {
            Some(Token::Symbol("=")) => Op::Eq,
            Some(Token::Symbol("<>" | "!=")) => Op::Ne,
            Some(Token::Symbol("<")) => Op::Lt,
            Some(Token::Symbol("<=")) => Op::Le,
            Some(Token::Symbol(">")) => Op::Gt,
            Some(Token::Symbol(">=")) => Op::Ge,
            other => {
                return Err(format!(
                    "expected a comparison, IN or IS after {column}, found {}",
                    show(other)
                ));
            }
        };
        self.at += 1;
        Ok(Filter::Compare(column, op, self.literal()?))
    }

    fn literal(&mut self) -> Result<Value, String> {
        let value = match self.tokens.get(self.at) {
            Some(Token::Text(s)) => Value::Text(s.clone()),
            Some(Token::Number(n)) => match n.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Decimal(n.parse().map_err(|_| format!("{n} is not a number"))?),
            },
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("TRUE") => Value::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("FALSE") => Value::Bool(false),
            other => {
                return Err(format!(
                    "expected a value ('text', a number, TRUE or FALSE), found {}",
                    show(other)
                ));
            }
        };
        self.at += 1;
        Ok(value)
    }
}

fn show(token: Option<&Token>) -> String {
    match token {
        None => "the end".into(),
        Some(Token::Word(w)) => w.clone(),
        Some(Token::Text(t)) => format!("'{t}'"),
        Some(Token::Number(n)) => n.clone(),
        Some(Token::Symbol(s)) => (*s).to_owned(),
    }
}

impl Filter {
    /// Parses a filter.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut parser = Parser {
            tokens: tokens(text)?,
            at: 0,
        };
        let filter = parser.or()?;
        if parser.at < parser.tokens.len() {
            return Err(format!(
                "unexpected {} after a complete filter",
                show(parser.tokens.get(parser.at))
            ));
        }
        Ok(filter)
    }

    /// Every column the filter names, with the literals it compares the column with.
    pub fn columns(&self) -> Vec<(&str, Vec<&Value>)> {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut all = a.columns();
                all.extend(b.columns());
                all
            }
            Filter::Not(a) => a.columns(),
            Filter::Compare(c, _, v) => vec![(c.as_str(), vec![v])],
            Filter::In(c, values) => vec![(c.as_str(), values.iter().collect())],
            Filter::IsNull(c) => vec![(c.as_str(), Vec::new())],
        }
    }

    /// Whether a canonical row passes the filter (true, not unknown).
    pub fn matches(&self, row: &Row) -> bool {
        self.eval(row) == Some(true)
    }

    fn eval(&self, row: &Row) -> Option<bool> {
        match self {
            Filter::And(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Filter::Or(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Filter::Not(a) => a.eval(row).map(|v| !v),
            Filter::IsNull(c) => Some(matches!(row.get(c), None | Some(Value::Null))),
            Filter::Compare(c, op, literal) => {
                let value = row.get(c).filter(|v| !matches!(v, Value::Null))?;
                let order = order(value, literal)?;
                Some(match op {
                    Op::Eq => order == Ordering::Equal,
                    Op::Ne => order != Ordering::Equal,
                    Op::Lt => order == Ordering::Less,
                    Op::Le => order != Ordering::Greater,
                    Op::Gt => order == Ordering::Greater,
                    Op::Ge => order != Ordering::Less,
                })
            }
            Filter::In(c, values) => {
                let value = row.get(c).filter(|v| !matches!(v, Value::Null))?;
                Some(
                    values
                        .iter()
                        .any(|l| order(value, l) == Some(Ordering::Equal)),
                )
            }
        }
    }
}

/// How a value compares with a literal: by value for numbers, text, dates and booleans;
/// other kinds only for equality, by their normal text.
fn order(value: &Value, literal: &Value) -> Option<Ordering> {
    compare(value, literal)
        .or_else(|| (normal(value) == normal(literal)).then_some(Ordering::Equal))
}

/// Reads `filter.<site>` of the mapping at `field` (`sites`: the sites with a table in it;
/// `columns`: its column list, if any). Problems go to `report`; `None` when there was one.
pub(crate) fn parse_all(
    field: &str,
    raw: &BTreeMap<String, String>,
    sites: &[&String],
    columns: Option<&[String]>,
    two_way: bool,
    report: &mut dyn FnMut(String, String),
) -> Option<BTreeMap<String, Filter>> {
    let mut ok = true;
    let mut filters = BTreeMap::new();
    for (site, text) in raw {
        let at = format!("{field}.filter.{site}");
        if !two_way {
            report(
                at,
                "row filters are supported on two-way mappings only (direction = \"both\")".into(),
            );
            ok = false;
        } else if !sites.contains(&site) {
            report(at, format!("site {site:?} has no table in this mapping"));
            ok = false;
        } else {
            match Filter::parse(text) {
                Ok(filter) => {
                    if let Some(columns) = columns
                        && let Some((column, _)) = filter
                            .columns()
                            .into_iter()
                            .find(|(c, _)| !columns.iter().any(|l| l == c))
                    {
                        report(
                            at,
                            format!("column {column:?} is not in this mapping's columns list"),
                        );
                        ok = false;
                    }
                    filters.insert(site.clone(), filter);
                }
                Err(error) => {
                    report(at, format!("{text:?} is not a filter: {error}"));
                    ok = false;
                }
            }
        }
    }
    ok.then_some(filters)
}

/// `duplex check`'s findings on a mapping's row filters, given each site's table: every
/// column a filter names exists on every site, and each literal is of the column's kind.
pub fn check(mapping: &Mapping, tables: &[(&str, &TableSchema)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (filtered, filter) in &mapping.filters {
        for (column, literals) in filter.columns() {
            for (site, schema) in tables {
                let local = mapping.site_column(site, column);
                let what = format!("filter of {filtered}: {site}:{}.{local}", schema.name.name);
                let Some(found) = schema.column(local) else {
                    findings.push(Finding::fail(
                        format!("{what} does not exist"),
                        format!(
                            "name a replicated column in filter.{filtered} of mapping {}",
                            mapping.name
                        ),
                    ));
                    continue;
                };
                let numeric = numeric(&found.type_name);
                let boolean = matches!(found.type_name.as_str(), "bool" | "bit");
                let wrong: Vec<String> = literals
                    .iter()
                    .filter(|l| match l {
                        Value::Text(_) => numeric || boolean,
                        Value::Bool(_) => !boolean && found.type_name != "tinyint",
                        _ => !numeric,
                    })
                    .map(|l| normal(l))
                    .collect();
                if !wrong.is_empty() {
                    findings.push(Finding::fail(
                        format!("{what} is {}, compared with {}", found.declared, wrong.join(", ")),
                        format!("compare {column} with values of its type in filter.{filtered} of mapping {}", mapping.name),
                    ));
                }
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(channel: &str, total: i64) -> Row {
        [
            ("channel", Value::Text(channel.into())),
            ("total", Value::Int(total)),
            ("note", Value::Null),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn filters_parse_and_evaluate_like_sql() {
        let web =
            Filter::parse("channel = 'web' AND (total > 10 OR channel IN ('x', 'y'))").unwrap();
        assert!(web.matches(&row("web", 11)));
        assert!(!web.matches(&row("web", 10)));
        assert!(!web.matches(&row("pos", 11)));
        let f = Filter::parse("NOT channel NOT IN ('web') and note is null").unwrap();
        assert!(f.matches(&row("web", 1)));
        // A comparison with NULL is unknown, and so is its negation.
        assert!(!Filter::parse("note = 'a'").unwrap().matches(&row("web", 1)));
        assert!(
            !Filter::parse("NOT note = 'a'")
                .unwrap()
                .matches(&row("web", 1))
        );
        assert!(
            Filter::parse("note IS NOT NULL OR total >= -1.5")
                .unwrap()
                .matches(&row("a", 0))
        );
        assert!(
            Filter::parse("channel = 'it''s'")
                .unwrap()
                .matches(&row("it's", 0))
        );
        for (bad, says) in [
            ("channel = ", "expected a value"),
            ("channel == 'web'", "expected a value"),
            ("(total > 1", "parenthesis is not closed"),
            ("total > 1 total", "unexpected total"),
            (
                "channel LIKE 'w%'",
                "expected a comparison, IN or IS after channel",
            ),
            ("channel = 'web", "not closed"),
            ("total ; 1", "';' is not part of a filter"),
        ] {
            let error = Filter::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn bad_filters_in_the_configuration_are_named() {
        let raw: BTreeMap<String, String> = [
            ("store", "channel = 'web'"),
            ("erp", "channel ="),
            ("pos", "total > 1"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        let (store, erp) = ("store".to_owned(), "erp".to_owned());
        let columns = vec!["id".to_owned(), "total".to_owned()];
        let mut problems = Vec::new();
        let parsed = parse_all(
            "m",
            &raw,
            &[&store, &erp],
            Some(&columns),
            true,
            &mut |f, m| problems.push(format!("{f}: {m}")),
        );
        assert!(parsed.is_none());
        let text = problems.join("\n");
        for expected in [
            "m.filter.store: column \"channel\" is not in this mapping's columns list",
            "m.filter.erp: \"channel =\" is not a filter: expected a value",
            "m.filter.pos: site \"pos\" has no table in this mapping",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
        let mut problems = Vec::new();
        assert!(
            parse_all("m", &raw, &[&store], None, false, &mut |f, m| problems
                .push(format!("{f}: {m}")))
            .is_none()
        );
        assert!(
            problems.iter().all(|p| p.contains("two-way mappings only")),
            "{problems:?}"
        );
    }
}
