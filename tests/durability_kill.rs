//! Durability under `kill -9`: a child process commits transactions in a loop and reports each one
//! that returned success; the parent kills it with SIGKILL mid-stream, reopens the store and checks
//! that every acknowledged transaction survived whole (and nothing half-applied is visible).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use matyan::storage::kv::{Database, EmbeddedEngine, Limits, RangeOption};

const CHILD_ENV: &str = "MATYAN_KILL_TEST_DIR";
const ENGINE_ENV: &str = "MATYAN_KILL_TEST_ENGINE";

fn engine_named(name: &str) -> EmbeddedEngine {
    match name {
        "redb" => EmbeddedEngine::Redb,
        _ => EmbeddedEngine::Fjall,
    }
}

/// The child: only does work when launched by the parent with its environment variables set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of acknowledged_commits_survive_kill_9"]
async fn kill_child_writer() {
    let (Ok(dir), Ok(engine)) = (std::env::var(CHILD_ENV), std::env::var(ENGINE_ENV)) else {
        return;
    };
    let db = Database::open_embedded(std::path::Path::new(&dir), engine_named(&engine), Limits::FDB).unwrap();
    for n in 0u64.. {
        let tx = db.create_trx().unwrap();
        // Each transaction writes a batch of 50 keys and the counter: all or nothing.
        for i in 0..50u64 {
            tx.set(format!("item/{n:08}/{i:02}").as_bytes(), &n.to_le_bytes());
        }
        tx.set(b"counter", &n.to_le_bytes());
        tx.commit().await.unwrap();
        println!("committed {n}");
    }
}

fn run_kill_test(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "kill_child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .env(ENGINE_ENV, engine)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last_acked: Option<u64> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            last_acked = Some(n.trim().parse().unwrap());
            if last_acked >= Some(200) {
                // SIGKILL: no destructors, no flush on drop.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    let last_acked = last_acked.expect("child committed nothing");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Database::open_embedded(dir.path(), engine_named(engine), Limits::FDB).unwrap();
        let tx = db.create_trx().unwrap();
        let counter = tx.get(b"counter", false).await.unwrap().expect("counter survived");
        let counter = u64::from_le_bytes(counter.try_into().unwrap());
        assert!(counter >= last_acked, "{engine}: acknowledged commit {last_acked} lost (counter {counter})");
        let items = tx.get_range(&RangeOption::prefix(b"item/"), false).await.unwrap();
        assert_eq!(items.len() as u64, (counter + 1) * 50, "{engine}: every committed batch whole, none partial");
    });
}

#[test]
fn acknowledged_commits_survive_kill_9_fjall() {
    run_kill_test("fjall");
}

#[test]
fn acknowledged_commits_survive_kill_9_redb() {
    run_kill_test("redb");
}
