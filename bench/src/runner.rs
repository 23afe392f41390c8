//! The shared runner: carries out a scenario's [`Plan`] against one broker.
//!
//! Phases: connect idle clients and subscribers (paced by `--connect-rate`), wait for every SUBACK;
//! connect publishers; start publishing at once everywhere; stop at `--count` or `--duration`;
//! wait up to `--drain` for outstanding acks and deliveries; disconnect; merge the subscribers'
//! sequence trackers per accounting group. Every client is one tokio task that owns its rumqttc
//! event loop; every task stops on the run's cancellation token or its own deadline, so a run
//! always ends by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::cli::{CommonArgs, Qos};
use crate::client::{self, ClientConfig, Event, Events, Publish};
use crate::metrics::{Live, Metrics, Percentiles};
use crate::payload::{self, Header};
use crate::procstat;
use crate::rate::{per_client_rate, Pacer};
use crate::report::{self, CpuUse, RunResult, Sample};
use crate::scenario::Plan;
use crate::seq::SeqTracker;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// More connections than the open-file limit allows.
    #[error(
        "the plan opens {wanted} connections but this process may open at most {allowed} \
         (open-file limit {limit}); split the run across processes or raise `ulimit -n`"
    )]
    TooManyConnections {
        /// Connections the plan opens.
        wanted: u64,
        /// The most this process may open.
        allowed: u64,
        /// The soft open-file limit.
        limit: u64,
    },
    /// The credentials file could not be used.
    #[error("credentials file {path}: {why}; write `username:password` on its first line")]
    Credentials {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// How long a client waits for CONNACK / SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a client task needs, shared.
struct Shared {
    metrics: Arc<Metrics>,
    common: CommonArgs,
    credentials: Option<(String, String)>,
    run_tag: String,
}

impl Shared {
    fn client_config(&self, role: &str, i: usize) -> ClientConfig {
        ClientConfig {
            host: self.common.host.clone(),
            port: self.common.port,
            protocol: self.common.protocol,
            client_id: format!("{}-{}-{role}{i}", self.common.client_prefix, self.run_tag),
            clean: !self.common.persistent,
            keep_alive: Duration::from_secs(self.common.keep_alive.max(5)),
            credentials: self.credentials.clone(),
            inflight: self.common.inflight,
            connect_timeout_s: HANDSHAKE_TIMEOUT.as_secs(),
        }
    }
}

/// Opens the connection and waits for CONNACK, recording the connect latency or the error.
async fn open(shared: &Shared, cfg: &ClientConfig) -> Option<(client::Client, Events)> {
    let m = &shared.metrics;
    Live::add(&m.live.connect_attempts, 1);
    let t0 = Instant::now();
    let (c, mut events) = client::connect(cfg);
    let handshake = async {
        loop {
            match events.next().await {
                Ok(Event::Connected) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.kind()),
            }
        }
    };
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(())) => {
            m.record_connect(t0.elapsed());
            Live::add(&m.live.connected, 1);
            Live::add(&m.live.open, 1);
            Some((c, events))
        }
        Ok(Err(kind)) => {
            m.record_error(&format!("connect_{kind}"));
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
    let Some((c, mut events)) = open(&shared, &shared.client_config("c", i)).await else {
        let _ = ready.send(false).await;
        return;
    };
    let _ = ready.send(true).await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            ev = events.next() => if let Err(e) = ev {
                shared.metrics.record_error(e.kind());
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
    let Some((c, mut events)) = open(&shared, &shared.client_config("s", i)).await else {
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
                Ok(Event::Message(p)) => {
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
                    m.record_error(e.kind());
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
    let Some((c, mut events)) = open(&shared, &shared.client_config("p", id as usize)).await else {
        let _ = ready.send(false).await;
        return (id, 0);
    };
    let _ = ready.send(true).await;
    let qos = shared.common.qos;
    let mut acked = 0u64;
    let fail = |e: client::ClientError| {
        m.record_error(e.kind());
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
        if params.count.is_some_and(|n| seq >= n) || Instant::now() >= deadline {
            break;
        }
        let due = pacer.next_due().unwrap_or_else(Instant::now).min(deadline);
        tokio::select! {
            biased;
            ev = events.next() => match ev {
                Ok(ev) => { blocked = false; on_event(ev, &mut acked); }
                Err(e) => { fail(e); return (id, seq); }
            },
            _ = sleep_until(due.into()), if !blocked => {
                let now = Instant::now();
                if now >= deadline { break; }
                let header = Header { publisher: id, seq, sent_ns: payload::now_ns() };
                match c.try_publish(&topic, qos, payload::encode(header, shared.common.payload_size)) {
                    Publish::Queued => {
                        seq += 1;
                        Live::add(&m.live.sent, 1);
                        pacer.on_sent(now);
                    }
                    Publish::Full => blocked = true,
                }
            }
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
fn run_tag() -> String {
    format!("{:x}{:x}", std::process::id(), payload::now_ns() / 1_000_000 % 0xffff_ffff)
}

/// Runs one scenario; `name` is its name for the report.
pub async fn run(
    name: &str,
    common: &CommonArgs,
    plan_of: impl Fn(&str) -> Plan,
) -> Result<RunResult, RunError> {
    let tag = run_tag();
    let prefix = common.topic_prefix.clone().unwrap_or_else(|| format!("ironhub-bench/{tag}"));
    let plan = plan_of(&prefix);

    let limit = procstat::fd_limit().unwrap_or(1024);
    let allowed = procstat::max_connections(limit);
    let wanted = plan.connections() as u64;
    eprintln!("open-file limit {limit}: the largest run this process allows is {allowed} connections; this run opens {wanted}");
    if wanted > allowed {
        return Err(RunError::TooManyConnections { wanted, allowed, limit });
    }
    let credentials = match &common.credentials {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| RunError::Credentials {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            Some(crate::cli::parse_credentials(&text).ok_or_else(|| RunError::Credentials {
                path: path.display().to_string(),
                why: "no `username:password` found".into(),
            })?)
        }
    };

    let metrics = Arc::new(Metrics::default());
    let shared =
        Arc::new(Shared { metrics: metrics.clone(), common: common.clone(), credentials, run_tag: tag });
    let duration = Duration::from_secs_f64(match (common.duration, common.count) {
        (Some(d), _) => d.max(0.0),
        (None, Some(_)) => 300.0,
        (None, None) => 10.0,
    });
    let drain = Duration::from_secs_f64(common.drain.max(0.0));
    let rate = match common.rate_total {
        Some(t) => per_client_rate(t, plan.publishers.len()),
        None => common.rate.max(0.0),
    };

    let cpu0 = cpu_snapshot(&common.broker_pids);
    let wall0 = Instant::now();
    let sampler_stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_loop(metrics.clone(), sampler_stop.clone(), wanted, common.quiet));

    // Phase 1: idle clients and subscribers.
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(1024);
    let mut connect_pacer = Pacer::new(common.connect_rate, Instant::now());
    let mut idle = JoinSet::new();
    let mut subs = JoinSet::new();
    let mut pubs = JoinSet::new();
    for i in 0..plan.idle {
        pace(&mut connect_pacer).await;
        idle.spawn(idle_task(shared.clone(), i, ready_tx.clone(), stop.clone()));
    }
    for (i, s) in plan.subscribers.iter().enumerate() {
        pace(&mut connect_pacer).await;
        subs.spawn(sub_task(shared.clone(), i, s.filter.clone(), s.group, ready_tx.clone(), stop.clone()));
    }
    // Phase 2: publishers (they connect, then wait for the start signal).
    let (start_tx, start_rx) = watch::channel(None);
    let n_pubs = plan.publishers.len();
    let spread = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
    for (i, p) in plan.publishers.iter().enumerate() {
        pace(&mut connect_pacer).await;
        let params = PubParams {
            rate,
            count: common.count,
            duration,
            drain,
            offset: spread.mul_f64(i as f64 / n_pubs.max(1) as f64),
        };
        pubs.spawn(pub_task(
            shared.clone(),
            i as u32,
            p.topic.clone(),
            params,
            ready_tx.clone(),
            start_rx.clone(),
        ));
    }
    drop(ready_tx);
    for _ in 0..wanted {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    let connect_phase = wall0.elapsed();

    // Phase 3: publish (or hold) until count / deadline.
    let t_start = Instant::now();
    let _ = start_tx.send(Some(t_start));
    let mut sent = vec![0u64; n_pubs];
    if n_pubs == 0 {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    while let Some(r) = pubs.join_next().await {
        match r {
            Ok((id, n)) => sent[id as usize] = n,
            Err(_) => metrics.record_error("task_panic"),
        }
    }
    let publish_time = t_start.elapsed();

    // Phase 4: wait for the deliveries still on their way, then stop everyone.
    let expected = plan.expected_deliveries(&sent);
    let drain_until = Instant::now() + drain;
    while Live::get(&metrics.live.received) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut group_trackers: Vec<HashMap<u32, SeqTracker>> = vec![HashMap::new(); plan.groups.len()];
    while let Some(r) = subs.join_next().await {
        match r {
            Ok(o) => {
                if let Some(g) = group_trackers.get_mut(o.group) {
                    for (p, t) in o.trackers {
                        g.entry(p).or_default().merge(&t);
                    }
                }
            }
            Err(_) => metrics.record_error("task_panic"),
        }
    }
    while idle.join_next().await.is_some() {}
    let wall = wall0.elapsed();
    sampler_stop.cancel();
    let timeline = sampler.await.unwrap_or_default();
    let cpu1 = cpu_snapshot(&common.broker_pids);

    // Accounting.
    let (mut lost, mut dup, mut ooo) = (0u64, 0u64, 0u64);
    for (g, expects) in plan.groups.iter().enumerate() {
        for &p in expects {
            let s = sent.get(p as usize).copied().unwrap_or(0);
            match group_trackers[g].get(&p) {
                Some(t) => lost += t.lost(s),
                None => lost += s,
            }
        }
        for t in group_trackers[g].values() {
            dup += t.duplicates();
            ooo += t.out_of_order();
        }
    }
    let cpu = CpuUse::between(&cpu0, &cpu1, &common.broker_pids, wall);
    let live = &metrics.live;
    let connected = Live::get(&live.connected);
    Ok(RunResult {
        scenario: name.to_string(),
        broker: format!("{}:{}", common.host, common.port),
        protocol: common.protocol,
        qos: common.qos,
        payload_size: common.payload_size.max(payload::HEADER_LEN),
        idle_clients: plan.idle,
        publishers: n_pubs,
        subscribers: plan.subscribers.len(),
        rate_per_publisher: rate,
        fd_limit: limit,
        max_connections: allowed,
        publish_s: publish_time.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        sent: sent.iter().sum(),
        acked: Live::get(&live.acked),
        received: Live::get(&live.received),
        expected,
        lost,
        duplicated: dup,
        out_of_order: ooo,
        out_per_s: sent.iter().sum::<u64>() as f64 / publish_time.as_secs_f64().max(1e-3),
        in_per_s: Live::get(&live.received) as f64 / publish_time.as_secs_f64().max(1e-3),
        latency: Percentiles::of(&metrics.latency_total()),
        connect_attempts: Live::get(&live.connect_attempts),
        connected,
        connect_phase_s: connect_phase.as_secs_f64(),
        connects_per_s: connected as f64 / connect_phase.as_secs_f64().max(1e-3),
        connect_latency: Percentiles::of(&metrics.connect_hist()),
        errors: metrics.errors(),
        cpu,
        timeline,
    })
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
