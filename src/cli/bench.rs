//! `matyan bench ...`: benchmarks that print figures, each against a baseline in the same run.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use matyan::bench::storage::{StorageBenchConfig, run_all};

/// `matyan bench ...`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Write N metric points of one run through the Matyan layout in budgeted transactions, read
    /// the series back; on memory (baseline), fjall and redb.
    Storage(StorageArgs),
}

#[derive(Debug, Args)]
struct StorageArgs {
    /// Points to write.
    #[arg(long, default_value_t = 1_000_000)]
    points: u64,
    /// Byte budget per transaction (FoundationDB's accounting; its limit is 10,000,000).
    #[arg(long, default_value_t = 5_000_000)]
    txn_budget_bytes: usize,
    /// Scratch directory for the embedded stores [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs `matyan bench ...`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Storage(a) => storage(a).await,
    }
}

async fn storage(args: StorageArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.points > 0, "--points must be positive");
    anyhow::ensure!(
        (100_000..=10_000_000).contains(&args.txn_budget_bytes),
        "--txn-budget-bytes must be between 100000 and 10000000"
    );
    let scratch = args.dir.is_none();
    let dir = match args.dir {
        Some(d) => d,
        None => tempfile_dir()?,
    };
    let cfg = StorageBenchConfig { points: args.points, txn_budget_bytes: args.txn_budget_bytes, ..Default::default() };
    eprintln!("writing {} points per backend under {} ...", cfg.points, dir.display());
    let reports = run_all(&dir, &cfg).await.context("benchmark failed")?;
    println!(
        "{:<8} {:>10} {:>6} {:>10} {:>14} {:>10} {:>12}",
        "backend", "points", "txns", "write_s", "points_per_s", "read_s", "bytes_per_pt"
    );
    for r in &reports {
        println!(
            "{:<8} {:>10} {:>6} {:>10.3} {:>14.0} {:>10.3} {:>12.1}",
            r.backend,
            r.points,
            r.txns,
            r.write_secs,
            r.write_rate(),
            r.read_secs,
            r.bytes_per_point()
        );
    }
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("matyan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
