//! Command-line interface: `duplex --config FILE <command>`.

use crate::report::chain;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::check;
use crate::config::Config;

/// Change-data-capture replication between PostgreSQL and MySQL/MariaDB, both ways.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about)]
pub struct Cli {
    /// The configuration file (TOML).
    #[arg(
        long,
        short,
        env = "DUPLEX_CONFIG",
        default_value = "duplex.toml",
        global = true
    )]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that every site's server settings, privileges and mapped tables are ready for
    /// replication; prints the exact fix for each problem. Exits 0 only when all is ready.
    Check,
    /// Replicate until Ctrl-C or SIGTERM: one-way mappings stream from their source into their
    /// target, two-way mappings run through the merge engine (version vectors, conflict
    /// policies); resumes where it stopped.
    Run {
        /// Accept the current columns of this source table (`schema.table`, repeatable) after
        /// a schema change stopped its link and the targets were changed to match.
        #[arg(long = "accept-schema-change", value_name = "TABLE")]
        accept_schema_change: Vec<String>,
        /// Use this PostgreSQL source site's slot although it is confirmed beyond what duplex
        /// recorded acknowledging (only when the state directory was restored from an older
        /// backup: the slot is then duplex's own; repeatable).
        #[arg(long = "trust-slot", value_name = "SITE")]
        trust_slot: Vec<String>,
        /// Move the two-way merge engine of this deployment (the id its refusal names) to this
        /// state directory: its claims on the sites are taken over and it stops writing. Stop
        /// it first, once it has caught up.
        #[arg(long = "take-over-from", value_name = "DEPLOYMENT")]
        take_over_from: Option<String>,
    },
    /// Copy the mapped tables from their source into empty targets from one consistent
    /// snapshot, and set the position `duplex run` then streams from (no gap, no duplicate).
    /// Resumes an interrupted backfill.
    Backfill {
        /// Only this mapping (repeatable); all mappings when omitted.
        #[arg(long = "mapping", value_name = "NAME")]
        mappings: Vec<String>,
        /// The site to copy from (needed for two-way mappings).
        #[arg(long, value_name = "SITE")]
        from: Option<String>,
        /// Parallel copy workers.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Copy into tables that already hold rows, overwriting rows with the same key.
        #[arg(long)]
        allow_nonempty: bool,
        /// Give up an unfinished backfill of the selected mappings and copy them again from
        /// scratch (empty their target tables first, or pass --allow-nonempty).
        #[arg(long)]
        restart: bool,
        /// Copy again into targets that already stream from the source, after its log lost
        /// their positions (slot gone, binlog purged): makes them row-for-row equal to a new
        /// snapshot (deleting rows the source no longer has) and hands over to `duplex run`
        /// there. With --from SITE: every one-way mapping from SITE.
        #[arg(long)]
        resync: bool,
        /// Rows per key range (the unit of parallelism and of resume).
        #[arg(long, default_value_t = crate::backfill::DEFAULT_CHUNK_ROWS, hide = true)]
        chunk_rows: u64,
    },
    /// List the conflicts the merge engine detected (two-way mappings), or settle a held one.
    Conflicts {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Only the conflicts waiting for a person.
        #[arg(long)]
        held: bool,
        /// What to do; lists the conflicts when omitted.
        #[command(subcommand)]
        action: Option<ConflictsAction>,
    },
}

/// `duplex conflicts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// Settle a held conflict: write the version one site holds to every site (needs `duplex
    /// run` working on the same state directory).
    Resolve {
        /// The conflict's id (`duplex conflicts` lists them).
        id: u64,
        /// The site whose version wins.
        #[arg(long, value_name = "SITE")]
        take: String,
    },
}

/// Runs the CLI and turns the outcome into an exit code: 0 success, 1 not ready / failed,
/// 2 unusable configuration or invocation.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `check` prints its own report; `run` is a long-running service whose log is its voice.
    let default_filter = match cli.command {
        Command::Check | Command::Conflicts { .. } => "warn",
        Command::Run { .. } | Command::Backfill { .. } => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("DUPLEX_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {}", chain(&error));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check => {
            let report = runtime.block_on(check::run(&config));
            print!("{report}");
            if report.ready() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run {
            accept_schema_change,
            trust_slot,
            take_over_from,
        } => match runtime.block_on(crate::run::run(
            &config,
            &crate::run::RunOptions {
                accept_schema_change,
                trust_slot,
                take_over_from,
            },
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{}", chain(&error));
                ExitCode::FAILURE
            }
        },
        Command::Backfill {
            mappings,
            from,
            jobs,
            allow_nonempty,
            restart,
            resync,
            chunk_rows,
        } => {
            let options = crate::backfill::BackfillOptions {
                mappings,
                from,
                jobs,
                allow_nonempty,
                restart,
                chunk_rows: chunk_rows.max(1),
                resync,
            };
            match runtime.block_on(crate::backfill::backfill(&config, &options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{}", chain(&error));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Conflicts { json, held, action } => match action {
            None => match runtime.block_on(crate::conflicts::list(&config)) {
                Ok(mut records) => {
                    if held {
                        records.retain(|(_, r)| r.status == duplex_state::ConflictStatus::Held);
                    }
                    if json {
                        println!("{:#}", crate::conflicts::json(&records));
                    } else {
                        print!("{}", crate::conflicts::table(&records));
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {}", chain(&error));
                    ExitCode::FAILURE
                }
            },
            Some(ConflictsAction::Resolve { id, take }) => {
                match runtime.block_on(crate::conflicts::resolve(&config, id, &take)) {
                    Ok(what) => {
                        println!("{what}");
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("error: {}", chain(&error));
                        ExitCode::FAILURE
                    }
                }
            }
        },
    }
}
