//! The rule tables of `duplex check` between SQL Server and PostgreSQL (see [`crate::typemap`]
//! for what a rule says). SQL Server types are `sys.types` names, as the catalog probe reads
//! them; the conversions themselves are [`super::to_value`] and [`super::to_param`], which
//! refuse any value a column cannot hold exactly. Between SQL Server and MySQL/MariaDB no table
//! is built yet: the configuration refuses such mappings.

use crate::typemap::{Fidelity, TypeRule};

const fn rule(
    source: &'static str,
    targets: &'static [&'static str],
    fidelity: Fidelity,
) -> TypeRule {
    TypeRule {
        source,
        targets,
        fidelity,
    }
}

const EXACT: Fidelity = Fidelity::Exact;
const PG_TEXT: &[&str] = &["text", "varchar", "bpchar"];
const MSSQL_TEXT: &[&str] = &["nvarchar", "nchar", "ntext"];
const NOT_READ: Fidelity = Fidelity::Refused(
    "the SQL Server reader does not decode this type: leave the column out of the mapping",
);

/// SQL Server -> PostgreSQL.
pub const MSSQL_TO_POSTGRES: &[TypeRule] = &[
    rule("bit", &["bool"], EXACT),
    rule("tinyint", &["int2", "int4", "int8", "numeric"], EXACT),
    rule("smallint", &["int2", "int4", "int8", "numeric"], EXACT),
    rule("int", &["int4", "int8", "numeric"], EXACT),
    rule("bigint", &["int8", "numeric"], EXACT),
    rule("real", &["float4", "float8"], EXACT),
    rule("float", &["float8"], EXACT),
    rule("decimal", &["numeric"], EXACT),
    rule("numeric", &["numeric"], EXACT),
    rule(
        "money",
        &["numeric"],
        Fidelity::Converted("read as decimal(19,4), every digit kept"),
    ),
    rule(
        "smallmoney",
        &["numeric"],
        Fidelity::Converted("read as decimal(10,4), every digit kept"),
    ),
    rule("char", PG_TEXT, EXACT),
    rule("varchar", PG_TEXT, EXACT),
    rule("nchar", PG_TEXT, EXACT),
    rule("nvarchar", PG_TEXT, EXACT),
    rule("text", PG_TEXT, EXACT),
    rule("ntext", PG_TEXT, EXACT),
    rule("binary", &["bytea"], EXACT),
    rule("varbinary", &["bytea"], EXACT),
    rule("image", &["bytea"], EXACT),
    rule("uniqueidentifier", &["uuid"], EXACT),
    rule("date", &["date"], EXACT),
    rule(
        "time",
        &["time"],
        Fidelity::Converted(
            "microseconds; a time(7) value with a non-zero seventh digit stops the link",
        ),
    ),
    rule(
        "datetime2",
        &["timestamp"],
        Fidelity::Converted(
            "microseconds; a datetime2(7) value with a non-zero seventh digit stops the link",
        ),
    ),
    rule(
        "datetimeoffset",
        &["timestamptz"],
        Fidelity::Converted("the instant is kept, the offset is not"),
    ),
    rule(
        "datetime",
        &["timestamp"],
        Fidelity::Converted("1/300 s read as the nearest microsecond"),
    ),
    rule("smalldatetime", &["timestamp"], EXACT),
    rule("xml", &["text", "xml"], Fidelity::Converted("as its text")),
    rule("sql_variant", &[], NOT_READ),
    rule("hierarchyid", &[], NOT_READ),
    rule("geometry", &[], NOT_READ),
    rule("geography", &[], NOT_READ),
    rule("timestamp", &[], NOT_READ),
];

/// PostgreSQL -> SQL Server.
pub const POSTGRES_TO_MSSQL: &[TypeRule] = &[
    rule("bool", &["bit"], EXACT),
    rule(
        "int2",
        &["smallint", "int", "bigint", "decimal", "numeric"],
        EXACT,
    ),
    rule("int4", &["int", "bigint", "decimal", "numeric"], EXACT),
    rule("int8", &["bigint", "decimal", "numeric"], EXACT),
    rule("float4", &["real", "float"], EXACT),
    rule(
        "float8",
        &["float"],
        Fidelity::Converted("NaN and ±Infinity cannot be stored and stop the link when met"),
    ),
    rule(
        "numeric",
        &["decimal", "numeric"],
        Fidelity::Converted(
            "up to 38 digits; a wider value, NaN or an infinity stops the link when met",
        ),
    ),
    rule("text", MSSQL_TEXT, EXACT),
    rule("varchar", MSSQL_TEXT, EXACT),
    rule("bpchar", MSSQL_TEXT, EXACT),
    rule("bytea", &["varbinary", "binary", "image"], EXACT),
    rule("uuid", &["uniqueidentifier"], EXACT),
    rule(
        "date",
        &["date"],
        Fidelity::Converted("years 1 to 9999; others stop the link when met"),
    ),
    rule("time", &["time"], EXACT),
    rule(
        "timestamp",
        &["datetime2"],
        Fidelity::Converted("years 1 to 9999; others stop the link when met"),
    ),
    rule(
        "timestamptz",
        &["datetimeoffset", "datetime2"],
        Fidelity::Converted("the instant, at offset +00:00 (datetime2: in UTC)"),
    ),
    rule("json", MSSQL_TEXT, Fidelity::Converted("as its text")),
    rule(
        "jsonb",
        MSSQL_TEXT,
        Fidelity::Converted("as its text (jsonb's normal form)"),
    ),
];
