//! `matyan dev seed`: writes a few demonstration runs straight into the store through the storage
//! layout, for the UI check (`tests/ui/check.sh`) and for trying the UI by hand.
//!
//! Hidden from `--help`: it is a development tool. The runs are deterministic (fixed hashes,
//! times and values); seeding twice rewrites the same keys. Run it before `matyan serve` on the
//! same data directory (the embedded store is opened by one process at a time).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use matyan::app::open_database;
use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::RetryOptions;
use matyan::storage::layout::{EntityKind, Layout, LayoutError, SeqId, SeqWrite, TraceInfo};
use matyan::storage::value::{self, Value};
use serde_json::json;

use super::ConfigArgs;

/// `matyan dev ...`.
#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Write demonstration runs (hparams, an experiment, a tag, `loss` and `acc` metrics).
    Seed(SeedArgs),
}

#[derive(Debug, Args)]
struct SeedArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// How many runs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Steps per metric.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    steps: u32,
}

/// Runs `matyan dev ...`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    match args.command {
        DevCommand::Seed(a) => seed(a).await,
    }
}

/// The first run's creation time: 2025-01-01T00:00:00Z.
const T0: f64 = 1_735_689_600.0;

/// The hash of seeded run `i` (16 hex digits, as the SDK makes them).
pub fn run_hash(i: u32) -> String {
    format!("5eed{i:012x}")
}

async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    let config = args.common.load(|_| {})?;
    let db = open_database(&config.storage).context("cannot open the store")?;
    // Settled as `serve` settles it: a new store takes `storage.sequence_layout` and records it.
    let layout = Layout::open_settled(&db, config.storage.sequence_layout)
        .await
        .context("cannot open the store's directories")?;
    for i in 0..args.runs {
        let hash = run_hash(i);
        let steps = args.steps;
        db.run(&RetryOptions::default(), |tx| {
            let (layout, hash) = (layout.clone(), hash.clone());
            async move { write_run(&layout, &tx, &hash, i, steps).await }
        })
        .await
        .with_context(|| format!("cannot write run {hash}"))?;
        println!("seeded run {hash}");
    }
    Ok(())
}

/// One run: meta, hparams, experiment `baseline`, tag `ui-check`, and three finished metric
/// traces (`loss` train/val, `acc` train) of `steps` points.
async fn write_run(
    layout: &Layout,
    tx: &matyan::storage::kv::Transaction,
    hash: &str,
    i: u32,
    steps: u32,
) -> Result<(), LayoutError> {
    let created = T0 + f64::from(i) * 3600.0;
    let runs = &layout.runs;
    runs.create_run(tx, hash, created, None).await?;
    let lr = 0.001 * f64::from(i + 1);
    runs.update_meta(tx, hash, created, &[("name", Value::Str(format!("seed-run-{i}")))]).await?;
    let hparams = Value::from(&json!({"lr": lr, "batch_size": 32 * (i + 1), "optimizer": "adam"}));
    runs.set_attrs(tx, hash, &["hparams".to_owned()], &hparams, created).await?;

    let system = &layout.system;
    let exp = system.get_or_create_named(tx, EntityKind::Experiment, "baseline", &seed_uuid(0), created).await?;
    system.link_experiment(tx, layout.indexes(), hash, Some(&exp)).await?;
    runs.runs.set_meta(tx, hash, "experiment_id", &Value::from(exp.as_str()))?;
    let tag = system.get_or_create_named(tx, EntityKind::Tag, "ui-check", &seed_uuid(1), created).await?;
    layout.link_tag(tx, hash, &tag).await?;

    let decay = 1.0 + f64::from(i) * 0.5;
    let traces: [(&str, serde_json::Value, Curve); 3] = [
        ("loss", json!({"subset": "train"}), |x, d| (-x * d * 3.0).exp() + 0.05 * (x * 40.0).sin().abs()),
        ("loss", json!({"subset": "val"}), |x, d| (-x * d * 2.5).exp() + 0.1),
        ("acc", json!({"subset": "train"}), |x, d| 1.0 - (-x * d * 3.0).exp() * 0.9),
    ];
    for (name, ctx, f) in traces {
        let ctx_id = context_to_id(&ctx);
        runs.runs.set_context(tx, hash, ctx_id, &Value::from(&ctx))?;
        let id = SeqId { run: hash, ctx_id, name };
        let mut last = Value::Nil;
        let mut vals = Vec::with_capacity(steps as usize);
        for step in 0..steps {
            let v = f(f64::from(step) / f64::from(steps), decay);
            vals.push(value::encode(&Value::Float(v)).map_err(|e| LayoutError::Encode(e.to_string()))?);
            last = Value::Float(v);
        }
        let points: Vec<SeqWrite<'_>> = (0..steps)
            .zip(&vals)
            .map(|(step, val)| SeqWrite { step: i64::from(step), val, epoch: Some(0), time: created + f64::from(step) })
            .collect();
        layout.seqs.write(tx, id, &points).await?;
        let info = TraceInfo { ctx_id, name, dtype: "float", last: Some(&last), last_step: i64::from(steps) - 1 };
        runs.record_trace(tx, hash, &info)?;
    }
    let end = created + f64::from(steps);
    runs.update_meta(tx, hash, end, &[("active", Value::Bool(false)), ("finalized_at", Value::Float(end))]).await?;
    Ok(())
}

/// A metric's value at a fraction `x` of the run, for a decay factor.
type Curve = fn(f64, f64) -> f64;

/// Fixed uuids for the seeded experiment and tag, so seeding twice finds them again.
fn seed_uuid(n: u8) -> String {
    format!("00000000-5eed-4000-8000-{n:012x}")
}
