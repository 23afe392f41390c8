//! Local processes: three `ironhub serve` on loopback, owned by this tool.
//!
//! Ports come from one free block of twenty in 23000–23999 (node i uses five from `base+5(i-1)`:
//! MQTT, API, cluster, WebSocket, CoAP — the last two so no node binds its 0.0.0.0 default); data dirs live in a temp dir under /tmp that is removed at the end; each
//! node's stdout/stderr is appended to `<out>/logs/node-<id>.log` across restarts and kept.
//!
//! Faults: kill -9, graceful restart (SIGTERM), pause (SIGSTOP/SIGCONT), rolling restart. It cannot
//! cut the network (every node shares loopback; iptables is not available): partition, bridge and
//! one-way need [`super::netns::NetnsBackend`]. Dropping the backend kills every node it started.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::{Backend, Cut, NodeEndpoints, NodeId};
use crate::schedule::FaultKind;

/// The lowest and highest port this tool may use.
pub const PORT_RANGE: (u16, u16) = (23000, 23999);

/// How one node is launched.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id.
    pub id: NodeId,
    /// IP the node binds and is reached at.
    pub ip: String,
    /// MQTT port.
    pub mqtt: u16,
    /// API port.
    pub api: u16,
    /// Cluster (QUIC) port.
    pub cluster: u16,
    /// MQTT over WebSocket port.
    pub ws: u16,
    /// CoAP port.
    pub coap: u16,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Words put before the binary (e.g. `ip netns exec NS`); empty for a plain process.
    pub wrapper: Vec<String>,
}

/// What the nodes share.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `ironhub` binary.
    pub bin: PathBuf,
    /// `--admin-token`.
    pub token: String,
    /// `--cluster-secret`.
    pub secret: String,
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
}

impl ClusterSpec {
    fn peers(&self) -> String {
        let v: Vec<String> = self.nodes.iter().map(|n| format!("{}={}:{}", n.id, n.ip, n.cluster)).collect();
        v.join(",")
    }
}

/// Three (or more) `ironhub serve` processes.
pub struct ProcessBackend {
    spec: ClusterSpec,
    children: Vec<Option<Child>>,
    paused: Vec<bool>,
    /// Keeps the data dirs alive until the backend is dropped.
    _data: Option<tempfile::TempDir>,
}

/// Ports in a block.
pub const BLOCK: u16 = 20;

/// Finds a block of [`BLOCK`] free ports in [`PORT_RANGE`], starting at a place derived from our
/// pid so concurrent runs rarely probe the same block. `ip` is where the ports are probed.
pub fn free_port_block(ip: &str) -> anyhow::Result<u16> {
    let blocks = u32::from(PORT_RANGE.1 - PORT_RANGE.0 + 1) / u32::from(BLOCK);
    let first = std::process::id() % blocks;
    for i in 0..blocks {
        let base = PORT_RANGE.0 + ((first + i) % blocks) as u16 * BLOCK;
        let ok = (base..base + BLOCK)
            .all(|p| TcpListener::bind((ip, p)).is_ok() && UdpSocket::bind((ip, p)).is_ok());
        if ok {
            return Ok(base);
        }
    }
    bail!("no block of {BLOCK} free ports in {}–{} on {ip}", PORT_RANGE.0, PORT_RANGE.1)
}

impl ProcessBackend {
    /// Lays out a cluster of `n` nodes on loopback with data under a new temp dir in /tmp and logs
    /// under `out/logs`. Nothing is started yet.
    pub fn new(bin: &Path, out: &Path, n: u64) -> anyhow::Result<ProcessBackend> {
        let base = free_port_block("127.0.0.1")?;
        let data = tempfile::Builder::new()
            .prefix("ironhub-chaos-")
            .tempdir_in("/tmp")
            .context("creating the data dir under /tmp")?;
        let nodes = (1..=n)
            .map(|id| {
                let o = base + (id as u16 - 1) * 5;
                NodeSpec {
                    id,
                    ip: "127.0.0.1".into(),
                    mqtt: o,
                    api: o + 1,
                    cluster: o + 2,
                    ws: o + 3,
                    coap: o + 4,
                    data_dir: data.path().join(format!("n{id}")),
                    log: out.join("logs").join(format!("node-{id}.log")),
                    wrapper: Vec::new(),
                }
            })
            .collect();
        let spec = ClusterSpec {
            bin: bin.to_path_buf(),
            token: random_token("admin"),
            secret: random_token("secret"),
            nodes,
        };
        ProcessBackend::with_spec(spec, Some(data))
    }

    /// A backend for a spec laid out by someone else (the netns backend).
    pub fn with_spec(spec: ClusterSpec, data: Option<tempfile::TempDir>) -> anyhow::Result<ProcessBackend> {
        if !spec.bin.is_file() {
            bail!(
                "no ironhub binary at {} (build it with `cargo build --release -p ironhub-broker`, or pass --bin / set IRONHUB_BIN)",
                spec.bin.display()
            );
        }
        for n in &spec.nodes {
            if let Some(dir) = n.log.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let k = spec.nodes.len();
        Ok(ProcessBackend {
            spec,
            children: (0..k).map(|_| None).collect(),
            paused: vec![false; k],
            _data: data,
        })
    }

    fn index(&self, id: NodeId) -> anyhow::Result<usize> {
        self.spec.nodes.iter().position(|n| n.id == id).ok_or_else(|| anyhow!("no node {id} in this cluster"))
    }

    fn signal(&self, id: NodeId, sig: &str) -> anyhow::Result<()> {
        let i = self.index(id)?;
        let Some(child) = &self.children[i] else { bail!("node {id} is not running") };
        let st = Command::new("kill")
            .args(["-s", sig, &child.id().to_string()])
            .status()
            .with_context(|| format!("running kill -s {sig}"))?;
        if !st.success() {
            bail!("kill -s {sig} {} (node {id}) failed", child.id());
        }
        Ok(())
    }
}

fn random_token(what: &str) -> String {
    format!("chaos-{what}-{:016x}", rand::random::<u64>())
}

impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn nodes(&self) -> Vec<NodeEndpoints> {
        self.spec
            .nodes
            .iter()
            .map(|n| NodeEndpoints {
                id: n.id,
                api: format!("http://{}:{}", n.ip, n.api),
                mqtt_host: n.ip.clone(),
                mqtt_port: n.mqtt,
            })
            .collect()
    }

    fn admin_token(&self) -> String {
        self.spec.token.clone()
    }

    fn supports(&self, kind: FaultKind) -> Result<(), String> {
        if kind.is_network() {
            return Err(format!(
                "the process backend cannot cut the network ({kind}); use --backend netns (needs root and `ip netns`)"
            ));
        }
        Ok(())
    }

    fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        let i = self.index(id)?;
        if let Some(c) = &mut self.children[i] {
            if c.try_wait().ok().flatten().is_none() {
                bail!("node {id} is already running");
            }
        }
        let n = &self.spec.nodes[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("opening {}", n.log.display()))?;
        let _ = writeln!(log, "==== ironhub-chaos: starting node {id} ====");
        let err = log.try_clone()?;
        let (program, pre): (&std::ffi::OsStr, Vec<&str>) = match n.wrapper.split_first() {
            Some((p, rest)) => (p.as_ref(), rest.iter().map(String::as_str).collect()),
            None => (self.spec.bin.as_os_str(), Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(pre);
        if !n.wrapper.is_empty() {
            cmd.arg(&self.spec.bin);
        }
        cmd.arg("serve")
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&n.data_dir)
            .arg("--api")
            .arg(format!("{}:{}", n.ip, n.api))
            .arg("--cluster")
            .arg(format!("{}:{}", n.ip, n.cluster))
            .arg("--mqtt")
            .arg(format!("{}:{}", n.ip, n.mqtt))
            .arg("--ws")
            .arg(format!("{}:{}", n.ip, n.ws))
            .arg("--coap")
            .arg(format!("{}:{}", n.ip, n.coap))
            .arg("--peers")
            .arg(self.spec.peers())
            .arg("--cluster-secret")
            .arg(&self.spec.secret)
            .arg("--admin-token")
            .arg(&self.spec.token)
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C at the terminal reaches the tool (which heals and
            // reports), not every node at once.
            .process_group(0)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().with_context(|| format!("starting {}", self.spec.bin.display()))?;
        self.children[i] = Some(child);
        self.paused[i] = false;
        Ok(())
    }

    fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        let i = self.index(id)?;
        let Some(mut c) = self.children[i].take() else { bail!("node {id} is not running") };
        c.kill().with_context(|| format!("kill -9 node {id}"))?;
        c.wait().with_context(|| format!("reaping node {id}"))?;
        self.paused[i] = false;
        Ok(())
    }

    fn stop(&mut self, id: NodeId, timeout: Duration) -> anyhow::Result<bool> {
        let i = self.index(id)?;
        if self.paused[i] {
            self.resume(id)?;
        }
        self.signal(id, "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = &mut self.children[i] else { return Ok(true) };
            if c.try_wait()?.is_some() {
                self.children[i] = None;
                return Ok(true);
            }
            if Instant::now() >= deadline {
                self.kill(id)?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pause(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.signal(id, "STOP")?;
        let i = self.index(id)?;
        self.paused[i] = true;
        Ok(())
    }

    fn resume(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.signal(id, "CONT")?;
        let i = self.index(id)?;
        self.paused[i] = false;
        Ok(())
    }

    fn cut(&mut self, _cuts: &[Cut]) -> anyhow::Result<()> {
        bail!("the process backend cannot cut the network; use --backend netns")
    }

    fn heal_network(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn is_alive(&mut self, id: NodeId) -> bool {
        let Ok(i) = self.index(id) else { return false };
        match &mut self.children[i] {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn logs(&self) -> Vec<PathBuf> {
        self.spec.nodes.iter().map(|n| n.log.clone()).collect()
    }

    fn shutdown(&mut self) {
        for c in self.children.iter_mut() {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_block_is_in_range_and_free() {
        let b = free_port_block("127.0.0.1").unwrap();
        assert!(b >= PORT_RANGE.0 && b + BLOCK - 1 <= PORT_RANGE.1, "{b}");
        assert_eq!((b - PORT_RANGE.0) % BLOCK, 0);
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let out = tempfile::tempdir().unwrap();
        let e = ProcessBackend::new(Path::new("/nonexistent/ironhub"), out.path(), 3).err().unwrap();
        assert!(e.to_string().contains("IRONHUB_BIN"), "{e}");
    }

    #[test]
    fn a_real_process_is_killed_paused_and_reaped() {
        // `sleep` stands in for the binary: the signals and reaping are what is tested here.
        let out = tempfile::tempdir().unwrap();
        let mut b = ProcessBackend::new(Path::new("/bin/sleep"), out.path(), 1).unwrap();
        // sleep rejects `serve ...`, so wrap it in sh to keep it alive for the test.
        b.spec.nodes[0].wrapper = vec!["sh".into(), "-c".into(), "exec sleep 30".into()];
        b.start(1).unwrap();
        assert!(b.is_alive(1));
        b.pause(1).unwrap();
        b.resume(1).unwrap();
        b.kill(1).unwrap();
        assert!(!b.is_alive(1));
        assert!(b.kill(1).is_err());
        b.start(1).unwrap();
        assert!(b.stop(1, Duration::from_secs(5)).unwrap());
        assert!(!b.is_alive(1));
    }
}
