//! UDP relays in front of the nodes' cluster ports: latency and loss without `tc netem`.
//!
//! The cluster transport is QUIC over UDP. When a run asks for the `latency` fault, the process
//! backend gives every node a relay port and passes the relay addresses in `--peers`, so every
//! packet one node sends another goes through the relay of the receiver: the relay keeps one
//! upstream socket per sender (the sender's cluster address identifies the sending node, the
//! transport dials from its one endpoint) and sends the replies back through its own port.
//!
//! Every packet therefore has a direction `from → to` between two nodes, and [`Rules`] says what
//! happens to it: nothing (the default: forwarded at once), or an [`Impairment`] — dropped with
//! probability `loss_pct`, else delayed by `delay ± jitter` (uniform; packets may overtake each other,
//! as with netem's jitter). [`decide`] is that rule as a pure function, so it is unit-tested.
//!
//! The relays run on their own thread with a single-threaded tokio runtime, so the workload's load
//! on the tool's runtime never delays cluster packets. [`Relays`] is the handle: change the rules,
//! read the counters; dropping it stops the thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

use super::NodeId;
use crate::schedule::Impairment;

/// Largest datagram relayed (QUIC keeps below 1500; loopback allows up to 64 KiB).
const MAX_DATAGRAM: usize = 65_535;
/// Upstream sockets per relay (one per sending node; the rest is refused, never grows unbounded).
const MAX_SENDERS: usize = 64;

/// Impairments per directed link. Empty: every packet is forwarded at once.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rules {
    links: HashMap<(NodeId, NodeId), Impairment>,
}

impl Rules {
    /// Impairs every link of `node` to and from each of `others`, both directions.
    pub fn set_node(&mut self, node: NodeId, others: &[NodeId], imp: Impairment) {
        for &o in others.iter().filter(|&&o| o != node) {
            self.set_link(node, o, imp);
        }
    }

    /// Impairs the link between `a` and `b`, both directions.
    pub fn set_link(&mut self, a: NodeId, b: NodeId, imp: Impairment) {
        self.links.insert((a, b), imp);
        self.links.insert((b, a), imp);
    }

    /// The impairment of a packet from `from` (None: not a node's cluster address) to `to`.
    pub fn get(&self, from: Option<NodeId>, to: Option<NodeId>) -> Option<Impairment> {
        self.links.get(&(from?, to?)).copied()
    }

    /// Whether no link is impaired.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sent after this delay (zero: at once).
    Forward(Duration),
    /// Dropped.
    Drop,
}

/// The fate of one packet under `imp`: dropped with probability `loss_pct`%, else delayed by a
/// delay drawn uniformly from `delay ± jitter` (never below zero).
pub fn decide(imp: Option<Impairment>, rng: &mut impl Rng) -> Verdict {
    let Some(i) = imp else { return Verdict::Forward(Duration::ZERO) };
    if i.loss_pct > 0.0 && rng.random_range(0.0..100.0) < i.loss_pct {
        return Verdict::Drop;
    }
    let lo = i.delay_ms.saturating_sub(i.jitter_ms);
    let hi = i.delay_ms + i.jitter_ms;
    let ms = if hi > lo { rng.random_range(lo..=hi) } else { i.delay_ms };
    Verdict::Forward(Duration::from_millis(ms))
}

/// Packet counters of all relays since the start (or the last [`Relays::take_stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Packets sent on at once.
    pub forwarded: u64,
    /// Packets sent on after a delay.
    pub delayed: u64,
    /// Packets dropped.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn count(&self, v: Verdict) {
        let c = match v {
            Verdict::Drop => &self.dropped,
            Verdict::Forward(d) if d.is_zero() => &self.forwarded,
            Verdict::Forward(_) => &self.delayed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Shared {
    rules: Mutex<Rules>,
    counters: Counters,
    /// Cluster address → node id, to tell which node sent a packet.
    senders: HashMap<SocketAddr, NodeId>,
}

impl Shared {
    fn verdict(&self, from: Option<NodeId>, to: Option<NodeId>, rng: &mut StdRng) -> Verdict {
        let imp = {
            let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
            if rules.is_empty() {
                None
            } else {
                rules.get(from, to)
            }
        };
        let v = decide(imp, rng);
        self.counters.count(v);
        v
    }
}

/// One relay: packets to `listen` go to the node `node` at `upstream`.
#[derive(Debug, Clone)]
pub struct Route {
    /// The node behind the relay.
    pub node: NodeId,
    /// The relay's address (what the other nodes have in `--peers`).
    pub listen: SocketAddr,
    /// The node's own cluster address.
    pub upstream: SocketAddr,
}

/// The running relays (a thread of their own). Dropping the handle stops them.
pub struct Relays {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relays {
    /// Binds every route's listening socket (an error names the address) and starts relaying.
    pub fn start(routes: &[Route]) -> anyhow::Result<Relays> {
        let mut sockets = Vec::new();
        for r in routes {
            let s = std::net::UdpSocket::bind(r.listen)
                .with_context(|| format!("binding the UDP relay of node {} on {}", r.node, r.listen))?;
            s.set_nonblocking(true)?;
            sockets.push((r.clone(), s));
        }
        let shared = Arc::new(Shared {
            rules: Mutex::new(Rules::default()),
            counters: Counters::default(),
            senders: routes.iter().map(|r| (r.upstream, r.node)).collect(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the relays' runtime")?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("chaos-relays".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (route, sock) in sockets {
                        match UdpSocket::from_std(sock) {
                            Ok(s) => {
                                tasks.spawn(relay(route, Arc::new(s), sh.clone()));
                            }
                            Err(e) => eprintln!("ironhub-chaos: relay of node {}: {e}", route.node),
                        }
                    }
                    let _ = rx.await;
                    tasks.abort_all();
                });
            })
            .context("starting the relay thread")?;
        Ok(Relays { shared, stop: Some(tx), thread: Some(thread) })
    }

    /// Replaces the rules.
    pub fn set_rules(&self, rules: Rules) {
        *self.shared.rules.lock().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    /// Counters since the last call (or the start); resets them.
    pub fn take_stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        RelayStats {
            forwarded: c.forwarded.swap(0, Ordering::Relaxed),
            delayed: c.delayed.swap(0, Ordering::Relaxed),
            dropped: c.dropped.swap(0, Ordering::Relaxed),
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `buf` to `to` through `sock` after the verdict's delay (or not at all). (`try_send` would
/// fail on a fresh socket whose writability the reactor has not seen yet: the send is awaited.)
async fn send_after(v: Verdict, sock: &Arc<UdpSocket>, buf: &[u8], to: Option<SocketAddr>) {
    match v {
        Verdict::Drop => {}
        Verdict::Forward(d) if d.is_zero() => {
            let _ = match to {
                Some(a) => sock.send_to(buf, a).await,
                None => sock.send(buf).await,
            };
        }
        Verdict::Forward(d) => {
            let sock = sock.clone();
            let buf = buf.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = match to {
                    Some(a) => sock.send_to(&buf, a).await,
                    None => sock.send(&buf).await,
                };
            });
        }
    }
}

/// One relay's loop: from senders to the node through a per-sender upstream socket, and back.
async fn relay(route: Route, listen: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = listen.recv_from(&mut buf).await else { continue };
        let up = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                if upstreams.len() >= MAX_SENDERS {
                    continue;
                }
                let Ok(u) = UdpSocket::bind((route.upstream.ip(), 0)).await else { continue };
                if u.connect(route.upstream).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                upstreams.insert(client, u.clone());
                tokio::spawn(back(route.node, client, u.clone(), listen.clone(), shared.clone()));
                u
            }
        };
        let from = shared.senders.get(&client).copied();
        let v = shared.verdict(from, Some(route.node), &mut rng);
        send_after(v, &up, &buf[..n], None).await;
    }
}

/// Replies from the node to one sender, sent back from the relay's own address.
async fn back(
    node: NodeId,
    client: SocketAddr,
    up: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    shared: Arc<Shared>,
) {
    let to = shared.senders.get(&client).copied();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // A restarted node refuses packets for a moment (ICMP → ECONNREFUSED): keep going.
        let Ok(n) = up.recv(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let v = shared.verdict(Some(node), to, &mut rng);
        send_after(v, &listen, &buf[..n], Some(client)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imp(delay_ms: u64, jitter_ms: u64, loss_pct: f64) -> Impairment {
        Impairment { delay_ms, jitter_ms, loss_pct }
    }

    #[test]
    fn no_rule_forwards_at_once() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(decide(None, &mut rng), Verdict::Forward(Duration::ZERO));
        let r = Rules::default();
        assert_eq!(r.get(Some(1), Some(2)), None);
    }

    #[test]
    fn loss_drops_about_its_share_and_delay_stays_within_the_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        let i = imp(100, 20, 30.0);
        let (mut dropped, mut sum, mut n) = (0u32, 0u128, 0u32);
        for _ in 0..20_000 {
            match decide(Some(i), &mut rng) {
                Verdict::Drop => dropped += 1,
                Verdict::Forward(d) => {
                    assert!((80..=120).contains(&d.as_millis()), "{d:?}");
                    sum += d.as_millis();
                    n += 1;
                }
            }
        }
        let share = f64::from(dropped) / 20_000.0;
        assert!((0.28..0.32).contains(&share), "{share}");
        let mean = sum as f64 / f64::from(n);
        assert!((98.0..102.0).contains(&mean), "{mean}");
        for _ in 0..1000 {
            assert_eq!(decide(Some(imp(0, 0, 100.0)), &mut rng), Verdict::Drop);
            assert_eq!(decide(Some(imp(50, 0, 0.0)), &mut rng), Verdict::Forward(Duration::from_millis(50)));
        }
        // A jitter larger than the delay never goes below zero.
        for _ in 0..1000 {
            let Verdict::Forward(d) = decide(Some(imp(5, 10, 0.0)), &mut rng) else { panic!() };
            assert!(d.as_millis() <= 15);
        }
    }

    #[test]
    fn node_rules_cover_its_links_both_ways_and_nothing_else() {
        let mut r = Rules::default();
        let i = imp(100, 0, 0.0);
        r.set_node(1, &[1, 2, 3], i);
        for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
            assert_eq!(r.get(Some(a), Some(b)), Some(i), "{a}->{b}");
        }
        assert_eq!(r.get(Some(2), Some(3)), None);
        assert_eq!(r.get(None, Some(1)), None, "a packet from no node is never impaired");
        let mut l = Rules::default();
        l.set_link(2, 3, i);
        assert_eq!((l.get(Some(3), Some(2)), l.get(Some(1), Some(2))), (Some(i), None));
        assert!(!r.is_empty() && Rules::default().is_empty());
    }

    #[test]
    fn counters_split_forwarded_delayed_and_dropped() {
        let c = Counters::default();
        c.count(Verdict::Drop);
        c.count(Verdict::Forward(Duration::ZERO));
        c.count(Verdict::Forward(Duration::ZERO));
        c.count(Verdict::Forward(Duration::from_millis(3)));
        assert_eq!(
            (
                c.forwarded.load(Ordering::Relaxed),
                c.delayed.load(Ordering::Relaxed),
                c.dropped.load(Ordering::Relaxed)
            ),
            (2, 1, 1)
        );
    }

    /// A UDP echo "node" behind a relay: packets go through, are delayed both ways when the link is
    /// impaired, are all dropped at 100% loss, and flow again after the rules are cleared.
    #[test]
    fn a_real_relay_forwards_delays_and_drops() {
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut b) {
                let _ = echo.send_to(&b[..n], from);
            }
        });
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let listen = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let routes = vec![
            Route { node: 1, listen, upstream: echo_addr },
            // The client stands for node 2: its address is a known cluster address.
            Route { node: 2, listen: "127.0.0.1:0".parse().unwrap(), upstream: client.local_addr().unwrap() },
        ];
        let relays = Relays::start(&routes).unwrap();
        let ping = |tag: u8| -> Option<Duration> {
            let t = std::time::Instant::now();
            client.send_to(&[tag], listen).unwrap();
            let mut b = [0u8; 8];
            loop {
                match client.recv_from(&mut b) {
                    Ok((1, _)) if b[0] == tag => return Some(t.elapsed()),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        };
        assert!(ping(1).is_some_and(|d| d < Duration::from_millis(200)));
        let mut r = Rules::default();
        r.set_link(1, 2, imp(150, 0, 0.0));
        relays.set_rules(r.clone());
        let d = ping(2).unwrap();
        assert!(d >= Duration::from_millis(300), "both directions are delayed: {d:?}");
        r.set_link(1, 2, imp(0, 0, 100.0));
        relays.set_rules(r);
        assert_eq!(ping(3), None);
        relays.set_rules(Rules::default());
        assert!(ping(4).is_some());
        let s = relays.take_stats();
        assert!(s.forwarded >= 4 && s.delayed == 2 && s.dropped == 1, "{s:?}");
        drop(relays);
    }
}
