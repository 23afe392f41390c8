//! The QoS 1/2 queue workload over MQTT 3.1.1 (the `ironhub-client` crate, shared with the bench).
//!
//! - Subscribers `chaos-sub-<j>` connect with clean session 0 and subscribe once to `chaos/q/+`.
//!   After their first SUBACK they never subscribe again: on every reconnect (to the next node) the
//!   broker must resume the session, its subscription and its queue (CONNACK session present). Only
//!   if the session is gone do they subscribe again, and the checker reports it. Subscribers with
//!   `j ≥ 1` also roam: every `roam` they disconnect and reconnect to the next node. The client
//!   session goes with them: a QoS 2 message received but not yet released is not handed over
//!   again when the broker resends it (DUP) on the next node, and the broker's PUBRELs are
//!   completed there, so a second delivery at QoS 2 is the broker's doing. A message is
//!   acknowledged only after it was recorded.
//! - Publishers `chaos-pub-<i>` publish the payload `<seq>` (1, 2, ...) to `chaos/q/pub-<i>`, one
//!   message in flight at a time, so every PUBACK/PUBCOMP belongs to exactly one seq.
//!   - QoS 1 publishers use clean sessions: no ack within [`ACK_TIMEOUT`] or a broken connection
//!     makes the publish `unknown`, and the publisher moves to the next node with the next seq.
//!   - QoS 2 publishers keep a persistent session: after a timeout or a broken connection they
//!     resume it on the next node, which resends the PUBLISH (DUP) or the PUBREL, and the publish
//!     is acknowledged when its PUBCOMP comes. The broker must store such a resent PUBLISH once
//!     (its awaiting-PUBREL set travels with the session), which the checker verifies: QoS 2
//!     forbids duplicates. A publish is `unknown` only if the session was lost or the run stopped.
//! - Flow control: a publisher waits while some subscriber is `window` (< 150, the broker's queue
//!   limit) or more messages behind, counting acked and unknown publishes of the last [`GIVE_UP`].
//!   So a subscriber that is away for a while never overflows its queue: a drop would be the
//!   broker's doing, and the drop metric tells.
//! - Publishers start after every subscriber's first SUBACK; at the end publishers stop first and
//!   subscribers drain until they hold every acknowledged message or the drain timeout passes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ironhub_client::transport::TlsOptions;
use ironhub_client::{
    self as client, ClientConfig, Endpoint, Event, Events, Message, Protocol, Qos, Session,
};

use crate::backend::NodeEndpoints;
use crate::history::{Kind, Op, Recorder};
use crate::workload::Stop;

/// How long a publisher waits for PUBACK/PUBCOMP before it calls the publish unknown (QoS 1) or
/// resumes its session on the next node (QoS 2).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for CONNACK or SUBACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// MQTT keep-alive of every client (a paused node is noticed within about twice this).
const KEEP_ALIVE: Duration = Duration::from_secs(3);
/// Unacknowledged messages a subscriber's client session holds (its receive window).
const SUBSCRIBER_INFLIGHT: u16 = 10;

/// How long an unreceived message holds publishers back (see [`Progress::max_behind`]).
pub const GIVE_UP: Duration = Duration::from_secs(30);

/// The filter every subscriber subscribes to.
pub const FILTER: &str = "chaos/q/+";

/// The queue workload's settings.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Publishers.
    pub publishers: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Messages/s per publisher.
    pub rate: u32,
    /// QoS 1 or 2.
    pub qos: u8,
    /// Max messages a subscriber may be behind before publishers wait.
    pub window: u64,
    /// Roaming subscribers reconnect to the next node this often.
    pub roam: Duration,
}

/// What publishers and subscribers share: the acknowledged (or unknown) publishes and what each
/// subscriber holds, for flow control and the drain.
pub struct Progress {
    /// Sent messages in send order, with when they were sent.
    sent: Mutex<std::collections::VecDeque<((usize, u64), Instant)>>,
    acked: Mutex<HashSet<(usize, u64)>>,
    held: Vec<Mutex<HashSet<(usize, u64)>>>,
    subscribed: Vec<Mutex<bool>>,
}

impl Progress {
    /// For `subscribers` subscribers.
    pub fn new(subscribers: usize) -> Arc<Progress> {
        Arc::new(Progress {
            sent: Mutex::new(std::collections::VecDeque::new()),
            acked: Mutex::new(HashSet::new()),
            held: (0..subscribers).map(|_| Mutex::new(HashSet::new())).collect(),
            subscribed: (0..subscribers).map(|_| Mutex::new(false)).collect(),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest number of messages sent in the last [`GIVE_UP`] that some subscriber does not
    /// hold yet. Older ones no longer hold publishers back: a message missing that long is lost (the
    /// checker says so, or reports overflow if the broker counted drops), and waiting for it would
    /// stall the workload for the rest of the run.
    pub fn max_behind(&self) -> u64 {
        let mut sent = Self::lock(&self.sent);
        let now = Instant::now();
        while sent.front().is_some_and(|(_, t)| now.duration_since(*t) > GIVE_UP) {
            sent.pop_front();
        }
        let held: Vec<_> = self.held.iter().map(|h| Self::lock(h)).collect();
        held.iter().map(|h| sent.iter().filter(|(k, _)| !h.contains(k)).count() as u64).max().unwrap_or(0)
    }

    /// Whether every subscriber holds every acknowledged message.
    pub fn drained(&self) -> bool {
        let acked = Self::lock(&self.acked);
        self.held.iter().all(|h| acked.is_subset(&Self::lock(h)))
    }

    /// Whether every subscriber got its first SUBACK.
    pub fn all_subscribed(&self) -> bool {
        self.subscribed.iter().all(|s| *Self::lock(s))
    }
}

fn qos_of(q: u8) -> Qos {
    if q >= 2 {
        Qos::Q2
    } else {
        Qos::Q1
    }
}

/// Connects `id` to `node`, resuming `session` when it is persistent (`clean` false); bounded by
/// [`CONNECT_TIMEOUT`]. The caller keeps its copy of the session until the connection ends.
pub async fn connect(
    id: &str,
    node: &NodeEndpoints,
    clean: bool,
    session: &Session,
) -> Result<(client::Client, Events), String> {
    let cfg = ClientConfig {
        protocol: Protocol::V311,
        client_id: id.to_string(),
        clean,
        keep_alive: KEEP_ALIVE,
        credentials: None,
        inflight: SUBSCRIBER_INFLIGHT,
        source: None,
    };
    let attempt = async {
        let ep = Endpoint::new(
            client::Transport::Tcp,
            &node.mqtt_host,
            node.mqtt_port,
            "/mqtt",
            &TlsOptions::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        client::connect_with(&ep, &cfg, session.clone()).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err("no CONNACK in time".into()),
    }
}

/// Sends DISCONNECT and lets it go out (bounded); the session is handed back. Messages that
/// arrive meanwhile go to `on_message` (their acknowledgements may go out before the DISCONNECT).
async fn disconnect(c: client::Client, mut e: Events, mut on_message: impl FnMut(&Message)) -> Session {
    c.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match e.next().await {
                Ok(Event::Message(m)) => on_message(&m),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    e.into_session()
}

/// One publisher, until stopped.
pub async fn publisher(
    i: usize,
    cfg: QueueConfig,
    nodes: Vec<NodeEndpoints>,
    progress: Arc<Progress>,
    rec: Recorder,
    stop: Stop,
) {
    let process = format!("pub-{i}");
    let topic = format!("chaos/q/{process}");
    let qos = qos_of(cfg.qos);
    let persistent = qos == Qos::Q2;
    let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
    let mut session = Session::new(1);
    let mut cur = i;
    let mut seq: u64 = 0;
    // The publish awaiting its PUBCOMP across a session resume (QoS 2), with when it was invoked.
    let mut inflight: Option<(Op, Instant)> = None;
    let mut next = Instant::now();
    'connect: while !stop.is_stopped() {
        let node = &nodes[cur % nodes.len()];
        let (c, mut e) = match connect(&format!("chaos-{process}"), node, !persistent, &session).await {
            Ok(x) => x,
            Err(why) => {
                rec.record(
                    &process,
                    Kind::Fail,
                    Op::Connect { node: node.id, clean: !persistent, session_present: false },
                );
                rec.record(&process, Kind::Info, Op::Disconnect { node: node.id, reason: why });
                cur += 1;
                stop.sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let sp = e.session_present();
        rec.record(
            &process,
            Kind::Ok,
            Op::Connect { node: node.id, clean: !persistent, session_present: sp },
        );
        if !sp {
            // The broker has no session, so the client dropped what it had in flight.
            if let Some((op, t0)) = inflight.take() {
                rec.record_with_latency(&process, Kind::Unknown, op, Some(t0.elapsed().as_millis() as u64));
            }
        }
        loop {
            if inflight.is_none() {
                // Pace, then wait for the slowest subscriber (the broker's queue limit is 150).
                let now = Instant::now();
                if next > now && stop.sleep(next - now).await {
                    break;
                }
                next = next.max(Instant::now()) + period;
                while progress.max_behind() >= cfg.window {
                    if stop.sleep(Duration::from_millis(20)).await {
                        break;
                    }
                }
                if stop.is_stopped() {
                    break;
                }
                seq += 1;
                let op = Op::Publish { topic: topic.clone(), seq, qos: cfg.qos };
                rec.record(&process, Kind::Invoke, op.clone());
                Progress::lock(&progress.sent).push_back(((i, seq), Instant::now()));
                let _ = c.try_publish(&topic, qos, seq.to_string().into_bytes());
                inflight = Some((op, Instant::now()));
            }
            let waited = wait_ack(&mut e).await;
            let Some((op, t0)) = inflight.take() else { continue };
            let ms = Some(t0.elapsed().as_millis() as u64);
            match waited {
                Ok(()) => {
                    if let Op::Publish { seq, .. } = &op {
                        Progress::lock(&progress.acked).insert((i, *seq));
                    }
                    rec.record_with_latency(&process, Kind::Ok, op, ms);
                }
                Err(why) => {
                    if persistent && !stop.is_stopped() {
                        inflight = Some((op, t0));
                    } else {
                        rec.record_with_latency(&process, Kind::Unknown, op, ms);
                    }
                    rec.record(&process, Kind::Info, Op::Disconnect { node: node.id, reason: why });
                    session = e.into_session();
                    cur += 1;
                    stop.sleep(Duration::from_millis(100)).await;
                    continue 'connect;
                }
            }
        }
        session = disconnect(c, e, |_| {}).await;
    }
    if let Some((op, t0)) = inflight {
        rec.record_with_latency(&process, Kind::Unknown, op, Some(t0.elapsed().as_millis() as u64));
    }
}

/// Polls until the one publish in flight completes (PUBACK for QoS 1, PUBCOMP for QoS 2).
async fn wait_ack(e: &mut Events) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, e.next()).await {
            Err(_) => return Err("no ack in time".into()),
            Ok(Err(err)) => return Err(err.to_string()),
            Ok(Ok(Event::Acked)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Records a delivery of the queue workload (and that subscriber `j` holds it).
fn on_message(rec: &Recorder, process: &str, progress: &Progress, j: usize, m: &Message) {
    let publisher = m.topic.strip_prefix("chaos/q/");
    let seq = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse::<u64>().ok());
    if let (Some(publisher), Some(seq)) = (publisher, seq) {
        let qos = match m.qos {
            Qos::Q0 => 0,
            Qos::Q1 => 1,
            Qos::Q2 => 2,
        };
        rec.record(
            process,
            Kind::Info,
            Op::Deliver { publisher: publisher.to_string(), seq, dup: m.dup, qos },
        );
        if let Some(i) = publisher.strip_prefix("pub-").and_then(|s| s.parse::<usize>().ok()) {
            Progress::lock(&progress.held[j]).insert((i, seq));
        }
    }
}

/// One persistent subscriber, until `drain_stop`.
pub async fn subscriber(
    j: usize,
    cfg: QueueConfig,
    nodes: Vec<NodeEndpoints>,
    progress: Arc<Progress>,
    rec: Recorder,
    drain_stop: Stop,
) {
    let process = format!("sub-{j}");
    let roams = j >= 1;
    let mut cur = j;
    let mut subscribed = false;
    let mut session = Session::new(SUBSCRIBER_INFLIGHT);
    while !drain_stop.is_stopped() {
        let node = nodes[cur % nodes.len()].clone();
        let (c, mut e) = match connect(&format!("chaos-{process}"), &node, false, &session).await {
            Ok(x) => x,
            Err(why) => {
                rec.record(
                    &process,
                    Kind::Fail,
                    Op::Connect { node: node.id, clean: false, session_present: false },
                );
                rec.record(&process, Kind::Info, Op::Disconnect { node: node.id, reason: why });
                cur += 1;
                drain_stop.sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let sp = e.session_present();
        rec.record(&process, Kind::Ok, Op::Connect { node: node.id, clean: false, session_present: sp });
        // Subscribe the first time, and again only if the broker lost the session (a finding).
        if !subscribed || !sp {
            let op = Op::Subscribe { filter: FILTER.into(), node: node.id };
            rec.record(&process, Kind::Invoke, op.clone());
            let granted = c.subscribe(FILTER, qos_of(cfg.qos)).await
                && wait_suback(&mut e, |m| on_message(&rec, &process, &progress, j, m)).await;
            if !granted {
                rec.record(&process, Kind::Unknown, op);
                session = e.into_session();
                cur += 1;
                continue;
            }
            *Progress::lock(&progress.subscribed[j]) = true;
            rec.record(&process, Kind::Ok, op);
            subscribed = true;
        }
        let connected_at = Instant::now();
        let reason = loop {
            if roams && connected_at.elapsed() >= cfg.roam {
                break "roaming to the next node".to_string();
            }
            let ev = tokio::select! {
                ev = tokio::time::timeout(Duration::from_millis(500), e.next()) => ev,
                _ = drain_stop.stopped() => break "stopped".to_string(),
            };
            match ev {
                Err(_) => {}
                Ok(Err(err)) => break err.to_string(),
                // Acknowledged on the next poll, so only once recorded.
                Ok(Ok(Event::Message(m))) => on_message(&rec, &process, &progress, j, &m),
                Ok(Ok(_)) => {}
            }
        };
        rec.record(&process, Kind::Info, Op::Disconnect { node: node.id, reason: reason.clone() });
        session = if reason == "stopped" || reason.starts_with("roaming") {
            disconnect(c, e, |m| on_message(&rec, &process, &progress, j, m)).await
        } else {
            e.into_session()
        };
        if reason == "stopped" {
            break;
        }
        cur += 1;
        if !reason.starts_with("roaming") {
            drain_stop.sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls until SUBACK: whether every filter was granted. Messages arriving meanwhile (a resumed
/// session's queue) go to `on_message`.
async fn wait_suback(e: &mut Events, mut on_message: impl FnMut(&Message)) -> bool {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, e.next()).await {
            Ok(Ok(Event::Subscribed(granted))) => return granted,
            Ok(Ok(Event::Message(m))) => on_message(&m),
            Ok(Ok(_)) => {}
            _ => return false,
        }
    }
}

/// The workload against a real broker (mosquitto, which `make deps` installs): the clients, the
/// flow control and the checkers together, and a broker restart that loses sessions is caught.
#[cfg(test)]
mod mosquitto_tests {
    use super::*;
    use crate::check::queue::QueueChecker;
    use crate::check::session::SessionChecker;
    use crate::check::{Checker, Verdict};

    struct Mosquitto(std::process::Child);
    impl Drop for Mosquitto {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start_mosquitto(port: u16) -> Mosquitto {
        let child = std::process::Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto must be installed for this test (make deps installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto(child)
    }

    fn endpoints(port: u16) -> Vec<NodeEndpoints> {
        // Two "nodes" on one broker: clients still move between endpoints on every reconnect.
        (1..=2)
            .map(|id| NodeEndpoints {
                id,
                api: String::new(),
                mqtt_host: "127.0.0.1".into(),
                mqtt_port: port,
            })
            .collect()
    }

    async fn run_workload(
        port: u16,
        qos: u8,
        secs: u64,
        mid: impl FnOnce() + Send + 'static,
    ) -> Vec<crate::history::Event> {
        let cfg = QueueConfig {
            publishers: 2,
            subscribers: 2,
            rate: 40,
            qos,
            window: 100,
            roam: Duration::from_secs(1),
        };
        let rec = Recorder::new();
        let progress = Progress::new(cfg.subscribers);
        let (write_stop, drain_stop) = (Stop::new(), Stop::new());
        let nodes = endpoints(port);
        let mut subs = tokio::task::JoinSet::new();
        for j in 0..cfg.subscribers {
            subs.spawn(subscriber(
                j,
                cfg.clone(),
                nodes.clone(),
                progress.clone(),
                rec.clone(),
                drain_stop.clone(),
            ));
        }
        while !progress.all_subscribed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut pubs = tokio::task::JoinSet::new();
        for i in 0..cfg.publishers {
            pubs.spawn(publisher(
                i,
                cfg.clone(),
                nodes.clone(),
                progress.clone(),
                rec.clone(),
                write_stop.clone(),
            ));
        }
        tokio::time::sleep(Duration::from_secs(secs / 2)).await;
        tokio::task::spawn_blocking(mid).await.unwrap();
        tokio::time::sleep(Duration::from_secs(secs - secs / 2)).await;
        write_stop.stop();
        while pubs.join_next().await.is_some() {}
        let t0 = Instant::now();
        while !progress.drained() && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drain_stop.stop();
        while subs.join_next().await.is_some() {}
        rec.snapshot()
    }

    /// A free port in the tool's range; `k` keeps concurrent tests of this process apart.
    fn free_port(k: u16) -> u16 {
        crate::backend::process::free_port_block("127.0.0.1").unwrap() + k + 10
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roaming_persistent_subscribers_get_every_acked_message() {
        let port = free_port(7);
        let _m = start_mosquitto(port);
        let h = run_workload(port, 1, 4, || {}).await;
        let q = QueueChecker { qos: 1 }.check(&h);
        assert_eq!(q.verdict, Verdict::Pass, "{q:?}");
        assert!(q.get("acked") > 100, "{q:?}");
        let s = SessionChecker.check(&h);
        assert_eq!(s.verdict, Verdict::Pass, "{s:?}");
        assert!(s.get("reconnects") >= 2 && s.get("sessions_resumed") == s.get("reconnects"), "{s:?}");
    }

    /// QoS 2 with roaming subscribers: each reconnect resumes the client session, so messages the
    /// broker resends before PUBREL and the PUBRELs themselves are handled, and nothing is
    /// delivered twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qos2_roaming_subscribers_get_every_acked_message_exactly_once() {
        let port = free_port(6);
        let _m = start_mosquitto(port);
        let h = run_workload(port, 2, 4, || {}).await;
        let q = QueueChecker { qos: 2 }.check(&h);
        assert_eq!(q.verdict, Verdict::Pass, "{q:?}");
        assert!(q.get("acked") > 100 && q.get("duplicates") == 0, "{q:?}");
        let s = SessionChecker.check(&h);
        assert!(s.get("reconnects") >= 2 && s.get("sessions_resumed") == s.get("reconnects"), "{s:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_that_forgets_sessions_on_kill9_is_caught() {
        // mosquitto without persistence keeps sessions in memory: kill -9 and restart loses them
        // and the messages queued in them. The checkers must say so.
        let port = free_port(8);
        let m = std::sync::Arc::new(std::sync::Mutex::new(Some(start_mosquitto(port))));
        let m2 = m.clone();
        let h = run_workload(port, 1, 4, move || {
            // Hold a subscriber's queue: the kill lands while messages are in flight.
            drop(m2.lock().unwrap().take());
            *m2.lock().unwrap() = Some(start_mosquitto(port));
        })
        .await;
        let s = SessionChecker.check(&h);
        assert_eq!(s.verdict, Verdict::Fail, "{s:?}");
        assert!(s.get("sessions_lost") >= 1, "{s:?}");
        drop(m);
    }
}
