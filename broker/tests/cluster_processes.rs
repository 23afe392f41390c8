//! Real `ironhub serve` processes on loopback: a three-node cluster survives `kill -9` of a
//! leader with nothing acknowledged lost, a restarted node catches up (also by snapshot after the
//! log was purged), and a wrong cluster secret is refused.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn write(node: &Node, topic: &str, payload: &str) -> bool {
    matches!(
        put(&node.url(&format!("/api/v1/retained/{topic}")), json!({"payload": payload, "qos": 1})).await,
        Some((200, _))
    )
}

/// Reads a retained value; retries while the node answers "unavailable" (a leader change under
/// way), for up to 20 s. `None` means not found (or still unavailable at the end).
async fn read(node: &Node, topic: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match get(&node.url(&format!("/api/v1/retained/{topic}"))).await {
            Some((200, v)) => return Some(v["payload"].as_str().unwrap_or("").to_string()),
            Some((404, _)) => return None,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return None,
        }
    }
}

/// Writes until acknowledged (retrying through `nodes` in turn) or `within` passes.
async fn write_acked(nodes: &[&Node], topic: &str, payload: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut i = 0;
    while Instant::now() < deadline {
        if write(nodes[i % nodes.len()], topic, payload).await {
            return true;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_kill9_of_a_leader_and_lose_nothing_acknowledged() {
    let mut c = Cluster::new(3);
    // Small snapshot interval so the restarted node must catch up through a snapshot.
    let cfg = c.dir.path().join("raft.toml");
    std::fs::write(&cfg, "[raft]\nsnapshot_every = 200\nkeep_behind_snapshot = 20\n").expect("config");
    for n in &mut c.nodes {
        n.extra = vec!["--config".into(), cfg.display().to_string()];
    }
    c.start_all();
    for n in &c.nodes {
        assert!(wait_healthy(n, Duration::from_secs(60)).await, "node {} not healthy:\n{}", n.id, c.logs());
    }
    let led = wait_all_led(&c.nodes[0], &[1, 2, 3], Duration::from_secs(60)).await;
    let led = led.unwrap_or_else(|| panic!("groups not led:\n{}", c.logs()));
    assert_eq!(led.len(), 17, "meta + 16 partitions");
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for l in &led {
        *per_node.entry(*l).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "leaders spread over the three nodes: {per_node:?}");

    // Acknowledged writes through every node.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..60 {
        let (topic, payload) = (format!("t/{i}"), format!("v{i}"));
        let via = &c.nodes[i % 3];
        assert!(
            write_acked(&[via], &topic, &payload, Duration::from_secs(10)).await,
            "write {i}:\n{}",
            c.logs()
        );
        acked.insert(topic, payload);
    }

    // kill -9 the node leading the most groups.
    let victim = *per_node.iter().max_by_key(|(_, n)| **n).map(|(id, _)| id).expect("a leader");
    c.node(victim).kill9();
    let alive: Vec<u64> = (1..=3).filter(|i| *i != victim).collect();
    let t0 = Instant::now();
    let observer = &c.nodes[(alive[0] - 1) as usize];
    assert!(
        wait_all_led(observer, &alive, Duration::from_secs(30)).await.is_some(),
        "not re-led:\n{}",
        c.logs()
    );
    eprintln!("all 17 groups led again {:?} after kill -9 of node {victim}", t0.elapsed());

    // Writes resume, and every acknowledged value is still there.
    let survivors: Vec<&Node> = alive.iter().map(|id| &c.nodes[(*id - 1) as usize]).collect();
    // Mostly one hot topic, so its partition's log passes `snapshot_every` and gets purged.
    for i in 60..360 {
        let topic = if i % 4 == 0 { format!("t/{}", i % 90) } else { "hot/topic".to_string() };
        let payload = format!("v{i}");
        assert!(
            write_acked(&survivors, &topic, &payload, Duration::from_secs(20)).await,
            "write {i} after kill"
        );
        acked.insert(topic, payload);
    }
    for (topic, payload) in &acked {
        assert_eq!(
            read(survivors[0], topic).await.as_deref(),
            Some(payload.as_str()),
            "{topic} after kill -9"
        );
    }

    // The killed node restarts and catches up (its groups' logs were purged behind snapshots).
    c.start(victim);
    let back = &c.nodes[(victim - 1) as usize];
    assert!(wait_healthy(back, Duration::from_secs(60)).await, "restart:\n{}", c.logs());
    assert!(
        wait_all_led(back, &[1, 2, 3], Duration::from_secs(60)).await.is_some(),
        "restart:\n{}",
        c.logs()
    );
    for (topic, payload) in &acked {
        let got = read(back, topic).await;
        if got.as_deref() != Some(payload.as_str()) {
            let (_, v) = get(&back.url("/api/v1/cluster")).await.expect("cluster");
            let g = ironhub_raft::partition_of(topic.as_bytes(), 16);
            panic!(
                "{topic} (group {g}) on the restarted node: {got:?}, expected {payload}\ngroup: {}\n{}",
                v["groups"][g as usize],
                c.logs()
            );
        }
    }
    let (_, v) = get(&back.url("/api/v1/cluster")).await.expect("cluster");
    let snapshots =
        v["groups"].as_array().expect("groups").iter().filter(|g| !g["snapshot"].is_null()).count();
    assert!(snapshots > 0, "the restarted node holds snapshots: {v}");

    // Graceful shutdown.
    for id in 1..=3 {
        let st = c.node(id).sigterm();
        assert!(st.is_some_and(|s| s.success()), "node {id} stops cleanly on SIGTERM:\n{}", c.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_secret_is_refused() {
    let mut c = Cluster::new(2);
    let peers = c.peers.clone();
    c.node(1).start(&peers, SECRET);
    c.node(2).start(&peers, "some-other-secret");
    assert!(wait_healthy(&c.nodes[0], Duration::from_secs(30)).await);
    // Node 1 cannot reach a majority it can authenticate: no cluster is formed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, v) = get(&c.nodes[0].url("/api/v1/cluster")).await.expect("cluster");
    assert!(v["cluster_id"].is_null(), "no cluster with an unauthenticated peer: {v}");
    let logs = c.logs();
    assert!(logs.to_lowercase().contains("secret"), "a log names the secret problem:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_keeps_committed_writes_across_kill9() {
    let mut c = Cluster::new(1);
    c.start_all();
    assert!(wait_healthy(&c.nodes[0], Duration::from_secs(30)).await, "{}", c.logs());
    assert!(wait_all_led(&c.nodes[0], &[1], Duration::from_secs(30)).await.is_some());
    for i in 0..200 {
        assert!(write(&c.nodes[0], &format!("s/{i}"), &format!("p{i}")).await);
    }
    c.node(1).kill9();
    c.start(1);
    assert!(wait_healthy(&c.nodes[0], Duration::from_secs(30)).await, "{}", c.logs());
    assert!(wait_all_led(&c.nodes[0], &[1], Duration::from_secs(30)).await.is_some());
    for i in 0..200 {
        assert_eq!(read(&c.nodes[0], &format!("s/{i}")).await, Some(format!("p{i}")));
    }
}

fn ctl(node: &Node, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(["ctl", "--api", &node.url(""), "--token", TOKEN])
        .args(args)
        .output()
        .expect("run ironhub ctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_and_remove_node_with_ctl() {
    let mut c = Cluster::new(4);
    // Nodes 1-3 form the cluster; node 4 is started later, empty, listing all four.
    let first_three: String = c.nodes[..3]
        .iter()
        .map(|n| format!("{}=127.0.0.1:{}", n.id, n.cluster_port))
        .collect::<Vec<_>>()
        .join(",");
    let all_four = c.peers.clone();
    for id in 1..=3 {
        c.node(id).start(&first_three, SECRET);
    }
    assert!(wait_all_led(&c.nodes[0], &[1, 2, 3], Duration::from_secs(60)).await.is_some(), "{}", c.logs());
    assert!(write_acked(&[&c.nodes[0]], "before/add", "x", Duration::from_secs(10)).await);
    c.node(4).start(&all_four, SECRET);
    assert!(wait_healthy(&c.nodes[3], Duration::from_secs(30)).await, "{}", c.logs());

    let addr4 = format!("127.0.0.1:{}", c.nodes[3].cluster_port);
    let out = ctl(&c.nodes[1], &["cluster", "add-node", "4", &addr4]);
    assert!(out.status.success(), "add-node failed: {}\n{}", String::from_utf8_lossy(&out.stderr), c.logs());
    let (_, v) = get(&c.nodes[0].url("/api/v1/cluster")).await.expect("cluster");
    assert_eq!(v["nodes"].as_array().map(|a| a.len()), Some(4), "{v}");
    let groups = v["groups"].as_array().expect("groups");
    let with4 =
        groups.iter().filter(|g| g["voters"].as_array().is_some_and(|vs| vs.iter().any(|x| x == 4))).count();
    assert!(with4 >= 2, "node 4 votes in some groups: {v}");
    assert_eq!(read(&c.nodes[3], "before/add").await.as_deref(), Some("x"), "node 4 has the data");

    let out = ctl(&c.nodes[3], &["cluster", "remove-node", "1"]);
    assert!(
        out.status.success(),
        "remove-node failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let (_, v) = get(&c.nodes[1].url("/api/v1/cluster")).await.expect("cluster");
    for g in v["groups"].as_array().expect("groups") {
        let lists = |k: &str| g[k].as_array().is_some_and(|vs| vs.iter().any(|x| x == 1));
        assert!(!lists("voters") && !lists("learners"), "node 1 still in {g}");
    }
    c.node(1).kill9();
    assert!(wait_all_led(&c.nodes[1], &[2, 3, 4], Duration::from_secs(30)).await.is_some(), "{}", c.logs());
    assert!(write_acked(&[&c.nodes[1], &c.nodes[2]], "after/remove", "y", Duration::from_secs(20)).await);
}
