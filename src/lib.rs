//! duplex: change-data-capture replication between PostgreSQL and MySQL/MariaDB, both ways.
//!
//! This crate is the engine and the CLI: configuration, the preflight check, one-way links,
//! the two-way merge engine, backfill and the conflict log command. Database specifics live in
//! `duplex-connectors`, durable state in `duplex-state`.

pub mod backfill;
pub mod backoff;
pub mod bus;
pub mod check;
pub mod cli;
pub mod column_policy;
pub mod config;
pub mod conflicts;
pub mod dead_letters;
pub mod engine;
pub mod expand;
pub mod filter;
pub mod link;
pub mod metrics;
pub mod output;
pub mod report;
pub mod routes;
pub mod run;
pub mod shape;
pub mod shutdown;
pub mod status;
pub mod teardown;
pub mod telemetry;
pub mod value_map;
pub mod verify;
