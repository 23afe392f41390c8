//! Local processes: three `ironhub serve` on loopback, owned by this tool.
//!
//! Ports come from one free block of twenty in 23000–23999 (node i uses five from `base+5(i-1)`:
//! MQTT, API, cluster, WebSocket, CoAP — the last two so no node binds its 0.0.0.0 default); data dirs live in a temp dir under /tmp that is removed at the end; each
//! node's stdout/stderr is appended to `<out>/logs/node-<id>.log` across restarts and kept.
//!
//! Faults: kill -9, graceful restart (SIGTERM), pause (SIGSTOP/SIGCONT), rolling restart; with the
//! [`ClusterOptions`] a run asks for: disk full (each data dir on its own small tmpfs, see
//! [`super::disk`]), latency and loss (a UDP relay in front of each cluster port, see
//! [`super::relay`]: the nodes get the relay addresses in `--peers`), clock skew (a start under
//! libfaketime), frequent snapshots (a config file with `[raft]` keys). It cannot cut the network
//! (every node shares loopback; iptables is not available): partition, bridge and one-way need
//! [`super::netns::NetnsBackend`]. Dropping the backend kills every node it started, then
//! unmounts its tmpfs dirs and stops the relays.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::disk::{self, Tmpfs};
use super::relay::{RelayStats, Relays, Route, Rules};
use super::{Backend, ClusterOptions, Cut, NodeEndpoints, NodeId};
use crate::schedule::FaultKind;

/// Where libfaketime may be installed (`apt-get install faketime`); the multi-threaded build, as
/// the node is a multi-threaded process.
const FAKETIME_LIBS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// The libfaketime library, if installed.
pub fn faketime_lib() -> Option<&'static str> {
    FAKETIME_LIBS.into_iter().find(|p| Path::new(p).is_file())
}

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
    /// Port of the UDP relay in front of the cluster port (process backend); the other nodes
    /// reach this one there when relays are on.
    pub relay: u16,
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
    /// Tmpfs data dirs, relays, snapshot settings.
    pub options: ClusterOptions,
}

impl ClusterSpec {
    /// `--peers`: the relay addresses when relays are on (configured peer addresses win over the
    /// ones stored in the membership), else the cluster ports.
    fn peers(&self) -> String {
        let v: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let port = if self.options.relays { n.relay } else { n.cluster };
                format!("{}={}:{}", n.id, n.ip, port)
            })
            .collect();
        v.join(",")
    }

    /// The `--config` file's text, when the options ask for `[raft]` settings.
    fn config_toml(&self) -> Option<String> {
        let o = &self.options;
        if o.snapshot_every.is_none() && o.keep_behind_snapshot.is_none() {
            return None;
        }
        let mut t = String::from("# written by ironhub-chaos\n[raft]\n");
        if let Some(v) = o.snapshot_every {
            t += &format!("snapshot_every = {v}\n");
        }
        if let Some(v) = o.keep_behind_snapshot {
            t += &format!("keep_behind_snapshot = {v}\n");
        }
        Some(t)
    }
}

/// Three (or more) `ironhub serve` processes.
pub struct ProcessBackend {
    spec: ClusterSpec,
    children: Vec<Option<Child>>,
    paused: Vec<bool>,
    /// How each node's last process ended by itself.
    exits: Vec<Option<String>>,
    /// Wall-clock skew for each node's next start.
    skews: Vec<Option<i64>>,
    /// The tmpfs on each node's data dir (unmounted on shutdown, before the temp dir goes).
    tmpfs: Vec<Option<Tmpfs>>,
    /// Why the data dirs are not on tmpfs although a run asked for it.
    tmpfs_error: Option<String>,
    relays: Option<Relays>,
    /// The `--config` file, if any.
    config: Option<PathBuf>,
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
    pub fn new(bin: &Path, out: &Path, n: u64, options: ClusterOptions) -> anyhow::Result<ProcessBackend> {
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
                    // Ports 15.. of the block are free (five per node for three nodes).
                    relay: base + 15 + (id as u16 - 1),
                }
            })
            .collect();
        let spec = ClusterSpec {
            bin: bin.to_path_buf(),
            token: random_token("admin"),
            secret: random_token("secret"),
            nodes,
            options,
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
        let config = match (spec.config_toml(), &data) {
            (Some(text), Some(d)) => {
                let p = d.path().join("ironhub-chaos.toml");
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                Some(p)
            }
            _ => None,
        };
        let mut b = ProcessBackend {
            children: (0..k).map(|_| None).collect(),
            paused: vec![false; k],
            exits: vec![None; k],
            skews: vec![None; k],
            tmpfs: (0..k).map(|_| None).collect(),
            tmpfs_error: None,
            relays: None,
            config,
            _data: data,
            spec,
        };
        if let Some(mb) = b.spec.options.disk_mb {
            if let Err(e) = b.mount_data_dirs(mb) {
                eprintln!(
                    "ironhub-chaos: data dirs are not on tmpfs, disk-full steps will be skipped: {e:#}"
                );
                b.tmpfs_error = Some(format!("{e:#}"));
            }
        }
        if b.spec.options.relays {
            let routes: Vec<Route> = b
                .spec
                .nodes
                .iter()
                .map(|n| -> anyhow::Result<Route> {
                    Ok(Route {
                        node: n.id,
                        listen: format!("{}:{}", n.ip, n.relay).parse()?,
                        upstream: format!("{}:{}", n.ip, n.cluster).parse()?,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            b.relays = Some(Relays::start(&routes)?);
        }
        Ok(b)
    }

    fn mount_data_dirs(&mut self, mb: u64) -> anyhow::Result<()> {
        if !disk::is_root() {
            bail!("mounting a tmpfs needs root");
        }
        for i in 0..self.spec.nodes.len() {
            match Tmpfs::mount(&self.spec.nodes[i].data_dir, mb) {
                Ok(t) => self.tmpfs[i] = Some(t),
                Err(e) => {
                    self.tmpfs.iter_mut().for_each(|t| *t = None);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn tmpfs_of(&self, id: NodeId) -> anyhow::Result<&Tmpfs> {
        let i = self.index(id)?;
        self.tmpfs[i].as_ref().ok_or_else(|| {
            anyhow!(
                "node {id}'s data dir is not on a tmpfs ({})",
                self.tmpfs_error.as_deref().unwrap_or("the run did not ask for one")
            )
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
        match kind {
            FaultKind::DiskFull if self.tmpfs.iter().any(Option::is_none) => Err(format!(
                "the data dirs are not on tmpfs: {}",
                self.tmpfs_error.as_deref().unwrap_or("the run did not ask for them")
            )),
            FaultKind::Latency if self.relays.is_none() => {
                Err("the nodes were started without the UDP relays (a run with a latency step starts them)"
                    .into())
            }
            FaultKind::ClockSkew if faketime_lib().is_none() => {
                Err("libfaketime is not installed (apt-get install faketime)".into())
            }
            _ => Ok(()),
        }
    }

    fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        let i = self.index(id)?;
        if let Some(c) = &mut self.children[i] {
            if c.try_wait().ok().flatten().is_none() {
                bail!("node {id} is already running");
            }
        }
        let n = &self.spec.nodes[i];
        let skew = self.skews[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("opening {}", n.log.display()))?;
        match skew {
            Some(s) => {
                let _ = writeln!(
                    log,
                    "==== ironhub-chaos: starting node {id}, wall clock {s:+} s (libfaketime) ===="
                );
            }
            None => {
                let _ = writeln!(log, "==== ironhub-chaos: starting node {id} ====");
            }
        }
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
            .arg(&self.spec.token);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(s) = skew {
            let lib = faketime_lib()
                .ok_or_else(|| anyhow!("libfaketime is not installed (apt-get install faketime)"))?;
            // Only the wall clock moves: tokio's timers and raft's leases run on the monotonic clock.
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{s:+}"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_DONT_RESET", "1");
        }
        cmd.stdin(Stdio::null())
            // Its own process group: a Ctrl-C at the terminal reaches the tool (which heals and
            // reports), not every node at once.
            .process_group(0)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().with_context(|| format!("starting {}", self.spec.bin.display()))?;
        self.children[i] = Some(child);
        self.paused[i] = false;
        self.exits[i] = None;
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
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(st)) => {
                    self.exits[i] = Some(st.to_string());
                    false
                }
                Err(_) => false,
            },
            None => false,
        }
    }

    fn exit_status(&mut self, id: NodeId) -> Option<String> {
        if self.is_alive(id) {
            return None;
        }
        self.exits[self.index(id).ok()?].clone()
    }

    fn fill_disk(&mut self, id: NodeId) -> anyhow::Result<u64> {
        self.tmpfs_of(id)?.fill()
    }

    fn free_disk(&mut self, id: NodeId) -> anyhow::Result<u64> {
        self.tmpfs_of(id)?.free()
    }

    fn disk_usage(&self, id: NodeId) -> Option<(u64, u64)> {
        self.tmpfs_of(id).ok()?.usage().ok()
    }

    fn impair(&mut self, rules: Rules) -> anyhow::Result<()> {
        match &self.relays {
            Some(r) => {
                r.set_rules(rules);
                Ok(())
            }
            None if rules.is_empty() => Ok(()),
            None => bail!("no relays: the nodes were started without them"),
        }
    }

    fn relay_stats(&mut self) -> Option<RelayStats> {
        self.relays.as_ref().map(Relays::take_stats)
    }

    fn set_clock_skew(&mut self, id: NodeId, skew_s: Option<i64>) -> anyhow::Result<()> {
        if skew_s.is_some() && faketime_lib().is_none() {
            bail!("libfaketime is not installed (apt-get install faketime)");
        }
        let i = self.index(id)?;
        self.skews[i] = skew_s;
        Ok(())
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
        // After the processes are gone: unmount (the temp dir is removed after this), stop relaying.
        for t in self.tmpfs.iter_mut() {
            if let Some(mut t) = t.take() {
                t.unmount();
            }
        }
        self.relays = None;
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
        let e =
            ProcessBackend::new(Path::new("/nonexistent/ironhub"), out.path(), 3, ClusterOptions::default())
                .err()
                .unwrap();
        assert!(e.to_string().contains("IRONHUB_BIN"), "{e}");
    }

    #[test]
    fn a_real_process_is_killed_paused_and_reaped() {
        // `sleep` stands in for the binary: the signals and reaping are what is tested here.
        let out = tempfile::tempdir().unwrap();
        let mut b =
            ProcessBackend::new(Path::new("/bin/sleep"), out.path(), 1, ClusterOptions::default()).unwrap();
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
