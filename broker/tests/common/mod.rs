//! Real `ironhub serve` processes on loopback for integration tests.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";
pub const SECRET: &str = "test-cluster-secret";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ironhub"))
}

/// A free TCP port and a free UDP port (bound then released).
pub fn free_ports() -> (u16, u16) {
    let t = TcpListener::bind("127.0.0.1:0").expect("tcp port");
    let u = UdpSocket::bind("127.0.0.1:0").expect("udp port");
    (t.local_addr().expect("addr").port(), u.local_addr().expect("addr").port())
}

pub struct Node {
    pub id: u64,
    pub api_port: u16,
    pub cluster_port: u16,
    pub mqtt_port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.api_port, path)
    }

    pub fn start(&mut self, peers: &str, secret: &str) {
        self.spawn(peers, Some(secret));
    }

    /// Starts with `--peers` but no `--cluster-secret` (certificates in `extra`).
    pub fn start_without_secret(&mut self, peers: &str) {
        self.spawn(peers, None);
    }

    fn spawn(&mut self, peers: &str, secret: Option<&str>) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let mut args = vec![
            "serve".to_string(),
            "--node-id".into(),
            self.id.to_string(),
            "--data-dir".into(),
            self.data.display().to_string(),
            "--api".into(),
            format!("127.0.0.1:{}", self.api_port),
            "--mqtt".into(),
            format!("127.0.0.1:{}", self.mqtt_port),
            "--cluster".into(),
            format!("127.0.0.1:{}", self.cluster_port),
            "--admin-token".into(),
            TOKEN.into(),
        ];
        // tests on one host must not compete for the default WebSocket port
        if !self.extra.iter().any(|a| a == "--ws") {
            args.extend(["--ws".into(), "off".into()]);
        }
        if !peers.is_empty() {
            args.extend(["--peers".into(), peers.into()]);
            if let Some(secret) = secret {
                args.extend(["--cluster-secret".into(), secret.into()]);
            }
        }
        args.extend(self.extra.iter().cloned());
        let child = Command::new(bin())
            .args(&args)
            .env("IRONHUB_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn ironhub");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status();
        }
    }

    pub fn sigterm(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub peers: String,
}

impl Cluster {
    pub fn new(n: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for id in 1..=n {
            let (api_port, cluster_port) = free_ports();
            let (mqtt_port, _) = free_ports();
            nodes.push(Node {
                id,
                api_port,
                cluster_port,
                mqtt_port,
                data: dir.path().join(format!("n{id}")),
                log: dir.path().join(format!("n{id}.log")),
                child: None,
                extra: Vec::new(),
            });
        }
        let peers = if n == 1 {
            String::new()
        } else {
            nodes
                .iter()
                .map(|n| format!("{}=127.0.0.1:{}", n.id, n.cluster_port))
                .collect::<Vec<_>>()
                .join(",")
        };
        Cluster { dir, nodes, peers }
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn start_all(&mut self) {
        let peers = self.peers.clone();
        for n in &mut self.nodes {
            n.start(&peers, SECRET);
        }
    }

    pub fn start(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.node(id).start(&peers, SECRET);
    }

    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ---\n{}", n.id, tail(&n.log_text(), 30))).collect()
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

pub async fn get(url: &str) -> Option<(u16, Value)> {
    let r = client().get(url).bearer_auth(TOKEN).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

pub async fn put(url: &str, body: Value) -> Option<(u16, Value)> {
    let r = client().put(url).bearer_auth(TOKEN).json(&body).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

pub async fn wait_healthy(node: &Node, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = client().get(node.url("/healthz")).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Leader of every group as `node` reports it (None entries for leaderless groups).
pub async fn leaders(node: &Node) -> Option<Vec<Option<u64>>> {
    let (status, v) = get(&node.url("/api/v1/cluster")).await?;
    if status != 200 {
        return None;
    }
    Some(v["groups"].as_array()?.iter().map(|g| g["leader"].as_u64()).collect())
}

/// Waits until `node` sees every group led by a node in `alive`.
pub async fn wait_all_led(node: &Node, alive: &[u64], within: Duration) -> Option<Vec<u64>> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(ls) = leaders(node).await {
            if !ls.is_empty() && ls.iter().all(|l| l.is_some_and(|l| alive.contains(&l))) {
                return Some(ls.into_iter().flatten().collect());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

pub fn data_dir(node: &Node) -> &Path {
    &node.data
}
