//! Conflicts decided column by column (`[mappings.column_conflict]`), as pure functions.
//!
//! For two concurrent updates of a row, every column with a [`ColumnPolicy`] is decided on
//! its own: `delta` takes the common ancestor's value plus each side's change relative to it,
//! `precedence` the value ranked later, `max` / `min` the greater / smaller value. The other
//! columns, and any policied column the policy cannot decide (a value not in the precedence
//! list, a delta without the ancestor's value), are left to the mapping's row policy
//! ([`merge::resolve`]) on images in which the decided columns are already settled.
//!
//! The ancestor is the version the local change was made on (its before-image, or the image
//! the engine recorded for the version the site held). That version is always one the engine
//! propagated or the site's own earlier change, so its history is contained in the newest
//! version's: every version's value is the initial value plus the changes in its history, and
//! `newest + (local - ancestor)` adds exactly the local change, once, however many sites and
//! however long the chain of conflicts (the simulation at the bottom checks this).

use std::cmp::Ordering;

use duplex_connectors::{Decimal, Row, Value};

use super::merge::{self, Outcome, Version};
use super::rows::normal;
use crate::column_policy::ColumnPolicy;
use crate::config::ConflictPolicy;

/// Resolves a conflict between two concurrent versions: the columns of `columns` by their
/// policies, the rest by the row `policy` (see the module documentation). Both versions'
/// `before` is the common ancestor's image. Deletes and inserts on either side go to the row
/// policy whole, except that `precedence`, `max` and `min` need no ancestor.
pub fn resolve(
    policy: &ConflictPolicy,
    columns: &[(String, ColumnPolicy)],
    priority: &[String],
    a: &Version,
    b: &Version,
) -> Outcome {
    let (Some(after_a), Some(after_b)) = (a.after, b.after) else {
        return merge::resolve(policy, priority, a, b);
    };
    if columns.is_empty() {
        return merge::resolve(policy, priority, a, b);
    }
    let base = a.before.or(b.before);
    let mut settled: Vec<(&str, Value)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (column, column_policy) in columns {
        let (Some(va), Some(vb)) = (after_a.get(column), after_b.get(column)) else {
            continue;
        };
        match decide(
            column_policy,
            base.and_then(|r| r.get(column)),
            (a.site, va),
            (b.site, vb),
        ) {
            Ok((value, note)) => {
                notes.push(format!("{column} {}: {note}", column_policy.name()));
                settled.push((column, value));
            }
            Err(why) => notes.push(format!(
                "{column} {}: {why}, the row policy decides",
                column_policy.name()
            )),
        }
    }
    let settle = |row: &Row| -> Row {
        row.iter()
            .map(|(column, value)| {
                let value = settled
                    .iter()
                    .find(|(c, _)| *c == column)
                    .map_or(value, |(_, v)| v);
                (column.to_owned(), value.clone())
            })
            .collect()
    };
    let (settled_a, settled_b) = (settle(after_a), settle(after_b));
    let settled_base = base.map(settle);
    let rest = merge::resolve(
        policy,
        priority,
        &Version {
            after: Some(&settled_a),
            before: settled_base.as_ref(),
            ..*a
        },
        &Version {
            after: Some(&settled_b),
            before: settled_base.as_ref(),
            ..*b
        },
    );
    match rest {
        Outcome::Write { row, decision } => {
            let others = if settled_a == settled_b {
                "other columns the same on both".to_owned()
            } else {
                format!("other columns: {decision}")
            };
            notes.push(others);
            Outcome::Write {
                row,
                decision: notes.join("; "),
            }
        }
        Outcome::Hold => Outcome::Hold,
    }
}

/// One column's value by its policy, with a note for the conflict log, or why the policy
/// cannot decide it.
fn decide(
    policy: &ColumnPolicy,
    base: Option<&Value>,
    (site_a, a): (&str, &Value),
    (site_b, b): (&str, &Value),
) -> Result<(Value, String), String> {
    let show = normal;
    match policy {
        ColumnPolicy::Delta => {
            let base = match base {
                Some(v) if !matches!(v, Value::Unchanged) => v,
                _ => return Err("the value both sides changed from is not known".into()),
            };
            let value = delta(base, a, b)?;
            let note = format!(
                "from {}: {site_a} {}, {site_b} {} = {}",
                show(base),
                show(a),
                show(b),
                show(&value)
            );
            Ok((value, note))
        }
        ColumnPolicy::Precedence(list) => {
            let rank = |v: &Value| list.iter().position(|p| normal(p) == normal(v));
            match (rank(a), rank(b)) {
                (Some(ra), Some(rb)) => {
                    let (won, lost) = if ra >= rb { (a, b) } else { (b, a) };
                    Ok((won.clone(), format!("{} over {}", show(won), show(lost))))
                }
                (None, _) => Err(format!("{} is not in the list", show(a))),
                (_, None) => Err(format!("{} is not in the list", show(b))),
            }
        }
        ColumnPolicy::Max | ColumnPolicy::Min => {
            let order = match (a, b) {
                (Value::Null, Value::Null) => Ordering::Equal,
                // NULL is no value: the other side's value is taken.
                (Value::Null, _) => return Ok((b.clone(), format!("{} over NULL", show(b)))),
                (_, Value::Null) => return Ok((a.clone(), format!("{} over NULL", show(a)))),
                _ => compare(a, b)
                    .ok_or_else(|| format!("{} and {} do not compare", show(a), show(b)))?,
            };
            let a_wins = match policy {
                ColumnPolicy::Max => order != Ordering::Less,
                _ => order != Ordering::Greater,
            };
            let (won, lost) = if a_wins { (a, b) } else { (b, a) };
            Ok((won.clone(), format!("{} over {}", show(won), show(lost))))
        }
    }
}

/// A number as `delta` and `max` / `min` see it.
#[derive(Debug, Clone, Copy)]
enum Number {
    /// `mantissa / 10^scale`, exact.
    Exact(i128, u32),
    /// Binary floating point.
    Float(f64),
}

/// Digits an exact number may have, so that sums of three stay inside `i128`.
const MAX_DIGITS: usize = 36;

fn number(value: &Value) -> Option<Number> {
    match value {
        Value::Int(i) => Some(Number::Exact(i128::from(*i), 0)),
        Value::UInt(u) => Some(Number::Exact(i128::from(*u), 0)),
        Value::Float(f) if f.is_finite() => Some(Number::Float(*f)),
        Value::Decimal(d) if d.is_finite() => {
            let text = d.as_str();
            let (int, frac) = text.split_once('.').unwrap_or((text, ""));
            let digits = format!("{int}{frac}");
            if digits.trim_start_matches('-').len() > MAX_DIGITS {
                return None;
            }
            Some(Number::Exact(
                digits.parse().ok()?,
                u32::try_from(frac.len()).ok()?,
            ))
        }
        _ => None,
    }
}

fn to_float(n: Number) -> f64 {
    match n {
        Number::Exact(m, s) => m as f64 / 10f64.powi(s as i32),
        Number::Float(f) => f,
    }
}

fn rescale(m: i128, from: u32, to: u32) -> Option<i128> {
    m.checked_mul(10i128.checked_pow(to - from)?)
}

/// `a + b - base`, in the kind of value `b` is (an integer stays an integer, a decimal keeps
/// the larger scale); an error when a value is not a finite number or the result does not fit.
fn delta(base: &Value, a: &Value, b: &Value) -> Result<Value, String> {
    let not_number = |v: &Value| format!("{} is not a number", normal(v));
    let nb = number(base).ok_or_else(|| not_number(base))?;
    let na = number(a).ok_or_else(|| not_number(a))?;
    let nn = number(b).ok_or_else(|| not_number(b))?;
    let too_big = || "the sum does not fit".to_owned();
    match (nb, na, nn) {
        (Number::Exact(mb, sb), Number::Exact(ma, sa), Number::Exact(mn, sn)) => {
            let scale = sb.max(sa).max(sn);
            let sum = rescale(ma, sa, scale)
                .zip(rescale(mn, sn, scale))
                .zip(rescale(mb, sb, scale))
                .and_then(|((x, y), z)| x.checked_add(y)?.checked_sub(z))
                .ok_or_else(too_big)?;
            match b {
                Value::Decimal(_) => Ok(Value::Decimal(decimal(sum, scale))),
                _ if scale > 0 => Ok(Value::Decimal(decimal(sum, scale))),
                Value::UInt(_) if sum >= 0 => {
                    Ok(Value::UInt(u64::try_from(sum).map_err(|_| too_big())?))
                }
                _ => Ok(Value::Int(i64::try_from(sum).map_err(|_| too_big())?)),
            }
        }
        _ => Ok(Value::Float(to_float(na) + to_float(nn) - to_float(nb))),
    }
}

fn decimal(mantissa: i128, scale: u32) -> Decimal {
    let digits = mantissa.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if mantissa < 0 { "-" } else { "" };
    let text = if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    };
    text.parse().expect("formatted as a decimal")
}

/// The order of two values of comparable kinds: numbers by value, text by its bytes, dates,
/// times and timestamps by time; `None` for anything else.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return match (x, y) {
            (Number::Exact(mx, sx), Number::Exact(my, sy)) => {
                let scale = sx.max(sy);
                Some(rescale(mx, sx, scale)?.cmp(&rescale(my, sy, scale)?))
            }
            _ => to_float(x).partial_cmp(&to_float(y)),
        };
    }
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => Some(x.cmp(y)),
        (Value::Date(x), Value::Date(y)) => Some(x.cmp(y)),
        (Value::Time(x), Value::Time(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (
            Value::Timestamp(_) | Value::TimestampTz(_),
            Value::Timestamp(_) | Value::TimestampTz(_),
        ) => Some(normal(a).cmp(&normal(b))),
        _ => None,
    }
}

#[cfg(test)]
#[path = "column_merge_tests.rs"]
mod tests;
