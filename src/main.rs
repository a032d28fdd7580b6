//! The `matyan` binary: parses the command line, sets up logging, and runs the chosen command.

mod cli;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

/// jemalloc unless built without the `jemalloc` feature (`matyan::alloc`).
#[global_allocator]
static GLOBAL: matyan::alloc::Global = matyan::alloc::GLOBAL;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        // A maintenance command has reported its end already; it only sets the status.
        Err(e) => match e.downcast_ref::<cli::ExitStatus>() {
            Some(status) => ExitCode::from(status.0),
            None => {
                tracing::error!(error = format!("{e:#}"), "command failed");
                ExitCode::FAILURE
            }
        },
    }
}
