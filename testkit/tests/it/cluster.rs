//! Scale-out on a real three-node NATS cluster (three `nats-server`
//! processes with routes, stream replicas 3): the producer and three
//! consumers connected to different nodes ride out the stream leader being
//! SIGKILLed mid-stream and, later, a second node, without a restart, and
//! the target ends equal to the in-order reference.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use support::{NatsCluster, Proc, TestNames};
use syncdata_testkit::workload::{self, WorkloadSpec};

use crate::pipeline::{add_tables, demo_db, fingerprints, syncdata};

/// Messages stored in `stream` and its leader's name, asked of `url` as the
/// admin user; None while the cluster cannot answer (an election).
async fn stream_state(url: &str, stream: &str) -> Option<(u64, String)> {
    let ask = async {
        let client = async_nats::ConnectOptions::new()
            .user_and_password(
                support::NatsRole::Admin.credentials().0,
                support::NatsRole::Admin.credentials().1,
            )
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .ok()?;
        let js = jetstream::new(client);
        let mut s = js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        Some((info.state.messages, leader))
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()
        .flatten()
}

/// The stream's state asked of any running node.
async fn state_of(cluster: &mut NatsCluster, stream: &str) -> Option<(u64, String)> {
    for i in 0..3 {
        if cluster.is_running(i) {
            if let Some(s) = stream_state(&cluster.url(i), stream).await {
                return Some(s);
            }
        }
    }
    None
}

async fn wait_stored(cluster: &mut NatsCluster, stream: &str, at_least: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((n, _)) = state_of(cluster, stream).await {
            if n >= at_least {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: fewer than {at_least} messages in {stream} after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Moves archive files `files` from the staging directory into the archive
/// (a rename: the producer sees whole files).
fn release(files: &[PathBuf], archive: &Path) {
    for f in files {
        std::fs::rename(f, archive.join(f.file_name().unwrap())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_and_a_second_node_killed_mid_stream_lose_and_duplicate_nothing() {
    let history = workload::generate(&WorkloadSpec {
        seed: 77,
        changes: 12_000,
        truncate: true,
        partial_updates: true,
        key_changes: true,
    });
    let expected_db = demo_db("cluster_expected").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .unwrap();
    let expected = fingerprints(&expected_db).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(&dir.path().join("nats")).await;
    let local = demo_db("cluster_local").await;
    let names = TestNames::new("cluster");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let staging = dir.path().join("staging");
    let files = workload::write_archive(&staging, &history, 500).unwrap();
    let extra =
        "replicas = 3\n\n[consumer]\nbatch_size = 200\nack_wait_secs = 5\nmax_backoff_ms = 1000\n\
                 [producer]\nmax_in_flight = 256\n\
                 # one record per message: the waits below count messages\n\
                 chunk_records = 1\n";
    // One configuration per process, each naming another node.
    let config_on = |i: usize, who: &str| {
        support::write_config(
            &dir.path().join(who),
            &local,
            &names,
            &cluster.url(i),
            &archive,
            extra,
        )
    };
    let producer_config = config_on(0, "producer");
    let consumer_configs: Vec<PathBuf> = (0..3)
        .map(|i| config_on((i + 1) % 3, &format!("consumer{i}")))
        .collect();
    add_tables(dir.path(), &consumer_configs[0]);

    let total = history.len() as u64;
    let (first, rest) = files.split_at(8);
    let (second, third) = rest.split_at(8);
    release(first, &archive);
    let mut producer = Proc::spawn(
        "syncdata-producer",
        &["run"],
        &producer_config,
        &[("RUST_LOG", "info")],
        dir.path(),
    );
    let mut consumers: Vec<Proc> = consumer_configs
        .iter()
        .map(|c| syncdata(dir.path(), c, &["start"]))
        .collect();

    wait_stored(&mut cluster, &names.stream, 2_000, "before the first kill").await;
    let (_, leader) = state_of(&mut cluster, &names.stream).await.unwrap();
    let a = cluster.index_of(&leader).expect("the leader is a node");
    cluster.kill9(a);
    release(second, &archive);
    // Progress under a new leader, with one node down.
    wait_stored(
        &mut cluster,
        &names.stream,
        6_000,
        "after the leader was killed",
    )
    .await;
    let (_, new_leader) = state_of(&mut cluster, &names.stream).await.unwrap();
    assert_ne!(new_leader, leader, "another node leads the stream");
    cluster.restart(a).await;

    // Later, a second node: the leader of the moment, another than the first.
    let b = cluster.index_of(&new_leader).unwrap();
    cluster.kill9(b);
    release(third, &archive);
    wait_stored(&mut cluster, &names.stream, total, "after the second kill").await;
    cluster.restart(b).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if fingerprints(&local).await == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence after the node kills\nproducer:\n{}\nconsumer:\n{}",
            producer.log_tail(30),
            consumers[0].log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (stored, _) = state_of(&mut cluster, &names.stream).await.unwrap();
    assert!(stored >= total, "every record stored: {stored} of {total}");
    let failed: i64 =
        sqlx::query_scalar("select count(*) from data_sync_logs where status <> 'SUCCESS'")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0, "no dead letters from node failures");
    assert!(producer.is_running(), "producer: {}", producer.log_tail(30));
    for c in &mut consumers {
        assert!(
            c.is_running(),
            "no consumer needed a restart:\n{}",
            c.log_tail(30)
        );
    }
}
