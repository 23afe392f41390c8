//! Raft commit benchmark: N in-process nodes on real RocksDB (fsync on) and real QUIC on loopback.
//!
//! `cargo run --release -p ironhub-raft --example commit_bench -- --nodes 3 --seconds 20 --clients 512`
//!
//! Each client proposes small commands (64 bytes) to a random partition group, on the node that
//! leads it, waiting for each response (closed loop). Prints committed commands/s, raft entries/s,
//! p50/p99 commit latency and elections per hour.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ironhub_raft::transport::Security;
use ironhub_raft::{Apply, ApplyContext, NodeConfig, Proposal, RaftNode, StateTxn, Timing};
use ironhub_storage::StorageError;

struct Sink;

impl Apply for Sink {
    fn apply(
        &self,
        ctx: &ApplyContext,
        command: &[u8],
        txn: &mut StateTxn<'_>,
    ) -> Result<Bytes, StorageError> {
        // One write per command, like a retained message or a queue append.
        txn.put(&command[..8.min(command.len())], &ctx.index.to_be_bytes());
        Ok(Bytes::new())
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port")
}

fn counter(reg: &prometheus::Registry, name: &str) -> f64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()).collect::<Vec<_>>())
        .sum()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = arg("--nodes", 3);
    let seconds = arg("--seconds", 20);
    let clients = arg("--clients", 512);
    let partitions = arg("--partitions", 16) as u16;
    let dir = tempfile::tempdir().expect("tempdir");
    let peers: BTreeMap<u64, SocketAddr> =
        if n == 1 { BTreeMap::new() } else { (1..=n).map(|i| (i, free_udp())).collect() };
    let mut nodes = Vec::new();
    let mut registries = Vec::new();
    for id in 1..=n {
        let reg = prometheus::Registry::new();
        let cfg = NodeConfig {
            node_id: id,
            data_dir: dir.path().join(format!("n{id}")),
            cluster_bind: peers.get(&id).copied().unwrap_or_else(free_udp),
            peers: peers.clone(),
            security: Security::Secret("bench-secret-123".into()),
            partitions,
            timing: Timing::default(),
            batch: Default::default(),
            log_cache: Default::default(),
            state_cache: Default::default(),
        };
        nodes.push(RaftNode::start(cfg, Arc::new(Sink), &reg).await.expect("node"));
        registries.push(reg);
    }
    eprintln!("waiting for {} groups to elect leaders...", partitions + 1);
    let leaders = loop {
        let st = nodes[0].status();
        if st.iter().all(|g| g.leader.is_some()) {
            // Let the balancer settle leaders on their preferred nodes.
            tokio::time::sleep(Duration::from_secs(if n > 1 { 5 } else { 0 })).await;
            break nodes[0].status().iter().map(|g| g.leader.unwrap_or(1)).collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let nodes = Arc::new(nodes);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before_entries: f64 =
        registries.iter().map(|r| counter(r, "ironhub_raft_entries_applied_total")).sum();
    let elections_before: f64 = counter(&registries[0], "ironhub_raft_elections_total");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (nodes, stop, done, errors, leaders) =
            (nodes.clone(), stop.clone(), done.clone(), errors.clone(), leaders.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let g = 1 + ((c + i) % u64::from(partitions)) as u16;
                let leader = leaders[g as usize];
                let mut cmd = vec![0u8; 64];
                cmd[..8].copy_from_slice(&(c * 1_000_000 + i).to_be_bytes());
                let t = Instant::now();
                match nodes[(leader - 1) as usize].propose(g, Proposal::app(cmd)).await {
                    Ok(_) => {
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
            hist
        }));
    }
    let mut last = 0;
    for s in 1..=seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let d = done.load(Ordering::Relaxed);
        eprintln!("[{s:>3}s] {:>8} commands/s", d - last);
        last = d;
    }
    stop.store(true, Ordering::Relaxed);
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(h);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let total = done.load(Ordering::Relaxed) as f64;
    // Entries applied on every node count once per replica: divide by the node count.
    let entries: f64 =
        (registries.iter().map(|r| counter(r, "ironhub_raft_entries_applied_total")).sum::<f64>()
            - before_entries)
            / n as f64;
    let elections = counter(&registries[0], "ironhub_raft_elections_total") - elections_before;
    println!(
        "nodes={n} clients={clients} partitions={partitions} seconds={secs:.1} commands/s={:.0} entries/s={:.0} \
         cmds/entry={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} errors={} elections/h={:.1}",
        total / secs,
        entries / secs,
        total / entries.max(1.0),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        errors.load(Ordering::Relaxed),
        elections * 3600.0 / secs,
    );
    for node in nodes.iter() {
        node.shutdown().await;
    }
}
