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
#[command(
    name = "duplex",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DUPLEX_GIT_COMMIT"), ")"),
    about
)]
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
    /// How the log on standard error is written: `text` for people, `json` (one object per
    /// line, with the fields of the event and of its spans) for log collectors.
    #[arg(
        long,
        env = "DUPLEX_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The log's format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// `duplex run --role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Read the sources, publish to the bus.
    Reader,
    /// Apply from the bus into `--site`.
    Writer,
    /// The merge engine's coordinator of two-way mappings, fed by the bus (one process).
    Coordinator,
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
        /// With a `[bus]` in the configuration: `reader` reads every source and publishes its
        /// transactions to the bus; `writer` (with --site) applies them to one target site;
        /// `coordinator` runs the merge engine of two-way mappings from what the readers
        /// published (one coordinator per configuration).
        #[arg(long, value_enum, requires_if("writer", "site"))]
        role: Option<RoleArg>,
        /// The target site a `--role writer` applies to.
        #[arg(long, value_name = "SITE", requires = "role")]
        site: Option<String>,
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
        /// Parallel copy workers (default: this machine's cores, at least 2, at most 8).
        #[arg(long, default_value_t = crate::backfill::default_jobs())]
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
    /// Show each link's state, targets' committed rows and transactions, and lag, as the
    /// running `duplex run` reports them. Exits 0 healthy, 1 degraded, 2 stopped (or not
    /// running).
    Status {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Print again every this many seconds until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Compare every one-way mapping's target with its source, and every site of a two-way
    /// mapping with its first, row by row by meaning, while `duplex run` replicates (no
    /// locks); rows still in flight are re-checked, not reported.
    /// Exits 0 when every mapping is equal, 1 when something differs, 2 on a configuration
    /// error.
    Verify {
        /// Only this mapping (repeatable); all mappings when omitted.
        #[arg(long = "mapping", value_name = "NAME")]
        mappings: Vec<String>,
        /// Parallel range readers per mapping.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// One JSON object per mapping instead of the report.
        #[arg(long)]
        json: bool,
        /// Make each target equal to its source: write the source's rows over what differs
        /// (and delete rows the source does not have), through duplex's normal write path.
        #[arg(long)]
        repair: bool,
        /// With --repair of a two-way mapping: the site whose rows every site is made to hold
        /// (written by the running merge engine, logged as a resolved conflict).
        #[arg(long, value_name = "SITE")]
        take: Option<String>,
        /// How long, in seconds, to wait for a target to apply past the source's position
        /// before a differing row is re-read.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        wait: u64,
        /// How many times a differing row is read again (a row still changing on the source
        /// in every round is reported as not compared).
        #[arg(long, value_name = "N", default_value_t = 4)]
        rounds: u32,
        /// Rows per key range.
        #[arg(long, default_value_t = crate::verify::DEFAULT_CHUNK_ROWS, hide = true)]
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
    /// Remove what this deployment (this state directory) created on the sites: PostgreSQL
    /// replication slots and publications, its rows of duplex.positions and duplex.claims, and
    /// the duplex schema/database when no other deployment's rows are in it. Refused while a
    /// `run` uses the state directory or a slot is streamed from.
    Teardown {
        /// Only this site.
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the shell completion script for `shell` (e.g. `duplex completions bash >
    /// /etc/bash_completion.d/duplex`); needs no configuration.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// List the changes targets refused under mappings with `on_error = "dead-letter"`, or
    /// write them again once the cause is fixed (reads the state store: stop `duplex run`).
    DeadLetters {
        /// Print JSON instead of the list.
        #[arg(long)]
        json: bool,
        /// Only this mapping's.
        #[arg(long, value_name = "NAME")]
        mapping: Option<String>,
        /// What to do; lists the dead letters when omitted.
        #[command(subcommand)]
        action: Option<DeadLettersAction>,
    },
}

/// `duplex dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLettersAction {
    /// Write the dead letters into their targets, in order, each row's letters until one is
    /// refused again (exits 1 when some still are).
    Retry,
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
        Command::Check
        | Command::Conflicts { .. }
        | Command::Status { .. }
        | Command::DeadLetters { .. }
        | Command::Teardown { .. }
        | Command::Verify { .. }
        | Command::Completions { .. } => "warn",
        Command::Run { .. } | Command::Backfill { .. } => "info",
    };
    if let Command::Completions { shell } = cli.command {
        let mut text = Vec::new();
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "duplex",
            &mut text,
        );
        crate::output::stdout(&String::from_utf8_lossy(&text));
        return ExitCode::SUCCESS;
    }
    let filter =
        EnvFilter::try_from_env("DUPLEX_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            report_error(&error);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            crate::output::stderr(&format!("error: cannot start the async runtime: {error}\n"));
            return ExitCode::FAILURE;
        }
    };
    let expand = match &cli.command {
        Command::Run { .. } => Some(true),
        Command::Backfill { .. }
        | Command::DeadLetters {
            action: Some(_), ..
        } => Some(false),
        _ => None,
    };
    let config = match expand {
        None => config,
        Some(retry) => match runtime.block_on(expanded(&config, retry)) {
            Ok(config) => config,
            Err(error) => {
                report_error(&error);
                return ExitCode::FAILURE;
            }
        },
    };
    match cli.command {
        Command::Check => {
            let report = runtime.block_on(check::run(&config));
            crate::output::stdout(&report.to_string());
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
            role,
            site,
        } => match runtime.block_on(crate::run::run(
            &config,
            &crate::run::RunOptions {
                accept_schema_change,
                trust_slot,
                take_over_from,
                role: role.map(|role| match (role, site) {
                    (RoleArg::Writer, Some(site)) => crate::bus::Role::Writer(site),
                    (RoleArg::Coordinator, _) => crate::bus::Role::Coordinator,
                    _ => crate::bus::Role::Reader,
                }),
            },
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                report_error(&error);
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
                    report_error(&error);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json, watch } => runtime.block_on(status(&config, json, watch)),
        Command::Verify {
            mappings,
            jobs,
            json,
            repair,
            take,
            wait,
            rounds,
            chunk_rows,
        } => {
            let options = crate::verify::VerifyOptions {
                mappings,
                jobs,
                chunk_rows,
                repair,
                take,
                wait: std::time::Duration::from_secs(wait),
                rounds: rounds.max(1),
            };
            runtime.block_on(crate::verify::command(&config, &options, json))
        }
        Command::Conflicts { json, held, action } => match action {
            None => match runtime.block_on(crate::conflicts::list(&config)) {
                Ok(mut records) => {
                    if held {
                        records.retain(|(_, r)| r.status == duplex_state::ConflictStatus::Held);
                    }
                    if json {
                        crate::output::stdout(&format!("{:#}\n", crate::conflicts::json(&records)));
                    } else {
                        crate::output::stdout(&crate::conflicts::table(&records));
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    report_error(&error);
                    ExitCode::FAILURE
                }
            },
            Some(ConflictsAction::Resolve { id, take }) => {
                match runtime.block_on(crate::conflicts::resolve(&config, id, &take)) {
                    Ok(what) => {
                        crate::output::stdout(&format!("{what}\n"));
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        report_error(&error);
                        ExitCode::FAILURE
                    }
                }
            }
        },
        Command::DeadLetters {
            json,
            mapping,
            action,
        } => match action {
            None => match crate::dead_letters::list(&config, mapping.as_deref()) {
                Ok(letters) => {
                    if json {
                        crate::output::stdout(&format!(
                            "{:#}\n",
                            crate::dead_letters::json(&letters)
                        ));
                    } else {
                        crate::output::stdout(&crate::dead_letters::table(&letters));
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    report_error(&error);
                    ExitCode::FAILURE
                }
            },
            Some(DeadLettersAction::Retry) => {
                match runtime.block_on(crate::dead_letters::retry(&config, mapping.as_deref())) {
                    Ok(report) => {
                        let mut text = String::new();
                        for (id, error) in &report.refused {
                            text.push_str(&format!(
                                "dead letter #{id} was refused again: {error}\n"
                            ));
                        }
                        text.push_str(&format!(
                            "{} dead letter(s) written, {} refused again, {} waiting behind a refused one\n",
                            report.written,
                            report.refused.len(),
                            report.waiting
                        ));
                        crate::output::stdout(&text);
                        if report.refused.is_empty() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        }
                    }
                    Err(error) => {
                        report_error(&error);
                        ExitCode::FAILURE
                    }
                }
            }
        },
        Command::Completions { .. } => ExitCode::SUCCESS,
        Command::Teardown { site, dry_run } => {
            let options = crate::teardown::TeardownOptions { site, dry_run };
            match runtime.block_on(crate::teardown::teardown(&config, &options)) {
                Ok(report) => {
                    crate::output::stdout(&report);
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    report_error(&error);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The configuration with its schema-wide mappings expanded (see [`crate::expand`]), saying
/// what each stands for; with `retry` (`run`), an unreachable site is waited for with backoff.
async fn expanded(config: &Config, retry: bool) -> Result<Config, crate::expand::ExpandError> {
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        backoff.attempt_started();
        match crate::expand::expand(config).await {
            Ok((config, report)) => {
                for expanded in report {
                    tracing::info!(mapping = %expanded.mapping, tables = ?expanded.tables, "schema-wide mapping expanded: one mapping <mapping>.<table> per table");
                    for (table, sites) in &expanded.one_sided {
                        tracing::warn!(mapping = %expanded.mapping, %table, present_on = ?sites, "a table only some sites of a schema-wide mapping have is not replicated: create it on the others (and restart duplex), or exclude it");
                    }
                }
                return Ok(config);
            }
            Err(error) if retry && error.is_transient() => {
                let delay = backoff.failed();
                tracing::warn!(error = %chain(&error), "cannot expand a schema-wide mapping yet (a site is unreachable); retrying in {delay:.1?}");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Reports why a command failed: one ERROR event of the log (text, or a JSON object with
/// `--log-format json`) on standard error, the same for every command and for configuration
/// errors.
fn report_error(error: &dyn std::error::Error) {
    tracing::error!("{}", chain(error));
}

/// `duplex status`, once or every `watch` seconds until Ctrl-C; the exit code is the last
/// status's.
async fn status(config: &Config, json: bool, watch: Option<u64>) -> ExitCode {
    loop {
        let code = match crate::status::status(config).await {
            Ok(status) => {
                if watch.is_some() && std::io::stdout().is_terminal() {
                    crate::output::stdout("\x1b[2J\x1b[H");
                }
                if json {
                    match serde_json::to_string_pretty(&status) {
                        Ok(text) => crate::output::stdout(&format!("{text}\n")),
                        Err(error) => crate::output::stderr(&format!("error: {error}\n")),
                    }
                } else {
                    crate::output::stdout(&crate::status::table(&status));
                }
                status.health.code()
            }
            Err(error) => {
                report_error(&error);
                ExitCode::from(2)
            }
        };
        let Some(seconds) = watch else {
            return code;
        };
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(seconds.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return code,
        }
    }
}
