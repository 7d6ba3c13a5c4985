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
    Run(sluice::cli::RunArgs),
    /// Serve webhooks, events and schedules for every workspace.
    Serve(sluice::cli::ServeArgs),
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
        Command::Run(args) => sluice::cli::run(args),
        Command::Serve(args) => sluice::cli::serve(args),
        Command::Validate { dirs } => sluice::cli::validate(&dirs),
    };
    ExitCode::from(code)
}
