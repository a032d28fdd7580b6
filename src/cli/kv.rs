//! `matyan kv dump`: prints every key of the store as JSON lines, like an operator's `getrange`.
//!
//! It opens the store itself; when a running `matyan serve` holds the embedded store's lock, it
//! reads through that server's loopback admin route instead (found through `serve.addr`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use matyan::app::open_database;
use matyan::config::Backend;
use matyan::storage::dump::{DumpCursor, DumpRequest};
use matyan::storage::kv::KvError;
use matyan::storage::layout::Dirs;
use matyan::storage::tuple;

use super::ConfigArgs;
use super::common;

/// `matyan kv ...`.
#[derive(Debug, Args)]
pub struct KvArgs {
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print keys as JSON lines: {"dir":"runs","key":[...],"value":...}.
    Dump(DumpArgs),
}

#[derive(Debug, Args)]
struct DumpArgs {
    /// Only this directory: runs, indexes, system or ours.
    #[arg(long)]
    dir: Option<String>,
    /// Only keys under this tuple, as JSON, e.g. '["3f2a...", "meta"]'.
    #[arg(long, value_name = "TUPLE_JSON")]
    prefix: Option<String>,
    /// Add the key and value hex.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    common: ConfigArgs,
}

/// Runs `matyan kv ...`.
pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    match args.command {
        KvCommand::Dump(d) => dump(d).await,
    }
}

async fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let config = args.common.load(|_| {})?;
    let prefix = args.prefix.as_deref().map(tuple::parse_json_tuple).transpose().context("--prefix")?;
    let req = DumpRequest { dir: args.dir.clone(), prefix, raw: args.raw };
    let data_dir = config.storage.data_dir.clone();
    match config.storage.backend {
        Backend::Memory => bail!("storage.backend is memory: there is no stored data to dump"),
        Backend::Embedded if !data_dir.exists() => bail!("no store at {}", data_dir.display()),
        _ => {}
    }
    let db = match open_database(&config.storage) {
        Ok(db) => db,
        Err(matyan::app::AppError::Storage(KvError::Locked(what))) => return dump_via_server(&data_dir, &args, &what),
        Err(e) => return Err(e).context("cannot open the store"),
    };
    let dirs = Dirs::open(&db).await.context("cannot open the store's directories")?;
    let mut cursor = DumpCursor::new(&dirs, &req)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(chunk) = cursor.next_chunk(&db).await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dump_via_server(data_dir: &Path, args: &DumpArgs, locked: &str) -> anyhow::Result<()> {
    let mut query = vec![format!("raw={}", args.raw)];
    if let Some(d) = &args.dir {
        query.push(format!("dir={}", encode_query(d)));
    }
    if let Some(p) = &args.prefix {
        query.push(format!("prefix={}", encode_query(p)));
    }
    let head = format!("GET /admin/kv/dump/?{} HTTP/1.0", query.join("&"));
    let (_, mut reader) =
        common::admin_request(data_dir, locked, "the dump", "so the dump can go through it", &head, &[])?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    std::io::copy(&mut reader, &mut out)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query(r#"["a b", 1]"#), "%5B%22a%20b%22%2C%201%5D");
        assert_eq!(encode_query("runs"), "runs");
    }
}
