//! The `sluice` binary: parses the command line and hands over to [`sluice::cli`].

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A multi-tenant runtime for Prisme.ai DSUL automations with per-workspace limits.
#[derive(Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one automation of a workspace to completion, in process.
    Run {
        /// The automation's slug.
        slug: String,
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The trigger payload, a JSON object whose keys become variables.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The workspace's secrets file (default: <SLUICE_SECRETS>/<workspace>.yml).
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// Print a JSON report: output, emitted events, throttled, duration, error.
        #[arg(long)]
        report: bool,
        /// A settings file (YAML); environment variables win over it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serve webhooks, events and schedules for every workspace.
    Serve {
        /// The workspaces root (default ./automations, or SLUICE_WORKSPACES).
        #[arg(long)]
        workspaces: Option<PathBuf>,
        /// A settings file (YAML); environment variables win over it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The HTTP address (default 127.0.0.1:3003, or SLUICE_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Check workspaces without running them.
    Validate {
        /// Workspace folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let code = match cli.command {
        Command::Run {
            slug,
            workspace,
            payload,
            secrets,
            report,
            config,
        } => sluice::cli::run(sluice::cli::RunArgs {
            slug,
            workspace,
            payload,
            secrets,
            report,
            config,
        }),
        Command::Validate { dirs } => sluice::cli::validate(&dirs),
        Command::Serve {
            workspaces,
            config,
            listen,
        } => sluice::cli::serve(workspaces, config, listen),
    };
    ExitCode::from(code)
}
