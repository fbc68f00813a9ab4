//! The `runfleet` binary: parses the command line, builds the pieces, calls
//! them. Thin by design: behaviour lives in the library crates.
//!
//! **Never**: decides what to launch or terminate (the planner does; the one
//! exception is `launch` ending its own run when its `--timeout` passes or
//! it is interrupted), prints a secret, or writes anything but
//! machine-readable output to stdout.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use runfleet_core::config::{Config, SecretSource, parse};

#[derive(Parser)]
#[command(
    name = "runfleet",
    version,
    about = "One fresh, ephemeral EC2 runner per GitHub Actions job."
)]
struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "RUNFLEET_CONFIG",
        default_value = "runfleet.toml"
    )]
    config: PathBuf,
    /// Log format on stderr (default: text on a terminal, json otherwise).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole controller against the built-in simulated GitHub and EC2.
    Demo {
        /// Jobs to queue.
        #[arg(long, default_value_t = 200)]
        jobs: usize,
        /// Seed of the simulation (same seed, same run).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fault probability in [0, 1] (5xx, throttling, capacity, lost webhooks, restarts, ...).
        #[arg(long, default_value_t = 0.0)]
        faults: f64,
        /// Print one JSON summary object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Long-running autoscaler: webhooks, reconciler, /v1 API, metrics, status page.
    Serve,
    /// Launch one ephemeral runner now (the broker step).
    Launch {
        /// Pool to launch in.
        #[arg(long)]
        pool: String,
        /// Repository (OWNER/NAME) the runner registers with.
        #[arg(long)]
        repo: String,
        /// `Name` tag of the instance (default `runfleet-<pool>`).
        #[arg(long)]
        name: Option<String>,
        /// Return only once the runner is online.
        #[arg(long)]
        wait: bool,
        /// Give up (and clean up) after this long, e.g. "5m" (default: server.boot_timeout).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Ask a remote `runfleet serve` for a runner (POST /v1/start).
    Start {
        /// Base URL of the runfleet server, e.g. https://runfleet.example.com.
        #[arg(long)]
        url: String,
        /// Repository (OWNER/NAME) the runner is for.
        #[arg(long)]
        repo: String,
        /// Pool to launch in (default: the server's choice).
        #[arg(long)]
        pool: Option<String>,
        /// `Name` tag of the instance, when the server accepts one.
        #[arg(long)]
        name: Option<String>,
        /// Return only once the runner is online.
        #[arg(long)]
        wait: bool,
        /// Stop waiting after this long, e.g. "5m" (default "10m").
        #[arg(long)]
        timeout: Option<String>,
        /// Audience of the GitHub Actions OIDC token.
        #[arg(long, default_value = "runfleet")]
        audience: String,
        /// Authenticate with the GitHub token in this environment variable
        /// (token-and-HMAC scheme) instead of an OIDC token.
        #[arg(long, value_name = "NAME")]
        github_token_env: Option<String>,
    },
    /// Verify config, GitHub credentials and every AWS permission the config needs.
    Check,
    /// Terminate this fleet's instances that nothing needs.
    Reap {
        #[arg(long)]
        dry_run: bool,
    },
    /// Pools, runners, instances and queued jobs as the store sees them.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Replay a job trace against the configured pools in the simulator
    /// (no credentials, no network): queue times, instance-hours and cost,
    /// as configured and with other `warm` and `market` settings.
    Simulate {
        /// CSV: queued (seconds or RFC 3339), labels, duration seconds[, repo].
        #[arg(long)]
        trace: PathBuf,
        /// CSV: instance_type, on_demand, spot (USD per hour), over the built-in table.
        #[arg(long)]
        prices: Option<PathBuf>,
        /// RFC 3339 time the trace starts at (warm schedules are read
        /// against it); default: the trace's earliest time, or
        /// 1970-01-01T00:00:00Z for a trace of seconds.
        #[arg(long)]
        start: Option<String>,
        /// Seed of the simulation.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate the config; errors name the key and the line.
    Validate,
}

/// Environment variables and files, for `env:` and `file:` values.
struct ProcessSecrets;

impl SecretSource for ProcessSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
}

fn load_config(path: &PathBuf) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    parse(&text, &ProcessSecrets).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `RUNFLEET_LOG` overrides the filter (e.g. `RUNFLEET_LOG=runfleet=debug`).
fn init_logs(format: Option<LogFormat>, default_filter: &str) {
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    // The SDK's wire-level TRACE lines can hold request and response bodies:
    // they are capped whatever RUNFLEET_LOG asks for. The caps are directives
    // at DEBUG, so they are added only when something asks for TRACE: added
    // to a quieter filter they would turn the SDK's DEBUG lines on.
    let wanted = std::env::var("RUNFLEET_LOG").unwrap_or_else(|_| default_filter.to_string());
    let with_caps = |f: &str| {
        let asks_trace = f.to_ascii_lowercase().contains("trace")
            || f.split(',')
                .any(|d| d.rsplit('=').next().map(str::trim) == Some("5"));
        if asks_trace {
            format!("{f},{}", runfleet_aws::LOG_CAPS)
        } else {
            f.to_string()
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(with_caps(&wanted))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(with_caps(default_filter)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

mod demo;
mod launch;
mod memory;
mod ops;
mod progress;
mod serve;
mod simulate;
mod start;
mod status;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's simulated faults would flood the terminal with warnings
    // that are the point of the exercise, not news: errors only there.
    // `launch` and `start` show their own progress on stderr: warnings only.
    let default_filter = match cli.command {
        Command::Demo { .. } | Command::Simulate { .. } => "error",
        Command::Launch { .. } | Command::Start { .. } => "warn",
        _ => "info",
    };
    init_logs(cli.log_format, default_filter);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo {
            jobs,
            seed,
            faults,
            json,
        } => demo::run(jobs, seed, faults, json),
        Command::Config {
            command: ConfigCommand::Validate,
        } => {
            let cfg = load_config(&cli.config)?;
            println!(
                "{}: valid (fleet {}, {} pool{}: {})",
                cli.config.display(),
                cfg.fleet,
                cfg.pools.len(),
                if cfg.pools.len() == 1 { "" } else { "s" },
                cfg.pools
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => serve::run(load_config(&cli.config)?),
        Command::Launch {
            pool,
            repo,
            name,
            wait,
            timeout,
        } => launch::run(
            load_config(&cli.config)?,
            launch::LaunchArgs {
                pool,
                repo,
                name,
                wait,
                timeout,
            },
        ),
        Command::Start {
            url,
            repo,
            pool,
            name,
            wait,
            timeout,
            audience,
            github_token_env,
        } => start::run(start::StartArgs {
            url,
            repo,
            pool,
            name,
            wait,
            timeout,
            audience,
            github_token_env,
        }),
        Command::Check => ops::check(load_config(&cli.config)?),
        Command::Reap { dry_run } => ops::reap(load_config(&cli.config)?, dry_run),
        Command::Status { json } => status::run(load_config(&cli.config)?, json),
        Command::Simulate {
            trace,
            prices,
            start,
            seed,
            json,
        } => simulate::run(
            &cli.config,
            &trace,
            prices.as_deref(),
            start.as_deref(),
            seed,
            json,
        ),
    }
}
