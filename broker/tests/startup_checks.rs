//! A data dir that is not this node's stops `ironhub serve` at start with a message naming the
//! problem: another node's, another cluster's, a newer format, a corrupt value.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ironhub_storage::{codec, keys, KvEngine, RocksEngine, WriteBatch};

/// Waits for the process to exit; returns its code and log.
fn wait_exit(node: &mut Node, within: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + within;
    let child = node.child.as_mut().expect("running");
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            node.child = None;
            return (st.code(), node.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (None, node.log_text())
}

async fn make_single_node_dir(c: &mut Cluster) {
    c.start_all();
    assert!(wait_healthy(&c.nodes[0], Duration::from_secs(30)).await, "{}", c.logs());
    assert!(wait_all_led(&c.nodes[0], &[1], Duration::from_secs(30)).await.is_some());
    assert!(c.node(1).sigterm().is_some_and(|s| s.success()), "clean stop:\n{}", c.logs());
}

fn poke(dir: &std::path::Path, name: &str, value: Vec<u8>) {
    let engine = RocksEngine::open(&dir.join("db")).expect("open db");
    let mut b = WriteBatch::default();
    b.put(keys::node_key(name.as_bytes()), value);
    engine.write(&b, true).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_data_dir_is_refused() {
    let mut c = Cluster::new(1);
    make_single_node_dir(&mut c).await;
    c.node(1).id = 7;
    c.start(1);
    let (code, log) = wait_exit(c.node(1), Duration::from_secs(20));
    assert_eq!(code, Some(2), "exit 2:\n{log}");
    assert!(log.contains("belongs to node 1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_is_refused() {
    let mut c = Cluster::new(1);
    make_single_node_dir(&mut c).await;
    poke(&c.nodes[0].data, "format", codec::encode(&99u32).expect("encode"));
    c.start(1);
    let (code, log) = wait_exit(c.node(1), Duration::from_secs(20));
    assert_eq!(code, Some(2), "exit 2:\n{log}");
    assert!(log.contains("newer"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_an_error_not_a_crash() {
    let mut c = Cluster::new(1);
    make_single_node_dir(&mut c).await;
    poke(&c.nodes[0].data, "partitions", vec![1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    c.start(1);
    let (code, log) = wait_exit(c.node(1), Duration::from_secs(20));
    assert_eq!(code, Some(1), "a runtime failure, not a panic or abort:\n{log}");
    assert!(log.contains("partitions") && !log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_cluster_is_refused() {
    // Two separate two-node clusters; then node 2 of the second is started as node 2 of the first.
    let mut a = Cluster::new(2);
    let mut b = Cluster::new(2);
    for c in [&mut a, &mut b] {
        c.start_all();
        assert!(wait_all_led(&c.nodes[0], &[1, 2], Duration::from_secs(60)).await.is_some(), "{}", c.logs());
        for id in 1..=2 {
            assert!(c.node(id).sigterm().is_some(), "stop");
        }
    }
    a.node(2).data = b.nodes[1].data.clone();
    a.start_all();
    // Whichever node notices first stops with exit code 2 and names both clusters.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stopped = None;
    while stopped.is_none() && Instant::now() < deadline {
        for id in 1..=2 {
            if let Some(Ok(Some(st))) = a.node(id).child.as_mut().map(|c| c.try_wait()) {
                stopped = Some((id, st.code()));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = a.logs();
    let (id, code) = stopped.unwrap_or_else(|| panic!("no node stopped:\n{all}"));
    assert_eq!(code, Some(2), "node {id} exits 2:\n{all}");
    assert!(a.nodes[(id - 1) as usize].log_text().contains("belongs to cluster"), "{all}");
}
