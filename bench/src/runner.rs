//! The shared runner: carries out a scenario's [`Plan`] against one broker.
//!
//! Phases: connect idle clients and subscribers (paced by `--connect-rate`), wait for every SUBACK;
//! connect publishers; start publishing at once everywhere; stop at `--count` or `--duration`;
//! wait up to `--drain` for outstanding acks and deliveries; disconnect; merge the subscribers'
//! sequence trackers per accounting group. Every client is one tokio task that owns its
//! connection; every task stops on the run's cancellation token or its own deadline, so a run
//! always ends by itself.
//!
//! A process runs one [`Share`] of the plan (all of it unless the run is split over worker
//! processes, see `crate::workers`) and keeps step with the others through [`Sync`]: the start
//! waits until every process has connected its clients, and the drain waits for the deliveries
//! the publishers of every process sent.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::cli::{CommonArgs, Qos};
use crate::metrics::{Live, Metrics, Percentiles};
use crate::payload::{self, Header};
use crate::procstat::{self, Limits};
use crate::rate::{per_client_rate, Pacer};
use crate::report::{self, CpuUse, RssUse, RunResult, Sample};
use crate::scenario::Plan;
use crate::seq::SeqTracker;
use crate::share::{self, hist_from_pairs, hist_to_pairs, Report, SeqSummary, Share};
use crate::workers::protocol;
use ironhub_client::transport::TlsOptions;
use ironhub_client::{self as client, ClientConfig, Endpoint, Event, Events, Publish};

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// More connections than the limits allow.
    #[error("the plan opens {wanted} connections but {why}")]
    TooManyConnections {
        /// Connections the plan opens.
        wanted: u64,
        /// Which limit, and what to do about it.
        why: String,
    },
    /// The credentials file could not be used.
    #[error("credentials file {path}: {why}; write `username:password` on its first line")]
    Credentials {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The transport could not be prepared (TLS roots, address).
    #[error("{0}")]
    Setup(#[from] client::transport::SetupError),
    /// A worker process failed or broke the coordination protocol.
    #[error("worker: {0}")]
    Worker(String),
}

/// How long a client waits for CONNACK / SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a client task needs, shared.
struct Shared {
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    /// Source addresses (`--ifaddr`); client `i` uses `sources[i % len]`.
    sources: Vec<IpAddr>,
    common: CommonArgs,
    credentials: Option<(String, String)>,
    run_tag: String,
    /// Offsets that spread subscribers and publishers over the source addresses after the idle
    /// clients (so every kind of client is spread, not only the first one).
    subscriber_base: usize,
    publisher_base: usize,
}

impl Shared {
    /// Client `i` of `role` (global indices, so client ids are unique across worker processes).
    fn client_config(&self, role: &str, i: usize, n: usize) -> ClientConfig {
        ClientConfig {
            protocol: self.common.protocol,
            client_id: format!("{}-{}-{role}{i}", self.common.client_prefix, self.run_tag),
            clean: !self.common.persistent,
            keep_alive: Duration::from_secs(self.common.keep_alive.max(5)),
            credentials: self.credentials.clone(),
            inflight: self.common.inflight,
            source: (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()]),
        }
    }
}

/// Opens the connection and waits for CONNACK, recording the connect latency or the error.
async fn open(shared: &Shared, cfg: &ClientConfig) -> Option<(client::Client, Events)> {
    let m = &shared.metrics;
    Live::add(&m.live.connect_attempts, 1);
    let t0 = Instant::now();
    match timeout(HANDSHAKE_TIMEOUT, client::connect(&shared.endpoint, cfg)).await {
        Ok(Ok((c, events))) => {
            m.record_connect(t0.elapsed());
            Live::add(&m.live.connected, 1);
            Live::add(&m.live.open, 1);
            Some((c, events))
        }
        Ok(Err(e)) => {
            let kind = e.kind();
            let kind =
                if kind.starts_with("connect_") { kind.to_string() } else { format!("connect_{kind}") };
            m.record_error_detail(&kind, &e.detail);
            None
        }
        Err(_) => {
            m.record_error("connect_timeout");
            None
        }
    }
}

/// Sends DISCONNECT and polls briefly so it is written.
async fn close(shared: &Shared, c: client::Client, mut events: Events) {
    c.try_disconnect();
    let _ = timeout(Duration::from_secs(1), async { while events.next().await.is_ok() {} }).await;
    shared.metrics.live.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// An idle client: connect, hold until cancelled.
async fn idle_task(shared: Arc<Shared>, i: usize, ready: mpsc::Sender<bool>, stop: CancellationToken) {
    let Some((c, mut events)) = open(&shared, &shared.client_config("c", i, i)).await else {
        let _ = ready.send(false).await;
        return;
    };
    let _ = ready.send(true).await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            ev = events.next() => if let Err(e) = ev {
                shared.metrics.record_error_detail(e.kind(), &e.detail);
                shared.metrics.live.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
    }
    close(&shared, c, events).await;
}

/// What a subscriber saw.
struct SubOutcome {
    group: usize,
    trackers: HashMap<u32, SeqTracker>,
}

/// A subscriber: connect, subscribe, record every message until cancelled.
async fn sub_task(
    shared: Arc<Shared>,
    i: usize,
    filter: String,
    group: usize,
    ready: mpsc::Sender<bool>,
    stop: CancellationToken,
) -> SubOutcome {
    let mut out = SubOutcome { group, trackers: HashMap::new() };
    let m = shared.metrics.clone();
    let Some((c, mut events)) =
        open(&shared, &shared.client_config("s", i, shared.subscriber_base + i)).await
    else {
        let _ = ready.send(false).await;
        return out;
    };
    let qos = shared.common.qos;
    let subscribed = c.subscribe(&filter, qos).await
        && matches!(
            timeout(HANDSHAKE_TIMEOUT, async {
                loop {
                    match events.next().await {
                        Ok(Event::Subscribed(ok)) => return ok,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
            })
            .await,
            Ok(true)
        );
    if !subscribed {
        m.record_error("subscribe_failed");
    }
    let _ = ready.send(subscribed).await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            ev = events.next() => match ev {
                Ok(Event::Message(msg)) => {
                    let p = msg.payload;
                    Live::add(&m.live.received, 1);
                    match payload::decode(&p) {
                        Some(h) => {
                            let now = payload::now_ns();
                            m.record_latency(i, now.saturating_sub(h.sent_ns) / 1000);
                            out.trackers.entry(h.publisher).or_default().record(h.seq);
                        }
                        None => m.record_error("foreign_payload"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    m.record_error_detail(e.kind(), &e.detail);
                    m.live.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    return out;
                }
            }
        }
    }
    close(&shared, c, events).await;
    out
}

/// How a publisher publishes.
#[derive(Clone, Copy)]
struct PubParams {
    rate: f64,
    count: Option<u64>,
    duration: Duration,
    drain: Duration,
    /// Start offset of this publisher within one interval, so publishers do not fire together.
    offset: Duration,
}

/// Publishes handed over back to back before the publisher polls its connection again.
const BURST: u32 = 32;

/// A publisher: connect, wait for the start, publish until count or deadline, drain acks.
/// Returns its id and how many messages it handed to the broker connection (sequence numbers 0..n).
async fn pub_task(
    shared: Arc<Shared>,
    id: u32,
    topic: String,
    params: PubParams,
    ready: mpsc::Sender<bool>,
    mut start: watch::Receiver<Option<Instant>>,
) -> (u32, u64) {
    let m = shared.metrics.clone();
    let Some((c, mut events)) =
        open(&shared, &shared.client_config("p", id as usize, shared.publisher_base + id as usize)).await
    else {
        let _ = ready.send(false).await;
        return (id, 0);
    };
    let _ = ready.send(true).await;
    let qos = shared.common.qos;
    let mut acked = 0u64;
    let fail = |e: client::ClientError| {
        m.record_error_detail(e.kind(), &e.detail);
        m.live.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    };
    // Keep the connection alive while waiting for the start.
    let t_start = loop {
        let got: Option<Option<Instant>> = tokio::select! {
            s = start.wait_for(Option::is_some) => Some(s.ok().and_then(|s| *s)),
            ev = events.next() => match ev {
                Ok(_) => None,
                Err(e) => { fail(e); return (id, 0); }
            },
        };
        match got {
            Some(Some(s)) => break s,
            Some(None) => {
                close(&shared, c, events).await;
                return (id, 0);
            }
            None => {}
        }
    };
    let deadline = t_start + params.duration;
    let mut pacer = Pacer::new(params.rate, t_start + params.offset);
    let mut seq = 0u64;
    let mut blocked = false;
    let on_event = |ev: Event, acked: &mut u64| {
        if matches!((ev, qos), (Event::Acked, Qos::Q1 | Qos::Q2) | (Event::SentQos0, Qos::Q0)) {
            *acked += 1;
            Live::add(&m.live.acked, 1);
        }
    };
    loop {
        let now = Instant::now();
        if params.count.is_some_and(|n| seq >= n) || now >= deadline {
            break;
        }
        // Hand over every publish due now, up to a burst: no timer for a publish that is already
        // due (tokio's timer rounds a deadline up to the next millisecond, which would cap an
        // unthrottled publisher near 1,000 msg/s).
        let mut burst = 0;
        while !blocked && burst < BURST && pacer.is_due(now) && params.count.is_none_or(|n| seq < n) {
            let header = Header { publisher: id, seq, sent_ns: payload::now_ns() };
            match c.try_publish(&topic, qos, payload::encode(header, shared.common.payload_size)) {
                Publish::Queued => {
                    seq += 1;
                    burst += 1;
                    Live::add(&m.live.sent, 1);
                    pacer.on_sent(now);
                }
                Publish::Full => blocked = true,
            }
        }
        // Wait for an event, or until the next publish is due (never past the deadline).
        let due = match pacer.next_due() {
            _ if blocked => deadline,
            None if burst > 0 => now,
            None => deadline,
            Some(d) => d.min(deadline),
        };
        tokio::select! {
            biased;
            ev = events.next() => match ev {
                Ok(ev) => { blocked = false; on_event(ev, &mut acked); }
                Err(e) => { fail(e); return (id, seq); }
            },
            _ = sleep_until(due.into()), if due > now => {}
            _ = std::future::ready(()), if due <= now => {}
        }
    }
    // Drain: wait for the acks (QoS 1/2) or socket writes (QoS 0) of everything sent.
    let drained = timeout(params.drain, async {
        while acked < seq {
            match events.next().await {
                Ok(ev) => on_event(ev, &mut acked),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    match drained {
        Ok(Ok(())) => close(&shared, c, events).await,
        Ok(Err(e)) => fail(e),
        Err(_) => {
            m.record_error("ack_drain_timeout");
            close(&shared, c, events).await;
        }
    }
    (id, seq)
}

/// A unique tag for this run's topics and client ids.
pub fn new_run_tag() -> String {
    format!("{:x}{:x}", std::process::id(), payload::now_ns() / 1_000_000 % 0xffff_ffff)
}

/// How this process keeps step with the rest of its run.
pub enum Sync {
    /// The whole run is in this process; broker RSS is read when every client is connected.
    Local {
        /// Broker processes whose RSS to read.
        broker_pids: Vec<u32>,
        /// Their RSS (KiB) once every client was connected.
        rss_connected: Vec<Option<u64>>,
    },
    /// A worker process: control lines on stdin / stdout (see [`crate::workers::protocol`]).
    Worker {
        /// stdin, by lines.
        lines: Lines<BufReader<Stdin>>,
    },
}

impl Sync {
    /// A worker's sync over this process's stdin / stdout.
    pub fn worker() -> Self {
        Sync::Worker { lines: BufReader::new(tokio::io::stdin()).lines() }
    }

    async fn expect_line(lines: &mut Lines<BufReader<Stdin>>, prefix: &str) -> Result<String, RunError> {
        match lines.next_line().await {
            Ok(Some(l)) if l.starts_with(prefix) => Ok(l[prefix.len()..].to_string()),
            Ok(Some(l)) => Err(RunError::Worker(format!("expected {prefix}, got {l:?}"))),
            Ok(None) => Err(RunError::Worker("the coordinator went away".into())),
            Err(e) => Err(RunError::Worker(format!("reading stdin: {e}"))),
        }
    }

    /// Every client of this process is ready: wait until every process is.
    async fn ready(&mut self) -> Result<(), RunError> {
        match self {
            Sync::Local { broker_pids, rss_connected } => {
                *rss_connected = broker_pids.iter().map(|p| procstat::rss_kib(*p)).collect();
                Ok(())
            }
            Sync::Worker { lines } => {
                println!("{}", protocol::READY);
                Self::expect_line(lines, protocol::START).await.map(|_| ())
            }
        }
    }

    /// This process's publishers stopped having sent `sent`: how many deliveries its
    /// subscribers should wait for.
    async fn published(
        &mut self,
        plan: &Plan,
        share: &Share,
        sent: &BTreeMap<u32, u64>,
    ) -> Result<u64, RunError> {
        match self {
            Sync::Local { .. } => Ok(share.expected_deliveries(plan, sent)),
            Sync::Worker { lines } => {
                let json = serde_json::to_string(sent).map_err(|e| RunError::Worker(e.to_string()))?;
                println!("{}{json}", protocol::PUBLISHED);
                let all = Self::expect_line(lines, protocol::SENT).await?;
                let all: BTreeMap<u32, u64> = serde_json::from_str(&all)
                    .map_err(|e| RunError::Worker(format!("bad {}: {e}", protocol::SENT)))?;
                Ok(share.expected_deliveries(plan, &all))
            }
        }
    }
}

/// One process's part of a run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The arguments.
    pub common: CommonArgs,
    /// The whole run's plan.
    pub plan: Plan,
    /// This process's share of it.
    pub share: Share,
    /// The run's tag (client ids).
    pub run_tag: String,
}

fn read_credentials(common: &CommonArgs) -> Result<Option<(String, String)>, RunError> {
    let Some(path) = &common.credentials else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Credentials { path: path.display().to_string(), why: e.to_string() })?;
    crate::cli::parse_credentials(&text).map(Some).ok_or_else(|| RunError::Credentials {
        path: path.display().to_string(),
        why: "no `username:password` found".into(),
    })
}

/// The run's publish duration.
pub fn duration_of(common: &CommonArgs) -> Duration {
    Duration::from_secs_f64(match (common.duration, common.count) {
        (Some(d), _) => d.max(0.0),
        (None, Some(_)) => 300.0,
        (None, None) => 10.0,
    })
}

/// Runs this process's share of a run and reports what it measured.
pub async fn run_share(job: &Job, sync: &mut Sync) -> Result<Report, RunError> {
    let (common, plan, share) = (&job.common, &job.plan, &job.share);
    let credentials = read_credentials(common)?;
    let tls = TlsOptions { ca: common.ca.clone(), insecure: common.insecure };
    let endpoint = Endpoint::new(common.transport, &common.host, common.port, &common.ws_path, &tls).await?;
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        endpoint,
        sources: share.sources.clone(),
        common: common.clone(),
        credentials,
        run_tag: job.run_tag.clone(),
        subscriber_base: plan.idle,
        publisher_base: plan.idle + plan.subscribers.len(),
    });
    let duration = duration_of(common);
    let drain = Duration::from_secs_f64(common.drain.max(0.0));
    let rate = match common.rate_total {
        Some(t) => per_client_rate(t, plan.publishers.len()),
        None => common.rate.max(0.0),
    };
    let wanted = share.connections() as u64;

    let cpu0 = procstat::cpu_seconds(None);
    let wall0 = Instant::now();
    let sampler_stop = CancellationToken::new();
    let quiet = common.quiet || common.worker.is_some();
    let sampler = tokio::spawn(sample_loop(metrics.clone(), sampler_stop.clone(), wanted, quiet));

    // Phase 1: idle clients and subscribers.
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(1024);
    let mut connect_pacer = Pacer::new(common.connect_rate, Instant::now());
    let mut idle = JoinSet::new();
    let mut subs = JoinSet::new();
    let mut pubs = JoinSet::new();
    for i in share.idle.clone() {
        pace(&mut connect_pacer).await;
        idle.spawn(idle_task(shared.clone(), i, ready_tx.clone(), stop.clone()));
    }
    for &i in &share.subscribers {
        let s = &plan.subscribers[i];
        pace(&mut connect_pacer).await;
        subs.spawn(sub_task(shared.clone(), i, s.filter.clone(), s.group, ready_tx.clone(), stop.clone()));
    }
    // Phase 2: publishers (they connect, then wait for the start signal).
    let (start_tx, start_rx) = watch::channel(None);
    let n_pubs = plan.publishers.len();
    let spread = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
    for id in share.publishers.clone() {
        pace(&mut connect_pacer).await;
        let params = PubParams {
            rate,
            count: common.count,
            duration,
            drain,
            offset: spread.mul_f64(id as f64 / n_pubs.max(1) as f64),
        };
        let topic = plan.publishers[id].topic.clone();
        pubs.spawn(pub_task(shared.clone(), id as u32, topic, params, ready_tx.clone(), start_rx.clone()));
    }
    drop(ready_tx);
    for _ in 0..wanted {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    let connect_phase = wall0.elapsed();
    sync.ready().await?;

    // Phase 3: publish (or hold) until count / deadline.
    let t_start = Instant::now();
    let _ = start_tx.send(Some(t_start));
    let mut sent: BTreeMap<u32, u64> = BTreeMap::new();
    if n_pubs == 0 {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    while let Some(r) = pubs.join_next().await {
        match r {
            Ok((id, n)) => {
                sent.insert(id, n);
            }
            Err(_) => metrics.record_error("task_panic"),
        }
    }
    let publish_time = t_start.elapsed();

    // Phase 4: wait for the deliveries still on their way, then stop everyone.
    let expected = sync.published(plan, share, &sent).await?;
    let drain_until = Instant::now() + drain;
    while Live::get(&metrics.live.received) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut trackers: BTreeMap<usize, HashMap<u32, SeqTracker>> = BTreeMap::new();
    while let Some(r) = subs.join_next().await {
        match r {
            Ok(o) => {
                let g = trackers.entry(o.group).or_default();
                for (p, t) in o.trackers {
                    g.entry(p).or_default().merge(&t);
                }
            }
            Err(_) => metrics.record_error("task_panic"),
        }
    }
    while idle.join_next().await.is_some() {}
    sampler_stop.cancel();
    let timeline = sampler.await.unwrap_or_default();
    let cpu1 = procstat::cpu_seconds(None);

    let live = &metrics.live;
    Ok(Report {
        sent,
        groups: trackers
            .into_iter()
            .map(|(g, ts)| (g, ts.iter().map(|(p, t)| (*p, SeqSummary::from(t))).collect()))
            .collect(),
        acked: Live::get(&live.acked),
        received: Live::get(&live.received),
        connect_attempts: Live::get(&live.connect_attempts),
        connected: Live::get(&live.connected),
        latency: hist_to_pairs(&metrics.latency_total()),
        connect_latency: hist_to_pairs(&metrics.connect_hist()),
        errors: metrics.errors(),
        error_examples: metrics.error_examples(),
        connect_phase_s: connect_phase.as_secs_f64(),
        publish_s: publish_time.as_secs_f64(),
        cpu_s: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        timeline,
    })
}

/// Runs one scenario against one broker (split over worker processes when it is large);
/// `name` is its name for the report.
pub async fn run(
    name: &str,
    common: &CommonArgs,
    plan_of: impl Fn(&str) -> Plan,
) -> Result<RunResult, RunError> {
    let tag = common.run_tag.clone().unwrap_or_else(new_run_tag);
    let prefix = common.topic_prefix.clone().unwrap_or_else(|| format!("ironhub-bench/{tag}"));
    let plan = plan_of(&prefix);
    let wanted = plan.connections();
    let workers = share::worker_count(wanted, common.workers);
    let limits = Limits::read(common.ifaddr.len());
    eprintln!("{}", limits.describe(wanted, workers));
    limits
        .check(wanted, workers)
        .map_err(|why| RunError::TooManyConnections { wanted: wanted as u64, why })?;

    let pids = &common.broker_pids;
    let cpu0 = cpu_snapshot(pids);
    let rss0: Vec<Option<u64>> = pids.iter().map(|p| procstat::rss_kib(*p)).collect();
    let wall0 = Instant::now();
    let (merged, rss1) = if workers == 1 {
        let job = Job {
            common: common.clone(),
            plan: plan.clone(),
            share: Share::all(&plan, &common.ifaddr),
            run_tag: tag,
        };
        let mut sync = Sync::Local { broker_pids: pids.clone(), rss_connected: Vec::new() };
        let report = run_share(&job, &mut sync).await?;
        let Sync::Local { rss_connected, .. } = sync else { unreachable!("local sync") };
        (report, rss_connected)
    } else {
        crate::workers::coordinate(common, &tag, &prefix, workers).await?
    };
    let wall = wall0.elapsed();
    let cpu1 = cpu_snapshot(pids);
    Ok(finish(name, common, &plan, merged, FinishInfo { workers, limits, cpu0, cpu1, rss0, rss1, wall }))
}

/// What `finish` needs besides the merged report.
struct FinishInfo {
    workers: usize,
    limits: Limits,
    cpu0: (Option<f64>, Vec<Option<f64>>),
    cpu1: (Option<f64>, Vec<Option<f64>>),
    rss0: Vec<Option<u64>>,
    rss1: Vec<Option<u64>>,
    wall: Duration,
}

/// The run's result from the merged report of its processes.
fn finish(name: &str, common: &CommonArgs, plan: &Plan, r: Report, info: FinishInfo) -> RunResult {
    let (lost, duplicated, out_of_order) = share::accounting(plan, &r);
    let sent: u64 = r.sent.values().sum();
    let expected: u64 = plan.groups.iter().flatten().map(|p| r.sent.get(p).copied().unwrap_or(0)).sum();
    let mut cpu = CpuUse::between(&info.cpu0, &info.cpu1, &common.broker_pids, info.wall);
    if info.workers > 1 {
        // The coordinator's own CPU plus every worker's.
        let total = match (cpu.bench.cpu_s, r.cpu_s) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        cpu.bench.cpu_s = total;
        cpu.bench.percent_of_core = total.map(|c| 100.0 * c / info.wall.as_secs_f64().max(1e-3));
    }
    let rss = common
        .broker_pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| {
            RssUse::new(
                pid,
                info.rss0.get(i).copied().flatten(),
                info.rss1.get(i).copied().flatten(),
                r.connected,
            )
        })
        .collect();
    let publish_s = r.publish_s.max(1e-3);
    let rate = match common.rate_total {
        Some(t) => per_client_rate(t, plan.publishers.len()),
        None => common.rate.max(0.0),
    };
    RunResult {
        scenario: name.to_string(),
        broker: format!("{}:{}", common.host, common.port),
        transport: common.transport,
        protocol: common.protocol,
        qos: common.qos,
        payload_size: common.payload_size.max(payload::HEADER_LEN),
        idle_clients: plan.idle,
        publishers: plan.publishers.len(),
        subscribers: plan.subscribers.len(),
        rate_per_publisher: rate,
        workers: info.workers,
        source_addresses: common.ifaddr.clone(),
        fd_limit: info.limits.fd_limit,
        max_connections: info.limits.largest_run(info.workers) as u64,
        publish_s: r.publish_s,
        wall_s: info.wall.as_secs_f64(),
        sent,
        acked: r.acked,
        received: r.received,
        expected,
        lost,
        duplicated,
        out_of_order,
        out_per_s: sent as f64 / publish_s,
        in_per_s: r.received as f64 / publish_s,
        latency: Percentiles::of(&hist_from_pairs(&r.latency)),
        connect_attempts: r.connect_attempts,
        connected: r.connected,
        connect_phase_s: r.connect_phase_s,
        connects_per_s: r.connected as f64 / r.connect_phase_s.max(1e-3),
        connect_latency: Percentiles::of(&hist_from_pairs(&r.connect_latency)),
        errors: r.errors,
        error_examples: r.error_examples,
        cpu,
        broker_rss: rss,
        timeline: r.timeline,
    }
}

/// Waits for the connect pacer.
async fn pace(p: &mut Pacer) {
    if let Some(due) = p.next_due() {
        sleep_until(due.into()).await;
    }
    p.on_sent(Instant::now());
}

fn cpu_snapshot(pids: &[u32]) -> (Option<f64>, Vec<Option<f64>>) {
    (procstat::cpu_seconds(None), pids.iter().map(|p| procstat::cpu_seconds(Some(*p))).collect())
}

/// Samples the counters once a second for the timeline and the live progress line.
async fn sample_loop(m: Arc<Metrics>, stop: CancellationToken, planned: u64, quiet: bool) -> Vec<Sample> {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_sent, mut last_recv, mut last_conn) = (0u64, 0u64, 0u64);
    let mut last_t = t0;
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
        last_t = now;
        let (sent, recv, conn) =
            (Live::get(&m.live.sent), Live::get(&m.live.received), Live::get(&m.live.connected));
        let lat = Percentiles::of(&m.take_latency_interval());
        let s = Sample {
            t_s: now.duration_since(t0).as_secs_f64(),
            out_per_s: (sent - last_sent) as f64 / dt,
            in_per_s: (recv - last_recv) as f64 / dt,
            connects_per_s: (conn - last_conn) as f64 / dt,
            open: Live::get(&m.live.open),
            p50_us: lat.p50_us,
            p99_us: lat.p99_us,
        };
        (last_sent, last_recv, last_conn) = (sent, recv, conn);
        bar.set_message(format!(
            "{:>4.0}s  conn {}/{planned}  out {:.0}/s  in {:.0}/s  p50 {}  p99 {}  errors {}",
            s.t_s,
            s.open,
            s.out_per_s,
            s.in_per_s,
            report::fmt_us(s.p50_us),
            report::fmt_us(s.p99_us),
            Live::get(&m.live.errors)
        ));
        bar.tick();
        samples.push(s);
    }
    bar.finish_and_clear();
    samples
}
