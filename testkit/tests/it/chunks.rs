//! Chunked messages (docs/design.md "Delivery"): a producer SIGKILLed in
//! the middle of its chunks and restarted with another chunk size still
//! gives every record to the target, which ends exactly as the in-order
//! reference.

use syncdata_testkit::harness as support;

use std::io::Write;
use std::time::Duration;

use crate::pipeline::{add_tables, demo_db, fingerprints, syncdata, wait_converged};
use support::{Proc, TestNames};
use syncdata_testkit::workload::{self, WorkloadSpec};

/// Messages in the stream (chunks count once).
async fn stored(names: &TestNames) -> u64 {
    let js = async_nats::jetstream::new(support::nats_connect(&support::nats_url()).await);
    match js.get_stream(&names.stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_sigkilled_mid_chunk_and_restarted_with_another_chunk_size_converges() {
    let history = workload::generate(&WorkloadSpec {
        seed: 16,
        changes: 30_000,
        truncate: true,
        partial_updates: true,
        key_changes: true,
    });
    let expected_db = demo_db("chunkkill_expected").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .unwrap();
    let expected = fingerprints(&expected_db).await;

    let local = demo_db("chunkkill_local").await;
    let names = TestNames::new("chunkkill");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let (early, late) = history.split_at(22_000);
    workload::write_archive(&archive, early, 5_000).unwrap();
    let consumer_toml = "[consumer]\nbatch_size = 50\nack_wait_secs = 10\nmax_backoff_ms = 1000\n";
    let big = support::write_config(
        &dir.path().join("big"),
        &local,
        &names,
        &support::nats_url(),
        &archive,
        &format!("{consumer_toml}[producer]\nmax_in_flight = 4\nchunk_records = 700\n"),
    );
    let small = support::write_config(
        &dir.path().join("small"),
        &local,
        &names,
        &support::nats_url(),
        &archive,
        &format!(
            "{consumer_toml}[producer]\nmax_in_flight = 64\nchunk_records = 97\nchunk_bytes = 16384\n"
        ),
    );
    add_tables(dir.path(), &big);
    let consumer = syncdata(dir.path(), &big, &["start"]);

    let mut p = Proc::spawn(
        "syncdata-producer",
        &["run"],
        &big,
        &[("RUST_LOG", "info")],
        dir.path(),
    );
    support::wait_until(
        "the producer is mid-stream",
        Duration::from_secs(60),
        || async { stored(&names).await >= 3 },
    )
    .await;
    p.sigkill();
    let at_kill = support::stream_messages(&support::nats_url(), &names.stream)
        .await
        .len();
    assert!(
        at_kill < early.len(),
        "killed mid-stream ({at_kill} records of {})",
        early.len()
    );

    // Restarted with other chunk sizes; the rest of the history arrives
    // while it runs, cut at whatever read boundaries it meets.
    let p2 = Proc::spawn(
        "syncdata-producer",
        &["run"],
        &small,
        &[("RUST_LOG", "info")],
        dir.path(),
    );
    let tail = archive.join(workload::archive_file_name(99));
    let mut f = std::fs::File::create(&tail).unwrap();
    for part in late.chunks(777) {
        for r in part {
            f.write_all(&r.to_json()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_converged(&names, &local, &expected, &[&consumer, &p2]).await;

    // Both chunk sizes are in the stream; every record is there at least
    // once, and there are far fewer messages than records.
    let raw = support::stream_raw_messages(&support::nats_url(), &names.stream).await;
    let sizes: Vec<usize> = raw
        .iter()
        .map(|(_, p)| syncdata_core::chunk::split(p).map(|r| r.len()).unwrap_or(1))
        .collect();
    assert!(
        sizes.iter().any(|&n| n > 97),
        "chunks of the first producer: {sizes:?}"
    );
    assert!(sizes.iter().all(|&n| n <= 700), "{sizes:?}");
    let records: usize = sizes.iter().sum();
    assert!(records >= history.len(), "{records} < {}", history.len());
    assert!(raw.len() * 10 < history.len(), "{} messages", raw.len());
    let failed: i64 =
        sqlx::query_scalar("select count(*) from data_sync_logs where status <> 'SUCCESS'")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0, "nothing dead-lettered");
}
