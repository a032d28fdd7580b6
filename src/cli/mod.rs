//! The `matyan` command line: one file per subcommand, dispatched from [`Commands`].

mod api;
mod bench;
mod common;
mod control;
mod control_workers;
mod dev;
mod gateway;
mod ingest;
mod kafka_ingest;
mod kv;
mod maintenance;
mod queue;
mod serve;

pub use maintenance::ExitStatus;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use matyan::config::Config;

/// matyan: the Matyan experiment tracker's backend.
#[derive(Debug, Parser)]
#[command(name = "matyan", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

/// Every subcommand. Add one by adding a file beside this one and a variant here.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run every role in one process on one port: the SDK gateway, ingestion, the REST API,
    /// health probes and metrics, on embedded storage by default.
    Serve(serve::ServeArgs),
    /// The SDK gateway alone: takes the SDK's WebSocket frames and blob uploads and produces
    /// records to the Kafka ingestion topic.
    Gateway(gateway::GatewayArgs),
    /// The HTTP role alone: the REST API, health probes and metrics, with no ingestion pipeline.
    Api(api::ApiArgs),
    /// The Kafka → storage role: consumes the ingestion topic into the configured storage, with
    /// health probes and metrics on `metrics.port`.
    Ingest(ingest::IngestArgs),
    /// The control role alone: consumes the Kafka control-events topic and removes deleted runs'
    /// blobs, with health probes and metrics on `metrics.port`.
    Control(control::ControlArgs),
    /// Inspect the store's keys (`kv dump`).
    Kv(kv::KvArgs),
    /// Print benchmark figures against a baseline of the same run (`bench storage|ingest|query|gateway`).
    Bench(bench::BenchArgs),
    /// Append records to the embedded queue or a Kafka topic (`queue import`).
    Queue(queue::QueueArgs),
    /// Development tools (`dev seed`: demonstration runs for the UI check).
    #[command(hide = true)]
    Dev(dev::DevArgs),
    /// Rebuild every index entry from run data and purge ghost runs (resumable, locked).
    Reindex(maintenance::ReindexArgs),
    /// Finish active runs created more than --timeout-hours ago (resumable, locked).
    FinishStale(maintenance::FinishStaleArgs),
    /// Clear tombstones older than --older-than-hours (resumable, locked).
    CleanupTombstones(maintenance::CleanupTombstonesArgs),
    /// Delete the blobs of every tombstoned run (resumable, locked).
    CleanupOrphanBlobs(maintenance::CleanupOrphanBlobsArgs),
    /// Write runs to an archive file (docs/backup-format.md).
    Backup(maintenance::BackupArgs),
    /// Restore the runs of a backup archive and clear their tombstones (resumable, locked).
    Restore(maintenance::RestoreArgs),
    /// Move the store's data to another layout (`migrate sequences --to chunked|key_per_step`;
    /// online, resumable, locked).
    Migrate(maintenance::MigrateArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Commands::Serve(args) => serve::run(args).await,
            Commands::Gateway(args) => gateway::run(args).await,
            Commands::Api(args) => api::run(args).await,
            Commands::Ingest(args) => ingest::run(args).await,
            Commands::Control(args) => control::run(args).await,
            Commands::Kv(args) => kv::run(args).await,
            Commands::Bench(args) => bench::run(args).await,
            Commands::Queue(args) => queue::run(args).await,
            Commands::Dev(args) => dev::run(args).await,
            Commands::Reindex(args) => maintenance::reindex(args).await,
            Commands::FinishStale(args) => maintenance::finish_stale(args).await,
            Commands::CleanupTombstones(args) => maintenance::cleanup_tombstones(args).await,
            Commands::CleanupOrphanBlobs(args) => maintenance::cleanup_orphan_blobs(args).await,
            Commands::Backup(args) => maintenance::backup(args).await,
            Commands::Restore(args) => maintenance::restore(args).await,
            Commands::Migrate(args) => maintenance::migrate(args).await,
        }
    }
}

/// The listening address and UI flags of the HTTP roles (`serve`, `api`).
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to listen on [default: server.host, i.e. 0.0.0.0].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: server.port, i.e. 53800].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// A matyan-ui build to serve at `/` on the same origin: the `static` directory of the installed
    /// matyan-ui package (or the package directory) [default: ui.dir, i.e. none].
    #[arg(long, value_name = "DIR")]
    pub ui_dir: Option<PathBuf>,
}

impl ListenArgs {
    /// Applies the flags given over the configured `server.host`, `server.port` and `ui.dir`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(host) = &self.host {
            config.server.host = host.clone();
        }
        if let Some(port) = self.port {
            config.server.port = port;
        }
        if let Some(dir) = &self.ui_dir {
            config.ui.dir = dir.clone();
        }
    }
}

/// Flags shared by every command that reads the configuration or touches the embedded store.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML, only the keys it changes); built-in defaults when absent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded store [default: storage.data_dir, i.e. ./matyan-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads defaults, the `--config` file and the environment, applies `--data-dir`, then
    /// `overrides` (the command's own flags), and validates the result.
    pub fn load(&self, overrides: impl FnOnce(&mut Config)) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref(), |var| std::env::var(var).ok())?;
        if let Some(dir) = &self.data_dir {
            config.storage.data_dir = dir.clone();
        }
        overrides(&mut config);
        config.validate()?;
        Ok(config)
    }
}
