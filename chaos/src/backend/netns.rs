//! Network namespaces: each node in its own namespace with its own address, so the network can be
//! cut for real.
//!
//! Layout (all names carry a per-run id, so concurrent runs do not collide): a switch namespace
//! `ihc<run>-sw` holding a bridge; a veth from the root namespace (10.213.X.254/24) to the bridge;
//! per node a namespace `ihc<run>-n<i>` holding one end of a veth pair (10.213.X.i/24) whose other
//! end is on the bridge. The tool itself stays in the root
//! namespace and reaches every node's MQTT and API through the bridge, so clients are never cut off
//! by a partition (a client on the minority side sees what a device there would see).
//!
//! Cuts are blackhole routes in the sender's namespace (`ip route add blackhole <peer>/32`): a
//! directed cut drops the packets one node sends to another, so a partition is two cuts per pair,
//! a one-way fault cuts only the sending side, a bridge cuts the two non-bridge nodes from each other.
//! Latency and loss would need `tc netem` (this kernel has no `sch_netem`) or the process backend's
//! UDP relays, which cannot sit between namespaces without defeating the blackhole cuts (every peer
//! would be the relay's address): not offered here. Disk full, clock skew and snapshot lag are the
//! process backend's (the nodes are its processes, wrapped in `ip netns exec`).
//! Needs root (or CAP_NET_ADMIN) and `ip` from iproute2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::process::{ClusterSpec, NodeSpec, ProcessBackend};
use super::relay::{RelayStats, Rules};
use super::{Backend, ClusterOptions, Cut, NodeEndpoints, NodeId};
use crate::schedule::FaultKind;

/// The ports every node uses inside its namespace (in the tool's 23000–23999 range).
const MQTT_PORT: u16 = 23000;

/// Nodes in network namespaces joined by a bridge.
pub struct NetnsBackend {
    procs: ProcessBackend,
    run: String,
    subnet: u8,
    n: u64,
    cuts: Vec<Cut>,
    set_up: bool,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl NetnsBackend {
    /// Checks that namespaces can be made here (root, `ip netns`); the error says what is missing.
    pub fn available() -> anyhow::Result<()> {
        let probe = format!("ihc-probe-{}", std::process::id());
        ip(&["netns", "add", &probe])
            .context("the netns backend needs root (or CAP_NET_ADMIN) and `ip netns`")?;
        ip(&["netns", "del", &probe])
    }

    /// Creates the bridge, namespaces and veths for `n` nodes; nothing is started yet. Everything
    /// made here is removed by [`Backend::shutdown`] (also on drop).
    pub fn new(bin: &Path, out: &Path, n: u64, options: ClusterOptions) -> anyhow::Result<NetnsBackend> {
        Self::available()?;
        let run = format!("{:04x}", rand::random::<u16>());
        let subnet = 1 + rand::random::<u8>() % 250;
        let data = tempfile::Builder::new()
            .prefix("ironhub-chaos-")
            .tempdir_in("/tmp")
            .context("creating the data dir under /tmp")?;
        let nodes = (1..=n)
            .map(|id| NodeSpec {
                id,
                ip: format!("10.213.{subnet}.{id}"),
                mqtt: MQTT_PORT,
                api: MQTT_PORT + 1,
                cluster: MQTT_PORT + 2,
                ws: MQTT_PORT + 3,
                coap: MQTT_PORT + 4,
                data_dir: data.path().join(format!("n{id}")),
                log: out.join("logs").join(format!("node-{id}.log")),
                wrapper: vec!["ip".into(), "netns".into(), "exec".into(), format!("ihc{run}-n{id}")],
                relay: MQTT_PORT + 5,
            })
            .collect();
        let spec = ClusterSpec {
            bin: bin.to_path_buf(),
            token: format!("chaos-admin-{:016x}", rand::random::<u64>()),
            secret: format!("chaos-secret-{:016x}", rand::random::<u64>()),
            nodes,
            options: ClusterOptions { relays: false, ..options },
        };
        let procs = ProcessBackend::with_spec(spec, Some(data))?;
        let mut b = NetnsBackend { procs, run, subnet, n, cuts: Vec::new(), set_up: true };
        if let Err(e) = b.set_up_network() {
            b.shutdown();
            return Err(e);
        }
        Ok(b)
    }

    fn ns(&self, id: NodeId) -> String {
        format!("ihc{}-n{id}", self.run)
    }

    fn addr(&self, id: NodeId) -> String {
        format!("10.213.{}.{id}", self.subnet)
    }

    fn switch(&self) -> String {
        format!("ihc{}-sw", self.run)
    }

    fn set_up_network(&mut self) -> anyhow::Result<()> {
        // The bridge lives in its own namespace: there br_netfilter finds no iptables rules (the
        // root namespace may have docker's FORWARD DROP policy, which would drop bridged traffic).
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let host = format!("ihc{}h0", self.run);
        let host_port = format!("ihc{}s0", self.run);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &host_port])?;
        ip(&["link", "set", &host_port, "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", &host_port, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("10.213.{}.254/24", self.subnet), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        for id in 1..=self.n {
            let ns = self.ns(id);
            let port = format!("ihc{}s{id}", self.run);
            let node_end = format!("ihc{}v{id}", self.run);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &port, "type", "veth", "peer", "name", &node_end])?;
            ip(&["link", "set", &node_end, "netns", &ns])?;
            ip(&["link", "set", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(id)), "dev", &node_end])?;
            ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }
}

impl Backend for NetnsBackend {
    fn name(&self) -> &'static str {
        "netns"
    }
    fn nodes(&self) -> Vec<NodeEndpoints> {
        self.procs.nodes()
    }
    fn admin_token(&self) -> String {
        self.procs.admin_token()
    }
    fn supports(&self, kind: FaultKind) -> Result<(), String> {
        match kind {
            FaultKind::Latency => Err(
                "the netns backend has no latency/loss (no sch_netem in this kernel; the relays are the process backend's): use --backend process".into(),
            ),
            k if k.is_network() => Ok(()),
            k => self.procs.supports(k),
        }
    }
    fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.procs.start(id)
    }
    fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.procs.kill(id)
    }
    fn stop(&mut self, id: NodeId, timeout: Duration) -> anyhow::Result<bool> {
        self.procs.stop(id, timeout)
    }
    fn pause(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.procs.pause(id)
    }
    fn resume(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.procs.resume(id)
    }
    fn cut(&mut self, cuts: &[Cut]) -> anyhow::Result<()> {
        for c in cuts {
            if self.cuts.contains(c) {
                continue;
            }
            ip(&["-n", &self.ns(c.from), "route", "add", "blackhole", &format!("{}/32", self.addr(c.to))])?;
            self.cuts.push(*c);
        }
        Ok(())
    }
    fn heal_network(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for c in std::mem::take(&mut self.cuts) {
            let r = ip(&[
                "-n",
                &self.ns(c.from),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.addr(c.to)),
            ]);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
    fn is_alive(&mut self, id: NodeId) -> bool {
        self.procs.is_alive(id)
    }
    fn logs(&self) -> Vec<PathBuf> {
        self.procs.logs()
    }
    fn exit_status(&mut self, id: NodeId) -> Option<String> {
        self.procs.exit_status(id)
    }
    fn fill_disk(&mut self, id: NodeId) -> anyhow::Result<u64> {
        self.procs.fill_disk(id)
    }
    fn free_disk(&mut self, id: NodeId) -> anyhow::Result<u64> {
        self.procs.free_disk(id)
    }
    fn disk_usage(&self, id: NodeId) -> Option<(u64, u64)> {
        self.procs.disk_usage(id)
    }
    fn impair(&mut self, rules: Rules) -> anyhow::Result<()> {
        self.procs.impair(rules)
    }
    fn relay_stats(&mut self) -> Option<RelayStats> {
        None
    }
    fn set_clock_skew(&mut self, id: NodeId, skew_s: Option<i64>) -> anyhow::Result<()> {
        self.procs.set_clock_skew(id, skew_s)
    }
    fn shutdown(&mut self) {
        self.procs.shutdown();
        if !self.set_up {
            return;
        }
        self.set_up = false;
        // Deleting a namespace deletes the veths in it, and with them their peers.
        for id in 1..=self.n {
            let _ = ip(&["netns", "del", &self.ns(id)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

impl Drop for NetnsBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether node `from` can open a TCP connection to `to`'s port (run inside `from`'s namespace).
    fn reaches(b: &NetnsBackend, from: NodeId, to: NodeId, port: u16) -> bool {
        let code = format!(
            "import socket,sys\ns=socket.socket()\ns.settimeout(1)\nsys.exit(0 if s.connect_ex(('{}',{port}))==0 else 1)",
            b.addr(to)
        );
        Command::new("ip")
            .args(["netns", "exec", &b.ns(from), "python3", "-c", &code])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    #[test]
    fn cuts_drop_traffic_one_way_and_heal_restores_it() {
        if let Err(e) = NetnsBackend::available() {
            eprintln!("skipped: {e:#} (this test needs root and `ip netns`)");
            return;
        }
        let out = tempfile::tempdir().unwrap();
        let mut b =
            NetnsBackend::new(Path::new("/bin/true"), out.path(), 2, ClusterOptions::default()).unwrap();
        let (ns1, ns2) = (b.ns(1), b.ns(2));
        // A listener in each namespace.
        let mut listeners: Vec<std::process::Child> = [(1u64, &ns1), (2, &ns2)]
            .iter()
            .map(|(id, ns)| {
                let code = format!(
                    "import socket,time\ns=socket.socket()\ns.bind(('{}',23009))\ns.listen(16)\nwhile True:\n  c,_=s.accept()\n  c.close()",
                    b.addr(*id)
                );
                Command::new("ip").args(["netns", "exec", ns, "python3", "-c", &code]).spawn().unwrap()
            })
            .collect();
        struct Reap(Vec<std::process::Child>);
        impl Drop for Reap {
            fn drop(&mut self) {
                for l in &mut self.0 {
                    let _ = l.kill();
                    let _ = l.wait();
                }
            }
        }
        let reap = Reap(std::mem::take(&mut listeners));
        std::thread::sleep(Duration::from_millis(500));
        assert!(reaches(&b, 1, 2, 23009) && reaches(&b, 2, 1, 23009));
        b.cut(&[Cut { from: 1, to: 2 }]).unwrap();
        assert!(!reaches(&b, 1, 2, 23009), "1 -> 2 must be cut");
        b.heal_network().unwrap();
        assert!(reaches(&b, 1, 2, 23009) && reaches(&b, 2, 1, 23009));
        drop(reap);
        b.shutdown();
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&ns1), "namespaces must be removed");
    }
}
